//! Packaging (issue 13 §6): `keyplane.example.toml`, the `Containerfile`, the systemd unit and
//! the Kubernetes manifests under `deploy/`, each checked against what keyplane really accepts.
//!
//! - The example configuration is loaded by the real loader and a server starts with it; a test
//!   fails when the configuration's structs accept a key the example does not mention (the keys
//!   are read from the structs' serde `Deserialize` impls, not from a list kept by hand), and
//!   when the loader reads a `KEYPLANE_*` variable that is not known or not documented.
//! - The Containerfile is linted with hadolint; its environment is keyplane's own.
//! - The systemd unit passes `systemd-analyze verify`, with a bounded `security` exposure.
//! - The manifests pass the Kubernetes schema (kubernetes-validate, strict), and two keyplane
//!   processes run with exactly the environment and configuration file they give, on one
//!   PostgreSQL database: both ready, a key made through one works on the other, and its
//!   revocation through one is refused by the other.
//!
//! The tools come from `scripts/ensure-deploy-tools.sh` (CI runs it); without them the tests
//! that need them say they are skipped.

use crate::binary::{cli, text, Server};
use keyplane::config::{Config, ConfigFlags, FileConfig, KNOWN_ENV};
use keyplane_testkit::reqwest::StatusCode;
use keyplane_testkit::{Backend, TempDir, TestDb};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_keyplane");

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    let p = repo_root().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

/// The deployment tools' virtual environment (scripts/ensure-deploy-tools.sh), or `None` and a
/// notice when it is missing.
fn deploy_tool(name: &str, what: &str) -> Option<PathBuf> {
    let venv = std::env::var("KEYPLANE_DEPLOY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/keyplane-deploy")
        });
    let tool = venv.join("bin").join(name);
    if tool.exists() {
        Some(tool)
    } else {
        eprintln!(
            "\nSKIPPED: {what}, because {} is not installed. Run scripts/ensure-deploy-tools.sh (CI does).\n",
            tool.display()
        );
        None
    }
}

// ----- keyplane.example.toml -----

/// Every key path the configuration file accepts (`listen`, `oauth.signing_alg`,
/// `clients.secret_file`, …), read from the `Deserialize` impls of [`FileConfig`] and the
/// structs in it: a deserializer that records the field names serde asks for.
mod accepted {
    use serde::de::{self, value::BorrowedStrDeserializer, DeserializeSeed, Visitor};
    use std::cell::RefCell;
    use std::collections::BTreeSet;
    use std::fmt;

    /// toml's `Spanned<T>`: a struct of its own whose `value` field is `T`, at the same path.
    const SPANNED: &str = "$__serde_spanned_private_Spanned";

    #[derive(Debug)]
    pub struct Failed(String);
    impl fmt::Display for Failed {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl std::error::Error for Failed {}
    impl de::Error for Failed {
        fn custom<T: fmt::Display>(msg: T) -> Self {
            Failed(msg.to_string())
        }
    }

    pub fn keys<T: de::DeserializeOwned>() -> BTreeSet<String> {
        let out = RefCell::new(BTreeSet::new());
        T::deserialize(Recorder {
            path: String::new(),
            out: &out,
        })
        .unwrap_or_else(|e| panic!("the recording deserializer failed: {e}"));
        out.into_inner()
    }

    struct Recorder<'a> {
        path: String,
        out: &'a RefCell<BTreeSet<String>>,
    }

