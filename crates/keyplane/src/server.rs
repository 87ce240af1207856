//! `keyplane serve`: assembles storage, the use cases and the HTTP interface, and runs them
//! until a shutdown signal; then lets requests in flight finish and flushes batched writes.

use crate::config::{redact_url, Config};
use anyhow::{Context, Result};
use keyplane_core::domain::clock::SystemClock;
use keyplane_core::domain::secret::{random_base62, Pepper, SecretFormat, SecretString};
use keyplane_core::domain::token::Alg;
use keyplane_core::store::Invalidation;
use keyplane_core::Keyplane;
use keyplane_core::OAuthSettings;
use keyplane_core::Settings;
use keyplane_http::AppState;
use keyplane_store::files;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The pepper: supplied, or read from (or generated into) `data_dir/keyplane.pepper`.
pub fn load_pepper(config: &Config) -> Result<Pepper> {
    if let Some(p) = &config.pepper {
        return Pepper::new(1, p).map_err(anyhow::Error::msg);
    }
    let path = config.data_dir.join("keyplane.pepper");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => {
            // A pepper file an older version (or an operator) left readable by others.
            files::restrict_or_warn(&path);
            t.trim().to_string()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if files::create_private_dir_all(&config.data_dir).with_context(|| {
                format!(
                    "cannot create the data directory {}",
                    config.data_dir.display()
                )
            })? {
                tracing::info!(path = %config.data_dir.display(), "created the data directory (mode 0700)");
            }
            let generated = random_base62(64);
            write_private(&path, &generated)?;
            tracing::info!(path = %path.display(), "generated a new pepper; keep this file with the database");
            generated
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot read the pepper file {}", path.display()))
        }
    };
    if config.database.starts_with("postgres") {
        tracing::warn!("using a pepper generated on this machine with PostgreSQL: set KEYPLANE_PEPPER (or _FILE) to the same value on every node");
    }
    Pepper::new(1, text.as_bytes()).map_err(anyhow::Error::msg)
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut f = files::create_private_file(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// Builds the use cases on the configured storage.
pub async fn build(config: &Config) -> Result<Arc<Keyplane>> {
    let pepper = load_pepper(config)?;
    let store = keyplane_store::open_with(&config.database, config.migrations)
        .await
        .with_context(|| format!("cannot open the database {}", redact_url(&config.database)))?;
    let format = |p: &str| SecretFormat::new(p).map_err(anyhow::Error::msg);
    let settings = Settings {
        api_key_format: format(&config.api_key_prefix)?,
        admin_key_format: format(&config.admin_key_prefix)?,
        max_active_keys_per_org: config.max_active_keys_per_org,
        api_key_default_ttl_days: config.api_key_default_ttl_days,
        stale_serve_seconds: config.stale_serve_seconds,
        auth_failures_per_minute: config.auth_failures_per_minute,
        refusal_events_per_flush: config.refusal_events_per_flush,
        metrics_token: config.metrics_token.clone().map(SecretString::new),
        leaks: config.leaks.clone(),
        usage_minute_retention_hours: config.usage_minute_retention_hours as i64,
        usage_hour_retention_days: config.usage_hour_retention_days as i64,
        webhooks: config.webhooks.clone(),
        notices: config.notices.clone(),
        oauth: OAuthSettings {
            issuer: config.issuer.clone(),
            client_id_format: format(&config.client_id_prefix)?,
            client_secret_format: format(&config.client_secret_prefix)?,
            access_token_prefix: config.access_token_prefix.clone(),
            default_alg: Alg::parse(&config.signing_alg).unwrap_or(Alg::ES256),
            default_ttl_seconds: config.default_access_token_ttl_seconds,
            aggregate_token_events: config.aggregate_token_events,
            signing_key_lead_seconds: config.signing_key_lead_seconds,
            signing_key_rotation_days: config.signing_key_rotation_days,
            client_assertion_max_lifetime_seconds: config.client_assertion_max_lifetime_seconds,
            federated_token_max_lifetime_seconds: config.federated_token_max_lifetime_seconds,
            exchanged_token_max_ttl_seconds: config.exchanged_token_max_ttl_seconds,
            jwks_refetch_interval_seconds: config.jwks_refetch_interval_seconds,
            jwks_max_age_seconds: config.jwks_max_age_seconds,
            jwks_uri_allow_loopback_http: config.jwks_uri_allow_loopback_http,
            dpop_iat_window_seconds: config.dpop_iat_window_seconds,
            dpop_require_nonce: config.dpop_require_nonce,
            registration: config.registration.clone(),
            client_metadata_allow_loopback: config.client_metadata_allow_loopback,
            ..OAuthSettings::default()
        },
    };
    let app = Keyplane::new(store, Arc::new(SystemClock), pepper, settings);
    app.set_jwks_fetcher(Arc::new(
        crate::jwks::HttpJwksFetcher::new().context("cannot build the jwks_uri HTTP client")?,
    ));
    app.set_webhook_sender(Arc::new(
        crate::webhooks::HttpWebhookSender::new(config.webhooks.egress)
            .context("cannot build the webhook HTTP client")?,
    ));
    let metadata_ca = match &config.client_metadata_ca_cert {
        Some(path) => Some(std::fs::read(path).with_context(|| {
            format!(
                "cannot read client_metadata_ca_cert {} (generated no admin key)",
                path.display()
            )
        })?),
        None => None,
    };
    app.set_metadata_fetcher(Arc::new(
        crate::cimd::HttpMetadataFetcher::new(
            config.client_metadata_allow_loopback,
            metadata_ca.as_deref(),
        )
        .with_context(|| match &config.client_metadata_ca_cert {
            Some(p) => format!(
                "client_metadata_ca_cert {} holds no usable PEM certificate",
                p.display()
            ),
            None => "cannot build the client metadata HTTP client".into(),
        })?,
    ));
    Ok(Arc::new(app))
}

/// A server that is running.
pub struct Running {
    pub addr: SocketAddr,
    /// Where the gateway listens, when it runs.
    pub gateway_addr: Option<SocketAddr>,
    /// Whether the API listener speaks TLS.
    pub tls: bool,
    /// Whether the gateway listener speaks TLS.
    pub gateway_tls: bool,
    /// Where `/metrics` listens, when it has a listener of its own (`metrics_listen`).
    pub metrics_addr: Option<SocketAddr>,
    pub app: Arc<Keyplane>,
    /// The admin key generated on this first start, if one was.
    pub generated_admin_key: Option<SecretString>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<()>>,
}

impl Running {
    /// The API's base URL: `https://ADDR` with TLS, else `http://ADDR`.
    pub fn base_url(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.addr
        )
    }

    /// The gateway's base URL, when it runs.
    pub fn gateway_url(&self) -> Option<String> {
        let scheme = if self.gateway_tls { "https" } else { "http" };
        self.gateway_addr.map(|a| format!("{scheme}://{a}"))
    }

    /// Stops accepting, waits for requests in flight, flushes, and returns.
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.context("the server task failed")?
    }

    /// Waits until the server stops by itself (after `shutdown_signal`).
    pub async fn wait(self) -> Result<()> {
        self.task.await.context("the server task failed")?
    }
}

