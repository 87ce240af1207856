//! The files a deployment keeps, with the real binary (issue 11): who may read them, what a
//! clean stop leaves in them, and backups that restore: `keyplane backup` on SQLite, `pg_dump`
//! and `pg_restore` on PostgreSQL.
//!
//! The PostgreSQL tests need `KEYPLANE_TEST_DATABASE_URL` (skipped, and said so, without it)
//! and PostgreSQL's client tools (`scripts/ensure-pg-client.sh` installs them; CI runs it).

use crate::binary::{cli, text, Server};
use keyplane_testkit::reqwest::StatusCode;
use keyplane_testkit::{Backend, TestDb};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

/// How long one `pg_dump` or `pg_restore` may take.
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn assert_mode(path: &Path, expected: u32) {
    let m = mode(path);
    assert_eq!(
        m,
        expected,
        "{} has mode {m:04o}, expected {expected:04o}",
        path.display()
    );
}

fn set_mode(path: &Path, m: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(m)).expect("chmod");
}

/// `path` with `suffix` appended to its name (`keyplane.db` → `keyplane.db-wal`).
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

fn assert_stopped_cleanly(stopped: &crate::binary::Stopped) {
    assert!(
        stopped.status.success(),
        "exit {}\n{}",
        stopped.status,
        stopped.stderr
    );
    assert!(
        stopped.stderr.contains("stopped cleanly"),
        "{}",
        stopped.stderr
    );
}

/// A fresh SQLite folder holding copies of `files` (name in the new folder, source), as an
/// operator restoring a backup would put them: the new server finds `keyplane.db` and, in the
/// same folder (its default data directory), `keyplane.pepper`.
async fn restored_sqlite(files: &[(&str, &Path)]) -> TestDb {
    let db = TestDb::fresh(Backend::Sqlite)
        .await
        .expect("SQLite is always available");
    for (name, from) in files {
        std::fs::copy(from, db.dir.path().join(name))
            .unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    }
    db
}

// ----- (a) file modes -----

/// Database files and the generated pepper are 0600 and a data directory keyplane creates is
/// 0700, with the process's umask left at the usual 022; files an older version left wider are
/// tightened at the next start, with a warning.
async fn file_modes(backend: Backend) {
    let Some(db) = TestDb::fresh(backend).await else {
        return;
    };
    // Folders that do not exist yet: keyplane creates them.
    let created = db.dir.path().join("state");
    let data_dir = created.join("keyplane");
    let sqlite = data_dir.join("keyplane.db");
    let url = match backend {
        Backend::Sqlite => format!("sqlite://{}", sqlite.display()),
        Backend::Postgres => db.url.clone(),
    };
    let data_dir_text = data_dir.display().to_string();
    let env = [("KEYPLANE_DATA_DIR", data_dir_text.as_str())];

    let mut server = Server::start_at(&db, &url, &env).await;
    let admin = server.banner_admin_key().await;
    server.service(&admin).await;
    let (_, key) = server.key(&admin, "k").await;
    assert_eq!(server.authz(&key).await, StatusCode::OK);

    assert_mode(&created, 0o700);
    assert_mode(&data_dir, 0o700);
    let pepper = data_dir.join("keyplane.pepper");
    assert_mode(&pepper, 0o600);
    if backend == Backend::Sqlite {
        for file in [
            sqlite.clone(),
            with_suffix(&sqlite, "-wal"),
            with_suffix(&sqlite, "-shm"),
        ] {
            assert_mode(&file, 0o600);
        }
    }
    let stopped = server.terminate().await;
    assert_stopped_cleanly(&stopped);

    // Files left readable by others (by an older version, or a careless copy) are tightened at
    // the next start, and the log says which.
    set_mode(&pepper, 0o644);
    let mut widened = vec![pepper.clone()];
    if backend == Backend::Sqlite {
        set_mode(&sqlite, 0o644);
        widened.push(sqlite.clone());
    }
    let server = Server::start_at(&db, &url, &env).await;
    for file in &widened {
        assert_mode(file, 0o600);
    }
    if backend == Backend::Sqlite {
        assert_mode(&with_suffix(&sqlite, "-wal"), 0o600);
        assert_mode(&with_suffix(&sqlite, "-shm"), 0o600);
    }
    assert_eq!(server.authz(&key).await, StatusCode::OK);
    let stopped = server.terminate().await;
    assert_stopped_cleanly(&stopped);
    for file in &widened {
        let name = file.display().to_string();
        assert!(
            stopped
                .stderr
                .lines()
                .any(|l| l.contains("readable by its owner only") && l.contains(&name)),
            "no warning about {name}:\n{}",
            stopped.stderr
        );
    }
}
mod modes {
    use keyplane_testkit::Backend;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::file_modes(Backend::Sqlite).await;
    }

    /// The pepper and the data directory; PostgreSQL keeps the rest.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::file_modes(Backend::Postgres).await;
    }
}

