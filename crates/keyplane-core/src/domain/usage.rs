//! Usage analytics and rate limits: what a request's outcome is called, how usage is asked for
//! and answered, and what a credential's named rate limits are. Pure: the counters live in
//! `runtime/usage.rs` and `runtime/ratelimit.rs`, the rows in keyplane-store.

use crate::domain::error::{Error, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::time::Duration;
use time::OffsetDateTime;

/// How a checked request ended, as counted by usage analytics. Each refusal reason keyplane
/// distinguishes on `/v1/authz`, the gateway and introspection has its own outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Allowed,
    /// No credential was presented.
    Missing,
    /// Not a credential of ours by its shape or checksum.
    Malformed,
    Unknown,
    Revoked,
    Expired,
    /// An access token for another service (RFC 8707).
    WrongAudience,
    InsufficientScope,
    /// The credential is good but no route rule allows the request.
    NoRule,
    /// A DPoP-bound token without a valid proof, or the DPoP scheme misused.
    Dpop,
    RateLimited,
}

impl Outcome {
    pub const ALL: [Outcome; 11] = [
        Outcome::Allowed,
        Outcome::Missing,
        Outcome::Malformed,
        Outcome::Unknown,
        Outcome::Revoked,
        Outcome::Expired,
        Outcome::WrongAudience,
        Outcome::InsufficientScope,
        Outcome::NoRule,
        Outcome::Dpop,
        Outcome::RateLimited,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Missing => "missing",
            Outcome::Malformed => "malformed",
            Outcome::Unknown => "unknown",
            Outcome::Revoked => "revoked",
            Outcome::Expired => "expired",
            Outcome::WrongAudience => "wrong_audience",
            Outcome::InsufficientScope => "insufficient_scope",
            Outcome::NoRule => "no_rule",
            Outcome::Dpop => "dpop",
            Outcome::RateLimited => "rate_limited",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == s)
    }

    /// The stored code (a small integer: rows stay compact). Never reuse a code.
    pub fn code(self) -> i16 {
        self as i16
    }

    pub fn from_code(c: i64) -> Option<Outcome> {
        Outcome::ALL.get(usize::try_from(c).ok()?).copied()
    }

    pub fn is_refusal(self) -> bool {
        self != Outcome::Allowed
    }
}

/// The width of a usage bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    #[default]
    Minute,
    Hour,
}

impl Granularity {
    pub fn seconds(self) -> i64 {
        match self {
            Granularity::Minute => 60,
            Granularity::Hour => 3600,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Minute => "minute",
            Granularity::Hour => "hour",
        }
    }
    pub fn parse(s: &str) -> Option<Granularity> {
        match s {
            "minute" => Some(Granularity::Minute),
            "hour" => Some(Granularity::Hour),
            _ => None,
        }
    }
}

/// At most this many buckets in one answer (a day of minutes is 1,440; 90 days of hours 2,160).
pub const MAX_BUCKETS: i64 = 2200;

/// What `GET /v1/usage` asks for. Every filter is optional; `since`/`until` default to the last
/// hour (minutes) or the last day (hours).
#[derive(Debug, Clone, Default)]
pub struct UsageQuery {
    /// An API key id (`key_…`) or an OAuth client id.
    pub credential_id: Option<String>,
    pub org_id: Option<String>,
    pub project_id: Option<String>,
    pub service: Option<String>,
    pub outcome: Option<Outcome>,
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
    pub granularity: Granularity,
}

/// Counts per outcome in one bucket; outcomes with no request are absent.
pub type OutcomeCounts = BTreeMap<Outcome, u64>;

/// One bucket of a usage series.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageBucket {
    /// The bucket's first instant (a whole minute or hour, UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub start: OffsetDateTime,
    pub counts: OutcomeCounts,
    pub total: u64,
}

