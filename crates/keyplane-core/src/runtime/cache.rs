//! The in-memory cache of credentials, keyed by digest.
//!
//! Reads take a shard's read lock only; writers (invalidations, fills) hold a shard's write lock
//! for one map operation. Unknown digests go to a separate, bounded negative cache, so a flood of
//! made-up keys cannot evict good entries and reaches storage at most once per digest (until the
//! negative shard fills and is cleared). A fill that raced with an invalidation is dropped: each
//! fill carries the epoch read before its storage lookup, and any invalidation bumps the epoch.
//!
//! Memory per key is kept small (about 290 bytes with a million keys, measured in BENCHMARKS.md): a
//! shard's table holds one pointer per key (the digest lives in the entry it points to), and
//! what many keys share (organization, project, scopes and their header values) is one
//! [`KeyGroup`] interned here.

use crate::domain::perm::{MemberRole, PermSet};
use crate::domain::secret::Digest;
use http::HeaderValue;
use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

const SHARDS: usize = 32;
const NEGATIVE_PER_SHARD: usize = 4096;

/// What keys of one organization and project with the same scopes share.
#[derive(Debug)]
pub struct KeyGroup {
    pub org_id: String,
    pub project_id: String,
    /// The key's scopes and its roles' scopes, deduplicated and sorted.
    pub scopes: Vec<String>,
    /// `scopes` joined by spaces.
    pub scopes_joined: String,
    /// Ready-made values of the forward-auth identity headers (`X-Keyplane-Org`, `-Project`,
    /// `-Scopes`): cloning one shares its bytes, so an allowed check copies none of them.
    pub org_value: HeaderValue,
    pub project_value: HeaderValue,
    pub scopes_value: HeaderValue,
}

/// What the hot path needs to know about an API key, precomputed.
#[derive(Debug)]
pub struct CachedKey {
    /// The digest under the current pepper that this entry is filed under.
    pub digest: Digest,
    pub key_id: Box<str>,
    pub name: Box<str>,
    pub owner_member_id: Option<Box<str>>,
    pub group: Arc<KeyGroup>,
    pub member_role: Option<MemberRole>,
    pub permissions: PermSet,
    pub is_active: bool,
    /// The earlier of the key's and this secret's expiry, in ms since the epoch.
    pub expires_at_ms: Option<i64>,
    pub created_at_ms: i64,
    /// Set on first use since the last flush of last-used times.
    pub used: AtomicBool,
    /// Its rate limits, with their counters (empty: none).
    pub limits: Arc<[super::ratelimit::Prepared]>,
}

impl CachedKey {
    pub fn org_id(&self) -> &str {
        &self.group.org_id
    }
    pub fn project_id(&self) -> &str {
        &self.group.project_id
    }
    pub fn scopes(&self) -> &[String] {
        &self.group.scopes
    }
    pub fn scopes_joined(&self) -> &str {
        &self.group.scopes_joined
    }
}

/// A table entry: the key, found by its digest.
struct Entry(Arc<CachedKey>);

impl Hash for Entry {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.0.digest.hash(h)
    }
}
impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        self.0.digest == o.0.digest
    }
}
impl Eq for Entry {}
impl Borrow<Digest> for Entry {
    fn borrow(&self) -> &Digest {
        &self.0.digest
    }
}