// ----- (a2) the write-ahead log reaches the file while the server runs -----

/// While the server runs, a connection of its own copies SQLite's write-ahead log into the
/// database file every 100 ms (`wal_checkpoint(PASSIVE)`), so the writer never waits for the
/// disk in the middle of a commit: a key created a moment ago is in `keyplane.db` itself
/// within moments, not once the log has grown to thousands of pages (SQLite's own default is
/// the writer copying every 1,000 pages, this writer past 8,000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_copied_into_the_file_while_running() {
    let db = TestDb::fresh(Backend::Sqlite)
        .await
        .expect("SQLite is always available");
    let mut server = Server::start(&db, &[]).await;
    let admin = server.banner_admin_key().await;
    server.service(&admin).await;
    let (id, _key) = server.key(&admin, "checkpointed").await;
    let file = db.dir.path().join("keyplane.db");
    let in_file = || {
        let bytes = std::fs::read(&file).expect("read keyplane.db");
        bytes.windows(id.len()).any(|w| w == id.as_bytes())
    };
    let started = std::time::Instant::now();
    while !in_file() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the new key {id} is still only in the write-ahead log after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "the new key reached keyplane.db {:?} after it was created",
        started.elapsed()
    );
    assert_stopped_cleanly(&server.terminate().await);
}

// ----- (b) a clean stop leaves everything in keyplane.db -----

/// After SIGTERM, `keyplane.db` alone (no `-wal`) and the pepper are a complete deployment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_stop_leaves_one_file() {
    let db = TestDb::fresh(Backend::Sqlite)
        .await
        .expect("SQLite is always available");
    let mut server = Server::start(&db, &[("KEYPLANE_FLUSH_INTERVAL_MS", "60000")]).await;
    let admin = server.banner_admin_key().await;
    server.service(&admin).await;
    let (id, key) = server.key(&admin, "kept").await;
    // Used once: its last-used time is written by the final flush, before the checkpoint.
    assert_eq!(server.authz(&key).await, StatusCode::OK);
    let stopped = server.terminate().await;
    assert_stopped_cleanly(&stopped);
    // Said, not left to chance: the process's exit may or may not close SQLite's connections
    // (which would copy the log in too) before it ends.
    assert!(
        stopped
            .stderr
            .contains("write-ahead log copied into the database file"),
        "{}",
        stopped.stderr
    );

    let file = db.dir.path().join("keyplane.db");
    let wal = with_suffix(&file, "-wal");
    assert!(
        std::fs::metadata(&wal).map_or(true, |m| m.len() == 0),
        "the write-ahead log still holds {} bytes after a clean stop",
        std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0)
    );

    let copy = restored_sqlite(&[
        ("keyplane.db", &file),
        ("keyplane.pepper", &db.dir.path().join("keyplane.pepper")),
    ])
    .await;
    assert!(!with_suffix(&copy.dir.path().join("keyplane.db"), "-wal").exists());
    let server = Server::start(&copy, &[]).await;
    assert_eq!(server.authz(&key).await, StatusCode::OK);
    let got = server.get(&format!("/v1/api-keys/{id}"), &admin).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert!(
        got.json()["last_used_at"].is_string(),
        "the final flush is missing from the file: {}",
        got.text
    );
    assert_stopped_cleanly(&server.terminate().await);
}

