//! Bad input gets a clear problem+json error, never a 500, and changes nothing.

use keyplane_testkit::{reqwest::Method, reqwest::StatusCode, TestApp};

async fn bad_input(app: TestApp) {
    let admin = app.admin_key.clone();
    app.service("ai-guard", &["ai-guard:read"]).await;
    let raw = |method: Method, path: &str, ctype: Option<&str>, body: Vec<u8>| {
        let mut r = app
            .http
            .request(method, format!("{}{path}", app.base))
            .bearer_auth(&admin)
            .body(body);
        if let Some(c) = ctype {
            r = r.header("content-type", c);
        }
        r.send()
    };

    type Case<'a> = (
        &'a str,
        Method,
        &'a str,
        Option<&'a str>,
        Vec<u8>,
        StatusCode,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            Method::POST,
            "/v1/api-keys",
            Some("application/json"),
            b"{\"name\":".to_vec(),
            StatusCode::BAD_REQUEST,
            "not valid JSON",
        ),
        (
            "wrong content type",
            Method::POST,
            "/v1/api-keys",
            Some("text/plain"),
            b"{}".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "application/json",
        ),
        (
            "wrong field type",
            Method::POST,
            "/v1/api-keys",
            Some("application/json"),
            br#"{"scopes":"ai-guard:read"}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "scopes",
        ),
        (
            "unknown field",
            Method::POST,
            "/v1/api-keys",
            Some("application/json"),
            br#"{"scope":["ai-guard:read"]}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown field",
        ),
        (
            "unknown scope",
            Method::POST,
            "/v1/api-keys",
            Some("application/json"),
            br#"{"scopes":["nope:read"]}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown scope",
        ),
        (
            "unknown role",
            Method::POST,
            "/v1/api-keys",
            Some("application/json"),
            br#"{"roles":["NOPE"]}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown role",
        ),
        (
            "past expiry",
            Method::POST,
            "/v1/api-keys",
            Some("application/json"),
            br#"{"expires_at":"2001-01-01T00:00:00Z"}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "future",
        ),
        (
            "bad time",
            Method::POST,
            "/v1/api-keys",
            Some("application/json"),
            br#"{"expires_at":"tomorrow"}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "RFC 3339",
        ),
        (
            "empty name",
            Method::POST,
            "/v1/api-keys",
            Some("application/json"),
            br#"{"name":"  "}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "name",
        ),
        (
            "oversized body",
            Method::POST,
            "/v1/api-keys",
            Some("application/json"),
            format!("{{\"name\":\"{}\"}}", "x".repeat(100_000)).into_bytes(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "larger",
        ),
        (
            "bad id",
            Method::GET,
            "/v1/api-keys/%00%ff",
            None,
            vec![],
            StatusCode::BAD_REQUEST,
            "path",
        ),
        (
            "unknown id",
            Method::GET,
            "/v1/api-keys/key_unknown",
            None,
            vec![],
            StatusCode::NOT_FOUND,
            "API key",
        ),
        (
            "bad cursor",
            Method::GET,
            "/v1/api-keys?cursor=abc",
            None,
            vec![],
            StatusCode::UNPROCESSABLE_ENTITY,
            "cursor",
        ),
        (
            "bad limit",
            Method::GET,
            "/v1/api-keys?limit=100000",
            None,
            vec![],
            StatusCode::UNPROCESSABLE_ENTITY,
            "limit",
        ),
        (
            "bad query",
            Method::GET,
            "/v1/api-keys?include_inactive=maybe",
            None,
            vec![],
            StatusCode::BAD_REQUEST,
            "query",
        ),
        (
            "unknown org",
            Method::GET,
            "/v1/api-keys?org_id=org_nope",
            None,
            vec![],
            StatusCode::NOT_FOUND,
            "organization",
        ),
        (
            "bad service scope",
            Method::POST,
            "/v1/services",
            Some("application/json"),
            br#"{"name":"x","scopes":["has space"]}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "scope",
        ),
        (
            "taken scope",
            Method::POST,
            "/v1/services",
            Some("application/json"),
            br#"{"name":"other","scopes":["ai-guard:read"]}"#.to_vec(),
            StatusCode::CONFLICT,
            "already",
        ),
        (
            "bad role",
            Method::POST,
            "/v1/members",
            Some("application/json"),
            br#"{"email":"a@b.c","role":"king"}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "role",
        ),
        (
            "bad email",
            Method::POST,
            "/v1/members",
            Some("application/json"),
            br#"{"email":"nope","role":"member"}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "email",
        ),
        (
            "unknown permission",
            Method::POST,
            "/v1/roles",
            Some("application/json"),
            br#"{"name":"R","permissions":["keys:everything"]}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown permission",
        ),
        (
            "bad grace",
            Method::POST,
            "/v1/api-keys/key_x/regenerate",
            Some("application/json"),
            br#"{"grace_period_seconds":"soon"}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "grace",
        ),
        (
            "unknown route",
            Method::GET,
            "/v1/nothing-here",
            None,
            vec![],
            StatusCode::NOT_FOUND,
            "route",
        ),
    ];
    for (what, method, path, ctype, body, want, needle) in cases {
        let r = raw(method, path, ctype, body).await.unwrap();
        let status = r.status();
        let ct = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string());
        let text = r.text().await.unwrap();
        assert_eq!(status, want, "{what}: {text}");
        assert_eq!(ct.as_deref(), Some("application/problem+json"), "{what}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        for f in ["type", "title", "status", "detail"] {
            assert!(v.get(f).is_some(), "{what}: problem lacks {f}: {text}");
        }
        assert_eq!(v["status"], want.as_u16());
        assert!(
            text.contains(needle),
            "{what}: detail should mention {needle:?}: {text}"
        );
    }
    // Nothing was created by any of it.
    let listed = app.get("/v1/api-keys", &admin).await.json();
    assert_eq!(listed["items"].as_array().unwrap().len(), 0);
    let services = app.get("/v1/services", &admin).await.json();
    assert_eq!(services["items"].as_array().unwrap().len(), 1);

    // No credential, a wrong one: 401 problem+json with a Bearer challenge.
    for token in [
        None,
        Some("not-the-admin-key-but-long-enough-to-try-0123456789"),
    ] {
        let a = app.call(Method::GET, "/v1/api-keys", token, None).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        assert_eq!(a.header("content-type"), Some("application/problem+json"));
        assert!(a
            .header("www-authenticate")
            .unwrap()
            .starts_with("Bearer realm=\"keyplane\""));
    }
}
on_both!(bad_input_is_refused_clearly, bad_input);

