//! Resolving presented credentials, the same way for every route that takes one: API keys
//! through the cache (checksum first, so malformed keys never reach storage), OAuth clients
//! through the client cache, access tokens (sealed or signed) with no storage read, and the
//! aggregated record of refusals.

use super::cache::{Cached, CachedKey, KeyCache};
use super::oauth::CachedClient;
use super::Runtime;
use crate::domain::clock::to_ms;
use crate::domain::error::Result;
use crate::domain::model::{OAuthClient, TokenFormat};
use crate::domain::oauth::{Introspection, IssuedToken, MintRequest, OAuthError, TokenIdentity};
use crate::domain::perm::PermSet;
use crate::domain::request::{Refusal, RequestMeta};
use crate::domain::resource::{grant, TargetError};
use crate::domain::secret::{random_id_text, Digest, FormatError};
use crate::domain::token::{
    Audience, Confirmation, Delegation, FederatedRef, GrantRef, JwtClaims, Keyring, OpaqueClaims,
};
use crate::store::KeyLookup;
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Who a checked credential is: an API key or an access token.
#[derive(Debug, Clone)]
pub enum Identity {
    Key(Arc<CachedKey>),
    Token(Arc<TokenIdentity>),
}

impl Identity {
    /// The member who owns it, or else the key id or the client id (for an exchanged token:
    /// the subject it acts for).
    pub fn subject(&self) -> &str {
        match self {
            Identity::Key(k) => k.owner_member_id.as_deref().unwrap_or(&k.key_id),
            Identity::Token(t) => &t.sub,
        }
    }
    /// Who acts for the subject (an exchanged token's `act.sub`).
    pub fn actor(&self) -> Option<&str> {
        match self {
            Identity::Key(_) => None,
            Identity::Token(t) => t.act.as_ref().map(|a| a.sub.as_str()),
        }
    }
    pub fn scopes(&self) -> &[String] {
        match self {
            Identity::Key(k) => k.scopes(),
            Identity::Token(t) => &t.scopes,
        }
    }
    pub fn scopes_joined(&self) -> &str {
        match self {
            Identity::Key(k) => k.scopes_joined(),
            Identity::Token(t) => &t.scopes_joined,
        }
    }
    pub fn org_id(&self) -> &str {
        match self {
            Identity::Key(k) => k.org_id(),
            Identity::Token(t) => &t.org_id,
        }
    }
    pub fn project_id(&self) -> &str {
        match self {
            Identity::Key(k) => k.project_id(),
            Identity::Token(t) => &t.project_id,
        }
    }
    /// What usage and rate limits count it under: the key id, or the access token's client.
    pub fn usage_id(&self) -> &str {
        match self {
            Identity::Key(k) => &k.key_id,
            Identity::Token(t) => &t.client_id,
        }
    }
    /// The key id, or the access token's `jti`.
    pub fn credential_id(&self) -> &str {
        match self {
            Identity::Key(k) => &k.key_id,
            Identity::Token(t) => &t.jti,
        }
    }
}

/// The answer of a credential check for a platform API (`/v1/authz`).
#[derive(Debug, Clone)]
pub enum Verdict {
    Allow(Identity),
    Refuse(Refusal),
    InsufficientScope(Identity),
    /// The credential is good but no route rule allows the request.
    NoRule(Identity),
    /// DPoP (RFC 9449 §7): a bound token without a valid proof, or the `DPoP` scheme misused.
    Dpop(crate::domain::dpop::DpopRefusal),
    /// The credential is good but over one of its rate limits (429).
    RateLimited(Identity, super::ratelimit::LimitState),
}

impl Runtime {
    /// Resolves an API key to its cached form, reading storage at most once per digest.
    pub async fn resolve_key_raw(&self, token: &str) -> Result<Option<Arc<CachedKey>>, Refusal> {
        if let Err(e) = self.settings.api_key_format.check(token) {
            let _: FormatError = e;
            return Err(Refusal::Malformed);
        }
        let digest = self.pepper.digest(token);
        // Past the bound on serving from cache without the change feed, every check reads storage.
        let trusted = self.feed_status().cache_trusted();
        if trusted {
            match self.cache.get(&digest) {
                Cached::Key(k) => return Ok(Some(k)),
                Cached::Unknown => return Ok(None),
                Cached::Miss => {}
            }
        }
        let epoch = self.cache.epoch();
        let mut found = self.store.api_key_lookup(&digest).await.map_err(|e| {
            tracing::error!(error = %e, "storage failed while checking a credential");
            Refusal::Unknown
        })?;
        if found.is_none() {
            if let Some(prev) = self.pepper.previous_digest(token) {
                found = self.store.api_key_lookup(&prev).await.ok().flatten();
            }
        }
        let entry =
            found.map(|l| Arc::new(cached_from_lookup(&self.cache, &self.limiter, digest, l)));
        if trusted {
            self.cache.fill(digest, entry.clone(), epoch);
        }
        Ok(entry)
    }