/// The answer of `GET /v1/usage`: one bucket per minute or hour from `since` to `until`, empty
/// buckets included, so a chart has one point per bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageSeries {
    pub granularity: Granularity,
    /// The first bucket's start (`since` rounded down to the granularity).
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    /// The end of the last bucket (exclusive).
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
    pub buckets: Vec<UsageBucket>,
}

/// The window of a usage query, resolved and checked: bucket numbers (seconds since the epoch
/// divided by the granularity) from `first` to `last` exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageWindow {
    pub granularity: Granularity,
    pub first: i64,
    pub end: i64,
}

impl UsageWindow {
    /// Resolves `since`/`until` against `now`: defaults, rounding to whole buckets, and the
    /// refusals (`since` after `until`, more than [`MAX_BUCKETS`] buckets).
    pub fn resolve(
        granularity: Granularity,
        since: Option<OffsetDateTime>,
        until: Option<OffsetDateTime>,
        now: OffsetDateTime,
    ) -> Result<UsageWindow> {
        let g = granularity.seconds();
        let until = until.unwrap_or(now);
        let default_span = match granularity {
            Granularity::Minute => 3600,
            Granularity::Hour => 86_400,
        };
        let since = since.unwrap_or(until - time::Duration::seconds(default_span));
        if since > until {
            return Err(Error::invalid("since", "`since` is after `until`"));
        }
        let first = since.unix_timestamp().div_euclid(g);
        // `until` is exclusive; a bucket it falls inside is included, by any fraction of a
        // second: the default `until` (now) at 12:05:00.4 includes the minute from 12:05, whose
        // requests are counted already (whole seconds would end the window at 12:05:00).
        let g_ns = i128::from(g) * 1_000_000_000;
        let end = i64::try_from((until.unix_timestamp_nanos() + g_ns - 1).div_euclid(g_ns))
            .unwrap_or(i64::MAX)
            .max(first + 1);
        if end - first > MAX_BUCKETS {
            return Err(Error::invalid(
                "since",
                format!(
                    "the window spans {} {}s; at most {MAX_BUCKETS} buckets are answered: narrow `since`/`until` or use `granularity=hour`",
                    end - first,
                    granularity.as_str()
                ),
            ));
        }
        Ok(UsageWindow {
            granularity,
            first,
            end,
        })
    }

    /// Fills the series from `(bucket, outcome, count)` rows, one bucket per step.
    pub fn series(&self, rows: &[(i64, Outcome, u64)]) -> UsageSeries {
        let g = self.granularity.seconds();
        let at = |b: i64| {
            OffsetDateTime::from_unix_timestamp(b * g).unwrap_or(OffsetDateTime::UNIX_EPOCH)
        };
        let mut buckets: Vec<UsageBucket> = (self.first..self.end)
            .map(|b| UsageBucket {
                start: at(b),
                counts: BTreeMap::new(),
                total: 0,
            })
            .collect();
        for &(b, o, n) in rows {
            if b < self.first || b >= self.end || n == 0 {
                continue;
            }
            let bucket = &mut buckets[(b - self.first) as usize];
            *bucket.counts.entry(o).or_default() += n;
            bucket.total += n;
        }
        UsageSeries {
            granularity: self.granularity,
            since: at(self.first),
            until: at(self.end),
            buckets,
        }
    }
}

/// What `GET /v1/usage/top` ranks by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TopBy {
    #[default]
    Requests,
    Refusals,
}

/// What `GET /v1/usage/top` asks for: the credentials with the most requests (or refusals)
/// between `since` and `until` (default: the last day), at most `limit` (default 10, at most 100).
#[derive(Debug, Clone, Default)]
pub struct TopQuery {
    pub org_id: Option<String>,
    pub project_id: Option<String>,
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
    pub by: TopBy,
    pub limit: Option<u32>,
}

/// What kind of credential a usage row counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    ApiKey,
    Client,
}

/// One line of `GET /v1/usage/top`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopCredential {
    pub credential_id: String,
    pub kind: CredentialKind,
    /// The key's or client's name; empty when it has since been deleted.
    pub name: String,
    pub org_id: String,
    pub project_id: String,
    pub requests: u64,
    pub refusals: u64,
}