/// Digests are HMAC outputs under a secret pepper: uniformly random and not choosable by a
/// caller, so their first eight bytes are already a good hash (no SipHash rounds needed).
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn write(&mut self, bytes: &[u8]) {
        if bytes.len() >= 8 {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[..8]);
            self.0 ^= u64::from_le_bytes(b);
        } else {
            for &x in bytes {
                self.0 = self.0.rotate_left(8) ^ u64::from(x);
            }
        }
    }
    fn write_usize(&mut self, _: usize) {
        // The slice length a `[u8; 32]` hashes first carries nothing.
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type ByDigest = BuildHasherDefault<DigestHasher>;

#[derive(Default)]
struct Shard {
    keys: HashSet<Entry, ByDigest>,
    unknown: HashSet<Digest, ByDigest>,
}

pub enum Cached {
    Key(Arc<CachedKey>),
    Unknown,
    Miss,
}

type GroupKey = (String, String, String);

pub struct KeyCache {
    shards: Vec<RwLock<Shard>>,
    epoch: AtomicU64,
    used: Mutex<Vec<(Arc<CachedKey>, i64)>>,
    groups: Mutex<HashMap<GroupKey, Weak<KeyGroup>>>,
}

impl Default for KeyCache {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect(),
            epoch: AtomicU64::new(0),
            used: Mutex::new(Vec::new()),
            groups: Mutex::new(HashMap::new()),
        }
    }
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

impl KeyCache {
    fn shard(&self, d: &Digest) -> &RwLock<Shard> {
        // The hash uses the first eight bytes; the shard another one, so they stay independent.
        &self.shards[d.0[31] as usize % SHARDS]
    }

    /// The shared part for keys of `org_id`/`project_id` with these (sorted) scopes: one
    /// allocation for all of them while any is cached.
    pub fn group(&self, org_id: &str, project_id: &str, scopes: Vec<String>) -> Arc<KeyGroup> {
        let scopes_joined = scopes.join(" ");
        let key = (org_id.to_string(), project_id.to_string(), scopes_joined);
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(g) = groups.get(&key).and_then(Weak::upgrade) {
            return g;
        }
        // Forget groups no key uses any more, now and then.
        if groups.len() >= 1024 && groups.len().is_power_of_two() {
            groups.retain(|_, g| g.strong_count() > 0);
        }
        let g = Arc::new(KeyGroup {
            org_value: header_value(org_id),
            project_value: header_value(project_id),
            scopes_value: header_value(&key.2),
            org_id: key.0.clone(),
            project_id: key.1.clone(),
            scopes,
            scopes_joined: key.2.clone(),
        });
        groups.insert(key, Arc::downgrade(&g));
        g
    }

