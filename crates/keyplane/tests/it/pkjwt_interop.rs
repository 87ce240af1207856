//! `private_key_jwt` with clients nobody on keyplane wrote, on both backends: openid-client
//! (npm, `interop-tests/openid-client-pkjwt.mjs`) and Authlib (PyPI,
//! `interop-tests/authlib_pkjwt.py`), each generating its own keys, discovering keyplane's
//! metadata, and getting, introspecting and revoking tokens with its own client assertions.
//! And DPoP with openid-client (`interop-tests/openid-client-dpop.mjs`): clients that require
//! it, bound tokens from its DPoP handle, `fetchProtectedResource` through the gateway and
//! nginx's `auth_request`, with and without server nonces.
//! `scripts/ensure-interop.sh` installs both (CI runs it); without them these tests say
//! SKIPPED and pass.

use keyplane_testkit::{json, TestApp};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

const READ: &str = "ai-guard:read";

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../interop-tests")
}

fn skipped(what: &str) {
    // Past the harness's capture, so a run without the tools says so.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {what}; run `bash scripts/ensure-interop.sh` (CI does) to install it"
    );
}

/// Runs `program args` with the server's address and admin key; its stdout's JSON lines.
async fn run(app: &TestApp, program: &Path, args: &[PathBuf]) -> Vec<Value> {
    run_with(app, program, args, &[]).await
}

/// [`run`], with more environment.
async fn run_with(
    app: &TestApp,
    program: &Path,
    args: &[PathBuf],
    env: &[(&str, &str)],
) -> Vec<Value> {
    let child = tokio::process::Command::new(program)
        .args(args)
        .current_dir(interop_dir())
        .env("KEYPLANE_BASE", &app.base)
        .env("KEYPLANE_ADMIN_KEY", &app.admin_key)
        .env("KEYPLANE_SCOPE", READ)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{} ran over two minutes", program.display()))
        .expect("its output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{} failed ({}):\n{stdout}\n{stderr}",
        program.display(),
        output.status
    );
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{stderr}"))
        })
        .collect()
}

fn check_flows(who: &str, results: &[Value], algs: &[&str]) {
    let flows: Vec<&Value> = results
        .iter()
        .filter(|r| r["case"] == "private_key_jwt")
        .collect();
    assert_eq!(flows.len(), algs.len(), "{who}: {results:?}");
    for (r, alg) in flows.iter().zip(algs) {
        assert_eq!(r["alg"], *alg, "{who}");
        assert_eq!(r["ok"], true, "{who} {alg}: {r}");
        assert_eq!(
            r["had_secret"], false,
            "{who} {alg}: a private_key_jwt client got a secret"
        );
        // openid-client lower-cases it (RFC 6749 §5.1: case-insensitive).
        assert!(
            r["token_type"]
                .as_str()
                .is_some_and(|t| t.eq_ignore_ascii_case("Bearer")),
            "{who} {alg}: {r}"
        );
        assert_eq!(r["scope"], READ, "{who} {alg}: {r}");
        assert_eq!(r["active"], true, "{who} {alg}: {r}");
        assert_eq!(r["client_id_matches"], true, "{who} {alg}: {r}");
        assert_eq!(r["active_after_revocation"], false, "{who} {alg}: {r}");
    }
}

/// Whether node and openid-client are installed (else says SKIPPED).
fn openid_client_ready(what: &str) -> bool {
    let ok = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok()
        && interop_dir()
            .join("node_modules/openid-client/package.json")
            .exists();
    if !ok {
        skipped(&format!(
            "{what} (node or interop-tests/node_modules is missing)"
        ));
    }
    ok
}

