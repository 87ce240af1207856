//! What every request leaves behind for operators: its id (`X-Request-Id`, in every log line
//! and activity event it causes), its latency in a histogram by route group and outcome, and —
//! when traces are on and the request is sampled — a span.
//!
//! The credential routes answer well over 100 000 requests a second, so recording is cheap:
//! the histograms are allocated once for every (route, outcome) pair, and an observation is a
//! bucket search over a constant table and two relaxed atomic additions — no lock, no
//! allocation, no label text. A request id is a value held inline; making one is an atomic
//! increment and a hash-like mix. With traces off, deciding not to trace is one branch.

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use keyplane_core::domain::request::{Refusal, RequestId};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

// ----- request ids -----

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

tokio::task_local! {
    static CURRENT: RequestId;
}

/// The id of the request whose task is running now, if any: what the log formatter adds to
/// every line written while a request is answered.
pub fn current_request_id() -> Option<RequestId> {
    CURRENT.try_with(|id| *id).ok()
}

/// Runs `fut` as the request `id`'s (see [`current_request_id`]).
pub async fn with_request_id<F: std::future::Future>(id: RequestId, fut: F) -> F::Output {
    CURRENT.scope(id, fut).await
}

/// Makes request ids: 32 hexadecimal digits, unique within the process (a counter, mixed by a
/// bijection so ids do not reveal how many requests came before) and across processes (a
/// random half chosen at start).
pub struct RequestIds {
    node: u64,
    key: u64,
    next: AtomicU64,
}

impl std::fmt::Debug for RequestIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The random halves stay out of logs.
        f.write_str("RequestIds")
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestIds {
    pub fn new() -> Self {
        use std::hash::{BuildHasher, Hasher};
        // The standard library's hasher keys come from the operating system's randomness.
        let random = || {
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        };
        Self {
            node: random(),
            key: random(),
            next: AtomicU64::new(0),
        }
    }

    /// A new id.
    pub fn generate(&self) -> RequestId {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        RequestId::from_hex_words(self.node, mix(n ^ self.key))
    }

    /// The id of a request: the `X-Request-Id` a trusted proxy sent (when it is a valid one),
    /// else a new one. Anyone else's `X-Request-Id` is ignored.
    pub fn for_request(&self, headers: &HeaderMap, from_trusted_proxy: bool) -> RequestId {
        if from_trusted_proxy {
            if let Some(id) = headers
                .get(&X_REQUEST_ID)
                .and_then(|v| RequestId::parse(v.as_bytes()))
            {
                return id;
            }
        }
        self.generate()
    }
}

/// SplitMix64's finalizer: a bijection on `u64`, so distinct counters give distinct ids.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The header value of a request id.
pub fn header_value(id: &RequestId) -> HeaderValue {
    HeaderValue::from_str(id.as_str()).expect("a request id is a valid header value")
}

// ----- route groups and outcomes -----

/// The group a request is counted under (the `route` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/v1/authz` (forward auth).
    Authz,
    /// The OAuth token endpoint.
    Token,
    /// Token introspection.
    Introspect,
    /// Token revocation.
    Revoke,
    /// The other OAuth documents: metadata, the JWKS.
    Oauth,
    /// The management API (`/v1/…`, and the seed's `/auth/api_keys`).
    Management,
    /// The web console.
    Console,
    /// `/healthz`, `/readyz`, `/metrics`, `/openapi.json`.
    Ops,
    /// The gateway's listener.
    Gateway,
    /// Anything else (answered 404).
    Other,
}

impl Route {
    pub const ALL: [Route; 10] = [
        Route::Authz,
        Route::Token,
        Route::Introspect,
        Route::Revoke,
        Route::Oauth,
        Route::Management,
        Route::Console,
        Route::Ops,
        Route::Gateway,
        Route::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Route::Authz => "authz",
            Route::Token => "token",
            Route::Introspect => "introspect",
            Route::Revoke => "revoke",
            Route::Oauth => "oauth",
            Route::Management => "management",
            Route::Console => "console",
            Route::Ops => "ops",
            Route::Gateway => "gateway",
            Route::Other => "other",
        }
    }

    /// The group of a request to the API listener, by its path.
    pub fn of(path: &str) -> Route {
        use crate::routes::oauth::{TOKEN_BASES, TOKEN_PATHS};
        if path == "/v1/authz" || path.starts_with("/v1/authz/") {
            return Route::Authz;
        }
        if TOKEN_PATHS.contains(&path) {
            return Route::Token;
        }
        for base in TOKEN_BASES {
            match path.strip_prefix(base) {
                Some("/introspect") => return Route::Introspect,
                Some("/revoke") => return Route::Revoke,
                _ => {}
            }
        }
        if crate::routes::oauth::is_oauth_path(path) {
            return Route::Oauth;
        }
        if path == "/console" || path.starts_with("/console/") {
            return Route::Console;
        }
        if matches!(path, "/healthz" | "/readyz" | "/metrics" | "/openapi.json") {
            return Route::Ops;
        }
        if path.starts_with("/v1/") || path.starts_with("/auth/") {
            return Route::Management;
        }
        Route::Other
    }

    /// The routes every protected request passes through: traced only at the hot sampling
    /// ratio.
    pub fn is_hot(self) -> bool {
        matches!(
            self,
            Route::Authz | Route::Token | Route::Introspect | Route::Gateway
        )
    }
}

