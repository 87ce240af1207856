//! The commands that work on the database directly, not through a server: `admin-key rotate`,
//! `signing-key rotate`, `activity verify --local`, `backup` and `migrate`.
//!
//! None of them creates a database or a pepper unless asked (`--create`): run in the wrong
//! folder, the default `sqlite://keyplane.db` names a file that is not there, and a command
//! that quietly made a new, empty deployment (a new pepper with it) would report on that one —
//! "intact, 0 events checked" — instead of the real one.

use crate::config::{redact_url, Config, ConfigFlags};
use crate::server;
use anyhow::{bail, Context, Result};
use keyplane_store::migrations::{State, Status};
use keyplane_store::Migrations;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The database flags, and whether a missing database (and pepper) may be created.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    #[command(flatten)]
    pub config: ConfigFlags,
    /// Create the database (and a pepper, if none is given) when they do not exist. Without
    /// it a missing SQLite file, an empty PostgreSQL database or a missing pepper file is an
    /// error, so a command run in the wrong folder changes nothing.
    #[arg(long)]
    pub create: bool,
}

/// Where the generated pepper of a deployment is kept, when none is given.
fn pepper_file(config: &Config) -> PathBuf {
    config.data_dir.join("keyplane.pepper")
}

fn cwd() -> String {
    std::env::current_dir()
        .map(|d| d.display().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// What names the database, for messages.
const WHERE: &str = "--database URL, --config FILE, KEYPLANE_DATABASE or KEYPLANE_CONFIG";

/// Refuses a database that does not exist (a SQLite file that is not there, a PostgreSQL
/// database with no keyplane tables) and, when `pepper` is asked for, a pepper that does not,
/// unless `create`. Creates nothing itself.
pub async fn require_existing(config: &Config, create: bool, pepper: bool) -> Result<()> {
    if create {
        return Ok(());
    }
    if config.database.starts_with("sqlite:") {
        if let Some(path) = keyplane_store::files::sqlite_file(&config.database) {
            if !path.exists() {
                let shown = std::path::absolute(&path).unwrap_or(path);
                bail!(
                    "there is no keyplane database at {} (working directory {}).\n\
                     Name the deployment's database with {WHERE}, or run this where it is; \
                     pass --create only to make a new, empty one. Nothing was created.",
                    shown.display(),
                    cwd()
                );
            }
        }
    } else {
        let status = keyplane_store::migrations::status(&config.database)
            .await
            .with_context(|| {
                format!("cannot open the database {}", redact_url(&config.database))
            })?;
        if status.is_empty_database() {
            bail!(
                "the PostgreSQL database {} has no keyplane tables: it is not a keyplane \
                 deployment (yet).\nName the deployment's database with {WHERE}; to set up \
                 a new one run `keyplane migrate` (or pass --create). Nothing was changed.",
                redact_url(&config.database)
            );
        }
    }
    if pepper && config.pepper.is_none() {
        let file = pepper_file(config);
        if !file.exists() {
            let shown = std::path::absolute(&file).unwrap_or(file);
            bail!(
                "there is no pepper at {}: without the deployment's pepper no stored credential \
                 can be checked, and a new one would not match the database.\nGive it with \
                 KEYPLANE_PEPPER, KEYPLANE_PEPPER_FILE, `pepper_file` in --config FILE, or \
                 --data-dir DIR (the folder that holds keyplane.pepper); pass --create only for \
                 a new deployment. Nothing was created.",
                shown.display()
            );
        }
    }
    Ok(())
}

/// `keyplane serve --no-migrate`, before anything else is touched (the pepper, the admin key):
/// the database exists and lacks no migration this binary has.
pub async fn require_migrated(config: &Config) -> Result<()> {
    let file = config
        .database
        .starts_with("sqlite:")
        .then(|| keyplane_store::files::sqlite_file(&config.database))
        .flatten();
    if let Some(path) = file {
        if !path.exists() {
            let shown = std::path::absolute(&path).unwrap_or(path);
            bail!(
                "--no-migrate: there is no database at {}; create it with `keyplane migrate \
                 --create` (same --database/--config), or start without --no-migrate",
                shown.display()
            );
        }
    }
    let status = keyplane_store::migrations::status(&config.database)
        .await
        .with_context(|| format!("cannot open the database {}", redact_url(&config.database)))?;
    if let Some(problem) = status.problem() {
        bail!(
            "--no-migrate: the database is not ready for this keyplane: {problem}. Apply them \
             once with `keyplane migrate` (same --database/--config), then start with \
             --no-migrate; or start without --no-migrate to migrate at start"
        );
    }
    Ok(())
}

fn load(flags: &ConfigFlags) -> Result<Config> {
    Config::load(flags, None, &std::env::vars().collect())
}

/// `keyplane admin-key rotate`.
pub async fn admin_key_rotate(args: &DatabaseArgs) -> Result<ExitCode> {
    let config = load(&args.config)?;
    require_existing(&config, args.create, true).await?;
    let app = server::build(&config).await?;
    app.bootstrap(None).await?;
    let key = app
        .rotate_admin_key()
        .await
        .context("cannot rotate the admin key")?;
    app.close_storage().await?;
    eprintln!("{}", server::admin_key_banner(&key));
    Ok(ExitCode::SUCCESS)
}

/// `keyplane signing-key rotate`.
pub async fn signing_key_rotate(
    args: &DatabaseArgs,
    alg: Option<&str>,
    lead_seconds: Option<i64>,
) -> Result<ExitCode> {
    let config = load(&args.config)?;
    let alg = keyplane_core::domain::token::Alg::parse(alg.unwrap_or(&config.signing_alg))
        .context("--alg must be ES256 or EdDSA")?;
    require_existing(&config, args.create, true).await?;
    let app = server::build(&config).await?;
    app.ensure_defaults().await?;
    app.ensure_signing_keys().await?;
    let kid = app.rotate_signing_key(alg, lead_seconds).await?;
    app.close_storage().await?;
    println!("{kid}");
    Ok(ExitCode::SUCCESS)
}

/// `keyplane activity verify --local`: the whole chain, through every checkpoint. Writes
/// nothing: a database with pending migrations is refused rather than migrated.
pub async fn activity_verify(flags: &ConfigFlags, json_out: bool) -> Result<ExitCode> {
    let mut config = load(flags)?;
    require_existing(&config, false, true).await?;
    config.migrations = Migrations::RequireApplied;
    let app = server::build(&config).await?;
    let report = app.verify_chain().await?;
    app.close_storage().await?;
    let value = serde_json::to_value(&report)?;
    if json_out {
        println!("{value}");
    } else {
        println!("{}", crate::client::verify_report(&value));
    }
    Ok(if report.intact {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `keyplane backup`: SQLite's `VACUUM INTO`, a consistent snapshot even while a server writes.
/// PostgreSQL has its own tool, and keyplane does not pretend to be it.
pub async fn backup(flags: &ConfigFlags, output: &Path, force: bool) -> Result<ExitCode> {
    let config = load(flags)?;
    if !config.database.starts_with("sqlite:") {
        bail!(
            "keyplane backup copies SQLite databases only, and this deployment uses PostgreSQL.\n\
             Back it up with pg_dump, which takes a consistent snapshot while keyplane runs:\n\n    \
             pg_dump --format=custom --file=keyplane.dump \"$KEYPLANE_DATABASE\"\n\n\
             and restore into a new, empty database with\n\n    \
             pg_restore --no-owner --dbname=\"$NEW_DATABASE_URL\" keyplane.dump\n\n\
             Keep the pepper with the dump: without it no credential in it can be checked.\n\
             See docs/operations.md."
        );
    }
    require_existing(&config, false, false).await?;
    let snapshot = match keyplane_store::backup_sqlite(&config.database, output, force).await {
        Ok(s) => s,
        Err(keyplane_store::BackupError::Exists(p)) => {
            bail!("{} already exists; pass --force to replace it", p.display())
        }
        Err(e) => return Err(e).context("no backup was written"),
    };
    let pepper = if config.pepper.is_some() {
        "the pepper this deployment is given (KEYPLANE_PEPPER, KEYPLANE_PEPPER_FILE or pepper_file)"
            .to_string()
    } else {
        pepper_file(&config).display().to_string()
    };
    println!(
        "wrote {} ({} bytes): a consistent copy of {}\nkeep it with {pepper}: without the pepper no credential in the copy can be checked",
        snapshot.output.display(),
        snapshot.bytes,
        snapshot.database.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn status_json(status: &Status) -> Value {
    json!({
        "backend": status.backend,
        "current": status.is_current(),
        "pending": status.pending().len(),
        "migrations": status.migrations.iter().map(|m| json!({
            "version": m.version,
            "name": m.name,
            "state": m.state.as_str(),
            "applied_at": m.applied_at,
        })).collect::<Vec<_>>(),
    })
}

fn status_table(status: &Status) -> String {
    let rows: Vec<Vec<String>> = status
        .migrations
        .iter()
        .map(|m| {
            vec![
                m.version.to_string(),
                m.name.clone(),
                m.state.as_str().to_string(),
                m.applied_at.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut out = crate::client::table(&["VERSION", "NAME", "STATE", "APPLIED AT"], &rows);
    out.push('\n');
    match status.problem() {
        None => out.push_str(&format!("\nthe {} database is up to date", status.backend)),
        Some(p) => out.push_str(&format!(
            "\n{p}\n{}",
            if status.pending().is_empty() {
                "see docs/operations.md#migrations"
            } else {
                "apply them with `keyplane migrate`"
            }
        )),
    }
    if status.migrations.iter().any(|m| m.state == State::Unknown) {
        out.push_str(
            "\n`unknown`: applied by a newer keyplane; this one can still run on the database",
        );
    }
    out
}

/// `keyplane migrate [--status]`. `--status` lists every migration and exits 1 when one is
/// pending (or failed, or changed); `migrate` applies the pending ones and exits 0.
pub async fn migrate(args: &DatabaseArgs, status_only: bool, json_out: bool) -> Result<ExitCode> {
    let config = load(&args.config)?;
    let url = &config.database;
    // An empty PostgreSQL database is what `migrate` sets up; a missing SQLite file needs
    // --create, as for every database command.
    let sqlite_missing = url.starts_with("sqlite:")
        && keyplane_store::files::sqlite_file(url).is_some_and(|p| !p.exists());
    if sqlite_missing && status_only {
        let path = keyplane_store::files::sqlite_file(url).unwrap_or_default();
        let shown = std::path::absolute(&path).unwrap_or(path);
        bail!(
            "there is no keyplane database at {} (working directory {}).\n\
             Name the deployment's database with {WHERE}; `keyplane migrate --create` makes a \
             new one. Nothing was created.",
            shown.display(),
            cwd()
        );
    }
    if sqlite_missing && !args.create {
        require_existing(&config, false, false).await?;
    }
    let opened = || format!("cannot open the database {}", redact_url(url));
    if status_only {
        let status = keyplane_store::migrations::status(url)
            .await
            .with_context(opened)?;
        if json_out {
            println!("{}", status_json(&status));
        } else {
            println!("{}", status_table(&status));
        }
        return Ok(if status.is_current() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    let applied = keyplane_store::migrations::migrate(url)
        .await
        .with_context(opened)?;
    let status = keyplane_store::migrations::status(url)
        .await
        .with_context(opened)?;
    if json_out {
        let mut v = status_json(&status);
        v["applied"] = json!(applied.iter().map(|m| &m.name).collect::<Vec<_>>());
        println!("{v}");
    } else if applied.is_empty() {
        println!(
            "nothing to apply: the {} database {} is up to date ({} migrations)",
            status.backend,
            redact_url(url),
            status.migrations.len()
        );
    } else {
        println!(
            "applied {} migration(s) to {}: {}",
            applied.len(),
            redact_url(url),
            applied
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
