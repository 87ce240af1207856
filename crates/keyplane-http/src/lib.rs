//! keyplane's HTTP interface: the management API, seed 002's routes, forward auth, operations,
//! and the one mapping from domain errors to HTTP. Only this crate knows axum.

pub mod auth;
pub mod console;
pub mod dpop;
pub mod dto;
pub mod edge;
pub mod error;
pub mod etag;
pub mod gateway;
pub mod metrics;
pub mod no_store;
pub mod observe;
pub mod openapi;
pub mod protected_resource;
pub mod routes;
pub mod tls;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use keyplane_core::Keyplane;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Management request bodies are small; anything larger is refused with 413.
pub const BODY_LIMIT: usize = 64 * 1024;

/// The longest request target (path and query) keyplane reads; a longer one is refused with a
/// 414 that has a body. nginx's default `large_client_header_buffers` (8k) is the same bound, so
/// nothing that passes a default nginx is refused. (hyper refuses targets over 65 534 bytes by
/// itself, with a 414 that has no body, before keyplane sees the request.)
pub const URI_LIMIT: usize = 8 * 1024;

/// The most header bytes (names, values and separators) keyplane reads; more is refused with a
/// 431 that has a body. (hyper refuses a header section over about 400 KiB, or more than 100
/// header fields, by itself, with a 431 that has no body, before keyplane sees the request.)
pub const HEADER_LIMIT: usize = 32 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub app: Arc<Keyplane>,
    /// Request metrics, traces and what `/metrics` shows of the build.
    pub obs: Arc<observe::Observer>,
}

impl AppState {
    /// The state of a server without traces, `/metrics` on the API listener.
    pub fn new(app: Arc<Keyplane>) -> Self {
        Self {
            app,
            obs: Arc::new(observe::Observer::default()),
        }
    }
}

/// Every route of the HTTP interface. [`serve`] wraps it in the layers that apply to all of
/// them (tracing, the body limit) once, outside the router, so a request pays for each layer
/// once rather than once per route wrapper.
pub fn router(state: AppState) -> Router {
    let management = Router::new()
        .merge(routes::keys::router())
        .merge(routes::mgmt::router())
        .merge(routes::clients::router())
        .merge(routes::activity::router())
        .merge(routes::usage::router())
        .merge(routes::apps::router())
        .merge(routes::leaks::management_router())
        .merge(routes::webhooks::router())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::record_denials,
        ));
    Router::new()
        .merge(management)
        .merge(routes::authz::router())
        .merge(routes::oauth::router())
        .merge(routes::ops::router())
        .merge(protected_resource::router())
        .merge(routes::leaks::router())
        .merge(
            console::router().layer(axum::middleware::from_fn_with_state(
                state.clone(),
                auth::record_denials,
            )),
        )
        .fallback(error::fallback)
        // Last, so that it reaches every route merged above.
        .method_not_allowed_fallback(error::method_not_allowed)
        .with_state(state)
}

/// Bytes of a request's header section as sent: each `name: value` line and its CRLF.
pub fn header_bytes(headers: &axum::http::HeaderMap) -> usize {
    headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum()
}

/// A 414 or 431 for a request whose target or headers exceed [`URI_LIMIT`] or
/// [`HEADER_LIMIT`], or `None`. Checked before any route, hot or not.
fn over_limits(req: &axum::extract::Request) -> Option<axum::response::Response> {
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    let path = req.uri().path();
    if target > URI_LIMIT {
        return Some(error::too_large(
            path,
            axum::http::StatusCode::URI_TOO_LONG,
            format!("the request target is longer than {URI_LIMIT} bytes"),
        ));
    }
    if header_bytes(req.headers()) > HEADER_LIMIT {
        return Some(error::too_large(
            path,
            axum::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("the request's headers are larger than {HEADER_LIMIT} bytes"),
        ));
    }
    None
}

/// Serves until `shutdown` resolves, then stops accepting and lets requests in flight finish.
/// Connections are bounded by `edge` (timeouts, the client address) and `limit` (how many at
/// once), the hot routes included: see [`edge`].
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    edge: Arc<edge::EdgeConfig>,
    limit: edge::ConnectionLimit,
    tls: Option<Arc<tls::rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let rest = tower::ServiceBuilder::new()
        .map_response(axum::response::IntoResponse::into_response)
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(request_span as fn(&axum::extract::Request) -> tracing::Span),
        )
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .service(router(state.clone()));
    let service = HotRoutes(Arc::new(Hot {
        rest: tower::util::BoxCloneSyncService::new(rest),
        state,
    }));
    edge::serve(listener, service, edge, limit, tls, shutdown).await
}

