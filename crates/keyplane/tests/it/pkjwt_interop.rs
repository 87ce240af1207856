//! `private_key_jwt` with clients nobody on keyplane wrote, on both backends: openid-client
//! (npm, `interop-tests/openid-client-pkjwt.mjs`) and Authlib (PyPI,
//! `interop-tests/authlib_pkjwt.py`), each generating its own keys, discovering keyplane's
//! metadata, and getting, introspecting and revoking tokens with its own client assertions.
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
    let child = tokio::process::Command::new(program)
        .args(args)
        .current_dir(interop_dir())
        .env("KEYPLANE_BASE", &app.base)
        .env("KEYPLANE_ADMIN_KEY", &app.admin_key)
        .env("KEYPLANE_SCOPE", READ)
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

async fn openid_client(app: TestApp) {
    let dir = interop_dir();
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_err()
        || !dir.join("node_modules/openid-client/package.json").exists()
    {
        skipped("the openid-client interoperability test (node or interop-tests/node_modules is missing)");
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