    /// Reads every active API key into the cache, a page at a time; returns how many were
    /// filed. Pages that raced with an invalidation are dropped like any stale fill (those keys
    /// are then read on first use), and nothing is filled while the cache is not trusted.
    pub async fn preload_cache(&self) -> Result<usize> {
        const PAGE: i64 = 2000;
        let version = self.pepper.version();
        let mut after: Option<Digest> = None;
        let mut filed = 0;
        loop {
            if !self.feed_status().cache_trusted() {
                return Ok(filed);
            }
            let epoch = self.cache.epoch();
            let page = self
                .store
                .api_key_lookups_after(after.as_ref(), PAGE)
                .await?;
            let Some(last) = page.last() else {
                return Ok(filed);
            };
            after = Some(last.secret.digest);
            let full = page.len() as i64 == PAGE;
            for l in page {
                // Secrets under an earlier pepper are found by their other digest on first use.
                if l.secret.pepper_version != version {
                    continue;
                }
                let digest = l.secret.digest;
                let entry = Arc::new(cached_from_lookup(&self.cache, &self.limiter, digest, l));
                if self.cache.fill(digest, Some(entry), epoch) {
                    filed += 1;
                }
            }
            if !full {
                return Ok(filed);
            }
        }
    }

    pub fn evaluate(&self, k: &CachedKey) -> Result<(), Refusal> {
        if !k.is_active {
            return Err(Refusal::Revoked);
        }
        if k.expires_at_ms.is_some_and(|e| e <= self.now_ms()) {
            return Err(Refusal::Expired);
        }
        Ok(())
    }

    pub fn refuse(&self, reason: Refusal, key: Option<&CachedKey>, meta: &RequestMeta) -> Verdict {
        self.note_refusal(reason, key, meta);
        Verdict::Refuse(reason)
    }

    /// Queues an aggregated `credential.refused` event; never the secret, only its kind or id.
    pub fn note_refusal(&self, reason: Refusal, key: Option<&CachedKey>, meta: &RequestMeta) {
        self.queue_refusal_in(
            reason.as_str(),
            key.map(|k| k.key_id.to_string()),
            key.map(|k| k.org_id().to_string()),
            meta,
        );
    }

    /// Queues an aggregated `credential.refused` event. `target` must name a credential that
    /// exists (never text the caller chose), so callers cannot multiply aggregates with it.
    pub fn queue_refusal(&self, reason: &'static str, target: Option<String>, meta: &RequestMeta) {
        self.queue_refusal_in(reason, target, None, meta);
    }

    pub fn queue_refusal_in(
        &self,
        reason: &'static str,
        target: Option<String>,
        org_id: Option<String>,
        meta: &RequestMeta,
    ) {
        self.note_denied("credential.refused", reason, target, org_id, meta);
    }

    /// Queues an aggregated denial under `action` (e.g. a failed console sign-in): written at
    /// the next flush, bounded per flush like every refusal.
    pub fn note_denied(
        &self,
        action: &'static str,
        reason: &'static str,
        target: Option<String>,
        org_id: Option<String>,
        meta: &RequestMeta,
    ) {
        self.refusals.note(
            super::refusals::Refused {
                action,
                reason,
                target,
                org_id,
                meta,
            },
            self.now(),
        );
    }

