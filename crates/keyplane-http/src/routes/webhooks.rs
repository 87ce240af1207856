//! Webhooks: `/v1/webhooks` (endpoints of an organization, their secrets, delivery log and
//! manual redelivery). Deliveries themselves are made by the binary's worker.

use crate::auth::Caller;
use crate::dto::{rfc3339, rfc3339_opt, List};
use crate::error::{ApiResult, AppJson, AppPath, AppQuery};
use crate::no_store::NoStore;
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use keyplane_core::domain::webhook::{Attempt, Delivery, Endpoint};
use keyplane_core::usecase::webhooks::{NewWebhook, WebhookPatch};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/webhooks", post(create).get(list))
        .route(
            "/v1/webhooks/{id}",
            get(get_one).patch(update).delete(remove),
        )
        .route("/v1/webhooks/{id}/rotate-secret", post(rotate_secret))
        .route("/v1/webhooks/{id}/deliveries", get(deliveries))
        .route(
            "/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver",
            post(redeliver),
        )
}

const SHOWN_ONCE: &str = "Store this signing secret now: it is shown only once. Verify each delivery's webhook-signature with it (Standard Webhooks).";

/// A webhook endpoint (never its secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookView {
    pub id: String,
    pub org_id: String,
    pub project_id: Option<String>,
    pub url: String,
    pub description: String,
    /// Event types, `area.*` or `*`.
    pub events: Vec<String>,
    pub enabled: bool,
    /// Why keyplane disabled the endpoint (sustained failure), when it did.
    pub disabled_reason: Option<String>,
    /// Until when the secret before the last rotation also signs.
    pub previous_secret_until: Option<String>,
    /// The first failed attempt since the last success.
    pub failing_since: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<Endpoint> for WebhookView {
    fn from(e: Endpoint) -> Self {
        Self {
            id: e.id,
            org_id: e.org_id,
            project_id: e.project_id,
            url: e.url,
            description: e.description,
            events: e.events,
            enabled: e.enabled,
            disabled_reason: e.disabled_reason,
            previous_secret_until: rfc3339_opt(e.previous_until),
            failing_since: rfc3339_opt(e.failing_since),
            created_at: rfc3339(e.created_at),
            updated_at: rfc3339(e.updated_at),
        }
    }
}

/// A new endpoint, or a rotated secret: the `whsec_` secret is in this answer only.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookWithSecret {
    #[serde(flatten)]
    pub webhook: WebhookView,
    /// `whsec_` + base64 of 32 random bytes (Standard Webhooks).
    pub secret: String,
    pub message: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// `https://…` (`http://` only to loopback, when the deployment allows it).
    pub url: String,
    /// Activity event types (`api_key.revoke`, …), `area.*`, or `*`.
    pub events: Vec<String>,
    /// The organization (default: the caller's).
    pub org_id: Option<String>,
    /// Only events about this project's credentials.
    pub project_id: Option<String>,
    pub description: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhook {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    /// `true` enables an endpoint again (also one keyplane disabled).
    pub enabled: Option<bool>,
    pub description: Option<String>,
}

/// One attempt to deliver.
#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptView {
    pub at: String,
    pub duration_ms: i64,
    /// The answer's status, when one came.
    pub status: Option<i64>,
    pub error: Option<String>,
}

/// One event queued for the endpoint, with its attempts (newest first).
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    /// The `webhook-id`, the same on every attempt.
    pub id: String,
    pub event_id: String,
    pub event_type: String,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    pub created_at: String,
    pub next_attempt_at: Option<String>,
    pub delivered_at: Option<String>,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub attempts: Vec<AttemptView>,
}

