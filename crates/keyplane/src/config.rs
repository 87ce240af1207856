//! Configuration: one typed struct, layered defaults → TOML file → `KEYPLANE_*` environment →
//! flags, validated once at start. Any secret can also come from a `*_FILE`.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The TOML file's shape. Every field is optional; unknown fields are an error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub database: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub admin_key_file: Option<PathBuf>,
    pub pepper_file: Option<PathBuf>,
    /// A file holding the token `/metrics` requires (when set).
    pub metrics_token_file: Option<PathBuf>,
    pub max_active_keys_per_org: Option<i64>,
    /// Days a new API key lives when its creator names no expiry (0: never expires).
    pub api_key_default_ttl_days: Option<i64>,
    pub flush_interval_ms: Option<u64>,
    pub stale_serve_seconds: Option<u64>,
    pub cache_preload: Option<bool>,
    pub log_format: Option<String>,
    /// The public URL of this deployment (`iss` of tokens, base of the metadata's endpoints).
    pub issuer: Option<String>,
    /// TLS on the API listener: a PEM certificate chain and its PEM private key.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Time for a TLS handshake (every listener with TLS).
    pub tls_handshake_timeout_seconds: Option<u64>,
    #[serde(default)]
    pub prefixes: Prefixes,
    #[serde(default)]
    pub oauth: OAuthFile,
    /// Declared objects, applied at start and by `keyplane apply` (see `declare.rs`).
    #[serde(default)]
    pub orgs: Vec<crate::declare::OrgDecl>,
    #[serde(default)]
    pub projects: Vec<crate::declare::ProjectDecl>,
    #[serde(default)]
    pub services: Vec<crate::declare::ServiceDecl>,
    #[serde(default)]
    pub roles: Vec<crate::declare::RoleDecl>,
    #[serde(default)]
    pub members: Vec<crate::declare::MemberDecl>,
    #[serde(default)]
    pub clients: Vec<crate::declare::ClientDecl>,
    /// Route rules for forward auth and the gateway (`[[routes]]`).
    #[serde(default)]
    pub routes: Vec<toml::Spanned<RouteFile>>,
    #[serde(default)]
    pub authz: AuthzFile,
    pub gateway_listen: Option<String>,
    /// TLS on the gateway listener.
    pub gateway_tls_cert: Option<PathBuf>,
    pub gateway_tls_key: Option<PathBuf>,
    pub upstream: Option<String>,
    /// The CA (PEM) an https:// upstream's certificate must chain to, instead of the Mozilla roots.
    pub upstream_ca_cert: Option<PathBuf>,
    /// The resource URI (RFC 8707, a service's `resources` entry) the gateway fronts: its RFC
    /// 9728 metadata is served by the gateway and named in the gateway's challenges.
    pub gateway_resource: Option<String>,
    #[serde(default)]
    pub gateway: GatewayFile,
    /// Time for a request's line and headers (every listener).
    pub header_read_timeout_seconds: Option<u64>,
    /// Time for a request's whole body (every listener); then 408.
    pub request_body_timeout_seconds: Option<u64>,
    /// How long a keep-alive connection may wait between requests.
    pub idle_timeout_seconds: Option<u64>,
    /// Client connections at once, across the API and the gateway.
    pub max_connections: Option<usize>,
    /// Proxies (addresses or CIDR blocks) whose forwarding header names the client.
    pub trusted_proxies: Option<Vec<String>>,
    /// `x-forwarded-for` (default) or `forwarded` (RFC 7239).
    pub forwarded_header: Option<String>,
    /// Failed authentications on the management API per client address per minute.
    pub auth_failures_per_minute: Option<u32>,
    /// Distinct refusal events written per flush; the rest are counted in one more.
    pub refusal_events_per_flush: Option<usize>,
    /// Serve `/metrics` (with `/healthz`, `/readyz`) on this address instead of the API's.
    pub metrics_listen: Option<String>,
    /// OpenTelemetry traces (`[otel]`).
    #[serde(default)]
    pub otel: OtelFile,
    /// Leaked-credential reports (`[leaks]`, docs/leaks.md).
    #[serde(default)]
    pub leaks: LeaksFile,
    /// Usage analytics (`[usage]`).
    #[serde(default)]
    pub usage: UsageFile,
    /// Rate limits across nodes (`[rate_limits]`).
    #[serde(default)]
    pub rate_limits: RateLimitsFile,
}

/// `[leaks]`: what a report of a leaked credential does, and whose reports are trusted.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaksFile {
    /// `revoke` (default: a reported live key or client secret is revoked at once) or `notify`
    /// (only `credential.leaked` is recorded).
    pub policy: Option<String>,
    /// A file holding GitHub's secret-scanning public keys, in the JSON GitHub serves
    /// (`{"public_keys": [{"key_identifier", "key", "is_current"}]}`); used before any fetched.
    pub github_public_keys_file: Option<PathBuf>,
    /// Where GitHub's public keys are fetched from (default GitHub's own URL; "" turns
    /// fetching off, leaving only the file's keys).
    pub github_keys_url: Option<String>,
    /// The key list is fetched again for an unknown identifier at most this often (60 s).
    pub github_keys_refetch_interval_seconds: Option<i64>,
    /// Reports through the public form per client address per minute (10).
    pub form_reports_per_minute: Option<u32>,
}

/// `[usage]`: how long usage counts are kept.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageFile {
    /// Hours per-minute counts are kept (default 24).
    pub minute_retention_hours: Option<u64>,
    /// Days per-hour counts are kept (default 90).
    pub hour_retention_days: Option<u64>,
}

/// `[rate_limits]`: how nodes share rate limits.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsFile {
    /// `redis://host:port/db`: nodes reconcile their counts through Redis.
    pub redis_url: Option<String>,
    /// How often each node sends its new units to Redis and reads the totals (default 50 ms).
    pub sync_interval_ms: Option<u64>,
    /// Without Redis: how many nodes serve; each enforces its share of every limit (default 1).
    pub nodes: Option<u64>,
}

/// `[otel]`: traces over OTLP/HTTP, off unless `endpoint` is set.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtelFile {
    /// The collector's base URL (`/v1/traces` is added), e.g. `http://127.0.0.1:4318`.
    pub endpoint: Option<String>,
    /// `http/protobuf` (default) or `http/json`.
    pub protocol: Option<String>,
    /// `service.name` of the spans (default `keyplane`).
    pub service_name: Option<String>,
    /// The share of requests answered by the router that are traced (default 1).
    pub sample_ratio: Option<f64>,
    /// The share of `/v1/authz`, token, introspection and gateway requests traced (default 0).
    pub hot_sample_ratio: Option<f64>,
}

/// How traces are exported (see `telemetry.rs`).
#[derive(Debug, Clone, PartialEq)]
pub struct OtelConfig {
    /// The collector's base URL.
    pub endpoint: String,
    pub protocol: OtelProtocol,
    pub service_name: String,
    pub sample_ratio: f64,
    pub hot_sample_ratio: f64,
}

impl OtelConfig {
    /// Where spans are sent: the endpoint with `/v1/traces` (unless it ends so already).
    pub fn traces_url(&self) -> String {
        let base = self.endpoint.trim_end_matches('/');
        if base.ends_with("/v1/traces") {
            base.to_string()
        } else {
            format!("{base}/v1/traces")
        }
    }
}

/// The OTLP/HTTP encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtelProtocol {
    HttpProtobuf,
    HttpJson,
}

impl OtelProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            OtelProtocol::HttpProtobuf => "http/protobuf",
            OtelProtocol::HttpJson => "http/json",
        }
    }
}