    pub async fn cached_client(&self, client_id: &str) -> Result<Option<Arc<CachedClient>>> {
        let o = &self.oauth;
        // Past the bound on serving from cache without the change feed, read storage each time.
        if !self.feed_status().cache_trusted() {
            if !self.settings.oauth.client_id_format.claims(client_id) || client_id.len() > 128 {
                return Ok(None);
            }
            let found = self.store.client_get(client_id).await?;
            return Ok(found.map(|(c, s)| Arc::new(CachedClient::new(c, s))));
        }
        if let Some(c) = o
            .clients
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(client_id)
        {
            return Ok(Some(Arc::clone(c)));
        }
        if o.unknown_clients
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(client_id)
        {
            return Ok(None);
        }
        if !self.settings.oauth.client_id_format.claims(client_id) || client_id.len() > 128 {
            return Ok(None);
        }
        let epoch = o.epoch.load(Ordering::Acquire);
        let found = self.store.client_get(client_id).await?;
        let entry = found.map(|(c, s)| Arc::new(CachedClient::new(c, s)));
        match &entry {
            Some(c) => {
                let mut clients = o.clients.write().unwrap_or_else(|e| e.into_inner());
                // Checked under the lock an invalidation takes too, so a fill that raced one
                // is dropped rather than caching what was just changed.
                if o.epoch.load(Ordering::Acquire) == epoch {
                    c.cached.store(true, Ordering::Release);
                    clients.insert(client_id.to_string(), Arc::clone(c));
                }
            }
            None => {
                let mut u = o.unknown_clients.write().unwrap_or_else(|e| e.into_inner());
                if o.epoch.load(Ordering::Acquire) == epoch {
                    if u.len() > 65_536 {
                        u.clear();
                    }
                    u.insert(client_id.to_string());
                }
            }
        }
        Ok(entry)
    }

    pub fn mint(
        &self,
        client: &CachedClient,
        req: MintRequest<'_>,
    ) -> Result<IssuedToken, OAuthError> {
        let issued = self.mint_quietly(client, req)?;
        let scopes: Vec<String> = issued
            .scope
            .split(' ')
            .filter(|x| !x.is_empty())
            .map(String::from)
            .collect();
        self.note_issued(&client.client, &scopes);
        Ok(issued)
    }

    /// [`Self::mint`] without counting the token in the per-minute issuance aggregate (the
    /// caller records its own event).
    pub fn mint_quietly(
        &self,
        client: &CachedClient,
        req: MintRequest<'_>,
    ) -> Result<IssuedToken, OAuthError> {
        let c = &client.client;
        // An exchanged token holds at most what both the actor and the subject hold.
        let allowed: Vec<String> = match &req.exchange {
            None => c.scopes.clone(),
            Some(x) => c
                .scopes
                .iter()
                .filter(|s| x.scopes.contains(s))
                .cloned()
                .collect(),
        };
        let grant = grant(&allowed, req.scope, &req.targets).map_err(|e| match e {
            TargetError::Scope(d) => OAuthError::InvalidScope(d),
            TargetError::Target(d) => OAuthError::InvalidTarget(d),
        })?;
        let mut audience = grant.audience;
        if let Some(x) = req.exchange.as_ref().filter(|x| !x.audience.is_empty()) {
            if audience.is_empty() {
                audience = x.audience.clone();
            } else if let Some(wider) = audience.iter().find(|a| !x.audience.contains(a)) {
                return Err(OAuthError::InvalidTarget(format!(
                    "the subject token is not for `{wider}`: an exchanged token's audience stays within the subject token's"
                )));
            }
        }
        let scope = grant.scopes.join(" ");
        let now_ms = to_ms(self.now());
        // Never issued before the client's not-before (a whole second after a secret was
        // retired): a token obtained right after a retirement must not be born dead.
        let iat_ms = now_ms.max(c.not_before.map(to_ms).unwrap_or(i64::MIN));
        let mut exp_ms = now_ms + c.access_token_ttl_seconds * 1000;
        if let Some(x) = &req.exchange {
            exp_ms =
                exp_ms.min(now_ms + self.settings.oauth.exchanged_token_max_ttl_seconds * 1000);
            if let Some(until) = x.expires_at_ms {
                exp_ms = exp_ms.min(until);
            }
        }
        let ttl = (exp_ms - now_ms) / 1000;
        let jti = random_id_text(22);
        let token_type = if req.jkt.is_some() { "DPoP" } else { "Bearer" };
        let delegation = req.exchange.map(|x| x.delegation);
        let access_token = match c.token_format {
            TokenFormat::Opaque => self.oauth.sealer.seal(&OpaqueClaims {
                c: c.client_id.clone(),
                s: scope.clone(),
                i: iat_ms,
                e: exp_ms,
                j: jti,
                k: req.jkt,
                a: audience,
                d: delegation,
                f: req.federated,
                u: None,
            }),
            TokenFormat::Jwt => {
                let alg = c.signing_alg.unwrap_or(self.settings.oauth.default_alg);
                let ring = self.oauth.keyring();
                let key = ring.signer(alg, iat_ms).ok_or_else(|| {
                    tracing::error!(alg = alg.as_str(), "no signing key is active");
                    OAuthError::Server
                })?;
                let issuer = &self.settings.oauth.issuer;
                let aud = if audience.is_empty() {
                    Audience::one(c.audience.clone().unwrap_or_else(|| issuer.clone()))
                } else {
                    Audience(audience)
                };
                let (sub, act, subject_credentials) = match delegation {
                    Some(d) => (d.sub, Some(d.act), Some(d.subject_credentials)),
                    None => (c.client_id.clone(), None, None),
                };
                Keyring::sign_jwt(
                    key,
                    &JwtClaims {
                        iss: issuer.clone(),
                        sub,
                        aud,
                        exp: exp_ms / 1000,
                        iat: iat_ms / 1000,
                        nbf: iat_ms / 1000,
                        jti,
                        client_id: c.client_id.clone(),
                        scope: scope.clone(),
                        cnf: req.jkt.map(|jkt| Confirmation { jkt }),
                        act,
                        subject_credentials,
                        federated: req.federated,
                    },
                )
            }
        };
        Ok(IssuedToken {
            access_token,
            token_type,
            expires_in: ttl,
            scope,
            issued_token_type: None,
        })
    }

