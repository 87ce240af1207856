//! OAuth 2.0 client credentials: clients and their rotating secrets, the token endpoint's
//! logic, access tokens (opaque and JWT) with no storage write when issued, introspection,
//! revocation, and the signing keys behind the JWKS.

use crate::app::{Keyplane, Page, RequestMeta};
use crate::clock::{from_ms, to_ms};
use crate::error::{Error, Result};
use crate::ids::{is_id, new_id};
use crate::model::*;
use crate::perm::{Actor, OrgAccess, Permission, Principal};
use crate::secret::{ct_eq, random_base62, random_id_text, SecretFormat, SecretString};
use crate::store::{Invalidation, KeyFilter};
use crate::token::{generate_pkcs8, Alg, JwtClaims, Keyring, OpaqueClaims, Sealer, SigningKey};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use time::OffsetDateTime;

/// OAuth settings of a deployment.
#[derive(Debug, Clone)]
pub struct OAuthSettings {
    /// The issuer URL: `iss` of every token and the base of every endpoint in the metadata.
    pub issuer: String,
    pub client_id_format: SecretFormat,
    pub client_secret_format: SecretFormat,
    pub access_token_prefix: String,
    pub default_alg: Alg,
    pub default_ttl_seconds: i64,
    pub max_ttl_seconds: i64,
    /// One activity event per client per minute (true) or one per token (false).
    pub aggregate_token_events: bool,
    /// How long a new signing key is published before it signs.
    pub signing_key_lead_seconds: i64,
    /// Automatic signing-key rotation interval; `None` turns it off.
    pub signing_key_rotation_days: Option<i64>,
    /// Failed client authentications allowed per minute from one address for one client id.
    pub failures_per_client_and_address: u32,
    /// Failed client authentications allowed per minute from one address.
    pub failures_per_address: u32,
}

impl Default for OAuthSettings {
    fn default() -> Self {
        Self {
            issuer: "http://127.0.0.1:8780".into(),
            client_id_format: SecretFormat::new("kpc_").expect("valid"),
            client_secret_format: SecretFormat::new("kps_").expect("valid"),
            access_token_prefix: "kpt_".into(),
            default_alg: Alg::ES256,
            default_ttl_seconds: 3600,
            max_ttl_seconds: 86_400,
            aggregate_token_events: true,
            signing_key_lead_seconds: 300,
            signing_key_rotation_days: Some(30),
            failures_per_client_and_address: 10,
            failures_per_address: 50,
        }
    }
}

/// Errors of the OAuth endpoints (RFC 6749 §5.2, RFC 7009, RFC 7662).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OAuthError {
    InvalidRequest(String),
    /// Client authentication failed; `basic` when HTTP Basic was tried.
    InvalidClient {
        basic: bool,
    },
    InvalidScope(String),
    UnauthorizedClient(String),
    UnsupportedGrantType,
    /// Too many failed authentications; retry after this many seconds.
    TooManyRequests(u64),
    Server,
}

impl From<Error> for OAuthError {
    fn from(e: Error) -> Self {
        tracing::error!(error = %e, "storage failed on an OAuth endpoint");
        OAuthError::Server
    }
}

/// How a client authenticated to an OAuth endpoint.
#[derive(Clone)]
pub struct ClientAuth {
    pub client_id: String,
    pub secret: SecretString,
    pub basic: bool,
}

/// A successful token response.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub access_token: String,
    pub expires_in: i64,
    pub scope: String,
}

/// A verified access token, or an API key, as introspection reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Introspection {
    pub sub: String,
    pub client_id: Option<String>,
    pub exp: Option<i64>,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    pub username: String,
    pub scope: String,
    /// `access_token` or `api_key`.
    pub credential_type: &'static str,
    pub aud: Option<String>,
    pub org_id: String,
    pub project_id: String,
}

/// A verified access token, for `/v1/authz` and the management API.
#[derive(Debug)]
pub struct TokenIdentity {
    pub client_id: String,
    pub jti: String,
    pub org_id: String,
    pub project_id: String,
    pub owner_member_id: Option<String>,
    pub scopes: Vec<String>,
    pub scopes_joined: String,
}

/// A client as the hot path needs it.
#[derive(Debug)]
pub struct CachedClient {
    pub client: OAuthClient,
    pub secrets: Vec<CachedSecret>,
}

#[derive(Debug)]
pub struct CachedSecret {
    pub id: String,
    pub digest: crate::secret::Digest,
    /// The earlier of the secret's expiry and its maximum age under the rotation policy (ms).
    pub refused_from_ms: Option<i64>,
    pub uses: AtomicU64,
    pub last_used_ms: AtomicI64,
}

impl CachedClient {
    fn new(client: OAuthClient, secrets: Vec<ClientSecret>) -> Self {
        let max_age_ms = client.secret_rotation_days.map(|d| d * 86_400_000);
        let secrets = secrets
            .into_iter()
            .map(|s| {
                let by_policy = max_age_ms.map(|a| to_ms(s.created_at) + a);
                let refused_from_ms = match (s.expires_at.map(to_ms), by_policy) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                CachedSecret {
                    id: s.id,
                    digest: s.digest,
                    refused_from_ms,
                    uses: AtomicU64::new(0),
                    last_used_ms: AtomicI64::new(0),
                }
            })
            .collect();
        Self { client, secrets }
    }

