//! Declarative configuration (`[[orgs]]`, `[[projects]]`, `[[services]]`, `[[roles]]`,
//! `[[members]]`, `[[clients]]` next to `[[routes]]`), and a first start that never loses the
//! admin key.

use crate::gateway::upstream;
use keyplane::config::{Config, ConfigFlags};
use keyplane::server;
use keyplane_core::domain::secret::SecretFormat;
use keyplane_testkit::reqwest::StatusCode;
use keyplane_testkit::{json, Backend, Options, TempDir, TestApp, TestDb};
use std::collections::HashMap;
use std::path::Path;

const DECLARED: &str = r#"
[[orgs]]
name = "acme"

[[projects]]
org = "acme"
name = "payments"

[[services]]
name = "ai-guard"
description = "AI Guard"
scopes = ["ai-guard:read", "ai-guard:write"]

[[roles]]
org = "acme"
name = "GUARD-READER"
permissions = ["activity:read"]
scopes = ["ai-guard:read"]

[[members]]
org = "acme"
email = "ana@example.com"
role = "admin"

[[clients]]
org = "acme"
project = "payments"
name = "guard-caller"
scopes = ["ai-guard:read"]
secret_file = "guard-caller.secret"

[[clients]]
org = "acme"
project = "payments"
name = "generated"
scopes = ["ai-guard:read"]
secret_file = "generated.secret"
generate_secret = true

[[routes]]
methods = ["POST"]
path = "/v1/text/guard"
scopes = ["ai-guard:read"]

[[routes]]
methods = ["DELETE"]
path = "/v1/text/guard"
scopes = ["ai-guard:write"]
"#;

