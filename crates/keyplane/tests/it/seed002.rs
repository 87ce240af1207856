//! Seed 002 ("API Authentication Guide"): its routes, bodies and answers, as written.

use keyplane_testkit::{json, reqwest::Method, reqwest::StatusCode, TestApp};

async fn admin_key_mints_role_bearing_keys(app: TestApp) {
    let admin = app.admin_key.clone();
    // GET /auth/api_keys with the admin key.
    let empty = app.get("/auth/api_keys", &admin).await;
    assert_eq!(empty.status, StatusCode::OK);
    assert_eq!(empty.json(), json!([]));

    // POST /auth/api_keys {description, roles}.
    let created = app
        .post("/auth/api_keys", &admin, json!({ "description": "This token needs to be rotated by the 4th of March this year", "roles": ["ORG-ADMIN"] }))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let v = created.json();
    for field in [
        "id",
        "key",
        "description",
        "is_active",
        "created_at",
        "deactivated_at",
        "message",
    ] {
        assert!(v.get(field).is_some(), "response lacks `{field}`: {v}");
    }
    assert_eq!(v["is_active"], true);
    assert!(v["deactivated_at"].is_null());
    assert!(v["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        v["description"],
        "This token needs to be rotated by the 4th of March this year"
    );
    let id = v["id"].as_str().unwrap().to_string();
    let key = v["key"].as_str().unwrap().to_string();

    // The ORG-ADMIN key manages keys itself.
    let by_key = app
        .post(
            "/auth/api_keys",
            &key,
            json!({ "description": "made by a key", "roles": [] }),
        )
        .await;
    assert_eq!(by_key.status, StatusCode::CREATED, "{}", by_key.text);
    let listed = app.get("/auth/api_keys", &key).await;
    assert_eq!(listed.status, StatusCode::OK);
    assert_eq!(listed.json().as_array().unwrap().len(), 2);
    assert!(!listed.text.contains(&key), "a list never shows a secret");

    // A key without a management role cannot list or mint keys.
    let plain = by_key.json()["key"].as_str().unwrap().to_string();
    assert_eq!(
        app.get("/auth/api_keys", &plain).await.status,
        StatusCode::FORBIDDEN
    );

    // Regenerate: POST /auth/api_keys naming the id.
    let regen = app
        .post("/auth/api_keys", &admin, json!({ "id": id }))
        .await;
    assert_eq!(regen.status, StatusCode::OK, "{}", regen.text);
    let new_key = regen.json()["key"].as_str().unwrap().to_string();
    assert_ne!(new_key, key);
    assert_eq!(regen.json()["id"], id.as_str());
    assert_eq!(
        app.get("/auth/api_keys", &key).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get("/auth/api_keys", &new_key).await.status,
        StatusCode::OK
    );

    // DELETE /auth/api_keys/deactivate/{id}.
    let d = app
        .call(
            Method::DELETE,
            &format!("/auth/api_keys/deactivate/{id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(d.status, StatusCode::OK, "{}", d.text);
    assert_eq!(d.json()["is_active"], false);
    assert!(d.json()["deactivated_at"].is_string());
    assert_eq!(
        app.get("/auth/api_keys", &new_key).await.status,
        StatusCode::UNAUTHORIZED
    );
    let unknown = app
        .call(
            Method::DELETE,
            "/auth/api_keys/deactivate/key_doesnotexist",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);

    // Without the admin key: 401 with a Bearer challenge.
    let anon = app.call(Method::GET, "/auth/api_keys", None, None).await;
    assert_eq!(anon.status, StatusCode::UNAUTHORIZED);
    assert!(anon
        .header("www-authenticate")
        .unwrap()
        .starts_with("Bearer"));
}
on_both!(seed_002_flow, admin_key_mints_role_bearing_keys);
