//! Which migrations a database has, and applying them: `keyplane migrate [--status]`, and the
//! check `keyplane serve --no-migrate` makes instead of migrating.
//!
//! sqlx records applied migrations in `_sqlx_migrations` (version, checksum, success, time).
//! This module compares that table with the migrations compiled into this binary, without
//! writing anything: a missing table means nothing is applied yet.

use keyplane_core::domain::error::{Error, Result};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use sqlx::Row;
use std::str::FromStr;
use std::time::Duration;

/// What opening a store does about migrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Migrations {
    /// Apply pending migrations (what a plain `keyplane serve` and the database commands do).
    #[default]
    Apply,
    /// Apply nothing; refuse to open a database with a pending, failed or edited migration
    /// (`keyplane serve --no-migrate`, for rolling upgrades after `keyplane migrate`).
    RequireApplied,
}

/// One migration's state in a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Applied, with the checksum this binary has.
    Applied,
    /// Not applied yet.
    Pending,
    /// Recorded as started but not finished (`success = false`).
    Failed,
    /// Applied, but its file has changed since (the checksums differ): migrations are never
    /// edited once released, so this is a wrong binary or a tampered table.
    Changed,
    /// Applied by a keyplane that knows more migrations than this one (a newer version).
    Unknown,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Applied => "applied",
            State::Pending => "pending",
            State::Failed => "failed",
            State::Changed => "changed",
            State::Unknown => "unknown",
        }
    }
}

/// One migration: this binary's, the database's, or both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationInfo {
    pub version: i64,
    /// `0001_foundation`: the file's name without `.sql` (the database's description for an
    /// unknown one).
    pub name: String,
    pub state: State,
    /// When it was applied (RFC 3339, UTC), if it was.
    pub applied_at: Option<String>,
}

/// Every migration of this binary and of the database, by version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    pub migrations: Vec<MigrationInfo>,
}

impl Status {
    fn with(&self, state: State) -> Vec<&MigrationInfo> {
        self.migrations
            .iter()
            .filter(|m| m.state == state)
            .collect()
    }

    /// Migrations this binary has that the database has not.
    pub fn pending(&self) -> Vec<&MigrationInfo> {
        self.with(State::Pending)
    }

    /// Whether nothing at all is applied (a database keyplane has never used).
    pub fn is_empty_database(&self) -> bool {
        self.migrations.iter().all(|m| m.state == State::Pending)
    }

    /// Whether this binary can run on the database as it is: nothing pending, failed or
    /// changed. (Migrations only a newer version knows are allowed: a rolling upgrade's old
    /// nodes keep running on the new schema, which migrations only ever extend.)
    pub fn is_current(&self) -> bool {
        self.problem().is_none()
    }

    /// What stops this binary from running on the database without migrating, in words.
    pub fn problem(&self) -> Option<String> {
        let names = |v: Vec<&MigrationInfo>| {
            v.iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let failed = self.with(State::Failed);
        if !failed.is_empty() {
            return Some(format!(
                "a migration failed part-way ({}): restore the database from a backup, or fix it by hand, before keyplane can use it",
                names(failed)
            ));
        }
        let changed = self.with(State::Changed);
        if !changed.is_empty() {
            return Some(format!(
                "applied migrations differ from this binary's ({}): the database was migrated by a different build of keyplane",
                names(changed)
            ));
        }
        let pending = self.pending();
        if !pending.is_empty() {
            return Some(format!(
                "{} pending migration(s): {}",
                pending.len(),
                names(pending)
            ));
        }
        None
    }
}

/// The migrations compiled into this binary for a backend.
pub(crate) fn migrator(backend: &str) -> Migrator {
    match backend {
        "sqlite" => sqlx::migrate!("./migrations/sqlite"),
        _ => sqlx::migrate!("./migrations/postgres"),
    }
}

/// A row of `_sqlx_migrations`.
struct Applied {
    version: i64,
    description: String,
    checksum: Vec<u8>,
    success: bool,
    at: String,
}

fn compare(backend: &'static str, applied: Option<Vec<Applied>>) -> Status {
    let applied = applied.unwrap_or_default();
    let mut out: Vec<MigrationInfo> = migrator(backend)
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| {
            let name = format!("{:04}_{}", m.version, m.description.replace(' ', "_"));
            match applied.iter().find(|a| a.version == m.version) {
                None => MigrationInfo {
                    version: m.version,
                    name,
                    state: State::Pending,
                    applied_at: None,
                },
                Some(a) => MigrationInfo {
                    version: m.version,
                    name,
                    state: if !a.success {
                        State::Failed
                    } else if a.checksum != *m.checksum {
                        State::Changed
                    } else {
                        State::Applied
                    },
                    applied_at: Some(a.at.clone()),
                },
            }
        })
        .collect();
    for a in &applied {
        if !out.iter().any(|m| m.version == a.version) {
            out.push(MigrationInfo {
                version: a.version,
                name: format!("{:04}_{}", a.version, a.description.replace(' ', "_")),
                state: if a.success {
                    State::Unknown
                } else {
                    State::Failed
                },
                applied_at: Some(a.at.clone()),
            });
        }
    }
    out.sort_by_key(|m| m.version);
    Status {
        backend,
        migrations: out,
    }
}

