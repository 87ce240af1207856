//! keyplane-verify against a scripted issuer on 127.0.0.1 port 0: discovery, JWKS caching and
//! its rate-limited refetch, introspection with both kinds of credentials and both caches,
//! and the layer's answers. keyplane's own end-to-end tests (crates/keyplane/tests/it/verify.rs)
//! run the same against the real server.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use keyplane_verify::{
    AuthError, CredentialKind, Identity, InvalidReason, RequireScope, Verifier, VerifyLayer,
};
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tower::ServiceExt;

const CLIENT: (&str, &str) = ("kpc_rs", "kps_secret");
const INTROSPECTOR: &str = "kp_introspector";

/// The scripted issuer: what it publishes and answers, and how often it was asked.
#[derive(Clone, Default)]
struct Issuer {
    base: String,
    claimed_issuer: Arc<Mutex<Option<String>>>,
    jwks: Arc<Mutex<Vec<Value>>>,
    answers: Arc<Mutex<HashMap<String, Value>>>,
    jwks_fetches: Arc<AtomicUsize>,
    introspections: Arc<AtomicUsize>,
    introspection_status: Arc<Mutex<Option<StatusCode>>>,
}

impl Issuer {
    async fn start() -> Issuer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = Issuer {
            base: format!("http://{}", listener.local_addr().unwrap()),
            ..Issuer::default()
        };
        let app = Router::new()
            .route("/.well-known/oauth-authorization-server", get(metadata))
            .route("/jwks", get(jwks))
            .route("/introspect", post(introspect))
            .with_state(issuer.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        issuer
    }

    fn publish(&self, jwk: &Value) {
        self.jwks.lock().unwrap().push(jwk.clone());
    }

    fn withdraw(&self, kid: &str) {
        self.jwks.lock().unwrap().retain(|k| k["kid"] != kid);
    }

    fn answer(&self, token: &str, answer: Value) {
        self.answers.lock().unwrap().insert(token.into(), answer);
    }

    fn fetches(&self) -> usize {
        self.jwks_fetches.load(Ordering::SeqCst)
    }

    fn introspections(&self) -> usize {
        self.introspections.load(Ordering::SeqCst)
    }

    fn verifier(&self) -> keyplane_verify::VerifierBuilder {
        Verifier::builder(&self.base).introspect_with_client(CLIENT.0, CLIENT.1)
    }
}

async fn metadata(State(i): State<Issuer>) -> Json<Value> {
    let claimed = i.claimed_issuer.lock().unwrap().clone();
    Json(json!({
        "issuer": claimed.unwrap_or_else(|| i.base.clone()),
        "jwks_uri": format!("{}/jwks", i.base),
        "introspection_endpoint": format!("{}/introspect", i.base),
    }))
}

async fn jwks(State(i): State<Issuer>) -> Json<Value> {
    i.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    Json(json!({ "keys": *i.jwks.lock().unwrap() }))
}

async fn introspect(
    State(i): State<Issuer>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, Json<Value>) {
    i.introspections.fetch_add(1, Ordering::SeqCst);
    if let Some(s) = *i.introspection_status.lock().unwrap() {
        return (s, Json(json!({ "error": "scripted" })));
    }
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let expected_basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", CLIENT.0, CLIENT.1))
    );
    if auth != expected_basic && auth != format!("Bearer {INTROSPECTOR}") {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "invalid_client" })),
        );
    }
    assert_eq!(
        headers[header::CONTENT_TYPE],
        "application/x-www-form-urlencoded"
    );
    let token = form_urlencoded::parse(body.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let answer = i.answers.lock().unwrap().get(&token).cloned();
    (
        StatusCode::OK,
        Json(answer.unwrap_or_else(|| json!({ "active": false }))),
    )
}

