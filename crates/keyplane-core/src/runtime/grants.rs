//! Grants behind the tokens of the authorization-code grant: whether one is live, by id,
//! through a small cache that every grant change (here or on another node: a revocation, a
//! member removed, an app blocked) clears, and that is trusted only while the change feed is.
//! Also the apps (dynamic registration, client ID metadata documents) by client id.

use super::Runtime;
use crate::domain::authcode::Grant;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Grant id → the grant while it is live (`None`: revoked or gone).
#[derive(Default)]
pub struct LiveGrants {
    by_id: RwLock<HashMap<String, Option<Arc<Grant>>>>,
    generation: AtomicU64,
}

impl LiveGrants {
    pub fn clear(&self) {
        let mut m = self.by_id.write().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        m.clear();
    }
}

impl Runtime {
    /// The grant `id` while it is live: not revoked, its member not removed, its app not
    /// blocked (blocking revokes the app's grants). One storage read per grant until a change.
    pub async fn live_grant(&self, id: &str) -> Option<Arc<Grant>> {
        let trusted = self.feed_status().cache_trusted();
        if trusted {
            if let Some(hit) = self
                .grants
                .by_id
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(id)
            {
                return hit.clone();
            }
        }
        let generation = self.grants.generation.load(Ordering::Acquire);
        let found = match self.store.grant_get(id).await {
            Ok(Some(g)) if g.is_live() => Some(Arc::new(g)),
            Ok(_) => None,
            Err(e) => {
                tracing::error!(error = %e, "storage failed while checking a token's grant");
                return None;
            }
        };
        if trusted {
            let mut m = self.grants.by_id.write().unwrap_or_else(|e| e.into_inner());
            if self.grants.generation.load(Ordering::Acquire) == generation {
                if m.len() > 65_536 {
                    m.clear();
                }
                m.insert(id.to_string(), found.clone());
            }
        }
        found
    }
}
