//! keyplane's use cases. Every management operation takes the authenticated [`Principal`],
//! checks permission and organization through [`Principal::access`], changes storage, keeps the
//! credential cache true, and records what happened in the activity log.

use crate::activity::{ChainVerifier, VerifyReport};
use crate::cache::{Cached, CachedKey, KeyCache};
use crate::clock::{to_ms, Clock};
use crate::error::{Error, Result};
use crate::ids::{is_id, new_id, DEFAULT_ORG_ID};
use crate::model::*;
use crate::perm::{Actor, MemberRole, OrgAccess, PermSet, Permission, Principal};
use crate::secret::{Digest, FormatError, Pepper, SecretFormat, SecretString};
use crate::store::{EventFilter, Invalidation, KeyFilter, KeyLookup, Store};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use time::OffsetDateTime;

/// The built-in role that manages every key of its organization (seed 002).
pub const ORG_ADMIN: &str = "ORG-ADMIN";

/// Settings the use cases need; the binary builds them from its configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub api_key_format: SecretFormat,
    pub admin_key_format: SecretFormat,
    /// Active API keys allowed per organization; `None` means no limit.
    pub max_active_keys_per_org: Option<i64>,
    pub oauth: crate::oauth::OAuthSettings,
    /// How long cached credentials are still served after the change feed from storage is
    /// lost (see [`crate::feed`]).
    pub stale_serve_seconds: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            api_key_format: SecretFormat::new("kp_").expect("valid"),
            admin_key_format: SecretFormat::new("kpa_").expect("valid"),
            max_active_keys_per_org: Some(50),
            oauth: Default::default(),
            stale_serve_seconds: 60,
        }
    }
}

/// Where a request came from, for the activity log. Cheap to build on every request: the
/// address is a value and the `User-Agent` shares the request's buffer; both become text only
/// when an event is recorded.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    pub client_addr: Option<std::net::IpAddr>,
    pub user_agent: Option<http::HeaderValue>,
}

impl RequestMeta {
    /// The client's address as text, for events and throttling keys.
    pub fn addr_text(&self) -> Option<String> {
        self.client_addr.map(|a| a.to_string())
    }

    /// The `User-Agent` as text (at most 256 characters), for events.
    pub fn agent_text(&self) -> Option<String> {
        self.user_agent
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(|s| s.chars().take(256).collect())
    }
}

/// Why a presented credential was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    Missing,
    Malformed,
    Unknown,
    Revoked,
    Expired,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Malformed => "malformed",
            Refusal::Unknown => "unknown",
            Refusal::Revoked => "revoked",
            Refusal::Expired => "expired",
        }
    }
    pub fn describe(self) -> &'static str {
        match self {
            Refusal::Missing => "no bearer credential was presented",
            Refusal::Malformed => "the credential is malformed",
            Refusal::Unknown => "the credential is not recognised",
            Refusal::Revoked => "the credential has been revoked",
            Refusal::Expired => "the credential has expired",
        }
    }
}

/// Who a checked credential is: an API key or an access token.
#[derive(Debug, Clone)]
pub enum Identity {
    Key(Arc<CachedKey>),
    Token(Arc<crate::oauth::TokenIdentity>),
}

impl Identity {
    /// The member who owns it, or else the key id or the client id.
    pub fn subject(&self) -> &str {
        match self {
            Identity::Key(k) => k.owner_member_id.as_deref().unwrap_or(&k.key_id),
            Identity::Token(t) => &t.client_id,
        }
    }
    pub fn scopes(&self) -> &[String] {
        match self {
            Identity::Key(k) => k.scopes(),
            Identity::Token(t) => &t.scopes,
        }
    }
    pub fn scopes_joined(&self) -> &str {
        match self {
            Identity::Key(k) => k.scopes_joined(),
            Identity::Token(t) => &t.scopes_joined,
        }
    }
    pub fn org_id(&self) -> &str {
        match self {
            Identity::Key(k) => k.org_id(),
            Identity::Token(t) => &t.org_id,
        }
    }
    pub fn project_id(&self) -> &str {
        match self {
            Identity::Key(k) => k.project_id(),
            Identity::Token(t) => &t.project_id,
        }
    }
    /// The key id, or the access token's `jti`.
    pub fn credential_id(&self) -> &str {
        match self {
            Identity::Key(k) => &k.key_id,
            Identity::Token(t) => &t.jti,
        }
    }
}

/// The answer of a credential check for a platform API (`/v1/authz`).
#[derive(Debug, Clone)]
pub enum Verdict {
    Allow(Identity),
    Refuse(Refusal),
    InsufficientScope(Identity),
    /// The credential is good but no route rule allows the request.
    NoRule(Identity),
}

/// Where route rules come from, so they can be reloaded without a restart (the binary reads
/// them from its configuration file).
pub trait RulesSource: Send + Sync {
    /// The rules and whether a request no rule matches is allowed.
    fn load(&self) -> Result<(Vec<crate::routes::RuleInput>, bool), String>;
}

/// Input for creating an API key.
#[derive(Debug, Clone, Default)]
pub struct NewApiKey {
    pub org_id: Option<String>,
    pub project_id: Option<String>,
    pub owner_member_id: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub scopes: Vec<String>,
    pub roles: Vec<String>,
    pub expires_at: Option<OffsetDateTime>,
    pub default_for_service: Option<String>,
    /// With no `owner_member_id`, make a project service token even when a member creates it
    /// (a copy of a service token stays one). Only org-wide managers may.
    pub service_token: bool,
}

/// Changes to an API key; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ApiKeyPatch {
    pub name: Option<String>,
    pub description: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub roles: Option<Vec<String>>,
    /// `Some(None)` removes the expiry.
    pub expires_at: Option<Option<OffsetDateTime>>,
    /// `Some(None)` removes the default mark.
    pub default_for_service: Option<Option<String>>,
}

pub struct NewRole {
    pub org_id: Option<String>,
    pub name: String,
    pub description: Option<String>,
    pub permissions: Vec<String>,
    pub scopes: Vec<String>,
}

/// One page of a listing.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

const MAX_PAGE: i64 = 200;
const REFUSED_QUEUE_LIMIT: usize = 10_000;

/// Refused credentials, aggregated until the next flush so a flood writes a bounded log.
/// Refusals are aggregated by reason, credential id, client address and user agent.
type RefusalKey = (&'static str, Option<String>, Option<String>, Option<String>);

#[derive(Default)]
struct RefusedQueue {
    pending: HashMap<RefusalKey, (NewEvent, u64)>,
    dropped: u64,
}

pub struct Keyplane {
    pub(crate) oauth: crate::oauth::OAuthState,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    pepper: Pepper,
    settings: Settings,
    cache: KeyCache,
    refused: Mutex<RefusedQueue>,
    checks: AtomicU64,
    pub(crate) feed: crate::feed::FeedHealth,
    rules: std::sync::RwLock<Arc<crate::routes::RuleSet>>,
    /// Held for a whole flush, so when `flush` returns every earlier use is written even if
    /// the periodic flush was already under way.
    flushing: tokio::sync::Mutex<()>,
    rules_source: Mutex<Option<Arc<dyn RulesSource>>>,
}

pub(crate) fn clean_name(field: &'static str, value: &str) -> Result<String> {
    let v = value.trim();
    if v.is_empty() || v.chars().count() > 128 || v.chars().any(char::is_control) {
        return Err(Error::invalid(
            field,
            format!("`{field}` must be 1 to 128 printable characters"),
        ));
    }
    Ok(v.to_string())
}

pub(crate) fn clean_description(value: Option<&str>) -> Result<String> {
    let v = value.unwrap_or("").trim();
    if v.chars().count() > 1024 {
        return Err(Error::invalid(
            "description",
            "`description` must be at most 1024 characters",
        ));
    }
    Ok(v.to_string())
}

fn valid_scope_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":._-/*".contains(&b))
}

