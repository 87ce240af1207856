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
    // One event with a count — unless the periodic flush (every 100 ms here) fell between the
    // three tries, which a loaded machine makes likely; the counts add up either way.
    let counted: u64 = items
        .iter()
        .filter(|e| e["action"] == "credential.refused" && e["target"] == id.as_str())
        .map(|e| e["details"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, 3);
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

/// Runs one statement on the test database directly; returns the rows it changed.
pub(crate) async fn sql(app: &TestApp, statement: &str) -> u64 {
    use sqlx::Connection;
    match app.backend() {
        keyplane_testkit::Backend::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&app.db.url).await.unwrap();
            sqlx::query(statement)
                .execute(&mut c)
                .await
                .unwrap()
                .rows_affected()
        }
        keyplane_testkit::Backend::Postgres => {
            let mut c = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
            sqlx::query(statement)
                .execute(&mut c)
                .await
                .unwrap()
                .rows_affected()
        }
    }
}

/// Issue 11: verification starts from the last checkpoint, so verifying a large log again is
/// fast; a full verification still finds an edit from before the checkpoint; an organization's
/// caller verifies the chain its events are links of, and is told about its own events only.
async fn large_log_verifies_incrementally(app: TestApp) {
    use keyplane_core::domain::model::{NewEvent, Outcome};
    use std::time::{Duration, Instant};
    let admin = app.admin_key.clone();
    let org = app
        .post("/v1/orgs", &admin, json!({ "name": "acme" }))
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, auditor) = app
        .key(
            &admin,
            json!({ "org_id": org, "name": "auditor", "roles": ["ORG-AUDITOR"] }),
        )
        .await;

    // 50,000 events appended through the store, as the server would: one in ten is acme's.
    let store = keyplane_store::open(&app.db.url).await.unwrap();
    for batch in 0..50 {
        let events: Vec<NewEvent> = (0..1000)
            .map(|i| NewEvent {
                id: format!("evt_bulk_{batch}_{i}"),
                at: time::OffsetDateTime::now_utc(),
                org_id: Some(if i % 10 == 0 {
                    org.clone()
                } else {
                    "org_default".into()
                }),
                actor: "admin-key".into(),
                action: "bulk.test".into(),
                target: Some(format!("key_{i}")),
                outcome: Outcome::Success,
                client_addr: Some("192.0.2.1".into()),
                user_agent: None,
                details: json!({ "n": i }),
            })
            .collect();
        store.activity_append(&events).await.unwrap();
    }

    // The first verification walks the whole chain (here by the organization's caller: the
    // same chain, with its own events counted) and leaves a checkpoint.
    let first = app.get("/v1/activity/verify", &auditor).await.json();
    assert_eq!(first["intact"], true, "{first}");
    let counted = first["checked"].as_u64().unwrap();
    assert!((5000..5010).contains(&counted), "{first}");
    let head = first["verified_to"].as_i64().unwrap();
    assert!(head > 50_000, "{first}");

    // Again: only what was appended since the checkpoint the first one left.
    let started = Instant::now();
    let again = app.get("/v1/activity/verify", &admin).await.json();
    let took = started.elapsed();
    assert_eq!(again["intact"], true, "{again}");
    assert_eq!(again["full"], false, "{again}");
    assert!(
        again["started_after"].as_i64().unwrap() >= head - 1000,
        "{again}"
    );
    assert!(again["checked"].as_u64().unwrap() <= 1000, "{again}");
    assert!(
        took < Duration::from_millis(500),
        "a second verification took {took:?}"
    );
    assert_eq!(
        app.get("/v1/activity/verify?full=true", &auditor)
            .await
            .status,
        StatusCode::FORBIDDEN
    );

    // Edit an event from before the checkpoint: the incremental verification starts past it,
    // the full one (admin key, or the CLI's `keyplane activity verify`) finds it.
    assert_eq!(
        sql(
            &app,
            "UPDATE activity_events SET actor = 'mallory' WHERE seq = 100"
        )
        .await,
        1
    );
    assert_eq!(
        app.get("/v1/activity/verify", &admin).await.json()["intact"],
        true
    );
    let full = app
        .get("/v1/activity/verify?full=true", &admin)
        .await
        .json();
    assert_eq!(full["intact"], false, "{full}");
    assert_eq!(full["first_broken"]["seq"], 100, "{full}");
    assert_eq!(full["full"], true);
    let cli = app.app().verify_chain().await.unwrap();
    assert!(!cli.intact);
    assert_eq!(cli.first_broken.unwrap().seq, 100);
    sql(
        &app,
        "UPDATE activity_events SET actor = 'admin-key' WHERE seq = 100",
    )
    .await;
    assert_eq!(
        app.get("/v1/activity/verify?full=true", &admin)
            .await
            .json()["intact"],
        true
    );

    // After the checkpoint: an edit of another organization's event is reported to the
    // organization's caller without naming it; an edit of its own event is named.
    let more: Vec<NewEvent> = [None, Some(org.clone())]
        .into_iter()
        .enumerate()
        .map(|(i, o)| NewEvent {
            id: format!("evt_after_{i}"),
            at: time::OffsetDateTime::now_utc(),
            org_id: o,
            actor: "admin-key".into(),
            action: "bulk.test".into(),
            target: None,
            outcome: Outcome::Success,
            client_addr: None,
            user_agent: None,
            details: serde_json::Value::Null,
        })
        .collect();
    store.activity_append(&more).await.unwrap();
    sql(
        &app,
        "UPDATE activity_events SET action = 'edited' WHERE id = 'evt_after_0'",
    )
    .await;
    let seen = app.get("/v1/activity/verify", &auditor).await.json();
    assert_eq!(seen["intact"], false, "{seen}");
    assert_eq!(seen["first_broken"]["id"], "", "{seen}");
    let by_admin = app.get("/v1/activity/verify", &admin).await.json();
    assert_eq!(by_admin["first_broken"]["id"], "evt_after_0", "{by_admin}");
    sql(
        &app,
        "UPDATE activity_events SET action = 'bulk.test' WHERE id = 'evt_after_0'",
    )
    .await;
    sql(
        &app,
        "UPDATE activity_events SET action = 'edited' WHERE id = 'evt_after_1'",
    )
    .await;
    let seen = app.get("/v1/activity/verify", &auditor).await.json();
    assert_eq!(seen["first_broken"]["id"], "evt_after_1", "{seen}");
}
on_both!(large_log, large_log_verifies_incrementally);