    impl Recorder<'_> {
        fn at(&self, field: &str) -> String {
            if self.path.is_empty() {
                field.to_string()
            } else {
                format!("{}.{field}", self.path)
            }
        }
    }

    macro_rules! scalar {
        ($($method:ident => $visit:ident($value:expr)),* $(,)?) => {
            $(fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Failed> {
                v.$visit($value)
            })*
        };
    }

    impl<'de> de::Deserializer<'de> for Recorder<'_> {
        type Error = Failed;

        scalar! {
            // A free-form value (`toml::Value`: inline JWK sets, federated credentials) is a leaf.
            deserialize_any => visit_str(""),
            deserialize_bool => visit_bool(false),
            deserialize_i8 => visit_i64(0),
            deserialize_i16 => visit_i64(0),
            deserialize_i32 => visit_i64(0),
            deserialize_i64 => visit_i64(0),
            deserialize_u8 => visit_u64(0),
            deserialize_u16 => visit_u64(0),
            deserialize_u32 => visit_u64(0),
            deserialize_u64 => visit_u64(0),
            deserialize_f32 => visit_f64(0.0),
            deserialize_f64 => visit_f64(0.0),
            deserialize_char => visit_char('a'),
            deserialize_str => visit_str(""),
            deserialize_string => visit_str(""),
            deserialize_identifier => visit_str(""),
            deserialize_bytes => visit_bytes(&[]),
            deserialize_byte_buf => visit_bytes(&[]),
        }

        fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Failed> {
            v.visit_unit()
        }
        fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Failed> {
            v.visit_unit()
        }

        fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Failed> {
            v.visit_some(self)
        }
        fn deserialize_unit_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            v: V,
        ) -> Result<V::Value, Failed> {
            v.visit_unit()
        }
        fn deserialize_newtype_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            v: V,
        ) -> Result<V::Value, Failed> {
            v.visit_newtype_struct(self)
        }
        fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Failed> {
            v.visit_seq(One {
                recorder: Some(self),
            })
        }
        fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, v: V) -> Result<V::Value, Failed> {
            self.deserialize_seq(v)
        }
        fn deserialize_tuple_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            _: usize,
            v: V,
        ) -> Result<V::Value, Failed> {
            self.deserialize_seq(v)
        }
        fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Failed> {
            v.visit_map(Fields {
                recorder: self,
                fields: &[],
                next: 0,
                spanned: false,
            })
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            name: &'static str,
            fields: &'static [&'static str],
            v: V,
        ) -> Result<V::Value, Failed> {
            let spanned = name == SPANNED;
            if !spanned {
                for f in fields {
                    self.out.borrow_mut().insert(self.at(f));
                }
            }
            v.visit_map(Fields {
                recorder: self,
                fields,
                next: 0,
                spanned,
            })
        }
        fn deserialize_enum<V: Visitor<'de>>(
            self,
            name: &'static str,
            _: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Failed> {
            Err(Failed(format!(
                "{}: an enum ({name}) in the configuration; teach this recorder its variants",
                self.path
            )))
        }
    }

    /// A sequence of one element, at the sequence's own path.
    struct One<'a> {
        recorder: Option<Recorder<'a>>,
    }

    impl<'de> de::SeqAccess<'de> for One<'_> {
        type Error = Failed;
        fn next_element_seed<T: DeserializeSeed<'de>>(
            &mut self,
            seed: T,
        ) -> Result<Option<T::Value>, Failed> {
            match self.recorder.take() {
                Some(r) => seed.deserialize(r).map(Some),
                None => Ok(None),
            }
        }
    }

    /// A struct's fields, each once, in order, each value recorded under its name.
    struct Fields<'a> {
        recorder: Recorder<'a>,
        fields: &'static [&'static str],
        next: usize,
        spanned: bool,
    }

    impl<'de> de::MapAccess<'de> for Fields<'_> {
        type Error = Failed;
        fn next_key_seed<K: DeserializeSeed<'de>>(
            &mut self,
            seed: K,
        ) -> Result<Option<K::Value>, Failed> {
            let Some(field) = self.fields.get(self.next) else {
                return Ok(None);
            };
            seed.deserialize(BorrowedStrDeserializer::<Failed>::new(field))
                .map(Some)
        }
        fn next_value_seed<V: DeserializeSeed<'de>>(
            &mut self,
            seed: V,
        ) -> Result<V::Value, Failed> {
            let field = self.fields[self.next];
            self.next += 1;
            let path = if self.spanned {
                self.recorder.path.clone()
            } else {
                self.recorder.at(field)
            };
            seed.deserialize(Recorder {
                path,
                out: self.recorder.out,
            })
        }
    }
}

