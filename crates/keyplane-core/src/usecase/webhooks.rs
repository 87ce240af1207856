//! [`Keyplane`] use cases of webhooks: endpoints (create, list, get, edit, delete, rotate the
//! secret), their delivery log and manual redelivery; claiming and delivering queued
//! deliveries (the binary's worker calls these); and recording notices about credentials.

use crate::app::Keyplane;
use crate::domain::clock::rfc3339;
use crate::domain::error::{Error, Result};
use crate::domain::ids::new_id;
use crate::domain::perm::{Permission, Principal};
use crate::domain::request::{
    clean_description, page_limit, paginate, parse_cursor, Page, RequestMeta,
};
use crate::domain::secret::SecretString;
use crate::domain::token::{open, seal};
use crate::domain::webhook::{
    self, check_url, parse_events, Attempt, Delivery, DeliveryResult, Endpoint, NoticeKind,
    WebhookSender, MAX_ENDPOINTS_PER_ORG, SEAL_PURPOSE,
};
use rand::Rng;
use std::sync::Arc;
use time::{Duration, OffsetDateTime};

/// Input for creating a webhook endpoint.
#[derive(Debug, Clone, Default)]
pub struct NewWebhook {
    pub org_id: Option<String>,
    pub project_id: Option<String>,
    pub url: String,
    pub events: Vec<String>,
    pub description: Option<String>,
}

/// Changes to an endpoint; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct WebhookPatch {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub enabled: Option<bool>,
    pub description: Option<String>,
}

/// A delivery claimed by this node, ready to send.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    pub delivery: Delivery,
    pub endpoint: Endpoint,
}

impl Keyplane {
    /// Registers the sender that delivers webhooks over the network (the binary's).
    pub fn set_webhook_sender(&self, sender: Arc<dyn WebhookSender>) {
        *self
            .rt
            .webhook_sender
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(sender);
    }

    /// Resolves when deliveries may have been queued (on any node, through the change feed);
    /// the worker also polls, so a missed wake only delays.
    pub async fn webhooks_queued(&self) {
        self.rt.webhook_wake.notified().await
    }

    /// Wakes this node's delivery worker.
    pub fn wake_webhooks(&self) {
        self.rt.webhook_wake.notify_one()
    }

    fn seal_secret(&self, id: &str, secret: &str) -> (Vec<u8>, u32) {
        let key = self.rt.pepper.derive(SEAL_PURPOSE);
        (
            seal(&key, id.as_bytes(), secret.as_bytes()),
            self.rt.pepper.version(),
        )
    }

    fn open_secret(&self, ep: &Endpoint, sealed: &[u8]) -> Option<Vec<u8>> {
        let key = self
            .rt
            .pepper
            .derive_version(ep.pepper_version, SEAL_PURPOSE)?;
        let text = open(&key, ep.id.as_bytes(), sealed)?;
        webhook::secret_bytes(std::str::from_utf8(&text).ok()?)
    }

    pub async fn webhook_create(
        &self,
        p: &Principal,
        input: NewWebhook,
        meta: &RequestMeta,
    ) -> Result<(Endpoint, SecretString)> {
        let rt = &self.rt;
        let access = p.access(input.org_id.as_deref(), Permission::WebhooksManage)?;
        rt.existing_org(access.org_id()).await?;
        let project_id = match input.project_id.as_deref() {
            Some(id) => Some(rt.project_in(access.org_id(), Some(id)).await?.id),
            None => None,
        };
        let url = check_url(&input.url, rt.settings.webhooks.egress)?;
        let events = parse_events(&input.events)?;
        let description = clean_description(input.description.as_deref())?;
        let now = rt.now();
        let id = new_id("whk");
        let secret = webhook::new_secret();
        let (sealed, version) = self.seal_secret(&id, &secret);
        let ep = Endpoint {
            id: id.clone(),
            org_id: access.org_id().to_string(),
            project_id,
            url,
            description,
            events,
            enabled: true,
            disabled_reason: None,
            secret_sealed: sealed,
            pepper_version: version,
            previous_sealed: None,
            previous_until: None,
            created_at: now,
            updated_at: now,
            failing_since: None,
        };
        let event = rt.event(
            p,
            Some(access.org_id()),
            "webhook.create",
            Some(&id),
            meta,
            serde_json::json!({ "url": ep.url, "events": ep.events, "project_id": ep.project_id }),
        );
        rt.store
            .webhook_create(&ep, MAX_ENDPOINTS_PER_ORG, &event)
            .await?;
        Ok((ep, SecretString::new(secret)))
    }