async fn openid_client(app: TestApp) {
    let dir = interop_dir();
    if !openid_client_ready("the openid-client interoperability test") {
        return;
    }
    app.service("ai-guard", &[READ]).await;
    let results = run(
        &app,
        Path::new("node"),
        &[dir.join("openid-client-pkjwt.mjs")],
    )
    .await;
    check_flows(
        "openid-client",
        &results,
        &["ES256", "Ed25519", "RS256", "PS256"],
    );
    for r in results.iter().filter(|r| r["case"] == "private_key_jwt") {
        assert_eq!(r["advertised"], true, "{r}");
    }
    // The 401 of a wrong secret in Basic: a challenge openid-client reads the error code from.
    let basic = results
        .iter()
        .find(|r| r["case"] == "basic_challenge")
        .expect("the Basic case ran");
    assert_eq!(basic["ok"], true, "{basic}");
    assert_eq!(basic["status"], 401, "{basic}");
    assert_eq!(basic["scheme"], "basic", "{basic}");
    assert_eq!(basic["challenge_error"], "invalid_client", "{basic}");
    assert_eq!(
        basic["challenge_description"], "client authentication failed",
        "{basic}"
    );
}
on_both!(openid_client_private_key_jwt, openid_client);

fn authlib_python() -> Option<PathBuf> {
    let venv = std::env::var_os("KEYPLANE_INTEROP_VENV")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/keyplane-py-interop"))
        })?;
    let python = venv.join("bin/python");
    let ok = std::process::Command::new(&python)
        .args(["-c", "import authlib, joserfc, requests"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(python)
}

async fn authlib(app: TestApp) {
    let Some(python) = authlib_python() else {
        skipped("the Authlib interoperability test (its virtual environment is missing)");
        return;
    };
    app.service("ai-guard", &[READ]).await;
    let results = run(&app, &python, &[interop_dir().join("authlib_pkjwt.py")]).await;
    let meta = results
        .iter()
        .find(|r| r["case"] == "metadata")
        .expect("metadata case");
    assert_eq!(meta["ok"], true, "{meta}");
    assert_eq!(
        meta["algs"],
        json!(["ES256", "EdDSA", "Ed25519", "RS256", "PS256"])
    );
    check_flows("Authlib", &results, &["ES256", "EdDSA", "RS256", "PS256"]);
    for r in results.iter().filter(|r| r["case"] == "private_key_jwt") {
        // Authlib's default assertion lives an hour: refused, saying why.
        let default = r["default_lifetime"].as_str().unwrap_or("");
        assert!(
            default.starts_with("invalid_client") && default.contains("too long"),
            "{r}"
        );
        assert_eq!(r["revoked_status"], 200, "{r}");
    }
}
on_both!(authlib_private_key_jwt, authlib);

// ----- DPoP (RFC 9449) with openid-client -----

/// openid-client's DPoP (`getDPoPHandle` with a `randomDPoPKeyPair` key) against keyplane,
/// `interop-tests/openid-client-dpop.mjs`: clients registered with `dpop_bound_access_tokens`
/// are refused without a proof; with the handle they get DPoP-bound tokens (`cnf.jkt` the
/// handle's key) and call a protected resource with `fetchProtectedResource` — through
/// keyplane's gateway, and through nginx's `auth_request` to `/v1/authz` when nginx is
/// installed — while the same token as a plain Bearer is refused. With `nonces`, keyplane
/// requires DPoP nonces, and openid-client's one retry on `use_dpop_nonce` (with the
/// `DPoP-Nonce` it was given) must succeed at the token endpoint and at each resource.
async fn openid_client_dpop(backend: keyplane_testkit::Backend, nonces: bool) {
    if !openid_client_ready("the openid-client DPoP interoperability test") {
        return;
    }
    let dir = keyplane_testkit::TempDir::new();
    let extra: &[(&str, &str)] = if nonces {
        &[("KEYPLANE_DPOP_REQUIRE_NONCE", "true")]
    } else {
        &[]
    };
    let Some((app, upstream)) = crate::dpop::spawn_with_gateway(backend, dir.path(), extra).await
    else {
        return;
    };
    let guard = "/v1/text/guard";
    let mut resources = serde_json::Map::new();
    resources.insert(
        "gateway".into(),
        json!(format!("{}{guard}", app.gateway_base().unwrap())),
    );
    let nginx = crate::nginx::nginx_or_skip("the openid-client DPoP test through nginx");
    let _nginx = match &nginx {
        Some(binary) => {
            let (running, front) =
                crate::nginx::start_nginx(binary, dir.path(), &app.base, &upstream).await;
            resources.insert("nginx".into(), json!(format!("{front}{guard}")));
            Some(running)
        }
        None => None,
    };
    let resources = Value::Object(resources).to_string();
    let results = run_with(
        &app,
        Path::new("node"),
        &[interop_dir().join("openid-client-dpop.mjs")],
        &[("KEYPLANE_RESOURCES", &resources)],
    )
    .await;
    // With nonces the first answer of each exchange asks for one (400 at the token endpoint,
    // 401 at a resource), and openid-client's retry with it succeeds.
    let (token_answers, resource_answers) = if nonces {
        (json!([400, 200]), json!([401, 200]))
    } else {
        (json!([200]), json!([200]))
    };
    let cases: Vec<&Value> = results
        .iter()
        .filter(|r| r["case"] == "dpop" || r["case"] == "dpop_private_key_jwt")
        .collect();
    let algs: Vec<&str> = cases.iter().map(|r| r["alg"].as_str().unwrap()).collect();
    assert_eq!(
        algs,
        ["ES256", "Ed25519", "RS256", "PS256", "ES256"],
        "{results:?}"
    );
    for r in cases {
        let alg = &r["alg"];
        assert_eq!(r["ok"], true, "{alg}: {r}");
        if r["case"] == "dpop" {
            assert_eq!(r["registered_required"], true, "{r}");
            assert_eq!(r["advertised"], true, "{alg}: {r}");
        }
        // Without a proof: openid-client reads keyplane's error code.
        assert_eq!(
            r["without_proof"]["error"], "invalid_dpop_proof",
            "{alg}: {r}"
        );
        assert_eq!(r["without_proof"]["status"], 400, "{alg}: {r}");
        // With the handle: a DPoP-bound token (openid-client lower-cases the type).
        assert!(
            r["token_type"]
                .as_str()
                .is_some_and(|t| t.eq_ignore_ascii_case("DPoP")),
            "{alg}: {r}"
        );
        assert_eq!(r["scope"], READ, "{alg}: {r}");
        assert_eq!(r["jkt_matches"], true, "{alg}: {r}");
        assert_eq!(r["token_answers"], token_answers, "{alg}: {r}");
        let names: Vec<&String> = r["resources"].as_object().unwrap().keys().collect();
        assert_eq!(names.len(), 1 + usize::from(nginx.is_some()), "{r}");
        for (name, res) in r["resources"].as_object().unwrap() {
            assert_eq!(res["status"], 200, "{alg} via {name}: {res}");
            assert_eq!(res["upstream_json"], true, "{alg} via {name}: {res}");
            assert_eq!(res["answers"], resource_answers, "{alg} via {name}: {res}");
            // The handle kept the nonce: the next request needs no retry.
            assert_eq!(res["second_status"], 200, "{alg} via {name}: {res}");
            assert_eq!(
                res["second_answers"],
                json!([200]),
                "{alg} via {name}: {res}"
            );
            // The bound token as Bearer: refused with a challenge openid-client reads.
            assert_eq!(res["bearer"]["status"], 401, "{alg} via {name}: {res}");
            assert_eq!(
                res["bearer"]["error"], "invalid_token",
                "{alg} via {name}: {res}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_client_dpop_sqlite() {
    openid_client_dpop(keyplane_testkit::Backend::Sqlite, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_client_dpop_postgres() {
    openid_client_dpop(keyplane_testkit::Backend::Postgres, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_client_dpop_with_nonces_sqlite() {
    openid_client_dpop(keyplane_testkit::Backend::Sqlite, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_client_dpop_with_nonces_postgres() {
    openid_client_dpop(keyplane_testkit::Backend::Postgres, true).await;
}
