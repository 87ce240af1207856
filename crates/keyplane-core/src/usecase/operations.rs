//! [`Keyplane`] use cases of running a node: flushing batched writes (last-used times, use
//! counts, aggregated refusals and issuance events), closing storage at a clean stop, rotation
//! warnings, and readiness.

use crate::app::Keyplane;
use crate::domain::clock::rfc3339;
use crate::domain::clock::{from_ms, to_ms};
use crate::domain::error::Result;
use crate::domain::ids::new_id;
use crate::domain::model::{NewEvent, Outcome};
use crate::runtime::feed::FeedStatus;
use crate::runtime::oauth::{take_uses, CachedClient};
use std::sync::Arc;
use time::OffsetDateTime;

/// What `/readyz` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Storage answers and the feed is live.
    Ready,
    /// Serving from the caches while the feed is down, for a bounded time; the reason says so.
    Degraded(String),
    /// Not able to answer correctly: storage does not answer, or the caches are no longer trusted.
    Unavailable(String),
}

impl Keyplane {
    /// Copies an embedded database's write-ahead log into its file, in the background (every
    /// [`crate::store::CHECKPOINT_EVERY_MS`] on a server), so that requests never wait for it.
    pub async fn checkpoint_storage(&self) -> Result<()> {
        self.rt.store.checkpoint().await
    }

    /// Writes batched last-used times and aggregated refusals. Called periodically and at shutdown.
    pub async fn flush(&self) -> Result<()> {
        let _one_at_a_time = self.rt.flushing.lock().await;
        self.flush_locked().await
    }

    async fn flush_locked(&self) -> Result<()> {
        let used = self.rt.cache.take_used();
        if !used.is_empty() {
            let batch: Vec<(String, OffsetDateTime)> =
                used.into_iter().map(|(id, at)| (id, from_ms(at))).collect();
            self.rt.store.api_keys_touch(&batch).await?;
        }
        let batch = self.rt.refusals.take(self.rt.now());
        if !batch.is_empty() {
            self.rt.store.activity_append(&batch).await?;
        }
        self.flush_usage().await?;
        self.flush_oauth(false).await
    }

    /// Adds the requests counted since the last flush to the usage rows, and this node's
    /// rate-limit units of windows of a minute or longer to their stored windows. What could
    /// not be written is kept for the next flush.
    async fn flush_usage(&self) -> Result<()> {
        let counts = self.rt.usage.take();
        if !counts.is_empty() {
            if let Err(e) = self.rt.store.usage_add(&counts).await {
                self.rt.usage.restore(&counts);
                return Err(e);
            }
        }
        let now_ms = self.rt.now_ms();
        let mut windows = Vec::new();
        for c in self.rt.limiter.counters() {
            if c.window_ms < 60_000 {
                continue;
            }
            if let Some((w, n)) = c.take_unstored(c.window_of(now_ms)) {
                windows.push((c.key.to_string(), w * c.window_ms, (w + 1) * c.window_ms, n));
            }
        }
        self.rt.store.rate_windows_add(&windows).await
    }

    /// Forgets usage rows past their retention and rate-limit windows that have ended.
    pub async fn purge_usage(&self) -> Result<u64> {
        let now = self.rt.now().unix_timestamp();
        let s = &self.rt.settings;
        let minute = (now - s.usage_minute_retention_hours * 3600).div_euclid(60);
        let hour = (now - s.usage_hour_retention_days * 86_400).div_euclid(3600);
        let rows = self.rt.store.usage_purge(minute, hour).await?;
        Ok(rows + self.rt.store.rate_windows_purge(self.rt.now_ms()).await?)
    }

    /// At start: how many nodes share each rate limit when no shared store reconciles them,
    /// and the counts stored for windows still open (so a restart hands out no fresh window).
    pub async fn start_rate_limits(&self, nodes: u64) -> Result<()> {
        self.rt.limiter.set_nodes(nodes);
        let live = self.rt.store.rate_windows_live(self.rt.now_ms()).await?;
        self.rt.limiter.restore(live);
        Ok(())
    }

    /// For the Redis reconciler: every counter with units not yet sent —
    /// `(counter key, window number, window ms, units)` (taken).
    pub fn rate_limit_deltas(&self) -> Vec<(Arc<str>, i64, i64, u64)> {
        let now_ms = self.rt.now_ms();
        self.rt
            .limiter
            .counters()
            .into_iter()
            .filter_map(|c| {
                let (w, n) = c.take_unsent(c.window_of(now_ms))?;
                Some((Arc::clone(&c.key), w, c.window_ms, n))
            })
            .collect()
    }

    /// The counters whose current window the reconciler should read — those this node counted
    /// in during it, so the work per round follows the traffic, not the number of limits:
    /// `(key, window, window ms, this node's units in it)`.
    pub fn rate_limit_windows(&self) -> Vec<(Arc<str>, i64, i64, u64)> {
        let now_ms = self.rt.now_ms();
        self.rt
            .limiter
            .counters()
            .into_iter()
            .filter_map(|c| {
                let w = c.window_of(now_ms);
                let mine = c.local(w);
                (mine > 0).then(|| (Arc::clone(&c.key), w, c.window_ms, mine))
            })
            .collect()
    }