// ----- (c) `keyplane backup` and a restore, on SQLite -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_restore_sqlite() {
    let db = TestDb::fresh(Backend::Sqlite)
        .await
        .expect("SQLite is always available");
    let mut server = Server::start(&db, &[]).await;
    let admin = server.banner_admin_key().await;
    server.service(&admin).await;
    let (_, one) = server.key(&admin, "one").await;
    let (two_id, two) = server.key(&admin, "two").await;
    let (_, three) = server.key(&admin, "three").await;
    server.revoke(&admin, &two_id).await;

    // A backup while the server runs.
    let out_dir = keyplane_testkit::TempDir::new();
    let backup = out_dir.path().join("keyplane-backup.db");
    let backup_arg = backup.display().to_string();
    let run = |args: Vec<String>| {
        let db = &db;
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cli(Some(db), &args, &[]).await
        }
    };
    let backup_args = |force: bool, output: &str| {
        let mut a = vec![
            "backup".to_string(),
            "--database".into(),
            db.url.clone(),
            "--output".into(),
            output.to_string(),
        ];
        if force {
            a.push("--force".into());
        }
        a
    };
    let out = run(backup_args(false, &backup_arg)).await;
    assert!(
        out.status.success(),
        "exit {}\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains(&backup_arg),
        "{}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stdout).contains("pepper"),
        "{}",
        text(&out.stdout)
    );
    assert_mode(&backup, 0o600);
    let taken = std::fs::read(&backup).expect("the backup");
    // Nothing else is left beside it (no partial file, no journal).
    let beside: Vec<_> = std::fs::read_dir(out_dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(beside.len(), 1, "{beside:?}");

    // A key made after the backup: not in it.
    let (_, after) = server.key(&admin, "after the backup").await;
    assert_eq!(server.authz(&after).await, StatusCode::OK);

    // The output is never overwritten without --force, and never the database itself.
    let out = run(backup_args(false, &backup_arg)).await;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&backup).expect("backup"),
        taken,
        "overwritten"
    );
    let live = db.dir.path().join("keyplane.db").display().to_string();
    for output in [live.clone(), format!("{live}-wal")] {
        let out = run(backup_args(true, &output)).await;
        assert!(!out.status.success(), "backup onto {output} was accepted");
        assert!(
            text(&out.stderr).contains("the database itself"),
            "{}",
            text(&out.stderr)
        );
    }
    // With --force it is replaced, still owner-only, by a newer copy (which has `after`).
    let forced = out_dir.path().join("forced.db");
    std::fs::write(&forced, b"an older file").expect("write");
    set_mode(&forced, 0o644);
    let out = run(backup_args(true, &forced.display().to_string())).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_mode(&forced, 0o600);
    assert_ne!(std::fs::read(&forced).expect("forced"), b"an older file");

    let pepper = db.dir.path().join("keyplane.pepper");
    assert_stopped_cleanly(&server.terminate().await);

    // Restore: the backup as keyplane.db, with the same pepper, in a fresh folder.
    let restored = restored_sqlite(&[("keyplane.db", &backup), ("keyplane.pepper", &pepper)]).await;
    let server = Server::start(&restored, &[]).await;
    assert_eq!(server.authz(&one).await, StatusCode::OK);
    assert_eq!(server.authz(&three).await, StatusCode::OK);
    assert_eq!(
        server.authz(&two).await,
        StatusCode::UNAUTHORIZED,
        "revoked"
    );
    assert_eq!(
        server.authz(&after).await,
        StatusCode::UNAUTHORIZED,
        "a key made after the backup"
    );
    let verify = server.get("/v1/activity/verify", &admin).await;
    assert_eq!(verify.status, StatusCode::OK, "{}", verify.text);
    assert_eq!(verify.json()["intact"], true, "{}", verify.text);
    assert_stopped_cleanly(&server.terminate().await);

    // The forced copy was taken later: it has `after`.
    let later = restored_sqlite(&[("keyplane.db", &forced), ("keyplane.pepper", &pepper)]).await;
    let server = Server::start(&later, &[]).await;
    assert_eq!(server.authz(&after).await, StatusCode::OK);
    assert_stopped_cleanly(&server.terminate().await);
}

