//! OAuth 2.0 client credentials end to end: the token endpoint and its errors, secret
//! rotation, deleted clients, JWTs verified against the JWKS across a key rotation, revocation.

use base64::Engine;
use keyplane_testkit::reqwest::{self, header, Method, StatusCode};
use keyplane_testkit::{json, Answer, TestApp};
use serde_json::Value;

const READ: &str = "ai-guard:read";
const WRITE: &str = "ai-guard:write";

async fn setup(app: &TestApp, body: Value) -> (String, String) {
    app.service("ai-guard", &[READ, WRITE]).await;
    client(app, body).await
}

async fn client(app: &TestApp, body: Value) -> (String, String) {
    let a = app
        .post("/v1/oauth-clients", &app.admin_key.clone(), body)
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let v = a.json();
    (
        v["client_id"].as_str().unwrap().into(),
        v["client_secret"].as_str().unwrap().into(),
    )
}

fn basic(id: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}

async fn form(app: &TestApp, path: &str, auth: Option<&str>, ctype: &str, body: &str) -> Answer {
    let mut r = app
        .http
        .post(format!("{}{path}", app.base))
        .header(header::CONTENT_TYPE, ctype)
        .body(body.to_string());
    if let Some(a) = auth {
        r = r.header(header::AUTHORIZATION, a);
    }
    let resp = r.send().await.unwrap();
    Answer {
        status: resp.status(),
        headers: resp.headers().clone(),
        text: resp.text().await.unwrap(),
    }
}

const FORM: &str = "application/x-www-form-urlencoded";

async fn token(app: &TestApp, id: &str, secret: &str, scope: Option<&str>) -> Answer {
    let body = match scope {
        Some(s) => format!(
            "grant_type=client_credentials&scope={}",
            s.replace(' ', "%20")
        ),
        None => "grant_type=client_credentials".into(),
    };
    form(
        app,
        "/v1/oauth/token",
        Some(&basic(id, secret)),
        FORM,
        &body,
    )
    .await
}

async fn access_token(app: &TestApp, id: &str, secret: &str, scope: Option<&str>) -> String {
    let a = token(app, id, secret, scope).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    a.json()["access_token"].as_str().unwrap().to_string()
}

