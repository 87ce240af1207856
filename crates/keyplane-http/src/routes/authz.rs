//! Forward auth: `/v1/authz` answers whether a bearer credential may make a request.
//! 200 with identity headers, or 401/403 with an RFC 6750 challenge.

use crate::auth::{bearer, request_meta};
use crate::AppState;
use axum::extract::{FromRequestParts, State};
use axum::http::{request::Parts, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Json, Router};
use keyplane_core::app::{Identity, Verdict};

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/authz", any(authz))
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
    let (mut parts, _body) = req.into_parts();
    let _ = axum::extract::ConnectInfo::<std::net::SocketAddr>::from_request_parts(&mut parts, &s)
        .await;
    let meta = request_meta(&parts);
    let required = required_scopes(&parts);
    let required_refs: Vec<&str> = required.iter().map(String::as_str).collect();
    match s.app.check(bearer(&parts.headers), &required_refs, &meta).await {
        Verdict::Allow(k) => allowed(&k),
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

fn allowed(k: &Identity) -> Response {
    let mut resp = StatusCode::OK.into_response();
    let h = resp.headers_mut();
    for (name, value) in [
        (SUBJECT, k.subject()),
        (SCOPES, k.scopes_joined()),
        (ORG, k.org_id()),
        (PROJECT, k.project_id()),
        (CREDENTIAL_ID, k.credential_id()),
    ] {
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
