//! What every request carries and every listing returns: where a request came from, why a
//! credential was refused, pages and cursors, and the rules names and descriptions follow.

use crate::domain::error::{Error, Result};

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

    /// The address throttles count by: an IPv4 address, or the /64 network of an IPv6 one (one
    /// subscriber's allocation, so rotating through it gains nothing). Empty when unknown.
    pub fn throttle_addr(&self) -> String {
        match self.client_addr.map(|a| a.to_canonical()) {
            None => String::new(),
            Some(std::net::IpAddr::V4(a)) => a.to_string(),
            Some(std::net::IpAddr::V6(a)) => {
                let net = u128::from(a) & (u128::MAX << 64);
                format!("{}/64", std::net::Ipv6Addr::from(net))
            }
        }
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

/// One page of a listing.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

const MAX_PAGE: i64 = 200;

pub fn clean_name(field: &'static str, value: &str) -> Result<String> {
    let v = value.trim();
    if v.is_empty() || v.chars().count() > 128 || v.chars().any(char::is_control) {
        return Err(Error::invalid(
            field,
            format!("`{field}` must be 1 to 128 printable characters"),
        ));
    }
    Ok(v.to_string())
}

pub fn clean_description(value: Option<&str>) -> Result<String> {
    let v = value.unwrap_or("").trim();
    if v.chars().count() > 1024 {
        return Err(Error::invalid(
            "description",
            "`description` must be at most 1024 characters",
        ));
    }
    Ok(v.to_string())
}

pub fn valid_scope_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":._-/*".contains(&b))
}

pub fn cursor_of(seq: i64) -> String {
    seq.to_string()
}

pub fn parse_cursor(cursor: Option<&str>) -> Result<Option<i64>> {
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

pub fn page_limit(limit: Option<i64>) -> Result<i64> {
    match limit {
        None => Ok(50),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(_) => Err(Error::invalid(
            "limit",
            format!("`limit` must be between 1 and {MAX_PAGE}"),
        )),
    }
}

pub fn paginate<T>(mut items: Vec<T>, limit: i64, seq: impl Fn(&T) -> i64) -> Page<T> {
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(|i| cursor_of(seq(i)))
    } else {
        None
    };
    Page { items, next_cursor }
}
