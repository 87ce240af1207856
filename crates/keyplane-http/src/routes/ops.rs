//! Operations: health, readiness, metrics and the OpenAPI document.

use crate::error::ApiError;
use crate::AppState;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use keyplane_core::domain::secret::ct_eq;
use keyplane_core::usecase::operations::Readiness;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
}

/// The routes of the metrics listener (`metrics_listen`): `/metrics`, and the health checks.
pub fn metrics_router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_only))
}

/// `/metrics` on the metrics listener.
async fn metrics_only(State(s): State<AppState>, headers: HeaderMap) -> Response {
    scrape(&s, &headers)
}

/// The process is up.
/// What `/healthz` answers.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok`
    pub status: String,
}

#[utoipa::path(get, path = "/healthz", operation_id = "healthz", tag = "operations", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// What `/readyz` answers.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ReadinessView {
    /// `ready`, `degraded` or `unavailable`
    pub status: String,
    /// `sqlite` or `postgres`
    pub storage: String,
    /// Why it is not `ready`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Storage answers and changes from other nodes arrive: 200 `ready`. While the database
/// connection is down and cached credentials are still served (for a bounded time): 200
/// `degraded` with the reason. Storage not answering, or past that bound: 503 `unavailable`.
#[utoipa::path(get, path = "/readyz", operation_id = "readyz", tag = "operations",
    responses((status = 200, body = ReadinessView, description = "`ready`, or `degraded` while cached credentials are served without the database"), (status = 503, body = ReadinessView, description = "`unavailable`")))]
pub async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    let view = |status: &str, detail: Option<String>| {
        Json(ReadinessView {
            status: status.into(),
            storage: s.app.backend().to_string(),
            detail,
        })
    };
    match s.app.readiness().await {
        Readiness::Ready => (StatusCode::OK, view("ready", None)),
        Readiness::Degraded(reason) => (StatusCode::OK, view("degraded", Some(reason))),
        Readiness::Unavailable(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            view("unavailable", Some(reason)),
        ),
    }
}

/// Prometheus metrics (text format 0.0.4; see docs/operations.md for the list). Open unless a
/// metrics token is configured (`KEYPLANE_METRICS_TOKEN`), then only for
/// `Authorization: Bearer <token>`. With `metrics_listen` set, answered there instead (404 here).
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "operations",
    responses((status = 200, content_type = "text/plain"), (status = 401, body = crate::error::Problem, description = "a metrics token is configured and was not presented"), (status = 404, body = crate::error::Problem, description = "`/metrics` is served on its own listener (`metrics_listen`)")))]
pub async fn metrics(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if !s.obs.metrics_on_api {
        return crate::error::fallback().await.into_response();
    }
    scrape(&s, &headers)
}

fn scrape(s: &AppState, headers: &HeaderMap) -> Response {
    if let Some(want) = &s.app.settings().metrics_token {
        let got = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !ct_eq(got.as_bytes(), want.expose().as_bytes()) {
            let mut e = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Authentication required",
                "/metrics needs the metrics token: send `Authorization: Bearer <metrics token>`",
            );
            e.challenge = Some("Bearer realm=\"keyplane-metrics\"".into());
            return e.into_response();
        }
    }
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::exposition(&s.app, &s.obs),
    )
        .into_response()
}

/// This document: the OpenAPI 3.1 description of keyplane's HTTP interface.
#[utoipa::path(get, path = "/openapi.json", operation_id = "openapi_document", tag = "operations",
    responses((status = 200, content_type = "application/json", body = Object)))]
pub async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::document(),
    )
}
