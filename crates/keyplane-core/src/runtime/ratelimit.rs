//! Rate limits on the hot path: fixed windows counted with one compare-and-swap per limit, no
//! lock, no allocation, no storage.
//!
//! A counter is one `AtomicU64` packing the window's number (low 24 bits of `now / window`) and
//! the units counted in it (40 bits, limits are at most 10^12): a request in a new window starts
//! from zero, and a request that would pass the limit is refused without counting. With several
//! limits a request counts against each in turn and gives back what it took when a later one
//! refuses it, so on one node the count is exact.
//!
//! Across nodes, each counter also knows what the other nodes counted in its window (`others`,
//! same packing): with Redis, the binary's reconciler adds each node's new units to a Redis
//! counter per (counter, window) every few tens of milliseconds and adopts the total; without
//! Redis, each node enforces its share of the limit (`limit / nodes`, rounded up). Windows of a
//! minute or longer are also added to storage at each flush and read back at start, so a
//! restart does not hand out a fresh day.

use crate::domain::usage::{LimitShare, RateLimit};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

const TAG_BITS: u32 = 24;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;
const COUNT_MAX: u64 = (1 << (64 - TAG_BITS)) - 1;

fn pack(window: i64, count: u64) -> u64 {
    ((window as u64 & TAG_MASK) << (64 - TAG_BITS)) | count.min(COUNT_MAX)
}
fn tag(v: u64) -> u64 {
    v >> (64 - TAG_BITS)
}
fn count_in(v: u64, window: i64) -> u64 {
    if tag(v) == (window as u64 & TAG_MASK) {
        v & COUNT_MAX
    } else {
        0
    }
}

/// One shared count: a credential's limit, or an owner's or project's.
#[derive(Debug)]
pub struct Counter {
    /// `"<share>/<name>"`, e.g. `key_abc/burst`, `owner:mem_x/daily`.
    pub key: Arc<str>,
    pub window_ms: i64,
    /// This node's units in the current window.
    local: AtomicU64,
    /// The other nodes' units in the current window (from Redis or storage).
    others: AtomicU64,
    /// This node's units not yet handed to Redis.
    unsent: AtomicU64,
    /// This node's units not yet added to storage.
    unstored: AtomicU64,
}

impl Counter {
    fn new(key: Arc<str>, window_ms: i64) -> Self {
        Self {
            key,
            window_ms,
            local: AtomicU64::new(0),
            others: AtomicU64::new(0),
            unsent: AtomicU64::new(0),
            unstored: AtomicU64::new(0),
        }
    }

    /// Adds `cost` if the total stays within `limit`; the units counted if so.
    fn try_add(&self, window: i64, cost: u64, limit: u64) -> Result<u64, u64> {
        let others = count_in(self.others.load(Ordering::Relaxed), window);
        let mut cur = self.local.load(Ordering::Relaxed);
        loop {
            let mine = count_in(cur, window);
            let total = mine + others;
            if total + cost > limit {
                return Err(total);
            }
            match self.local.compare_exchange_weak(
                cur,
                pack(window, mine + cost),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    add_packed(&self.unsent, window, cost);
                    add_packed(&self.unstored, window, cost);
                    return Ok(total + cost);
                }
                Err(v) => cur = v,
            }
        }
    }

    /// Gives back units taken in `window` (a later limit refused the request).
    fn give_back(&self, window: i64, cost: u64) {
        sub_packed(&self.local, window, cost);
        sub_packed(&self.unsent, window, cost);
        sub_packed(&self.unstored, window, cost);
    }

    /// The units this node counted and has not handed to Redis yet, with the window they were
    /// counted in (taken). `now_window` is the current window.
    pub fn take_unsent(&self, now_window: i64) -> Option<(i64, u64)> {
        unpack_taken(
            self.unsent.swap(pack(now_window, 0), Ordering::AcqRel),
            now_window,
        )
    }

    /// The units this node counted and has not stored yet, with their window (taken).
    pub fn take_unstored(&self, now_window: i64) -> Option<(i64, u64)> {
        unpack_taken(
            self.unstored.swap(pack(now_window, 0), Ordering::AcqRel),
            now_window,
        )
    }

    /// This node's units in `window`.
    pub fn local(&self, window: i64) -> u64 {
        count_in(self.local.load(Ordering::Relaxed), window)
    }

    /// Sets what the other nodes counted in `window`.
    pub fn set_others(&self, window: i64, n: u64) {
        self.others.store(pack(window, n), Ordering::Relaxed);
    }

    pub fn window_of(&self, now_ms: i64) -> i64 {
        now_ms.div_euclid(self.window_ms)
    }
}

/// A taken packed count with its full window number, when it holds any units.
fn unpack_taken(v: u64, now_window: i64) -> Option<(i64, u64)> {
    let n = v & COUNT_MAX;
    if n == 0 {
        return None;
    }
    let back = ((now_window as u64 & TAG_MASK).wrapping_sub(tag(v))) & TAG_MASK;
    Some((now_window - back as i64, n))
}

