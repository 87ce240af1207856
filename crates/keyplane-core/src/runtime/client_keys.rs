//! The public keys a `private_key_jwt` client's assertions are checked with: the set it
//! registered inline, or the one published at its `jwks_uri` — fetched on first use, used for
//! the configured maximum age, and fetched again sooner when an assertion names a `kid` the set
//! lacks, but never more than once per refetch interval per client (so nobody can make keyplane
//! fetch on every request), and never concurrently for one client.

use super::oauth::{CachedClient, RemoteJwks};
use super::Runtime;
use crate::domain::jose::JwkSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl Runtime {
    /// The key set to check `client`'s assertions with, or `None` when it has none (no keys
    /// registered, or its `jwks_uri` has not been fetched successfully yet). With `refresh`, the
    /// caller found no key for an assertion: a `jwks_uri` is fetched again if the refetch
    /// interval allows.
    pub async fn client_key_set(
        &self,
        client: &CachedClient,
        refresh: bool,
    ) -> Option<Arc<JwkSet>> {
        let c = &client.client;
        if let Some(inline) = &client.jwks {
            return Some(Arc::clone(inline));
        }
        let url = c.jwks_uri.as_deref()?;
        let entry = self.remote_jwks_entry(&c.client_id, url);
        let now = self.now_ms();
        let s = &self.settings.oauth;
        let current = entry.current();
        let age = now - entry.fetched_at_ms.load(Ordering::Acquire);
        let stale = current.is_none() || age >= s.jwks_max_age_seconds * 1000;
        if !stale && !refresh {
            return current;
        }
        let attempted = entry.attempted_at_ms.load(Ordering::Acquire);
        if now - attempted < s.jwks_refetch_interval_seconds * 1000 {
            // Too soon to ask again: a stale set is still better than none.
            return current;
        }
        let _one_fetch = entry.fetching.lock().await;
        if entry.attempted_at_ms.load(Ordering::Acquire) != attempted {
            // Another request fetched while this one waited.
            return entry.current();
        }
        entry.attempted_at_ms.store(now, Ordering::Release);
        let fetcher = self
            .oauth
            .jwks_fetcher
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(fetcher) = fetcher else {
            tracing::warn!(client_id = %c.client_id, "a client uses jwks_uri but this node cannot fetch it");
            return current;
        };
        match fetcher
            .fetch(url)
            .await
            .and_then(|bytes| JwkSet::parse(&bytes).map_err(|e| e.to_string()))
        {
            Ok(set) => {
                let set = Arc::new(set);
                *entry.set.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&set));
                entry.fetched_at_ms.store(now, Ordering::Release);
                Some(set)
            }
            Err(e) => {
                // The old set (if any) stays in use until a fetch succeeds: keys can only be
                // withdrawn by publishing a set without them, which a working fetch then sees.
                tracing::warn!(client_id = %c.client_id, url = %url, error = %e, "could not fetch a client's jwks_uri");
                current
            }
        }
    }

    /// The cache entry of `client_id`'s `jwks_uri`, made when missing or when the URL changed.
    fn remote_jwks_entry(&self, client_id: &str, url: &str) -> Arc<RemoteJwks> {
        if let Some(e) = self
            .oauth
            .remote_jwks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(client_id)
            .filter(|e| e.url == url)
        {
            return Arc::clone(e);
        }
        let mut all = self
            .oauth
            .remote_jwks
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let e = all
            .entry(client_id.to_string())
            .or_insert_with(|| Arc::new(RemoteJwks::new(url.to_string())));
        if e.url != url {
            *e = Arc::new(RemoteJwks::new(url.to_string()));
        }
        Arc::clone(e)
    }
}
