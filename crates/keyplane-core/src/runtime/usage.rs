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
            && *self.credential_id == *k.credential_id
            && *self.service == *k.service
            && *self.org_id == *k.org_id
            && *self.project_id == *k.project_id
    }
}

/// The map's keys are already hashes.
#[derive(Default)]
struct Prehashed(u64);

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

/// FNV-1a: short keys, no allocation, and the parts are ours (ids of existing credentials,
/// registered services), not chosen by a caller.
fn hash(k: &UsageKey<'_>) -> u64 {
    struct Fnv(u64);
    impl Hasher for Fnv {
        fn write(&mut self, bytes: &[u8]) {
            for &b in bytes {
                self.0 ^= u64::from(b);
                self.0 = self.0.wrapping_mul(0x100_0000_01b3);
            }
        }
        fn finish(&self) -> u64 {
            self.0
        }
    }
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    k.minute.hash(&mut h);
    (k.outcome as u8).hash(&mut h);
    h.write(k.credential_id.as_bytes());
    h.write(&[0xff]);
    h.write(k.service.as_bytes());
    h.write(&[0xff]);
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