/// The span of a request the router answers: its method, URI and client address.
fn request_span(req: &axum::extract::Request) -> tracing::Span {
    let client = edge::Conn::of(req.extensions())
        .map(|c| c.client.to_string())
        .unwrap_or_default();
    tracing::debug_span!(
        "request",
        method = %req.method(),
        uri = %req.uri(),
        version = ?req.version(),
        client = %client,
    )
}

/// Serves `/metrics`, `/healthz` and `/readyz` on a listener of their own (`metrics_listen`),
/// with its own small connection cap, so a flood on the API cannot keep a scrape out.
pub async fn serve_metrics(
    listener: TcpListener,
    state: AppState,
    edge: Arc<edge::EdgeConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = routes::ops::metrics_router()
        .fallback(error::fallback)
        .with_state(state);
    edge::serve(
        listener,
        router,
        edge,
        edge::ConnectionLimit::new(64),
        None,
        shutdown,
    )
    .await
}

/// Answers the hot routes before the router: `/v1/authz` (every request to a protected API),
/// and `POST /v1/oauth/token` and `POST /v1/oauth/token/introspect`. They skip the route table,
/// the per-route service wrappers, their futures and the per-request tracing span (their
/// refusals and failures are logged as events, and counted in `/metrics`); everything else
/// (other methods, the seed documents' paths, `/v1/authz/{*original}` for Envoy) goes to the
/// router, traced and with the body limit, unchanged. The token endpoints read at most 16 KiB
/// of form themselves.
///
/// Every request, hot or not, is timed into its route group's histogram by outcome
/// ([`observe`]), and traced when traces are on and it is sampled.
///
/// The edge clones the service for every request: one shared [`Hot`] makes that one count.
#[derive(Clone)]
struct HotRoutes(Arc<Hot>);

struct Hot {
    state: AppState,
    rest: tower::util::BoxCloneSyncService<
        axum::extract::Request,
        axum::response::Response,
        std::convert::Infallible,
    >,
}

impl tower::Service<axum::extract::Request> for HotRoutes {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: axum::extract::Request) -> Self::Future {
        use axum::extract::State;
        let started = std::time::Instant::now();
        let route = observe::Route::of(req.uri().path());
        let obs = Arc::clone(&self.0.state.obs);
        let span = obs.start_span(route, &req);
        if let Some(refused) = over_limits(&req) {
            return Box::pin(async move { Ok(observed(&obs, route, started, span, refused)) });
        }
        let post = req.method() == axum::http::Method::POST;
        match (post, req.uri().path()) {
            (_, "/v1/authz") => {
                let state = self.0.state.clone();
                Box::pin(async move {
                    let resp = routes::authz::authz(State(state), req).await;
                    Ok(observed(&obs, route, started, span, resp))
                })
            }
            (true, "/v1/oauth/token") => {
                let state = self.0.state.clone();
                Box::pin(async move {
                    let resp = routes::oauth::token(State(state), req).await;
                    Ok(observed(&obs, route, started, span, resp))
                })
            }
            (true, "/v1/oauth/token/introspect") => {
                let state = self.0.state.clone();
                Box::pin(async move {
                    let resp = routes::oauth::introspect(State(state), req).await;
                    Ok(observed(&obs, route, started, span, resp))
                })
            }
            (_, path) => {
                let rest = self.0.rest.clone();
                let path = path.to_string();
                Box::pin(async move {
                    let resp = tower::ServiceExt::oneshot(rest, req).await?;
                    let resp = error::fill_empty_error(&path, resp);
                    Ok(observed(&obs, route, started, span, resp))
                })
            }
        }
    }
}

/// Records an answered request: its latency in its (route, outcome) histogram, and its span's
/// end when it was traced.
#[inline]
pub(crate) fn observed(
    obs: &observe::Observer,
    route: observe::Route,
    started: std::time::Instant,
    span: Option<Box<dyn observe::RequestSpan>>,
    resp: axum::response::Response,
) -> axum::response::Response {
    let outcome = observe::Outcome::of_response(&resp);
    obs.requests.observe(route, outcome, started.elapsed());
    if let Some(span) = span {
        span.end(resp.status(), outcome);
    }
    resp
}
