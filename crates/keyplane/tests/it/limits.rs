//! At most 50 active API keys per organization, also under concurrent creation.

use keyplane_testkit::{json, reqwest::StatusCode, TestApp};

async fn eighty_concurrent_creations(app: TestApp) {
    let admin = app.admin_key.clone();
    let org = app
        .post("/v1/orgs", &admin, json!({ "name": "fresh" }))
        .await;
    assert_eq!(org.status, StatusCode::CREATED, "{}", org.text);
    let org_id = org.json()["id"].as_str().unwrap().to_string();

    let mut tasks = Vec::new();
    for i in 0..80 {
        let http = app.http.clone();
        let url = format!("{}/v1/api-keys", app.base);
        let admin = admin.clone();
        let org_id = org_id.clone();
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(admin)
                .json(&json!({ "org_id": org_id, "name": format!("k{i}") }))
                .send()
                .await
                .unwrap();
            let status = r.status();
            (status, r.text().await.unwrap())
        }));
    }
    let (mut created, mut refused) = (0, 0);
    for t in tasks {
        let (status, body) = t.await.unwrap();
        match status {
            StatusCode::CREATED => created += 1,
            StatusCode::CONFLICT => {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(v["type"], "https://keyplane.dev/problems/limit-exceeded");
                assert!(v["detail"].as_str().unwrap().contains("50"), "{body}");
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((created, refused), (50, 30));
    let listed = app
        .get(&format!("/v1/api-keys?org_id={org_id}&limit=200"), &admin)
        .await
        .json();
    assert_eq!(listed["items"].as_array().unwrap().len(), 50);

    // Revoking one frees a place; the default organization was never affected.
    let first = listed["items"][0]["id"].as_str().unwrap().to_string();
    app.post(&format!("/v1/api-keys/{first}/revoke"), &admin, json!({}))
        .await;
    let again = app
        .post("/v1/api-keys", &admin, json!({ "org_id": org_id }))
        .await;
    assert_eq!(again.status, StatusCode::CREATED);
    let full = app
        .post("/v1/api-keys", &admin, json!({ "org_id": org_id }))
        .await;
    assert_eq!(full.status, StatusCode::CONFLICT);
    assert_eq!(
        app.post("/v1/api-keys", &admin, json!({})).await.status,
        StatusCode::CREATED
    );
}
on_both!(active_key_limit, eighty_concurrent_creations);

async fn configured_limit(app: TestApp) {
    let admin = app.admin_key.clone();
    for _ in 0..3 {
        assert_eq!(
            app.post("/auth/api_keys", &admin, json!({ "description": "x" }))
                .await
                .status,
            StatusCode::CREATED
        );
    }
    let fourth = app
        .post("/auth/api_keys", &admin, json!({ "description": "x" }))
        .await;
    assert_eq!(fourth.status, StatusCode::CONFLICT);
    assert_eq!(
        fourth.header("content-type"),
        Some("application/problem+json")
    );
}
on_both!(
    configurable_limit,
    configured_limit,
    keyplane_testkit::Options::default().env("KEYPLANE_MAX_ACTIVE_KEYS_PER_ORG", "3")
);
