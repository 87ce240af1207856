//! [`Keyplane`] use cases that check a presented credential: for a platform API
//! (`/v1/authz`, the gateway, by route rules) and for the management API (`authenticate`).

use crate::app::Keyplane;
use crate::domain::dpop::{DpopError, DpopRefusal, DpopRequest};
use crate::domain::error::{Error, Result};
use crate::domain::path::NormalPath;
use crate::domain::perm::{Actor, PermSet, Principal};
use crate::domain::request::{Refusal, RequestMeta};
use crate::domain::routes::{Decision, RuleSet, RulesSource};
use crate::domain::secret::ct_eq;
use crate::domain::usage::Outcome;
pub use crate::runtime::credentials::{Identity, Verdict};
pub use crate::runtime::ratelimit::{LimitState, Limited, Prepared};
use crate::runtime::throttle::management_keys;
use crate::runtime::usage::UsageKey;
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl Keyplane {
    /// Checks a bearer credential for a platform API, requiring every scope in `required`.
    ///
    /// With `dpop` (the request came as `Authorization: DPoP <token>`), the token must be bound
    /// to a key and come with a valid proof of it for this request (RFC 9449 §7); a bound token
    /// without it (as `Bearer`) is refused.
    ///
    /// An allowed credential is then counted against its rate limits, and every answer is
    /// counted for usage analytics (an atomic addition; nothing is written here).
    pub async fn check<S: AsRef<str>>(
        &self,
        token: Option<&str>,
        dpop: Option<&DpopRequest<'_>>,
        required: &[S],
        meta: &RequestMeta,
    ) -> Verdict {
        let (verdict, refused) = self.check_credential(token, dpop, required, meta).await;
        self.settle(verdict, refused, required, None).await
    }

    /// Applies rate limits to an allowed credential and counts the answer (usage analytics).
    /// `refused` names the credential of a refusal when it exists (a revoked key, a token of a
    /// client); `rule_cost` is a route rule's limit name (empty: every limit) and cost.
    async fn settle<S: AsRef<str>>(
        &self,
        verdict: Verdict,
        refused: Option<Identity>,
        required: &[S],
        rule_cost: Option<(&str, u64)>,
    ) -> Verdict {
        let now_ms = self.rt.now_ms();
        let verdict = match verdict {
            // A key without limits (the common case) costs nothing more here.
            Verdict::Allow(Identity::Key(k)) if k.limits.is_empty() => {
                Verdict::Allow(Identity::Key(k))
            }
            Verdict::Allow(identity) => {
                let limits = self.limits_of(&identity).await;
                if limits.is_empty() {
                    Verdict::Allow(identity)
                } else {
                    match self.rt.limiter.check(&limits, now_ms, rule_cost) {
                        Limited::Within(_) => Verdict::Allow(identity),
                        Limited::Over(state) => Verdict::RateLimited(identity, state),
                    }
                }
            }
            other => other,
        };
        let (outcome, who) = match &verdict {
            Verdict::Allow(i) => (Outcome::Allowed, Some(i)),
            Verdict::RateLimited(i, _) => (Outcome::RateLimited, Some(i)),
            Verdict::InsufficientScope(i) => (Outcome::InsufficientScope, Some(i)),
            Verdict::NoRule(i) => (Outcome::NoRule, Some(i)),
            Verdict::Dpop(_) => (Outcome::Dpop, refused.as_ref()),
            Verdict::Refuse(r) => (usage_outcome(*r), refused.as_ref()),
        };
        let service = match required.first() {
            Some(scope) => self
                .rt
                .services()
                .await
                .ok()
                .and_then(|idx| idx.service_of_scope(scope.as_ref()).cloned()),
            None => None,
        };
        self.rt.usage.add(
            UsageKey {
                minute: now_ms.div_euclid(60_000),
                org_id: who.map_or("", |i| i.org_id()),
                project_id: who.map_or("", |i| i.project_id()),
                credential_id: who.map_or("", |i| i.usage_id()),
                service: service.as_deref().unwrap_or(""),
                outcome,
            },
            1,
        );
        verdict
    }

    /// The rate limits of a checked credential: an API key's come with its cache entry, an
    /// access token's are its client's.
    async fn limits_of(&self, identity: &Identity) -> Arc<[Prepared]> {
        match identity {
            Identity::Key(k) => Arc::clone(&k.limits),
            Identity::Token(t) => match self.rt.cached_client(&t.client_id).await {
                Ok(Some(c)) => Arc::clone(c.limits.get_or_init(|| {
                    self.rt.limiter.prepare(
                        &c.client.rate_limits,
                        &c.client.client_id,
                        c.client.owner_member_id.as_deref(),
                        &c.client.project_id,
                    )
                })),
                _ => Arc::from(Vec::new()),
            },
        }
    }

    /// The credential check itself, without limits or counting; a refusal also names the
    /// credential refused when it exists.
    async fn check_credential<S: AsRef<str>>(
        &self,
        token: Option<&str>,
        dpop: Option<&DpopRequest<'_>>,
        required: &[S],
        meta: &RequestMeta,
    ) -> (Verdict, Option<Identity>) {
        self.rt.checks.fetch_add(1, Ordering::Relaxed);
        let Some(token) = token else {
            return (Verdict::Refuse(Refusal::Missing), None);
        };
        let identity = if self.rt.settings.api_key_format.claims(token) {
            if dpop.is_some() {
                return (
                    Verdict::Dpop(DpopRefusal::token(
                        "only an access token can be DPoP-bound; send an API key as Bearer",
                    )),
                    None,
                );
            }
            let key = match self.rt.resolve_key_raw(token).await {
                Ok(Some(k)) => k,
                Ok(None) => return (self.rt.refuse(Refusal::Unknown, None, meta), None),
                Err(r) => return (self.rt.refuse(r, None, meta), None),
            };
            if let Err(r) = self.rt.evaluate(&key) {
                let v = self.rt.refuse(r, Some(&key), meta);
                return (v, Some(Identity::Key(key)));
            }
            self.rt.cache.mark_used(&key, || self.rt.now_ms());
            Identity::Key(key)
        } else if self.rt.is_access_token_shaped(token) {
            match self.rt.token_identity(token).await {
                Some(t) => {
                    let t = Arc::new(t);
                    if let Err(r) = self.check_binding(token, t.jkt.as_deref(), dpop).await {
                        self.rt
                            .queue_refusal(r.error, Some(t.client_id.clone()), meta);
                        return (Verdict::Dpop(r), Some(Identity::Token(t)));
                    }
                    Identity::Token(t)
                }
                None => return (self.rt.refuse(Refusal::Unknown, None, meta), None),
            }
        } else {
            return (self.rt.refuse(Refusal::Malformed, None, meta), None);
        };
        let scopes = identity.scopes();
        if !required.iter().all(|s| {
            scopes
                .binary_search_by(|x| x.as_str().cmp(s.as_ref()))
                .is_ok()
        }) {
            return (Verdict::InsufficientScope(identity), None);
        }
        // RFC 8707: for a scope of a service that declares resource URIs, an access token must
        // have been issued for one of them. API keys are bound by their scopes alone.
        if let Identity::Token(t) = &identity {
            if !required.is_empty() {
                let allowed = match self.rt.services().await {
                    Ok(idx) => idx.audience_allows(&t.aud, required),
                    Err(e) => {
                        tracing::error!(error = %e, "storage failed while reading services");
                        false
                    }
                };
                if !allowed {
                    self.rt.queue_refusal(
                        Refusal::Audience.as_str(),
                        Some(t.client_id.clone()),
                        meta,
                    );
                    return (Verdict::Refuse(Refusal::Audience), Some(identity));
                }
            }
        }
        (Verdict::Allow(identity), None)
    }

    /// RFC 9449 §7: a bound token needs the `DPoP` scheme and a proof of its key for this
    /// request; an unbound one must not claim the `DPoP` scheme.
    async fn check_binding(
        &self,
        token: &str,
        jkt: Option<&str>,
        dpop: Option<&DpopRequest<'_>>,
    ) -> Result<(), DpopRefusal> {
        match (jkt, dpop) {
            (None, None) => Ok(()),
            (Some(_), None) => Err(DpopRefusal::token(
                "the access token is DPoP-bound: send it as `Authorization: DPoP` with a proof",
            )),
            (None, Some(_)) => Err(DpopRefusal::token(
                "the access token is not DPoP-bound; send it as Bearer",
            )),
            (Some(jkt), Some(d)) => {
                let refusal = |e: DpopError| DpopRefusal {
                    error: e.code(),
                    description: e.description(),
                    nonce: self.rt.dpop_nonce(),
                };
                let proof = self
                    .rt
                    .check_dpop_proof(&d.proofs, d.htm, d.htus.clone(), Some(token))
                    .await
                    .map_err(refusal)?;
                if !ct_eq(proof.jkt.as_bytes(), jkt.as_bytes()) {
                    return Err(DpopRefusal {
                        error: "invalid_dpop_proof",
                        description: "the DPoP proof is signed by another key than the one the access token is bound to".into(),
                        nonce: None,
                    });
                }
                Ok(())
            }
        }
    }

    /// Checks a credential for a request to the platform's APIs by the route rules: the rule
    /// matching `method` and `path` says which scopes it needs (also returned). The path is a
    /// [`NormalPath`]: the caller normalized it (and refused an ambiguous one) first, and the
    /// gateway forwards exactly that path.
    pub async fn check_request(
        &self,
        token: Option<&str>,
        dpop: Option<&DpopRequest<'_>>,
        method: &str,
        path: &NormalPath<'_>,
        meta: &RequestMeta,
    ) -> (Verdict, Vec<String>) {
        let rules = self.rules();
        match rules.decide_rule(method, path) {
            (Decision::Require(scopes), cost) => {
                let (verdict, refused) = self.check_credential(token, dpop, scopes, meta).await;
                let cost = cost.map(|(name, n)| (name.as_str(), *n));
                (
                    self.settle(verdict, refused, scopes, cost).await,
                    scopes.to_vec(),
                )
            }
            (Decision::Deny, _) => {
                let (verdict, refused) =
                    self.check_credential::<&str>(token, dpop, &[], meta).await;
                let verdict = match verdict {
                    Verdict::Allow(i) => Verdict::NoRule(i),
                    other => other,
                };
                (
                    self.settle::<&str>(verdict, refused, &[], None).await,
                    vec![],
                )
            }
        }
    }

    /// Sets where rules are read from, and loads them (at start: an error stops the start).
    pub async fn set_rules_source(
        &self,
        source: Arc<dyn RulesSource>,
    ) -> std::result::Result<usize, String> {
        *self
            .rt
            .rules_source
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(source);
        self.reload_rules().await
    }

    /// Reads the rules again and installs them if they are valid; otherwise keeps the old ones.
    pub async fn reload_rules(&self) -> std::result::Result<usize, String> {
        let source = self
            .rt
            .rules_source
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(source) = source else {
            return Ok(self.rules().len());
        };
        let (inputs, allow_unmatched) = source.load()?;
        let set = RuleSet::new(inputs, allow_unmatched)?;
        let known = self
            .rt
            .scopes_supported()
            .await
            .map_err(|e| e.to_string())?;
        set.check_scopes(&known)?;
        self.rt.check_gateway_resource().await?;
        let n = set.len();
        *self.rt.rules.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
        Ok(n)
    }

    /// Authenticates a caller of the management API: an API key, an access token, or the admin
    /// key. Failed authentications are throttled per client address (never per credential): past
    /// `auth_failures_per_minute` failures from one address within a minute, every credential
    /// from that address — a correct one too — is answered `TooManyRequests` without being
    /// checked, until the minute is over. A correct credential from any other address always
    /// works. Requests without a credential are not counted.
    pub async fn authenticate(&self, token: Option<&str>, meta: &RequestMeta) -> Result<Principal> {
        let Some(token) = token else {
            return Err(Error::Unauthenticated(Refusal::Missing.describe().into()));
        };
        let throttle = &self.rt.auth_failures;
        let now = self.rt.now_ms();
        let keys = || {
            management_keys(
                &meta.throttle_addr(),
                self.rt.settings.auth_failures_per_minute,
            )
        };
        if !throttle.quiet(now) {
            if let Some(wait) = throttle.blocked(&keys(), now) {
                self.rt.queue_refusal("throttled", None, meta);
                return Err(Error::TooManyRequests(wait));
            }
        }
        let result = self.authenticate_presented(token, meta).await;
        if matches!(result, Err(Error::Unauthenticated(_))) {
            throttle.failed(&keys(), now);
        }
        result
    }

    async fn authenticate_presented(&self, token: &str, meta: &RequestMeta) -> Result<Principal> {
        if self.rt.settings.api_key_format.claims(token) {
            let key = match self.rt.resolve_key_raw(token).await {
                Ok(Some(k)) => k,
                Ok(None) => {
                    self.rt.note_refusal(Refusal::Unknown, None, meta);
                    return Err(Error::Unauthenticated(Refusal::Unknown.describe().into()));
                }
                Err(r) => {
                    self.rt.note_refusal(r, None, meta);
                    return Err(Error::Unauthenticated(r.describe().into()));
                }
            };
            if let Err(r) = self.rt.evaluate(&key) {
                self.rt.note_refusal(r, Some(&key), meta);
                return Err(Error::Unauthenticated(r.describe().into()));
            }
            self.rt.cache.mark_used(&key, || self.rt.now_ms());
            return Ok(Principal {
                actor: Actor::ApiKey {
                    key_id: key.key_id.to_string(),
                    member_id: key.owner_member_id.as_deref().map(str::to_string),
                    member_role: key.member_role,
                },
                org_id: Some(key.org_id().to_string()),
                project_id: Some(key.project_id().to_string()),
                permissions: key.permissions,
                scopes: key.scopes().to_vec(),
            });
        }
        if self.rt.is_access_token_shaped(token) {
            return match self.rt.token_identity(token).await {
                // A DPoP-bound token is not a bearer credential: the management API takes none.
                Some(t) if t.jkt.is_some() => {
                    self.rt.queue_refusal("invalid_token", None, meta);
                    Err(Error::Unauthenticated(
                        "a DPoP-bound access token cannot be used as a bearer credential".into(),
                    ))
                }
                Some(t) => Ok(Principal {
                    actor: Actor::Client {
                        client_id: t.client_id.clone(),
                    },
                    org_id: Some(t.org_id.clone()),
                    project_id: Some(t.project_id.clone()),
                    permissions: PermSet::EMPTY,
                    scopes: t.scopes.clone(),
                }),
                None => {
                    self.rt.queue_refusal("invalid_access_token", None, meta);
                    Err(Error::Unauthenticated(
                        "the access token is invalid, expired or revoked".into(),
                    ))
                }
            };
        }
        // Anything else may be the admin key. It is checked against storage on every call so a
        // rotation by `keyplane admin-key rotate` in another process takes effect at once.
        if token.len() >= 32 && token.len() <= 512 {
            let digest = self.rt.pepper.digest(token);
            if let Some((stored, _)) = self.rt.store.admin_key_get().await? {
                if ct_eq(&stored.0, &digest.0) {
                    return Ok(Principal::admin());
                }
            }
        }
        self.rt.note_refusal(Refusal::Unknown, None, meta);
        Err(Error::Unauthenticated(Refusal::Unknown.describe().into()))
    }

    /// Reads every active API key into the cache, a page at a time; returns how many were
    /// filed (at start, and after the change feed comes back).
    pub async fn preload_cache(&self) -> Result<usize> {
        self.rt.preload_cache().await
    }
}

/// The usage outcome of a refusal.
fn usage_outcome(r: Refusal) -> Outcome {
    match r {
        Refusal::Missing => Outcome::Missing,
        Refusal::Malformed => Outcome::Malformed,
        Refusal::Unknown => Outcome::Unknown,
        Refusal::Revoked => Outcome::Revoked,
        Refusal::Expired => Outcome::Expired,
        Refusal::Audience => Outcome::WrongAudience,
    }
}
