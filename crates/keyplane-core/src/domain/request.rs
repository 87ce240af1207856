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
    /// Whether configuration-managed objects may be changed (`domain::managed`).
    pub config: crate::domain::managed::ConfigWrite,
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
    /// An access token whose audience is not the service the request is for (RFC 8707).
    Audience,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Malformed => "malformed",
            Refusal::Unknown => "unknown",
            Refusal::Revoked => "revoked",
            Refusal::Expired => "expired",
            Refusal::Audience => "wrong_audience",
        }
    }
    pub fn describe(self) -> &'static str {
        match self {
            Refusal::Missing => "no bearer credential was presented",
            Refusal::Malformed => "the credential is malformed",
            Refusal::Unknown => "the credential is not recognised",
            Refusal::Revoked => "the credential has been revoked",
            Refusal::Expired => "the credential has expired",
            Refusal::Audience => "the access token is not for this service (its audience names none of the service's resource URIs)",
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

/// Characters that change how text around them is shown without being visible themselves:
/// bidirectional controls (Trojan Source), zero-width and other invisible characters. Two
/// names differing only by these would look identical, so they are refused.
pub fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FEFF}' | '\u{FFA0}' | '\u{FFF9}'..='\u{FFFB}'
        | '\u{1D173}'..='\u{1D17A}' | '\u{E0000}'..='\u{E007F}')
}

/// A name as stored: trimmed, in Unicode NFC, 1 to 128 characters, with no control or
/// invisible character (so two names that look the same are the same name).
pub fn clean_name(field: &'static str, value: &str) -> Result<String> {
    use unicode_normalization::UnicodeNormalization;
    let v: String = value.trim().nfc().collect();
    if v.is_empty() || v.chars().count() > 128 || v.chars().any(char::is_control) {
        return Err(Error::invalid(
            field,
            format!("`{field}` must be 1 to 128 printable characters"),
        ));
    }
    if v.chars().any(is_invisible) {
        return Err(Error::invalid(
            field,
            format!(
                "`{field}` contains an invisible or text-direction character (such as U+200B or U+202E); \
                 names must look like what they are"
            ),
        ));
    }
    Ok(v)
}

/// A description as stored: trimmed, NFC, at most 1024 characters; line breaks and tabs are
/// allowed, other control characters and invisible ones are not.
pub fn clean_description(value: Option<&str>) -> Result<String> {
    use unicode_normalization::UnicodeNormalization;
    let v: String = value.unwrap_or("").trim().nfc().collect();
    if v.chars().count() > 1024 {
        return Err(Error::invalid(
            "description",
            "`description` must be at most 1024 characters",
        ));
    }
    if v.chars()
        .any(|c| (c.is_control() && c != '\n' && c != '\t' && c != '\r') || is_invisible(c))
    {
        return Err(Error::invalid(
            "description",
            "`description` contains a control, invisible or text-direction character",
        ));
    }
    Ok(v)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_nfc_and_visible() {
        // "é" as one code point, and as "e" + combining acute: one name.
        assert_eq!(
            clean_name("name", "Caf\u{e9}").unwrap(),
            clean_name("name", "Cafe\u{301}").unwrap()
        );
        for bad in [
            "orgA\u{200B}",
            "\u{202E}gnp.exe",
            "a\u{2066}b",
            "x\u{FEFF}",
            "tag\u{E0041}",
            "soft\u{AD}hyphen",
            "ctl\u{7}",
            "",
            "   ",
        ] {
            assert!(clean_name("name", bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(clean_name("name", "  ai guard  ").unwrap(), "ai guard");
        assert_eq!(clean_name("name", "日本語の鍵").unwrap(), "日本語の鍵");
        assert!(clean_description(Some("two\nlines\tand a tab")).is_ok());
        assert!(clean_description(Some("rtl \u{202E} trick")).is_err());
    }
}
