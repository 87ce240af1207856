//! The introspection caches: a positive one (active answers) and a shorter negative one
//! (inactive answers), keyed by the SHA-256 of the credential so no credential is kept in
//! memory, each bounded in size.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The key of a cache entry: SHA-256 of the credential.
pub(crate) type CacheKey = [u8; 32];

pub(crate) fn key_of(token: &str) -> CacheKey {
    Sha256::digest(token.as_bytes()).into()
}

/// A map of values that expire, holding at most `capacity` entries.
pub(crate) struct TtlCache<V> {
    entries: Mutex<HashMap<CacheKey, (V, Instant)>>,
    capacity: usize,
}

impl<V: Clone> TtlCache<V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// The live value for `key`, if any (an expired one is removed).
    pub fn get(&self, key: &CacheKey, now: Instant) -> Option<V> {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(key) {
            Some((v, until)) if *until > now => Some(v.clone()),
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keeps `value` for `ttl`. When the cache is full, expired entries are swept first; if it
    /// is still full the value is not kept (answers stay correct, only slower).
    pub fn insert(&self, key: CacheKey, value: V, ttl: Duration, now: Instant) {
        if ttl.is_zero() || self.capacity == 0 {
            return;
        }
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.capacity && !map.contains_key(&key) {
            map.retain(|_, (_, until)| *until > now);
            if map.len() >= self.capacity {
                return;
            }
        }
        map.insert(key, (value, now + ttl));
    }

    /// Forgets `key`.
    pub fn remove(&self, key: &CacheKey) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_the_size_is_bounded() {
        let c = TtlCache::new(2);
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        c.insert(key_of("a"), 1, s, t0);
        c.insert(key_of("b"), 2, s * 3, t0);
        c.insert(key_of("c"), 3, s, t0);
        assert_eq!(c.len(), 2, "full: c is not kept");
        assert_eq!(c.get(&key_of("a"), t0), Some(1));
        assert_eq!(c.get(&key_of("c"), t0), None);
        assert_eq!(c.get(&key_of("a"), t0 + s), None, "expired");
        c.insert(key_of("c"), 3, s, t0 + s * 2);
        assert_eq!(
            c.get(&key_of("c"), t0 + s * 2),
            Some(3),
            "room after the sweep"
        );
        c.insert(key_of("b"), 4, s, t0 + s * 2);
        assert_eq!(
            c.get(&key_of("b"), t0 + s * 2),
            Some(4),
            "replacing is always allowed"
        );
        c.remove(&key_of("b"));
        assert_eq!(c.get(&key_of("b"), t0 + s * 2), None);
        c.insert(key_of("z"), 9, Duration::ZERO, t0);
        assert_eq!(c.get(&key_of("z"), t0), None, "a zero TTL caches nothing");
        assert_ne!(key_of("a"), key_of("b"));
    }
}
