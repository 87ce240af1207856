// Run by crates/keyplane/tests/it/sdk.rs against a real keyplane, with the SDK built into dist/:
//   KEYPLANE_URL=http://127.0.0.1:8780 KEYPLANE_TOKEN=<admin key> node examples/smoke.mjs
// Creates a service and an API key, checks the key at /v1/authz, lists keys, revokes the key and
// sees the 401; prints what it saw as one JSON line. Any surprise exits non-zero.
import assert from "node:assert/strict";
import { checkCredential, createKeyplaneClient } from "../dist/index.js";

const baseUrl = process.env.KEYPLANE_URL;
const adminKey = process.env.KEYPLANE_TOKEN;
assert.ok(baseUrl && adminKey, "set KEYPLANE_URL and KEYPLANE_TOKEN");
const kp = createKeyplaneClient({ baseUrl, adminKey });

const service = await kp.POST("/v1/services", {
  body: { name: "sdk-smoke", scopes: ["sdk-smoke:read"] },
});
assert.equal(service.response.status, 201, JSON.stringify(service.error));
assert.deepEqual(service.data.scopes, ["sdk-smoke:read"]);

// The same name again: a problem+json error, not an exception.
const again = await kp.POST("/v1/services", {
  body: { name: "sdk-smoke", scopes: ["sdk-smoke:read"] },
});
assert.equal(again.response.status, 409);
assert.equal(again.data, undefined);
assert.match(again.response.headers.get("content-type"), /application\/problem\+json/);

const created = await kp.POST("/v1/api-keys", {
  body: { name: "sdk-smoke-key", scopes: ["sdk-smoke:read"] },
});
assert.equal(created.response.status, 201, JSON.stringify(created.error));
const { id, key } = created.data;
assert.ok(key.startsWith("kp_"), key);

const allowed = await checkCredential(kp, key, "sdk-smoke:read");
const wrongScope = await checkCredential(kp, key, "sdk-smoke:write");

const listed = await kp.GET("/v1/api-keys", { params: { query: { limit: 50 } } });
assert.equal(listed.response.status, 200);
const ids = listed.data.items.map((k) => k.id);

const revoked = await kp.POST("/v1/api-keys/{id}/revoke", { params: { path: { id } } });
assert.equal(revoked.response.status, 200, JSON.stringify(revoked.error));

const afterRevoke = await checkCredential(kp, key, "sdk-smoke:read");

// Without the admin key the management API answers 401 through the same client.
const anonymous = createKeyplaneClient({ baseUrl });
const refused = await anonymous.GET("/v1/api-keys", {});

console.log(
  JSON.stringify({
    service: service.data.name,
    duplicate: again.error.status,
    key_id: id,
    allowed: allowed.status,
    allowed_headers: Object.keys(allowed.headers).sort(),
    wrong_scope: wrongScope.status,
    listed: ids.includes(id),
    revoked: revoked.data.status,
    after_revoke: afterRevoke.status,
    anonymous: refused.response.status,
  }),
);
