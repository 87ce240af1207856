//! Input strictness (issue 11 §9): each case here was accepted before.
//!
//! - OAuth forms are strictly percent-decoded: `%+2`, `%zz`, a truncated escape or a value that
//!   is not UTF-8 is `invalid_request`, not guessed at; a malformed escape in `/v1/authz`'s
//!   `scope` fails closed.
//! - Names are stored in NFC and refuse invisible and text-direction characters: `orgA` and
//!   `orgA\u{200B}` cannot coexist; `Café` typed two ways is one name.
//! - ES256 JWTs are signed low-s, and the high-s twin of a good token (another valid ECDSA
//!   signature of the same bytes) is refused everywhere.
//! - With HTTP Basic, a `client_id` in the form naming another client is `invalid_request`.
//! - The console's one-time password link is built from the configured public URL, never from
//!   the request's `Host`.
//! - `/metrics` behind a token when one is configured.

use crate::support::*;
use base64::Engine;
use keyplane_testkit::reqwest::{header, StatusCode};
use keyplane_testkit::{json, Answer, TestApp};

const R: &str = "svc:read";

async fn form_post(app: &TestApp, path: &str, auth: Option<String>, body: &str) -> Answer {
    let mut req = app
        .http
        .post(format!("{}{path}", app.base))
        .header(header::CONTENT_TYPE, FORM)
        .body(body.to_string());
    if let Some(a) = auth {
        req = req.header(header::AUTHORIZATION, a);
    }
    let resp = req.send().await.expect("form request");
    Answer {
        status: resp.status(),
        headers: resp.headers().clone(),
        text: resp.text().await.expect("body"),
    }
}

async fn forms_are_strict(app: TestApp) {
    app.service("svc", &[R]).await;
    let (cid, secret, _) = admin_client(&app, json!({ "name": "strict", "scopes": [R] })).await;
    let good = form_post(
        &app,
        "/v1/oauth/token",
        Some(basic(&cid, &secret)),
        "grant_type=client_credentials&scope=svc%3Aread",
    )
    .await;
    assert_eq!(good.status, StatusCode::OK, "{}", good.text);
    for bad in [
        "grant_type=client_credentials&scope=svc%+2read",
        "grant_type=client_credentials&scope=svc%zzread",
        "grant_type=client_credentials&scope=svc%3",
        "grant_type=client_credentials&scope=%ff%fe",
        "grant_type=client_credential%",
    ] {
        let a = form_post(&app, "/v1/oauth/token", Some(basic(&cid, &secret)), bad).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}: {}", a.text);
        assert_eq!(a.json()["error"], "invalid_request", "{bad}: {}", a.text);
    }
    // The same strictness in the form fields of client authentication.
    let a = form_post(
        &app,
        "/v1/oauth/token",
        None,
        &format!("grant_type=client_credentials&client_id={cid}&client_secret=%+2{secret}"),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);

    // /v1/authz: a malformed escape in `scope` names nothing anyone holds.
    let (_, key) = app
        .key(&app.admin_key, json!({ "name": "k", "scopes": [R] }))
        .await;
    assert_eq!(
        app.authz(Some(&key), Some("svc%3Aread")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.authz(Some(&key), Some("svc%+2read")).await.status,
        StatusCode::FORBIDDEN
    );
}
on_both!(
    oauth_forms_and_scopes_are_strictly_decoded,
    forms_are_strict
);

async fn names(app: TestApp) {
    let admin = app.admin_key.clone();
    let org = app
        .post("/v1/orgs", &admin, json!({ "name": "orgA" }))
        .await;
    assert_eq!(org.status, StatusCode::CREATED, "{}", org.text);
    for (name, why) in [
        ("orgA\u{200B}", "zero-width space"),
        ("\u{202E}Agro", "right-to-left override"),
        ("org\u{2066}A", "isolate"),
        ("orgA\u{FEFF}", "byte-order mark"),
    ] {
        let a = app.post("/v1/orgs", &admin, json!({ "name": name })).await;
        assert_eq!(
            a.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{why}: {}",
            a.text
        );
        assert_eq!(a.json()["field"], "name", "{why}");
        let k = app
            .post(
                "/v1/api-keys",
                &admin,
                json!({ "name": name, "scopes": [] }),
            )
            .await;
        assert_eq!(
            k.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "key {why}: {}",
            k.text
        );
    }
    // Composed and decomposed: one name, so the second is a conflict, and it is stored in NFC.
    let first = app
        .post("/v1/orgs", &admin, json!({ "name": "Caf\u{e9}" }))
        .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    assert_eq!(first.json()["name"], "Caf\u{e9}");
    let second = app
        .post("/v1/orgs", &admin, json!({ "name": "Cafe\u{301}" }))
        .await;
    assert_eq!(second.status, StatusCode::CONFLICT, "{}", second.text);
    // Descriptions keep line breaks but not direction tricks.
    let d = app
        .post(
            "/v1/api-keys",
            &admin,
            json!({ "name": "d", "description": "line one\nline two", "scopes": [] }),
        )
        .await;
    assert_eq!(d.status, StatusCode::CREATED, "{}", d.text);
    let d = app
        .post(
            "/v1/api-keys",
            &admin,
            json!({ "name": "d2", "description": "see \u{202E}txt.exe", "scopes": [] }),
        )
        .await;
    assert_eq!(d.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", d.text);
}
on_both!(names_are_nfc_and_visible, names);

/// `s := n - s` on a JWT's ES256 signature: the same token, another valid signature.
fn high_s_twin(jwt: &str) -> String {
    const N: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63,
        0x25, 0x51,
    ];
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (head, sig) = jwt.rsplit_once('.').unwrap();
    let mut raw = b64.decode(sig).unwrap();
    assert_eq!(raw.len(), 64);
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let d = i16::from(N[i]) - i16::from(raw[32 + i]) - borrow;
        borrow = i16::from(d < 0);
        raw[32 + i] = (d + 256 * borrow) as u8;
    }
    format!("{head}.{}", b64.encode(raw))
}

