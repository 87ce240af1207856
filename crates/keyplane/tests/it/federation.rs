//! Workload identity federation end to end, on both backends: a tiny OIDC issuer on 127.0.0.1
//! (discovery + JWKS) mints workload tokens (RS256 and ES256) the way GitHub Actions or a
//! Kubernetes API server would; a client that trusts it trades them for its own tokens. Every
//! rule a platform token can break is refused with `invalid_client`; the issuer rotates its key
//! mid-test; a flood of unknown kids keeps fetches bounded; a replayed token is refused (also
//! on a second node sharing PostgreSQL); the activity log names the external identity.

use crate::pkjwt::TestKey;
use crate::support::{client_from, FORM};
use keyplane_core::domain::secret::random_base62;
use keyplane_testkit::reqwest::{header, StatusCode};
use keyplane_testkit::{json, Answer, Options, TestApp};
use serde_json::Value;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const READ: &str = "ai-guard:read";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const AUD: &str = "https://keyplane.test";
const SUB: &str = "repo:acme/app:ref:refs/heads/main";

/// A tiny OIDC issuer: `/.well-known/openid-configuration` and `/keys`, counting key fetches.
struct Issuer {
    base: String,
    keys: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Issuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Issuer {
    async fn start(keys: &[&TestKey]) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let keys = Arc::new(Mutex::new(
            json!({"keys": keys.iter().map(|k| k.public_jwk()).collect::<Vec<_>>()}),
        ));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (k, f, b) = (Arc::clone(&keys), Arc::clone(&fetches), base.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let (k, f, b) = (Arc::clone(&k), Arc::clone(&f), b.clone());
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
                    let body = match path {
                        "/.well-known/openid-configuration" => Some(
                            json!({"issuer": b, "jwks_uri": format!("{b}/keys"),
                                   "id_token_signing_alg_values_supported": ["RS256", "ES256"]})
                            .to_string(),
                        ),
                        "/keys" => {
                            f.fetch_add(1, Ordering::SeqCst);
                            Some(k.lock().unwrap().to_string())
                        }
                        _ => None,
                    };
                    let resp = match body {
                        Some(body) => format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len()),
                        None => "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string(),
                    };
                    let _ = sock.write_all(resp.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        Issuer {
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

    /// A workload token: this issuer, `sub`, `aud`, five minutes to live, a fresh jti.
    fn claims(&self, sub: &str, aud: &str) -> Value {
        let now = now_s();
        json!({"iss": self.base, "sub": sub, "aud": aud, "iat": now, "nbf": now,
               "exp": now + 300, "jti": random_base62(20)})
    }

    fn mint(&self, key: &TestKey, claims: &Value) -> String {
        key.sign(
            json!({"alg": key.alg(), "kid": key.kid, "typ": "JWT"}),
            claims,
        )
    }
}

fn now_s() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn with(mut v: Value, k: &str, x: Value) -> Value {
    if x.is_null() {
        v.as_object_mut().unwrap().remove(k);
    } else {
        v[k] = x;
    }
    v
}

async fn trade_with(
    app: &TestApp,
    http: &keyplane_testkit::reqwest::Client,
    id: &str,
    token: &str,
) -> Answer {
    let resp = http
        .post(format!("{}/v1/oauth/token", app.base))
        .header(header::CONTENT_TYPE, FORM)
        .body(format!(
            "grant_type=client_credentials&client_id={id}&client_assertion_type={JWT_BEARER}&client_assertion={token}"
        ))
        .send()
        .await
        .expect("request");
    Answer {
        status: resp.status(),
        headers: resp.headers().clone(),
        text: resp.text().await.expect("body"),
    }
}

async fn trade(app: &TestApp, id: &str, token: &str) -> Answer {
    trade_with(app, &app.http, id, token).await
}

fn refused(a: &Answer) {
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.text);
    assert_eq!(a.json()["error"], "invalid_client", "{}", a.text);
}

async fn register(app: &TestApp, creds: Value) -> String {
    let a = app
        .post(
            "/v1/oauth-clients",
            &app.admin_key.clone(),
            json!({"name": format!("workload {}", random_base62(6)), "scopes": [READ],
                   "token_endpoint_auth_method": "private_key_jwt",
                   "federated_credentials": creds}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let v = a.json();
    assert!(v.get("client_secret").is_none());
    v["client_id"].as_str().unwrap().to_string()
}

fn options() -> Options {
    Options::default()
        .env("KEYPLANE_JWKS_URI_ALLOW_LOOPBACK_HTTP", "true")
        .env("KEYPLANE_JWKS_REFETCH_INTERVAL_SECONDS", "1")
}

const REFETCH: Duration = Duration::from_millis(1100);

async fn federation(app: TestApp) {
    app.service("ai-guard", &[READ]).await;
    let (rsa, ec) = (TestKey::rsa("r1", 'a'), TestKey::es256("e1"));
    let idp = Issuer::start(&[&rsa, &ec]).await;
    let other = Issuer::start(&[&rsa]).await;

    // Registration checks the credentials.
    for bad in [
        json!([{"issuer": "http://example.com", "subject": SUB, "audience": AUD}]),
        json!([{"issuer": idp.base, "audience": AUD}]),
        json!([{"issuer": idp.base, "subject_pattern": "*", "audience": AUD}]),
        json!([{"issuer": idp.base, "subject": SUB}]),
    ] {
        let a = app
            .post(
                "/v1/oauth-clients",
                &app.admin_key.clone(),
                json!({"name": "bad", "scopes": [READ], "token_endpoint_auth_method": "private_key_jwt",
                       "federated_credentials": bad}),
            )
            .await;
        assert_eq!(
            a.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}: {}",
            a.text
        );
    }
    let a = app
        .post(
            "/v1/oauth-clients",
            &app.admin_key.clone(),
            json!({"name": "secretful", "scopes": [READ],
                   "federated_credentials": [{"issuer": idp.base, "subject": SUB, "audience": AUD}]}),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);

    let id = register(
        &app,
        json!([{"issuer": idp.base, "subject": SUB, "audience": AUD},
               {"issuer": idp.base, "subject_pattern": "system:serviceaccount:jobs:*", "audience": "keyplane"}]),
    )
    .await;
    let got = app
        .get(&format!("/v1/oauth-clients/{id}"), &app.admin_key.clone())
        .await
        .json();
    assert_eq!(
        got["federated_credentials"][1]["subject_pattern"],
        "system:serviceaccount:jobs:*"
    );

    // Good tokens: RS256 (GitHub style) and ES256 (Kubernetes style, array aud, matched by
    // pattern); keys fetched once.
    let a = trade(&app, &id, &idp.mint(&rsa, &idp.claims(SUB, AUD))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json()["scope"], READ);
    let access = a.json()["access_token"].as_str().unwrap().to_string();
    let k8s = with(
        idp.claims("system:serviceaccount:jobs:nightly", "x"),
        "aud",
        json!(["https://kubernetes.default.svc", "keyplane"]),
    );
    let a = trade(&app, &id, &idp.mint(&ec, &k8s)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(idp.fetches(), 1);
    // The token works.
    let i = app
        .call(
            keyplane_testkit::reqwest::Method::GET,
            "/v1/authz",
            Some(&access),
            None,
        )
        .await;
    assert_eq!(i.status, StatusCode::OK, "{}", i.text);

    // Every broken rule is invalid_client.
    let now = now_s();
    for what in [
        (
            "wrong sub",
            idp.mint(&rsa, &idp.claims("repo:acme/app:ref:refs/heads/dev", AUD)),
        ),
        (
            "wrong pattern",
            idp.mint(
                &rsa,
                &idp.claims("system:serviceaccount:other:x", "keyplane"),
            ),
        ),
        (
            "wrong aud",
            idp.mint(&rsa, &idp.claims(SUB, "https://elsewhere")),
        ),
        ("wrong issuer", other.mint(&rsa, &other.claims(SUB, AUD))),
        (
            "expired",
            idp.mint(&rsa, &with(idp.claims(SUB, AUD), "exp", json!(now - 120))),
        ),
        (
            "no exp",
            idp.mint(&rsa, &with(idp.claims(SUB, AUD), "exp", Value::Null)),
        ),
        (
            "too long-lived",
            idp.mint(&rsa, &with(idp.claims(SUB, AUD), "exp", json!(now + 7200))),
        ),
        (
            "not yet valid",
            idp.mint(&rsa, &with(idp.claims(SUB, AUD), "nbf", json!(now + 600))),
        ),
        ("bad signature", {
            let t = idp.mint(&rsa, &idp.claims(SUB, AUD));
            let (head, _) = t.rsplit_once('.').unwrap();
            let forged = idp.mint(&TestKey::rsa("r1", 'b'), &idp.claims(SUB, AUD));
            format!("{head}.{}", forged.rsplit('.').next().unwrap())
        }),
        (
            "unknown kid",
            idp.mint(&TestKey::es256("nobody"), &idp.claims(SUB, AUD)),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        // Each from its own address, so the failure throttle stays out of the way.
        let http = client_from(IpAddr::from([127, 0, 7, what.0 as u8 + 1]));
        let (what, token) = what.1;
        let a = trade_with(&app, &http, &id, &token).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{what}: {}", a.text);
        assert_eq!(a.json()["error"], "invalid_client", "{what}");
    }
    // Without client_id the token is not ours to route: refused too.
    let a = app
        .http
        .post(format!("{}/v1/oauth/token", app.base))
        .header(header::CONTENT_TYPE, FORM)
        .body(format!(
            "grant_type=client_credentials&client_assertion_type={JWT_BEARER}&client_assertion={}",
            idp.mint(&rsa, &idp.claims(SUB, AUD))
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(a.status(), StatusCode::UNAUTHORIZED);

    // Replay: the same platform token a second time is refused, also by another client that
    // trusts the same identity.
    let once = idp.mint(&rsa, &idp.claims(SUB, AUD));
    assert_eq!(trade(&app, &id, &once).await.status, StatusCode::OK);
    let again = trade(&app, &id, &once).await;
    refused(&again);
    assert!(again.text.contains("used already"), "{}", again.text);
    let twin = register(
        &app,
        json!([{"issuer": idp.base, "subject": SUB, "audience": AUD}]),
    )
    .await;
    refused(&trade(&app, &twin, &once).await);
    // A token without jti is single-use too (by its hash).
    let no_jti = idp.mint(&rsa, &with(idp.claims(SUB, AUD), "jti", Value::Null));
    assert_eq!(trade(&app, &id, &no_jti).await.status, StatusCode::OK);
    refused(&trade(&app, &id, &no_jti).await);

    // The issuer rotates its key: new tokens keep working (one refetch), old-key tokens stop.
    let rsa2 = TestKey::rsa("r2", 'b');
    idp.serve(&[&rsa2]);
    tokio::time::sleep(REFETCH).await;
    let a = trade(&app, &id, &idp.mint(&rsa2, &idp.claims(SUB, AUD))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    tokio::time::sleep(REFETCH).await;
    let a = trade(
        &app,
        &id,
        &idp.mint(&TestKey::rsa("r3", 'b'), &idp.claims(SUB, AUD)),
    )
    .await;
    refused(&a);
    let a = trade(&app, &id, &idp.mint(&rsa, &idp.claims(SUB, AUD))).await;
    refused(&a);

    // A flood of unknown kids (from many addresses) fetches at most once per interval.
    let before = idp.fetches();
    for i in 0..20u8 {
        let stranger = TestKey::es256(&format!("unknown-{i}"));
        let http = client_from(IpAddr::from([127, 0, 6, i + 1]));
        let a = trade_with(
            &app,
            &http,
            &id,
            &idp.mint(&stranger, &idp.claims(SUB, AUD)),
        )
        .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    }
    assert!(
        idp.fetches() - before <= 2,
        "{} fetches for 20 unknown kids",
        idp.fetches() - before
    );

    // The activity log names the external identity.
    app.flush().await;
    let log = app
        .get(
            &format!("/v1/activity?target={id}&action=access_token.issue&limit=100"),
            &app.admin_key.clone(),
        )
        .await
        .json();
    let items = log["items"].as_array().unwrap();
    let fed: Vec<_> = items
        .iter()
        .filter(|e| e["details"]["via"] == "federation")
        .collect();
    assert!(fed.len() >= 4, "{log}");
    assert!(fed
        .iter()
        .any(|e| e["details"]["federated"]["iss"] == idp.base.as_str()
            && e["details"]["federated"]["sub"] == SUB));
    assert!(fed
        .iter()
        .any(|e| e["details"]["federated"]["sub"] == "system:serviceaccount:jobs:nightly"));
}
on_both!(workload_identity_federation, federation, super::options());

/// Two nodes on one PostgreSQL database: a platform token traded on one is refused on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_token_used_on_one_node_is_refused_on_the_other() {
    let Some(a) =
        keyplane_testkit::spawn_app_with(keyplane_testkit::Backend::Postgres, options()).await
    else {
        return;
    };
    let b = a.spawn_second_node().await;
    a.service("ai-guard", &[READ]).await;
    let key = TestKey::rsa("r1", 'a');
    let idp = Issuer::start(&[&key]).await;
    let id = register(
        &a,
        json!([{"issuer": idp.base, "subject": SUB, "audience": AUD}]),
    )
    .await;
    for (first, second) in [(&a, &b), (&b, &a)] {
        let once = idp.mint(&key, &idp.claims(SUB, AUD));
        let ok = trade(first, &id, &once).await;
        assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
        let replayed = trade(second, &id, &once).await;
        refused(&replayed);
        assert!(replayed.text.contains("used already"), "{}", replayed.text);
        let fresh = trade(second, &id, &idp.mint(&key, &idp.claims(SUB, AUD))).await;
        assert_eq!(fresh.status, StatusCode::OK, "{}", fresh.text);
    }
}