fn db_err(e: sqlx::Error) -> Error {
    Error::Storage(Box::new(e))
}

fn rows(raw: Vec<(i64, String, Vec<u8>, bool, String)>) -> Vec<Applied> {
    raw.into_iter()
        .map(|(version, description, checksum, success, at)| Applied {
            version,
            description,
            checksum,
            success,
            at,
        })
        .collect()
}

pub(crate) async fn applied_sqlite(pool: &SqlitePool) -> Result<Status> {
    let exists: i64 = sqlx::query(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
    )
    .fetch_one(pool)
    .await
    .map_err(db_err)?
    .try_get(0)
    .map_err(db_err)?;
    if exists == 0 {
        return Ok(compare("sqlite", None));
    }
    let raw = sqlx::query(
        "SELECT version, description, checksum, success, \
         strftime('%Y-%m-%dT%H:%M:%fZ', installed_on) FROM _sqlx_migrations ORDER BY version",
    )
    .fetch_all(pool)
    .await
    .map_err(db_err)?
    .into_iter()
    .map(|r| {
        Ok((
            r.try_get(0)?,
            r.try_get(1)?,
            r.try_get(2)?,
            r.try_get(3)?,
            r.try_get::<Option<String>, _>(4)?.unwrap_or_default(),
        ))
    })
    .collect::<std::result::Result<Vec<_>, sqlx::Error>>()
    .map_err(db_err)?;
    Ok(compare("sqlite", Some(rows(raw))))
}

