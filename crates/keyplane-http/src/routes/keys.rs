//! API keys: `/v1/api-keys` and seed 002's `/auth/api_keys`.

use crate::auth::Caller;
use crate::dto::*;
use crate::error::{ApiResult, AppJson, AppPath, AppQuery, OptionalJson};
use crate::etag::{IfMatch, Tagged};
use crate::no_store::NoStore;
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use keyplane_core::usecase::api_keys::{ApiKeyPatch, Expiry, NewApiKey};
use serde::Deserialize;
use utoipa::IntoParams;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/api-keys", post(create).get(list))
        .route(
            "/v1/api-keys/{id}",
            get(get_one).patch(update).delete(delete_key),
        )
        .route("/v1/api-keys/{id}/copy", post(copy))
        .route("/v1/api-keys/{id}/revoke", post(revoke))
        .route("/v1/api-keys/{id}/regenerate", post(regenerate))
        .route("/auth/api_keys", get(seed_list).post(seed_create))
        .route("/auth/api_keys/deactivate/{id}", delete(seed_deactivate))
}

const SHOWN_ONCE: &str =
    "Store this key now: it is shown only once. keyplane keeps only a keyed hash of it.";

fn with_secret(
    state: &AppState,
    k: keyplane_core::domain::model::ApiKey,
    secret: keyplane_core::domain::secret::SecretString,
) -> ApiKeyWithSecret {
    ApiKeyWithSecret {
        api_key: ApiKeyView::new(k, state.app.now()),
        key: secret.expose().to_string(),
        message: SHOWN_ONCE.into(),
    }
}

fn grace(seconds: Option<i64>) -> Option<time::Duration> {
    seconds.map(time::Duration::seconds)
}

/// Create an API key. The secret is in this response only.
#[utoipa::path(post, path = "/v1/api-keys", operation_id = "api_keys_create", tag = "api-keys", request_body = CreateApiKey,
    responses((status = 201, body = ApiKeyWithSecret, headers(("Cache-Control" = String, description = "`no-store`: the answer carries a secret"), ("Pragma" = String, description = "`no-cache`"))), (status = 409, body = crate::error::Problem, description = "limit of active keys reached"), (status = 422, body = crate::error::Problem)),
    security(("bearer" = [])))]
pub async fn create(
    State(s): State<AppState>,
    c: Caller,
    AppJson(b): AppJson<CreateApiKey>,
) -> ApiResult<NoStore<(StatusCode, Json<ApiKeyWithSecret>)>> {
    let expires_at = match b.expires_at {
        None => Expiry::Default,
        Some(None) => Expiry::Never,
        Some(Some(t)) => Expiry::At(parse_time("expires_at", &t)?),
    };
    let input = NewApiKey {
        org_id: b.org_id,
        project_id: b.project_id,
        owner_member_id: b.owner_member_id,
        name: b.name,
        description: b.description,
        scopes: b.scopes,
        roles: b.roles,
        expires_at,
        default_for_service: b.default_for_service,
        service_token: false,
        may_act: b.may_act,
        rate_limits: rate_limits_in(b.rate_limits)?,
    };
    let (k, secret) = s.app.api_key_create(&c.principal, input, &c.meta).await?;
    Ok(NoStore((
        StatusCode::CREATED,
        Json(with_secret(&s, k, secret)),
    )))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct KeyListQuery {
    pub org_id: Option<String>,
    pub project_id: Option<String>,
    /// Include revoked keys.
    #[serde(default)]
    pub include_inactive: bool,
    pub cursor: Option<String>,
    /// 1 to 200; 50 by default.
    pub limit: Option<i64>,
}

/// List API keys (never their secrets), oldest first, by cursor.
#[utoipa::path(get, path = "/v1/api-keys", operation_id = "api_keys_list", tag = "api-keys", params(KeyListQuery),
    responses((status = 200, body = List<ApiKeyView>)), security(("bearer" = [])))]
