//! The core's module layers, enforced: each layer imports only the ones below it, and a use case
//! never imports a sibling (what two share moves down into `runtime` or `domain`).
//!
//! ```text
//! usecase/*  ->  app  ->  runtime/  ->  store  ->  domain/
//! ```
//!
//! keyplane-store sees only `keyplane_core::{domain, store}`. Comments are ignored (doc links
//! may point anywhere); code paths (`crate::x`, `super::x`, `keyplane_core::x`) are checked.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// The layers of `keyplane-core/src`, lowest first, and what each may import.
fn allowed(layer: &str) -> &'static [&'static str] {
    match layer {
        "domain" => &["domain"],
        "store" => &["domain", "store"],
        "runtime" => &["domain", "store", "runtime"],
        "app" => &["domain", "store", "runtime", "app"],
        "usecase" => &["domain", "store", "runtime", "app", "usecase"],
        "lib" => &["domain", "store", "runtime", "app", "usecase"],
        other => panic!("no layer named {other}: add it to tests/layers.rs"),
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("readable source folder") {
        let path = entry.expect("a folder entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its comments.
fn code(path: &Path) -> String {
    fs::read_to_string(path)
        .expect("readable source")
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .map(|l| l.split(" // ").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first path segment after every occurrence of `prefix` (e.g. `crate::`).
fn segments_after(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().last();
        rest = &rest[i + prefix.len()..];
        // `$crate::` in macros counts as `crate::`; `foo_crate::` does not.
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let seg: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !seg.is_empty() {
            out.insert(seg);
        } else if rest.starts_with('{') {
            // `crate::{a, b}`: every name in the group.
            let group = &rest[1..rest.find('}').unwrap_or(rest.len())];
            for part in group.split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        }
    }
    out
}

/// The layer a file of `src` belongs to, and its module name within the layer.
fn layer_of(src: &Path, file: &Path) -> (String, String) {
    let rel = file.strip_prefix(src).expect("inside src");
    let parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    match parts.as_slice() {
        [one] => (one.clone(), one.clone()),
        [layer, module, ..] => (layer.clone(), module.clone()),
        [] => unreachable!("a file has a name"),
    }
}

#[test]
fn core_modules_import_only_downwards() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let (layer, module) = layer_of(&src, file);
        let text = code(file);
        for seg in segments_after(&text, "crate::") {
            if !allowed(&layer).contains(&seg.as_str()) {
                wrong.push(format!("{}: imports crate::{seg}", file.display()));
            }
            // A use case reaching a sibling use case through the crate root.
            if layer == "usecase" && seg == "usecase" {
                for sibling in segments_after(&text, "crate::usecase::") {
                    if sibling != "RETRIES" && sibling != module {
                        wrong.push(format!(
                            "{}: use case `{module}` imports use case `{sibling}`",
                            file.display()
                        ));
                    }
                }
            }
        }
        if layer == "usecase" && module != "mod" {
            // `super::` is the use-case root (shared helpers); `super::sibling` is not allowed.
            let siblings: BTreeSet<String> = files
                .iter()
                .map(|f| layer_of(&src, f))
                .filter(|(l, m)| l == "usecase" && m != "mod")
                .map(|(_, m)| m)
                .collect();
            for seg in segments_after(&text, "super::") {
                if siblings.contains(&seg) {
                    wrong.push(format!(
                        "{}: use case `{module}` imports use case `{seg}`",
                        file.display()
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "layer rules broken:\n{}",
        wrong.join("\n")
    );
}

/// The names of the functions a file defines.
fn functions(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for part in text.split("fn ").skip(1) {
        let name: String = part
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.insert(name);
        }
    }
    out
}

/// Methods are not imported, so a use case could still lean on a sibling by calling one of its
/// methods on `self`; that is refused too.
#[test]
fn use_cases_do_not_call_sibling_use_cases() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/usecase");
    let mut files = Vec::new();
    rust_files(&dir, &mut files);
    let defined: Vec<(PathBuf, BTreeSet<String>)> = files
        .iter()
        .map(|f| (f.clone(), functions(&code(f))))
        .collect();
    let mut wrong = Vec::new();
    for (file, own) in &defined {
        let text = code(file);
        for called in segments_after(&text, "self.") {
            if own.contains(&called) {
                continue;
            }
            for (other, theirs) in &defined {
                if other != file && theirs.contains(&called) {
                    wrong.push(format!(
                        "{} calls `{called}`, a use case of {}",
                        file.display(),
                        other.display()
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "use cases calling siblings:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_store_crate_sees_only_domain_and_store() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../keyplane-store/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(
        !files.is_empty(),
        "keyplane-store's sources are where they were"
    );
    let mut wrong = Vec::new();
    for file in &files {
        for seg in segments_after(&code(file), "keyplane_core::") {
            if seg != "domain" && seg != "store" {
                wrong.push(format!("{}: imports keyplane_core::{seg}", file.display()));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "keyplane-store reaches past the storage interface:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_core_knows_neither_sql_nor_http_servers() {
    let manifest = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .expect("readable manifest");
    for banned in ["sqlx", "axum", "hyper", "tower"] {
        assert!(
            !manifest
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{banned} "))
                    || l.trim_start().starts_with(&format!("{banned}."))),
            "keyplane-core depends on {banned}"
        );
    }
}

#[test]
fn the_checker_itself_sees_imports() {
    let text = "use crate::{domain::x, runtime};\nlet a = $crate::usecase::RETRIES;\nuse keyplane_crate::zz;";
    let found = segments_after(text, "crate::");
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        ["domain", "runtime", "usecase"]
    );
}
