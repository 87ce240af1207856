//! Leaked-credential reports (issue 16 part 3), as GitHub's secret scanning, an authenticated
//! caller and a passer-by make them: reports signed with the test's own ECDSA P-256 key (ring)
//! from a configured key file or from a key list served by a real HTTP server on 127.0.0.1
//! (rotated: an unknown identifier makes keyplane fetch again, at most once per interval); a
//! signed report revokes a live key and a client secret within a second (also on a second node
//! sharing PostgreSQL); bad signatures, replays, unknown and malformed tokens change and record
//! nothing; the notify policy only records; `POST /v1/leaks` revokes whoever's key it is but
//! names it only to a caller who may see it; the public form answers byte-for-byte the same
//! for any token and throttles floods; the published patterns match every minted secret.

use base64::Engine;
use keyplane_core::domain::secret::SecretFormat;
use keyplane_testkit::reqwest::StatusCode;
use keyplane_testkit::{json, spawn_app_with, Answer, Backend, Options, TempDir, TestApp};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Declares `mod $name { fn sqlite(); fn postgres(); }` running `$body(Backend)`: the bodies
/// start their own servers (their configuration names keys the test makes first).
macro_rules! both {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$body(keyplane_testkit::Backend::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$body(keyplane_testkit::Backend::Postgres).await;
            }
        }
    };
}

// ----- the reporter's side: a P-256 key, its PEM, signatures -----

/// The DER SubjectPublicKeyInfo header of a P-256 public key (RFC 5480), before its point.
const SPKI_P256: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

struct Signer {
    id: String,
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl Signer {
    fn new(id: &str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        Signer {
            id: id.into(),
            pair,
            rng,
        }
    }

    fn pem(&self) -> String {
        let mut der = SPKI_P256.to_vec();
        der.extend_from_slice(self.pair.public_key().as_ref());
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            lines.join("\n")
        )
    }

    /// Base64 of the DER ECDSA P-256 SHA-256 signature of `body`.
    fn sign(&self, body: &[u8]) -> String {
        let sig = self.pair.sign(&self.rng, body).unwrap();
        base64::engine::general_purpose::STANDARD.encode(sig.as_ref())
    }
}

/// GitHub's key list format.
fn key_list(signers: &[&Signer]) -> Value {
    json!({"public_keys": signers.iter().enumerate().map(|(i, s)| json!({
        "key_identifier": s.id, "key": s.pem(), "is_current": i == 0
    })).collect::<Vec<_>>()})
}

/// A report of `tokens` as GitHub sends it.
fn report_body(tokens: &[&str]) -> String {
    json!(tokens
        .iter()
        .map(|t| json!({"token": t, "type": "keyplane_api_key", "url": "https://github.com/octo/repo/blob/abc/config.env", "source": "content"}))
        .collect::<Vec<_>>())
    .to_string()
}

/// POSTs `body` to the GitHub endpoint with the given headers.
async fn send(app: &TestApp, body: &str, key_id: Option<&str>, sig: Option<&str>) -> Answer {
    let mut r = app
        .http
        .post(format!("{}/v1/leaks/github", app.base))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(k) = key_id {
        r = r.header("Github-Public-Key-Identifier", k);
    }
    if let Some(s) = sig {
        r = r.header("Github-Public-Key-Signature", s);
    }
    let resp = r.send().await.expect("report");
    Answer {
        status: resp.status(),
        headers: resp.headers().clone(),
        text: resp.text().await.unwrap(),
    }
}

/// A report signed by `signer`.
async fn signed(app: &TestApp, signer: &Signer, body: &str) -> Answer {
    send(
        app,
        body,
        Some(&signer.id),
        Some(&signer.sign(body.as_bytes())),
    )
    .await
}

