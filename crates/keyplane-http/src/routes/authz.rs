//! Forward auth: `/v1/authz` answers whether a bearer credential may make a request.
//! 200 with identity headers, or 401/403 with an RFC 6750 challenge.

use crate::auth::{bearer, request_meta};
use crate::AppState;
use axum::extract::State;
use axum::http::{request::Parts, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Json, Router};
use keyplane_core::app::{Identity, Verdict};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/authz", any(authz))
        // Envoy's HTTP ext_authz sends the original path after a configured prefix.
        .route("/v1/authz/{*original}", any(authz))
}

fn header<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
}

/// The request being authorized: from nginx `auth_request` (`X-Original-URI`/`-Method`),
/// Traefik ForwardAuth (`X-Forwarded-Uri`/`-Method`) or Envoy ext_authz (the path after
/// `/v1/authz`, with the request's own method).
pub fn original_request(parts: &Parts) -> Option<(String, String)> {
    if let Some(uri) = header(parts, "x-original-uri") {
        let method = header(parts, "x-original-method").unwrap_or("GET");
        return Some((method.to_string(), uri.to_string()));
    }
    if let Some(uri) = header(parts, "x-forwarded-uri") {
        let method = header(parts, "x-forwarded-method").unwrap_or(parts.method.as_str());
        return Some((method.to_string(), uri.to_string()));
    }
    let rest = parts.uri.path().strip_prefix("/v1/authz")?;
    rest.starts_with('/').then(|| {
        let path = match parts.uri.query() {
            Some(q) => format!("{rest}?{q}"),
            None => rest.to_string(),
        };
        (parts.method.to_string(), path)
    })
}

pub const SUBJECT: HeaderName = HeaderName::from_static("x-keyplane-subject");
pub const SCOPES: HeaderName = HeaderName::from_static("x-keyplane-scopes");
pub const ORG: HeaderName = HeaderName::from_static("x-keyplane-org");
pub const PROJECT: HeaderName = HeaderName::from_static("x-keyplane-project");
pub const CREDENTIAL_ID: HeaderName = HeaderName::from_static("x-keyplane-credential-id");

/// Required scopes from `?scope=a%20b` (space-delimited, may repeat).
fn required_scopes(parts: &Parts) -> Vec<String> {
    let Some(q) = parts.uri.query() else {
        return vec![];
    };
    let mut out = Vec::new();
    for pair in q.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == "scope" {
            let decoded = crate::auth::form_unescape(v);
            out.extend(
                decoded
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
            );
        }
    }
    out
}

/// Check a bearer credential (API key or access token) and the scopes the request needs.
#[utoipa::path(get, path = "/v1/authz", tag = "forward-auth",
    params(("scope" = Option<String>, Query, description = "space-delimited scopes the request needs")),
    responses(
        (status = 200, description = "allowed; identity in X-Keyplane-Subject, -Scopes, -Org, -Project, -Credential-Id"),
        (status = 401, description = "missing, malformed, unknown, revoked or expired credential"),
        (status = 403, description = "the credential lacks a required scope")),
    security(("bearer" = [])))]
pub async fn authz(State(s): State<AppState>, req: axum::extract::Request) -> Response {
    let (parts, _body) = req.into_parts();
    let meta = request_meta(&parts);
    let token = bearer(&parts.headers);
    let explicit =
        parts.uri.path() == "/v1/authz" && parts.uri.query().is_some_and(|q| q.contains("scope="));
    let (verdict, required) = match (explicit, original_request(&parts)) {
        (false, Some((method, path))) => s.app.check_request(token, &method, &path, &meta).await,
        _ => {
            let required = required_scopes(&parts);
            let refs: Vec<&str> = required.iter().map(String::as_str).collect();
            (s.app.check(token, &refs, &meta).await, required)
        }
    };
    respond(verdict, &required)
}

/// The answer for a verdict: 200 with identity headers, or 401/403 with an RFC 6750 challenge.
pub fn respond(verdict: Verdict, required: &[String]) -> Response {
    match verdict {
        Verdict::Allow(k) => allowed(&k),
        Verdict::NoRule(_) => challenge(
            StatusCode::FORBIDDEN,
            "Bearer realm=\"keyplane\", error=\"insufficient_scope\", error_description=\"no route rule allows this request\"".into(),
            "insufficient_scope",
            "no route rule allows this request",
        ),
        Verdict::Refuse(r) => challenge(
            StatusCode::UNAUTHORIZED,
            format!("Bearer realm=\"keyplane\", error=\"invalid_token\", error_description=\"{}\"", r.describe()),
            "invalid_token",
            r.describe(),
        ),
        Verdict::InsufficientScope(_) => challenge(
            StatusCode::FORBIDDEN,
            format!(
                "Bearer realm=\"keyplane\", error=\"insufficient_scope\", error_description=\"the credential lacks a required scope\", scope=\"{}\"",
                required.join(" ")
            ),
            "insufficient_scope",
            "the credential lacks a required scope",
        ),
    }
}

/// The identity headers of an allowed credential.
pub fn identity_headers(k: &Identity) -> [(HeaderName, &str); 5] {
    [
        (SUBJECT, k.subject()),
        (SCOPES, k.scopes_joined()),
        (ORG, k.org_id()),
        (PROJECT, k.project_id()),
        (CREDENTIAL_ID, k.credential_id()),
    ]
}

fn allowed(k: &Identity) -> Response {
    let mut resp = StatusCode::OK.into_response();
    let h = resp.headers_mut();
    for (name, value) in identity_headers(k) {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    }
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
