//! Signed webhooks and notices (issue 16), end to end: a real receiver on 127.0.0.1
//! (`interop-tests/webhook_receiver.py`) verifies every delivery with the `standardwebhooks`
//! package from PyPI — an implementation independent of keyplane's — and records it.
//!
//! - every credential event an endpoint subscribes to is delivered once, signed, within about
//!   a second, and nothing it did not subscribe to; the delivery log shows it; redelivery sends
//!   the same `webhook-id` again;
//! - a receiver that is down gets the same message again on the retry schedule until it is back;
//!   an endpoint that fails for longer than configured is disabled with a `webhook.disable` event;
//! - events pending when the real binary is killed with SIGKILL are delivered after a restart;
//! - two nodes on one PostgreSQL database deliver each event exactly once;
//! - a redirect is a failed attempt (never followed), and internal or plain-http targets are
//!   refused at creation;
//! - a rotated secret overlaps: both signatures are sent and each verifies;
//! - another organization's webhook answers like an unknown one;
//! - `api_key.expiring` notices fire once per key and threshold.

use crate::binary::Server;
use keyplane_core::domain::secret::random_base62;
use keyplane_testkit::reqwest::{self, Method, StatusCode};
use keyplane_testkit::{json, spawn_app_with, Backend, Options, TestApp, TestDb};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The receiver: a Python process with `standardwebhooks`, controlled over HTTP.
struct Receiver {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python() -> Option<PathBuf> {
    let venv = std::env::var_os("KEYPLANE_WEBHOOKS_VENV")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/keyplane-py-webhooks"))
        })?;
    let python = venv.join("bin/python");
    let ok = Command::new(&python)
        .args(["-c", "import standardwebhooks.webhooks"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(python)
}

impl Receiver {
    /// Starts a receiver, or `None` (with a note) when `standardwebhooks` is not installed.
    fn start() -> Option<Receiver> {
        let Some(python) = python() else {
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED webhooks: the standardwebhooks virtual environment is missing; run `bash scripts/ensure-webhooks.sh`"
            );
            return None;
        };
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../interop-tests/webhook_receiver.py");
        let mut child = Command::new(python)
            .arg(script)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the webhook receiver");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the receiver's port");
        let port: u16 = line.trim().parse().expect("a port number");
        Some(Receiver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn set(&self, secrets: &[&str], status: u16, location: Option<&str>) {
        let r = self
            .http
            .post(self.url("/_control"))
            .json(&json!({ "secrets": secrets, "status": status, "location": location }))
            .send()
            .await
            .expect("control the receiver");
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }

    async fn received(&self) -> Vec<Value> {
        self.http
            .get(self.url("/_control"))
            .send()
            .await
            .expect("ask the receiver")
            .json()
            .await
            .expect("JSON")
    }

    /// Waits (bounded) until `done` holds for what was received; returns it.
    async fn wait(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let got = self.received().await;
            if done(&got) {
                return got;
            }
            if Instant::now() > deadline {
                panic!("{what}: not within {limit:?}; received:\n{got:#?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Deliveries that verified with secret `i`, by `webhook-id`.
fn verified_by(got: &[Value], i: u64) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for r in got {
        let ok = r["verified_with"]
            .as_array()
            .is_some_and(|v| v.iter().any(|x| x.as_u64() == Some(i)));
        if ok
            && r["answered"]
                .as_u64()
                .is_some_and(|s| (200..300).contains(&s))
        {
            out.entry(r["id"].as_str().unwrap().to_string())
                .or_default()
                .push(r.clone());
        }
    }
    out
}

fn body(r: &Value) -> Value {
    serde_json::from_str(r["body"].as_str().unwrap()).expect("a JSON body")
}

const FAST: [(&str, &str); 3] = [
    ("KEYPLANE_WEBHOOKS_ALLOW_LOOPBACK", "true"),
    (
        "KEYPLANE_WEBHOOKS_RETRY_SCHEDULE_SECONDS",
        "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1",
    ),
    ("KEYPLANE_WEBHOOKS_POLL_INTERVAL_MS", "100"),
];

fn fast() -> Options {
    FAST.iter()
        .fold(Options::default(), |o, (k, v)| o.env(k, v))
}

/// Registers an endpoint as the admin key; its id and secret.
async fn endpoint(app: &TestApp, url: &str, events: Value) -> (String, String) {
    let a = app
        .post(
            "/v1/webhooks",
            &app.admin_key,
            json!({ "url": url, "events": events }),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(a.header("cache-control"), Some("no-store"));
    let v = a.json();
    let secret = v["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"), "{secret}");
    (v["id"].as_str().unwrap().to_string(), secret)
}

async fn every_event_once(app: TestApp) {
    let Some(rx) = Receiver::start() else { return };
    let (id, secret) = endpoint(
        &app,
        &rx.url("/hooks"),
        json!(["api_key.*", "oauth_client.create"]),
    )
    .await;
    rx.set(&[&secret], 204, None).await;
    // The secret is never shown again.
    let one = app.get(&format!("/v1/webhooks/{id}"), &app.admin_key).await;
    assert_eq!(one.status, StatusCode::OK, "{}", one.text);
    assert!(!one.text.contains(&secret) && one.json()["secret"].is_null());

    let (key_id, key) = app.key(&app.admin_key, json!({ "name": "hooked" })).await;
    let a = app
        .call(
            Method::PATCH,
            &format!("/v1/api-keys/{key_id}"),
            Some(&app.admin_key),
            Some(json!({ "name": "renamed" })),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    // Not subscribed to: never sent.
    let a = app
        .post(
            "/v1/projects",
            &app.admin_key,
            json!({ "name": "elsewhere" }),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let a = app
        .post(
            "/v1/oauth-clients",
            &app.admin_key,
            json!({ "name": "hooked-client", "scopes": [] }),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let revoked_at = Instant::now();
    let a = app
        .post(
            &format!("/v1/api-keys/{key_id}/revoke"),
            &app.admin_key,
            json!({}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    rx.wait("the revocation's delivery", Duration::from_secs(10), |g| {
        g.iter().any(|r| r["type"] == "api_key.revoke")
    })
    .await;
    let latency = revoked_at.elapsed();
    assert!(
        latency < Duration::from_millis(1500),
        "delivered {latency:?} after the revocation"
    );

    // Let any duplicate arrive, then count.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let got = rx.received().await;
    assert!(
        got.iter()
            .all(|r| !r["verified_with"].as_array().unwrap().is_empty()),
        "every delivery verifies with the endpoint's secret: {got:#?}"
    );
    let by_id = verified_by(&got, 0);
    let mut types: Vec<String> = by_id
        .values()
        .map(|v| {
            assert_eq!(v.len(), 1, "each message once: {v:#?}");
            v[0]["type"].as_str().unwrap().to_string()
        })
        .collect();
    types.sort();
    assert_eq!(
        types,
        [
            "api_key.create",
            "api_key.revoke",
            "api_key.update",
            "oauth_client.create"
        ],
        "{got:#?}"
    );
    for r in &got {
        let b = body(r);
        assert!(
            !r["body"].as_str().unwrap().contains(&key),
            "no secret in a payload"
        );
        assert_eq!(b["type"], b["data"]["type"]);
        assert_eq!(b["data"]["org_id"], "org_default");
        assert!(
            b["timestamp"].is_string() && b["data"]["id"].as_str().unwrap().starts_with("evt_")
        );
        if b["type"] == "api_key.revoke" {
            assert_eq!(b["data"]["target"], key_id.as_str());
        }
    }

    // The delivery log.
    let log = app
        .get(&format!("/v1/webhooks/{id}/deliveries"), &app.admin_key)
        .await;
    assert_eq!(log.status, StatusCode::OK, "{}", log.text);
    let items = log.json()["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 4, "{items:#?}");
    for d in &items {
        assert_eq!(d["state"], "delivered", "{d}");
        assert_eq!(d["attempts"][0]["status"], 204, "{d}");
        assert!(d["attempts"][0]["duration_ms"].is_i64());
    }
    // Redelivery sends the same message (the same webhook-id) again.
    let first = items[0]["id"].as_str().unwrap().to_string();
    let a = app
        .post(
            &format!("/v1/webhooks/{id}/deliveries/{first}/redeliver"),
            &app.admin_key,
            json!({}),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    rx.wait("the redelivery", Duration::from_secs(10), |g| {
        verified_by(g, 0).get(&first).is_some_and(|v| v.len() == 2)
    })
    .await;
    let a = app
        .post(
            &format!("/v1/webhooks/{id}/deliveries/msg_unknown_whk_x/redeliver"),
            &app.admin_key,
            json!({}),
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);
}
on_both!(
    every_credential_event_is_delivered_once,
    every_event_once,
    super::fast()
);

async fn retries(app: TestApp) {
    let Some(rx) = Receiver::start() else { return };
    let (id, secret) = endpoint(&app, &rx.url("/down"), json!(["api_key.create"])).await;
    rx.set(&[&secret], 503, None).await;
    app.key(&app.admin_key, json!({ "name": "while-down" }))
        .await;
    rx.wait("two refused attempts", Duration::from_secs(15), |g| {
        g.iter().filter(|r| r["answered"] == 503).count() >= 2
    })
    .await;
    rx.set(&[&secret], 200, None).await;
    let got = rx
        .wait(
            "the delivery once the receiver is back",
            Duration::from_secs(15),
            |g| !verified_by(g, 0).is_empty(),
        )
        .await;
    let ids: std::collections::BTreeSet<_> =
        got.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids.len(),
        1,
        "every attempt carries the same webhook-id: {got:#?}"
    );
    let log = app
        .get(&format!("/v1/webhooks/{id}/deliveries"), &app.admin_key)
        .await
        .json();
    let d = &log["items"][0];
    assert_eq!(d["state"], "delivered", "{d}");
    let statuses: Vec<i64> = d["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_i64().unwrap())
        .collect();
    assert_eq!(statuses[0], 200, "{d}");
    assert!(
        statuses[1..].iter().all(|s| *s == 503) && statuses.len() >= 3,
        "{d}"
    );
    assert_eq!(d["attempts"][1]["error"], "answered 503", "{d}");
}
on_both!(
    a_receiver_that_is_down_gets_it_later,
    retries,
    super::fast()
);

async fn disabled(app: TestApp) {
    let Some(rx) = Receiver::start() else { return };
    let (id, secret) = endpoint(&app, &rx.url("/broken"), json!(["api_key.create"])).await;
    rx.set(&[&secret], 500, None).await;
    app.key(&app.admin_key, json!({ "name": "never-delivered" }))
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = app
            .get(&format!("/v1/webhooks/{id}"), &app.admin_key)
            .await
            .json();
        if v["enabled"] == false {
            assert!(v["disabled_reason"].is_string(), "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "not disabled: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = app
        .get("/v1/activity?action=webhook.disable", &app.admin_key)
        .await
        .json();
    let items = events["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{events}");
    assert_eq!(items[0]["target"], id.as_str());
    // Nothing more is sent to a disabled endpoint.
    let before = rx.received().await.len();
    app.key(&app.admin_key, json!({ "name": "after-disable" }))
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rx.received().await.len(), before);
    // Enabled again, it is sent new events.
    rx.set(&[&secret], 204, None).await;
    let a = app
        .call(
            Method::PATCH,
            &format!("/v1/webhooks/{id}"),
            Some(&app.admin_key),
            Some(json!({ "enabled": true })),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    app.key(&app.admin_key, json!({ "name": "after-enable" }))
        .await;
    rx.wait("a delivery after enabling", Duration::from_secs(10), |g| {
        !verified_by(g, 0).is_empty()
    })
    .await;
}
on_both!(
    sustained_failure_disables_the_endpoint,
    disabled,
    super::fast().env("KEYPLANE_WEBHOOKS_DISABLE_AFTER_SECONDS", "2")
);

async fn refused_targets(app: TestApp) {
    let Some(rx) = Receiver::start() else { return };
    for url in [
        "http://hooks.example.com/in",
        "https://10.0.0.1/in",
        "https://192.168.1.20/in",
        "https://169.254.169.254/latest/meta-data",
        "https://[fd00::1]/in",
        "https://user:pw@hooks.example.com/in",
        "ftp://hooks.example.com/in",
    ] {
        let a = app
            .post(
                "/v1/webhooks",
                &app.admin_key,
                json!({ "url": url, "events": ["*"] }),
            )
            .await;
        assert_eq!(
            a.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{url}: {}",
            a.text
        );
    }
    // Unknown event names are refused; an area wildcard is fine.
    let a = app
        .post(
            "/v1/webhooks",
            &app.admin_key,
            json!({ "url": rx.url("/x"), "events": ["api_key.frobnicate"] }),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);

    // A redirect is a failed attempt: the Location is never visited.
    let (id, secret) = endpoint(&app, &rx.url("/redirecting"), json!(["api_key.*"])).await;
    rx.set(&[&secret], 302, Some(&rx.url("/elsewhere"))).await;
    app.key(&app.admin_key, json!({ "name": "redirected" }))
        .await;
    rx.wait("two redirected attempts", Duration::from_secs(15), |g| {
        g.iter().filter(|r| r["answered"] == 302).count() >= 2
    })
    .await;
    let got = rx.received().await;
    assert!(
        got.iter().all(|r| r["path"] == "/redirecting"),
        "a redirect was followed: {got:#?}"
    );
    let log = app
        .get(&format!("/v1/webhooks/{id}/deliveries"), &app.admin_key)
        .await
        .json();
    let d = &log["items"][0];
    assert_eq!(d["state"], "pending", "{d}");
    assert_eq!(d["last_status"], 302, "{d}");
    assert_eq!(d["last_error"], "redirects are not followed", "{d}");
}
on_both!(
    redirects_and_internal_targets_are_refused,
    refused_targets,
    super::fast()
);

/// Without `webhooks.allow_loopback`, even 127.0.0.1 is refused.
async fn no_loopback(app: TestApp) {
    let a = app
        .post(
            "/v1/webhooks",
            &app.admin_key,
            json!({ "url": "http://127.0.0.1:9/in", "events": ["*"] }),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);
    let a = app
        .post(
            "/v1/webhooks",
            &app.admin_key,
            json!({ "url": "https://127.0.0.1:9/in", "events": ["*"] }),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);
}
on_both!(loopback_needs_configuration, no_loopback);

async fn rotation(app: TestApp) {
    let Some(rx) = Receiver::start() else { return };
    let (id, old) = endpoint(&app, &rx.url("/rotating"), json!(["api_key.create"])).await;
    let a = app
        .post(
            &format!("/v1/webhooks/{id}/rotate-secret"),
            &app.admin_key,
            json!({}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.header("cache-control"), Some("no-store"));
    let v = a.json();
    let new = v["secret"].as_str().unwrap().to_string();
    assert!(new.starts_with("whsec_") && new != old);
    assert!(v["previous_secret_until"].is_string(), "{v}");
    rx.set(&[&old, &new], 204, None).await;
    app.key(&app.admin_key, json!({ "name": "during-overlap" }))
        .await;
    let got = rx
        .wait("the delivery", Duration::from_secs(10), |g| !g.is_empty())
        .await;
    assert_eq!(
        got[0]["verified_with"],
        json!([0, 1]),
        "both secrets verify: {got:#?}"
    );
    assert_eq!(
        got[0]["signature"].as_str().unwrap().split(' ').count(),
        2,
        "two signatures during the overlap"
    );
}
on_both!(a_rotated_secret_overlaps, rotation, super::fast());

/// Without an overlap, only the new secret signs.
async fn rotation_without_overlap(app: TestApp) {
    let Some(rx) = Receiver::start() else { return };
    let (id, old) = endpoint(&app, &rx.url("/rotating"), json!(["api_key.create"])).await;
    let new = app
        .post(
            &format!("/v1/webhooks/{id}/rotate-secret"),
            &app.admin_key,
            json!({}),
        )
        .await
        .json()["secret"]
        .as_str()
        .unwrap()
        .to_string();
    rx.set(&[&old, &new], 204, None).await;
    app.key(&app.admin_key, json!({ "name": "after-overlap" }))
        .await;
    let got = rx
        .wait("the delivery", Duration::from_secs(10), |g| !g.is_empty())
        .await;
    assert_eq!(got[0]["verified_with"], json!([1]), "{got:#?}");
}
on_both!(
    an_expired_overlap_signs_with_the_new_secret_only,
    rotation_without_overlap,
    super::fast().env("KEYPLANE_WEBHOOKS_SECRET_OVERLAP_SECONDS", "0")
);

async fn other_org(app: TestApp) {
    let admin = app.admin_key.clone();
    let b = app
        .post("/v1/orgs", &admin, json!({ "name": "beta" }))
        .await;
    assert_eq!(b.status, StatusCode::CREATED, "{}", b.text);
    let beta = b.json()["id"].as_str().unwrap().to_string();
    let a = app
        .post(
            "/v1/webhooks",
            &admin,
            json!({ "url": "https://hooks.example.com/beta", "events": ["*"], "org_id": beta }),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let theirs = a.json()["id"].as_str().unwrap().to_string();
    let (_, org_admin) = app.key(&admin, json!({ "roles": ["ORG-ADMIN"] })).await;
    let (_, auditor) = app.key(&admin, json!({ "roles": ["ORG-AUDITOR"] })).await;
    let unknown = "whk_00000000000000000000";
    for (method, path, body) in [
        (Method::GET, "", None),
        (Method::PATCH, "", Some(json!({ "enabled": false }))),
        (Method::DELETE, "", None),
        (Method::POST, "/rotate-secret", None),
        (Method::GET, "/deliveries", None),
        (Method::POST, "/deliveries/msg_x/redeliver", None),
    ] {
        let mine = app
            .call(
                method.clone(),
                &format!("/v1/webhooks/{theirs}{path}"),
                Some(&org_admin),
                body.clone(),
            )
            .await;
        let none = app
            .call(
                method.clone(),
                &format!("/v1/webhooks/{unknown}{path}"),
                Some(&org_admin),
                body,
            )
            .await;
        assert_eq!(
            mine.status,
            StatusCode::NOT_FOUND,
            "{method} {path}: {}",
            mine.text
        );
        assert_eq!(mine.text, none.text, "{method} {path}: like an unknown id");
    }
    let list = app.get("/v1/webhooks", &org_admin).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    assert!(list.json()["items"].as_array().unwrap().is_empty());
    let list = app
        .get(&format!("/v1/webhooks?org_id={beta}"), &org_admin)
        .await;
    assert_eq!(list.status, StatusCode::NOT_FOUND, "{}", list.text);
    // Reading the activity log is not managing webhooks.
    let a = app.get("/v1/webhooks", &auditor).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text);
    // The endpoint is still there for its own organization.
    let a = app.get(&format!("/v1/webhooks/{theirs}"), &admin).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json()["enabled"], true);
}
on_both!(another_orgs_webhook_is_unknown, other_org);

async fn notices(app: TestApp) {
    let Some(rx) = Receiver::start() else { return };
    let (_, secret) = endpoint(&app, &rx.url("/notices"), json!(["api_key.expiring"])).await;
    rx.set(&[&secret], 204, None).await;
    let at = |d: time::Duration| {
        (time::OffsetDateTime::now_utc() + d)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let (in_3_days, _) = app
        .key(
            &app.admin_key,
            json!({ "name": "three-days", "expires_at": at(time::Duration::days(3)) }),
        )
        .await;
    let (in_12_hours, _) = app
        .key(
            &app.admin_key,
            json!({ "name": "half-day", "expires_at": at(time::Duration::hours(12)) }),
        )
        .await;
    app.key(
        &app.admin_key,
        json!({ "name": "month", "expires_at": at(time::Duration::days(30)) }),
    )
    .await;
    // The maintenance task runs this once a minute on every node; here, three times at once.
    let (a, b, c) = tokio::join!(
        app.app().record_notices(),
        app.app().record_notices(),
        app.app().record_notices()
    );
    assert_eq!(
        a.unwrap() + b.unwrap() + c.unwrap(),
        2,
        "one notice per key and threshold"
    );
    assert_eq!(app.app().record_notices().await.unwrap(), 0);
    rx.wait("two notices", Duration::from_secs(10), |g| {
        verified_by(g, 0).len() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = verified_by(&rx.received().await, 0);
    assert_eq!(got.len(), 2, "{got:#?}");
    let mut seen: Vec<(String, i64)> = got
        .values()
        .map(|v| {
            let b = body(&v[0]);
            assert_eq!(b["type"], "api_key.expiring");
            (
                b["data"]["target"].as_str().unwrap().to_string(),
                b["data"]["details"]["threshold_days"].as_i64().unwrap(),
            )
        })
        .collect();
    seen.sort();
    let mut want = vec![(in_3_days, 7), (in_12_hours, 1)];
    want.sort();
    assert_eq!(seen, want);
}
on_both!(notices_fire_once_per_threshold, notices, super::fast());

/// Two nodes on one PostgreSQL database: each event is delivered exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_deliver_each_event_once() {
    let Some(first) = spawn_app_with(Backend::Postgres, fast()).await else {
        return;
    };
    let Some(rx) = Receiver::start() else { return };
    let second = first.spawn_second_node().await;
    let (_, secret) = endpoint(&first, &rx.url("/two"), json!(["api_key.create"])).await;
    rx.set(&[&secret], 204, None).await;
    const N: usize = 30;
    for i in 0..N {
        let node = if i % 2 == 0 { &first } else { &second };
        node.key(&node.admin_key, json!({ "name": format!("k{i}") }))
            .await;
    }
    rx.wait("every event", Duration::from_secs(20), |g| {
        verified_by(g, 0).len() >= N
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = rx.received().await;
    let by_id = verified_by(&got, 0);
    assert_eq!(by_id.len(), N);
    assert_eq!(got.len(), N, "no message twice: {got:#?}");
}

/// Events pending when the real binary is killed are delivered after it starts again.
async fn crash(backend: Backend) {
    let Some(db) = TestDb::fresh(backend).await else {
        return;
    };
    let Some(rx) = Receiver::start() else { return };
    let admin = format!("kpa_webhooks_admin_{}", random_base62(40));
    let pepper = random_base62(48);
    let mut env = vec![
        ("KEYPLANE_ADMIN_KEY", admin.as_str()),
        ("KEYPLANE_PEPPER", pepper.as_str()),
    ];
    env.extend(FAST);
    let server = Server::start(&db, &env).await;
    let a = server
        .post(
            "/v1/webhooks",
            &admin,
            json!({ "url": rx.url("/crash"), "events": ["api_key.create"] }),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let secret = a.json()["secret"].as_str().unwrap().to_string();
    rx.set(&[&secret], 503, None).await;
    let mut keys = Vec::new();
    for i in 0..5 {
        let a = server
            .post(
                "/v1/api-keys",
                &admin,
                json!({ "name": format!("pending-{i}") }),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
        keys.push(a.json()["id"].as_str().unwrap().to_string());
    }
    rx.wait("refused attempts", Duration::from_secs(10), |g| {
        g.len() >= 5
    })
    .await;
    let status = server.kill9();
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status}");
    }
    rx.set(&[&secret], 204, None).await;
    let _server = Server::start(&db, &env).await;
    // A delivery cut off mid-attempt by the kill waits for its lease (30 s) to end.
    let got = rx
        .wait(
            "every pending event after the restart",
            Duration::from_secs(60),
            |g| verified_by(g, 0).len() >= 5,
        )
        .await;
    let mut targets: Vec<String> = verified_by(&got, 0)
        .values()
        .map(|v| body(&v[0])["data"]["target"].as_str().unwrap().to_string())
        .collect();
    targets.sort();
    keys.sort();
    assert_eq!(targets, keys);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_deliveries_survive_a_kill_sqlite() {
    crash(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_deliveries_survive_a_kill_postgres() {
    crash(Backend::Postgres).await;
}

/// `keyplane webhooks ...` drives the same routes: create (the secret printed once), list,
/// update, rotate, deliveries, delete.
async fn cli(app: TestApp) {
    let Some(rx) = Receiver::start() else { return };
    let cli = crate::cli::Cli::admin(&app);
    let url = rx.url("/cli");
    let made = cli
        .json(&[
            "webhooks",
            "create",
            &url,
            "--event",
            "api_key.create",
            "--description",
            "from the CLI",
        ])
        .await;
    let id = made["id"].as_str().unwrap().to_string();
    let secret = made["secret"].as_str().unwrap().to_string();
    rx.set(&[&secret], 204, None).await;
    let list = cli.json(&["webhooks", "list"]).await;
    assert_eq!(list["items"][0]["id"], id.as_str());
    let updated = cli
        .json(&[
            "webhooks",
            "update",
            &id,
            "--event",
            "api_key.*",
            "--disable",
        ])
        .await;
    assert_eq!(updated["events"], json!(["api_key.*"]));
    assert_eq!(updated["enabled"], false);
    cli.json(&["webhooks", "update", &id, "--enable"]).await;
    let rotated = cli.json(&["webhooks", "rotate-secret", &id]).await;
    let new = rotated["secret"].as_str().unwrap().to_string();
    rx.set(&[&new], 204, None).await;
    app.key(&app.admin_key, json!({ "name": "via-cli" })).await;
    rx.wait("the delivery", Duration::from_secs(10), |g| {
        !verified_by(g, 0).is_empty()
    })
    .await;
    let log = cli.json(&["webhooks", "deliveries", &id]).await;
    assert_eq!(log["items"][0]["state"], "delivered", "{log}");
    let delivery = log["items"][0]["id"].as_str().unwrap().to_string();
    let out = cli.ok(&["webhooks", "redeliver", &id, &delivery]).await;
    assert!(out.contains("queued again"), "{out}");
    rx.wait("the redelivery", Duration::from_secs(10), |g| {
        verified_by(g, 0)
            .get(&delivery)
            .is_some_and(|v| v.len() == 2)
    })
    .await;
    let out = cli.ok(&["webhooks", "delete", &id]).await;
    assert!(out.contains("deleted webhook"), "{out}");
    let a = app.get(&format!("/v1/webhooks/{id}"), &app.admin_key).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
}
on_both!(the_cli_manages_webhooks, cli, super::fast());

/// The console's Webhooks page lists, creates (the secret shown once), disables and deletes
/// endpoints through the same use cases, and shows an endpoint's deliveries.
async fn console(app: TestApp) {
    use crate::console::{csrf_of, Console};
    let Some(rx) = Receiver::start() else { return };
    let mut c = Console::new(&app);
    let (_, page, _) = c.get("/console/sign-in").await;
    let pre = csrf_of(&page);
    let (status, _, _) = c
        .post(
            "/console/sign-in",
            &[
                ("csrf", &pre),
                ("method", "admin"),
                ("admin_key", &app.admin_key),
            ],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "admin sign-in");
    let (status, page, _) = c.get("/console/webhooks").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("id=\"webhooks-empty\""), "{page}");
    assert!(page.contains("href=\"/console/webhooks\" aria-current=\"page\""));
    let csrf = csrf_of(&page);
    let url = rx.url("/console");
    let (status, answer, _) = c
        .post(
            "/console/webhooks",
            &[
                ("csrf", &csrf),
                ("url", &url),
                ("events", "api_key.create api_key.revoke"),
            ],
            Some(&csrf),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    let secret = answer["secret"]["items"][1]["value"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(secret.starts_with("whsec_"), "{answer}");
    rx.set(&[&secret], 204, None).await;
    let list = app.get("/v1/webhooks", &app.admin_key).await.json();
    let id = list["items"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(
        list["items"][0]["events"],
        json!(["api_key.create", "api_key.revoke"])
    );

    app.key(&app.admin_key, json!({ "name": "console-made" }))
        .await;
    rx.wait("the delivery", Duration::from_secs(10), |g| {
        !verified_by(g, 0).is_empty()
    })
    .await;
    let (_, page, _) = c.get(&format!("/console/webhooks?selected={id}")).await;
    assert!(page.contains(&url) && !page.contains(&secret), "{page}");
    assert!(
        page.contains("id=\"deliveries-table\"") && page.contains("api_key.create"),
        "{page}"
    );

    let (status, _, _) = c
        .post(
            &format!("/console/webhooks/{id}/enabled"),
            &[("csrf", &csrf), ("enabled", "false")],
            Some(&csrf),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let one = app
        .get(&format!("/v1/webhooks/{id}"), &app.admin_key)
        .await
        .json();
    assert_eq!(one["enabled"], false);
    let (status, _, _) = c
        .post(
            &format!("/console/webhooks/{id}/delete"),
            &[("csrf", &csrf)],
            Some(&csrf),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let a = app.get(&format!("/v1/webhooks/{id}"), &app.admin_key).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
}
on_both!(the_console_manages_webhooks, console, super::fast());

/// A change made through the API is delivered at once, not at the worker's next look (here
/// once a minute): on SQLite the API wakes this node's worker, on PostgreSQL the change feed
/// wakes every node's.
async fn prompt(app: TestApp) {
    let Some(rx) = Receiver::start() else { return };
    let (_, secret) = endpoint(&app, &rx.url("/prompt"), json!(["api_key.create"])).await;
    rx.set(&[&secret], 204, None).await;
    for i in 0..3 {
        let started = Instant::now();
        app.key(&app.admin_key, json!({ "name": format!("prompt-{i}") }))
            .await;
        rx.wait("the delivery", Duration::from_secs(10), |g| {
            verified_by(g, 0).len() > i
        })
        .await;
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(1000),
            "delivered after {took:?}"
        );
    }
}
on_both!(
    deliveries_leave_at_once,
    prompt,
    super::fast().env("KEYPLANE_WEBHOOKS_POLL_INTERVAL_MS", "60000")
);

/// A host name is checked when it is resolved, at every attempt: one that resolves to an
/// internal address (here the machine's own name, on loopback) is never connected to.
async fn resolved_inside(app: TestApp) {
    let Some(rx) = Receiver::start() else { return };
    let name = std::fs::read_to_string("/etc/hostname")
        .unwrap_or_default()
        .trim()
        .to_string();
    let port = rx.base.rsplit(':').next().unwrap().to_string();
    let inside = !name.is_empty()
        && tokio::net::lookup_host((name.as_str(), 0))
            .await
            .is_ok_and(|mut a| a.all(|a| a.ip().is_loopback()));
    if !inside {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED webhooks::resolved_inside: this machine's name does not resolve to loopback"
        );
        return;
    }
    let (id, secret) = endpoint(
        &app,
        &format!("https://{name}:{port}/inside"),
        json!(["api_key.create"]),
    )
    .await;
    rx.set(&[&secret], 204, None).await;
    app.key(&app.admin_key, json!({ "name": "never-sent" }))
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = app
            .get(&format!("/v1/webhooks/{id}/deliveries"), &app.admin_key)
            .await
            .json();
        let err = log["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["event_type"] == "api_key.create")
            .and_then(|d| d["last_error"].as_str().map(str::to_string));
        if let Some(err) = err {
            assert!(err.contains("resolves to no public address"), "{err}");
            break;
        }
        assert!(Instant::now() < deadline, "no attempt: {log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        rx.received().await.is_empty(),
        "nothing reached the receiver"
    );
}
on_both!(
    a_name_resolving_inside_is_refused_at_delivery,
    resolved_inside,
    keyplane_testkit::Options::default().env("KEYPLANE_WEBHOOKS_POLL_INTERVAL_MS", "100")
);