struct Signer {
    kid: String,
    alg: Algorithm,
    enc: EncodingKey,
    jwk: Value,
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn signer(kid: &str, alg: Algorithm) -> Signer {
    let rng = ring::rand::SystemRandom::new();
    let (enc, jwk) = match alg {
        Algorithm::ES256 => {
            let a = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
            let der = EcdsaKeyPair::generate_pkcs8(a, &rng).unwrap();
            let pair = EcdsaKeyPair::from_pkcs8(a, der.as_ref(), &rng).unwrap();
            let p = pair.public_key().as_ref();
            (
                EncodingKey::from_ec_der(der.as_ref()),
                json!({"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
                    "x": b64(&p[1..33]), "y": b64(&p[33..65])}),
            )
        }
        _ => {
            let der = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
            let pair = Ed25519KeyPair::from_pkcs8(der.as_ref()).unwrap();
            (
                EncodingKey::from_ed_der(der.as_ref()),
                json!({"kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": kid,
                    "x": b64(pair.public_key().as_ref())}),
            )
        }
    };
    Signer {
        kid: kid.into(),
        alg,
        enc,
        jwk,
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Signer {
    fn token(&self, iss: &str, scope: &str) -> String {
        let n = now();
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        h.typ = Some("at+jwt".into());
        let claims = json!({"iss": iss, "sub": "kpc_app", "aud": iss, "exp": n + 600, "iat": n,
            "nbf": n, "jti": format!("jti_{}", rand_suffix()), "client_id": "kpc_app", "scope": scope});
        let token = jsonwebtoken::encode(&h, &claims, &self.enc).unwrap();
        if self.alg == Algorithm::ES256 {
            low_s(token)
        } else {
            token
        }
    }
}

/// What a careful issuer (keyplane among them) signs: ES256 signatures in low-s form. The
/// `jsonwebtoken` crate leaves `s` as ring made it, so tests normalize it (`s := n - s`).
fn low_s(token: String) -> String {
    use base64::Engine;
    const N: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63,
        0x25, 0x51,
    ];
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (head, sig) = token.rsplit_once('.').unwrap();
    let mut raw = b64.decode(sig).unwrap();
    let half = {
        let mut h = [0u8; 32];
        let mut carry = 0u8;
        for (i, b) in N.iter().enumerate() {
            h[i] = (carry << 7) | (b >> 1);
            carry = b & 1;
        }
        h
    };
    if raw.len() != 64 || raw[32..] <= half[..] {
        return token;
    }
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let d = i16::from(N[i]) - i16::from(raw[32 + i]) - borrow;
        borrow = i16::from(d < 0);
        raw[32 + i] = (d + 256 * borrow) as u8;
    }
    format!("{head}.{}", b64.encode(raw))
}

fn rand_suffix() -> u64 {
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::SeqCst) as u64
}

fn active(sub: &str, scope: &str, kind: &str) -> Value {
    json!({"active": true, "sub": sub, "scope": scope, "exp": now() + 600,
        "credential_type": kind, "jti": "id_1", "username": "svc"})
}

#[tokio::test]
async fn jwks_is_cached_and_unknown_kids_refetch_at_most_once_per_interval() {
    let issuer = Issuer::start().await;
    let a = signer("a", Algorithm::ES256);
    let b = signer("b", Algorithm::EdDSA);
    issuer.publish(&a.jwk);
    let v = issuer
        .verifier()
        .jwks_refetch_interval(Duration::from_secs(1))
        .build()
        .unwrap();

    let id = v.verify(&a.token(&issuer.base, "x y")).await.unwrap();
    assert_eq!(id.kind, CredentialKind::JwtAccessToken);
    assert_eq!(id.scopes, ["x", "y"]);
    assert_eq!(id.client_id.as_deref(), Some("kpc_app"));
    v.verify(&a.token(&issuer.base, "x")).await.unwrap();
    assert_eq!(issuer.fetches(), 1, "one fetch for two tokens");

    // b is not published yet, and made-up kids flood in: no refetch within the interval.
    let early = b.token(&issuer.base, "x");
    assert_eq!(
        v.verify(&early).await,
        Err(AuthError::InvalidToken(InvalidReason::UnknownKey))
    );
    for i in 0..20 {
        let stranger = signer(&format!("k{i}"), Algorithm::ES256);
        assert!(v.verify(&stranger.token(&issuer.base, "x")).await.is_err());
    }
    assert_eq!(
        issuer.fetches(),
        1,
        "unknown kids within the interval: no refetch"
    );

    // The issuer rotates: b is published; after the interval, one refetch picks it up.
    issuer.publish(&b.jwk);
    tokio::time::sleep(Duration::from_millis(1050)).await;
    let id = v.verify(&early).await.expect("b is picked up");
    assert_eq!(id.subject, "kpc_app");
    assert_eq!(issuer.fetches(), 2);
    let stranger = signer("zz", Algorithm::ES256);
    assert!(v.verify(&stranger.token(&issuer.base, "x")).await.is_err());
    v.verify(&a.token(&issuer.base, "x")).await.unwrap();
    assert_eq!(issuer.fetches(), 2, "right after a refetch, no other");
}