/// Starts serving on `config.listen`; stops on the returned handle or on `external` resolving.
pub async fn start(
    config: &Config,
    external: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Running> {
    // Certificates and the upstream's CA first: a bad file stops the start before anything
    // is bound or written.
    let api_cert = config
        .tls
        .as_ref()
        .map(|f| crate::tls::ListenerCert::load("API", f))
        .transpose()?;
    let gateway_cert = config
        .gateway_tls
        .as_ref()
        .map(|f| crate::tls::ListenerCert::load("gateway", f))
        .transpose()?;
    let api_tls = api_cert.as_ref().map(|c| c.server_config()).transpose()?;
    let gateway_tls = gateway_cert
        .as_ref()
        .map(|c| c.server_config())
        .transpose()?;
    let certificates = crate::tls::Certificates(api_cert.into_iter().chain(gateway_cert).collect());
    let upstream_tls = match &config.upstream_ca_cert {
        Some(path) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read the upstream CA file {}", path.display()))?;
            keyplane_http::tls::client_config(Some((&pem, &path.display().to_string())))
        }
        None => keyplane_http::tls::client_config(None),
    }
    .map_err(anyhow::Error::msg)
    .context("TLS to the upstream")?;
    // Traces, when configured: a bad exporter setting stops the start here too.
    let build_info = build_info();
    let traces = crate::telemetry::Traces::start(config, &build_info)?;
    // Bind first, so a derived issuer names the port actually bound (port 0 in tests).
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let bound = listener.local_addr()?;
    let mut config = config.clone();
    if !config.issuer_explicit {
        let scheme = if api_tls.is_some() { "https" } else { "http" };
        config.issuer = format!("{scheme}://{bound}");
        if bound.ip().is_unspecified() {
            tracing::warn!(issuer = %config.issuer, "the issuer is derived from an unspecified address: set KEYPLANE_ISSUER to the URL callers use");
        }
    }
    let config = &config;
    let app = build(config).await?;
    let supplied = config.admin_key.clone().map(SecretString::new);
    // Everything that can refuse the start comes before the admin key is settled, so a refused
    // first start generates (and stores) no admin key it could not show.
    let prepared = prepare(&app, config).await;
    let listeners = match prepared {
        Ok(()) => match bind_gateway(config).await {
            Ok(g) => bind_metrics(config).await.map(|m| (g, m)),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    let (gateway_listener, metrics_listener) = match listeners {
        Ok(l) => l,
        Err(e) => {
            let hint = admin_key_hint(&app, supplied.is_some()).await;
            let _ = app.close_storage().await;
            return Err(anyhow::anyhow!("{e:#}\n{hint}"));
        }
    };
    let generated_admin_key = app.bootstrap(supplied.as_ref()).await?;
    app.set_config_applier(Arc::new(crate::declare::FileApplier {
        app: Arc::downgrade(&app),
        config_file: config.config_file.clone(),
    }));

    // Rate limits across nodes: reconciled through Redis, or each node enforcing its share.
    let redis_sync = match &config.redis_url {
        Some(url) => {
            let target = crate::redis_sync::RedisTarget::parse(url)?;
            app.start_rate_limits(1)
                .await
                .context("cannot read stored rate-limit windows")?;
            tracing::info!(
                redis = %target.addr,
                sync_interval_ms = config.rate_limit_sync_interval_ms,
                "rate limits are shared across nodes through Redis"
            );
            Some(tokio::spawn(crate::redis_sync::run(
                Arc::clone(&app),
                target,
                Duration::from_millis(config.rate_limit_sync_interval_ms),
            )))
        }
        None => {
            app.start_rate_limits(config.rate_limit_nodes)
                .await
                .context("cannot read stored rate-limit windows")?;
            if config.rate_limit_nodes > 1 {
                tracing::info!(
                    nodes = config.rate_limit_nodes,
                    "rate limits without Redis: this node enforces 1/{} of every limit (rate_limits.nodes)",
                    config.rate_limit_nodes
                );
            } else {
                tracing::info!("rate limits are counted by this node alone (no rate_limits.redis_url; with several nodes set rate_limits.nodes or Redis)");
            }
            None
        }
    };

    // Active keys are read into the cache in the background, at start and again whenever the
    // whole cache is dropped (a resync after the change feed reconnects): the node is ready at
    // once, and the first requests after a restart do not each wait for a storage read.
    let preloader = Arc::new(Preloader {
        app: Arc::clone(&app),
        enabled: config.cache_preload,
        task: std::sync::Mutex::new(None),
    });
    preloader.kick();
    {
        let subscriber = Arc::clone(&app);
        let app = Arc::clone(&app);
        let preloader = Arc::clone(&preloader);
        subscriber.subscribe_changes(Arc::new(move |change| {
            app.apply_invalidation(&change);
            if matches!(change, Invalidation::All) {
                preloader.kick();
            }
            if matches!(change, Invalidation::SigningKeys | Invalidation::All) {
                let app = Arc::clone(&app);
                tokio::spawn(async move {
                    if let Err(e) = app.reload_signing_keys().await {
                        tracing::warn!(error = %e, "could not reload signing keys");
                    }
                });
            }
        }));
    }

    let addr = bound;

    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let shutdown = async move {
        tokio::select! {
            _ = stop_rx => {},
            _ = external => {},
        }
        tracing::info!("shutting down: no new connections; finishing requests in flight");
    };

    // The flusher is stopped between flushes, never in the middle of one, so no batch it has
    // taken is lost at shutdown.
    let (flusher_stop, mut flusher_stopped) = oneshot::channel::<()>();
    let flusher = {
        let app = Arc::clone(&app);
        let every = Duration::from_millis(config.flush_interval_ms);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = &mut flusher_stopped => break,
                }
                if let Err(e) = app.flush().await {
                    tracing::warn!(error = %e, "could not write batched last-used times and refusals");
                }
            }
        })
    };

    // SQLite's write-ahead log is copied into the database file here rather than by the
    // writer in the middle of a commit (whose requests would wait for the disk meanwhile).
    let checkpointer = {
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            let every = Duration::from_millis(keyplane_core::store::CHECKPOINT_EVERY_MS);
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                tick.tick().await;
                match app.checkpoint_storage().await {
                    Ok(()) => failing = false,
                    // Said once per run of failures, not ten times a second.
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "could not copy the write-ahead log into the database file (the writer still does it by itself)");
                    }
                    Err(_) => {}
                }
            }
        })
    };

    let maintenance = {
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                maintain(&app).await;
            }
        })
    };

    // Webhook deliveries: claimed from the outbox (with a lease, so nodes never send one
    // delivery at once) and sent; a delivery cut off by a stop is claimed again after its lease.
    let webhook_worker = tokio::spawn(crate::webhooks::run_worker(
        Arc::clone(&app),
        Duration::from_millis(config.webhook_poll_interval_ms),
    ));

    let reloader = tokio::spawn(reload_on_sighup(Arc::clone(&app), certificates.clone()));
    let cert_watcher = tokio::spawn(certificates.watch(crate::tls::POLL_INTERVAL));

    // Every listener is served by the connection edge: timeouts, the client address, and one
    // cap on client connections shared by the API and the gateway.
    let edge = Arc::new(config.edge());
    let limit = keyplane_http::edge::ConnectionLimit::new(edge.max_connections);
    if !edge.trusted_proxies.is_empty() {
        tracing::info!(
            proxies = %edge.trusted_proxies.blocks().iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            header = edge.forwarded_header.as_str(),
            "client addresses are read from trusted proxies' forwarding header"
        );
    }

    let observer = Arc::new(keyplane_http::observe::Observer {
        tracing: traces
            .as_ref()
            .zip(config.otel.as_ref())
            .map(|(t, c)| t.tracing(c)),
        build: build_info,
        metrics_on_api: metrics_listener.is_none(),
        ..Default::default()
    });

    // The gateway listens beside the API and stops with it.
    let mut gateway_addr = None;
    let (gateway_stop, gateway_task) = match (gateway_listener, &config.upstream) {
        (Some(gl), Some(upstream)) => {
            let gateway_config = keyplane_http::gateway::GatewayConfig {
                upstream: upstream.parse().context("the upstream URL")?,
                upstream_timeout: Duration::from_millis(config.upstream_timeout_ms),
                max_body_bytes: config.gateway_max_body_bytes,
                max_header_bytes: config.gateway_max_header_bytes,
                upstream_tls,
            };
            gateway_addr = Some(gl.local_addr()?);
            tracing::info!(addr = %gl.local_addr()?, upstream = %upstream, tls = gateway_tls.is_some(), "gateway is listening");
            let router = keyplane_http::gateway::router(
                Arc::clone(&app),
                Arc::clone(&observer),
                gateway_config,
            );
            let (tx, rx) = oneshot::channel::<()>();
            let edge = Arc::clone(&edge);
            let limit = limit.clone();
            let tls = gateway_tls.clone();
            let task = tokio::spawn(async move {
                keyplane_http::edge::serve(gl, router, edge, limit, tls, async move {
                    let _ = rx.await;
                })
                .await
            });
            (Some(tx), Some(task))
        }
        _ => (None, None),
    };

    let state = AppState {
        app: Arc::clone(&app),
        obs: Arc::clone(&observer),
    };
    // `/metrics` on a listener of its own, when configured; it stops with the API.
    let mut metrics_addr = None;
    let (metrics_stop, metrics_task) = match metrics_listener {
        Some(ml) => {
            metrics_addr = Some(ml.local_addr()?);
            tracing::info!(addr = %ml.local_addr()?, "metrics are served on their own listener");
            let (tx, rx) = oneshot::channel::<()>();
            let state = state.clone();
            let edge = Arc::clone(&edge);
            let task = tokio::spawn(async move {
                keyplane_http::serve_metrics(ml, state, edge, async move {
                    let _ = rx.await;
                })
                .await
            });
            (Some(tx), Some(task))
        }
        None => (None, None),
    };
    let app_for_task = Arc::clone(&app);
    let tls = api_tls.is_some();
    let task = tokio::spawn(async move {
        let served = keyplane_http::serve(listener, state, edge, limit, api_tls, shutdown).await;
        for stop in [gateway_stop, metrics_stop].into_iter().flatten() {
            let _ = stop.send(());
        }
        for t in [gateway_task, metrics_task].into_iter().flatten() {
            let _ = t.await;
        }
        if let Some(traces) = traces {
            // The exporter waits for its last batch on its own thread.
            let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
        }
        reloader.abort();
        cert_watcher.abort();
        maintenance.abort();
        checkpointer.abort();
        let _ = checkpointer.await;
        if let Some(r) = &redis_sync {
            r.abort();
        }
        webhook_worker.abort();
        preloader.stop();
        let _ = flusher_stop.send(());
        let _ = flusher.await;
        // Flush, then close storage even if the flush failed: SQLite copies its write-ahead log
        // into the database file, so a copy of that file alone is complete after a clean stop.
        let flushed = app_for_task.flush_final().await;
        let closed = app_for_task.close_storage().await;
        flushed.context("could not flush batched writes at shutdown")?;
        closed.context("could not close the database cleanly at shutdown")?;
        served.context("the HTTP server failed")?;
        tracing::info!("stopped cleanly");
        Ok(())
    });
    tracing::info!(%addr, storage = app.backend(), tls, "keyplane is listening");
    Ok(Running {
        addr,
        gateway_addr,
        tls,
        gateway_tls: gateway_tls.is_some(),
        metrics_addr,
        app,
        generated_admin_key,
        stop: Some(stop_tx),
        task,
    })
}

