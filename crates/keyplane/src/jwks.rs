//! Fetching clients' `jwks_uri` documents for `private_key_jwt` (the core decides when; this is
//! only the HTTP): never following a redirect (a client's URL must be where its keys are, and a
//! redirect could point keyplane at anything), within a short timeout, and reading at most
//! [`MAX_JWKS_BYTES`]. TLS with rustls and the Mozilla roots (webpki-roots).

use async_trait::async_trait;
use keyplane_core::domain::client_auth::JwksFetcher;
use keyplane_core::domain::jose::MAX_JWKS_BYTES;
use std::time::Duration;

/// The whole fetch, connection included, gives up after this long.
const TIMEOUT: Duration = Duration::from_secs(5);

pub struct HttpJwksFetcher {
    http: reqwest::Client,
}

impl HttpJwksFetcher {
    pub fn new() -> reqwest::Result<Self> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(TIMEOUT)
            .connect_timeout(Duration::from_secs(3))
            .user_agent(concat!(
                "keyplane/",
                env!("CARGO_PKG_VERSION"),
                " (jwks_uri)"
            ))
            .build()?;
        Ok(Self { http })
    }
}

#[async_trait]
impl JwksFetcher for HttpJwksFetcher {
    async fn fetch(&self, url: &str) -> Result<Vec<u8>, String> {
        let mut resp = self
            .http
            .get(url)
            .header(
                reqwest::header::ACCEPT,
                "application/jwk-set+json, application/json",
            )
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        if !resp.status().is_success() {
            // Redirects land here too: they are not followed.
            return Err(format!("answered {}", resp.status()));
        }
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            return Err(format!(
                "the document is larger than {MAX_JWKS_BYTES} bytes"
            ));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("reading the document failed: {e}"))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!(
                    "the document is larger than {MAX_JWKS_BYTES} bytes"
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}
