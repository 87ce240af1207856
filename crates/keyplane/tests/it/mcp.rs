//! An MCP server behind keyplane, connected to by the official MCP Python SDK's client from
//! nothing but the server's URL (issue 14): 401 → protected resource metadata → authorization
//! server metadata → dynamic registration → authorize (the person signs in and consents) →
//! a token for the server → tool calls through the gateway; a tool needing a scope not granted
//! gets 403 `insufficient_scope` and the SDK steps up; refresh works; a replayed refresh token
//! kills the grant; revoking the connected app in the console ends access on the next call.
//! Access tokens live 20 s here (long enough for the steps before the refresh even on a loaded
//! machine; a token expiring mid-flow makes the SDK ask the person again), so the test waits
//! for the expiry before it checks the refresh.
//! The SDK and the example server (examples/mcp-server) come from `scripts/ensure-mcp.sh`.

use crate::support::{admin_console, password_link, redeem_link, PASSWORD};
use keyplane_testkit::reqwest::StatusCode;
use keyplane_testkit::{json, Backend, Options, TempDir};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The MCP SDK's Python, or `None` (and a line saying why the test is skipped).
fn mcp_python() -> Option<PathBuf> {
    let venv = std::env::var_os("KEYPLANE_MCP_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/keyplane-py-mcp")
        });
    let python = venv.join("bin/python");
    if python.exists() {
        Some(python)
    } else {
        eprintln!(
            "SKIPPED: the MCP end-to-end test needs the official MCP Python SDK; run `bash scripts/ensure-mcp.sh` (CI does)"
        );
        None
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_for_port(port: u16) {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("nothing listens on {port}");
}

const CONFIG: &str = r#"
[oauth]
registration = "open"
default_access_token_ttl_seconds = 20

[[services]]
name = "notes"
scopes = ["mcp:read", "mcp:write"]
resources = ["RESOURCE"]

[[routes]]
path = "/mcp"
scopes = ["mcp:read"]
"#;

/// Serves a client ID metadata document for `redirect` over HTTPS on 127.0.0.1, with a
/// certificate from `ca`; its URL.
async fn metadata_document_over_https(ca: &crate::tls::Ca) -> String {
    use keyplane_http::tls;
    let leaf = ca.local();
    let certs = tls::ServerCerts::new(
        tls::certified_key(leaf.cert.as_bytes(), "cert", leaf.key.as_bytes(), "key").unwrap(),
    );
    let config = tls::server_config(certs).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/client.json", listener.local_addr().unwrap());
    let doc = json!({
        "client_id": url,
        "client_name": "MCP SDK test client (metadata document)",
        "redirect_uris": [REDIRECT],
        "token_endpoint_auth_method": "none",
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
    });
    let router = axum::Router::new().route(
        "/client.json",
        axum::routing::get(move || {
            let doc = doc.clone();
            async move { axum::Json(doc) }
        }),
    );
    tokio::spawn(keyplane_http::edge::serve(
        listener,
        router,
        std::sync::Arc::new(keyplane_http::edge::EdgeConfig::default()),
        keyplane_http::edge::ConnectionLimit::new(100),
        Some(config),
        std::future::pending(),
    ));
    url
}

/// The redirect URI the SDK's client registers (the test's "browser" never opens it).
const REDIRECT: &str = "http://127.0.0.1:9/callback";

/// How the client identifies itself.
#[derive(Clone, Copy, PartialEq)]
enum Identity {
    /// RFC 7591 dynamic registration.
    Registered,
    /// A client ID metadata document, served over HTTPS on 127.0.0.1.
    MetadataDocument,
}

async fn sdk_connects(backend: Backend, identity: Identity) {
    let Some(python) = mcp_python() else {
        return;
    };
    let root = workspace_root();
    // The example MCP server, on a port only the gateway talks to.
    let mcp_port = free_port();
    let gw_port = free_port();
    let resource = format!("http://127.0.0.1:{gw_port}/mcp");
    let mut server = tokio::process::Command::new(&python)
        .arg(root.join("examples/mcp-server/server.py"))
        .args(["--port", &mcp_port.to_string(), "--resource", &resource])
        .kill_on_drop(true)
        .stdout(Stdio::null())
        .spawn()
        .expect("start the example MCP server");
    wait_for_port(mcp_port).await;

    let dir = TempDir::new();
    let config = dir.path().join("keyplane.toml");
    std::fs::write(&config, CONFIG.replace("RESOURCE", &resource)).unwrap();
    let mut opts = Options::default()
        .env("KEYPLANE_CONFIG", config.to_str().unwrap())
        .env("KEYPLANE_GATEWAY_LISTEN", &format!("127.0.0.1:{gw_port}"))
        .env("KEYPLANE_UPSTREAM", &format!("http://127.0.0.1:{mcp_port}"))
        .env("KEYPLANE_GATEWAY_RESOURCE", &resource);
    let mut metadata_url = String::new();
    if identity == Identity::MetadataDocument {
        // The document's server has a certificate from a private CA keyplane is told to trust,
        // on a loopback address keyplane is allowed to reach (a test's allowance).
        let ca = crate::tls::Ca::new("metadata documents");
        let ca_file = dir.path().join("metadata-ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        metadata_url = metadata_document_over_https(&ca).await;
        opts = opts
            .env("KEYPLANE_CLIENT_METADATA_ALLOW_LOOPBACK", "true")
            .env(
                "KEYPLANE_CLIENT_METADATA_CA_CERT",
                ca_file.to_str().unwrap(),
            );
    }
    let Some(app) = keyplane_testkit::spawn_app_with(backend, opts).await else {
        return;
    };

    // The person: a member with a console password.
    let email = "mo@example.com";
    let r = app
        .post(
            "/v1/members",
            &app.admin_key,
            json!({ "email": email, "role": "member" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let member = r.json()["id"].as_str().unwrap().to_string();
    let (mut admin, csrf) = admin_console(&app).await;
    let link = password_link(&mut admin, &csrf, &member).await;
    assert_eq!(redeem_link(&app, &link).await, StatusCode::SEE_OTHER);

    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(&python)
            .arg(root.join("interop-tests/mcp_client.py"))
            .env("MCP_URL", &resource)
            .env("KEYPLANE_URL", &app.base)
            .env("MEMBER_EMAIL", email)
            .env("MEMBER_PASSWORD", PASSWORD)
            .env("ADMIN_KEY", &app.admin_key)
            .env("CLIENT_METADATA_URL", &metadata_url)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the MCP client finishes")
    .expect("run the MCP client");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "the MCP client failed:\n{stdout}\n{stderr}"
    );
    let steps: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let step = |name: &str| {
        steps
            .iter()
            .find(|s| s["step"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no step {name} in:\n{stdout}\n{stderr}"))
    };

    // Connected after one consent, with the scope the gateway's challenge named.
    let connected = step("connected");
    assert_eq!(connected["consents"], 1, "{connected}");
    assert_eq!(connected["scope"], "mcp:read", "{connected}");
    assert_eq!(
        connected["scopes_asked"],
        json!(["mcp:read"]),
        "{connected}"
    );
    let client_id = connected["client_id"].as_str().unwrap().to_string();
    match identity {
        Identity::Registered => {
            assert!(
                client_id.starts_with("app_"),
                "registered dynamically: {client_id}"
            )
        }
        Identity::MetadataDocument => assert_eq!(client_id, metadata_url, "the document's URL"),
    }
    // The token is for the MCP server (RFC 8707), for the person.
    assert_eq!(connected["active"], true, "{connected}");
    assert_eq!(connected["aud"], resource.as_str(), "{connected}");
    assert_eq!(connected["sub"], member.as_str(), "{connected}");
    assert_eq!(step("tools")["names"], json!(["add_note", "read_notes"]));
    let read = step("read_notes");
    assert_eq!(read["error"], false, "{read}");
    assert!(
        read["text"]
            .to_string()
            .contains("keyplane protects this server"),
        "{read}"
    );
    // add_note needed mcp:write: a 403 insufficient_scope, a second consent, then success.
    let added = step("add_note");
    assert_eq!(added["error"], false, "{added}");
    assert_eq!(
        added["consents"], 2,
        "step-up asked the person again: {added}"
    );
    assert!(
        added["scope"].as_str().unwrap().contains("mcp:write"),
        "{added}"
    );
    // Refresh, without the person.
    let refreshed = step("refreshed");
    assert_eq!(refreshed["error"], false, "{refreshed}");
    assert_eq!(refreshed["consents"], 2, "{refreshed}");
    assert_eq!(refreshed["rotated"], true, "{refreshed}");
    // A replayed refresh token: refused, and the grant's live token stops.
    let replayed = step("replayed");
    assert_eq!(replayed["status"], 400, "{replayed}");
    assert_eq!(replayed["error"], "invalid_grant", "{replayed}");
    assert_eq!(replayed["call_status"], 401, "{replayed}");
    // Connected again, then revoked in the console: the next call is refused.
    assert_eq!(step("reconnected")["error"], false);
    let revoked = step("revoked");
    assert_eq!(revoked["console_status"], 200, "{revoked}");
    assert_eq!(revoked["call_status"], 401, "{revoked}");
    assert!(
        revoked["challenge"]
            .as_str()
            .unwrap()
            .contains(&format!("resource_metadata=\"http://127.0.0.1:{gw_port}/.well-known/oauth-protected-resource/mcp\"")),
        "{revoked}"
    );

    // What keyplane recorded: the registration, the consents, the replay's revocation.
    let events = app
        .get("/v1/activity?limit=200", &app.admin_key)
        .await
        .json();
    let actions: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    let first_sight = match identity {
        Identity::Registered => "oauth_app.register",
        Identity::MetadataDocument => "oauth_app.discover",
    };
    for a in [first_sight, "oauth_grant.consent", "oauth_grant.revoke"] {
        assert!(actions.contains(&a), "{a} in {actions:?}");
    }
    let grants = app.get("/v1/oauth-grants", &app.admin_key).await.json();
    let reasons: Vec<&str> = grants["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|g| g["revoked_reason"].as_str())
        .collect();
    assert!(reasons.contains(&"refresh_token_reuse"), "{grants}");
    assert!(
        reasons.contains(&"member"),
        "revoked in the console by its member: {grants}"
    );
    let _ = server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_mcp_sdk_registers_and_connects_sqlite() {
    sdk_connects(Backend::Sqlite, Identity::Registered).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_mcp_sdk_registers_and_connects_postgres() {
    sdk_connects(Backend::Postgres, Identity::Registered).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_mcp_sdk_connects_with_a_metadata_document_sqlite() {
    sdk_connects(Backend::Sqlite, Identity::MetadataDocument).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_mcp_sdk_connects_with_a_metadata_document_postgres() {
    sdk_connects(Backend::Postgres, Identity::MetadataDocument).await;
}