/// The steps of a start that can refuse it, in dependency order: the defaults, the objects the
/// configuration file declares, signing keys, revocations, and last the route rules (which may
/// name the scopes of services declared in the same file).
async fn prepare(app: &Arc<Keyplane>, config: &Config) -> Result<()> {
    app.ensure_defaults().await?;
    if let Some(path) = &config.config_file {
        let report = crate::declare::apply_file(app, path, false)
            .await
            .with_context(|| {
                format!(
                    "the objects declared in {} were not applied",
                    path.display()
                )
            })?;
        report.log();
    }
    app.ensure_signing_keys().await?;
    app.reload_revocations().await?;
    let rules = app
        .set_rules_source(Arc::new(crate::config::FileRules(
            config.config_file.clone(),
        )))
        .await
        .map_err(anyhow::Error::msg)
        .context("the route rules are not valid")?;
    if rules > 0 {
        tracing::info!(rules, "route rules loaded");
    }
    // After the declarations: the gateway's resource may be a declared service's.
    app.set_gateway_resource(config.gateway_resource.as_deref())
        .await
        .map_err(anyhow::Error::msg)
        .context("the gateway's protected resource")?;
    if let Some(r) = &config.gateway_resource {
        tracing::info!(resource = %r, "the gateway serves the protected resource metadata of its resource");
    }
    Ok(())
}

