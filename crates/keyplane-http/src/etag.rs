//! Optimistic concurrency on the management API: `ETag` on answers that show a versioned
//! resource (an API key, an OAuth client, a member), and `If-Match` on the requests that change
//! one. A stale `If-Match` is 412 `precondition-failed` (RFC 9110 §13.1.1).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use std::convert::Infallible;

/// The version a request's `If-Match` names: `None` without the header (or with `*`). A value
/// that is not one of our entity tags names no version and so never matches.
#[derive(Debug, Clone, Copy)]
pub struct IfMatch(pub Option<i64>);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let Some(v) = parts.headers.get(header::IF_MATCH) else {
            return Ok(IfMatch(None));
        };
        let text = v.to_str().unwrap_or("").trim();
        if text == "*" {
            return Ok(IfMatch(None));
        }
        Ok(IfMatch(Some(parse_tag(text).unwrap_or(-1))))
    }
}

/// `"7"` → 7. Weak tags (`W/"7"`) do not count: If-Match compares strongly.
fn parse_tag(text: &str) -> Option<i64> {
    text.strip_prefix('"')?
        .strip_suffix('"')?
        .parse::<i64>()
        .ok()
        .filter(|v| *v > 0)
}

/// The entity tag of a resource at `version`.
pub fn etag(version: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("digits and quotes are a valid header")
}

/// An answer with the `ETag` of the resource it shows.
pub struct Tagged<T>(pub i64, pub T);

impl<T: IntoResponse> IntoResponse for Tagged<T> {
    fn into_response(self) -> Response {
        let mut r = self.1.into_response();
        r.headers_mut().insert(header::ETAG, etag(self.0));
        r
    }
}

#[cfg(test)]
mod tests {
    use super::parse_tag;

    #[test]
    fn entity_tags() {
        assert_eq!(parse_tag("\"3\""), Some(3));
        assert_eq!(parse_tag("W/\"3\""), None);
        assert_eq!(parse_tag("3"), None);
        assert_eq!(parse_tag("\"-1\""), None);
        assert_eq!(parse_tag("\"3\", \"4\""), None);
    }
}
