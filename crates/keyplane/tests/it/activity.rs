//! The activity log through the API: what is recorded, filters, paging, verification.

use keyplane_testkit::{json, reqwest::StatusCode, TestApp};

async fn recorded_and_filtered(app: TestApp) {
    let admin = app.admin_key.clone();
    app.service("ai-guard", &["ai-guard:read"]).await;
    let (id, secret) = app
        .key(&admin, json!({ "name": "k", "scopes": ["ai-guard:read"] }))
        .await;
    app.post(&format!("/v1/api-keys/{id}/revoke"), &admin, json!({}))
        .await;
    // Refused credentials are recorded too (batched): three tries become one event with a count.
    for _ in 0..3 {
        assert_eq!(
            app.authz(Some(&secret), None).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    app.authz(Some("kp_garbage"), None).await;
    app.flush().await;

    let all = app.get("/v1/activity?limit=200", &admin).await;
    assert_eq!(all.status, StatusCode::OK);
    assert!(
        !all.text.contains(&secret),
        "the activity log never holds a secret"
    );
    let items = all.json()["items"].as_array().unwrap().clone();
    let actions: Vec<&str> = items
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in [
        "service.create",
        "api_key.create",
        "api_key.revoke",
        "credential.refused",
    ] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    let revoked = items
        .iter()
        .find(|e| e["action"] == "credential.refused" && e["target"] == id.as_str())
        .expect("the revoked key's refusal is recorded");
    assert_eq!(revoked["details"]["reason"], "revoked");
    assert_eq!(revoked["details"]["count"], 3);
    assert_eq!(revoked["outcome"], "denied");
    assert_eq!(revoked["client_addr"], "127.0.0.1");
    let malformed = items
        .iter()
        .find(|e| e["details"]["reason"] == "malformed")
        .expect("malformed refusal");
    assert!(malformed["target"].is_null());
    let create = items
        .iter()
        .find(|e| e["action"] == "api_key.create")
        .unwrap();
    assert_eq!(create["actor"], "admin-key");
    assert_eq!(create["target"], id.as_str());
    assert!(create["user_agent"].is_string() || create["user_agent"].is_null());

    // Filters and paging.
    let f = app
        .get(
            &format!("/v1/activity?target={id}&action=api_key.revoke"),
            &admin,
        )
        .await
        .json();
    assert_eq!(f["items"].as_array().unwrap().len(), 1);
    let p1 = app.get("/v1/activity?limit=2", &admin).await.json();
    assert_eq!(p1["items"].as_array().unwrap().len(), 2);
    let cursor = p1["next_cursor"].as_str().unwrap();
    let p2 = app
        .get(&format!("/v1/activity?limit=2&cursor={cursor}"), &admin)
        .await
        .json();
    assert!(p2["items"][0]["seq"].as_i64().unwrap() < p1["items"][1]["seq"].as_i64().unwrap());
    let future = app
        .get("/v1/activity?since=2999-01-01T00:00:00Z", &admin)
        .await
        .json();
    assert!(future["items"].as_array().unwrap().is_empty());

    let v = app.get("/v1/activity/verify", &admin).await.json();
    assert_eq!(v["intact"], true);
    assert!(v["checked"].as_u64().unwrap() >= items.len() as u64);

    // A forbidden management request is recorded as denied.
    let (_, plain) = app
        .key(
            &admin,
            json!({ "name": "plain", "scopes": ["ai-guard:read"] }),
        )
        .await;
    assert_eq!(
        app.post("/v1/orgs", &plain, json!({ "name": "x" }))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let denied = app
        .get("/v1/activity?action=management.denied", &admin)
        .await
        .json();
    assert_eq!(denied["items"].as_array().unwrap().len(), 1);
    assert_eq!(denied["items"][0]["outcome"], "denied");
}
on_both!(activity_is_recorded, recorded_and_filtered);
