//! API keys end to end: shown once, checked by `/v1/authz`, refused the moment they stop being good.

use keyplane_testkit::{json, reqwest::StatusCode, TestApp};
use serde_json::Value;

async fn lifecycle(app: TestApp) {
    let admin = app.admin_key.clone();
    app.service("ai-guard", &["ai-guard:read", "ai-guard:write"])
        .await;

    let created = app
        .post(
            "/v1/api-keys",
            &admin,
            json!({ "name": "guard", "scopes": ["ai-guard:read"], "description": "d" }),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let v = created.json();
    let (id, secret) = (
        v["id"].as_str().unwrap().to_string(),
        v["key"].as_str().unwrap().to_string(),
    );
    assert!(secret.starts_with("kp_"));
    assert_eq!(v["is_active"], true);
    assert_eq!(v["status"], "active");
    assert!(v["message"].as_str().unwrap().contains("only once"));

    // The secret is in the create response only.
    let got = app.get(&format!("/v1/api-keys/{id}"), &admin).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(!got.text.contains(&secret));
    assert!(got.json().get("key").is_none());
    let listed = app.get("/v1/api-keys", &admin).await;
    assert!(!listed.text.contains(&secret));
    assert_eq!(listed.json()["items"].as_array().unwrap().len(), 1);

    // Good key with the scope: 200 and identity headers.
    let ok = app.authz(Some(&secret), Some("ai-guard:read")).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.header("x-keyplane-credential-id"), Some(id.as_str()));
    assert_eq!(ok.header("x-keyplane-scopes"), Some("ai-guard:read"));
    assert_eq!(ok.header("x-keyplane-org"), Some("org_default"));
    assert_eq!(ok.header("x-keyplane-project"), Some("prj_default"));
    assert_eq!(ok.header("x-keyplane-subject"), Some(id.as_str()));

    // Too few scopes: 403 insufficient_scope.
    let few = app
        .authz(Some(&secret), Some("ai-guard:read ai-guard:write"))
        .await;
    assert_eq!(few.status, StatusCode::FORBIDDEN);
    assert!(few
        .header("www-authenticate")
        .unwrap()
        .contains("error=\"insufficient_scope\""));

    // Missing, malformed (one character changed), unknown: 401 invalid_token.
    let mut tampered = secret.clone().into_bytes();
    tampered[8] = if tampered[8] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for token in [
        None,
        Some(tampered.as_str()),
        Some("kp_nonsense"),
        Some("Basic abc"),
    ] {
        let a = app.authz(token, None).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{token:?}");
        let challenge = a.header("www-authenticate").unwrap();
        // No credential: no error code (RFC 6750 §3.1); a credential refused: invalid_token.
        let presented = token.is_some();
        assert_eq!(
            challenge.contains("error=\"invalid_token\""),
            presented,
            "{token:?}: {challenge}"
        );
        assert!(challenge.starts_with("Bearer realm=\"keyplane\""));
    }
    let well_formed_unknown = keyplane_core::domain::secret::SecretFormat::new("kp_")
        .unwrap()
        .generate();
    assert_eq!(
        app.authz(Some(well_formed_unknown.expose()), None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );

    // Last-used is written in batches: after a flush it is set.
    app.flush().await;
    let got = app.get(&format!("/v1/api-keys/{id}"), &admin).await.json();
    assert!(got["last_used_at"].is_string(), "{got}");

    // Revoke: refused on the very next request; revoking again is a no-op.
    let r = app
        .post(&format!("/v1/api-keys/{id}/revoke"), &admin, json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["status"], "revoked");
    let first_deactivated = r.json()["deactivated_at"].clone();
    assert_eq!(
        app.authz(Some(&secret), None).await.status,
        StatusCode::UNAUTHORIZED
    );
    let again = app
        .post(&format!("/v1/api-keys/{id}/revoke"), &admin, json!({}))
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json()["deactivated_at"], first_deactivated);
}
on_both!(key_lifecycle, lifecycle);

/// After a restart, active keys are read into the cache in the background: the cache fills
/// without a single check, revoked keys are not among them, and every key answers as before.
async fn preload(mut app: TestApp) {
    let admin = app.admin_key.clone();
    app.service("svc", &["svc:read"]).await;
    let mut keys = vec![];
    for i in 0..5 {
        let v = app
            .post(
                "/v1/api-keys",
                &admin,
                json!({ "name": format!("k{i}"), "scopes": ["svc:read"] }),
            )
            .await
            .json();
        keys.push((
            v["id"].as_str().unwrap().to_string(),
            v["key"].as_str().unwrap().to_string(),
        ));
    }
    let revoked = app
        .post(
            &format!("/v1/api-keys/{}/revoke", keys[4].0),
            &admin,
            json!({}),
        )
        .await;
    assert!(revoked.status.is_success(), "{}", revoked.text);
    app.restart().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let cached = app.metric("keyplane_cache_keys").await;
        if cached == 4.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the cache holds {cached} keys 10 s after the restart, not the 4 active ones"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for (_, secret) in &keys[..4] {
        let ok = app.authz(Some(secret), Some("svc:read")).await;
        assert_eq!(ok.status, StatusCode::OK);
    }
    let refused = app.authz(Some(&keys[4].1), Some("svc:read")).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
}
on_both!(cache_preload_after_restart, preload);

