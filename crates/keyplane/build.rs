//! Tells the binary what `keyplane_build_info` reports: the compiler's version, and the source
//! commit when the build is given one (`KEYPLANE_COMMIT=$(git rev-parse --short HEAD) cargo
//! build …`; packaging sets it). Git is not asked here: a commit read once would go stale, and
//! asking on every build would rebuild the binary on every commit.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=KEYPLANE_COMMIT");
    println!("cargo:rerun-if-changed=build.rs");
    if let Ok(commit) = std::env::var("KEYPLANE_COMMIT") {
        let commit = commit.trim();
        // Only what is safe as a label value as it is.
        if !commit.is_empty()
            && commit.len() <= 64
            && commit
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            println!("cargo:rustc-env=KEYPLANE_BUILD_COMMIT={commit}");
        }
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    if let Ok(out) = Command::new(rustc).arg("--version").output() {
        if out.status.success() {
            // `rustc 1.95.0 (59807616e 2026-03-…)`: the version number.
            let text = String::from_utf8_lossy(&out.stdout);
            if let Some(v) = text.split_whitespace().nth(1) {
                println!("cargo:rustc-env=KEYPLANE_BUILD_RUSTC={v}");
            }
        }
    }
}