#[tokio::test]
async fn a_withdrawn_key_stops_being_trusted_after_the_max_age() {
    let issuer = Issuer::start().await;
    let a = signer("a", Algorithm::ES256);
    issuer.publish(&a.jwk);
    let v = issuer
        .verifier()
        .jwks_max_age(Duration::from_millis(200))
        .jwks_refetch_interval(Duration::from_millis(50))
        .build()
        .unwrap();
    v.warm_up().await.unwrap();
    let t = a.token(&issuer.base, "x");
    v.verify(&t).await.unwrap();
    assert_eq!(issuer.fetches(), 1, "warm_up fetched it");
    issuer.withdraw("a");
    v.verify(&t).await.expect("still within the max age");
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        v.verify(&t).await,
        Err(AuthError::InvalidToken(InvalidReason::UnknownKey))
    );
}

#[tokio::test]
async fn introspection_answers_are_cached_positive_and_negative() {
    let issuer = Issuer::start().await;
    let v = issuer
        .verifier()
        .positive_cache_ttl(Duration::from_millis(400))
        .negative_cache_ttl(Duration::from_millis(200))
        .build()
        .unwrap();
    issuer.answer(
        "kpt_live",
        active("kpc_app", "ai-guard:read", "access_token"),
    );
    issuer.answer("kp_key", active("mem_1", "a b", "api_key"));

    let id = v.verify("kpt_live").await.unwrap();
    assert_eq!(id.kind, CredentialKind::OpaqueAccessToken);
    assert_eq!(id.subject, "kpc_app");
    assert_eq!(id.name.as_deref(), Some("svc"));
    assert!(id.expires_at.is_some());
    let key = v.verify("kp_key").await.unwrap();
    assert_eq!(key.kind, CredentialKind::ApiKey);
    assert_eq!(key.scopes, ["a", "b"]);
    for _ in 0..10 {
        v.verify("kpt_live").await.unwrap();
    }
    assert_eq!(
        issuer.introspections(),
        2,
        "one call per credential per TTL"
    );

    // Revoked at the issuer: still accepted from the cache, refused once the TTL is over.
    issuer.answer("kpt_live", json!({ "active": false }));
    let revoked_at = std::time::Instant::now();
    v.verify("kpt_live").await.expect("cached");
    while v.verify("kpt_live").await.is_ok() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let delay = revoked_at.elapsed();
    assert!(delay <= Duration::from_millis(400 + 250), "{delay:?}");

    // Inactive answers are cached for the negative TTL.
    let before = issuer.introspections();
    for _ in 0..10 {
        assert_eq!(
            v.verify("kpt_unknown").await,
            Err(AuthError::InvalidToken(InvalidReason::Inactive))
        );
    }
    assert_eq!(issuer.introspections(), before + 1);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let _ = v.verify("kpt_unknown").await;
    assert_eq!(issuer.introspections(), before + 2);
    v.forget("kpt_unknown");
    let _ = v.verify("kpt_unknown").await;
    assert_eq!(
        issuer.introspections(),
        before + 3,
        "forget drops the entry"
    );
}

#[tokio::test]
async fn a_cached_answer_never_outlives_the_credential() {
    let issuer = Issuer::start().await;
    let v = issuer.verifier().build().unwrap();
    let mut a = active("mem_1", "a", "api_key");
    a["exp"] = json!(now() + 1);
    issuer.answer("kp_short", a);
    v.verify("kp_short").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The issuer now says inactive; the 10 s cache must not have kept the old answer.
    issuer.answer("kp_short", json!({ "active": false }));
    assert!(v.verify("kp_short").await.is_err());
    assert_eq!(issuer.introspections(), 2);
}