    pub fn get(&self, d: &Digest) -> Cached {
        let shard = self.shard(d).read().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = shard.keys.get(d) {
            Cached::Key(Arc::clone(&k.0))
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

    /// Stores what storage said about `d`, unless an invalidation happened since `epoch`
    /// (then returns false). A key is filed under its own `digest`, which must be `d`.
    pub fn fill(&self, d: Digest, entry: Option<Arc<CachedKey>>, epoch: u64) -> bool {
        let mut shard = self.shard(&d).write().unwrap_or_else(|e| e.into_inner());
        if self.epoch.load(Ordering::Acquire) != epoch {
            return false;
        }
        match entry {
            Some(k) => {
                debug_assert_eq!(k.digest, d);
                shard.unknown.remove(&d);
                shard.keys.replace(Entry(k));
            }
            None => {
                if shard.unknown.len() >= NEGATIVE_PER_SHARD {
                    shard.unknown.clear();
                }
                shard.unknown.insert(d);
            }
        }
        true
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
            shard.keys = HashSet::default();
            shard.unknown = HashSet::default();
        }
    }

    /// Notes a successful use; the key is queued once per flush interval.
    /// Notes a use of `k`: the first one since the last flush is kept with its time (`now_ms`
    /// is read only then), so `last_used_at` is a time the key was used — never the flush's,
    /// which could come after a revocation.
    pub fn mark_used(&self, k: &Arc<CachedKey>, now_ms: impl FnOnce() -> i64) {
        if !k.used.swap(true, Ordering::Relaxed) {
            let at = now_ms();
            self.used
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((Arc::clone(k), at));
        }
    }

    /// Takes the keys used since the last call, each with the time of its first use since
    /// then, in whole seconds (ms), oldest first: keys used in the same second are written
    /// together.
    pub fn take_used(&self) -> Vec<(String, i64)> {
        let drained = std::mem::take(&mut *self.used.lock().unwrap_or_else(|e| e.into_inner()));
        let mut out: Vec<(String, i64)> = drained
            .into_iter()
            .map(|(k, at)| {
                k.used.store(false, Ordering::Relaxed);
                (k.key_id.to_string(), at - at.rem_euclid(1000))
            })
            .collect();
        out.sort_by_key(|(_, at)| *at);
        out
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

    fn key_at(c: &KeyCache, id: &str, digest: Digest) -> Arc<CachedKey> {
        Arc::new(CachedKey {
            digest,
            key_id: id.into(),
            name: id.into(),
            owner_member_id: None,
            group: c.group("org", "prj", vec!["a:read".into()]),
            member_role: None,
            permissions: PermSet::EMPTY,
            is_active: true,
            expires_at_ms: None,
            created_at_ms: 0,
            used: AtomicBool::new(false),
            limits: Arc::from(Vec::new()),
        })
    }

    #[test]
    fn a_fill_that_raced_an_invalidation_is_dropped() {
        let c = KeyCache::default();
        let d = Digest([7; 32]);
        let epoch = c.epoch();
        c.invalidate(&[d]);
        c.fill(d, Some(key_at(&c, "k", d)), epoch);
        assert!(matches!(c.get(&d), Cached::Miss));
        c.fill(d, Some(key_at(&c, "k", d)), c.epoch());
        assert!(matches!(c.get(&d), Cached::Key(_)));
    }

    #[test]
    fn unknown_digests_never_evict_keys() {
        let c = KeyCache::default();
        let good = Digest([0; 32]);
        c.fill(good, Some(key_at(&c, "good", good)), c.epoch());
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
        let k = key_at(&c, "k", Digest([1; 32]));
        c.mark_used(&k, || 5_250);
        c.mark_used(&k, || panic!("the clock is read once per flush window"));
        assert_eq!(c.take_used(), vec![("k".to_string(), 5_000)]);
        assert!(c.take_used().is_empty());
        c.mark_used(&k, || 7_000);
        assert_eq!(c.take_used().len(), 1);
    }

    #[test]
    fn digests_alike_in_their_first_bytes_stay_apart() {
        // The table hashes the first eight bytes only; equality still compares all 32.
        let c = KeyCache::default();
        let mut a = [9u8; 32];
        let mut b = [9u8; 32];
        a[20] = 1;
        b[20] = 2;
        let (a, b) = (Digest(a), Digest(b));
        c.fill(a, Some(key_at(&c, "a", a)), c.epoch());
        c.fill(b, Some(key_at(&c, "b", b)), c.epoch());
        match (c.get(&a), c.get(&b)) {
            (Cached::Key(x), Cached::Key(y)) => {
                assert_eq!(&*x.key_id, "a");
                assert_eq!(&*y.key_id, "b");
            }
            _ => panic!("both keys are cached"),
        }
        c.invalidate(&[a]);
        assert!(matches!(c.get(&a), Cached::Miss));
        assert!(matches!(c.get(&b), Cached::Key(_)));
    }

    #[test]
    fn keys_alike_share_one_group_until_none_is_left() {
        let c = KeyCache::default();
        let g1 = c.group("org_a", "prj_a", vec!["x".into(), "y".into()]);
        let g2 = c.group("org_a", "prj_a", vec!["x".into(), "y".into()]);
        let g3 = c.group("org_a", "prj_a", vec!["x".into()]);
        assert!(Arc::ptr_eq(&g1, &g2));
        assert!(!Arc::ptr_eq(&g1, &g3));
        assert_eq!(g1.scopes_value, "x y");
        assert_eq!(g1.org_value, "org_a");
        drop((g1, g2));
        let g4 = c.group("org_a", "prj_a", vec!["x".into(), "y".into()]);
        assert_eq!(Arc::strong_count(&g4), 1);
    }
}
