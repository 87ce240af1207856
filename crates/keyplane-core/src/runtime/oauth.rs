//! Per-node OAuth state: the client cache, revoked token ids, the signing keyring, the sealer
//! of opaque tokens, the client-authentication throttle, the counters flushed in batches, and
//! the key sets fetched from clients' `jwks_uri`s.

use crate::domain::client_auth::JwksFetcher;
use crate::domain::clock::{from_ms, to_ms};
use crate::domain::jose::JwkSet;
use crate::domain::model::{ClientSecret, OAuthClient};
use crate::domain::settings::OAuthSettings;
use crate::domain::token::{Keyring, Sealer};
use crate::runtime::throttle::FailureThrottle;
use crate::runtime::usage::Prehashed;
use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, BuildHasherDefault};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use time::OffsetDateTime;

/// A client as the hot path needs it.
#[derive(Debug)]
pub struct CachedClient {
    pub client: OAuthClient,
    pub secrets: Vec<CachedSecret>,
    /// The client's inline `jwks`, shared by every check.
    pub jwks: Option<Arc<JwkSet>>,
    /// Whether it is in the client cache: use counts on an entry that is not (its fill lost a
    /// race with an invalidation, or the cache is not trusted) are handed to the next flush
    /// at once, since no eviction will.
    pub cached: std::sync::atomic::AtomicBool,
    /// Its rate limits with their counters, prepared on first use.
    pub limits: std::sync::OnceLock<Arc<[super::ratelimit::Prepared]>>,
}

#[derive(Debug)]
pub struct CachedSecret {
    pub id: String,
    pub digest: crate::domain::secret::Digest,
    /// The earlier of the secret's expiry and its maximum age under the rotation policy (ms).
    pub refused_from_ms: Option<i64>,
    pub uses: AtomicU64,
    pub last_used_ms: AtomicI64,
}

impl CachedClient {
    pub fn new(client: OAuthClient, secrets: Vec<ClientSecret>) -> Self {
        let max_age_ms = client.secret_rotation_days.map(|d| d * 86_400_000);
        let secrets = secrets
            .into_iter()
            .map(|s| {
                let by_policy = max_age_ms.map(|a| to_ms(s.created_at) + a);
                let refused_from_ms = match (s.expires_at.map(to_ms), by_policy) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                CachedSecret {
                    id: s.id,
                    digest: s.digest,
                    refused_from_ms,
                    uses: AtomicU64::new(0),
                    last_used_ms: AtomicI64::new(0),
                }
            })
            .collect();
        Self {
            jwks: client.jwks.clone().map(Arc::new),
            client,
            secrets,
            cached: std::sync::atomic::AtomicBool::new(false),
            limits: std::sync::OnceLock::new(),
        }
    }

    /// Tokens issued before this (ms) are refused; every token once the client is disabled.
    pub fn not_before_ms(&self) -> i64 {
        if self.client.disabled_at.is_some() {
            return i64::MAX;
        }
        self.client.not_before.map(to_ms).unwrap_or(i64::MIN)
    }

    /// Whether the client may authenticate at all (its member was removed: no).
    pub fn is_enabled(&self) -> bool {
        self.client.disabled_at.is_none()
    }
}

/// The key set fetched from one client's `jwks_uri`, and when it was fetched. An entry lives
/// while its client is cached and unchanged (any change to the client drops it), so there is
/// at most one per `private_key_jwt` client with a `jwks_uri`.
#[derive(Debug)]
pub struct RemoteJwks {
    pub url: String,
    pub set: RwLock<Option<Arc<JwkSet>>>,
    /// The last successful fetch (ms).
    pub fetched_at_ms: AtomicI64,
    /// The last attempt, successful or not (ms): attempts are at most one per refetch interval.
    pub attempted_at_ms: AtomicI64,
    /// Held while fetching, so concurrent requests for an unknown `kid` make one fetch.
    pub fetching: tokio::sync::Mutex<()>,
}

