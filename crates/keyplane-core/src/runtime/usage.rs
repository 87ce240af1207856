//! Usage counters on the hot path: one atomic addition per checked request, under a shard's
//! read lock (never a write, never storage). A counter is made once per (minute, credential,
//! service, outcome) — the only time a request takes a shard's write lock and allocates — and
//! the flush task drains every shard into storage, where the rows are added to (so several nodes
//! merge). Memory is bounded by what can be named: credentials that exist, registered services
//! and a fixed set of outcomes; requests without a nameable credential all share one counter
//! per outcome and minute.

use crate::domain::usage::{Outcome, UsageCount};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

const SHARDS: usize = 16;

/// What one request is counted under.
#[derive(Debug, Clone, Copy)]
pub struct UsageKey<'a> {
    pub minute: i64,
    pub org_id: &'a str,
    pub project_id: &'a str,
    pub credential_id: &'a str,
    pub service: &'a str,
    pub outcome: Outcome,
}

struct Slot {
    minute: i64,
    org_id: Box<str>,
    project_id: Box<str>,
    credential_id: Box<str>,
    service: Box<str>,
    outcome: Outcome,
    count: AtomicU64,
}

impl Slot {
    fn is(&self, k: &UsageKey<'_>) -> bool {
        self.minute == k.minute
            && self.outcome == k.outcome
            && same(&self.credential_id, k.credential_id)
            && same(&self.service, k.service)
            && same(&self.org_id, k.org_id)
            && same(&self.project_id, k.project_id)
    }
}

/// `a == b` for the short ids compared on every count, a word at a time in line (`==` on
/// strings calls `memcmp`, whose call costs more than such a comparison).
#[inline]
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let word = |c: &[u8]| {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        u64::from_ne_bytes(w)
    };
    a.chunks(8)
        .zip(b.chunks(8))
        .all(|(x, y)| word(x) == word(y))
}

/// A map's keys that are already hashes.
#[derive(Default)]
pub(crate) struct Prehashed(u64);

impl Hasher for Prehashed {
    fn write(&mut self, _: &[u8]) {
        unreachable!("only u64 keys")
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type Shard = HashMap<u64, Vec<Slot>, BuildHasherDefault<Prehashed>>;

/// The node's usage counters since the last flush.
pub struct UsageCounters {
    shards: Vec<RwLock<Shard>>,
}

impl Default for UsageCounters {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect(),
        }
    }
}

