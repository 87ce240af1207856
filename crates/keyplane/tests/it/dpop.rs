//! DPoP (RFC 9449) end to end, on both backends: the token endpoint binds tokens to a proof's
//! key (`token_type: DPoP`, `cnf.jkt` in JWTs and introspection), every §4.3 check refused at
//! the token endpoint and at `/v1/authz`, a bound token sent as Bearer refused, a proof replayed
//! or made for another URL or method refused, through every `/v1/authz` form and the gateway,
//! server nonces (§8), and the replay cache shared by two PostgreSQL nodes.

use crate::gateway::{upstream, RULES};
use crate::pkjwt::TestKey;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use keyplane_core::domain::jose::Jwk;
use keyplane_core::domain::secret::random_base62;
use keyplane_testkit::reqwest::{header, Method, StatusCode};
use keyplane_testkit::{json, Answer, Options, TestApp};
use serde_json::Value;

const READ: &str = "ai-guard:read";
const FORM: &str = "application/x-www-form-urlencoded";
const GUARD: &str = "/v1/text/guard";

fn now_s() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn public_jwk(key: &TestKey) -> Value {
    let mut jwk = key.public_jwk();
    jwk.as_object_mut().unwrap().remove("kid");
    jwk
}

pub(crate) fn jkt(key: &TestKey) -> String {
    Jwk::from_json(&public_jwk(key)).unwrap().thumbprint()
}

fn ath(token: &str) -> String {
    B64.encode(ring::digest::digest(
        &ring::digest::SHA256,
        token.as_bytes(),
    ))
}

/// The header and claims of a good proof for `htm` `htu` (with `ath` for `token`).
fn parts(key: &TestKey, htm: &str, htu: &str, token: Option<&str>) -> (Value, Value) {
    let header = json!({"typ": "dpop+jwt", "alg": key.alg(), "jwk": public_jwk(key)});
    let mut claims = json!({"jti": random_base62(20), "htm": htm, "htu": htu, "iat": now_s()});
    if let Some(t) = token {
        claims["ath"] = json!(ath(t));
    }
    (header, claims)
}

pub(crate) fn proof(key: &TestKey, htm: &str, htu: &str, token: Option<&str>) -> String {
    let (h, c) = parts(key, htm, htu, token);
    key.sign(h, &c)
}

