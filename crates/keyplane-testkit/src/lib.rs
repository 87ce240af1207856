//! Test helpers. [`spawn_app`] starts the real server (the same assembly `keyplane serve`
//! uses) on 127.0.0.1 port 0 against a fresh database: a SQLite file in a temporary folder, or a
//! PostgreSQL database with a random name that is dropped afterwards.
//!
//! PostgreSQL tests run when `KEYPLANE_TEST_DATABASE_URL` names a server (CI sets it). Without
//! it they are skipped, and the first one to be skipped says so on the terminal.

use keyplane::config::{Config, ConfigFlags};
use keyplane::server::{self, Running};
use keyplane_core::domain::secret::random_base62;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Once;

pub use reqwest;
pub use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A folder under the system's temporary directory, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let p = std::env::temp_dir().join(format!("keyplane-test-{}", random_base62(12)));
        std::fs::create_dir_all(&p).expect("create a temporary folder");
        TempDir(p)
    }
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh database for one test.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    pub dir: TempDir,
    pg_name: Option<(String, String)>,
}

static SKIP_NOTICE: Once = Once::new();

/// The server URL PostgreSQL tests use, or `None` (and a notice on the terminal) when unset.
pub fn postgres_admin_url() -> Option<String> {
    match std::env::var("KEYPLANE_TEST_DATABASE_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            SKIP_NOTICE.call_once(|| {
                // Written to the process's stderr directly, past the test harness's capture.
                let _ = writeln!(
                    std::io::stderr(),
                    "\nSKIPPED: the PostgreSQL variants of keyplane's tests, because KEYPLANE_TEST_DATABASE_URL is not set.\n         Set it to a server where databases may be created, e.g. postgres://postgres@127.0.0.1:5432/test (CI does).\n"
                );
            });
            None
        }
    }
}

fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let cut = base
        .rfind('/')
        .filter(|i| *i > base.find("://").map_or(0, |s| s + 2))
        .unwrap_or(base.len());
    let mut out = format!("{}/{}", &base[..cut], name);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

impl TestDb {
    /// A fresh database, or `None` when the backend is PostgreSQL and none is configured.
    pub async fn fresh(backend: Backend) -> Option<TestDb> {
        let dir = TempDir::new();
        match backend {
            Backend::Sqlite => Some(TestDb {
                backend,
                url: format!("sqlite://{}", dir.path().join("keyplane.db").display()),
                dir,
                pg_name: None,
            }),
            Backend::Postgres => {
                let admin = postgres_admin_url()?;
                let name = format!("keyplane_test_{}", random_base62(12).to_lowercase());
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&admin).await.expect(
                    "KEYPLANE_TEST_DATABASE_URL is set but PostgreSQL does not answer there",
                );
                sqlx::query(&format!("CREATE DATABASE \"{name}\""))
                    .execute(&mut conn)
                    .await
                    .expect("create a test database");
                let _ = conn.close().await;
                Some(TestDb {
                    backend,
                    url: with_database(&admin, &name),
                    dir,
                    pg_name: Some((admin, name)),
                })
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin, name)) = self.pg_name.take() {
            // Drop runs outside async code: use a short-lived runtime on its own thread.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                rt.block_on(async {
                    use sqlx::Connection;
                    let mut conn = sqlx::PgConnection::connect(&admin).await.ok()?;
                    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                        .execute(&mut conn)
                        .await
                        .ok()?;
                    conn.close().await.ok()
                })
            })
            .join();
        }
    }
}

/// Options for [`spawn_app_with`]: extra `KEYPLANE_*` variables, as an operator would set them.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub env: HashMap<String, String>,
}

impl Options {
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.insert(k.into(), v.into());
        self
    }
}

/// A running server and a client for it.
pub struct TestApp {
    pub base: String,
    pub admin_key: String,
    pub pepper: String,
    pub http: reqwest::Client,
    pub db: TestDb,
    running: Option<Running>,
    env: HashMap<String, String>,
}

/// An HTTP answer, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub async fn spawn_app(backend: Backend) -> Option<TestApp> {
    spawn_app_with(backend, Options::default()).await
}