/// The example with every commented-out setting and table header put back (`# key = value`,
/// `# [table]`, `# [[table]]`); prose comments stay comments.
fn uncommented(example: &str) -> String {
    example
        .lines()
        .map(|line| {
            let Some(rest) = line.strip_prefix("# ").or_else(|| line.strip_prefix('#')) else {
                return line.to_string();
            };
            let header = rest.starts_with('[')
                && rest
                    .trim_end()
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_' || c == '.');
            let setting = rest.split_once(" = ").is_some_and(|(k, _)| {
                !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            });
            if header || setting {
                rest.to_string()
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every key path of a TOML document (arrays of tables: their elements' keys at the array's
/// path).
fn toml_keys(v: &toml::Value, path: &str, out: &mut BTreeSet<String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                out.insert(p.clone());
                toml_keys(v, &p, out);
            }
        }
        toml::Value::Array(items) => {
            for item in items {
                if item.is_table() {
                    toml_keys(item, path, out);
                }
            }
        }
        _ => {}
    }
}

/// The settings the structs accept that `example` does not mention.
fn unmentioned(example: &str) -> BTreeSet<String> {
    let all = uncommented(example);
    let parsed: toml::Value = toml::from_str(&all)
        .unwrap_or_else(|e| panic!("the example with its settings uncommented is not TOML: {e}"));
    let mut mentioned = BTreeSet::new();
    toml_keys(&parsed, "", &mut mentioned);
    accepted::keys::<FileConfig>()
        .difference(&mentioned)
        .cloned()
        .collect()
}

#[test]
fn the_example_configuration_mentions_every_setting() {
    let example = read("keyplane.example.toml");
    let accepted = accepted::keys::<FileConfig>();
    // The recorder sees the nested tables and the declared objects' fields, not only the top.
    for k in [
        "listen",
        "oauth.dpop_require_nonce",
        "prefixes.access_token",
        "otel.hot_sample_ratio",
        "gateway.max_header_bytes",
        "authz.unmatched",
        "routes.scopes",
        "clients.federated_credentials",
        "members.email",
    ] {
        assert!(accepted.contains(k), "{k} is not among {accepted:?}");
    }
    assert!(accepted.len() > 90, "{accepted:?}");

    let missing = unmentioned(&example);
    assert!(
        missing.is_empty(),
        "keyplane.example.toml does not mention these settings the configuration accepts \
         (add each, commented out, with its default, variable and meaning): {missing:?}"
    );
    // Everything the example mentions is a real setting: the uncommented example
    // deserializes with `deny_unknown_fields`.
    let all = uncommented(&example);
    toml::from_str::<FileConfig>(&all)
        .unwrap_or_else(|e| panic!("the example with its settings uncommented is refused: {e}"));

    // The check can fail: drop one line and it names the setting.
    let without: String = example
        .lines()
        .filter(|l| !l.contains("dpop_require_nonce = "))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(
        unmentioned(&without),
        BTreeSet::from(["oauth.dpop_require_nonce".to_string()])
    );
}

#[test]
fn every_variable_is_known_and_in_the_example() {
    let example = read("keyplane.example.toml");
    // What the binary reads at run time: every `"KEYPLANE_…"` literal of its sources, but the
    // compile-time ones (build.rs hands the binary KEYPLANE_BUILD_*).
    let sources = ["config.rs", "healthcheck.rs", "telemetry.rs", "main.rs"]
        .iter()
        .map(|f| read(&format!("crates/keyplane/src/{f}")))
        .collect::<String>();
    let mut read_vars = BTreeSet::new();
    for (i, _) in sources.match_indices("\"KEYPLANE_") {
        let rest = &sources[i + 1..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        // A whole string literal naming a variable (not a prefix such as "KEYPLANE_").
        if rest[name.len()..].starts_with('"')
            && name.len() > "KEYPLANE_".len()
            && !name.starts_with("KEYPLANE_BUILD_")
        {
            read_vars.insert(name);
        }
    }
    assert!(read_vars.len() > 40, "{read_vars:?}");
    let unknown: Vec<_> = read_vars
        .iter()
        .filter(|v| !KNOWN_ENV.contains(&v.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "read but not in KNOWN_ENV (they would earn an 'unknown variable' warning): {unknown:?}"
    );
    // The CLI client's and the tests' variables are not the server's settings.
    let not_settings = [
        "KEYPLANE_URL",
        "KEYPLANE_TOKEN",
        "KEYPLANE_CA_CERT",
        "KEYPLANE_TEST_DATABASE_URL",
    ];
    let undocumented: Vec<_> = KNOWN_ENV
        .iter()
        .filter(|v| !not_settings.contains(v))
        .filter(|v| {
            // A whole word: KEYPLANE_ADMIN_KEY is not mentioned by KEYPLANE_ADMIN_KEY_FILE.
            !example.match_indices(**v).any(|(i, _)| {
                !example[i + v.len()..]
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_uppercase() || c == '_')
            })
        })
        .collect();
    assert!(
        undocumented.is_empty(),
        "keyplane.example.toml does not name these variables: {undocumented:?}"
    );
}

/// The example as it stands is a working configuration: the loader accepts it, and a server
/// starts with it and is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_configuration_loads_and_serves() {
    let example = repo_root().join("keyplane.example.toml");
    let flags = ConfigFlags {
        config: Some(example.clone()),
        ..Default::default()
    };
    let c = Config::load(&flags, None, &HashMap::new()).expect("the example loads");
    assert_eq!(c.listen.to_string(), "127.0.0.1:8780");
    assert_eq!(c.database, "sqlite://keyplane.db");
    assert_eq!(c.config_file.as_deref(), Some(example.as_path()));

    // Its listen address and database are replaced by a free port and a fresh database.
    let db = TestDb::fresh(Backend::Sqlite).await.expect("sqlite");
    let path = example.to_str().expect("utf-8 path");
    let server = Server::start_with(&db, &db.url, &["--config", path], &[]).await;
    let ready = server.get("/readyz", "unused").await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text);
    assert_eq!(ready.json()["status"], "ready");
    let stopped = server.terminate().await;
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert!(
        !stopped.stderr.contains("unknown KEYPLANE_"),
        "{}",
        stopped.stderr
    );
}

// ----- the Containerfile -----

/// The `KEY=VALUE` pairs of the final stage's `ENV` instructions.
fn final_stage_env(containerfile: &str) -> HashMap<String, String> {
    let lines: Vec<&str> = containerfile.lines().collect();
    let last_from = lines
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .expect("a FROM");
    // Join continued lines, then read ENV instructions.
    let joined = lines[last_from..].join("\n").replace("\\\n", " ");
    let mut env = HashMap::new();
    for line in joined.lines() {
        if let Some(rest) = line.trim().strip_prefix("ENV ") {
            for pair in rest.split_whitespace() {
                let (k, v) = pair.split_once('=').expect("ENV KEY=VALUE");
                env.insert(k.to_string(), v.to_string());
            }
        }
    }
    env
}

#[test]
fn the_containerfile_is_what_keyplane_reads() {
    let file = read("Containerfile");
    // The final image: distroless, non-root, the state in a volume, the healthcheck keyplane's.
    let last_from = file
        .lines()
        .rfind(|l| l.starts_with("FROM "))
        .expect("a FROM");
    assert_eq!(
        last_from.trim(),
        "FROM gcr.io/distroless/cc-debian12:nonroot"
    );
    assert!(file.contains("\nUSER 65532:65532\n"), "{file}");
    assert!(file.contains("VOLUME [\"/var/lib/keyplane\"]"), "{file}");
    assert!(file.contains("--locked -p keyplane"), "{file}");
    assert!(
        file.contains("CMD [\"/usr/local/bin/keyplane\", \"healthcheck\""),
        "the HEALTHCHECK must be exec form (no shell in the image) and keyplane's own"
    );
    let env = final_stage_env(&file);
    assert!(env.len() >= 3, "{env:?}");
    for k in env.keys() {
        assert!(
            KNOWN_ENV.contains(&k.as_str()),
            "the image sets {k}, which keyplane does not read"
        );
    }
    // The image's environment is a valid configuration, its port the one EXPOSEd, and the
    // healthcheck asks that port on the loopback address.
    let c = Config::load(&ConfigFlags::default(), None, &env).expect("the image's environment");
    assert!(c.listen.ip().is_unspecified(), "{}", c.listen);
    assert!(
        file.contains(&format!("\nEXPOSE {}\n", c.listen.port())),
        "EXPOSE {}",
        c.listen.port()
    );
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/keyplane"));
    assert_eq!(
        keyplane::healthcheck::default_url(None, &env).expect("url"),
        format!("http://127.0.0.1:{}/readyz", c.listen.port())
    );
    // Build output and local secrets stay out of the build context.
    for ignore in [".dockerignore", ".containerignore"] {
        let text = read(ignore);
        for pattern in ["target/", "*.pepper", "*.db"] {
            assert!(
                text.lines().any(|l| l.trim() == pattern),
                "{ignore} lacks {pattern}"
            );
        }
    }
}

/// The dependency layer copies every manifest the workspace needs: its COPY instructions and its
/// RUN script (with `cargo build` replaced by `cargo metadata --locked --offline`, which resolves
/// the workspace and the lock file without compiling) succeed on a copy of the repository's
/// files. A crate added to the workspace but not to the Containerfile fails here.
#[test]
fn the_containerfile_dependency_layer_resolves() {
    let file = read("Containerfile");
    let out = dependency_layer(&file);
    assert!(
        out.status.success(),
        "the dependency layer does not resolve: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    // The check can fail: without one member's manifest the workspace does not resolve.
    let out = dependency_layer(&file.replace(
        "COPY examples/resource-server/Cargo.toml examples/resource-server/\n",
        "",
    ));
    assert!(!out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("resource-server"),
        "{}",
        text(&out.stderr)
    );
}

/// Runs the dependency layer of `file` in a folder of its own (see above).
fn dependency_layer(file: &str) -> std::process::Output {
    let joined = file.replace("\\\n", " ");
    let lines: Vec<&str> = joined.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim() == "WORKDIR /src")
        .expect("WORKDIR /src in the builder");
    let run = start
        + lines[start..]
            .iter()
            .position(|l| l.starts_with("RUN "))
            .expect("the dependency layer's RUN");
    let dir = TempDir::new();
    let mut copied = 0;
    for line in &lines[start + 1..run] {
        let Some(rest) = line.strip_prefix("COPY ") else {
            continue;
        };
        let parts: Vec<&str> = rest.split_whitespace().collect();
        let (dest, sources) = parts.split_last().expect("COPY SRC... DEST");
        let dest = dir.path().join(dest);
        std::fs::create_dir_all(&dest).unwrap();
        for src in sources {
            let from = repo_root().join(src);
            let name = Path::new(src).file_name().expect("a file");
            std::fs::copy(&from, dest.join(name)).unwrap_or_else(|e| panic!("COPY {src}: {e}"));
            copied += 1;
        }
    }
    assert!(copied >= 9, "{copied} files copied");
    let build = "cargo build --release --locked -p keyplane";
    let script = lines[run].trim_start_matches("RUN ");
    assert!(script.contains(build), "{script}");
    let target = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let script = script.replace(
        build,
        &format!(
            "cargo metadata --locked --offline --format-version 1 --filter-platform {target} >/dev/null"
        ),
    );
    Command::new("sh")
        .args(["-c", &script])
        .current_dir(dir.path())
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("run the dependency layer's script")
}

#[test]
fn the_containerfile_passes_hadolint() {
    let Some(hadolint) = deploy_tool("hadolint", "the Containerfile lint") else {
        return;
    };
    let lint = |path: &Path| {
        Command::new(&hadolint)
            .args(["--no-color", "--failure-threshold", "info"])
            .arg(path)
            .output()
            .expect("run hadolint")
    };
    let out = lint(&repo_root().join("Containerfile"));
    assert!(
        out.status.success() && out.stdout.is_empty(),
        "hadolint: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    // The lint can fail: an unpinned base and an unpinned apt-get install.
    let dir = TempDir::new();
    let bad = dir.path().join("Containerfile");
    std::fs::write(
        &bad,
        "FROM debian\nRUN apt-get update && apt-get install curl\n",
    )
    .unwrap();
    let out = lint(&bad);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("DL3006"),
        "{}",
        text(&out.stdout)
    );
}

// ----- systemd -----

/// The unit with its `ExecStart` binary replaced by the one cargo built (verify wants it to
/// exist), in a folder of its own.
fn unit_for_test(dir: &Path, unit: &str) -> PathBuf {
    let path = dir.join("keyplane.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/keyplane", BIN)).unwrap();
    path
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let Ok(analyze) = which("systemd-analyze") else {
        eprintln!("\nSKIPPED: the systemd unit check, because systemd-analyze is not installed. Run scripts/ensure-deploy-tools.sh (CI does).\n");
        return;
    };
    let unit = read("deploy/systemd/keyplane.service");
    for setting in [
        "DynamicUser=yes",
        "StateDirectory=keyplane",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "MemoryDenyWriteExecute=yes",
        "EnvironmentFile=-/etc/keyplane/keyplane.env",
    ] {
        assert!(unit.contains(setting), "the unit lacks {setting:?}");
    }
    let dir = TempDir::new();
    let path = unit_for_test(dir.path(), &unit);
    let out = Command::new(&analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .expect("run systemd-analyze verify");
    assert!(
        out.status.success() && out.stderr.is_empty() && out.stdout.is_empty(),
        "systemd-analyze verify: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    // The check can fail: a misspelt hardening option is reported.
    let typo_dir = TempDir::new();
    let typo = unit_for_test(
        typo_dir.path(),
        &unit.replace("ProtectSystem=strict", "ProtectSystm=strict"),
    );
    let out = Command::new(&analyze)
        .arg("verify")
        .arg(&typo)
        .output()
        .expect("run systemd-analyze verify");
    assert!(
        text(&out.stderr).contains("ProtectSystm"),
        "{}",
        text(&out.stderr)
    );

    // `systemd-analyze security`: the exposure (0 best, 10 worst) stays low; docs/deployment.md
    // reports the figure.
    let out = Command::new(&analyze)
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&path)
        .output()
        .expect("run systemd-analyze security");
    let report = text(&out.stdout) + &text(&out.stderr);
    let exposure: f64 = report
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for keyplane.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    assert!(exposure <= 1.5, "exposure {exposure}:\n{report}");
}

fn which(name: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}

// ----- Kubernetes -----

/// The documents of the manifests that kustomization.yaml applies, plus the example Secret,
/// parsed by PyYAML (the deployment tools' Python) into JSON.
fn manifests(python: &Path) -> Vec<(String, Value)> {
    let dir = repo_root().join("deploy/k8s");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("deploy/k8s")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let got = Command::new(python)
            .args([
                "-c",
                "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
            ])
            .arg(dir.join(&f))
            .output()
            .expect("run python");
        assert!(got.status.success(), "{f}: {}", text(&got.stderr));
        let docs: Vec<Value> = serde_json::from_slice(&got.stdout).expect("JSON");
        for d in docs {
            out.push((f.clone(), d));
        }
    }
    out
}

