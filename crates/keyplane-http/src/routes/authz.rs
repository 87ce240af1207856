//! Forward auth: `/v1/authz` answers whether a bearer credential may make a request.
//! 200 with identity headers, or 401/403 with an RFC 6750 challenge.

use crate::auth::request_meta;
use crate::error::ApiError;
use crate::observe::{mark_refused, Reason};
use crate::AppState;
use axum::body::Body;
use axum::extract::State;
use axum::http::{request::Parts, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Json, Router};
use keyplane_core::domain::path::{NormalPath, PathError};
use keyplane_core::domain::request::Refusal;
use keyplane_core::domain::resource::ProtectedResource;
use keyplane_core::usecase::check::{Identity, LimitState, Verdict};
use std::borrow::Cow;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/authz", any(authz))
        // Envoy's HTTP ext_authz sends the original path after a configured prefix.
        .route("/v1/authz/{*original}", any(authz))
}

fn header<'a>(parts: &'a Parts, name: &HeaderName) -> Option<&'a str> {
    parts
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
}

const ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
const ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
const FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");

/// Why `/v1/authz` cannot tell which request it is asked about: answered 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ambiguous {
    /// The original path is ambiguous (see `keyplane_core::domain::path`).
    Path(PathError),
    /// Two forms (nginx's, Traefik's headers, Envoy's path) name different requests: one of
    /// them came from the caller, not the proxy.
    Conflict,
}

impl IntoResponse for Ambiguous {
    fn into_response(self) -> Response {
        match self {
            Ambiguous::Path(e) => ambiguous_path(e),
            Ambiguous::Conflict => mark_refused(
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "ambiguous-request",
                    "Ambiguous original request",
                    "X-Original-URI/-Method, X-Forwarded-Uri/-Method and the path after /v1/authz name different requests",
                )
                .into_response(),
                Reason::AmbiguousRequest,
            ),
        }
    }
}

/// 400 problem+json for a path that could be read more than one way.
pub fn ambiguous_path(e: PathError) -> Response {
    mark_refused(
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "ambiguous-path",
            "Ambiguous request path",
            e.to_string(),
        )
        .into_response(),
        Reason::AmbiguousRequest,
    )
}

/// The path of a header's request target (`/path?query`), normalized. The query is not looked
/// at, whatever bytes it holds; bytes outside ASCII in the path are refused.
fn header_path(v: &HeaderValue) -> Result<NormalPath<'_>, PathError> {
    let bytes = v.as_bytes();
    let path = match bytes.iter().position(|b| *b == b'?') {
        Some(i) => &bytes[..i],
        None => bytes,
    };
    NormalPath::parse(std::str::from_utf8(path).map_err(|_| PathError::NonAscii)?)
}

/// The request being authorized, with its path normalized: from nginx `auth_request`
/// (`X-Original-URI`/`-Method`), Traefik ForwardAuth (`X-Forwarded-Uri`/`-Method`) or Envoy
/// ext_authz (the path after `/v1/authz`, with the request's own method). `None` when nothing
/// names one. A header that is present is never skipped: an unreadable or ambiguous path is an
/// error, and so are two forms that name different requests (a proxy sets one; the other came
/// from the caller).
pub fn original_request(parts: &Parts) -> Option<Result<(&str, NormalPath<'_>), Ambiguous>> {
    let envoy = parts
        .uri
        .path()
        .strip_prefix("/v1/authz")
        .filter(|rest| rest.starts_with('/'));
    let forms = [
        parts.headers.get(ORIGINAL_URI).map(|uri| {
            (
                header(parts, &ORIGINAL_METHOD).unwrap_or("GET"),
                header_path(uri),
            )
        }),
        parts.headers.get(FORWARDED_URI).map(|uri| {
            (
                header(parts, &FORWARDED_METHOD).unwrap_or(parts.method.as_str()),
                header_path(uri),
            )
        }),
        envoy.map(|rest| (parts.method.as_str(), NormalPath::parse(rest))),
    ];
    let mut found: Option<(&str, NormalPath<'_>)> = None;
    for (method, path) in forms.into_iter().flatten() {
        let path = match path {
            Ok(p) => p,
            Err(e) => return Some(Err(Ambiguous::Path(e))),
        };
        match &found {
            None => found = Some((method, path)),
            Some((m, p)) => {
                if !m.eq_ignore_ascii_case(method) || *p != path {
                    return Some(Err(Ambiguous::Conflict));
                }
            }
        }
    }
    found.map(Ok)
}

pub const SUBJECT: HeaderName = HeaderName::from_static("x-keyplane-subject");
pub const SCOPES: HeaderName = HeaderName::from_static("x-keyplane-scopes");
pub const ORG: HeaderName = HeaderName::from_static("x-keyplane-org");
pub const PROJECT: HeaderName = HeaderName::from_static("x-keyplane-project");
pub const CREDENTIAL_ID: HeaderName = HeaderName::from_static("x-keyplane-credential-id");
/// Token exchange (RFC 8693): the client acting for the subject (the token's `act.sub`).
pub const ACTOR: HeaderName = HeaderName::from_static("x-keyplane-actor");

/// Required scopes from `?scope=a%20b` (space-delimited, may repeat): borrowed from the query
/// unless a value was escaped.
fn required_scopes(query: Option<&str>) -> Vec<Cow<'_, str>> {
    let mut out = Vec::new();
    for pair in query.unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k != "scope" {
            continue;
        }
        match crate::auth::form_unescape(v) {
            // A malformed escape names no scope anyone holds: the check fails closed (403).
            Err(_) => out.push(Cow::Borrowed(v)),
            Ok(Cow::Borrowed(v)) => {
                out.extend(v.split(' ').filter(|s| !s.is_empty()).map(Cow::Borrowed))
            }
            Ok(Cow::Owned(v)) => out.extend(
                v.split(' ')
                    .filter(|s| !s.is_empty())
                    .map(|s| Cow::Owned(s.to_string())),
            ),
        }
    }
    out
}