#[tokio::test]
async fn introspection_authenticates_by_basic_or_bearer_key_and_checks_the_answer() {
    let issuer = Issuer::start().await;
    issuer.answer("kpt_t", active("kpc_app", "x", "access_token"));
    let by_key = Verifier::builder(&issuer.base)
        .introspect_with_api_key(INTROSPECTOR)
        .build()
        .unwrap();
    assert!(by_key.verify("kpt_t").await.is_ok());
    assert!(issuer
        .verifier()
        .build()
        .unwrap()
        .verify("kpt_t")
        .await
        .is_ok());

    // Our own credentials refused: 503 (the token may be fine), and nothing cached.
    let wrong = Verifier::builder(&issuer.base)
        .introspect_with_client("kpc_rs", "kps_wrong")
        .build()
        .unwrap();
    assert!(matches!(
        wrong.verify("kpt_t").await,
        Err(AuthError::Unavailable(_))
    ));
    // No introspection credentials: opaque credentials refused locally.
    let jwt_only = Verifier::builder(&issuer.base).build().unwrap();
    let n = issuer.introspections();
    assert_eq!(
        jwt_only.verify("kpt_t").await,
        Err(AuthError::InvalidToken(InvalidReason::NotAccepted))
    );
    assert_eq!(issuer.introspections(), n);

    // Answers for another issuer or audience, or already expired, are refused.
    let v = issuer.verifier().build().unwrap();
    let mut other = active("s", "x", "access_token");
    other["iss"] = json!("https://evil.example");
    issuer.answer("kpt_iss", other);
    let mut aud = active("s", "x", "access_token");
    aud["aud"] = json!(["https://other.example"]);
    issuer.answer("kpt_aud", aud);
    let mut ours = active("s", "x", "access_token");
    ours["aud"] = json!(issuer.base.clone());
    issuer.answer("kpt_ours", ours);
    let mut old = active("s", "x", "access_token");
    old["exp"] = json!(now() - 3600);
    issuer.answer("kpt_old", old);
    assert_eq!(
        v.verify("kpt_iss").await,
        Err(AuthError::InvalidToken(InvalidReason::Issuer))
    );
    assert_eq!(
        v.verify("kpt_aud").await,
        Err(AuthError::InvalidToken(InvalidReason::Audience))
    );
    assert!(v.verify("kpt_ours").await.is_ok());
    assert_eq!(
        v.verify("kpt_old").await,
        Err(AuthError::InvalidToken(InvalidReason::Expired))
    );

    // A server error at the issuer: 503, not 401.
    *issuer.introspection_status.lock().unwrap() = Some(StatusCode::INTERNAL_SERVER_ERROR);
    assert!(matches!(
        v.verify("kpt_new").await,
        Err(AuthError::Unavailable(_))
    ));
}

#[tokio::test]
async fn jwts_can_also_be_introspected() {
    let issuer = Issuer::start().await;
    let a = signer("a", Algorithm::EdDSA);
    issuer.publish(&a.jwk);
    let v = issuer
        .verifier()
        .introspect_jwts(true)
        .positive_cache_ttl(Duration::from_millis(200))
        .build()
        .unwrap();
    let t = a.token(&issuer.base, "x");
    issuer.answer(&t, active("kpc_app", "x", "access_token"));
    let id = v.verify(&t).await.unwrap();
    assert_eq!(
        id.kind,
        CredentialKind::JwtAccessToken,
        "the local claims win"
    );
    issuer.answer(&t, json!({ "active": false }));
    v.verify(&t).await.expect("cached");
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        v.verify(&t).await,
        Err(AuthError::InvalidToken(InvalidReason::Inactive))
    );
    // Without the option the same revoked JWT is still accepted: the documented trade-off.
    let local = issuer.verifier().build().unwrap();
    assert!(local.verify(&t).await.is_ok());
}