    fn not_before_ms(&self) -> i64 {
        self.client.not_before.map(to_ms).unwrap_or(i64::MIN)
    }
}

type Window = (u32, i64);
/// Tokens issued per (client, minute): count, scopes, organization.
type IssuedCounts = HashMap<(String, i64), (u64, BTreeSet<String>, String)>;

/// Per-node OAuth state: caches, revocations, the keyring, counters.
pub struct OAuthState {
    clients: RwLock<HashMap<String, Arc<CachedClient>>>,
    unknown_clients: RwLock<BTreeSet<String>>,
    epoch: AtomicU64,
    revoked: RwLock<HashMap<String, i64>>,
    keyring: RwLock<Arc<Keyring>>,
    sealer: Sealer,
    key_seal: [u8; 32],
    failures: Mutex<HashMap<String, Window>>,
    /// When the last client authentication failed (ms), for the throttle's fast path.
    last_failure_ms: AtomicI64,
    /// Use counts of secrets whose cached client was dropped before a flush.
    pending_uses: Mutex<Vec<(String, OffsetDateTime, i64)>>,
    issued: Mutex<IssuedCounts>,
}

impl OAuthState {
    pub fn new(pepper: &crate::secret::Pepper, settings: &OAuthSettings) -> Self {
        Self {
            clients: RwLock::default(),
            unknown_clients: RwLock::default(),
            epoch: AtomicU64::new(0),
            revoked: RwLock::default(),
            keyring: RwLock::new(Arc::new(Keyring::default())),
            sealer: Sealer::new(
                pepper.derive("opaque-access-token-v1"),
                &settings.access_token_prefix,
            ),
            key_seal: pepper.derive("signing-key-v1"),
            failures: Mutex::default(),
            last_failure_ms: AtomicI64::new(i64::MIN / 2),
            pending_uses: Mutex::default(),
            issued: Mutex::default(),
        }
    }

    pub fn invalidate_client(&self, client_id: &str) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let removed = self
            .clients
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(client_id);
        self.unknown_clients
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(client_id);
        if let Some(c) = removed {
            self.keep_uses(&c);
        }
    }

    pub fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let removed: Vec<_> = self
            .clients
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, c)| c)
            .collect();
        self.unknown_clients
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        for c in removed {
            self.keep_uses(&c);
        }
    }

    /// Moves a dropped client's unflushed use counts aside so the next flush still writes them.
    fn keep_uses(&self, c: &CachedClient) {
        let used = take_uses(c);
        if !used.is_empty() {
            self.pending_uses
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(used);
        }
    }

    pub fn note_revoked(&self, jti: String, exp_ms: i64) {
        self.revoked
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(jti, exp_ms);
    }

    fn is_revoked(&self, jti: &str) -> bool {
        self.revoked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(jti)
    }

    pub fn keyring(&self) -> Arc<Keyring> {
        Arc::clone(&self.keyring.read().unwrap_or_else(|e| e.into_inner()))
    }
}

fn take_uses(c: &CachedClient) -> Vec<(String, OffsetDateTime, i64)> {
    c.secrets
        .iter()
        .filter_map(|s| {
            let n = s.uses.swap(0, Ordering::Relaxed);
            (n > 0).then(|| {
                (
                    s.id.clone(),
                    from_ms(s.last_used_ms.load(Ordering::Relaxed)),
                    n as i64,
                )
            })
        })
        .collect()
}

fn ceil_to_second(t: OffsetDateTime) -> OffsetDateTime {
    let ms = to_ms(t);
    from_ms((ms + 999) / 1000 * 1000)
}

/// Input for creating a client.
#[derive(Debug, Clone, Default)]
pub struct NewClient {
    pub org_id: Option<String>,
    pub project_id: Option<String>,
    pub owner_member_id: Option<String>,
    pub name: String,
    pub description: Option<String>,
    pub scopes: Vec<String>,
    pub access_token_ttl_seconds: Option<i64>,
    pub token_format: Option<String>,
    pub signing_alg: Option<String>,
    pub audience: Option<String>,
    pub secret_rotation_days: Option<i64>,
}

/// Changes to a client; `None` leaves a field as it is, `Some(None)` clears an optional one.
#[derive(Debug, Clone, Default)]
pub struct ClientPatch {
    pub name: Option<String>,
    pub description: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub access_token_ttl_seconds: Option<i64>,
    pub token_format: Option<String>,
    pub signing_alg: Option<Option<String>>,
    pub audience: Option<Option<String>>,
    pub secret_rotation_days: Option<Option<i64>>,
}

impl Keyplane {
    fn oauth_settings(&self) -> &OAuthSettings {
        &self.settings().oauth
    }

    // ----- the client cache -----

