//! Answers that carry a secret (a new API key, a client secret, an access token) must not be
//! kept by any cache on the way: `Cache-Control: no-store`, and `Pragma: no-cache` for HTTP/1.0
//! caches, as RFC 6749 §5.1 asks of the token endpoint.

use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};

/// Marks `headers` as an answer no cache may store.
pub fn mark(headers: &mut HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// An answer that carries a secret.
pub struct NoStore<T>(pub T);

impl<T: IntoResponse> IntoResponse for NoStore<T> {
    fn into_response(self) -> Response {
        let mut r = self.0.into_response();
        mark(r.headers_mut());
        r
    }
}
