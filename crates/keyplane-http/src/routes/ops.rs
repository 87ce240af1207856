//! Operations: health, readiness, metrics and the OpenAPI document.

use crate::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200)))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Storage answers; 503 otherwise.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses((status = 200), (status = 503)))]
pub async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    match s.app.store().ping().await {
        Ok(()) => (
            StatusCode::OK,
            Json(serde_json::json!({ "status": "ready", "storage": s.app.store().backend() })),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(
                    serde_json::json!({ "status": "unavailable", "storage": s.app.store().backend(), "detail": "storage does not answer" }),
                ),
            )
        }
    }
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, content_type = "text/plain")))]
pub async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let (keys, unknown) = s.app.cache().len();
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
         keyplane_client_secrets_expiring {}\n",
        s.app.checks(),
        s.app.secrets_expiring_soon()
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

/// This document.
pub async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::document(),
    )
}
