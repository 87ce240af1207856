//! `private_key_jwt` (RFC 7523 §2.2, OpenID Connect Core §9) end to end, on both backends:
//! registration with RFC 7591 metadata (`token_endpoint_auth_method`, `jwks`, `jwks_uri`),
//! assertions signed with every supported algorithm at the token, introspection and revocation
//! endpoints, every rule an assertion can break (each refused with `invalid_client`), the replay
//! cache (on one node, and across two nodes sharing PostgreSQL), a `jwks_uri` served by a tiny
//! local HTTP server whose keys rotate, and the metadata document.

use crate::support::{client_from, FORM};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use keyplane_core::domain::secret::random_base62;
use keyplane_testkit::reqwest::{self, header, StatusCode};
use keyplane_testkit::{json, Answer, Options, TestApp};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use serde_json::Value;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const READ: &str = "ai-guard:read";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const FAILED: &str = "client authentication failed";

// ----- keys and assertions -----

enum Private {
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
    Rsa(RsaKeyPair),
}

/// A client's key pair, as the client would hold it.
pub(crate) struct TestKey {
    pub kid: String,
    key: Private,
}

fn pem_der(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("PEM body")
}

/// Two 2048-bit RSA keys made for these tests only (`openssl genpkey -algorithm RSA`).
const RSA_A: &str = include_str!("../fixtures/rsa-2048-a.pem");
const RSA_B: &str = include_str!("../fixtures/rsa-2048-b.pem");

impl TestKey {
    pub(crate) fn es256(kid: &str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .unwrap();
        TestKey {
            kid: kid.into(),
            key: Private::Ec(kp),
        }
    }

    pub(crate) fn ed25519(kid: &str) -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        TestKey {
            kid: kid.into(),
            key: Private::Ed(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()),
        }
    }

    pub(crate) fn rsa(kid: &str, which: char) -> Self {
        let pem = if which == 'a' { RSA_A } else { RSA_B };
        TestKey {
            kid: kid.into(),
            key: Private::Rsa(RsaKeyPair::from_pkcs8(&pem_der(pem)).unwrap()),
        }
    }

    /// The public JWK, as the client registers it.
    pub(crate) fn public_jwk(&self) -> Value {
        match &self.key {
            Private::Ec(k) => {
                let p = k.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "kid": self.kid,
                       "x": B64.encode(&p[1..33]), "y": B64.encode(&p[33..65])})
            }
            Private::Ed(k) => json!({"kty": "OKP", "crv": "Ed25519", "kid": self.kid,
                                     "x": B64.encode(k.public_key().as_ref())}),
            Private::Rsa(k) => {
                let c: signature::RsaPublicKeyComponents<Vec<u8>> = k.public().into();
                json!({"kty": "RSA", "kid": self.kid, "n": B64.encode(&c.n), "e": B64.encode(&c.e)})
            }
        }
    }

    /// The algorithm this key signs with by default.
    pub(crate) fn alg(&self) -> &'static str {
        match self.key {
            Private::Ec(_) => "ES256",
            Private::Ed(_) => "EdDSA",
            Private::Rsa(_) => "RS256",
        }
    }

    fn sign_input(&self, alg: &str, input: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match (&self.key, alg) {
            (Private::Ec(k), _) => k.sign(&rng, input).unwrap().as_ref().to_vec(),
            (Private::Ed(k), _) => k.sign(input).as_ref().to_vec(),
            (Private::Rsa(k), a) => {
                let params: &'static dyn signature::RsaEncoding = if a == "PS256" {
                    &signature::RSA_PSS_SHA256
                } else {
                    &signature::RSA_PKCS1_SHA256
                };
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(params, &rng, input, &mut sig).unwrap();
                sig
            }
        }
    }

    /// A compact JWS of `claims` under `header` (its `alg` picks the signature).
    pub(crate) fn sign(&self, header: Value, claims: &Value) -> String {
        let alg = header["alg"].as_str().unwrap_or(self.alg()).to_string();
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = self.sign_input(&alg, input.as_bytes());
        format!("{input}.{}", B64.encode(sig))
    }

    /// A good assertion for `client_id` with audience `aud`, signed with `alg` under this kid.
    pub(crate) fn assertion(&self, client_id: &str, aud: &str, alg: &str) -> String {
        self.sign(
            json!({"alg": alg, "kid": self.kid, "typ": "JWT"}),
            &claims(client_id, aud),
        )
    }
}

fn now_s() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The claims of a good assertion: iss = sub = the client, a minute to live, a fresh jti.
pub(crate) fn claims(client_id: &str, aud: &str) -> Value {
    let now = now_s();
    json!({"iss": client_id, "sub": client_id, "aud": aud, "iat": now, "nbf": now,
           "exp": now + 60, "jti": random_base62(20)})
}

