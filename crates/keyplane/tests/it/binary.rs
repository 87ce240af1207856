//! The real binary: start, banner, signals, restart, files and logs, the CLI.
//!
//! Every test here runs the `keyplane` executable cargo built as a child process, on a free port
//! against a fresh database, talks to it over HTTP and through its own command line, and stops it
//! with SIGTERM. A [`Server`] kills its process when dropped, so a failing test leaves nothing
//! running; every wait is bounded.

use keyplane_testkit::reqwest::{self, Method, StatusCode};
use keyplane_testkit::{json, Answer, Backend, TestDb};
use serde_json::Value;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_keyplane");
/// How long a server may take to answer `/healthz` (and to print its banner).
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a server may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one CLI command may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one HTTP request may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// The last line of the admin key banner: once it is on stderr, the whole banner is.
const BANNER_END: &str = "Rotate with `keyplane admin-key rotate`";

/// Runs `$body(Backend)` once per backend; the body skips itself when `TestDb::fresh` says so.
macro_rules! on_both_backends {
    ($name:ident, $body:ident) => {
        mod $name {
            use keyplane_testkit::Backend;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$body(Backend::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$body(Backend::Postgres).await;
            }
        }
    };
}

// ----- processes -----

/// A `keyplane` command with none of the test process's `KEYPLANE_*` variables, so only what a
/// test sets reaches it. With PostgreSQL the generated pepper goes to the test's folder.
fn keyplane(db: Option<&TestDb>) -> Command {
    let mut c = Command::new(BIN);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("KEYPLANE_") {
            c.env_remove(k);
        }
    }
    if let Some(db) = db {
        if db.backend == Backend::Postgres {
            c.env("KEYPLANE_DATA_DIR", db.dir.path());
        }
    }
    c.stdin(Stdio::null());
    c
}

