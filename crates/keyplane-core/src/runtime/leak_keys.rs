//! The keys GitHub signs secret-scanning reports with: the ones configured, else GitHub's list
//! fetched from the configured URL — fetched on first use, used for the configured maximum age,
//! and fetched again sooner when a report names an identifier the list lacks, but never more
//! than once per refetch interval (so nobody can make keyplane fetch on every request), and
//! never concurrently. The HTTP is the binary's `JwksFetcher`; this file only decides when.

use super::Runtime;
use crate::domain::leaks::{parse_github_keys, ReporterKey};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

/// The fetched list and when it was fetched.
pub struct ReporterKeys {
    fetched: RwLock<Option<Arc<Vec<ReporterKey>>>>,
    fetched_at_ms: AtomicI64,
    attempted_at_ms: AtomicI64,
    fetching: tokio::sync::Mutex<()>,
}

impl Default for ReporterKeys {
    fn default() -> Self {
        Self {
            fetched: RwLock::new(None),
            fetched_at_ms: AtomicI64::new(i64::MIN / 2),
            attempted_at_ms: AtomicI64::new(i64::MIN / 2),
            fetching: tokio::sync::Mutex::new(()),
        }
    }
}

impl ReporterKeys {
    fn current(&self) -> Option<Arc<Vec<ReporterKey>>> {
        self.fetched
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn find(keys: &[ReporterKey], id: &str) -> Option<ReporterKey> {
    keys.iter().find(|k| k.id == id).cloned()
}

impl Runtime {
    /// The reporter key named `id`: a configured one, or one of the fetched list (fetched now
    /// when the list is missing, too old, or lacks `id` and the refetch interval allows).
    pub async fn reporter_key(&self, id: &str) -> Option<ReporterKey> {
        let s = &self.settings.leaks;
        if let Some(k) = find(&s.github_keys, id) {
            return Some(k);
        }
        let url = s.github_keys_url.as_deref()?;
        let entry = &self.leak_keys;
        let now = self.now_ms();
        let current = entry.current();
        let age = now - entry.fetched_at_ms.load(Ordering::Acquire);
        let fresh = current.is_some() && age < s.max_age_seconds * 1000;
        if let Some(k) = current.as_deref().and_then(|keys| find(keys, id)) {
            if fresh {
                return Some(k);
            }
        }
        let attempted = entry.attempted_at_ms.load(Ordering::Acquire);
        if now - attempted < s.refetch_interval_seconds * 1000 {
            return current.as_deref().and_then(|keys| find(keys, id));
        }
        let _one_fetch = entry.fetching.lock().await;
        if entry.attempted_at_ms.load(Ordering::Acquire) != attempted {
            // Another report fetched while this one waited.
            return entry.current().as_deref().and_then(|keys| find(keys, id));
        }
        entry.attempted_at_ms.store(now, Ordering::Release);
        let fetcher = self
            .oauth
            .jwks_fetcher
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(fetcher) = fetcher else {
            tracing::warn!("leak reports: this node cannot fetch GitHub's public keys");
            return current.as_deref().and_then(|keys| find(keys, id));
        };
        match fetcher
            .fetch(url)
            .await
            .and_then(|bytes| parse_github_keys(&bytes))
        {
            Ok(keys) => {
                let keys = Arc::new(keys);
                *entry.fetched.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&keys));
                entry.fetched_at_ms.store(now, Ordering::Release);
                find(&keys, id)
            }
            Err(e) => {
                // The old list stays in use until a fetch succeeds.
                tracing::warn!(url = %url, error = %e, "could not fetch the secret-scanning public keys");
                current.as_deref().and_then(|keys| find(keys, id))
            }
        }
    }
}
