//! The files a SQLite deployment keeps, readable by their owner only: the database holds member
//! password hashes, credential digests and sealed signing keys.
//!
//! SQLite creates a database's `-wal`, `-shm` and `-journal` files with the database file's own
//! permissions (its unix VFS copies them), so creating the database file 0600 before SQLite
//! opens it is enough for all of them. Files left by an older version with wider modes are
//! tightened at start, with a warning that says so. The process umask is left alone: keyplane
//! runs inside tests and other programs too, and a umask is process-wide.

use std::io;
use std::path::{Path, PathBuf};

/// Owner read and write only.
pub const PRIVATE_FILE_MODE: u32 = 0o600;
/// Owner only.
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// Creates `dir` and any missing parents, each 0700. Folders that exist are left as they are.
/// Returns whether `dir` was created.
pub fn create_private_dir_all(dir: &Path) -> io::Result<bool> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(false);
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(PRIVATE_DIR_MODE);
    }
    builder.create(dir)?;
    // The umask may have taken bits away, never added any: 0700 or narrower.
    Ok(true)
}

/// Creates `path` empty with mode 0600, failing if it exists. The caller writes it.
pub fn create_private_file(path: &Path) -> io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(PRIVATE_FILE_MODE);
    }
    opts.open(path)
}

/// Takes group and other permissions away from an existing file, logging a warning when it
/// had any. Returns the mode it had when it was changed; `None` when it was already private or
/// does not exist.
pub fn restrict_to_owner(path: &Path) -> io::Result<Option<u32>> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 == 0 {
            return Ok(None);
        }
        let private = mode & 0o700;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(private))?;
        tracing::warn!(
            path = %path.display(),
            was = %format!("{mode:04o}"),
            now = %format!("{private:04o}"),
            "this file was readable by other users; keyplane made it readable by its owner only"
        );
        Ok(Some(mode))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(None)
    }
}

/// [`restrict_to_owner`], logging a warning instead of failing when the mode cannot be
/// changed (a file owned by another user, a read-only mount): keyplane still starts.
pub fn restrict_or_warn(path: &Path) {
    if let Err(e) = restrict_to_owner(path) {
        tracing::warn!(
            path = %path.display(),
            error = %e,
            "could not make this file readable by its owner only; check its permissions"
        );
    }
}

/// The database file a SQLite URL names, or `None` for an in-memory database.
pub fn sqlite_file(url: &str) -> Option<PathBuf> {
    use std::str::FromStr;
    let opts = sqlx::sqlite::SqliteConnectOptions::from_str(url).ok()?;
    let name = opts.get_filename();
    let text = name.to_string_lossy();
    let in_memory = text.is_empty()
        || text == ":memory:"
        || text.starts_with("file:")
        || url.contains("mode=memory");
    (!in_memory).then(|| name.to_path_buf())
}

/// A database file's companions: the write-ahead log, its index, and the rollback journal.
pub fn sqlite_companions(db: &Path) -> [PathBuf; 3] {
    ["-wal", "-shm", "-journal"].map(|suffix| {
        let mut name = db.as_os_str().to_os_string();
        name.push(suffix);
        PathBuf::from(name)
    })
}

/// Before SQLite opens `db`: its folder exists (created 0700 when missing), the file exists
/// (created empty, 0600, when missing: SQLite takes an empty file for a new database), and
/// it and its companions are private.
pub fn prepare_sqlite_file(db: &Path) -> io::Result<()> {
    if let Some(dir) = db.parent() {
        if create_private_dir_all(dir)? {
            tracing::info!(path = %dir.display(), "created the database folder (mode 0700)");
        }
    }
    match create_private_file(db) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    restrict_sqlite_files(db);
    Ok(())
}

/// Makes `db` and its companions readable by their owner only (warning about each changed, or
/// that could not be changed).
pub fn restrict_sqlite_files(db: &Path) {
    restrict_or_warn(db);
    for companion in sqlite_companions(db) {
        restrict_or_warn(&companion);
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn files_are_made_private() {
        let dir = std::env::temp_dir().join(format!("kp-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let db = dir.join("a/b/keyplane.db");
        prepare_sqlite_file(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
        assert_eq!(mode(&dir.join("a/b")) & 0o077, 0);
        assert_eq!(mode(&dir.join("a")) & 0o077, 0);

        let wal = sqlite_companions(&db)[0].clone();
        std::fs::write(&wal, b"").unwrap();
        std::fs::set_permissions(&wal, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o664)).unwrap();
        prepare_sqlite_file(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
        assert_eq!(mode(&wal), 0o600);
        assert_eq!(restrict_to_owner(&db).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn in_memory_databases_have_no_file() {
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(
            sqlite_file("sqlite:///var/lib/keyplane/keyplane.db"),
            Some(PathBuf::from("/var/lib/keyplane/keyplane.db"))
        );
        assert_eq!(
            sqlite_file("sqlite://keyplane.db?mode=rwc"),
            Some(PathBuf::from("keyplane.db"))
        );
    }
}