/// Check a bearer credential (API key or access token) and the scopes the request needs.
#[utoipa::path(get, path = "/v1/authz", operation_id = "authz_check", tag = "forward-auth",
    params(("scope" = Option<String>, Query, description = "space-delimited scopes the request needs")),
    responses(
        (status = 200, description = "allowed; identity in X-Keyplane-Subject, -Scopes, -Org, -Project, -Credential-Id, and for a token obtained by token exchange X-Keyplane-Actor (the acting client; the subject is whom it acts for)"),
        (status = 400, description = "the original request's path is ambiguous (e.g. %2e%2e, %2F, a backslash, '//'), or two forms name different requests", content_type = "application/problem+json"),
        (status = 401, description = "missing, malformed, unknown, revoked or expired credential (`invalid_token`; the challenge has no error code when none was presented)", body = crate::routes::oauth::OAuthErrorBody, headers(("WWW-Authenticate" = String, description = "RFC 6750 §3 challenge, with `scope` (the scopes the request needs) and, when the forwarded URL is a service's resource, RFC 9728 `resource_metadata`"))),
        (status = 403, description = "the credential lacks a required scope, or no route rule allows the request (`insufficient_scope`)", body = crate::routes::oauth::OAuthErrorBody, headers(("WWW-Authenticate" = String, description = "RFC 6750 §3 challenge, with `scope` and RFC 9728 `resource_metadata` as for a 401"))),
        (status = 429, description = "the credential is over one of its rate limits (`rate_limited`)", body = crate::routes::oauth::OAuthErrorBody, headers(("Retry-After" = String, description = "seconds until the limit's window resets"), ("RateLimit-Policy" = String, description = "draft-ietf-httpapi-ratelimit-headers: the limit, e.g. `\"burst\";q=100;w=1`"), ("RateLimit" = String, description = "draft-ietf-httpapi-ratelimit-headers: its state, e.g. `\"burst\";r=0;t=1`")))),
    security(("bearer" = [])))]
