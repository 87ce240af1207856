//! The one mapping from domain errors to HTTP: RFC 9457 problem+json on the management API.
//! (The OAuth routes use RFC 6749 §5.2 bodies and `/v1/authz` RFC 6750 headers; see their modules.)

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use keyplane_core::Error;
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::ToSchema;

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem, e.g. `https://keyplane.dev/problems/not-found`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    /// What happened and what to do about it, for a person.
    pub detail: String,
    /// The request field at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// An error answered as problem+json.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub slug: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub field: Option<String>,
    /// RFC 6750 challenge for 401s.
    pub challenge: Option<String>,
    /// `Retry-After` (seconds) for 429s.
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            slug,
            title,
            detail: detail.into(),
            field: None,
            challenge: None,
            retry_after: None,
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "Bad request",
            detail,
        )
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::Unauthenticated(why) => {
                let mut a = ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "Authentication required",
                    format!("{why}; send `Authorization: Bearer <admin key or API key>`"),
                );
                a.challenge = Some(format!(
                    "Bearer realm=\"keyplane\", error=\"invalid_token\", error_description=\"{why}\""
                ));
                a
            }
            Error::Forbidden(why) => {
                ApiError::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", why)
            }
            Error::NotFound(what) => ApiError::not_found(format!(
                "no {what} with that id exists, or this credential may not see it"
            )),
            Error::Invalid { field, message } => {
                let mut a = ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid",
                    "Invalid request",
                    message,
                );
                a.field = field.map(str::to_string);
                a
            }
            Error::Conflict(why) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", "Conflict", why)
            }
            e @ Error::ManagedByConfig(_) => ApiError::new(
                StatusCode::CONFLICT,
                "managed-by-config",
                "Managed by configuration",
                e.to_string(),
            ),
            e @ Error::PreconditionFailed(_) => ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition-failed",
                "Precondition failed",
                e.to_string(),
            ),
            e @ Error::VersionConflict(_) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", "Conflict", e.to_string())
            }
            Error::TooManyRequests(wait) => {
                let mut a = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too-many-requests",
                    "Too many requests",
                    format!(
                        "too many failed authentications from this address; retry in {wait} seconds"
                    ),
                );
                a.retry_after = Some(u32::try_from(wait).unwrap_or(u32::MAX));
                a
            }
            Error::LimitExceeded(why) => ApiError::new(
                StatusCode::CONFLICT,
                "limit-exceeded",
                "Limit exceeded",
                why,
            ),
            Error::Storage(cause) => {
                // The cause goes to the log; the client learns only that it was our fault.
                tracing::error!(error = %cause, "storage error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "Internal error",
                    "an internal error occurred; it has been logged",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Problem {
            kind: format!("https://keyplane.dev/problems/{}", self.slug),
            title: self.title.to_string(),
            status: self.status.as_u16(),
            detail: self.detail,
            field: self.field,
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(c) = self.challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, c);
        }
        if let Some(wait) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(wait));
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// `axum::Json`, but a rejection (bad syntax, wrong type, wrong content type, too large) is
/// answered as problem+json with a message a person can act on.
pub struct AppJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for AppJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        // Every body of the management API is a JSON object: serde would also read a struct
        // from an array of its fields in order (`[null, null]`), which no client means.
        let json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|m| m.trim().to_ascii_lowercase())
            .is_some_and(|m| {
                m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
            });
        if !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
                "send the body as JSON with `Content-Type: application/json`",
            ));
        }
        let bytes = match axum::body::Bytes::from_request(req, state).await {
            Ok(b) => b,
            Err(e) => return Err(json_rejection(JsonRejection::from(e))),
        };
        let v = match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(v)) => v,
            Err(r) => return Err(json_rejection(r)),
        };
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                "Invalid request",
                "the body must be a JSON object",
            ));
        }
        Ok(AppJson(v))
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    match r {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            "send the body as JSON with `Content-Type: application/json`",
        ),
        JsonRejection::JsonSyntaxError(e) => {
            ApiError::bad_request(format!("the body is not valid JSON: {}", e.body_text()))
        }
        JsonRejection::JsonDataError(e) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "Invalid request",
            format!(
                "the JSON does not have the expected shape: {}",
                e.body_text()
            ),
        ),
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-large",
                "Payload too large",
                "the request body is larger than this server accepts (64 KiB)",
            )
        }
        other => ApiError::bad_request(other.body_text()),
    }
}

