//! Token exchange (RFC 8693): a token that acts for a subject lives only as long as the subject's
//! credential does. An access token subject is checked like any access token (revocation list,
//! its client's not-before); an API key subject by id, through a small cache of keys' states
//! that every key change (here or on another node) clears.

use super::Runtime;
use crate::domain::clock::to_ms;
use crate::domain::token::SubjectCredential;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

/// API keys that tokens act for: key id → until when it is live (ms; `i64::MIN`: not live).
#[derive(Default)]
pub struct SubjectKeys {
    live_until: RwLock<HashMap<String, i64>>,
    generation: AtomicU64,
}

impl SubjectKeys {
    pub fn clear(&self) {
        let mut m = self.live_until.write().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        m.clear();
    }
}

impl Runtime {
    /// Whether the credential an exchanged token acts for is still live.
    pub async fn subject_credential_live(&self, subject: &SubjectCredential) -> bool {
        let now = self.now_ms();
        match subject {
            SubjectCredential::AccessToken {
                jti,
                client_id,
                iat,
            } => {
                if self.oauth.is_revoked(jti) {
                    return false;
                }
                match self.cached_client(client_id).await {
                    Ok(Some(c)) => iat.saturating_mul(1000) >= c.not_before_ms(),
                    _ => false,
                }
            }
            SubjectCredential::ApiKey { id } => self.api_key_live_until(id).await > now,
        }
    }

    async fn api_key_live_until(&self, id: &str) -> i64 {
        let trusted = self.feed_status().cache_trusted();
        let keys = &self.subject_keys;
        if trusted {
            if let Some(until) = keys
                .live_until
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(id)
            {
                return *until;
            }
        }
        let generation = keys.generation.load(Ordering::Acquire);
        let until = match self.store.api_key_get(id).await {
            Ok(Some(k)) if k.is_active => k.expires_at.map_or(i64::MAX, to_ms),
            Ok(_) => i64::MIN,
            Err(e) => {
                tracing::error!(error = %e, "storage failed while checking a delegated token's subject");
                return i64::MIN;
            }
        };
        if trusted {
            let mut m = keys.live_until.write().unwrap_or_else(|e| e.into_inner());
            if keys.generation.load(Ordering::Acquire) == generation {
                if m.len() > 65_536 {
                    m.clear();
                }
                m.insert(id.to_string(), until);
            }
        }
        until
    }
}