fn find<'a>(docs: &'a [(String, Value)], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/k8s"))
}

#[test]
fn the_kubernetes_manifests_pass_the_schema() {
    let Some(validate) = deploy_tool("kubernetes-validate", "the Kubernetes schema check") else {
        return;
    };
    let dir = repo_root().join("deploy/k8s");
    let kustomization = read("deploy/k8s/kustomization.yaml");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("deploy/k8s") {
        let path = entry.expect("entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".yaml") || name == "kustomization.yaml" {
            continue;
        }
        // Every manifest but the example Secret is applied by the kustomization.
        if name != "secret.example.yaml" {
            assert!(
                kustomization.contains(&format!("- {name}")),
                "kustomization.yaml does not list {name}"
            );
        }
        let out = Command::new(&validate)
            .args(["--strict", "--quiet"])
            .arg(&path)
            .output()
            .expect("run kubernetes-validate");
        assert!(
            out.status.success(),
            "{name}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 5, "{checked} manifests");
    // The check can fail: a field the schema does not have.
    let bad_dir = TempDir::new();
    let bad = bad_dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        read("deploy/k8s/deployment.yaml").replace("replicas: 2", "replicas: 2\n  replica: 3"),
    )
    .unwrap();
    let out = Command::new(&validate)
        .args(["--strict", "--quiet"])
        .arg(&bad)
        .output()
        .expect("run kubernetes-validate");
    assert!(!out.status.success(), "{}", text(&out.stdout));
}

/// What one container of the Deployment runs with, made real on this machine: the environment
/// (Secret references resolved from `secrets`, mount paths moved to folders of the test) and
/// the arguments.
struct Pod {
    _dirs: Vec<TempDir>,
    env: Vec<(String, String)>,
}

fn pod_env(
    deployment: &Value,
    config_map: &Value,
    container: &Value,
    secrets: &HashMap<&str, String>,
) -> Pod {
    let spec = &deployment["spec"]["template"]["spec"];
    // Each volume as a folder of the test.
    let mut dirs = Vec::new();
    let mut volume_dirs: HashMap<String, PathBuf> = HashMap::new();
    for v in spec["volumes"].as_array().expect("volumes") {
        let dir = TempDir::new();
        let name = v["name"].as_str().expect("name").to_string();
        if v.get("configMap").is_some() {
            assert_eq!(v["configMap"]["name"], config_map["metadata"]["name"]);
            for (file, content) in config_map["data"].as_object().expect("data") {
                std::fs::write(dir.path().join(file), content.as_str().expect("text")).unwrap();
            }
        } else if v.get("secret").is_some() {
            assert_eq!(v["secret"]["secretName"], "keyplane-secrets");
            for item in v["secret"]["items"].as_array().expect("items") {
                let key = item["key"].as_str().expect("key");
                let value = secrets
                    .get(key)
                    .unwrap_or_else(|| panic!("the Secret has no {key}"));
                std::fs::write(dir.path().join(item["path"].as_str().expect("path")), value)
                    .unwrap();
            }
        } else {
            assert!(v.get("emptyDir").is_some(), "{v}");
        }
        volume_dirs.insert(name, dir.path().to_path_buf());
        dirs.push(dir);
    }
    let mounts: Vec<(String, PathBuf)> = container["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .map(|m| {
            (
                m["mountPath"].as_str().expect("mountPath").to_string(),
                volume_dirs[m["name"].as_str().expect("name")].clone(),
            )
        })
        .collect();
    let relocate = |value: &str| -> String {
        for (mount, dir) in &mounts {
            if let Some(rest) = value.strip_prefix(mount.as_str()) {
                return format!("{}{rest}", dir.display());
            }
        }
        value.to_string()
    };
    let env = container["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| {
            let name = e["name"].as_str().expect("name").to_string();
            let value = match e["value"].as_str() {
                Some(v) => relocate(v),
                None => {
                    let r = &e["valueFrom"]["secretKeyRef"];
                    assert_eq!(r["name"], "keyplane-secrets", "{e}");
                    let key = r["key"].as_str().expect("key");
                    secrets
                        .get(key)
                        .unwrap_or_else(|| panic!("the Secret has no {key}"))
                        .clone()
                }
            };
            (name, value)
        })
        .collect();
    Pod { _dirs: dirs, env }
}