/// Binds the gateway's listener, when one is configured (before the admin key is settled: an
/// address in use refuses the start).
async fn bind_gateway(config: &Config) -> Result<Option<tokio::net::TcpListener>> {
    match (&config.gateway_listen, &config.upstream) {
        (Some(addr), Some(upstream)) => {
            let _: axum::http::Uri = upstream.parse().context("the upstream URL")?;
            let gl = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for the gateway"))?;
            Ok(Some(gl))
        }
        _ => Ok(None),
    }
}

/// Binds the metrics listener, when `metrics_listen` is set.
async fn bind_metrics(config: &Config) -> Result<Option<tokio::net::TcpListener>> {
    match config.metrics_listen {
        Some(addr) => Ok(Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for metrics"))?,
        )),
        None => Ok(None),
    }
}

/// The build `keyplane_build_info` names: this version, and the commit and compiler the build
/// script found (`KEYPLANE_COMMIT` at build time; `rustc --version`).
pub fn build_info() -> keyplane_http::observe::BuildInfo {
    let known = |v: Option<&'static str>| v.filter(|v| !v.is_empty()).map(str::to_string);
    keyplane_http::observe::BuildInfo {
        version: env!("CARGO_PKG_VERSION").to_string(),
        commit: known(option_env!("KEYPLANE_BUILD_COMMIT")),
        rustc: known(option_env!("KEYPLANE_BUILD_RUSTC")),
    }
}