impl RemoteJwks {
    pub fn new(url: String) -> Self {
        Self {
            url,
            set: RwLock::new(None),
            fetched_at_ms: AtomicI64::new(i64::MIN / 2),
            attempted_at_ms: AtomicI64::new(i64::MIN / 2),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    pub fn current(&self) -> Option<Arc<JwkSet>> {
        self.set.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Tokens issued per (client, minute): count, scopes, organization.
type IssuedCounts = HashMap<(String, i64), (u64, BTreeSet<String>, String)>;

/// An access token opened (opaque) or verified (JWT) before: what verifying it again would
/// find, valid while its client is the same cached client it was checked against (any change
/// to the client replaces that entry of the client cache) and, for a JWT, while the keyring
/// that verified it is the one in use (any change to the signing keys replaces it). The token's
/// expiry and revocation are still checked on every use.
pub struct OpenedToken {
    /// The token, compared whole (in constant time) with the one presented.
    pub token: Box<[u8]>,
    /// For a JWT, the keyring its signature was checked with.
    pub keyring: Option<std::sync::Weak<Keyring>>,
    pub client: std::sync::Weak<CachedClient>,
    pub exp_ms: i64,
    pub nbf_ms: i64,
    pub info: Arc<crate::domain::oauth::Introspection>,
}

/// Opened tokens kept at most (about 1 KB each, a JWT's a little more); past it, the expired
/// ones are dropped, and all of them when none had expired.
pub const OPENED_TOKENS_MAX: usize = 10_000;

/// Per-node OAuth state: caches, revocations, the keyring, counters.
pub struct OAuthState {
    pub clients: RwLock<HashMap<String, Arc<CachedClient>>>,
    pub unknown_clients: RwLock<BTreeSet<String>>,
    pub epoch: AtomicU64,
    pub revoked: RwLock<HashMap<String, i64>>,
    pub keyring: RwLock<Arc<Keyring>>,
    pub sealer: Sealer,
    /// Access tokens opened or verified before, by [`OAuthState::opened_index`] of the token;
    /// a hit is one whose whole token equals the one presented (see [`OAuthState::opened`]).
    opened: RwLock<HashMap<u64, Arc<OpenedToken>, BuildHasherDefault<Prehashed>>>,
    /// The key of [`OAuthState::opened_index`], random on each node.
    opened_keys: std::hash::RandomState,
    pub key_seal: [u8; 32],
    /// Failed client authentications, per (client, address) and per address.
    pub failures: FailureThrottle,
    /// Use counts of secrets whose cached client was dropped before a flush.
    pub pending_uses: Mutex<Vec<(String, OffsetDateTime, i64)>>,
    pub issued: Mutex<IssuedCounts>,
    /// Key sets fetched from clients' `jwks_uri`s, by client id.
    pub remote_jwks: RwLock<HashMap<String, Arc<RemoteJwks>>>,
    /// Key sets of external issuers (workload identity federation), by issuer; `url` is the
    /// issuer. Only issuers some client trusts get an entry.
    pub issuer_keys: RwLock<HashMap<String, Arc<RemoteJwks>>>,
    /// Fetches `jwks_uri` documents; without one, such clients cannot authenticate.
    pub jwks_fetcher: RwLock<Option<Arc<dyn JwksFetcher>>>,
    /// Fetches client ID metadata documents; without one, such apps are unknown.
    pub metadata_fetcher: RwLock<Option<Arc<dyn crate::domain::apps::MetadataFetcher>>>,
}

impl OAuthState {
    pub fn new(pepper: &crate::domain::secret::Pepper, settings: &OAuthSettings) -> Self {
        Self {
            clients: RwLock::default(),
            unknown_clients: RwLock::default(),
            epoch: AtomicU64::new(0),
            revoked: RwLock::default(),
            keyring: RwLock::new(Arc::new(Keyring::default())),
            sealer: Sealer::new(
                pepper.derive("opaque-access-token-v1"),
                &settings.access_token_prefix,
            ),
            opened: RwLock::default(),
            opened_keys: std::hash::RandomState::new(),
            key_seal: pepper.derive("signing-key-v1"),
            failures: FailureThrottle::default(),
            pending_uses: Mutex::default(),
            issued: Mutex::default(),
            remote_jwks: RwLock::default(),
            issuer_keys: RwLock::default(),
            jwks_fetcher: RwLock::new(None),
            metadata_fetcher: RwLock::new(None),
        }
    }

    pub fn invalidate_client(&self, client_id: &str) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let removed = self
            .clients
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(client_id);
        self.unknown_clients
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(client_id);
        self.remote_jwks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(client_id);
        if let Some(c) = removed {
            self.keep_uses(&c);
        }
    }

    pub fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let removed: Vec<_> = self
            .clients
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, c)| c)
            .collect();
        self.unknown_clients
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.remote_jwks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        for c in removed {
            self.keep_uses(&c);
        }
    }