pub(crate) fn cursor_of(seq: i64) -> String {
    seq.to_string()
}

pub(crate) fn parse_cursor(cursor: Option<&str>) -> Result<Option<i64>> {
    match cursor {
        None | Some("") => Ok(None),
        Some(c) => c
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map(Some)
            .ok_or_else(|| Error::invalid("cursor", "`cursor` is not one this server gave out")),
    }
}

pub(crate) fn page_limit(limit: Option<i64>) -> Result<i64> {
    match limit {
        None => Ok(50),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(_) => Err(Error::invalid(
            "limit",
            format!("`limit` must be between 1 and {MAX_PAGE}"),
        )),
    }
}

impl Keyplane {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        pepper: Pepper,
        settings: Settings,
    ) -> Self {
        let feed = crate::feed::FeedHealth::new(settings.stale_serve_seconds);
        Self {
            oauth: crate::oauth::OAuthState::new(&pepper, &settings.oauth),
            store,
            clock,
            pepper,
            settings,
            cache: KeyCache::default(),
            refused: Mutex::new(RefusedQueue::default()),
            checks: AtomicU64::new(0),
            feed,
            rules: Default::default(),
            flushing: tokio::sync::Mutex::new(()),
            rules_source: Mutex::new(None),
        }
    }

    pub(crate) fn pepper(&self) -> &Pepper {
        &self.pepper
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
    pub fn settings(&self) -> &Settings {
        &self.settings
    }
    pub fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }
    /// The time in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }
    pub fn cache(&self) -> &KeyCache {
        &self.cache
    }
    /// Credential checks answered since start.
    pub fn checks(&self) -> u64 {
        self.checks.load(Ordering::Relaxed)
    }

    // ----- start-up and the admin key -----

    /// Creates the defaults and settles the admin key. Returns a newly generated admin key,
    /// which the caller prints once; `None` when one was supplied or already exists.
    pub async fn bootstrap(
        &self,
        supplied_admin_key: Option<&SecretString>,
    ) -> Result<Option<SecretString>> {
        let now = self.now();
        self.store.ensure_defaults(now).await?;
        match supplied_admin_key {
            Some(key) => {
                if key.expose().len() < 32 {
                    return Err(Error::invalid(
                        "admin_key",
                        "the admin key must be at least 32 characters long",
                    ));
                }
                if self.settings.api_key_format.claims(key.expose()) {
                    return Err(Error::invalid(
                        "admin_key",
                        "the admin key must not start with the API key prefix",
                    ));
                }
                let digest = self.pepper.digest(key.expose());
                let current = self.store.admin_key_get().await?;
                if current.map(|c| c.0) != Some(digest) {
                    self.store
                        .admin_key_set(digest, self.pepper.version(), now)
                        .await?;
                    self.record_system("admin_key.set", "operator-supplied admin key installed")
                        .await?;
                }
                Ok(None)
            }
            None => {
                if self.store.admin_key_get().await?.is_some() {
                    return Ok(None);
                }
                let key = self.settings.admin_key_format.generate();
                self.store
                    .admin_key_set(self.pepper.digest(key.expose()), self.pepper.version(), now)
                    .await?;
                self.record_system("admin_key.generate", "admin key generated on first start")
                    .await?;
                Ok(Some(key))
            }
        }
    }

    /// Replaces the admin key; the old one is refused from now on.
    pub async fn rotate_admin_key(&self) -> Result<SecretString> {
        let key = self.settings.admin_key_format.generate();
        self.store
            .admin_key_set(
                self.pepper.digest(key.expose()),
                self.pepper.version(),
                self.now(),
            )
            .await?;
        self.record_system("admin_key.rotate", "admin key rotated")
            .await?;
        Ok(key)
    }

    async fn record_system(&self, action: &str, note: &str) -> Result<()> {
        self.record_system_event(action, serde_json::json!({ "note": note }))
            .await
    }

    pub(crate) async fn record_system_event(
        &self,
        action: &str,
        details: serde_json::Value,
    ) -> Result<()> {
        self.store
            .activity_append(&[NewEvent {
                id: new_id("evt"),
                at: self.now(),
                org_id: None,
                actor: "system".into(),
                action: action.into(),
                target: None,
                outcome: Outcome::Success,
                client_addr: None,
                user_agent: None,
                details,
            }])
            .await
    }

    // ----- checking credentials -----

    /// Resolves an API key to its cached form, reading storage at most once per digest.
    pub(crate) async fn resolve_key_raw(
        &self,
        token: &str,
    ) -> Result<Option<Arc<CachedKey>>, Refusal> {
        if let Err(e) = self.settings.api_key_format.check(token) {
            let _: FormatError = e;
            return Err(Refusal::Malformed);
        }
        let digest = self.pepper.digest(token);
        // Past the bound on serving from cache without the change feed, every check reads storage.
        let trusted = self.feed_status().cache_trusted();
        if trusted {
            match self.cache.get(&digest) {
                Cached::Key(k) => return Ok(Some(k)),
                Cached::Unknown => return Ok(None),
                Cached::Miss => {}
            }
        }
        let epoch = self.cache.epoch();
        let mut found = self.store.api_key_lookup(&digest).await.map_err(|e| {
            tracing::error!(error = %e, "storage failed while checking a credential");
            Refusal::Unknown
        })?;
        if found.is_none() {
            if let Some(prev) = self.pepper.previous_digest(token) {
                found = self.store.api_key_lookup(&prev).await.ok().flatten();
            }
        }
        let entry = found.map(|l| Arc::new(cached_from_lookup(&self.cache, digest, l)));
        if trusted {
            self.cache.fill(digest, entry.clone(), epoch);
        }
        Ok(entry)
    }

    /// Reads every active API key into the cache, a page at a time; returns how many were
    /// filed. Pages that raced with an invalidation are dropped like any stale fill (those keys
    /// are then read on first use), and nothing is filled while the cache is not trusted.
    pub async fn preload_cache(&self) -> Result<usize> {
        const PAGE: i64 = 2000;
        let version = self.pepper.version();
        let mut after: Option<Digest> = None;
        let mut filed = 0;
        loop {
            if !self.feed_status().cache_trusted() {
                return Ok(filed);
            }
            let epoch = self.cache.epoch();
            let page = self
                .store
                .api_key_lookups_after(after.as_ref(), PAGE)
                .await?;
            let Some(last) = page.last() else {
                return Ok(filed);
            };
            after = Some(last.secret.digest);
            let full = page.len() as i64 == PAGE;
            for l in page {
                // Secrets under an earlier pepper are found by their other digest on first use.
                if l.secret.pepper_version != version {
                    continue;
                }
                let digest = l.secret.digest;
                let entry = Arc::new(cached_from_lookup(&self.cache, digest, l));
                if self.cache.fill(digest, Some(entry), epoch) {
                    filed += 1;
                }
            }
            if !full {
                return Ok(filed);
            }
        }
    }

    pub(crate) fn evaluate(&self, k: &CachedKey) -> Result<(), Refusal> {
        if !k.is_active {
            return Err(Refusal::Revoked);
        }
        if k.expires_at_ms.is_some_and(|e| e <= self.now_ms()) {
            return Err(Refusal::Expired);
        }
        Ok(())
    }

    /// Checks a bearer credential for a platform API, requiring every scope in `required`.
    pub async fn check<S: AsRef<str>>(
        &self,
        token: Option<&str>,
        required: &[S],
        meta: &RequestMeta,
    ) -> Verdict {
        self.checks.fetch_add(1, Ordering::Relaxed);
        let Some(token) = token else {
            return Verdict::Refuse(Refusal::Missing);
        };
        let identity = if self.settings.api_key_format.claims(token) {
            let key = match self.resolve_key_raw(token).await {
                Ok(Some(k)) => k,
                Ok(None) => return self.refuse(Refusal::Unknown, None, meta),
                Err(r) => return self.refuse(r, None, meta),
            };
            if let Err(r) = self.evaluate(&key) {
                return self.refuse(r, Some(&key), meta);
            }
            self.cache.mark_used(&key);
            Identity::Key(key)
        } else if self.is_access_token_shaped(token) {
            match self.token_identity(token).await {
                Some(t) => Identity::Token(Arc::new(t)),
                None => return self.refuse(Refusal::Unknown, None, meta),
            }
        } else {
            return self.refuse(Refusal::Malformed, None, meta);
        };
        let scopes = identity.scopes();
        if required.iter().all(|s| {
            scopes
                .binary_search_by(|x| x.as_str().cmp(s.as_ref()))
                .is_ok()
        }) {
            Verdict::Allow(identity)
        } else {
            Verdict::InsufficientScope(identity)
        }
    }

    /// Checks a credential for a request to the platform's APIs by the route rules: the rule
    /// matching `method` and `path` says which scopes it needs (also returned).
    pub async fn check_request(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        meta: &RequestMeta,
    ) -> (Verdict, Vec<String>) {
        let rules = self.rules();
        match rules.decide(method, path) {
            crate::routes::Decision::Require(scopes) => {
                (self.check(token, scopes, meta).await, scopes.to_vec())
            }
            crate::routes::Decision::Deny => match self.check::<&str>(token, &[], meta).await {
                Verdict::Allow(i) => (Verdict::NoRule(i), vec![]),
                other => (other, vec![]),
            },
        }
    }

    /// The route rules in force.
    pub fn rules(&self) -> Arc<crate::routes::RuleSet> {
        Arc::clone(&self.rules.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Sets where rules are read from, and loads them (at start: an error stops the start).
    pub async fn set_rules_source(
        &self,
        source: Arc<dyn RulesSource>,
    ) -> std::result::Result<usize, String> {
        *self.rules_source.lock().unwrap_or_else(|e| e.into_inner()) = Some(source);
        self.reload_rules().await
    }

    /// Reads the rules again and installs them if they are valid; otherwise keeps the old ones.
    pub async fn reload_rules(&self) -> std::result::Result<usize, String> {
        let source = self
            .rules_source
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(source) = source else {
            return Ok(self.rules().len());
        };
        let (inputs, allow_unmatched) = source.load()?;
        let set = crate::routes::RuleSet::new(inputs, allow_unmatched)?;
        let known = self.scopes_supported().await.map_err(|e| e.to_string())?;
        set.check_scopes(&known)?;
        let n = set.len();
        *self.rules.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
        Ok(n)
    }

    fn refuse(&self, reason: Refusal, key: Option<&CachedKey>, meta: &RequestMeta) -> Verdict {
        self.note_refusal(reason, key, meta);
        Verdict::Refuse(reason)
    }

    /// Queues an aggregated `credential.refused` event; never the secret, only its kind or id.
    fn note_refusal(&self, reason: Refusal, key: Option<&CachedKey>, meta: &RequestMeta) {
        self.queue_refusal_in(
            reason.as_str(),
            key.map(|k| k.key_id.to_string()),
            key.map(|k| k.org_id().to_string()),
            meta,
        );
    }

    pub(crate) fn queue_refusal(
        &self,
        reason: &'static str,
        target: Option<String>,
        meta: &RequestMeta,
    ) {
        self.queue_refusal_in(reason, target, None, meta);
    }

    fn queue_refusal_in(
        &self,
        reason: &'static str,
        target: Option<String>,
        org_id: Option<String>,
        meta: &RequestMeta,
    ) {
        let mut q = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        let agg = (reason, target.clone(), meta.addr_text(), meta.agent_text());
        if let Some((_, count)) = q.pending.get_mut(&agg) {
            *count += 1;
            return;
        }
        if q.pending.len() >= REFUSED_QUEUE_LIMIT {
            q.dropped += 1;
            return;
        }
        let event = NewEvent {
            id: new_id("evt"),
            at: self.now(),
            org_id,
            actor: "anonymous".into(),
            action: "credential.refused".into(),
            target,
            outcome: Outcome::Denied,
            client_addr: meta.addr_text(),
            user_agent: meta.agent_text(),
            details: serde_json::Value::Null,
        };
        q.pending.insert(agg, (event, 1));
    }

    /// Authenticates a caller of the management API: an API key, or the admin key.
    pub async fn authenticate(&self, token: Option<&str>, meta: &RequestMeta) -> Result<Principal> {
        let Some(token) = token else {
            return Err(Error::Unauthenticated(Refusal::Missing.describe().into()));
        };
        if self.settings.api_key_format.claims(token) {
            let key = match self.resolve_key_raw(token).await {
                Ok(Some(k)) => k,
                Ok(None) => {
                    self.note_refusal(Refusal::Unknown, None, meta);
                    return Err(Error::Unauthenticated(Refusal::Unknown.describe().into()));
                }
                Err(r) => {
                    self.note_refusal(r, None, meta);
                    return Err(Error::Unauthenticated(r.describe().into()));
                }
            };
            if let Err(r) = self.evaluate(&key) {
                self.note_refusal(r, Some(&key), meta);
                return Err(Error::Unauthenticated(r.describe().into()));
            }
            self.cache.mark_used(&key);
            return Ok(Principal {
                actor: Actor::ApiKey {
                    key_id: key.key_id.to_string(),
                    member_id: key.owner_member_id.as_deref().map(str::to_string),
                    member_role: key.member_role,
                },
                org_id: Some(key.org_id().to_string()),
                project_id: Some(key.project_id().to_string()),
                permissions: key.permissions,
                scopes: key.scopes().to_vec(),
            });
        }
        if self.is_access_token_shaped(token) {
            return match self.token_identity(token).await {
                Some(t) => Ok(Principal {
                    actor: Actor::Client {
                        client_id: t.client_id.clone(),
                    },
                    org_id: Some(t.org_id.clone()),
                    project_id: Some(t.project_id.clone()),
                    permissions: PermSet::EMPTY,
                    scopes: t.scopes.clone(),
                }),
                None => {
                    self.queue_refusal("invalid_access_token", None, meta);
                    Err(Error::Unauthenticated(
                        "the access token is invalid, expired or revoked".into(),
                    ))
                }
            };
        }
        // Anything else may be the admin key. It is checked against storage on every call so a
        // rotation by `keyplane admin-key rotate` in another process takes effect at once.
        if token.len() >= 32 && token.len() <= 512 {
            let digest = self.pepper.digest(token);
            if let Some((stored, _)) = self.store.admin_key_get().await? {
                if crate::secret::ct_eq(&stored.0, &digest.0) {
                    return Ok(Principal::admin());
                }
            }
        }
        self.note_refusal(Refusal::Unknown, None, meta);
        Err(Error::Unauthenticated(Refusal::Unknown.describe().into()))
    }

    /// Writes batched last-used times and aggregated refusals. Called periodically and at shutdown.
    pub async fn flush(&self) -> Result<()> {
        let _one_at_a_time = self.flushing.lock().await;
        self.flush_locked().await
    }

    async fn flush_locked(&self) -> Result<()> {
        let used = self.cache.take_used();
        if !used.is_empty() {
            let now = self.now();
            let batch: Vec<(String, OffsetDateTime)> =
                used.into_iter().map(|id| (id, now)).collect();
            self.store.api_keys_touch(&batch).await?;
        }
        let (events, dropped) = {
            let mut q = self.refused.lock().unwrap_or_else(|e| e.into_inner());
            let pending = std::mem::take(&mut q.pending);
            (pending, std::mem::take(&mut q.dropped))
        };
        let mut batch: Vec<NewEvent> = events
            .into_iter()
            .map(|((reason, ..), (mut e, count))| {
                e.details = serde_json::json!({ "reason": reason, "count": count });
                e
            })
            .collect::<Vec<_>>();
        if dropped > 0 {
            batch.push(NewEvent {
                id: new_id("evt"),
                at: self.now(),
                org_id: None,
                actor: "system".into(),
                action: "credential.refused".into(),
                target: None,
                outcome: Outcome::Denied,
                client_addr: None,
                user_agent: None,
                details: serde_json::json!({ "reason": "flood", "count": dropped }),
            });
        }
        batch.sort_by_key(|e| e.at);
        if !batch.is_empty() {
            self.store.activity_append(&batch).await?;
        }
        self.flush_oauth(false).await
    }

    /// Flushes everything, including the current minute's token-issuance counts (at shutdown).
    pub async fn flush_final(&self) -> Result<()> {
        let _one_at_a_time = self.flushing.lock().await;
        self.flush_locked().await?;
        self.flush_oauth(true).await
    }

    /// Applies a change learned from another node.
    pub fn apply_invalidation(&self, change: &Invalidation) {
        match change {
            Invalidation::Digests(d) => self.cache.invalidate(d),
            Invalidation::All => {
                self.cache.clear();
                self.oauth.clear();
            }
            Invalidation::Client(id) => self.oauth.invalidate_client(id),
            Invalidation::Token(jti, exp) => self.oauth.note_revoked(jti.clone(), *exp),
            Invalidation::SigningKeys => {}
            Invalidation::FeedLost => {
                tracing::warn!(
                    bound_seconds = self.settings.stale_serve_seconds,
                    "lost the change feed from storage; serving cached credentials for a bounded time"
                );
                self.feed.lost(self.now_ms());
            }
            Invalidation::FeedRestored => {
                // Anything may have changed while the feed was down.
                self.cache.clear();
                self.oauth.clear();
                self.feed.restored();
            }
        }
    }

    async fn invalidate(&self, change: Invalidation) -> Result<()> {
        self.apply_invalidation(&change);
        if !matches!(&change, Invalidation::Digests(d) if d.is_empty()) {
            self.store.publish(&change).await?;
        }
        Ok(())
    }

    // ----- the activity log -----

    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn record_event(
        &self,
        p: &Principal,
        org_id: Option<&str>,
        action: &str,
        target: Option<&str>,
        meta: &RequestMeta,
        details: serde_json::Value,
    ) -> Result<()> {
        self.store
            .activity_append(&[NewEvent {
                id: new_id("evt"),
                at: self.now(),
                org_id: org_id.map(str::to_string),
                actor: p.actor_label(),
                action: action.into(),
                target: target.map(str::to_string),
                outcome: Outcome::Success,
                client_addr: meta.addr_text(),
                user_agent: meta.agent_text(),
                details,
            }])
            .await
    }

    /// Records a management request that was refused for lack of permission.
    pub async fn record_denied(&self, p: &Principal, action: &str, meta: &RequestMeta, why: &str) {
        let result = self
            .store
            .activity_append(&[NewEvent {
                id: new_id("evt"),
                at: self.now(),
                org_id: p.org_id.clone(),
                actor: p.actor_label(),
                action: action.into(),
                target: None,
                outcome: Outcome::Denied,
                client_addr: meta.addr_text(),
                user_agent: meta.agent_text(),
                details: serde_json::json!({ "reason": why }),
            }])
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "could not record a denied request");
        }
    }

    pub async fn activity_query(
        &self,
        p: &Principal,
        org_id: Option<&str>,
        mut filter: EventFilter,
        cursor: Option<&str>,
        limit: Option<i64>,
    ) -> Result<Page<Event>> {
        // The admin key sees every organization's events unless it names one; others their own.
        filter.org_id = if p.is_admin_key() {
            org_id.map(str::to_string)
        } else {
            Some(p.access(org_id, Permission::ActivityRead)?.org_id)
        };
        let limit = page_limit(limit)?;
        let items = self
            .store
            .activity_query(&filter, parse_cursor(cursor)?, limit + 1)
            .await?;
        Ok(paginate(items, limit, |e| e.seq))
    }

    /// Walks the whole chain (it spans every organization): the admin key, or `activity:read`.
    pub async fn activity_verify(&self, p: &Principal) -> Result<VerifyReport> {
        if !p.is_admin_key() && !p.permissions.has(Permission::ActivityRead) {
            return Err(Error::Forbidden(
                "this credential lacks the `activity:read` permission".into(),
            ));
        }
        self.verify_chain().await
    }

    pub async fn verify_chain(&self) -> Result<VerifyReport> {
        let mut v = ChainVerifier::default();
        let mut after = 0;
        loop {
            let page = self.store.activity_page(after, 1000).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for e in &page {
                if !v.feed(e) {
                    return Ok(v.finish(None));
                }
            }
        }
        let head = self.store.activity_head().await?;
        Ok(v.finish(head))
    }

    // ----- organizations and projects -----

    fn admin_only(&self, p: &Principal, what: &str) -> Result<()> {
        if p.is_admin_key() {
            Ok(())
        } else {
            Err(Error::Forbidden(format!("only the admin key may {what}")))
        }
    }

    pub async fn org_create(&self, p: &Principal, name: &str, meta: &RequestMeta) -> Result<Org> {
        self.admin_only(p, "create organizations")?;
        let now = self.now();
        let org = Org {
            id: new_id("org"),
            name: clean_name("name", name)?,
            created_at: now,
        };
        let project = Project {
            id: new_id("prj"),
            org_id: org.id.clone(),
            name: "default".into(),
            created_at: now,
        };
        self.store.org_create(&org, &project).await?;
        self.record_event(
            p,
            Some(&org.id),
            "org.create",
            Some(&org.id),
            meta,
            serde_json::json!({ "name": org.name }),
        )
        .await?;
        Ok(org)
    }

    pub async fn org_list(&self, p: &Principal) -> Result<Vec<Org>> {
        if p.is_admin_key() {
            return self.store.org_list().await;
        }
        let own = p.org_for(None)?;
        Ok(self.store.org_get(&own).await?.into_iter().collect())
    }

    pub(crate) async fn existing_org(&self, org_id: &str) -> Result<Org> {
        if !is_id("org", org_id) {
            return Err(Error::NotFound("organization"));
        }
        self.store
            .org_get(org_id)
            .await?
            .ok_or(Error::NotFound("organization"))
    }

    pub async fn project_create(
        &self,
        p: &Principal,
        org_id: Option<&str>,
        name: &str,
        meta: &RequestMeta,
    ) -> Result<Project> {
        let access = p.access(org_id, Permission::ProjectsManage)?;
        self.existing_org(&access.org_id).await?;
        let project = Project {
            id: new_id("prj"),
            org_id: access.org_id.clone(),
            name: clean_name("name", name)?,
            created_at: self.now(),
        };
        self.store.project_create(&project).await?;
        self.record_event(
            p,
            Some(&project.org_id),
            "project.create",
            Some(&project.id),
            meta,
            serde_json::json!({ "name": project.name }),
        )
        .await?;
        Ok(project)
    }

    pub async fn project_list(&self, p: &Principal, org_id: Option<&str>) -> Result<Vec<Project>> {
        let org = p.org_for(org_id)?;
        self.existing_org(&org).await?;
        self.store.project_list(&org).await
    }

    /// The project a credential goes in: the one named (it must belong to the organization),
    /// or the organization's default project.
    pub(crate) async fn project_in(
        &self,
        org_id: &str,
        project_id: Option<&str>,
    ) -> Result<Project> {
        match project_id {
            Some(id) => {
                if !is_id("prj", id) {
                    return Err(Error::NotFound("project"));
                }
                match self.store.project_get(id).await? {
                    Some(pr) if pr.org_id == org_id => Ok(pr),
                    _ => Err(Error::NotFound("project")),
                }
            }
            None => self
                .store
                .project_list(org_id)
                .await?
                .into_iter()
                .find(|pr| pr.name == "default")
                .ok_or(Error::NotFound("project")),
        }
    }

    // ----- services -----

    pub async fn service_create(
        &self,
        p: &Principal,
        name: &str,
        description: Option<&str>,
        scopes: Vec<String>,
        meta: &RequestMeta,
    ) -> Result<Service> {
        self.admin_only(p, "register services")?;
        let name = clean_name("name", name)?;
        if !valid_scope_name(&name) || name.contains(':') {
            return Err(Error::invalid(
                "name",
                "a service name uses letters, digits, '.', '_', '-' only (e.g. `ai-guard`)",
            ));
        }
        if scopes.is_empty() {
            return Err(Error::invalid(
                "scopes",
                "a service needs at least one scope",
            ));
        }
        let mut set = BTreeSet::new();
        for s in scopes {
            if !valid_scope_name(&s) {
                return Err(Error::invalid(
                    "scopes",
                    format!("scope {s:?} is not valid: use letters, digits and ':._-/*', at most 128 characters"),
                ));
            }
            set.insert(s);
        }
        let taken: BTreeSet<String> = self
            .store
            .service_list()
            .await?
            .into_iter()
            .flat_map(|s| s.scopes)
            .collect();
        if let Some(dup) = set.iter().find(|s| taken.contains(*s)) {
            return Err(Error::Conflict(format!(
                "scope `{dup}` already belongs to another service"
            )));
        }
        let service = Service {
            id: new_id("svc"),
            name,
            description: clean_description(description)?,
            scopes: set.into_iter().collect(),
            created_at: self.now(),
        };
        self.store.service_create(&service).await?;
        self.record_event(
            p,
            None,
            "service.create",
            Some(&service.id),
            meta,
            serde_json::json!({ "name": service.name, "scopes": service.scopes }),
        )
        .await?;
        Ok(service)
    }

    pub async fn service_list(&self, _p: &Principal) -> Result<Vec<Service>> {
        self.store.service_list().await
    }

    /// Every registered scope (the metadata's `scopes_supported`).
    pub async fn scopes_supported(&self) -> Result<BTreeSet<String>> {
        Ok(self
            .store
            .service_list()
            .await?
            .into_iter()
            .flat_map(|s| s.scopes)
            .collect())
    }

    pub(crate) async fn check_scopes(&self, scopes: Vec<String>) -> Result<Vec<String>> {
        let known = self.scopes_supported().await?;
        let mut out = BTreeSet::new();
        for s in scopes {
            if !known.contains(&s) {
                return Err(Error::invalid(
                    "scopes",
                    format!(
                        "unknown scope `{s}`: register it with a service first (POST /v1/services)"
                    ),
                ));
            }
            out.insert(s);
        }
        Ok(out.into_iter().collect())
    }

    // ----- members and roles -----

    pub async fn member_create(
        &self,
        p: &Principal,
        org_id: Option<&str>,
        email: &str,
        name: Option<&str>,
        role: &str,
        meta: &RequestMeta,
    ) -> Result<Member> {
        let access = p.access(org_id, Permission::MembersManage)?;
        self.existing_org(&access.org_id).await?;
        let email = email.trim().to_lowercase();
        if email.len() > 254
            || !email.contains('@')
            || email.starts_with('@')
            || email.ends_with('@')
            || email.chars().any(char::is_whitespace)
        {
            return Err(Error::invalid("email", "`email` must be an email address"));
        }
        let role = MemberRole::parse(role)
            .ok_or_else(|| Error::invalid("role", "`role` must be `owner`, `admin` or `member`"))?;
        self.may_grant_member_role(p, role)?;
        let member = Member {
            id: new_id("mem"),
            org_id: access.org_id.clone(),
            name: clean_name("name", name.unwrap_or(&email))?,
            email,
            role,
            created_at: self.now(),
        };
        self.store.member_create(&member).await?;
        self.record_event(
            p,
            Some(&member.org_id),
            "member.create",
            Some(&member.id),
            meta,
            serde_json::json!({ "role": role.as_str() }),
        )
        .await?;
        Ok(member)
    }

    /// Only owners (and the admin key, and keys without a member) may make or unmake owners.
    fn may_grant_member_role(&self, p: &Principal, role: MemberRole) -> Result<()> {
        match &p.actor {
            Actor::ApiKey {
                member_role: Some(r),
                ..
            }
            | Actor::ConsoleMember { member_role: r, .. }
                if *r != MemberRole::Owner && role == MemberRole::Owner =>
            {
                Err(Error::Forbidden(
                    "only an owner may grant or change the owner role".into(),
                ))
            }
            _ => Ok(()),
        }
    }

    pub async fn member_list(&self, p: &Principal, org_id: Option<&str>) -> Result<Vec<Member>> {
        let org = p.org_for(org_id)?;
        self.existing_org(&org).await?;
        let members = self.store.member_list(&org).await?;
        if p.permissions.has(Permission::MembersManage) {
            return Ok(members);
        }
        // A member sees themself only.
        Ok(members
            .into_iter()
            .filter(|m| Some(m.id.as_str()) == p.member_id())
            .collect())
    }

    async fn member_in_reach(&self, p: &Principal, id: &str) -> Result<(Member, OrgAccess)> {
        if !is_id("mem", id) {
            return Err(Error::NotFound("member"));
        }
        let m = self
            .store
            .member_get(id)
            .await?
            .ok_or(Error::NotFound("member"))?;
        let access = p
            .access_in(m.org_id.clone(), Permission::MembersManage)
            .map_err(|e| match e {
                Error::Forbidden(_) if p.member_id() != Some(id) => Error::NotFound("member"),
                // Another organization's member: the same answer as an unknown id.
                Error::NotFound(_) => Error::NotFound("member"),
                other => other,
            })?;
        Ok((m, access))
    }

    pub async fn member_get(&self, p: &Principal, id: &str) -> Result<Member> {
        if !is_id("mem", id) {
            return Err(Error::NotFound("member"));
        }
        let m = self
            .store
            .member_get(id)
            .await?
            .ok_or(Error::NotFound("member"))?;
        let own = p.member_id() == Some(id) && p.org_id.as_deref() == Some(m.org_id.as_str());
        if own
            || p.access_in(m.org_id.clone(), Permission::MembersManage)
                .is_ok()
        {
            Ok(m)
        } else {
            Err(Error::NotFound("member"))
        }
    }

    pub async fn member_set_role(
        &self,
        p: &Principal,
        id: &str,
        role: &str,
        meta: &RequestMeta,
    ) -> Result<Member> {
        let (mut m, _) = self.member_in_reach(p, id).await?;
        let role = MemberRole::parse(role)
            .ok_or_else(|| Error::invalid("role", "`role` must be `owner`, `admin` or `member`"))?;
        self.may_grant_member_role(p, role)?;
        self.may_grant_member_role(p, m.role)?;
        self.store.member_set_role(id, role).await?;
        self.invalidate(Invalidation::All).await?;
        self.record_event(
            p,
            Some(&m.org_id),
            "member.role_change",
            Some(id),
            meta,
            serde_json::json!({ "from": m.role.as_str(), "to": role.as_str() }),
        )
        .await?;
        m.role = role;
        Ok(m)
    }

    pub async fn member_delete(&self, p: &Principal, id: &str, meta: &RequestMeta) -> Result<()> {
        let (m, _) = self.member_in_reach(p, id).await?;
        self.may_grant_member_role(p, m.role)?;
        let digests = self.store.member_delete(id, self.now()).await?;
        self.invalidate(Invalidation::Digests(digests)).await?;
        self.invalidate(Invalidation::All).await?;
        self.record_event(
            p,
            Some(&m.org_id),
            "member.delete",
            Some(id),
            meta,
            serde_json::json!({ "keys_revoked": "all owned" }),
        )
        .await
    }

    pub async fn role_create(
        &self,
        p: &Principal,
        input: NewRole,
        meta: &RequestMeta,
    ) -> Result<Role> {
        let access = p.access(input.org_id.as_deref(), Permission::RolesManage)?;
        self.existing_org(&access.org_id).await?;
        let name = clean_name("name", &input.name)?;
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Error::invalid(
                "name",
                "a role name uses letters, digits, '-' and '_' (e.g. `KEY-AUDITOR`)",
            ));
        }
        let mut perms = Vec::new();
        for s in &input.permissions {
            let perm = Permission::parse(s).ok_or_else(|| {
                Error::invalid(
                    "permissions",
                    format!(
                        "unknown permission `{s}`; known: {}",
                        Permission::ALL.map(|p| p.as_str()).join(", ")
                    ),
                )
            })?;
            perms.push(perm);
        }
        let set: PermSet = perms.iter().copied().collect();
        if !access.permissions.contains(set) {
            return Err(Error::Forbidden(
                "a role cannot grant permissions its creator does not hold".into(),
            ));
        }
        let role = Role {
            id: new_id("role"),
            org_id: Some(access.org_id.clone()),
            name,
            description: clean_description(input.description.as_deref())?,
            permissions: set.iter().collect(),
            scopes: self.check_scopes(input.scopes).await?,
            created_at: self.now(),
        };
        if self
            .store
            .role_list(&access.org_id)
            .await?
            .iter()
            .any(|r| r.name.eq_ignore_ascii_case(&role.name))
        {
            return Err(Error::Conflict(format!(
                "a role named `{}` already exists",
                role.name
            )));
        }
        self.store.role_create(&role).await?;
        self.record_event(p, Some(&access.org_id), "role.create", Some(&role.id), meta, serde_json::json!({ "name": role.name, "permissions": role.permissions.iter().map(|p| p.as_str()).collect::<Vec<_>>() }))
            .await?;
        Ok(role)
    }

    pub async fn role_list(&self, p: &Principal, org_id: Option<&str>) -> Result<Vec<Role>> {
        let org = p.org_for(org_id)?;
        self.existing_org(&org).await?;
        self.store.role_list(&org).await
    }

    /// Checks that every role exists in the organization and that the caller holds every
    /// permission they grant (no escalation through a key).
    async fn check_roles(&self, access: &OrgAccess, roles: Vec<String>) -> Result<Vec<String>> {
        if roles.is_empty() {
            return Ok(roles);
        }
        let defined = self.store.role_list(&access.org_id).await?;
        let mut out = BTreeSet::new();
        for name in roles {
            let role = defined
                .iter()
                .find(|r| r.name == name)
                .ok_or_else(|| Error::invalid("roles", format!("unknown role `{name}`")))?;
            if !access.permissions.contains(role.perm_set()) {
                return Err(Error::Forbidden(format!(
                    "role `{name}` grants permissions this credential does not hold"
                )));
            }
            out.insert(name);
        }
        Ok(out.into_iter().collect())
    }

    // ----- API keys -----

    async fn check_default_mark(
        &self,
        service: Option<String>,
        scopes: &[String],
        roles_scopes: &[String],
    ) -> Result<Option<String>> {
        let Some(service) = service else {
            return Ok(None);
        };
        let s = self
            .store
            .service_list()
            .await?
            .into_iter()
            .find(|s| s.name == service)
            .ok_or_else(|| {
                Error::invalid(
                    "default_for_service",
                    format!("unknown service `{service}`"),
                )
            })?;
        if !s
            .scopes
            .iter()
            .any(|x| scopes.contains(x) || roles_scopes.contains(x))
        {
            return Err(Error::invalid(
                "default_for_service",
                format!("the default token of `{service}` must carry at least one of its scopes"),
            ));
        }
        Ok(Some(service))
    }

    async fn role_scopes(&self, org_id: &str, roles: &[String]) -> Result<Vec<String>> {
        if roles.is_empty() {
            return Ok(vec![]);
        }
        Ok(self
            .store
            .role_list(org_id)
            .await?
            .into_iter()
            .filter(|r| roles.contains(&r.name))
            .flat_map(|r| r.scopes)
            .collect())
    }

    /// Who owns a new credential (`what`: "keys" or "clients"): a member's are always their
    /// own; an org-wide manager may name a member of the organization; otherwise the calling
    /// member, or nobody (a project's service credential) when `service` is asked for or the
    /// caller is no member.
    pub(crate) async fn credential_owner(
        &self,
        access: &OrgAccess,
        p: &Principal,
        asked: Option<String>,
        what: &str,
        service: bool,
    ) -> Result<Option<String>> {
        match (&access.only_member, asked) {
            (Some(me), Some(asked)) if *me != asked => Err(Error::Forbidden(format!(
                "a member can only create {what} they own"
            ))),
            (Some(me), _) => Ok(Some(me.clone())),
            (None, Some(asked)) => {
                let m = if is_id("mem", &asked) {
                    self.store.member_get(&asked).await?
                } else {
                    None
                };
                match m {
                    Some(m) if m.org_id == access.org_id => Ok(Some(m.id)),
                    _ => Err(Error::invalid(
                        "owner_member_id",
                        "no such member in this organization",
                    )),
                }
            }
            (None, None) if service => Ok(None),
            (None, None) => Ok(p.member_id().map(str::to_string)),
        }
    }

    pub async fn api_key_create(
        &self,
        p: &Principal,
        input: NewApiKey,
        meta: &RequestMeta,
    ) -> Result<(ApiKey, SecretString)> {
        let access = p.access(input.org_id.as_deref(), Permission::KeysManage)?;
        self.existing_org(&access.org_id).await?;
        let project = self
            .project_in(&access.org_id, input.project_id.as_deref())
            .await?;
        let owner = self
            .credential_owner(
                &access,
                p,
                input.owner_member_id,
                "keys",
                input.service_token,
            )
            .await?;
        let now = self.now();
        if let Some(exp) = input.expires_at {
            if exp <= now {
                return Err(Error::invalid(
                    "expires_at",
                    "`expires_at` must be in the future",
                ));
            }
        }
        let scopes = self.check_scopes(input.scopes).await?;
        let roles = self.check_roles(&access, input.roles).await?;
        let roles_scopes = self.role_scopes(&access.org_id, &roles).await?;
        let default_for_service = self
            .check_default_mark(input.default_for_service, &scopes, &roles_scopes)
            .await?;
        let secret = self.settings.api_key_format.generate();
        let prefix_len = self.settings.api_key_format.prefix().len();
        let name = match input.name {
            Some(n) => clean_name("name", &n)?,
            None => "api-key".to_string(),
        };
        let key = ApiKey {
            id: new_id("key"),
            org_id: access.org_id.clone(),
            project_id: project.id,
            owner_member_id: owner,
            name,
            description: clean_description(input.description.as_deref())?,
            scopes,
            roles,
            start: secret.expose()[..prefix_len + 4].to_string(),
            created_at: now,
            created_by: p.actor_label(),
            expires_at: input.expires_at,
            last_used_at: None,
            is_active: true,
            deactivated_at: None,
            default_for_service,
            seq: 0,
        };
        let ks = KeySecret {
            digest: self.pepper.digest(secret.expose()),
            key_id: key.id.clone(),
            pepper_version: self.pepper.version(),
            created_at: now,
            expires_at: None,
        };
        self.store
            .api_key_create(&key, &ks, self.settings.max_active_keys_per_org, now)
            .await?;
        // A digest that was once looked up and found unknown must not stay negative.
        self.cache.invalidate(&[ks.digest]);
        self.record_event(
            p,
            Some(&key.org_id),
            "api_key.create",
            Some(&key.id),
            meta,
            key_details(&key),
        )
        .await?;
        let key = self
            .store
            .api_key_get(&key.id)
            .await?
            .ok_or(Error::NotFound("API key"))?;
        Ok((key, secret))
    }

    /// Fetches a key the caller may reach; anything else is 404.
    async fn key_in_reach(&self, p: &Principal, id: &str) -> Result<(ApiKey, OrgAccess)> {
        if !is_id("key", id) {
            return Err(Error::NotFound("API key"));
        }
        let key = self
            .store
            .api_key_get(id)
            .await?
            .ok_or(Error::NotFound("API key"))?;
        let access = p
            .access_in(key.org_id.clone(), Permission::KeysManage)
            .map_err(|e| match e {
                // Out of reach, or another organization's: the same answer as an unknown id.
                Error::Forbidden(_) | Error::NotFound(_) => Error::NotFound("API key"),
                other => other,
            })?;
        if !access.reaches(&key.org_id, key.owner_member_id.as_deref()) {
            return Err(Error::NotFound("API key"));
        }
        Ok((key, access))
    }

    pub async fn api_key_get(&self, p: &Principal, id: &str) -> Result<ApiKey> {
        Ok(self.key_in_reach(p, id).await?.0)
    }

    pub async fn api_key_list(
        &self,
        p: &Principal,
        org_id: Option<&str>,
        project_id: Option<&str>,
        include_inactive: bool,
        cursor: Option<&str>,
        limit: Option<i64>,
    ) -> Result<Page<ApiKey>> {
        let access = p.access(org_id, Permission::KeysManage)?;
        self.existing_org(&access.org_id).await?;
        if let Some(pid) = project_id {
            self.project_in(&access.org_id, Some(pid)).await?;
        }
        let limit = page_limit(limit)?;
        let filter = KeyFilter {
            org_id: access.org_id.clone(),
            owner_member_id: access.only_member.clone(),
            project_id: project_id.map(str::to_string),
            include_inactive,
        };
        let items = self
            .store
            .api_key_list(&filter, parse_cursor(cursor)?, limit + 1)
            .await?;
        Ok(paginate(items, limit, |k| k.seq))
    }

    pub async fn api_key_update(
        &self,
        p: &Principal,
        id: &str,
        patch: ApiKeyPatch,
        meta: &RequestMeta,
    ) -> Result<ApiKey> {
        let (mut key, access) = self.key_in_reach(p, id).await?;
        if !key.is_active {
            return Err(Error::Conflict("a revoked key cannot be edited".into()));
        }
        if let Some(n) = patch.name {
            key.name = clean_name("name", &n)?;
        }
        if let Some(d) = patch.description {
            key.description = clean_description(Some(&d))?;
        }
        if let Some(s) = patch.scopes {
            key.scopes = self.check_scopes(s).await?;
        }
        if let Some(r) = patch.roles {
            key.roles = self.check_roles(&access, r).await?;
        }
        if let Some(e) = patch.expires_at {
            if e.is_some_and(|e| e <= self.now()) {
                return Err(Error::invalid(
                    "expires_at",
                    "`expires_at` must be in the future",
                ));
            }
            key.expires_at = e;
        }
        let roles_scopes = self.role_scopes(&key.org_id, &key.roles).await?;
        let mark = patch
            .default_for_service
            .unwrap_or(key.default_for_service.take());
        key.default_for_service = self
            .check_default_mark(mark, &key.scopes, &roles_scopes)
            .await?;
        let digests = self.store.api_key_update(&key).await?;
        self.invalidate(Invalidation::Digests(digests)).await?;
        self.record_event(
            p,
            Some(&key.org_id),
            "api_key.update",
            Some(&key.id),
            meta,
            key_details(&key),
        )
        .await?;
        self.store
            .api_key_get(id)
            .await?
            .ok_or(Error::NotFound("API key"))
    }

    /// A new key with the same configuration as `id` (and a new secret).
    pub async fn api_key_copy(
        &self,
        p: &Principal,
        id: &str,
        name: Option<String>,
        meta: &RequestMeta,
    ) -> Result<(ApiKey, SecretString)> {
        let (key, _) = self.key_in_reach(p, id).await?;
        let input = NewApiKey {
            org_id: Some(key.org_id.clone()),
            project_id: Some(key.project_id.clone()),
            owner_member_id: key.owner_member_id.clone(),
            name: Some(name.unwrap_or_else(|| copy_name(&key.name))),
            description: Some(key.description.clone()),
            scopes: key.scopes.clone(),
            roles: key.roles.clone(),
            expires_at: key.expires_at.filter(|e| *e > self.now()),
            default_for_service: None,
            service_token: key.owner_member_id.is_none(),
        };
        self.api_key_create(p, input, meta).await
    }

    /// Revokes a key; revoking a revoked key is a no-op that answers the key.
    pub async fn api_key_revoke(
        &self,
        p: &Principal,
        id: &str,
        meta: &RequestMeta,
    ) -> Result<ApiKey> {
        let (key, _) = self.key_in_reach(p, id).await?;
        if key.is_active {
            let digests = self.store.api_key_deactivate(id, self.now()).await?;
            self.invalidate(Invalidation::Digests(digests)).await?;
            self.record_event(
                p,
                Some(&key.org_id),
                "api_key.revoke",
                Some(id),
                meta,
                serde_json::json!({ "name": key.name }),
            )
            .await?;
        }
        self.store
            .api_key_get(id)
            .await?
            .ok_or(Error::NotFound("API key"))
    }

    /// Gives a key a new secret. The old one is refused at once, or after `grace` if given.
    pub async fn api_key_regenerate(
        &self,
        p: &Principal,
        id: &str,
        grace: Option<time::Duration>,
        meta: &RequestMeta,
    ) -> Result<(ApiKey, SecretString)> {
        let (key, _) = self.key_in_reach(p, id).await?;
        if !key.is_active {
            return Err(Error::Conflict(
                "a revoked key cannot be regenerated; copy it to make a new key with the same configuration".into(),
            ));
        }
        if let Some(g) = grace {
            if g.is_negative() || g > time::Duration::days(30) {
                return Err(Error::invalid(
                    "grace_period_seconds",
                    "the grace period must be between 0 and 30 days",
                ));
            }
        }
        let now = self.now();
        let secret = self.settings.api_key_format.generate();
        let ks = KeySecret {
            digest: self.pepper.digest(secret.expose()),
            key_id: key.id.clone(),
            pepper_version: self.pepper.version(),
            created_at: now,
            expires_at: None,
        };
        let old_expire = grace.filter(|g| g.is_positive()).map(|g| now + g);
        let digests = self
            .store
            .api_key_replace_secret(id, &ks, old_expire)
            .await?;
        let prefix_len = self.settings.api_key_format.prefix().len();
        let mut updated = key.clone();
        updated.start = secret.expose()[..prefix_len + 4].to_string();
        self.store.api_key_update(&updated).await?;
        self.invalidate(Invalidation::Digests(digests)).await?;
        self.cache.invalidate(&[ks.digest]);
        self.record_event(
            p,
            Some(&key.org_id),
            "api_key.regenerate",
            Some(id),
            meta,
            serde_json::json!({ "grace_period_seconds": grace.map(|g| g.whole_seconds()) }),
        )
        .await?;
        let key = self
            .store
            .api_key_get(id)
            .await?
            .ok_or(Error::NotFound("API key"))?;
        Ok((key, secret))
    }

    /// The default organization's id, for routes that predate organizations (seed 002).
    pub fn default_org(&self) -> &'static str {
        DEFAULT_ORG_ID
    }
}

