//! The command line, as an operator uses it: every network subcommand against a running
//! server (its `--json` parsed, its effect checked through the API), completion scripts, help
//! text, the database commands' refusal to create what is not there, and `keyplane migrate
//! [--status]` with `serve --no-migrate` on both backends.

use crate::binary::{text, Server};
use crate::pkjwt::TestKey;
use crate::support::{introspect, token};
use keyplane_testkit::reqwest::StatusCode;
use keyplane_testkit::{spawn_app_with, Backend, Options, TestApp, TestDb};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Output;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_keyplane");
const CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `keyplane ARGS` in `dir` with only the given `KEYPLANE_*` variables.
async fn run_in(dir: Option<&Path>, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = std::process::Command::new(BIN);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("KEYPLANE_") {
            c.env_remove(k);
        }
    }
    if let Some(d) = dir {
        c.current_dir(d);
    }
    c.args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null());
    let mut c = tokio::process::Command::from(c);
    c.kill_on_drop(true);
    match tokio::time::timeout(CLI_TIMEOUT, c.output()).await {
        Ok(out) => out.expect("run keyplane"),
        Err(_) => panic!("`keyplane {}` did not finish in time", args.join(" ")),
    }
}

/// Runs `keyplane ARGS` with `input` on its standard input (blocking: the input is small).
fn with_stdin(args: &[&str], env: &[(&str, &str)], input: &str) -> Output {
    use std::io::Write;
    let mut c = std::process::Command::new(BIN);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("KEYPLANE_") {
            c.env_remove(k);
        }
    }
    let mut child = c
        .args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn keyplane");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().expect("keyplane output")
}

/// The network commands' environment for `app`: its URL and admin key.
pub(crate) struct Cli<'a> {
    app: &'a TestApp,
    token: String,
}

impl<'a> Cli<'a> {
    pub(crate) fn admin(app: &'a TestApp) -> Self {
        Cli {
            app,
            token: app.admin_key.clone(),
        }
    }

    fn with_token(app: &'a TestApp, token: &str) -> Self {
        Cli {
            app,
            token: token.to_string(),
        }
    }

    async fn run(&self, args: &[&str]) -> Output {
        run_in(
            None,
            args,
            &[
                ("KEYPLANE_URL", self.app.base.as_str()),
                ("KEYPLANE_TOKEN", self.token.as_str()),
            ],
        )
        .await
    }

    /// Runs a command that must succeed; its stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "`keyplane {}` failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// Runs a command with `--json` that must succeed; its stdout parsed.
    pub(crate) async fn json(&self, args: &[&str]) -> Value {
        let args = [args, &["--json"]].concat();
        let out = self.ok(&args).await;
        serde_json::from_str(&out).unwrap_or_else(|e| {
            panic!(
                "`keyplane {}` printed no JSON ({e}):\n{out}",
                args.join(" ")
            )
        })
    }

    /// Runs a command that must fail with exit status 2; its stderr.
    pub(crate) async fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert_eq!(
            out.status.code(),
            Some(2),
            "`keyplane {}` should fail:\n{}{}",
            args.join(" "),
            text(&out.stdout),
            text(&out.stderr)
        );
        assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
        text(&out.stderr)
    }
}

fn s(v: &Value, f: &str) -> String {
    v[f].as_str()
        .unwrap_or_else(|| panic!("no string `{f}` in {v}"))
        .to_string()
}

fn ids(list: &Value, field: &str) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|i| s(i, field))
        .collect()
}

const CONFIG: &str = r#"
[[services]]
name = "docs"
scopes = ["docs:read"]

[[routes]]
methods = ["GET"]
path = "/docs/*"
scopes = ["docs:read"]
"#;

