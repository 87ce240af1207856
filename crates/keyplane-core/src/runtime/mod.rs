//! What every use case shares and no use case owns: the node's runtime state (the credential
//! cache, the change feed's health, the OAuth state, the refusal queue, the route rules) and the
//! checks made the same way everywhere (the reach check, credential resolution, events and
//! cache invalidation). Imports `domain` and `store` only; never a use case.

pub mod cache;
pub mod client_keys;
pub mod credentials;
pub mod delegation;
pub mod dpop;
pub mod feed;
pub mod grants;
pub mod issuer_keys;
pub mod leak_keys;
pub mod managed;
pub mod oauth;
pub mod ratelimit;
pub mod reach;
pub mod refusals;
pub mod replay;
pub mod services;
pub mod throttle;
pub mod usage;

use crate::domain::clock::Clock;
use crate::domain::error::Result;
use crate::domain::ids::new_id;
use crate::domain::model::{NewEvent, Outcome};
use crate::domain::perm::Principal;
use crate::domain::request::RequestMeta;
use crate::domain::routes::{RuleSet, RulesSource};
use crate::domain::secret::Pepper;
use crate::domain::settings::Settings;
use crate::store::{Invalidation, Store};
use cache::KeyCache;
use feed::{FeedHealth, FeedStatus};
use oauth::OAuthState;
use refusals::Refusals;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use time::OffsetDateTime;

/// The node's state and shared checks. Owned by [`crate::Keyplane`]; storage is reachable only
/// from inside this crate.
pub struct Runtime {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) pepper: Pepper,
    pub(crate) settings: Settings,
    pub(crate) cache: KeyCache,
    pub(crate) oauth: OAuthState,
    pub(crate) feed: FeedHealth,
    pub(crate) refusals: Refusals,
    /// Failed authentications on the management API, per client address.
    pub(crate) auth_failures: throttle::FailureThrottle,
    /// GitHub's secret-scanning keys, as last fetched.
    pub(crate) leak_keys: leak_keys::ReporterKeys,
    /// Reports through the public leak form, per client address.
    pub(crate) leak_form: throttle::FailureThrottle,
    pub(crate) checks: AtomicU64,
    pub(crate) rules: RwLock<Arc<RuleSet>>,
    pub(crate) rules_source: Mutex<Option<Arc<dyn RulesSource>>>,
    /// Applies the configuration file's declarations (registered by the binary).
    pub(crate) config_applier: Mutex<Option<Arc<dyn crate::domain::declared::ConfigApplier>>>,
    /// Services by resource URI and scope (RFC 8707).
    pub(crate) services: services::ServiceCache,
    /// The resource URI the gateway fronts (RFC 9728), when configured.
    pub(crate) gateway_resource: RwLock<Option<String>>,
    /// The states of API keys that exchanged tokens act for.
    pub(crate) subject_keys: delegation::SubjectKeys,
    pub(crate) grants: grants::LiveGrants,
    /// The shared replay table's batching writer.
    pub(crate) replay: replay::ReplayWriter,
    /// Held for a whole flush, so when a flush returns every earlier use is written even if
    /// the periodic flush was already under way.
    pub(crate) flushing: tokio::sync::Mutex<()>,
    /// Held while the activity chain is verified: concurrent verifications wait for the one
    /// under way and then start from the checkpoint it left, instead of each walking the chain.
    pub(crate) verifying: tokio::sync::Mutex<()>,
    /// Requests counted per minute, credential, service and outcome since the last flush.
    pub(crate) usage: usage::UsageCounters,
    /// Rate-limit counters.
    pub(crate) limiter: ratelimit::Limiter,
}

impl Runtime {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        pepper: Pepper,
        settings: Settings,
    ) -> Self {
        Self {
            feed: FeedHealth::new(settings.stale_serve_seconds),
            refusals: Refusals::new(settings.refusal_events_per_flush),
            oauth: OAuthState::new(&pepper, &settings.oauth),
            store,
            clock,
            pepper,
            settings,
            cache: KeyCache::default(),
            auth_failures: throttle::FailureThrottle::default(),
            leak_keys: Default::default(),
            leak_form: throttle::FailureThrottle::default(),
            checks: AtomicU64::new(0),
            rules: Default::default(),
            rules_source: Mutex::new(None),
            config_applier: Mutex::new(None),
            services: Default::default(),
            gateway_resource: RwLock::new(None),
            subject_keys: Default::default(),
            grants: Default::default(),
            replay: Default::default(),
            flushing: tokio::sync::Mutex::new(()),
            verifying: tokio::sync::Mutex::new(()),
            usage: Default::default(),
            limiter: Default::default(),
        }
    }

    pub fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The change feed's state now.
    pub fn feed_status(&self) -> FeedStatus {
        self.feed.status(|| self.now_ms())
    }

    /// The activity event of a successful change made by `p`.
    pub fn event(
        &self,
        p: &Principal,
        org_id: Option<&str>,
        action: &str,
        target: Option<&str>,
        meta: &RequestMeta,
        details: serde_json::Value,
    ) -> NewEvent {
        NewEvent {
            id: new_id("evt"),
            at: self.now(),
            org_id: org_id.map(str::to_string),
            actor: p.actor_label(),
            action: action.into(),
            target: target.map(str::to_string),
            outcome: Outcome::Success,
            client_addr: meta.addr_text(),
            user_agent: meta.agent_text(),
            details: meta.details(match meta.config {
                crate::domain::managed::ConfigWrite::Override => with_override(details),
                _ => details,
            }),
        }
    }

    /// An event of the deployment itself (start-up, rotations, warnings).
    pub fn system_event(&self, action: &str, details: serde_json::Value) -> NewEvent {
        NewEvent {
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
        }
    }

    /// Applies a change to this node's caches (made here, or learned from another node).
    pub fn apply_invalidation(&self, change: &Invalidation) {
        match change {
            Invalidation::Digests(d) => {
                self.cache.invalidate(d);
                if !d.is_empty() {
                    self.subject_keys.clear();
                }
            }
            Invalidation::All => {
                self.cache.clear();
                self.oauth.clear();
                self.services.clear();
                self.subject_keys.clear();
                self.grants.clear();
            }
            Invalidation::Client(id) => self.oauth.invalidate_client(id),
            Invalidation::Token(jti, exp) => self.oauth.note_revoked(jti.clone(), *exp),
            Invalidation::SigningKeys => {}
            Invalidation::Services => self.services.clear(),
            Invalidation::Grants => self.grants.clear(),
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
                self.services.clear();
                self.subject_keys.clear();
                self.grants.clear();
                self.feed.restored();
            }
        }
    }

    /// Applies a committed change here and tells the other nodes.
    pub async fn invalidate(&self, change: Invalidation) -> Result<()> {
        self.apply_invalidation(&change);
        if !matches!(&change, Invalidation::Digests(d) if d.is_empty()) {
            self.store.publish(&change).await?;
        }
        Ok(())
    }
}

/// An event of a request that sent `Keyplane-Override-Config: true` says so.
fn with_override(details: serde_json::Value) -> serde_json::Value {
    match details {
        serde_json::Value::Object(mut m) => {
            m.insert("config_override".into(), serde_json::Value::Bool(true));
            serde_json::Value::Object(m)
        }
        serde_json::Value::Null => serde_json::json!({ "config_override": true }),
        other => serde_json::json!({ "config_override": true, "details": other }),
    }
}
