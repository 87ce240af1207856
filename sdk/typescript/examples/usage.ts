// A typed use of the SDK: `npm run typecheck` compiles this file (it is not run), so a change of
// openapi.json that breaks a platform team's script breaks this first.
import { checkCredential, createKeyplaneClient, type Schemas } from "../src/index.js";

export async function provision(baseUrl: string, adminKey: string): Promise<string> {
  const kp = createKeyplaneClient({ baseUrl, adminKey });

  const service = await kp.POST("/v1/services", {
    body: { name: "billing", scopes: ["billing:read", "billing:write"] },
  });
  if (service.error) {
    // An RFC 9457 problem: `type`, `title`, `status`, `detail`.
    throw new Error(`${service.error.status}: ${service.error.detail ?? service.error.title}`);
  }

  const created = await kp.POST("/v1/api-keys", {
    body: { name: "billing-reader", scopes: ["billing:read"] },
  });
  if (!created.data) throw new Error("no key");
  const key: Schemas["ApiKeyWithSecret"] = created.data;

  const verdict = await checkCredential(kp, key.key, "billing:read");
  if (!verdict.allowed) throw new Error(`refused: ${verdict.status}`);

  const page = await kp.GET("/v1/api-keys", { params: { query: { limit: 50 } } });
  const names: string[] = (page.data?.items ?? []).map((k: Schemas["ApiKeyView"]) => k.name);

  const revoked = await kp.POST("/v1/api-keys/{id}/revoke", { params: { path: { id: key.id } } });
  const status: string | undefined = revoked.data?.status;
  return `${names.join(",")} ${status}`;
}