/// Why a request was refused (the `reason` label of `outcome="refused"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    // A bearer credential checked for a platform API (`/v1/authz`, the gateway).
    Missing,
    Malformed,
    Unknown,
    Revoked,
    Expired,
    WrongAudience,
    InsufficientScope,
    NoRule,
    Dpop,
    AmbiguousRequest,
    // The OAuth endpoints' RFC 6749 §5.2 codes.
    InvalidRequest,
    InvalidClient,
    InvalidScope,
    InvalidTarget,
    UnauthorizedClient,
    UnsupportedGrantType,
    // Anywhere, by status.
    BadRequest,
    Unauthenticated,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Timeout,
    Conflict,
    PreconditionFailed,
    TooLarge,
    UnsupportedMediaType,
    Invalid,
    RateLimited,
    OtherClientError,
}

impl Reason {
    pub const ALL: [Reason; 29] = [
        Reason::Missing,
        Reason::Malformed,
        Reason::Unknown,
        Reason::Revoked,
        Reason::Expired,
        Reason::WrongAudience,
        Reason::InsufficientScope,
        Reason::NoRule,
        Reason::Dpop,
        Reason::AmbiguousRequest,
        Reason::InvalidRequest,
        Reason::InvalidClient,
        Reason::InvalidScope,
        Reason::InvalidTarget,
        Reason::UnauthorizedClient,
        Reason::UnsupportedGrantType,
        Reason::BadRequest,
        Reason::Unauthenticated,
        Reason::Forbidden,
        Reason::NotFound,
        Reason::MethodNotAllowed,
        Reason::Timeout,
        Reason::Conflict,
        Reason::PreconditionFailed,
        Reason::TooLarge,
        Reason::UnsupportedMediaType,
        Reason::Invalid,
        Reason::RateLimited,
        Reason::OtherClientError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::Malformed => "malformed",
            Reason::Unknown => "unknown",
            Reason::Revoked => "revoked",
            Reason::Expired => "expired",
            Reason::WrongAudience => "wrong_audience",
            Reason::InsufficientScope => "insufficient_scope",
            Reason::NoRule => "no_rule",
            Reason::Dpop => "dpop",
            Reason::AmbiguousRequest => "ambiguous_request",
            Reason::InvalidRequest => "invalid_request",
            Reason::InvalidClient => "invalid_client",
            Reason::InvalidScope => "invalid_scope",
            Reason::InvalidTarget => "invalid_target",
            Reason::UnauthorizedClient => "unauthorized_client",
            Reason::UnsupportedGrantType => "unsupported_grant_type",
            Reason::BadRequest => "bad_request",
            Reason::Unauthenticated => "unauthenticated",
            Reason::Forbidden => "forbidden",
            Reason::NotFound => "not_found",
            Reason::MethodNotAllowed => "method_not_allowed",
            Reason::Timeout => "timeout",
            Reason::Conflict => "conflict",
            Reason::PreconditionFailed => "precondition_failed",
            Reason::TooLarge => "too_large",
            Reason::UnsupportedMediaType => "unsupported_media_type",
            Reason::Invalid => "invalid",
            Reason::RateLimited => "rate_limited",
            Reason::OtherClientError => "other",
        }
    }

    /// The reason of a credential refusal.
    pub fn of_refusal(r: Refusal) -> Reason {
        match r {
            Refusal::Missing => Reason::Missing,
            Refusal::Malformed => Reason::Malformed,
            Refusal::Unknown => Reason::Unknown,
            Refusal::Revoked => Reason::Revoked,
            Refusal::Expired => Reason::Expired,
            Refusal::Audience => Reason::WrongAudience,
        }
    }

    /// The reason of an RFC 6749 §5.2 (or RFC 6750) error code with its status.
    pub fn of_oauth(status: StatusCode, code: &str) -> Reason {
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Reason::RateLimited;
        }
        match code {
            "invalid_request" if status == StatusCode::BAD_REQUEST => Reason::InvalidRequest,
            "invalid_client" => Reason::InvalidClient,
            "invalid_scope" => Reason::InvalidScope,
            "invalid_target" => Reason::InvalidTarget,
            "unauthorized_client" => Reason::UnauthorizedClient,
            "unsupported_grant_type" => Reason::UnsupportedGrantType,
            "invalid_dpop_proof" | "use_dpop_nonce" => Reason::Dpop,
            "insufficient_scope" => Reason::InsufficientScope,
            _ => Reason::of_status(status),
        }
    }

    /// The reason of a 4xx answer that says no more.
    pub fn of_status(status: StatusCode) -> Reason {
        match status.as_u16() {
            400 => Reason::BadRequest,
            401 => Reason::Unauthenticated,
            403 => Reason::Forbidden,
            404 => Reason::NotFound,
            405 => Reason::MethodNotAllowed,
            408 => Reason::Timeout,
            409 => Reason::Conflict,
            412 => Reason::PreconditionFailed,
            413 | 414 | 431 => Reason::TooLarge,
            415 => Reason::UnsupportedMediaType,
            422 => Reason::Invalid,
            429 => Reason::RateLimited,
            _ => Reason::OtherClientError,
        }
    }
}