impl DeliveryView {
    fn new(d: Delivery, attempts: Vec<Attempt>) -> Self {
        let pending = d.state == keyplane_core::domain::webhook::DeliveryState::Pending;
        Self {
            id: d.id,
            event_id: d.event_id,
            event_type: d.event_type,
            state: d.state.as_str().into(),
            created_at: rfc3339(d.created_at),
            next_attempt_at: pending.then(|| rfc3339(d.next_attempt_at)),
            delivered_at: rfc3339_opt(d.delivered_at),
            last_status: d.last_status,
            last_error: d.last_error,
            attempts: attempts
                .into_iter()
                .map(|a| AttemptView {
                    at: rfc3339(a.at),
                    duration_ms: a.duration_ms,
                    status: a.status,
                    error: a.error,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WebhookListQuery {
    pub org_id: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeliveryListQuery {
    pub cursor: Option<String>,
    pub limit: Option<i64>,
}

/// Register a webhook endpoint. Its signing secret is in this answer only.
#[utoipa::path(post, path = "/v1/webhooks", operation_id = "webhooks_create", tag = "webhooks", request_body = CreateWebhook,
    responses((status = 201, body = WebhookWithSecret, headers(("Cache-Control" = String, description = "`no-store`: the answer carries a secret"), ("Pragma" = String, description = "`no-cache`"))), (status = 422, body = crate::error::Problem)),
    security(("bearer" = [])))]
pub async fn create(
    State(s): State<AppState>,
    c: Caller,
    AppJson(b): AppJson<CreateWebhook>,
) -> ApiResult<NoStore<(StatusCode, Json<WebhookWithSecret>)>> {
    let input = NewWebhook {
        org_id: b.org_id,
        project_id: b.project_id,
        url: b.url,
        events: b.events,
        description: b.description,
    };
    let (ep, secret) = s.app.webhook_create(&c.principal, input, &c.meta).await?;
    Ok(NoStore((
        StatusCode::CREATED,
        Json(WebhookWithSecret {
            webhook: ep.into(),
            secret: secret.expose().to_string(),
            message: SHOWN_ONCE.into(),
        }),
    )))
}

/// List the organization's webhook endpoints.
#[utoipa::path(get, path = "/v1/webhooks", operation_id = "webhooks_list", tag = "webhooks", params(WebhookListQuery),
    responses((status = 200, body = List<WebhookView>)), security(("bearer" = [])))]
pub async fn list(
    State(s): State<AppState>,
    c: Caller,
    AppQuery(q): AppQuery<WebhookListQuery>,
) -> ApiResult<Json<List<WebhookView>>> {
    let items = s
        .app
        .webhook_list(&c.principal, q.org_id.as_deref())
        .await?;
    Ok(Json(List {
        items: items.into_iter().map(Into::into).collect(),
        next_cursor: None,
    }))
}

/// Get one webhook endpoint.
#[utoipa::path(get, path = "/v1/webhooks/{id}", operation_id = "webhooks_get", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 200, body = WebhookView), (status = 404, body = crate::error::Problem)), security(("bearer" = [])))]
pub async fn get_one(
    State(s): State<AppState>,
    c: Caller,
    AppPath(id): AppPath<String>,
) -> ApiResult<Json<WebhookView>> {
    Ok(Json(s.app.webhook_get(&c.principal, &id).await?.into()))
}

/// Change an endpoint's URL, events, description, or whether it is enabled.
#[utoipa::path(patch, path = "/v1/webhooks/{id}", operation_id = "webhooks_update", tag = "webhooks", params(("id" = String, Path)), request_body = UpdateWebhook,
    responses((status = 200, body = WebhookView), (status = 404, body = crate::error::Problem)), security(("bearer" = [])))]
pub async fn update(
    State(s): State<AppState>,
    c: Caller,
    AppPath(id): AppPath<String>,
    AppJson(b): AppJson<UpdateWebhook>,
) -> ApiResult<Json<WebhookView>> {
    let patch = WebhookPatch {
        url: b.url,
        events: b.events,
        enabled: b.enabled,
        description: b.description,
    };
    let ep = s
        .app
        .webhook_update(&c.principal, &id, patch, &c.meta)
        .await?;
    Ok(Json(ep.into()))
}

/// Delete an endpoint and its delivery log; nothing more is sent to it.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", operation_id = "webhooks_delete", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = crate::error::Problem)), security(("bearer" = [])))]
pub async fn remove(
    State(s): State<AppState>,
    c: Caller,
    AppPath(id): AppPath<String>,
) -> ApiResult<StatusCode> {
    s.app.webhook_delete(&c.principal, &id, &c.meta).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A new signing secret, shown once. The previous one keeps signing beside it (both
/// signatures in `webhook-signature`) until `previous_secret_until`.
#[utoipa::path(post, path = "/v1/webhooks/{id}/rotate-secret", operation_id = "webhooks_rotate_secret", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 200, body = WebhookWithSecret, headers(("Cache-Control" = String, description = "`no-store`: the answer carries a secret"), ("Pragma" = String, description = "`no-cache`"))), (status = 404, body = crate::error::Problem)),
    security(("bearer" = [])))]
pub async fn rotate_secret(
    State(s): State<AppState>,
    c: Caller,
    AppPath(id): AppPath<String>,
) -> ApiResult<NoStore<Json<WebhookWithSecret>>> {
    let (ep, secret) = s
        .app
        .webhook_rotate_secret(&c.principal, &id, &c.meta)
        .await?;
    Ok(NoStore(Json(WebhookWithSecret {
        webhook: ep.into(),
        secret: secret.expose().to_string(),
        message: SHOWN_ONCE.into(),
    })))
}

/// The endpoint's delivery log, newest first: each delivery's state and attempts (time,
/// response status, duration, error).
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", operation_id = "webhooks_deliveries", tag = "webhooks", params(("id" = String, Path), DeliveryListQuery),
    responses((status = 200, body = List<DeliveryView>), (status = 404, body = crate::error::Problem)), security(("bearer" = [])))]
pub async fn deliveries(
    State(s): State<AppState>,
    c: Caller,
    AppPath(id): AppPath<String>,
    AppQuery(q): AppQuery<DeliveryListQuery>,
) -> ApiResult<Json<List<DeliveryView>>> {
    let page = s
        .app
        .webhook_deliveries(&c.principal, &id, q.cursor.as_deref(), q.limit)
        .await?;
    Ok(Json(List {
        items: page
            .items
            .into_iter()
            .map(|(d, a)| DeliveryView::new(d, a))
            .collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Send a delivery again now, with the same `webhook-id` (its retry schedule starts over).
#[utoipa::path(post, path = "/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver", operation_id = "webhooks_redeliver", tag = "webhooks", params(("id" = String, Path), ("delivery_id" = String, Path)),
    responses((status = 202), (status = 404, body = crate::error::Problem)), security(("bearer" = [])))]
pub async fn redeliver(
    State(s): State<AppState>,
    c: Caller,
    AppPath((id, delivery_id)): AppPath<(String, String)>,
) -> ApiResult<StatusCode> {
    s.app
        .webhook_redeliver(&c.principal, &id, &delivery_id, &c.meta)
        .await?;
    Ok(StatusCode::ACCEPTED)
}