/// Every network subcommand, against one server: created through the CLI, checked through the
/// API (and the other way round), `--json` always parsed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_network_subcommand() {
    let dir = keyplane_testkit::TempDir::new();
    let config = dir.path().join("keyplane.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let app = spawn_app_with(
        Backend::Sqlite,
        Options::default().env("KEYPLANE_CONFIG", config.to_str().unwrap()),
    )
    .await
    .expect("SQLite");
    let cli = Cli::admin(&app);

    // whoami
    let me = cli.json(&["whoami"]).await;
    assert_eq!(me["kind"], "admin-key", "{me}");
    assert!(cli.ok(&["whoami"]).await.contains("admin-key"));

    // orgs
    let org = cli.json(&["orgs", "create", "acme"]).await;
    let org_id = s(&org, "id");
    assert_eq!(org["name"], "acme");
    let orgs = cli.json(&["orgs", "list"]).await;
    assert!(ids(&orgs, "name").contains(&"acme".to_string()), "{orgs}");
    assert!(orgs["next_cursor"].is_null());
    let table = cli.ok(&["orgs", "list"]).await;
    assert!(table.starts_with("ID") && table.contains("acme"), "{table}");
    // The same name twice: the server's 409, exit 2, its detail on stderr.
    let err = cli.fails(&["orgs", "create", "acme"]).await;
    assert!(err.contains("409"), "{err}");

    // projects
    let project = cli
        .json(&["projects", "create", "web", "--org-id", &org_id])
        .await;
    let project_id = s(&project, "id");
    assert_eq!(project["org_id"], org_id.as_str());
    let projects = cli.json(&["projects", "list", "--org-id", &org_id]).await;
    assert!(ids(&projects, "id").contains(&project_id), "{projects}");

    // services
    let billing = cli
        .json(&[
            "services",
            "create",
            "billing",
            "--scope",
            "billing:read",
            "--scope",
            "billing:write",
            "--description",
            "invoices",
        ])
        .await;
    let billing_id = s(&billing, "id");
    let updated = cli
        .json(&[
            "services",
            "update",
            &billing_id,
            "--description",
            "invoices and payments",
            "--resource",
            "https://billing.example/",
        ])
        .await;
    assert_eq!(updated["description"], "invoices and payments");
    assert_eq!(updated["resources"], json!(["https://billing.example/"]));
    let cleared = cli
        .json(&["services", "update", &billing_id, "--no-resources"])
        .await;
    assert_eq!(cleared["resources"], json!([]));
    let set = cli
        .json(&[
            "services",
            "set-resources",
            &billing_id,
            "--resource",
            "https://billing.example/v2",
        ])
        .await;
    assert_eq!(set["resources"], json!(["https://billing.example/v2"]));
    let services = cli.json(&["services", "list"]).await;
    let names = ids(&services, "name");
    assert!(names.contains(&"billing".into()) && names.contains(&"docs".into()));

    // roles
    let role = cli
        .json(&[
            "roles",
            "create",
            "BILLING-READER",
            "--org-id",
            &org_id,
            "--permission",
            "activity:read",
            "--scope",
            "billing:read",
            "--description",
            "reads invoices",
        ])
        .await;
    assert_eq!(role["permissions"], json!(["activity:read"]));
    let roles = cli.json(&["roles", "list", "--org-id", &org_id]).await;
    let role_names = ids(&roles, "name");
    assert!(role_names.contains(&"BILLING-READER".into()), "{roles}");
    assert!(role_names.contains(&"ORG-ADMIN".into()), "{roles}");
    // A permission that does not exist: refused by the server.
    let err = cli
        .fails(&[
            "roles",
            "create",
            "BAD",
            "--org-id",
            &org_id,
            "--permission",
            "everything",
        ])
        .await;
    assert!(err.contains("422") || err.contains("400"), "{err}");

    // members
    let alice = cli
        .json(&[
            "members",
            "add",
            "alice@example.com",
            "--role",
            "admin",
            "--name",
            "Alice",
            "--org-id",
            &org_id,
        ])
        .await;
    let alice_id = s(&alice, "id");
    let members = cli.json(&["members", "list", "--org-id", &org_id]).await;
    assert!(ids(&members, "email").contains(&"alice@example.com".into()));
    let shown = cli.ok(&["members", "get", &alice_id]).await;
    let version = shown
        .lines()
        .find_map(|l| l.strip_prefix("version (for --if-match): "))
        .unwrap_or_else(|| panic!("no version in\n{shown}"))
        .to_string();
    let demoted = cli
        .json(&[
            "members",
            "set-role",
            &alice_id,
            "member",
            "--if-match",
            &version,
        ])
        .await;
    assert_eq!(demoted["role"], "member");
    // The same version again is stale now: 412, nothing changed.
    let err = cli
        .fails(&[
            "members",
            "set-role",
            &alice_id,
            "owner",
            "--if-match",
            &version,
        ])
        .await;
    assert!(err.contains("412"), "{err}");
    let got = cli.json(&["members", "get", &alice_id]).await;
    assert_eq!(got["role"], "member");
    let bob = cli
        .json(&[
            "members",
            "add",
            "bob@example.com",
            "--role",
            "member",
            "--org-id",
            &org_id,
        ])
        .await;
    let bob_id = s(&bob, "id");
    let out = cli.ok(&["members", "remove", &bob_id]).await;
    assert!(out.contains("removed"), "{out}");
    assert!(
        cli.run(&["members", "remove", &bob_id, "--json"])
            .await
            .status
            .code()
            == Some(2)
    );
    let members = cli.json(&["members", "list", "--org-id", &org_id]).await;
    assert!(!ids(&members, "id").contains(&bob_id), "{members}");

    // keys
    let k1 = cli
        .json(&[
            "keys",
            "create",
            "--org-id",
            &org_id,
            "--project-id",
            &project_id,
            "--name",
            "k1",
            "--scope",
            "billing:read",
            "--description",
            "first",
        ])
        .await;
    let k1_id = s(&k1, "id");
    let k1_secret = s(&k1, "key");
    assert_eq!(
        app.get("/v1/authz?scope=billing:read", &k1_secret)
            .await
            .status,
        StatusCode::OK
    );
    // --json prints the API's answer exactly (last-used times written first, so both reads
    // see the same).
    app.flush().await;
    let raw = app
        .get(&format!("/v1/api-keys/{k1_id}"), &app.admin_key)
        .await
        .text;
    let out = cli.ok(&["keys", "get", &k1_id, "--json"]).await;
    assert_eq!(out.trim_end(), raw.trim_end());
    let k1b = cli
        .json(&[
            "keys",
            "update",
            &k1_id,
            "--name",
            "k1b",
            "--scope",
            "billing:read",
            "--scope",
            "billing:write",
            "--expires-at",
            "2099-01-01T00:00:00Z",
        ])
        .await;
    assert_eq!(k1b["name"], "k1b");
    assert_eq!(k1b["scopes"], json!(["billing:read", "billing:write"]));
    assert_eq!(k1b["expires_at"], "2099-01-01T00:00:00.000Z");
    let k1c = cli
        .json(&[
            "keys",
            "update",
            &k1_id,
            "--no-expiry",
            "--default-for-service",
            "billing",
        ])
        .await;
    assert!(k1c["expires_at"].is_null(), "{k1c}");
    assert_eq!(k1c["default_for_service"], "billing", "{k1c}");
    let k1c = cli
        .json(&["keys", "update", &k1_id, "--no-default-for-service"])
        .await;
    assert!(k1c["default_for_service"].is_null(), "{k1c}");
    let copy = cli.json(&["keys", "copy", &k1_id, "--name", "k2"]).await;
    let k2_id = s(&copy, "id");
    assert_eq!(copy["scopes"], k1b["scopes"]);
    assert_eq!(
        app.get("/v1/authz?scope=billing:write", &s(&copy, "key"))
            .await
            .status,
        StatusCode::OK
    );
    let regen = cli.json(&["keys", "regenerate", &k1_id]).await;
    let new_secret = s(&regen, "key");
    assert_ne!(new_secret, k1_secret);
    assert_eq!(
        app.get("/v1/authz", &k1_secret).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get("/v1/authz", &new_secret).await.status,
        StatusCode::OK
    );
    // A third key, then paging: one page of one, then the next by its cursor.
    cli.json(&["keys", "create", "--org-id", &org_id, "--name", "k3"])
        .await;
    let page1 = cli
        .json(&["keys", "list", "--org-id", &org_id, "--limit", "1"])
        .await;
    assert_eq!(ids(&page1, "id").len(), 1, "{page1}");
    let cursor = s(&page1, "next_cursor");
    let page2 = cli
        .json(&[
            "keys", "list", "--org-id", &org_id, "--limit", "1", "--cursor", &cursor,
        ])
        .await;
    assert_ne!(ids(&page1, "id"), ids(&page2, "id"));
    let all = cli.json(&["keys", "list", "--org-id", &org_id]).await;
    assert_eq!(ids(&all, "id").len(), 3, "{all}");
    assert!(all["next_cursor"].is_null());
    let revoked = cli.json(&["keys", "revoke", &k2_id]).await;
    assert_eq!(revoked["status"], "revoked");
    let active = cli.json(&["keys", "list", "--org-id", &org_id]).await;
    assert!(!ids(&active, "id").contains(&k2_id));
    let with_revoked = cli
        .json(&["keys", "list", "--org-id", &org_id, "--all"])
        .await;
    assert!(ids(&with_revoked, "id").contains(&k2_id));
    let table = cli.ok(&["keys", "list", "--org-id", &org_id]).await;
    assert!(table.starts_with("ID") && table.contains("k1b"), "{table}");
    assert!(
        !table.contains(&new_secret[..12]),
        "a secret in the list:\n{table}"
    );

    // clients: a secret client, used at the token endpoint
    let svc = cli
        .json(&[
            "clients",
            "create",
            "svc",
            "--org-id",
            &org_id,
            "--project-id",
            &project_id,
            "--scope",
            "billing:read",
            "--token-format",
            "jwt",
            "--access-token-ttl-seconds",
            "900",
            "--description",
            "the billing job",
        ])
        .await;
    let svc_id = s(&svc, "client_id");
    let first_secret = s(&svc, "client_secret");
    let first_secret_id = s(&svc, "secret_id");
    assert_eq!(svc["token_format"], "jwt");
    let t = token(&app, &svc_id, &first_secret).await;
    assert_eq!(t.status, StatusCode::OK, "{}", t.text);
    let access = s(&t.json(), "access_token");
    assert_eq!(introspect(&app, &access).await["active"], true);
    // Human output of create shows the secret once, labelled.
    let human = cli
        .ok(&["clients", "create", "svc-h", "--org-id", &org_id])
        .await;
    assert!(human.contains("client_secret: "), "{human}");

    // A private_key_jwt client with a JWK set, a federated credential, and DPoP.
    let key = TestKey::es256("k1");
    let jwks = json!({ "keys": [key.public_jwk()] }).to_string();
    let agent = cli
        .json(&[
            "clients",
            "create",
            "agent",
            "--org-id",
            &org_id,
            "--token-endpoint-auth-method",
            "private_key_jwt",
            "--jwks",
            &jwks,
            "--federated-credential",
            r#"{"issuer": "https://token.actions.githubusercontent.com", "subject": "repo:acme/web:ref:refs/heads/main", "audience": "keyplane"}"#,
            "--dpop-bound-access-tokens",
        ])
        .await;
    let agent_id = s(&agent, "client_id");
    assert!(agent.get("client_secret").is_none(), "{agent}");
    assert_eq!(agent["token_endpoint_auth_method"], "private_key_jwt");
    assert_eq!(agent["dpop_bound_access_tokens"], true);
    assert_eq!(agent["jwks"]["keys"][0]["kid"], "k1");
    assert_eq!(
        agent["federated_credentials"][0]["subject"],
        "repo:acme/web:ref:refs/heads/main"
    );
    // The JWK set from a file works the same.
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, &jwks).unwrap();
    let from_file = cli
        .json(&[
            "clients",
            "create",
            "agent-2",
            "--org-id",
            &org_id,
            "--token-endpoint-auth-method",
            "private_key_jwt",
            "--jwks",
            jwks_file.to_str().unwrap(),
        ])
        .await;
    assert_eq!(from_file["jwks"], agent["jwks"]);

    let clients = cli.json(&["clients", "list", "--org-id", &org_id]).await;
    let listed = ids(&clients, "client_id");
    assert!(
        listed.contains(&svc_id) && listed.contains(&agent_id),
        "{clients}"
    );
    let one = cli
        .json(&["clients", "list", "--org-id", &org_id, "--limit", "1"])
        .await;
    assert_eq!(ids(&one, "client_id").len(), 1);
    assert!(one["next_cursor"].is_string(), "{one}");
    let shown = cli.ok(&["clients", "get", &svc_id]).await;
    assert!(
        shown.contains(&first_secret_id) && shown.contains("SECRET ID"),
        "{shown}"
    );
    assert!(!shown.contains(&first_secret[4..16]), "{shown}");
    let got = cli.json(&["clients", "show", &svc_id]).await;
    assert_eq!(got["secrets"].as_array().unwrap().len(), 1);

    let changed = cli
        .json(&[
            "clients",
            "update",
            &svc_id,
            "--name",
            "svc2",
            "--access-token-ttl-seconds",
            "600",
            "--audience",
            "https://billing.example/",
            "--may-act",
            &agent_id,
            "--secret-rotation-days",
            "90",
        ])
        .await;
    assert_eq!(changed["name"], "svc2");
    assert_eq!(changed["access_token_ttl_seconds"], 600);
    assert_eq!(changed["audience"], "https://billing.example/");
    assert_eq!(changed["may_act"], json!([agent_id]));
    assert_eq!(changed["secret_rotation_days"], 90);
    let changed = cli
        .json(&[
            "clients",
            "update",
            &svc_id,
            "--no-audience",
            "--no-may-act",
            "--no-secret-rotation",
        ])
        .await;
    assert!(changed["audience"].is_null(), "{changed}");
    assert_eq!(changed["may_act"], json!([]));
    assert!(changed["secret_rotation_days"].is_null());
    let changed = cli
        .json(&[
            "clients",
            "update",
            &agent_id,
            "--dpop-bound-access-tokens",
            "false",
            "--no-federated-credentials",
        ])
        .await;
    assert_eq!(changed["dpop_bound_access_tokens"], false);
    assert!(changed.get("federated_credentials").is_none(), "{changed}");

    // Rotation: a second secret; the first retired; only the second works.
    let added = cli
        .json(&[
            "clients",
            "add-secret",
            &svc_id,
            "--old-secrets-expire-in",
            "3600",
        ])
        .await;
    let second = s(&added, "client_secret");
    assert_eq!(token(&app, &svc_id, &second).await.status, StatusCode::OK);
    assert_eq!(
        token(&app, &svc_id, &first_secret).await.status,
        StatusCode::OK,
        "the old secret works during its grace period"
    );
    let out = cli
        .ok(&["clients", "retire-secret", &svc_id, &first_secret_id])
        .await;
    assert!(out.contains("retired"), "{out}");
    assert_eq!(
        token(&app, &svc_id, &first_secret).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(token(&app, &svc_id, &second).await.status, StatusCode::OK);
    // A token issued for the client from the CLI.
    let issued = cli
        .json(&["clients", "token", &svc_id, "--scope", "billing:read"])
        .await;
    assert_eq!(issued["scope"], "billing:read");
    let issued_token = s(&issued, "access_token");
    assert_eq!(introspect(&app, &issued_token).await["active"], true);
    // introspect: the token as an argument, or on standard input (out of the shell history).
    let seen = cli.json(&["introspect", &issued_token]).await;
    assert_eq!(seen["active"], true, "{seen}");
    assert_eq!(seen["client_id"], svc_id.as_str());
    let piped = with_stdin(
        &["introspect", "--json"],
        &[
            ("KEYPLANE_URL", &app.base),
            ("KEYPLANE_TOKEN", &app.admin_key),
        ],
        &format!("{issued_token}\n"),
    );
    assert!(piped.status.success(), "{}", text(&piped.stderr));
    let piped: Value = serde_json::from_slice(&piped.stdout).unwrap();
    assert_eq!(piped["active"], true, "{piped}");
    // Delete: its tokens stop working; with --json nothing is printed (the API answers 204).
    let out = cli.ok(&["clients", "delete", &svc_id, "--json"]).await;
    assert!(out.is_empty(), "{out}");
    assert_eq!(introspect(&app, &issued_token).await["active"], false);
    // An inactive token: `{"active": false}`, exit 1.
    let out = cli.run(&["introspect", &issued_token, "--json"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v, json!({"active": false}));
    let err = cli.fails(&["clients", "get", &svc_id]).await;
    assert!(err.contains("404"), "{err}");

    // Another organization's credential sees none of this: answers like unknown ids.
    let other = cli.json(&["orgs", "create", "globex"]).await;
    let other_key = cli
        .json(&[
            "keys",
            "create",
            "--org-id",
            &s(&other, "id"),
            "--name",
            "admin",
            "--role",
            "ORG-ADMIN",
        ])
        .await;
    let outsider = Cli::with_token(&app, &s(&other_key, "key"));
    for args in [
        vec!["keys", "get", k1_id.as_str()],
        vec!["clients", "get", agent_id.as_str()],
        vec!["members", "get", alice_id.as_str()],
    ] {
        let err = outsider.fails(&args).await;
        assert!(err.contains("404"), "{args:?}: {err}");
    }
    let theirs = outsider.json(&["keys", "list"]).await;
    assert!(!ids(&theirs, "id").contains(&k1_id), "{theirs}");
    let err = outsider.fails(&["orgs", "create", "mine"]).await;
    assert!(err.contains("403"), "{err}");
    let err = outsider.fails(&["routes", "show"]).await;
    assert!(err.contains("403"), "{err}");

    // activity: the revocation is found by action and target; paging; every page.
    let found = cli
        .json(&["activity", "query", "--action", "api_key.revoke"])
        .await;
    let hit = found["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["target"] == k2_id.as_str())
        .unwrap_or_else(|| panic!("no revocation of {k2_id} in {found}"));
    assert_eq!(hit["outcome"], "success");
    let by_target = cli
        .json(&["activity", "query", "--target", &k2_id, "--org-id", &org_id])
        .await;
    assert!(!ids(&by_target, "id").is_empty());
    let two = cli.json(&["activity", "query", "--limit", "2"]).await;
    assert_eq!(ids(&two, "id").len(), 2);
    let next = s(&two, "next_cursor");
    let after = cli
        .json(&["activity", "query", "--limit", "2", "--cursor", &next])
        .await;
    assert!(two["items"][1]["seq"].as_i64() > after["items"][0]["seq"].as_i64());
    let everything = cli.json(&["activity", "query", "--all"]).await;
    assert!(ids(&everything, "id").len() > 20, "{everything}");
    let since = cli
        .json(&["activity", "query", "--since", "2099-01-01T00:00:00Z"])
        .await;
    assert!(ids(&since, "id").is_empty());
    let table = cli.ok(&["activity", "query", "--limit", "3"]).await;
    assert!(
        table.starts_with("SEQ") && table.contains("ACTION"),
        "{table}"
    );

    // activity verify, through the server and on the database.
    let report = cli.json(&["activity", "verify"]).await;
    assert_eq!(report["intact"], true, "{report}");
    let report = cli.json(&["activity", "verify", "--full"]).await;
    assert_eq!(report["intact"], true);
    assert_eq!(report["full"], true);
    assert!(report["checked"].as_u64().unwrap() > 20, "{report}");
    let human = cli.ok(&["activity", "verify"]).await;
    assert!(
        human.contains("intact") && human.contains("true"),
        "{human}"
    );
    let local = run_in(
        None,
        &["activity", "verify", "--database", &app.db.url, "--json"],
        &[("KEYPLANE_PEPPER", app.pepper.as_str())],
    )
    .await;
    assert!(local.status.success(), "{}", text(&local.stderr));
    let local: Value = serde_json::from_slice(&local.stdout).unwrap();
    assert_eq!(local["intact"], true, "{local}");
    assert!(local["checked"].as_u64().unwrap() > 20, "{local}");

    // signing-key rotate, on the database: the new key is published in the JWKS.
    let out = run_in(
        None,
        &[
            "signing-key",
            "rotate",
            "--database",
            &app.db.url,
            "--alg",
            "EdDSA",
            "--lead-seconds",
            "0",
        ],
        &[("KEYPLANE_PEPPER", app.pepper.as_str())],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let kid = text(&out.stdout).trim().to_string();
    assert!(!kid.is_empty());
    app.app().reload_signing_keys().await.unwrap();
    let jwks = app
        .call(
            keyplane_testkit::reqwest::Method::GET,
            "/.well-known/jwks.json",
            None,
            None,
        )
        .await
        .json();
    let published: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["kid"].as_str())
        .collect();
    assert!(published.contains(&kid.as_str()), "{kid} not in {jwks}");

    // routes
    let rules = cli.json(&["routes", "show"]).await;
    assert_eq!(rules["rules"][0]["path"], "/docs/*", "{rules}");
    assert_eq!(rules["rules"][0]["scopes"], json!(["docs:read"]));
    std::fs::write(
        &config,
        format!(
            "{CONFIG}\n[[routes]]\nmethods = [\"POST\"]\npath = \"/docs/new\"\nscopes = [\"docs:read\"]\n"
        ),
    )
    .unwrap();
    let reloaded = cli.json(&["routes", "reload"]).await;
    assert_eq!(reloaded["rules"].as_array().unwrap().len(), 2, "{reloaded}");
    let table = cli.ok(&["routes", "show"]).await;
    assert!(
        table.contains("/docs/new") && table.contains("METHODS"),
        "{table}"
    );

    // apply: a dry run of the same file changes nothing.
    let plan = cli
        .json(&["apply", "--config", config.to_str().unwrap(), "--dry-run"])
        .await;
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["changes"], 0, "{plan}");
}

/// `keyplane completion bash|zsh|fish` prints a script for the shell that names the commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_scripts() {
    for shell in ["bash", "zsh", "fish"] {
        let out = run_in(None, &["completion", shell], &[]).await;
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        for word in [
            "keyplane",
            "clients",
            "add-secret",
            "retire-secret",
            "set-role",
            "migrate",
            "completion",
            "no-migrate",
            "ca-cert",
            "if-match",
        ] {
            assert!(script.contains(word), "{shell}: no {word} in the script");
        }
    }
    // bash can load it.
    let out = run_in(None, &["completion", "bash"], &[]).await;
    let dir = keyplane_testkit::TempDir::new();
    let file = dir.path().join("keyplane.bash");
    std::fs::write(&file, &out.stdout).unwrap();
    let status = std::process::Command::new("bash")
        .args(["-n", file.to_str().unwrap()])
        .status()
        .expect("bash");
    assert!(status.success(), "bash -n refused the script");
    let out = run_in(None, &["completion", "tcsh"], &[]).await;
    assert_eq!(out.status.code(), Some(2));
}

