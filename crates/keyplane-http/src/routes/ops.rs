//! Operations: health, readiness, metrics and the OpenAPI document.

use crate::error::ApiError;
use crate::AppState;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use keyplane_core::domain::secret::ct_eq;
use keyplane_core::runtime::feed::FeedStatus;
use keyplane_core::usecase::operations::Readiness;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
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

/// Prometheus metrics. Open unless a metrics token is configured (`KEYPLANE_METRICS_TOKEN`),
/// then only for `Authorization: Bearer <token>`.
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "operations",
    responses((status = 200, content_type = "text/plain"), (status = 401, body = crate::error::Problem, description = "a metrics token is configured and was not presented")))]
pub async fn metrics(State(s): State<AppState>, headers: HeaderMap) -> Response {
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
    metrics_text(&s).into_response()
}

fn metrics_text(s: &AppState) -> impl IntoResponse {
    let (keys, unknown) = s.app.cache().len();
    let feed = s.app.feed_status();
    let body = format!(
        "# HELP keyplane_credential_checks_total Credential checks answered since start.\n\
         # TYPE keyplane_credential_checks_total counter\n\
         keyplane_credential_checks_total {}\n\
         # HELP keyplane_cache_keys Credentials held in the cache.\n\
         # TYPE keyplane_cache_keys gauge\n\
         keyplane_cache_keys {keys}\n\
         # HELP keyplane_cache_unknown Digests remembered as unknown (negative cache).\n\
         # TYPE keyplane_cache_unknown gauge\n\
         keyplane_cache_unknown {unknown}\n\
         # HELP keyplane_client_secrets_expiring Client secrets that their rotation policy refuses within 7 days.\n\
         # TYPE keyplane_client_secrets_expiring gauge\n\
         keyplane_client_secrets_expiring {}\n\
         # HELP keyplane_storage_feed_up Whether changes made on other nodes arrive (1), or the database connection is down (0).\n\
         # TYPE keyplane_storage_feed_up gauge\n\
         keyplane_storage_feed_up {}\n\
         # HELP keyplane_storage_feed_down_seconds How long the database connection has been down (0 while up).\n\
         # TYPE keyplane_storage_feed_down_seconds gauge\n\
         keyplane_storage_feed_down_seconds {:.3}\n\
         # HELP keyplane_cache_trusted Whether cached credentials are served (0 once the connection has been down longer than the bound).\n\
         # TYPE keyplane_cache_trusted gauge\n\
         keyplane_cache_trusted {}\n",
        s.app.checks(),
        s.app.secrets_expiring_soon(),
        u8::from(feed == FeedStatus::Live),
        feed.lost_for_ms() as f64 / 1e3,
        u8::from(feed.cache_trusted()),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
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