/// `axum::extract::Path` with problem+json rejections.
pub struct AppPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for AppPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(AppPath(v)),
            Err(r) => Err(path_rejection(r)),
        }
    }
}

fn path_rejection(r: PathRejection) -> ApiError {
    ApiError::bad_request(format!("bad path parameter: {}", r.body_text()))
}

/// `axum::extract::Query` with problem+json rejections.
pub struct AppQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for AppQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(AppQuery(v)),
            Err(r) => Err(query_rejection(r)),
        }
    }
}

fn query_rejection(r: QueryRejection) -> ApiError {
    ApiError::bad_request(format!("bad query string: {}", r.body_text()))
}

/// Answers unknown routes with problem+json rather than an empty 404.
pub async fn fallback() -> ApiError {
    ApiError::not_found("no such route; the API is described at /openapi.json")
}

/// Answers a known route asked with a method it does not take (axum's default is an empty 405).
/// The router adds the `Allow` header listing the methods the route does take. On the OAuth
/// endpoints the body is an RFC 6749 §5.2 error, elsewhere problem+json.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let detail = format!(
        "this route does not take {method}; the Allow header lists the methods it does take"
    );
    if crate::routes::oauth::is_oauth_path(uri.path()) {
        return crate::routes::oauth::error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            detail,
        );
    }
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        detail,
    )
    .into_response()
}

/// The last safety net: an error answer that left the router with no body and no content type
/// (one of axum's or tower's own, should any remain) gets the body its route's error format
/// asks for, so no keyplane error is ever an empty page. Answers with a body pass untouched.
pub fn fill_empty_error(path: &str, resp: Response) -> Response {
    use axum::body::HttpBody;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error())
        || resp.headers().contains_key(header::CONTENT_TYPE)
        || resp.body().size_hint().exact() != Some(0)
    {
        return resp;
    }
    let (mut parts, _) = resp.into_parts();
    let reason = status.canonical_reason().unwrap_or("Error");
    let filled = if crate::routes::oauth::is_oauth_path(path) {
        let code = if status.is_server_error() {
            "server_error"
        } else {
            "invalid_request"
        };
        crate::routes::oauth::error_response(status, code, reason.to_ascii_lowercase())
    } else {
        ApiError::new(status, "http", reason, reason.to_ascii_lowercase()).into_response()
    };
    let (new_parts, body) = filled.into_parts();
    for (name, value) in new_parts.headers.iter() {
        parts.headers.insert(name.clone(), value.clone());
    }
    Response::from_parts(parts, body)
}

/// The answer to a request refused before routing because its URI or its headers are larger
/// than keyplane accepts (414, 431): problem+json, or an RFC 6749 body on the OAuth endpoints.
pub fn too_large(path: &str, status: StatusCode, detail: String) -> Response {
    if crate::routes::oauth::is_oauth_path(path) {
        return crate::routes::oauth::error_response(status, "invalid_request", detail);
    }
    let (slug, title) = if status == StatusCode::URI_TOO_LONG {
        ("uri-too-long", "URI too long")
    } else {
        ("headers-too-large", "Request headers too large")
    };
    ApiError::new(status, slug, title, detail).into_response()
}

/// A JSON body that may be left out entirely (then `T::default()`).
pub struct OptionalJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let has_body = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .map(|v| v != "0")
            .unwrap_or_else(|| req.headers().contains_key(header::TRANSFER_ENCODING));
        if !has_body {
            return Ok(OptionalJson(T::default()));
        }
        AppJson::<T>::from_request(req, state)
            .await
            .map(|AppJson(v)| OptionalJson(v))
    }
}
