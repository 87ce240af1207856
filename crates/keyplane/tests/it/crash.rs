//! A crash in the middle of writing (docs/authorization.md, "Lifecycle": a change and its
//! activity event commit in one transaction; issue 10).
//!
//! The real binary (`keyplane serve`, as `binary.rs` runs it) takes writes from several
//! concurrent writers for about two seconds: creating keys, editing some (name and scopes),
//! revoking some. Every acknowledged (2xx) answer is remembered. Then the process is killed
//! with SIGKILL while the writers are still sending, and started again on the same database.
//! Afterwards:
//!
//! - every acknowledged key exists, with the acknowledged name, scopes and state (a write that
//!   was in flight at the kill may have landed or not, but not half: name and scopes together);
//! - its secret answers at `/v1/authz` as its state says (active: 200, revoked: 401);
//! - every acknowledged create, update and revoke has its activity event, and so does every
//!   change that is stored (an in-flight change that landed);
//! - `/v1/activity/verify` says the chain is intact.

use crate::binary::Server;
use keyplane_core::domain::secret::random_base62;
use keyplane_testkit::reqwest::{self, StatusCode};
use keyplane_testkit::{json, Backend, TestDb};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const R: &str = "svc:read";
const W: &str = "svc:write";
const WRITERS: usize = 4;
const WRITING: Duration = Duration::from_secs(2);

/// A change sent and not (yet) acknowledged.
#[derive(Clone, Debug)]
enum Pending {
    Update { name: String, scopes: Vec<String> },
    Revoke,
}

/// What the writers were told about one key.
#[derive(Clone, Debug)]
struct Acked {
    secret: String,
    name: String,
    scopes: Vec<String>,
    revoked: bool,
    updates: usize,
    pending: Option<Pending>,
}

type Ledger = Arc<Mutex<BTreeMap<String, Acked>>>;

fn lock(l: &Ledger) -> std::sync::MutexGuard<'_, BTreeMap<String, Acked>> {
    l.lock().unwrap_or_else(|e| e.into_inner())
}

/// One writer: creates, edits and revokes keys of its own until the server goes away (or
/// `stop`). Unexpected answers before the kill are returned as problems.
async fn writer(
    w: usize,
    base: String,
    admin: String,
    ledger: Ledger,
    stop: Arc<AtomicBool>,
) -> Vec<String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTP client");
    let mut problems = Vec::new();
    let mut mine: Vec<String> = Vec::new();
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let active: Vec<String> = {
            let l = lock(&ledger);
            mine.iter().filter(|id| !l[*id].revoked).cloned().collect()
        };
        let op = if active.len() < 3 { 0 } else { i % 4 };
        let (req, target, pending) = match op {
            0 | 1 => (
                http.post(format!("{base}/v1/api-keys"))
                    .json(&json!({ "name": format!("w{w}-{i}"), "scopes": [R] })),
                None,
                None,
            ),
            2 => {
                let id = active[i % active.len()].clone();
                let scopes: Vec<String> = if i % 8 < 4 {
                    vec![R.into(), W.into()]
                } else {
                    vec![R.into()]
                };
                let name = format!("w{w}-{i}-edited");
                (
                    http.patch(format!("{base}/v1/api-keys/{id}"))
                        .json(&json!({ "name": name, "scopes": scopes })),
                    Some(id),
                    Some(Pending::Update { name, scopes }),
                )
            }
            _ => {
                let id = active[0].clone();
                (
                    http.post(format!("{base}/v1/api-keys/{id}/revoke"))
                        .json(&json!({})),
                    Some(id),
                    Some(Pending::Revoke),
                )
            }
        };
        if let Some(id) = &target {
            lock(&ledger).get_mut(id).expect("mine").pending = pending.clone();
        }
        let resp = match req.bearer_auth(&admin).send().await {
            Ok(r) => r,
            // The server is gone: what was in flight stays pending.
            Err(_) => break,
        };
        let status = resp.status();
        let body: Value = match resp.text().await {
            Ok(t) => serde_json::from_str(&t).unwrap_or(Value::Null),
            Err(_) => break,
        };
        if !status.is_success() {
            if !stop.load(Ordering::Relaxed) {
                problems.push(format!("writer {w}: {status} {body}"));
            }
            break;
        }
        let mut l = lock(&ledger);
        match (target, pending) {
            (None, _) => {
                let id = body["id"].as_str().expect("id").to_string();
                mine.push(id.clone());
                l.insert(
                    id,
                    Acked {
                        secret: body["key"].as_str().expect("key").to_string(),
                        name: format!("w{w}-{i}"),
                        scopes: vec![R.into()],
                        revoked: false,
                        updates: 0,
                        pending: None,
                    },
                );
            }
            (Some(id), Some(Pending::Update { name, scopes })) => {
                let k = l.get_mut(&id).expect("mine");
                k.name = name;
                k.scopes = scopes;
                k.updates += 1;
                k.pending = None;
            }
            (Some(id), _) => {
                let k = l.get_mut(&id).expect("mine");
                k.revoked = true;
                k.pending = None;
            }
        }
    }
    problems
}