pub async fn authz(State(s): State<AppState>, req: axum::extract::Request) -> Response {
    let (parts, _body) = req.into_parts();
    let meta = request_meta(&parts);
    let (is_dpop, token) = match crate::dpop::authorization(&parts.headers) {
        Some((d, t)) => (d, Some(t)),
        None => (false, None),
    };
    let explicit =
        parts.uri.path() == "/v1/authz" && parts.uri.query().is_some_and(|q| q.contains("scope="));
    if !explicit {
        match original_request(&parts) {
            Some(Ok((method, path))) => {
                let dpop = is_dpop
                    .then(|| crate::dpop::dpop_request(&parts.headers, method, &path, true, false));
                let (verdict, required) = s
                    .app
                    .check_request(token, dpop.as_ref(), method, &path, &meta)
                    .await;
                if matches!(verdict, Verdict::Allow(_)) {
                    return respond(verdict, &required, None);
                }
                let resource = resource_of(&s, &parts, Some(path.as_str())).await;
                return respond(verdict, &required, resource.as_ref());
            }
            Some(Err(e)) => return e.into_response(),
            None => {}
        }
    }
    let required = required_scopes(parts.uri.query());
    // Without an original request (the `?scope=` form), a DPoP proof can name only the
    // original URL in `X-Original-URL`, with the method in `X-Original-Method` (else GET).
    let original_url_path = parts
        .headers
        .get("x-original-url")
        .and_then(|v| v.to_str().ok())
        .and_then(|u| u.split_once("://"))
        .map(|(_, rest)| {
            let rest = rest.split(['?', '#']).next().unwrap_or("");
            rest.find('/').map_or("/", |i| &rest[i..])
        })
        .and_then(|p| NormalPath::parse(p).ok());
    let method = header(&parts, &ORIGINAL_METHOD).unwrap_or("GET");
    let dpop = match (is_dpop, &original_url_path) {
        (false, _) => None,
        (true, Some(p)) => Some(crate::dpop::dpop_request(
            &parts.headers,
            method,
            p,
            true,
            false,
        )),
        (true, None) => Some(keyplane_core::domain::dpop::DpopRequest {
            proofs: vec![],
            htm: method,
            htus: vec![],
        }),
    };
    let verdict = s.app.check(token, dpop.as_ref(), &required, &meta).await;
    if matches!(verdict, Verdict::Allow(_)) {
        return respond(verdict, &required, None);
    }
    // The `?scope=` form names the original request only in `X-Original-URL` or
    // `X-Forwarded-Uri`, if at all.
    let forwarded_path = parts
        .headers
        .get(FORWARDED_URI)
        .and_then(|v| header_path(v).ok());
    let path = original_url_path.as_ref().or(forwarded_path.as_ref());
    let resource = resource_of(&s, &parts, path.map(|p| p.as_str())).await;
    respond(verdict, &required, resource.as_ref())
}

/// The answer for a verdict: 200 with identity headers, or 401/403 with an RFC 6750 challenge
/// (marked with the refusal's reason for the request metrics). A refusal's challenge names the
/// scopes the route needs and, when the request's protected resource is known, its metadata URL
/// (RFC 9728 §5.1).
pub fn respond<S: AsRef<str>>(
    verdict: Verdict,
    required: &[S],
    resource: Option<&ProtectedResource>,
) -> Response {
    let reason = match &verdict {
        Verdict::Allow(k) => return allowed(k),
        Verdict::Dpop(_) => Reason::Dpop,
        Verdict::NoRule(_) => Reason::NoRule,
        Verdict::Refuse(r) => Reason::of_refusal(*r),
        Verdict::InsufficientScope(_) => Reason::InsufficientScope,
        Verdict::RateLimited(_, _) => Reason::RateLimited,
    };
    mark_refused(refusal(verdict, required, resource), reason)
}

fn refusal<S: AsRef<str>>(
    verdict: Verdict,
    required: &[S],
    resource: Option<&ProtectedResource>,
) -> Response {
    let params = |scope: &[S]| crate::protected_resource::challenge_params(resource, scope);
    match verdict {
        Verdict::Allow(k) => allowed(&k),
        Verdict::Dpop(r) => crate::dpop::challenge_with(&r, &params(required)),
        Verdict::NoRule(_) => challenge(
            StatusCode::FORBIDDEN,
            format!("Bearer realm=\"keyplane\", error=\"insufficient_scope\", error_description=\"no route rule allows this request\"{}", params(&[])),
            "insufficient_scope",
            "no route rule allows this request",
        ),
        // No credential (or not a bearer one): no error code (RFC 6750 §3.1).
        Verdict::Refuse(Refusal::Missing) => challenge(
            StatusCode::UNAUTHORIZED,
            format!("Bearer realm=\"keyplane\"{}", params(required)),
            "invalid_token",
            Refusal::Missing.describe(),
        ),
        Verdict::Refuse(r) => challenge(
            StatusCode::UNAUTHORIZED,
            format!(
                "Bearer realm=\"keyplane\", error=\"invalid_token\", error_description=\"{}\"{}",
                r.describe(),
                params(required)
            ),
            "invalid_token",
            r.describe(),
        ),
        Verdict::InsufficientScope(_) => challenge(
            StatusCode::FORBIDDEN,
            format!(
                "Bearer realm=\"keyplane\", error=\"insufficient_scope\", error_description=\"the credential lacks a required scope\"{}",
                params(required)
            ),
            "insufficient_scope",
            "the credential lacks a required scope",
        ),
        Verdict::RateLimited(_, state) => rate_limited(&state),
    }
}

pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// 429 for a credential over one of its rate limits, with `Retry-After` (RFC 9110 §10.2.3)
/// and the `RateLimit`/`RateLimit-Policy` fields of draft-ietf-httpapi-ratelimit-headers
/// (`RateLimit-Policy: "burst";q=100;w=1`, `RateLimit: "burst";r=0;t=1`).
pub fn rate_limited(state: &LimitState) -> Response {
    let mut resp = (
        StatusCode::TOO_MANY_REQUESTS,
        Json(serde_json::json!({
            "error": "rate_limited",
            "error_description": format!("the credential is over its rate limit `{}`; retry in {} s", state.name, state.reset_seconds),
        })),
    )
        .into_response();
    let h = resp.headers_mut();
    h.insert(
        axum::http::header::RETRY_AFTER,
        HeaderValue::from(state.reset_seconds),
    );
    for (name, value) in ratelimit_headers(state) {
        h.insert(name, value);
    }
    resp
}

/// The `RateLimit-Policy` and `RateLimit` fields for one limit's state.
pub fn ratelimit_headers(state: &LimitState) -> [(HeaderName, HeaderValue); 2] {
    // Names are `[A-Za-z0-9_-]` (checked when set), so they quote as they are.
    let text = |s: String| HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static(""));
    [
        (
            RATELIMIT_POLICY,
            text(format!(
                "\"{}\";q={};w={}",
                state.name, state.limit, state.window_seconds
            )),
        ),
        (
            RATELIMIT,
            text(format!(
                "\"{}\";r={};t={}",
                state.name, state.remaining, state.reset_seconds
            )),
        ),
    ]
}

/// The scheme (when the proxy said it) and host of the request being authorized: from
/// `X-Original-URL` (nginx), else `X-Forwarded-Proto`/`-Host` (Traefik, nginx), else `Host`
/// (Envoy).
fn original_origin(parts: &Parts) -> (Option<&str>, Option<&str>) {
    let first = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(',').next().unwrap_or("").trim())
            .filter(|v| !v.is_empty())
    };
    if let Some((scheme, rest)) = first("x-original-url").and_then(|u| u.split_once("://")) {
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        if !host.is_empty() {
            return (Some(scheme), Some(host));
        }
    }
    (
        first("x-forwarded-proto"),
        first("x-forwarded-host").or_else(|| first("host")),
    )
}

/// The protected resource the refused request was for: its origin (see [`original_origin`])
/// and normalized path matched against every service's resource URIs. `None` when the path is
/// not known or nothing matches.
async fn resource_of(s: &AppState, parts: &Parts, path: Option<&str>) -> Option<ProtectedResource> {
    let path = path?;
    let (scheme, host) = original_origin(parts);
    s.app.resource_for_request(scheme, host?, path).await
}

/// The identity headers of an allowed credential. An API key's organization, project and
/// scopes come ready-made from the cache (shared bytes, no copy).
pub fn identity_headers(k: &Identity) -> impl Iterator<Item = (HeaderName, HeaderValue)> {
    let text = |v: &str| HeaderValue::from_str(v).ok();
    let (scopes, org, project) = match k {
        Identity::Key(key) => (
            Some(key.group.scopes_value.clone()),
            Some(key.group.org_value.clone()),
            Some(key.group.project_value.clone()),
        ),
        Identity::Token(_) => (
            text(k.scopes_joined()),
            text(k.org_id()),
            text(k.project_id()),
        ),
    };
    [
        (SUBJECT, text(k.subject())),
        (SCOPES, scopes),
        (ORG, org),
        (PROJECT, project),
        (CREDENTIAL_ID, text(k.credential_id())),
        (ACTOR, k.actor().and_then(text)),
    ]
    .into_iter()
    .filter_map(|(name, value)| Some((name, value?)))
}

fn allowed(k: &Identity) -> Response {
    let mut headers = HeaderMap::with_capacity(8);
    for (name, value) in identity_headers(k) {
        headers.insert(name, value);
    }
    let mut resp = Response::new(Body::empty());
    *resp.headers_mut() = headers;
    resp
}

fn challenge(status: StatusCode, header: String, error: &str, description: &str) -> Response {
    let mut resp = (
        status,
        Json(serde_json::json!({ "error": error, "error_description": description })),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&header) {
        resp.headers_mut()
            .insert(axum::http::header::WWW_AUTHENTICATE, v);
    }
    resp
}
