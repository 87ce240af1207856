//! The [`Verifier`]: discovery (RFC 8414), the JWKS cache with rate-limited refetches, and
//! introspection (RFC 7662) with its positive and negative caches. Everything that does I/O.

use crate::cache::{key_of, TtlCache};
use crate::config::{IntrospectionAuth, Settings, VerifierBuilder};
use crate::dpop::{self, ProofRequest, ReplayCache};
use crate::error::{AuthError, InvalidReason, ProofReason};
use crate::identity::{split_scopes, CredentialKind, Identity};
use crate::jwt::{self, Confirmation, KeySet, PublicKey};
use http::header::{ACCEPT, AUTHORIZATION};
use http::{HeaderMap, Method, Uri};
use serde::Deserialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime};

/// The least time between two attempts at something that has never succeeded (discovery, the
/// first JWKS fetch), so an unreachable issuer is not asked on every request.
const RETRY_GAP: Duration = Duration::from_secs(1);

/// Checks bearer credentials for one issuer. Cheap to clone (one `Arc`); share one per
/// process so every route uses the same caches.
///
/// - A JWT access token is verified locally against the issuer's JWKS (`ES256`, `EdDSA`;
///   `typ: at+jwt`; `iss`, `aud`, `exp`, `nbf`), and also introspected if
///   [`introspect_jwts`](VerifierBuilder::introspect_jwts) is on.
/// - A credential with the opaque-token prefix (`kpt_`) or the API-key prefix (`kp_`) is
///   introspected, and the answer cached briefly.
/// - Anything else is refused without a network call.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    s: Settings,
    http: reqwest::Client,
    endpoints: OnceLock<Endpoints>,
    /// Held while discovering; the time of the last failed attempt.
    discovery: tokio::sync::Mutex<Option<Instant>>,
    keys: RwLock<Arc<Jwks>>,
    /// Held while fetching the JWKS; the time of the last attempt.
    jwks_fetch: tokio::sync::Mutex<Option<Instant>>,
    positive: TtlCache<Arc<Identity>>,
    negative: TtlCache<InvalidReason>,
    warned_not_accepted: AtomicBool,
    /// The `jti`s of accepted DPoP proofs (per process: see [`ReplayCache`]).
    replay: ReplayCache,
    warned_no_public_url: AtomicBool,
}

#[derive(Default)]
struct Jwks {
    set: KeySet,
    fetched_at: Option<Instant>,
}

#[derive(Debug)]
struct Endpoints {
    jwks_uri: Option<String>,
    introspection_endpoint: Option<String>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.inner.s;
        f.debug_struct("Verifier")
            .field("issuer", &s.issuer)
            .field("reach_at", &s.reach_at)
            .field("audiences", &s.audiences)
            .field("introspection", &s.introspection)
            .field("introspect_jwts", &s.introspect_jwts)
            .finish_non_exhaustive()
    }
}

/// An RFC 7662 §2.2 answer, as far as this verifier reads it.
#[derive(Deserialize)]
struct IntrospectionAnswer {
    active: bool,
    sub: Option<String>,
    client_id: Option<String>,
    scope: Option<String>,
    exp: Option<i64>,
    nbf: Option<i64>,
    iss: Option<String>,
    aud: Option<Audience>,
    jti: Option<String>,
    username: Option<String>,
    /// keyplane's extension: `access_token` or `api_key`.
    credential_type: Option<String>,
    /// `DPoP` for a DPoP-bound token (RFC 9449 §6.2), else `Bearer`.
    token_type: Option<String>,
    /// `{"jkt": …}` for a DPoP-bound token.
    cnf: Option<Confirmation>,
    /// RFC 8693 §4.1: who acts for `sub`.
    act: Option<jwt::Act>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Metadata {
    issuer: String,
    jwks_uri: Option<String>,
    introspection_endpoint: Option<String>,
}

impl Verifier {
    /// Starts configuring a verifier for tokens issued by `issuer` (e.g.
    /// `https://auth.example.com`); its metadata is read from
    /// `{issuer}/.well-known/oauth-authorization-server`.
    pub fn builder(issuer: &str) -> VerifierBuilder {
        VerifierBuilder::new(issuer)
    }

    pub(crate) fn from_settings(s: Settings, http: reqwest::Client) -> Self {
        let s_replay_capacity = s.dpop_replay_capacity;
        Self {
            inner: Arc::new(Inner {
                positive: TtlCache::new(s.cache_capacity),
                negative: TtlCache::new(s.cache_capacity),
                s,
                http,
                endpoints: OnceLock::new(),
                discovery: tokio::sync::Mutex::new(None),
                keys: RwLock::new(Arc::new(Jwks::default())),
                jwks_fetch: tokio::sync::Mutex::new(None),
                warned_not_accepted: AtomicBool::new(false),
                replay: ReplayCache::new(s_replay_capacity),
                warned_no_public_url: AtomicBool::new(false),
            }),
        }
    }