/// `metrics_listen` and `[otel]`, from the environment and the file.
fn observability(
    file: &FileConfig,
    env: &HashMap<String, String>,
) -> Result<(Option<SocketAddr>, Option<OtelConfig>)> {
    let metrics_listen = env
        .get("KEYPLANE_METRICS_LISTEN")
        .cloned()
        .or(file.metrics_listen.clone())
        .filter(|a| !a.trim().is_empty())
        .map(|a| {
            a.parse::<SocketAddr>().with_context(|| {
                format!("metrics_listen {a:?} is not HOST:PORT (e.g. 127.0.0.1:9464)")
            })
        })
        .transpose()?;
    let o = &file.otel;
    let text = |var: &str, file: &Option<String>| {
        env.get(var)
            .cloned()
            .or(file.clone())
            .filter(|v| !v.trim().is_empty())
    };
    let Some(endpoint) = text("KEYPLANE_OTEL_ENDPOINT", &o.endpoint) else {
        return Ok((metrics_listen, None));
    };
    let uri: axum::http::Uri = endpoint
        .parse()
        .with_context(|| format!("otel.endpoint {endpoint:?} is not a URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
        bail!("otel.endpoint {endpoint:?} must be an http:// or https:// URL with a host (OTLP over HTTP; gRPC is not supported)");
    }
    let protocol = match text("KEYPLANE_OTEL_PROTOCOL", &o.protocol).as_deref() {
        None | Some("http/protobuf") => OtelProtocol::HttpProtobuf,
        Some("http/json") => OtelProtocol::HttpJson,
        Some(other) => bail!("otel.protocol must be `http/protobuf` or `http/json`, not {other:?}"),
    };
    let ratio = |var: &str, file: Option<f64>, default: f64| -> Result<f64> {
        let v = match env.get(var) {
            Some(v) => v
                .trim()
                .parse::<f64>()
                .with_context(|| format!("{var} must be a number from 0 to 1"))?,
            None => file.unwrap_or(default),
        };
        if !(0.0..=1.0).contains(&v) {
            bail!("{var} (or its setting) must be from 0 to 1, not {v}");
        }
        Ok(v)
    };
    Ok((
        metrics_listen,
        Some(OtelConfig {
            endpoint,
            protocol,
            service_name: text("KEYPLANE_OTEL_SERVICE_NAME", &o.service_name)
                .unwrap_or_else(|| "keyplane".into()),
            sample_ratio: ratio("KEYPLANE_OTEL_SAMPLE_RATIO", o.sample_ratio, 1.0)?,
            hot_sample_ratio: ratio("KEYPLANE_OTEL_HOT_SAMPLE_RATIO", o.hot_sample_ratio, 0.0)?,
        }),
    ))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    #[serde(default)]
    pub methods: Vec<String>,
    pub path: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The credential rate limit (by name) a matching request counts against with `cost`;
    /// absent: every limit of the credential.
    pub rate_limit: Option<String>,
    /// Units a matching request costs (default 1).
    pub cost: Option<u64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthzFile {
    /// `deny` (default) or `allow`: what happens to a request no route rule matches.
    pub unmatched: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayFile {
    pub upstream_timeout_ms: Option<u64>,
    pub max_body_bytes: Option<usize>,
    pub max_header_bytes: Option<usize>,
}

/// Reads the route rules (and the unmatched policy) from the configuration file, with the
/// line each rule starts on. Used at start and on every reload.
pub fn read_rules(
    path: Option<&Path>,
) -> Result<(Vec<keyplane_core::domain::routes::RuleInput>, bool), String> {
    let Some(path) = path else {
        return Ok((vec![], false));
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let file: FileConfig =
        toml::from_str(&text).map_err(|e| format!("{} is not valid: {e}", path.display()))?;
    let rules = file
        .routes
        .into_iter()
        .map(|spanned| {
            let line = text[..spanned.span().start.min(text.len())]
                .matches('\n')
                .count()
                + 1;
            let r = spanned.into_inner();
            keyplane_core::domain::routes::RuleInput {
                methods: r.methods,
                path: r.path,
                scopes: r.scopes,
                line,
                rate_limit: r.rate_limit,
                cost: r.cost,
            }
        })
        .collect();
    let allow = match file.authz.unmatched.as_deref() {
        None | Some("deny") => false,
        Some("allow") => true,
        Some(other) => {
            return Err(format!(
                "authz.unmatched must be `deny` or `allow`, not {other:?}"
            ))
        }
    };
    Ok((rules, allow))
}

/// The route rules' source: the configuration file, read again on SIGHUP or the admin route.
pub struct FileRules(pub Option<PathBuf>);

impl keyplane_core::domain::routes::RulesSource for FileRules {
    fn load(&self) -> Result<(Vec<keyplane_core::domain::routes::RuleInput>, bool), String> {
        read_rules(self.0.as_deref())
    }
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthFile {
    /// `ES256` (default) or `EdDSA`.
    pub signing_alg: Option<String>,
    /// `aggregate` (one event per client per minute, default) or `each`.
    pub token_events: Option<String>,
    pub signing_key_lead_seconds: Option<i64>,
    /// 0 turns automatic rotation off.
    pub signing_key_rotation_days: Option<i64>,
    pub default_access_token_ttl_seconds: Option<i64>,
    /// The longest a `private_key_jwt` client assertion may live (default 300 s).
    pub client_assertion_max_lifetime_seconds: Option<i64>,
    pub federated_token_max_lifetime_seconds: Option<i64>,
    /// The longest a token obtained by token exchange lives (default 300 s).
    pub exchanged_token_max_ttl_seconds: Option<i64>,
    /// A client's `jwks_uri` is fetched again for an unknown `kid` at most this often (30 s).
    pub jwks_refetch_interval_seconds: Option<i64>,
    /// A fetched `jwks_uri` document is used this long before it is fetched again (300 s).
    pub jwks_max_age_seconds: Option<i64>,
    /// Allow `http://` `jwks_uri`s on loopback hosts (tests and development; default false).
    pub jwks_uri_allow_loopback_http: Option<bool>,
    /// DPoP: a proof's `iat` may be at most this many seconds from now (60).
    pub dpop_iat_window_seconds: Option<i64>,
    /// DPoP §8: require a server nonce in every proof (false).
    pub dpop_require_nonce: Option<bool>,
    /// RFC 7591 dynamic client registration: `off` (default), `open`, or `token` (an initial
    /// access token from `registration_token_file` or `KEYPLANE_OAUTH_REGISTRATION_TOKEN`).
    pub registration: Option<String>,
    /// The file holding the initial access token `registration = "token"` requires.
    pub registration_token_file: Option<PathBuf>,
    /// Fetch client ID metadata documents over http:// from loopback addresses (development;
    /// default false: https:// from public addresses only).
    pub client_metadata_allow_loopback: Option<bool>,
    /// PEM CA certificates a client ID metadata document's server must chain to, instead of
    /// the Mozilla roots (a private CA; tests).
    pub client_metadata_ca_cert: Option<PathBuf>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prefixes {
    pub api_key: Option<String>,
    pub admin_key: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub access_token: Option<String>,
}

/// Flags that override everything else.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ConfigFlags {
    /// A TOML configuration file (or KEYPLANE_CONFIG).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Database URL: sqlite://PATH or postgres://... (or KEYPLANE_DATABASE, or `database` in
    /// the file; default sqlite://keyplane.db in the working directory).
    #[arg(long, value_name = "URL")]
    pub database: Option<String>,
    /// Where a generated pepper is kept (or KEYPLANE_DATA_DIR; default: the SQLite file's
    /// folder, else the working directory).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// The gateway's flags.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct GatewayFlags {
    /// Also run the gateway (a reverse proxy that checks credentials) on this address.
    #[arg(long, value_name = "HOST:PORT")]
    pub gateway_listen: Option<String>,
    /// The API the gateway forwards to, e.g. http://127.0.0.1:9000.
    #[arg(long, value_name = "URL")]
    pub upstream: Option<String>,
    /// The resource URI the gateway fronts (a service's resource URI), e.g.
    /// https://mcp.example.com/mcp: the gateway serves its RFC 9728 metadata.
    #[arg(long, value_name = "URI")]
    pub gateway_resource: Option<String>,
}

/// Flags of `keyplane serve` for the connection edge and authentication throttling.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct EdgeFlags {
    /// Seconds a client has to send a request's line and headers (default 10).
    #[arg(long, value_name = "SECONDS")]
    pub header_read_timeout_seconds: Option<u64>,
    /// Seconds a client has to send a request's body (default 30; then 408).
    #[arg(long, value_name = "SECONDS")]
    pub request_body_timeout_seconds: Option<u64>,
    /// Seconds a keep-alive connection may wait between requests (default 90).
    #[arg(long, value_name = "SECONDS")]
    pub idle_timeout_seconds: Option<u64>,
    /// Client connections at once, across the API and the gateway (default 10000).
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Proxies whose X-Forwarded-For (or Forwarded) names the client: addresses or CIDR
    /// blocks, comma-separated (default: none).
    #[arg(long, value_name = "CIDR,...")]
    pub trusted_proxies: Option<String>,
    /// `x-forwarded-for` (default) or `forwarded`: the header trusted proxies name the client in.
    #[arg(long, value_name = "HEADER")]
    pub forwarded_header: Option<String>,
    /// Failed management-API authentications allowed per client address per minute (default 20).
    #[arg(long, value_name = "N")]
    pub auth_failures_per_minute: Option<u32>,
    /// Refusal events written per flush at most (default 100); the rest are counted in one more.
    #[arg(long, value_name = "N")]
    pub refusal_events_per_flush: Option<usize>,
}

/// A listener's certificate chain and private key (PEM files, read at start and on reload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The validated configuration.
#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub database: String,
    pub data_dir: PathBuf,
    /// The operator-supplied admin key, if any (never printed).
    pub admin_key: Option<String>,
    /// The operator-supplied pepper, if any (never printed).
    pub pepper: Option<Vec<u8>>,
    /// The token `/metrics` requires, if any (never printed); without it `/metrics` is open.
    pub metrics_token: Option<String>,
    pub max_active_keys_per_org: Option<i64>,
    /// Days a new API key lives when its creator names no expiry; `None`: never.
    pub api_key_default_ttl_days: Option<i64>,
    pub flush_interval_ms: u64,
    /// How long cached credentials are served after the database connection drops.
    pub stale_serve_seconds: u64,
    /// Whether active API keys are read into the cache in the background after start.
    pub cache_preload: bool,
    pub log_format: String,
    pub api_key_prefix: String,
    pub admin_key_prefix: String,
    pub client_id_prefix: String,
    pub client_secret_prefix: String,
    pub access_token_prefix: String,
    pub issuer: String,
    /// Whether the issuer was configured; otherwise it follows the address actually bound.
    pub issuer_explicit: bool,
    /// TLS on the API listener.
    pub tls: Option<TlsFiles>,
    /// TLS on the gateway listener.
    pub gateway_tls: Option<TlsFiles>,
    pub tls_handshake_timeout_seconds: u64,
    /// The CA an https:// upstream must chain to (else the Mozilla roots).
    pub upstream_ca_cert: Option<PathBuf>,
    pub signing_alg: String,
    pub aggregate_token_events: bool,
    pub signing_key_lead_seconds: i64,
    pub signing_key_rotation_days: Option<i64>,
    pub default_access_token_ttl_seconds: i64,
    pub client_assertion_max_lifetime_seconds: i64,
    /// The longest a federated (platform) token may live.
    pub federated_token_max_lifetime_seconds: i64,
    /// The longest a token obtained by token exchange lives.
    pub exchanged_token_max_ttl_seconds: i64,
    pub jwks_refetch_interval_seconds: i64,
    pub jwks_max_age_seconds: i64,
    pub jwks_uri_allow_loopback_http: bool,
    pub dpop_iat_window_seconds: i64,
    pub dpop_require_nonce: bool,
    /// Dynamic client registration (never printed: it may hold the initial access token).
    pub registration: keyplane_core::domain::settings::Registration,
    pub client_metadata_allow_loopback: bool,
    /// PEM CA certificates client ID metadata documents are checked against (else Mozilla's).
    pub client_metadata_ca_cert: Option<PathBuf>,
    /// The configuration file, where route rules are read from (again on reload).
    pub config_file: Option<PathBuf>,
    pub gateway_listen: Option<SocketAddr>,
    pub upstream: Option<String>,
    /// The resource URI the gateway fronts (RFC 9728), normalized.
    pub gateway_resource: Option<String>,
    pub upstream_timeout_ms: u64,
    pub gateway_max_body_bytes: usize,
    pub gateway_max_header_bytes: usize,
    pub header_read_timeout_seconds: u64,
    pub request_body_timeout_seconds: u64,
    pub idle_timeout_seconds: u64,
    pub max_connections: usize,
    pub trusted_proxies: keyplane_http::edge::TrustedProxies,
    pub forwarded_header: keyplane_http::edge::ForwardedHeader,
    pub auth_failures_per_minute: u32,
    pub refusal_events_per_flush: usize,
    /// `/metrics` on a listener of its own (else on the API listener).
    pub metrics_listen: Option<SocketAddr>,
    /// OpenTelemetry traces, when an endpoint is configured.
    pub otel: Option<OtelConfig>,
    /// Leaked-credential reports.
    pub leaks: keyplane_core::domain::leaks::LeakSettings,
    pub usage_minute_retention_hours: u64,
    pub usage_hour_retention_days: u64,
    /// Redis for rate limits shared across nodes (never printed: it may hold a password).
    pub redis_url: Option<String>,
    pub rate_limit_sync_interval_ms: u64,
    /// Nodes sharing each limit without Redis.
    pub rate_limit_nodes: u64,
    /// Apply pending migrations when opening the database (default), or refuse a database
    /// that lacks one (`keyplane serve --no-migrate`).
    pub migrations: keyplane_store::Migrations,
}

impl Config {
    /// The connection edge's settings (every listener).
    pub fn edge(&self) -> keyplane_http::edge::EdgeConfig {
        use std::time::Duration;
        keyplane_http::edge::EdgeConfig {
            header_read_timeout: Duration::from_secs(self.header_read_timeout_seconds),
            body_timeout: Duration::from_secs(self.request_body_timeout_seconds),
            idle_timeout: Duration::from_secs(self.idle_timeout_seconds),
            max_connections: self.max_connections,
            trusted_proxies: self.trusted_proxies.clone(),
            forwarded_header: self.forwarded_header,
            tls_handshake_timeout: Duration::from_secs(self.tls_handshake_timeout_seconds),
            ..Default::default()
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("database", &redact_url(&self.database))
            .field("data_dir", &self.data_dir)
            .field("admin_key", &self.admin_key.as_ref().map(|_| "<redacted>"))
            .field("pepper", &self.pepper.as_ref().map(|_| "<redacted>"))
            .field(
                "metrics_token",
                &self.metrics_token.as_ref().map(|_| "<redacted>"),
            )
            .field("max_active_keys_per_org", &self.max_active_keys_per_org)
            .field("api_key_default_ttl_days", &self.api_key_default_ttl_days)
            .finish_non_exhaustive()
    }
}

/// A database URL with any password removed, for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}://{}:***@{}", &url[..s], user, &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// Every `KEYPLANE_*` variable keyplane reads; any other earns a warning at start.
pub const KNOWN_ENV: &[&str] = &[
    "KEYPLANE_CONFIG",
    "KEYPLANE_LISTEN",
    "KEYPLANE_DATABASE",
    "KEYPLANE_DATA_DIR",
    "KEYPLANE_ADMIN_KEY",
    "KEYPLANE_ADMIN_KEY_FILE",
    "KEYPLANE_PEPPER",
    "KEYPLANE_PEPPER_FILE",
    "KEYPLANE_MAX_ACTIVE_KEYS_PER_ORG",
    "KEYPLANE_API_KEY_DEFAULT_TTL_DAYS",
    "KEYPLANE_OAUTH_REGISTRATION",
    "KEYPLANE_OAUTH_REGISTRATION_TOKEN",
    "KEYPLANE_CLIENT_METADATA_ALLOW_LOOPBACK",
    "KEYPLANE_CLIENT_METADATA_CA_CERT",
    "KEYPLANE_GATEWAY_RESOURCE",
    "KEYPLANE_FLUSH_INTERVAL_MS",
    "KEYPLANE_STALE_SERVE_SECONDS",
    "KEYPLANE_CACHE_PRELOAD",
    "KEYPLANE_LOG",
    "KEYPLANE_LOG_FORMAT",
    "KEYPLANE_API_KEY_PREFIX",
    "KEYPLANE_ADMIN_KEY_PREFIX",
    "KEYPLANE_CLIENT_ID_PREFIX",
    "KEYPLANE_CLIENT_SECRET_PREFIX",
    "KEYPLANE_ACCESS_TOKEN_PREFIX",
    "KEYPLANE_ISSUER",
    "KEYPLANE_TLS_CERT",
    "KEYPLANE_TLS_KEY",
    "KEYPLANE_TLS_HANDSHAKE_TIMEOUT_SECONDS",
    "KEYPLANE_GATEWAY_TLS_CERT",
    "KEYPLANE_GATEWAY_TLS_KEY",
    "KEYPLANE_UPSTREAM_CA_CERT",
    "KEYPLANE_CA_CERT",
    "KEYPLANE_SIGNING_ALG",
    "KEYPLANE_TOKEN_EVENTS",
    "KEYPLANE_SIGNING_KEY_LEAD_SECONDS",
    "KEYPLANE_SIGNING_KEY_ROTATION_DAYS",
    "KEYPLANE_GATEWAY_LISTEN",
    "KEYPLANE_UPSTREAM",
    "KEYPLANE_UPSTREAM_TIMEOUT_MS",
    "KEYPLANE_HEADER_READ_TIMEOUT_SECONDS",
    "KEYPLANE_REQUEST_BODY_TIMEOUT_SECONDS",
    "KEYPLANE_IDLE_TIMEOUT_SECONDS",
    "KEYPLANE_MAX_CONNECTIONS",
    "KEYPLANE_TRUSTED_PROXIES",
    "KEYPLANE_FORWARDED_HEADER",
    "KEYPLANE_AUTH_FAILURES_PER_MINUTE",
    "KEYPLANE_REFUSAL_EVENTS_PER_FLUSH",
    "KEYPLANE_CLIENT_ASSERTION_MAX_LIFETIME_SECONDS",
    "KEYPLANE_FEDERATED_TOKEN_MAX_LIFETIME_SECONDS",
    "KEYPLANE_EXCHANGED_TOKEN_MAX_TTL_SECONDS",
    "KEYPLANE_DPOP_IAT_WINDOW_SECONDS",
    "KEYPLANE_DPOP_REQUIRE_NONCE",
    "KEYPLANE_JWKS_REFETCH_INTERVAL_SECONDS",
    "KEYPLANE_JWKS_MAX_AGE_SECONDS",
    "KEYPLANE_JWKS_URI_ALLOW_LOOPBACK_HTTP",
    "KEYPLANE_METRICS_TOKEN",
    "KEYPLANE_METRICS_TOKEN_FILE",
    "KEYPLANE_METRICS_LISTEN",
    "KEYPLANE_OTEL_ENDPOINT",
    "KEYPLANE_OTEL_PROTOCOL",
    "KEYPLANE_OTEL_SERVICE_NAME",
    "KEYPLANE_OTEL_SAMPLE_RATIO",
    "KEYPLANE_OTEL_HOT_SAMPLE_RATIO",
    "KEYPLANE_LEAKS_POLICY",
    "KEYPLANE_LEAKS_GITHUB_PUBLIC_KEYS_FILE",
    "KEYPLANE_LEAKS_GITHUB_KEYS_URL",
    "KEYPLANE_LEAKS_GITHUB_KEYS_REFETCH_INTERVAL_SECONDS",
    "KEYPLANE_LEAKS_FORM_REPORTS_PER_MINUTE",
    "KEYPLANE_USAGE_MINUTE_RETENTION_HOURS",
    "KEYPLANE_USAGE_HOUR_RETENTION_DAYS",
    "KEYPLANE_REDIS_URL",
    "KEYPLANE_RATE_LIMIT_SYNC_INTERVAL_MS",
    "KEYPLANE_RATE_LIMIT_NODES",
    // The CLI client's.
    "KEYPLANE_URL",
    "KEYPLANE_TOKEN",
    // Tests'.
    "KEYPLANE_TEST_DATABASE_URL",
];

fn read_secret_file(path: &Path, what: &str) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the {what} file {}", path.display()))?;
    Ok(text.trim().to_string())
}

impl Config {
    /// Loads the configuration from `env` (normally `std::env::vars()`) and the flags.
    pub fn load(
        flags: &ConfigFlags,
        listen_flag: Option<&str>,
        env: &HashMap<String, String>,
    ) -> Result<Config> {
        Self::load_with(flags, listen_flag, &GatewayFlags::default(), env)
    }

    /// Like [`Config::load`], with the gateway's flags.
    pub fn load_with(
        flags: &ConfigFlags,
        listen_flag: Option<&str>,
        gateway: &GatewayFlags,
        env: &HashMap<String, String>,
    ) -> Result<Config> {
        Self::load_serve(flags, listen_flag, gateway, &EdgeFlags::default(), env)
    }

    /// Like [`Config::load`], with every flag of `keyplane serve`.
    pub fn load_serve(
        flags: &ConfigFlags,
        listen_flag: Option<&str>,
        gateway: &GatewayFlags,
        edge: &EdgeFlags,
        env: &HashMap<String, String>,
    ) -> Result<Config> {
        for k in env.keys() {
            if k.starts_with("KEYPLANE_") && !KNOWN_ENV.contains(&k.as_str()) {
                tracing::warn!(variable = %k, "unknown KEYPLANE_* environment variable ignored");
            }
        }
        let file_path = flags
            .config
            .clone()
            .or_else(|| env.get("KEYPLANE_CONFIG").map(PathBuf::from));
        let file: FileConfig = match &file_path {
            Some(p) => {
                let text = std::fs::read_to_string(p).with_context(|| {
                    format!("cannot read the configuration file {}", p.display())
                })?;
                toml::from_str(&text).with_context(|| {
                    format!("the configuration file {} is not valid", p.display())
                })?
            }
            None => FileConfig::default(),
        };
        let (metrics_listen, otel) = observability(&file, env)?;

        let listen = listen_flag
            .map(str::to_string)
            .or_else(|| env.get("KEYPLANE_LISTEN").cloned())
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:8780".into());
        let listen: SocketAddr = listen.parse().with_context(|| {
            format!("listen address {listen:?} is not HOST:PORT (e.g. 127.0.0.1:8780)")
        })?;

        let database = flags
            .database
            .clone()
            .or_else(|| env.get("KEYPLANE_DATABASE").cloned())
            .or(file.database)
            .unwrap_or_else(|| "sqlite://keyplane.db".into());
        if !(database.starts_with("sqlite:")
            || database.starts_with("postgres:")
            || database.starts_with("postgresql:"))
        {
            bail!(
                "database URL {:?} is not sqlite://PATH or postgres://...",
                redact_url(&database)
            );
        }

        let data_dir = flags
            .data_dir
            .clone()
            .or_else(|| env.get("KEYPLANE_DATA_DIR").map(PathBuf::from))
            .or(file.data_dir)
            .unwrap_or_else(|| default_data_dir(&database));

        let admin_key = match (
            env.get("KEYPLANE_ADMIN_KEY"),
            env.get("KEYPLANE_ADMIN_KEY_FILE")
                .map(PathBuf::from)
                .or(file.admin_key_file),
        ) {
            (Some(k), _) => Some(k.trim().to_string()),
            (None, Some(path)) => Some(read_secret_file(&path, "admin key")?),
            (None, None) => None,
        };
        if let Some(k) = &admin_key {
            keyplane_core::domain::secret::admin_key_strength(k).map_err(|why| {
                anyhow::anyhow!(
                    "the admin key in {} is too weak: {why}. Use a random key of at least 32 \
                     characters (e.g. the output of `openssl rand -base64 33`), or set neither \
                     KEYPLANE_ADMIN_KEY nor KEYPLANE_ADMIN_KEY_FILE to have keyplane generate one",
                    if env.contains_key("KEYPLANE_ADMIN_KEY") {
                        "KEYPLANE_ADMIN_KEY"
                    } else {
                        "the admin key file"
                    }
                )
            })?;
        }

        let metrics_token = match (
            env.get("KEYPLANE_METRICS_TOKEN"),
            env.get("KEYPLANE_METRICS_TOKEN_FILE")
                .map(PathBuf::from)
                .or(file.metrics_token_file),
        ) {
            (Some(k), _) => Some(k.trim().to_string()),
            (None, Some(path)) => Some(read_secret_file(&path, "metrics token")?),
            (None, None) => None,
        };
        if metrics_token.as_ref().is_some_and(|t| t.len() < 16) {
            bail!("the metrics token must be at least 16 characters long");
        }

        let pepper = match (
            env.get("KEYPLANE_PEPPER"),
            env.get("KEYPLANE_PEPPER_FILE")
                .map(PathBuf::from)
                .or(file.pepper_file),
        ) {
            (Some(p), _) => Some(p.trim().as_bytes().to_vec()),
            (None, Some(path)) => Some(read_secret_file(&path, "pepper")?.into_bytes()),
            (None, None) => None,
        };
        if let Some(p) = &pepper {
            if p.len() < 32 {
                bail!("the pepper must be at least 32 bytes long");
            }
        }

        let max_active_keys_per_org = match env.get("KEYPLANE_MAX_ACTIVE_KEYS_PER_ORG") {
            Some(v) => Some(
                v.parse::<i64>()
                    .context("KEYPLANE_MAX_ACTIVE_KEYS_PER_ORG must be a number")?,
            ),
            None => file.max_active_keys_per_org,
        }
        .or(Some(50));
        // 0 (or less) means no limit.
        let max_active_keys_per_org = max_active_keys_per_org.filter(|n| *n > 0);

        let api_key_default_ttl_days = match env.get("KEYPLANE_API_KEY_DEFAULT_TTL_DAYS") {
            Some(v) => v
                .parse::<i64>()
                .context("KEYPLANE_API_KEY_DEFAULT_TTL_DAYS must be a number of days (0: never)")?,
            None => file
                .api_key_default_ttl_days
                .unwrap_or(keyplane_core::domain::settings::DEFAULT_API_KEY_TTL_DAYS),
        };
        if !(0..=36_500).contains(&api_key_default_ttl_days) {
            bail!(
                "api_key_default_ttl_days must be between 0 (keys never expire) and 36500, not {api_key_default_ttl_days}"
            );
        }
        let api_key_default_ttl_days = Some(api_key_default_ttl_days).filter(|d| *d > 0);

        let flush_interval_ms = match env.get("KEYPLANE_FLUSH_INTERVAL_MS") {
            Some(v) => v
                .parse()
                .context("KEYPLANE_FLUSH_INTERVAL_MS must be a number")?,
            None => file.flush_interval_ms.unwrap_or(1000),
        };
        let stale_serve_seconds = match env.get("KEYPLANE_STALE_SERVE_SECONDS") {
            Some(v) => v
                .parse()
                .context("KEYPLANE_STALE_SERVE_SECONDS must be a number of seconds")?,
            None => file.stale_serve_seconds.unwrap_or(60),
        };
        let cache_preload = match env.get("KEYPLANE_CACHE_PRELOAD").map(String::as_str) {
            Some("1" | "true" | "yes") => true,
            Some("0" | "false" | "no") => false,
            Some(v) => anyhow::bail!("KEYPLANE_CACHE_PRELOAD must be true or false, not {v:?}"),
            None => file.cache_preload.unwrap_or(true),
        };
        let log_format = env
            .get("KEYPLANE_LOG_FORMAT")
            .cloned()
            .or(file.log_format)
            .unwrap_or_else(|| "text".into());
        if log_format != "text" && log_format != "json" {
            bail!("log_format must be `text` or `json`");
        }
        let api_key_prefix = env
            .get("KEYPLANE_API_KEY_PREFIX")
            .cloned()
            .or(file.prefixes.api_key)
            .unwrap_or_else(|| "kp_".into());
        let admin_key_prefix = env
            .get("KEYPLANE_ADMIN_KEY_PREFIX")
            .cloned()
            .or(file.prefixes.admin_key)
            .unwrap_or_else(|| "kpa_".into());
        let pick = |var: &str, file: Option<String>, default: &str| {
            env.get(var)
                .cloned()
                .or(file)
                .unwrap_or_else(|| default.to_string())
        };
        let client_id_prefix = pick(
            "KEYPLANE_CLIENT_ID_PREFIX",
            file.prefixes.client_id.clone(),
            "kpc_",
        );
        let client_secret_prefix = pick(
            "KEYPLANE_CLIENT_SECRET_PREFIX",
            file.prefixes.client_secret.clone(),
            "kps_",
        );
        let access_token_prefix = pick(
            "KEYPLANE_ACCESS_TOKEN_PREFIX",
            file.prefixes.access_token.clone(),
            "kpt_",
        );
        let all = [
            &api_key_prefix,
            &admin_key_prefix,
            &client_id_prefix,
            &client_secret_prefix,
            &access_token_prefix,
        ];
        for p in all {
            keyplane_core::domain::secret::SecretFormat::new(p).map_err(anyhow::Error::msg)?;
        }
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                if a.starts_with(b.as_str()) || b.starts_with(a.as_str()) {
                    bail!(
                        "secret prefixes must differ and none may begin another: {a:?} and {b:?}"
                    );
                }
            }
        }
        let tls_pair = |what: &str,
                        cert_var: &str,
                        key_var: &str,
                        cert: Option<PathBuf>,
                        key: Option<PathBuf>|
         -> Result<Option<TlsFiles>> {
            let cert = env.get(cert_var).map(PathBuf::from).or(cert);
            let key = env.get(key_var).map(PathBuf::from).or(key);
            match (cert, key) {
                (Some(cert), Some(key)) => Ok(Some(TlsFiles { cert, key })),
                (None, None) => Ok(None),
                (Some(_), None) => bail!(
                    "TLS on the {what} needs a private key too: {cert_var} (or its TOML key) is set, {key_var} is not"
                ),
                (None, Some(_)) => bail!(
                    "TLS on the {what} needs a certificate too: {key_var} (or its TOML key) is set, {cert_var} is not"
                ),
            }
        };
        let tls = tls_pair(
            "API listener",
            "KEYPLANE_TLS_CERT",
            "KEYPLANE_TLS_KEY",
            file.tls_cert.clone(),
            file.tls_key.clone(),
        )?;
        let gateway_tls = tls_pair(
            "gateway listener",
            "KEYPLANE_GATEWAY_TLS_CERT",
            "KEYPLANE_GATEWAY_TLS_KEY",
            file.gateway_tls_cert.clone(),
            file.gateway_tls_key.clone(),
        )?;
        let issuer_explicit = env.contains_key("KEYPLANE_ISSUER") || file.issuer.is_some();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let issuer = pick(
            "KEYPLANE_ISSUER",
            file.issuer.clone(),
            &format!("{scheme}://{listen}"),
        );
        let issuer = issuer.trim_end_matches('/').to_string();
        if !(issuer.starts_with("http://") || issuer.starts_with("https://")) {
            bail!("the issuer must be an http:// or https:// URL, e.g. https://auth.example.com");
        }
        let signing_alg = pick(
            "KEYPLANE_SIGNING_ALG",
            file.oauth.signing_alg.clone(),
            "ES256",
        );
        if keyplane_core::domain::token::Alg::parse(&signing_alg).is_none() {
            bail!("signing_alg must be ES256 or EdDSA");
        }
        let token_events = pick(
            "KEYPLANE_TOKEN_EVENTS",
            file.oauth.token_events.clone(),
            "aggregate",
        );
        let aggregate_token_events = match token_events.as_str() {
            "aggregate" => true,
            "each" => false,
            _ => bail!("token_events must be `aggregate` or `each`"),
        };
        let num = |var: &str, file: Option<i64>, default: i64| -> Result<i64> {
            match env.get(var) {
                Some(v) => v.parse().with_context(|| format!("{var} must be a number")),
                None => Ok(file.unwrap_or(default)),
            }
        };
        let signing_key_lead_seconds = num(
            "KEYPLANE_SIGNING_KEY_LEAD_SECONDS",
            file.oauth.signing_key_lead_seconds,
            300,
        )?
        .max(0);
        let rotation = num(
            "KEYPLANE_SIGNING_KEY_ROTATION_DAYS",
            file.oauth.signing_key_rotation_days,
            30,
        )?;
        let default_access_token_ttl_seconds =
            file.oauth.default_access_token_ttl_seconds.unwrap_or(3600);
        let client_assertion_max_lifetime_seconds = num(
            "KEYPLANE_CLIENT_ASSERTION_MAX_LIFETIME_SECONDS",
            file.oauth.client_assertion_max_lifetime_seconds,
            300,
        )?;
        if !(10..=3600).contains(&client_assertion_max_lifetime_seconds) {
            bail!("client_assertion_max_lifetime_seconds must be between 10 and 3600");
        }
        let federated_token_max_lifetime_seconds = num(
            "KEYPLANE_FEDERATED_TOKEN_MAX_LIFETIME_SECONDS",
            file.oauth.federated_token_max_lifetime_seconds,
            3600,
        )?;
        if !(60..=86_400).contains(&federated_token_max_lifetime_seconds) {
            bail!("federated_token_max_lifetime_seconds must be between 60 and 86400");
        }
        let exchanged_token_max_ttl_seconds = num(
            "KEYPLANE_EXCHANGED_TOKEN_MAX_TTL_SECONDS",
            file.oauth.exchanged_token_max_ttl_seconds,
            300,
        )?;
        if !(10..=86_400).contains(&exchanged_token_max_ttl_seconds) {
            bail!("exchanged_token_max_ttl_seconds must be between 10 and 86400");
        }
        let jwks_refetch_interval_seconds = num(
            "KEYPLANE_JWKS_REFETCH_INTERVAL_SECONDS",
            file.oauth.jwks_refetch_interval_seconds,
            30,
        )?
        .max(0);
        let jwks_max_age_seconds = num(
            "KEYPLANE_JWKS_MAX_AGE_SECONDS",
            file.oauth.jwks_max_age_seconds,
            300,
        )?
        .max(1);
        let jwks_uri_allow_loopback_http = match env.get("KEYPLANE_JWKS_URI_ALLOW_LOOPBACK_HTTP") {
            Some(v) => match v.as_str() {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => bail!("KEYPLANE_JWKS_URI_ALLOW_LOOPBACK_HTTP must be true or false"),
            },
            None => file.oauth.jwks_uri_allow_loopback_http.unwrap_or(false),
        };
        let dpop_iat_window_seconds = num(
            "KEYPLANE_DPOP_IAT_WINDOW_SECONDS",
            file.oauth.dpop_iat_window_seconds,
            60,
        )?;
        if !(5..=600).contains(&dpop_iat_window_seconds) {
            bail!("dpop_iat_window_seconds must be between 5 and 600");
        }
        let dpop_require_nonce = match env.get("KEYPLANE_DPOP_REQUIRE_NONCE") {
            Some(v) => match v.as_str() {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => bail!("KEYPLANE_DPOP_REQUIRE_NONCE must be true or false"),
            },
            None => file.oauth.dpop_require_nonce.unwrap_or(false),
        };
        let client_metadata_allow_loopback =
            match env.get("KEYPLANE_CLIENT_METADATA_ALLOW_LOOPBACK") {
                Some(v) => match v.as_str() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => bail!("KEYPLANE_CLIENT_METADATA_ALLOW_LOOPBACK must be true or false"),
                },
                None => file.oauth.client_metadata_allow_loopback.unwrap_or(false),
            };
        let client_metadata_ca_cert = env
            .get("KEYPLANE_CLIENT_METADATA_CA_CERT")
            .map(PathBuf::from)
            .or(file.oauth.client_metadata_ca_cert.clone());
        let registration = {
            use keyplane_core::domain::settings::Registration;
            let mode = env
                .get("KEYPLANE_OAUTH_REGISTRATION")
                .cloned()
                .or(file.oauth.registration.clone())
                .unwrap_or_else(|| "off".into());
            match mode.as_str() {
                "off" => Registration::Off,
                "open" => Registration::Open,
                "token" => {
                    let token = match env.get("KEYPLANE_OAUTH_REGISTRATION_TOKEN") {
                        Some(t) => t.clone(),
                        None => match &file.oauth.registration_token_file {
                            Some(path) => std::fs::read_to_string(path)
                                .with_context(|| format!("cannot read the registration token file {}", path.display()))?
                                .trim()
                                .to_string(),
                            None => bail!("oauth.registration = \"token\" needs the initial access token: KEYPLANE_OAUTH_REGISTRATION_TOKEN or oauth.registration_token_file"),
                        },
                    };
                    if token.len() < 32 {
                        bail!("the registration initial access token must be at least 32 characters long");
                    }
                    Registration::Token(keyplane_core::domain::secret::SecretString::new(token))
                }
                other => bail!(
                    "oauth.registration must be \"off\", \"open\" or \"token\", not {other:?}"
                ),
            }
        };
        // Route rules are validated here too, so a bad rule stops the start with its line.
        read_rules(file_path.as_deref()).map_err(anyhow::Error::msg)?;
        let gateway_listen = gateway
            .gateway_listen
            .clone()
            .or_else(|| env.get("KEYPLANE_GATEWAY_LISTEN").cloned())
            .or(file.gateway_listen.clone())
            .map(|a| {
                a.parse::<SocketAddr>()
                    .with_context(|| format!("gateway listen address {a:?} is not HOST:PORT"))
            })
            .transpose()?;
        let upstream = gateway
            .upstream
            .clone()
            .or_else(|| env.get("KEYPLANE_UPSTREAM").cloned())
            .or(file.upstream.clone());
        if let Some(u) = &upstream {
            let uri: axum::http::Uri = u
                .parse()
                .with_context(|| format!("upstream {u:?} is not a URL"))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
                bail!("upstream {u:?} must be an http:// or https:// URL with a host");
            }
        }
        let upstream_ca_cert = env
            .get("KEYPLANE_UPSTREAM_CA_CERT")
            .map(PathBuf::from)
            .or(file.upstream_ca_cert.clone());
        if upstream_ca_cert.is_some()
            && !upstream
                .as_deref()
                .is_some_and(|u| u.starts_with("https://"))
        {
            bail!("upstream_ca_cert (KEYPLANE_UPSTREAM_CA_CERT) is set, but the upstream is not an https:// URL");
        }
        if gateway_tls.is_some() && gateway_listen.is_none() {
            bail!("gateway_tls_cert and gateway_tls_key are set, but the gateway does not run (no gateway_listen)");
        }
        if gateway_listen.is_some() != upstream.is_some() {
            bail!("the gateway needs both a listen address (--gateway-listen) and an upstream (--upstream)");
        }
        let gateway_resource = gateway
            .gateway_resource
            .clone()
            .or_else(|| env.get("KEYPLANE_GATEWAY_RESOURCE").cloned())
            .or(file.gateway_resource.clone())
            .filter(|r| !r.is_empty())
            .map(|r| {
                keyplane_core::domain::resource::parse_resource(&r)
                    .map_err(|e| anyhow::anyhow!("gateway_resource {r:?}: {e}"))
            })
            .transpose()?;
        if gateway_resource.is_some() && gateway_listen.is_none() {
            bail!("gateway_resource (KEYPLANE_GATEWAY_RESOURCE) is set, but the gateway does not run (no gateway_listen)");
        }
        let upstream_timeout_ms = match env.get("KEYPLANE_UPSTREAM_TIMEOUT_MS") {
            Some(v) => v
                .parse()
                .context("KEYPLANE_UPSTREAM_TIMEOUT_MS must be a number")?,
            None => file.gateway.upstream_timeout_ms.unwrap_or(30_000),
        };
        // The connection edge and the throttles: flag, then environment, then file, then default.
        let number =
            |flag: Option<u64>, var: &str, file: Option<u64>, default: u64| -> Result<u64> {
                match (flag, env.get(var)) {
                    (Some(v), _) => Ok(v),
                    (None, Some(v)) => v
                        .trim()
                        .parse()
                        .with_context(|| format!("{var} must be a whole number")),
                    (None, None) => Ok(file.unwrap_or(default)),
                }
            };
        let seconds = |flag, var: &str, file, default| -> Result<u64> {
            let v = number(flag, var, file, default)?;
            if v == 0 {
                bail!("{var} (or its setting) must be at least 1 second");
            }
            Ok(v)
        };
        let header_read_timeout_seconds = seconds(
            edge.header_read_timeout_seconds,
            "KEYPLANE_HEADER_READ_TIMEOUT_SECONDS",
            file.header_read_timeout_seconds,
            10,
        )?;
        let request_body_timeout_seconds = seconds(
            edge.request_body_timeout_seconds,
            "KEYPLANE_REQUEST_BODY_TIMEOUT_SECONDS",
            file.request_body_timeout_seconds,
            30,
        )?;
        let idle_timeout_seconds = seconds(
            edge.idle_timeout_seconds,
            "KEYPLANE_IDLE_TIMEOUT_SECONDS",
            file.idle_timeout_seconds,
            90,
        )?;
        let max_connections = number(
            edge.max_connections.map(|n| n as u64),
            "KEYPLANE_MAX_CONNECTIONS",
            file.max_connections.map(|n| n as u64),
            10_000,
        )?;
        if max_connections == 0 {
            bail!("max_connections must be at least 1");
        }
        let trusted: Vec<String> =
            match (&edge.trusted_proxies, env.get("KEYPLANE_TRUSTED_PROXIES")) {
                (Some(v), _) | (None, Some(v)) => v.split(',').map(str::to_string).collect(),
                (None, None) => file.trusted_proxies.clone().unwrap_or_default(),
            };
        let trusted_proxies = keyplane_http::edge::TrustedProxies::parse(&trusted)
            .map_err(|e| anyhow::anyhow!("trusted_proxies: {e}"))?;
        let forwarded_header = edge
            .forwarded_header
            .clone()
            .or_else(|| env.get("KEYPLANE_FORWARDED_HEADER").cloned())
            .or(file.forwarded_header.clone())
            .unwrap_or_else(|| "x-forwarded-for".into());
        let forwarded_header = keyplane_http::edge::ForwardedHeader::parse(&forwarded_header)
            .with_context(|| {
                format!("forwarded_header must be `x-forwarded-for` or `forwarded`, not {forwarded_header:?}")
            })?;
        let auth_failures_per_minute = number(
            edge.auth_failures_per_minute.map(u64::from),
            "KEYPLANE_AUTH_FAILURES_PER_MINUTE",
            file.auth_failures_per_minute.map(u64::from),
            20,
        )?;
        if auth_failures_per_minute == 0 {
            bail!("auth_failures_per_minute must be at least 1");
        }
        let refusal_events_per_flush = number(
            edge.refusal_events_per_flush.map(|n| n as u64),
            "KEYPLANE_REFUSAL_EVENTS_PER_FLUSH",
            file.refusal_events_per_flush.map(|n| n as u64),
            100,
        )?;
        if refusal_events_per_flush == 0 {
            bail!("refusal_events_per_flush must be at least 1");
        }
        let tls_handshake_timeout_seconds = seconds(
            None,
            "KEYPLANE_TLS_HANDSHAKE_TIMEOUT_SECONDS",
            file.tls_handshake_timeout_seconds,
            10,
        )?;
        let leaks = leaks_settings(&file.leaks, env)?;
        let usage_minute_retention_hours = number(
            None,
            "KEYPLANE_USAGE_MINUTE_RETENTION_HOURS",
            file.usage.minute_retention_hours,
            24,
        )?;
        let usage_hour_retention_days = number(
            None,
            "KEYPLANE_USAGE_HOUR_RETENTION_DAYS",
            file.usage.hour_retention_days,
            90,
        )?;
        if !(1..=24 * 30).contains(&usage_minute_retention_hours)
            || !(1..=3660).contains(&usage_hour_retention_days)
        {
            bail!("usage retention: minute_retention_hours must be 1 to 720 and hour_retention_days 1 to 3660");
        }
        let redis_url = env
            .get("KEYPLANE_REDIS_URL")
            .cloned()
            .or(file.rate_limits.redis_url.clone())
            .filter(|u| !u.is_empty());
        if let Some(u) = &redis_url {
            if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                bail!("rate_limits.redis_url (KEYPLANE_REDIS_URL) must start with redis:// or rediss://");
            }
        }
        let rate_limit_sync_interval_ms = number(
            None,
            "KEYPLANE_RATE_LIMIT_SYNC_INTERVAL_MS",
            file.rate_limits.sync_interval_ms,
            50,
        )?
        .clamp(5, 10_000);
        let rate_limit_nodes =
            number(None, "KEYPLANE_RATE_LIMIT_NODES", file.rate_limits.nodes, 1)?;
        if !(1..=1000).contains(&rate_limit_nodes) {
            bail!("rate_limits.nodes (KEYPLANE_RATE_LIMIT_NODES) must be 1 to 1000");
        }
        Ok(Config {
            leaks,
            usage_minute_retention_hours,
            usage_hour_retention_days,
            redis_url,
            rate_limit_sync_interval_ms,
            rate_limit_nodes,
            metrics_listen,
            otel,
            migrations: keyplane_store::Migrations::Apply,
            header_read_timeout_seconds,
            request_body_timeout_seconds,
            idle_timeout_seconds,
            max_connections: max_connections as usize,
            trusted_proxies,
            forwarded_header,
            auth_failures_per_minute: auth_failures_per_minute.min(u64::from(u32::MAX)) as u32,
            refusal_events_per_flush: refusal_events_per_flush as usize,
            listen,
            database,
            data_dir,
            admin_key,
            pepper,
            metrics_token,
            max_active_keys_per_org,
            api_key_default_ttl_days,
            flush_interval_ms: flush_interval_ms.max(10),
            stale_serve_seconds,
            cache_preload,
            log_format,
            api_key_prefix,
            admin_key_prefix,
            client_id_prefix,
            client_secret_prefix,
            access_token_prefix,
            issuer,
            issuer_explicit,
            tls,
            gateway_tls,
            tls_handshake_timeout_seconds,
            upstream_ca_cert,
            signing_alg,
            aggregate_token_events,
            signing_key_lead_seconds,
            signing_key_rotation_days: (rotation > 0).then_some(rotation),
            default_access_token_ttl_seconds,
            client_assertion_max_lifetime_seconds,
            federated_token_max_lifetime_seconds,
            exchanged_token_max_ttl_seconds,
            jwks_refetch_interval_seconds,
            jwks_max_age_seconds,
            jwks_uri_allow_loopback_http,
            dpop_iat_window_seconds,
            dpop_require_nonce,
            registration,
            client_metadata_allow_loopback,
            client_metadata_ca_cert,
            config_file: file_path,
            gateway_listen,
            upstream,
            gateway_resource,
            upstream_timeout_ms,
            gateway_max_body_bytes: file.gateway.max_body_bytes.unwrap_or(64 * 1024 * 1024),
            gateway_max_header_bytes: file.gateway.max_header_bytes.unwrap_or(32 * 1024),
        })
    }
}

