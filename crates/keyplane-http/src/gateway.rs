//! The gateway: a reverse proxy in front of an upstream API. Each request's bearer credential
//! is checked against the route rules before anything is forwarded; the caller's own
//! `X-Keyplane-*` headers are stripped and the verified identity added; bodies stream both ways.
//! The rules see the normalized path (`keyplane_core::domain::path`) and the upstream is sent
//! exactly that path: an ambiguous one is answered 400 and never forwarded.
//! An `https://` upstream is reached over TLS with its certificate checked against the Mozilla
//! roots, or only against a configured CA; one that fails the check is answered 502.
//! The upstream gets the request's id in `X-Request-Id` (the caller's own only when a trusted
//! proxy sent it), and, for a traced request, the gateway's span as `traceparent`. Requests are
//! counted under `route="gateway"`: `allowed` when forwarded, whatever the upstream answered.
//! With a `gateway_resource`, the gateway answers that resource's RFC 9728 metadata itself at
//! `/.well-known/oauth-protected-resource[/path]` and names it in every refusal's challenge.

use crate::auth::request_meta;
use crate::routes::authz::{ambiguous_path, identity_headers, respond};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use http_body_util::{BodyExt, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use keyplane_core::domain::path::{upstream_target, NormalPath};
use keyplane_core::usecase::check::Verdict;
use keyplane_core::Keyplane;
use std::sync::Arc;
use std::time::Duration;

/// How the gateway behaves.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// `http://host:port` or `https://host:port` (a base path is allowed and prefixed to every
    /// request's path).
    pub upstream: Uri,
    /// How an `https://` upstream is checked ([`crate::tls::client_config`]).
    pub upstream_tls: crate::tls::rustls::ClientConfig,
    /// Time to the upstream's response headers before answering 504.
    pub upstream_timeout: Duration,
    /// Largest request body forwarded.
    pub max_body_bytes: usize,
    /// Largest total size of the request's headers.
    pub max_header_bytes: usize,
}

#[derive(Clone)]
struct Gateway {
    app: Arc<Keyplane>,
    obs: Arc<crate::observe::Observer>,
    client: Client<HttpsConnector<HttpConnector>, Limited<Body>>,
    config: Arc<GatewayConfig>,
}

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Headers that belong to one connection and are never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn problem(
    status: StatusCode,
    slug: &'static str,
    title: &'static str,
    detail: String,
) -> Response {
    crate::error::ApiError::new(status, slug, title, detail).into_response()
}

/// The gateway's router: every path goes to the upstream once the credential passes.
pub fn router(
    app: Arc<Keyplane>,
    obs: Arc<crate::observe::Observer>,
    config: GatewayConfig,
) -> Router {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    // The TLS layer speaks TLS for https:// and passes http:// through.
    connector.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config.upstream_tls.clone())
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    // Connections to the upstream are pooled and reused.
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(connector);
    Router::new().fallback(proxy).with_state(Gateway {
        app,
        obs,
        client,
        config: Arc::new(config),
    })
}

fn header_bytes(h: &HeaderMap) -> usize {
    h.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum()
}

async fn proxy(State(gw): State<Gateway>, req: Request) -> Response {
    use crate::observe::{Outcome, Route};
    let started = std::time::Instant::now();
    // The protected resource metadata of the resource the gateway fronts (RFC 9728) is the
    // gateway's own, never the upstream's.
    if let Some(resp) =
        crate::protected_resource::gateway_metadata(&gw.app, req.method(), req.uri()).await
    {
        return resp;
    }
    let span = gw.obs.start_span(Route::Gateway, &req);
    let traceparent = span.as_ref().and_then(|s| s.traceparent());
    let (resp, forwarded) = match forward(&gw, req, traceparent).await {
        Ok(resp) => (resp, true),
        Err(resp) => (resp, false),
    };
    let outcome = if forwarded {
        Outcome::Allowed
    } else {
        Outcome::of_response(&resp)
    };
    gw.obs
        .requests
        .observe(Route::Gateway, outcome, started.elapsed());
    if let Some(span) = span {
        span.end(resp.status(), outcome);
    }
    resp
}