/// `--help` describes every option and shows environment variables by name only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_names_variables_without_values() {
    let out = run_in(
        None,
        &["keys", "list", "--help"],
        &[
            ("KEYPLANE_TOKEN", "kp_secret_that_must_not_show"),
            ("KEYPLANE_URL", "http://example.invalid"),
        ],
    )
    .await;
    assert!(out.status.success());
    let help = text(&out.stdout);
    assert!(help.contains("[env: KEYPLANE_URL]"), "{help}");
    assert!(help.contains("[env: KEYPLANE_TOKEN]"), "{help}");
    assert!(help.contains("[env: KEYPLANE_CA_CERT]"), "{help}");
    assert!(!help.contains("KEYPLANE_URL="), "{help}");
    assert!(!help.contains("kp_secret_that_must_not_show"), "{help}");
    assert!(!help.contains("example.invalid"), "{help}");
    for option in [
        "--limit",
        "--cursor",
        "--org-id",
        "--project-id",
        "--all",
        "--json",
    ] {
        assert!(help.contains(option), "{option} missing:\n{help}");
    }
    let out = run_in(None, &["--help"], &[]).await;
    let help = text(&out.stdout);
    for cmd in [
        "serve",
        "migrate",
        "keys",
        "clients",
        "members",
        "orgs",
        "projects",
        "roles",
        "services",
        "activity",
        "routes",
        "whoami",
        "introspect",
        "completion",
        "admin-key",
        "signing-key",
        "backup",
        "apply",
        "healthcheck",
        "leaks",
    ] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(cmd)),
            "{cmd} missing:\n{help}"
        );
    }
}

