//! Usage analytics end to end (issue 15 §1): a known mix of requests through `/v1/authz` and
//! the gateway is counted per outcome, per credential and per service, on both backends and
//! across two nodes; `GET /v1/usage` and `/v1/usage/top` answer only what the caller may see;
//! bad filters are 400 problem+json.

use keyplane_testkit::reqwest::StatusCode;
use keyplane_testkit::{json, Backend, Options, TempDir, TestApp};
use serde_json::Value;
use std::collections::BTreeMap;

/// Rules for the gateway and `/v1/authz` by original request: `POST /v1/text/guard` needs
/// `ai-guard:read`.
const RULES: &str = r#"
[[routes]]
methods = ["POST"]
path = "/v1/text/guard"
scopes = ["ai-guard:read"]
"#;

pub async fn with_gateway(backend: Backend, dir: &TempDir, extra: Options) -> Option<TestApp> {
    let up = crate::gateway::upstream().await;
    let config = dir.path().join("keyplane.toml");
    std::fs::write(&config, "# rules are added once the service exists\n").unwrap();
    let mut opts = Options::default()
        .env("KEYPLANE_CONFIG", config.to_str().unwrap())
        .env("KEYPLANE_GATEWAY_LISTEN", "127.0.0.1:0")
        .env("KEYPLANE_UPSTREAM", &up);
    opts.env.extend(extra.env);
    let app = keyplane_testkit::spawn_app_with(backend, opts).await?;
    app.service("ai-guard", &["ai-guard:read", "ai-guard:write"])
        .await;
    std::fs::write(&config, RULES).unwrap();
    let r = app
        .post("/v1/admin/routes/reload", &app.admin_key.clone(), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    Some(app)
}

/// `POST /v1/text/guard` through the gateway.
pub async fn through_gateway(app: &TestApp, token: &str) -> keyplane_testkit::Answer {
    let gw = app.gateway_base().expect("the gateway runs");
    let resp = app
        .http
        .post(format!("{gw}/v1/text/guard"))
        .bearer_auth(token)
        .json(&json!({ "messages": [{ "role": "user", "content": "hi" }] }))
        .send()
        .await
        .unwrap();
    keyplane_testkit::Answer {
        status: resp.status(),
        headers: resp.headers().clone(),
        text: resp.text().await.unwrap(),
    }
}

/// The counts per outcome summed over every bucket of a `/v1/usage` answer.
pub fn totals(v: &Value) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for b in v["buckets"].as_array().expect("buckets") {
        for (k, n) in b["counts"].as_object().unwrap() {
            *out.entry(k.clone()).or_default() += n.as_u64().unwrap();
        }
        let sum: u64 = b["counts"]
            .as_object()
            .unwrap()
            .values()
            .map(|n| n.as_u64().unwrap())
            .sum();
        assert_eq!(
            b["total"].as_u64().unwrap(),
            sum,
            "a bucket's total is its counts' sum"
        );
    }
    out
}

pub fn map(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, n)| (k.to_string(), *n)).collect()
}

/// Runs `keyplane ARGS --url … --token ADMIN` and returns its standard output.
pub async fn cli(app: &TestApp, args: &[&str]) -> String {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_keyplane"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("KEYPLANE_") {
            c.env_remove(k);
        }
    }
    c.args(args)
        .args(["--url", &app.base, "--token", &app.admin_key])
        .kill_on_drop(true);
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), c.output())
        .await
        .expect("the CLI finishes")
        .expect("run keyplane");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub async fn usage(app: &TestApp, token: &str, query: &str) -> keyplane_testkit::Answer {
    app.get(&format!("/v1/usage?{query}"), token).await
}

