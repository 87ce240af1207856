//! The connection edge: how every listener (the API and the gateway) accepts connections and
//! reads requests, so that what a caller can hold open costs a bounded amount of time and file
//! descriptors before anything is authenticated, and where the real client address is decided.
//!
//! - **TLS** (when a listener has a certificate): the handshake must finish within its own
//!   deadline, counted from the accept, while the connection holds its slot; one that does not
//!   (a client that connects and sends nothing, or stalls half-way) is closed. The request
//!   head's deadline starts once the handshake is done.
//! - **Connection cap**: at most [`EdgeConfig::max_connections`] client connections across the
//!   listeners that share one [`ConnectionLimit`]; past it, new connections wait in the
//!   operating system's listen backlog (they are not accepted, and not refused) until one closes.
//! - **Request head**: a request's line and headers must arrive within the header timeout,
//!   counted from the connection's accept (first request) or from the first byte of the next
//!   request (keep-alive); otherwise the connection is closed without an answer.
//! - **Request body**: a body must arrive whole within the body timeout, counted from the end of
//!   its head. One that does not is answered `408` problem+json with `Connection: close`, and
//!   the connection closed.
//! - **Idle keep-alive**: a connection with no request in progress is closed after the idle
//!   timeout. A client that stops reading an answer (a write blocked that long) is cut off too.
//! - **Client address**: the TCP peer, unless it is a trusted proxy; then the right-most address
//!   of `X-Forwarded-For` (or RFC 7239 `Forwarded`, one of the two, configured) that is not
//!   itself a trusted proxy. Requests carry it in [`Conn`]; every throttle, event and log
//!   line uses it.
//! - **Request id**: the `X-Request-Id` a trusted proxy sent (when it is a plain one of at most
//!   64 characters), else one made here ([`crate::observe::RequestIds`]). Requests carry it in
//!   [`Conn`]; it is the current one while the request is answered (every log
//!   line written then names it), and every answer carries it in `X-Request-Id`.

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use axum::response::IntoResponse;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use keyplane_core::domain::request::RequestId;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::rustls;

// ----- configuration -----

/// Which header a trusted proxy names the client in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (nginx, Traefik, Envoy, HAProxy, load balancers).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`.
    Forwarded,
}

impl ForwardedHeader {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "x-forwarded-for" => Some(Self::XForwardedFor),
            "forwarded" => Some(Self::Forwarded),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::XForwardedFor => "x-forwarded-for",
            Self::Forwarded => "forwarded",
        }
    }
}

/// How connections are bounded and where the client address is read.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// Time for a request's line and headers.
    pub header_read_timeout: Duration,
    /// Time for a request's whole body, from the end of its head.
    pub body_timeout: Duration,
    /// How long a connection may wait between requests (or be unable to write an answer).
    pub idle_timeout: Duration,
    /// Client connections at once, across the listeners sharing a [`ConnectionLimit`].
    pub max_connections: usize,
    pub trusted_proxies: TrustedProxies,
    pub forwarded_header: ForwardedHeader,
    /// Time for a TLS handshake, from the accept (listeners with TLS only).
    pub tls_handshake_timeout: Duration,
    /// Makes the ids of requests that come without a trusted one.
    pub request_ids: Arc<crate::observe::RequestIds>,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            max_connections: 10_000,
            trusted_proxies: TrustedProxies::default(),
            forwarded_header: ForwardedHeader::default(),
            tls_handshake_timeout: Duration::from_secs(10),
            request_ids: Arc::default(),
        }
    }
}

/// The connection slots shared by the listeners of one process.
#[derive(Clone)]
pub struct ConnectionLimit {
    slots: Arc<Semaphore>,
    max: usize,
    warned_ms: Arc<AtomicI64>,
}

impl ConnectionLimit {
    pub fn new(max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            slots: Arc::new(Semaphore::new(max)),
            max,
            warned_ms: Arc::new(AtomicI64::new(i64::MIN / 2)),
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.max - self.slots.available_permits()
    }

    async fn acquire(&self) -> OwnedSemaphorePermit {
        if self.slots.available_permits() == 0 {
            // Once a minute at most: a flood must not flood the log too.
            let now = epoch_ms();
            let last = self.warned_ms.load(Ordering::Relaxed);
            if now - last >= 60_000
                && self
                    .warned_ms
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(
                    max_connections = self.max,
                    "the connection cap is reached: new connections wait until one closes"
                );
            }
        }
        Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }
}

