//! The [`Keyplane`] struct: its constructor and accessors. Its use cases live in
//! [`crate::usecase`], one file per aggregate, each an `impl Keyplane` block; what they share
//! lives below them, in [`crate::runtime`] and [`crate::domain`].

use crate::domain::clock::Clock;
use crate::domain::routes::RuleSet;
use crate::domain::secret::Pepper;
use crate::domain::settings::Settings;
use crate::runtime::cache::KeyCache;
use crate::runtime::feed::FeedStatus;
use crate::runtime::Runtime;
use crate::store::{Invalidation, Store};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use time::OffsetDateTime;

pub struct Keyplane {
    pub(crate) rt: Runtime,
}

impl Keyplane {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        pepper: Pepper,
        settings: Settings,
    ) -> Self {
        Self {
            rt: Runtime::new(store, clock, pepper, settings),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.rt.settings
    }
    pub fn now(&self) -> OffsetDateTime {
        self.rt.now()
    }
    /// The time in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        self.rt.now_ms()
    }
    pub fn cache(&self) -> &KeyCache {
        &self.rt.cache
    }
    /// Credential checks answered since start.
    pub fn checks(&self) -> u64 {
        self.rt.checks.load(Ordering::Relaxed)
    }
    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        self.rt.store.backend()
    }
    /// The change feed's state now.
    pub fn feed_status(&self) -> FeedStatus {
        self.rt.feed_status()
    }
    /// The route rules in force.
    pub fn rules(&self) -> Arc<RuleSet> {
        Arc::clone(&self.rt.rules.read().unwrap_or_else(|e| e.into_inner()))
    }
    /// Applies a change learned from another node.
    pub fn apply_invalidation(&self, change: &Invalidation) {
        if !matches!(change, Invalidation::FeedLost | Invalidation::FeedRestored) {
            self.rt.feed.changed(self.rt.now_ms());
        }
        self.rt.apply_invalidation(change)
    }
    /// When the last change from another node arrived through the change feed (ms since the
    /// epoch), if one has since start.
    pub fn feed_last_change_ms(&self) -> Option<i64> {
        self.rt.feed.last_change_ms()
    }
    /// Calls `on_change` for every change another node publishes.
    pub fn subscribe_changes(&self, on_change: Arc<dyn Fn(Invalidation) + Send + Sync>) {
        self.rt.store.subscribe(on_change)
    }
    /// The default organization's id, for routes that predate organizations (seed 002).
    pub fn default_org(&self) -> &'static str {
        crate::domain::ids::DEFAULT_ORG_ID
    }
}