async fn ops_routes(app: TestApp) {
    let h = app.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(h.status, StatusCode::OK);
    let r = app.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json()["storage"],
        match app.backend() {
            keyplane_testkit::Backend::Sqlite => "sqlite",
            keyplane_testkit::Backend::Postgres => "postgres",
        }
    );
    let m = app.call(Method::GET, "/metrics", None, None).await;
    assert!(m.text.contains("keyplane_credential_checks_total"));
}
on_both!(health_readiness_metrics, ops_routes);

/// The OpenAPI document is generated from the code and committed; a change must be committed too.
#[test]
fn openapi_document_matches_the_committed_one() {
    let generated = keyplane_http::openapi::document();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../openapi.json");
    if std::env::var("KEYPLANE_BLESS").is_ok() {
        std::fs::write(path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi.json is out of date: run `KEYPLANE_BLESS=1 cargo test -p keyplane --test it openapi` and commit it"
    );
    let v: serde_json::Value = serde_json::from_str(&generated).unwrap();
    assert!(v["openapi"].as_str().unwrap().starts_with("3.1"));
    for p in [
        "/v1/api-keys",
        "/v1/api-keys/{id}/regenerate",
        "/auth/api_keys",
        "/auth/api_keys/deactivate/{id}",
        "/v1/authz",
        "/v1/activity/verify",
        "/v1/orgs",
        "/v1/services",
    ] {
        assert!(v["paths"].get(p).is_some(), "{p} is not documented");
    }
}

async fn served_openapi(app: TestApp) {
    let a = app.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.text, keyplane_http::openapi::document());
}
on_both!(openapi_is_served, served_openapi);