pub(crate) async fn applied_pg(pool: &PgPool) -> Result<Status> {
    let exists: bool = sqlx::query("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await
        .map_err(db_err)?
        .try_get(0)
        .map_err(db_err)?;
    if !exists {
        return Ok(compare("postgres", None));
    }
    let raw = sqlx::query(
        "SELECT version, description, checksum, success, \
         to_char(installed_on AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') \
         FROM _sqlx_migrations ORDER BY version",
    )
    .fetch_all(pool)
    .await
    .map_err(db_err)?
    .into_iter()
    .map(|r| {
        Ok((
            r.try_get(0)?,
            r.try_get(1)?,
            r.try_get(2)?,
            r.try_get(3)?,
            r.try_get::<Option<String>, _>(4)?.unwrap_or_default(),
        ))
    })
    .collect::<std::result::Result<Vec<_>, sqlx::Error>>()
    .map_err(db_err)?;
    Ok(compare("postgres", Some(rows(raw))))
}

/// The refusal of [`Migrations::RequireApplied`].
fn refuse(status: &Status) -> Result<()> {
    match status.problem() {
        None => {
            let unknown = status
                .migrations
                .iter()
                .filter(|m| m.state == State::Unknown)
                .count();
            if unknown > 0 {
                tracing::warn!(
                    unknown,
                    "the database has migrations this keyplane does not know (applied by a newer version); running on it, as in a rolling upgrade"
                );
            }
            Ok(())
        }
        Some(p) => Err(Error::invalid(
            "database",
            format!(
                "--no-migrate: the database is not ready for this keyplane: {p}. Apply them once with `keyplane migrate` (same --database/--config), then start with --no-migrate; or start without --no-migrate to migrate at start"
            ),
        )),
    }
}

/// Applies the migrations, or (`RequireApplied`) checks that none is missing.
pub(crate) async fn ensure_sqlite(pool: &SqlitePool, mode: Migrations) -> Result<()> {
    match mode {
        Migrations::Apply => migrator("sqlite")
            .run(pool)
            .await
            .map_err(|e| Error::Storage(Box::new(e))),
        Migrations::RequireApplied => refuse(&applied_sqlite(pool).await?),
    }
}

/// Applies the migrations, or (`RequireApplied`) checks that none is missing.
pub(crate) async fn ensure_pg(pool: &PgPool, mode: Migrations) -> Result<()> {
    match mode {
        Migrations::Apply => migrator("postgres")
            .run(pool)
            .await
            .map_err(|e| Error::Storage(Box::new(e))),
        Migrations::RequireApplied => refuse(&applied_pg(pool).await?),
    }
}

/// The migrations of the database `url` names, compared with this binary's; writes nothing.
/// A SQLite file that does not exist is an error (it is not created).
pub async fn status(url: &str) -> Result<Status> {
    if url.starts_with("sqlite:") {
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::invalid("database", format!("bad SQLite URL: {e}")))?
            .create_if_missing(false)
            .read_only(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await
            .map_err(db_err)?;
        let status = applied_sqlite(&pool).await;
        pool.close().await;
        status
    } else {
        let opts = PgConnectOptions::from_str(url)
            .map_err(|e| Error::invalid("database", format!("bad PostgreSQL URL: {e}")))?;
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await
            .map_err(db_err)?;
        let status = applied_pg(&pool).await;
        pool.close().await;
        status
    }
}

/// Applies the pending migrations of the database `url` names (a SQLite file is created when
/// missing: the caller decides whether it may be) and returns the ones applied now.
pub async fn migrate(url: &str) -> Result<Vec<MigrationInfo>> {
    let before = if url.starts_with("sqlite:")
        && crate::files::sqlite_file(url).is_some_and(|p| !p.exists())
    {
        None
    } else {
        Some(status(url).await?)
    };
    let store = crate::open(url).await?;
    store.close().await?;
    let after = status(url).await?;
    Ok(after
        .migrations
        .into_iter()
        .filter(|m| {
            m.state == State::Applied
                && !before.as_ref().is_some_and(|b| {
                    b.migrations
                        .iter()
                        .any(|x| x.version == m.version && x.state == State::Applied)
                })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_applied_is_all_pending() {
        let s = compare("sqlite", None);
        assert!(s.is_empty_database());
        assert!(!s.is_current());
        assert_eq!(s.pending().len(), migrator("sqlite").iter().count());
        assert!(s.problem().unwrap().contains("0001_foundation"));
    }

    /// This binary's migrations, recorded as applied.
    fn all_applied(backend: &str) -> Vec<Applied> {
        migrator(backend)
            .iter()
            .map(|m| Applied {
                version: m.version,
                description: m.description.to_string(),
                checksum: m.checksum.to_vec(),
                success: true,
                at: "2026-01-01T00:00:00.000Z".into(),
            })
            .collect()
    }

    #[test]
    fn states_are_told_apart() {
        let all = compare("postgres", Some(all_applied("postgres")));
        assert!(all.is_current() && !all.is_empty_database());
        assert_eq!(all.migrations[0].name, "0001_foundation");

        // A newer version's migration is allowed; a changed or failed one is not.
        let mut rows = all_applied("postgres");
        rows.push(Applied {
            version: 9999,
            description: "from the future".into(),
            checksum: vec![1],
            success: true,
            at: String::new(),
        });
        let s = compare("postgres", Some(rows));
        assert!(s.is_current());
        assert_eq!(s.migrations.last().unwrap().state, State::Unknown);
        assert_eq!(s.migrations.last().unwrap().name, "9999_from_the_future");

        let mut rows = all_applied("postgres");
        rows[0].checksum = vec![0];
        rows[1].success = false;
        rows.pop();
        let s = compare("postgres", Some(rows));
        assert_eq!(s.migrations[0].state, State::Changed);
        assert_eq!(s.migrations[1].state, State::Failed);
        assert_eq!(s.migrations.last().unwrap().state, State::Pending);
        assert!(s.problem().unwrap().contains("failed"));
    }
}
