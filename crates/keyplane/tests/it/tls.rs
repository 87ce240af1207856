//! Issue 13, TLS: the API and the gateway listeners over HTTPS (rustls), certificates reloaded
//! on change and on SIGHUP without a restart, a stalled handshake cut off by its own deadline,
//! the CLI with `--ca-cert`, and the gateway to an HTTPS upstream: accepted with its CA,
//! refused (502) with a wrong certificate. Every certificate is made here, by rcgen.

use crate::gateway::RULES;
use keyplane_testkit::reqwest::{self, StatusCode};
use keyplane_testkit::{json, spawn_app_with, Backend, Options, TempDir, TestApp};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ----- certificates -----

/// A certificate authority made for one test.
pub(crate) struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

/// A server certificate (PEM) and its private key (PEM).
#[derive(Clone)]
pub(crate) struct Leaf {
    pub cert: String,
    pub key: String,
}

impl Ca {
    pub(crate) fn new(name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("keyplane test CA {name}"),
        );
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    pub(crate) fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate for `names` (DNS names or IP addresses), signed by this CA.
    pub(crate) fn leaf(&self, names: &[&str]) -> Leaf {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A certificate for this machine's loopback address (and `localhost`).
    pub(crate) fn local(&self) -> Leaf {
        self.leaf(&["127.0.0.1", "localhost"])
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Writes `leaf` as `cert.pem` and `key.pem` in `dir`.
fn write_leaf(dir: &Path, leaf: &Leaf) -> (PathBuf, PathBuf) {
    (
        write(dir, "cert.pem", &leaf.cert),
        write(dir, "key.pem", &leaf.key),
    )
}

/// A client that trusts only `ca` (no built-in roots).
pub(crate) fn client_trusting(ca: &Ca) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Whether a fresh connection from a client trusting only `ca` gets `/healthz` answered.
async fn trusted_by(ca: &Ca, base: &str) -> bool {
    client_trusting(ca)
        .get(format!("{base}/healthz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == StatusCode::OK)
}

fn tls_options(cert: &Path, key: &Path) -> Options {
    Options::default()
        .env("KEYPLANE_TLS_CERT", cert.to_str().unwrap())
        .env("KEYPLANE_TLS_KEY", key.to_str().unwrap())
}

// ----- the API over HTTPS -----

async fn api_over_https(backend: Backend) {
    let ca = Ca::new("api");
    let dir = TempDir::new();
    let (cert, key) = write_leaf(dir.path(), &ca.local());
    let Some(mut app) = spawn_app_with(backend, tls_options(&cert, &key)).await else {
        return;
    };
    assert!(app.base.starts_with("https://127.0.0.1:"), "{}", app.base);
    app.http = client_trusting(&ca);
    let admin = app.admin_key.clone();

    // With the CA: the API works, credentials and all.
    assert_eq!(
        app.call(reqwest::Method::GET, "/healthz", None, None)
            .await
            .status,
        StatusCode::OK
    );
    app.service("ai-guard", &["ai-guard:read"]).await;
    let (_, secret) = app
        .key(&admin, json!({ "name": "k", "scopes": ["ai-guard:read"] }))
        .await;
    assert_eq!(
        app.authz(Some(&secret), Some("ai-guard:read")).await.status,
        StatusCode::OK
    );

    // The issuer and every URL of the metadata follow the scheme.
    let meta = app
        .call(
            reqwest::Method::GET,
            "/.well-known/oauth-authorization-server",
            None,
            None,
        )
        .await
        .json();
    assert_eq!(meta["issuer"], app.base.as_str());
    for field in [
        "token_endpoint",
        "introspection_endpoint",
        "revocation_endpoint",
        "jwks_uri",
    ] {
        let url = meta[field]
            .as_str()
            .unwrap_or_else(|| panic!("no {field}: {meta}"));
        assert!(url.starts_with(&format!("{}/", app.base)), "{field}: {url}");
    }

    // Without the CA (the built-in roots only), the certificate is refused.
    let e = reqwest::Client::new()
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .expect_err("a certificate of an unknown CA was accepted");
    assert!(e.is_connect(), "{e:?}");
    assert!(format!("{e:?}").contains("UnknownIssuer"), "{e:?}");
    // With another CA, too.
    assert!(!trusted_by(&Ca::new("other"), &app.base).await);
    // Plain HTTP on the TLS listener gets no answer.
    let plain = app.base.replace("https://", "http://");
    assert!(reqwest::Client::new()
        .get(format!("{plain}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_over_https_sqlite() {
    api_over_https(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_over_https_postgres() {
    api_over_https(Backend::Postgres).await;
}

/// Bad certificate files stop the start with an error naming the file, and never a key.
#[tokio::test]
async fn bad_certificate_files_stop_the_start_naming_the_file() {
    let ca = Ca::new("bad");
    let dir = TempDir::new();
    let leaf = ca.local();
    let other = ca.local();
    let (cert, key) = write_leaf(dir.path(), &leaf);
    let other_key = write(dir.path(), "other-key.pem", &other.key);
    let garbage = write(dir.path(), "garbage.pem", "not a certificate\n");
    let missing = dir.path().join("missing.pem");
    let db = dir.path().join("keyplane.db");
    let start = |cert: &Path, key: &Path| {
        let env: std::collections::HashMap<String, String> = [
            ("KEYPLANE_DATABASE", format!("sqlite://{}", db.display())),
            ("KEYPLANE_LISTEN", "127.0.0.1:0".into()),
            ("KEYPLANE_DATA_DIR", dir.path().display().to_string()),
            ("KEYPLANE_TLS_CERT", cert.display().to_string()),
            ("KEYPLANE_TLS_KEY", key.display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let config = keyplane::config::Config::load(&Default::default(), None, &env).unwrap();
        async move {
            match keyplane::server::start(&config, std::future::pending()).await {
                Ok(_) => panic!("started with {env:?}"),
                Err(e) => format!("{e:#}"),
            }
        }
    };
    for (c, k, needle) in [
        (
            &missing,
            &key,
            format!("cannot read the TLS certificate file {}", missing.display()),
        ),
        (
            &cert,
            &missing,
            format!("cannot read the TLS private key file {}", missing.display()),
        ),
        (
            &garbage,
            &key,
            format!("{} holds no certificate", garbage.display()),
        ),
        (
            &cert,
            &garbage,
            format!("{} holds no private key", garbage.display()),
        ),
        (
            &cert,
            &other_key,
            format!(
                "the private key in {} does not belong to the certificate in {}",
                other_key.display(),
                cert.display()
            ),
        ),
    ] {
        let e = start(c, k).await;
        assert!(e.contains(&needle), "{e}\nexpected: {needle}");
        for secret in [&leaf.key, &other.key] {
            let body = secret.lines().nth(1).unwrap();
            assert!(!e.contains(body), "key material in the error: {e}");
        }
    }
    // A refused start wrote nothing: no database, no generated pepper.
    assert!(!db.exists());
    assert!(!dir.path().join("keyplane.pepper").exists());
}

// ----- reloading -----

/// A renewed certificate written over the files is served without a restart, within a couple
/// of seconds; a broken renewal (a key of another certificate) is not, and the certificate in
/// use stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_certificate_is_served_without_a_restart() {
    let (first, second) = (Ca::new("first"), Ca::new("second"));
    let dir = TempDir::new();
    let (cert, key) = write_leaf(dir.path(), &first.local());
    let app = spawn_app_with(Backend::Sqlite, tls_options(&cert, &key))
        .await
        .unwrap();
    assert!(trusted_by(&first, &app.base).await);
    assert!(!trusted_by(&second, &app.base).await);
    // A connection opened before the change keeps working after it.
    let kept = client_trusting(&first);
    assert!(kept
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .is_ok());

    // A half-done renewal: the new certificate with a key that is not its own. Refused.
    let renewed = second.local();
    std::fs::write(&cert, &renewed.cert).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        trusted_by(&first, &app.base).await,
        "a broken pair replaced the certificate"
    );

    // The key arrives: the new pair is served from the next handshake on.
    std::fs::write(&key, &renewed.key).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !trusted_by(&second, &app.base).await {
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!trusted_by(&first, &app.base).await);
    let a = kept
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(a.status(), StatusCode::OK);
}

/// Pads a PEM file to a fixed size (PEM readers skip the blank lines), so a renewal can be
/// written that looks unchanged from outside: same size, same inode, same modification time.
fn padded(text: &str) -> String {
    const SIZE: usize = 4096;
    assert!(text.len() < SIZE);
    format!("{text}{}", "\n".repeat(SIZE - text.len()))
}

fn overwrite_unnoticed(path: &Path, text: &str) {
    let before = std::fs::metadata(path).unwrap().modified().unwrap();
    std::fs::write(path, padded(text)).unwrap();
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(before).unwrap();
}

/// SIGHUP reloads the certificates even when the files look unchanged (the binary, a real
/// signal), and the listener stays up throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate() {
    let (first, second) = (Ca::new("first"), Ca::new("second"));
    let dir = TempDir::new();
    let leaf = first.local();
    let cert = write(dir.path(), "cert.pem", &padded(&leaf.cert));
    let key = write(dir.path(), "key.pem", &padded(&leaf.key));
    let server = Binary::start(
        dir.path(),
        &[
            ("KEYPLANE_TLS_CERT", cert.to_str().unwrap()),
            ("KEYPLANE_TLS_KEY", key.to_str().unwrap()),
        ],
        &first,
    )
    .await;
    assert!(trusted_by(&first, &server.base).await);

    let renewed = second.local();
    overwrite_unnoticed(&cert, &renewed.cert);
    overwrite_unnoticed(&key, &renewed.key);
    // The watcher sees no change ...
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        trusted_by(&first, &server.base).await,
        "{}",
        server.stderr()
    );
    // ... SIGHUP reads the files anyway.
    server.signal("-HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !trusted_by(&second, &server.base).await {
        assert!(
            Instant::now() < deadline,
            "not reloaded on SIGHUP\n{}",
            server.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!trusted_by(&first, &server.base).await);
    let log = server.stderr();
    assert!(log.contains("TLS certificate reloaded"), "{log}");
    assert!(!log.contains(renewed.key.lines().nth(1).unwrap()), "{log}");
}

/// `keyplane serve` as a child process, its stderr in a file.
struct Binary {
    child: std::process::Child,
    base: String,
    log: PathBuf,
}

impl Binary {
    async fn start(dir: &Path, env: &[(&str, &str)], ca: &Ca) -> Binary {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = dir.join("stderr.log");
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_keyplane"));
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("KEYPLANE_") {
                c.env_remove(k);
            }
        }
        let db = format!("sqlite://{}", dir.join("keyplane.db").display());
        c.args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--database",
            &db,
        ])
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
        let server = Binary {
            child: c.spawn().unwrap(),
            base: format!("https://127.0.0.1:{port}"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(server.stderr().contains("keyplane is listening")
            && trusted_by(ca, &server.base).await)
        {
            assert!(
                Instant::now() < deadline,
                "did not start:\n{}",
                server.stderr()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        server
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, which: &str) {
        let ok = std::process::Command::new("kill")
            .args([which, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {which}");
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ----- the handshake's deadline -----

/// A client that connects and never finishes its handshake — silent, or stalled half-way
/// through a ClientHello — is cut off at the handshake deadline (1 s here, while a request's
/// head may take 30 s), and the slot it held serves the next client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_times_out_and_frees_its_slot() {
    let ca = Ca::new("slow");
    let dir = TempDir::new();
    let (cert, key) = write_leaf(dir.path(), &ca.local());
    let app = spawn_app_with(
        Backend::Sqlite,
        tls_options(&cert, &key)
            .env("KEYPLANE_TLS_HANDSHAKE_TIMEOUT_SECONDS", "1")
            .env("KEYPLANE_HEADER_READ_TIMEOUT_SECONDS", "30")
            .env("KEYPLANE_MAX_CONNECTIONS", "1"),
    )
    .await
    .unwrap();
    let addr = app.base.trim_start_matches("https://").to_string();
    // A TLS record header announcing a 512-byte handshake message, and only 5 bytes of it.
    for sent in [
        &b""[..],
        &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03][..],
    ] {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(sent).await.unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 64];
        let r = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
        let took = started.elapsed();
        assert!(
            matches!(r, Ok(Ok(0)) | Ok(Err(_))),
            "sent {sent:?}: not closed ({r:?})"
        );
        assert!(
            took >= Duration::from_millis(800) && took < Duration::from_millis(3000),
            "sent {sent:?}: closed after {took:?}, expected about 1 s"
        );
    }

    // The only slot is held by a silent client; a real one waits for it, then is served.
    let silent = TcpStream::connect(&addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let r = client_trusting(&ca)
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_millis(5000),
        "served after {took:?}: the silent client should have held the slot about 1 s"
    );
    drop(silent);
}

// ----- the CLI -----

/// `keyplane services|keys … --url https://…` with `--ca-cert` (or `KEYPLANE_CA_CERT`) works;
/// without it the server's certificate is refused and the CLI says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_over_https_with_ca_cert() {
    let ca = Ca::new("cli");
    let dir = TempDir::new();
    let (cert, key) = write_leaf(dir.path(), &ca.local());
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());
    let app = spawn_app_with(Backend::Sqlite, tls_options(&cert, &key))
        .await
        .unwrap();
    let admin = app.admin_key.clone();
    let base = app.base.clone();
    let ca_path = ca_file.to_str().unwrap();

    let out = crate::binary::cli(
        None,
        &[
            "services",
            "create",
            "ai-guard",
            "--scope",
            "ai-guard:read",
            "--url",
            &base,
            "--token",
            &admin,
            "--ca-cert",
            ca_path,
            "--json",
        ],
        &[],
    )
    .await;
    assert!(out.status.success(), "{}", crate::binary::text(&out.stderr));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(created["name"], "ai-guard");

    let out = crate::binary::cli(
        None,
        &[
            "keys",
            "create",
            "--name",
            "k",
            "--scope",
            "ai-guard:read",
            "--json",
        ],
        &[
            ("KEYPLANE_URL", &base),
            ("KEYPLANE_TOKEN", &admin),
            ("KEYPLANE_CA_CERT", ca_path),
        ],
    )
    .await;
    assert!(out.status.success(), "{}", crate::binary::text(&out.stderr));
    let key: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(key["key"].as_str().unwrap().starts_with("kp_"));

    // Every network command group goes through the same client: each works over HTTPS with
    // the CA, and none without it.
    let config = write(dir.path(), "keyplane.toml", "# nothing declared\n");
    let config = config.to_str().unwrap();
    for args in [
        vec!["whoami"],
        vec!["orgs", "list"],
        vec!["projects", "list"],
        vec!["members", "list"],
        vec!["roles", "list"],
        vec!["services", "list"],
        vec!["keys", "list"],
        vec!["clients", "list"],
        vec!["activity", "query", "--limit", "1"],
        vec!["activity", "verify"],
        vec!["routes", "show"],
        vec!["apply", "--config", config, "--dry-run"],
    ] {
        let with_ca = [args.clone(), vec!["--json"]].concat();
        let out = crate::binary::cli(
            None,
            &with_ca,
            &[
                ("KEYPLANE_URL", &base),
                ("KEYPLANE_TOKEN", &admin),
                ("KEYPLANE_CA_CERT", ca_path),
            ],
        )
        .await;
        assert!(
            out.status.success(),
            "{args:?}: {}",
            crate::binary::text(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: no JSON ({e})"));
        let out = crate::binary::cli(
            None,
            &args,
            &[("KEYPLANE_URL", &base), ("KEYPLANE_TOKEN", &admin)],
        )
        .await;
        assert_eq!(out.status.code(), Some(2), "{args:?} without the CA");
        assert!(
            crate::binary::text(&out.stderr).contains("certificate"),
            "{args:?}: {}",
            crate::binary::text(&out.stderr)
        );
    }

    // No CA: refused, saying so.
    let out = crate::binary::cli(
        None,
        &["keys", "list", "--url", &base, "--token", &admin],
        &[],
    )
    .await;
    assert!(!out.status.success());
    let err = crate::binary::text(&out.stderr);
    assert!(
        err.contains("certificate") && err.contains("UnknownIssuer"),
        "{err}"
    );
    // A CA file that holds no certificate is named.
    let bogus = write(dir.path(), "bogus.pem", "nothing here\n");
    let out = crate::binary::cli(
        None,
        &[
            "keys",
            "list",
            "--url",
            &base,
            "--token",
            &admin,
            "--ca-cert",
            bogus.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert!(!out.status.success());
    let err = crate::binary::text(&out.stderr);
    assert!(
        err.contains(&format!("{} holds no certificate", bogus.display())),
        "{err}"
    );
}

// ----- the gateway -----

/// The gateway over HTTPS (its own certificate), forwarding to a plain upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_listener_over_https() {
    let ca = Ca::new("gateway");
    let dir = TempDir::new();
    let gw = TempDir::new();
    let (cert, key) = write_leaf(gw.path(), &ca.local());
    let up = crate::gateway::upstream().await;
    let config = write(dir.path(), "keyplane.toml", "# rules follow\n");
    let app = spawn_app_with(
        Backend::Sqlite,
        Options::default()
            .env("KEYPLANE_CONFIG", config.to_str().unwrap())
            .env("KEYPLANE_GATEWAY_LISTEN", "127.0.0.1:0")
            .env("KEYPLANE_UPSTREAM", &up)
            .env("KEYPLANE_GATEWAY_TLS_CERT", cert.to_str().unwrap())
            .env("KEYPLANE_GATEWAY_TLS_KEY", key.to_str().unwrap()),
    )
    .await
    .unwrap();
    // Only the gateway has a certificate: the API stays plain HTTP.
    assert!(app.base.starts_with("http://"), "{}", app.base);
    let gateway = app.gateway_base().unwrap();
    assert!(gateway.starts_with("https://"), "{gateway}");
    let secret = guard_key(&app, &config).await;

    let client = client_trusting(&ca);
    let r = client
        .post(format!("{gateway}/v1/text/guard"))
        .bearer_auth(&secret)
        .json(&json!({ "messages": [{ "role": "user", "content": "hi" }] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = client
        .post(format!("{gateway}/v1/text/guard"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(reqwest::Client::new()
        .get(format!("{gateway}/v1/text/guard"))
        .send()
        .await
        .is_err());
}

/// Registers ai-guard, writes the route rules, reloads them, and returns a key for them.
async fn guard_key(app: &TestApp, config: &Path) -> String {
    let admin = app.admin_key.clone();
    app.service("ai-guard", &["ai-guard:read"]).await;
    std::fs::write(config, RULES).unwrap();
    let a = app
        .call(
            reqwest::Method::POST,
            "/v1/admin/routes/reload",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    app.key(&admin, json!({ "name": "gw", "scopes": ["ai-guard:read"] }))
        .await
        .1
}

/// An HTTPS upstream: the example AI Guard behind keyplane's own edge with `leaf`.
async fn https_upstream(leaf: &Leaf) -> String {
    use keyplane_http::tls;
    let certs = tls::ServerCerts::new(
        tls::certified_key(leaf.cert.as_bytes(), "cert", leaf.key.as_bytes(), "key").unwrap(),
    );
    let config = tls::server_config(certs).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let edge = std::sync::Arc::new(keyplane_http::edge::EdgeConfig::default());
    let limit = keyplane_http::edge::ConnectionLimit::new(100);
    tokio::spawn(keyplane_http::edge::serve(
        listener,
        ai_guard_upstream::router(),
        edge,
        limit,
        Some(config),
        std::future::pending(),
    ));
    format!("https://{addr}")
}

async fn gateway_to(upstream: &str, ca_file: Option<&Path>, dir: &TempDir) -> (TestApp, String) {
    let config = write(dir.path(), "keyplane.toml", "# rules follow\n");
    let mut opts = Options::default()
        .env("KEYPLANE_CONFIG", config.to_str().unwrap())
        .env("KEYPLANE_GATEWAY_LISTEN", "127.0.0.1:0")
        .env("KEYPLANE_UPSTREAM", upstream);
    if let Some(ca) = ca_file {
        opts = opts.env("KEYPLANE_UPSTREAM_CA_CERT", ca.to_str().unwrap());
    }
    let app = spawn_app_with(Backend::Sqlite, opts).await.unwrap();
    let secret = guard_key(&app, &config).await;
    (app, secret)
}

async fn guard(app: &TestApp, secret: &str) -> (StatusCode, serde_json::Value, String) {
    let gateway = app.gateway_base().unwrap();
    let r = app
        .http
        .post(format!("{gateway}/v1/text/guard"))
        .bearer_auth(secret)
        .json(&json!({ "messages": [{ "role": "user", "content": "hi" }] }))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let ctype = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        ctype,
    )
}

/// An HTTPS upstream is reached when its certificate chains to the configured CA; with another
/// CA, with the built-in roots only, or with a certificate for another name it is refused: 502
/// problem+json saying why, and nothing is forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_with_its_ca_and_with_a_wrong_certificate() {
    let (right, wrong) = (Ca::new("upstream"), Ca::new("impostor"));
    let dir = TempDir::new();
    let right_file = write(dir.path(), "upstream-ca.pem", &right.pem());
    let wrong_file = write(dir.path(), "wrong-ca.pem", &wrong.pem());
    let upstream = https_upstream(&right.local()).await;

    // Its CA: forwarded, and the upstream saw the verified identity.
    let d = TempDir::new();
    let (app, secret) = gateway_to(&upstream, Some(&right_file), &d).await;
    let (status, body, _) = guard(&app, &secret).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Another CA; the built-in roots (which do not hold the test CA).
    for ca in [Some(wrong_file.as_path()), None] {
        let d = TempDir::new();
        let (app, secret) = gateway_to(&upstream, ca, &d).await;
        let (status, body, ctype) = guard(&app, &secret).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
        assert_eq!(ctype, "application/problem+json");
        assert!(
            body["type"].as_str().unwrap().ends_with("/upstream-tls"),
            "{body}"
        );
        let detail = body["detail"].as_str().unwrap();
        assert!(
            detail.contains(&upstream) && detail.contains("UnknownIssuer"),
            "{detail}"
        );
    }

    // The right CA, but a certificate for another host.
    let elsewhere = https_upstream(&right.leaf(&["upstream.example"])).await;
    let d = TempDir::new();
    let (app, secret) = gateway_to(&elsewhere, Some(&right_file), &d).await;
    let (status, body, _) = guard(&app, &secret).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("not valid for name"),
        "{body}"
    );
}

/// The gateway's refusal is logged with its reason (the binary's log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upstream_certificate_is_logged_with_the_reason() {
    let (right, api) = (Ca::new("upstream"), Ca::new("api"));
    let dir = TempDir::new();
    let upstream = https_upstream(&right.local()).await;
    let (cert, key) = write_leaf(dir.path(), &api.local());
    let gw_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Any valid credential may call /v1/*; the upstream's CA is not trusted (built-in roots).
    let config = write(
        dir.path(),
        "keyplane.toml",
        &format!(
            "gateway_listen = \"127.0.0.1:{gw_port}\"\nupstream = \"{upstream}\"\n\n[[routes]]\npath = \"/v1/*\"\n"
        ),
    );
    let admin = format!(
        "kpa_test_admin_{}",
        keyplane_core::domain::secret::random_base62(40)
    );
    let server = Binary::start(
        dir.path(),
        &[
            ("KEYPLANE_TLS_CERT", cert.to_str().unwrap()),
            ("KEYPLANE_TLS_KEY", key.to_str().unwrap()),
            ("KEYPLANE_CONFIG", config.to_str().unwrap()),
            ("KEYPLANE_ADMIN_KEY", &admin),
        ],
        &api,
    )
    .await;
    let http = client_trusting(&api);
    let created = http
        .post(format!("{}/v1/api-keys", server.base))
        .bearer_auth(&admin)
        .json(&json!({ "name": "gw" }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let created: serde_json::Value = created.json().await.unwrap();
    let secret = created["key"].as_str().unwrap();

    let r = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{gw_port}/v1/anything"))
        .bearer_auth(secret)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{text}");
    assert!(
        text.contains("UnknownIssuer"),
        "{text}\n--- stderr ---\n{}",
        server.stderr()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = server.stderr();
        if log.contains("the upstream's TLS connection was refused") {
            assert!(log.contains("UnknownIssuer"), "{log}");
            break;
        }
        assert!(Instant::now() < deadline, "no log line:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A DPoP proof sent through a gateway with TLS names its `https://` URL: accepted; one naming
/// the `http://` URL is refused. Over the API's own TLS the console's cookies are `Secure`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dpop_through_a_tls_gateway_and_secure_console_cookies() {
    let ca = Ca::new("dpop");
    let dir = TempDir::new();
    let certs = TempDir::new();
    let (cert, key) = write_leaf(certs.path(), &ca.local());
    let (app, _upstream) = crate::dpop::spawn_with_gateway(
        Backend::Sqlite,
        dir.path(),
        &[
            ("KEYPLANE_GATEWAY_TLS_CERT", cert.to_str().unwrap()),
            ("KEYPLANE_GATEWAY_TLS_KEY", key.to_str().unwrap()),
        ],
    )
    .await
    .unwrap();
    let dpop_key = crate::pkjwt::TestKey::es256("k1");
    let token = crate::dpop::bound_token(&app, &dpop_key, "jwt").await;
    let gw = app.gateway_base().unwrap();
    assert!(gw.starts_with("https://"), "{gw}");
    let url = format!("{gw}/v1/text/guard");
    let client = client_trusting(&ca);
    for (htu, expected) in [
        (url.clone(), StatusCode::OK),
        (url.replace("https://", "http://"), StatusCode::UNAUTHORIZED),
    ] {
        let r = client
            .post(&url)
            .header("Authorization", format!("DPoP {token}"))
            .header(
                "DPoP",
                crate::dpop::proof(&dpop_key, "POST", &htu, Some(&token)),
            )
            .json(&json!({ "messages": [{ "role": "user", "content": "hi" }] }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), expected, "htu {htu}");
    }
    drop(app);

    // The console over the API's own TLS.
    let (cert, key) = write_leaf(certs.path(), &ca.local());
    let mut app = spawn_app_with(Backend::Sqlite, tls_options(&cert, &key))
        .await
        .unwrap();
    app.http = client_trusting(&ca);
    let a = app
        .call(reqwest::Method::GET, "/console/sign-in", None, None)
        .await;
    assert_eq!(a.status, StatusCode::OK);
    let cookies: Vec<&str> = a
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert!(!cookies.is_empty());
    for c in cookies {
        assert!(c.ends_with("; Secure"), "{c}");
    }
}

/// `keyplane healthcheck` over HTTPS: ready with `--ca-cert`, also at the default URL that
/// `KEYPLANE_TLS_CERT` makes `https://`; not ready (1, naming the certificate problem) without
/// the CA, since the server's certificate is always checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_over_https() {
    let ca = Ca::new("healthcheck");
    let dir = TempDir::new();
    let (cert, key) = write_leaf(dir.path(), &ca.local());
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());
    let app = spawn_app_with(Backend::Sqlite, tls_options(&cert, &key))
        .await
        .unwrap();
    let ca_path = ca_file.to_str().unwrap();
    let base = app.base.clone();
    assert!(base.starts_with("https://"), "{base}");

    let out = crate::binary::cli(
        None,
        &["healthcheck", "--url", &base, "--ca-cert", ca_path],
        &[],
    )
    .await;
    let err = crate::binary::text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("answered 200 (ready)"), "{err}");

    // The default URL: the configured port, https:// because a certificate is configured.
    let listen = base.trim_start_matches("https://").to_string();
    let out = crate::binary::cli(
        None,
        &["healthcheck", "--ca-cert", ca_path],
        &[
            ("KEYPLANE_LISTEN", listen.as_str()),
            ("KEYPLANE_TLS_CERT", cert.to_str().unwrap()),
        ],
    )
    .await;
    let err = crate::binary::text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains(&format!("https://{listen}/readyz")), "{err}");

    // Without the CA the certificate is not trusted: not ready, and the line says why.
    let out = crate::binary::cli(None, &["healthcheck", "--url", &base], &[]).await;
    let err = crate::binary::text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("not ready") && err.to_lowercase().contains("certificate"),
        "{err}"
    );
}