/// A failure of keyplane's (or the gateway's upstream's), by status (the `reason` label of
/// `outcome="error"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// 500.
    Internal,
    /// 502, 504: the gateway's upstream did not answer.
    Upstream,
    /// 503.
    Unavailable,
    /// Any other 5xx.
    Other,
}

impl Failure {
    pub const ALL: [Failure; 4] = [
        Failure::Internal,
        Failure::Upstream,
        Failure::Unavailable,
        Failure::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Internal => "internal",
            Failure::Upstream => "upstream",
            Failure::Unavailable => "unavailable",
            Failure::Other => "other",
        }
    }

    fn of_status(status: StatusCode) -> Failure {
        match status.as_u16() {
            500 => Failure::Internal,
            502 | 504 => Failure::Upstream,
            503 => Failure::Unavailable,
            _ => Failure::Other,
        }
    }
}

/// How a request ended (the `outcome` and `reason` labels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered as asked (2xx, 3xx); for `/v1/authz` and the gateway: the credential passed.
    Allowed,
    Refused(Reason),
    Error(Failure),
}

/// The number of distinct outcomes: the histograms of one route.
const OUTCOMES: usize = 1 + Reason::ALL.len() + Failure::ALL.len();

impl Outcome {
    fn index(self) -> usize {
        match self {
            Outcome::Allowed => 0,
            Outcome::Refused(r) => 1 + r as usize,
            Outcome::Error(f) => 1 + Reason::ALL.len() + f as usize,
        }
    }

    fn of_index(i: usize) -> Outcome {
        if i == 0 {
            Outcome::Allowed
        } else if i <= Reason::ALL.len() {
            Outcome::Refused(Reason::ALL[i - 1])
        } else {
            Outcome::Error(Failure::ALL[i - 1 - Reason::ALL.len()])
        }
    }

    /// `allowed`, `refused` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Refused(_) => "refused",
            Outcome::Error(_) => "error",
        }
    }

    /// Why, for a refusal or an error; empty when allowed.
    pub fn reason(self) -> &'static str {
        match self {
            Outcome::Allowed => "",
            Outcome::Refused(r) => r.as_str(),
            Outcome::Error(f) => f.as_str(),
        }
    }

    /// The outcome of an answer: what the [`Refused`] mark on it says, else its status.
    pub fn of_response(resp: &axum::response::Response) -> Outcome {
        if let Some(Refused(r)) = resp.extensions().get::<Refused>() {
            return Outcome::Refused(*r);
        }
        Outcome::of_status(resp.status())
    }

    pub fn of_status(status: StatusCode) -> Outcome {
        if status.is_server_error() {
            Outcome::Error(Failure::of_status(status))
        } else if status.is_client_error() {
            Outcome::Refused(Reason::of_status(status))
        } else {
            Outcome::Allowed
        }
    }
}

/// A mark on a refusal's answer naming why (a response extension). Only refusals carry it, so
/// an allowed answer pays nothing for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused(pub Reason);

/// Marks `resp` as refused for `reason`.
pub fn mark_refused(
    mut resp: axum::response::Response,
    reason: Reason,
) -> axum::response::Response {
    resp.extensions_mut().insert(Refused(reason));
    resp
}

