//! Webhooks (Standard Webhooks, <https://www.standardwebhooks.com/>): what an endpoint is, which
//! activity events it subscribes to, how a delivery is signed, when it is retried, and the
//! notices keyplane records about credentials that expire, are due for rotation or go unused.
//!
//! Every activity event of an organization is a webhook event of the same name
//! (`api_key.revoke`, …): storage queues a delivery for each enabled endpoint whose patterns
//! match, in the transaction that appends the event, so there is no per-event code and no event
//! is lost across a crash. Delivery itself is the binary's ([`WebhookSender`]).

use crate::domain::egress::{reachable_with, EgressPolicy};
use crate::domain::error::{Error, Result};
use crate::domain::model::NewEvent;
use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::net::IpAddr;
use time::OffsetDateTime;

/// The secret's prefix (Standard Webhooks).
pub const SECRET_PREFIX: &str = "whsec_";
/// Random bytes in a secret.
pub const SECRET_BYTES: usize = 32;
/// The most endpoints an organization may have.
pub const MAX_ENDPOINTS_PER_ORG: usize = 50;
/// The longest URL accepted.
pub const MAX_URL_LEN: usize = 2048;
/// At most this many deliveries of one endpoint are sent at once, on all nodes together, so an
/// endpoint that hangs holds few senders and other endpoints' deliveries still leave.
pub const PER_ENDPOINT_IN_FLIGHT: i64 = 4;
/// Delivered and failed deliveries are kept this many days in the delivery log.
pub const DELIVERY_LOG_DAYS: i64 = 30;
/// The pepper-derived key that seals secrets at rest is derived under this purpose.
pub const SEAL_PURPOSE: &str = "webhook-secret-v1";

/// The activity events an organization's endpoint may name. A pattern may also be `*` (every
/// event) or `area.*` (every event whose name starts with `area.`): those also match events
/// added later, which need no code here to be delivered.
pub const EVENT_TYPES: &[&str] = &[
    "access_token.exchange",
    "access_token.issue",
    "access_token.revoke",
    "api_key.create",
    "api_key.expiring",
    "api_key.regenerate",
    "api_key.revoke",
    "api_key.unused",
    "api_key.update",
    "client_secret.create",
    "client_secret.expiring",
    "client_secret.retire",
    "client_secret.rotation_due",
    "config.manage",
    "config.unmanage",
    "console.sign_in",
    "console.sign_out",
    "credential.leaked",
    "credential.refused",
    "management.denied",
    "member.create",
    "member.delete",
    "member.password_link",
    "member.password_set",
    "member.role_change",
    "oauth_client.create",
    "oauth_client.delete",
    "oauth_client.update",
    "oauth_grant.consent",
    "oauth_grant.revoke",
    "project.create",
    "role.create",
    "webhook.create",
    "webhook.delete",
    "webhook.disable",
    "webhook.redeliver",
    "webhook.rotate_secret",
    "webhook.update",
];

