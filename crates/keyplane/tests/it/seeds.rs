//! Seeds 000 and 001 as their readers would run them: `scripts/seed-flows.sh` starts the
//! `keyplane` executable cargo built, runs the seeds' curl commands against it (only the host
//! replaced) and checks every answer field by field. Needs bash, curl, base64 and python3.

use std::path::Path;
use std::process::Command;

#[test]
fn seed_curl_commands_work_against_the_binary() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let script = root.join("scripts/seed-flows.sh");
    assert!(script.is_file(), "{} is missing", script.display());
    for tool in ["bash", "curl", "base64", "python3"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(found, "scripts/seed-flows.sh needs `{tool}` on the PATH");
    }

    let out = Command::new("bash")
        .arg(&script)
        .arg(env!("CARGO_BIN_EXE_keyplane"))
        .current_dir(&root)
        .output()
        .expect("run bash scripts/seed-flows.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stdout.lines().last().unwrap_or("");
    assert!(
        out.status.success() && last.ends_with(" passed, 0 failed"),
        "scripts/seed-flows.sh failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    // Passing output is shown with `cargo test -- --nocapture`.
    println!("{stdout}");
}