    pub async fn webhook_list(&self, p: &Principal, org_id: Option<&str>) -> Result<Vec<Endpoint>> {
        let access = p.access(org_id, Permission::WebhooksManage)?;
        self.rt.store.webhook_list(access.org_id()).await
    }

    pub async fn webhook_get(&self, p: &Principal, id: &str) -> Result<Endpoint> {
        Ok(self.rt.webhook_in_reach(p, id).await?.0)
    }

    pub async fn webhook_update(
        &self,
        p: &Principal,
        id: &str,
        patch: WebhookPatch,
        meta: &RequestMeta,
    ) -> Result<Endpoint> {
        let rt = &self.rt;
        let (mut ep, _) = rt.webhook_in_reach(p, id).await?;
        if let Some(url) = &patch.url {
            ep.url = check_url(url, rt.settings.webhooks.egress)?;
        }
        if let Some(events) = &patch.events {
            ep.events = parse_events(events)?;
        }
        if let Some(d) = &patch.description {
            ep.description = clean_description(Some(d))?;
        }
        if let Some(enabled) = patch.enabled {
            if enabled && !ep.enabled {
                ep.failing_since = None;
                ep.disabled_reason = None;
            }
            ep.enabled = enabled;
        }
        ep.updated_at = rt.now();
        let event = rt.event(
            p,
            Some(&ep.org_id),
            "webhook.update",
            Some(id),
            meta,
            serde_json::json!({ "url": ep.url, "events": ep.events, "enabled": ep.enabled }),
        );
        rt.store.webhook_update(&ep, &event).await?;
        Ok(ep)
    }

    pub async fn webhook_delete(&self, p: &Principal, id: &str, meta: &RequestMeta) -> Result<()> {
        let rt = &self.rt;
        let (ep, _) = rt.webhook_in_reach(p, id).await?;
        let event = rt.event(
            p,
            Some(&ep.org_id),
            "webhook.delete",
            Some(id),
            meta,
            serde_json::json!({ "url": ep.url }),
        );
        if !rt.store.webhook_delete(id, &event).await? {
            return Err(Error::NotFound("webhook"));
        }
        Ok(())
    }