/// Files in `dir`, names only.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Run in a folder with no database, every database command refuses, names the path and
/// how to proceed, exits 2, and creates nothing; with --create the admin key command makes a
/// new deployment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_commands_create_nothing_unless_asked() {
    let dir = keyplane_testkit::TempDir::new();
    let here = Some(dir.path());
    let expected = dir.path().join("keyplane.db");
    for args in [
        vec!["activity", "verify", "--local"],
        vec!["activity", "verify", "--local", "--json"],
        vec!["admin-key", "rotate"],
        vec!["signing-key", "rotate"],
        vec!["backup", "--output", "copy.db"],
        vec!["migrate"],
        vec!["migrate", "--status"],
    ] {
        let out = run_in(here, &args, &[]).await;
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(&format!(
                "there is no keyplane database at {}",
                expected.display()
            )),
            "{args:?}: {err}"
        );
        assert!(
            err.contains("--database") && err.contains("--create"),
            "{err}"
        );
        assert!(out.stdout.is_empty(), "{args:?}: {}", text(&out.stdout));
        assert!(
            listing(dir.path()).is_empty(),
            "{args:?} created {:?}",
            listing(dir.path())
        );
    }
    // The same with the path given: a typo in it creates nothing either.
    let typo = format!("sqlite://{}", dir.path().join("kepylane.db").display());
    let out = run_in(None, &["admin-key", "rotate", "--database", &typo], &[]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("kepylane.db"));
    assert!(listing(dir.path()).is_empty());

    // A database whose pepper is elsewhere: refused too, and no new pepper is made.
    let app = spawn_app_with(Backend::Sqlite, Options::default())
        .await
        .unwrap();
    let db_dir = app.db.dir.path();
    assert!(!db_dir.join("keyplane.pepper").exists());
    for args in [
        vec!["activity", "verify", "--database", &app.db.url],
        vec!["admin-key", "rotate", "--database", &app.db.url],
        vec!["signing-key", "rotate", "--database", &app.db.url],
    ] {
        let out = run_in(None, &args, &[]).await;
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(&format!(
                "there is no pepper at {}",
                db_dir.join("keyplane.pepper").display()
            )) && err.contains("KEYPLANE_PEPPER"),
            "{args:?}: {err}"
        );
        assert!(
            !db_dir.join("keyplane.pepper").exists(),
            "{args:?} made a pepper"
        );
    }
    // The admin key still works: nothing was rotated.
    assert_eq!(
        app.get("/v1/me", &app.admin_key).await.status,
        StatusCode::OK
    );

    // Asked to: a new deployment, database and pepper, and an admin key.
    let out = run_in(here, &["admin-key", "rotate", "--create"], &[]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("kpa_"), "no admin key printed");
    let files = listing(dir.path());
    assert!(
        files.contains(&"keyplane.db".to_string())
            && files.contains(&"keyplane.pepper".to_string()),
        "{files:?}"
    );
    // Now it exists: verify runs on it.
    let out = run_in(here, &["activity", "verify", "--local", "--json"], &[]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["intact"], true);
    assert!(report["checked"].as_u64().unwrap() > 0, "{report}");
}

