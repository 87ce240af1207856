/**
 * A typed client for keyplane's API.
 *
 * The types (`schema.ts`) are generated from the repository's `openapi.json` by
 * openapi-typescript (`npm run generate`); the calls are openapi-fetch's, so every path, query
 * parameter, body and answer is checked by the TypeScript compiler against that document.
 */
import createClient, { type Client, type ClientOptions, type Middleware } from "openapi-fetch";
import type { components, operations, paths } from "./schema.js";

export type { components, operations, paths };

/** The JSON shapes of the API, by name: `Schemas["ApiKey"]`, `Schemas["Problem"]`, … */
export type Schemas = components["schemas"];

/** The client: `GET`, `POST`, `PATCH`, `DELETE`, … on keyplane's paths, fully typed. */
export type KeyplaneClient = Client<paths>;

export interface KeyplaneClientOptions {
  /** Where keyplane answers, e.g. `https://keyplane.internal:8780` (no trailing path). */
  baseUrl: string;
  /**
   * The credential sent as `Authorization: Bearer …` on every request that does not set its
   * own `Authorization` header: the admin key, or an API key with management permissions.
   */
  adminKey?: string;
  /** Another `fetch` (tests, proxies, custom TLS agents); default: the global one. */
  fetch?: ClientOptions["fetch"];
  /** Headers added to every request (e.g. `X-Request-Id` behind a trusted proxy). */
  headers?: Record<string, string>;
}

/**
 * Makes a client for one keyplane deployment.
 *
 * ```ts
 * const kp = createKeyplaneClient({ baseUrl: "http://127.0.0.1:8780", adminKey });
 * const { data, error } = await kp.POST("/v1/services", { body: { name: "billing", scopes: ["billing:read"] } });
 * ```
 *
 * Errors are not thrown: each call answers `{ data }` or `{ error }` (an RFC 9457 problem on the
 * management API, an RFC 6749 error on the OAuth endpoints) with the `response`.
 */
export function createKeyplaneClient(options: KeyplaneClientOptions): KeyplaneClient {
  const baseUrl = options.baseUrl.replace(/\/+$/, "");
  const client = createClient<paths>({
    baseUrl,
    fetch: options.fetch,
    headers: options.headers,
  });
  const adminKey = options.adminKey;
  if (adminKey !== undefined) {
    const auth: Middleware = {
      onRequest({ request }) {
        // A call that names its own credential (e.g. `/v1/authz` with the key being checked)
        // keeps it.
        if (!request.headers.has("Authorization")) {
          request.headers.set("Authorization", `Bearer ${adminKey}`);
        }
        return request;
      },
    };
    client.use(auth);
  }
  return client;
}

/** The answer of `/v1/authz` for one credential and scope: allowed, or refused and why. */
export interface AuthzResult {
  allowed: boolean;
  status: number;
  /** On an allowed check: the identity headers keyplane sets (`X-Keyplane-*`). */
  headers: Record<string, string>;
}

/**
 * Asks keyplane whether `credential` (an API key or access token) may use `scope`, the way a
 * forward-auth proxy does: `GET /v1/authz?scope=…` with the credential as the bearer.
 */
export async function checkCredential(
  client: KeyplaneClient,
  credential: string,
  scope?: string,
): Promise<AuthzResult> {
  const { response } = await client.GET("/v1/authz", {
    params: { query: scope === undefined ? {} : { scope } },
    headers: { Authorization: `Bearer ${credential}` },
    parseAs: "text",
  });
  const headers: Record<string, string> = {};
  response.headers.forEach((value, name) => {
    if (name.toLowerCase().startsWith("x-keyplane-")) {
      headers[name.toLowerCase()] = value;
    }
  });
  return { allowed: response.ok, status: response.status, headers };
}
