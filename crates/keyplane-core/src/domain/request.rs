//! What every request carries and every listing returns: where a request came from, why a
//! credential was refused, pages and cursors, and the rules names and descriptions follow.

use crate::domain::error::{Error, Result};

/// Where a request came from, for the activity log. Cheap to build on every request: the
/// address and the request id are values and the `User-Agent` shares the request's buffer; all
/// become text only when an event is recorded.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    pub client_addr: Option<std::net::IpAddr>,
    pub user_agent: Option<http::HeaderValue>,
    /// Whether configuration-managed objects may be changed (`domain::managed`).
    pub config: crate::domain::managed::ConfigWrite,
    /// The request's id (`X-Request-Id`), recorded in the details of every event it causes.
    pub request_id: Option<RequestId>,
}

/// A request's id, as answered in `X-Request-Id` and written in logs and activity events: the
/// one a trusted proxy sent, or one keyplane made. At most [`RequestId::MAX_LEN`] characters
/// from a small set (letters, digits and `-_.:;+/=@`), so it is safe in a header, a log line
/// and JSON as it is. Held inline (no allocation), since every request has one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RequestId {
    len: u8,
    buf: [u8; RequestId::MAX_LEN],
}

impl RequestId {
    /// The longest id taken from a proxy; a longer one is replaced by one made here.
    pub const MAX_LEN: usize = 64;

    /// `text` as a request id, if it is 1 to [`Self::MAX_LEN`] allowed characters.
    pub fn parse(text: &[u8]) -> Option<Self> {
        let ok = |b: &u8| b.is_ascii_alphanumeric() || b"-_.:;+/=@".contains(b);
        if text.is_empty() || text.len() > Self::MAX_LEN || !text.iter().all(ok) {
            return None;
        }
        let mut buf = [0u8; Self::MAX_LEN];
        buf[..text.len()].copy_from_slice(text);
        Some(Self {
            len: text.len() as u8,
            buf,
        })
    }

    /// Two words as 32 lowercase hexadecimal digits (always a valid id, so none is checked).
    pub fn from_hex_words(high: u64, low: u64) -> Self {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut buf = [0u8; Self::MAX_LEN];
        for (i, w) in [high, low].into_iter().enumerate() {
            for (j, b) in buf[i * 16..i * 16 + 16].iter_mut().enumerate() {
                *b = DIGITS[((w >> (60 - 4 * j)) & 0xf) as usize];
            }
        }
        Self { len: 32, buf }
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored (see `parse`).
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or("")
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl RequestMeta {
    /// An event's details with this request's id added as `request_id` (when it has one).
    /// Details are an object, or nothing (`null`), which becomes an object.
    pub fn details(&self, details: serde_json::Value) -> serde_json::Value {
        let Some(id) = &self.request_id else {
            return details;
        };
        match details {
            serde_json::Value::Object(mut m) => {
                m.insert("request_id".into(), id.as_str().into());
                serde_json::Value::Object(m)
            }
            serde_json::Value::Null => serde_json::json!({ "request_id": id.as_str() }),
            other => other,
        }
    }

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
    fn hex_words_make_the_id_parse_would() {
        for (h, l) in [
            (0, 0),
            (u64::MAX, 1),
            (0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210),
        ] {
            let id = RequestId::from_hex_words(h, l);
            assert_eq!(id.as_str(), format!("{h:016x}{l:016x}"));
            assert!(RequestId::parse(id.as_str().as_bytes()) == Some(id));
        }
    }

    #[test]
    fn request_ids_are_short_and_plain() {
        let id = RequestId::parse(b"f3b1c2d4-0a1b-4c5d-8e9f-0123456789ab").unwrap();
        assert_eq!(id.as_str(), "f3b1c2d4-0a1b-4c5d-8e9f-0123456789ab");
        assert!(RequestId::parse(&[b'a'; RequestId::MAX_LEN]).is_some());
        for bad in [
            &b""[..],
            &[b'a'; RequestId::MAX_LEN + 1][..],
            b"has space",
            b"quote\"",
            b"new\nline",
            b"esc\x1b[31m",
            b"back\\slash",
            "caf\u{e9}".as_bytes(),
        ] {
            assert!(RequestId::parse(bad).is_none(), "{bad:?} accepted");
        }
        let meta = RequestMeta {
            request_id: Some(id),
            ..Default::default()
        };
        assert_eq!(
            meta.details(serde_json::json!({"reason": "x"})),
            serde_json::json!({"reason": "x", "request_id": id.as_str()})
        );
        assert_eq!(
            meta.details(serde_json::Value::Null),
            serde_json::json!({"request_id": id.as_str()})
        );
        let none = RequestMeta::default();
        assert_eq!(none.details(serde_json::json!({})), serde_json::json!({}));
    }

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