    /// The issuer tokens must carry.
    pub fn issuer(&self) -> &str {
        &self.inner.s.issuer
    }

    /// This server as an RFC 9728 protected resource, when the builder set one
    /// ([`VerifierBuilder::protected_resource`](crate::VerifierBuilder::protected_resource)).
    pub fn protected_resource(&self) -> Option<&crate::resource::ProtectedResource> {
        self.inner.s.protected_resource.as_ref()
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.inner.s
    }

    /// Discovers the endpoints and fetches the JWKS now, so a misconfiguration shows at start
    /// rather than on the first request. Optional: everything is also fetched on demand.
    pub async fn warm_up(&self) -> Result<(), AuthError> {
        let endpoints = self.endpoints().await?;
        if endpoints.jwks_uri.is_some() {
            let set = self.fetch_jwks().await.map_err(AuthError::Unavailable)?;
            *self.inner.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Jwks {
                set,
                fetched_at: Some(Instant::now()),
            });
        }
        Ok(())
    }

    /// Verifies the bearer credential of a request's headers (RFC 6750 §2.1).
    ///
    /// Headers alone do not say which request a DPoP proof must be for: a DPoP-bound token is
    /// refused here whatever its scheme. Use [`authenticate_request`](Self::authenticate_request)
    /// (as [`VerifyLayer`](crate::VerifyLayer) does) to accept `Authorization: DPoP`.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Identity, AuthError> {
        self.authenticate_with(None, headers).await
    }

    /// Verifies the credential of a request: `Authorization: Bearer <token>` for a token that
    /// is not DPoP-bound, or `Authorization: DPoP <token>` with exactly one `DPoP` header
    /// holding a valid proof (RFC 9449 §4.3, §7) for this method and URL (the configured
    /// [`public_url`](VerifierBuilder::public_url) followed by `uri`'s path), signed by the key
    /// the token is bound to (`cnf.jkt`), and not seen before within the `iat` window.
    pub async fn authenticate_request(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<Identity, AuthError> {
        self.authenticate_with(Some((method, uri)), headers).await
    }

    async fn authenticate_with(
        &self,
        req: Option<(&Method, &Uri)>,
        headers: &HeaderMap,
    ) -> Result<Identity, AuthError> {
        let (is_dpop, token) = credential(headers)?;
        if !is_dpop {
            let id = self.verify(token).await?;
            if id.confirmation_jkt.is_some() {
                tracing::debug!(target: "keyplane_verify", "a DPoP-bound token presented as Bearer: refused");
                return Err(AuthError::InvalidToken(InvalidReason::DpopBound));
            }
            return Ok(id);
        }
        // The proof first: it costs no network call.
        let proof = self.check_proof(req, headers, token).inspect_err(|e| {
            tracing::debug!(target: "keyplane_verify", why = %e, "DPoP proof refused");
        })?;
        let id = self.verify(token).await?;
        let Some(jkt) = id.confirmation_jkt.as_deref() else {
            tracing::debug!(target: "keyplane_verify", "a token that is not DPoP-bound presented with the DPoP scheme: refused");
            return Err(AuthError::InvalidToken(InvalidReason::NotDpopBound));
        };
        if jkt != proof.jkt {
            tracing::debug!(target: "keyplane_verify", "the DPoP proof's key is not the one the token is bound to");
            return Err(AuthError::InvalidDpopProof(ProofReason::KeyMismatch));
        }
        // Remembered until its `iat` leaves the window.
        let left = proof.iat + self.inner.s.dpop_iat_window.as_secs() as i64 - unix_now();
        let now = Instant::now();
        let until = now + Duration::from_secs(left.max(0) as u64 + 1);
        match self.inner.replay.insert(&proof.jkt, &proof.jti, until, now) {
            Ok(true) => Ok(id),
            Ok(false) => {
                tracing::debug!(target: "keyplane_verify", "a DPoP proof replayed: refused");
                Err(AuthError::InvalidDpopProof(ProofReason::Replayed))
            }
            Err(()) => Err(AuthError::Unavailable(
                "the DPoP replay cache is full (see dpop_replay_capacity)".into(),
            )),
        }
    }

    fn check_proof(
        &self,
        req: Option<(&Method, &Uri)>,
        headers: &HeaderMap,
        token: &str,
    ) -> Result<dpop::CheckedProof, AuthError> {
        let s = &self.inner.s;
        let mut proofs = headers.get_all("dpop").iter();
        let proof = match (proofs.next(), proofs.next()) {
            (None, _) => return Err(AuthError::InvalidDpopProof(ProofReason::Missing)),
            (Some(_), Some(_)) => return Err(AuthError::InvalidDpopProof(ProofReason::Multiple)),
            (Some(p), None) => p
                .to_str()
                .map_err(|_| AuthError::InvalidDpopProof(ProofReason::Malformed))?,
        };
        let Some((method, uri)) = req else {
            return Err(AuthError::InvalidDpopProof(ProofReason::Htu));
        };
        if s.public_urls.is_empty() {
            if !self
                .inner
                .warned_no_public_url
                .swap(true, Ordering::Relaxed)
            {
                tracing::warn!(target: "keyplane_verify", "a request used the DPoP scheme, but no public URL is configured to check its proof's htu against: refusing it (configure public_url)");
            }
            return Err(AuthError::InvalidDpopProof(ProofReason::Htu));
        }
        let path = uri.path();
        let path = if path.is_empty() { "/" } else { path };
        let req = ProofRequest {
            htm: method.as_str(),
            htus: s.public_urls.iter().map(|u| format!("{u}{path}")).collect(),
            access_token: token,
            now_s: unix_now(),
            iat_window: s.dpop_iat_window,
        };
        dpop::check_proof(proof, &req).map_err(AuthError::InvalidDpopProof)
    }

    /// Verifies one bearer credential: its signature or introspection, not how it was
    /// presented. A DPoP-bound token's [`Identity::confirmation_jkt`] is set; checking its
    /// proof is [`authenticate_request`](Self::authenticate_request)'s job.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let result = if !is_b64token(token) {
            Err(AuthError::InvalidToken(InvalidReason::Malformed))
        } else if self
            .inner
            .s
            .introspected_prefixes
            .iter()
            .any(|p| token.starts_with(p.as_str()))
        {
            self.introspect(token, None).await
        } else if jwt::looks_like_jwt(token) {
            self.verify_jwt(token).await
        } else {
            Err(AuthError::InvalidToken(InvalidReason::Malformed))
        };
        match &result {
            Err(AuthError::InvalidToken(why)) => {
                tracing::debug!(target: "keyplane_verify", %why, "credential refused");
            }
            Err(AuthError::Unavailable(why)) => {
                tracing::warn!(target: "keyplane_verify", %why, "credential could not be checked");
            }
            _ => {}
        }
        result
    }

    /// Drops any cached introspection answer for `token` (e.g. after revoking it yourself).
    pub fn forget(&self, token: &str) {
        let key = key_of(token);
        self.inner.positive.remove(&key);
        self.inner.negative.remove(&key);
    }

    async fn verify_jwt(&self, token: &str) -> Result<Identity, AuthError> {
        let (kid, alg) = jwt::header(token).map_err(AuthError::InvalidToken)?;
        let key = self.signing_key(&kid).await?;
        let local =
            jwt::verify(token, alg, &key, &self.inner.s).map_err(AuthError::InvalidToken)?;
        if self.inner.s.introspect_jwts {
            self.introspect(token, Some(local)).await
        } else {
            Ok(local)
        }
    }

    /// The key for `kid`, refetching the JWKS when it is older than its maximum age, or when
    /// `kid` is unknown and the last fetch was at least the refetch interval ago.
    async fn signing_key(&self, kid: &str) -> Result<PublicKey, AuthError> {
        let s = &self.inner.s;
        let is_fresh = |j: &Jwks| j.fetched_at.is_some_and(|t| t.elapsed() < s.jwks_max_age);
        let current = self.current_jwks();
        if is_fresh(&current) {
            if let Some(k) = current.set.get(kid) {
                return Ok(k.clone());
            }
        }
        // Slow path, one at a time: whoever waited may find the work done.
        let mut last_attempt = self.inner.jwks_fetch.lock().await;
        let current = self.current_jwks();
        let known = current.set.get(kid).cloned();
        if let Some(k) = known.as_ref().filter(|_| is_fresh(&current)) {
            return Ok(k.clone());
        }
        let gap = if current.fetched_at.is_none() {
            RETRY_GAP.min(s.jwks_refetch_interval)
        } else {
            s.jwks_refetch_interval
        };
        if last_attempt.is_none_or(|t| t.elapsed() >= gap) {
            *last_attempt = Some(Instant::now());
            match self.fetch_jwks().await {
                Ok(set) => {
                    tracing::debug!(target: "keyplane_verify", keys = set.len(), %kid, "JWKS fetched");
                    let found = set.get(kid).cloned();
                    *self.inner.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Jwks {
                        set,
                        fetched_at: Some(Instant::now()),
                    });
                    return found.ok_or(AuthError::InvalidToken(InvalidReason::UnknownKey));
                }
                // A failed refresh keeps trusting the keys already known.
                Err(e) => {
                    return known.ok_or(AuthError::Unavailable(e));
                }
            }
        }
        match known {
            Some(k) => Ok(k),
            None if current.fetched_at.is_none() => Err(AuthError::Unavailable(
                "the JWKS could not be fetched yet".into(),
            )),
            None => Err(AuthError::InvalidToken(InvalidReason::UnknownKey)),
        }
    }

    fn current_jwks(&self) -> Arc<Jwks> {
        Arc::clone(&self.inner.keys.read().unwrap_or_else(|p| p.into_inner()))
    }

    async fn fetch_jwks(&self) -> Result<KeySet, String> {
        let endpoints = self.endpoints().await.map_err(|e| e.to_string())?;
        let uri = endpoints
            .jwks_uri
            .as_deref()
            .ok_or("the issuer's metadata names no jwks_uri")?;
        let doc: serde_json::Value = self.get_json(uri).await?;
        KeySet::parse(&doc).map_err(|e| format!("{uri}: {e}"))
    }

    async fn endpoints(&self) -> Result<&Endpoints, AuthError> {
        if let Some(e) = self.inner.endpoints.get() {
            return Ok(e);
        }
        let mut last_failure = self.inner.discovery.lock().await;
        if let Some(e) = self.inner.endpoints.get() {
            return Ok(e);
        }
        if last_failure.is_some_and(|t| t.elapsed() < RETRY_GAP) {
            return Err(AuthError::Unavailable(
                "discovery failed moments ago".into(),
            ));
        }
        match self.discover().await {
            Ok(e) => {
                tracing::debug!(target: "keyplane_verify", endpoints = ?e, "issuer discovered");
                Ok(self.inner.endpoints.get_or_init(|| e))
            }
            Err(why) => {
                *last_failure = Some(Instant::now());
                Err(AuthError::Unavailable(why))
            }
        }
    }

    async fn discover(&self) -> Result<Endpoints, String> {
        let s = &self.inner.s;
        let base = s.reach_at.as_deref().unwrap_or(&s.issuer);
        let url = format!("{base}/.well-known/oauth-authorization-server");
        let md: Metadata = self.get_json(&url).await?;
        // RFC 8414 §3.3: the metadata must name the issuer it was fetched for.
        if md.issuer.trim_end_matches('/') != s.issuer {
            return Err(format!(
                "the metadata at {url} is for the issuer {:?}, not {:?}",
                md.issuer, s.issuer
            ));
        }
        Ok(Endpoints {
            jwks_uri: md.jwks_uri.map(|u| self.rebase(u)),
            introspection_endpoint: md.introspection_endpoint.map(|u| self.rebase(u)),
        })
    }

    /// Moves an endpoint under the issuer onto the `reach_at` URL.
    fn rebase(&self, url: String) -> String {
        let s = &self.inner.s;
        match (&s.reach_at, url.strip_prefix(&s.issuer)) {
            (Some(base), Some(rest)) if rest.is_empty() || rest.starts_with('/') => {
                format!("{base}{rest}")
            }
            _ => url,
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let res = self
            .inner
            .http
            .get(url)
            .header(ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !res.status().is_success() {
            return Err(format!("GET {url}: {}", res.status()));
        }
        res.json()
            .await
            .map_err(|e| format!("GET {url}: unreadable answer: {e}"))
    }

    /// Asks the introspection endpoint about `token`, through the caches. With `local` (a JWT
    /// already verified locally) the answer only confirms it is still active.
    async fn introspect(
        &self,
        token: &str,
        local: Option<Identity>,
    ) -> Result<Identity, AuthError> {
        let inner = &self.inner;
        let key = key_of(token);
        let now = Instant::now();
        if let Some(reason) = inner.negative.get(&key, now) {
            return Err(AuthError::InvalidToken(reason));
        }
        if let Some(id) = inner.positive.get(&key, now) {
            if id.is_expired_at(SystemTime::now()) {
                return Err(AuthError::InvalidToken(InvalidReason::Expired));
            }
            return Ok(Identity::clone(&id));
        }
        let Some(auth) = &inner.s.introspection else {
            if !inner.warned_not_accepted.swap(true, Ordering::Relaxed) {
                tracing::warn!(target: "keyplane_verify", "an opaque token or API key was presented, but no introspection credentials are configured: refusing it (configure introspect_with_client or introspect_with_api_key)");
            }
            return Err(AuthError::InvalidToken(InvalidReason::NotAccepted));
        };
        let answer = self.call_introspection(auth, token).await?;
        match self.interpret(answer, token, local) {
            Ok(id) => {
                let mut ttl = inner.s.positive_ttl;
                if let Some(exp) = id.expires_at {
                    let left = exp
                        .duration_since(SystemTime::now())
                        .unwrap_or(Duration::ZERO);
                    ttl = ttl.min(left);
                }
                inner.positive.insert(key, Arc::new(id.clone()), ttl, now);
                Ok(id)
            }
            Err(reason) => {
                inner
                    .negative
                    .insert(key, reason, inner.s.negative_ttl, now);
                Err(AuthError::InvalidToken(reason))
            }
        }
    }

    async fn call_introspection(
        &self,
        auth: &IntrospectionAuth,
        token: &str,
    ) -> Result<IntrospectionAnswer, AuthError> {
        let endpoint = self
            .endpoints()
            .await?
            .introspection_endpoint
            .as_deref()
            .ok_or_else(|| {
                AuthError::Unavailable(
                    "the issuer's metadata names no introspection_endpoint".into(),
                )
            })?;
        let req = self
            .inner
            .http
            .post(endpoint)
            .header(ACCEPT, "application/json")
            .form(&[("token", token)]);
        let req = match auth {
            // RFC 6749 §2.3.1: the id and secret are form-encoded before the Basic encoding.
            IntrospectionAuth::Client { id, secret } => {
                req.basic_auth(form_encode(id), Some(form_encode(secret)))
            }
            IntrospectionAuth::ApiKey(key) => req.bearer_auth(key),
        };
        let res = req
            .send()
            .await
            .map_err(|e| AuthError::Unavailable(format!("POST {endpoint}: {e}")))?;
        let status = res.status();
        if status == http::StatusCode::UNAUTHORIZED || status == http::StatusCode::FORBIDDEN {
            tracing::error!(target: "keyplane_verify", %status, %endpoint, "the introspection endpoint refused this resource server's own credentials: check introspect_with_client / introspect_with_api_key (an API key needs the tokens:introspect permission)");
        }
        if !status.is_success() {
            return Err(AuthError::Unavailable(format!("POST {endpoint}: {status}")));
        }
        res.json()
            .await
            .map_err(|e| AuthError::Unavailable(format!("POST {endpoint}: unreadable answer: {e}")))
    }

    fn interpret(
        &self,
        a: IntrospectionAnswer,
        token: &str,
        local: Option<Identity>,
    ) -> Result<Identity, InvalidReason> {
        let s = &self.inner.s;
        if !a.active {
            return Err(InvalidReason::Inactive);
        }
        if a.iss
            .as_deref()
            .is_some_and(|i| i.trim_end_matches('/') != s.issuer)
        {
            return Err(InvalidReason::Issuer);
        }
        let aud_ok = match &a.aud {
            None => true,
            Some(Audience::One(x)) => s.audiences.contains(x),
            Some(Audience::Many(xs)) => xs.iter().any(|x| s.audiences.contains(x)),
        };
        if !aud_ok {
            return Err(InvalidReason::Audience);
        }
        let now = unix_now();
        let leeway = s.leeway.as_secs() as i64;
        if a.exp.is_some_and(|e| e + leeway <= now) {
            return Err(InvalidReason::Expired);
        }
        if a.nbf.is_some_and(|n| n - leeway > now) {
            return Err(InvalidReason::NotYetValid);
        }
        if let Some(local) = local {
            return Ok(local);
        }
        let kind = match a.credential_type.as_deref() {
            Some("api_key") => CredentialKind::ApiKey,
            Some("access_token") => CredentialKind::OpaqueAccessToken,
            _ if token.starts_with(s.api_key_prefix.as_str()) => CredentialKind::ApiKey,
            _ => CredentialKind::OpaqueAccessToken,
        };
        let confirmation_jkt = a.cnf.and_then(|c| c.jkt);
        if a.token_type
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case("dpop"))
            && confirmation_jkt.is_none()
        {
            return Err(InvalidReason::Claims);
        }
        let subject = a
            .sub
            .or_else(|| a.client_id.clone())
            .ok_or(InvalidReason::Claims)?;
        Ok(Identity {
            subject,
            client_id: a.client_id,
            scopes: split_scopes(a.scope.as_deref()),
            kind,
            expires_at: a
                .exp
                .map(|e| SystemTime::UNIX_EPOCH + Duration::from_secs(e.max(0) as u64)),
            credential_id: a.jti,
            name: a.username,
            confirmation_jkt,
            actor: a.act.map(|a| a.sub),
        })
    }
}

