//! [`Keyplane`] use cases of the OAuth 2.0 endpoints: client authentication (throttled; by
//! secret or by `private_key_jwt` assertion), the client-credentials grant, introspection
//! (RFC 7662) and revocation (RFC 7009).

use crate::app::Keyplane;
use crate::domain::client_auth::{
    check_assertion, claimed_client, AssertionError, AssertionPolicy, AuthMethod, JwksFetcher,
};
use crate::domain::clock::from_ms;
use crate::domain::dpop::{DpopError, DpopRequest};
use crate::domain::error::Result;
use crate::domain::federation::{
    check_federated, claimed_issuer, replay_scope, FederatedIdentity, FederationError,
};
use crate::domain::jose::{EcdsaForm, JoseError, JwkSet, Jws};
use crate::domain::model::OAuthClient;
use crate::domain::oauth::{
    ClientAssertion, ClientAuth, ClientCredentials, Introspection, IssuedToken, OAuthError,
    RevokeOutcome,
};
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
        // The id is the caller's (a form field, or an unverified assertion's `sub`): only its
        // first 128 characters make the key, so a flood of long ids keeps the table small.
        let client_id = client_id
            .char_indices()
            .nth(128)
            .map_or(client_id, |(i, _)| &client_id[..i]);
        let s = &self.rt.settings.oauth;
        [
            (
                format!("client|{client_id}|{ip}"),
                s.failures_per_client_and_address,
            ),
            (format!("client|{ip}"), s.failures_per_address),
        ]
    }

    /// Authenticates a client by whichever method it presented, throttled per client id and
    /// address, never by client id alone, so a caller with the right credential elsewhere is
    /// never locked out.
    pub async fn authenticate_client(
        &self,
        creds: &ClientCredentials,
        meta: &RequestMeta,
    ) -> Result<Arc<CachedClient>, OAuthError> {
        Ok(self.authenticate_client_as(creds, meta).await?.0)
    }

    /// [`Self::authenticate_client`], with the external identity when the client proved itself
    /// with a federated (platform) token.
    pub async fn authenticate_client_as(
        &self,
        creds: &ClientCredentials,
        meta: &RequestMeta,
    ) -> Result<(Arc<CachedClient>, Option<FederatedIdentity>), OAuthError> {
        match creds {
            ClientCredentials::Secret(auth) => {
                Ok((self.authenticate_with_secret(auth, meta).await?, None))
            }
            ClientCredentials::Assertion(a) => {
                // A platform token: neither its `iss` nor its `sub` is the client id (an
                // assertion with just one of them wrong is a broken `private_key_jwt` one).
                let federated = a.client_id.as_deref().is_some_and(|id| {
                    Jws::parse(&a.assertion).ok().is_some_and(|j| {
                        claimed_issuer(&j).is_some_and(|iss| iss != id)
                            && claimed_client(&j).as_deref() != Some(id)
                    })
                });
                if federated {
                    let (c, who) = self.authenticate_federated(a, meta).await?;
                    Ok((c, Some(who)))
                } else {
                    Ok((self.authenticate_with_assertion(a, meta).await?, None))
                }
            }
        }
    }

    /// Workload identity federation: `client_id` in the form, and as the assertion a token from
    /// an external issuer the client trusts, signed with one of the issuer's keys (discovery →
    /// `jwks_uri`), whose `sub` and `aud` one of the client's federated credentials accepts,
    /// live, not too long-lived, and never used before on any node. Like `private_key_jwt`,
    /// failures before the signature verifies are bare.
    async fn authenticate_federated(
        &self,
        a: &ClientAssertion,
        meta: &RequestMeta,
    ) -> Result<(Arc<CachedClient>, FederatedIdentity), OAuthError> {
        let rt = &self.rt;
        let now = rt.now_ms();
        let client_id = a.client_id.clone().unwrap_or_default();
        if let Some(retry) = self.client_throttled(&client_id, meta, now) {
            return Err(OAuthError::TooManyRequests(retry));
        }
        let fail = |this: &Self, known: Option<&CachedClient>, e: OAuthError| {
            this.client_failed(&client_id, known, meta, now);
            Err(e)
        };
        let bare = OAuthError::InvalidClient { basic: false };
        let Some(jws) = Jws::parse(&a.assertion).ok() else {
            return fail(self, None, bare);
        };
        let Some(issuer) = claimed_issuer(&jws) else {
            return fail(self, None, bare);
        };
        let Some(client) = rt
            .cached_client(&client_id)
            .await?
            .filter(|c| c.is_enabled() && c.client.auth_method == AuthMethod::PrivateKeyJwt)
        else {
            return fail(self, None, bare);
        };
        let creds: Vec<_> = client
            .client
            .federated_credentials
            .iter()
            .filter(|f| f.issuer == issuer)
            .collect();
        if creds.is_empty() {
            return fail(self, Some(&client), bare);
        }
        let verify = |set: &Option<Arc<JwkSet>>| match set {
            Some(set) => jws.verify_with_set(set, EcdsaForm::Any).map(|_| ()),
            None => Err(JoseError::UnknownKey),
        };
        let mut verified = verify(&rt.issuer_key_set(&issuer, false).await);
        let may_be_new = match &verified {
            Err(JoseError::UnknownKey) => true,
            Err(JoseError::BadSignature) => jws.header().kid.is_none(),
            _ => false,
        };
        if may_be_new {
            verified = verify(&rt.issuer_key_set(&issuer, true).await);
        }
        if verified.is_err() {
            return fail(self, Some(&client), bare);
        }
        let s = &rt.settings.oauth;
        let policy = AssertionPolicy {
            max_lifetime_seconds: s.federated_token_max_lifetime_seconds,
            leeway_seconds: s.client_assertion_leeway_seconds,
        };
        let who = match check_federated(&jws, &a.assertion, &creds, now / 1000, policy) {
            Ok(w) => w,
            Err(e) => {
                return fail(
                    self,
                    Some(&client),
                    OAuthError::InvalidClientAssertion(e.description()),
                )
            }
        };
        let fresh = rt
            .store
            .client_assertion_jti_use(
                &replay_scope(&who.iss),
                &who.replay_key,
                from_ms(who.keep_until_s.saturating_mul(1000)),
                rt.now(),
            )
            .await?;
        if !fresh {
            return fail(
                self,
                Some(&client),
                OAuthError::InvalidClientAssertion(FederationError::Replayed.description()),
            );
        }
        Ok((client, who))
    }

    /// `Some(seconds to wait)` when `client_id` from this address failed too often lately.
    fn client_throttled(&self, client_id: &str, meta: &RequestMeta, now: i64) -> Option<u64> {
        let failures = &self.rt.oauth.failures;
        if failures.quiet(now) {
            return None;
        }
        failures.blocked(&self.client_throttle_keys(client_id, meta), now)
    }

    /// Counts a failed client authentication and queues its aggregated refusal event.
    fn client_failed(
        &self,
        client_id: &str,
        known: Option<&CachedClient>,
        meta: &RequestMeta,
        now: i64,
    ) {
        let keys = self.client_throttle_keys(client_id, meta);
        self.rt.oauth.failures.failed(&keys, now);
        self.note_client_refusal(known, meta);
    }

    /// `client_secret_basic` / `client_secret_post`: the client's id and one of its live secrets.
    async fn authenticate_with_secret(
        &self,
        auth: &ClientAuth,
        meta: &RequestMeta,
    ) -> Result<Arc<CachedClient>, OAuthError> {
        let rt = &self.rt;
        let now = rt.now_ms();
        if let Some(retry) = self.client_throttled(&auth.client_id, meta, now) {
            return Err(OAuthError::TooManyRequests(retry));
        }
        let fail = |this: &Self, known: Option<&CachedClient>| {
            this.client_failed(&auth.client_id, known, meta, now);
            Err(OAuthError::InvalidClient { basic: auth.basic })
        };
        // A private_key_jwt client has no secret (and none is accepted for it).
        let Some(client) = rt
            .cached_client(&auth.client_id)
            .await?
            .filter(|c| c.is_enabled() && c.client.auth_method.uses_secret())
        else {
            return fail(self, None);
        };
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

    /// `private_key_jwt` (RFC 7523 §2.2, OpenID Connect Core §9): a JWT the client signed with
    /// one of its registered keys. Until the signature verifies, every failure is the same bare
    /// `invalid_client`; after it, the description says which rule the assertion broke (only
    /// the key's holder can read that). The `jti` is recorded in storage last, so only a fully
    /// valid assertion uses it up, and a replay is refused on every node.
    async fn authenticate_with_assertion(
        &self,
        a: &ClientAssertion,
        meta: &RequestMeta,
    ) -> Result<Arc<CachedClient>, OAuthError> {
        let rt = &self.rt;
        let now = rt.now_ms();
        let jws = Jws::parse(&a.assertion).ok();
        let claimed = jws.as_ref().and_then(claimed_client);
        let client_id = a
            .client_id
            .clone()
            .or_else(|| claimed.clone())
            .unwrap_or_default();
        if let Some(retry) = self.client_throttled(&client_id, meta, now) {
            return Err(OAuthError::TooManyRequests(retry));
        }
        let fail = |this: &Self, known: Option<&CachedClient>, e: OAuthError| {
            this.client_failed(&client_id, known, meta, now);
            Err(e)
        };
        let bare = OAuthError::InvalidClient { basic: false };
        let Some(jws) = jws else {
            return fail(self, None, bare);
        };
        // A `client_id` in the form must name the client the assertion is from.
        if claimed.as_deref() != Some(client_id.as_str()) {
            return fail(self, None, bare);
        }
        let Some(client) = rt
            .cached_client(&client_id)
            .await?
            .filter(|c| c.is_enabled() && c.client.auth_method == AuthMethod::PrivateKeyJwt)
        else {
            return fail(self, None, bare);
        };
        let verify = |set: &Option<Arc<JwkSet>>| match set {
            Some(set) => jws.verify_with_set(set, EcdsaForm::Any).map(|_| ()),
            None => Err(JoseError::UnknownKey),
        };
        let mut verified = verify(&rt.client_key_set(&client, false).await);
        // A key the cached set does not have (or, without a `kid`, no key that verifies): the
        // client may have rotated its keys at its `jwks_uri`.
        let may_be_new = match &verified {
            Err(JoseError::UnknownKey) => true,
            Err(JoseError::BadSignature) => jws.header().kid.is_none(),
            _ => false,
        };
        if may_be_new && client.client.jwks_uri.is_some() {
            verified = verify(&rt.client_key_set(&client, true).await);
        }
        if verified.is_err() {
            return fail(self, Some(&client), bare);
        }
        let s = &rt.settings.oauth;
        let issuer = s.issuer.as_str();
        let audiences = [
            issuer.to_string(),
            format!("{issuer}{}", a.endpoint.path()),
            format!("{issuer}{}", a.path),
        ];
        let policy = AssertionPolicy {
            max_lifetime_seconds: s.client_assertion_max_lifetime_seconds,
            leeway_seconds: s.client_assertion_leeway_seconds,
        };
        let checked = match check_assertion(&jws, &client_id, &audiences, now / 1000, policy) {
            Ok(c) => c,
            Err(e) => {
                return fail(
                    self,
                    Some(&client),
                    OAuthError::InvalidClientAssertion(e.description()),
                )
            }
        };
        let fresh = rt
            .store
            .client_assertion_jti_use(
                &client_id,
                &checked.jti,
                from_ms(checked.keep_until_s.saturating_mul(1000)),
                rt.now(),
            )
            .await?;
        if !fresh {
            return fail(
                self,
                Some(&client),
                OAuthError::InvalidClientAssertion(AssertionError::Replayed.description()),
            );
        }
        Ok(client)
    }

    /// Installs what fetches clients' `jwks_uri` documents (the binary's HTTP client).
    pub fn set_jwks_fetcher(&self, fetcher: Arc<dyn JwksFetcher>) {
        *self
            .rt
            .oauth
            .jwks_fetcher
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(fetcher);
    }

    /// Forgets client assertions' `jti`s whose assertions have expired; returns how many.
    pub async fn purge_client_assertions(&self) -> Result<u64> {
        self.rt
            .store
            .client_assertion_jtis_purge(self.rt.now())
            .await
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
        auth: &ClientCredentials,
        scope: Option<&str>,
        meta: &RequestMeta,
        dpop: Option<&DpopRequest<'_>>,
    ) -> Result<IssuedToken, OAuthError> {
        let (client, federated) = self.authenticate_client_as(auth, meta).await?;
        // The proof is checked only for an authenticated client, so nobody else can fill the
        // replay cache; with one, the token is bound to the proof's key (RFC 9449 §5).
        let jkt = match dpop {
            // RFC 9449 §5.2: a client registered with `dpop_bound_access_tokens` is refused
            // every token request without a proof (`invalid_dpop_proof`, §5: the proof this
            // request needed is not valid because it is absent). Checked only once the client
            // has authenticated, so nobody else learns which clients require DPoP.
            None if client.client.dpop_bound_access_tokens => {
                return Err(OAuthError::InvalidDpopProof(
                    "this client must use DPoP (its `dpop_bound_access_tokens` is true): send a `DPoP` header with a proof for this request".into(),
                ))
            }
            None => None,
            Some(d) => match self
                .rt
                .check_dpop_proof(&d.proofs, d.htm, d.htus.clone(), None)
                .await
            {
                Ok(p) => Some(p.jkt),
                Err(DpopError::UseNonce) => {
                    return Err(OAuthError::UseDpopNonce(
                        self.rt.dpop_nonce().unwrap_or_default(),
                    ))
                }
                Err(e) => return Err(OAuthError::InvalidDpopProof(e.description())),
            },
        };
        let Some(who) = federated else {
            return self.rt.mint(&client, scope, jkt);
        };
        // A federated issuance is its own event (not the per-minute aggregate), naming the
        // external identity; only a valid, never-used platform token gets this far.
        let issued = self.rt.mint_quietly(&client, scope, jkt)?;
        let c = &client.client;
        let event = self.rt.event(
            &client_principal(c),
            Some(&c.org_id),
            "access_token.issue",
            Some(&c.client_id),
            meta,
            serde_json::json!({
                "scope": issued.scope,
                "via": "federation",
                "federated": { "iss": who.iss, "sub": who.sub },
            }),
        );
        self.rt.store.activity_append(&[event]).await?;
        Ok(issued)
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
        auth: &ClientCredentials,
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