fn args_of(container: &Value) -> Vec<String> {
    container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("arg").to_string())
        .collect()
}

/// Two replicas as the manifests describe them, on one fresh PostgreSQL database: the init
/// container's `keyplane migrate`, then `serve --no-migrate` twice with the Deployment's
/// environment and the ConfigMap's keyplane.toml (only the listen port is the test's: both run on
/// one machine). Both answer their probes; a key made through one works on the other; revoked
/// through one, the other refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_from_the_manifests_share_postgres() {
    let Some(python) = deploy_tool("python", "the two-replica Kubernetes check") else {
        return;
    };
    let Some(db) = TestDb::fresh(Backend::Postgres).await else {
        return;
    };
    let docs = manifests(&python);
    let deployment = find(&docs, "Deployment", "keyplane");
    let config_map = find(&docs, "ConfigMap", "keyplane-config");
    let service = find(&docs, "Service", "keyplane");
    let pdb = find(&docs, "PodDisruptionBudget", "keyplane");
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    let spec = &deployment["spec"]["template"]["spec"];
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(spec["securityContext"]["runAsUser"], 65532);
    let container = &spec["containers"][0];
    let init = &spec["initContainers"][0];
    for c in [container, init] {
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true, "{c}");
        assert_eq!(
            c["securityContext"]["allowPrivilegeEscalation"], false,
            "{c}"
        );
        assert!(c["resources"]["limits"]["memory"].is_string(), "{c}");
    }
    assert_eq!(
        init["env"], container["env"],
        "the init container runs with the same settings"
    );
    assert_eq!(args_of(init), ["migrate"]);
    let args = args_of(container);
    assert_eq!(args[0], "serve");
    assert!(args.contains(&"--no-migrate".to_string()), "{args:?}");
    // The port the ConfigMap's keyplane.toml listens on is the container's, and the Service's.
    let toml_text = config_map["data"]["keyplane.toml"]
        .as_str()
        .expect("keyplane.toml");
    let file: toml::Value = toml::from_str(toml_text).expect("keyplane.toml is TOML");
    let listen: std::net::SocketAddr = file["listen"].as_str().expect("listen").parse().unwrap();
    assert_eq!(container["ports"][0]["containerPort"], listen.port());
    assert_eq!(
        container["ports"][0]["name"],
        service["spec"]["ports"][0]["targetPort"]
    );

    let admin_key = keyplane_core::domain::secret::SecretFormat::new("kpa_")
        .unwrap()
        .generate()
        .expose()
        .to_string();
    let pepper: String = {
        use rand::{distributions::Alphanumeric, Rng};
        rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(48)
            .map(char::from)
            .collect()
    };
    let secrets: HashMap<&str, String> = HashMap::from([
        ("database-url", db.url.clone()),
        ("pepper", format!("{pepper}\n")),
        ("admin-key", format!("{admin_key}\n")),
    ]);

    // The init container: `keyplane migrate` on the empty database.
    let init_pod = pod_env(deployment, config_map, init, &secrets);
    let env: Vec<(&str, &str)> = init_pod
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let init_args = args_of(init);
    let init_args: Vec<&str> = init_args.iter().map(String::as_str).collect();
    let out = cli(Some(&db), &init_args, &env).await;
    assert!(
        out.status.success(),
        "keyplane migrate: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    // Two replicas, each with its own volumes, as two pods would have.
    let mut replicas = Vec::new();
    let mut pods = Vec::new();
    for _ in 0..2 {
        let pod = pod_env(deployment, config_map, container, &secrets);
        let env: Vec<(&str, &str)> = pod
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let extra: Vec<&str> = args[1..].iter().map(String::as_str).collect();
        replicas.push(Server::start_with(&db, &db.url, &extra, &env).await);
        pods.push(pod);
    }
    for (i, r) in replicas.iter().enumerate() {
        for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
            let path = container[probe]["httpGet"]["path"].as_str().expect("path");
            let a = r.get(path, "unused").await;
            assert_eq!(
                a.status,
                StatusCode::OK,
                "replica {i} {probe} {path}: {}",
                a.text
            );
        }
        let ready = r.get("/readyz", "unused").await.json();
        assert_eq!(ready["status"], "ready", "replica {i}: {ready}");
        assert_eq!(ready["storage"], "postgres", "replica {i}: {ready}");
        // The ConfigMap's `log_format = "json"` applies: every log line is a JSON object.
        let logs = r.stderr_text();
        assert!(logs.lines().count() > 1, "{logs}");
        for line in logs.lines().filter(|l| !l.trim().is_empty()) {
            assert!(
                serde_json::from_str::<Value>(line).is_ok_and(|v| v.is_object()),
                "replica {i} logged a line that is not JSON: {line}"
            );
        }
        // The Secret's admin key is the admin key of both (none was generated).
        let me = r.get("/v1/me", &admin_key).await;
        assert_eq!(me.status, StatusCode::OK, "replica {i}: {}", me.text);
        assert!(
            !r.stderr_text()
                .contains("Rotate with `keyplane admin-key rotate`"),
            "replica {i} generated an admin key:\n{}",
            r.stderr_text()
        );
    }

    let (a, b) = (&replicas[0], &replicas[1]);
    a.service(&admin_key).await;
    let (id, key) = a.key(&admin_key, "made-on-a").await;
    assert_eq!(b.authz(&key).await, StatusCode::OK);
    assert_eq!(a.authz(&key).await, StatusCode::OK);
    let listed = b.get("/v1/api-keys", &admin_key).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.text);
    assert!(listed.text.contains(&id), "{}", listed.text);

    // Revoked through A; B (which cached it) refuses it once the change reaches it.
    a.revoke(&admin_key, &id).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = b.authz(&key).await;
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replica B still answers {status} for a key revoked on A"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for r in replicas {
        let stopped = r.terminate().await;
        assert!(stopped.status.success(), "{}", stopped.stderr);
        assert!(
            !stopped.stderr.contains("unknown KEYPLANE_"),
            "{}",
            stopped.stderr
        );
    }
}
