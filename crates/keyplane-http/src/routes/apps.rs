//! Apps that act for people (the authorization-code grant): the authorization endpoint (which
//! sends the browser to the console's consent page), RFC 7591 dynamic registration, and the
//! management API's connected apps (grants) and apps.

use crate::auth::{bearer, request_meta, Caller};
use crate::dto::{rfc3339, rfc3339_opt, List};
use crate::error::{ApiResult, AppJson, AppPath, AppQuery};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use keyplane_core::domain::apps::AppClient;
use keyplane_core::domain::authcode::Grant;
use keyplane_core::usecase::grants::RegisterError;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/oauth-grants", get(grants_list))
        .route("/v1/oauth-grants/{id}/revoke", post(grant_revoke))
        .route("/v1/oauth-apps", get(apps_list))
        .route("/v1/oauth-apps/block", post(app_block))
        .route("/v1/oauth-apps/unblock", post(app_unblock))
}

/// The authorization endpoint (RFC 6749 §3.1): the person's browser is sent on to the console's
/// consent page with the same parameters, where their console session is.
#[utoipa::path(get, path = "/v1/oauth/authorize", tag = "oauth", operation_id = "oauth_authorize",
    responses((status = 303, description = "To the console's consent page (`/console/authorize`), which signs the person in, asks, and sends them back to the app's redirect URI with `code`, `state` and `iss` (RFC 9207), or an error")))]
pub async fn authorize(req: Request) -> Response {
    let query = req.uri().query().unwrap_or("");
    Redirect::to(&format!("/console/authorize?{query}")).into_response()
}

/// RFC 7591 §3.2.1: the registered app.
#[derive(Debug, Serialize, ToSchema)]
pub struct RegisteredApp {
    pub client_id: String,
    /// Seconds since the epoch.
    pub client_id_issued_at: i64,
    /// A confidential app's secret: shown once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// 0: the secret does not expire.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret_expires_at: Option<i64>,
    pub client_name: String,
    pub redirect_uris: Vec<String>,
    pub token_endpoint_auth_method: String,
    pub grant_types: Vec<String>,
    pub response_types: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logo_uri: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_uri: Option<String>,
}

/// RFC 7591 dynamic client registration: an app (an MCP client, say) registers its redirect
/// URIs and gets a `client_id`. Off unless the operator turns it on (`oauth.registration`:
/// `open`, or `token`, which wants the initial access token as a bearer token).
#[utoipa::path(post, path = "/v1/oauth/register", tag = "oauth", operation_id = "oauth_register",
    request_body(content = Object, description = "RFC 7591 client metadata: `redirect_uris` (https, or http on a loopback address), `token_endpoint_auth_method` (`none`, `client_secret_basic`, `client_secret_post`), `client_name`, `logo_uri`, `client_uri`, `grant_types` (`authorization_code`, `refresh_token`)"),
    responses((status = 201, body = RegisteredApp),
        (status = 400, description = "`invalid_redirect_uri` or `invalid_client_metadata` (RFC 7591 §3.2.2), or a body that is not JSON", body = crate::routes::oauth::OAuthErrorBody),
        (status = 401, description = "`invalid_token`: registration wants the initial access token (`oauth.registration = \"token\"`)", body = crate::routes::oauth::OAuthErrorBody),
        (status = 404, description = "`invalid_request`: registration is off on this deployment", body = crate::routes::oauth::OAuthErrorBody),
        (status = 413, description = "`invalid_client_metadata`: the body is larger than 16 KiB", body = crate::routes::oauth::OAuthErrorBody),
        (status = 429, description = "`invalid_request`: more than 10 registrations from this address within a minute; `Retry-After` says when to try again", body = crate::routes::oauth::OAuthErrorBody)))]