/// `[leaks]` and its `KEYPLANE_LEAKS_*` variables.
fn leaks_settings(
    file: &LeaksFile,
    env: &HashMap<String, String>,
) -> Result<keyplane_core::domain::leaks::LeakSettings> {
    use keyplane_core::domain::leaks::{parse_github_keys, LeakPolicy, LeakSettings};
    let mut s = LeakSettings::default();
    let policy = env
        .get("KEYPLANE_LEAKS_POLICY")
        .cloned()
        .or_else(|| file.policy.clone());
    if let Some(p) = policy {
        s.policy = LeakPolicy::parse(p.trim())
            .with_context(|| format!("leaks.policy must be \"revoke\" or \"notify\", not {p:?}"))?;
    }
    let keys_file = env
        .get("KEYPLANE_LEAKS_GITHUB_PUBLIC_KEYS_FILE")
        .map(PathBuf::from)
        .or_else(|| file.github_public_keys_file.clone());
    if let Some(path) = keys_file {
        let bytes = std::fs::read(&path).with_context(|| {
            format!(
                "cannot read leaks.github_public_keys_file {}",
                path.display()
            )
        })?;
        s.github_keys = parse_github_keys(&bytes).map_err(|e| {
            anyhow::anyhow!("leaks.github_public_keys_file {}: {e}", path.display())
        })?;
    }
    let url = env
        .get("KEYPLANE_LEAKS_GITHUB_KEYS_URL")
        .cloned()
        .or_else(|| file.github_keys_url.clone());
    if let Some(u) = url {
        let u = u.trim();
        if u.is_empty() {
            s.github_keys_url = None;
        } else if u.starts_with("https://") || u.starts_with("http://") {
            s.github_keys_url = Some(u.to_string());
        } else {
            bail!("leaks.github_keys_url must be an http(s):// URL");
        }
    }
    let num = |var: &str, file: Option<i64>, default: i64| -> Result<i64> {
        match env.get(var) {
            Some(v) => v
                .trim()
                .parse()
                .with_context(|| format!("{var} must be a number")),
            None => Ok(file.unwrap_or(default)),
        }
    };
    s.refetch_interval_seconds = num(
        "KEYPLANE_LEAKS_GITHUB_KEYS_REFETCH_INTERVAL_SECONDS",
        file.github_keys_refetch_interval_seconds,
        s.refetch_interval_seconds,
    )?
    .max(0);
    let per_minute = num(
        "KEYPLANE_LEAKS_FORM_REPORTS_PER_MINUTE",
        file.form_reports_per_minute.map(i64::from),
        i64::from(s.form_reports_per_minute),
    )?;
    if !(1..=10_000).contains(&per_minute) {
        bail!("leaks.form_reports_per_minute must be between 1 and 10000");
    }
    s.form_reports_per_minute = per_minute as u32;
    Ok(s)
}

