//! Fetching client ID metadata documents (an app whose `client_id` is the HTTPS URL of its
//! metadata; the core decides when): never following a redirect, within a short timeout,
//! reading at most [`MAX_METADATA_BYTES`], and never connecting to a private, link-local or
//! otherwise internal address — the URL is chosen by whoever starts an authorization request,
//! so without this keyplane could be made to probe the network it sits in (server-side request
//! forgery). Loopback is allowed only when the operator says so (tests and development). The
//! address rules and the resolver are shared with webhook delivery (`egress.rs`).

use crate::egress::{check_literal_host, GuardedResolver};
use async_trait::async_trait;
use keyplane_core::domain::apps::{MetadataFetcher, MAX_METADATA_BYTES};
use keyplane_core::domain::egress::EgressPolicy;
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
            // A proxy from the environment (HTTPS_PROXY, ALL_PROXY) would resolve the
            // document's host itself, past the guarded resolver.
            .no_proxy()
            .timeout(TIMEOUT)
            .connect_timeout(Duration::from_secs(3))
            .dns_resolver(Arc::new(GuardedResolver {
                policy: Self::policy(allow_loopback),
            }))
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

    fn policy(allow_loopback: bool) -> EgressPolicy {
        EgressPolicy {
            allow_loopback,
            allow_private: false,
        }
    }
}

#[async_trait]
impl MetadataFetcher for HttpMetadataFetcher {
    async fn fetch(&self, url: &str) -> Result<Vec<u8>, String> {
        // An address written in the URL is not resolved, so the resolver cannot refuse it.
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        check_literal_host(&parsed, Self::policy(self.allow_loopback))?;
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