async fn high_s(app: TestApp) {
    app.service("svc", &[R]).await;
    let (cid, secret, _) = admin_client(
        &app,
        json!({ "name": "jwt", "scopes": [R], "token_format": "jwt", "signing_alg": "ES256" }),
    )
    .await;
    for _ in 0..8 {
        let t = token(&app, &cid, &secret).await;
        assert_eq!(t.status, StatusCode::OK, "{}", t.text);
        let jwt = t.json()["access_token"].as_str().unwrap().to_string();
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(jwt.rsplit_once('.').unwrap().1)
            .unwrap();
        assert!(sig[32] < 0x80, "keyplane signed a high-s signature");
        assert_eq!(app.authz(Some(&jwt), Some(R)).await.status, StatusCode::OK);
        let twin = high_s_twin(&jwt);
        assert_eq!(
            app.authz(Some(&twin), Some(R)).await.status,
            StatusCode::UNAUTHORIZED,
            "the high-s twin passed /v1/authz"
        );
        assert_eq!(introspect(&app, &twin).await["active"], false);
    }
}
on_both!(high_s_es256_twins_are_refused, high_s);

async fn basic_and_form_id(app: TestApp) {
    app.service("svc", &[R]).await;
    let (cid, secret, _) = admin_client(&app, json!({ "name": "a", "scopes": [R] })).await;
    let (other, _, _) = admin_client(&app, json!({ "name": "b", "scopes": [R] })).await;
    let same = form_post(
        &app,
        "/v1/oauth/token",
        Some(basic(&cid, &secret)),
        &format!("grant_type=client_credentials&client_id={cid}"),
    )
    .await;
    assert_eq!(same.status, StatusCode::OK, "{}", same.text);
    let contradicted = form_post(
        &app,
        "/v1/oauth/token",
        Some(basic(&cid, &secret)),
        &format!("grant_type=client_credentials&client_id={other}"),
    )
    .await;
    assert_eq!(
        contradicted.status,
        StatusCode::BAD_REQUEST,
        "{}",
        contradicted.text
    );
    assert_eq!(contradicted.json()["error"], "invalid_request");
}
on_both!(
    basic_with_another_form_client_id_is_refused,
    basic_and_form_id
);

async fn link_host(app: TestApp) {
    let member = admin_member(&app, "org_default", "linked@example.com", "member").await;
    let (mut console, csrf) = admin_console(&app).await;
    let (status, body, _) = console
        .post_with(
            &format!("/console/members/{member}/link"),
            &[],
            Some(&csrf),
            &[("host", "evil.example"), ("x-forwarded-proto", "https")],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        !body.contains("evil.example"),
        "the link follows the Host header: {body}"
    );
    let issuer = app
        .get("/.well-known/oauth-authorization-server", "")
        .await
        .json()["issuer"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        body.contains(&format!("{issuer}/console/welcome#token=")),
        "the link is not under the issuer {issuer}: {body}"
    );
}
on_both!(password_links_use_the_configured_url, link_host);

async fn metrics_token(app: TestApp) {
    let open = app.get("/metrics", "").await;
    assert_eq!(open.status, StatusCode::UNAUTHORIZED, "{}", open.text);
    assert!(open
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/problem+json")));
    let wrong = app.get("/metrics", "not-the-metrics-token").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let ok = app.get("/metrics", "metrics-token-0123456789").await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    assert!(ok.text.contains("keyplane_credential_checks_total"));
}
on_both!(
    metrics_behind_a_token,
    metrics_token,
    keyplane_testkit::Options::default().env("KEYPLANE_METRICS_TOKEN", "metrics-token-0123456789")
);