fn sha256_hex(t: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, t.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A server whose configuration trusts `signer` through a key file (and fetches nothing).
async fn with_key_file(
    backend: Backend,
    signer: &Signer,
    extra: &[(&str, &str)],
) -> Option<(TestApp, TempDir)> {
    let dir = TempDir::new();
    let path = dir.path().join("github-keys.json");
    std::fs::write(&path, key_list(&[signer]).to_string()).unwrap();
    let mut opts = Options::default()
        .env(
            "KEYPLANE_LEAKS_GITHUB_PUBLIC_KEYS_FILE",
            path.to_str().unwrap(),
        )
        .env("KEYPLANE_LEAKS_GITHUB_KEYS_URL", "");
    for (k, v) in extra {
        opts = opts.env(k, v);
    }
    let app = spawn_app_with(backend, opts).await?;
    Some((app, dir))
}

/// `credential.leaked` events, newest first.
async fn leak_events(app: &TestApp) -> Vec<Value> {
    let a = app
        .get("/v1/activity?action=credential.leaked", &app.admin_key)
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    a.json()["items"].as_array().unwrap().clone()
}

/// How many events the log holds (all of them, as the admin key sees).
async fn event_count(app: &TestApp) -> usize {
    app.flush().await;
    let a = app.get("/v1/activity?limit=200", &app.admin_key).await;
    a.json()["items"].as_array().unwrap().len()
}

/// Waits up to a second for `/v1/authz` to refuse `key`; panics otherwise.
async fn refused_within_a_second(app: &TestApp, key: &str, what: &str) {
    let start = Instant::now();
    loop {
        let s = app.authz(Some(key), None).await.status;
        if s == StatusCode::UNAUTHORIZED {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{what}: still {s} after a second"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client and its secret.
async fn client(app: &TestApp, name: &str) -> (String, String) {
    let a = app
        .post(
            "/v1/oauth-clients",
            &app.admin_key,
            json!({"name": name, "scopes": []}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let v = a.json();
    (
        v["client_id"].as_str().unwrap().into(),
        v["client_secret"].as_str().unwrap().into(),
    )
}

async fn token_status(app: &TestApp, id: &str, secret: &str) -> StatusCode {
    crate::support::token(app, id, secret).await.status
}

// ----- GitHub's reports -----

async fn github_report(backend: Backend) {
    let signer = Signer::new("gh-key-1");
    let Some((app, _dir)) = with_key_file(backend, &signer, &[]).await else {
        return;
    };
    let admin = app.admin_key.clone();
    let (key_id, key) = app.key(&admin, json!({"name": "leaky"})).await;
    let (_, bystander) = app.key(&admin, json!({"name": "bystander"})).await;
    assert_eq!(app.authz(Some(&key), None).await.status, StatusCode::OK);
    let before = event_count(&app).await;

    // A bad signature (another key's, under the trusted identifier), a signature of another
    // body, a missing header, an unknown identifier: refused, and nothing changed or recorded.
    let body = report_body(&[&key]);
    let impostor = Signer::new("gh-key-1");
    let other_body = report_body(&[&bystander]);
    for (what, a) in [
        (
            "another key's signature",
            send(
                &app,
                &body,
                Some("gh-key-1"),
                Some(&impostor.sign(body.as_bytes())),
            )
            .await,
        ),
        (
            "a signature of another body",
            send(
                &app,
                &body,
                Some("gh-key-1"),
                Some(&signer.sign(other_body.as_bytes())),
            )
            .await,
        ),
        (
            "no signature",
            send(&app, &body, Some("gh-key-1"), None).await,
        ),
        (
            "no identifier",
            send(&app, &body, None, Some(&signer.sign(body.as_bytes()))).await,
        ),
        (
            "an unknown identifier",
            send(
                &app,
                &body,
                Some("nobody"),
                Some(&signer.sign(body.as_bytes())),
            )
            .await,
        ),
        (
            "a signature that is not base64",
            send(&app, &body, Some("gh-key-1"), Some("not base64 !!")).await,
        ),
    ] {
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{what}: {}", a.text);
        assert!(
            !a.text.contains(&key),
            "{what}: the answer repeats the token"
        );
    }
    assert_eq!(app.authz(Some(&key), None).await.status, StatusCode::OK);
    assert_eq!(
        event_count(&app).await,
        before,
        "refused reports record nothing"
    );

    // A random well-formed key (right prefix, right checksum) that keyplane never issued, and
    // a malformed one (skipped before any lookup): false positives, nothing changes.
    let unknown = SecretFormat::new("kp_").unwrap().generate();
    let unknown = unknown.expose();
    // The last character changed (its checksum no longer matches); `x` unless it already is.
    let other = if key.ends_with('x') { 'y' } else { 'x' };
    let malformed = format!("{}{other}", &key[..key.len() - 1]);
    assert_ne!(malformed, key);
    let body = report_body(&[unknown, &malformed]);
    let a = signed(&app, &signer, &body).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(
        a.json(),
        json!([
            {"token_hash": sha256_hex(unknown), "token_type": "keyplane_api_key", "label": "false_positive"},
            {"token_hash": sha256_hex(&malformed), "token_type": "keyplane_api_key", "label": "false_positive"},
        ]),
        "GitHub's feedback format and nothing more"
    );
    assert!(!a.text.contains(unknown) && !a.text.contains(&malformed));
    assert_eq!(
        event_count(&app).await,
        before,
        "unknown tokens record nothing"
    );
    assert_eq!(app.authz(Some(&key), None).await.status, StatusCode::OK);

    // The live key: revoked within a second, the next /v1/authz is 401.
    let (client_id, secret) = client(&app, "leaky-client").await;
    assert_eq!(
        token_status(&app, &client_id, &secret).await,
        StatusCode::OK
    );
    let body = report_body(&[&key, &secret]);
    let sig = signer.sign(body.as_bytes());
    let a = send(&app, &body, Some("gh-key-1"), Some(&sig)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let fb = a.json();
    assert_eq!(fb[0]["token_hash"], sha256_hex(&key));
    assert_eq!(fb[0]["label"], "true_positive");
    assert_eq!(fb[1]["token_hash"], sha256_hex(&secret));
    assert_eq!(fb[1]["label"], "true_positive");
    assert_eq!(
        fb[0].as_object().unwrap().len(),
        3,
        "only token_hash, token_type and label: {fb}"
    );
    assert!(!a.text.contains(&key) && !a.text.contains(&secret) && !a.text.contains(&key_id));
    refused_within_a_second(&app, &key, "a reported key").await;
    assert_eq!(
        token_status(&app, &client_id, &secret).await,
        StatusCode::UNAUTHORIZED,
        "a reported client secret is retired"
    );
    assert_eq!(
        app.authz(Some(&bystander), None).await.status,
        StatusCode::OK,
        "other keys are untouched"
    );
    let k = app
        .get(&format!("/v1/api-keys/{key_id}"), &admin)
        .await
        .json();
    assert_eq!(k["is_active"], false);

    // What was recorded: credential.leaked for each, with the URL, source, reporter, action.
    let events = leak_events(&app).await;
    assert_eq!(events.len(), 2, "{events:?}");
    let of = |id: &str| {
        events
            .iter()
            .find(|e| e["target"] == id)
            .unwrap_or_else(|| panic!("no event for {id}: {events:?}"))
            .clone()
    };
    for (e, kind) in [(of(&key_id), "api_key"), (of(&client_id), "client_secret")] {
        assert_eq!(e["actor"], "github-secret-scanning");
        let d = &e["details"];
        assert_eq!(d["kind"], kind);
        assert_eq!(d["action"], "revoked");
        assert_eq!(d["source"], "content");
        assert_eq!(d["reporter"], "github-secret-scanning");
        assert_eq!(d["url"], "https://github.com/octo/repo/blob/abc/config.env");
        let text = e.to_string();
        assert!(
            !text.contains(&key) && !text.contains(&secret),
            "no secret in the log"
        );
    }

    // The same report again (same signature, or re-signed): refused, nothing recorded again.
    let count = event_count(&app).await;
    let again = send(&app, &body, Some("gh-key-1"), Some(&sig)).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);
    let resigned = signed(&app, &signer, &body).await;
    assert_eq!(resigned.status, StatusCode::CONFLICT, "{}", resigned.text);
    assert_eq!(event_count(&app).await, count);

    // A key reported again in a new report: a true positive, recorded as already inactive.
    let body = json!([{"token": key, "type": "keyplane_api_key", "url": "https://gist.github.com/x", "source": "gist"}]).to_string();
    let a = signed(&app, &signer, &body).await;
    assert_eq!(a.json()[0]["label"], "true_positive");
    let latest = &leak_events(&app).await[0];
    assert_eq!(latest["details"]["action"], "already_inactive");
}
both!(github_report_revokes_and_refuses, github_report);

/// Failed signatures are throttled per address, like every failed authentication: past the
/// limit even a correctly signed report gets 429, and nothing is handled.
async fn signature_flood(backend: Backend) {
    let signer = Signer::new("gh");
    let Some((app, _dir)) = with_key_file(
        backend,
        &signer,
        &[("KEYPLANE_AUTH_FAILURES_PER_MINUTE", "3")],
    )
    .await
    else {
        return;
    };
    let (_, key) = app.key(&app.admin_key, json!({"name": "k"})).await;
    let body = report_body(&[&key]);
    let forger = Signer::new("gh");
    for _ in 0..3 {
        let a = send(&app, &body, Some("gh"), Some(&forger.sign(body.as_bytes()))).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    }
    let a = signed(&app, &signer, &body).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{}", a.text);
    assert_eq!(app.authz(Some(&key), None).await.status, StatusCode::OK);
    // The management API is throttled separately: the admin key still works.
    assert_eq!(
        app.get("/v1/api-keys", &app.admin_key).await.status,
        StatusCode::OK
    );
}
both!(bad_signatures_are_throttled, signature_flood);

/// The keys fetched from a URL (GitHub's format, a real HTTP server): fetched on the first
/// report, fetched again when a report names an identifier the list lacks (the list rotated),
/// but at most once per interval however many unknown identifiers come.
async fn fetched_keys(backend: Backend) {
    let (one, two) = (Signer::new("key-one"), Signer::new("key-two"));
    let server = KeyServer::start(key_list(&[&one])).await;
    let Some(app) = spawn_app_with(
        backend,
        Options::default()
            .env(
                "KEYPLANE_LEAKS_GITHUB_KEYS_URL",
                &format!("{}/keys", server.base),
            )
            .env("KEYPLANE_LEAKS_GITHUB_KEYS_REFETCH_INTERVAL_SECONDS", "1"),
    )
    .await
    else {
        return;
    };
    let admin = app.admin_key.clone();
    let (_, k1) = app.key(&admin, json!({"name": "one"})).await;
    let (_, k2) = app.key(&admin, json!({"name": "two"})).await;
    assert_eq!(server.fetches(), 0, "nothing fetched before a report");
    let a = signed(&app, &one, &report_body(&[&k1])).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(server.fetches(), 1);
    refused_within_a_second(&app, &k1, "reported with a fetched key").await;

    // The list rotates to key two. Reports signed by it name an unknown identifier: one
    // fetch per interval, whatever the number of reports.
    server.serve(key_list(&[&two, &one]));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let body = report_body(&[&k2]);
    let a = signed(&app, &two, &body).await;
    assert_eq!(a.status, StatusCode::OK, "after the rotation: {}", a.text);
    assert_eq!(server.fetches(), 2);
    refused_within_a_second(&app, &k2, "reported with the rotated key").await;
    for i in 0..5 {
        let stranger = Signer::new(&format!("stranger-{i}"));
        let a = signed(&app, &stranger, &report_body(&["kp_x"])).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    }
    assert!(
        server.fetches() <= 3,
        "unknown identifiers fetch at most once per interval: {}",
        server.fetches()
    );
}
both!(fetched_keys_are_refetched_on_rotation, fetched_keys);

/// `leaks.policy = "notify"`: recorded, not revoked.
async fn notify_only(backend: Backend) {
    let signer = Signer::new("gh");
    let Some((app, _dir)) =
        with_key_file(backend, &signer, &[("KEYPLANE_LEAKS_POLICY", "notify")]).await
    else {
        return;
    };
    let (key_id, key) = app.key(&app.admin_key, json!({"name": "k"})).await;
    let a = signed(&app, &signer, &report_body(&[&key])).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json()[0]["label"], "true_positive");
    assert_eq!(app.authz(Some(&key), None).await.status, StatusCode::OK);
    let events = leak_events(&app).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["target"], key_id.as_str());
    assert_eq!(events[0]["details"]["action"], "notified");
}
both!(notify_policy_records_only, notify_only);

/// On two nodes sharing PostgreSQL: a report to one revokes on the other within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_revokes_on_every_node() {
    let signer = Signer::new("gh");
    let Some((one, _dir)) = with_key_file(Backend::Postgres, &signer, &[]).await else {
        return;
    };
    let two = one.spawn_second_node().await;
    let (_, key) = one.key(&one.admin_key, json!({"name": "k"})).await;
    assert_eq!(two.authz(Some(&key), None).await.status, StatusCode::OK);
    let a = signed(&one, &signer, &report_body(&[&key])).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    refused_within_a_second(&two, &key, "the other node").await;
}

// ----- reports by authenticated callers -----

async fn management(backend: Backend) {
    let Some(app) = spawn_app_with(backend, Options::default()).await else {
        return;
    };
    let admin = app.admin_key.clone();
    // A caller with no permission at all, in the default organization.
    let (_, reporter) = app.key(&admin, json!({"name": "reporter"})).await;
    // Another organization's key, which the reporter cannot see.
    let org_b = app.post("/v1/orgs", &admin, json!({"name": "beta"})).await;
    assert_eq!(org_b.status, StatusCode::CREATED, "{}", org_b.text);
    let org_b = org_b.json()["id"].as_str().unwrap().to_string();
    let (b_id, b_key) = app
        .key(&admin, json!({"name": "theirs", "org_id": org_b}))
        .await;

    // Unauthenticated: refused as any management route.
    let a = app
        .call(
            keyplane_testkit::reqwest::Method::POST,
            "/v1/leaks",
            None,
            Some(json!({"token": b_key})),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.authz(Some(&b_key), None).await.status, StatusCode::OK);

    // An unknown well-formed key, and another organization's live key: the same answer
    // (byte for byte), and the live key is revoked all the same.
    let unknown = SecretFormat::new("kp_").unwrap().generate();
    let a_unknown = app
        .post("/v1/leaks", &reporter, json!({"token": unknown.expose()}))
        .await;
    assert_eq!(a_unknown.status, StatusCode::OK, "{}", a_unknown.text);
    let a_hidden = app
        .post(
            "/v1/leaks",
            &reporter,
            json!({"token": b_key, "url": "https://paste.example/1"}),
        )
        .await;
    assert_eq!(a_hidden.status, StatusCode::OK, "{}", a_hidden.text);
    assert_eq!(
        a_hidden.text, a_unknown.text,
        "nothing said about the other org"
    );
    assert_eq!(a_hidden.json(), json!({"received": true}));
    refused_within_a_second(&app, &b_key, "another org's key, reported").await;
    let e = &leak_events(&app).await[0];
    assert_eq!(e["target"], b_id.as_str());
    assert_eq!(e["org_id"], org_b.as_str());
    assert_eq!(e["details"]["url"], "https://paste.example/1");
    assert_eq!(e["details"]["source"], "api");
    assert!(
        e["actor"].as_str().unwrap().starts_with("api-key:"),
        "the reporter is recorded: {e}"
    );

    // A caller who may see the key is told what happened.
    let (mine_id, mine) = app.key(&admin, json!({"name": "mine"})).await;
    let a = app
        .post("/v1/leaks", &admin, json!({"token": mine, "source": "log"}))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(
        a.json(),
        json!({"received": true, "credential": {"kind": "api_key", "id": mine_id, "action": "revoked"}})
    );
    assert_eq!(
        app.authz(Some(&mine), None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert!(!a.text.contains(&mine));

    // The CLI does the same, reading the secret from a file.
    let (_, via_cli) = app.key(&admin, json!({"name": "cli"})).await;
    let dir = TempDir::new();
    let file = dir.path().join("found.txt");
    std::fs::write(&file, format!("{via_cli}\n")).unwrap();
    let v = crate::cli::Cli::admin(&app)
        .json(&[
            "leaks",
            "report",
            "--secret-file",
            file.to_str().unwrap(),
            "--found-at",
            "https://example.com/leak",
        ])
        .await;
    assert_eq!(v["credential"]["action"], "revoked", "{v}");
    assert_eq!(
        leak_events(&app).await[0]["details"]["url"],
        "https://example.com/leak"
    );
    assert_eq!(
        app.authz(Some(&via_cli), None).await.status,
        StatusCode::UNAUTHORIZED
    );
}
both!(management_route_revokes_and_hides, management);

/// A token in none of keyplane's formats is never looked up: with the node cut off from its
/// database (serving its cache), reports of malformed tokens are still answered, while a
/// well-formed one, which must be looked up, fails for want of storage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_tokens_are_not_looked_up() {
    use sqlx::Connection;
    async fn as_pg_admin(sql: &str) {
        let url = keyplane_testkit::postgres_admin_url().unwrap();
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query(sql).execute(&mut conn).await.unwrap();
        let _ = conn.close().await;
    }
    let Some(app) = spawn_app_with(Backend::Postgres, Options::default()).await else {
        return;
    };
    let name = app
        .db
        .url
        .split('?')
        .next()
        .and_then(|u| u.rsplit('/').next())
        .unwrap()
        .to_string();
    let (_, reporter) = app.key(&app.admin_key, json!({"name": "reporter"})).await;
    // Wait until the node listens for changes (so its cache is trusted once cut off), then
    // put the reporter's key in its cache.
    let started = Instant::now();
    loop {
        let mut conn =
            sqlx::PgConnection::connect(&keyplane_testkit::postgres_admin_url().unwrap())
                .await
                .unwrap();
        let listening: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'LISTEN%'",
        )
        .bind(&name)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        let _ = conn.close().await;
        if listening > 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never listened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Once it listens, the node clears its caches (`FeedRestored`, then `All`: anything may
    // have changed while it did not listen); the key must be cached after that, or it is read
    // again later from a database that refuses connections (a CI run failed so). The clear
    // follows the LISTEN within milliseconds; a second is ample.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(app.get("/v1/me", &reporter).await.status, StatusCode::OK);
    let well_formed = SecretFormat::new("kp_").unwrap().generate();
    let well_formed = well_formed.expose().to_string();
    let bad_checksum = format!("{}0", &well_formed[..well_formed.len() - 1]);
    let bad_checksum = if bad_checksum == well_formed {
        format!("{}1", &well_formed[..well_formed.len() - 1])
    } else {
        bad_checksum
    };

    as_pg_admin(&format!(
        "ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false"
    ))
    .await;
    as_pg_admin(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    ))
    .await;
    for malformed in [
        bad_checksum.as_str(),
        "kp_short",
        "ghp_notours",
        "kps_0000000000000000000000000000000000000000000000000",
    ] {
        let a = app
            .post("/v1/leaks", &reporter, json!({"token": malformed}))
            .await;
        assert_eq!(a.status, StatusCode::OK, "{malformed}: {}", a.text);
        assert_eq!(a.json(), json!({"received": true}));
    }
    let a = app
        .post("/v1/leaks", &reporter, json!({"token": well_formed}))
        .await;
    assert!(
        a.status.is_server_error(),
        "a well-formed token is looked up, which needs the database: {} {}",
        a.status,
        a.text
    );
    as_pg_admin(&format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true")).await;
}

// ----- the console -----

async fn console(backend: Backend) {
    use crate::console::{csrf_of, Console};
    let Some(app) = spawn_app_with(backend, Options::default()).await else {
        return;
    };
    let (key_id, key) = app
        .key(&app.admin_key, json!({"name": "console-key"}))
        .await;
    let created = app
        .post(
            "/v1/oauth-clients",
            &app.admin_key,
            json!({"name": "console-client", "scopes": []}),
        )
        .await
        .json();
    let client_id = created["client_id"].as_str().unwrap().to_string();
    let secret = created["client_secret"].as_str().unwrap().to_string();
    let secret_id = created["secret_id"].as_str().unwrap().to_string();

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
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (_, page, _) = c.get("/console/keys").await;
    assert!(
        page.contains(&format!("/console/keys/{key_id}/leaked")),
        "the key's menu offers \"Report as leaked\""
    );
    let csrf = csrf_of(&page);
    let (status, _, _) = c
        .post(
            &format!("/console/keys/{key_id}/leaked"),
            &[("csrf", &csrf)],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        app.authz(Some(&key), None).await.status,
        StatusCode::UNAUTHORIZED
    );

    let (_, page, _) = c
        .get(&format!("/console/clients?selected={client_id}"))
        .await;
    let path = format!("/console/clients/{client_id}/secrets/{secret_id}/leaked");
    assert!(
        page.contains(&path),
        "the secret offers \"Report as leaked\""
    );
    let (status, _, _) = c.post(&path, &[("csrf", &csrf_of(&page))], None).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        token_status(&app, &client_id, &secret).await,
        StatusCode::UNAUTHORIZED
    );
    let events = leak_events(&app).await;
    assert_eq!(events.len(), 2, "{events:?}");
    for e in &events {
        assert_eq!(e["details"]["source"], "console");
        assert_eq!(e["details"]["action"], "revoked");
        assert_eq!(e["actor"], "admin-key via console");
    }
}
both!(console_reports_a_key_and_a_secret, console);

// ----- the public form -----

/// GETs the form: its token and cookie.
async fn open_form(app: &TestApp, http: &keyplane_testkit::reqwest::Client) -> (String, String) {
    let resp = http
        .get(format!("{}/leaks/report", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let cookie = resp
        .headers()
        .get("set-cookie")
        .expect("the form sets its cookie")
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let page = resp.text().await.unwrap();
    let start = page
        .find("name=\"form_token\" value=\"")
        .expect("the form token")
        + 25;
    let token = page[start..start + page[start..].find('"').unwrap()].to_string();
    (token, cookie)
}

async fn submit(
    app: &TestApp,
    http: &keyplane_testkit::reqwest::Client,
    form_token: &str,
    cookie: Option<&str>,
    secret: &str,
) -> (StatusCode, String) {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("form_token", form_token)
        .append_pair("token", secret)
        .append_pair("url", "https://example.com/found")
        .finish();
    let mut r = http
        .post(format!("{}/leaks/report", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    if let Some(c) = cookie {
        r = r.header("cookie", c);
    }
    let resp = r.send().await.unwrap();
    (resp.status(), resp.text().await.unwrap())
}

async fn public_form(backend: Backend) {
    let Some(app) = spawn_app_with(
        backend,
        Options::default().env("KEYPLANE_LEAKS_FORM_REPORTS_PER_MINUTE", "6"),
    )
    .await
    else {
        return;
    };
    let http = keyplane_testkit::reqwest::Client::new();
    let (key_id, key) = app.key(&app.admin_key, json!({"name": "found"})).await;
    let (form_token, cookie) = open_form(&app, &http).await;

    // Without the form's cookie (a post from another site): refused, nothing handled.
    let (status, _) = submit(&app, &http, &form_token, None, &key).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(app.authz(Some(&key), None).await.status, StatusCode::OK);

    // The live key, an unknown well-formed key, a malformed one: the same status and bytes.
    let unknown = SecretFormat::new("kp_").unwrap().generate();
    let unknown = unknown.expose().to_string();
    let live = submit(&app, &http, &form_token, Some(&cookie), &key).await;
    let unknown_answer = submit(&app, &http, &form_token, Some(&cookie), &unknown).await;
    let junk = submit(&app, &http, &form_token, Some(&cookie), "not a key at all").await;
    assert_eq!(live.0, StatusCode::OK);
    assert_eq!(
        live, unknown_answer,
        "valid and unknown keys answer the same"
    );
    assert_eq!(live, junk, "valid and malformed keys answer the same");
    assert!(!live.1.contains(&key));
    refused_within_a_second(&app, &key, "reported through the form").await;
    let events = leak_events(&app).await;
    assert_eq!(events.len(), 1, "only the real key is recorded: {events:?}");
    assert_eq!(events[0]["target"], key_id.as_str());
    assert_eq!(events[0]["actor"], "public-leak-form");
    assert_eq!(events[0]["details"]["source"], "form");

    // The revoked key again: the same page, and nothing more recorded (whoever holds a dead
    // key cannot grow the log through the form).
    let again = submit(&app, &http, &form_token, Some(&cookie), &key).await;
    assert_eq!(again, live);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(leak_events(&app).await.len(), 1);

    // A flood from one address: 429 past the configured number per minute (5 used so far).
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(
            submit(&app, &http, &form_token, Some(&cookie), &unknown)
                .await
                .0,
        );
    }
    assert_eq!(
        statuses,
        vec![
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
}
both!(public_form_answers_the_same_and_throttles, public_form);

// ----- patterns -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patterns_match_every_minted_secret_and_checksums_rule_out_noise() {
    let Some(app) = spawn_app_with(
        Backend::Sqlite,
        Options::default().env("KEYPLANE_API_KEY_PREFIX", "acme_"),
    )
    .await
    else {
        return;
    };
    let a = app
        .call(
            keyplane_testkit::reqwest::Method::GET,
            "/v1/leaks/patterns",
            None,
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let v = a.json();
    let regex_of = |kind: &str| {
        let p = v["patterns"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} pattern: {v}"));
        regex::Regex::new(p["regex"].as_str().unwrap()).unwrap()
    };
    let (api, secret) = (regex_of("api_key"), regex_of("client_secret"));
    regex_of("admin_key");
    for i in 0..20 {
        let (_, key) = app
            .key(&app.admin_key, json!({"name": format!("k{i}")}))
            .await;
        let found = format!("export TOKEN={key} # in a file");
        assert_eq!(
            api.find(&found).map(|m| m.as_str()),
            Some(key.as_str()),
            "{key}"
        );
        assert!(!secret.is_match(&found));
    }
    for i in 0..5 {
        let (_, s) = client(&app, &format!("c{i}")).await;
        assert_eq!(
            secret.find(&format!("'{s}'")).map(|m| m.as_str()),
            Some(s.as_str())
        );
    }
    // Random strings the regex matches are ruled out by the published checksum rule.
    let format = SecretFormat::new("acme_").unwrap();
    let mut matched = 0;
    for _ in 0..2000 {
        let candidate = format!("acme_{}", keyplane_core::domain::secret::random_base62(49));
        if api.is_match(&candidate) {
            matched += 1;
            assert!(
                format.check(&candidate).is_err(),
                "{candidate} passes the checksum"
            );
        }
    }
    assert_eq!(matched, 2000);
}

// ----- a tiny key-list server -----

/// An HTTP server on 127.0.0.1 serving a key list at `/keys`, counting the fetches.
struct KeyServer {
    base: String,
    list: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KeyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KeyServer {
    async fn start(list: Value) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let list = Arc::new(Mutex::new(list));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (l, f) = (Arc::clone(&list), Arc::clone(&fetches));
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let (l, f) = (Arc::clone(&l), Arc::clone(&f));
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16384 {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf);
                    let resp = if head.split(' ').nth(1) == Some("/keys") {
                        f.fetch_add(1, Ordering::SeqCst);
                        let body = l.lock().unwrap().to_string();
                        format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len())
                    } else {
                        "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                            .to_string()
                    };
                    let _ = sock.write_all(resp.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        KeyServer {
            base,
            list,
            fetches,
            task,
        }
    }

    fn serve(&self, list: Value) {
        *self.list.lock().unwrap() = list;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}
