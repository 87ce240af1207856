//! The listeners' certificates on disk: read at start (a bad file stops the start, naming it),
//! and read again when either file changes (polled) or on SIGHUP. A reload that fails — a
//! missing file, a key that does not belong to the certificate, half of a renewal written — is
//! logged and the certificate being served stays; the listener is never closed. Key material
//! is never logged.

use crate::config::TlsFiles;
use anyhow::Result;
use keyplane_http::tls::{self, rustls, ServerCerts};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// How often the files are looked at for a change.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// What a file looks like from outside: a change to any of it means it was replaced or
/// rewritten (a renewal tool writing in place, `mv`, or a Kubernetes secret's symlink swap,
/// since the metadata is the link target's).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Option<(SystemTime, u64, u64)>);

fn stamp(path: &Path) -> Stamp {
    Stamp(std::fs::metadata(path).ok().map(|m| {
        #[cfg(unix)]
        let ino = std::os::unix::fs::MetadataExt::ino(&m);
        #[cfg(not(unix))]
        let ino = 0;
        (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), ino)
    }))
}

/// Reads and checks a certificate and its key.
fn read(files: &TlsFiles) -> Result<rustls::sign::CertifiedKey, String> {
    let cert_name = files.cert.display().to_string();
    let key_name = files.key.display().to_string();
    let cert = std::fs::read(&files.cert)
        .map_err(|e| format!("cannot read the TLS certificate file {cert_name}: {e}"))?;
    let key = std::fs::read(&files.key)
        .map_err(|e| format!("cannot read the TLS private key file {key_name}: {e}"))?;
    tls::certified_key(&cert, &cert_name, &key, &key_name)
}

/// One listener's certificate, as files and as what the listener serves.
pub struct ListenerCert {
    /// `API` or `gateway`, for logs.
    what: &'static str,
    files: TlsFiles,
    certs: Arc<ServerCerts>,
    seen: Mutex<(Stamp, Stamp)>,
}

impl ListenerCert {
    /// Reads the files; an error names the file and what is wrong with it.
    pub fn load(what: &'static str, files: &TlsFiles) -> Result<Arc<Self>> {
        let seen = (stamp(&files.cert), stamp(&files.key));
        let key = read(files).map_err(|e| anyhow::anyhow!("TLS on the {what} listener: {e}"))?;
        Ok(Arc::new(Self {
            what,
            files: files.clone(),
            certs: ServerCerts::new(key),
            seen: Mutex::new(seen),
        }))
    }

    /// The listener's TLS settings, serving whatever certificate is current.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        tls::server_config(Arc::clone(&self.certs)).map_err(anyhow::Error::msg)
    }

    /// Reads the files again and serves them from the next handshake on; on an error the
    /// certificate in use stays.
    pub fn reload(&self) -> Result<(), String> {
        let key = read(&self.files)?;
        self.certs.replace(key);
        Ok(())
    }

    fn reload_logged(&self, why: &str) {
        match self.reload() {
            Ok(()) => tracing::info!(
                listener = self.what,
                cert = %self.files.cert.display(),
                why,
                "TLS certificate reloaded"
            ),
            Err(e) => tracing::error!(
                listener = self.what,
                error = %e,
                why,
                "TLS certificate not reloaded; the previous one is still served"
            ),
        }
    }

    /// Reloads when either file looks different from the last look. A failed reload is tried
    /// again only once the files change again (no error every second for a file left broken).
    fn reload_if_changed(&self) {
        let now = (stamp(&self.files.cert), stamp(&self.files.key));
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if *seen == now {
                return;
            }
            *seen = now;
        }
        self.reload_logged("the files changed");
    }
}

/// The listeners' certificates, reloaded together.
#[derive(Clone, Default)]
pub struct Certificates(pub Vec<Arc<ListenerCert>>);

impl Certificates {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// On SIGHUP: every certificate is read again, changed or not.
    pub fn reload_all(&self) {
        for c in &self.0 {
            c.reload_logged("SIGHUP");
        }
    }

    /// Looks at the files every `every` and reloads what changed; runs until aborted.
    pub async fn watch(self, every: Duration) {
        if self.is_empty() {
            return;
        }
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let certs = self.clone();
            // Reading a few kilobytes and parsing them blocks; keep it off the executor.
            let _ = tokio::task::spawn_blocking(move || {
                for c in &certs.0 {
                    c.reload_if_changed();
                }
            })
            .await;
        }
    }
}