/// An empty PostgreSQL database is not a deployment: database commands refuse it and leave it
/// empty; `keyplane migrate` sets it up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_postgres_database_is_refused() {
    let Some(db) = TestDb::fresh(Backend::Postgres).await else {
        return;
    };
    let pepper = [(
        "KEYPLANE_PEPPER",
        "a-pepper-for-this-test-only-0123456789abcdef",
    )];
    for args in [
        vec!["activity", "verify", "--database", &db.url],
        vec!["admin-key", "rotate", "--database", &db.url],
    ] {
        let out = run_in(None, &args, &pepper).await;
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("has no keyplane tables") && err.contains("keyplane migrate"),
            "{err}"
        );
    }
    let status = migrate_status(&db).await;
    assert_eq!(status.0, Some(1));
    assert!(status.1["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["state"] == "pending"));
}

/// `keyplane migrate --status --json` on `db`: exit code and report.
async fn migrate_status(db: &TestDb) -> (Option<i32>, Value) {
    let out = run_in(
        Some(db.dir.path()),
        &["migrate", "--status", "--json", "--database", &db.url],
        &[],
    )
    .await;
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}{}", text(&out.stdout), text(&out.stderr)));
    (out.status.code(), v)
}

async fn sql(db: &TestDb, statement: &str) {
    use sqlx::Connection;
    match db.backend {
        Backend::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            sqlx::query(statement).execute(&mut c).await.unwrap();
            c.close().await.unwrap();
        }
        Backend::Postgres => {
            let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
            sqlx::query(statement).execute(&mut c).await.unwrap();
            c.close().await.unwrap();
        }
    }
}

