//! [`Keyplane`] use cases of leaked-credential reports: GitHub's secret-scanning partner
//! reports (signed), reports by any authenticated caller, the public form, the console's
//! "report as leaked", and the patterns scanners need.
//!
//! A reported token is first checked for one of keyplane's formats (prefix, length, alphabet,
//! CRC32): anything else is never looked up. A token that is one of ours is looked up by
//! digest; per the policy its live key is revoked, or its client secret retired, at once —
//! through the same store methods and cache invalidation as `api_key_revoke` and
//! `client_secret_retire`, so every node refuses it within a second — and `credential.leaked`
//! is recorded in the same transaction. An unknown token changes and records nothing. A leaked
//! secret is revoked whoever reports it: whoever holds it can use it, so nothing is gained by
//! refusing a reporter who could not have managed it; but a reporter learns nothing about a
//! credential it could not see.

use super::retry_on_conflict;
use crate::app::Keyplane;
use crate::domain::ceiling::{owners_only, within, Authority};
use crate::domain::error::{Error, Result};
use crate::domain::ids::{is_id, new_id};
use crate::domain::leaks::{
    self, classify, clean_reported, decode_signature, parse_github_report, token_hash, Feedback,
    LeakPolicy, LeakedKind, Pattern, SignatureError, REPLAY_WINDOW_SECONDS,
};
use crate::domain::model::{NewEvent, Outcome};
use crate::domain::perm::Principal;
use crate::domain::request::RequestMeta;
use crate::domain::secret::{ct_eq, Digest};
use crate::runtime::oauth::ceil_to_second;
use crate::store::Invalidation;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The actor of events caused by GitHub's reports.
pub const GITHUB_REPORTER: &str = "github-secret-scanning";
/// The actor of events caused by the public form.
pub const FORM_REPORTER: &str = "public-leak-form";
/// The replay table's namespace for GitHub's reports (never a client id).
const REPLAY_NAMESPACE: &str = "leak-report|github";
/// How long a public form's token is accepted.
const FORM_TOKEN_SECONDS: i64 = 2 * 3600;

/// What was done with a reported credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeakAction {
    /// The key was revoked, or the client secret retired.
    Revoked,
    /// The policy is `notify` (or it is the admin key): only recorded.
    Notified,
    /// The credential no longer worked (revoked, expired, retired): only recorded.
    AlreadyInactive,
}

impl LeakAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Revoked => "revoked",
            Self::Notified => "notified",
            Self::AlreadyInactive => "already_inactive",
        }
    }
}

/// A reported credential that keyplane issued.
#[derive(Debug, Clone)]
pub struct LeakHandled {
    pub kind: LeakedKind,
    /// The key's id, or the client's id (for a client secret), or `admin-key`.
    pub credential_id: String,
    /// The client secret's id, for a client secret.
    pub secret_id: Option<String>,
    pub org_id: Option<String>,
    pub action: LeakAction,
}

/// What an authenticated reporter is told: the credential and the action only when the
/// reporter could see the credential; otherwise exactly what an unknown token answers.
#[derive(Debug, Clone)]
pub struct LeakAnswer {
    pub visible: Option<LeakHandled>,
}

/// Where a report came from, for its event.
struct ReportContext<'a> {
    actor: String,
    url: Option<String>,
    source: Option<String>,
    meta: &'a RequestMeta,
    /// Whether a report of a credential that no longer works is recorded. Not for the public
    /// form: whoever holds a revoked key could otherwise grow the chain with it.
    record_inactive: bool,
}

impl Keyplane {
    /// The regular expressions scanners need, one per configured secret format.
    pub fn leak_patterns(&self) -> Vec<Pattern> {
        let s = &self.rt.settings;
        leaks::patterns(&leaks::formats(
            &s.api_key_format,
            &s.oauth.client_secret_format,
            &s.admin_key_format,
        ))
    }