    /// For the Redis reconciler: the deployment's total for a counter's window, of which
    /// `mine` are this node's own units sent so far; the rest is what other nodes counted.
    pub fn rate_limit_adopt(&self, key: &str, window: i64, window_ms: i64, total: u64, mine: u64) {
        let c = self.rt.limiter.counter(key, window_ms);
        c.set_others(window, total.saturating_sub(mine));
    }

    /// Flushes everything, including the current minute's token-issuance counts (at shutdown).
    pub async fn flush_final(&self) -> Result<()> {
        let _one_at_a_time = self.rt.flushing.lock().await;
        self.flush_locked().await?;
        self.flush_oauth(true).await
    }

    /// At a clean stop, after [`Keyplane::flush_final`] (and at the end of a CLI command on the
    /// database): lets storage finish its files (SQLite copies its write-ahead log into the
    /// database file, so that file alone holds everything). Storage is not used afterwards.
    pub async fn close_storage(&self) -> Result<()> {
        let _one_at_a_time = self.rt.flushing.lock().await;
        self.rt.store.close().await
    }

    /// Writes batched client-secret use counts and aggregated token-issuance events; with
    /// `everything`, also the current minute's (at shutdown).
    async fn flush_oauth(&self, everything: bool) -> Result<()> {
        let now = self.rt.now();
        let clients: Vec<Arc<CachedClient>> = self
            .rt
            .oauth
            .clients
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let mut used = std::mem::take(
            &mut *self
                .rt
                .oauth
                .pending_uses
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for c in &clients {
            used.extend(take_uses(c));
        }
        if !used.is_empty() {
            self.rt.store.client_secrets_used(&used).await?;
        }
        let minute = to_ms(now) / 60_000;
        let due: Vec<_> = {
            let mut issued = self
                .rt
                .oauth
                .issued
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let keys: Vec<_> = issued
                .keys()
                .filter(|(_, m)| {
                    everything || !self.rt.settings.oauth.aggregate_token_events || *m < minute
                })
                .cloned()
                .collect();
            keys.into_iter()
                .filter_map(|k| issued.remove(&k).map(|v| (k, v)))
                .collect()
        };
        let events: Vec<NewEvent> = due
            .into_iter()
            .map(|((client_id, m), (count, scopes, org))| NewEvent {
                id: new_id("evt"),
                at: from_ms(m * 60_000),
                org_id: Some(org),
                actor: format!("client:{client_id}"),
                action: "access_token.issue".into(),
                target: Some(client_id),
                outcome: Outcome::Success,
                client_addr: None,
                user_agent: None,
                details: serde_json::json!({ "count": count, "scopes": scopes, "minute": rfc3339_minute(m) }),
            })
            .collect();
        if !events.is_empty() {
            self.rt.store.activity_append(&events).await?;
        }
        Ok(())
    }

    /// Forgets revocations of tokens that have expired anyway; returns how many.
    pub async fn purge_revocations(&self) -> Result<u64> {
        self.rt.store.revoked_tokens_purge(self.rt.now()).await
    }

    /// Warns in the activity log about client secrets within seven days of their maximum age.
    pub async fn warn_expiring_secrets(&self) -> Result<u64> {
        let now = self.rt.now();
        let horizon = now + time::Duration::days(7);
        let mut warned = 0;
        for (c, s) in self.rt.store.client_secrets_unwarned().await? {
            let Some(days) = c.secret_rotation_days else {
                continue;
            };
            let due = s.created_at + time::Duration::days(days);
            if due <= horizon {
                let event = self.rt.system_event(
                    "client_secret.expiring",
                    serde_json::json!({ "client_id": c.client_id, "secret_id": s.id, "refused_from": rfc3339(due) }),
                );
                self.rt
                    .store
                    .client_secret_mark_warned(&s.id, now, &event)
                    .await?;
                warned += 1;
            }
        }
        Ok(warned)
    }

    /// Client secrets refused within seven days under their rotation policy (for `/metrics`).
    pub fn secrets_expiring_soon(&self) -> u64 {
        let horizon = self.rt.now_ms() + 7 * 86_400_000;
        let now = self.rt.now_ms();
        self.rt
            .oauth
            .clients
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .flat_map(|c| c.secrets.iter())
            .filter(|s| s.refused_from_ms.is_some_and(|r| r > now && r <= horizon))
            .count() as u64
    }

    /// Whether this node can answer correctly. While the feed is down it does not ask storage
    /// (whose pool may take seconds to give up): the feed's state is the answer.
    pub async fn readiness(&self) -> Readiness {
        match self.rt.feed_status() {
            FeedStatus::Stale {
                lost_for_ms,
                trusted_for_ms,
            } => Readiness::Degraded(format!(
                "the database connection was lost {:.1} s ago; serving cached credentials for {:.1} s more",
                lost_for_ms as f64 / 1e3,
                trusted_for_ms as f64 / 1e3
            )),
            FeedStatus::Untrusted { lost_for_ms } => Readiness::Unavailable(format!(
                "the database connection was lost {:.1} s ago, longer than the bound on serving from cache; cached credentials are no longer trusted",
                lost_for_ms as f64 / 1e3
            )),
            FeedStatus::Live => match self.rt.store.ping().await {
                Ok(()) => Readiness::Ready,
                Err(e) => {
                    tracing::warn!(error = %e, "readiness check failed");
                    Readiness::Unavailable("storage does not answer".into())
                }
            },
        }
    }
}

fn rfc3339_minute(m: i64) -> String {
    crate::domain::clock::rfc3339(from_ms(m * 60_000))
}