async fn introspect(app: &TestApp, id: &str, secret: &str, t: &str) -> Value {
    let a = form(
        app,
        "/v1/oauth/token/introspect",
        Some(&basic(id, secret)),
        FORM,
        &format!("token={t}"),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    a.json()
}

async fn token_endpoint(app: TestApp) {
    let (id, secret) = setup(&app, json!({ "name": "svc", "scopes": [READ, WRITE] })).await;

    // Basic, all scopes; then post, one scope.
    let a = token(&app, &id, &secret, None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.header("cache-control"), Some("no-store"));
    assert_eq!(a.header("pragma"), Some("no-cache"));
    let v = a.json();
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 3600);
    assert_eq!(v["scope"], format!("{READ} {WRITE}"));
    assert!(v["access_token"].as_str().unwrap().starts_with("kpt_"));
    let post = form(
        &app,
        "/v1/oauth/token",
        None,
        FORM,
        &format!(
            "grant_type=client_credentials&client_id={id}&client_secret={secret}&scope={READ}"
        ),
    )
    .await;
    assert_eq!(post.status, StatusCode::OK, "{}", post.text);
    assert_eq!(post.json()["scope"], READ);
    let t = post.json()["access_token"].as_str().unwrap().to_string();
    assert_eq!(app.authz(Some(&t), Some(READ)).await.status, StatusCode::OK);
    assert_eq!(
        app.authz(Some(&t), Some(WRITE)).await.status,
        StatusCode::FORBIDDEN
    );

    // Every error of RFC 6749 §5.2.
    let bad = basic(&id, "kps_wrong");
    type Case<'a> = (
        &'a str,
        Option<String>,
        &'a str,
        String,
        StatusCode,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "wrong secret (Basic)",
            Some(bad.clone()),
            FORM,
            "grant_type=client_credentials".into(),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            "wrong secret (post)",
            None,
            FORM,
            format!("grant_type=client_credentials&client_id={id}&client_secret=kps_nope"),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            "unknown client",
            Some(basic("kpc_unknown", &secret)),
            FORM,
            "grant_type=client_credentials".into(),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            "no client authentication",
            None,
            FORM,
            "grant_type=client_credentials".into(),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            "both methods",
            Some(basic(&id, &secret)),
            FORM,
            format!("grant_type=client_credentials&client_id={id}&client_secret={secret}"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "missing grant_type",
            Some(basic(&id, &secret)),
            FORM,
            "scope=x".into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "repeated parameter",
            Some(basic(&id, &secret)),
            FORM,
            "grant_type=client_credentials&grant_type=client_credentials".into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "wrong content type",
            Some(basic(&id, &secret)),
            "application/json",
            "{\"grant_type\":\"client_credentials\"}".into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "unsupported grant",
            Some(basic(&id, &secret)),
            FORM,
            "grant_type=password&username=a&password=b".into(),
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
        ),
        (
            "scope outside the client's",
            Some(basic(&id, &secret)),
            FORM,
            "grant_type=client_credentials&scope=other:scope".into(),
            StatusCode::BAD_REQUEST,
            "invalid_scope",
        ),
    ];
    for (what, auth, ctype, body, status, err) in cases {
        let a = form(&app, "/v1/oauth/token", auth.as_deref(), ctype, &body).await;
        assert_eq!(a.status, status, "{what}: {}", a.text);
        assert_eq!(a.json()["error"], err, "{what}");
        assert!(a.json()["error_description"].is_string(), "{what}");
        if err == "invalid_client" {
            let challenge = a.header("www-authenticate");
            if auth.is_some() {
                assert_eq!(
                    challenge,
                    Some("Basic realm=\"keyplane\", error=\"invalid_client\", error_description=\"client authentication failed\""),
                    "{what}"
                );
            } else {
                assert_eq!(challenge, None, "{what}");
            }
        }
    }

    // A client revoking another client's token: unauthorized_client.
    let (other_id, other_secret) = client(&app, json!({ "name": "other", "scopes": [READ] })).await;
    let a = form(
        &app,
        "/v1/oauth/token/revoke",
        Some(&basic(&other_id, &other_secret)),
        FORM,
        &format!("token={t}"),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    assert_eq!(a.json()["error"], "unauthorized_client");
    assert_eq!(introspect(&app, &id, &secret, &t).await["active"], true);

    // Issuance writes no row: the activity log has one aggregated event per client per minute.
    for _ in 0..4 {
        token(&app, &id, &secret, None).await;
    }
    app.app().flush_final().await.unwrap();
    let ev = app
        .get(
            &format!("/v1/activity?action=access_token.issue&target={id}"),
            &app.admin_key.clone(),
        )
        .await
        .json();
    let items = ev["items"].as_array().unwrap();
    let total: u64 = items
        .iter()
        .map(|e| e["details"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 6, "{ev}");
    assert!(
        items.len() <= 2,
        "one event per minute, not one per token: {ev}"
    );

    // Forms up to 16 KiB are read whole, even when they arrive in several pieces; larger
    // ones are refused with invalid_request.
    let padded = format!("grant_type=client_credentials&pad={}", "x".repeat(15_000));
    let a = form(
        &app,
        "/v1/oauth/token",
        Some(&basic(&id, &secret)),
        FORM,
        &padded,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert!(a.json()["access_token"].is_string());
    let big = format!("grant_type=client_credentials&pad={}", "x".repeat(17_000));
    let a = form(
        &app,
        "/v1/oauth/token",
        Some(&basic(&id, &secret)),
        FORM,
        &big,
    )
    .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", a.text);
    assert_eq!(a.json()["error"], "invalid_request");
    assert!(a.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("too large"));
    let all = app
        .get("/v1/activity?limit=200", &app.admin_key.clone())
        .await
        .text;
    assert!(
        !all.contains(&secret) && !all.contains(&t),
        "no secret or token in the activity log"
    );
}
on_both!(token_endpoint_and_errors, token_endpoint);

async fn throttled(app: TestApp) {
    let (id, secret) = setup(&app, json!({ "name": "svc", "scopes": [READ] })).await;
    let mut last = None;
    for _ in 0..11 {
        last = Some(token(&app, &id, "kps_wrong", None).await);
    }
    let last = last.unwrap();
    assert_eq!(last.status, StatusCode::TOO_MANY_REQUESTS, "{}", last.text);
    assert!(last.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    // Even the right secret waits from this address...
    assert_eq!(
        token(&app, &id, &secret, None).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // ... but a caller with the right secret at another address is never locked out.
    let elsewhere = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let r = elsewhere
        .post(format!("{}/v1/oauth/token", app.base))
        .header(header::AUTHORIZATION, basic(&id, &secret))
        .header(header::CONTENT_TYPE, FORM)
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}
on_both!(failed_authentication_is_throttled, throttled);

async fn rotation(app: TestApp) {
    let admin = app.admin_key.clone();
    let (id, old) = setup(
        &app,
        json!({ "name": "svc", "scopes": [READ], "secret_rotation_days": 90 }),
    )
    .await;
    assert_eq!(token(&app, &id, &old, None).await.status, StatusCode::OK);

    // A new secret, the old one with a two-second grace period.
    let a = app
        .post(
            &format!("/v1/oauth-clients/{id}/secrets"),
            &admin,
            json!({ "old_secrets_expire_in_seconds": 2 }),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let new = a.json()["client_secret"].as_str().unwrap().to_string();
    let new_id = a.json()["secret_id"].as_str().unwrap().to_string();
    assert!(new.starts_with("kps_"));
    assert_eq!(
        token(&app, &id, &old, None).await.status,
        StatusCode::OK,
        "old works before the grace ends"
    );
    assert_eq!(token(&app, &id, &new, None).await.status, StatusCode::OK);

    // The operator sees which secret is in use, and none of their values.
    app.flush().await;
    let got = app.get(&format!("/v1/oauth-clients/{id}"), &admin).await;
    assert!(!got.text.contains(&old) && !got.text.contains(&new));
    let secrets = got.json()["secrets"].as_array().unwrap().clone();
    assert_eq!(secrets.len(), 2);
    let old_view = secrets.iter().find(|s| s["id"] != new_id.as_str()).unwrap();
    let new_view = secrets.iter().find(|s| s["id"] == new_id.as_str()).unwrap();
    assert_eq!(old_view["use_count"], 2);
    assert_eq!(new_view["use_count"], 1);
    assert!(old_view["last_used_at"].is_string());
    assert!(old_view["expires_at"].is_string());
    assert_eq!(got.json()["secret_rotation_days"], 90);

    tokio::time::sleep(std::time::Duration::from_millis(2300)).await;
    assert_eq!(
        token(&app, &id, &old, None).await.status,
        StatusCode::UNAUTHORIZED,
        "old fails after the grace"
    );
    assert_eq!(token(&app, &id, &new, None).await.status, StatusCode::OK);

    // Retiring a secret cuts off the tokens issued before it.
    let t = access_token(&app, &id, &new, None).await;
    let third = app
        .post(
            &format!("/v1/oauth-clients/{id}/secrets"),
            &admin,
            json!({}),
        )
        .await
        .json();
    let third_secret = third["client_secret"].as_str().unwrap().to_string();
    let r = app
        .call(
            Method::DELETE,
            &format!("/v1/oauth-clients/{id}/secrets/{new_id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert_eq!(
        token(&app, &id, &new, None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        introspect(&app, &id, &third_secret, &t).await,
        json!({ "active": false })
    );
    assert_eq!(
        app.authz(Some(&t), None).await.status,
        StatusCode::UNAUTHORIZED
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let fresh = access_token(&app, &id, &third_secret, None).await;
    assert_eq!(
        introspect(&app, &id, &third_secret, &fresh).await["active"],
        true
    );
    let unknown = app
        .call(
            Method::DELETE,
            &format!("/v1/oauth-clients/{id}/secrets/sec_nope"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
}
on_both!(secret_rotation_with_grace, rotation);

async fn deleted_client(app: TestApp) {
    let admin = app.admin_key.clone();
    let (id, secret) = setup(&app, json!({ "name": "svc", "scopes": [READ] })).await;
    let (jid, jsecret) = client(
        &app,
        json!({ "name": "jwt", "scopes": [READ], "token_format": "jwt" }),
    )
    .await;
    let opaque = access_token(&app, &id, &secret, None).await;
    let jwt = access_token(&app, &jid, &jsecret, None).await;
    assert_eq!(
        app.authz(Some(&opaque), Some(READ)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.authz(Some(&jwt), Some(READ)).await.status,
        StatusCode::OK
    );
    for c in [&id, &jid] {
        let d = app
            .call(
                Method::DELETE,
                &format!("/v1/oauth-clients/{c}"),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(d.status, StatusCode::NO_CONTENT);
    }
    assert_eq!(
        app.authz(Some(&opaque), None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.authz(Some(&jwt), None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        token(&app, &id, &secret, None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get(&format!("/v1/oauth-clients/{id}"), &admin)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    // The admin key may introspect any token: both are inactive.
    for t in [&opaque, &jwt] {
        let a = app
            .http
            .post(format!("{}/v1/oauth/token/introspect", app.base))
            .bearer_auth(&admin)
            .header(header::CONTENT_TYPE, FORM)
            .body(format!("token={t}"))
            .send()
            .await
            .unwrap();
        assert_eq!(a.json::<Value>().await.unwrap(), json!({ "active": false }));
    }
}
on_both!(deleted_clients_tokens_stop_working, deleted_client);

/// An opaque token is opened once and then recognised by its digest (a node keeps what it
/// opened): whatever changes afterwards must still show at once — the client's name and
/// audience, a retired secret, a revocation, the client's deletion — and a token one character
/// away from a known one is still nothing.
async fn opened_tokens(app: TestApp) {
    let admin = app.admin_key.clone();
    let (id, secret) = setup(&app, json!({ "name": "svc", "scopes": [READ] })).await;
    let t = access_token(&app, &id, &secret, None).await;
    for _ in 0..2 {
        let v = introspect(&app, &id, &secret, &t).await;
        assert_eq!(
            (v["active"].clone(), v["username"].clone()),
            (json!(true), json!("svc"))
        );
        assert_eq!(app.authz(Some(&t), Some(READ)).await.status, StatusCode::OK);
    }

    // One character changed, anywhere in the sealed part: inactive; the real one still works.
    let prefix = "kpat_".len();
    for at in [prefix, t.len() / 2, t.len() - 8] {
        let mut forged = t.clone().into_bytes();
        forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        assert_eq!(
            introspect(&app, &id, &secret, &forged).await,
            json!({ "active": false }),
            "changed at {at}"
        );
        assert_eq!(
            app.authz(Some(&forged), None).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    // Kept tokens are found by their last 32 bytes: a token that ends the same way but is not
    // the same token (its tail alone, or one byte more before it) is not a hit.
    let tail = &t[t.len() - 32..];
    for forged in [
        format!("kpat_{tail}"),
        format!("{}A{tail}", &t[..t.len() - 32]),
    ] {
        assert_eq!(
            introspect(&app, &id, &secret, &forged).await,
            json!({ "active": false }),
            "{forged}"
        );
        assert_eq!(
            app.authz(Some(&forged), None).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(introspect(&app, &id, &secret, &t).await["active"], true);

    // The client renamed and given an audience: the next answer says so.
    let p = app
        .call(
            Method::PATCH,
            &format!("/v1/oauth-clients/{id}"),
            Some(&admin),
            Some(json!({ "name": "renamed", "audience": "https://api.example.com" })),
        )
        .await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.text);
    let v = introspect(&app, &id, &secret, &t).await;
    assert_eq!(v["username"], "renamed", "{v}");
    assert_eq!(v["aud"], "https://api.example.com", "{v}");

    // Retiring the secret the token came from cuts it off (tokens issued before it).
    let second = app
        .post(
            &format!("/v1/oauth-clients/{id}/secrets"),
            &admin,
            json!({}),
        )
        .await
        .json();
    let second_secret = second["client_secret"].as_str().unwrap().to_string();
    let first_id = app
        .get(&format!("/v1/oauth-clients/{id}"), &admin)
        .await
        .json()["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] != second["secret_id"])
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = app
        .call(
            Method::DELETE,
            &format!("/v1/oauth-clients/{id}/secrets/{first_id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert_eq!(
        introspect(&app, &id, &second_secret, &t).await,
        json!({ "active": false })
    );
    assert_eq!(
        app.authz(Some(&t), None).await.status,
        StatusCode::UNAUTHORIZED
    );

    // A token revoked after it was opened: inactive on the next request.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let u = access_token(&app, &id, &second_secret, None).await;
    assert_eq!(
        introspect(&app, &id, &second_secret, &u).await["active"],
        true
    );
    assert_eq!(app.authz(Some(&u), Some(READ)).await.status, StatusCode::OK);
    let r = form(
        &app,
        "/v1/oauth/token/revoke",
        Some(&basic(&id, &second_secret)),
        FORM,
        &format!("token={u}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        introspect(&app, &id, &second_secret, &u).await,
        json!({ "active": false })
    );
    assert_eq!(
        app.authz(Some(&u), None).await.status,
        StatusCode::UNAUTHORIZED
    );

    // The client deleted: its opened tokens end with it (the admin key asks).
    let w = access_token(&app, &id, &second_secret, None).await;
    assert_eq!(
        introspect(&app, &id, &second_secret, &w).await["active"],
        true
    );
    let d = app
        .call(
            Method::DELETE,
            &format!("/v1/oauth-clients/{id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(d.status, StatusCode::NO_CONTENT);
    let a = app
        .http
        .post(format!("{}/v1/oauth/token/introspect", app.base))
        .bearer_auth(&admin)
        .header(header::CONTENT_TYPE, FORM)
        .body(format!("token={w}"))
        .send()
        .await
        .unwrap();
    assert_eq!(a.json::<Value>().await.unwrap(), json!({ "active": false }));
    assert_eq!(
        app.authz(Some(&w), None).await.status,
        StatusCode::UNAUTHORIZED
    );
}
on_both!(opened_tokens_follow_their_client, opened_tokens);

/// JWT access tokens are kept verified too, tied to the keyring that verified them: a forged
/// one that ends like a kept one is not a hit, a revoked one ends at once, and one whose
/// signing key is gone from the keyring stops with the next reload of the keys.
async fn kept_jwts(app: TestApp) {
    let (id, secret) = setup(
        &app,
        json!({ "name": "jwt", "scopes": [READ], "token_format": "jwt" }),
    )
    .await;
    let t = access_token(&app, &id, &secret, None).await;
    assert_eq!(t.matches('.').count(), 2, "a JWT: {t}");
    for _ in 0..2 {
        assert_eq!(introspect(&app, &id, &secret, &t).await["active"], true);
        assert_eq!(app.authz(Some(&t), Some(READ)).await.status, StatusCode::OK);
    }
    // The claims changed (the signature, the last 32 bytes, kept): not a hit, refused.
    let (head, rest) = t.split_once('.').unwrap();
    let (claims, sig) = rest.split_once('.').unwrap();
    let mut changed = claims.as_bytes().to_vec();
    changed[claims.len() / 2] = if changed[claims.len() / 2] == b'A' {
        b'B'
    } else {
        b'A'
    };
    let forged = format!("{head}.{}.{sig}", String::from_utf8(changed).unwrap());
    assert_eq!(
        introspect(&app, &id, &secret, &forged).await,
        json!({ "active": false })
    );
    assert_eq!(
        app.authz(Some(&forged), None).await.status,
        StatusCode::UNAUTHORIZED
    );

    // Revoked after it was kept: refused on the next request.
    let u = access_token(&app, &id, &secret, None).await;
    assert_eq!(app.authz(Some(&u), Some(READ)).await.status, StatusCode::OK);
    let r = form(
        &app,
        "/v1/oauth/token/revoke",
        Some(&basic(&id, &secret)),
        FORM,
        &format!("token={u}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        app.authz(Some(&u), None).await.status,
        StatusCode::UNAUTHORIZED
    );

    // A reload that keeps the key: still active. One without the key (deleted from storage, as
    // an operator would a compromised key): refused, though the token was kept.
    app.app().reload_signing_keys().await.unwrap();
    assert_eq!(introspect(&app, &id, &secret, &t).await["active"], true);
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(head)
            .unwrap(),
    )
    .unwrap();
    let kid = header["kid"].as_str().unwrap();
    let gone = crate::activity::sql(
        &app,
        &format!("DELETE FROM signing_keys WHERE kid = '{kid}'"),
    )
    .await;
    assert_eq!(gone, 1);
    app.app().reload_signing_keys().await.unwrap();
    assert_eq!(
        introspect(&app, &id, &secret, &t).await,
        json!({ "active": false })
    );
    assert_eq!(
        app.authz(Some(&t), None).await.status,
        StatusCode::UNAUTHORIZED
    );
}
on_both!(kept_jwts_follow_their_keyring, kept_jwts);

fn verify_with_jwks(token: &str, jwks: &Value, issuer: &str) -> Result<Value, String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    let kid = header.kid.clone().ok_or("no kid")?;
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks.clone()).unwrap();
    let jwk = set
        .find(&kid)
        .ok_or(format!("kid {kid} is not in the JWKS"))?;
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[issuer]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub", "iat", "nbf"]);
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .map(|d| d.claims)
        .map_err(|e| e.to_string())
}

async fn jwt_and_jwks(app: TestApp) {
    let admin = app.admin_key.clone();
    let (id, secret) = setup(
        &app,
        json!({ "name": "jwt", "scopes": [READ, WRITE], "token_format": "jwt" }),
    )
    .await;
    let (eid, esecret) = client(&app, json!({ "name": "ed", "scopes": [READ], "token_format": "jwt", "signing_alg": "EdDSA", "audience": "https://ai-guard.example" })).await;
    let issuer = app
        .call(
            Method::GET,
            "/.well-known/oauth-authorization-server",
            None,
            None,
        )
        .await
        .json()["issuer"]
        .as_str()
        .unwrap()
        .to_string();
    let jwks = app
        .call(Method::GET, "/.well-known/jwks.json", None, None)
        .await
        .json();

    let t1 = access_token(&app, &id, &secret, Some(READ)).await;
    let claims =
        verify_with_jwks(&t1, &jwks, &issuer).expect("ES256 token verifies against the JWKS");
    assert_eq!(claims["sub"], id.as_str());
    assert_eq!(claims["client_id"], id.as_str());
    assert_eq!(claims["scope"], READ);
    assert!(claims["jti"].is_string());
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        3600
    );
    let ed = access_token(&app, &eid, &esecret, None).await;
    assert_eq!(
        jsonwebtoken::decode_header(&ed).unwrap().alg,
        jsonwebtoken::Algorithm::EdDSA
    );
    assert!(
        verify_with_jwks(&ed, &jwks, &issuer).is_err(),
        "its audience is not the issuer"
    );
    let ed_claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(ed.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(ed_claims["aud"], "https://ai-guard.example");

    // Rotate: the next key is published before it signs; the old one stays published.
    let old_kid = jsonwebtoken::decode_header(&t1).unwrap().kid.unwrap();
    let new_kid = app
        .app()
        .rotate_signing_key(keyplane_core::domain::token::Alg::ES256, Some(1))
        .await
        .unwrap();
    let jwks2 = app
        .call(Method::GET, "/.well-known/jwks.json", None, None)
        .await
        .json();
    let kids: Vec<&str> = jwks2["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(
        kids.contains(&old_kid.as_str()) && kids.contains(&new_kid.as_str()),
        "{kids:?}"
    );
    let before = access_token(&app, &id, &secret, None).await;
    assert_eq!(
        jsonwebtoken::decode_header(&before).unwrap().kid.unwrap(),
        old_kid,
        "not signing before its lead time"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let after = access_token(&app, &id, &secret, None).await;
    assert_eq!(
        jsonwebtoken::decode_header(&after).unwrap().kid.unwrap(),
        new_kid
    );
    for t in [&t1, &before, &after] {
        verify_with_jwks(t, &jwks2, &issuer).expect("tokens of both keys verify");
        assert_eq!(app.authz(Some(t), Some(READ)).await.status, StatusCode::OK);
    }

    // Revoking a JWT: its jti is remembered until it expires.
    let r = form(
        &app,
        "/v1/oauth/token/revoke",
        Some(&basic(&id, &secret)),
        FORM,
        &format!("token={after}&token_type_hint=access_token"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text.is_empty());
    assert_eq!(
        app.authz(Some(&after), None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        introspect(&app, &id, &secret, &after).await,
        json!({ "active": false })
    );
    assert_eq!(
        introspect(&app, &id, &secret, &before).await["active"],
        true
    );
    // A token from another issuer's key is refused.
    let mut forged = after.clone();
    forged.truncate(after.rfind('.').unwrap() + 1);
    forged.push_str("AAAA");
    assert_eq!(
        app.authz(Some(&forged), None).await.status,
        StatusCode::UNAUTHORIZED
    );

    // The management API takes an access token as a credential with the token's scopes.
    let me = app.get("/v1/me", &before).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text);
    assert_eq!(me.json()["kind"], "access-token");
    assert_eq!(
        app.get("/v1/api-keys", &before).await.status,
        StatusCode::FORBIDDEN
    );

    // "Create access token" from the console's API.
    let issued = app
        .post(
            &format!("/v1/oauth-clients/{id}/tokens"),
            &admin,
            json!({ "scope": WRITE }),
        )
        .await;
    assert_eq!(issued.status, StatusCode::CREATED, "{}", issued.text);
    let t = issued.json()["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        app.authz(Some(&t), Some(WRITE)).await.status,
        StatusCode::OK
    );
}
on_both!(jwt_verified_against_jwks_across_rotation, jwt_and_jwks);

async fn introspection_rules(app: TestApp) {
    let admin = app.admin_key.clone();
    let (id, secret) = setup(
        &app,
        json!({ "name": "My Service Client", "scopes": [READ] }),
    )
    .await;
    let t = access_token(&app, &id, &secret, None).await;
    let v = introspect(&app, &id, &secret, &t).await;
    for f in [
        "iss",
        "sub",
        "exp",
        "nbf",
        "iat",
        "jti",
        "client_id",
        "token_type",
        "username",
        "scope",
    ] {
        assert!(v.get(f).is_some(), "introspection lacks {f}: {v}");
    }
    assert_eq!(v["active"], true);
    assert_eq!(v["username"], "My Service Client");
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["credential_type"], "access_token");

    // API keys introspect too; garbage is exactly {"active": false}.
    let (_, key) = app
        .key(&admin, json!({ "name": "k", "scopes": [READ] }))
        .await;
    let k = introspect(&app, &id, &secret, &key).await;
    assert_eq!(k["active"], true);
    assert_eq!(k["credential_type"], "api_key");
    assert_eq!(k["scope"], READ);
    for junk in ["", "kpt_garbage", "eyJ.eyJ.sig", "kp_x"] {
        assert_eq!(
            introspect(&app, &id, &secret, junk).await,
            json!({ "active": false }),
            "{junk:?}"
        );
    }

    // Unauthenticated: 401; a key without the permission: 403; with TOKEN-INTROSPECTOR: allowed.
    let anon = form(
        &app,
        "/v1/oauth/token/introspect",
        None,
        FORM,
        &format!("token={t}"),
    )
    .await;
    assert_eq!(anon.status, StatusCode::UNAUTHORIZED);
    let plain = app
        .http
        .post(format!("{}/v1/oauth/token/introspect", app.base))
        .bearer_auth(&key)
        .header(header::CONTENT_TYPE, FORM)
        .body(format!("token={t}"))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), StatusCode::FORBIDDEN);
    let (_, introspector) = app
        .key(
            &admin,
            json!({ "name": "i", "roles": ["TOKEN-INTROSPECTOR"] }),
        )
        .await;
    let ok = app
        .http
        .post(format!("{}/v1/oauth/token/introspect", app.base))
        .bearer_auth(&introspector)
        .header(header::CONTENT_TYPE, FORM)
        .body(format!("token={t}"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.json::<Value>().await.unwrap()["active"], true);

    // A client of another organization learns nothing about this one's tokens.
    let org = app
        .post("/v1/orgs", &admin, json!({ "name": "other" }))
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (oid, osecret) = client(
        &app,
        json!({ "name": "x", "org_id": org, "scopes": [READ] }),
    )
    .await;
    assert_eq!(
        introspect(&app, &oid, &osecret, &t).await,
        json!({ "active": false })
    );

    // Client names are unique within a project; scopes must be registered.
    let dup = app
        .post(
            "/v1/oauth-clients",
            &admin,
            json!({ "name": "My Service Client", "scopes": [READ] }),
        )
        .await;
    assert_eq!(dup.status, StatusCode::CONFLICT);
    let unknown = app
        .post(
            "/v1/oauth-clients",
            &admin,
            json!({ "name": "n", "scopes": ["nope:read"] }),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::UNPROCESSABLE_ENTITY);
    let ttl = app
        .post(
            "/v1/oauth-clients",
            &admin,
            json!({ "name": "t", "access_token_ttl_seconds": 5 }),
        )
        .await;
    assert_eq!(ttl.status, StatusCode::UNPROCESSABLE_ENTITY);

    // Revocation of an unknown token, as seed 000 shows it.
    let r = form(
        &app,
        "/v1beta/oauth/token/revoke",
        Some(&basic(&id, &secret)),
        FORM,
        "token=does-not-exist",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json(),
        json!({ "error": "invalid_request", "error_description": "The token does not exist" })
    );
}
on_both!(introspection_and_client_rules, introspection_rules);

async fn custom_prefixes(app: TestApp) {
    let (id, secret) = setup(&app, json!({ "name": "svc", "scopes": [READ] })).await;
    assert!(
        id.starts_with("ptgc_") && secret.starts_with("ptgs_"),
        "{id} {secret}"
    );
    let t = access_token(&app, &id, &secret, None).await;
    assert!(t.starts_with("pts_"), "{t}");
    let (_, key) = app
        .key(&app.admin_key.clone(), json!({ "scopes": [READ] }))
        .await;
    assert!(key.starts_with("ptg_"));
    assert_eq!(app.authz(Some(&t), Some(READ)).await.status, StatusCode::OK);
    assert_eq!(
        app.authz(Some(&key), Some(READ)).await.status,
        StatusCode::OK
    );
}
on_both!(
    prefixes_per_deployment,
    custom_prefixes,
    keyplane_testkit::Options::default()
        .env("KEYPLANE_CLIENT_ID_PREFIX", "ptgc_")
        .env("KEYPLANE_CLIENT_SECRET_PREFIX", "ptgs_")
        .env("KEYPLANE_ACCESS_TOKEN_PREFIX", "pts_")
        .env("KEYPLANE_API_KEY_PREFIX", "ptg_")
);

/// keyplane in process on a clock the test moves, with the `ai-guard` service and one secret
/// client made from `client`: the app, the clock, the client's credentials and id (and the
/// database, kept alive). `None` when the backend is not available.
async fn on_a_manual_clock(
    backend: keyplane_testkit::Backend,
    client: keyplane_core::usecase::clients::NewClient,
) -> Option<(
    keyplane_testkit::TestDb,
    keyplane_core::Keyplane,
    keyplane_core::domain::clock::ManualClock,
    keyplane_core::domain::oauth::ClientCredentials,
    String,
)> {
    use keyplane_core::domain::clock::ManualClock;
    use keyplane_core::domain::oauth::{ClientAuth, ClientCredentials};
    use keyplane_core::domain::perm::Principal;
    use keyplane_core::domain::request::RequestMeta;
    use std::sync::Arc;

    let db = keyplane_testkit::TestDb::fresh(backend).await?;
    let store = keyplane_store::open(&db.url).await.unwrap();
    let clock = ManualClock::default();
    let pepper = keyplane_core::domain::secret::Pepper::new(1, &[9u8; 32]).unwrap();
    let app = keyplane_core::Keyplane::new(
        store,
        Arc::new(clock.clone()),
        pepper,
        keyplane_core::Settings::default(),
    );
    app.bootstrap(None).await.unwrap();
    app.ensure_signing_keys().await.unwrap();
    let admin = Principal::admin();
    let meta = RequestMeta::default();
    app.service_create(&admin, "ai-guard", None, vec![READ.into()], vec![], &meta)
        .await
        .unwrap();
    let (made, first) = app.client_create(&admin, client, &meta).await.unwrap();
    let auth = ClientCredentials::Secret(ClientAuth {
        client_id: made.client_id.clone(),
        secret: first.expect("a secret client has a secret").1,
        basic: true,
    });
    Some((db, app, clock, auth, made.client_id))
}

/// The rotation policy, on a clock the test moves: a secret is refused once older than the
/// policy allows, and the activity log and the metric warn a week ahead.
async fn rotation_policy_on_a_manual_clock(backend: keyplane_testkit::Backend) {
    use keyplane_core::domain::oauth::OAuthError;
    use keyplane_core::domain::perm::Principal;
    use keyplane_core::domain::request::RequestMeta;
    use keyplane_core::usecase::clients::NewClient;

    let client = NewClient {
        name: "rotating".into(),
        scopes: vec![READ.into()],
        secret_rotation_days: Some(10),
        ..Default::default()
    };
    let Some((_db, app, clock, auth, client_id)) = on_a_manual_clock(backend, client).await else {
        return;
    };
    let admin = Principal::admin();
    let meta = RequestMeta::default();
    assert!(app.issue_token(&auth, None, &[], &meta, None).await.is_ok());
    assert_eq!(
        app.warn_expiring_secrets().await.unwrap(),
        0,
        "ten days ahead: no warning yet"
    );
    assert_eq!(app.secrets_expiring_soon(), 0);

    // Four days later the secret is within a week of its maximum age: one warning, once.
    clock.advance(time::Duration::days(4));
    assert_eq!(app.secrets_expiring_soon(), 1);
    assert_eq!(app.warn_expiring_secrets().await.unwrap(), 1);
    assert_eq!(app.warn_expiring_secrets().await.unwrap(), 0);
    let events = app
        .activity_query(
            &admin,
            None,
            keyplane_core::store::EventFilter {
                action: Some("client_secret.expiring".into()),
                ..Default::default()
            },
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(events.items.len(), 1);
    assert!(events.items[0].details.contains(&client_id));
    assert!(
        app.issue_token(&auth, None, &[], &meta, None).await.is_ok(),
        "still good before its maximum age"
    );

    // Past ten days it is refused.
    clock.advance(time::Duration::days(6) + time::Duration::minutes(1));
    assert_eq!(
        app.issue_token(&auth, None, &[], &meta, None)
            .await
            .unwrap_err(),
        OAuthError::InvalidClient { basic: true }
    );
}

/// On a manual clock: a token that was opened (and is kept opened) still ends at its expiry.
async fn opened_token_expires_on_a_manual_clock(backend: keyplane_testkit::Backend) {
    use keyplane_core::domain::request::RequestMeta;
    use keyplane_core::usecase::clients::NewClient;

    let client = NewClient {
        name: "short".into(),
        scopes: vec![READ.into()],
        access_token_ttl_seconds: Some(60),
        ..Default::default()
    };
    let Some((_db, app, clock, auth, _)) = on_a_manual_clock(backend, client).await else {
        return;
    };
    let meta = RequestMeta::default();
    let t = app
        .issue_token(&auth, None, &[], &meta, None)
        .await
        .unwrap()
        .access_token;
    for _ in 0..3 {
        assert!(app.introspect(None, &t).await.0.is_some());
    }
    clock.advance(time::Duration::seconds(59));
    assert!(
        app.introspect(None, &t).await.0.is_some(),
        "a second before its expiry"
    );
    clock.advance(time::Duration::seconds(1));
    assert!(app.introspect(None, &t).await.0.is_none(), "at its expiry");
}

#[tokio::test]
async fn opened_token_expires_sqlite() {
    opened_token_expires_on_a_manual_clock(keyplane_testkit::Backend::Sqlite).await;
}

#[tokio::test]
async fn opened_token_expires_postgres() {
    opened_token_expires_on_a_manual_clock(keyplane_testkit::Backend::Postgres).await;
}

#[tokio::test]
async fn secret_rotation_policy_sqlite() {
    rotation_policy_on_a_manual_clock(keyplane_testkit::Backend::Sqlite).await;
}

#[tokio::test]
async fn secret_rotation_policy_postgres() {
    rotation_policy_on_a_manual_clock(keyplane_testkit::Backend::Postgres).await;
}
