// openid-client (npm), a client nobody on keyplane wrote, against a live keyplane:
//   - for each algorithm it can sign with (ES256, Ed25519, RS256, PS256), a key pair made with
//     WebCrypto, its public JWK registered as a private_key_jwt client, then discovery of the
//     RFC 8414 metadata, the client-credentials grant, introspection and revocation, each
//     authenticated by openid-client's own client assertion;
//   - a wrong secret with HTTP Basic, to read the error the 401's challenge carries.
// Run by crates/keyplane/tests/it/pkjwt_interop.rs with KEYPLANE_BASE, KEYPLANE_ADMIN_KEY and
// KEYPLANE_SCOPE set. Prints one JSON object per line; the Rust test judges them.
import * as client from 'openid-client';

const base = process.env.KEYPLANE_BASE;
const admin = process.env.KEYPLANE_ADMIN_KEY;
const scope = process.env.KEYPLANE_SCOPE;
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const insecure = { algorithm: 'oauth2', execute: [client.allowInsecureRequests] };

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

const rsa = (name) => ({
  name,
  modulusLength: 2048,
  publicExponent: new Uint8Array([1, 0, 1]),
  hash: 'SHA-256',
});
const algorithms = [
  ['ES256', { name: 'ECDSA', namedCurve: 'P-256' }],
  ['Ed25519', { name: 'Ed25519' }],
  ['RS256', rsa('RSASSA-PKCS1-v1_5')],
  ['PS256', rsa('RSA-PSS')],
];

for (const [alg, params] of algorithms) {
  const result = { case: 'private_key_jwt', alg };
  try {
    const { privateKey, publicKey } = await crypto.subtle.generateKey(params, true, ['sign', 'verify']);
    const jwk = await crypto.subtle.exportKey('jwk', publicKey);
    const kid = `openid-client-${alg}`;
    const registered = await register({
      name: `openid-client ${alg}`,
      scopes: [scope],
      token_endpoint_auth_method: 'private_key_jwt',
      jwks: { keys: [{ ...jwk, kid }] },
    });
    result.had_secret = 'client_secret' in registered;
    const config = await client.discovery(
      new URL(base),
      registered.client_id,
      undefined,
      client.PrivateKeyJwt({ key: privateKey, kid }),
      insecure,
    );
    const meta = config.serverMetadata();
    result.advertised = meta.token_endpoint_auth_methods_supported.includes('private_key_jwt')
      && meta.token_endpoint_auth_signing_alg_values_supported.includes(alg);
    // Several tokens: each assertion has a fresh jti, and ECDSA signatures vary in form.
    for (let i = 0; i < 3; i++) {
      const tokens = await client.clientCredentialsGrant(config, { scope });
      result.token_type = tokens.token_type;
      result.scope = tokens.scope;
      result.access_token = tokens.access_token;
    }
    const live = await client.tokenIntrospection(config, result.access_token);
    result.active = live.active;
    result.client_id_matches = live.client_id === registered.client_id;
    await client.tokenRevocation(config, result.access_token);
    const after = await client.tokenIntrospection(config, result.access_token);
    result.active_after_revocation = after.active;
    result.ok = true;
  } catch (e) {
    result.ok = false;
    result.error = `${e.name}: ${e.message} ${JSON.stringify(e.cause ?? '')}`;
  }
  out(result);
}

// A secret client with a wrong secret, in HTTP Basic: openid-client reports the challenge;
// its `error` parameter is what a caller can act on.
{
  const result = { case: 'basic_challenge' };
  try {
    const registered = await register({ name: 'openid-client basic', scopes: [scope] });
    const config = await client.discovery(
      new URL(base),
      registered.client_id,
      undefined,
      client.ClientSecretBasic('kps_wrong'),
      insecure,
    );
    await client.clientCredentialsGrant(config, { scope });
    result.ok = false;
    result.error = 'a wrong secret was accepted';
  } catch (e) {
    result.name = e.name;
    result.status = e.status;
    const challenge = Array.isArray(e.cause) ? e.cause[0] : undefined;
    result.scheme = challenge?.scheme;
    result.challenge_error = challenge?.parameters?.error;
    result.challenge_description = challenge?.parameters?.error_description;
    result.ok = true;
  }
  out(result);
}