    /// A report from GitHub's secret scanning: the signature over the raw body is checked
    /// first (nothing else happens for a bad one), then the report is refused if the same body
    /// came before (on any node), then each token is handled. Answers GitHub's feedback.
    pub async fn leak_report_github(
        &self,
        body: &[u8],
        key_id: Option<&str>,
        signature: Option<&str>,
        meta: &RequestMeta,
    ) -> Result<Vec<Feedback>> {
        let rt = &self.rt;
        // Failed signatures are throttled per address like every failed authentication.
        let keys = [(
            format!("leak-signature|{}", meta.throttle_addr()),
            rt.settings.auth_failures_per_minute,
        )];
        if let Some(wait) = rt.auth_failures.blocked(&keys, rt.now_ms()) {
            return Err(Error::TooManyRequests(wait));
        }
        let verified = async {
            let (Some(key_id), Some(signature)) = (key_id, signature) else {
                return Err(SignatureError::Missing);
            };
            let der = decode_signature(signature)?;
            let key = rt
                .reporter_key(key_id.trim())
                .await
                .ok_or(SignatureError::UnknownKey)?;
            if key.verifies(body, &der) {
                Ok(())
            } else {
                Err(SignatureError::Mismatch)
            }
        }
        .await;
        if let Err(e) = verified {
            rt.auth_failures.failed(&keys, rt.now_ms());
            return Err(Error::Unauthenticated(e.to_string()));
        }
        let matches = parse_github_report(body).map_err(|e| Error::invalid("body", e.as_str()))?;
        // Only a correctly signed report reaches the replay table, so nobody else can grow it;
        // the body (not the signature, which ECDSA lets anyone re-randomize) is what is unique.
        let fresh = rt
            .store
            .client_assertion_jti_use(
                REPLAY_NAMESPACE,
                &leaks::sha256_hex(body),
                rt.now() + time::Duration::seconds(REPLAY_WINDOW_SECONDS),
                rt.now(),
            )
            .await?;
        if !fresh {
            return Err(Error::Conflict(
                "this report was received before; it is not processed again".into(),
            ));
        }
        let mut feedback = Vec::with_capacity(matches.len());
        for m in matches {
            let cx = ReportContext {
                actor: GITHUB_REPORTER.into(),
                url: clean_reported(m.url.as_deref()),
                source: clean_reported(m.source.as_deref()),
                meta,
                record_inactive: true,
            };
            let handled = self.handle_leak(&m.token, &cx).await?;
            feedback.push(Feedback {
                token_hash: token_hash(&m.token),
                token_type: m.token_type.chars().take(200).collect(),
                label: if handled.is_some() {
                    "true_positive"
                } else {
                    "false_positive"
                },
            });
        }
        Ok(feedback)
    }

    /// A report by any authenticated caller (`POST /v1/leaks`, the CLI).
    pub async fn leak_report(
        &self,
        p: &Principal,
        token: &str,
        url: Option<&str>,
        source: Option<&str>,
        meta: &RequestMeta,
    ) -> Result<LeakAnswer> {
        let cx = ReportContext {
            actor: p.actor_label(),
            url: clean_reported(url),
            source: clean_reported(source).or_else(|| Some("api".into())),
            meta,
            record_inactive: true,
        };
        let Some(handled) = self.handle_leak(token.trim(), &cx).await? else {
            return Ok(LeakAnswer { visible: None });
        };
        let rt = &self.rt;
        let visible = match handled.kind {
            LeakedKind::ApiKey => rt.key_in_reach(p, &handled.credential_id).await.is_ok(),
            LeakedKind::ClientSecret => rt.client_in_reach(p, &handled.credential_id).await.is_ok(),
            LeakedKind::AdminKey => p.authority().above_owners,
        };
        Ok(LeakAnswer {
            visible: visible.then_some(handled),
        })
    }

    /// Whether the public form may take another report from this address now (each report
    /// counts, found or not); 429 past the configured number per minute.
    pub fn leak_form_admit(&self, meta: &RequestMeta) -> Result<()> {
        let rt = &self.rt;
        let keys = [(
            format!("leak-form|{}", meta.throttle_addr()),
            rt.settings.leaks.form_reports_per_minute,
        )];
        let now = rt.now_ms();
        if let Some(wait) = rt.leak_form.blocked(&keys, now) {
            return Err(Error::TooManyRequests(wait));
        }
        rt.leak_form.failed(&keys, now);
        Ok(())
    }

    /// A report through the public form (after [`Self::leak_form_admit`]). Its outcome is
    /// never shown to the reporter.
    pub async fn leak_report_form(&self, token: &str, url: Option<&str>, meta: &RequestMeta) {
        let cx = ReportContext {
            actor: FORM_REPORTER.into(),
            url: clean_reported(url),
            source: Some("form".into()),
            meta,
            record_inactive: false,
        };
        if let Err(e) = self.handle_leak(token.trim(), &cx).await {
            tracing::error!(error = %e, "a leak report from the public form failed");
        }
    }

    /// A token for the public form, bound to `nonce` (the form's cookie): a form posted from
    /// another site lacks the cookie, and a cookie alone makes no token.
    pub fn leak_form_token(&self, nonce: &str) -> String {
        let ts = self.rt.now_ms() / 1000;
        format!("{ts}.{}", self.leak_form_mac(ts, nonce))
    }