pub async fn register(State(s): State<AppState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let meta = request_meta(&parts);
    let token = bearer(&parts.headers).map(str::to_string);
    let json_body = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    let bytes: Bytes = match axum::body::to_bytes(body, 16 * 1024).await {
        Ok(b) => b,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_client_metadata",
                "client metadata is at most 5 KiB",
            )
        }
    };
    if !json_body {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_client_metadata",
            "send the client metadata as application/json",
        );
    }
    match s.app.app_register(&bytes, token.as_deref(), &meta).await {
        Ok((app, secret)) => {
            let body = RegisteredApp {
                client_id: app.client_id.clone(),
                client_id_issued_at: app.created_at.unix_timestamp(),
                client_secret_expires_at: secret.as_ref().map(|_| 0),
                client_secret: secret.map(|s| s.expose().to_string()),
                client_name: app.name.clone(),
                redirect_uris: app.redirect_uris.clone(),
                token_endpoint_auth_method: app.auth_method.as_str().into(),
                grant_types: vec!["authorization_code".into(), "refresh_token".into()],
                response_types: vec!["code".into()],
                logo_uri: app.logo_uri.clone(),
                client_uri: app.client_uri.clone(),
            };
            let mut r = (StatusCode::CREATED, Json(body)).into_response();
            let h = r.headers_mut();
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            r
        }
        Err(RegisterError::TooMany(wait)) => {
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "invalid_request",
                "too many registrations from this address: retry later",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(wait));
            r
        }
        Err(RegisterError::Off) => error(
            StatusCode::NOT_FOUND,
            "invalid_request",
            "dynamic client registration is turned off on this deployment",
        ),
        Err(RegisterError::Unauthorized) => {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "registration needs this deployment's initial access token as a bearer token",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
            r
        }
        Err(RegisterError::Metadata { code, description }) => {
            error(StatusCode::BAD_REQUEST, code, &description)
        }
        Err(RegisterError::Server) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "try again in a moment",
        ),
    }
}

fn error(status: StatusCode, code: &str, description: &str) -> Response {
    let mut r = (
        status,
        Json(json!({ "error": code, "error_description": description })),
    )
        .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

// ----- connected apps, through the management API -----

/// A person's grant to an app: their standing consent for one resource.
#[derive(Debug, Serialize, ToSchema)]
pub struct GrantView {
    pub id: String,
    pub org_id: String,
    pub member_id: String,
    pub client_id: String,
    pub resource: String,
    pub scopes: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
    pub last_used_at: Option<String>,
    /// `active` or `revoked`.
    pub status: &'static str,
    pub revoked_at: Option<String>,
    /// `member`, `manager`, `app_blocked`, `refresh_token_reuse`, `code_reuse`.
    pub revoked_reason: Option<String>,
}

impl From<Grant> for GrantView {
    fn from(g: Grant) -> Self {
        GrantView {
            status: if g.revoked_at.is_none() {
                "active"
            } else {
                "revoked"
            },
            id: g.id,
            org_id: g.org_id,
            member_id: g.member_id,
            client_id: g.client_id,
            resource: g.resource,
            scopes: g.scopes,
            created_at: rfc3339(g.created_at),
            updated_at: rfc3339(g.updated_at),
            last_used_at: rfc3339_opt(g.last_used_at),
            revoked_at: rfc3339_opt(g.revoked_at),
            revoked_reason: g.revoked_reason,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct GrantQuery {
    /// The organization (the admin key's choice; others act in their own).
    pub org_id: Option<String>,
    /// One member's grants (managers); a member always sees only their own.
    pub member_id: Option<String>,
}

/// Connected apps: a member's own grants; with `clients:manage`, the organization's.
#[utoipa::path(get, path = "/v1/oauth-grants", operation_id = "grants_list", tag = "connected apps", params(GrantQuery),
    responses((status = 200, body = List<GrantView>)), security(("bearer" = [])))]
pub async fn grants_list(
    State(s): State<AppState>,
    c: Caller,
    AppQuery(q): AppQuery<GrantQuery>,
) -> ApiResult<Json<List<GrantView>>> {
    let items = s
        .app
        .grants_list(&c.principal, q.org_id.as_deref(), q.member_id.as_deref())
        .await?;
    Ok(Json(List {
        items: items.into_iter().map(Into::into).collect(),
        next_cursor: None,
    }))
}

/// Revoke a grant: the app's tokens for it stop at once and its refresh tokens are gone.
#[utoipa::path(post, path = "/v1/oauth-grants/{id}/revoke", operation_id = "grants_revoke", tag = "connected apps",
    params(("id" = String, Path)), responses((status = 200, body = GrantView), (status = 404, body = crate::error::Problem)), security(("bearer" = [])))]