/// One counted request, as the flush drains it: who, where, what, when, how many.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageCount {
    /// The minute (seconds since the epoch / 60).
    pub minute: i64,
    /// Empty for a request no credential could be named for (missing, malformed, unknown).
    pub org_id: String,
    pub project_id: String,
    pub credential_id: String,
    /// Empty when no service is known for the request.
    pub service: String,
    pub outcome: Outcome,
    pub count: u64,
}

/// Who shares a rate limit's count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitShare {
    /// This credential alone (the default).
    Credential,
    /// Every credential of the credential's owner (a member; for a project's service token or
    /// a client without an owner, the credential alone).
    Owner,
    /// Every credential of the credential's project.
    Project,
}

/// A rate limit's window, written `1s`, `30s`, `1m`, `1h`, `1d` (a whole number and a unit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window(pub Duration);

impl Window {
    pub const MAX: Duration = Duration::from_secs(30 * 86_400);

    pub fn parse(s: &str) -> Result<Window, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(|| {
            format!("window {s:?} has no unit: write e.g. `1s`, `1m`, `1h`, `1d`")
        })?;
        let (n, unit) = s.split_at(split);
        let n: u64 = n
            .parse()
            .map_err(|_| format!("window {s:?} must start with a whole number, e.g. `10s`"))?;
        let unit_ms = match unit {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => {
                return Err(format!(
                    "window {s:?}: the unit must be `ms`, `s`, `m`, `h` or `d`"
                ))
            }
        };
        let ms = n
            .checked_mul(unit_ms)
            .ok_or_else(|| format!("window {s:?} is too long"))?;
        let d = Duration::from_millis(ms);
        if ms < 100 {
            return Err(format!("window {s:?} is shorter than 100 ms"));
        }
        if d > Self::MAX {
            return Err(format!("window {s:?} is longer than 30 days"));
        }
        Ok(Window(d))
    }

    pub fn as_millis(self) -> i64 {
        self.0.as_millis() as i64
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.0.as_millis();
        for (unit, n) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1000),
        ] {
            if ms.is_multiple_of(n) {
                return write!(f, "{}{unit}", ms / n);
            }
        }
        write!(f, "{ms}ms")
    }
}

impl Serialize for Window {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Window::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// One named rate limit of an API key or OAuth client: at most `limit` units per `window`
/// (each request costs `cost`, default 1, unless a route rule names another cost).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    pub name: String,
    pub limit: u64,
    pub window: Window,
    /// Units one request costs when no route rule says otherwise (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<u64>,
    /// Who shares the count (default: this credential alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<LimitShare>,
}

/// At most this many limits per credential.
pub const MAX_LIMITS: usize = 8;