    pub fn note_issued(&self, c: &OAuthClient, scopes: &[String]) {
        let minute = self.now_ms() / 60_000;
        let mut issued = self.oauth.issued.lock().unwrap_or_else(|e| e.into_inner());
        let e = issued
            .entry((c.client_id.clone(), minute))
            .or_insert_with(|| (0, BTreeSet::new(), c.org_id.clone()));
        e.0 += 1;
        e.1.extend(scopes.iter().cloned());
    }

    /// Reads an access token of ours (opaque or JWT) and checks it is live: signature or seal,
    /// expiry, revocation, the client still existing and not having cut it off, and for an
    /// exchanged token its subject credential still live.
    pub async fn verify_access_token(
        &self,
        token: &str,
    ) -> Option<(Option<Arc<CachedClient>>, Arc<Introspection>)> {
        let now_ms = self.now_ms();
        let jwt = crate::domain::token::looks_like_jwt(token);
        // A token opened (or, for a JWT, verified) before is not opened again while its client
        // is unchanged and, for a JWT, the keyring is the one that verified it; what can end it
        // since (expiry, revocation, the client) is checked all the same.
        let index = self.oauth.opened_index(token);
        let keyring = jwt.then(|| self.oauth.keyring());
        if let Some(hit) = self.oauth.opened(index, token) {
            if hit.exp_ms <= now_ms
                || hit.nbf_ms > now_ms + 60_000
                || self.oauth.is_revoked(&hit.info.jti)
            {
                return None;
            }
            let same_keyring = match (&keyring, &hit.keyring) {
                (None, None) => true,
                (Some(now), Some(then)) => std::ptr::eq(Arc::as_ptr(now), then.as_ptr()),
                _ => false,
            };
            let client_id = hit.info.client_id.as_deref()?;
            let client = self.cached_client(client_id).await.ok().flatten()?;
            if same_keyring && std::ptr::eq(Arc::as_ptr(&client), hit.client.as_ptr()) {
                return Some((Some(client), Arc::clone(&hit.info)));
            }
        }
        let t = if let Some(keyring) = &keyring {
            let c = keyring.verify_jwt(token)?;
            if c.iss != self.settings.oauth.issuer {
                return None;
            }
            let delegation = match (c.act, c.subject_credentials) {
                (Some(act), Some(subject_credentials)) => Some(Delegation {
                    sub: c.sub,
                    act,
                    subject_credentials,
                }),
                (None, None) => None,
                _ => return None,
            };
            Verified {
                client_id: c.client_id,
                jti: c.jti,
                iat_ms: c.iat * 1000,
                exp_ms: c.exp * 1000,
                nbf_ms: c.nbf * 1000,
                scope: c.scope,
                aud: c.aud.0,
                jkt: c.cnf.map(|c| c.jkt),
                delegation,
                federated: c.federated,
                grant: None,
            }
        } else {
            let c = self.oauth.sealer.open(token)?;
            Verified {
                client_id: c.c,
                jti: c.j,
                iat_ms: c.i,
                exp_ms: c.e,
                nbf_ms: c.i,
                scope: c.s,
                aud: c.a,
                jkt: c.k,
                delegation: c.d,
                federated: c.f,
                grant: c.u,
            }
        };
        if t.exp_ms <= now_ms || t.nbf_ms > now_ms + 60_000 || self.oauth.is_revoked(&t.jti) {
            return None;
        }
        if let Some(g) = &t.grant {
            return self
                .verify_grant_token(&t, g)
                .await
                .map(|i| (None, Arc::new(i)));
        }
        let client = self.cached_client(&t.client_id).await.ok().flatten()?;
        if t.iat_ms < client.not_before_ms() {
            return None;
        }
        if let Some(d) = &t.delegation {
            if d.subject_credentials.is_empty() {
                return None;
            }
            for sc in &d.subject_credentials {
                if !self.subject_credential_live(sc).await {
                    return None;
                }
            }
        }
        let c = &client.client;
        // Opaque tokens not requested for resources name their audience through their client,
        // as JWTs do in `aud`.
        let aud = if t.aud.is_empty() {
            vec![c
                .audience
                .clone()
                .unwrap_or_else(|| self.settings.oauth.issuer.clone())]
        } else {
            t.aud
        };
        // An exchanged token also depends on its subject credentials: it is opened each time.
        let keep =
            t.delegation.is_none() && client.cached.load(std::sync::atomic::Ordering::Acquire);
        let (exp_ms, nbf_ms) = (t.exp_ms, t.nbf_ms);
        let (sub, act, subject_credentials) = match t.delegation {
            Some(d) => (d.sub, Some(d.act), d.subject_credentials),
            None => (t.client_id.clone(), None, vec![]),
        };
        let info = Introspection {
            sub,
            client_id: Some(t.client_id),
            exp: Some(t.exp_ms / 1000),
            iat: t.iat_ms / 1000,
            nbf: t.nbf_ms / 1000,
            jti: t.jti,
            username: c.name.clone(),
            scope: t.scope,
            credential_type: "access_token",
            aud,
            org_id: c.org_id.clone(),
            project_id: c.project_id.clone(),
            jkt: t.jkt,
            act,
            federated: t.federated,
            subject_credentials,
            answer: Default::default(),
        };
        let info = Arc::new(info);
        if keep {
            let opened = super::oauth::OpenedToken {
                token: token.as_bytes().into(),
                keyring: keyring.as_ref().map(Arc::downgrade),
                client: Arc::downgrade(&client),
                exp_ms,
                nbf_ms,
                info: Arc::clone(&info),
            };
            self.oauth.keep_opened(index, opened, now_ms);
        }
        Some((Some(client), info))
    }