async fn client(app: &TestApp, format: &str) -> (String, String) {
    let a = app
        .post(
            "/v1/oauth-clients",
            &app.admin_key.clone(),
            json!({"name": format!("dpop {}", random_base62(6)), "scopes": [READ], "token_format": format}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let v = a.json();
    (
        v["client_id"].as_str().unwrap().into(),
        v["client_secret"].as_str().unwrap().into(),
    )
}

async fn answer(r: keyplane_testkit::reqwest::RequestBuilder) -> Answer {
    let resp = r.send().await.expect("request");
    Answer {
        status: resp.status(),
        headers: resp.headers().clone(),
        text: resp.text().await.expect("body"),
    }
}

/// `POST /v1/oauth/token` by `client_secret_post`, with these `DPoP` headers.
pub(crate) async fn token(app: &TestApp, id: &str, secret: &str, proofs: &[&str]) -> Answer {
    let mut r = app
        .http
        .post(format!("{}/v1/oauth/token", app.base))
        .header(header::CONTENT_TYPE, FORM)
        .body(format!(
            "grant_type=client_credentials&client_id={id}&client_secret={secret}"
        ));
    for p in proofs {
        r = r.header("DPoP", *p);
    }
    answer(r).await
}

pub(crate) fn token_url(app: &TestApp) -> String {
    format!("{}/v1/oauth/token", app.base)
}

pub(crate) async fn bound_token(app: &TestApp, key: &TestKey, format: &str) -> String {
    let (id, secret) = client(app, format).await;
    let a = token(
        app,
        &id,
        &secret,
        &[&proof(key, "POST", &token_url(app), None)],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json()["token_type"], "DPoP");
    a.json()["access_token"].as_str().unwrap().to_string()
}

/// Bad proofs, each breaking one RFC 9449 §4.3 check, for `htm` `htu` and `token`.
fn bad_proofs(
    key: &TestKey,
    htm: &str,
    htu: &str,
    token: Option<&str>,
) -> Vec<(&'static str, String)> {
    let other = TestKey::es256("other");
    let sign = |f: &dyn Fn(&mut Value, &mut Value)| {
        let (mut h, mut c) = parts(key, htm, htu, token);
        f(&mut h, &mut c);
        key.sign(h, &c)
    };
    let mut out: Vec<(&'static str, String)> = vec![
        ("not a JWS", "not-a-jws".into()),
        ("two parts", "eyJhbGciOiJFUzI1NiJ9.e30".into()),
        ("typ JWT", sign(&|h, _| h["typ"] = json!("JWT"))),
        (
            "no typ",
            sign(&|h, _| {
                h.as_object_mut().unwrap().remove("typ");
            }),
        ),
        (
            "no jwk",
            sign(&|h, _| {
                h.as_object_mut().unwrap().remove("jwk");
            }),
        ),
        (
            "private key in jwk",
            sign(&|h, _| h["jwk"]["d"] = json!(B64.encode([7u8; 32]))),
        ),
        (
            "another key's jwk",
            sign(&|h, _| h["jwk"] = public_jwk(&other)),
        ),
        (
            "no jti",
            sign(&|_, c| {
                c.as_object_mut().unwrap().remove("jti");
            }),
        ),
        (
            "no htm",
            sign(&|_, c| {
                c.as_object_mut().unwrap().remove("htm");
            }),
        ),
        (
            "other htm",
            sign(&|_, c| c["htm"] = json!(if htm == "GET" { "POST" } else { "GET" })),
        ),
        (
            "lowercase htm",
            sign(&|_, c| c["htm"] = json!(htm.to_lowercase())),
        ),
        (
            "no htu",
            sign(&|_, c| {
                c.as_object_mut().unwrap().remove("htu");
            }),
        ),
        (
            "other htu path",
            sign(&|_, c| c["htu"] = json!(format!("{htu}/other"))),
        ),
        (
            "other htu host",
            sign(&|_, c| c["htu"] = json!(htu.replacen("://", "://other.", 1))),
        ),
        (
            "no iat",
            sign(&|_, c| {
                c.as_object_mut().unwrap().remove("iat");
            }),
        ),
        ("iat too old", sign(&|_, c| c["iat"] = json!(now_s() - 300))),
        (
            "iat in the future",
            sign(&|_, c| c["iat"] = json!(now_s() + 300)),
        ),
    ];
    // alg none and HS256: unsigned or symmetric proofs.
    let (h, c) = parts(key, htm, htu, token);
    let mut none = h.clone();
    none["alg"] = json!("none");
    out.push((
        "alg none",
        format!(
            "{}.{}.",
            B64.encode(none.to_string()),
            B64.encode(c.to_string())
        ),
    ));
    let mut hs = h.clone();
    hs["alg"] = json!("HS256");
    out.push((
        "alg HS256",
        format!(
            "{}.{}.{}",
            B64.encode(hs.to_string()),
            B64.encode(c.to_string()),
            B64.encode([1u8; 32])
        ),
    ));
    // A signature that does not verify.
    let good = key.sign(h, &c);
    let (input, sig) = good.rsplit_once('.').unwrap();
    let mut sig = B64.decode(sig).unwrap();
    sig[5] ^= 1;
    out.push(("bad signature", format!("{input}.{}", B64.encode(sig))));
    if token.is_some() {
        out.push((
            "no ath",
            sign(&|_, c| {
                c.as_object_mut().unwrap().remove("ath");
            }),
        ));
        out.push((
            "other ath",
            sign(&|_, c| c["ath"] = json!(ath("another token"))),
        ));
    }
    out
}

// ----- the token endpoint -----

async fn token_endpoint(app: TestApp) {
    app.service("ai-guard", &[READ]).await;
    for key in [
        TestKey::es256("e"),
        TestKey::ed25519("d"),
        TestKey::rsa("r", 'a'),
    ] {
        for format in ["opaque", "jwt"] {
            let t = bound_token(&app, &key, format).await;
            if format == "jwt" {
                let payload = t.split('.').nth(1).unwrap();
                let c: Value = serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap();
                assert_eq!(c["cnf"]["jkt"], jkt(&key), "{c}");
            }
            let i = app
                .http
                .post(format!("{}/v1/oauth/token/introspect", app.base))
                .bearer_auth(&app.admin_key)
                .header(header::CONTENT_TYPE, FORM)
                .body(format!("token={t}"));
            let i = answer(i).await;
            assert_eq!(i.status, StatusCode::OK, "{}", i.text);
            let v = i.json();
            assert_eq!(v["active"], true, "{v}");
            assert_eq!(v["token_type"], "DPoP");
            assert_eq!(v["cnf"]["jkt"], jkt(&key));
        }
    }
    // Without a proof: a plain bearer token, no cnf.
    let (id, secret) = client(&app, "jwt").await;
    let plain = token(&app, &id, &secret, &[]).await;
    assert_eq!(plain.json()["token_type"], "Bearer");
    // Every §4.3 check, refused with invalid_dpop_proof (400).
    let key = TestKey::es256("k");
    for (what, p) in bad_proofs(&key, "POST", &token_url(&app), None) {
        let a = token(&app, &id, &secret, &[&p]).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{what}: {}", a.text);
        assert_eq!(a.json()["error"], "invalid_dpop_proof", "{what}");
    }
    // Two DPoP headers.
    let (p1, p2) = (
        proof(&key, "POST", &token_url(&app), None),
        proof(&key, "POST", &token_url(&app), None),
    );
    let two = token(&app, &id, &secret, &[&p1, &p2]).await;
    assert_eq!(two.json()["error"], "invalid_dpop_proof", "{}", two.text);
    // A replayed proof.
    assert_eq!(
        token(&app, &id, &secret, &[&p1]).await.status,
        StatusCode::OK
    );
    let replay = token(&app, &id, &secret, &[&p1]).await;
    assert_eq!(
        replay.json()["error"],
        "invalid_dpop_proof",
        "{}",
        replay.text
    );
    assert!(replay.text.contains("used already"));
    // A proof for the seed's alias of the token endpoint works there.
    let alias = format!("{}/v1beta/oauth/token", app.base);
    let a = answer(
        app.http
            .post(&alias)
            .header(header::CONTENT_TYPE, FORM)
            .header("DPoP", proof(&key, "POST", &alias, None))
            .body(format!(
                "grant_type=client_credentials&client_id={id}&client_secret={secret}"
            )),
    )
    .await;
    assert_eq!(a.json()["token_type"], "DPoP", "{}", a.text);
}
on_both!(dpop_token_endpoint, token_endpoint);

/// The replay table is written in batches of concurrent requests' `jti`s: a proof sent many
/// times at once is still accepted exactly once (the copies may share one batch), and distinct
/// proofs sent at once are all accepted.
async fn concurrent_proofs(app: TestApp) {
    app.service("ai-guard", &[READ]).await;
    let (id, secret) = client(&app, "opaque").await;
    let key = TestKey::es256("c");
    let same = proof(&key, "POST", &token_url(&app), None);
    let request = |p: &str| {
        app.http
            .post(token_url(&app))
            .header(header::CONTENT_TYPE, FORM)
            .header("DPoP", p)
            .body(format!(
                "grant_type=client_credentials&client_id={id}&client_secret={secret}"
            ))
    };
    // All 48 requests in flight together, each on its own task.
    let mut copies = tokio::task::JoinSet::new();
    let mut fresh = tokio::task::JoinSet::new();
    for _ in 0..16 {
        copies.spawn(answer(request(&same)));
    }
    for _ in 0..32 {
        fresh.spawn(answer(request(&proof(
            &key,
            "POST",
            &token_url(&app),
            None,
        ))));
    }
    let copies = copies.join_all().await;
    let fresh = fresh.join_all().await;
    let accepted = copies.iter().filter(|a| a.status == StatusCode::OK).count();
    assert_eq!(
        accepted, 1,
        "one proof, sent 16 times at once, is accepted once"
    );
    for a in copies.iter().filter(|a| a.status != StatusCode::OK) {
        assert_eq!(a.json()["error"], "invalid_dpop_proof", "{}", a.text);
        assert!(a.text.contains("used already"), "{}", a.text);
    }
    for a in &fresh {
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        assert_eq!(a.json()["token_type"], "DPoP");
    }
}
on_both!(dpop_concurrent_proofs, concurrent_proofs);

// ----- resources: /v1/authz (every form) and the gateway -----

async fn with_rules(app: &TestApp, dir: &std::path::Path) {
    app.service("ai-guard", &[READ, "ai-guard:write"]).await;
    std::fs::write(dir.join("keyplane.toml"), RULES).unwrap();
    let r = app
        .post("/v1/admin/routes/reload", &app.admin_key.clone(), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

/// A server with the gateway in front of the example upstream and the route rules; the app and
/// the upstream's address.
pub(crate) async fn spawn_with_gateway(
    backend: keyplane_testkit::Backend,
    dir: &std::path::Path,
    extra: &[(&str, &str)],
) -> Option<(TestApp, String)> {
    let up = upstream().await;
    let config = dir.join("keyplane.toml");
    std::fs::write(&config, "# rules come later\n").unwrap();
    let mut opts = Options::default()
        .env("KEYPLANE_CONFIG", config.to_str().unwrap())
        .env("KEYPLANE_GATEWAY_LISTEN", "127.0.0.1:0")
        .env("KEYPLANE_UPSTREAM", &up);
    for (k, v) in extra {
        opts = opts.env(k, v);
    }
    let app = keyplane_testkit::spawn_app_with(backend, opts).await?;
    with_rules(&app, dir).await;
    Some((app, up))
}

/// The nginx form: `X-Original-URI`/`-Method`; `htu` from `Host` (keyplane's own address here).
async fn nginx_form(app: &TestApp, token: &str, scheme: &str, proof: Option<&str>) -> Answer {
    let mut r = app
        .http
        .get(format!("{}/v1/authz", app.base))
        .header(header::AUTHORIZATION, format!("{scheme} {token}"))
        .header("X-Original-URI", format!("{GUARD}?q=1"))
        .header("X-Original-Method", "POST");
    if let Some(p) = proof {
        r = r.header("DPoP", p);
    }
    answer(r).await
}

fn challenge(a: &Answer) -> String {
    a.headers
        .get(header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

async fn resources(backend: keyplane_testkit::Backend) {
    let dir = keyplane_testkit::TempDir::new();
    let Some((app, _)) = spawn_with_gateway(backend, dir.path(), &[]).await else {
        return;
    };
    let key = TestKey::es256("k");
    let t = bound_token(&app, &key, "opaque").await;
    let htu = format!("{}{GUARD}", app.base);

    // nginx form: a good proof passes, once.
    let p = proof(&key, "POST", &htu, Some(&t));
    let ok = nginx_form(&app, &t, "DPoP", Some(&p)).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    let replay = nginx_form(&app, &t, "DPoP", Some(&p)).await;
    assert_eq!(replay.status, StatusCode::UNAUTHORIZED);
    assert!(
        challenge(&replay).starts_with("DPoP "),
        "{}",
        challenge(&replay)
    );
    assert!(challenge(&replay).contains("invalid_dpop_proof"));
    assert!(challenge(&replay).contains("algs=\""));
    // The bound token as Bearer, or without a proof.
    let bearer = nginx_form(&app, &t, "Bearer", None).await;
    assert_eq!(bearer.status, StatusCode::UNAUTHORIZED, "{}", bearer.text);
    assert!(challenge(&bearer).contains("invalid_token"));
    let bearer_with_proof = nginx_form(
        &app,
        &t,
        "Bearer",
        Some(&proof(&key, "POST", &htu, Some(&t))),
    )
    .await;
    assert_eq!(bearer_with_proof.status, StatusCode::UNAUTHORIZED);
    let missing = nginx_form(&app, &t, "DPoP", None).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert!(challenge(&missing).contains("invalid_dpop_proof"));
    // Every §4.3 check (another URL, another method, ath included).
    for (what, p) in bad_proofs(&key, "POST", &htu, Some(&t)) {
        let a = nginx_form(&app, &t, "DPoP", Some(&p)).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{what}: {}", a.text);
        assert!(
            challenge(&a).contains("error=\"invalid_dpop_proof\""),
            "{what}: {}",
            challenge(&a)
        );
    }
    // A proof from the right key but for a token of another key's binding.
    let other = TestKey::ed25519("o");
    let a = nginx_form(
        &app,
        &t,
        "DPoP",
        Some(&proof(&other, "POST", &htu, Some(&t))),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    // An unbound token with the DPoP scheme is refused.
    let (id, secret) = client(&app, "opaque").await;
    let plain = token(&app, &id, &secret, &[]).await.json()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let a = nginx_form(
        &app,
        &plain,
        "DPoP",
        Some(&proof(&key, "POST", &htu, Some(&plain))),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        nginx_form(&app, &plain, "Bearer", None).await.status,
        StatusCode::OK
    );

    // Traefik form: X-Forwarded-Proto/-Host/-Uri/-Method name the original URL.
    let traefik = |p: String| {
        app.http
            .get(format!("{}/v1/authz", app.base))
            .header(header::AUTHORIZATION, format!("DPoP {t}"))
            .header("X-Forwarded-Proto", "https")
            .header("X-Forwarded-Host", "api.example")
            .header("X-Forwarded-Uri", GUARD)
            .header("X-Forwarded-Method", "POST")
            .header("DPoP", p)
    };
    let public = format!("https://api.example{GUARD}");
    let a = answer(traefik(proof(&key, "POST", &public, Some(&t)))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let a = answer(traefik(proof(&key, "POST", &htu, Some(&t)))).await;
    assert_eq!(
        a.status,
        StatusCode::UNAUTHORIZED,
        "a proof for another origin"
    );
    let a = answer(traefik(proof(&key, "GET", &public, Some(&t)))).await;
    assert_eq!(
        a.status,
        StatusCode::UNAUTHORIZED,
        "a proof for another method"
    );

    // Envoy form: the original path after /v1/authz, the request's own method.
    let envoy = |p: String| {
        app.http
            .post(format!("{}/v1/authz{GUARD}", app.base))
            .header(header::AUTHORIZATION, format!("DPoP {t}"))
            .header("DPoP", p)
    };
    let a = answer(envoy(proof(&key, "POST", &htu, Some(&t)))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let a = answer(envoy(proof(
        &key,
        "POST",
        &format!("{}/v1/text/other", app.base),
        Some(&t),
    )))
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);

    // ?scope= form with X-Original-URL (nginx's full-URL variant).
    let url = "https://api.example/v1/anything";
    let scoped = |p: String, scheme: &str| {
        app.http
            .get(format!("{}/v1/authz?scope={READ}", app.base))
            .header(header::AUTHORIZATION, format!("{scheme} {t}"))
            .header("X-Original-URL", url)
            .header("DPoP", p)
    };
    let a = answer(scoped(proof(&key, "GET", url, Some(&t)), "DPoP")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let a = answer(scoped(proof(&key, "GET", url, Some(&t)), "Bearer")).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);

    // The gateway: the proof names the gateway's URL.
    let gw = app.gateway_base().unwrap();
    let gw_htu = format!("{gw}{GUARD}");
    let body =
        json!({"messages": [{"role": "user", "content": "hi"}], "recipe": "pangea_prompt_guard"});
    let send = |scheme: &str, p: Option<String>| {
        let mut r = app
            .http
            .request(Method::POST, &gw_htu)
            .header(header::AUTHORIZATION, format!("{scheme} {t}"))
            .json(&body);
        if let Some(p) = p {
            r = r.header("DPoP", p);
        }
        r
    };
    let p = proof(&key, "POST", &gw_htu, Some(&t));
    let a = answer(send("DPoP", Some(p.clone()))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(
        answer(send("DPoP", Some(p))).await.status,
        StatusCode::UNAUTHORIZED,
        "replayed"
    );
    assert_eq!(
        answer(send("Bearer", None)).await.status,
        StatusCode::UNAUTHORIZED,
        "as Bearer"
    );
    let wrong = proof(&key, "PUT", &gw_htu, Some(&t));
    assert_eq!(
        answer(send("DPoP", Some(wrong))).await.status,
        StatusCode::UNAUTHORIZED,
        "method"
    );
    let wrong = proof(&key, "POST", &format!("{gw}/v1/other"), Some(&t));
    assert_eq!(
        answer(send("DPoP", Some(wrong))).await.status,
        StatusCode::UNAUTHORIZED,
        "url"
    );
    for (what, p) in bad_proofs(&key, "POST", &gw_htu, Some(&t)) {
        let a = answer(send("DPoP", Some(p))).await;
        assert_eq!(
            a.status,
            StatusCode::UNAUTHORIZED,
            "gateway, {what}: {}",
            a.text
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dpop_resources_sqlite() {
    resources(keyplane_testkit::Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dpop_resources_postgres() {
    resources(keyplane_testkit::Backend::Postgres).await;
}

// ----- nonces (§8) -----

async fn nonces(app: TestApp) {
    app.service("ai-guard", &[READ]).await;
    let key = TestKey::es256("k");
    let (id, secret) = client(&app, "jwt").await;
    let url = token_url(&app);
    let a = token(&app, &id, &secret, &[&proof(&key, "POST", &url, None)]).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    assert_eq!(a.json()["error"], "use_dpop_nonce");
    let nonce = a
        .header("dpop-nonce")
        .expect("a DPoP-Nonce header")
        .to_string();
    let with_nonce = |n: &str| {
        let (h, mut c) = parts(&key, "POST", &url, None);
        c["nonce"] = json!(n);
        key.sign(h, &c)
    };
    let bad = token(&app, &id, &secret, &[&with_nonce("made-up")]).await;
    assert_eq!(bad.json()["error"], "use_dpop_nonce");
    let ok = token(&app, &id, &secret, &[&with_nonce(&nonce)]).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    let t = ok.json()["access_token"].as_str().unwrap().to_string();
    // At /v1/authz too: without the nonce, 401 use_dpop_nonce with DPoP-Nonce.
    let htu = format!("{}/v1/anything", app.base);
    let scoped = |p: String| {
        app.http
            .get(format!("{}/v1/authz?scope={READ}", app.base))
            .header(header::AUTHORIZATION, format!("DPoP {t}"))
            .header("X-Original-URL", &htu)
            .header("DPoP", p)
    };
    let a = answer(scoped(proof(&key, "GET", &htu, Some(&t)))).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(
        challenge(&a).contains("use_dpop_nonce"),
        "{}",
        challenge(&a)
    );
    let n = a.header("dpop-nonce").unwrap().to_string();
    let (h, mut c) = parts(&key, "GET", &htu, Some(&t));
    c["nonce"] = json!(n);
    let a = answer(scoped(key.sign(h, &c))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
}
on_both!(
    dpop_nonces,
    nonces,
    keyplane_testkit::Options::default().env("KEYPLANE_DPOP_REQUIRE_NONCE", "true")
);

/// Two nodes on one PostgreSQL database: a proof used on one is refused on the other, and a
/// nonce issued by one is accepted by the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dpop_proof_used_on_one_node_is_refused_on_the_other() {
    const ISSUER: &str = "https://auth.keyplane.test";
    let opts = Options::default().env("KEYPLANE_ISSUER", ISSUER);
    let Some(a) = keyplane_testkit::spawn_app_with(keyplane_testkit::Backend::Postgres, opts).await
    else {
        return;
    };
    let b = a.spawn_second_node().await;
    a.service("ai-guard", &[READ]).await;
    let key = TestKey::ed25519("k");
    let (id, secret) = client(&a, "opaque").await;
    let url = format!("{ISSUER}/v1/oauth/token");
    let p = proof(&key, "POST", &url, None);
    let first = token(&a, &id, &secret, &[&p]).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    let again = token(&b, &id, &secret, &[&p]).await;
    assert_eq!(
        again.json()["error"],
        "invalid_dpop_proof",
        "{}",
        again.text
    );
    let t = first.json()["access_token"].as_str().unwrap().to_string();
    let htu = "https://api.example/v1/x";
    let check = |node: &TestApp, p: &str| {
        node.http
            .get(format!("{}/v1/authz?scope={READ}", node.base))
            .header(header::AUTHORIZATION, format!("DPoP {t}"))
            .header("X-Original-URL", htu)
            .header("DPoP", p.to_string())
    };
    for (x, y) in [(&a, &b), (&b, &a)] {
        let p = proof(&key, "GET", htu, Some(&t));
        assert_eq!(answer(check(x, &p)).await.status, StatusCode::OK);
        assert_eq!(answer(check(y, &p)).await.status, StatusCode::UNAUTHORIZED);
    }
}

/// Behind the real nginx (`auth_request`, `X-Original-URI`, `X-Forwarded-Host`/`-Proto`): a
/// good proof for nginx's URL passes once; a replay, the token as Bearer, and proofs for
/// another URL or method are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dpop_behind_nginx() {
    let Some(nginx) = crate::nginx::nginx_or_skip("the nginx DPoP test") else {
        return;
    };
    let dir = keyplane_testkit::TempDir::new();
    let up = upstream().await;
    let cfg = dir.path().join("keyplane.toml");
    std::fs::write(&cfg, "# rules come later\n").unwrap();
    let app = keyplane_testkit::spawn_app_with(
        keyplane_testkit::Backend::Sqlite,
        Options::default().env("KEYPLANE_CONFIG", cfg.to_str().unwrap()),
    )
    .await
    .unwrap();
    with_rules(&app, dir.path()).await;
    let (_nginx, front) = crate::nginx::start_nginx(&nginx, dir.path(), &app.base, &up).await;
    let key = TestKey::es256("k");
    let t = bound_token(&app, &key, "jwt").await;
    let htu = format!("{front}{GUARD}");
    let body =
        json!({"messages": [{"role": "user", "content": "hi"}], "recipe": "pangea_prompt_guard"});
    let send = |scheme: &str, p: Option<String>| {
        let mut r = app
            .http
            .post(format!("{htu}?x=1"))
            .header(header::AUTHORIZATION, format!("{scheme} {t}"))
            .json(&body);
        if let Some(p) = p {
            r = r.header("DPoP", p);
        }
        r
    };
    let p = proof(&key, "POST", &htu, Some(&t));
    let a = answer(send("DPoP", Some(p.clone()))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(
        answer(send("DPoP", Some(p))).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        answer(send("Bearer", None)).await.status,
        StatusCode::UNAUTHORIZED
    );
    let other_url = proof(&key, "POST", &format!("{front}/v1/other"), Some(&t));
    assert_eq!(
        answer(send("DPoP", Some(other_url))).await.status,
        StatusCode::UNAUTHORIZED
    );
    let other_method = proof(&key, "GET", &htu, Some(&t));
    assert_eq!(
        answer(send("DPoP", Some(other_method))).await.status,
        StatusCode::UNAUTHORIZED
    );
    let direct = proof(&key, "POST", &format!("{}{GUARD}", app.base), Some(&t));
    assert_eq!(
        answer(send("DPoP", Some(direct))).await.status,
        StatusCode::UNAUTHORIZED
    );
}

/// keyplane-verify in front of a resource server (the example `resource-server`): a DPoP-bound
/// JWT from keyplane works only as `Authorization: DPoP` with a proof for that very request;
/// as a Bearer, with a replayed proof, or with a proof for another URL or method it is refused.
async fn verify_layer(app: TestApp) {
    app.service("ai-guard", &[READ]).await;
    let key = TestKey::es256("rs");
    let token = bound_token(&app, &key, "jwt").await;
    let issuer = app
        .get("/.well-known/oauth-authorization-server", "")
        .await
        .json()["issuer"]
        .as_str()
        .unwrap()
        .to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let verifier = keyplane_verify::Verifier::builder(&issuer)
        .reach_at(&app.base)
        .public_url(&base)
        .build()
        .unwrap();
    tokio::spawn(async move { axum::serve(listener, resource_server::app(verifier)).await });
    let http = keyplane_testkit::reqwest::Client::new();
    let url = format!("{base}{GUARD}");
    let call = |scheme: &'static str, proof: Option<String>| {
        let mut req = http
            .post(&url)
            .header(header::AUTHORIZATION, format!("{scheme} {token}"))
            .json(&json!({
                "messages": [{ "role": "user", "content": "hello" }],
                "recipe": "pangea_prompt_guard"
            }));
        if let Some(p) = proof {
            req = req.header("DPoP", p);
        }
        answer(req)
    };

    let good = proof(&key, "POST", &url, Some(&token));
    let a = call("DPoP", Some(good.clone())).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    // The same proof again: a replay.
    let a = call("DPoP", Some(good)).await;
    assert_eq!(
        a.status,
        StatusCode::UNAUTHORIZED,
        "replayed proof: {}",
        a.text
    );
    // As a Bearer, with or without a proof: the binding is the point.
    let a = call("Bearer", None).await;
    assert_eq!(
        a.status,
        StatusCode::UNAUTHORIZED,
        "bound token as Bearer: {}",
        a.text
    );
    assert!(challenge(&a).starts_with("DPoP"), "{}", challenge(&a));
    let a = call("Bearer", Some(proof(&key, "POST", &url, Some(&token)))).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    // A proof for another URL, another method, another key, or without `ath`.
    for bad in [
        proof(&key, "POST", &format!("{base}/v1/other"), Some(&token)),
        proof(&key, "GET", &url, Some(&token)),
        proof(&TestKey::es256("thief"), "POST", &url, Some(&token)),
        proof(&key, "POST", &url, None),
    ] {
        let a = call("DPoP", Some(bad)).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.text);
        assert!(
            challenge(&a).contains("invalid_dpop_proof"),
            "{}",
            challenge(&a)
        );
    }
    // And a fresh good proof still works.
    let a = call("DPoP", Some(proof(&key, "POST", &url, Some(&token)))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
}
on_both!(dpop_through_keyplane_verify, verify_layer);

// ----- clients that must use DPoP (RFC 9449 §5.2 `dpop_bound_access_tokens`) -----

async fn patch_client(app: &TestApp, id: &str, body: Value) -> Answer {
    app.call(
        Method::PATCH,
        &format!("/v1/oauth-clients/{id}"),
        Some(&app.admin_key.clone()),
        Some(body),
    )
    .await
}

/// A secret client made with these extra fields; its id and secret.
async fn client_with(app: &TestApp, extra: Value) -> (String, String, Value) {
    let mut body = json!({"name": format!("dpop {}", random_base62(6)), "scopes": [READ], "token_format": "jwt"});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let a = app
        .post("/v1/oauth-clients", &app.admin_key.clone(), body)
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let v = a.json();
    (
        v["client_id"].as_str().unwrap().into(),
        v["client_secret"].as_str().unwrap_or_default().into(),
        v,
    )
}

/// The `invalid_dpop_proof` a required client gets for a request without a proof.
fn assert_proof_required(a: &Answer) {
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    let v = a.json();
    assert_eq!(v["error"], "invalid_dpop_proof", "{v}");
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("dpop_bound_access_tokens"),
        "{v}"
    );
    assert_eq!(a.header("cache-control"), Some("no-store"));
}

/// A client registered with `dpop_bound_access_tokens: true` gets a bound token with a proof
/// and is refused without one (after it authenticated: a wrong secret is still
/// `invalid_client`); the management API issues it no unbound token; PATCH turns the
/// requirement off and on again with effect on the very next request; the setting is shown,
/// defaults to false, is type-checked, and is in the activity log.
async fn required(app: TestApp) {
    app.service("ai-guard", &[READ]).await;
    let admin = app.admin_key.clone();
    let key = TestKey::es256("k");
    let url = token_url(&app);

    // Not required unless asked for.
    let (_, _, plain) = client_with(&app, json!({})).await;
    assert_eq!(plain["dpop_bound_access_tokens"], false, "{plain}");

    let (id, secret, made) = client_with(&app, json!({"dpop_bound_access_tokens": true})).await;
    assert_eq!(made["dpop_bound_access_tokens"], true, "{made}");
    let got = app.get(&format!("/v1/oauth-clients/{id}"), &admin).await;
    assert_eq!(got.json()["dpop_bound_access_tokens"], true, "{}", got.text);
    let listed = app.get("/v1/oauth-clients?limit=100", &admin).await.json();
    let row = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["client_id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(row["dpop_bound_access_tokens"], true);

    // Without a proof: refused, saying why. With one: a DPoP-bound token.
    assert_proof_required(&token(&app, &id, &secret, &[]).await);
    let ok = token(&app, &id, &secret, &[&proof(&key, "POST", &url, None)]).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    assert_eq!(ok.json()["token_type"], "DPoP");
    let t = ok.json()["access_token"].as_str().unwrap().to_string();
    let c: Value =
        serde_json::from_slice(&B64.decode(t.split('.').nth(1).unwrap()).unwrap()).unwrap();
    assert_eq!(c["cnf"]["jkt"], jkt(&key), "{c}");
    // A bad proof is still a bad proof.
    let (h, mut c) = parts(&key, "POST", &url, None);
    c["htm"] = json!("GET");
    let bad = token(&app, &id, &secret, &[&key.sign(h, &c)]).await;
    assert_eq!(bad.json()["error"], "invalid_dpop_proof", "{}", bad.text);
    // Client authentication comes first: a wrong secret learns nothing about DPoP.
    let wrong = token(&app, &id, &format!("{secret}x"), &[]).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{}", wrong.text);
    assert_eq!(wrong.json()["error"], "invalid_client");

    // The management API (the console's "create access token") makes it no bearer token.
    let issued = app
        .post(&format!("/v1/oauth-clients/{id}/tokens"), &admin, json!({}))
        .await;
    assert_eq!(issued.status, StatusCode::CONFLICT, "{}", issued.text);
    assert_eq!(
        issued.header("content-type"),
        Some("application/problem+json")
    );
    assert!(issued.json()["detail"]
        .as_str()
        .unwrap()
        .contains("dpop_bound_access_tokens"));

    // PATCH: off, then on again, each effective on the next request.
    let off = patch_client(&app, &id, json!({"dpop_bound_access_tokens": false})).await;
    assert_eq!(off.status, StatusCode::OK, "{}", off.text);
    assert_eq!(off.json()["dpop_bound_access_tokens"], false);
    let bearer = token(&app, &id, &secret, &[]).await;
    assert_eq!(bearer.status, StatusCode::OK, "{}", bearer.text);
    assert_eq!(bearer.json()["token_type"], "Bearer");
    let on = patch_client(&app, &id, json!({"dpop_bound_access_tokens": true})).await;
    assert_eq!(on.json()["dpop_bound_access_tokens"], true, "{}", on.text);
    assert_proof_required(&token(&app, &id, &secret, &[]).await);
    // Other edits keep it; `null` is the default, false.
    let renamed = patch_client(&app, &id, json!({"description": "still DPoP"})).await;
    assert_eq!(renamed.json()["dpop_bound_access_tokens"], true);
    assert_proof_required(&token(&app, &id, &secret, &[]).await);
    let null = patch_client(&app, &id, json!({"dpop_bound_access_tokens": null})).await;
    assert_eq!(
        null.json()["dpop_bound_access_tokens"],
        false,
        "{}",
        null.text
    );
    assert_eq!(token(&app, &id, &secret, &[]).await.status, StatusCode::OK);

    // Not a boolean: a problem, nothing changed.
    for bad in [json!("yes"), json!(1)] {
        let a = patch_client(&app, &id, json!({"dpop_bound_access_tokens": bad})).await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);
        assert_eq!(a.header("content-type"), Some("application/problem+json"));
        let a = app
            .post(
                "/v1/oauth-clients",
                &admin,
                json!({"name": "bad dpop", "scopes": [READ], "dpop_bound_access_tokens": bad}),
            )
            .await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);
    }

    // The activity log records the setting with the client's other settings.
    let events = app
        .get(
            &format!("/v1/activity?action=oauth_client.update&target={id}"),
            &admin,
        )
        .await
        .json();
    let flags: Vec<Value> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["details"]["dpop_bound_access_tokens"].clone())
        .collect();
    assert!(
        flags.contains(&json!(true)) && flags.contains(&json!(false)),
        "{events}"
    );
}
on_both!(dpop_required_by_the_client, required);

/// A `private_key_jwt` client that requires DPoP: its assertion alone is refused; with a proof
/// it gets a bound token; and with nonces required, a request without any proof is told it
/// needs a proof (`invalid_dpop_proof`), not a nonce.
async fn required_with_assertions(app: TestApp) {
    assertion_flow(app, false).await
}

async fn required_with_nonces(app: TestApp) {
    assertion_flow(app, true).await
}

async fn assertion_flow(app: TestApp, nonce_required: bool) {
    app.service("ai-guard", &[READ]).await;
    let signer = TestKey::ed25519("a1");
    let (id, _, made) = client_with(
        &app,
        json!({
            "token_endpoint_auth_method": "private_key_jwt",
            "jwks": {"keys": [signer.public_jwk()]},
            "dpop_bound_access_tokens": true,
        }),
    )
    .await;
    assert_eq!(made["dpop_bound_access_tokens"], true);
    let url = token_url(&app);
    let request = |proof: Option<String>| {
        let mut r = app
            .http
            .post(&url)
            .header(header::CONTENT_TYPE, FORM)
            .body(format!(
                "grant_type=client_credentials&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={}",
                signer.assertion(&id, &url, "EdDSA")
            ));
        if let Some(p) = proof {
            r = r.header("DPoP", p);
        }
        answer(r)
    };
    assert_proof_required(&request(None).await);
    let key = TestKey::es256("p");
    let mut a = request(Some(proof(&key, "POST", &url, None))).await;
    if nonce_required {
        assert_eq!(a.json()["error"], "use_dpop_nonce", "{}", a.text);
        let nonce = a.header("dpop-nonce").unwrap().to_string();
        let (h, mut c) = parts(&key, "POST", &url, None);
        c["nonce"] = json!(nonce);
        a = request(Some(key.sign(h, &c))).await;
    }
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json()["token_type"], "DPoP");
}

on_both!(dpop_required_with_private_key_jwt, required_with_assertions);
on_both!(
    dpop_required_with_nonces,
    required_with_nonces,
    keyplane_testkit::Options::default().env("KEYPLANE_DPOP_REQUIRE_NONCE", "true")
);

/// Two nodes on one PostgreSQL database: turning `dpop_bound_access_tokens` on or off on one
/// node takes effect there on the next request and on the other within a second (its client
/// cache is invalidated through the database's change feed), in both directions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dpop_requirement_set_on_one_node_holds_on_the_other_within_a_second() {
    const ISSUER: &str = "https://auth.keyplane.test";
    let opts = Options::default().env("KEYPLANE_ISSUER", ISSUER);
    let Some(a) = keyplane_testkit::spawn_app_with(keyplane_testkit::Backend::Postgres, opts).await
    else {
        return;
    };
    let b = a.spawn_second_node().await;
    a.service("ai-guard", &[READ]).await;
    let (id, secret) = client(&a, "opaque").await;
    // Both nodes have the client cached, requirement off.
    for node in [&a, &b] {
        for _ in 0..2 {
            let t = token(node, &id, &secret, &[]).await;
            assert_eq!(t.json()["token_type"], "Bearer", "{}", t.text);
        }
    }
    let key = TestKey::ed25519("k");
    let url = format!("{ISSUER}/v1/oauth/token");
    for (on, here, there) in [(true, &a, &b), (false, &b, &a), (true, &b, &a)] {
        let r = patch_client(here, &id, json!({"dpop_bound_access_tokens": on})).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let started = std::time::Instant::now();
        let took_effect = |t: &Answer| {
            if on {
                t.status == StatusCode::BAD_REQUEST
            } else {
                t.status == StatusCode::OK
            }
        };
        let t = token(here, &id, &secret, &[]).await;
        assert!(
            took_effect(&t),
            "the node that changed it, on={on}: {}",
            t.text
        );
        if on {
            assert_proof_required(&t);
        }
        loop {
            let t = token(there, &id, &secret, &[]).await;
            if took_effect(&t) {
                if on {
                    assert_proof_required(&t);
                }
                break;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(1),
                "the other node still answers {} a second after the change (on={on})",
                t.text
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // With a proof, both nodes issue a bound token either way.
        for node in [here, there] {
            let t = token(node, &id, &secret, &[&proof(&key, "POST", &url, None)]).await;
            assert_eq!(t.json()["token_type"], "DPoP", "{}", t.text);
        }
    }
}
