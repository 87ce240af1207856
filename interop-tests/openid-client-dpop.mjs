// openid-client (npm), a client nobody on keyplane wrote, using DPoP (RFC 9449) against a live
// keyplane, for each algorithm openid-client makes DPoP keys with (ES256, Ed25519, RS256, PS256):
//   - a client registered with `dpop_bound_access_tokens: true` (client_secret_basic), whose
//     token request without a proof is refused;
//   - the client-credentials grant with openid-client's DPoP handle (`getDPoPHandle` on a key
//     from `randomDPoPKeyPair`): a DPoP-bound JWT whose `cnf.jkt` is that key's thumbprint;
//   - `fetchProtectedResource` with the handle against each protected resource named in
//     KEYPLANE_RESOURCES (keyplane's gateway, nginx's auth_request to /v1/authz), and the same
//     token sent as a plain Bearer, which must be refused;
// plus one private_key_jwt client (its own assertions) that also requires DPoP.
// Every HTTP answer openid-client receives is logged per step, so the caller can see the
// DPoP-Nonce retries (RFC 9449 §8) when keyplane requires nonces.
// Run by crates/keyplane/tests/it/pkjwt_interop.rs with KEYPLANE_BASE, KEYPLANE_ADMIN_KEY,
// KEYPLANE_SCOPE and KEYPLANE_RESOURCES (a JSON object: name -> URL) set. Prints one JSON object
// per line; the Rust test judges them.
import * as client from 'openid-client';

const base = process.env.KEYPLANE_BASE;
const admin = process.env.KEYPLANE_ADMIN_KEY;
const scope = process.env.KEYPLANE_SCOPE;
const resources = JSON.parse(process.env.KEYPLANE_RESOURCES || '{}');
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const insecure = { algorithm: 'oauth2', execute: [client.allowInsecureRequests] };
const body = JSON.stringify({
  messages: [{ role: 'user', content: 'hello from openid-client' }],
  recipe: 'pangea_prompt_guard',
});

// What openid-client received, in order: the status of each answer.
let seen = [];
const logged = async (url, options) => {
  const r = await fetch(url, options);
  seen.push(r.status);
  return r;
};
const step = async (f) => {
  seen = [];
  const value = await f();
  return [value, [...seen]];
};

async function register(body) {
  const r = await fetch(`${base}/v1/oauth-clients`, {
    method: 'POST',
    headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const v = await r.json();
  if (r.status !== 201) throw new Error(`registration: ${r.status} ${JSON.stringify(v)}`);
  return v;
}

const claims = (jwt) => JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString());
const errorOf = (e) => ({
  name: e.name,
  status: e.status,
  error: e.error ?? e.cause?.[0]?.parameters?.error,
  scheme: e.cause?.[0]?.scheme,
  description: e.error_description,
});

/** The grant with the handle, and each resource with and without DPoP. */
async function useDpop(result, config, alg) {
  const keyPair = await client.randomDPoPKeyPair(alg);
  const DPoP = client.getDPoPHandle(config, keyPair);
  const [tokens, tokenAnswers] = await step(() =>
    client.clientCredentialsGrant(config, { scope }, { DPoP }));
  result.token_answers = tokenAnswers;
  result.token_type = tokens.token_type;
  result.scope = tokens.scope;
  result.jkt_matches = claims(tokens.access_token).cnf?.jkt === (await DPoP.calculateThumbprint());
  result.resources = {};
  for (const [name, url] of Object.entries(resources)) {
    const r = {};
    const headers = () => new Headers({ 'content-type': 'application/json' });
    try {
      const [resp, answers] = await step(() => client.fetchProtectedResource(
        config, tokens.access_token, new URL(url), 'POST', body, headers(), { DPoP }));
      r.status = resp.status;
      r.answers = answers;
      r.upstream_json = (await resp.json()) !== null;
      // A second request: the nonce (if any) is cached by the handle, no retry needed.
      const [again, answers2] = await step(() => client.fetchProtectedResource(
        config, tokens.access_token, new URL(url), 'POST', body, headers(), { DPoP }));
      r.second_status = again.status;
      r.second_answers = answers2;
    } catch (e) {
      r.error = errorOf(e);
    }
    // The bound token as a plain Bearer (no DPoP option): refused.
    try {
      const resp = await client.fetchProtectedResource(
        config, tokens.access_token, new URL(url), 'POST', body, headers());
      r.bearer = { status: resp.status };
    } catch (e) {
      r.bearer = errorOf(e);
    }
    result.resources[name] = r;
  }
}

for (const alg of ['ES256', 'Ed25519', 'RS256', 'PS256']) {
  const result = { case: 'dpop', alg };
  try {
    const registered = await register({
      name: `openid-client dpop ${alg}`,
      scopes: [scope],
      token_format: 'jwt',
      dpop_bound_access_tokens: true,
    });
    result.registered_required = registered.dpop_bound_access_tokens;
    const config = await client.discovery(
      new URL(base),
      registered.client_id,
      undefined,
      client.ClientSecretBasic(registered.client_secret),
      insecure,
    );
    config[client.customFetch] = logged;
    result.advertised = config.serverMetadata().dpop_signing_alg_values_supported?.includes(alg);
    // Without a proof the client is refused.
    try {
      await client.clientCredentialsGrant(config, { scope });
      result.without_proof = { accepted: true };
    } catch (e) {
      result.without_proof = errorOf(e);
    }
    await useDpop(result, config, alg);
    result.ok = true;
  } catch (e) {
    result.ok = false;
    result.error = `${e.name}: ${e.message} ${JSON.stringify(e.cause ?? '')}`;
  }
  out(result);
}

// private_key_jwt and DPoP together: nothing shared, each request signed twice.
{
  const result = { case: 'dpop_private_key_jwt', alg: 'ES256' };
  try {
    const { privateKey, publicKey } = await crypto.subtle.generateKey(
      { name: 'ECDSA', namedCurve: 'P-256' }, true, ['sign', 'verify']);
    const jwk = await crypto.subtle.exportKey('jwk', publicKey);
    const registered = await register({
      name: 'openid-client dpop private_key_jwt',
      scopes: [scope],
      token_format: 'jwt',
      token_endpoint_auth_method: 'private_key_jwt',
      jwks: { keys: [{ ...jwk, kid: 'k1' }] },
      dpop_bound_access_tokens: true,
    });
    const config = await client.discovery(
      new URL(base),
      registered.client_id,
      undefined,
      client.PrivateKeyJwt({ key: privateKey, kid: 'k1' }),
      insecure,
    );
    config[client.customFetch] = logged;
    try {
      await client.clientCredentialsGrant(config, { scope });
      result.without_proof = { accepted: true };
    } catch (e) {
      result.without_proof = errorOf(e);
    }
    await useDpop(result, config, 'ES256');
    result.ok = true;
  } catch (e) {
    result.ok = false;
    result.error = `${e.name}: ${e.message} ${JSON.stringify(e.cause ?? '')}`;
  }
  out(result);
}
