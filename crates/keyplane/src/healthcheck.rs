//! `keyplane healthcheck`: asks a running server's `/readyz` and turns the answer into an exit
//! status, for a container `HEALTHCHECK` (distroless images have no curl) or a supervisor.
//!
//! Exit 0 when `/readyz` answers 200 (`ready`, or `degraded` while cached credentials are
//! served without the database), 1 otherwise — not ready, nothing listening, a TLS failure, a
//! timeout — with one line on stderr saying which. The default URL is this node's own API
//! listener as the configuration names it (`listen`/`KEYPLANE_LISTEN`, the port of
//! `--config`/`KEYPLANE_CONFIG`'s `listen`), on the loopback address when it listens on every
//! address, `https://` when `tls_cert` is set. The configuration is read only for that: a
//! healthcheck never opens the database and never needs a secret.

use anyhow::{Context, Result};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `keyplane healthcheck`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct HealthcheckArgs {
    /// The readiness URL to ask, e.g. https://keyplane.internal:8780/readyz (a URL without a
    /// path gets `/readyz`). Default: this node's API listener from the configuration.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// A PEM file of CA certificates to trust for an https:// URL, besides the Mozilla roots.
    /// The server's certificate is always checked.
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// The configuration file the server runs with (or KEYPLANE_CONFIG), to find its port.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Seconds to wait for the answer.
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    pub timeout: u64,
}

/// The part of the configuration file the healthcheck reads (other keys are ignored here; the
/// server itself refuses unknown ones).
#[derive(Debug, Default, serde::Deserialize)]
struct ListenerFile {
    listen: Option<String>,
    tls_cert: Option<PathBuf>,
}

/// The URL `/readyz` is asked at when `--url` is not given.
pub fn default_url(config: Option<&Path>, env: &HashMap<String, String>) -> Result<String> {
    let path = config
        .map(Path::to_path_buf)
        .or_else(|| env.get("KEYPLANE_CONFIG").map(PathBuf::from));
    let file: ListenerFile = match &path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read the configuration file {}", p.display()))?;
            toml::from_str(&text)
                .with_context(|| format!("the configuration file {} is not valid", p.display()))?
        }
        None => ListenerFile::default(),
    };
    let listen = env
        .get("KEYPLANE_LISTEN")
        .cloned()
        .or(file.listen)
        .unwrap_or_else(|| "127.0.0.1:8780".into());
    let mut addr: SocketAddr = listen
        .parse()
        .with_context(|| format!("listen address {listen:?} is not HOST:PORT"))?;
    // A server listening on every address answers on the loopback one.
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    let tls = env.contains_key("KEYPLANE_TLS_CERT") || file.tls_cert.is_some();
    let scheme = if tls { "https" } else { "http" };
    Ok(format!("{scheme}://{addr}/readyz"))
}

/// `--url` as given, with `/readyz` added when it has no path.
fn readiness_url(url: &str) -> String {
    let trimmed = url.trim_end_matches('/');
    let after_scheme = trimmed.split_once("://").map_or(trimmed, |(_, rest)| rest);
    if after_scheme.contains('/') {
        trimmed.to_string()
    } else {
        format!("{trimmed}/readyz")
    }
}

/// Runs the check; `Ok(true)` when ready. The line for stderr is returned with the verdict.
pub async fn check(args: &HealthcheckArgs, env: &HashMap<String, String>) -> (bool, String) {
    match check_inner(args, env).await {
        Ok(v) => v,
        Err(e) => (false, format!("keyplane healthcheck: not ready: {e:#}")),
    }
}

async fn check_inner(
    args: &HealthcheckArgs,
    env: &HashMap<String, String>,
) -> Result<(bool, String)> {
    let url = match &args.url {
        Some(u) => readiness_url(u),
        None => default_url(args.config.as_deref(), env)?,
    };
    let http = crate::client::http_client(args.ca_cert.as_deref())?;
    let timeout = Duration::from_secs(args.timeout.max(1));
    let answer = http
        .get(&url)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{url}: {}", error_chain(&e)))?;
    let code = answer.status();
    let body = answer.text().await.unwrap_or_default();
    let status = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            let s = v["status"].as_str()?.to_string();
            Some(match v["detail"].as_str() {
                Some(d) => format!("{s}: {d}"),
                None => s,
            })
        })
        .unwrap_or_else(|| body.chars().take(200).collect());
    let ready = code.is_success();
    let verdict = if ready { "ready" } else { "not ready" };
    Ok((
        ready,
        format!(
            "keyplane healthcheck: {verdict}: {url} answered {} ({status})",
            code.as_u16()
        ),
    ))
}

/// reqwest's error with its causes ("error sending request … : Connection refused").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
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
    fn the_default_url_follows_the_configuration() {
        assert_eq!(
            default_url(None, &env(&[])).unwrap(),
            "http://127.0.0.1:8780/readyz"
        );
        assert_eq!(
            default_url(None, &env(&[("KEYPLANE_LISTEN", "0.0.0.0:9000")])).unwrap(),
            "http://127.0.0.1:9000/readyz"
        );
        assert_eq!(
            default_url(
                None,
                &env(&[
                    ("KEYPLANE_LISTEN", "[::]:9000"),
                    ("KEYPLANE_TLS_CERT", "/c")
                ])
            )
            .unwrap(),
            "https://[::1]:9000/readyz"
        );
        let dir = std::env::temp_dir().join(format!("kp-health-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("keyplane.toml");
        std::fs::write(
            &file,
            "listen = \"0.0.0.0:8443\"\ntls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"\n[oauth]\nsigning_alg = \"EdDSA\"\n",
        )
        .unwrap();
        assert_eq!(
            default_url(Some(&file), &env(&[])).unwrap(),
            "https://127.0.0.1:8443/readyz"
        );
        // The environment over the file, as for `serve`.
        assert_eq!(
            default_url(Some(&file), &env(&[("KEYPLANE_LISTEN", "127.0.0.1:1")])).unwrap(),
            "https://127.0.0.1:1/readyz"
        );
        assert!(default_url(None, &env(&[("KEYPLANE_LISTEN", "nope")])).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_url_without_a_path_asks_readyz() {
        assert_eq!(readiness_url("http://h:1"), "http://h:1/readyz");
        assert_eq!(readiness_url("http://h:1/"), "http://h:1/readyz");
        assert_eq!(readiness_url("http://h:1/healthz"), "http://h:1/healthz");
    }
}