    async fn cached_client(&self, client_id: &str) -> Result<Option<Arc<CachedClient>>> {
        let o = &self.oauth;
        // Past the bound on serving from cache without the change feed, read storage each time.
        if !self.feed_status().cache_trusted() {
            if !self.oauth_settings().client_id_format.claims(client_id) || client_id.len() > 128 {
                return Ok(None);
            }
            let found = self.store().client_get(client_id).await?;
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
        if !self.oauth_settings().client_id_format.claims(client_id) || client_id.len() > 128 {
            return Ok(None);
        }
        let epoch = o.epoch.load(Ordering::Acquire);
        let found = self.store().client_get(client_id).await?;
        let entry = found.map(|(c, s)| Arc::new(CachedClient::new(c, s)));
        if o.epoch.load(Ordering::Acquire) == epoch {
            match &entry {
                Some(c) => {
                    o.clients
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(client_id.to_string(), Arc::clone(c));
                }
                None => {
                    let mut u = o.unknown_clients.write().unwrap_or_else(|e| e.into_inner());
                    if u.len() > 65_536 {
                        u.clear();
                    }
                    u.insert(client_id.to_string());
                }
            }
        }
        Ok(entry)
    }

    // ----- client authentication, throttled -----

    fn throttled(&self, client_id: &str, meta: &RequestMeta) -> Option<u64> {
        let now = self.now_ms();
        // Nothing failed within the window (the common case): no keys to build, no lock.
        if now - self.oauth.last_failure_ms.load(Ordering::Relaxed) >= 60_000 {
            return None;
        }
        let ip = meta.addr_text().unwrap_or_default();
        let s = self.oauth_settings();
        let f = self
            .oauth
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (key, limit) in [
            (
                format!("{client_id}|{ip}"),
                s.failures_per_client_and_address,
            ),
            (ip, s.failures_per_address),
        ] {
            if let Some((count, start)) = f.get(&key) {
                if now - start < 60_000 && *count >= limit {
                    return Some(((start + 60_000 - now) / 1000 + 1) as u64);
                }
            }
        }
        None
    }

    fn note_failure(&self, client_id: &str, meta: &RequestMeta) {
        let now = self.now_ms();
        self.oauth.last_failure_ms.store(now, Ordering::Relaxed);
        let ip = meta.addr_text().unwrap_or_default();
        let mut f = self
            .oauth
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if f.len() > 100_000 {
            f.retain(|_, (_, start)| now - *start < 60_000);
        }
        for key in [format!("{client_id}|{ip}"), ip] {
            let e = f.entry(key).or_insert((0, now));
            if now - e.1 >= 60_000 {
                *e = (0, now);
            }
            e.0 += 1;
        }
    }

    /// Authenticates a client by id and secret: throttled per client id and address, never
    /// by client id alone, so a caller with the right secret elsewhere is never locked out.
    pub async fn authenticate_client(
        &self,
        auth: &ClientAuth,
        meta: &RequestMeta,
    ) -> Result<Arc<CachedClient>, OAuthError> {
        if let Some(retry) = self.throttled(&auth.client_id, meta) {
            return Err(OAuthError::TooManyRequests(retry));
        }
        let fail = |this: &Self| {
            this.note_failure(&auth.client_id, meta);
            this.note_client_refusal(&auth.client_id, meta);
            Err(OAuthError::InvalidClient { basic: auth.basic })
        };
        let Some(client) = self.cached_client(&auth.client_id).await? else {
            return fail(self);
        };
        let secret = auth.secret.expose();
        if self
            .oauth_settings()
            .client_secret_format
            .check(secret)
            .is_err()
        {
            return fail(self);
        }
        let digest = self.pepper().digest(secret);
        let now = self.now_ms();
        let matched = client
            .secrets
            .iter()
            .find(|s| ct_eq(&s.digest.0, &digest.0) && s.refused_from_ms.is_none_or(|r| r > now));
        match matched {
            Some(s) => {
                s.uses.fetch_add(1, Ordering::Relaxed);
                s.last_used_ms.store(now, Ordering::Relaxed);
                Ok(client)
            }
            None => fail(self),
        }
    }

    fn note_client_refusal(&self, client_id: &str, meta: &RequestMeta) {
        // Only ids of our format are named; anything else could be a secret pasted in the wrong field.
        let named =
            self.oauth_settings().client_id_format.claims(client_id) && client_id.len() <= 64;
        self.queue_refusal(
            "client_authentication",
            named.then(|| client_id.to_string()),
            meta,
        );
    }

    // ----- tokens -----

    /// The client-credentials grant: a token for exactly the requested scopes (all of the
    /// client's when none are requested). Nothing is written to storage.
    pub async fn issue_token(
        &self,
        auth: &ClientAuth,
        scope: Option<&str>,
        meta: &RequestMeta,
    ) -> Result<IssuedToken, OAuthError> {
        let client = self.authenticate_client(auth, meta).await?;
        self.mint(&client, scope)
    }

    fn mint(&self, client: &CachedClient, scope: Option<&str>) -> Result<IssuedToken, OAuthError> {
        let c = &client.client;
        let scopes: Vec<String> = match scope {
            None => c.scopes.clone(),
            Some(s) => {
                let mut out = BTreeSet::new();
                for x in s.split(' ').filter(|x| !x.is_empty()) {
                    if !c.scopes.iter().any(|y| y == x) {
                        return Err(OAuthError::InvalidScope(format!(
                            "the client may not request the scope `{x}`"
                        )));
                    }
                    out.insert(x.to_string());
                }
                out.into_iter().collect()
            }
        };
        let scope = scopes.join(" ");
        let now = self.now();
        let iat_ms = to_ms(now);
        let ttl = c.access_token_ttl_seconds;
        let exp_ms = iat_ms + ttl * 1000;
        let jti = random_id_text(22);
        let access_token = match c.token_format {
            TokenFormat::Opaque => self.oauth.sealer.seal(&OpaqueClaims {
                c: c.client_id.clone(),
                s: scope.clone(),
                i: iat_ms,
                e: exp_ms,
                j: jti,
            }),
            TokenFormat::Jwt => {
                let alg = c.signing_alg.unwrap_or(self.oauth_settings().default_alg);
                let ring = self.oauth.keyring();
                let key = ring.signer(alg, iat_ms).ok_or_else(|| {
                    tracing::error!(alg = alg.as_str(), "no signing key is active");
                    OAuthError::Server
                })?;
                let issuer = &self.oauth_settings().issuer;
                Keyring::sign_jwt(
                    key,
                    &JwtClaims {
                        iss: issuer.clone(),
                        sub: c.client_id.clone(),
                        aud: c.audience.clone().unwrap_or_else(|| issuer.clone()),
                        exp: exp_ms / 1000,
                        iat: iat_ms / 1000,
                        nbf: iat_ms / 1000,
                        jti,
                        client_id: c.client_id.clone(),
                        scope: scope.clone(),
                    },
                )
            }
        };
        self.note_issued(c, &scopes);
        Ok(IssuedToken {
            access_token,
            expires_in: ttl,
            scope,
        })
    }

    fn note_issued(&self, c: &OAuthClient, scopes: &[String]) {
        let minute = self.now_ms() / 60_000;
        let mut issued = self.oauth.issued.lock().unwrap_or_else(|e| e.into_inner());
        let e = issued
            .entry((c.client_id.clone(), minute))
            .or_insert_with(|| (0, BTreeSet::new(), c.org_id.clone()));
        e.0 += 1;
        e.1.extend(scopes.iter().cloned());
    }

    /// Reads an access token of ours (opaque or JWT) and checks it is live: signature or seal,
    /// expiry, revocation, the client still existing and not having cut it off.
    pub async fn verify_access_token(
        &self,
        token: &str,
    ) -> Option<(Arc<CachedClient>, Introspection)> {
        let now_ms = self.now_ms();
        let (client_id, jti, iat_ms, exp_ms, nbf_ms, scope, aud) =
            if crate::token::looks_like_jwt(token) {
                let c = self.oauth.keyring().verify_jwt(token)?;
                if c.iss != self.oauth_settings().issuer {
                    return None;
                }
                (
                    c.client_id,
                    c.jti,
                    c.iat * 1000,
                    c.exp * 1000,
                    c.nbf * 1000,
                    c.scope,
                    Some(c.aud),
                )
            } else {
                let c = self.oauth.sealer.open(token)?;
                (c.c, c.j, c.i, c.e, c.i, c.s, None)
            };
        if exp_ms <= now_ms || nbf_ms > now_ms + 60_000 || self.oauth.is_revoked(&jti) {
            return None;
        }
        let client = self.cached_client(&client_id).await.ok().flatten()?;
        if iat_ms < client.not_before_ms() {
            return None;
        }
        let c = &client.client;
        // Opaque tokens name their audience through their client, as JWTs do in `aud`.
        let aud = aud.or_else(|| {
            Some(
                c.audience
                    .clone()
                    .unwrap_or_else(|| self.oauth_settings().issuer.clone()),
            )
        });
        let info = Introspection {
            sub: client_id.clone(),
            client_id: Some(client_id),
            exp: Some(exp_ms / 1000),
            iat: iat_ms / 1000,
            nbf: nbf_ms / 1000,
            jti,
            username: c.name.clone(),
            scope,
            credential_type: "access_token",
            aud,
            org_id: c.org_id.clone(),
            project_id: c.project_id.clone(),
        };
        Some((client, info))
    }

    /// The identity of a live access token, for `/v1/authz` and the management API.
    pub async fn token_identity(&self, token: &str) -> Option<TokenIdentity> {
        let (client, info) = self.verify_access_token(token).await?;
        let scopes: Vec<String> = info
            .scope
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        Some(TokenIdentity {
            client_id: info.sub,
            jti: info.jti,
            org_id: info.org_id,
            project_id: info.project_id,
            owner_member_id: client.client.owner_member_id.clone(),
            scopes_joined: scopes.join(" "),
            scopes,
        })
    }

    /// Whether `token` is one of our access tokens by its shape (it may still be invalid).
    pub fn is_access_token_shaped(&self, token: &str) -> bool {
        token.starts_with(self.oauth.sealer.prefix()) || crate::token::looks_like_jwt(token)
    }

    /// RFC 7662. The caller is a client or a principal allowed to introspect; the answer is
    /// `None` (inactive) for anything not live, or outside the caller's organization.
    pub async fn introspect(&self, caller_org: Option<&str>, token: &str) -> Option<Introspection> {
        let info = if self.settings().api_key_format.claims(token) {
            self.introspect_api_key(token).await?
        } else {
            self.verify_access_token(token).await?.1
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
        Ok(Some(p.access(None, Permission::TokensIntrospect)?.org_id))
    }

    /// RFC 7009: a client revokes one of its own tokens.
    pub async fn revoke_token(
        &self,
        auth: &ClientAuth,
        token: &str,
        meta: &RequestMeta,
    ) -> Result<RevokeOutcome, OAuthError> {
        let client = self.authenticate_client(auth, meta).await?;
        let parsed = if crate::token::looks_like_jwt(token) {
            self.oauth
                .keyring()
                .verify_jwt(token)
                .map(|c| (c.client_id, c.jti, c.exp * 1000))
        } else {
            self.oauth.sealer.open(token).map(|c| (c.c, c.j, c.e))
        };
        let Some((owner, jti, exp_ms)) = parsed else {
            return Ok(RevokeOutcome::Unknown);
        };
        if owner != client.client.client_id {
            return Err(OAuthError::UnauthorizedClient(
                "the token was not issued to this client".into(),
            ));
        }
        if exp_ms <= self.now_ms() || self.oauth.is_revoked(&jti) {
            return Ok(RevokeOutcome::Revoked);
        }
        self.store()
            .token_revoke(&jti, &owner, from_ms(exp_ms), self.now())
            .await?;
        self.oauth.note_revoked(jti.clone(), exp_ms);
        self.store()
            .publish(&Invalidation::Token(jti.clone(), exp_ms))
            .await?;
        let p = client_principal(&client.client);
        self.record_event(
            &p,
            Some(&client.client.org_id),
            "access_token.revoke",
            Some(&owner),
            meta,
            serde_json::json!({ "jti": jti }),
        )
        .await?;
        Ok(RevokeOutcome::Revoked)
    }

    // ----- signing keys -----

    /// Loads every signing key from storage (after start, a rotation, or another node's change).
    pub async fn reload_signing_keys(&self) -> Result<()> {
        let stored = self.store().signing_keys().await?;
        let mut keys = Vec::new();
        for k in stored {
            let Some(alg) = Alg::parse(&k.alg) else {
                continue;
            };
            let Some(pkcs8) =
                crate::token::open(&self.oauth.key_seal, k.kid.as_bytes(), &k.private_sealed)
            else {
                tracing::error!(kid = %k.kid, "a signing key cannot be opened: was the pepper changed?");
                continue;
            };
            if let Some(key) = SigningKey::from_pkcs8(
                k.kid,
                alg,
                &pkcs8,
                to_ms(k.activates_at),
                k.unpublish_at.map(to_ms),
            ) {
                keys.push(key);
            }
        }
        *self
            .oauth
            .keyring
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(Keyring::new(keys));
        Ok(())
    }

    /// Makes sure every algorithm has a signing key (first start), and loads them.
    pub async fn ensure_signing_keys(&self) -> Result<()> {
        self.reload_signing_keys().await?;
        let ring = self.oauth.keyring();
        for alg in [Alg::ES256, Alg::EdDSA] {
            if ring.signer(alg, i64::MAX).is_none() {
                self.add_signing_key(alg, 0).await?;
            }
        }
        self.reload_signing_keys().await
    }

    async fn add_signing_key(&self, alg: Alg, lead_seconds: i64) -> Result<String> {
        let now = self.now();
        let kid = format!("{}-{}", alg.as_str().to_lowercase(), random_base62(12));
        let sealed = crate::token::seal(&self.oauth.key_seal, kid.as_bytes(), &generate_pkcs8(alg));
        let activates_at = now + time::Duration::seconds(lead_seconds);
        // Older keys stay published until every token they may still sign has expired.
        let retire_others_at =
            activates_at + time::Duration::seconds(self.oauth_settings().max_ttl_seconds);
        self.store()
            .signing_key_add(
                &StoredSigningKey {
                    kid: kid.clone(),
                    alg: alg.as_str().into(),
                    private_sealed: sealed,
                    created_at: now,
                    activates_at,
                    unpublish_at: None,
                },
                retire_others_at,
            )
            .await?;
        self.record_system_event("signing_key.create", serde_json::json!({ "kid": kid, "alg": alg.as_str(), "activates_at": to_ms(activates_at) }))
            .await?;
        Ok(kid)
    }

    /// Rotates the signing key of `alg`: the new key is published now and signs after the lead.
    pub async fn rotate_signing_key(&self, alg: Alg, lead_seconds: Option<i64>) -> Result<String> {
        let lead = lead_seconds.unwrap_or(self.oauth_settings().signing_key_lead_seconds);
        let kid = self.add_signing_key(alg, lead).await?;
        self.reload_signing_keys().await?;
        self.store().publish(&Invalidation::SigningKeys).await?;
        Ok(kid)
    }

    /// Rotates any algorithm whose newest key is older than the rotation interval.
    pub async fn rotate_due_signing_keys(&self) -> Result<()> {
        let Some(days) = self.oauth_settings().signing_key_rotation_days else {
            return Ok(());
        };
        let ring = self.oauth.keyring();
        let now = self.now_ms();
        for alg in [Alg::ES256, Alg::EdDSA] {
            if let Some(newest) = ring.signer(alg, i64::MAX) {
                if now - newest.activates_at_ms > days * 86_400_000 {
                    self.rotate_signing_key(alg, None).await?;
                }
            }
        }
        Ok(())
    }

    /// The JWKS document.
    pub fn jwks(&self) -> serde_json::Value {
        self.oauth.keyring().jwks(self.now_ms())
    }

    /// Loads revocations that are still live (at start, and as a safety net).
    pub async fn reload_revocations(&self) -> Result<()> {
        let live = self.store().revoked_tokens(self.now()).await?;
        let mut r = self
            .oauth
            .revoked
            .write()
            .unwrap_or_else(|e| e.into_inner());
        r.clear();
        r.extend(live);
        Ok(())
    }

    /// Writes batched client-secret use counts and aggregated token-issuance events; with
    /// `everything`, also the current minute's (at shutdown).
    pub(crate) async fn flush_oauth(&self, everything: bool) -> Result<()> {
        let now = self.now();
        let clients: Vec<Arc<CachedClient>> = self
            .oauth
            .clients
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let mut used = std::mem::take(
            &mut *self
                .oauth
                .pending_uses
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for c in &clients {
            used.extend(take_uses(c));
        }
        if !used.is_empty() {
            self.store().client_secrets_used(&used).await?;
        }
        let minute = to_ms(now) / 60_000;
        let due: Vec<_> = {
            let mut issued = self.oauth.issued.lock().unwrap_or_else(|e| e.into_inner());
            let keys: Vec<_> = issued
                .keys()
                .filter(|(_, m)| {
                    everything || !self.oauth_settings().aggregate_token_events || *m < minute
                })
                .cloned()
                .collect();
            keys.into_iter()
                .filter_map(|k| issued.remove(&k).map(|v| (k, v)))
                .collect()
        };
        let events: Vec<NewEvent> = due
            .into_iter()
            .map(|((client_id, m), (count, scopes, org))| NewEvent {
                id: new_id("evt"),
                at: from_ms(m * 60_000),
                org_id: Some(org),
                actor: format!("client:{client_id}"),
                action: "access_token.issue".into(),
                target: Some(client_id),
                outcome: Outcome::Success,
                client_addr: None,
                user_agent: None,
                details: serde_json::json!({ "count": count, "scopes": scopes, "minute": rfc3339_minute(m) }),
            })
            .collect();
        if !events.is_empty() {
            self.store().activity_append(&events).await?;
        }
        Ok(())
    }

    /// Warns in the activity log about client secrets within seven days of their maximum age.
    pub async fn warn_expiring_secrets(&self) -> Result<u64> {
        let now = self.now();
        let horizon = now + time::Duration::days(7);
        let mut warned = 0;
        for (c, s) in self.store().client_secrets_unwarned().await? {
            let Some(days) = c.secret_rotation_days else {
                continue;
            };
            let due = s.created_at + time::Duration::days(days);
            if due <= horizon {
                self.record_system_event(
                    "client_secret.expiring",
                    serde_json::json!({ "client_id": c.client_id, "secret_id": s.id, "refused_from": to_ms(due) }),
                )
                .await?;
                self.store().client_secret_mark_warned(&s.id, now).await?;
                warned += 1;
            }
        }
        Ok(warned)
    }

    /// Client secrets refused within seven days under their rotation policy (for `/metrics`).
    pub fn secrets_expiring_soon(&self) -> u64 {
        let horizon = self.now_ms() + 7 * 86_400_000;
        let now = self.now_ms();
        self.oauth
            .clients
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .flat_map(|c| c.secrets.iter())
            .filter(|s| s.refused_from_ms.is_some_and(|r| r > now && r <= horizon))
            .count() as u64
    }

    // ----- managing clients -----

    fn client_access(&self, p: &Principal, org: Option<&str>) -> Result<OrgAccess> {
        p.access(org, Permission::ClientsManage)
    }

    async fn client_in_reach(
        &self,
        p: &Principal,
        client_id: &str,
    ) -> Result<(OAuthClient, Vec<ClientSecret>, OrgAccess)> {
        if !self.oauth_settings().client_id_format.claims(client_id) || client_id.len() > 128 {
            return Err(Error::NotFound("OAuth client"));
        }
        let (c, s) = self
            .store()
            .client_get(client_id)
            .await?
            .ok_or(Error::NotFound("OAuth client"))?;
        let access = p
            .access_in(c.org_id.clone(), Permission::ClientsManage)
            .map_err(|e| match e {
                Error::Forbidden(_) => Error::NotFound("OAuth client"),
                other => other,
            })?;
        if !access.reaches(&c.org_id, c.owner_member_id.as_deref()) {
            return Err(Error::NotFound("OAuth client"));
        }
        Ok((c, s, access))
    }

    fn check_ttl(&self, ttl: i64) -> Result<i64> {
        let max = self.oauth_settings().max_ttl_seconds;
        if !(60..=max).contains(&ttl) {
            return Err(Error::invalid(
                "access_token_ttl_seconds",
                format!("the access-token lifetime must be between 60 and {max} seconds"),
            ));
        }
        Ok(ttl)
    }

    fn check_rotation(days: Option<i64>) -> Result<Option<i64>> {
        match days {
            Some(d) if !(1..=3650).contains(&d) => Err(Error::invalid(
                "secret_rotation_days",
                "the rotation period must be between 1 and 3650 days",
            )),
            other => Ok(other),
        }
    }

    fn check_format(s: &str) -> Result<TokenFormat> {
        TokenFormat::parse(s).ok_or_else(|| {
            Error::invalid("token_format", "`token_format` must be `opaque` or `jwt`")
        })
    }

    fn check_alg(s: &str) -> Result<Alg> {
        Alg::parse(s).ok_or_else(|| {
            Error::invalid("signing_alg", "`signing_alg` must be `ES256` or `EdDSA`")
        })
    }

    fn check_audience(a: Option<String>) -> Result<Option<String>> {
        match a.map(|s| s.trim().to_string()) {
            Some(s) if s.is_empty() || s.len() > 512 => Err(Error::invalid(
                "audience",
                "`audience` must be 1 to 512 characters",
            )),
            other => Ok(other),
        }
    }

    fn new_secret(
        &self,
        client_id: &str,
        expires_at: Option<OffsetDateTime>,
    ) -> (ClientSecret, SecretString) {
        let secret = self.oauth_settings().client_secret_format.generate();
        let prefix_len = self.oauth_settings().client_secret_format.prefix().len();
        let cs = ClientSecret {
            id: new_id("sec"),
            client_id: client_id.to_string(),
            digest: self.pepper().digest(secret.expose()),
            pepper_version: self.pepper().version(),
            start: secret.expose()[..prefix_len + 4].to_string(),
            created_at: self.now(),
            expires_at,
            last_used_at: None,
            use_count: 0,
            expiry_warned_at: None,
        };
        (cs, secret)
    }

    pub async fn client_create(
        &self,
        p: &Principal,
        input: NewClient,
        meta: &RequestMeta,
    ) -> Result<(OAuthClient, ClientSecret, SecretString)> {
        let access = self.client_access(p, input.org_id.as_deref())?;
        self.existing_org(&access.org_id).await?;
        let project = self
            .project_in(&access.org_id, input.project_id.as_deref())
            .await?;
        let owner = self
            .credential_owner(&access, p, input.owner_member_id, "clients", false)
            .await?;
        let client = OAuthClient {
            seq: 0,
            client_id: self
                .oauth_settings()
                .client_id_format
                .generate()
                .expose()
                .to_string(),
            org_id: access.org_id.clone(),
            project_id: project.id,
            owner_member_id: owner,
            name: crate::app::clean_name("name", &input.name)?,
            description: crate::app::clean_description(input.description.as_deref())?,
            scopes: self.check_scopes(input.scopes).await?,
            access_token_ttl_seconds: self.check_ttl(
                input
                    .access_token_ttl_seconds
                    .unwrap_or(self.oauth_settings().default_ttl_seconds),
            )?,
            token_format: Self::check_format(input.token_format.as_deref().unwrap_or("opaque"))?,
            signing_alg: input
                .signing_alg
                .as_deref()
                .map(Self::check_alg)
                .transpose()?,
            audience: Self::check_audience(input.audience)?,
            secret_rotation_days: Self::check_rotation(input.secret_rotation_days)?,
            not_before: None,
            created_at: self.now(),
            created_by: p.actor_label(),
        };
        let (cs, secret) = self.new_secret(&client.client_id, None);
        self.store().client_create(&client, &cs).await?;
        self.oauth.invalidate_client(&client.client_id);
        self.record_event(
            p,
            Some(&client.org_id),
            "oauth_client.create",
            Some(&client.client_id),
            meta,
            client_details(&client),
        )
        .await?;
        let (client, _) = self
            .store()
            .client_get(&client.client_id)
            .await?
            .ok_or(Error::NotFound("OAuth client"))?;
        Ok((client, cs, secret))
    }

    pub async fn client_list(
        &self,
        p: &Principal,
        org_id: Option<&str>,
        project_id: Option<&str>,
        cursor: Option<&str>,
        limit: Option<i64>,
    ) -> Result<Page<(OAuthClient, Vec<ClientSecret>)>> {
        let access = self.client_access(p, org_id)?;
        self.existing_org(&access.org_id).await?;
        if let Some(pid) = project_id {
            self.project_in(&access.org_id, Some(pid)).await?;
        }
        let limit = crate::app::page_limit(limit)?;
        let filter = KeyFilter {
            org_id: access.org_id.clone(),
            owner_member_id: access.only_member.clone(),
            project_id: project_id.map(str::to_string),
            include_inactive: true,
        };
        let clients = self
            .store()
            .client_list(&filter, crate::app::parse_cursor(cursor)?, limit + 1)
            .await?;
        let page = crate::app::paginate(clients, limit, |c| c.seq);
        let mut items = Vec::new();
        for c in page.items {
            let secrets = self
                .store()
                .client_get(&c.client_id)
                .await?
                .map(|x| x.1)
                .unwrap_or_default();
            items.push((c, secrets));
        }
        Ok(Page {
            items,
            next_cursor: page.next_cursor,
        })
    }

    pub async fn client_get(
        &self,
        p: &Principal,
        client_id: &str,
    ) -> Result<(OAuthClient, Vec<ClientSecret>)> {
        let (c, s, _) = self.client_in_reach(p, client_id).await?;
        Ok((c, s))
    }

    pub async fn client_update(
        &self,
        p: &Principal,
        client_id: &str,
        patch: ClientPatch,
        meta: &RequestMeta,
    ) -> Result<(OAuthClient, Vec<ClientSecret>)> {
        let (mut c, _, _) = self.client_in_reach(p, client_id).await?;
        if let Some(n) = patch.name {
            c.name = crate::app::clean_name("name", &n)?;
        }
        if let Some(d) = patch.description {
            c.description = crate::app::clean_description(Some(&d))?;
        }
        if let Some(s) = patch.scopes {
            c.scopes = self.check_scopes(s).await?;
        }
        if let Some(t) = patch.access_token_ttl_seconds {
            c.access_token_ttl_seconds = self.check_ttl(t)?;
        }
        if let Some(f) = patch.token_format {
            c.token_format = Self::check_format(&f)?;
        }
        if let Some(a) = patch.signing_alg {
            c.signing_alg = a.as_deref().map(Self::check_alg).transpose()?;
        }
        if let Some(a) = patch.audience {
            c.audience = Self::check_audience(a)?;
        }
        if let Some(r) = patch.secret_rotation_days {
            c.secret_rotation_days = Self::check_rotation(r)?;
        }
        self.store().client_update(&c).await?;
        self.invalidate_client_everywhere(client_id).await?;
        self.record_event(
            p,
            Some(&c.org_id),
            "oauth_client.update",
            Some(client_id),
            meta,
            client_details(&c),
        )
        .await?;
        self.client_get(p, client_id).await
    }

    /// Deletes a client; its tokens stop working at once (they name a client that is gone).
    pub async fn client_delete(
        &self,
        p: &Principal,
        client_id: &str,
        meta: &RequestMeta,
    ) -> Result<()> {
        let (c, _, _) = self.client_in_reach(p, client_id).await?;
        self.store().client_delete(client_id).await?;
        self.invalidate_client_everywhere(client_id).await?;
        self.record_event(
            p,
            Some(&c.org_id),
            "oauth_client.delete",
            Some(client_id),
            meta,
            serde_json::json!({ "name": c.name }),
        )
        .await
    }

    /// Adds a secret (shown once); with a grace period, the others expire when it ends.
    pub async fn client_secret_add(
        &self,
        p: &Principal,
        client_id: &str,
        old_expire_in: Option<time::Duration>,
        meta: &RequestMeta,
    ) -> Result<(ClientSecret, SecretString)> {
        let (c, _, _) = self.client_in_reach(p, client_id).await?;
        if let Some(g) = old_expire_in {
            if g.is_negative() || g > time::Duration::days(90) {
                return Err(Error::invalid(
                    "old_secrets_expire_in_seconds",
                    "the grace period must be between 0 and 90 days",
                ));
            }
        }
        let (cs, secret) = self.new_secret(client_id, None);
        let old_expire_at = old_expire_in.map(|g| self.now() + g);
        self.store().client_secret_add(&cs, old_expire_at).await?;
        self.invalidate_client_everywhere(client_id).await?;
        self.record_event(p, Some(&c.org_id), "client_secret.create", Some(client_id), meta, serde_json::json!({ "secret_id": cs.id, "old_secrets_expire_at": old_expire_at.map(to_ms) }))
            .await?;
        Ok((cs, secret))
    }

    /// Retires a secret at once. Tokens issued before now stop working (the client's
    /// not-before moves), so whatever the secret obtained is cut off too.
    pub async fn client_secret_retire(
        &self,
        p: &Principal,
        client_id: &str,
        secret_id: &str,
        meta: &RequestMeta,
    ) -> Result<()> {
        let (mut c, _, _) = self.client_in_reach(p, client_id).await?;
        if !is_id("sec", secret_id)
            || !self
                .store()
                .client_secret_delete(client_id, secret_id)
                .await?
        {
            return Err(Error::NotFound("client secret"));
        }
        c.not_before = Some(ceil_to_second(self.now()));
        self.store().client_update(&c).await?;
        self.invalidate_client_everywhere(client_id).await?;
        self.record_event(
            p,
            Some(&c.org_id),
            "client_secret.retire",
            Some(client_id),
            meta,
            serde_json::json!({ "secret_id": secret_id }),
        )
        .await
    }

    /// Issues a token for a client from the management API (the console's "create access token").
    pub async fn client_token(
        &self,
        p: &Principal,
        client_id: &str,
        scope: Option<&str>,
        meta: &RequestMeta,
    ) -> Result<IssuedToken> {
        let (c, _, _) = self.client_in_reach(p, client_id).await?;
        let cached = self
            .cached_client(client_id)
            .await?
            .ok_or(Error::NotFound("OAuth client"))?;
        let issued = self.mint(&cached, scope).map_err(|e| match e {
            OAuthError::InvalidScope(m) => Error::invalid("scope", m),
            _ => Error::Storage("no signing key is active".into()),
        })?;
        self.record_event(
            p,
            Some(&c.org_id),
            "access_token.issue",
            Some(client_id),
            meta,
            serde_json::json!({ "scope": issued.scope, "via": "management" }),
        )
        .await?;
        Ok(issued)
    }

    async fn invalidate_client_everywhere(&self, client_id: &str) -> Result<()> {
        self.oauth.invalidate_client(client_id);
        self.store()
            .publish(&Invalidation::Client(client_id.to_string()))
            .await
    }
}

/// The outcome of a revocation request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeOutcome {
    Revoked,
    /// Not a token of ours at all (seed 000 answers this with an error body).
    Unknown,
}

fn client_principal(c: &OAuthClient) -> Principal {
    Principal {
        actor: Actor::Client {
            client_id: c.client_id.clone(),
        },
        org_id: Some(c.org_id.clone()),
        project_id: Some(c.project_id.clone()),
        permissions: crate::perm::PermSet::EMPTY,
        scopes: c.scopes.clone(),
    }
}

fn client_details(c: &OAuthClient) -> serde_json::Value {
    serde_json::json!({
        "name": c.name,
        "scopes": c.scopes,
        "project_id": c.project_id,
        "access_token_ttl_seconds": c.access_token_ttl_seconds,
        "token_format": c.token_format.as_str(),
        "signing_alg": c.signing_alg.map(|a| a.as_str()),
        "audience": c.audience,
        "secret_rotation_days": c.secret_rotation_days,
    })
}

fn rfc3339_minute(m: i64) -> String {
    from_ms(m * 60_000)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl Keyplane {
    async fn introspect_api_key(&self, token: &str) -> Option<Introspection> {
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
            aud: None,
            org_id: key.org_id().to_string(),
            project_id: key.project_id().to_string(),
        })
    }
}