/// Checks a credential's rate limits: names `[A-Za-z0-9_-]{1,32}`, unique, limits from 1 to
/// 10^12, costs at most the limit.
pub fn check_rate_limits(limits: &[RateLimit]) -> Result<()> {
    if limits.len() > MAX_LIMITS {
        return Err(Error::invalid(
            "rate_limits",
            format!("at most {MAX_LIMITS} rate limits per credential"),
        ));
    }
    for (i, l) in limits.iter().enumerate() {
        if l.name.is_empty()
            || l.name.len() > 32
            || !l
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(Error::invalid(
                "rate_limits",
                format!(
                    "rate limit name {:?} must be 1 to 32 letters, digits, `_` or `-`",
                    l.name
                ),
            ));
        }
        if limits[..i].iter().any(|o| o.name == l.name) {
            return Err(Error::invalid(
                "rate_limits",
                format!("rate limit {:?} is named twice", l.name),
            ));
        }
        if l.limit == 0 || l.limit > 1_000_000_000_000 {
            return Err(Error::invalid(
                "rate_limits",
                format!("rate limit {:?}: `limit` must be from 1 to 10^12", l.name),
            ));
        }
        if let Some(c) = l.cost {
            if c == 0 || c > l.limit {
                return Err(Error::invalid(
                    "rate_limits",
                    format!(
                        "rate limit {:?}: `cost` must be from 1 to the limit",
                        l.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_and_print_the_same() {
        for s in ["1s", "30s", "1m", "1h", "1d", "250ms", "90m"] {
            assert_eq!(Window::parse(s).unwrap().to_string(), s);
        }
        assert_eq!(Window::parse("60s").unwrap().to_string(), "1m");
        for bad in [
            "",
            "1",
            "s",
            "0s",
            "1w",
            "-1s",
            "99999999999999999999d",
            "31d",
            "10ms",
        ] {
            assert!(Window::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn outcome_codes_are_stable() {
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(o.code() as usize, i);
            assert_eq!(Outcome::from_code(i as i64), Some(*o));
            assert_eq!(Outcome::parse(o.as_str()), Some(*o));
        }
    }

    #[test]
    fn windows_are_filled_and_bounded() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_030).unwrap();
        let w = UsageWindow::resolve(Granularity::Minute, None, None, now).unwrap();
        assert_eq!(w.end - w.first, 61);
        let s = w.series(&[
            (w.first + 2, Outcome::Allowed, 3),
            (w.first + 2, Outcome::Revoked, 1),
        ]);
        assert_eq!(s.buckets.len(), 61);
        assert_eq!(s.buckets[2].total, 4);
        assert!(UsageWindow::resolve(
            Granularity::Minute,
            Some(now),
            Some(now - time::Duration::minutes(1)),
            now
        )
        .is_err());
        assert!(UsageWindow::resolve(
            Granularity::Minute,
            Some(now - time::Duration::days(3)),
            None,
            now
        )
        .is_err());
        assert!(UsageWindow::resolve(
            Granularity::Hour,
            Some(now - time::Duration::days(90)),
            None,
            now
        )
        .is_ok());
    }

    /// A query in the first second of a minute (or hour) includes that minute: requests of
    /// 12:05:00.2 are in the answer of 12:05:00.4. An explicit `until` on a boundary still
    /// ends the window there (exclusive).
    #[test]
    fn the_current_bucket_is_included_from_its_first_instant() {
        let boundary = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let minute = 1_800_000_000 / 60;
        for g in [Granularity::Minute, Granularity::Hour] {
            let now = boundary + time::Duration::milliseconds(400);
            let w = UsageWindow::resolve(g, None, None, now).unwrap();
            let current = now.unix_timestamp().div_euclid(g.seconds());
            assert_eq!(w.end, current + 1, "{g:?}");
            let w = UsageWindow::resolve(
                g,
                Some(boundary - time::Duration::hours(2)),
                Some(boundary),
                now,
            )
            .unwrap();
            assert_eq!(w.end, 1_800_000_000 / g.seconds(), "{g:?}");
        }
        let w = UsageWindow::resolve(Granularity::Minute, None, None, boundary).unwrap();
        assert_eq!(w.end, minute, "exactly on the boundary, exclusive");
        let w = UsageWindow::resolve(
            Granularity::Minute,
            None,
            None,
            boundary + time::Duration::nanoseconds(1),
        )
        .unwrap();
        assert_eq!(w.end, minute + 1);
    }

    #[test]
    fn limits_are_checked() {
        let l = |name: &str, limit, cost| RateLimit {
            name: name.into(),
            limit,
            window: Window::parse("1s").unwrap(),
            cost,
            shared: None,
        };
        assert!(check_rate_limits(&[l("burst", 100, None), l("daily", 10, Some(2))]).is_ok());
        assert!(check_rate_limits(&[l("a", 0, None)]).is_err());
        assert!(check_rate_limits(&[l("a", 1, None), l("a", 2, None)]).is_err());
        assert!(check_rate_limits(&[l("a b", 1, None)]).is_err());
        assert!(check_rate_limits(&[l("a", 1, Some(2))]).is_err());
    }
}