fn with(mut v: Value, k: &str, x: Value) -> Value {
    if x.is_null() {
        v.as_object_mut().unwrap().remove(k);
    } else {
        v[k] = x;
    }
    v
}

// ----- requests -----

async fn post(http: &reqwest::Client, url: &str, auth: Option<&str>, body: &str) -> Answer {
    let mut r = http
        .post(url)
        .header(header::CONTENT_TYPE, FORM)
        .body(body.to_string());
    if let Some(a) = auth {
        r = r.header(header::AUTHORIZATION, a);
    }
    let resp = r.send().await.expect("request");
    Answer {
        status: resp.status(),
        headers: resp.headers().clone(),
        text: resp.text().await.expect("body"),
    }
}

fn assertion_form(assertion: &str) -> String {
    format!("client_assertion_type={JWT_BEARER}&client_assertion={assertion}")
}

/// `POST /v1/oauth/token` with a client assertion (and `client_id`, as openid-client sends it).
async fn token_with(app: &TestApp, http: &reqwest::Client, id: &str, assertion: &str) -> Answer {
    post(
        http,
        &format!("{}/v1/oauth/token", app.base),
        None,
        &format!(
            "grant_type=client_credentials&client_id={id}&{}",
            assertion_form(assertion)
        ),
    )
    .await
}

async fn token(app: &TestApp, id: &str, assertion: &str) -> Answer {
    token_with(app, &app.http, id, assertion).await
}

fn issuer(app: &TestApp) -> String {
    app.base.clone()
}

/// Registers a `private_key_jwt` client as the admin key; returns its id and creation answer.
async fn register(app: &TestApp, keys: &[&TestKey], extra: Value) -> (String, Value) {
    let mut body = json!({
        "name": format!("pkjwt {}", random_base62(6)),
        "scopes": [READ],
        "token_endpoint_auth_method": "private_key_jwt",
        "jwks": {"keys": keys.iter().map(|k| k.public_jwk()).collect::<Vec<_>>()},
    });
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            body.as_object_mut().unwrap().remove(k);
        } else {
            body[k] = v.clone();
        }
    }
    let a = app
        .post("/v1/oauth-clients", &app.admin_key.clone(), body)
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let v = a.json();
    (v["client_id"].as_str().unwrap().to_string(), v)
}

async fn setup(app: &TestApp) {
    app.service("ai-guard", &[READ]).await;
}

// ----- registration -----