/// Checks and normalizes an endpoint's event patterns: each a known event type, `*`, or
/// `area.*` for an area some known type is in. Sorted, without duplicates, at least one.
pub fn parse_events(list: &[String]) -> Result<Vec<String>> {
    if list.is_empty() {
        return Err(Error::invalid(
            "events",
            "name at least one event type (or `*` for every event)",
        ));
    }
    if list.len() > 64 {
        return Err(Error::invalid("events", "at most 64 event patterns"));
    }
    let mut out = Vec::new();
    for e in list {
        let e = e.trim();
        let known = e == "*"
            || EVENT_TYPES.contains(&e)
            || e.strip_suffix(".*").is_some_and(|area| {
                !area.is_empty()
                    && EVENT_TYPES
                        .iter()
                        .any(|t| t.strip_prefix(area).is_some_and(|r| r.starts_with('.')))
            });
        if !known {
            return Err(Error::invalid(
                "events",
                format!("unknown event type `{e}` (see docs/webhooks.md for the list)"),
            ));
        }
        out.push(e.to_string());
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Whether `pattern` (as [`parse_events`] accepts it) selects the event `action`. Storage
/// matches the same way in SQL when it queues deliveries.
pub fn pattern_matches(pattern: &str, action: &str) -> bool {
    pattern == "*"
        || pattern == action
        || pattern
            .strip_suffix('*')
            .is_some_and(|p| p.ends_with('.') && action.starts_with(p))
}

/// Checks an endpoint's URL: absolute `https://` (or `http://` to a loopback address when
/// loopback is allowed), no user information or fragment, and, when the host is written as an
/// address, one keyplane may connect to. Host names are checked again at delivery, when the
/// resolver refuses internal addresses.
pub fn check_url(url: &str, policy: EgressPolicy) -> Result<String> {
    let url = url.trim();
    let bad = |m: &str| Error::invalid("url", m.to_string());
    if url.is_empty() || url.len() > MAX_URL_LEN {
        return Err(bad(
            "`url` must be an absolute https:// URL of at most 2048 characters",
        ));
    }
    if url.contains('#') || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("`url` must have no fragment and no spaces"));
    }
    let uri: http::Uri = url
        .parse()
        .map_err(|_| bad("`url` is not a valid absolute URL"))?;
    let authority = uri
        .authority()
        .ok_or_else(|| bad("`url` must be absolute"))?;
    if authority.as_str().contains('@') {
        return Err(bad("`url` must not carry user information"));
    }
    // `localhost.` is `localhost`.
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.');
    let ip = host.parse::<IpAddr>().ok();
    let loopback_host =
        host.eq_ignore_ascii_case("localhost") || ip.is_some_and(|i| i.is_loopback());
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if policy.allow_loopback && loopback_host => {}
        _ => {
            return Err(bad(
                "`url` must use https:// (http:// only to a loopback address, when the deployment allows loopback)",
            ))
        }
    }
    if host.eq_ignore_ascii_case("localhost") && !policy.allow_loopback {
        return Err(bad(
            "`url` names a loopback host, which this deployment does not allow",
        ));
    }
    if let Some(ip) = ip {
        if !reachable_with(ip, policy) {
            return Err(bad(
                "`url` names an internal address (private, loopback, link-local or reserved), which this deployment does not allow",
            ));
        }
    }
    Ok(url.to_string())
}

/// A new signing secret: `whsec_` + base64 of 32 random bytes.
pub fn new_secret() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{SECRET_PREFIX}{}", B64.encode(bytes))
}

/// The key bytes of a `whsec_` secret.
pub fn secret_bytes(secret: &str) -> Option<Vec<u8>> {
    B64.decode(secret.strip_prefix(SECRET_PREFIX)?).ok()
}

/// The Standard Webhooks signature of one message: `v1,` + base64(HMAC-SHA256(key,
/// "{id}.{timestamp}.{body}")).
pub fn sign(key: &[u8], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
}

/// A webhook endpoint of an organization.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub id: String,
    pub org_id: String,
    /// Only events of this project's credentials (events that name no project are not sent).
    pub project_id: Option<String>,
    pub url: String,
    pub description: String,
    /// Patterns as [`parse_events`] returns them.
    pub events: Vec<String>,
    pub enabled: bool,
    /// Why the endpoint was disabled by keyplane (sustained failure), when it was.
    pub disabled_reason: Option<String>,
    /// The current secret, sealed under a key derived from the pepper of `pepper_version`.
    pub secret_sealed: Vec<u8>,
    pub pepper_version: u32,
    /// The secret before the last rotation, which also signs until `previous_until`.
    pub previous_sealed: Option<Vec<u8>>,
    pub previous_until: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    /// The first failed attempt since the last success.
    pub failing_since: Option<OffsetDateTime>,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Waiting for its (next) attempt.
    Pending,
    /// The endpoint answered 2xx.
    Delivered,
    /// Every attempt of the retry schedule failed (or the endpoint was disabled).
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(DeliveryState::Pending),
            "delivered" => Some(DeliveryState::Delivered),
            "failed" => Some(DeliveryState::Failed),
            _ => None,
        }
    }
}