/// The credential of a request: one `Authorization` header with the `Bearer` scheme (RFC 6750
/// §2.1) or the `DPoP` scheme (RFC 9449 §7.1), any case; `true` for `DPoP`. Another scheme
/// counts as no credential.
pub(crate) fn credential(headers: &HeaderMap) -> Result<(bool, &str), AuthError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(AuthError::Missing);
    };
    if values.next().is_some() {
        return Err(AuthError::InvalidRequest(
            "more than one Authorization header",
        ));
    }
    let value = value
        .to_str()
        .map_err(|_| AuthError::InvalidRequest("the Authorization header is not ASCII"))?;
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let is_dpop = if scheme.eq_ignore_ascii_case("bearer") {
        false
    } else if scheme.eq_ignore_ascii_case("dpop") {
        true
    } else {
        return Err(AuthError::Missing);
    };
    Ok((is_dpop, rest.trim_matches(' ')))
}

/// RFC 6750 §2.1 `b64token`, and no longer than the verifier reads.
fn is_b64token(t: &str) -> bool {
    let body = t.trim_end_matches('=');
    !body.is_empty()
        && t.len() <= jwt::MAX_TOKEN_LEN
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

fn form_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_bearer_credential_is_read_strictly() {
        assert_eq!(credential(&headers(&[])), Err(AuthError::Missing));
        assert_eq!(
            credential(&headers(&["Basic abc"])),
            Err(AuthError::Missing)
        );
        assert_eq!(credential(&headers(&["Bearer kp_1"])), Ok((false, "kp_1")));
        assert_eq!(
            credential(&headers(&["bearer  kp_1 "])),
            Ok((false, "kp_1"))
        );
        assert_eq!(credential(&headers(&["dpop kpt_1"])), Ok((true, "kpt_1")));
        assert_eq!(credential(&headers(&["Bearer"])), Ok((false, "")));
        assert!(matches!(
            credential(&headers(&["Bearer a", "Bearer b"])),
            Err(AuthError::InvalidRequest(_))
        ));
        assert!(is_b64token("kp_abc") && is_b64token("eyJ.eyJ.x-_") && is_b64token("a+/=="));
        for bad in ["", "==", "a b", "a\"b", "é", &"a".repeat(9000)] {
            assert!(!is_b64token(bad), "{bad:?}");
        }
        assert_eq!(form_encode("kpc_1:x y"), "kpc_1%3Ax+y");
    }

    #[tokio::test]
    async fn garbage_never_reaches_the_network() {
        // The issuer does not exist: any network call would be a 503, not a 401.
        let v = Verifier::builder("http://127.0.0.1:9")
            .introspect_with_api_key("kp_introspector")
            .build()
            .unwrap();
        for t in ["nope", "kpa_admin", "eyJhbGciOiJub25lIn0.e30", "a b", ""] {
            assert_eq!(
                v.verify(t).await,
                Err(AuthError::InvalidToken(InvalidReason::Malformed)),
                "{t:?}"
            );
        }
        assert!(matches!(
            v.verify("kpt_abc").await,
            Err(AuthError::Unavailable(_))
        ));
    }

    #[test]
    fn endpoints_under_the_issuer_are_rebased() {
        let v = Verifier::builder("https://auth.example")
            .reach_at("http://keyplane:8080/")
            .build()
            .unwrap();
        assert_eq!(
            v.rebase("https://auth.example/.well-known/jwks.json".into()),
            "http://keyplane:8080/.well-known/jwks.json"
        );
        assert_eq!(
            v.rebase("https://auth.example.evil/x".into()),
            "https://auth.example.evil/x"
        );
        assert_eq!(
            v.rebase("https://cdn.example/jwks".into()),
            "https://cdn.example/jwks"
        );
    }
}

