//! Who is calling: the bearer credential, resolved to a [`Principal`], and where from.

use crate::error::ApiError;
use crate::AppState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use keyplane_core::domain::managed::{ConfigWrite, OVERRIDE_HEADER};
use keyplane_core::domain::perm::Principal;
use keyplane_core::domain::request::RequestMeta;
use std::borrow::Cow;
use std::sync::{Arc, Mutex};

/// The bearer token of a request, if it has one (scheme matched case-insensitively).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Client address, user agent and request id, for the activity log and the throttles. The
/// address is the one the connection edge decided ([`crate::edge::Conn`]: the peer, or the
/// client a trusted proxy names); the id is the edge's too.
pub fn request_meta(parts: &Parts) -> RequestMeta {
    let conn = crate::edge::Conn::of(&parts.extensions);
    RequestMeta {
        client_addr: conn.map(|c| c.client),
        user_agent: parts.headers.get(header::USER_AGENT).cloned(),
        request_id: conn.map(|c| c.request_id),
        config: config_write(&parts.headers),
    }
}

/// `Keyplane-Override-Config: true` lets a management request change an object the
/// configuration file declares (`keyplane_core::domain::managed`); any other value does not.
fn config_write(headers: &HeaderMap) -> ConfigWrite {
    // A name made once: looking a header up by a `&str` parses the name on every request.
    const NAME: axum::http::HeaderName = axum::http::HeaderName::from_static(OVERRIDE_HEADER);
    match headers.get(&NAME) {
        Some(v) if v.as_bytes().eq_ignore_ascii_case(b"true") => ConfigWrite::Override,
        _ => ConfigWrite::Refuse,
    }
}

/// Where the authenticated principal is left for the middleware that records denials.
#[derive(Clone, Default)]
pub struct PrincipalSlot(pub Arc<Mutex<Option<Principal>>>);

/// An authenticated caller of the management API.
pub struct Caller {
    pub principal: Principal,
    pub meta: RequestMeta,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let meta = request_meta(parts);
        let principal = state
            .app
            .authenticate(bearer(&parts.headers), &meta)
            .await?;
        if let Some(slot) = parts.extensions.get::<PrincipalSlot>() {
            *slot.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(principal.clone());
        }
        Ok(Caller { principal, meta })
    }
}

/// Records every management request refused with 403 in the activity log; after a change, wakes
/// this node's webhook delivery worker.
pub async fn record_denials(
    axum::extract::State(state): axum::extract::State<AppState>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let slot = PrincipalSlot::default();
    req.extensions_mut().insert(slot.clone());
    let action = format!("{} {}", req.method(), req.uri().path());
    let changes = req.method() != axum::http::Method::GET;
    let meta = {
        let (parts, body) = req.into_parts();
        let meta = request_meta(&parts);
        req = axum::extract::Request::from_parts(parts, body);
        meta
    };
    let resp = next.run(req).await;
    if resp.status() == axum::http::StatusCode::FORBIDDEN {
        let principal = slot.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(p) = principal {
            state
                .app
                .record_denied(&p, "management.denied", &meta, &action)
                .await;
        }
    }
    // A change has committed with its event (and any webhook deliveries it queued): the
    // delivery worker need not wait for its next look (SQLite has no change feed to wake it).
    if changes && (resp.status().is_success() || resp.status() == axum::http::StatusCode::FORBIDDEN)
    {
        state.app.wake_webhooks();
    }
    resp
}

/// A form value that is not strict `application/x-www-form-urlencoded`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormError {
    /// `%` not followed by exactly two hexadecimal digits (`%zz`, `%4`, `%+2`).
    BadEscape,
    /// The decoded bytes are not UTF-8.
    NotUtf8,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes one `application/x-www-form-urlencoded` value: `+` is a space, `%XX` a byte, and
/// nothing else is an escape: a `%` without two hexadecimal digits after it, or bytes that do
/// not decode to UTF-8, are refused rather than guessed at.
pub fn form_unescape(s: &str) -> Result<Cow<'_, str>, FormError> {
    // Most values (tokens, ids, secrets, assertions) have nothing to unescape and are long:
    // searched many bytes at a time.
    if memchr::memchr2(b'+', b'%', s.as_bytes()).is_none() {
        return Ok(Cow::Borrowed(s));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex);
                let lo = bytes.get(i + 2).copied().and_then(hex);
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(FormError::BadEscape);
                };
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| FormError::NotUtf8)
}