async fn registration(app: TestApp) {
    setup(&app).await;
    let admin = app.admin_key.clone();
    let (ec, ed, rsa) = (
        TestKey::es256("ec"),
        TestKey::ed25519("ed"),
        TestKey::rsa("rsa", 'a'),
    );
    let (id, created) = register(&app, &[&ec, &ed, &rsa], json!({})).await;
    assert!(created.get("client_secret").is_none(), "{created}");
    assert!(created.get("secret_id").is_none(), "{created}");
    assert!(created["message"].as_str().unwrap().contains("no secret"));
    assert_eq!(created["token_endpoint_auth_method"], "private_key_jwt");
    assert_eq!(created["secrets"], json!([]));
    let keys = created["jwks"]["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 3);
    assert_eq!(keys[0]["kid"], "ec");
    assert!(created.get("jwks_uri").is_none());
    let got = app.get(&format!("/v1/oauth-clients/{id}"), &admin).await;
    assert_eq!(got.json()["jwks"], created["jwks"]);

    // Keys that are not usable public signing keys, or metadata that does not fit together.
    let mut private = ec.public_jwk();
    private["d"] = json!(B64.encode([7u8; 32]));
    let mut weak = rsa.public_jwk();
    weak["n"] = json!(B64.encode([0xc5u8; 128]));
    let bad: Vec<(&str, Value)> = vec![
        ("a private key", json!({"jwks": {"keys": [private]}})),
        ("RSA-1024", json!({"jwks": {"keys": [weak]}})),
        (
            "a symmetric key",
            json!({"jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}}),
        ),
        ("no keys", json!({"jwks": {"keys": []}})),
        ("neither jwks nor jwks_uri", json!({"jwks": null})),
        (
            "both",
            json!({"jwks_uri": "https://keys.example.com/jwks.json"}),
        ),
        (
            "a plain-http jwks_uri",
            json!({"jwks": null, "jwks_uri": "http://keys.example.com/jwks.json"}),
        ),
        (
            "loopback http without the deployment's opt-in",
            json!({"jwks": null, "jwks_uri": "http://127.0.0.1:9/jwks.json"}),
        ),
        (
            "keys for a secret client",
            json!({"token_endpoint_auth_method": "client_secret_basic"}),
        ),
        (
            "an unknown method",
            json!({"token_endpoint_auth_method": "client_secret_jwt"}),
        ),
    ];
    for (what, extra) in bad {
        let mut body = json!({
            "name": "bad", "scopes": [READ], "token_endpoint_auth_method": "private_key_jwt",
            "jwks": {"keys": [ec.public_jwk()]},
        });
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                body.as_object_mut().unwrap().remove(k);
            } else {
                body[k] = v.clone();
            }
        }
        let a = app.post("/v1/oauth-clients", &admin, body).await;
        assert_eq!(
            a.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{what}: {}",
            a.text
        );
    }
    // An https jwks_uri is taken as it is.
    let (_, by_uri) = register(
        &app,
        &[],
        json!({"jwks": null, "jwks_uri": "https://keys.example.com/jwks.json"}),
    )
    .await;
    assert_eq!(by_uri["jwks_uri"], "https://keys.example.com/jwks.json");
    assert!(by_uri.get("jwks").is_none());

    // A private_key_jwt client gets no secret.
    let a = app
        .post(
            &format!("/v1/oauth-clients/{id}/secrets"),
            &admin,
            json!({}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.text);

    // A secret client switched to private_key_jwt loses its secrets at once...
    let (sid, secret, _) =
        crate::support::admin_client(&app, json!({"name": "switching", "scopes": [READ]})).await;
    assert_eq!(
        crate::support::token(&app, &sid, &secret).await.status,
        StatusCode::OK
    );
    let a = crate::support::patch(
        &app,
        &format!("/v1/oauth-clients/{sid}"),
        &admin,
        json!({"token_endpoint_auth_method": "private_key_jwt", "jwks": {"keys": [ed.public_jwk()]}}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json()["secrets"], json!([]));
    assert_eq!(a.json()["token_endpoint_auth_method"], "private_key_jwt");
    let refused = crate::support::token(&app, &sid, &secret).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.text);
    // ... and authenticates with its key.
    let ok = token(&app, &sid, &ed.assertion(&sid, &issuer(&app), "EdDSA")).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    // Moving to a jwks_uri replaces the inline set; back to a secret method drops both.
    let a = crate::support::patch(
        &app,
        &format!("/v1/oauth-clients/{sid}"),
        &admin,
        json!({"jwks_uri": "https://keys.example.com/other.json"}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert!(a.json().get("jwks").is_none(), "{}", a.text);
    // An explicit `null` for the one and a value for the other: the value is taken, both ways.
    for (body, kept) in [
        (
            json!({"jwks": {"keys": [ed.public_jwk()]}, "jwks_uri": null}),
            "jwks",
        ),
        (
            json!({"jwks": null, "jwks_uri": "https://keys.example.com/third.json"}),
            "jwks_uri",
        ),
    ] {
        let a =
            crate::support::patch(&app, &format!("/v1/oauth-clients/{sid}"), &admin, body).await;
        assert_eq!(a.status, StatusCode::OK, "{kept}: {}", a.text);
        let v = a.json();
        let other = if kept == "jwks" { "jwks_uri" } else { "jwks" };
        assert!(
            v.get(kept).is_some() && v.get(other).is_none(),
            "{kept}: {v}"
        );
    }
    assert_eq!(
        app.get(&format!("/v1/oauth-clients/{sid}"), &admin)
            .await
            .json()["jwks_uri"],
        "https://keys.example.com/third.json"
    );
    // A body whose types break the document (a JWK set is an object, the credentials an array)
    // is refused as it is read: 422, before a stale If-Match is compared.
    for body in [
        json!({"jwks": ["not", "a", "set"]}),
        json!({"federated_credentials": {"issuer": "https://example.com"}}),
    ] {
        let a = app
            .http
            .patch(format!("{}/v1/oauth-clients/{sid}", app.base))
            .bearer_auth(&admin)
            .header("If-Match", "\"999\"")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(a.status(), StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(
            a.headers()["content-type"],
            "application/problem+json",
            "{body}"
        );
    }
    let a = crate::support::patch(
        &app,
        &format!("/v1/oauth-clients/{sid}"),
        &admin,
        json!({"token_endpoint_auth_method": "client_secret_post"}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let v = a.json();
    assert_eq!(v["token_endpoint_auth_method"], "client_secret_post");
    assert!(
        v.get("jwks").is_none() && v.get("jwks_uri").is_none(),
        "{v}"
    );
    let a = app
        .post(
            &format!("/v1/oauth-clients/{sid}/secrets"),
            &admin,
            json!({}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let fresh = a.json()["client_secret"].as_str().unwrap().to_string();
    assert_eq!(
        crate::support::token(&app, &sid, &fresh).await.status,
        StatusCode::OK
    );
    // Its key no longer works.
    let refused = token(&app, &sid, &ed.assertion(&sid, &issuer(&app), "EdDSA")).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.text);

    // The console's client panel shows the method and the keys (kid, type, thumbprint), and
    // offers no secret to a private_key_jwt client.
    let (mut console, _) = crate::support::admin_console(&app).await;
    let (status, page, _) = console
        .get(&format!("/console/clients?selected={id}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("<code>private_key_jwt</code>"), "{page}");
    assert!(page.contains("id=\"client-keys-table\""), "{page}");
    assert!(page.contains("<code>rsa</code>"), "{page}");
    let thumbprint = keyplane_core::domain::jose::Jwk::from_json(&ed.public_jwk())
        .unwrap()
        .thumbprint();
    assert!(page.contains(&thumbprint), "{page}");
    assert!(page.contains("id=\"client-no-secrets\""), "{page}");
    assert!(!page.contains("id=\"secrets-table\""), "{page}");

    // The activity log names the keys by thumbprint, never the method's secrets.
    let ev = app
        .get(
            &format!("/v1/activity?action=oauth_client.create&target={id}"),
            &admin,
        )
        .await
        .json();
    let details = &ev["items"][0]["details"];
    assert_eq!(details["token_endpoint_auth_method"], "private_key_jwt");
    assert_eq!(details["jwks_thumbprints"].as_array().unwrap().len(), 3);
}
on_both!(private_key_jwt_registration, registration);

// ----- every algorithm, every endpoint -----

async fn algorithms(app: TestApp) {
    setup(&app).await;
    let (ec, ed, rsa) = (
        TestKey::es256("ec"),
        TestKey::ed25519("ed"),
        TestKey::rsa("rsa", 'a'),
    );
    let (id, _) = register(&app, &[&ec, &ed, &rsa], json!({})).await;
    let iss = issuer(&app);
    let cases: [(&TestKey, &str); 5] = [
        (&ec, "ES256"),
        (&ed, "EdDSA"),
        (&ed, "Ed25519"),
        (&rsa, "RS256"),
        (&rsa, "PS256"),
    ];
    for (key, alg) in cases {
        // Several times: ES256 signatures from ring are high-s half the time, and other
        // software's are too, so both forms must pass.
        for _ in 0..4 {
            let a = token(&app, &id, &key.assertion(&id, &iss, alg)).await;
            assert_eq!(a.status, StatusCode::OK, "{alg}: {}", a.text);
            assert_eq!(a.json()["scope"], READ);
            let t = a.json()["access_token"].as_str().unwrap().to_string();
            assert_eq!(app.authz(Some(&t), Some(READ)).await.status, StatusCode::OK);
        }
        // Without a kid, the key is found by trying those that take the algorithm.
        let no_kid = key.sign(json!({ "alg": alg }), &claims(&id, &iss));
        assert_eq!(
            token(&app, &id, &no_kid).await.status,
            StatusCode::OK,
            "{alg} without kid"
        );
    }

    // aud: the issuer, the token endpoint's URL, or the URL of the alias it was sent to; the
    // client_id in the form is optional (RFC 7521 §4.2).
    let at = |path: &str| format!("{iss}{path}");
    for (path, aud) in [
        ("/v1/oauth/token", at("/v1/oauth/token")),
        ("/v1beta/oauth/token", at("/v1beta/oauth/token")),
        ("/api/oauth/token", at("/v1/oauth/token")),
        ("/v1beta/oauth/token", iss.clone()),
    ] {
        let a = post(
            &app.http,
            &at(path),
            None,
            &format!(
                "grant_type=client_credentials&{}",
                assertion_form(&ec.assertion(&id, &aud, "ES256"))
            ),
        )
        .await;
        assert_eq!(
            a.status,
            StatusCode::OK,
            "{path} with aud {aud}: {}",
            a.text
        );
    }
    let t = token(&app, &id, &ec.assertion(&id, &iss, "ES256"))
        .await
        .json()["access_token"]
        .as_str()
        .unwrap()
        .to_string();

    // Introspection and revocation authenticate the same way (aud: their own URLs too).
    let introspect = |aud: String, key: &TestKey, alg: &'static str| {
        let body = format!(
            "token={t}&client_id={id}&{}",
            assertion_form(&key.assertion(&id, &aud, alg))
        );
        let url = at("/v1/oauth/token/introspect");
        let http = app.http.clone();
        async move { post(&http, &url, None, &body).await }
    };
    let a = introspect(at("/v1/oauth/token/introspect"), &rsa, "PS256").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json()["active"], true, "{}", a.text);
    assert_eq!(a.json()["client_id"], id.as_str());
    // An assertion made for the token endpoint is not for introspection.
    let a = introspect(at("/v1/oauth/token"), &rsa, "RS256").await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.text);
    assert_eq!(a.json()["error"], "invalid_client");
    let a = post(
        &app.http,
        &at("/v1/oauth/token/revoke"),
        None,
        &format!(
            "token={t}&{}",
            assertion_form(&ed.assertion(&id, &at("/v1/oauth/token/revoke"), "EdDSA"))
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let a = introspect(iss.clone(), &ec, "ES256").await;
    assert_eq!(a.json(), json!({"active": false}));
    assert_eq!(
        app.authz(Some(&t), Some(READ)).await.status,
        StatusCode::UNAUTHORIZED
    );
}
on_both!(private_key_jwt_every_algorithm_and_endpoint, algorithms);

// ----- every broken rule -----

async fn refusals(app: TestApp) {
    setup(&app).await;
    let (ec, rsa) = (TestKey::es256("ec"), TestKey::rsa("rsa", 'a'));
    let (id, _) = register(&app, &[&ec, &rsa], json!({})).await;
    let (sid, secret, _) =
        crate::support::admin_client(&app, json!({"name": "secret client", "scopes": [READ]}))
            .await;
    let iss = issuer(&app);
    let good = || claims(&id, &iss);
    let h = json!({"alg": "ES256", "kid": "ec"});
    let stranger = TestKey::es256("ec");
    let now = now_s();
    let rsa_public = serde_json::to_vec(&rsa.public_jwk()).unwrap();
    let hs256 = {
        // HS256 "signed" with the client's public key as the shared secret.
        let header = B64.encode(json!({"alg": "HS256", "kid": "rsa"}).to_string());
        let payload = B64.encode(good().to_string());
        let input = format!("{header}.{payload}");
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &rsa_public);
        let tag = ring::hmac::sign(&key, input.as_bytes());
        format!("{input}.{}", B64.encode(tag.as_ref()))
    };
    let unsigned = format!(
        "{}.{}.",
        B64.encode(json!({"alg": "none"}).to_string()),
        B64.encode(good().to_string())
    );

    // (what, form, Basic header, status, error, description contains)
    type Case = (
        &'static str,
        String,
        Option<String>,
        StatusCode,
        &'static str,
        &'static str,
    );
    let form = |assertion: String| {
        format!(
            "grant_type=client_credentials&client_id={id}&{}",
            assertion_form(&assertion)
        )
    };
    let signed = |claims: Value| ec.sign(h.clone(), &claims);
    let u = StatusCode::UNAUTHORIZED;
    let cases: Vec<Case> = vec![
        ("wrong iss", form(signed(with(good(), "iss", json!("kpc_other")))), None, u, "invalid_client", "`iss` and `sub`"),
        // `sub` names the client whose keys are used, so a wrong one fails before any key does.
        ("wrong sub", form(signed(with(good(), "sub", json!("kpc_other")))), None, u, "invalid_client", FAILED),
        (
            "wrong sub, no client_id",
            format!("grant_type=client_credentials&{}", assertion_form(&signed(with(good(), "sub", json!("kpc_other"))))),
            None, u, "invalid_client", FAILED,
        ),
        ("wrong aud", form(signed(with(good(), "aud", json!("https://elsewhere.example")))), None, u, "invalid_client", "`aud`"),
        ("aud of another endpoint", form(signed(with(good(), "aud", json!(format!("{iss}/v1/oauth/token/revoke"))))), None, u, "invalid_client", "`aud`"),
        ("expired", form(signed(with(with(good(), "exp", json!(now - 300)), "iat", json!(now - 360)))), None, u, "invalid_client", "expired"),
        ("too long-lived", form(signed(with(good(), "exp", json!(now + 3600)))), None, u, "invalid_client", "too long"),
        ("future nbf", form(signed(with(good(), "nbf", json!(now + 600)))), None, u, "invalid_client", "`nbf`"),
        ("future iat", form(signed(with(good(), "iat", json!(now + 600)))), None, u, "invalid_client", "`iat`"),
        ("missing jti", form(signed(with(good(), "jti", Value::Null))), None, u, "invalid_client", "`jti`"),
        ("missing exp", form(signed(with(good(), "exp", Value::Null))), None, u, "invalid_client", "`exp`"),
        ("alg none", form(unsigned), None, u, "invalid_client", FAILED),
        ("HS256 keyed with the public key", form(hs256), None, u, "invalid_client", FAILED),
        ("unknown kid", form(ec.sign(json!({"alg": "ES256", "kid": "nope"}), &good())), None, u, "invalid_client", FAILED),
        ("kid of a key of another type", form(ec.sign(json!({"alg": "ES256", "kid": "rsa"}), &good())), None, u, "invalid_client", FAILED),
        ("signed by another key", form(stranger.sign(h.clone(), &good())), None, u, "invalid_client", FAILED),
        ("not a JWT", form("not.a.jwt".into()), None, u, "invalid_client", FAILED),
        (
            "client_id naming another client",
            format!("grant_type=client_credentials&client_id={sid}&{}", assertion_form(&signed(good()))),
            None, u, "invalid_client", FAILED,
        ),
        (
            "an assertion for a secret client",
            format!("grant_type=client_credentials&{}", assertion_form(&ec.sign(h.clone(), &claims(&sid, &iss)))),
            None, u, "invalid_client", FAILED,
        ),
        (
            "unsupported client_assertion_type",
            format!("grant_type=client_credentials&client_assertion_type=urn:example:saml&client_assertion={}", signed(good())),
            None, u, "invalid_client", "client_assertion_type",
        ),
        (
            "client_assertion without its type",
            format!("grant_type=client_credentials&client_assertion={}", signed(good())),
            None, StatusCode::BAD_REQUEST, "invalid_request", "together",
        ),
        (
            "an assertion and Basic",
            form(signed(good())),
            Some(crate::support::basic(&sid, &secret)),
            StatusCode::BAD_REQUEST, "invalid_request", "one client authentication method",
        ),
        (
            "an assertion and a client_secret",
            format!("{}&client_secret={secret}", form(signed(good()))),
            None, StatusCode::BAD_REQUEST, "invalid_request", "one client authentication method",
        ),
        (
            "a secret for a private_key_jwt client (Basic)",
            "grant_type=client_credentials".into(),
            Some(crate::support::basic(&id, &secret)),
            u, "invalid_client", FAILED,
        ),
        (
            "a secret for a private_key_jwt client (form)",
            format!("grant_type=client_credentials&client_id={id}&client_secret={secret}"),
            None, u, "invalid_client", FAILED,
        ),
    ];
    for (i, (what, body, basic, status, error, description)) in cases.into_iter().enumerate() {
        // Each from its own address: failures are throttled per client and address.
        let http = client_from(IpAddr::from([127, 0, 3, i as u8 + 1]));
        let a = post(
            &http,
            &format!("{iss}/v1/oauth/token"),
            basic.as_deref(),
            &body,
        )
        .await;
        assert_eq!(a.status, status, "{what}: {}", a.text);
        let v = a.json();
        assert_eq!(v["error"], error, "{what}: {v}");
        let d = v["error_description"].as_str().unwrap_or("");
        assert!(d.contains(description), "{what}: {d}");
        // RFC 6749 §5.2: a Basic attempt is answered with a Basic challenge, which names the error.
        match (basic.is_some(), status) {
            (true, StatusCode::UNAUTHORIZED) => assert_eq!(
                a.header("www-authenticate"),
                Some("Basic realm=\"keyplane\", error=\"invalid_client\", error_description=\"client authentication failed\""),
                "{what}"
            ),
            _ => assert_eq!(a.header("www-authenticate"), None, "{what}"),
        }
    }

    // Failures are throttled like secret failures: from one address, the eleventh is 429.
    let http = client_from(IpAddr::from([127, 0, 4, 1]));
    let mut last = None;
    for _ in 0..11 {
        last = Some(token_with(&app, &http, &id, &stranger.sign(h.clone(), &good())).await);
    }
    let last = last.unwrap();
    assert_eq!(last.status, StatusCode::TOO_MANY_REQUESTS, "{}", last.text);
    // ... even for a good assertion, from there; from elsewhere it works.
    assert_eq!(
        token_with(&app, &http, &id, &signed(good())).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        token(&app, &id, &signed(good())).await.status,
        StatusCode::OK
    );

    // Refusals are recorded (aggregated), naming the client, never the assertion.
    app.flush().await;
    let ev = app
        .get(
            &format!("/v1/activity?action=credential.refused&target={id}&limit=200"),
            &app.admin_key.clone(),
        )
        .await;
    assert!(
        ev.json()["items"].as_array().is_some_and(|a| !a.is_empty()),
        "{}",
        ev.text
    );
    assert!(
        !ev.text.contains("eyJ"),
        "an assertion reached the activity log"
    );
}
on_both!(private_key_jwt_refusals, refusals);

// ----- replay -----

async fn replay(app: TestApp) {
    setup(&app).await;
    let ec = TestKey::es256("ec");
    let (id, _) = register(&app, &[&ec], json!({})).await;
    let iss = issuer(&app);
    let once = ec.assertion(&id, &iss, "ES256");
    assert_eq!(token(&app, &id, &once).await.status, StatusCode::OK);
    let again = token(&app, &id, &once).await;
    assert_eq!(again.status, StatusCode::UNAUTHORIZED, "{}", again.text);
    assert_eq!(again.json()["error"], "invalid_client");
    assert!(again.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("used already"));
    // The same jti in a new assertion (another signature, at another endpoint) is a replay too.
    let jti_reused = with(claims(&id, &iss), "jti", {
        let payload = once.split('.').nth(1).unwrap();
        let c: Value = serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap();
        c["jti"].clone()
    });
    let a = post(
        &app.http,
        &format!("{iss}/v1/oauth/token/introspect"),
        None,
        &format!(
            "token=x&{}",
            assertion_form(&ec.sign(json!({"alg": "ES256", "kid": "ec"}), &jti_reused))
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.text);
    // A refused assertion does not use its jti up: the same jti, valid, still works once.
    let fresh = claims(&id, &iss);
    let early = with(fresh.clone(), "aud", json!("https://elsewhere.example"));
    let h = json!({"alg": "ES256", "kid": "ec"});
    assert_eq!(
        token(&app, &id, &ec.sign(h.clone(), &early)).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        token(&app, &id, &ec.sign(h.clone(), &fresh)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        token(&app, &id, &ec.sign(h, &fresh)).await.status,
        StatusCode::UNAUTHORIZED
    );

    // The maintenance purge forgets only what has expired.
    assert_eq!(app.app().purge_client_assertions().await.unwrap(), 0);
    assert_eq!(
        token(&app, &id, &once).await.status,
        StatusCode::UNAUTHORIZED
    );
}
on_both!(private_key_jwt_replay_is_refused, replay);

/// Two nodes on one PostgreSQL database (one deployment, one issuer): an assertion used on one
/// is refused on the other, both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_assertion_used_on_one_node_is_refused_on_the_other() {
    const ISSUER: &str = "https://auth.keyplane.test";
    let opts = Options::default().env("KEYPLANE_ISSUER", ISSUER);
    let Some(a) = keyplane_testkit::spawn_app_with(keyplane_testkit::Backend::Postgres, opts).await
    else {
        return;
    };
    let b = a.spawn_second_node().await;
    setup(&a).await;
    let ed = TestKey::ed25519("ed");
    let (id, _) = register(&a, &[&ed], json!({})).await;
    for (first, second) in [(&a, &b), (&b, &a), (&a, &b)] {
        let once = ed.assertion(&id, ISSUER, "EdDSA");
        let ok = token(first, &id, &once).await;
        assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
        let replayed = token(second, &id, &once).await;
        assert_eq!(
            replayed.status,
            StatusCode::UNAUTHORIZED,
            "{}",
            replayed.text
        );
        assert!(replayed.json()["error_description"]
            .as_str()
            .unwrap()
            .contains("used already"));
        // A fresh assertion works on the second node.
        let fresh = token(second, &id, &ed.assertion(&id, ISSUER, "EdDSA")).await;
        assert_eq!(fresh.status, StatusCode::OK, "{}", fresh.text);
    }
}

// ----- jwks_uri -----

/// A tiny HTTP server on 127.0.0.1 serving a JWK set at `/jwks` (and a redirect to it at
/// `/moved`), counting the fetches of `/jwks`.
struct JwksServer {
    base: String,
    keys: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl JwksServer {
    async fn start(keys: Value) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let keys = Arc::new(Mutex::new(keys));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (k, f) = (Arc::clone(&keys), Arc::clone(&fetches));
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let (k, f) = (Arc::clone(&k), Arc::clone(&f));
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16384 {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf);
                    let path = head.split(' ').nth(1).unwrap_or("");
                    let resp = if path == "/jwks" {
                        f.fetch_add(1, Ordering::SeqCst);
                        let body = k.lock().unwrap().to_string();
                        format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len())
                    } else if path == "/moved" {
                        "HTTP/1.1 302 Found\r\nlocation: /jwks\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string()
                    } else {
                        "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                            .to_string()
                    };
                    let _ = sock.write_all(resp.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        JwksServer {
            base,
            keys,
            fetches,
            task,
        }
    }

    fn serve(&self, keys: &[&TestKey]) {
        *self.keys.lock().unwrap() =
            json!({"keys": keys.iter().map(|k| k.public_jwk()).collect::<Vec<_>>()});
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

const REFETCH: Duration = Duration::from_millis(1100);

fn jwks_uri_options() -> Options {
    Options::default()
        .env("KEYPLANE_JWKS_URI_ALLOW_LOOPBACK_HTTP", "true")
        .env("KEYPLANE_JWKS_REFETCH_INTERVAL_SECONDS", "1")
}

async fn jwks_uri(app: TestApp) {
    setup(&app).await;
    let iss = issuer(&app);
    let (one, two, three) = (
        TestKey::es256("one"),
        TestKey::rsa("two", 'b'),
        TestKey::ed25519("three"),
    );
    let server = JwksServer::start(json!({"keys": [one.public_jwk()]})).await;
    let (id, created) = register(
        &app,
        &[],
        json!({"jwks": null, "jwks_uri": format!("{}/jwks", server.base)}),
    )
    .await;
    assert_eq!(created["jwks_uri"], format!("{}/jwks", server.base));
    assert_eq!(server.fetches(), 0, "nothing is fetched at registration");

    // First use: fetched once, then cached.
    for _ in 0..3 {
        let a = token(&app, &id, &one.assertion(&id, &iss, "ES256")).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    }
    assert_eq!(server.fetches(), 1);

    // The client rotates to a new key: an assertion naming the new kid makes keyplane fetch
    // again (once the refetch interval has passed since the last fetch).
    server.serve(&[&two]);
    tokio::time::sleep(REFETCH).await;
    let a = token(&app, &id, &two.assertion(&id, &iss, "PS256")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(server.fetches(), 2);
    // The old key is gone from the set, so its assertions are refused.
    tokio::time::sleep(REFETCH).await;
    let a = token(&app, &id, &one.assertion(&id, &iss, "ES256")).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.text);

    // A flood of unknown kids makes at most one fetch per interval.
    let before = server.fetches();
    for i in 0..20u8 {
        let stranger = TestKey::es256(&format!("unknown-{i}"));
        let http = client_from(IpAddr::from([127, 0, 5, i + 1]));
        let a = token_with(&app, &http, &id, &stranger.assertion(&id, &iss, "ES256")).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    }
    assert!(
        server.fetches() - before <= 2,
        "{} fetches for 20 unknown kids",
        server.fetches() - before
    );

    // Once the interval has passed, a newly published key is found.
    tokio::time::sleep(REFETCH).await;
    server.serve(&[&two, &three]);
    let a = token(&app, &id, &three.assertion(&id, &iss, "EdDSA")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);

    // Redirects are not followed.
    let (moved, _) = register(
        &app,
        &[],
        json!({"jwks": null, "jwks_uri": format!("{}/moved", server.base)}),
    )
    .await;
    let a = token(&app, &moved, &three.assertion(&moved, &iss, "EdDSA")).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.text);

    // Changing the client's jwks_uri drops what was fetched from the old one.
    let other = JwksServer::start(json!({"keys": [one.public_jwk()]})).await;
    let a = crate::support::patch(
        &app,
        &format!("/v1/oauth-clients/{id}"),
        &app.admin_key.clone(),
        json!({"jwks_uri": format!("{}/jwks", other.base)}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let a = token(&app, &id, &one.assertion(&id, &iss, "ES256")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(other.fetches(), 1);
}
on_both!(
    private_key_jwt_with_a_rotating_jwks_uri,
    jwks_uri,
    super::jwks_uri_options()
);

// ----- metadata -----

async fn metadata(app: TestApp) {
    setup(&app).await;
    let a = app
        .call(
            keyplane_testkit::reqwest::Method::GET,
            "/.well-known/oauth-authorization-server",
            None,
            None,
        )
        .await;
    let v = a.json();
    let methods = json!([
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt"
    ]);
    let algs = json!(["ES256", "EdDSA", "Ed25519", "RS256", "PS256"]);
    for endpoint in [
        "token_endpoint",
        "introspection_endpoint",
        "revocation_endpoint",
    ] {
        // The token endpoint also takes public apps (`none`, the authorization-code grant).
        let mut want = methods.clone();
        if endpoint == "token_endpoint" {
            want.as_array_mut().unwrap().push(json!("none"));
        }
        assert_eq!(
            v[format!("{endpoint}_auth_methods_supported")],
            want,
            "{endpoint}"
        );
        assert_eq!(
            v[format!("{endpoint}_auth_signing_alg_values_supported")],
            algs,
            "{endpoint}"
        );
    }
    assert_eq!(
        v,
        serde_json::to_value(keyplane_http::routes::oauth::metadata_document(
            &issuer(&app),
            vec![READ.into()],
            false
        ))
        .unwrap()
    );
}
on_both!(metadata_advertises_private_key_jwt, metadata);

/// The metadata document is committed (for a fixed issuer); a change must be committed too.
#[test]
fn metadata_document_matches_the_committed_one() {
    let generated = serde_json::to_string_pretty(&keyplane_http::routes::oauth::metadata_document(
        "https://keyplane.example.com",
        vec!["ai-guard:read".into(), "ai-guard:write".into()],
        false,
    ))
    .unwrap()
        + "\n";
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/oauth-authorization-server.json"
    );
    if std::env::var("KEYPLANE_BLESS").is_ok() {
        std::fs::write(path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/oauth-authorization-server.json is out of date: run `KEYPLANE_BLESS=1 cargo test -p keyplane --test it metadata_document` and commit it"
    );
}