/// The DPoP rules end to end through [`Verifier::authenticate_request`], with a JWKS put in
/// place of a fetched one (no issuer).
#[cfg(test)]
mod dpop_tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine;
    use http::HeaderValue;
    use jsonwebtoken::{EncodingKey, Header};
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    use serde_json::{json, Value};

    const ISS: &str = "https://auth.example";
    const API: &str = "https://API.example:443";
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    enum Key {
        Ec(EcdsaKeyPair),
        Ed(Ed25519KeyPair),
    }

    impl Key {
        fn ec() -> Key {
            let rng = SystemRandom::new();
            let der = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            Key::Ec(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.as_ref(), &rng)
                    .unwrap(),
            )
        }

        fn ed() -> Key {
            let der = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
            Key::Ed(Ed25519KeyPair::from_pkcs8(der.as_ref()).unwrap())
        }

        fn alg(&self) -> &'static str {
            match self {
                Key::Ec(_) => "ES256",
                Key::Ed(_) => "EdDSA",
            }
        }

        fn jwk(&self) -> Value {
            match self {
                Key::Ec(k) => {
                    let p = k.public_key().as_ref();
                    json!({"kty": "EC", "crv": "P-256", "x": B64.encode(&p[1..33]), "y": B64.encode(&p[33..65])})
                }
                Key::Ed(k) => {
                    json!({"kty": "OKP", "crv": "Ed25519", "x": B64.encode(k.public_key().as_ref())})
                }
            }
        }

        fn jkt(&self) -> String {
            dpop::thumbprint(&self.jwk()).unwrap()
        }

        fn sign(&self, msg: &[u8]) -> Vec<u8> {
            match self {
                Key::Ec(k) => k.sign(&SystemRandom::new(), msg).unwrap().as_ref().to_vec(),
                Key::Ed(k) => k.sign(msg).as_ref().to_vec(),
            }
        }
    }

    fn jws(key: &Key, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = key.sign(input.as_bytes());
        format!("{input}.{}", B64.encode(sig))
    }

    fn proof_parts(key: &Key, htm: &str, htu: &str, token: &str) -> (Value, Value) {
        (
            json!({"typ": "dpop+jwt", "alg": key.alg(), "jwk": key.jwk()}),
            json!({"jti": format!("p{}", NEXT.fetch_add(1, Ordering::Relaxed)), "htm": htm, "htu": htu,
                   "iat": unix_now(), "ath": dpop::ath(token)}),
        )
    }

    fn proof(key: &Key, htm: &str, htu: &str, token: &str) -> String {
        let (h, c) = proof_parts(key, htm, htu, token);
        jws(key, &h, &c)
    }

    /// A verifier trusting `issuer`'s key, and a signer for access tokens.
    fn setup() -> (Verifier, impl Fn(Option<&str>) -> String) {
        let rng = SystemRandom::new();
        let der = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.as_ref(), &rng).unwrap();
        let p = pair.public_key().as_ref();
        let jwk = json!({"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": "k1",
            "x": B64.encode(&p[1..33]), "y": B64.encode(&p[33..65])});
        let v = Verifier::builder(ISS)
            .public_url("https://api.example/")
            .build()
            .unwrap();
        *v.inner.keys.write().unwrap() = Arc::new(Jwks {
            set: KeySet::parse(&json!({ "keys": [jwk] })).unwrap(),
            fetched_at: Some(Instant::now()),
        });
        let enc = EncodingKey::from_ec_der(der.as_ref());
        let mint = move |jkt: Option<&str>| loop {
            let mut h = Header::new(jsonwebtoken::Algorithm::ES256);
            h.typ = Some("at+jwt".into());
            h.kid = Some("k1".into());
            let now = unix_now();
            let mut c = json!({"iss": ISS, "aud": ISS, "sub": "kpc_1", "client_id": "kpc_1",
                "exp": now + 600, "iat": now, "jti": "t1", "scope": "a:read"});
            if let Some(j) = jkt {
                c["cnf"] = json!({ "jkt": j });
            }
            let t = jsonwebtoken::encode(&h, &c, &enc).unwrap();
            // The verifier takes low-s ES256 tokens only; ring signs either.
            let sig = B64.decode(t.rsplit('.').next().unwrap()).unwrap();
            if sig[32] < 0x7f {
                return t;
            }
        };
        (v, mint)
    }

    fn request(scheme: &str, token: &str, proofs: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("{scheme} {token}")).unwrap(),
        );
        for p in proofs {
            h.append("dpop", HeaderValue::from_str(p).unwrap());
        }
        h
    }

    async fn call(
        v: &Verifier,
        method: &str,
        uri: &str,
        h: &HeaderMap,
    ) -> Result<Identity, AuthError> {
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        v.authenticate_request(&m, &uri.parse().unwrap(), h).await
    }

    fn bad(r: ProofReason) -> Result<Identity, AuthError> {
        Err(AuthError::InvalidDpopProof(r))
    }

    #[tokio::test]
    async fn a_bound_token_needs_the_dpop_scheme_and_a_proof_by_its_key() {
        let (v, mint) = setup();
        let key = Key::ec();
        let token = mint(Some(&key.jkt()));
        let htu = format!("{API}/v1/things");
        let uri = "/v1/things?page=2";

        // Accepted: the identity says what the token is bound to.
        let p = proof(&key, "POST", &htu, &token);
        let id = call(&v, "POST", uri, &request("DPoP", &token, &[&p]))
            .await
            .unwrap();
        assert_eq!(id.confirmation_jkt.as_deref(), Some(key.jkt().as_str()));
        // The same proof again: replayed.
        assert_eq!(
            call(&v, "POST", uri, &request("DPoP", &token, &[&p])).await,
            bad(ProofReason::Replayed)
        );

        // As Bearer (with or without a proof), and through `authenticate`.
        let e = call(&v, "POST", uri, &request("Bearer", &token, &[])).await;
        assert_eq!(e, Err(AuthError::InvalidToken(InvalidReason::DpopBound)));
        assert!(e.unwrap_err().is_dpop_challenge());
        let p = proof(&key, "POST", &htu, &token);
        assert_eq!(
            call(&v, "POST", uri, &request("Bearer", &token, &[&p])).await,
            Err(AuthError::InvalidToken(InvalidReason::DpopBound))
        );
        assert!(v
            .authenticate(&request("DPoP", &token, &[&p]))
            .await
            .is_err());

        // Missing and repeated proofs.
        assert_eq!(
            call(&v, "POST", uri, &request("DPoP", &token, &[])).await,
            bad(ProofReason::Missing)
        );
        let (p1, p2) = (
            proof(&key, "POST", &htu, &token),
            proof(&key, "POST", &htu, &token),
        );
        assert_eq!(
            call(&v, "POST", uri, &request("DPoP", &token, &[&p1, &p2])).await,
            bad(ProofReason::Multiple)
        );

        let check = |h: Value, c: Value, k: &Key| jws(k, &h, &c);
        let base = || proof_parts(&key, "POST", &htu, &token);
        let cases: Vec<(String, ProofReason)> = vec![
            {
                let (mut h, c) = base();
                h["typ"] = json!("JWT");
                (check(h, c, &key), ProofReason::Type)
            },
            {
                let (h, c) = base();
                let good = check(h, c, &key);
                let (head, _) = good.rsplit_once('.').unwrap();
                (
                    format!("{head}.{}", B64.encode([7u8; 64])),
                    ProofReason::Signature,
                )
            },
            {
                let (mut h, c) = base();
                h["jwk"]["d"] = json!(B64.encode([1u8; 32]));
                (check(h, c, &key), ProofReason::Jwk)
            },
            {
                let (mut h, c) = base();
                h["alg"] = json!("HS256");
                (check(h, c, &key), ProofReason::Algorithm)
            },
            {
                let (h, mut c) = base();
                c["htm"] = json!("GET");
                (check(h, c, &key), ProofReason::Htm)
            },
            {
                let (h, mut c) = base();
                c["htu"] = json!(format!("{API}/v1/other"));
                (check(h, c, &key), ProofReason::Htu)
            },
            {
                let (h, mut c) = base();
                c["htu"] = json!("http://api.example/v1/things");
                (check(h, c, &key), ProofReason::Htu)
            },
            {
                let (h, mut c) = base();
                c["iat"] = json!(unix_now() - 120);
                (check(h, c, &key), ProofReason::Iat)
            },
            {
                let (h, mut c) = base();
                c["ath"] = json!(dpop::ath("another token"));
                (check(h, c, &key), ProofReason::Ath)
            },
            {
                let (h, mut c) = base();
                c.as_object_mut().unwrap().remove("jti");
                (check(h, c, &key), ProofReason::Claims)
            },
        ];
        for (p, why) in cases {
            assert_eq!(
                call(&v, "POST", uri, &request("DPoP", &token, &[&p])).await,
                bad(why),
                "{why:?}"
            );
        }

        // A valid proof, by another key than the token's.
        let other = Key::ed();
        let p = proof(&other, "POST", &htu, &token);
        assert_eq!(
            call(&v, "POST", uri, &request("DPoP", &token, &[&p])).await,
            bad(ProofReason::KeyMismatch)
        );
        // ... which the token bound to it takes (EdDSA; scheme and host in any case).
        let token2 = mint(Some(&other.jkt()));
        let p = proof(&other, "POST", "https://api.EXAMPLE/v1/things", &token2);
        assert!(call(&v, "POST", uri, &request("dpop", &token2, &[&p]))
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn an_unbound_token_is_bearer_only() {
        let (v, mint) = setup();
        let key = Key::ec();
        let token = mint(None);
        let id = call(&v, "GET", "/x", &request("Bearer", &token, &[]))
            .await
            .unwrap();
        assert_eq!(id.confirmation_jkt, None);
        let p = proof(&key, "GET", &format!("{API}/x"), &token);
        assert_eq!(
            call(&v, "GET", "/x", &request("DPoP", &token, &[&p])).await,
            Err(AuthError::InvalidToken(InvalidReason::NotDpopBound))
        );
    }

    #[tokio::test]
    async fn without_a_public_url_the_dpop_scheme_is_refused() {
        let (v, mint) = setup();
        let v = Verifier::from_settings(
            Settings {
                public_urls: Vec::new(),
                ..v.settings().clone()
            },
            reqwest::Client::new(),
        );
        let key = Key::ec();
        let token = mint(Some(&key.jkt()));
        let p = proof(&key, "GET", &format!("{API}/x"), &token);
        assert_eq!(
            call(&v, "GET", "/x", &request("DPoP", &token, &[&p])).await,
            bad(ProofReason::Htu)
        );
    }

    #[test]
    fn introspection_answers_carry_the_binding() {
        let v = Verifier::builder(ISS).build().unwrap();
        let answer = |extra: Value| -> IntrospectionAnswer {
            let mut a = json!({"active": true, "sub": "kpc_1", "client_id": "kpc_1", "scope": "a"});
            a.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            serde_json::from_value(a).unwrap()
        };
        let id = v
            .interpret(
                answer(json!({"token_type": "DPoP", "cnf": {"jkt": "abc"}})),
                "kpt_1",
                None,
            )
            .unwrap();
        assert_eq!(id.confirmation_jkt.as_deref(), Some("abc"));
        let id = v
            .interpret(answer(json!({"token_type": "Bearer"})), "kpt_1", None)
            .unwrap();
        assert_eq!(id.confirmation_jkt, None);
        assert_eq!(
            v.interpret(answer(json!({"token_type": "DPoP"})), "kpt_1", None)
                .err(),
            Some(InvalidReason::Claims)
        );
    }
}
