//! Time as a parameter, so expiry and rotation can be tested without sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use time::OffsetDateTime;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> OffsetDateTime;
    /// `now()` in milliseconds since the Unix epoch (what the hot paths compare).
    fn now_ms(&self) -> i64 {
        to_ms(self.now())
    }
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
    fn now_ms(&self) -> i64 {
        // Without the calendar conversion `OffsetDateTime` makes: read on every check.
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }
}

/// A clock that starts at the wall clock and moves only when told to (tests).
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl Default for ManualClock {
    fn default() -> Self {
        Self(Arc::new(AtomicI64::new(to_ms(OffsetDateTime::now_utc()))))
    }
}

impl ManualClock {
    pub fn advance(&self, by: time::Duration) {
        self.0
            .fetch_add(by.whole_milliseconds() as i64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        from_ms(self.0.load(Ordering::SeqCst))
    }
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Milliseconds since the Unix epoch: how every time is stored.
pub fn to_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// The one timestamp format of answers and activity details: RFC 3339 in UTC with
/// milliseconds, e.g. `2030-01-31T12:00:00.000Z`.
pub fn rfc3339(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

pub fn from_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod rfc3339_tests {
    #[test]
    fn utc_with_milliseconds() {
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(1_900_000_000_123_456_789).unwrap();
        assert_eq!(super::rfc3339(t), "2030-03-17T17:46:40.123Z");
        let shifted = t.to_offset(time::UtcOffset::from_hms(2, 0, 0).unwrap());
        assert_eq!(super::rfc3339(shifted), "2030-03-17T17:46:40.123Z");
        assert_eq!(
            super::rfc3339(time::OffsetDateTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z"
        );
    }
}