fn str_list(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

async fn crash(backend: Backend) {
    let Some(db) = TestDb::fresh(backend).await else {
        return;
    };
    let admin = format!("kpa_crash_admin_{}", random_base62(40));
    let pepper = random_base62(48);
    let env = [
        ("KEYPLANE_ADMIN_KEY", admin.as_str()),
        ("KEYPLANE_PEPPER", pepper.as_str()),
        ("KEYPLANE_MAX_ACTIVE_KEYS_PER_ORG", "0"),
    ];
    let server = Server::start(&db, &env).await;
    let a = server
        .post(
            "/v1/services",
            &admin,
            json!({ "name": "svc", "scopes": [R, W] }),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);

    let ledger: Ledger = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            tokio::spawn(writer(
                w,
                server.base.clone(),
                admin.clone(),
                ledger.clone(),
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(WRITING).await;
    // Killed while the writers are still sending.
    let before_kill = server.stderr_text();
    let status = server.kill9();
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status}");
    }
    stop.store(true, Ordering::Relaxed);
    let mut problems = Vec::new();
    for w in writers {
        match tokio::time::timeout(Duration::from_secs(20), w).await {
            Ok(Ok(p)) => problems.extend(p),
            Ok(Err(e)) => problems.push(format!("a writer panicked: {e}")),
            Err(_) => problems.push("a writer did not stop within 20 s of the kill".into()),
        }
    }
    let ledger = lock(&ledger).clone();
    let acked_updates: usize = ledger.values().map(|k| k.updates).sum();
    let acked_revokes = ledger.values().filter(|k| k.revoked).count();
    let in_flight = ledger.values().filter(|k| k.pending.is_some()).count();
    assert!(
        ledger.len() >= 20 && acked_updates >= 5 && acked_revokes >= 5,
        "too little was written before the kill to test anything: {} keys, {acked_updates} updates, {acked_revokes} revocations\n{before_kill}",
        ledger.len()
    );

    let server = Server::start(&db, &env).await;

    // The activity log, all of it, by target.
    let mut events: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/activity?limit=200&cursor={c}"),
            None => "/v1/activity?limit=200".to_string(),
        };
        let a = server.get(&path, &admin).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        let v = a.json();
        for e in v["items"].as_array().expect("items") {
            if let (Some(t), Some(action)) = (e["target"].as_str(), e["action"].as_str()) {
                events
                    .entry(t.to_string())
                    .or_default()
                    .push(action.to_string());
            }
        }
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let count = |id: &str, action: &str| {
        events
            .get(id)
            .map_or(0, |a| a.iter().filter(|x| *x == action).count())
    };

    for (id, k) in &ledger {
        let got = server.get(&format!("/v1/api-keys/{id}"), &admin).await;
        if got.status != StatusCode::OK {
            problems.push(format!(
                "acknowledged key {} ({id}) is gone after the crash: {} {}",
                k.name, got.status, got.text
            ));
            continue;
        }
        let v = got.json();
        let (name, scopes) = (
            v["name"].as_str().unwrap_or("").to_string(),
            str_list(&v["scopes"]),
        );
        let active = v["is_active"] == true;
        // What the stored key may be: the acknowledged state, or that plus the in-flight change.
        let edited_in_flight = match &k.pending {
            Some(Pending::Update { name: n, scopes: s }) => name == *n && scopes == *s,
            _ => false,
        };
        if !(edited_in_flight || name == k.name && scopes == k.scopes) {
            problems.push(format!(
                "{id}: stored {name:?} {scopes:?}, acknowledged {:?} {:?} (in flight: {:?})",
                k.name, k.scopes, k.pending
            ));
        }
        let revoked_in_flight = matches!(k.pending, Some(Pending::Revoke)) && !active;
        if active == k.revoked && !revoked_in_flight {
            problems.push(format!(
                "{id}: is_active {active} after the crash, acknowledged revoked: {}",
                k.revoked
            ));
        }
        let authz = server
            .call(
                reqwest::Method::GET,
                &format!("/v1/authz?scope={R}"),
                Some(&k.secret),
                None,
            )
            .await
            .status;
        let want = if active {
            StatusCode::OK
        } else {
            StatusCode::UNAUTHORIZED
        };
        if authz != want {
            problems.push(format!(
                "{id}: its secret answers {authz} at /v1/authz, its state says {want}"
            ));
        }
        // Every acknowledged change, and every stored one, has its event.
        if count(id, "api_key.create") != 1 {
            problems.push(format!(
                "{id}: {} api_key.create events",
                count(id, "api_key.create")
            ));
        }
        let stored_updates =
            k.updates + usize::from(edited_in_flight && !(name == k.name && scopes == k.scopes));
        if count(id, "api_key.update") < stored_updates {
            problems.push(format!(
                "{id}: {} api_key.update events for {stored_updates} stored updates ({} acknowledged)",
                count(id, "api_key.update"),
                k.updates
            ));
        }
        if !active && count(id, "api_key.revoke") != 1 {
            problems.push(format!(
                "{id}: revoked (acknowledged: {}), with {} api_key.revoke events",
                k.revoked,
                count(id, "api_key.revoke")
            ));
        }
    }
    let verify = server.get("/v1/activity/verify", &admin).await;
    if verify.status != StatusCode::OK || verify.json()["intact"] != true {
        problems.push(format!(
            "/v1/activity/verify after the crash: {} {}",
            verify.status, verify.text
        ));
    }
    drop(server);
    assert!(
        problems.is_empty(),
        "after SIGKILL on {backend:?} ({} keys, {acked_updates} updates and {acked_revokes} revocations acknowledged, {in_flight} in flight):\n  {}",
        ledger.len(),
        problems.join("\n  ")
    );
    eprintln!(
        "crash on {backend:?}: {} keys, {acked_updates} updates, {acked_revokes} revocations acknowledged, {in_flight} in flight; all there after SIGKILL",
        ledger.len()
    );
}

mod sigkill_while_writing {
    use keyplane_testkit::Backend;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::crash(Backend::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::crash(Backend::Postgres).await;
    }
}
