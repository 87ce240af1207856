//! The TypeScript SDK (`sdk/typescript`, issue 13 §8): its generated types are what
//! openapi-typescript makes from the committed `openapi.json` (so they cannot go stale), it
//! builds, a program using it drives a real keyplane (service, API key, `/v1/authz`, list,
//! revoke, 401), and its typed example compiles while a wrongly typed call does not.
//!
//! Needs node and the SDK's `node_modules` (`scripts/ensure-sdk.sh`, which CI runs); without them
//! the test says it is skipped.

use crate::binary::text;
use keyplane_testkit::{spawn_app, Backend, TempDir};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdk/typescript")
}

/// Whether node and the SDK's dependencies are installed (else says SKIPPED).
fn sdk_ready() -> bool {
    let node = Command::new("node").arg("--version").output();
    let modules = ["openapi-fetch", "openapi-typescript", "typescript"]
        .iter()
        .all(|m| {
            sdk_dir()
                .join("node_modules")
                .join(m)
                .join("package.json")
                .exists()
        });
    if node.is_ok_and(|o| o.status.success()) && modules {
        return true;
    }
    eprintln!(
        "\nSKIPPED: the TypeScript SDK test, because node or sdk/typescript/node_modules is missing. Run scripts/ensure-sdk.sh (CI does).\n"
    );
    false
}

/// Runs `node ARGS` in the SDK's folder with `env`.
fn node(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new("node")
        .args(args)
        .envs(env.iter().copied())
        .current_dir(sdk_dir())
        .output()
        .expect("run node")
}

fn ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

const TSC: &str = "node_modules/typescript/bin/tsc";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_sdk_drives_a_real_server() {
    if !sdk_ready() {
        return;
    }
    // 1. The committed types are the generator's output for the committed openapi.json.
    let dir = TempDir::new();
    let fresh = dir.path().join("schema.ts");
    let out = node(
        &[
            "node_modules/openapi-typescript/bin/cli.js",
            "../../openapi.json",
            "--output",
            fresh.to_str().expect("utf-8"),
        ],
        &[],
    );
    ok("openapi-typescript", &out);
    let generated = std::fs::read_to_string(&fresh).expect("generated schema");
    let committed = std::fs::read_to_string(sdk_dir().join("src/schema.ts"))
        .expect("sdk/typescript/src/schema.ts");
    assert!(
        generated.contains("export interface paths"),
        "{generated:.300}"
    );
    assert!(
        generated == committed,
        "sdk/typescript/src/schema.ts is stale: run `npm run generate` in sdk/typescript and commit it"
    );

    // 2. The SDK builds (dist/), and the typed example compiles.
    ok("tsc (build)", &node(&[TSC, "-p", "tsconfig.json"], &[]));
    ok(
        "tsc --noEmit (examples)",
        &node(&[TSC, "-p", "examples/tsconfig.json", "--noEmit"], &[]),
    );
    // … and the types are real: a body of the wrong shape and an unknown path do not compile.
    let wrong = dir.path().join("wrong.ts");
    let index = sdk_dir().join("src/index.js");
    std::fs::write(
        &wrong,
        format!(
            "import {{ createKeyplaneClient }} from {:?};\n\
             const kp = createKeyplaneClient({{ baseUrl: \"http://x\" }});\n\
             export const a = kp.POST(\"/v1/services\", {{ body: {{ name: \"s\", scopes: 5 }} }});\n\
             export const b = kp.GET(\"/v1/no-such-path\", {{}});\n",
            index.to_str().expect("utf-8")
        ),
    )
    .expect("write wrong.ts");
    let out = node(
        &[
            TSC,
            "--noEmit",
            "--strict",
            "--skipLibCheck",
            "--target",
            "es2022",
            "--module",
            "nodenext",
            "--moduleResolution",
            "nodenext",
            wrong.to_str().expect("utf-8"),
        ],
        &[],
    );
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(
        !out.status.success(),
        "a wrongly typed call compiled:\n{said}"
    );
    assert!(
        said.contains("wrong.ts(3,"),
        "the wrong body is not refused:\n{said}"
    );
    assert!(
        said.contains("wrong.ts(4,"),
        "the unknown path is not refused:\n{said}"
    );

    // 3. A program using the SDK against a real keyplane.
    let Some(app) = spawn_app(Backend::Sqlite).await else {
        return;
    };
    let out = node(
        &["examples/smoke.mjs"],
        &[
            ("KEYPLANE_URL", app.base.as_str()),
            ("KEYPLANE_TOKEN", app.admin_key.as_str()),
        ],
    );
    ok("examples/smoke.mjs", &out);
    let seen: Value = serde_json::from_str(text(&out.stdout).trim())
        .unwrap_or_else(|e| panic!("smoke.mjs printed no JSON ({e}): {}", text(&out.stdout)));
    assert_eq!(seen["service"], "sdk-smoke", "{seen}");
    assert_eq!(seen["duplicate"], 409, "{seen}");
    assert_eq!(seen["allowed"], 200, "{seen}");
    assert_eq!(seen["wrong_scope"], 403, "{seen}");
    assert_eq!(seen["listed"], true, "{seen}");
    assert_eq!(seen["revoked"], "revoked", "{seen}");
    assert_eq!(seen["after_revoke"], 401, "{seen}");
    assert_eq!(seen["anonymous"], 401, "{seen}");
    assert!(
        seen["allowed_headers"]
            .as_array()
            .is_some_and(|h| !h.is_empty()),
        "{seen}"
    );
    // What the program did, the server did: the key exists, revoked.
    let id = seen["key_id"].as_str().expect("key id");
    let key = app.get(&format!("/v1/api-keys/{id}"), &app.admin_key).await;
    assert_eq!(key.json()["status"], "revoked", "{}", key.text);
}