    /// Whether `token` was made for `nonce` by this deployment within the last two hours.
    pub fn leak_form_token_ok(&self, token: &str, nonce: &str) -> bool {
        let Some((ts, mac)) = token.split_once('.') else {
            return false;
        };
        let Ok(ts) = ts.parse::<i64>() else {
            return false;
        };
        let now = self.rt.now_ms() / 1000;
        if nonce.len() < 16 || ts > now + 60 || now - ts > FORM_TOKEN_SECONDS {
            return false;
        }
        ct_eq(self.leak_form_mac(ts, nonce).as_bytes(), mac.as_bytes())
    }

    fn leak_form_mac(&self, ts: i64, nonce: &str) -> String {
        let key = self.rt.pepper.derive("leak-report-form");
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("any key length");
        mac.update(format!("{ts}|{nonce}").as_bytes());
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The console's "report as leaked" on a key the caller can see and could revoke.
    pub async fn leak_report_key(
        &self,
        p: &Principal,
        id: &str,
        url: Option<&str>,
        meta: &RequestMeta,
    ) -> Result<LeakHandled> {
        let rt = &self.rt;
        let (key, _) = rt.key_in_reach(p, id).await?;
        let owner = rt
            .owner_role(key.owner_member_id.as_deref())
            .await
            .ok()
            .flatten();
        owners_only(
            &p.authority(),
            &Authority::of_key(owner, &[], &[]),
            "report this key as leaked",
        )?;
        let cx = ReportContext {
            actor: p.actor_label(),
            url: clean_reported(url),
            source: Some("console".into()),
            meta,
            record_inactive: true,
        };
        let live = key.is_active && !key.is_expired(rt.now());
        self.leak_api_key(key.id.clone(), live, &cx).await
    }

    /// The console's "report as leaked" on one secret of a client the caller can see.
    pub async fn leak_report_client_secret(
        &self,
        p: &Principal,
        client_id: &str,
        secret_id: &str,
        url: Option<&str>,
        meta: &RequestMeta,
    ) -> Result<LeakHandled> {
        let rt = &self.rt;
        let (c, secrets, _) = rt.client_in_reach(p, client_id).await?;
        within(
            &p.authority(),
            &rt.client_authority(&c).await?,
            "report a secret of this client as leaked",
        )?;
        if !is_id("sec", secret_id) || !secrets.iter().any(|s| s.id == secret_id) {
            return Err(Error::NotFound("client secret"));
        }
        let cx = ReportContext {
            actor: p.actor_label(),
            url: clean_reported(url),
            source: Some("console".into()),
            meta,
            record_inactive: true,
        };
        self.leak_client_secret(client_id.to_string(), secret_id.to_string(), &cx)
            .await
    }

    /// Handles one reported token: `None` when it is not a credential keyplane issued (then
    /// nothing is changed or recorded; a token of none of keyplane's formats is not even
    /// looked up).
    async fn handle_leak(
        &self,
        token: &str,
        cx: &ReportContext<'_>,
    ) -> Result<Option<LeakHandled>> {
        let rt = &self.rt;
        let s = &rt.settings;
        let formats = leaks::formats(
            &s.api_key_format,
            &s.oauth.client_secret_format,
            &s.admin_key_format,
        );
        let Some(kind) = classify(token, &formats) else {
            return Ok(None);
        };
        let digests: Vec<Digest> = std::iter::once(rt.pepper.digest(token))
            .chain(rt.pepper.previous_digest(token))
            .collect();
        match kind {
            LeakedKind::ApiKey => {
                for d in &digests {
                    if let Some(found) = rt.store.api_key_lookup(d).await? {
                        let now = rt.now();
                        let live = found.key.is_active
                            && !found.key.is_expired(now)
                            && found.secret.expires_at.is_none_or(|e| e > now);
                        return self.leak_api_key(found.key.id, live, cx).await.map(Some);
                    }
                }
                Ok(None)
            }
            LeakedKind::ClientSecret => {
                for d in &digests {
                    if let Some((client_id, secret_id)) = rt.store.client_secret_find(d).await? {
                        return self
                            .leak_client_secret(client_id, secret_id, cx)
                            .await
                            .map(Some);
                    }
                }
                Ok(None)
            }
            LeakedKind::AdminKey => {
                let Some((stored, _)) = rt.store.admin_key_get().await? else {
                    return Ok(None);
                };
                if !digests.iter().any(|d| ct_eq(&stored.0, &d.0)) {
                    return Ok(None);
                }
                // The deployment's root credential is never revoked by a report (that would
                // lock its operators out): it is recorded, for the operator to rotate it.
                let handled = LeakHandled {
                    kind,
                    credential_id: "admin-key".into(),
                    secret_id: None,
                    org_id: None,
                    action: LeakAction::Notified,
                };
                rt.store
                    .activity_append(&[self.leak_event(&handled, cx)])
                    .await?;
                tracing::warn!(
                    "the admin key was reported as leaked: rotate it (keyplane admin-key rotate)"
                );
                Ok(Some(handled))
            }
        }
    }

    /// Records (and per the policy, revokes) a leaked API key.
    async fn leak_api_key(
        &self,
        id: String,
        live: bool,
        cx: &ReportContext<'_>,
    ) -> Result<LeakHandled> {
        retry_on_conflict!(None::<i64>, self.leak_api_key_once(&id, live, cx))
    }

    async fn leak_api_key_once(
        &self,
        id: &str,
        live: bool,
        cx: &ReportContext<'_>,
    ) -> Result<LeakHandled> {
        let rt = &self.rt;
        let key = rt
            .store
            .api_key_get(id)
            .await?
            .ok_or(Error::NotFound("API key"))?;
        let action = if !(live && key.is_active) {
            LeakAction::AlreadyInactive
        } else if rt.settings.leaks.policy == LeakPolicy::Notify {
            LeakAction::Notified
        } else {
            LeakAction::Revoked
        };
        let handled = LeakHandled {
            kind: LeakedKind::ApiKey,
            credential_id: key.id.clone(),
            secret_id: None,
            org_id: Some(key.org_id.clone()),
            action,
        };
        let event = self.leak_event(&handled, cx);
        if action == LeakAction::Revoked {
            let digests = rt
                .store
                .api_key_deactivate(&key.id, key.version, rt.now(), &event)
                .await?;
            rt.invalidate(Invalidation::Digests(digests)).await?;
        } else if action != LeakAction::AlreadyInactive || cx.record_inactive {
            rt.store.activity_append(&[event]).await?;
        }
        Ok(handled)
    }

    /// Records (and per the policy, retires) a leaked client secret.
    async fn leak_client_secret(
        &self,
        client_id: String,
        secret_id: String,
        cx: &ReportContext<'_>,
    ) -> Result<LeakHandled> {
        retry_on_conflict!(
            None::<i64>,
            self.leak_client_secret_once(&client_id, &secret_id, cx)
        )
    }

    async fn leak_client_secret_once(
        &self,
        client_id: &str,
        secret_id: &str,
        cx: &ReportContext<'_>,
    ) -> Result<LeakHandled> {
        let rt = &self.rt;
        let Some((c, secrets)) = rt.store.client_get(client_id).await? else {
            return Err(Error::NotFound("OAuth client"));
        };
        let now = rt.now();
        let live = secrets
            .iter()
            .any(|s| s.id == secret_id && s.expires_at.is_none_or(|e| e > now));
        let action = if !live {
            LeakAction::AlreadyInactive
        } else if rt.settings.leaks.policy == LeakPolicy::Notify {
            LeakAction::Notified
        } else {
            LeakAction::Revoked
        };
        let mut handled = LeakHandled {
            kind: LeakedKind::ClientSecret,
            credential_id: c.client_id.clone(),
            secret_id: Some(secret_id.to_string()),
            org_id: Some(c.org_id.clone()),
            action,
        };
        if action == LeakAction::Revoked {
            let event = self.leak_event(&handled, cx);
            if rt
                .store
                .client_secret_delete(client_id, secret_id, c.version, ceil_to_second(now), &event)
                .await?
            {
                rt.invalidate(Invalidation::Client(client_id.to_string()))
                    .await?;
                return Ok(handled);
            }
            // Retired meanwhile: recorded as such.
            handled.action = LeakAction::AlreadyInactive;
        }
        if handled.action != LeakAction::AlreadyInactive || cx.record_inactive {
            rt.store
                .activity_append(&[self.leak_event(&handled, cx)])
                .await?;
        }
        Ok(handled)
    }

    /// The `credential.leaked` event.
    fn leak_event(&self, h: &LeakHandled, cx: &ReportContext<'_>) -> NewEvent {
        let rt = &self.rt;
        let mut details = serde_json::json!({
            "credential_id": h.credential_id,
            "kind": h.kind.as_str(),
            "url": cx.url,
            "source": cx.source,
            "reporter": cx.actor,
            "action": h.action.as_str(),
        });
        if let Some(sid) = &h.secret_id {
            details["secret_id"] = serde_json::Value::String(sid.clone());
        }
        NewEvent {
            id: new_id("evt"),
            at: rt.now(),
            org_id: h.org_id.clone(),
            actor: cx.actor.clone(),
            action: "credential.leaked".into(),
            target: Some(h.credential_id.clone()),
            outcome: Outcome::Success,
            client_addr: cx.meta.addr_text(),
            user_agent: cx.meta.agent_text(),
            details: cx.meta.details(details),
        }
    }
}
