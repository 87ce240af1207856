//! A deployment's settings, as the use cases need them; the binary builds them from its
//! configuration.

use crate::domain::secret::{SecretFormat, SecretString};
use crate::domain::token::Alg;

/// Days an API key lives when its creator names no expiry, unless configured otherwise.
pub const DEFAULT_API_KEY_TTL_DAYS: i64 = 90;

/// Settings the use cases need; the binary builds them from its configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub api_key_format: SecretFormat,
    pub admin_key_format: SecretFormat,
    /// Active API keys allowed per organization; `None` means no limit.
    pub max_active_keys_per_org: Option<i64>,
    /// Days a new API key lives when its creator names no expiry; `None`: such keys never expire.
    pub api_key_default_ttl_days: Option<i64>,
    pub oauth: OAuthSettings,
    /// How long cached credentials are still served after the change feed from storage is
    /// lost (see the runtime's feed).
    pub stale_serve_seconds: u64,
    /// Failed management-API authentications allowed per client address per minute.
    pub auth_failures_per_minute: u32,
    /// Distinct refusal events written per flush; the rest are counted in one more.
    pub refusal_events_per_flush: usize,
    /// When set, `/metrics` answers only requests bearing this token; otherwise it is open.
    pub metrics_token: Option<SecretString>,
    /// Leaked-credential reports (`[leaks]`).
    pub leaks: crate::domain::leaks::LeakSettings,
    /// Hours per-minute usage rows are kept (24 by default).
    pub usage_minute_retention_hours: i64,
    /// Days per-hour usage rows are kept (90 by default).
    pub usage_hour_retention_days: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            api_key_format: SecretFormat::new("kp_").expect("valid"),
            admin_key_format: SecretFormat::new("kpa_").expect("valid"),
            max_active_keys_per_org: Some(50),
            api_key_default_ttl_days: Some(DEFAULT_API_KEY_TTL_DAYS),
            oauth: Default::default(),
            stale_serve_seconds: 60,
            auth_failures_per_minute: 20,
            refusal_events_per_flush: 100,
            metrics_token: None,
            leaks: Default::default(),
            usage_minute_retention_hours: 24,
            usage_hour_retention_days: 90,
        }
    }
}

/// OAuth settings of a deployment.
#[derive(Debug, Clone)]
pub struct OAuthSettings {
    /// The issuer URL: `iss` of every token and the base of every endpoint in the metadata.
    pub issuer: String,
    pub client_id_format: SecretFormat,
    pub client_secret_format: SecretFormat,
    pub access_token_prefix: String,
    pub default_alg: Alg,
    pub default_ttl_seconds: i64,
    pub max_ttl_seconds: i64,
    /// One activity event per client per minute (true) or one per token (false).
    pub aggregate_token_events: bool,
    /// How long a new signing key is published before it signs.
    pub signing_key_lead_seconds: i64,
    /// Automatic signing-key rotation interval; `None` turns it off.
    pub signing_key_rotation_days: Option<i64>,
    /// Failed client authentications allowed per minute from one address for one client id.
    pub failures_per_client_and_address: u32,
    /// Failed client authentications allowed per minute from one address.
    pub failures_per_address: u32,
    /// The longest a client assertion (`private_key_jwt`) may live: `exp` at most this long
    /// after its `iat` and after now.
    pub client_assertion_max_lifetime_seconds: i64,
    /// Clock difference allowed on a client assertion's `exp`, `nbf` and `iat`.
    pub client_assertion_leeway_seconds: i64,
    /// A client's `jwks_uri` is fetched again for an unknown `kid` at most once per this.
    pub jwks_refetch_interval_seconds: i64,
    /// A fetched `jwks_uri` document is used this long before it is fetched again.
    pub jwks_max_age_seconds: i64,
    /// Whether a `jwks_uri` may be plain `http://` on a loopback host (tests, development).
    pub jwks_uri_allow_loopback_http: bool,
    /// The longest a federated (platform) token may live: `exp` at most this long after its
    /// `iat` and after now.
    pub federated_token_max_lifetime_seconds: i64,
    /// Token exchange (RFC 8693): the longest an exchanged token lives (never past its subject
    /// credential, nor past the acting client's own token lifetime).
    pub exchanged_token_max_ttl_seconds: i64,
    /// DPoP (RFC 9449): a proof's `iat` may be at most this many seconds from now.
    pub dpop_iat_window_seconds: i64,
    /// DPoP §8: whether every proof must carry a server nonce (`DPoP-Nonce`).
    pub dpop_require_nonce: bool,
    /// How long one DPoP nonce is issued; a nonce is accepted for two such periods.
    pub dpop_nonce_period_seconds: i64,
    /// RFC 7591 dynamic client registration at `/v1/oauth/register`.
    pub registration: Registration,
    /// Client ID metadata documents may be fetched over `http://` from loopback addresses
    /// (tests and development); otherwise only `https://` from public addresses.
    pub client_metadata_allow_loopback: bool,
}

/// Who may register an app (RFC 7591) at `/v1/oauth/register`.
#[derive(Debug, Clone, Default)]
pub enum Registration {
    /// Nobody: the endpoint answers 404 and the metadata does not name it (the default).
    #[default]
    Off,
    /// Anyone (as the MCP clients that register themselves expect).
    Open,
    /// Whoever presents this initial access token (RFC 7591 §3) as a bearer token.
    Token(SecretString),
}

impl Default for OAuthSettings {
    fn default() -> Self {
        Self {
            issuer: "http://127.0.0.1:8780".into(),
            client_id_format: SecretFormat::new("kpc_").expect("valid"),
            client_secret_format: SecretFormat::new("kps_").expect("valid"),
            access_token_prefix: "kpt_".into(),
            default_alg: Alg::ES256,
            default_ttl_seconds: 3600,
            max_ttl_seconds: 86_400,
            aggregate_token_events: true,
            signing_key_lead_seconds: 300,
            signing_key_rotation_days: Some(30),
            failures_per_client_and_address: 10,
            failures_per_address: 50,
            client_assertion_max_lifetime_seconds: 300,
            client_assertion_leeway_seconds: 60,
            jwks_refetch_interval_seconds: 30,
            jwks_max_age_seconds: 300,
            jwks_uri_allow_loopback_http: false,
            federated_token_max_lifetime_seconds: 3600,
            exchanged_token_max_ttl_seconds: 300,
            dpop_iat_window_seconds: 60,
            dpop_require_nonce: false,
            dpop_nonce_period_seconds: 300,
            registration: Registration::Off,
            client_metadata_allow_loopback: false,
        }
    }
}
