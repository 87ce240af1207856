//! The public keys of external issuers that clients trust (workload identity federation),
//! cached by issuer: OpenID Connect discovery (`{issuer}/.well-known/openid-configuration`,
//! whose `issuer` must be the configured one) gives the `jwks_uri`, whose set is used for
//! `jwks_max_age_seconds` and fetched again sooner when a token names a `kid` the set lacks —
//! at most once per `jwks_refetch_interval_seconds` per issuer, and never concurrently for one
//! issuer. Both documents go through the binary's fetcher (no redirects, a timeout, a size
//! limit). A failed fetch keeps the last good set.

use super::oauth::RemoteJwks;
use super::Runtime;
use crate::domain::federation::{discovery_url, jwks_uri_from_discovery};
use crate::domain::jose::JwkSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl Runtime {
    /// The key set of `issuer` (one some client trusts), or `None` when it could not be had.
    /// With `refresh`, a token named a key the cached set lacks: fetch again if allowed.
    pub async fn issuer_key_set(&self, issuer: &str, refresh: bool) -> Option<Arc<JwkSet>> {
        let entry = self.issuer_entry(issuer);
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
            return current;
        }
        let _one_fetch = entry.fetching.lock().await;
        if entry.attempted_at_ms.load(Ordering::Acquire) != attempted {
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
            tracing::warn!(issuer = %issuer, "a client trusts an external issuer but this node cannot fetch its keys");
            return current;
        };
        let allow_http = s.jwks_uri_allow_loopback_http;
        let fetched = async {
            let doc = fetcher.fetch(&discovery_url(issuer)).await?;
            let jwks_uri = jwks_uri_from_discovery(&doc, issuer, allow_http)?;
            let bytes = fetcher.fetch(&jwks_uri).await?;
            JwkSet::parse(&bytes).map_err(|e| e.to_string())
        }
        .await;
        match fetched {
            Ok(set) => {
                let set = Arc::new(set);
                *entry.set.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&set));
                entry.fetched_at_ms.store(now, Ordering::Release);
                Some(set)
            }
            Err(e) => {
                tracing::warn!(issuer = %issuer, error = %e, "could not fetch an external issuer's keys");
                current
            }
        }
    }

    fn issuer_entry(&self, issuer: &str) -> Arc<RemoteJwks> {
        if let Some(e) = self
            .oauth
            .issuer_keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(issuer)
        {
            return Arc::clone(e);
        }
        Arc::clone(
            self.oauth
                .issuer_keys
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .entry(issuer.to_string())
                .or_insert_with(|| Arc::new(RemoteJwks::new(issuer.to_string()))),
        )
    }
}
