//! One throttle for failed authentication: counts per key (e.g. "client id and address", or
//! "address") in one-minute windows. Used by client authentication at the OAuth endpoints, by
//! authentication on the management API, and by the console's sign-in; never keyed by an
//! account alone, so nobody can lock out a legitimate caller from elsewhere. Its memory is
//! bounded: past [`MAX_KEYS`] live keys, new keys are not tracked until old windows expire.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

const WINDOW_MS: i64 = 60_000;

/// Keys tracked at most (about 100 bytes each).
pub const MAX_KEYS: usize = 100_000;

/// Failures per key within the current window.
pub struct FailureThrottle {
    failures: Mutex<Failures>,
    /// When the last failure happened (ms): while nothing failed within a window, checking
    /// builds no keys and takes no lock.
    last_failure_ms: AtomicI64,
}

#[derive(Default)]
struct Failures {
    by_key: HashMap<String, (u32, i64)>,
    /// When expired windows were last swept (at most once a second while full).
    swept_ms: i64,
}

impl Default for FailureThrottle {
    fn default() -> Self {
        Self {
            failures: Mutex::default(),
            last_failure_ms: AtomicI64::new(i64::MIN / 2),
        }
    }
}

impl FailureThrottle {
    /// Whether nothing failed within the last window (the common case; one atomic load).
    pub fn quiet(&self, now_ms: i64) -> bool {
        now_ms - self.last_failure_ms.load(Ordering::Relaxed) >= WINDOW_MS
    }

    /// `Some(seconds to wait)` when any of `keys` reached its limit within the window.
    pub fn blocked(&self, keys: &[(String, u32)], now_ms: i64) -> Option<u64> {
        if self.quiet(now_ms) {
            return None;
        }
        let f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        keys.iter().find_map(|(k, limit)| {
            f.by_key.get(k).and_then(|(count, start)| {
                (now_ms - start < WINDOW_MS && *count >= *limit)
                    .then(|| ((start + WINDOW_MS - now_ms) / 1000 + 1) as u64)
            })
        })
    }

    /// Counts a failure against each of `keys`.
    pub fn failed(&self, keys: &[(String, u32)], now_ms: i64) {
        self.last_failure_ms.store(now_ms, Ordering::Relaxed);
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if f.by_key.len() >= MAX_KEYS && now_ms - f.swept_ms >= 1000 {
            f.swept_ms = now_ms;
            f.by_key.retain(|_, (_, start)| now_ms - *start < WINDOW_MS);
        }
        for (k, _) in keys {
            if f.by_key.len() >= MAX_KEYS && !f.by_key.contains_key(k) {
                continue;
            }
            let e = f.by_key.entry(k.clone()).or_insert((0, now_ms));
            if now_ms - e.1 >= WINDOW_MS {
                *e = (0, now_ms);
            }
            e.0 += 1;
        }
    }

    /// Forgets the count of one key (a success clears that account's count from that address).
    pub fn forget(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_key
            .remove(key);
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_key
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The throttle key of authentication on the management API from `addr`
/// ([`crate::domain::request::RequestMeta::throttle_addr`]): per address only.
pub fn management_keys(addr: &str, limit: u32) -> [(String, u32); 1] {
    [(format!("auth|{addr}"), limit)]
}

/// The console's sign-in limits, per (account, address) and per address.
pub const SIGN_IN_PER_ACCOUNT_AND_ADDRESS: u32 = 5;
pub const SIGN_IN_PER_ADDRESS: u32 = 20;

/// The throttle keys of a console sign-in by `who` from `addr`.
pub fn sign_in_keys(who: &str, addr: &str) -> [(String, u32); 2] {
    [
        (
            format!("sign-in|{who}|{addr}"),
            SIGN_IN_PER_ACCOUNT_AND_ADDRESS,
        ),
        (format!("sign-in|{addr}"), SIGN_IN_PER_ADDRESS),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_blocks_then_expires() {
        let t = FailureThrottle::default();
        let keys = sign_in_keys("a", "1.2.3.4");
        for _ in 0..SIGN_IN_PER_ACCOUNT_AND_ADDRESS {
            assert!(t.blocked(&keys, 0).is_none());
            t.failed(&keys, 0);
        }
        assert!(t.blocked(&keys, 1000).is_some());
        // Another account from the same address is not blocked yet; the same one elsewhere isn't.
        assert!(t.blocked(&sign_in_keys("b", "1.2.3.4"), 1000).is_none());
        assert!(t.blocked(&sign_in_keys("a", "5.6.7.8"), 1000).is_none());
        assert!(t.blocked(&keys, 61_000).is_none());
        t.forget(&keys[0].0);
        assert!(t.blocked(&keys, 1000).is_none());
    }

    #[test]
    fn memory_is_bounded() {
        let t = FailureThrottle::default();
        for i in 0..MAX_KEYS + 10 {
            t.failed(&management_keys(&format!("a{i}"), 1), 0);
        }
        assert_eq!(t.len(), MAX_KEYS);
        // Once the windows expired, room is made again.
        t.failed(&management_keys("late", 1), WINDOW_MS + 1);
        assert_eq!(t.len(), 1);
    }
}