    /// A new secret, shown once; the old one keeps signing beside it for the overlap window
    /// (`webhooks.secret_overlap_seconds`), so receivers can switch without losing a message.
    pub async fn webhook_rotate_secret(
        &self,
        p: &Principal,
        id: &str,
        meta: &RequestMeta,
    ) -> Result<(Endpoint, SecretString)> {
        let rt = &self.rt;
        let (mut ep, _) = rt.webhook_in_reach(p, id).await?;
        let now = rt.now();
        // The current secret is re-sealed under the current pepper as the previous one.
        let current = self.open_secret(&ep, &ep.secret_sealed).ok_or_else(|| {
            Error::Storage("a webhook secret cannot be opened with this pepper".into())
        })?;
        let current_text = format!(
            "{}{}",
            webhook::SECRET_PREFIX,
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, current)
        );
        let secret = webhook::new_secret();
        let (sealed, version) = self.seal_secret(id, &secret);
        let (previous, _) = self.seal_secret(id, &current_text);
        ep.secret_sealed = sealed;
        ep.pepper_version = version;
        ep.previous_sealed = Some(previous);
        ep.previous_until =
            Some(now + Duration::seconds(rt.settings.webhooks.secret_overlap_seconds));
        ep.updated_at = now;
        let event = rt.event(
            p,
            Some(&ep.org_id),
            "webhook.rotate_secret",
            Some(id),
            meta,
            serde_json::json!({ "previous_secret_until": ep.previous_until.map(rfc3339) }),
        );
        rt.store.webhook_update(&ep, &event).await?;
        Ok((ep, SecretString::new(secret)))
    }

    /// An endpoint's deliveries, newest first, with their attempts (`cursor`: the previous
    /// page's `next_cursor`).
    pub async fn webhook_deliveries(
        &self,
        p: &Principal,
        id: &str,
        cursor: Option<&str>,
        limit: Option<i64>,
    ) -> Result<Page<(Delivery, Vec<Attempt>)>> {
        let (ep, _) = self.rt.webhook_in_reach(p, id).await?;
        let limit = page_limit(limit)?;
        let before = parse_cursor(cursor)?;
        let items = self
            .rt
            .store
            .webhook_deliveries(&ep.id, before, limit + 1)
            .await?;
        Ok(paginate(items, limit, |(d, _)| {
            crate::domain::clock::to_ms(d.created_at)
        }))
    }

    /// Sends a delivery again now, with the same `webhook-id`.
    pub async fn webhook_redeliver(
        &self,
        p: &Principal,
        id: &str,
        delivery_id: &str,
        meta: &RequestMeta,
    ) -> Result<()> {
        let rt = &self.rt;
        let (ep, _) = rt.webhook_in_reach(p, id).await?;
        let event = rt.event(
            p,
            Some(&ep.org_id),
            "webhook.redeliver",
            Some(id),
            meta,
            serde_json::json!({ "delivery_id": delivery_id }),
        );
        if !rt
            .store
            .webhook_redeliver(&ep.id, delivery_id, rt.now(), &event)
            .await?
        {
            return Err(Error::NotFound("delivery"));
        }
        rt.webhook_wake.notify_one();
        Ok(())
    }

    /// Claims up to `limit` due deliveries for this node (none when nothing is due).
    pub async fn webhook_claim(&self, limit: i64) -> Result<Vec<ClaimedDelivery>> {
        let rt = &self.rt;
        let now = rt.now();
        if !rt.store.webhook_due(now).await? {
            return Ok(vec![]);
        }
        let lease = now + Duration::seconds(rt.settings.webhooks.lease_seconds);
        Ok(rt
            .store
            .webhook_claim(now, lease, limit)
            .await?
            .into_iter()
            .map(|(delivery, endpoint)| ClaimedDelivery { delivery, endpoint })
            .collect())
    }

    /// Signs and sends one claimed delivery, and records the attempt: delivered on a 2xx,
    /// else retried on the schedule (or failed when it is used up); an endpoint failing for
    /// longer than `webhooks.disable_after_seconds` is disabled with a `webhook.disable` event.
    pub async fn webhook_deliver(&self, claimed: ClaimedDelivery) -> Result<bool> {
        let rt = &self.rt;
        let ClaimedDelivery { delivery, endpoint } = claimed;
        let sender = rt
            .webhook_sender
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let started = rt.now();
        let timestamp = started.unix_timestamp();
        let body = delivery.payload.as_bytes();
        let mut signatures = Vec::new();
        if let Some(key) = self.open_secret(&endpoint, &endpoint.secret_sealed) {
            signatures.push(webhook::sign(&key, &delivery.id, timestamp, body));
        }
        if let (Some(prev), Some(until)) = (&endpoint.previous_sealed, endpoint.previous_until) {
            if until > started {
                if let Some(key) = self.open_secret(&endpoint, prev) {
                    signatures.push(webhook::sign(&key, &delivery.id, timestamp, body));
                }
            }
        }
        let outcome = match (&sender, signatures.is_empty()) {
            (None, _) => Err("this node has no webhook sender".to_string()),
            (_, true) => Err("the endpoint's secret cannot be opened with this pepper".to_string()),
            (Some(sender), false) => {
                let headers = [
                    ("content-type", "application/json".to_string()),
                    ("webhook-id", delivery.id.clone()),
                    ("webhook-timestamp", timestamp.to_string()),
                    ("webhook-signature", signatures.join(" ")),
                ];
                sender.send(&endpoint.url, &headers, body).await
            }
        };
        let finished = rt.now();
        let (status, error) = match outcome {
            Ok(s) if (200..300).contains(&s) => (Some(i64::from(s)), None),
            Ok(s) if (300..400).contains(&s) => (
                Some(i64::from(s)),
                Some("redirects are not followed".to_string()),
            ),
            Ok(s) => (Some(i64::from(s)), Some(format!("answered {s}"))),
            Err(e) => (None, Some(e)),
        };
        let delivered = error.is_none();
        let next_attempt_at = if delivered {
            None
        } else {
            let jitter = rand::rngs::OsRng.gen_range(-1.0..=1.0);
            webhook::retry_delay_ms(
                &rt.settings.webhooks.retry_schedule_seconds,
                delivery.attempts,
                jitter,
            )
            .map(|ms| finished + Duration::milliseconds(ms))
        };
        let disable = (!delivered
            && endpoint.failing_since.is_some_and(|since| {
                finished - since >= Duration::seconds(rt.settings.webhooks.disable_after_seconds)
            }))
        .then(|| {
            let mut e = rt.system_event(
                "webhook.disable",
                serde_json::json!({
                    "url": endpoint.url,
                    "failing_since": endpoint.failing_since.map(rfc3339),
                    "reason": "every delivery attempt failed for too long",
                }),
            );
            e.org_id = Some(endpoint.org_id.clone());
            e.target = Some(endpoint.id.clone());
            e
        });
        if let Some(e) = &error {
            tracing::info!(webhook = %endpoint.id, delivery = %delivery.id, error = %e, "webhook delivery failed");
        }
        rt.store
            .webhook_record(
                &DeliveryResult {
                    attempt: Attempt {
                        delivery_id: delivery.id.clone(),
                        endpoint_id: endpoint.id.clone(),
                        at: started,
                        duration_ms: (finished - started).whole_milliseconds() as i64,
                        status,
                        error,
                    },
                    delivered,
                    next_attempt_at,
                },
                disable.as_ref(),
            )
            .await?;
        if disable.is_some() {
            tracing::warn!(webhook = %endpoint.id, "webhook endpoint disabled after sustained failure");
        }
        Ok(delivered)
    }

    /// Forgets delivered and failed deliveries older than the delivery log keeps
    /// ([`webhook::DELIVERY_LOG_DAYS`]).
    pub async fn purge_webhook_deliveries(&self) -> Result<u64> {
        let before = self.rt.now() - Duration::days(webhook::DELIVERY_LOG_DAYS);
        self.rt.store.webhook_purge(before).await
    }

    /// Records the notices that are due (`notices.*` settings), each once per credential and
    /// threshold across every node; returns how many were recorded. Each is an activity event
    /// of the credential's organization, so it is delivered to webhooks like any other.
    pub async fn record_notices(&self) -> Result<u64> {
        let rt = &self.rt;
        let settings = &rt.settings.notices;
        let now = rt.now();
        let mut recorded = 0;
        // Smallest threshold first: a key found within one day is told once, at one day, not
        // also at seven.
        let mut expiry = settings.expiry_days.clone();
        expiry.sort_unstable();
        expiry.dedup();
        let mut work: Vec<(NoticeKind, i64, OffsetDateTime)> = expiry
            .into_iter()
            .filter(|d| *d > 0)
            .map(|d| (NoticeKind::KeyExpiring, d, now + Duration::days(d)))
            .collect();
        let rotation = settings.secret_rotation_days.filter(|d| *d > 0);
        work.push((
            NoticeKind::SecretRotationDue,
            rotation.unwrap_or(0),
            match rotation {
                Some(d) => now - Duration::days(d),
                // No configured age: only clients with their own rotation policy.
                None => OffsetDateTime::UNIX_EPOCH - Duration::days(1),
            },
        ));
        if let Some(d) = settings.unused_days.filter(|d| *d > 0) {
            work.push((NoticeKind::KeyUnused, d, now - Duration::days(d)));
        }
        for (kind, threshold, cutoff) in work {
            for c in rt
                .store
                .notice_candidates(kind, threshold, now, cutoff, 500)
                .await?
            {
                let threshold = c.rotation_days.unwrap_or(threshold);
                let mut details = serde_json::json!({
                    "project_id": c.project_id,
                    "name": c.name,
                    "threshold_days": threshold,
                });
                let key = match kind {
                    NoticeKind::KeyExpiring => "expires_at",
                    NoticeKind::SecretRotationDue => "created_at",
                    NoticeKind::KeyUnused => "last_used_at",
                };
                details[key] = serde_json::json!(rfc3339(c.at));
                if let Some(client) = &c.client_id {
                    details["client_id"] = serde_json::json!(client);
                }
                let mut event = rt.system_event(kind.action(), details);
                event.org_id = Some(c.org_id.clone());
                event.target = Some(c.client_id.clone().unwrap_or(c.credential_id.clone()));
                if rt
                    .store
                    .notice_record(kind, &c.credential_id, threshold, &event)
                    .await?
                {
                    recorded += 1;
                }
            }
        }
        Ok(recorded)
    }
}