pub async fn list(
    State(s): State<AppState>,
    c: Caller,
    AppQuery(q): AppQuery<KeyListQuery>,
) -> ApiResult<Json<List<ApiKeyView>>> {
    let page = s
        .app
        .api_key_list(
            &c.principal,
            q.org_id.as_deref(),
            q.project_id.as_deref(),
            q.include_inactive,
            q.cursor.as_deref(),
            q.limit,
        )
        .await?;
    let now = s.app.now();
    Ok(Json(List {
        items: page
            .items
            .into_iter()
            .map(|k| ApiKeyView::new(k, now))
            .collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Get one API key.
#[utoipa::path(get, path = "/v1/api-keys/{id}", operation_id = "api_keys_get", tag = "api-keys", params(("id" = String, Path)),
    responses((status = 200, body = ApiKeyView, headers(("ETag" = String, description = "The key's version, for If-Match"))), (status = 404, body = crate::error::Problem)), security(("bearer" = [])))]
pub async fn get_one(
    State(s): State<AppState>,
    c: Caller,
    AppPath(id): AppPath<String>,
) -> ApiResult<Tagged<Json<ApiKeyView>>> {
    let k = s.app.api_key_get(&c.principal, &id).await?;
    Ok(Tagged(k.version, Json(ApiKeyView::new(k, s.app.now()))))
}

/// Edit name, description, scopes, roles, expiry or the default mark.
#[utoipa::path(patch, path = "/v1/api-keys/{id}", operation_id = "api_keys_update", tag = "api-keys", params(("id" = String, Path), ("If-Match" = Option<String>, Header, description = "Only if the resource is still at this entity tag (its `ETag`); otherwise 412")), request_body = UpdateApiKey,
    responses((status = 200, body = ApiKeyView, headers(("ETag" = String))), (status = 403, body = crate::error::Problem, description = "beyond the caller's ceiling"), (status = 404, body = crate::error::Problem), (status = 412, body = crate::error::Problem, description = "If-Match names an older version")), security(("bearer" = [])))]
pub async fn update(
    State(s): State<AppState>,
    c: Caller,
    AppPath(id): AppPath<String>,
    IfMatch(if_match): IfMatch,
    AppJson(b): AppJson<UpdateApiKey>,
) -> ApiResult<Tagged<Json<ApiKeyView>>> {
    let expires_at = match b.expires_at {
        None => None,
        Some(None) => Some(None),
        Some(Some(t)) => Some(Some(parse_time("expires_at", &t)?)),
    };
    let patch = ApiKeyPatch {
        name: b.name,
        description: b.description,
        scopes: b.scopes,
        roles: b.roles,
        expires_at,
        default_for_service: b.default_for_service,
        may_act: b.may_act,
        rate_limits: b.rate_limits.map(rate_limits_in).transpose()?,
    };
    let k = s
        .app
        .api_key_update(&c.principal, &id, patch, if_match, &c.meta)
        .await?;
    Ok(Tagged(k.version, Json(ApiKeyView::new(k, s.app.now()))))
}

/// Revoke a key (idempotent). It is refused from the very next request.
#[utoipa::path(post, path = "/v1/api-keys/{id}/revoke", operation_id = "api_keys_revoke", tag = "api-keys", params(("id" = String, Path), ("If-Match" = Option<String>, Header, description = "Only if the resource is still at this entity tag (its `ETag`); otherwise 412")),
    responses((status = 200, body = ApiKeyView), (status = 403, body = crate::error::Problem, description = "an owner's key"), (status = 404, body = crate::error::Problem), (status = 412, body = crate::error::Problem, description = "If-Match names an older version")), security(("bearer" = [])))]
pub async fn revoke(
    State(s): State<AppState>,
    c: Caller,
    AppPath(id): AppPath<String>,
    IfMatch(if_match): IfMatch,
) -> ApiResult<Tagged<Json<ApiKeyView>>> {
    let k = s
        .app
        .api_key_revoke(&c.principal, &id, if_match, &c.meta)
        .await?;
    Ok(Tagged(k.version, Json(ApiKeyView::new(k, s.app.now()))))
}

/// Revoke a key, as `POST /v1/api-keys/{id}/revoke` does (idempotent; the key stays listed as
/// revoked).
#[utoipa::path(delete, path = "/v1/api-keys/{id}", tag = "api-keys", operation_id = "api_keys_delete", params(("id" = String, Path), ("If-Match" = Option<String>, Header, description = "Only if the resource is still at this entity tag (its `ETag`); otherwise 412")),
    responses((status = 200, body = ApiKeyView, headers(("ETag" = String))), (status = 403, body = crate::error::Problem, description = "an owner's key"), (status = 404, body = crate::error::Problem), (status = 412, body = crate::error::Problem, description = "If-Match names an older version")), security(("bearer" = [])))]
pub async fn delete_key(
    s: State<AppState>,
    c: Caller,
    id: AppPath<String>,
    if_match: IfMatch,
) -> ApiResult<Tagged<Json<ApiKeyView>>> {
    revoke(s, c, id, if_match).await
}

/// Create a new key with the same configuration (and a new secret).
#[utoipa::path(post, path = "/v1/api-keys/{id}/copy", operation_id = "api_keys_copy", tag = "api-keys", params(("id" = String, Path)), request_body = Option<CopyApiKey>,
    responses((status = 201, body = ApiKeyWithSecret, headers(("Cache-Control" = String, description = "`no-store`: the answer carries a secret"), ("Pragma" = String, description = "`no-cache`")))), security(("bearer" = [])))]