// ----- latency histograms -----

/// The histograms' upper bounds, in nanoseconds: 25 µs (an answer from the cache) to 10 s.
pub const BOUNDS_NS: [u64; 18] = [
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// A latency histogram: a count per bucket (not cumulative; the last is `+Inf`) and the sum.
/// The count is the buckets' total, so a scrape never shows a `+Inf` bucket that disagrees
/// with `_count`.
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    #[inline]
    pub fn observe(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let i = BOUNDS_NS.partition_point(|b| *b < ns);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// The counts per bucket (not cumulative), their total, and the sum in seconds.
    pub fn snapshot(&self) -> ([u64; BOUNDS_NS.len() + 1], u64, f64) {
        let counts: [u64; BOUNDS_NS.len() + 1] =
            std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed));
        let total = counts.iter().sum();
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        (counts, total, sum)
    }
}

/// A histogram for every (route, outcome) pair, allocated once.
pub struct RequestMetrics {
    histograms: Box<[Histogram]>,
}

impl Default for RequestMetrics {
    fn default() -> Self {
        Self {
            histograms: (0..Route::ALL.len() * OUTCOMES)
                .map(|_| Histogram::default())
                .collect(),
        }
    }
}

impl RequestMetrics {
    #[inline]
    pub fn observe(&self, route: Route, outcome: Outcome, elapsed: Duration) {
        self.histograms[route as usize * OUTCOMES + outcome.index()].observe(elapsed);
    }

    /// Every (route, outcome) pair with its histogram.
    pub fn each(&self) -> impl Iterator<Item = (Route, Outcome, &Histogram)> {
        self.histograms
            .iter()
            .enumerate()
            .map(|(i, h)| (Route::ALL[i / OUTCOMES], Outcome::of_index(i % OUTCOMES), h))
    }
}

// ----- traces -----

/// What a trace exporter is told about a sampled request when it starts.
pub struct SpanStart<'a> {
    pub route: Route,
    pub method: &'a Method,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    pub request_id: Option<RequestId>,
    pub client_addr: Option<std::net::IpAddr>,
    pub start: SystemTime,
}

/// Where the spans of sampled requests go: the binary's OpenTelemetry exporter. The HTTP
/// interface knows nothing of OpenTelemetry; it only decides which requests are traced.
pub trait Tracer: Send + Sync + 'static {
    fn start(&self, span: SpanStart<'_>) -> Box<dyn RequestSpan>;
}

/// A sampled request's span, ended with its answer.
pub trait RequestSpan: Send {
    /// The W3C `traceparent` naming this span, for a request forwarded upstream.
    fn traceparent(&self) -> Option<HeaderValue>;
    fn end(self: Box<Self>, status: StatusCode, outcome: Outcome);
}

/// Set on a sampled request that the gateway forwards: the `traceparent` the upstream gets.
#[derive(Debug, Clone)]
pub struct TraceParent(pub HeaderValue);

/// Which requests are traced: one in `every` of the routes answered by the router, one in
/// `hot_every` of the credential routes and the gateway (0: none).
pub struct Sampler {
    every: u64,
    hot_every: u64,
    seen: AtomicU64,
    hot_seen: AtomicU64,
}

impl Sampler {
    /// From ratios in 0..=1 (1: every request; 0: none).
    pub fn new(ratio: f64, hot_ratio: f64) -> Self {
        let every = |r: f64| {
            if r.is_nan() || r <= 0.0 {
                0
            } else {
                (1.0 / r.min(1.0)).round() as u64
            }
        };
        Self {
            every: every(ratio),
            hot_every: every(hot_ratio),
            seen: AtomicU64::new(0),
            hot_seen: AtomicU64::new(0),
        }
    }

    pub fn sample(&self, route: Route) -> bool {
        let (every, seen) = if route.is_hot() {
            (self.hot_every, &self.hot_seen)
        } else {
            (self.every, &self.seen)
        };
        match every {
            0 => false,
            1 => true,
            n => seen.fetch_add(1, Ordering::Relaxed) % n == 0,
        }
    }
}

/// Traces: where spans go and which requests make one.
pub struct Tracing {
    pub tracer: Arc<dyn Tracer>,
    pub sampler: Sampler,
}

// ----- all of it -----

/// What the binary tells `keyplane_build_info`.
#[derive(Debug, Clone, Default)]
pub struct BuildInfo {
    pub version: String,
    /// The source commit, when the build was told it.
    pub commit: Option<String>,
    /// The compiler's version.
    pub rustc: Option<String>,
}