// ----- (d) PostgreSQL: pg_dump and pg_restore -----

/// `pg_dump` and `pg_restore`, or `None` (with a notice) when either is not installed.
fn pg_tools() -> Option<(PathBuf, PathBuf)> {
    let find = |name: &str| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        })
    };
    match (find("pg_dump"), find("pg_restore")) {
        (Some(dump), Some(restore)) => Some((dump, restore)),
        _ => {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "\nSKIPPED: the PostgreSQL backup test, because pg_dump or pg_restore is not installed. Run scripts/ensure-pg-client.sh (CI does).\n"
            );
            None
        }
    }
}

async fn run_tool(program: &Path, args: &[&str]) -> Output {
    let mut c = tokio::process::Command::new(program);
    c.args(args).kill_on_drop(true);
    let out = match tokio::time::timeout(TOOL_TIMEOUT, c.output()).await {
        Ok(out) => out.unwrap_or_else(|e| panic!("run {}: {e}", program.display())),
        Err(_) => panic!(
            "`{} {}` did not finish within {TOOL_TIMEOUT:?}",
            program.display(),
            args.join(" ")
        ),
    };
    assert!(
        out.status.success(),
        "`{} {}`: exit {}\n{}",
        program.display(),
        args.join(" "),
        out.status,
        text(&out.stderr)
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_restore_postgres() {
    let Some(db) = TestDb::fresh(Backend::Postgres).await else {
        return;
    };
    let Some((pg_dump, pg_restore)) = pg_tools() else {
        return;
    };
    let mut server = Server::start(&db, &[]).await;
    let admin = server.banner_admin_key().await;
    server.service(&admin).await;
    let (_, one) = server.key(&admin, "one").await;
    let (two_id, two) = server.key(&admin, "two").await;
    let (_, three) = server.key(&admin, "three").await;
    server.revoke(&admin, &two_id).await;

    // `keyplane backup` does not pretend: it names pg_dump and exits non-zero.
    let dump_dir = keyplane_testkit::TempDir::new();
    let not_written = dump_dir.path().join("not-written.db");
    let out = cli(
        Some(&db),
        &[
            "backup",
            "--database",
            &db.url,
            "--output",
            &not_written.display().to_string(),
        ],
        &[],
    )
    .await;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("pg_dump") && err.contains("pg_restore"),
        "{err}"
    );
    assert!(!not_written.exists());

    // pg_dump while the server runs; a key made afterwards is not in the dump.
    let dump = dump_dir.path().join("keyplane.dump");
    let dump_arg = dump.display().to_string();
    run_tool(
        &pg_dump,
        &["--format=custom", "--file", &dump_arg, "--dbname", &db.url],
    )
    .await;
    let (_, after) = server.key(&admin, "after the dump").await;
    assert_stopped_cleanly(&server.terminate().await);

    // Restore into a new, empty database; the same pepper goes with it.
    let restored = TestDb::fresh(Backend::Postgres)
        .await
        .expect("PostgreSQL answered a moment ago");
    run_tool(
        &pg_restore,
        &[
            "--no-owner",
            "--exit-on-error",
            "--dbname",
            &restored.url,
            &dump_arg,
        ],
    )
    .await;
    std::fs::copy(
        db.dir.path().join("keyplane.pepper"),
        restored.dir.path().join("keyplane.pepper"),
    )
    .expect("copy the pepper");

    let server = Server::start(&restored, &[]).await;
    assert_eq!(server.authz(&one).await, StatusCode::OK);
    assert_eq!(server.authz(&three).await, StatusCode::OK);
    assert_eq!(
        server.authz(&two).await,
        StatusCode::UNAUTHORIZED,
        "revoked"
    );
    assert_eq!(
        server.authz(&after).await,
        StatusCode::UNAUTHORIZED,
        "a key made after the dump"
    );
    let verify = server.get("/v1/activity/verify", &admin).await;
    assert_eq!(verify.status, StatusCode::OK, "{}", verify.text);
    assert_eq!(verify.json()["intact"], true, "{}", verify.text);
    assert_stopped_cleanly(&server.terminate().await);
    // Both databases are dropped with their `TestDb`s.
}