async fn known_mix(backend: Backend) {
    let dir = TempDir::new();
    let Some(app) = with_gateway(backend, &dir, Options::default()).await else {
        return;
    };
    let admin = app.admin_key.clone();
    // The limit below is a fixed window of an hour: a run that crossed the top of an hour
    // would start a fresh window half-way and see the 7th request allowed. Start past it.
    let into_hour = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % 3600;
    if into_hour > 3600 - 20 {
        tokio::time::sleep(std::time::Duration::from_secs(3600 - into_hour + 1)).await;
    }
    // A key allowed 6 requests an hour: 4 through /v1/authz and 2 through the gateway pass,
    // the 7th and 8th are rate limited.
    let (good_id, good) = app
        .key(
            &admin,
            json!({ "name": "good", "scopes": ["ai-guard:read"],
                    "rate_limits": [{ "name": "hourly", "limit": 6, "window": "1h" }] }),
        )
        .await;
    let (old_id, old) = app
        .key(
            &admin,
            json!({ "name": "old", "scopes": ["ai-guard:read"] }),
        )
        .await;
    let r = app
        .post(&format!("/v1/api-keys/{old_id}/revoke"), &admin, json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let unknown = keyplane_core::domain::secret::SecretFormat::new("kp_")
        .unwrap()
        .generate()
        .expose()
        .to_string();

    for _ in 0..4 {
        assert_eq!(
            app.authz(Some(&good), Some("ai-guard:read")).await.status,
            StatusCode::OK
        );
    }
    for _ in 0..2 {
        assert_eq!(through_gateway(&app, &good).await.status, StatusCode::OK);
    }
    // Wrong scope: refused before any limit is counted.
    for _ in 0..3 {
        let a = app.authz(Some(&good), Some("ai-guard:write")).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN);
    }
    let limited = app.authz(Some(&good), Some("ai-guard:read")).await;
    assert_eq!(
        limited.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        limited.text
    );
    let limited = through_gateway(&app, &good).await;
    assert_eq!(
        limited.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        limited.text
    );
    assert_eq!(
        limited.header("ratelimit-policy"),
        Some("\"hourly\";q=6;w=3600")
    );
    for _ in 0..2 {
        assert_eq!(
            app.authz(Some(&old), Some("ai-guard:read")).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        app.authz(Some(&unknown), Some("ai-guard:read"))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    app.flush().await;

    let a = usage(&app, &admin, &format!("credential_id={good_id}")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let v = a.json();
    assert_eq!(
        totals(&v),
        map(&[
            ("allowed", 6),
            ("insufficient_scope", 3),
            ("rate_limited", 2)
        ])
    );
    // One point per minute: the default window is the last hour.
    let n = v["buckets"].as_array().unwrap().len();
    assert!((60..=61).contains(&n), "{n} buckets");
    assert_eq!(v["granularity"], "minute");

    let hours = usage(
        &app,
        &admin,
        &format!("credential_id={good_id}&granularity=hour"),
    )
    .await;
    assert_eq!(
        totals(&hours.json()),
        map(&[
            ("allowed", 6),
            ("insufficient_scope", 3),
            ("rate_limited", 2)
        ])
    );
    let old = usage(&app, &admin, &format!("credential_id={old_id}")).await;
    assert_eq!(totals(&old.json()), map(&[("revoked", 2)]));

    // By outcome, by service (the scope's service), for the organization.
    let only = usage(
        &app,
        &admin,
        &format!("credential_id={good_id}&outcome=rate_limited"),
    )
    .await;
    assert_eq!(totals(&only.json()), map(&[("rate_limited", 2)]));
    let by_service = usage(&app, &admin, "org_id=org_default&service=ai-guard").await;
    assert_eq!(
        totals(&by_service.json()),
        map(&[
            ("allowed", 6),
            ("insufficient_scope", 3),
            ("rate_limited", 2),
            ("revoked", 2)
        ])
    );
    // The deployment (the admin key without org_id) includes the unknown key.
    let all = usage(&app, &admin, "").await;
    assert_eq!(totals(&all.json())["unknown"], 1);
    let org = usage(&app, &admin, "org_id=org_default").await;
    assert!(!totals(&org.json()).contains_key("unknown"));

    let top = app.get("/v1/usage/top", &admin).await;
    assert_eq!(top.status, StatusCode::OK, "{}", top.text);
    let top = top.json();
    assert_eq!(top[0]["credential_id"], good_id.as_str());
    assert_eq!(top[0]["kind"], "api_key");
    assert_eq!(top[0]["name"], "good");
    assert_eq!(top[0]["requests"], 11);
    assert_eq!(top[0]["refusals"], 5);
    let by_refusals = app
        .get("/v1/usage/top?by=refusals&limit=1", &admin)
        .await
        .json();
    assert_eq!(by_refusals.as_array().unwrap().len(), 1);
    assert_eq!(by_refusals[0]["credential_id"], good_id.as_str());

    // The CLI reads the same numbers.
    let out = cli(&app, &["usage", "--credential-id", &good_id, "--json"]).await;
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(totals(&v)["allowed"], 6);
    let table = cli(&app, &["usage", "top"]).await;
    assert!(
        table.contains(&good_id) && table.contains("REFUSALS"),
        "{table}"
    );
}

mod known_mix {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::known_mix(keyplane_testkit::Backend::Sqlite).await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::known_mix(keyplane_testkit::Backend::Postgres).await;
    }
}

/// Another organization's credential id answers exactly like an unknown id; a member sees
/// only their own; filters that make no sense are 400 problem+json.
async fn scoping_and_bad_filters(app: TestApp) {
    let admin = app.admin_key.clone();
    app.service("ai-guard", &["ai-guard:read"]).await;
    let (mine_id, mine) = app
        .key(
            &admin,
            json!({ "name": "mine", "scopes": ["ai-guard:read"] }),
        )
        .await;
    assert_eq!(
        app.authz(Some(&mine), Some("ai-guard:read")).await.status,
        StatusCode::OK
    );
    let other_org = app
        .post("/v1/orgs", &admin, json!({ "name": "other" }))
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, other_admin) = app
        .key(
            &admin,
            json!({ "org_id": other_org, "name": "other admin", "roles": ["ORG-ADMIN"] }),
        )
        .await;
    app.flush().await;

    let theirs = usage(&app, &other_admin, &format!("credential_id={mine_id}")).await;
    let nobody = usage(&app, &other_admin, "credential_id=key_doesnotexist0").await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND);
    assert_eq!(theirs.status, nobody.status);
    let strip = |a: &keyplane_testkit::Answer| {
        let mut v = a.json();
        v.as_object_mut().unwrap().remove("instance");
        v.as_object_mut().unwrap().remove("request_id");
        v
    };
    assert_eq!(strip(&theirs), strip(&nobody));
    // Another organization's totals are not theirs to read either.
    let cross = usage(&app, &other_admin, "org_id=org_default").await;
    assert_eq!(cross.status, StatusCode::NOT_FOUND, "{}", cross.text);
    let own = usage(&app, &other_admin, "").await;
    assert_eq!(own.status, StatusCode::OK);
    assert!(totals(&own.json()).is_empty());
    // A key without a management permission reads nothing.
    let plain = usage(&app, &mine, &format!("credential_id={mine_id}")).await;
    assert_eq!(plain.status, StatusCode::NOT_FOUND, "{}", plain.text);

    // A member sees their own credential's usage, nobody else's, and not the organization's.
    let member = crate::support::admin_member(&app, "org_default", "m@example.com", "member").await;
    let (own_id, own) = app
        .key(
            &admin,
            json!({ "name": "own", "owner_member_id": member, "scopes": ["ai-guard:read"] }),
        )
        .await;
    let mine_as_member = usage(&app, &own, &format!("credential_id={own_id}")).await;
    assert_eq!(
        mine_as_member.status,
        StatusCode::OK,
        "{}",
        mine_as_member.text
    );
    let others = usage(&app, &own, &format!("credential_id={mine_id}")).await;
    assert_eq!(others.status, StatusCode::NOT_FOUND, "{}", others.text);
    assert_eq!(strip(&others), strip(&nobody));
    let whole = usage(&app, &own, "").await;
    assert_eq!(whole.status, StatusCode::FORBIDDEN, "{}", whole.text);
    let top = app.get("/v1/usage/top", &own).await;
    assert_eq!(top.status, StatusCode::FORBIDDEN, "{}", top.text);

    for (query, field) in [
        (
            "since=2030-01-02T00:00:00Z&until=2030-01-01T00:00:00Z",
            "since",
        ),
        ("since=2020-01-01T00:00:00Z", "since"),
        ("granularity=second", "granularity"),
        ("outcome=bogus", "outcome"),
        ("since=yesterday", "since"),
    ] {
        let a = usage(&app, &admin, query).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{query}: {}", a.text);
        assert_eq!(
            a.header("content-type"),
            Some("application/problem+json"),
            "{query}"
        );
        assert_eq!(a.json()["field"], field, "{query}: {}", a.text);
    }
    let a = app.get("/v1/usage/top?limit=1000", &admin).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    let a = app.get("/v1/usage?nonsense=1", &admin).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
}

