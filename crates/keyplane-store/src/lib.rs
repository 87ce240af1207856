//! SQLite and PostgreSQL implementations of [`keyplane_core::store::Store`].
//!
//! The SQL is written once, in the dialect both databases share (positional `$n` parameters,
//! `BIGINT` millisecond timestamps, JSON text for lists, `ON CONFLICT`, `RETURNING`), and the
//! `impl_store!` macro stamps it out for each backend. What differs is passed in: how a
//! transaction locks a row (PostgreSQL `FOR UPDATE`; SQLite serializes every write through one
//! connection instead) and how other nodes learn of changes (PostgreSQL `NOTIFY`; a SQLite
//! deployment is one node). Each backend has its own migrations with the same numbered names.

#[macro_use]
mod authcode;
#[macro_use]
mod usage;
#[macro_use]
mod webhooks;
pub mod backup;
pub mod files;
pub mod migrations;
mod sql;

use keyplane_core::domain::error::Error;
use keyplane_core::store::Store;
use std::sync::Arc;

pub use backup::{backup_sqlite, BackupError, Snapshot};
pub use migrations::Migrations;
pub use sql::{PgStore, SqliteStore, NOTIFY_CHANNEL};

/// Opens the store a database URL names: `sqlite://path` (created when missing) or
/// `postgres://...`, and applies its migrations.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, Error> {
    open_with(url, Migrations::Apply).await
}

/// [`open`], with a choice about migrations: apply them, or refuse a database that lacks one
/// (`keyplane serve --no-migrate`).
pub async fn open_with(url: &str, migrations: Migrations) -> Result<Arc<dyn Store>, Error> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::open_with(url, migrations).await?))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(Arc::new(PgStore::open_with(url, migrations).await?))
    } else {
        Err(Error::invalid(
            "database",
            format!("unsupported database URL {url:?}: use sqlite://PATH or postgres://..."),
        ))
    }
}

/// The names of a backend's migrations, for the test that keeps the two lists equal.
pub fn migration_names(backend: &str) -> Vec<String> {
    let m = match backend {
        "sqlite" => sqlx::migrate!("./migrations/sqlite"),
        _ => sqlx::migrate!("./migrations/postgres"),
    };
    m.iter()
        .map(|m| format!("{}_{}", m.version, m.description))
        .collect()
}