/// A word at a time (FxHash's step: rotate, xor, multiply), then SplitMix64's finalizer so the
/// top bits that pick a shard are mixed too. Short keys, no allocation, and the parts are ours
/// (ids of existing credentials, registered services), not chosen by a caller; two keys with
/// the same hash share a bucket and are told apart by comparing them.
fn hash(k: &UsageKey<'_>) -> u64 {
    struct Words(u64);
    impl Words {
        fn add(&mut self, w: u64) {
            self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }
    impl Hasher for Words {
        fn write(&mut self, bytes: &[u8]) {
            self.add(bytes.len() as u64);
            let mut words = bytes.chunks_exact(8);
            for w in &mut words {
                let mut b = [0u8; 8];
                b.copy_from_slice(w);
                self.add(u64::from_le_bytes(b));
            }
            let rest = words.remainder();
            if !rest.is_empty() {
                let mut b = [0u8; 8];
                b[..rest.len()].copy_from_slice(rest);
                self.add(u64::from_le_bytes(b));
            }
        }
        fn write_u64(&mut self, n: u64) {
            self.add(n);
        }
        fn write_i64(&mut self, n: i64) {
            self.add(n as u64);
        }
        fn write_u8(&mut self, n: u8) {
            self.add(u64::from(n));
        }
        fn finish(&self) -> u64 {
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
    }
    let mut h = Words(0);
    k.minute.hash(&mut h);
    (k.outcome as u8).hash(&mut h);
    h.write(k.credential_id.as_bytes());
    h.write(k.service.as_bytes());
    h.write(k.org_id.as_bytes());
    h.finish()
}

impl UsageCounters {
    /// Counts one request (or `n`).
    pub fn add(&self, k: UsageKey<'_>, n: u64) {
        let h = hash(&k);
        let shard = &self.shards[(h >> 59) as usize % SHARDS];
        {
            let map = shard.read().unwrap_or_else(|e| e.into_inner());
            if let Some(slot) = map.get(&h).and_then(|v| v.iter().find(|s| s.is(&k))) {
                slot.count.fetch_add(n, Ordering::Relaxed);
                return;
            }
        }
        let mut map = shard.write().unwrap_or_else(|e| e.into_inner());
        let slots = map.entry(h).or_default();
        if let Some(slot) = slots.iter().find(|s| s.is(&k)) {
            slot.count.fetch_add(n, Ordering::Relaxed);
            return;
        }
        slots.push(Slot {
            minute: k.minute,
            org_id: k.org_id.into(),
            project_id: k.project_id.into(),
            credential_id: k.credential_id.into(),
            service: k.service.into(),
            outcome: k.outcome,
            count: AtomicU64::new(n),
        });
    }

    /// Takes every count since the last call. An addition either lands before a shard is
    /// swapped out (it holds the read lock while adding) or in the fresh shard: none is lost.
    pub fn take(&self) -> Vec<UsageCount> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let map = std::mem::take(&mut *shard.write().unwrap_or_else(|e| e.into_inner()));
            for slot in map.into_values().flatten() {
                let count = slot.count.load(Ordering::Relaxed);
                if count == 0 {
                    continue;
                }
                out.push(UsageCount {
                    minute: slot.minute,
                    org_id: slot.org_id.into(),
                    project_id: slot.project_id.into(),
                    credential_id: slot.credential_id.into(),
                    service: slot.service.into(),
                    outcome: slot.outcome,
                    count,
                });
            }
        }
        out
    }

    /// Puts counts back after a failed write, so the next flush tries again.
    pub fn restore(&self, counts: &[UsageCount]) {
        for c in counts {
            self.add(
                UsageKey {
                    minute: c.minute,
                    org_id: &c.org_id,
                    project_id: &c.project_id,
                    credential_id: &c.credential_id,
                    service: &c.service,
                    outcome: c.outcome,
                },
                c.count,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_taken_once_and_split_by_key() {
        let u = UsageCounters::default();
        let k = |cred, outcome| UsageKey {
            minute: 100,
            org_id: "org_a",
            project_id: "prj_a",
            credential_id: cred,
            service: "",
            outcome,
        };
        for _ in 0..5 {
            u.add(k("key_a", Outcome::Allowed), 1);
        }
        u.add(k("key_a", Outcome::Revoked), 1);
        u.add(k("key_b", Outcome::Allowed), 3);
        let mut got = u.take();
        got.sort_by(|a, b| (&a.credential_id, a.outcome).cmp(&(&b.credential_id, b.outcome)));
        let counts: Vec<_> = got
            .iter()
            .map(|c| (c.credential_id.as_str(), c.outcome, c.count))
            .collect();
        assert_eq!(
            counts,
            vec![
                ("key_a", Outcome::Allowed, 5),
                ("key_a", Outcome::Revoked, 1),
                ("key_b", Outcome::Allowed, 3)
            ]
        );
        assert!(u.take().is_empty());
    }

    #[test]
    fn concurrent_adds_are_all_counted() {
        let u = std::sync::Arc::new(UsageCounters::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let u = u.clone();
                std::thread::spawn(move || {
                    let mut taken = 0;
                    for i in 0..10_000 {
                        u.add(
                            UsageKey {
                                minute: 1,
                                org_id: "o",
                                project_id: "p",
                                credential_id: "key_x",
                                service: "s",
                                outcome: Outcome::Allowed,
                            },
                            1,
                        );
                        if i % 1000 == 0 {
                            taken += u.take().iter().map(|c| c.count).sum::<u64>();
                        }
                    }
                    taken
                })
            })
            .collect();
        let taken: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        let rest: u64 = u.take().iter().map(|c| c.count).sum();
        assert_eq!(taken + rest, 40_000);
    }
}
