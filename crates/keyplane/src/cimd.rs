//! Fetching client ID metadata documents (an app whose `client_id` is the HTTPS URL of its
//! metadata; the core decides when): never following a redirect, within a short timeout,
//! reading at most [`MAX_METADATA_BYTES`], and never connecting to a private, link-local or
//! otherwise internal address — the URL is chosen by whoever starts an authorization request,
//! so without this keyplane could be made to probe the network it sits in (server-side request
//! forgery). Loopback is allowed only when the operator says so (tests and development).

use async_trait::async_trait;
use keyplane_core::domain::apps::{MetadataFetcher, MAX_METADATA_BYTES};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// The whole fetch, connection included, gives up after this long.
const TIMEOUT: Duration = Duration::from_secs(5);

pub struct HttpMetadataFetcher {
    http: reqwest::Client,
    allow_loopback: bool,
}

impl HttpMetadataFetcher {
    /// With `ca_pem`, documents' servers must chain to those CAs (PEM) instead of the Mozilla
    /// roots.
    pub fn new(allow_loopback: bool, ca_pem: Option<&[u8]>) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder();
        if let Some(pem) = ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)?;
            anyhow::ensure!(!certs.is_empty(), "no certificate in the PEM file");
            builder = builder.tls_built_in_root_certs(false);
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let http = builder
            .redirect(reqwest::redirect::Policy::none())
            .timeout(TIMEOUT)
            .connect_timeout(Duration::from_secs(3))
            .dns_resolver(Arc::new(PublicOnly { allow_loopback }))
            .user_agent(concat!(
                "keyplane/",
                env!("CARGO_PKG_VERSION"),
                " (client metadata)"
            ))
            .build()?;
        Ok(Self {
            http,
            allow_loopback,
        })
    }
}

/// Whether keyplane may connect to `ip`: public unicast addresses only (and loopback when
/// allowed).
pub fn reachable(ip: IpAddr, allow_loopback: bool) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            if v4.is_loopback() {
                return allow_loopback;
            }
            let o = v4.octets();
            !(v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10, shared address space
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24
                || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15, benchmarking
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if v6.is_loopback() {
                return allow_loopback;
            }
            if let Some(v4) = v6.to_ipv4_mapped() {
                return reachable(IpAddr::V4(v4), allow_loopback);
            }
            let s = v6.segments();
            !(v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] == 0x64 && s[1] == 0xff9b) // NAT64: an IPv4 address in disguise
                || (s[0] == 0x2001 && s[1] == 0xdb8)) // documentation
        }
    }
}

/// A DNS resolver that answers only addresses keyplane may connect to: a name that resolves to
/// an internal address (a DNS rebinding attempt, or a typo) cannot be reached.
struct PublicOnly {
    allow_loopback: bool,
}

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow_loopback;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| reachable(a.ip(), allow))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[async_trait]
impl MetadataFetcher for HttpMetadataFetcher {
    async fn fetch(&self, url: &str) -> Result<Vec<u8>, String> {
        // An address written in the URL is not resolved, so the resolver cannot refuse it.
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        let host = parsed.host_str().ok_or("the URL names no host")?;
        if let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            if !reachable(ip, self.allow_loopback) {
                return Err(format!("{ip} is not a public address"));
            }
        }
        let mut resp = self
            .http
            .get(parsed)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        if !resp.status().is_success() {
            // Redirects land here too: they are not followed.
            return Err(format!("answered {}", resp.status()));
        }
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_METADATA_BYTES as u64)
        {
            return Err(format!(
                "the document is larger than {MAX_METADATA_BYTES} bytes"
            ));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("reading the document failed: {e}"))?
        {
            if body.len() + chunk.len() > MAX_METADATA_BYTES {
                return Err(format!(
                    "the document is larger than {MAX_METADATA_BYTES} bytes"
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses() {
        for internal in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "127.0.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "fc00::1",
            "fe80::1",
            "::",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
            "198.18.0.1",
        ] {
            let ip: IpAddr = internal.parse().unwrap();
            assert!(!reachable(ip, false), "{internal}");
        }
        for public in ["1.1.1.1", "93.184.216.34", "2606:4700:4700::1111"] {
            assert!(reachable(public.parse().unwrap(), false), "{public}");
        }
        assert!(reachable("127.0.0.1".parse().unwrap(), true));
        assert!(reachable("::1".parse().unwrap(), true));
        assert!(
            !reachable("10.0.0.1".parse().unwrap(), true),
            "loopback, not private"
        );
    }
}