    /// Moves a dropped client's unflushed use counts aside so the next flush still writes them.
    pub fn keep_uses(&self, c: &CachedClient) {
        let used = take_uses(c);
        if !used.is_empty() {
            self.pending_uses
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(used);
        }
    }

    pub fn note_revoked(&self, jti: String, exp_ms: i64) {
        self.revoked
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(jti, exp_ms);
    }

    /// Where a token is kept: a keyed hash (SipHash under this node's random key) of its last
    /// 32 bytes (an opaque token's seal tag and checksum, a JWT's signature), so tokens that
    /// verified spread evenly. Another token may share its index (one made to, even): only the whole token,
    /// compared in constant time, makes a hit.
    pub fn opened_index(&self, token: &str) -> u64 {
        let b = token.as_bytes();
        self.opened_keys.hash_one(&b[b.len().saturating_sub(32)..])
    }

    /// The opened token that is exactly `token`, if one is kept.
    pub fn opened(&self, index: u64, token: &str) -> Option<Arc<OpenedToken>> {
        let opened = self.opened.read().unwrap_or_else(|e| e.into_inner());
        let hit = opened.get(&index)?;
        crate::domain::secret::ct_eq(&hit.token, token.as_bytes()).then(|| Arc::clone(hit))
    }

    /// Keeps an opened token (replacing any other at its index); at [`OPENED_TOKENS_MAX`],
    /// first drops the expired ones, or all.
    pub fn keep_opened(&self, index: u64, token: OpenedToken, now_ms: i64) {
        let mut opened = self.opened.write().unwrap_or_else(|e| e.into_inner());
        if opened.len() >= OPENED_TOKENS_MAX {
            opened.retain(|_, t| t.exp_ms > now_ms);
            if opened.len() >= OPENED_TOKENS_MAX {
                opened.clear();
            }
        }
        opened.insert(index, Arc::new(token));
    }

    pub fn is_revoked(&self, jti: &str) -> bool {
        self.revoked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(jti)
    }

    pub fn keyring(&self) -> Arc<Keyring> {
        Arc::clone(&self.keyring.read().unwrap_or_else(|e| e.into_inner()))
    }
}

pub fn take_uses(c: &CachedClient) -> Vec<(String, OffsetDateTime, i64)> {
    c.secrets
        .iter()
        .filter_map(|s| {
            let n = s.uses.swap(0, Ordering::Relaxed);
            (n > 0).then(|| {
                (
                    s.id.clone(),
                    from_ms(s.last_used_ms.load(Ordering::Relaxed)),
                    n as i64,
                )
            })
        })
        .collect()
}

pub fn ceil_to_second(t: OffsetDateTime) -> OffsetDateTime {
    let ms = to_ms(t);
    from_ms((ms + 999) / 1000 * 1000)
}