    /// A token of the authorization-code grant: live while its grant is, for its person and app.
    async fn verify_grant_token(&self, t: &Verified, g: &GrantRef) -> Option<Introspection> {
        let grant = self.live_grant(&g.g).await?;
        if grant.client_id != t.client_id || grant.member_id != g.m {
            return None;
        }
        Some(Introspection {
            sub: grant.member_id.clone(),
            client_id: Some(t.client_id.clone()),
            exp: Some(t.exp_ms / 1000),
            iat: t.iat_ms / 1000,
            nbf: t.nbf_ms / 1000,
            jti: t.jti.clone(),
            username: grant.member_id.clone(),
            scope: t.scope.clone(),
            credential_type: "access_token",
            aud: if t.aud.is_empty() {
                vec![grant.resource.clone()]
            } else {
                t.aud.clone()
            },
            org_id: grant.org_id.clone(),
            project_id: grant.project_id.clone(),
            jkt: t.jkt.clone(),
            act: None,
            federated: None,
            subject_credentials: vec![],
            answer: Default::default(),
        })
    }

    /// Mints an access token under a person's grant (the authorization-code grant): opaque,
    /// for the grant's resource, with `scopes` (within the grant's), bound to `jkt` with DPoP.
    pub fn mint_for_grant(
        &self,
        grant: &crate::domain::authcode::Grant,
        scopes: &[String],
        jkt: Option<String>,
    ) -> IssuedToken {
        let now_ms = to_ms(self.now());
        let ttl = self.settings.oauth.default_ttl_seconds;
        let exp_ms = now_ms + ttl * 1000;
        let scope = scopes.join(" ");
        let token_type = if jkt.is_some() { "DPoP" } else { "Bearer" };
        let access_token = self.oauth.sealer.seal(&OpaqueClaims {
            c: grant.client_id.clone(),
            s: scope.clone(),
            i: now_ms,
            e: exp_ms,
            j: random_id_text(22),
            k: jkt,
            a: vec![grant.resource.clone()],
            d: None,
            f: None,
            u: Some(GrantRef {
                g: grant.id.clone(),
                m: grant.member_id.clone(),
            }),
        });
        IssuedToken {
            access_token,
            token_type,
            expires_in: ttl,
            scope,
            issued_token_type: None,
        }
    }