/// A migration's recorded checksum, in hex.
async fn checksum_hex(db: &TestDb, version: i64) -> String {
    use sqlx::{Connection, Row};
    let q = match db.backend {
        Backend::Sqlite => "SELECT hex(checksum) FROM _sqlx_migrations WHERE version = $1",
        Backend::Postgres => {
            "SELECT encode(checksum, 'hex') FROM _sqlx_migrations WHERE version = $1"
        }
    };
    match db.backend {
        Backend::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            let r = sqlx::query(q)
                .bind(version)
                .fetch_one(&mut c)
                .await
                .unwrap();
            r.get::<String, _>(0)
        }
        Backend::Postgres => {
            let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
            let r = sqlx::query(q)
                .bind(version)
                .fetch_one(&mut c)
                .await
                .unwrap();
            r.get::<String, _>(0)
        }
    }
}

/// Records `hex` as a migration's checksum.
async fn set_checksum(db: &TestDb, version: i64, hex: &str) {
    let value = match db.backend {
        Backend::Sqlite => format!("X'{hex}'"),
        Backend::Postgres => format!("decode('{hex}', 'hex')"),
    };
    sql(
        db,
        &format!("UPDATE _sqlx_migrations SET checksum = {value} WHERE version = {version}"),
    )
    .await;
}