fn add_packed(a: &AtomicU64, window: i64, n: u64) {
    let _ = a.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |v| {
        Some(pack(window, count_in(v, window) + n))
    });
}

fn sub_packed(a: &AtomicU64, window: i64, n: u64) {
    let _ = a.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |v| {
        Some(pack(window, count_in(v, window).saturating_sub(n)))
    });
}

/// A credential's limit, ready for the hot path: its counter and the numbers.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub name: Arc<str>,
    pub limit: u64,
    /// The limit this node enforces (`limit`, or its share without Redis).
    pub local_limit: u64,
    pub cost: u64,
    pub counter: Arc<Counter>,
}

/// What a request is told about one limit: the one that refused it, or the tightest one.
#[derive(Debug, Clone)]
pub struct LimitState {
    pub name: Arc<str>,
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the window resets (at least 1).
    pub reset_seconds: u64,
    pub window_seconds: u64,
}

/// The outcome of counting a request against a credential's limits.
#[derive(Debug, Clone)]
pub enum Limited {
    /// Within every limit; the tightest one, when the credential has any.
    Within(Option<LimitState>),
    /// Over this limit; nothing was counted.
    Over(LimitState),
}

/// Every counter of the node, by key, and how the node shares a limit without Redis.
pub struct Limiter {
    counters: RwLock<HashMap<Arc<str>, Arc<Counter>>>,
    /// Nodes sharing a limit without Redis (each enforces `limit / nodes`).
    nodes: AtomicU64,
    /// Counts read from storage at start: `counter key → (window start ms, units)`.
    restored: Mutex<HashMap<String, (i64, u64)>>,
    /// The limits of every credential that has none, shared: an empty `Arc<[_]>` of its own
    /// is an allocation (its counts) per cached key, about 17 bytes of each key's memory.
    none: Arc<[Prepared]>,
}

impl Default for Limiter {
    fn default() -> Self {
        Self {
            counters: RwLock::new(HashMap::new()),
            nodes: AtomicU64::new(1),
            restored: Mutex::new(HashMap::new()),
            none: Arc::from(Vec::new()),
        }
    }
}

impl Limiter {
    /// How many nodes share each limit when no shared store reconciles them (1 with Redis).
    pub fn set_nodes(&self, n: u64) {
        self.nodes.store(n.max(1), Ordering::Relaxed);
    }

    pub fn nodes(&self) -> u64 {
        self.nodes.load(Ordering::Relaxed)
    }

    /// Counts stored by earlier runs (and other nodes) for windows still open.
    pub fn restore(&self, windows: Vec<(String, i64, u64)>) {
        let mut r = self.restored.lock().unwrap_or_else(|e| e.into_inner());
        for (k, start, n) in windows {
            r.insert(k, (start, n));
        }
    }