/// The observability of one server: request metrics, traces (when on), and what `/metrics`
/// shows about the build. (Request ids are made by the connection edge.)
pub struct Observer {
    pub requests: RequestMetrics,
    pub tracing: Option<Tracing>,
    pub build: BuildInfo,
    /// Whether `/metrics` is answered on the API listener (else on its own listener only).
    pub metrics_on_api: bool,
    /// When this server started.
    pub started: SystemTime,
}

impl Default for Observer {
    fn default() -> Self {
        Self {
            requests: RequestMetrics::default(),
            tracing: None,
            build: BuildInfo {
                version: env!("CARGO_PKG_VERSION").into(),
                ..Default::default()
            },
            metrics_on_api: true,
            started: SystemTime::now(),
        }
    }
}

impl Observer {
    /// Starts the span of a request when traces are on and the request is sampled.
    #[inline]
    pub fn start_span(
        &self,
        route: Route,
        req: &axum::extract::Request,
    ) -> Option<Box<dyn RequestSpan>> {
        let tracing = self.tracing.as_ref()?;
        if !tracing.sampler.sample(route) {
            return None;
        }
        Some(tracing.tracer.start(SpanStart {
            route,
            method: req.method(),
            path: req.uri().path(),
            headers: req.headers(),
            request_id: crate::edge::Conn::of(req.extensions()).map(|c| c.request_id),
            client_addr: crate::edge::Conn::of(req.extensions()).map(|c| c.client),
            start: SystemTime::now(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_distinct_hex() {
        let ids = RequestIds::new();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let id = ids.generate();
            assert_eq!(id.as_str().len(), 32);
            assert!(id.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
            assert!(seen.insert(id.as_str().to_string()));
        }
        // Another process (another random half) makes other ids.
        assert_ne!(
            &RequestIds::new().generate().as_str()[..16],
            &ids.generate().as_str()[..16]
        );
    }

    #[test]
    fn an_id_is_taken_only_from_a_trusted_proxy() {
        let ids = RequestIds::new();
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("edge-42"));
        assert_eq!(ids.for_request(&h, true).as_str(), "edge-42");
        assert_ne!(ids.for_request(&h, false).as_str(), "edge-42");
        h.insert(X_REQUEST_ID, HeaderValue::from_static("has space"));
        assert_eq!(ids.for_request(&h, true).as_str().len(), 32);
    }

    #[test]
    fn routes_by_path() {
        for (path, route) in [
            ("/v1/authz", Route::Authz),
            ("/v1/authz/api/x", Route::Authz),
            ("/v1/authzz", Route::Management),
            ("/v1/oauth/token", Route::Token),
            ("/api/oauth/token", Route::Token),
            ("/v1/oauth/token/introspect", Route::Introspect),
            ("/v1beta/oauth/token/revoke", Route::Revoke),
            ("/.well-known/jwks.json", Route::Oauth),
            ("/console/keys", Route::Console),
            ("/metrics", Route::Ops),
            ("/v1/api-keys", Route::Management),
            ("/auth/api_keys", Route::Management),
            ("/nope", Route::Other),
        ] {
            assert_eq!(Route::of(path), route, "{path}");
        }
    }

    #[test]
    fn outcomes_index_both_ways() {
        let all = std::iter::once(Outcome::Allowed)
            .chain(Reason::ALL.iter().map(|r| Outcome::Refused(*r)))
            .chain(Failure::ALL.iter().map(|f| Outcome::Error(*f)));
        for (i, o) in all.enumerate() {
            assert_eq!(o.index(), i);
            assert_eq!(Outcome::of_index(i), o);
        }
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        for (i, f) in Failure::ALL.iter().enumerate() {
            assert_eq!(*f as usize, i);
        }
    }

    #[test]
    fn histogram_buckets_are_upper_bounds() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(25));
        h.observe(Duration::from_micros(26));
        h.observe(Duration::from_secs(11));
        let (counts, total, sum) = h.snapshot();
        assert_eq!(counts[0], 1);
        assert_eq!(counts[1], 1);
        assert_eq!(counts[BOUNDS_NS.len()], 1);
        assert_eq!(total, 3);
        assert!((sum - 11.000051).abs() < 1e-9);
    }

    #[test]
    fn sampling_ratios() {
        let s = Sampler::new(1.0, 0.0);
        assert!(s.sample(Route::Management));
        assert!(!s.sample(Route::Authz));
        let s = Sampler::new(0.0, 0.25);
        assert!(!s.sample(Route::Console));
        let hits = (0..100).filter(|_| s.sample(Route::Gateway)).count();
        assert_eq!(hits, 25);
    }
}
