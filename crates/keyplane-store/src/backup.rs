//! An online backup of a SQLite database: `VACUUM INTO` a new file, which SQLite writes from
//! one read transaction, so the copy is a consistent snapshot even while a server writes. The
//! copy is made under a temporary name beside the output (created 0600 before SQLite writes
//! it), flushed to disk, and only then given its name, so a failed or interrupted backup never
//! leaves a partial file where a good one is expected.

use crate::files;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// A backup that was written.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The database that was copied.
    pub database: PathBuf,
    /// The file written.
    pub output: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
}

/// Why a backup was not written.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("the database URL does not name a SQLite file")]
    NotAFile,
    #[error("there is no SQLite database at {0}")]
    NoDatabase(PathBuf),
    #[error("{0} already exists")]
    Exists(PathBuf),
    #[error("{0} is the database itself (or one of its files)")]
    IsTheDatabase(PathBuf),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("SQLite could not copy the database")]
    Sqlite(#[from] sqlx::Error),
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BackupError {
    let path = path.to_path_buf();
    move |source| BackupError::Io { what, path, source }
}

/// Writes a consistent copy of the SQLite database `url` names to `output`, mode 0600. An
/// existing `output` is an error unless `overwrite`; the database itself is never a valid
/// output. Opens the database read-only: the backup changes nothing in it.
pub async fn backup_sqlite(
    url: &str,
    output: &Path,
    overwrite: bool,
) -> Result<Snapshot, BackupError> {
    let database = files::sqlite_file(url).ok_or(BackupError::NotAFile)?;
    if !database.is_file() {
        return Err(BackupError::NoDatabase(database));
    }
    let database_real =
        std::fs::canonicalize(&database).map_err(io_err("cannot read", &database))?;

    // Where the output goes, with its folder resolved, to compare it with the database's files.
    let name = output
        .file_name()
        .ok_or_else(|| BackupError::Io {
            what: "not a file name:",
            path: output.to_path_buf(),
            source: io::Error::from(io::ErrorKind::InvalidInput),
        })?
        .to_os_string();
    let folder = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let folder =
        std::fs::canonicalize(&folder).map_err(io_err("cannot use the folder", &folder))?;
    let target = folder.join(&name);
    let target_real = std::fs::canonicalize(&target).unwrap_or_else(|_| target.clone());
    let theirs = files::sqlite_companions(&database_real);
    if target_real == database_real || theirs.contains(&target_real) || theirs.contains(&target) {
        return Err(BackupError::IsTheDatabase(output.to_path_buf()));
    }
    if !overwrite && std::fs::symlink_metadata(&target).is_ok() {
        return Err(BackupError::Exists(output.to_path_buf()));
    }

    let mut partial_name = std::ffi::OsString::from(".");
    partial_name.push(&name);
    partial_name.push(format!(
        ".partial-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    ));
    let partial = folder.join(partial_name);
    files::create_private_file(&partial).map_err(io_err("cannot create", &partial))?;
    let written = async {
        vacuum_into(url, &partial).await?;
        // SQLite does not flush the copy to disk; do it before the copy takes its name.
        std::fs::File::open(&partial)
            .and_then(|f| f.sync_all())
            .map_err(io_err("cannot flush", &partial))?;
        place(&partial, &target, overwrite)?;
        if let Ok(dir) = std::fs::File::open(&folder) {
            let _ = dir.sync_all();
        }
        std::fs::metadata(&target)
            .map(|m| m.len())
            .map_err(io_err("cannot read", &target))
    }
    .await;
    let _ = std::fs::remove_file(&partial);
    Ok(Snapshot {
        database,
        output: output.to_path_buf(),
        bytes: written?,
    })
}

/// `VACUUM INTO` from a read-only connection.
async fn vacuum_into(url: &str, into: &Path) -> Result<(), BackupError> {
    let opts = SqliteConnectOptions::from_str(url)?
        .create_if_missing(false)
        .read_only(true)
        // A running server may hold the write lock for a moment; the copy waits, never fails.
        .busy_timeout(Duration::from_secs(30));
    let mut conn = opts.connect().await?;
    let copied = sqlx::query("VACUUM INTO $1")
        .bind(into.to_string_lossy().into_owned())
        .execute(&mut conn)
        .await;
    let _ = conn.close().await;
    copied?;
    Ok(())
}

/// Gives the finished copy its name: replacing what is there with `overwrite` (an atomic
/// rename), otherwise as a new link that fails if the name is taken meanwhile.
fn place(partial: &Path, target: &Path, overwrite: bool) -> Result<(), BackupError> {
    if overwrite {
        return std::fs::rename(partial, target).map_err(io_err("cannot write", target));
    }
    match std::fs::hard_link(partial, target) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            Err(BackupError::Exists(target.to_path_buf()))
        }
        // A file system without hard links: check, then rename.
        Err(_) => {
            if std::fs::symlink_metadata(target).is_ok() {
                return Err(BackupError::Exists(target.to_path_buf()));
            }
            std::fs::rename(partial, target).map_err(io_err("cannot write", target))
        }
    }
}