fn copy_name(name: &str) -> String {
    let base: String = name.chars().take(120).collect();
    format!("{base} (copy)")
}

fn key_details(k: &ApiKey) -> serde_json::Value {
    serde_json::json!({
        "name": k.name,
        "scopes": k.scopes,
        "roles": k.roles,
        "project_id": k.project_id,
        "owner_member_id": k.owner_member_id,
        "expires_at": k.expires_at.map(to_ms),
        "default_for_service": k.default_for_service,
    })
}

pub(crate) fn paginate<T>(mut items: Vec<T>, limit: i64, seq: impl Fn(&T) -> i64) -> Page<T> {
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(|i| cursor_of(seq(i)))
    } else {
        None
    };
    Page { items, next_cursor }
}

/// Precomputes what the hot path needs from one storage read.
fn cached_from_lookup(cache: &KeyCache, digest: Digest, l: KeyLookup) -> CachedKey {
    let KeyLookup {
        key,
        secret,
        owner_role,
        roles,
    } = l;
    let mut scopes: BTreeSet<String> = key.scopes.iter().cloned().collect();
    let mut role_perms = PermSet::EMPTY;
    for r in &roles {
        scopes.extend(r.scopes.iter().cloned());
        role_perms = role_perms.union(r.perm_set());
    }
    // A member's key acts with the member's current authority; a service token with its roles'.
    let (permissions, active) = match (&key.owner_member_id, owner_role) {
        (Some(_), Some(role)) => (role.permissions(), key.is_active),
        (Some(_), None) => (PermSet::EMPTY, false),
        (None, _) => (role_perms, key.is_active),
    };
    let expires_at_ms = match (key.expires_at.map(to_ms), secret.expires_at.map(to_ms)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    CachedKey {
        digest,
        group: cache.group(&key.org_id, &key.project_id, scopes.into_iter().collect()),
        key_id: key.id.into(),
        name: key.name.into(),
        owner_member_id: key.owner_member_id.map(Into::into),
        member_role: owner_role,
        permissions,
        is_active: active,
        expires_at_ms,
        created_at_ms: to_ms(key.created_at),
        used: Default::default(),
    }
}

/// Digest of a secret under the current pepper, for tests and tools.
pub fn digest_of(pepper: &Pepper, secret: &SecretString) -> Digest {
    pepper.digest(secret.expose())
}

/// The roles every organization has. `ORG-ADMIN` fully manages its organization (seed 002).
pub fn builtin_roles(now: OffsetDateTime) -> Vec<Role> {
    let role = |id: &str, name: &str, description: &str, permissions: Vec<Permission>| Role {
        id: id.into(),
        org_id: None,
        name: name.into(),
        description: description.into(),
        permissions,
        scopes: vec![],
        created_at: now,
    };
    vec![
        role(
            "role_org_admin",
            ORG_ADMIN,
            "Full management of its organization: keys, clients, members, projects, roles, activity",
            Permission::ALL.to_vec(),
        ),
        role(
            "role_org_auditor",
            "ORG-AUDITOR",
            "Reads its organization's activity log",
            vec![Permission::ActivityRead],
        ),
        role(
            "role_token_introspector",
            "TOKEN-INTROSPECTOR",
            "May call the introspection endpoint",
            vec![Permission::TokensIntrospect],
        ),
    ]
}
