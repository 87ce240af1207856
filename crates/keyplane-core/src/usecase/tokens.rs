//! [`Keyplane`] use cases of the OAuth 2.0 endpoints: client authentication (throttled; by
//! secret or by `private_key_jwt` assertion), the client-credentials grant, introspection
//! (RFC 7662) and revocation (RFC 7009).

use crate::app::Keyplane;
use crate::domain::client_auth::{
    check_assertion, AssertionError, AssertionPolicy, AuthMethod, Claimed, JwksFetcher,
};
use crate::domain::clock::from_ms;
use crate::domain::dpop::{DpopError, DpopRequest};
use crate::domain::error::Result;
use crate::domain::federation::{
    check_federated, replay_scope, FederatedIdentity, FederationError,
};
use crate::domain::jose::{EcdsaForm, JoseError, JwkSet, Jws};
use crate::domain::model::OAuthClient;
use crate::domain::oauth::{
    ClientAssertion, ClientAuth, ClientCredentials, ExchangeBounds, ExchangeRequest, Introspection,
    IssuedToken, MintRequest, OAuthError, RevokeOutcome, ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE,
};
use crate::domain::perm::{Actor, Permission, Principal};
use crate::domain::request::{Refusal, RequestMeta};
use crate::domain::resource::parse_resource;
use crate::domain::secret::ct_eq;
use crate::domain::token::{Act, Delegation, FederatedRef, SubjectCredential};
use crate::runtime::oauth::CachedClient;
use crate::runtime::ratelimit::{LimitState, Limited};
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
                // Parsed once, read once: who the token claims to be from.
                let jws = Jws::parse(&a.assertion).ok();
                let claimed = jws.as_ref().map(Claimed::of).unwrap_or_default();
                // A platform token: neither its `iss` nor its `sub` is the client id (an
                // assertion with just one of them wrong is a broken `private_key_jwt` one).
                let federated = a.client_id.as_deref().is_some_and(|id| {
                    claimed.iss.as_deref().is_some_and(|iss| iss != id)
                        && claimed.client() != Some(id)
                });
                if federated {
                    let (c, who) = self.authenticate_federated(a, jws, claimed, meta).await?;
                    Ok((c, Some(who)))
                } else {
                    Ok((
                        self.authenticate_with_assertion(a, jws, &claimed, meta)
                            .await?,
                        None,
                    ))
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
        jws: Option<Jws>,
        claimed: Claimed,
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
        let Some(jws) = jws else {
            return fail(self, None, bare);
        };
        let Some(issuer) = claimed.iss else {
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
            .jti_use_once(
                replay_scope(&who.iss),
                who.replay_key.clone(),
                from_ms(who.keep_until_s.saturating_mul(1000)),
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
        jws: Option<Jws>,
        claimed: &Claimed,
        meta: &RequestMeta,
    ) -> Result<Arc<CachedClient>, OAuthError> {
        let rt = &self.rt;
        let now = rt.now_ms();
        let claimed = claimed.client();
        let client_id = a
            .client_id
            .clone()
            .or_else(|| claimed.map(str::to_string))
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
        if claimed != Some(client_id.as_str()) {
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
        // The issuer, or the endpoint's URL under it (canonical, or the path the client used).
        let endpoint = a.endpoint.path();
        let ours = |aud: &str| {
            aud.strip_prefix(issuer)
                .is_some_and(|rest| rest.is_empty() || rest == endpoint || rest == a.path)
        };
        let policy = AssertionPolicy {
            max_lifetime_seconds: s.client_assertion_max_lifetime_seconds,
            leeway_seconds: s.client_assertion_leeway_seconds,
        };
        let checked = match check_assertion(&jws, &client_id, &ours, now / 1000, policy) {
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
            .jti_use_once(
                client_id.to_string(),
                checked.jti.clone(),
                from_ms(checked.keep_until_s.saturating_mul(1000)),
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
    /// client's when none are requested), for the requested resources (RFC 8707) when any are
    /// named. Nothing is written to storage (but a federated issuance's event).
    pub async fn issue_token(
        &self,
        auth: &ClientCredentials,
        scope: Option<&str>,
        resources: &[String],
        meta: &RequestMeta,
        dpop: Option<&DpopRequest<'_>>,
    ) -> Result<IssuedToken, OAuthError> {
        let (client, federated) = self.authenticate_client_as(auth, meta).await?;
        let jkt = self.dpop_key(&client, dpop).await?;
        let targets = self.targets(resources).await?;
        let Some(who) = federated else {
            let req = MintRequest {
                scope,
                targets,
                jkt,
                ..Default::default()
            };
            return self.rt.mint(&client, req);
        };
        // A federated issuance is its own event (not the per-minute aggregate), naming the
        // external identity, which the token carries too; only a valid, never-used platform
        // token gets this far.
        let req = MintRequest {
            scope,
            targets,
            jkt,
            federated: Some(FederatedRef {
                iss: who.iss.clone(),
                sub: who.sub.clone(),
            }),
            exchange: None,
        };
        let issued = self.rt.mint_quietly(&client, req)?;
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

    /// A DPoP proof on a token request, checked only for an authenticated client (so nobody
    /// else can fill the replay cache): the thumbprint the token is bound to (RFC 9449 §5).
    async fn dpop_key(
        &self,
        client: &CachedClient,
        dpop: Option<&DpopRequest<'_>>,
    ) -> Result<Option<String>, OAuthError> {
        let Some(d) = dpop else {
            // RFC 9449 §5.2: a client registered with `dpop_bound_access_tokens` is refused
            // every token request without a proof (`invalid_dpop_proof`, §5: the proof this
            // request needed is not valid because it is absent). Checked only once the client
            // has authenticated, so nobody else learns which clients require DPoP.
            if client.client.dpop_bound_access_tokens {
                return Err(OAuthError::InvalidDpopProof(
                    "this client must use DPoP (its `dpop_bound_access_tokens` is true): send a `DPoP` header with a proof for this request".into(),
                ));
            }
            return Ok(None);
        };
        match self
            .rt
            .check_dpop_proof(&d.proofs, d.htm, d.htus.clone(), None)
            .await
        {
            Ok(p) => Ok(Some(p.jkt)),
            Err(DpopError::UseNonce) => Err(OAuthError::UseDpopNonce(
                self.rt.dpop_nonce().unwrap_or_default(),
            )),
            Err(e) => Err(OAuthError::InvalidDpopProof(e.description())),
        }
    }

    /// RFC 8707: each `resource` must be a registered service's resource URI; with its scopes.
    async fn targets(
        &self,
        resources: &[String],
    ) -> Result<Vec<(String, Vec<String>)>, OAuthError> {
        if resources.is_empty() {
            return Ok(vec![]);
        }
        if resources.len() > 16 {
            return Err(OAuthError::InvalidTarget(
                "at most 16 resources may be requested at once".into(),
            ));
        }
        let index = self.rt.services().await?;
        let mut out = Vec::with_capacity(resources.len());
        for r in resources {
            let uri = parse_resource(r).map_err(|e| {
                OAuthError::InvalidTarget(format!("`resource` is not a valid resource URI: {e}"))
            })?;
            let Some(scopes) = index.scopes_of_resource(&uri) else {
                return Err(OAuthError::InvalidTarget(format!(
                    "no service is registered for the resource `{uri}`"
                )));
            };
            out.push((uri, scopes.to_vec()));
        }
        Ok(out)
    }

    /// Token exchange (RFC 8693) for delegation: the authenticated client (the actor) trades a
    /// credential keyplane issued (the subject: an access token or an API key) for a short-lived
    /// token that acts for the subject, with the actor in `act`. Only when the subject's
    /// credential names the actor in its `may_act`, in the same organization; the token never
    /// holds a scope or audience the subject (or the actor) lacks, never outlives the subject
    /// credential, and dies with it.
    pub async fn exchange_token(
        &self,
        auth: &ClientCredentials,
        x: &ExchangeRequest<'_>,
        meta: &RequestMeta,
        dpop: Option<&DpopRequest<'_>>,
    ) -> Result<IssuedToken, OAuthError> {
        let (client, _) = self.authenticate_client_as(auth, meta).await?;
        let invalid = |d: &str| Err(OAuthError::InvalidRequest(d.into()));
        let (Some(subject_token), Some(subject_type)) = (x.subject_token, x.subject_token_type)
        else {
            return invalid("`subject_token` and `subject_token_type` are required");
        };
        if subject_type != ACCESS_TOKEN_TYPE && subject_type != JWT_TOKEN_TYPE {
            return invalid(&format!(
                "`subject_token_type` must be `{ACCESS_TOKEN_TYPE}` (an access token or an API key of this server) or `{JWT_TOKEN_TYPE}`"
            ));
        }
        if x.requested_token_type
            .is_some_and(|t| t != ACCESS_TOKEN_TYPE)
        {
            return invalid(&format!("only `{ACCESS_TOKEN_TYPE}` can be requested"));
        }
        match (x.actor_token, x.actor_token_type) {
            (None, None) => {}
            (Some(t), Some(kind)) if kind == ACCESS_TOKEN_TYPE || kind == JWT_TOKEN_TYPE => {
                // The actor token proves the actor too: a live token of the authenticated client.
                let ok = self.rt.verify_access_token(t).await.is_some_and(|(c, i)| {
                    c.is_some_and(|c| c.client.client_id == client.client.client_id)
                        && i.act.is_none()
                });
                if !ok {
                    return invalid(
                        "`actor_token` is not a live access token of the authenticated client",
                    );
                }
            }
            (Some(_), Some(_)) => {
                return invalid(&format!("`actor_token_type` must be `{ACCESS_TOKEN_TYPE}`"))
            }
            _ => return invalid("`actor_token` and `actor_token_type` are sent together"),
        }
        let jkt = self.dpop_key(&client, dpop).await?;
        let subject = self.exchange_subject(subject_token, subject_type).await;
        let Some(subject) = subject else {
            return invalid("`subject_token` is not a live credential of this server");
        };
        let actor = &client.client;
        // Not in the actor's organization, or not naming it in `may_act`: the same answer, so
        // an actor learns nothing about credentials it may not use.
        if subject.org_id != actor.org_id || !subject.may_act.contains(&actor.client_id) {
            return invalid(
                "the subject credential does not allow this client to act for it (`may_act`)",
            );
        }
        // A DPoP-bound subject token is exchanged only by the holder of its key, and the new
        // token is bound to the same key.
        if let Some(bound) = &subject.jkt {
            if jkt.as_deref() != Some(bound.as_str()) {
                return Err(OAuthError::InvalidDpopProof(
                    "the subject token is DPoP-bound: the exchange needs a DPoP proof signed with its key".into(),
                ));
            }
        }
        let targets = self.targets(&x.resources).await?;
        let act = Act {
            sub: actor.client_id.clone(),
            act: subject.act.map(Box::new),
        };
        let details_act = serde_json::to_value(&act).unwrap_or_default();
        let req = MintRequest {
            scope: x.scope,
            targets,
            jkt,
            federated: None,
            exchange: Some(ExchangeBounds {
                delegation: Delegation {
                    sub: subject.sub.clone(),
                    act,
                    subject_credentials: subject.credentials,
                },
                scopes: subject.scopes,
                audience: subject.audience,
                expires_at_ms: subject.expires_at_ms,
            }),
        };
        let mut issued = self.rt.mint_quietly(&client, req)?;
        issued.issued_token_type = Some(ACCESS_TOKEN_TYPE);
        let event = self.rt.event(
            &client_principal(actor),
            Some(&actor.org_id),
            "access_token.exchange",
            Some(&actor.client_id),
            meta,
            serde_json::json!({
                "subject": subject.sub,
                "subject_credential": subject.credential_label,
                "actor": actor.client_id,
                "act": details_act,
                "scope": issued.scope,
                "expires_in": issued.expires_in,
            }),
        );
        self.rt.store.activity_append(&[event]).await?;
        Ok(issued)
    }

    /// The subject of a token exchange: a live access token or API key of ours, with who may
    /// act for it.
    async fn exchange_subject(&self, token: &str, kind: &str) -> Option<ExchangeSubject> {
        let rt = &self.rt;
        if rt.settings.api_key_format.claims(token) {
            if kind != ACCESS_TOKEN_TYPE {
                return None;
            }
            let key = rt.resolve_key_raw(token).await.ok().flatten()?;
            rt.evaluate(&key).ok()?;
            let stored = rt.store.api_key_get(&key.key_id).await.ok().flatten()?;
            return Some(ExchangeSubject {
                sub: key
                    .owner_member_id
                    .as_deref()
                    .unwrap_or(&key.key_id)
                    .to_string(),
                org_id: key.org_id().to_string(),
                scopes: key.scopes().to_vec(),
                audience: vec![],
                expires_at_ms: key.expires_at_ms,
                may_act: stored.may_act,
                jkt: None,
                act: None,
                credential_label: key.key_id.to_string(),
                credentials: vec![SubjectCredential::ApiKey {
                    id: key.key_id.to_string(),
                }],
            });
        }
        if kind == JWT_TOKEN_TYPE && !crate::domain::token::looks_like_jwt(token) {
            return None;
        }
        // A person's token from the authorization-code grant is not exchanged (yet).
        let (Some(client), info) = rt.verify_access_token(token).await? else {
            return None;
        };
        let info = Arc::unwrap_or_clone(info);
        let this = SubjectCredential::AccessToken {
            jti: info.jti.clone(),
            client_id: client.client.client_id.clone(),
            iat: info.iat,
        };
        // An exchanged token exchanged again: the policy is the original credential's, and the
        // new token depends on every credential of the chain.
        let (may_act, credentials) = match info.subject_credentials.first() {
            None => (client.client.may_act.clone(), vec![this]),
            Some(original) => {
                let may_act = match original {
                    SubjectCredential::ApiKey { id } => {
                        rt.store.api_key_get(id).await.ok().flatten()?.may_act
                    }
                    SubjectCredential::AccessToken { client_id, .. } => rt
                        .cached_client(client_id)
                        .await
                        .ok()
                        .flatten()?
                        .client
                        .may_act
                        .clone(),
                };
                let mut all = info.subject_credentials.clone();
                all.push(this);
                (may_act, all)
            }
        };
        // The issuer as audience means "any service its scopes allow": no restriction.
        let issuer = &rt.settings.oauth.issuer;
        let audience = if info.aud.iter().any(|a| a == issuer) {
            vec![]
        } else {
            info.aud.clone()
        };
        Some(ExchangeSubject {
            sub: info.sub,
            org_id: info.org_id,
            scopes: info
                .scope
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            audience,
            expires_at_ms: info.exp.map(|e| e * 1000),
            may_act,
            jkt: info.jkt,
            act: info.act,
            credential_label: info.jti,
            credentials,
        })
    }

    /// RFC 7662. The caller is a client or a principal allowed to introspect; the answer is
    /// `None` (inactive) for anything not live, or outside the caller's organization.
    /// RFC 7662 introspection of an access token or API key, for a caller limited to
    /// `caller_org` (`None`: any). The introspected credential is counted for usage and against
    /// its rate limits: over a limit it answers inactive, with the limit's state.
    pub async fn introspect(
        &self,
        caller_org: Option<&str>,
        token: &str,
    ) -> (Option<Arc<Introspection>>, Option<LimitState>) {
        use crate::domain::usage::Outcome as Counted;
        let rt = &self.rt;
        let (info, limits, outcome) = if rt.settings.api_key_format.claims(token) {
            match rt.resolve_key_raw(token).await {
                Ok(Some(key)) => match rt.evaluate(&key) {
                    Ok(()) => (
                        rt.introspect_api_key(token).await.map(Arc::new),
                        Some(Arc::clone(&key.limits)),
                        Counted::Allowed,
                    ),
                    Err(r) => {
                        let outcome = if r == Refusal::Expired {
                            Counted::Expired
                        } else {
                            Counted::Revoked
                        };
                        self.count_introspection(
                            outcome,
                            (key.org_id(), key.project_id(), &key.key_id),
                            caller_org,
                        );
                        return (None, None);
                    }
                },
                Ok(None) => (None, None, Counted::Unknown),
                Err(_) => (None, None, Counted::Malformed),
            }
        } else {
            match rt.verify_access_token(token).await {
                Some((client, info)) => {
                    let limits = client.map(|c| {
                        Arc::clone(c.limits.get_or_init(|| {
                            rt.limiter.prepare(
                                &c.client.rate_limits,
                                &c.client.client_id,
                                c.client.owner_member_id.as_deref(),
                                &c.client.project_id,
                            )
                        }))
                    });
                    (Some(info), limits, Counted::Allowed)
                }
                None => (None, None, Counted::Unknown),
            }
        };
        let Some(info) = info.filter(|i| caller_org.is_none_or(|o| o == i.org_id)) else {
            self.count_introspection(Counted::Unknown, ("", "", ""), None);
            return (None, None);
        };
        let cred = info.client_id.as_deref().unwrap_or(&info.jti);
        let who = (info.org_id.as_str(), info.project_id.as_str(), cred);
        if let Some(limits) = limits.filter(|l| !l.is_empty()) {
            if let Limited::Over(state) = rt.limiter.check(&limits, rt.now_ms(), None) {
                self.count_introspection(Counted::RateLimited, who, caller_org);
                return (None, Some(state));
            }
        }
        self.count_introspection(outcome, who, caller_org);
        (Some(info), None)
    }

    /// Counts one introspection (usage analytics) under the introspected credential, or
    /// unattributed when the caller could not see it.
    fn count_introspection(
        &self,
        outcome: crate::domain::usage::Outcome,
        (org, project, credential): (&str, &str, &str),
        caller_org: Option<&str>,
    ) {
        let visible = caller_org.is_none_or(|o| o == org);
        let (org, project, credential) = if visible {
            (org, project, credential)
        } else {
            ("", "", "")
        };
        self.rt.usage.add(
            crate::runtime::usage::UsageKey {
                minute: self.rt.now_ms().div_euclid(60_000),
                org_id: org,
                project_id: project,
                credential_id: credential,
                service: "",
                outcome,
            },
            1,
        );
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

/// A token exchange's subject, resolved.
struct ExchangeSubject {
    sub: String,
    org_id: String,
    scopes: Vec<String>,
    audience: Vec<String>,
    expires_at_ms: Option<i64>,
    may_act: Vec<String>,
    jkt: Option<String>,
    act: Option<Act>,
    /// The key id or the token's `jti`, for the activity log.
    credential_label: String,
    credentials: Vec<SubjectCredential>,
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