on_both!(scoping_and_bad_filters_on, scoping_and_bad_filters);

/// Two nodes on one PostgreSQL: each counts its own requests; the rows add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_add_up() {
    let Some(a) = keyplane_testkit::spawn_app_with(Backend::Postgres, Options::default()).await
    else {
        return;
    };
    let b = a.spawn_second_node().await;
    let admin = a.admin_key.clone();
    a.service("ai-guard", &["ai-guard:read", "ai-guard:write"])
        .await;
    let (id, key) = a
        .key(
            &admin,
            json!({ "name": "both", "scopes": ["ai-guard:read"] }),
        )
        .await;
    for node in [&a, &b] {
        for _ in 0..5 {
            assert_eq!(
                node.authz(Some(&key), Some("ai-guard:read")).await.status,
                StatusCode::OK
            );
        }
        assert_eq!(
            node.authz(Some(&key), Some("ai-guard:write")).await.status,
            StatusCode::FORBIDDEN
        );
    }
    a.flush().await;
    b.flush().await;
    for node in [&a, &b] {
        let v = usage(node, &admin, &format!("credential_id={id}"))
            .await
            .json();
        assert_eq!(
            totals(&v),
            map(&[("allowed", 10), ("insufficient_scope", 2)])
        );
    }
    // A second flush writes nothing twice.
    a.flush().await;
    b.flush().await;
    let v = usage(&a, &admin, &format!("credential_id={id}&granularity=hour"))
        .await
        .json();
    assert_eq!(
        totals(&v),
        map(&[("allowed", 10), ("insufficient_scope", 2)])
    );
}