fn epoch_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

// ----- trusted proxies and the client address -----

/// An address block: `10.0.0.0/8`, `2001:db8::/32`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bad = || format!("{s:?} is not an IP address or CIDR block (e.g. 10.0.0.0/8, ::1)");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let ip: IpAddr = addr.parse().map_err(|_| bad())?;
        let ip = ip.to_canonical();
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(format!("{s:?}: the prefix length is at most {max}"));
        }
        let net = mask(ip, prefix);
        if net != ip {
            return Err(format!(
                "{s:?} has bits set past its prefix length; write {net}/{prefix}"
            ));
        }
        Ok(Self { net, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.net.is_ipv4() && mask(ip, self.prefix) == self.net
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

/// The proxies whose word about the client's address is taken. Empty (the default): nobody's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Self, String> {
        items
            .iter()
            .map(|s| s.as_ref().trim())
            .filter(|s| !s.is_empty())
            .map(Cidr::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    pub fn blocks(&self) -> &[Cidr] {
        &self.0
    }
}

/// What the edge decided about a request, in one extension (one allocation, not one per
/// fact): every request the edge passes on carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conn {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The address the request is attributed to (see the module documentation).
    pub client: IpAddr,
    /// Whether it came over a TLS connection to keyplane's own listener.
    pub tls: bool,
    /// Whether the TCP peer is a trusted proxy (its forwarding headers were read).
    pub trusted_proxy: bool,
    /// The request's id (see the module documentation).
    pub request_id: RequestId,
}

impl Conn {
    /// What the edge decided about `extensions`' request, if the edge passed it on.
    pub fn of(extensions: &axum::http::Extensions) -> Option<&Conn> {
        extensions.get::<Conn>()
    }

    /// Whether the request came over keyplane's own TLS.
    pub fn tls(extensions: &axum::http::Extensions) -> bool {
        Self::of(extensions).is_some_and(|c| c.tls)
    }

    /// Whether the request's TCP peer is a trusted proxy.
    pub fn trusted_proxy(extensions: &axum::http::Extensions) -> bool {
        Self::of(extensions).is_some_and(|c| c.trusted_proxy)
    }
}

/// The client's address: `peer`, or — when `peer` is a trusted proxy — the right-most address
/// in the configured header that is not itself a trusted proxy. An entry that is not an
/// address (`unknown`, an obfuscated name) stops the walk: the nearest proxy is used.
pub fn client_addr(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &TrustedProxies,
    which: ForwardedHeader,
) -> IpAddr {
    let peer = peer.to_canonical();
    if trusted.is_empty() || !trusted.contains(peer) {
        return peer;
    }
    let mut nearest = peer;
    let name = match which {
        ForwardedHeader::XForwardedFor => "x-forwarded-for",
        ForwardedHeader::Forwarded => "forwarded",
    };
    // Several header lines form one list, in order.
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    for value in values.iter().rev() {
        for element in value.rsplit(',') {
            let entry = match which {
                ForwardedHeader::XForwardedFor => Some(element.trim()),
                ForwardedHeader::Forwarded => forwarded_for(element),
            };
            let Some(ip) = entry.and_then(parse_node) else {
                return nearest;
            };
            if !trusted.contains(ip) {
                return ip;
            }
            nearest = ip;
        }
    }
    nearest
}

/// The `for=` of one RFC 7239 `Forwarded` element (`for=192.0.2.1;proto=https`).
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("for")
            .then(|| v.trim().trim_matches('"'))
    })
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`,
/// `[2001:db8::1]`, `[2001:db8::1]:4711`.
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    s.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
}

// ----- serving -----

/// Serves `service` on `listener` until `shutdown` resolves; then stops accepting, lets
/// requests in flight finish (idle connections are closed at once) and returns once every
/// connection has closed. With `tls`, every connection starts with a TLS handshake
/// (under [`EdgeConfig::tls_handshake_timeout`]).
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    config: Arc<EdgeConfig>,
    limit: ConnectionLimit,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let (stop_tx, stop_rx) = watch::channel(false);
    // Every connection holds a sender; when all are gone, `recv` answers `None`.
    let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = limit.acquire() => p,
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors, most likely: wait rather than spin.
                    tracing::error!(error = %e, "cannot accept a connection");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                        _ = &mut shutdown => break,
                    }
                }
            },
            _ = &mut shutdown => break,
        };
        let conn = Connection {
            service: service.clone(),
            config: Arc::clone(&config),
            peer,
            tls: tls.clone(),
        };
        let stop = stop_rx.clone();
        let open = open_tx.clone();
        tokio::spawn(async move {
            conn.run(stream, stop).await;
            drop(permit);
            drop(open);
        });
    }
    drop(listener);
    drop(open_tx);
    let _ = stop_tx.send(true);
    let _ = open_rx.recv().await;
    Ok(())
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

struct Connection<S> {
    service: S,
    config: Arc<EdgeConfig>,
    peer: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl<S> Connection<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    async fn run(self, stream: TcpStream, mut stop: watch::Receiver<bool>) {
        let _ = stream.set_nodelay(true);
        let stream = match &self.tls {
            None => Stream::Plain(stream),
            Some(acceptor) => {
                if *stop.borrow() {
                    return;
                }
                // The handshake has a deadline of its own: a client that connects and then
                // sends nothing (or stalls half-way) gives its slot back when it passes.
                let handshake = tokio::time::timeout(
                    self.config.tls_handshake_timeout,
                    acceptor.accept(stream),
                );
                tokio::select! {
                    r = handshake => match r {
                        Ok(Ok(s)) => Stream::Tls(Box::new(s)),
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(peer = %self.peer, "closing a connection: the TLS handshake did not finish in time");
                            return;
                        }
                    },
                    // Shutting down: a handshake under way is abandoned.
                    _ = stop.changed() => return,
                }
            }
        };
        let is_tls = matches!(stream, Stream::Tls(_));
        // The first request's head is due from here: the accept, or the end of the handshake.
        let clock = Arc::new(ConnClock::new());
        let io = TokioIo::new(Watched {
            inner: stream,
            clock: Arc::clone(&clock),
        });
        let cfg = Arc::clone(&self.config);
        let svc = PerRequest {
            tls: is_tls,
            service: self.service,
            config: Arc::clone(&self.config),
            peer: self.peer,
            clock: Arc::clone(&clock),
        };
        let conn = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .serve_connection(io, svc);
        tokio::pin!(conn);
        let mut stopping = *stop.borrow();
        if stopping {
            conn.as_mut().graceful_shutdown();
        }
        loop {
            let wake = match clock.check(&cfg) {
                Check::Expired(why) => {
                    tracing::debug!(peer = %self.peer, why, "closing a connection");
                    return;
                }
                Check::Until(at) => at,
            };
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(peer = %self.peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = tokio::time::sleep_until(wake) => {}
                _ = stop.changed(), if !stopping => {
                    stopping = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// What a connection is doing, for its watchdog: times are milliseconds since `origin`, plus
/// one (0: not set).
struct ConnClock {
    origin: Instant,
    /// Requests whose answer is not finished.
    busy: AtomicU32,
    /// When the head being read now began (the accept, or the first byte after an answer).
    head_since: AtomicU64,
    /// When the last answer finished.
    idle_since: AtomicU64,
    /// When a write started waiting for the client to read.
    write_blocked_since: AtomicU64,
}

enum Check {
    Expired(&'static str),
    Until(Instant),
}

impl ConnClock {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            busy: AtomicU32::new(0),
            // The first request's head is due from the accept.
            head_since: AtomicU64::new(1),
            idle_since: AtomicU64::new(1),
            write_blocked_since: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64 + 1
    }

    fn at(&self, t: u64) -> Instant {
        self.origin + Duration::from_millis(t.saturating_sub(1))
    }

    fn request_started(&self) {
        self.busy.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(0, Ordering::Relaxed);
    }

    fn answer_finished(&self) {
        if self.busy.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.idle_since.store(self.now(), Ordering::Relaxed);
            self.head_since.store(0, Ordering::Relaxed);
        }
    }

    fn bytes_read(&self) {
        if self.busy.load(Ordering::Relaxed) == 0 && self.head_since.load(Ordering::Relaxed) == 0 {
            self.head_since.store(self.now(), Ordering::Relaxed);
        }
    }

    fn write_blocked(&self, blocked: bool) {
        let was = self.write_blocked_since.load(Ordering::Relaxed);
        if blocked && was == 0 {
            self.write_blocked_since
                .store(self.now(), Ordering::Relaxed);
        } else if !blocked && was != 0 {
            self.write_blocked_since.store(0, Ordering::Relaxed);
        }
    }

    /// Whether the connection overstayed, else when to look again. State changes made since
    /// the last look are seen at the latest one period (the shorter timeout) later, and every
    /// deadline is computed from when its state began, so none is missed.
    fn check(&self, c: &EdgeConfig) -> Check {
        let now = self.now();
        let ms = |d: Duration| d.as_millis() as u64;
        let period = ms(c.header_read_timeout.min(c.idle_timeout)).max(1);
        let mut next = now + period;
        let blocked = self.write_blocked_since.load(Ordering::Relaxed);
        if blocked != 0 {
            let due = blocked + ms(c.idle_timeout);
            if now >= due {
                return Check::Expired("the client stopped reading the answer");
            }
            next = next.min(due);
        }
        if self.busy.load(Ordering::Relaxed) == 0 {
            let head = self.head_since.load(Ordering::Relaxed);
            if head != 0 {
                let due = head + ms(c.header_read_timeout);
                if now >= due {
                    return Check::Expired("the request's head did not arrive in time");
                }
                next = next.min(due);
            } else {
                let due = self.idle_since.load(Ordering::Relaxed) + ms(c.idle_timeout);
                if now >= due {
                    return Check::Expired("idle");
                }
                next = next.min(due);
            }
        }
        Check::Until(self.at(next))
    }
}

/// A connection's byte stream: the socket, or TLS over it.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The connection's stream, reporting reads and blocked writes to the connection's clock.
struct Watched {
    inner: Stream,
    clock: Arc<ConnClock>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.bytes_read();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.clock.write_blocked(r.is_pending());
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.clock.write_blocked(r.is_pending());
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Turns each request of a connection into one for the tower service: the connection's peer
/// and the client address as extensions, the body under its deadline, the answer counted.
struct PerRequest<S> {
    /// Whether the connection is TLS.
    tls: bool,
    service: S,
    config: Arc<EdgeConfig>,
    peer: SocketAddr,
    clock: Arc<ConnClock>,
}

impl<S> hyper::service::Service<Request<Incoming>> for PerRequest<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<CountedBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.clock.request_started();
        let (mut parts, incoming) = req.into_parts();
        let client = client_addr(
            self.peer.ip(),
            &parts.headers,
            &self.config.trusted_proxies,
            self.config.forwarded_header,
        );
        let trusted = !self.config.trusted_proxies.is_empty()
            && self.config.trusted_proxies.contains(self.peer.ip());
        let id = self.config.request_ids.for_request(&parts.headers, trusted);
        parts.extensions.insert(Conn {
            peer: self.peer,
            client,
            tls: self.tls,
            trusted_proxy: trusted,
            request_id: id,
        });
        // A request without a body (most of them: every GET) pays for no deadline at all.
        let (body, timed_out) = if incoming.is_end_stream() {
            (Body::new(incoming), None)
        } else {
            let flag = Arc::new(AtomicBool::new(false));
            let body = DeadlineBody {
                inner: incoming,
                deadline: Instant::now() + self.config.body_timeout,
                sleep: None,
                timed_out: Arc::clone(&flag),
            };
            (Body::new(body), Some(flag))
        };
        let call =
            tower::ServiceExt::oneshot(self.service.clone(), Request::from_parts(parts, body));
        let clock = Arc::clone(&self.clock);
        let body_timeout = self.config.body_timeout;
        Box::pin(async move {
            let resp = match crate::observe::with_request_id(id, call).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            let mut resp = match timed_out {
                Some(flag) if flag.load(Ordering::Acquire) => body_timed_out(body_timeout),
                _ => resp,
            };
            resp.headers_mut().insert(
                crate::observe::X_REQUEST_ID,
                crate::observe::header_value(&id),
            );
            Ok(resp.map(|inner| CountedBody {
                inner,
                clock: Some(clock),
            }))
        })
    }
}

/// The answer to a request whose body did not arrive in time.
fn body_timed_out(limit: Duration) -> Response<Body> {
    let mut resp = crate::error::ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "request-timeout",
        "Request timeout",
        format!(
            "the request body did not arrive within {} seconds",
            limit.as_secs_f64()
        ),
    )
    .into_response();
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// A request body that fails once its deadline passes. The timer is made only when the body
/// is not all there at the first read.
struct DeadlineBody {
    inner: Incoming,
    deadline: Instant,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    timed_out: Arc<AtomicBool>,
}

/// The error a body reports when its deadline passed.
#[derive(Debug)]
pub struct BodyTimedOut;

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body did not arrive in time")
    }
}

impl std::error::Error for BodyTimedOut {}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.timed_out.load(Ordering::Relaxed) {
            return Poll::Ready(Some(Err(Box::new(BodyTimedOut))));
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(r) => Poll::Ready(r.map(|f| f.map_err(Into::into))),
            Poll::Pending => {
                let deadline = self.deadline;
                let sleep = self
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        self.timed_out.store(true, Ordering::Release);
                        Poll::Ready(Some(Err(Box::new(BodyTimedOut))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An answer's body that tells the connection's clock when it is done (written or dropped).
pub struct CountedBody {
    inner: Body,
    clock: Option<Arc<ConnClock>>,
}

impl HttpBody for CountedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for CountedBody {
    fn drop(&mut self) {
        if let Some(c) = self.clock.take() {
            c.answer_finished();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_blocks() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains(ip("10.1.2.3")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(!c.contains(ip("::1")));
        assert!(Cidr::parse("127.0.0.1").unwrap().contains(ip("127.0.0.1")));
        assert!(Cidr::parse("127.0.0.1")
            .unwrap()
            .contains(ip("::ffff:127.0.0.1")));
        assert!(Cidr::parse("2001:db8::/32")
            .unwrap()
            .contains(ip("2001:db8:1::5")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(Cidr::parse("10.0.0.1/8").is_err());
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("example.com").is_err());
        assert_eq!(Cidr::parse("::1").unwrap().to_string(), "::1/128");
    }

    #[test]
    fn client_address() {
        let trusted = TrustedProxies::parse(&["127.0.0.1/32", "10.0.0.0/8"]).unwrap();
        let xff = ForwardedHeader::XForwardedFor;
        let h = headers(&[("x-forwarded-for", "203.0.113.9, 10.0.0.2")]);
        // An untrusted peer's claim changes nothing.
        assert_eq!(
            client_addr(ip("192.0.2.1"), &h, &trusted, xff),
            ip("192.0.2.1")
        );
        assert_eq!(
            client_addr(ip("127.0.0.1"), &h, &TrustedProxies::default(), xff),
            ip("127.0.0.1")
        );
        // A trusted one: the right-most address that is not a trusted proxy.
        assert_eq!(
            client_addr(ip("127.0.0.1"), &h, &trusted, xff),
            ip("203.0.113.9")
        );
        // A spoofed left part does not win over what the proxy appended.
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 198.51.100.7")]);
        assert_eq!(
            client_addr(ip("127.0.0.1"), &h, &trusted, xff),
            ip("198.51.100.7")
        );
        // Several lines form one list; ports and brackets are understood.
        let h = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "[2001:db8::7]:443, 10.0.0.9:80"),
        ]);
        assert_eq!(
            client_addr(ip("10.0.0.1"), &h, &trusted, xff),
            ip("2001:db8::7")
        );
        // Nothing forwarded, or only proxies: the furthest proxy known.
        assert_eq!(
            client_addr(ip("127.0.0.1"), &HeaderMap::new(), &trusted, xff),
            ip("127.0.0.1")
        );
        let h = headers(&[("x-forwarded-for", "10.0.0.5, 10.0.0.2")]);
        assert_eq!(
            client_addr(ip("127.0.0.1"), &h, &trusted, xff),
            ip("10.0.0.5")
        );
        // Garbage stops the walk at the nearest proxy.
        let h = headers(&[("x-forwarded-for", "1.2.3.4, unknown, 10.0.0.2")]);
        assert_eq!(
            client_addr(ip("127.0.0.1"), &h, &trusted, xff),
            ip("10.0.0.2")
        );
        // RFC 7239, only when configured; the other header is then ignored.
        let h = headers(&[
            (
                "forwarded",
                "for=192.0.2.60;proto=http, For=\"[2001:db8:cafe::17]:4711\"",
            ),
            ("x-forwarded-for", "6.6.6.6"),
        ]);
        assert_eq!(
            client_addr(ip("127.0.0.1"), &h, &trusted, ForwardedHeader::Forwarded),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(
            client_addr(ip("127.0.0.1"), &h, &trusted, xff),
            ip("6.6.6.6")
        );
        let h = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(
            client_addr(ip("127.0.0.1"), &h, &trusted, ForwardedHeader::Forwarded),
            ip("127.0.0.1")
        );
    }
}