pub async fn grant_revoke(
    State(s): State<AppState>,
    c: Caller,
    AppPath(id): AppPath<String>,
) -> ApiResult<Json<GrantView>> {
    let g = s.app.grant_revoke(&c.principal, &id, &c.meta).await?;
    Ok(Json(g.into()))
}

/// An app keyplane knows: registered (RFC 7591) or by client ID metadata document.
#[derive(Debug, Serialize, ToSchema)]
pub struct AppView {
    pub client_id: String,
    /// `registered` or `metadata`.
    pub kind: &'static str,
    pub client_name: String,
    pub redirect_uris: Vec<String>,
    pub token_endpoint_auth_method: &'static str,
    pub logo_uri: Option<String>,
    pub client_uri: Option<String>,
    pub created_at: String,
    /// `active` or `blocked`.
    pub status: &'static str,
    pub blocked_at: Option<String>,
    pub blocked_by: Option<String>,
    /// The metadata as registered or fetched.
    #[schema(value_type = Object)]
    pub metadata: Value,
}

impl From<AppClient> for AppView {
    fn from(a: AppClient) -> Self {
        AppView {
            status: if a.blocked_at.is_none() {
                "active"
            } else {
                "blocked"
            },
            client_id: a.client_id,
            kind: a.kind.as_str(),
            client_name: a.name,
            redirect_uris: a.redirect_uris,
            token_endpoint_auth_method: a.auth_method.as_str(),
            logo_uri: a.logo_uri,
            client_uri: a.client_uri,
            created_at: rfc3339(a.created_at),
            blocked_at: rfc3339_opt(a.blocked_at),
            blocked_by: a.blocked_by,
            metadata: a.document,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AppQuery2 {
    /// Apps after this client id (the previous page's last).
    pub cursor: Option<String>,
    /// At most this many (1 to 200; 50).
    pub limit: Option<i64>,
}

/// The apps keyplane knows (admin key only: an app is the deployment's).
#[utoipa::path(get, path = "/v1/oauth-apps", operation_id = "apps_list", tag = "connected apps", params(AppQuery2),
    responses((status = 200, body = List<AppView>)), security(("bearer" = [])))]
pub async fn apps_list(
    State(s): State<AppState>,
    c: Caller,
    AppQuery(q): AppQuery<AppQuery2>,
) -> ApiResult<Json<List<AppView>>> {
    let limit = q.limit.unwrap_or(50).clamp(1, 200);
    let items = s
        .app
        .apps_list(&c.principal, q.cursor.as_deref(), limit)
        .await?;
    let next_cursor = (items.len() as i64 == limit)
        .then(|| items.last().map(|a| a.client_id.clone()))
        .flatten();
    Ok(Json(List {
        items: items.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}

/// Which app (its client id may be a URL, so it travels in the body).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppRef {
    pub client_id: String,
}

/// Block an app: it authenticates nowhere, and every grant it holds is revoked (admin key only).
#[utoipa::path(post, path = "/v1/oauth-apps/block", operation_id = "apps_block", tag = "connected apps", request_body = AppRef,
    responses((status = 200, body = AppView), (status = 404, body = crate::error::Problem)), security(("bearer" = [])))]
pub async fn app_block(
    State(s): State<AppState>,
    c: Caller,
    AppJson(b): AppJson<AppRef>,
) -> ApiResult<Json<AppView>> {
    let a = s
        .app
        .app_set_blocked(&c.principal, &b.client_id, true, &c.meta)
        .await?;
    Ok(Json(a.into()))
}

/// Unblock an app (the grants revoked when it was blocked stay revoked).
#[utoipa::path(post, path = "/v1/oauth-apps/unblock", operation_id = "apps_unblock", tag = "connected apps", request_body = AppRef,
    responses((status = 200, body = AppView), (status = 404, body = crate::error::Problem)), security(("bearer" = [])))]
pub async fn app_unblock(
    State(s): State<AppState>,
    c: Caller,
    AppJson(b): AppJson<AppRef>,
) -> ApiResult<Json<AppView>> {
    let a = s
        .app
        .app_set_blocked(&c.principal, &b.client_id, false, &c.meta)
        .await?;
    Ok(Json(a.into()))
}