/// Runs a CLI command to completion (killed if it takes longer than [`CLI_TIMEOUT`]).
pub(crate) async fn cli(db: Option<&TestDb>, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = keyplane(db);
    c.args(args).envs(env.iter().copied());
    let mut c = tokio::process::Command::from(c);
    c.kill_on_drop(true);
    match tokio::time::timeout(CLI_TIMEOUT, c.output()).await {
        Ok(out) => out.expect("run keyplane"),
        Err(_) => panic!(
            "`keyplane {}` did not finish within {CLI_TIMEOUT:?}",
            args.join(" ")
        ),
    }
}

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Everything a pipe yields, read on a thread of its own so the child never blocks on it.
#[derive(Clone, Default)]
pub(crate) struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn follow(mut from: impl Read + Send + 'static) -> (Self, JoinHandle<()>) {
        let captured = Captured::default();
        let sink = captured.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sink
                        .0
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend_from_slice(&buf[..n]),
                }
            }
        });
        (captured, reader)
    }

    pub(crate) fn text(&self) -> String {
        text(&self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// A free port on 127.0.0.1: bound, read, released. Another process may take it before the
/// server binds it; [`Server::start`] then tries another.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local address").port()
}

/// A running `keyplane serve`. Dropping it kills the process. (`crash.rs` uses it too.)
pub(crate) struct Server {
    child: Child,
    pub(crate) base: String,
    stdout: Captured,
    pub(crate) stderr: Captured,
    readers: Vec<JoinHandle<()>>,
    http: reqwest::Client,
}

/// A server that stopped: how it exited and all it wrote.
pub(crate) struct Stopped {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Server {
    /// Starts `keyplane serve --listen 127.0.0.1:PORT --database URL` with `env` and waits until
    /// it says it listens and `/healthz` answers 200.
    pub(crate) async fn start(db: &TestDb, env: &[(&str, &str)]) -> Server {
        Self::start_at(db, &db.url, env).await
    }

    /// [`Server::start`] on another database URL than the test database's own (another file in
    /// its folder, say).
    pub(crate) async fn start_at(db: &TestDb, url: &str, env: &[(&str, &str)]) -> Server {
        Self::start_with(db, url, &[], env).await
    }

    /// [`Server::start_at`] with more arguments to `keyplane serve` (`--no-migrate`, say).
    pub(crate) async fn start_with(
        db: &TestDb,
        url: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            let listen = format!("127.0.0.1:{}", free_port());
            let mut c = keyplane(Some(db));
            c.args(["serve", "--listen", &listen, "--database", url])
                .args(args)
                .envs(env.iter().copied())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = c.spawn().expect("spawn keyplane serve");
            let (stdout, out_reader) = Captured::follow(child.stdout.take().expect("stdout"));
            let (stderr, err_reader) = Captured::follow(child.stderr.take().expect("stderr"));
            let mut server = Server {
                child,
                base: format!("http://{listen}"),
                stdout,
                stderr,
                readers: vec![out_reader, err_reader],
                http: reqwest::Client::builder()
                    .timeout(HTTP_TIMEOUT)
                    .build()
                    .expect("HTTP client"),
            };
            match server.wait_ready().await {
                Ok(()) => return server,
                // Someone took the port between our probe and the server's bind: try another.
                Err(_) if attempt < ATTEMPTS && server.stderr.text().contains("cannot listen") => {
                    continue
                }
                Err(why) => panic!(
                    "keyplane serve did not start: {why}\n--- stderr ---\n{}",
                    server.stderr.text()
                ),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Err(format!("it exited ({status}) before answering"));
            }
            // Only our process prints this after binding the port; then /healthz must answer.
            if self.stderr.text().contains("keyplane is listening") {
                let health = self
                    .http
                    .get(format!("{}/healthz", self.base))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await;
                if let Ok(r) = health {
                    if r.status() == StatusCode::OK {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "/healthz did not answer 200 within {START_TIMEOUT:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (bounded) until stderr contains `needle`; returns all of stderr.
    async fn wait_for_stderr(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let err = self.stderr.text();
            if err.contains(needle) {
                return err;
            }
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "keyplane exited ({status}) before printing {needle:?}\n--- stderr ---\n{err}"
                );
            }
            if Instant::now() > deadline {
                panic!("keyplane did not print {needle:?} within {START_TIMEOUT:?}\n--- stderr ---\n{err}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The admin key a first start printed in its banner.
    pub(crate) async fn banner_admin_key(&mut self) -> String {
        let err = self.wait_for_stderr(BANNER_END).await;
        let keys = admin_keys_in(&err);
        assert_eq!(
            keys.len(),
            1,
            "expected one admin key in the banner:\n{err}"
        );
        keys.into_iter().next().expect("one key")
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit.
    pub(crate) async fn terminate(mut self) -> Stopped {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                panic!(
                    "keyplane did not exit within {STOP_TIMEOUT:?} of SIGTERM\n--- stderr ---\n{}",
                    self.stderr.text()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        // The process is gone, so its pipes are at end of file.
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        Stopped {
            status,
            stdout: self.stdout.text(),
            stderr: self.stderr.text(),
        }
    }

    /// Kills the process with SIGKILL, as a crash or `kill -9` would: it gets no chance to
    /// flush or finish anything. Waits for it and returns how it ended.
    pub(crate) fn kill9(mut self) -> ExitStatus {
        self.child.kill().expect("send SIGKILL");
        let status = self.child.wait().expect("wait for the killed process");
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        status
    }

    /// Everything the server wrote on stderr so far.
    pub(crate) fn stderr_text(&self) -> String {
        self.stderr.text()
    }

    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
        Answer {
            status: resp.status(),
            headers: resp.headers().clone(),
            text: resp.text().await.expect("body"),
        }
    }

    pub(crate) async fn get(&self, path: &str, token: &str) -> Answer {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub(crate) async fn post(&self, path: &str, token: &str, body: Value) -> Answer {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    pub(crate) async fn authz(&self, token: &str) -> StatusCode {
        self.call(
            Method::GET,
            "/v1/authz?scope=ai-guard:read",
            Some(token),
            None,
        )
        .await
        .status
    }

    pub(crate) async fn service(&self, admin: &str) {
        let a = self
            .post(
                "/v1/services",
                admin,
                json!({ "name": "ai-guard", "scopes": ["ai-guard:read"] }),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    }

    /// Creates a key as `admin`; returns (id, secret).
    pub(crate) async fn key(&self, admin: &str, name: &str) -> (String, String) {
        let a = self
            .post(
                "/v1/api-keys",
                admin,
                json!({ "name": name, "scopes": ["ai-guard:read"] }),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
        let v = a.json();
        let secret = v["key"].as_str().expect("key").to_string();
        assert!(secret.starts_with("kp_"), "{secret}");
        (v["id"].as_str().expect("id").to_string(), secret)
    }

    pub(crate) async fn revoke(&self, admin: &str, id: &str) {
        let a = self
            .post(&format!("/v1/api-keys/{id}/revoke"), admin, json!({}))
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        assert_eq!(a.json()["status"], "revoked");
    }

    /// Every page of `/v1/activity`, as the raw response bodies joined.
    async fn all_activity(&self, admin: &str) -> String {
        let mut out = String::new();
        let mut cursor: Option<String> = None;
        for _ in 0..100 {
            let path = match &cursor {
                Some(c) => format!("/v1/activity?limit=200&cursor={c}"),
                None => "/v1/activity?limit=200".to_string(),
            };
            let a = self.get(&path, admin).await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.text);
            out.push_str(&a.text);
            out.push('\n');
            match a.json()["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return out,
            }
        }
        panic!("more than 100 pages of activity");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ----- looking for secrets -----

/// The admin keys (`kpa_...` words) in `text`.
fn admin_keys_in(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("kpa_") && w.len() > 20)
        .map(str::to_string)
        .collect()
}

/// Pieces of a secret that must never be found: its random part right after the characters an
/// API key shows in lists (`kp_` and four more), and its end. Either is enough to find a leak of
/// the whole secret or of a truncated one.
fn fragments(secret: &str) -> [&str; 2] {
    [&secret[7..27], &secret[secret.len() - 20..]]
}

fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every file under `dir`, with its contents.
fn files_in(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read the data directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            out.extend(files_in(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path.display().to_string(), bytes));
        }
    }
    out
}

/// Asserts no file under `dir` holds any fragment of `secrets`, and that the files were read at
/// all: something the server did store (`stored`) is found.
fn assert_no_secret_in_files(dir: &Path, secrets: &[(&str, &str)], stored: &str) {
    let files = files_in(dir);
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        files
            .iter()
            .any(|(_, b)| contains_bytes(b, stored.as_bytes())),
        "{stored} is in none of {names:?}: the database was not read"
    );
    for (what, secret) in secrets {
        for piece in fragments(secret) {
            for (name, bytes) in &files {
                assert!(
                    !contains_bytes(bytes, piece.as_bytes()),
                    "the {what} leaked into {name}"
                );
            }
        }
    }
}

fn occurrences(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

// ----- 1. first start: the admin key banner, once -----

async fn first_start_banner(backend: Backend) {
    let Some(db) = TestDb::fresh(backend).await else {
        return;
    };

    let mut server = Server::start(&db, &[]).await;
    let admin = server.banner_admin_key().await;
    assert!(admin.len() >= 32, "{admin}");
    assert_eq!(
        server.get("/v1/api-keys", &admin).await.status,
        StatusCode::OK
    );
    assert_eq!(
        server
            .get(
                "/v1/api-keys",
                "kpa_not-the-admin-key-but-long-enough-to-try"
            )
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let first = server.terminate().await;
    assert!(
        first.status.success(),
        "exit {}\n{}",
        first.status,
        first.stderr
    );
    assert_eq!(occurrences(&first.stderr, &admin), 1, "{}", first.stderr);
    assert!(!first.stdout.contains(&admin));

    // The generated pepper sits in the data directory (the SQLite file's folder), owner-only.
    let pepper = db.dir.path().join("keyplane.pepper");
    let pepper_text = std::fs::read_to_string(&pepper).expect("a generated pepper file");
    assert!(pepper_text.trim().len() >= 32);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&pepper)
            .expect("pepper metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "pepper file mode {mode:o}");
    }
    assert!(!first.stderr.contains(pepper_text.trim()));

    // A second start on the same database prints no banner, and the first key still works.
    let server = Server::start(&db, &[]).await;
    assert_eq!(
        server.get("/v1/api-keys", &admin).await.status,
        StatusCode::OK
    );
    let second = server.terminate().await;
    assert!(
        second.status.success(),
        "exit {}\n{}",
        second.status,
        second.stderr
    );
    assert!(
        !second.stderr.contains("generated an admin key"),
        "{}",
        second.stderr
    );
    assert!(
        admin_keys_in(&second.stderr).is_empty(),
        "{}",
        second.stderr
    );
    assert_eq!(
        std::fs::read_to_string(&pepper).expect("pepper"),
        pepper_text,
        "the pepper must not change"
    );
}
on_both_backends!(first_start, first_start_banner);

// ----- 2. secrets never leak into files, logs or the activity log -----

async fn secrets_never_leak(log_format: &str) {
    let db = TestDb::fresh(Backend::Sqlite)
        .await
        .expect("SQLite is always available");
    let mut server = Server::start(
        &db,
        &[
            ("KEYPLANE_LOG", "debug"),
            ("KEYPLANE_LOG_FORMAT", log_format),
            ("KEYPLANE_FLUSH_INTERVAL_MS", "100"),
        ],
    )
    .await;
    let admin = server.banner_admin_key().await;

    server.service(&admin).await;
    let (id, secret) = server.key(&admin, "k").await;
    assert_eq!(server.authz(&secret).await, StatusCode::OK);
    let me = server.get("/v1/api-keys", &secret).await;
    assert_ne!(me.status, StatusCode::UNAUTHORIZED, "{}", me.text);

    // One character changed (the checksum no longer matches), and a well-formed unknown key.
    let mut tampered = secret.clone().into_bytes();
    tampered[10] = if tampered[10] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ASCII");
    let unknown = keyplane_core::domain::secret::SecretFormat::new("kp_")
        .expect("prefix")
        .generate()
        .expose()
        .to_string();
    for bad in [&tampered, &unknown] {
        assert_eq!(server.authz(bad).await, StatusCode::UNAUTHORIZED);
        assert_eq!(
            server.get("/v1/api-keys", bad).await.status,
            StatusCode::UNAUTHORIZED
        );
    }

    server.revoke(&admin, &id).await;
    assert_eq!(server.authz(&secret).await, StatusCode::UNAUTHORIZED);

    // OAuth: client secrets and access tokens (opaque and JWT), through every endpoint.
    let mut oauth_secrets: Vec<String> = Vec::new();
    for format in ["opaque", "jwt"] {
        let c = server
            .post(
                "/v1/oauth-clients",
                &admin,
                serde_json::json!({ "name": format, "scopes": ["ai-guard:read"], "token_format": format }),
            )
            .await;
        assert_eq!(c.status, StatusCode::CREATED, "{}", c.text);
        let v: Value = serde_json::from_str(&c.text).expect("json");
        let client_id = v["client_id"].as_str().expect("client_id").to_string();
        let client_secret = v["client_secret"].as_str().expect("secret").to_string();
        let form = |body: String, basic: bool| {
            let mut r = server
                .http
                .post(format!("{}/v1/oauth/token", server.base))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body);
            if basic {
                r = r.basic_auth(&client_id, Some(&client_secret));
            }
            r.send()
        };
        let t: Value = form("grant_type=client_credentials".into(), true)
            .await
            .expect("token")
            .json()
            .await
            .expect("json");
        let token = t["access_token"].as_str().expect("token").to_string();
        let post = form(
            format!(
                "grant_type=client_credentials&client_id={client_id}&client_secret={client_secret}"
            ),
            false,
        )
        .await
        .expect("token");
        assert_eq!(post.status(), StatusCode::OK);
        let wrong = form(
            format!(
                "grant_type=client_credentials&client_id={client_id}&client_secret={}{}",
                &client_secret[..client_secret.len() - 1],
                // Another last character, whatever the real one is.
                if client_secret.ends_with('x') {
                    'y'
                } else {
                    'x'
                }
            ),
            false,
        )
        .await
        .expect("token");
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(server.authz(&token).await, StatusCode::OK);
        for endpoint in ["introspect", "revoke", "introspect"] {
            let r = server
                .http
                .post(format!("{}/v1/oauth/token/{endpoint}", server.base))
                .basic_auth(&client_id, Some(&client_secret))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("token={token}"))
                .send()
                .await
                .expect("call");
            assert_eq!(r.status(), StatusCode::OK);
        }
        assert_eq!(server.authz(&token).await, StatusCode::UNAUTHORIZED);
        oauth_secrets.push(client_secret);
        oauth_secrets.push(token);
    }

    // The refusals reach the activity log in a batch; wait for them, then look at all of it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let activity = loop {
        let a = server.all_activity(&admin).await;
        if a.contains("credential.refused") || Instant::now() > deadline {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(activity.contains("credential.refused"), "{activity}");
    assert!(activity.contains("api_key.revoke"), "{activity}");
    assert!(activity.contains(&id));

    let pepper = std::fs::read_to_string(db.dir.path().join("keyplane.pepper")).expect("pepper");
    let pepper = pepper.trim().to_string();
    let secrets = [
        ("API key", secret.as_str()),
        ("tampered API key", tampered.as_str()),
        ("unknown API key", unknown.as_str()),
        ("opaque client's secret", oauth_secrets[0].as_str()),
        ("opaque access token", oauth_secrets[1].as_str()),
        ("JWT client's secret", oauth_secrets[2].as_str()),
        ("JWT access token", oauth_secrets[3].as_str()),
        ("admin key", admin.as_str()),
    ];
    for (what, s) in &secrets {
        for piece in fragments(s) {
            assert!(
                !activity.contains(piece),
                "the {what} is in the activity log"
            );
        }
    }
    // While running (the newest writes are still in the WAL)...
    assert_no_secret_in_files(db.dir.path(), &secrets, &id);

    let stopped = server.terminate().await;
    assert!(
        stopped.status.success(),
        "exit {}\n{}",
        stopped.status,
        stopped.stderr
    );
    assert!(
        stopped.stderr.contains("stopped cleanly"),
        "{}",
        stopped.stderr
    );
    // ...and after a clean stop.
    assert_no_secret_in_files(db.dir.path(), &secrets, &id);
    // The pepper is only in its own file.
    for (name, bytes) in files_in(db.dir.path()) {
        if !name.ends_with("keyplane.pepper") {
            assert!(
                !contains_bytes(&bytes, pepper.as_bytes()),
                "the pepper leaked into {name}"
            );
        }
    }

    // The logs really were at debug level, and hold no secret: the admin key only in the banner.
    assert!(
        stopped.stderr.contains("DEBUG"),
        "not debug logs:\n{}",
        stopped.stderr
    );
    for (what, s) in &secrets[..7] {
        for piece in fragments(s) {
            assert!(!stopped.stderr.contains(piece), "the {what} is in the logs");
            assert!(!stopped.stdout.contains(piece), "the {what} is on stdout");
        }
    }
    assert_eq!(
        occurrences(&stopped.stderr, &admin),
        1,
        "the admin key must appear once, in the banner"
    );
    for piece in fragments(&admin) {
        assert_eq!(
            occurrences(&stopped.stderr, piece),
            1,
            "part of the admin key is in the logs"
        );
        assert!(!stopped.stdout.contains(piece));
    }
    assert!(
        !stopped.stderr.contains(&pepper) && !stopped.stdout.contains(&pepper),
        "the pepper is in the output"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_leak_text_logs() {
    secrets_never_leak("text").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_leak_json_logs() {
    secrets_never_leak("json").await;
}

// ----- 3. data survives a restart; batched writes are flushed at shutdown -----

async fn survives_restart(backend: Backend) {
    let Some(db) = TestDb::fresh(backend).await else {
        return;
    };
    // No periodic flush during the test: last-used times are written only at shutdown.
    let env = [("KEYPLANE_FLUSH_INTERVAL_MS", "3600000")];

    let mut server = Server::start(&db, &env).await;
    let admin = server.banner_admin_key().await;
    server.service(&admin).await;
    let (kept_id, kept) = server.key(&admin, "kept").await;
    let (revoked_id, revoked) = server.key(&admin, "revoked").await;
    assert_eq!(server.authz(&kept).await, StatusCode::OK);
    assert_eq!(server.authz(&revoked).await, StatusCode::OK);
    server.revoke(&admin, &revoked_id).await;
    assert_eq!(server.authz(&revoked).await, StatusCode::UNAUTHORIZED);
    let before = server
        .get(&format!("/v1/api-keys/{kept_id}"), &admin)
        .await
        .json();
    assert!(
        before["last_used_at"].is_null(),
        "flushed before shutdown: {before}"
    );

    let stopped = server.terminate().await;
    assert!(
        stopped.status.success(),
        "exit {}\n{}",
        stopped.status,
        stopped.stderr
    );
    assert!(
        stopped.stderr.contains("stopped cleanly"),
        "{}",
        stopped.stderr
    );

    let server = Server::start(&db, &env).await;
    let after = server.get(&format!("/v1/api-keys/{kept_id}"), &admin).await;
    assert_eq!(
        after.status,
        StatusCode::OK,
        "the admin key must survive a restart: {}",
        after.text
    );
    let after = after.json();
    assert!(
        after["last_used_at"].is_string(),
        "last use not flushed at shutdown: {after}"
    );
    assert_eq!(after["status"], "active");
    assert_eq!(server.authz(&kept).await, StatusCode::OK);
    assert_eq!(server.authz(&revoked).await, StatusCode::UNAUTHORIZED);
    let r = server
        .get(&format!("/v1/api-keys/{revoked_id}"), &admin)
        .await
        .json();
    assert_eq!(r["status"], "revoked", "{r}");
    let stopped = server.terminate().await;
    assert!(
        stopped.status.success(),
        "exit {}\n{}",
        stopped.status,
        stopped.stderr
    );
}
on_both_backends!(restart, survives_restart);

// ----- 4. `keyplane admin-key rotate` while the server runs -----

async fn admin_key_rotation(backend: Backend) {
    let Some(db) = TestDb::fresh(backend).await else {
        return;
    };
    let mut server = Server::start(&db, &[]).await;
    let old = server.banner_admin_key().await;
    assert_eq!(
        server.get("/v1/api-keys", &old).await.status,
        StatusCode::OK
    );

    let out = cli(
        Some(&db),
        &["admin-key", "rotate", "--database", &db.url],
        &[],
    )
    .await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "exit {}\n{stderr}", out.status);
    let printed = admin_keys_in(&stderr);
    assert_eq!(
        printed.len(),
        1,
        "expected one new admin key on stderr:\n{stderr}"
    );
    let new = &printed[0];
    assert_ne!(new, &old);
    assert!(
        !stdout.contains(new.as_str()),
        "the new key belongs on stderr only"
    );

    // The running server refuses the old key on the very next request.
    assert_eq!(
        server.get("/v1/api-keys", &old).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(server.get("/v1/api-keys", new).await.status, StatusCode::OK);

    let stopped = server.terminate().await;
    assert!(
        stopped.status.success(),
        "exit {}\n{}",
        stopped.status,
        stopped.stderr
    );
    assert!(
        !stopped.stderr.contains(new.as_str()),
        "the server must not log the new key"
    );
}
on_both_backends!(admin_key_rotate, admin_key_rotation);

// ----- 5. the activity chain: edits and deletions are detected -----

/// Runs one statement on the test database directly; returns the rows it changed.
async fn sql(db: &TestDb, statement: &str, bind: Option<&str>) -> u64 {
    use sqlx::Connection;
    match db.backend {
        Backend::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&db.url)
                .await
                .expect("open SQLite");
            let mut q = sqlx::query(statement);
            if let Some(b) = bind {
                q = q.bind(b);
            }
            let n = q.execute(&mut c).await.expect(statement).rows_affected();
            c.close().await.expect("close");
            n
        }
        Backend::Postgres => {
            let mut c = sqlx::PgConnection::connect(&db.url)
                .await
                .expect("open PostgreSQL");
            let mut q = sqlx::query(statement);
            if let Some(b) = bind {
                q = q.bind(b);
            }
            let n = q.execute(&mut c).await.expect(statement).rows_affected();
            c.close().await.expect("close");
            n
        }
    }
}

/// `keyplane activity verify`: its exit code and report.
async fn verify_cli(db: &TestDb) -> (Option<i32>, Value) {
    let out = cli(
        Some(db),
        &["activity", "verify", "--database", &db.url, "--json"],
        &[],
    )
    .await;
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}):\n{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        )
    });
    (out.status.code(), report)
}

async fn verify_api(server: &Server, admin: &str) -> Value {
    let a = server.get("/v1/activity/verify", admin).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    a.json()
}

async fn activity_chain(backend: Backend) {
    let Some(db) = TestDb::fresh(backend).await else {
        return;
    };
    let mut server = Server::start(&db, &[]).await;
    let admin = server.banner_admin_key().await;
    // Events: the admin key, the service, two keys, a revocation.
    server.service(&admin).await;
    server.key(&admin, "one").await;
    let (two, _) = server.key(&admin, "two").await;
    server.revoke(&admin, &two).await;

    let (code, report) = verify_cli(&db).await;
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["intact"], true, "{report}");
    assert!(report["checked"].as_u64().unwrap() >= 5, "{report}");
    assert!(report["first_broken"].is_null());
    let api = verify_api(&server, &admin).await;
    assert_eq!(api["intact"], true, "{api}");
    assert_eq!(api["checked"], report["checked"]);

    let events = server.get("/v1/activity?limit=200", &admin).await.json();
    let second = events["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|e| e["seq"] == 2)
        .expect("event 2")
        .clone();
    let actor = second["actor"].as_str().expect("actor").to_string();
    assert_ne!(actor, "mallory");

    // Edit one stored event: both the CLI and the API point at it.
    assert_eq!(
        sql(
            &db,
            "UPDATE activity_events SET actor = 'mallory' WHERE seq = 2",
            None
        )
        .await,
        1
    );
    let (code, report) = verify_cli(&db).await;
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(report["intact"], false, "{report}");
    assert_eq!(report["first_broken"]["seq"], 2, "{report}");
    assert_eq!(report["first_broken"]["id"], second["id"], "{report}");
    assert!(
        report["first_broken"]["reason"]
            .as_str()
            .unwrap()
            .contains("edited"),
        "{report}"
    );
    let api = verify_api(&server, &admin).await;
    assert_eq!(api["intact"], false, "{api}");
    assert_eq!(api["first_broken"]["seq"], 2, "{api}");

    // Put it back exactly: intact again.
    assert_eq!(
        sql(
            &db,
            "UPDATE activity_events SET actor = $1 WHERE seq = 2",
            Some(&actor)
        )
        .await,
        1
    );
    let (code, report) = verify_cli(&db).await;
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(verify_api(&server, &admin).await["intact"], true);

    // Delete the newest event: the chain no longer reaches the recorded head.
    assert_eq!(
        sql(
            &db,
            "DELETE FROM activity_events WHERE seq = (SELECT MAX(seq) FROM activity_events)",
            None
        )
        .await,
        1
    );
    let (code, report) = verify_cli(&db).await;
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report["first_broken"]["reason"]
            .as_str()
            .unwrap()
            .contains("deleted"),
        "{report}"
    );
    assert_eq!(verify_api(&server, &admin).await["intact"], false);

    // Delete one from the middle: the gap is found where it is.
    assert_eq!(
        sql(&db, "DELETE FROM activity_events WHERE seq = 3", None).await,
        1
    );
    let (code, report) = verify_cli(&db).await;
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(report["first_broken"]["seq"], 4, "{report}");
    assert!(
        report["first_broken"]["reason"]
            .as_str()
            .unwrap()
            .contains("expected event number 3"),
        "{report}"
    );
    let api = verify_api(&server, &admin).await;
    assert_eq!(api["intact"], false, "{api}");
    assert_eq!(api["first_broken"]["seq"], 4, "{api}");

    let stopped = server.terminate().await;
    assert!(
        stopped.status.success(),
        "exit {}\n{}",
        stopped.status,
        stopped.stderr
    );
}
on_both_backends!(activity_verify, activity_chain);

// ----- 6. the CLI client -----

/// The secret after `key: ` in the CLI's human output.
fn printed_secret(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("key: "))
        .unwrap_or_else(|| panic!("no `key:` line in\n{stdout}"))
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_client() {
    let db = TestDb::fresh(Backend::Sqlite)
        .await
        .expect("SQLite is always available");
    let mut server = Server::start(&db, &[]).await;
    let admin = server.banner_admin_key().await;
    let url = server.base.clone();
    // The URL and the token, from the environment...
    let env = [
        ("KEYPLANE_URL", url.as_str()),
        ("KEYPLANE_TOKEN", admin.as_str()),
    ];
    // ...or from flags.
    let flags = ["--url", url.as_str(), "--token", admin.as_str()];
    let ok = |out: &Output| {
        assert!(
            out.status.success(),
            "exit {}\n{}{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    };

    let out = ok(&cli(
        None,
        &["services", "create", "ai-guard", "--scope", "ai-guard:read"],
        &env,
    )
    .await);
    assert!(out.lines().next().unwrap().starts_with("ID"), "{out}");
    assert!(out.contains("ai-guard:read"), "{out}");
    let out = ok(&cli(
        None,
        &[&["services", "list", "--json"][..], &flags[..]].concat(),
        &[],
    )
    .await);
    // The API's answer: a list page, `items` and `next_cursor`.
    let services: Value = serde_json::from_str(&out).expect("services JSON");
    let items = services["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{services}");
    assert_eq!(items[0]["name"], "ai-guard");
    assert!(services["next_cursor"].is_null(), "{services}");

    // Create with --json: the secret is in the output, once.
    let out = ok(&cli(
        None,
        &[
            "keys",
            "create",
            "--name",
            "x",
            "--scope",
            "ai-guard:read",
            "--json",
        ],
        &env,
    )
    .await);
    let created: Value = serde_json::from_str(&out).expect("key JSON");
    let secret = created["key"].as_str().expect("key").to_string();
    let id = created["id"].as_str().expect("id").to_string();
    assert!(secret.starts_with("kp_"), "{created}");
    assert_eq!(created["name"], "x");
    assert_eq!(server.authz(&secret).await, StatusCode::OK);

    // List: a table with a header and the key's id, never its secret.
    let out = ok(&cli(None, &[&["keys", "list"][..], &flags[..]].concat(), &[]).await);
    let header = out.lines().next().expect("a header");
    for column in ["ID", "NAME", "PREFIX", "SCOPES", "STATUS"] {
        assert!(header.contains(column), "{out}");
    }
    assert!(
        out.lines()
            .any(|l| l.starts_with(&id) && l.contains("active")),
        "{out}"
    );
    for piece in fragments(&secret) {
        assert!(!out.contains(piece), "the secret is in the list:\n{out}");
    }
    let out = ok(&cli(None, &["keys", "get", &id], &env).await);
    assert!(
        out.contains(&id) && !out.contains(fragments(&secret)[0]),
        "{out}"
    );

    // Revoke: refused at once.
    let out = ok(&cli(None, &["keys", "revoke", &id], &env).await);
    assert!(out.contains("revoked"), "{out}");
    assert_eq!(server.authz(&secret).await, StatusCode::UNAUTHORIZED);
    let out = ok(&cli(None, &["keys", "list", "--all"], &env).await);
    assert!(
        out.lines()
            .any(|l| l.starts_with(&id) && l.contains("revoked")),
        "{out}"
    );

    // Regenerate a fresh key (human output): the new secret works, the old one no longer.
    let out = ok(&cli(
        None,
        &["keys", "create", "--name", "y", "--scope", "ai-guard:read"],
        &env,
    )
    .await);
    let old = printed_secret(&out);
    let y_id = out
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .expect("the key's row")
        .to_string();
    assert_ne!(y_id, id);
    assert_eq!(server.authz(&old).await, StatusCode::OK);
    let out = ok(&cli(None, &["keys", "regenerate", &y_id], &env).await);
    let new = printed_secret(&out);
    assert!(new.starts_with("kp_") && new != old, "{out}");
    assert_eq!(server.authz(&old).await, StatusCode::UNAUTHORIZED);
    assert_eq!(server.authz(&new).await, StatusCode::OK);

    // No token: a clear error, non-zero exit, nothing on stdout.
    let out = cli(None, &["keys", "list"], &[("KEYPLANE_URL", url.as_str())]).await;
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("no credential") && err.contains("--token") && err.contains("KEYPLANE_TOKEN"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    // A wrong token: the server's refusal, non-zero exit.
    let out = cli(
        None,
        &[
            "keys",
            "list",
            "--url",
            &url,
            "--token",
            "kpa_wrong-but-long-enough-to-be-an-admin-key",
        ],
        &[],
    )
    .await;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("401"), "{}", text(&out.stderr));
    // No server there: says so.
    let out = cli(
        None,
        &[
            "services",
            "list",
            "--url",
            "http://127.0.0.1:1",
            "--token",
            &admin,
        ],
        &[],
    )
    .await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("cannot reach keyplane"),
        "{}",
        text(&out.stderr)
    );

    let stopped = server.terminate().await;
    assert!(
        stopped.status.success(),
        "exit {}\n{}",
        stopped.status,
        stopped.stderr
    );
}

// ----- keyplane healthcheck -----

/// `keyplane healthcheck` (the container's HEALTHCHECK): 0 and a `ready` line for a server that
/// is ready — asked at `--url`, or at the port the configuration names — and 1 with a line that
/// says why for a server that answers 503 and for a port nothing listens on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_exit_status() {
    let db = TestDb::fresh(Backend::Sqlite).await.expect("sqlite");
    let server = Server::start(&db, &[]).await;

    let out = cli(None, &["healthcheck", "--url", &server.base], &[]).await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("ready") && err.contains("answered 200 (ready)") && !err.contains("not ready"),
        "{err}"
    );

    // No --url: the port of KEYPLANE_LISTEN, on the loopback address when it listens on all.
    let port = server.base.rsplit(':').next().expect("port");
    let everywhere = format!("0.0.0.0:{port}");
    let out = cli(
        None,
        &["healthcheck"],
        &[("KEYPLANE_LISTEN", everywhere.as_str())],
    )
    .await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains(&format!("http://127.0.0.1:{port}/readyz")),
        "{err}"
    );
    // … or of the configuration file's `listen`.
    let file = db.dir.path().join("keyplane.toml");
    std::fs::write(&file, format!("listen = \"127.0.0.1:{port}\"\n")).expect("write config");
    let out = cli(
        None,
        &["healthcheck", "--config", file.to_str().expect("utf-8")],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // A server that answers 503 (what /readyz says when storage is gone).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let unready = format!("http://{}", listener.local_addr().expect("addr"));
    let answering = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut sock, _) = listener.accept().await.expect("accept");
        let mut buf = [0u8; 4096];
        let _ = sock.read(&mut buf).await;
        let body =
            r#"{"status":"unavailable","storage":"postgres","detail":"storage does not answer"}"#;
        let answer = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        sock.write_all(answer.as_bytes()).await.expect("write");
    });
    let out = cli(None, &["healthcheck", "--url", &unready], &[]).await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("not ready")
            && err.contains("answered 503")
            && err.contains("unavailable: storage does not answer"),
        "{err}"
    );
    answering.await.expect("the 503 server");

    // Nothing listening: 1, and the line names the URL and the refusal.
    let nothing = format!("http://127.0.0.1:{}", free_port());
    let out = cli(
        None,
        &["healthcheck", "--url", &nothing, "--timeout", "2"],
        &[],
    )
    .await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("not ready") && err.contains(&format!("{nothing}/readyz")),
        "{err}"
    );
    assert!(err.to_lowercase().contains("connect"), "{err}");
    server.terminate().await;
}