pub async fn copy(
    State(s): State<AppState>,
    c: Caller,
    AppPath(id): AppPath<String>,
    OptionalJson(b): OptionalJson<CopyApiKey>,
) -> ApiResult<NoStore<(StatusCode, Json<ApiKeyWithSecret>)>> {
    let (k, secret) = s
        .app
        .api_key_copy(&c.principal, &id, b.name, &c.meta)
        .await?;
    Ok(NoStore((
        StatusCode::CREATED,
        Json(with_secret(&s, k, secret)),
    )))
}

/// Give the key a new secret; the old one is refused at once or after the grace period.
#[utoipa::path(post, path = "/v1/api-keys/{id}/regenerate", operation_id = "api_keys_regenerate", tag = "api-keys", params(("id" = String, Path), ("If-Match" = Option<String>, Header, description = "Only if the resource is still at this entity tag (its `ETag`); otherwise 412")), request_body = Option<RegenerateApiKey>,
    responses((status = 200, body = ApiKeyWithSecret, headers(("ETag" = String), ("Cache-Control" = String, description = "`no-store`: the answer carries a secret"), ("Pragma" = String, description = "`no-cache`"))), (status = 403, body = crate::error::Problem, description = "beyond the caller's ceiling"), (status = 412, body = crate::error::Problem, description = "If-Match names an older version")), security(("bearer" = [])))]
pub async fn regenerate(
    State(s): State<AppState>,
    c: Caller,
    AppPath(id): AppPath<String>,
    IfMatch(if_match): IfMatch,
    OptionalJson(b): OptionalJson<RegenerateApiKey>,
) -> ApiResult<NoStore<Tagged<Json<ApiKeyWithSecret>>>> {
    let (k, secret) = s
        .app
        .api_key_regenerate(
            &c.principal,
            &id,
            grace(b.grace_period_seconds),
            if_match,
            &c.meta,
        )
        .await?;
    Ok(NoStore(Tagged(k.version, Json(with_secret(&s, k, secret)))))
}

/// Seed 002: the organization's keys (never their secrets).
#[utoipa::path(get, path = "/auth/api_keys", operation_id = "seed_api_keys_list", tag = "seed-002", responses((status = 200, body = Vec<ApiKeyView>)), security(("bearer" = [])))]
pub async fn seed_list(State(s): State<AppState>, c: Caller) -> ApiResult<Json<Vec<ApiKeyView>>> {
    let now = s.app.now();
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = s
            .app
            .api_key_list(&c.principal, None, None, true, cursor.as_deref(), Some(200))
            .await?;
        out.extend(page.items.into_iter().map(|k| ApiKeyView::new(k, now)));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    Ok(Json(out))
}

/// Seed 002: create a key with `description` and `roles`, or regenerate the key named by `id`.
#[utoipa::path(post, path = "/auth/api_keys", operation_id = "seed_api_keys_create", tag = "seed-002", request_body = Option<SeedCreateApiKey>,
    responses((status = 201, body = ApiKeyWithSecret, headers(("Cache-Control" = String, description = "`no-store`: the answer carries a secret"), ("Pragma" = String, description = "`no-cache`"))), (status = 200, body = ApiKeyWithSecret, description = "regenerated", headers(("Cache-Control" = String, description = "`no-store`: the answer carries a secret"), ("Pragma" = String, description = "`no-cache`")))), security(("bearer" = [])))]
pub async fn seed_create(
    State(s): State<AppState>,
    c: Caller,
    OptionalJson(b): OptionalJson<SeedCreateApiKey>,
) -> ApiResult<NoStore<(StatusCode, Json<ApiKeyWithSecret>)>> {
    if let Some(id) = b.id {
        let (k, secret) = s
            .app
            .api_key_regenerate(
                &c.principal,
                &id,
                grace(b.grace_period_seconds),
                None,
                &c.meta,
            )
            .await?;
        let mut out = with_secret(&s, k, secret);
        out.message =
            format!("API key regenerated: the previous secret no longer works. {SHOWN_ONCE}");
        return Ok(NoStore((StatusCode::OK, Json(out))));
    }
    let input = NewApiKey {
        name: b.name,
        description: b.description,
        roles: b.roles,
        scopes: b.scopes,
        ..Default::default()
    };
    let (k, secret) = s.app.api_key_create(&c.principal, input, &c.meta).await?;
    Ok(NoStore((
        StatusCode::CREATED,
        Json(with_secret(&s, k, secret)),
    )))
}

/// Seed 002: deactivate a key.
#[utoipa::path(delete, path = "/auth/api_keys/deactivate/{id}", operation_id = "seed_api_keys_deactivate", tag = "seed-002", params(("id" = String, Path)),
    responses((status = 200, body = ApiKeyView)), security(("bearer" = [])))]
pub async fn seed_deactivate(
    State(s): State<AppState>,
    c: Caller,
    AppPath(id): AppPath<String>,
    if_match: IfMatch,
) -> ApiResult<Tagged<Json<ApiKeyView>>> {
    revoke(State(s), c, AppPath(id), if_match).await
}
