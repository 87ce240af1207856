//! The in-memory cache of credentials, keyed by digest.
//!
//! Reads take a shard's read lock only; writers (invalidations, fills) hold a shard's write lock
//! for one map operation. Unknown digests go to a separate, bounded negative cache, so a flood of
//! made-up keys cannot evict good entries and reaches storage at most once per digest (until the
//! negative shard fills and is cleared). A fill that raced with an invalidation is dropped: each
//! fill carries the epoch read before its storage lookup, and any invalidation bumps the epoch.

use crate::perm::{MemberRole, PermSet};
use crate::secret::Digest;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

const SHARDS: usize = 32;
const NEGATIVE_PER_SHARD: usize = 4096;

/// What the hot path needs to know about an API key, precomputed.
#[derive(Debug)]
pub struct CachedKey {
    pub key_id: String,
    pub name: String,
    pub org_id: String,
    pub project_id: String,
    pub owner_member_id: Option<String>,
    pub member_role: Option<MemberRole>,
    /// The key's scopes and its roles' scopes, deduplicated and sorted.
    pub scopes: Vec<String>,
    /// `scopes` joined by spaces, ready for a header.
    pub scopes_joined: String,
    pub permissions: PermSet,
    pub is_active: bool,
    /// The earlier of the key's and this secret's expiry, in ms since the epoch.
    pub expires_at_ms: Option<i64>,
    pub created_at_ms: i64,
    /// Set on first use since the last flush of last-used times.
    pub used: AtomicBool,
}

#[derive(Default)]
struct Shard {
    keys: HashMap<Digest, Arc<CachedKey>>,
    unknown: HashSet<Digest>,
}

pub enum Cached {
    Key(Arc<CachedKey>),
    Unknown,
    Miss,
}

pub struct KeyCache {
    shards: Vec<RwLock<Shard>>,
    epoch: AtomicU64,
    used: Mutex<Vec<Arc<CachedKey>>>,
}

impl Default for KeyCache {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect(),
            epoch: AtomicU64::new(0),
            used: Mutex::new(Vec::new()),
        }
    }
}

impl KeyCache {
    fn shard(&self, d: &Digest) -> &RwLock<Shard> {
        // Digests are uniformly random, so any byte spreads them evenly.
        &self.shards[d.0[0] as usize % SHARDS]
    }

    pub fn get(&self, d: &Digest) -> Cached {
        let shard = self.shard(d).read().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = shard.keys.get(d) {
            Cached::Key(Arc::clone(k))
        } else if shard.unknown.contains(d) {
            Cached::Unknown
        } else {
            Cached::Miss
        }
    }

    /// The epoch to pass to a fill that follows a storage read.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Stores what storage said about `d`, unless an invalidation happened since `epoch`.
    pub fn fill(&self, d: Digest, entry: Option<Arc<CachedKey>>, epoch: u64) {
        let mut shard = self.shard(&d).write().unwrap_or_else(|e| e.into_inner());
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        match entry {
            Some(k) => {
                shard.unknown.remove(&d);
                shard.keys.insert(d, k);
            }
            None => {
                if shard.unknown.len() >= NEGATIVE_PER_SHARD {
                    shard.unknown.clear();
                }
                shard.unknown.insert(d);
            }
        }
    }

    pub fn invalidate(&self, digests: &[Digest]) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        for d in digests {
            let mut shard = self.shard(d).write().unwrap_or_else(|e| e.into_inner());
            shard.keys.remove(d);
            shard.unknown.remove(d);
        }
    }

    pub fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        for s in &self.shards {
            let mut shard = s.write().unwrap_or_else(|e| e.into_inner());
            shard.keys.clear();
            shard.unknown.clear();
        }
    }

    /// Notes a successful use; the key is queued once per flush interval.
    pub fn mark_used(&self, k: &Arc<CachedKey>) {
        if !k.used.swap(true, Ordering::Relaxed) {
            self.used
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Arc::clone(k));
        }
    }

    /// Takes the keys used since the last call.
    pub fn take_used(&self) -> Vec<String> {
        let drained = std::mem::take(&mut *self.used.lock().unwrap_or_else(|e| e.into_inner()));
        drained
            .into_iter()
            .map(|k| {
                k.used.store(false, Ordering::Relaxed);
                k.key_id.clone()
            })
            .collect()
    }

    /// Number of cached keys and unknown digests (for metrics and tests).
    pub fn len(&self) -> (usize, usize) {
        self.shards.iter().fold((0, 0), |(k, u), s| {
            let s = s.read().unwrap_or_else(|e| e.into_inner());
            (k + s.keys.len(), u + s.unknown.len())
        })
    }

    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> Arc<CachedKey> {
        Arc::new(CachedKey {
            key_id: id.into(),
            name: id.into(),
            org_id: "org".into(),
            project_id: "prj".into(),
            owner_member_id: None,
            member_role: None,
            scopes: vec![],
            scopes_joined: String::new(),
            permissions: PermSet::EMPTY,
            is_active: true,
            expires_at_ms: None,
            created_at_ms: 0,
            used: AtomicBool::new(false),
        })
    }

    #[test]
    fn a_fill_that_raced_an_invalidation_is_dropped() {
        let c = KeyCache::default();
        let d = Digest([7; 32]);
        let epoch = c.epoch();
        c.invalidate(&[d]);
        c.fill(d, Some(key("k")), epoch);
        assert!(matches!(c.get(&d), Cached::Miss));
        c.fill(d, Some(key("k")), c.epoch());
        assert!(matches!(c.get(&d), Cached::Key(_)));
    }

    #[test]
    fn unknown_digests_never_evict_keys() {
        let c = KeyCache::default();
        let good = Digest([0; 32]);
        c.fill(good, Some(key("good")), c.epoch());
        for i in 0..(NEGATIVE_PER_SHARD * SHARDS * 2) {
            let mut b = [0u8; 32];
            b[..8].copy_from_slice(&(i as u64).to_le_bytes());
            c.fill(Digest(b), None, c.epoch());
        }
        assert!(matches!(c.get(&good), Cached::Key(_)));
        assert!(c.len().1 <= NEGATIVE_PER_SHARD * SHARDS);
    }

    #[test]
    fn usage_is_queued_once_per_flush() {
        let c = KeyCache::default();
        let k = key("k");
        c.mark_used(&k);
        c.mark_used(&k);
        assert_eq!(c.take_used(), vec!["k".to_string()]);
        assert!(c.take_used().is_empty());
        c.mark_used(&k);
        assert_eq!(c.take_used().len(), 1);
    }
}