/// Checks the request and forwards it: `Ok` with the upstream's answer, or `Err` with
/// keyplane's own (a refusal, a request that cannot be forwarded, an upstream that failed).
async fn forward(
    gw: &Gateway,
    req: Request,
    traceparent: Option<HeaderValue>,
) -> Result<Response, Response> {
    let (mut parts, body) = req.into_parts();
    if header_bytes(&parts.headers) > gw.config.max_header_bytes {
        return Err(problem(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers-too-large",
            "Request headers too large",
            format!(
                "the request's headers exceed {} bytes",
                gw.config.max_header_bytes
            ),
        ));
    }
    if parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|n| n > gw.config.max_body_bytes)
    {
        return Err(problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            "Payload too large",
            format!(
                "the request body exceeds {} bytes",
                gw.config.max_body_bytes
            ),
        ));
    }
    let meta = request_meta(&parts);
    // One path: the rules match the normalized path, and that path (with the caller's query)
    // is what the upstream gets; a path that could be read two ways is refused.
    let path = match NormalPath::parse(parts.uri.path()) {
        Ok(p) => p,
        Err(e) => return Err(ambiguous_path(e)),
    };
    let (is_dpop, token) = match crate::dpop::authorization(&parts.headers) {
        Some((d, t)) => (d, Some(t)),
        None => (false, None),
    };
    // `htu` is this gateway's URL as the caller addressed it: `Host`, and the forwarded
    // scheme and host only when a trusted proxy sent them.
    let trusted = crate::edge::Conn::trusted_proxy(&parts.extensions);
    // A gateway listener with TLS is addressed as https://.
    let tls = crate::edge::Conn::tls(&parts.extensions);
    let dpop = is_dpop.then(|| {
        crate::dpop::dpop_request(&parts.headers, parts.method.as_str(), &path, trusted, tls)
    });
    let (verdict, required) = gw
        .app
        .check_request(token, dpop.as_ref(), parts.method.as_str(), &path, &meta)
        .await;
    let identity = match verdict {
        Verdict::Allow(identity) => identity,
        // A request whose credential failed is never forwarded; its challenge names the
        // metadata of the resource the gateway fronts, when one is configured.
        other => {
            let resource = gw.app.gateway_resource().await;
            return Err(respond(other, &required, resource.as_ref()));
        }
    };

    // Headers: nothing connection-specific, nothing the caller claims about itself.
    let headers = &mut parts.headers;
    let connection_listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in connection_listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("x-keyplane-"))
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(name);
    }
    for (name, value) in identity_headers(&identity) {
        headers.insert(name, value);
    }
    if let Some(conn) = crate::edge::Conn::of(&parts.extensions) {
        let ip = conn.peer.ip().to_string();
        // The chain so far is kept only when a trusted proxy sent it; anyone else's claims
        // about where a request came from are dropped, so the upstream can trust the list.
        let trusted = conn.trusted_proxy;
        if !trusted {
            headers.remove(header::FORWARDED);
        }
        let prior = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(", ");
        let forwarded = if trusted && !prior.is_empty() {
            format!("{prior}, {ip}")
        } else {
            ip
        };
        if let Ok(v) = HeaderValue::from_str(&forwarded) {
            headers.insert("x-forwarded-for", v);
        }
    }
    if let Some(host) = headers.get(header::HOST).cloned() {
        headers.insert("x-forwarded-host", host);
    }
    headers.remove(header::HOST);
    // The request's id as the edge decided it: a caller's own `X-Request-Id` is replaced
    // unless a trusted proxy sent it (then it is the same).
    match crate::edge::Conn::of(&parts.extensions).map(|c| &c.request_id) {
        Some(id) => {
            headers.insert(
                crate::observe::X_REQUEST_ID,
                crate::observe::header_value(id),
            );
        }
        None => {
            headers.remove(crate::observe::X_REQUEST_ID);
        }
    }
    if let Some(tp) = traceparent {
        headers.insert(TRACEPARENT, tp);
        headers.remove(TRACESTATE);
    }

    let upstream = &gw.config.upstream;
    let target = upstream_target(upstream.path(), &path, parts.uri.query());
    let uri = match Uri::builder()
        .scheme(upstream.scheme_str().unwrap_or("http"))
        .authority(
            upstream
                .authority()
                .map(|a| a.as_str())
                .unwrap_or("127.0.0.1"),
        )
        .path_and_query(target)
        .build()
    {
        Ok(u) => u,
        Err(_) => {
            return Err(problem(
                StatusCode::BAD_REQUEST,
                "bad-request",
                "Bad request",
                "the request path cannot be forwarded".into(),
            ))
        }
    };
    parts.uri = uri;
    let upstream_req =
        axum::http::Request::from_parts(parts, Limited::new(body, gw.config.max_body_bytes));

    match tokio::time::timeout(gw.config.upstream_timeout, gw.client.request(upstream_req)).await {
        Err(_) => Err(problem(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream-timeout",
            "Upstream timed out",
            format!(
                "the upstream {} did not answer within {} ms",
                gw.config.upstream,
                gw.config.upstream_timeout.as_millis()
            ),
        )),
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e)
                .map(|s| s.to_string().contains("length limit exceeded"))
                .unwrap_or(false);
            if too_large {
                return Err(problem(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too-large",
                    "Payload too large",
                    format!(
                        "the request body exceeds {} bytes",
                        gw.config.max_body_bytes
                    ),
                ));
            }
            if let Some(why) = crate::tls::refusal(&e) {
                tracing::warn!(upstream = %gw.config.upstream, reason = %why, "the upstream's TLS connection was refused: nothing was forwarded");
                return Err(problem(
                    StatusCode::BAD_GATEWAY,
                    "upstream-tls",
                    "Upstream TLS failed",
                    format!(
                        "the upstream {} could not be reached over TLS: {why}",
                        gw.config.upstream
                    ),
                ));
            }
            tracing::warn!(error = %e, upstream = %gw.config.upstream, "upstream request failed");
            Err(problem(
                StatusCode::BAD_GATEWAY,
                "upstream-unavailable",
                "Upstream unavailable",
                format!(
                    "the upstream {} could not be reached: {}",
                    gw.config.upstream,
                    describe(&e)
                ),
            ))
        }
        Ok(Ok(resp)) => {
            let (mut parts, body) = resp.into_parts();
            for name in HOP_BY_HOP {
                parts.headers.remove(name);
            }
            Ok(Response::from_parts(
                parts,
                Body::new(body.map_err(axum::Error::new)),
            ))
        }
    }
}

fn describe(e: &hyper_util::client::legacy::Error) -> String {
    if e.is_connect() {
        "connection refused or failed".into()
    } else {
        "the connection failed before an answer".into()
    }
}