/// What a refused start says about the admin key, so nobody is left without one.
async fn admin_key_hint(app: &Keyplane, supplied: bool) -> String {
    if supplied {
        return "keyplane did not start; the admin key you supplied is unchanged".into();
    }
    match app.admin_key_exists().await {
        Ok(false) => "keyplane did not start and generated no admin key: the first start that \
                      succeeds generates one and prints it"
            .into(),
        _ => "keyplane did not start; this deployment's admin key is unchanged. If you never saw \
              it or lost it, `keyplane admin-key rotate` (with the same --config or \
              KEYPLANE_DATABASE) prints a new one"
            .into(),
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// The banner that shows a generated admin key, once.
pub fn admin_key_banner(key: &SecretString) -> String {
    let line = "=".repeat(78);
    format!(
        "\n{line}\n  keyplane generated an admin key for this deployment. It is shown ONCE:\n\n    {}\n\n  Store it in your secrets manager now. Only a keyed hash of it is kept.\n  Use it as `Authorization: Bearer <admin key>`. Rotate with `keyplane admin-key rotate`.\n{line}\n",
        key.expose()
    )
}

/// Once a minute: rotate due signing keys, warn about expiring client secrets, record notices
/// (`api_key.expiring`, `client_secret.rotation_due`, `api_key.unused`), forget
/// revocations of tokens that have expired anyway and the `jti`s of expired client
/// assertions, reload what other nodes changed (a safety net behind NOTIFY), and verify the
/// activity events appended since the last checkpoint (a broken chain is logged; a new
/// checkpoint keeps API verifications short).
async fn maintain(app: &Keyplane) {
    let results = [
        ("rotate signing keys", app.rotate_due_signing_keys().await),
        (
            "warn about expiring client secrets",
            app.warn_expiring_secrets().await.map(|_| ()),
        ),
        (
            "purge expired revocations",
            app.purge_revocations().await.map(|_| ()),
        ),
        (
            "purge expired client assertion ids",
            app.purge_client_assertions().await.map(|_| ()),
        ),
        (
            "purge expired authorization codes and refresh tokens",
            app.purge_authorization_codes().await.map(|_| ()),
        ),
        (
            "purge usage counts past their retention",
            app.purge_usage().await.map(|_| ()),
        ),
        (
            "forget old webhook deliveries",
            app.purge_webhook_deliveries().await.map(|_| ()),
        ),
        (
            "record notices about expiring, unrotated and unused credentials",
            app.record_notices().await.map(|_| ()),
        ),
        ("reload signing keys", app.reload_signing_keys().await),
        ("reload revocations", app.reload_revocations().await),
        (
            "verify the activity chain since its last checkpoint",
            app.checkpoint_activity().await.map(|_| ()),
        ),
    ];
    for (what, r) in results {
        if let Err(e) = r {
            tracing::warn!(error = %e, "could not {what}");
        }
    }
}

/// Reads active keys into the cache in the background; a new run replaces one under way.
struct Preloader {
    app: Arc<Keyplane>,
    enabled: bool,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Preloader {
    fn kick(&self) {
        if !self.enabled {
            return;
        }
        let app = Arc::clone(&self.app);
        let task = tokio::spawn(async move {
            let started = std::time::Instant::now();
            match app.preload_cache().await {
                Ok(n) => tracing::info!(
                    keys = n,
                    ms = started.elapsed().as_millis() as u64,
                    "active API keys read into the cache"
                ),
                Err(e) => tracing::warn!(error = %e, "could not preload the key cache"),
            }
        });
        if let Some(old) = self
            .task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(task)
        {
            old.abort();
        }
    }

    fn stop(&self) {
        if let Some(t) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            t.abort();
        }
    }
}

/// On SIGHUP: reloads the route rules (invalid rules are logged and the old ones kept) and the
/// listeners' certificates (the same: a bad file is logged, the certificate in use stays).
async fn reload_on_sighup(app: Arc<Keyplane>, certificates: crate::tls::Certificates) {
    #[cfg(unix)]
    {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            if !certificates.is_empty() {
                let certificates = certificates.clone();
                let _ = tokio::task::spawn_blocking(move || certificates.reload_all()).await;
            }
            match app.reload_rules().await {
                Ok(n) => tracing::info!(rules = n, "route rules reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "route rules not reloaded; the previous ones stay in force")
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (app, certificates);
        std::future::pending::<()>().await
    }
}
