// The peer: node oidc-provider 9.x, in memory, configured for the client credentials grant with
// introspection and revocation; opaque tokens for the `opaque*` clients and ES256 JWTs for the
// `jwt*` clients (through resource indicators), Basic or post client authentication. For the
// machine-identity scenarios (issue 12): the `pkjwt` client authenticates with ES256
// `private_key_jwt` (its public key read from the JWK file named by BENCH_CLIENT_JWK), and the
// `dpop` client (Basic) gets DPoP-bound tokens (RFC 9449, the provider's `dpop` feature, no
// nonces, as keyplane's default). Both get opaque tokens, as keyplane's bench clients do.
import Provider from 'oidc-provider';
import { generateKeyPairSync } from 'node:crypto';
import { readFileSync } from 'node:fs';

const port = Number(process.env.PORT || 8790);
const jwk = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
Object.assign(jwk, { alg: 'ES256', use: 'sig', kid: 'bench' });

const client = (id, method) => ({
  client_id: id,
  client_secret: `${id}-secret-for-the-benchmark`,
  grant_types: ['client_credentials'],
  redirect_uris: [],
  response_types: [],
  token_endpoint_auth_method: method,
  scope: 'bench:read',
  id_token_signed_response_alg: 'ES256',
});

const clients = [
  client('opaque', 'client_secret_basic'),
  client('opaque-post', 'client_secret_post'),
  client('jwt', 'client_secret_basic'),
  client('jwt-post', 'client_secret_post'),
  client('dpop', 'client_secret_basic'),
];
if (process.env.BENCH_CLIENT_JWK) {
  const pub = JSON.parse(readFileSync(process.env.BENCH_CLIENT_JWK, 'utf8'));
  const c = client('pkjwt', 'private_key_jwt');
  delete c.client_secret;
  clients.push({ ...c, jwks: { keys: [pub] }, token_endpoint_auth_signing_alg: 'ES256' });
}

const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients,
  jwks: { keys: [jwk] },
  scopes: ['bench:read'],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    dPoP: { enabled: true }, // the default in 9.x; stated for the reader
    resourceIndicators: {
      enabled: true,
      defaultResource: (ctx, c) => (c.clientId.startsWith('jwt') ? 'urn:bench:jwt' : 'urn:bench:opaque'),
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => ({
        scope: 'bench:read',
        accessTokenTTL: 3600,
        accessTokenFormat: resource === 'urn:bench:jwt' ? 'jwt' : 'opaque',
        jwt: { sign: { alg: 'ES256' } },
      }),
    },
  },
});
provider.listen(port, '127.0.0.1', () => console.error(`peer listening on ${port}`));