/// `serve --no-migrate` refuses `db` (exit non-zero, the reason on stderr).
async fn refused_without_migrating(db: &TestDb, why: &str) {
    let out = run_in(
        Some(db.dir.path()),
        &[
            "serve",
            "--no-migrate",
            "--listen",
            "127.0.0.1:0",
            "--database",
            &db.url,
        ],
        &[("KEYPLANE_DATA_DIR", db.dir.path().to_str().unwrap())],
    )
    .await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(why), "{err}");
    assert!(!err.contains("keyplane is listening"), "{err}");
}

/// `keyplane migrate [--status]` and `serve --no-migrate`, as a rolling upgrade uses them.
async fn migrations(backend: Backend) {
    let Some(db) = TestDb::fresh(backend).await else {
        return;
    };
    let count = keyplane_store::migration_names(match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    })
    .len();
    let url = db.url.as_str();
    let env = [("KEYPLANE_DATA_DIR", db.dir.path().to_str().unwrap())];

    // Nothing there yet: --no-migrate refuses to start, and creates nothing.
    match backend {
        Backend::Sqlite => {
            refused_without_migrating(&db, "keyplane migrate --create").await;
            assert!(
                listing(db.dir.path()).is_empty(),
                "{:?}",
                listing(db.dir.path())
            );
            // migrate needs --create for a new SQLite file.
            let out = run_in(None, &["migrate", "--database", url], &env).await;
            assert_eq!(out.status.code(), Some(2));
            assert!(listing(db.dir.path()).is_empty());
        }
        Backend::Postgres => {
            refused_without_migrating(&db, &format!("{count} pending migration(s)")).await;
            let (code, status) = migrate_status(&db).await;
            assert_eq!(code, Some(1), "{status}");
            assert_eq!(status["pending"], count);
            assert_eq!(status["current"], false);
        }
    }

    // migrate: every migration applied, and said so.
    let mut args = vec!["migrate", "--database", url, "--json"];
    if backend == Backend::Sqlite {
        args.push("--create");
    }
    let out = run_in(None, &args, &env).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let applied: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        applied["applied"].as_array().unwrap().len(),
        count,
        "{applied}"
    );
    assert_eq!(applied["applied"][0], "0001_foundation");
    assert_eq!(applied["current"], true);
    // No pepper was made: migrations need none.
    assert!(!db.dir.path().join("keyplane.pepper").exists());

    let (code, status) = migrate_status(&db).await;
    assert_eq!(code, Some(0), "{status}");
    assert_eq!(status["pending"], 0);
    for m in status["migrations"].as_array().unwrap() {
        assert_eq!(m["state"], "applied", "{m}");
        let at = m["applied_at"].as_str().unwrap();
        assert!(at.ends_with('Z') && at.len() == 24, "{at}");
    }
    let human = run_in(None, &["migrate", "--status", "--database", url], &env).await;
    let table = text(&human.stdout);
    assert!(
        table.starts_with("VERSION") && table.contains("up to date"),
        "{table}"
    );
    // Again: nothing to do.
    let out = run_in(None, &["migrate", "--database", url], &env).await;
    assert!(out.status.success());
    assert!(
        text(&out.stdout).contains("nothing to apply"),
        "{}",
        text(&out.stdout)
    );

    // A node started with --no-migrate runs on the migrated database.
    let mut server = Server::start_with(&db, url, &["--no-migrate"], &env).await;
    let admin = server.banner_admin_key().await;
    server.service(&admin).await;
    let (_, secret) = server.key(&admin, "one").await;
    assert_eq!(server.authz(&secret).await, StatusCode::OK);
    let stopped = server.terminate().await;
    assert!(stopped.status.success(), "{}", stopped.stderr);

    // A migration applied by a newer keyplane: still current for this one (a rolling upgrade's
    // old nodes keep running), shown as unknown.
    sql(
        &db,
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from the future', TRUE, '', 1)",
    )
    .await;
    set_checksum(&db, 9999, "00").await;
    let (code, status) = migrate_status(&db).await;
    assert_eq!(code, Some(0), "{status}");
    let last = status["migrations"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["state"], "unknown", "{status}");
    assert_eq!(last["name"], "9999_from_the_future");
    let server = Server::start_with(&db, url, &["--no-migrate"], &env).await;
    assert!(server.terminate().await.status.success());
    sql(&db, "DELETE FROM _sqlx_migrations WHERE version = 9999").await;

    // An applied migration whose file changed: refused, not current.
    let original = checksum_hex(&db, 1).await;
    set_checksum(&db, 1, "00").await;
    let (code, status) = migrate_status(&db).await;
    assert_eq!(code, Some(1), "{status}");
    assert_eq!(status["migrations"][0]["state"], "changed");
    refused_without_migrating(&db, "applied migrations differ").await;
    set_checksum(&db, 1, &original).await;

    // The record of the last migration lost: pending again, refused by --no-migrate by name.
    let last_name = status["migrations"][count - 1]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let last_version = status["migrations"][count - 1]["version"].as_i64().unwrap();
    sql(
        &db,
        &format!("DELETE FROM _sqlx_migrations WHERE version = {last_version}"),
    )
    .await;
    let (code, status) = migrate_status(&db).await;
    assert_eq!(code, Some(1), "{status}");
    assert_eq!(status["pending"], 1);
    refused_without_migrating(&db, &format!("1 pending migration(s): {last_name}")).await;
}

mod migrate {
    use keyplane_testkit::Backend;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::migrations(Backend::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::migrations(Backend::Postgres).await;
    }
}
