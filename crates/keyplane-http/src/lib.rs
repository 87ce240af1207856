//! keyplane's HTTP interface: the management API, seed 002's routes, forward auth, operations,
//! and the one mapping from domain errors to HTTP. Only this crate knows axum.

pub mod auth;
pub mod console;
pub mod dto;
pub mod error;
pub mod gateway;
pub mod openapi;
pub mod routes;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use keyplane_core::Keyplane;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Management request bodies are small; anything larger is refused with 413.
pub const BODY_LIMIT: usize = 64 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub app: Arc<Keyplane>,
}

/// The whole HTTP interface, ready to serve or to call with `oneshot` in tests.
pub fn router(state: AppState) -> Router {
    let management = Router::new()
        .merge(routes::keys::router())
        .merge(routes::mgmt::router())
        .merge(routes::clients::router())
        .merge(routes::activity::router())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::record_denials,
        ));
    Router::new()
        .merge(management)
        .merge(routes::authz::router())
        .merge(routes::oauth::router())
        .merge(routes::ops::router())
        .merge(
            console::router().layer(axum::middleware::from_fn_with_state(
                state.clone(),
                auth::record_denials,
            )),
        )
        .fallback(error::fallback)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// Serves until `shutdown` resolves, then stops accepting and lets requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