#[tokio::test]
async fn discovery_checks_the_issuer_and_retries_later() {
    let issuer = Issuer::start().await;
    *issuer.claimed_issuer.lock().unwrap() = Some("https://impostor.example".into());
    issuer.answer("kpt_t", active("s", "x", "access_token"));
    let v = issuer.verifier().build().unwrap();
    let e = v.warm_up().await.unwrap_err();
    assert!(
        matches!(&e, AuthError::Unavailable(m) if m.contains("impostor")),
        "{e:?}"
    );
    *issuer.claimed_issuer.lock().unwrap() = None;
    tokio::time::sleep(Duration::from_millis(1050)).await;
    assert!(v.verify("kpt_t").await.is_ok(), "discovery is retried");

    // Through reach_at: the metadata of a public issuer, fetched from an internal address.
    let public = Issuer::start().await;
    let internal = public.base.clone();
    let outside = "https://auth.example";
    *public.claimed_issuer.lock().unwrap() = Some(outside.into());
    let a = signer("a", Algorithm::ES256);
    public.publish(&a.jwk);
    // The metadata names endpoints under the internal address here, which reach_at leaves be.
    let v = Verifier::builder(outside)
        .reach_at(&internal)
        .build()
        .unwrap();
    assert!(v.verify(&a.token(outside, "x")).await.is_ok());
    assert!(
        v.verify(&a.token(&internal, "x")).await.is_err(),
        "iss must be the issuer"
    );
}

keyplane_verify::scope!(Read = "ai-guard:read");

async fn protected(who: RequireScope<Read>) -> String {
    who.subject.clone()
}

async fn who(who: Option<Identity>) -> String {
    who.map(|w| w.subject).unwrap_or_else(|| "anonymous".into())
}

