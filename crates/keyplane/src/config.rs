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
    pub flush_interval_ms: Option<u64>,
    pub stale_serve_seconds: Option<u64>,
    pub cache_preload: Option<bool>,
    pub log_format: Option<String>,
    /// The public URL of this deployment (`iss` of tokens, base of the metadata's endpoints).
    pub issuer: Option<String>,
    #[serde(default)]
    pub prefixes: Prefixes,
    #[serde(default)]
    pub oauth: OAuthFile,
    /// Route rules for forward auth and the gateway (`[[routes]]`).
    #[serde(default)]
    pub routes: Vec<toml::Spanned<RouteFile>>,
    #[serde(default)]
    pub authz: AuthzFile,
    pub gateway_listen: Option<String>,
    pub upstream: Option<String>,
    #[serde(default)]
    pub gateway: GatewayFile,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    #[serde(default)]
    pub methods: Vec<String>,
    pub path: String,
    #[serde(default)]
    pub scopes: Vec<String>,
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
    /// A client's `jwks_uri` is fetched again for an unknown `kid` at most this often (30 s).
    pub jwks_refetch_interval_seconds: Option<i64>,
    /// A fetched `jwks_uri` document is used this long before it is fetched again (300 s).
    pub jwks_max_age_seconds: Option<i64>,
    /// Allow `http://` `jwks_uri`s on loopback hosts (tests and development; default false).
    pub jwks_uri_allow_loopback_http: Option<bool>,
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
    /// A TOML configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Database URL: sqlite://PATH (default sqlite://keyplane.db) or postgres://...
    #[arg(long, value_name = "URL")]
    pub database: Option<String>,
    /// Where a generated pepper is kept (default: the SQLite file's folder, else the working directory).
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
    pub signing_alg: String,
    pub aggregate_token_events: bool,
    pub signing_key_lead_seconds: i64,
    pub signing_key_rotation_days: Option<i64>,
    pub default_access_token_ttl_seconds: i64,
    pub client_assertion_max_lifetime_seconds: i64,
    pub jwks_refetch_interval_seconds: i64,
    pub jwks_max_age_seconds: i64,
    pub jwks_uri_allow_loopback_http: bool,
    /// The configuration file, where route rules are read from (again on reload).
    pub config_file: Option<PathBuf>,
    pub gateway_listen: Option<SocketAddr>,
    pub upstream: Option<String>,
    pub upstream_timeout_ms: u64,
    pub gateway_max_body_bytes: usize,
    pub gateway_max_header_bytes: usize,
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

const KNOWN_ENV: &[&str] = &[
    "KEYPLANE_CONFIG",
    "KEYPLANE_LISTEN",
    "KEYPLANE_DATABASE",
    "KEYPLANE_DATA_DIR",
    "KEYPLANE_ADMIN_KEY",
    "KEYPLANE_ADMIN_KEY_FILE",
    "KEYPLANE_PEPPER",
    "KEYPLANE_PEPPER_FILE",
    "KEYPLANE_MAX_ACTIVE_KEYS_PER_ORG",
    "KEYPLANE_FLUSH_INTERVAL_MS",
    "KEYPLANE_STALE_SERVE_SECONDS",
    "KEYPLANE_LOG",
    "KEYPLANE_LOG_FORMAT",
    "KEYPLANE_API_KEY_PREFIX",
    "KEYPLANE_ADMIN_KEY_PREFIX",
    "KEYPLANE_CLIENT_ID_PREFIX",
    "KEYPLANE_CLIENT_SECRET_PREFIX",
    "KEYPLANE_ACCESS_TOKEN_PREFIX",
    "KEYPLANE_ISSUER",
    "KEYPLANE_SIGNING_ALG",
    "KEYPLANE_TOKEN_EVENTS",
    "KEYPLANE_SIGNING_KEY_LEAD_SECONDS",
    "KEYPLANE_SIGNING_KEY_ROTATION_DAYS",
    "KEYPLANE_GATEWAY_LISTEN",
    "KEYPLANE_UPSTREAM",
    "KEYPLANE_UPSTREAM_TIMEOUT_MS",
    "KEYPLANE_CLIENT_ASSERTION_MAX_LIFETIME_SECONDS",
    "KEYPLANE_JWKS_REFETCH_INTERVAL_SECONDS",
    "KEYPLANE_JWKS_MAX_AGE_SECONDS",
    "KEYPLANE_JWKS_URI_ALLOW_LOOPBACK_HTTP",
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
            if k.len() < 32 {
                bail!(
                    "the admin key must be at least 32 characters long (it has {})",
                    k.len()
                );
            }
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
        let issuer_explicit = env.contains_key("KEYPLANE_ISSUER") || file.issuer.is_some();
        let issuer = pick(
            "KEYPLANE_ISSUER",
            file.issuer.clone(),
            &format!("http://{listen}"),
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
            if uri.scheme_str() != Some("http") || uri.authority().is_none() {
                bail!("upstream {u:?} must be an http:// URL with a host (TLS to the upstream is not supported)");
            }
        }
        if gateway_listen.is_some() != upstream.is_some() {
            bail!("the gateway needs both a listen address (--gateway-listen) and an upstream (--upstream)");
        }
        let upstream_timeout_ms = match env.get("KEYPLANE_UPSTREAM_TIMEOUT_MS") {
            Some(v) => v
                .parse()
                .context("KEYPLANE_UPSTREAM_TIMEOUT_MS must be a number")?,
            None => file.gateway.upstream_timeout_ms.unwrap_or(30_000),
        };
        Ok(Config {
            listen,
            database,
            data_dir,
            admin_key,
            pepper,
            metrics_token,
            max_active_keys_per_org,
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
            signing_alg,
            aggregate_token_events,
            signing_key_lead_seconds,
            signing_key_rotation_days: (rotation > 0).then_some(rotation),
            default_access_token_ttl_seconds,
            client_assertion_max_lifetime_seconds,
            jwks_refetch_interval_seconds,
            jwks_max_age_seconds,
            jwks_uri_allow_loopback_http,
            config_file: file_path,
            gateway_listen,
            upstream,
            upstream_timeout_ms,
            gateway_max_body_bytes: file.gateway.max_body_bytes.unwrap_or(64 * 1024 * 1024),
            gateway_max_header_bytes: file.gateway.max_header_bytes.unwrap_or(32 * 1024),
        })
    }
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