/// One event queued for one endpoint. Its `id` is the `webhook-id`: the same on every attempt,
/// so receivers can drop duplicates.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub id: String,
    pub endpoint_id: String,
    pub org_id: String,
    pub event_id: String,
    pub event_type: String,
    /// The JSON body, made once when the event was appended.
    pub payload: String,
    pub created_at: OffsetDateTime,
    pub state: DeliveryState,
    pub attempts: i64,
    pub next_attempt_at: OffsetDateTime,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub delivered_at: Option<OffsetDateTime>,
}

/// One attempt to deliver, for the delivery log.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub delivery_id: String,
    pub endpoint_id: String,
    pub at: OffsetDateTime,
    pub duration_ms: i64,
    /// The answer's status, when one came.
    pub status: Option<i64>,
    pub error: Option<String>,
}

/// What happened to a claimed delivery, for storage to record in one transaction.
#[derive(Debug, Clone)]
pub struct DeliveryResult {
    pub attempt: Attempt,
    /// Whether the endpoint answered 2xx.
    pub delivered: bool,
    /// The next attempt, or `None` when the schedule is used up (the delivery fails).
    pub next_attempt_at: Option<OffsetDateTime>,
}

/// The body of a webhook for an organization's event (Standard Webhooks' `type`, `timestamp`,
/// `data`); `None` for a deployment-wide event. `data` holds the activity event's public
/// fields: no secret is ever in an event.
pub fn payload(e: &NewEvent) -> Option<String> {
    let org_id = e.org_id.as_deref()?;
    let at = crate::domain::clock::rfc3339(e.at);
    Some(
        serde_json::json!({
            "type": e.action,
            "timestamp": at,
            "data": {
                "id": e.id,
                "type": e.action,
                "at": at,
                "org_id": org_id,
                "project_id": event_project(&e.details),
                "actor": e.actor,
                "target": e.target,
                "outcome": e.outcome.as_str(),
                "details": if e.details.is_null() { serde_json::json!({}) } else { e.details.clone() },
            }
        })
        .to_string(),
    )
}

/// The project an event is about, when its details name one.
pub fn event_project(details: &serde_json::Value) -> Option<&str> {
    details.get("project_id").and_then(|p| p.as_str())
}

/// The delay before attempt `attempt + 1` (after `attempt` failed ones), with up to ±10 %
/// jitter so endpoints that fail together are not retried together; `None` when the schedule
/// is used up.
pub fn retry_delay_ms(schedule: &[u64], attempts_made: i64, jitter: f64) -> Option<i64> {
    let base = *schedule.get(usize::try_from(attempts_made - 1).ok()?)? as f64 * 1000.0;
    let j = jitter.clamp(-1.0, 1.0) * 0.1;
    Some((base * (1.0 + j)).max(0.0) as i64)
}

/// Delivers one signed message; the binary implements it over HTTPS (no redirects, a short
/// timeout, internal addresses refused). keyplane-core knows no HTTP.
#[async_trait]
pub trait WebhookSender: Send + Sync {
    /// POSTs `body` to `url` with `headers`; the status when an answer came, else the error.
    async fn send(
        &self,
        url: &str,
        headers: &[(&'static str, String)],
        body: &[u8],
    ) -> std::result::Result<u16, String>;
}

/// What notices keyplane records (`domain::settings::NoticeSettings` says when).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeKind {
    /// `api_key.expiring`: an active key expires within the threshold (days).
    KeyExpiring,
    /// `client_secret.rotation_due`: a client secret is older than the threshold (days).
    SecretRotationDue,
    /// `api_key.unused`: an active key has not been used for the threshold (days).
    KeyUnused,
}

impl NoticeKind {
    pub fn action(self) -> &'static str {
        match self {
            NoticeKind::KeyExpiring => "api_key.expiring",
            NoticeKind::SecretRotationDue => "client_secret.rotation_due",
            NoticeKind::KeyUnused => "api_key.unused",
        }
    }
}

