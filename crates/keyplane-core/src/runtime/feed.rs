//! Whether this node still hears of other nodes' changes, and so how far its caches are trusted.
//!
//! On PostgreSQL a node learns of revocations made elsewhere through the store's change feed
//! (`LISTEN/NOTIFY`). When that feed is down — the database connection dropped — the node may
//! be missing revocations, so what it has cached is trusted only for a bounded time
//! (`stale_serve_seconds`): within it the node keeps answering from its caches and reports
//! itself degraded; after it, cached credentials are ignored and every check reads storage
//! (which, while the database is away, refuses). When the feed is back, the caches are dropped
//! (anything may have changed meanwhile) and trusted again. The store only reports the feed's
//! state ([`crate::store::Invalidation::FeedLost`] / `FeedRestored`); this module decides.

use std::sync::atomic::{AtomicI64, Ordering};

/// `lost_at_ms` while the feed is live.
const LIVE: i64 = i64::MIN;

/// The feed's state, as the node keeps it.
#[derive(Debug)]
pub struct FeedHealth {
    /// When the feed was lost (ms since the epoch, by the node's clock), or [`LIVE`].
    lost_at_ms: AtomicI64,
    stale_serve_ms: i64,
    /// When the last change from another node arrived (ms since the epoch), or 0.
    last_change_ms: AtomicI64,
}

/// The feed's state, as reported to operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedStatus {
    /// Changes made on other nodes arrive as they happen (or there are no other nodes).
    Live,
    /// The feed has been down for `lost_for_ms`; cached credentials are still served for
    /// `trusted_for_ms` more.
    Stale {
        lost_for_ms: i64,
        trusted_for_ms: i64,
    },
    /// The feed has been down for `lost_for_ms`, longer than the bound: caches are not trusted.
    Untrusted { lost_for_ms: i64 },
}

impl FeedStatus {
    /// Whether cached credentials may be used.
    pub fn cache_trusted(self) -> bool {
        !matches!(self, FeedStatus::Untrusted { .. })
    }

    /// How long the feed has been down, in ms (0 while live).
    pub fn lost_for_ms(self) -> i64 {
        match self {
            FeedStatus::Live => 0,
            FeedStatus::Stale { lost_for_ms, .. } | FeedStatus::Untrusted { lost_for_ms } => {
                lost_for_ms
            }
        }
    }
}

impl FeedHealth {
    pub fn new(stale_serve_seconds: u64) -> Self {
        Self {
            lost_at_ms: AtomicI64::new(LIVE),
            stale_serve_ms: i64::try_from(stale_serve_seconds.saturating_mul(1000))
                .unwrap_or(i64::MAX),
            last_change_ms: AtomicI64::new(0),
        }
    }

    /// Notes that a change from another node arrived at `now_ms`.
    pub fn changed(&self, now_ms: i64) {
        self.last_change_ms.store(now_ms, Ordering::Relaxed);
    }

    /// When the last change from another node arrived (ms since the epoch), if one has.
    pub fn last_change_ms(&self) -> Option<i64> {
        Some(self.last_change_ms.load(Ordering::Relaxed)).filter(|ms| *ms != 0)
    }

    /// Notes that the feed went down at `now_ms`; a loss already noted keeps its first time.
    pub fn lost(&self, now_ms: i64) {
        let _ = self
            .lost_at_ms
            .compare_exchange(LIVE, now_ms, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Notes that the feed is back.
    pub fn restored(&self) {
        self.lost_at_ms.store(LIVE, Ordering::Release);
    }

    /// The state at `now_ms`. Reads one atomic while the feed is live (the hot path).
    #[inline]
    pub fn status(&self, now_ms: impl FnOnce() -> i64) -> FeedStatus {
        let lost_at = self.lost_at_ms.load(Ordering::Acquire);
        if lost_at == LIVE {
            return FeedStatus::Live;
        }
        let lost_for_ms = now_ms().saturating_sub(lost_at).max(0);
        if lost_for_ms < self.stale_serve_ms {
            FeedStatus::Stale {
                lost_for_ms,
                trusted_for_ms: self.stale_serve_ms - lost_for_ms,
            }
        } else {
            FeedStatus::Untrusted { lost_for_ms }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_feed_is_trusted_for_the_bound_then_not_until_restored() {
        let f = FeedHealth::new(60);
        assert_eq!(f.status(|| 0), FeedStatus::Live);
        f.lost(1_000);
        // A second report of the same outage keeps the first time.
        f.lost(5_000);
        assert_eq!(
            f.status(|| 31_000),
            FeedStatus::Stale {
                lost_for_ms: 30_000,
                trusted_for_ms: 30_000
            }
        );
        assert!(f.status(|| 60_999).cache_trusted());
        let after = f.status(|| 61_000);
        assert_eq!(
            after,
            FeedStatus::Untrusted {
                lost_for_ms: 60_000
            }
        );
        assert!(!after.cache_trusted());
        f.restored();
        assert_eq!(f.status(|| 100_000), FeedStatus::Live);
        assert_eq!(f.status(|| 100_000).lost_for_ms(), 0);
    }

    #[test]
    fn a_zero_bound_distrusts_the_cache_as_soon_as_the_feed_is_lost() {
        let f = FeedHealth::new(0);
        f.lost(10);
        assert!(!f.status(|| 10).cache_trusted());
    }

    #[test]
    fn the_hot_path_reads_no_clock_while_live() {
        let f = FeedHealth::new(60);
        assert_eq!(f.status(|| panic!("the clock was read")), FeedStatus::Live);
    }
}