async fn regenerate_and_expiry(app: TestApp) {
    let admin = app.admin_key.clone();
    app.service("ai-guard", &["ai-guard:read"]).await;
    let (id, old) = app
        .key(
            &admin,
            json!({ "name": "rotating", "scopes": ["ai-guard:read"] }),
        )
        .await;
    assert_eq!(app.authz(Some(&old), None).await.status, StatusCode::OK);

    // Regenerate without grace: old refused at once, new works.
    let r = app
        .post(&format!("/v1/api-keys/{id}/regenerate"), &admin, json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let new = r.json()["key"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert_eq!(
        app.authz(Some(&old), None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.authz(Some(&new), None).await.status, StatusCode::OK);

    // Regenerate with a grace period: both work until it ends.
    let r = app
        .post(
            &format!("/v1/api-keys/{id}/regenerate"),
            &admin,
            json!({ "grace_period_seconds": 2 }),
        )
        .await;
    let newer = r.json()["key"].as_str().unwrap().to_string();
    assert_eq!(app.authz(Some(&new), None).await.status, StatusCode::OK);
    assert_eq!(app.authz(Some(&newer), None).await.status, StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_millis(2300)).await;
    assert_eq!(
        app.authz(Some(&new), None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.authz(Some(&newer), None).await.status, StatusCode::OK);

    // An expiring key works until its time, then is refused.
    let soon = (time::OffsetDateTime::now_utc() + time::Duration::seconds(2))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let (_, expiring) = app
        .key(
            &admin,
            json!({ "name": "short", "scopes": ["ai-guard:read"], "expires_at": soon }),
        )
        .await;
    assert_eq!(
        app.authz(Some(&expiring), None).await.status,
        StatusCode::OK
    );
    tokio::time::sleep(std::time::Duration::from_millis(2300)).await;
    let a = app.authz(Some(&expiring), None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(a.header("www-authenticate").unwrap().contains("expired"));

    // An edit that removes a scope takes effect on the next request.
    let p = app
        .call(
            keyplane_testkit::reqwest::Method::PATCH,
            &format!("/v1/api-keys/{id}"),
            Some(&admin),
            Some(json!({ "scopes": [] })),
        )
        .await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.text);
    assert_eq!(
        app.authz(Some(&newer), Some("ai-guard:read")).await.status,
        StatusCode::FORBIDDEN
    );

    // Copy: same configuration, new secret.
    let c = app
        .post(
            &format!("/v1/api-keys/{id}/copy"),
            &admin,
            json!({ "name": "copied" }),
        )
        .await;
    assert_eq!(c.status, StatusCode::CREATED, "{}", c.text);
    assert_eq!(c.json()["name"], "copied");
    assert_ne!(c.json()["key"], newer.as_str());
}
on_both!(regenerate_grace_and_expiry, regenerate_and_expiry);

/// `last_used_at` is a time the key was used, never the later flush's (which could come after
/// a revocation); every timestamp is RFC 3339 in UTC with milliseconds, activity details too.
async fn used_before_revoked(app: TestApp) {
    let admin = app.admin_key.clone();
    app.service("ai-guard", &["ai-guard:read"]).await;
    let (id, key) = app
        .key(
            &admin,
            json!({"scopes": ["ai-guard:read"], "expires_at": "2999-01-01T00:00:00+02:00"}),
        )
        .await;
    assert_eq!(app.authz(Some(&key), None).await.status, StatusCode::OK);
    // Revoked after the use; the flush (which writes last-used times) only comes later.
    let r = app
        .post(&format!("/v1/api-keys/{id}/revoke"), &admin, json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    app.flush().await;
    let k = app.get(&format!("/v1/api-keys/{id}"), &admin).await.json();
    let ms_utc = |v: &Value| {
        let s = v.as_str().unwrap_or_else(|| panic!("not a time: {v}"));
        assert!(
            s.len() == 24 && s.ends_with('Z') && s.as_bytes()[19] == b'.',
            "not RFC 3339 UTC with milliseconds: {s}"
        );
        s.to_string()
    };
    let used = ms_utc(&k["last_used_at"]);
    let revoked = ms_utc(&k["deactivated_at"]);
    assert!(used < revoked, "used {used}, revoked {revoked}");
    ms_utc(&k["created_at"]);
    assert_eq!(ms_utc(&k["expires_at"]), "2998-12-31T22:00:00.000Z");
    let events = app
        .get(
            &format!("/v1/activity?target={id}&action=api_key.create"),
            &admin,
        )
        .await
        .json();
    let e = &events["items"][0];
    ms_utc(&e["at"]);
    assert_eq!(
        ms_utc(&e["details"]["expires_at"]),
        "2998-12-31T22:00:00.000Z"
    );
    let services = app.get("/v1/services", &admin).await.json();
    ms_utc(&services["items"][0]["created_at"]);
}
on_both!(last_used_is_a_time_of_use, used_before_revoked);