pub async fn spawn_app_with(backend: Backend, opts: Options) -> Option<TestApp> {
    let db = TestDb::fresh(backend).await?;
    let admin_key = format!("kpa_test_admin_{}", random_base62(40));
    let pepper = random_base62(48);
    let mut env: HashMap<String, String> = HashMap::from([
        ("KEYPLANE_DATABASE".into(), db.url.clone()),
        ("KEYPLANE_LISTEN".into(), "127.0.0.1:0".into()),
        ("KEYPLANE_ADMIN_KEY".into(), admin_key.clone()),
        ("KEYPLANE_PEPPER".into(), pepper.clone()),
        ("KEYPLANE_FLUSH_INTERVAL_MS".into(), "100".into()),
        (
            "KEYPLANE_DATA_DIR".into(),
            db.dir.path().display().to_string(),
        ),
    ]);
    env.extend(opts.env);
    let mut app = TestApp {
        base: String::new(),
        admin_key,
        pepper,
        http: reqwest::Client::new(),
        db,
        running: None,
        env,
    };
    app.start().await;
    Some(app)
}

impl TestApp {
    async fn start(&mut self) {
        let config =
            Config::load(&ConfigFlags::default(), None, &self.env).expect("test configuration");
        let running = server::start(&config, std::future::pending())
            .await
            .expect("start keyplane");
        // https:// when the configuration gives the API listener a certificate.
        self.base = running.base_url();
        self.running = Some(running);
    }

    /// Starts another node on the same database, with the same pepper and admin key, as a
    /// second `keyplane serve` of one deployment would run. The first node keeps owning the
    /// database (it is dropped with the first node); the second gets a data folder of its own.
    /// Several nodes share one database on PostgreSQL only.
    pub async fn spawn_second_node(&self) -> TestApp {
        let db = TestDb {
            backend: self.db.backend,
            url: self.db.url.clone(),
            dir: TempDir::new(),
            pg_name: None,
        };
        let mut env = self.env.clone();
        env.insert(
            "KEYPLANE_DATA_DIR".into(),
            db.dir.path().display().to_string(),
        );
        let mut node = TestApp {
            base: String::new(),
            admin_key: self.admin_key.clone(),
            pepper: self.pepper.clone(),
            http: reqwest::Client::new(),
            db,
            running: None,
            env,
        };
        node.start().await;
        node
    }

    /// Stops the server cleanly (flushing batched writes) and starts it again on the same data.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.start().await;
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await.expect("clean shutdown");
        }
    }

    pub fn app(&self) -> &std::sync::Arc<keyplane_core::Keyplane> {
        &self.running.as_ref().expect("running").app
    }

    /// The gateway's base URL, when the configuration runs one.
    pub fn gateway_base(&self) -> Option<String> {
        self.running.as_ref()?.gateway_url()
    }

    /// The metrics listener's base URL, when the configuration sets `metrics_listen`.
    pub fn metrics_base(&self) -> Option<String> {
        let addr = self.running.as_ref()?.metrics_addr?;
        Some(format!("http://{addr}"))
    }

    pub fn backend(&self) -> Backend {
        self.db.backend
    }

    /// Writes batched last-used times and refusals now.
    pub async fn flush(&self) {
        self.app().flush().await.expect("flush");
    }

    pub async fn call(
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
        let resp = req.send().await.expect("request");
        Answer {
            status: resp.status(),
            headers: resp.headers().clone(),
            text: resp.text().await.expect("body"),
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Answer {
        self.call(Method::GET, path, Some(token), None).await
    }

    /// The value of one unlabelled metric in `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let a = self.call(Method::GET, "/metrics", None, None).await;
        a.text
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Answer {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    /// Registers a service as the admin key; panics unless it is created.
    pub async fn service(&self, name: &str, scopes: &[&str]) {
        let a = self
            .post(
                "/v1/services",
                &self.admin_key.clone(),
                json!({ "name": name, "scopes": scopes }),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    }

    /// Creates an API key with `body` using `token`; returns (id, secret).
    pub async fn key(&self, token: &str, body: Value) -> (String, String) {
        let a = self.post("/v1/api-keys", token, body).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
        let v = a.json();
        (
            v["id"].as_str().unwrap().into(),
            v["key"].as_str().unwrap().into(),
        )
    }

    /// The status `/v1/authz` answers for `token` needing `scope` (space-separated).
    pub async fn authz(&self, token: Option<&str>, scope: Option<&str>) -> Answer {
        let path = match scope {
            Some(s) => format!("/v1/authz?scope={}", s.replace(' ', "%20")),
            None => "/v1/authz".into(),
        };
        self.call(Method::GET, &path, token, None).await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // The server task ends with the test's runtime; the database is dropped after.
        self.running.take();
    }
}