async fn org_id(app: &TestApp) -> String {
    let orgs = app.get("/v1/orgs", &app.admin_key).await.json();
    orgs["items"]
        .as_array()
        .or(orgs.as_array())
        .unwrap()
        .iter()
        .find(|o| o["name"] == "acme")
        .unwrap_or_else(|| panic!("no acme in {orgs}"))["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn client_id(app: &TestApp, name: &str) -> String {
    let org = org_id(app).await;
    let list = app
        .get(&format!("/v1/oauth-clients?org_id={org}"), &app.admin_key)
        .await
        .json();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no client {name} in {list}"))["client_id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn token(app: &TestApp, id: &str, secret: &str, scope: &str) -> (StatusCode, String) {
    let r = app
        .http
        .post(format!("{}/v1/oauth/token", app.base))
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials"), ("scope", scope)])
        .send()
        .await
        .unwrap();
    let status = r.status();
    let v: serde_json::Value = r.json().await.unwrap();
    (
        status,
        v["access_token"].as_str().unwrap_or_default().to_string(),
    )
}

async fn guard(app: &TestApp, method: &str, token: Option<&str>) -> StatusCode {
    let gw = app.gateway_base().expect("the gateway runs");
    let mut r = app
        .http
        .request(method.parse().unwrap(), format!("{gw}/v1/text/guard"))
        .json(&json!({ "messages": [{ "role": "user", "content": "hello" }] }));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r.send().await.unwrap().status()
}

/// The newest activity event's sequence number.
async fn head(app: &TestApp) -> i64 {
    app.flush().await;
    let v = app.get("/v1/activity?limit=1", &app.admin_key).await.json();
    v["items"][0]["seq"].as_i64().unwrap()
}

/// The actions of the events after `seq`.
async fn actions_after(app: &TestApp, seq: i64) -> Vec<String> {
    app.flush().await;
    let v = app
        .get("/v1/activity?limit=200", &app.admin_key)
        .await
        .json();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["seq"].as_i64().unwrap() > seq)
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect()
}

/// `keyplane apply --config FILE [--dry-run]`, the binary, against the running server; its
/// standard output.
async fn cli_apply(app: &TestApp, config: &Path, dry_run: bool) -> String {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_keyplane"));
    cmd.arg("apply")
        .arg("--config")
        .arg(config)
        .args(["--url", &app.base])
        .env("KEYPLANE_TOKEN", &app.admin_key);
    if dry_run {
        cmd.arg("--dry-run");
    }
    let out = cmd.output().await.unwrap();
    assert!(
        out.status.success(),
        "keyplane apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

async fn declared_first_start(backend: Backend) {
    let dir = TempDir::new();
    let secret = SecretFormat::new("kps_").unwrap().generate();
    std::fs::write(
        dir.path().join("guard-caller.secret"),
        format!("{}\n", secret.expose()),
    )
    .unwrap();
    let config = dir.path().join("keyplane.toml");
    std::fs::write(&config, DECLARED).unwrap();
    let up = upstream().await;
    let Some(mut app) = keyplane_testkit::spawn_app_with(
        backend,
        Options::default()
            .env("KEYPLANE_CONFIG", config.to_str().unwrap())
            .env("KEYPLANE_GATEWAY_LISTEN", "127.0.0.1:0")
            .env("KEYPLANE_UPSTREAM", &up),
    )
    .await
    else {
        return;
    };

    // The routes name the scopes of a service declared in the same file: they protect the
    // upstream from the first start.
    assert_eq!(guard(&app, "POST", None).await, StatusCode::UNAUTHORIZED);
    let id = client_id(&app, "guard-caller").await;
    let (status, t) = token(&app, &id, secret.expose(), "ai-guard:read").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(guard(&app, "POST", Some(&t)).await, StatusCode::OK);
    assert_eq!(
        guard(&app, "DELETE", Some(&t)).await,
        StatusCode::FORBIDDEN,
        "the client holds ai-guard:read only"
    );
    // The generated secret was written once, owner-only, and it works.
    let generated_file = dir.path().join("generated.secret");
    assert_eq!(mode(&generated_file), 0o600);
    let generated = std::fs::read_to_string(&generated_file).unwrap();
    let gid = client_id(&app, "generated").await;
    assert_eq!(
        token(&app, &gid, generated.trim(), "ai-guard:read").await.0,
        StatusCode::OK
    );
    // The role and the member exist, in the declared organization.
    let org = org_id(&app).await;
    let roles = app
        .get(&format!("/v1/roles?org_id={org}"), &app.admin_key)
        .await;
    assert!(roles.text.contains("GUARD-READER"), "{}", roles.text);
    let members = app
        .get(&format!("/v1/members?org_id={org}"), &app.admin_key)
        .await;
    assert!(members.text.contains("ana@example.com"), "{}", members.text);

    // A second start changes nothing and records no event.
    let before = head(&app).await;
    app.restart().await;
    // (Only the token issuances above, counted and written at the stop, are new.)
    let after = actions_after(&app, before).await;
    assert!(
        after.iter().all(|a| a == "access_token.issue"),
        "a second start recorded events: {after:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&generated_file).unwrap(),
        generated,
        "the generated secret is written once"
    );
    let (status, t) = token(&app, &id, secret.expose(), "ai-guard:read").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(guard(&app, "POST", Some(&t)).await, StatusCode::OK);

    // A change to the file: the dry run says what would change and changes nothing…
    let changed = DECLARED.replace(
        "name = \"guard-caller\"\nscopes = [\"ai-guard:read\"]",
        "name = \"guard-caller\"\nscopes = [\"ai-guard:read\", \"ai-guard:write\"]",
    ) + "\n[[services]]\nname = \"billing\"\nscopes = [\"billing:read\"]\n";
    assert_ne!(changed, DECLARED);
    std::fs::write(&config, &changed).unwrap();
    let before = head(&app).await;
    let text = cli_apply(&app, &config, true).await;
    assert!(
        text.contains("update (scopes) client acme/payments/guard-caller"),
        "{text}"
    );
    assert!(text.contains("create     service billing"), "{text}");
    assert!(text.contains("unchanged  org acme"), "{text}");
    assert!(text.contains("would change 2"), "{text}");
    let after = actions_after(&app, before).await;
    assert!(
        after.iter().all(|a| a == "access_token.issue"),
        "a dry run wrote: {after:?}"
    );
    assert_eq!(
        token(&app, &id, secret.expose(), "ai-guard:write").await.0,
        StatusCode::BAD_REQUEST
    );
    // … and applying makes it.
    let done = cli_apply(&app, &config, false).await;
    assert!(done.contains("changed 2"), "{done}");
    let (status, t) = token(&app, &id, secret.expose(), "ai-guard:write").await;
    assert_eq!(status, StatusCode::OK);
    // The upstream's own answer (it has no DELETE): the gateway let the request through.
    assert_eq!(
        guard(&app, "DELETE", Some(&t)).await,
        StatusCode::METHOD_NOT_ALLOWED
    );
    // Applying again changes nothing.
    let before = head(&app).await;
    let again = cli_apply(&app, &config, false).await;
    assert!(again.contains("changed 0"), "{again}");
    // Through the API: an invalid file is a 422 naming file, line, table and field; the admin
    // key only.
    let bad = app
        .post(
            "/v1/admin/config/apply",
            &app.admin_key,
            json!({ "config": "\n[[roles]]\nname = \"R\"\nscopes = [\"nope:x\"]\n", "file": "/etc/k.toml", "dry_run": true }),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.text);
    assert!(
        bad.json()["detail"]
            .as_str()
            .unwrap()
            .starts_with("/etc/k.toml:2: [[roles]] \"default/R\": scopes:"),
        "{}",
        bad.text
    );
    // And so does a start on the changed file.
    app.restart().await;
    let after = actions_after(&app, before).await;
    assert!(
        after.iter().all(|a| a == "access_token.issue"),
        "a start after apply wrote: {after:?}"
    );
    let after = actions_after(&app, before).await;
    assert!(
        after.iter().all(|a| a == "access_token.issue"),
        "applying again wrote: {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_objects_protect_the_upstream_from_the_first_start_sqlite() {
    declared_first_start(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_objects_protect_the_upstream_from_the_first_start_postgres() {
    declared_first_start(Backend::Postgres).await;
}

/// A configuration whose errors name the file, the line, the table and the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_declarations_name_file_line_table_and_field() {
    let Some(db) = TestDb::fresh(Backend::Sqlite).await else {
        return;
    };
    let cases = [
        (
            "[[clients]]\nname = \"x\"\nscopes = [\"nope:read\"]\nsecret_file = \"s\"\ngenerate_secret = true\n",
            ":1: [[clients]] \"default/default/x\": scopes: \"nope:read\" is not a scope",
        ),
        (
            "\n[[projects]]\norg = \"ghost\"\nname = \"p\"\n",
            ":2: [[projects]] \"ghost/p\": org: no organization named \"ghost\"",
        ),
        (
            "[[services]]\nname = \"s\"\nscopes = [\"s:read\"]\n[[clients]]\nname = \"c\"\nscopes = [\"s:read\"]\n",
            ":4: [[clients]] \"default/default/c\": secret_file:",
        ),
        (
            "[[services]]\nname = \"s\"\nscope = [\"s:read\"]\n",
            "unknown field `scope`",
        ),
    ];
    for (toml, want) in cases {
        let dir = TempDir::new();
        let file = dir.path().join("k.toml");
        std::fs::write(&file, toml).unwrap();
        let env = env_for(&db, &file);
        let e = match Config::load(&ConfigFlags::default(), None, &env) {
            Err(e) => format!("{e:#}"),
            Ok(c) => match server::start(&c, std::future::pending()).await {
                Err(e) => format!("{e:#}"),
                Ok(r) => {
                    r.shutdown().await.unwrap();
                    panic!("{toml} was accepted")
                }
            },
        };
        assert!(e.contains(want), "{e}\nwanted: {want}");
        assert!(e.contains("k.toml"), "{e}");
    }
}

fn env_for(db: &TestDb, config: &Path) -> HashMap<String, String> {
    HashMap::from([
        ("KEYPLANE_DATABASE".to_string(), db.url.clone()),
        ("KEYPLANE_LISTEN".into(), "127.0.0.1:0".into()),
        ("KEYPLANE_PEPPER".into(), "p".repeat(40)),
        (
            "KEYPLANE_DATA_DIR".into(),
            db.dir.path().display().to_string(),
        ),
        ("KEYPLANE_CONFIG".into(), config.display().to_string()),
    ])
}

/// A refused first start generates no admin key; the first start that succeeds generates and
/// shows one; a refusal once one exists says how to get a new one.
async fn admin_key_never_lost(backend: Backend) {
    let Some(db) = TestDb::fresh(backend).await else {
        return;
    };
    let dir = TempDir::new();
    let file = dir.path().join("keyplane.toml");
    // Routes naming a scope no service has: refused.
    let bad = "[[routes]]\nmethods = [\"GET\"]\npath = \"/x\"\nscopes = [\"ghost:read\"]\n";
    std::fs::write(&file, bad).unwrap();
    let env = env_for(&db, &file);
    let config = Config::load(&ConfigFlags::default(), None, &env).unwrap();
    let e = format!(
        "{:#}",
        server::start(&config, std::future::pending())
            .await
            .err()
            .expect("refused")
    );
    assert!(e.contains("route rules are not valid"), "{e}");
    assert!(e.contains("generated no admin key"), "{e}");
    let app = server::build(&config).await.unwrap();
    assert!(!app.admin_key_exists().await.unwrap());
    app.close_storage().await.unwrap();

    // The same routes with the service declared: the start succeeds and shows a new key.
    std::fs::write(
        &file,
        format!("[[services]]\nname = \"ghost\"\nscopes = [\"ghost:read\"]\n{bad}"),
    )
    .unwrap();
    let running = server::start(&config, std::future::pending())
        .await
        .unwrap();
    let key = running
        .generated_admin_key
        .clone()
        .expect("the first successful start generates the admin key");
    let base = format!("http://{}", running.addr);
    let r = keyplane_testkit::reqwest::Client::new()
        .get(format!("{base}/v1/services"))
        .bearer_auth(key.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    running.shutdown().await.unwrap();

    // Refused again, now that a key exists: the refusal says how to recover it.
    std::fs::write(&file, bad.replace("ghost:read", "phantom:read")).unwrap();
    let e = format!(
        "{:#}",
        server::start(&config, std::future::pending())
            .await
            .err()
            .expect("refused")
    );
    assert!(e.contains("keyplane admin-key rotate"), "{e}");
    // A start that succeeds with a key in place shows none.
    std::fs::write(
        &file,
        format!("[[services]]\nname = \"ghost\"\nscopes = [\"ghost:read\"]\n{bad}"),
    )
    .unwrap();
    let running = server::start(&config, std::future::pending())
        .await
        .unwrap();
    assert!(running.generated_admin_key.is_none());
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_first_start_does_not_lose_the_admin_key_sqlite() {
    admin_key_never_lost(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_first_start_does_not_lose_the_admin_key_postgres() {
    admin_key_never_lost(Backend::Postgres).await;
}

/// A management request with or without `Keyplane-Override-Config: true`.
async fn send(
    app: &TestApp,
    method: &str,
    path: &str,
    token: &str,
    body: Option<serde_json::Value>,
    override_config: bool,
) -> (StatusCode, serde_json::Value) {
    let mut r = app
        .http
        .request(method.parse().unwrap(), format!("{}{path}", app.base))
        .bearer_auth(token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    if override_config {
        r = r.header("Keyplane-Override-Config", "true");
    }
    let resp = r.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(json!(text)))
}

fn by_name<'a>(list: &'a serde_json::Value, field: &str, name: &str) -> &'a serde_json::Value {
    list["items"]
        .as_array()
        .or(list.as_array())
        .unwrap()
        .iter()
        .find(|x| x[field] == name)
        .unwrap_or_else(|| panic!("no {name} in {list}"))
}

async fn managed_objects(backend: Backend) {
    let dir = TempDir::new();
    let secret = SecretFormat::new("kps_").unwrap().generate();
    std::fs::write(dir.path().join("guard-caller.secret"), secret.expose()).unwrap();
    let config = dir.path().join("keyplane.toml");
    std::fs::write(&config, DECLARED).unwrap();
    let up = upstream().await;
    let Some(app) = keyplane_testkit::spawn_app_with(
        backend,
        Options::default()
            .env("KEYPLANE_CONFIG", config.to_str().unwrap())
            .env("KEYPLANE_GATEWAY_LISTEN", "127.0.0.1:0")
            .env("KEYPLANE_UPSTREAM", &up),
    )
    .await
    else {
        return;
    };
    let admin = app.admin_key.clone();
    let org = org_id(&app).await;

    // Every declared object says it is managed; one made through the API does not.
    app.service("billing", &["billing:read"]).await;
    let services = app.get("/v1/services", &admin).await.json();
    let guard_svc = by_name(&services, "name", "ai-guard").clone();
    assert_eq!(guard_svc["managed_by"], "config", "{services}");
    assert!(by_name(&services, "name", "billing")["managed_by"].is_null());
    let orgs = app.get("/v1/orgs", &admin).await.json();
    assert_eq!(by_name(&orgs, "name", "acme")["managed_by"], "config");
    assert!(by_name(&orgs, "name", "default")["managed_by"].is_null());
    let projects = app
        .get(&format!("/v1/projects?org_id={org}"), &admin)
        .await
        .json();
    assert_eq!(
        by_name(&projects, "name", "payments")["managed_by"],
        "config"
    );
    assert!(by_name(&projects, "name", "default")["managed_by"].is_null());
    let roles = app
        .get(&format!("/v1/roles?org_id={org}"), &admin)
        .await
        .json();
    assert_eq!(
        by_name(&roles, "name", "GUARD-READER")["managed_by"],
        "config"
    );
    let members = app
        .get(&format!("/v1/members?org_id={org}"), &admin)
        .await
        .json();
    let ana = by_name(&members, "email", "ana@example.com").clone();
    assert_eq!(ana["managed_by"], "config");
    let cid = client_id(&app, "guard-caller").await;
    let client = app
        .get(&format!("/v1/oauth-clients/{cid}"), &admin)
        .await
        .json();
    assert_eq!(client["managed_by"], "config", "{client}");
    let secret_id = client["secrets"][0]["id"].as_str().unwrap().to_string();
    let svc_path = format!("/v1/services/{}", guard_svc["id"].as_str().unwrap());
    let ana_path = format!("/v1/members/{}", ana["id"].as_str().unwrap());
    let client_path = format!("/v1/oauth-clients/{cid}");

    // Every change through the API is refused with the way out, and changes nothing — even
    // for the admin key, and whatever the header's other values.
    let changes: Vec<(&str, String, Option<serde_json::Value>)> = vec![
        (
            "PATCH",
            svc_path.clone(),
            Some(json!({ "description": "changed" })),
        ),
        ("PATCH", ana_path.clone(), Some(json!({ "role": "member" }))),
        ("DELETE", ana_path.clone(), None),
        (
            "PATCH",
            client_path.clone(),
            Some(json!({ "scopes": ["ai-guard:write"] })),
        ),
        ("POST", format!("{client_path}/secrets"), Some(json!({}))),
        ("DELETE", format!("{client_path}/secrets/{secret_id}"), None),
        ("DELETE", client_path.clone(), None),
    ];
    for (method, path, body) in &changes {
        let (status, v) = send(&app, method, path, &admin, body.clone(), false).await;
        assert_eq!(status, StatusCode::CONFLICT, "{method} {path}: {v}");
        assert!(
            v["type"].as_str().unwrap().ends_with("managed-by-config"),
            "{v}"
        );
        assert!(
            v["detail"]
                .as_str()
                .unwrap()
                .contains("Keyplane-Override-Config: true"),
            "{v}"
        );
    }
    let mut r = app
        .http
        .patch(format!("{}{svc_path}", app.base))
        .bearer_auth(&admin)
        .header("Keyplane-Override-Config", "yes")
        .json(&json!({ "description": "changed" }));
    r = r.header("Content-Type", "application/json");
    assert_eq!(r.send().await.unwrap().status(), StatusCode::CONFLICT);
    let (status, _) = token(&app, &cid, secret.expose(), "ai-guard:read").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the refused changes changed nothing"
    );
    let members = app
        .get(&format!("/v1/members?org_id={org}"), &admin)
        .await
        .json();
    assert_eq!(
        by_name(&members, "email", "ana@example.com")["role"],
        "admin"
    );

    // Another organization's key learns nothing: out of reach answers like an unknown id.
    let other = app
        .post("/v1/orgs", &admin, json!({ "name": "other" }))
        .await
        .json();
    let other_org = other["id"].as_str().unwrap();
    let (_, other_key) = app
        .key(
            &admin,
            json!({ "org_id": other_org, "name": "x", "roles": ["ORG-ADMIN"] }),
        )
        .await;
    let (status, _) = send(
        &app,
        "PATCH",
        &client_path,
        &other_key,
        Some(json!({ "description": "x" })),
        true,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = send(&app, "DELETE", &ana_path, &other_key, None, false).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // With the header the change is made, and its event says it overrode the file.
    let (status, v) = send(
        &app,
        "PATCH",
        &svc_path,
        &admin,
        Some(json!({ "description": "changed" })),
        true,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["description"], "changed");
    assert_eq!(v["managed_by"], "config", "still managed");
    app.flush().await;
    let events = app.get("/v1/activity?limit=20", &admin).await.json();
    let update = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "service.update")
        .unwrap_or_else(|| panic!("no service.update in {events}"));
    assert_eq!(update["details"]["config_override"], true, "{update}");

    // The next apply puts the file's value back.
    let text = cli_apply(&app, &config, false).await;
    assert!(
        text.contains("update (description) service ai-guard"),
        "{text}"
    );
    let services = app.get("/v1/services", &admin).await.json();
    assert_eq!(
        by_name(&services, "name", "ai-guard")["description"],
        "AI Guard"
    );

    // An object the file no longer declares is no longer managed: the API changes it freely.
    let without = DECLARED.replace(
        "[[members]]\norg = \"acme\"\nemail = \"ana@example.com\"\nrole = \"admin\"\n",
        "",
    );
    assert_ne!(without, DECLARED);
    std::fs::write(&config, &without).unwrap();
    let text = cli_apply(&app, &config, true).await;
    assert!(text.contains("(no longer declared)"), "{text}");
    let (status, _) = send(
        &app,
        "PATCH",
        &ana_path,
        &admin,
        Some(json!({ "role": "member" })),
        false,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "a dry run unmarks nothing");
    let text = cli_apply(&app, &config, false).await;
    assert!(text.contains("update (managed_by) member"), "{text}");
    let (status, v) = send(
        &app,
        "PATCH",
        &ana_path,
        &admin,
        Some(json!({ "role": "member" })),
        false,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert!(v["managed_by"].is_null(), "{v}");
    let again = cli_apply(&app, &config, false).await;
    assert!(again.contains("changed 0"), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_objects_are_managed_and_refuse_api_changes_sqlite() {
    managed_objects(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_objects_are_managed_and_refuse_api_changes_postgres() {
    managed_objects(Backend::Postgres).await;
}

/// `dpop_bound_access_tokens`, `federated_credentials` and `may_act` (by the name of a client
/// declared in the same file) are declarable, and applying them twice changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machine_identity_settings_are_declarable() {
    let dir = TempDir::new();
    let config = dir.path().join("keyplane.toml");
    let text = r#"
[[services]]
name = "mcp"
scopes = ["mcp:read"]

[[clients]]
name = "user-app"
scopes = ["mcp:read"]
secret_file = "user-app.secret"
generate_secret = true
may_act = ["agent"]

[[clients]]
name = "agent"
scopes = ["mcp:read"]
secret_file = "agent.secret"
generate_secret = true
dpop_bound_access_tokens = true

[[clients]]
name = "ci"
scopes = ["mcp:read"]
token_endpoint_auth_method = "private_key_jwt"

[[clients.federated_credentials]]
issuer = "https://token.actions.githubusercontent.com"
subject_pattern = "repo:acme/*:ref:refs/heads/main"
audience = "https://keyplane.example"
"#;
    std::fs::write(&config, text).unwrap();
    let Some(app) = keyplane_testkit::spawn_app_with(
        Backend::Sqlite,
        Options::default().env("KEYPLANE_CONFIG", config.to_str().unwrap()),
    )
    .await
    else {
        return;
    };
    let admin = app.admin_key.clone();
    let list = app.get("/v1/oauth-clients", &admin).await.json();
    let agent = by_name(&list, "name", "agent").clone();
    let user_app = by_name(&list, "name", "user-app").clone();
    let ci = by_name(&list, "name", "ci").clone();
    assert_eq!(agent["dpop_bound_access_tokens"], true, "{agent}");
    assert_eq!(user_app["dpop_bound_access_tokens"], false);
    assert_eq!(
        user_app["may_act"],
        json!([agent["client_id"]]),
        "{user_app}"
    );
    assert_eq!(ci["token_endpoint_auth_method"], "private_key_jwt");
    assert_eq!(
        ci["federated_credentials"],
        json!([{
            "issuer": "https://token.actions.githubusercontent.com",
            "subject_pattern": "repo:acme/*:ref:refs/heads/main",
            "audience": "https://keyplane.example"
        }]),
        "{ci}"
    );
    // The agent must present a DPoP proof: a plain token request is refused.
    let secret = std::fs::read_to_string(dir.path().join("agent.secret")).unwrap();
    let (status, _) = token(
        &app,
        agent["client_id"].as_str().unwrap(),
        secret.trim(),
        "mcp:read",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Unchanged file: nothing to do. A change to each is found and applied.
    assert!(cli_apply(&app, &config, false).await.contains("changed 0"));
    let changed = text
        .replace("dpop_bound_access_tokens = true", "")
        .replace("may_act = [\"agent\"]", "may_act = []")
        .replace("refs/heads/main", "refs/heads/release");
    std::fs::write(&config, &changed).unwrap();
    let plan = cli_apply(&app, &config, true).await;
    assert!(
        plan.contains("update (may_act) client default/default/user-app"),
        "{plan}"
    );
    assert!(
        plan.contains("update (dpop_bound_access_tokens) client default/default/agent"),
        "{plan}"
    );
    assert!(
        plan.contains("update (federated_credentials) client default/default/ci"),
        "{plan}"
    );
    assert!(cli_apply(&app, &config, false).await.contains("changed 3"));
    let list = app.get("/v1/oauth-clients", &admin).await.json();
    assert_eq!(by_name(&list, "name", "user-app")["may_act"], json!([]));
    assert_eq!(
        by_name(&list, "name", "agent")["dpop_bound_access_tokens"],
        false
    );
    assert_eq!(
        by_name(&list, "name", "ci")["federated_credentials"][0]["subject_pattern"],
        "repo:acme/*:ref:refs/heads/release"
    );
    assert!(cli_apply(&app, &config, false).await.contains("changed 0"));

    // A may_act that names nothing is refused, naming the file and line.
    std::fs::write(
        &config,
        text.replace("may_act = [\"agent\"]", "may_act = [\"nobody\"]"),
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_keyplane"))
        .args(["apply", "--dry-run", "--config"])
        .arg(&config)
        .args(["--url", &app.base])
        .env("KEYPLANE_TOKEN", &admin)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("may_act: \"nobody\""), "{err}");
}