/// A credential a notice may be due for.
#[derive(Debug, Clone, PartialEq)]
pub struct NoticeCandidate {
    pub credential_id: String,
    pub org_id: String,
    pub project_id: String,
    pub name: String,
    /// When the key expires, when the secret was made, or when the key was last used (or
    /// made).
    pub at: OffsetDateTime,
    /// For a client secret: its client.
    pub client_id: Option<String>,
    /// For a client secret: its client's own rotation policy (days).
    pub rotation_days: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn events_are_known_types_or_wildcards() {
        assert_eq!(
            parse_events(&s(&["api_key.revoke", "api_key.create", "api_key.revoke"])).unwrap(),
            s(&["api_key.create", "api_key.revoke"])
        );
        assert!(parse_events(&s(&["*"])).is_ok());
        assert!(parse_events(&s(&["api_key.*"])).is_ok());
        assert!(parse_events(&s(&["credential.leaked"])).is_ok());
        for bad in [
            "api_key.frobnicate",
            "api_*",
            "nothing.*",
            ".*",
            "",
            "api_key",
        ] {
            assert!(parse_events(&s(&[bad])).is_err(), "{bad}");
        }
        assert!(parse_events(&[]).is_err());
    }

    #[test]
    fn patterns_match_names_and_areas() {
        assert!(pattern_matches("*", "anything.new"));
        assert!(pattern_matches("api_key.*", "api_key.revoke"));
        assert!(!pattern_matches("api_key.*", "api_keyx.revoke"));
        assert!(!pattern_matches("api_key.create", "api_key.revoke"));
        assert!(pattern_matches("api_key.revoke", "api_key.revoke"));
    }

    #[test]
    fn urls() {
        let strict = EgressPolicy::default();
        let loopback = EgressPolicy {
            allow_loopback: true,
            allow_private: false,
        };
        assert!(check_url("https://hooks.example.com/in", strict).is_ok());
        for bad in [
            "http://hooks.example.com/in",
            "ftp://hooks.example.com/",
            "https://user:pw@hooks.example.com/",
            "https://10.0.0.1/in",
            "https://169.254.169.254/latest",
            "https://[::1]/in",
            "http://127.0.0.1:9/in",
            "https://localhost/in",
            "https://LocalHost./in",
            "/relative",
            "https://hooks.example.com/#frag",
        ] {
            assert!(check_url(bad, strict).is_err(), "{bad}");
        }
        assert!(check_url("http://127.0.0.1:9/in", loopback).is_ok());
        assert!(check_url("http://10.0.0.1/in", loopback).is_err());
        assert!(check_url("https://10.0.0.1/in", loopback).is_err());
        let private = EgressPolicy {
            allow_loopback: false,
            allow_private: true,
        };
        assert!(check_url("https://10.0.0.1/in", private).is_ok());
    }

    #[test]
    fn signature_matches_the_specification_example() {
        // The example of the Standard Webhooks specification.
        let key = secret_bytes("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        let fresh = new_secret();
        assert_eq!(secret_bytes(&fresh).unwrap().len(), SECRET_BYTES);
    }

    #[test]
    fn retries_follow_the_schedule() {
        let schedule = [5, 300];
        assert_eq!(retry_delay_ms(&schedule, 1, 0.0), Some(5000));
        assert_eq!(retry_delay_ms(&schedule, 2, 1.0), Some(330_000));
        assert_eq!(retry_delay_ms(&schedule, 3, 0.0), None);
    }
}
