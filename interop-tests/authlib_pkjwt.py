"""Authlib (PyPI), a client nobody on keyplane wrote, against a live keyplane with private_key_jwt.

For each algorithm (ES256, EdDSA, RS256, PS256): a key made with joserfc, its public JWK
registered as a private_key_jwt client, then the client-credentials grant, introspection and
revocation, each authenticated by Authlib's own PrivateKeyJWT assertion (audience: the URL of the
endpoint it is sent to). Authlib's assertions live an hour by default, past keyplane's five-minute
maximum: that default is shown refused first, then a five-minute assertion is used.

Run by crates/keyplane/tests/it/pkjwt_interop.rs with KEYPLANE_BASE, KEYPLANE_ADMIN_KEY and
KEYPLANE_SCOPE set. Prints one JSON object per line; the Rust test judges them.
"""

import json
import os
import sys

import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from authlib.oauth2.rfc7523.assertion import private_key_jwt_sign
from joserfc.jwk import ECKey, OKPKey, RSAKey

BASE = os.environ["KEYPLANE_BASE"]
ADMIN = os.environ["KEYPLANE_ADMIN_KEY"]
SCOPE = os.environ["KEYPLANE_SCOPE"]


def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class FiveMinuteAssertion(PrivateKeyJWT):
    """Authlib's PrivateKeyJWT with an assertion lifetime within keyplane's maximum."""

    def sign(self, auth, token_endpoint):
        return private_key_jwt_sign(
            auth.client_secret,
            client_id=auth.client_id,
            token_endpoint=token_endpoint,
            claims=self.claims,
            header=self.headers,
            alg=self.alg,
            expires_in=300,
        )


meta = requests.get(f"{BASE}/.well-known/oauth-authorization-server", timeout=10).json()
out(
    {
        "case": "metadata",
        "ok": "private_key_jwt" in meta["token_endpoint_auth_methods_supported"],
        "algs": meta["token_endpoint_auth_signing_alg_values_supported"],
    }
)

KEYS = [
    ("ES256", lambda: ECKey.generate_key("P-256")),
    ("EdDSA", lambda: OKPKey.generate_key("Ed25519")),
    ("RS256", lambda: RSAKey.generate_key(2048)),
    ("PS256", lambda: RSAKey.generate_key(2048)),
]

for alg, make in KEYS:
    result = {"case": "private_key_jwt", "alg": alg}
    try:
        key = make()
        kid = f"authlib-{alg}"
        public = dict(key.as_dict(private=False))
        public["kid"] = kid
        r = requests.post(
            f"{BASE}/v1/oauth-clients",
            headers={"authorization": f"Bearer {ADMIN}"},
            json={
                "name": f"authlib {alg}",
                "scopes": [SCOPE],
                "token_endpoint_auth_method": "private_key_jwt",
                "jwks": {"keys": [public]},
            },
            timeout=10,
        )
        assert r.status_code == 201, r.text
        client_id = r.json()["client_id"]
        result["had_secret"] = "client_secret" in r.json()

        # Authlib's default: an assertion valid for an hour, refused.
        default = OAuth2Session(client_id, key, token_endpoint_auth_method="private_key_jwt")
        default.register_client_auth_method(PrivateKeyJWT(headers={"kid": kid}, alg=alg))
        try:
            default.fetch_token(meta["token_endpoint"], grant_type="client_credentials", scope=SCOPE)
            result["default_lifetime"] = "accepted"
        except Exception as e:  # Authlib raises OAuthError with the RFC 6749 error code
            result["default_lifetime"] = f"{getattr(e, 'error', '')}: {getattr(e, 'description', e)}"

        session = OAuth2Session(
            client_id,
            key,
            token_endpoint_auth_method="private_key_jwt",
            revocation_endpoint_auth_method="private_key_jwt",
        )
        session.register_client_auth_method(FiveMinuteAssertion(headers={"kid": kid}, alg=alg))
        for _ in range(3):
            token = session.fetch_token(
                meta["token_endpoint"], grant_type="client_credentials", scope=SCOPE
            )
        result["token_type"] = token["token_type"]
        result["scope"] = token["scope"]
        access = token["access_token"]
        live = session.introspect_token(meta["introspection_endpoint"], token=access).json()
        result["active"] = live.get("active")
        result["client_id_matches"] = live.get("client_id") == client_id
        revoked = session.revoke_token(meta["revocation_endpoint"], token=access)
        result["revoked_status"] = revoked.status_code
        after = session.introspect_token(meta["introspection_endpoint"], token=access).json()
        result["active_after_revocation"] = after.get("active")
        result["ok"] = True
    except Exception as e:
        result["ok"] = False
        result["error"] = f"{type(e).__name__}: {e}"
    out(result)