/// The log format, read before logging starts: `KEYPLANE_LOG_FORMAT`, else `log_format` of the
/// configuration file (`--config` or `KEYPLANE_CONFIG`), else `text`. A file that cannot be read
/// here is left to [`Config::load`], which reports it.
pub fn log_format_early(flags: &ConfigFlags, env: &HashMap<String, String>) -> String {
    if let Some(f) = env.get("KEYPLANE_LOG_FORMAT") {
        return f.clone();
    }
    let path = flags
        .config
        .clone()
        .or_else(|| env.get("KEYPLANE_CONFIG").map(PathBuf::from));
    path.and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| toml::from_str::<toml::Table>(&text).ok())
        .and_then(|t| t.get("log_format")?.as_str().map(str::to_string))
        .unwrap_or_else(|| "text".into())
}

fn default_data_dir(database: &str) -> PathBuf {
    if let Some(rest) = database
        .strip_prefix("sqlite://")
        .or_else(|| database.strip_prefix("sqlite:"))
    {
        let path = rest.split('?').next().unwrap_or(rest);
        if let Some(parent) = Path::new(path).parent() {
            if !parent.as_os_str().is_empty() {
                return parent.to_path_buf();
            }
        }
    }
    PathBuf::from(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn leaks_settings() {
        use keyplane_core::domain::leaks::{LeakPolicy, GITHUB_KEYS_URL};
        let c = Config::load(&ConfigFlags::default(), None, &env(&[])).unwrap();
        assert_eq!(c.leaks.policy, LeakPolicy::Revoke);
        assert_eq!(c.leaks.github_keys_url.as_deref(), Some(GITHUB_KEYS_URL));
        assert!(c.leaks.github_keys.is_empty());
        let c = Config::load(
            &ConfigFlags::default(),
            None,
            &env(&[
                ("KEYPLANE_LEAKS_POLICY", "notify"),
                ("KEYPLANE_LEAKS_GITHUB_KEYS_URL", ""),
                ("KEYPLANE_LEAKS_FORM_REPORTS_PER_MINUTE", "3"),
            ]),
        )
        .unwrap();
        assert_eq!(c.leaks.policy, LeakPolicy::Notify);
        assert_eq!(c.leaks.github_keys_url, None, "empty: never fetch");
        assert_eq!(c.leaks.form_reports_per_minute, 3);
        for (var, bad) in [
            ("KEYPLANE_LEAKS_POLICY", "delete"),
            ("KEYPLANE_LEAKS_GITHUB_KEYS_URL", "ftp://keys"),
            ("KEYPLANE_LEAKS_FORM_REPORTS_PER_MINUTE", "0"),
            (
                "KEYPLANE_LEAKS_GITHUB_PUBLIC_KEYS_FILE",
                "/nonexistent/keys.json",
            ),
        ] {
            let err =
                Config::load(&ConfigFlags::default(), None, &env(&[(var, bad)])).expect_err(bad);
            assert!(format!("{err:#}").contains("leaks"), "{var}={bad}: {err:#}");
        }
    }

    #[test]
    fn api_key_default_expiry() {
        let c = Config::load(&ConfigFlags::default(), None, &env(&[])).unwrap();
        assert_eq!(c.api_key_default_ttl_days, Some(90));
        let var = "KEYPLANE_API_KEY_DEFAULT_TTL_DAYS";
        let c = Config::load(&ConfigFlags::default(), None, &env(&[(var, "0")])).unwrap();
        assert_eq!(c.api_key_default_ttl_days, None, "0 means never");
        let c = Config::load(&ConfigFlags::default(), None, &env(&[(var, "30")])).unwrap();
        assert_eq!(c.api_key_default_ttl_days, Some(30));
        for bad in ["-1", "36501", "ninety"] {
            let err =
                Config::load(&ConfigFlags::default(), None, &env(&[(var, bad)])).expect_err(bad);
            let msg = format!("{err:#}");
            assert!(
                msg.contains("api_key_default_ttl_days") || msg.contains(var),
                "{bad}: {msg}"
            );
        }
    }

    #[test]
    fn defaults_then_file_then_env_then_flags() {
        let c = Config::load(&ConfigFlags::default(), None, &env(&[])).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8780");
        assert_eq!(c.database, "sqlite://keyplane.db");
        assert_eq!(c.max_active_keys_per_org, Some(50));

        let dir = std::env::temp_dir().join(format!("kp-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("keyplane.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:9000\"\ndatabase = \"sqlite:///tmp/x.db\"\nmax_active_keys_per_org = 7\n").unwrap();
        let flags = ConfigFlags {
            config: Some(file.clone()),
            ..Default::default()
        };
        let c = Config::load(&flags, None, &env(&[])).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.max_active_keys_per_org, Some(7));
        assert_eq!(c.data_dir, PathBuf::from("/tmp"));

        let c = Config::load(&flags, None, &env(&[("KEYPLANE_LISTEN", "127.0.0.1:9001")])).unwrap();
        assert_eq!(c.listen.port(), 9001);
        let c = Config::load(
            &flags,
            Some("127.0.0.1:9002"),
            &env(&[("KEYPLANE_LISTEN", "127.0.0.1:9001")]),
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9002);

        std::fs::write(&file, "lisen = \"typo\"\n").unwrap();
        assert!(Config::load(&flags, None, &env(&[])).is_err());
    }

    #[test]
    fn short_secrets_and_bad_urls_are_refused() {
        assert!(Config::load(
            &ConfigFlags::default(),
            None,
            &env(&[("KEYPLANE_ADMIN_KEY", "short")])
        )
        .is_err());
        assert!(Config::load(
            &ConfigFlags::default(),
            None,
            &env(&[("KEYPLANE_PEPPER", "short")])
        )
        .is_err());
        assert!(Config::load(
            &ConfigFlags::default(),
            None,
            &env(&[("KEYPLANE_DATABASE", "mysql://x")])
        )
        .is_err());
    }

    #[test]
    fn edge_settings_layer_and_validate() {
        let c = Config::load(&ConfigFlags::default(), None, &env(&[])).unwrap();
        assert_eq!(
            (
                c.header_read_timeout_seconds,
                c.request_body_timeout_seconds,
                c.idle_timeout_seconds,
                c.max_connections,
                c.auth_failures_per_minute,
                c.refusal_events_per_flush
            ),
            (10, 30, 90, 10_000, 20, 100)
        );
        assert!(c.trusted_proxies.is_empty());
        assert_eq!(
            c.forwarded_header,
            keyplane_http::edge::ForwardedHeader::XForwardedFor
        );

        let dir = std::env::temp_dir().join(format!("kp-edge-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("keyplane.toml");
        std::fs::write(
            &file,
            "header_read_timeout_seconds = 5\nidle_timeout_seconds = 70\nmax_connections = 50\n\
             trusted_proxies = [\"10.0.0.0/8\"]\nforwarded_header = \"forwarded\"\n\
             auth_failures_per_minute = 7\nrefusal_events_per_flush = 3\n",
        )
        .unwrap();
        let flags = ConfigFlags {
            config: Some(file.clone()),
            ..Default::default()
        };
        let c = Config::load(&flags, None, &env(&[])).unwrap();
        assert_eq!(c.header_read_timeout_seconds, 5);
        assert_eq!(c.idle_timeout_seconds, 70);
        assert_eq!(c.max_connections, 50);
        assert_eq!(c.auth_failures_per_minute, 7);
        assert_eq!(c.refusal_events_per_flush, 3);
        assert_eq!(
            c.forwarded_header,
            keyplane_http::edge::ForwardedHeader::Forwarded
        );
        assert!(c.trusted_proxies.contains("10.1.2.3".parse().unwrap()));
        // The environment over the file, a flag over both.
        let e = env(&[
            ("KEYPLANE_TRUSTED_PROXIES", "127.0.0.1/32, ::1"),
            ("KEYPLANE_HEADER_READ_TIMEOUT_SECONDS", "3"),
        ]);
        let c = Config::load(&flags, None, &e).unwrap();
        assert!(!c.trusted_proxies.contains("10.1.2.3".parse().unwrap()));
        assert!(c.trusted_proxies.contains("::1".parse().unwrap()));
        assert_eq!(c.header_read_timeout_seconds, 3);
        let edge = EdgeFlags {
            header_read_timeout_seconds: Some(1),
            trusted_proxies: Some("192.0.2.0/24".into()),
            ..Default::default()
        };
        let c = Config::load_serve(&flags, None, &GatewayFlags::default(), &edge, &e).unwrap();
        assert_eq!(c.header_read_timeout_seconds, 1);
        assert!(c.trusted_proxies.contains("192.0.2.9".parse().unwrap()));
        assert_eq!(
            c.edge().header_read_timeout,
            std::time::Duration::from_secs(1)
        );

        for bad in [
            ("KEYPLANE_TRUSTED_PROXIES", "not-an-address"),
            ("KEYPLANE_TRUSTED_PROXIES", "10.0.0.1/8"),
            ("KEYPLANE_FORWARDED_HEADER", "x-real-ip"),
            ("KEYPLANE_HEADER_READ_TIMEOUT_SECONDS", "0"),
            ("KEYPLANE_MAX_CONNECTIONS", "0"),
            ("KEYPLANE_AUTH_FAILURES_PER_MINUTE", "lots"),
        ] {
            assert!(
                Config::load(&ConfigFlags::default(), None, &env(&[bad])).is_err(),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn tls_settings_come_in_pairs_and_set_the_scheme() {
        let c = Config::load(&ConfigFlags::default(), None, &env(&[])).unwrap();
        assert!(c.tls.is_none() && c.gateway_tls.is_none());
        assert_eq!(c.issuer, "http://127.0.0.1:8780");
        assert_eq!(c.tls_handshake_timeout_seconds, 10);

        let e = env(&[
            ("KEYPLANE_TLS_CERT", "/etc/keyplane/cert.pem"),
            ("KEYPLANE_TLS_KEY", "/etc/keyplane/key.pem"),
            ("KEYPLANE_TLS_HANDSHAKE_TIMEOUT_SECONDS", "3"),
        ]);
        let c = Config::load(&ConfigFlags::default(), None, &e).unwrap();
        assert_eq!(
            c.tls,
            Some(TlsFiles {
                cert: "/etc/keyplane/cert.pem".into(),
                key: "/etc/keyplane/key.pem".into()
            })
        );
        assert_eq!(c.issuer, "https://127.0.0.1:8780");
        assert_eq!(c.edge().tls_handshake_timeout.as_secs(), 3);

        let dir = std::env::temp_dir().join(format!("kp-tls-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("keyplane.toml");
        std::fs::write(
            &file,
            "tls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"\ngateway_listen = \"127.0.0.1:0\"\n\
             upstream = \"https://api.internal:8443\"\nupstream_ca_cert = \"/ca.pem\"\n\
             gateway_tls_cert = \"/gc.pem\"\ngateway_tls_key = \"/gk.pem\"\n",
        )
        .unwrap();
        let flags = ConfigFlags {
            config: Some(file.clone()),
            ..Default::default()
        };
        let c = Config::load(&flags, None, &env(&[])).unwrap();
        assert_eq!(c.tls.unwrap().key, PathBuf::from("/k.pem"));
        assert_eq!(c.gateway_tls.unwrap().cert, PathBuf::from("/gc.pem"));
        assert_eq!(c.upstream_ca_cert, Some(PathBuf::from("/ca.pem")));
        assert_eq!(c.upstream.as_deref(), Some("https://api.internal:8443"));

        for (bad, why) in [
            (
                vec![("KEYPLANE_TLS_CERT", "/c.pem")],
                "needs a private key too",
            ),
            (
                vec![("KEYPLANE_TLS_KEY", "/k.pem")],
                "needs a certificate too",
            ),
            (
                vec![
                    ("KEYPLANE_GATEWAY_TLS_CERT", "/c.pem"),
                    ("KEYPLANE_GATEWAY_TLS_KEY", "/k.pem"),
                ],
                "the gateway does not run",
            ),
            (
                vec![
                    ("KEYPLANE_GATEWAY_LISTEN", "127.0.0.1:0"),
                    ("KEYPLANE_UPSTREAM", "http://127.0.0.1:9000"),
                    ("KEYPLANE_UPSTREAM_CA_CERT", "/ca.pem"),
                ],
                "not an https:// URL",
            ),
            (
                vec![
                    ("KEYPLANE_GATEWAY_LISTEN", "127.0.0.1:0"),
                    ("KEYPLANE_UPSTREAM", "ftp://127.0.0.1:9000"),
                ],
                "http:// or https://",
            ),
            (
                vec![("KEYPLANE_TLS_HANDSHAKE_TIMEOUT_SECONDS", "0")],
                "at least 1 second",
            ),
        ] {
            let e = Config::load(&ConfigFlags::default(), None, &env(&bad))
                .err()
                .unwrap_or_else(|| panic!("{bad:?} was accepted"))
                .to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn weak_admin_keys_stop_the_start_and_say_why() {
        for (key, why) in [
            ("a".repeat(32), "repeats characters"),
            ("abcdabcd".repeat(5), "repeats characters"),
            ("0123456789".repeat(3) + "01", "at least 128"),
            ("short".to_string(), "at least 32"),
        ] {
            let e = Config::load(
                &ConfigFlags::default(),
                None,
                &env(&[("KEYPLANE_ADMIN_KEY", &key)]),
            )
            .err()
            .unwrap_or_else(|| panic!("{key} was accepted"))
            .to_string();
            assert!(e.contains("KEYPLANE_ADMIN_KEY is too weak"), "{e}");
            assert!(e.contains(why), "{e}");
            assert!(e.contains("openssl rand"), "{e}");
            assert!(!e.contains(&key), "the error must not repeat the key: {e}");
        }
        // Generated-looking and random keys pass.
        let generated = keyplane_core::domain::secret::SecretFormat::new("kpa_")
            .unwrap()
            .generate();
        assert!(Config::load(
            &ConfigFlags::default(),
            None,
            &env(&[("KEYPLANE_ADMIN_KEY", generated.expose())])
        )
        .is_ok());
    }

    #[test]
    fn the_log_format_comes_from_the_file_too() {
        let flags = ConfigFlags::default();
        assert_eq!(log_format_early(&flags, &env(&[])), "text");
        let dir = std::env::temp_dir().join(format!("kp-log-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("keyplane.toml");
        std::fs::write(&file, "log_format = \"json\"\n").unwrap();
        let flags = ConfigFlags {
            config: Some(file.clone()),
            ..Default::default()
        };
        assert_eq!(log_format_early(&flags, &env(&[])), "json");
        let by_env = env(&[("KEYPLANE_CONFIG", file.to_str().unwrap())]);
        assert_eq!(log_format_early(&ConfigFlags::default(), &by_env), "json");
        // The environment over the file.
        assert_eq!(
            log_format_early(&flags, &env(&[("KEYPLANE_LOG_FORMAT", "text")])),
            "text"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert!(!format!(
            "{:?}",
            Config::load(
                &ConfigFlags::default(),
                None,
                &env(&[(
                    "KEYPLANE_ADMIN_KEY",
                    "a-very-long-admin-key-of-at-least-32-chars"
                )])
            )
            .unwrap()
        )
        .contains("very-long"));
    }
}
