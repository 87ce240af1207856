//! Webhook delivery: the HTTP sender the core's [`WebhookSender`] trait asks for (no redirects
//! followed — a 3xx is a failed attempt — a short timeout, at most a few KiB of the answer read,
//! and only addresses the egress policy allows, checked by the resolver and for literal
//! addresses), and the worker that claims due deliveries from the outbox and sends them.

use crate::egress::{check_literal_host, GuardedResolver};
use async_trait::async_trait;
use keyplane_core::domain::egress::EgressPolicy;
use keyplane_core::domain::webhook::WebhookSender;
use keyplane_core::Keyplane;
use std::sync::Arc;
use std::time::Duration;

/// One attempt gives up after this long (Standard Webhooks suggests a short timeout).
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// The most of an answer's body that is read (and then dropped).
const MAX_ANSWER_BYTES: usize = 4096;
/// Deliveries claimed at once, and sent concurrently at most.
const BATCH: i64 = 32;

pub struct HttpWebhookSender {
    http: reqwest::Client,
    policy: EgressPolicy,
}

impl HttpWebhookSender {
    pub fn new(policy: EgressPolicy) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // A proxy from the environment would resolve the target itself, past the resolver.
            .no_proxy()
            .timeout(TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .dns_resolver(Arc::new(GuardedResolver { policy }))
            .user_agent(concat!(
                "keyplane/",
                env!("CARGO_PKG_VERSION"),
                " (webhooks)"
            ))
            .build()?;
        Ok(Self { http, policy })
    }
}

#[async_trait]
impl WebhookSender for HttpWebhookSender {
    async fn send(
        &self,
        url: &str,
        headers: &[(&'static str, String)],
        body: &[u8],
    ) -> Result<u16, String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        match parsed.scheme() {
            "https" => {}
            "http" if self.policy.allow_loopback => {}
            other => return Err(format!("{other}:// is not allowed")),
        }
        check_literal_host(&parsed, self.policy)?;
        let mut req = self.http.post(parsed).body(body.to_vec());
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        let mut resp = req
            .send()
            .await
            .map_err(|e| format!("request failed: {}", error_chain(&e)))?;
        let status = resp.status().as_u16();
        let mut read = 0;
        while read < MAX_ANSWER_BYTES {
            match resp.chunk().await {
                Ok(Some(c)) => read += c.len(),
                _ => break,
            }
        }
        Ok(status)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Claims due deliveries and sends them, until aborted: woken when deliveries are queued (on
/// this node, or on another through PostgreSQL's change feed), and polling every `poll` as a
/// safety net (retries falling due, a SQLite deployment, a missed wake).
pub async fn run_worker(app: Arc<Keyplane>, poll: Duration) {
    let permits = Arc::new(tokio::sync::Semaphore::new(BATCH as usize));
    loop {
        let free = permits.available_permits() as i64;
        let claimed = if free > 0 {
            match app.webhook_claim(free.min(BATCH)).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "could not claim webhook deliveries");
                    vec![]
                }
            }
        } else {
            vec![]
        };
        let full = claimed.len() as i64 == free.min(BATCH) && free > 0;
        for c in claimed {
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                return;
            };
            let app = Arc::clone(&app);
            tokio::spawn(async move {
                if let Err(e) = app.webhook_deliver(c).await {
                    tracing::warn!(error = %e, "could not record a webhook delivery");
                }
                drop(permit);
                app.wake_webhooks();
            });
        }
        if full {
            // More may be due: claim again at once.
            continue;
        }
        tokio::select! {
            _ = app.webhooks_queued() => {}
            _ = tokio::time::sleep(poll) => {}
        }
    }
}