    /// The counter under `key` with `window_ms` (made on first use).
    pub fn counter(&self, key: &str, window_ms: i64) -> Arc<Counter> {
        if let Some(c) = self
            .counters
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .filter(|c| c.window_ms == window_ms)
        {
            return Arc::clone(c);
        }
        let mut map = self.counters.write().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(key).filter(|c| c.window_ms == window_ms) {
            return Arc::clone(c);
        }
        let key: Arc<str> = key.into();
        let c = Arc::new(Counter::new(Arc::clone(&key), window_ms));
        if let Some((start, n)) = self
            .restored
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&*key)
        {
            if start.rem_euclid(window_ms) == 0 {
                c.set_others(start / window_ms, n);
            }
        }
        map.insert(key, Arc::clone(&c));
        c
    }

    /// Prepares a credential's limits. `credential` is its id, `owner` its owning member,
    /// `project` its project.
    pub fn prepare(
        &self,
        limits: &[RateLimit],
        credential: &str,
        owner: Option<&str>,
        project: &str,
    ) -> Arc<[Prepared]> {
        if limits.is_empty() {
            return Arc::clone(&self.none);
        }
        let nodes = self.nodes();
        limits
            .iter()
            .map(|l| {
                let share = match (l.shared, owner) {
                    (Some(LimitShare::Owner), Some(m)) => format!("owner:{m}"),
                    (Some(LimitShare::Project), _) => format!("project:{project}"),
                    _ => credential.to_string(),
                };
                let key = format!("{share}/{}", l.name);
                Prepared {
                    name: l.name.as_str().into(),
                    limit: l.limit,
                    local_limit: l.limit.div_ceil(nodes),
                    cost: l.cost.unwrap_or(1),
                    counter: self.counter(&key, l.window.as_millis()),
                }
            })
            .collect()
    }

    /// Counts a request against `limits`; `cost` overrides each limit's own cost for the limit
    /// it names (`None`: every limit) — a route rule's cost.
    pub fn check(&self, limits: &[Prepared], now_ms: i64, rule: Option<(&str, u64)>) -> Limited {
        let mut tightest: Option<LimitState> = None;
        for (i, l) in limits.iter().enumerate() {
            let cost = match rule {
                Some((name, c)) if name.is_empty() || *name == *l.name => c,
                _ => l.cost,
            };
            let window = l.counter.window_of(now_ms);
            let reset_ms = (window + 1) * l.counter.window_ms - now_ms;
            let state = |used: u64| LimitState {
                name: Arc::clone(&l.name),
                limit: l.limit,
                remaining: l.local_limit.saturating_sub(used),
                reset_seconds: ((reset_ms + 999) / 1000).max(1) as u64,
                window_seconds: ((l.counter.window_ms + 999) / 1000).max(1) as u64,
            };
            match l.counter.try_add(window, cost, l.local_limit) {
                Ok(used) => {
                    let s = state(used);
                    if tightest.as_ref().is_none_or(|t| s.remaining < t.remaining) {
                        tightest = Some(s);
                    }
                }
                Err(used) => {
                    for earlier in &limits[..i] {
                        let c = match rule {
                            Some((name, c)) if name.is_empty() || *name == *earlier.name => c,
                            _ => earlier.cost,
                        };
                        earlier
                            .counter
                            .give_back(earlier.counter.window_of(now_ms), c);
                    }
                    let mut s = state(used);
                    s.remaining = 0;
                    return Limited::Over(s);
                }
            }
        }
        Limited::Within(tightest)
    }

    /// Every counter (for the reconciler and the flush).
    pub fn counters(&self) -> Vec<Arc<Counter>> {
        self.counters
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::usage::Window;

    /// A credential without limits costs its cache entry no allocation: every one shares the
    /// limiter's empty list (a million cached keys: 17 MB of RSS, measured).
    #[test]
    fn credentials_without_limits_share_one_empty_list() {
        let l = Limiter::default();
        let a = l.prepare(&[], "key_a", None, "prj");
        let b = l.prepare(&[], "key_b", Some("mem_b"), "prj");
        assert!(a.is_empty() && Arc::ptr_eq(&a, &b));
        let c = l.prepare(&[limit("burst", 10, "1s")], "key_c", None, "prj");
        assert_eq!(c.len(), 1);
        assert!(!Arc::ptr_eq(&a, &c));
    }

    fn limit(name: &str, limit: u64, window: &str) -> RateLimit {
        RateLimit {
            name: name.into(),
            limit,
            window: Window::parse(window).unwrap(),
            cost: None,
            shared: None,
        }
    }

    #[test]
    fn exact_within_a_window_and_fresh_in_the_next() {
        let l = Limiter::default();
        let p = l.prepare(&[limit("burst", 3, "1s")], "key_a", None, "prj");
        let now = 10_000;
        for _ in 0..3 {
            assert!(matches!(l.check(&p, now, None), Limited::Within(_)));
        }
        match l.check(&p, now + 10, None) {
            Limited::Over(s) => {
                assert_eq!(s.remaining, 0);
                assert_eq!(s.reset_seconds, 1);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(l.check(&p, now + 1000, None), Limited::Within(_)));
    }

    #[test]
    fn a_refusal_by_one_limit_counts_against_none() {
        let l = Limiter::default();
        let p = l.prepare(
            &[limit("day", 100, "1d"), limit("burst", 1, "1s")],
            "key_a",
            None,
            "prj",
        );
        assert!(matches!(l.check(&p, 0, None), Limited::Within(_)));
        assert!(matches!(l.check(&p, 1, None), Limited::Over(_)));
        assert_eq!(p[0].counter.local(0), 1);
    }

    #[test]
    fn shared_by_owner_and_split_between_nodes() {
        let l = Limiter::default();
        let mut shared = limit("daily", 4, "1d");
        shared.shared = Some(LimitShare::Owner);
        let a = l.prepare(std::slice::from_ref(&shared), "key_a", Some("mem_x"), "prj");
        let b = l.prepare(std::slice::from_ref(&shared), "key_b", Some("mem_x"), "prj");
        for p in [&a, &b, &a, &b] {
            assert!(matches!(l.check(p, 0, None), Limited::Within(_)));
        }
        assert!(matches!(l.check(&a, 0, None), Limited::Over(_)));
        let two = Limiter::default();
        two.set_nodes(2);
        let p = two.prepare(&[limit("x", 5, "1m")], "key_c", None, "prj");
        let allowed = (0..10)
            .filter(|_| matches!(two.check(&p, 0, None), Limited::Within(_)))
            .count();
        assert_eq!(allowed, 3);
    }

    #[test]
    fn concurrent_checks_never_pass_the_limit() {
        let l = Arc::new(Limiter::default());
        let p = l.prepare(&[limit("burst", 1000, "1h")], "key_a", None, "prj");
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (l, p) = (l.clone(), p.clone());
                std::thread::spawn(move || {
                    (0..600)
                        .filter(|_| matches!(l.check(&p, 5, None), Limited::Within(_)))
                        .count()
                })
            })
            .collect();
        let allowed: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(allowed, 1000);
    }
}