    /// The identity of a live access token, for `/v1/authz` and the management API.
    pub async fn token_identity(&self, token: &str) -> Option<TokenIdentity> {
        let (client, info) = self.verify_access_token(token).await?;
        let info = Arc::unwrap_or_clone(info);
        let owner_member_id = match &client {
            Some(c) => c.client.owner_member_id.clone(),
            // A person's grant: the token is theirs.
            None => Some(info.sub.clone()),
        };
        let scopes: Vec<String> = info
            .scope
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        Some(TokenIdentity {
            client_id: info.client_id.unwrap_or_default(),
            sub: info.sub,
            aud: info.aud,
            act: info.act,
            jti: info.jti,
            org_id: info.org_id,
            project_id: info.project_id,
            owner_member_id,
            scopes_joined: scopes.join(" "),
            scopes,
            jkt: info.jkt,
        })
    }

    /// Whether `token` is one of our access tokens by its shape (it may still be invalid).
    pub fn is_access_token_shaped(&self, token: &str) -> bool {
        token.starts_with(self.oauth.sealer.prefix()) || crate::domain::token::looks_like_jwt(token)
    }

    pub async fn introspect_api_key(&self, token: &str) -> Option<Introspection> {
        let key = self.resolve_key_raw(token).await.ok().flatten()?;
        if self.evaluate(&key).is_err() {
            return None;
        }
        Some(Introspection {
            sub: key
                .owner_member_id
                .as_deref()
                .unwrap_or(&key.key_id)
                .to_string(),
            client_id: None,
            exp: key.expires_at_ms.map(|e| e / 1000),
            iat: key.created_at_ms / 1000,
            nbf: key.created_at_ms / 1000,
            jti: key.key_id.to_string(),
            username: key.name.to_string(),
            scope: key.scopes_joined().to_string(),
            credential_type: "api_key",
            aud: vec![],
            org_id: key.org_id().to_string(),
            project_id: key.project_id().to_string(),
            jkt: None,
            act: None,
            federated: None,
            subject_credentials: vec![],
            answer: Default::default(),
        })
    }
}

/// An access token's claims, whichever its form.
struct Verified {
    client_id: String,
    jti: String,
    iat_ms: i64,
    exp_ms: i64,
    nbf_ms: i64,
    scope: String,
    aud: Vec<String>,
    jkt: Option<String>,
    delegation: Option<Delegation>,
    federated: Option<FederatedRef>,
    grant: Option<GrantRef>,
}

/// Precomputes what the hot path needs from one storage read.
fn cached_from_lookup(
    cache: &KeyCache,
    limiter: &super::ratelimit::Limiter,
    digest: Digest,
    l: KeyLookup,
) -> CachedKey {
    let KeyLookup {
        key,
        secret,
        owner_role,
        roles,
    } = l;
    let mut scopes: BTreeSet<String> = key.scopes.iter().cloned().collect();
    let mut role_perms = PermSet::EMPTY;
    for r in &roles {
        scopes.extend(r.scopes.iter().cloned());
        role_perms = role_perms.union(r.perm_set());
    }
    // A member's key acts with the member's current authority; a service token with its roles'.
    let (permissions, active) = match (&key.owner_member_id, owner_role) {
        (Some(_), Some(role)) => (role.permissions(), key.is_active),
        (Some(_), None) => (PermSet::EMPTY, false),
        (None, _) => (role_perms, key.is_active),
    };
    let expires_at_ms = match (key.expires_at.map(to_ms), secret.expires_at.map(to_ms)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let limits = limiter.prepare(
        &key.rate_limits,
        &key.id,
        key.owner_member_id.as_deref(),
        &key.project_id,
    );
    CachedKey {
        limits,
        digest,
        group: cache.group(&key.org_id, &key.project_id, scopes.into_iter().collect()),
        key_id: key.id.into(),
        name: key.name.into(),
        owner_member_id: key.owner_member_id.map(Into::into),
        member_role: owner_role,
        permissions,
        is_active: active,
        expires_at_ms,
        created_at_ms: to_ms(key.created_at),
        used: Default::default(),
    }
}