async fn send(app: &Router, auth: &[&str]) -> (StatusCode, HeaderMap, String) {
    let mut req = Request::get("/");
    for a in auth {
        req = req.header(header::AUTHORIZATION, *a);
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = axum::body::to_bytes(res.into_body(), 1 << 16)
        .await
        .unwrap();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

fn challenge(h: &HeaderMap) -> &str {
    h.get(header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

#[tokio::test]
async fn the_layer_and_the_extractors_answer_rfc_6750() {
    let issuer = Issuer::start().await;
    issuer.answer("kp_reader", active("mem_r", "ai-guard:read", "api_key"));
    issuer.answer("kp_other", active("mem_o", "other", "api_key"));
    let v = issuer.verifier().realm("ai-guard").build().unwrap();
    let app = Router::new()
        .route("/", get(protected))
        .layer(VerifyLayer::new(v.clone()));

    let (s, h, _) = send(&app, &[]).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(challenge(&h), "Bearer realm=\"ai-guard\"");
    let (s, h, _) = send(&app, &["Basic a2V5Og=="]).await;
    assert_eq!(
        (s, challenge(&h)),
        (StatusCode::UNAUTHORIZED, "Bearer realm=\"ai-guard\"")
    );
    for bad in [
        "Bearer kp_nope",
        "Bearer garbage",
        "Bearer ",
        "Bearer eyJ.eyJ.x",
    ] {
        let (s, h, _) = send(&app, &[bad]).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{bad}");
        assert!(challenge(&h).contains("error=\"invalid_token\""), "{bad}");
    }
    let (s, h, _) = send(&app, &["Bearer kp_reader", "Bearer kp_reader"]).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(challenge(&h).contains("error=\"invalid_request\""));

    let (s, _, body) = send(&app, &["Bearer kp_reader"]).await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "mem_r"));
    let (s, h, body) = send(&app, &["Bearer kp_other"]).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(
        challenge(&h),
        "Bearer realm=\"ai-guard\", error=\"insufficient_scope\", error_description=\"the credential lacks the scope this request needs\", scope=\"ai-guard:read\""
    );
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"],
        "insufficient_scope"
    );

    // The scope required by the layer itself.
    let strict = Router::new()
        .route("/", get(who))
        .layer(VerifyLayer::new(v.clone()).require_scope("ai-guard:read"));
    assert_eq!(
        send(&strict, &["Bearer kp_other"]).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(send(&strict, &["Bearer kp_reader"]).await.2, "mem_r");

    // Anonymous requests let through, bad credentials still refused.
    let open = Router::new()
        .route("/", get(who))
        .layer(VerifyLayer::new(v.clone()).allow_anonymous());
    assert_eq!(send(&open, &[]).await.2, "anonymous");
    assert_eq!(send(&open, &["Bearer kp_reader"]).await.2, "mem_r");
    assert_eq!(
        send(&open, &["Bearer kp_nope"]).await.0,
        StatusCode::UNAUTHORIZED
    );

    // The issuer failing: 503 with Retry-After, no challenge.
    *issuer.introspection_status.lock().unwrap() = Some(StatusCode::BAD_GATEWAY);
    let (s, h, _) = send(&app, &["Bearer kp_fresh"]).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h[header::RETRY_AFTER], "1");
    assert!(h.get(header::WWW_AUTHENTICATE).is_none());
}

/// RFC 9728: with a protected resource, every 401 and 403 names the metadata URL (and a 401
/// the scopes the route needs), and the document is served at its well-known path, outside the
/// layer, with the issuer as the authorization server.
#[tokio::test]
async fn a_protected_resource_publishes_its_metadata_and_names_it_in_challenges() {
    let issuer = Issuer::start().await;
    issuer.answer("kp_reader", active("mem_r", "ai-guard:read", "api_key"));
    issuer.answer("kp_other", active("mem_o", "other", "api_key"));
    let v = issuer
        .verifier()
        .protected_resource(
            "https://guard.example.com/mcp",
            ["ai-guard:read", "ai-guard:write"],
        )
        .resource_name("AI Guard")
        .build()
        .unwrap();
    let pr = v.protected_resource().unwrap().clone();
    let url = "https://guard.example.com/.well-known/oauth-protected-resource/mcp";
    assert_eq!(pr.metadata_url(), url);
    let app = Router::new()
        .route("/", get(protected))
        .layer(VerifyLayer::new(v.clone()))
        .route_service(pr.well_known_path(), pr.service());

    // No error code without a credential; the layer requires no scope, so it names none
    // (a client then asks for the document's `scopes_supported`).
    let (s, h, _) = send(&app, &[]).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(challenge(&h), format!("Bearer resource_metadata=\"{url}\""));
    // With anonymous requests let through, the extractor answers, naming its scope.
    let open = Router::new()
        .route("/", get(protected))
        .layer(VerifyLayer::new(v.clone()).allow_anonymous());
    let (s, h, _) = send(&open, &[]).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenge(&h),
        format!("Bearer scope=\"ai-guard:read\", resource_metadata=\"{url}\"")
    );
    let (s, h, _) = send(&app, &["Bearer kp_nope"]).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(challenge(&h).starts_with("Bearer error=\"invalid_token\""));
    assert!(challenge(&h).ends_with(&format!(", resource_metadata=\"{url}\"")));
    let (s, h, _) = send(&app, &["Bearer kp_other"]).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(
        challenge(&h),
        format!("Bearer error=\"insufficient_scope\", error_description=\"the credential lacks the scope this request needs\", scope=\"ai-guard:read\", resource_metadata=\"{url}\"")
    );

    // The layer's own scopes: all of them, on a 401 and a 403.
    let strict = Router::new().route("/", get(who)).layer(
        VerifyLayer::new(v.clone())
            .require_scope("ai-guard:read")
            .require_scope("ai-guard:write"),
    );
    let (s, h, _) = send(&strict, &[]).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenge(&h),
        format!("Bearer scope=\"ai-guard:read ai-guard:write\", resource_metadata=\"{url}\"")
    );
    let (s, h, _) = send(&strict, &["Bearer kp_reader"]).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(challenge(&h).contains("scope=\"ai-guard:read ai-guard:write\""));

    // The document, without a credential.
    let res = app
        .clone()
        .oneshot(
            Request::get(pr.well_known_path())
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    let body = axum::body::to_bytes(res.into_body(), 1 << 16)
        .await
        .unwrap();
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["resource"], "https://guard.example.com/mcp");
    assert_eq!(doc["authorization_servers"], json!([issuer.base]));
    assert_eq!(
        doc["scopes_supported"],
        json!(["ai-guard:read", "ai-guard:write"])
    );
    assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
    assert_eq!(doc["resource_name"], "AI Guard");

    // A resource that is not an absolute URI is refused when the verifier is built.
    let bad = issuer
        .verifier()
        .protected_resource("guard.example.com/mcp", ["x"])
        .build()
        .err();
    assert!(matches!(
        bad,
        Some(keyplane_verify::BuildError::Resource(_))
    ));
}
