//! [`Keyplane`] use cases of the OAuth 2.0 endpoints: client authentication (throttled), the
//! client-credentials grant, introspection (RFC 7662) and revocation (RFC 7009).

use crate::app::Keyplane;
use crate::domain::clock::from_ms;
use crate::domain::error::Result;
use crate::domain::model::OAuthClient;
use crate::domain::oauth::{ClientAuth, Introspection, IssuedToken, OAuthError, RevokeOutcome};
use crate::domain::perm::{Actor, Permission, Principal};
use crate::domain::request::RequestMeta;
use crate::domain::secret::ct_eq;
use crate::runtime::oauth::CachedClient;
use crate::store::Invalidation;
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl Keyplane {
    /// Client authentication failures are counted per (client id, address) and per address,
    /// never per client id alone, so a caller with the right secret elsewhere is never locked out.
    fn client_throttle_keys(&self, client_id: &str, meta: &RequestMeta) -> [(String, u32); 2] {
        let ip = meta.throttle_addr();
        let s = &self.rt.settings.oauth;
        [
            (
                format!("client|{client_id}|{ip}"),
                s.failures_per_client_and_address,
            ),
            (format!("client|{ip}"), s.failures_per_address),
        ]
    }

    /// Authenticates a client by id and secret: throttled per client id and address, never
    /// by client id alone, so a caller with the right secret elsewhere is never locked out.
    pub async fn authenticate_client(
        &self,
        auth: &ClientAuth,
        meta: &RequestMeta,
    ) -> Result<Arc<CachedClient>, OAuthError> {
        let rt = &self.rt;
        let now = rt.now_ms();
        let keys = if rt.oauth.failures.quiet(now) {
            None
        } else {
            Some(self.client_throttle_keys(&auth.client_id, meta))
        };
        if let Some(retry) = keys
            .as_ref()
            .and_then(|k| rt.oauth.failures.blocked(k, now))
        {
            return Err(OAuthError::TooManyRequests(retry));
        }
        let fail = |this: &Self, known: Option<&CachedClient>| {
            let keys = this.client_throttle_keys(&auth.client_id, meta);
            this.rt.oauth.failures.failed(&keys, now);
            this.note_client_refusal(known, meta);
            Err(OAuthError::InvalidClient { basic: auth.basic })
        };
        let Some(client) = rt.cached_client(&auth.client_id).await? else {
            return fail(self, None);
        };
        if !client.is_enabled() {
            return fail(self, Some(&client));
        }
        let secret = auth.secret.expose();
        if rt
            .settings
            .oauth
            .client_secret_format
            .check(secret)
            .is_err()
        {
            return fail(self, Some(&client));
        }
        let digest = rt.pepper.digest(secret);
        let matched = client
            .secrets
            .iter()
            .find(|s| ct_eq(&s.digest.0, &digest.0) && s.refused_from_ms.is_none_or(|r| r > now));
        match matched {
            Some(s) => {
                s.uses.fetch_add(1, Ordering::Relaxed);
                s.last_used_ms.store(now, Ordering::Relaxed);
                if !client.cached.load(Ordering::Acquire) {
                    rt.oauth.keep_uses(&client);
                }
                Ok(client)
            }
            None => fail(self, Some(&client)),
        }
    }

    /// Only a client that exists is named (with its organization): an id the caller made up is
    /// not recorded, so it can neither multiply refusal events nor be a secret pasted in the
    /// wrong field.
    fn note_client_refusal(&self, known: Option<&CachedClient>, meta: &RequestMeta) {
        self.rt.queue_refusal_in(
            "client_authentication",
            known.map(|c| c.client.client_id.clone()),
            known.map(|c| c.client.org_id.clone()),
            meta,
        );
    }

    /// The client-credentials grant: a token for exactly the requested scopes (all of the
    /// client's when none are requested). Nothing is written to storage.
    pub async fn issue_token(
        &self,
        auth: &ClientAuth,
        scope: Option<&str>,
        meta: &RequestMeta,
    ) -> Result<IssuedToken, OAuthError> {
        let client = self.authenticate_client(auth, meta).await?;
        self.rt.mint(&client, scope)
    }

    /// RFC 7662. The caller is a client or a principal allowed to introspect; the answer is
    /// `None` (inactive) for anything not live, or outside the caller's organization.
    pub async fn introspect(&self, caller_org: Option<&str>, token: &str) -> Option<Introspection> {
        let info = if self.rt.settings.api_key_format.claims(token) {
            self.rt.introspect_api_key(token).await?
        } else {
            self.rt.verify_access_token(token).await?.1
        };
        match caller_org {
            Some(org) if org != info.org_id => None,
            _ => Some(info),
        }
    }

    /// The organization whose tokens a principal may introspect (`None`: all, the admin key).
    pub fn introspection_scope(&self, p: &Principal) -> Result<Option<String>> {
        if p.is_admin_key() {
            return Ok(None);
        }
        Ok(Some(
            p.access(None, Permission::TokensIntrospect)?
                .org_id()
                .to_string(),
        ))
    }

    /// RFC 7009: a client revokes one of its own tokens.
    pub async fn revoke_token(
        &self,
        auth: &ClientAuth,
        token: &str,
        meta: &RequestMeta,
    ) -> Result<RevokeOutcome, OAuthError> {
        let client = self.authenticate_client(auth, meta).await?;
        let parsed = if crate::domain::token::looks_like_jwt(token) {
            self.rt
                .oauth
                .keyring()
                .verify_jwt(token)
                .map(|c| (c.client_id, c.jti, c.exp * 1000))
        } else {
            self.rt.oauth.sealer.open(token).map(|c| (c.c, c.j, c.e))
        };
        let Some((owner, jti, exp_ms)) = parsed else {
            return Ok(RevokeOutcome::Unknown);
        };
        if owner != client.client.client_id {
            return Err(OAuthError::UnauthorizedClient(
                "the token was not issued to this client".into(),
            ));
        }
        if exp_ms <= self.rt.now_ms() || self.rt.oauth.is_revoked(&jti) {
            return Ok(RevokeOutcome::Revoked);
        }
        let p = client_principal(&client.client);
        let event = self.rt.event(
            &p,
            Some(&client.client.org_id),
            "access_token.revoke",
            Some(&owner),
            meta,
            serde_json::json!({ "jti": jti }),
        );
        self.rt
            .store
            .token_revoke(&jti, &owner, from_ms(exp_ms), self.rt.now(), &event)
            .await?;
        self.rt.oauth.note_revoked(jti.clone(), exp_ms);
        self.rt
            .store
            .publish(&Invalidation::Token(jti.clone(), exp_ms))
            .await?;
        Ok(RevokeOutcome::Revoked)
    }
}

fn client_principal(c: &OAuthClient) -> Principal {
    Principal {
        actor: Actor::Client {
            client_id: c.client_id.clone(),
        },
        org_id: Some(c.org_id.clone()),
        project_id: Some(c.project_id.clone()),
        permissions: crate::domain::perm::PermSet::EMPTY,
        scopes: c.scopes.clone(),
    }
}
