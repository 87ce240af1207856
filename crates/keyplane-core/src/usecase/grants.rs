//! [`Keyplane`] use cases of the authorization-code grant (issue 14): apps registering
//! themselves (RFC 7591), authorization requests checked (PKCE S256, exact redirect URIs,
//! RFC 8707 `resource`), a person's consent remembered as a grant, codes redeemed once,
//! refresh tokens rotated with reuse detection, and the grants ("connected apps") listed and
//! revoked; apps blocked by the operator.

use crate::app::Keyplane;
use crate::domain::apps::{
    check_client_id_url, check_document, check_metadata, AppAuth, AppClient, AppKind,
    MetadataFetcher, MAX_METADATA_BYTES, METADATA_MAX_AGE,
};
use crate::domain::authcode::{
    check_code_challenge, check_state, code_expiry, redirect_uri_matches, redirect_with,
    scope_list, verifier_matches, AuthCode, CodeUse, Grant, RefreshToken, RefreshUse,
    MAX_CLIENT_ID_LEN, REFRESH_TTL,
};
use crate::domain::dpop::{DpopError, DpopRequest};
use crate::domain::error::{Error, Result};
use crate::domain::ids::new_id;
use crate::domain::model::Member;
use crate::domain::oauth::{IssuedToken, OAuthError};
use crate::domain::perm::{Permission, Principal};
use crate::domain::request::RequestMeta;
use crate::domain::resource::parse_resource;
use crate::domain::secret::{ct_eq, random_id_text, SecretString};
use crate::domain::settings::Registration;
use crate::store::Invalidation;
use serde_json::{json, Value};
use std::sync::Arc;

/// An authorization request's parameters, as sent (RFC 6749 §4.1.1, RFC 7636, RFC 8707).
#[derive(Debug, Default, Clone)]
pub struct AuthorizeParams {
    pub response_type: Option<String>,
    pub client_id: Option<String>,
    pub redirect_uri: Option<String>,
    pub scope: Option<String>,
    pub state: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub resources: Vec<String>,
}

/// Why an authorization request cannot go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizeError {
    /// Shown to the person, never sent to the redirect URI: the client or the redirect URI
    /// cannot be trusted (RFC 6749 §4.1.2.1).
    Page(String),
    /// Sent back to the client: this redirect URL carries the error.
    Redirect(String),
}

/// A checked authorization request: what the consent page shows and the approval uses.
#[derive(Debug, Clone)]
pub struct Authorization {
    pub app: AppClient,
    pub redirect_uri: String,
    pub state: Option<String>,
    pub code_challenge: String,
    pub resource: String,
    /// The scopes asked for (sorted; all the resource's when none were named).
    pub scopes: Vec<String>,
}

/// What the authorization endpoint does for a signed-in person.
#[derive(Debug, Clone)]
pub enum Consent {
    /// A live grant already covers the request: no question to ask.
    Given(Member),
    /// Ask the person.
    Ask(Member),
}

/// How an app authenticates at the token endpoint, as presented.
#[derive(Debug, Clone)]
pub struct AppCredentials {
    pub client_id: String,
    pub secret: Option<SecretString>,
    /// Whether HTTP Basic carried them.
    pub basic: bool,
}

/// `grant_type=authorization_code`'s parameters, as sent.
#[derive(Debug, Default)]
pub struct CodeRedemption<'a> {
    pub code: Option<&'a str>,
    pub redirect_uri: Option<&'a str>,
    pub code_verifier: Option<&'a str>,
}

/// A token response of the authorization-code grant: the access token and its refresh token.
#[derive(Debug)]
pub struct GrantTokens {
    pub token: IssuedToken,
    pub refresh_token: String,
}

/// Why a registration request was refused (RFC 7591 §3.2.2), or that the endpoint is off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterError {
    /// Registration is off: the endpoint does not exist.
    Off,
    /// Too many registrations from the caller's address within a minute: retry after this many
    /// seconds (anyone may register when it is open, so it is bounded per address).
    TooMany(u64),
    /// `registration = "token"` and no (or a wrong) initial access token.
    Unauthorized,
    Metadata {
        code: &'static str,
        description: String,
    },
    Server,
}

impl From<Error> for RegisterError {
    fn from(e: Error) -> Self {
        tracing::error!(error = %e, "storage failed on the registration endpoint");
        RegisterError::Server
    }
}

/// Registrations accepted per address per minute (each adds an app).
pub const REGISTRATIONS_PER_MINUTE: u32 = 10;
/// Client ID metadata documents fetched for the first time per address per minute (each is a
/// request keyplane makes and an app it stores).
pub const DISCOVERIES_PER_MINUTE: u32 = 20;

impl Keyplane {
    /// Counts one `kind` of unauthenticated work from the caller's address; `Some(seconds)` when
    /// the address already did `limit` of them within the minute (nothing counted then).
    fn flood_blocked(&self, kind: &str, meta: &RequestMeta, limit: u32) -> Option<u64> {
        let now = self.rt.now_ms();
        let keys = [(format!("{kind}|{}", meta.throttle_addr()), limit)];
        if let Some(wait) = self.rt.auth_failures.blocked(&keys, now) {
            return Some(wait);
        }
        self.rt.auth_failures.failed(&keys, now);
        None
    }

    // ----- registration (RFC 7591) -----

    /// Registers an app from its metadata. A confidential app's secret is in the answer, once.
    pub async fn app_register(
        &self,
        body: &[u8],
        bearer: Option<&str>,
        meta: &RequestMeta,
    ) -> Result<(AppClient, Option<SecretString>), RegisterError> {
        let rt = &self.rt;
        match &rt.settings.oauth.registration {
            Registration::Off => return Err(RegisterError::Off),
            Registration::Open => {}
            Registration::Token(want) => {
                let ok = bearer.is_some_and(|b| ct_eq(b.as_bytes(), want.expose().as_bytes()));
                if !ok {
                    return Err(RegisterError::Unauthorized);
                }
            }
        }
        if let Some(wait) = self.flood_blocked("register", meta, REGISTRATIONS_PER_MINUTE) {
            return Err(RegisterError::TooMany(wait));
        }
        let bad = |d: &str| RegisterError::Metadata {
            code: "invalid_client_metadata",
            description: d.into(),
        };
        if body.len() > MAX_METADATA_BYTES {
            return Err(bad(&format!(
                "client metadata is at most {MAX_METADATA_BYTES} bytes"
            )));
        }
        let doc: Value = serde_json::from_slice(body)
            .map_err(|_| bad("the body must be client metadata as a JSON object"))?;
        let m = check_metadata(&doc, AppKind::Registered).map_err(|e| RegisterError::Metadata {
            code: e.code,
            description: e.description,
        })?;
        let now = rt.now();
        let secret = m
            .auth_method
            .uses_secret()
            .then(|| rt.settings.oauth.client_secret_format.generate());
        let name = if m.name.is_empty() {
            "unnamed app".to_string()
        } else {
            m.name.clone()
        };
        let app = AppClient {
            client_id: new_id("app"),
            kind: AppKind::Registered,
            name,
            logo_uri: m.logo_uri,
            client_uri: m.client_uri,
            redirect_uris: m.redirect_uris,
            auth_method: m.auth_method,
            secret_digest: secret.as_ref().map(|s| rt.pepper.digest(s.expose())),
            document: doc,
            created_at: now,
            fetched_at: None,
            blocked_at: None,
            blocked_by: None,
        };
        let event = rt.event(
            &Principal::admin(),
            None,
            "oauth_app.register",
            Some(&app.client_id),
            meta,
            json!({
                "client_name": app.name,
                "redirect_uris": app.redirect_uris,
                "token_endpoint_auth_method": app.auth_method.as_str(),
            }),
        );
        rt.store.app_put(&app, Some(&event)).await?;
        Ok((app, secret))
    }

    // ----- the authorization endpoint -----

    /// Checks an authorization request. Until the client and its redirect URI are known good,
    /// errors are for the person's eyes only; after that they go back to the client.
    pub async fn authorize_check(
        &self,
        q: &AuthorizeParams,
        meta: &RequestMeta,
    ) -> Result<Authorization, AuthorizeError> {
        let rt = &self.rt;
        let Some(client_id) = q.client_id.as_deref().filter(|c| !c.is_empty()) else {
            return Err(AuthorizeError::Page(
                "The request names no client (`client_id` is missing).".into(),
            ));
        };
        if client_id.len() > MAX_CLIENT_ID_LEN {
            return Err(AuthorizeError::Page("The client id is too long.".into()));
        }
        let stored = match rt.store.app_get(client_id).await {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "storage failed on the authorization endpoint");
                return Err(AuthorizeError::Page(
                    "keyplane cannot answer right now; try again in a moment.".into(),
                ));
            }
        };
        let is_url = client_id.starts_with("https://") || client_id.starts_with("http://");
        let app = match stored {
            // A blocked app stays blocked, whatever its document says now.
            Some(a) if a.blocked_at.is_some() => a,
            Some(a)
                if a.kind == AppKind::Metadata
                    && a.fetched_at.is_none_or(|t| t + METADATA_MAX_AGE <= rt.now()) =>
            {
                self.metadata_app(client_id, Some(a)).await?
            }
            Some(a) => a,
            None if is_url => {
                if self
                    .flood_blocked("discover", meta, DISCOVERIES_PER_MINUTE)
                    .is_some()
                {
                    return Err(AuthorizeError::Page(
                        "Too many new applications from your address: wait a minute, then try again.".into(),
                    ));
                }
                self.metadata_app(client_id, None).await?
            }
            None => {
                return Err(AuthorizeError::Page(
                    "This application is not known to keyplane: it has not registered, and its client id is not the URL of a client ID metadata document.".into(),
                ))
            }
        };
        if app.blocked_at.is_some() {
            return Err(AuthorizeError::Page(
                "This application has been blocked by the operator of this keyplane.".into(),
            ));
        }
        let Some(redirect_uri) = q.redirect_uri.as_deref().filter(|r| !r.is_empty()) else {
            return Err(AuthorizeError::Page(
                "The request names no redirect URI (`redirect_uri` is missing).".into(),
            ));
        };
        if !redirect_uri_matches(&app.redirect_uris, redirect_uri) {
            return Err(AuthorizeError::Page(
                "The redirect URI is not one the application registered, so keyplane will not send you there.".into(),
            ));
        }
        let issuer = &rt.settings.oauth.issuer;
        let state_ok = check_state(q.state.as_deref()).is_ok();
        let back = |error: &str, description: String| {
            let mut params = vec![
                ("error", error),
                ("error_description", description.as_str()),
            ];
            if let (true, Some(s)) = (state_ok, q.state.as_deref()) {
                params.push(("state", s));
            }
            params.push(("iss", issuer.as_str()));
            AuthorizeError::Redirect(redirect_with(redirect_uri, &params))
        };
        if let Err(e) = check_state(q.state.as_deref()) {
            return Err(back("invalid_request", e));
        }
        match q.response_type.as_deref() {
            Some("code") => {}
            None => {
                return Err(back(
                    "invalid_request",
                    "`response_type` is missing: use `code`".into(),
                ))
            }
            Some(_) => {
                return Err(back(
                    "unsupported_response_type",
                    "only `response_type=code` is supported".into(),
                ))
            }
        }
        let code_challenge = check_code_challenge(
            q.code_challenge.as_deref(),
            q.code_challenge_method.as_deref(),
        )
        .map_err(|e| back("invalid_request", e))?;
        let resource = match q.resources.as_slice() {
            [] => {
                return Err(back(
                    "invalid_target",
                    "`resource` is required: the URL of the resource (e.g. the MCP server) the token is for (RFC 8707)".into(),
                ))
            }
            [one] => parse_resource(one).map_err(|e| back("invalid_target", e))?,
            _ => {
                return Err(back(
                    "invalid_target",
                    "name one `resource` per authorization".into(),
                ))
            }
        };
        let index = match rt.services().await {
            Ok(i) => i,
            Err(e) => {
                tracing::error!(error = %e, "storage failed on the authorization endpoint");
                return Err(back("server_error", "try again in a moment".into()));
            }
        };
        let Some(offered) = index.scopes_of_resource(&resource) else {
            return Err(back(
                "invalid_target",
                format!("no service is registered for the resource `{resource}`"),
            ));
        };
        let mut scopes = scope_list(q.scope.as_deref());
        if scopes.is_empty() {
            scopes = offered.to_vec();
            scopes.sort();
            scopes.dedup();
        }
        if let Some(s) = scopes.iter().find(|s| !offered.contains(s)) {
            return Err(back(
                "invalid_scope",
                format!("the scope `{s}` is not one of the resource's"),
            ));
        }
        Ok(Authorization {
            app,
            redirect_uri: redirect_uri.to_string(),
            state: q.state.clone(),
            code_challenge,
            resource,
            scopes,
        })
    }

    /// The person a console session is, for consent: a member (the admin key is nobody), in
    /// the organization the session shows; and whether their live grant already covers it.
    pub async fn authorize_consent(
        &self,
        principal: &Principal,
        a: &Authorization,
    ) -> Result<Consent> {
        let rt = &self.rt;
        let Some(member_id) = principal.member_id() else {
            return Err(Error::Forbidden(
                "sign in with your own account: the admin key is not a person and cannot authorize applications".into(),
            ));
        };
        let member = rt
            .store
            .member_get(member_id)
            .await?
            .ok_or(Error::NotFound("member"))?;
        let live = rt
            .store
            .grant_live_for(&member.id, &a.app.client_id, &a.resource)
            .await?;
        Ok(match live {
            Some(g) if a.scopes.iter().all(|s| g.scopes.contains(s)) => Consent::Given(member),
            _ => Consent::Ask(member),
        })
    }

    /// The person approved: their grant is created or widened, and a code sent back.
    pub async fn authorize_approve(
        &self,
        member: &Member,
        a: &Authorization,
        meta: &RequestMeta,
    ) -> Result<String> {
        let rt = &self.rt;
        let now = rt.now();
        let project = rt.project_in(&member.org_id, None).await?;
        let grant = match rt
            .store
            .grant_live_for(&member.id, &a.app.client_id, &a.resource)
            .await?
        {
            Some(mut g) => {
                let mut scopes = g.scopes.clone();
                scopes.extend(a.scopes.iter().cloned());
                scopes.sort();
                scopes.dedup();
                g.scopes = scopes;
                g.updated_at = now;
                g
            }
            None => Grant {
                id: new_id("grt"),
                org_id: member.org_id.clone(),
                project_id: project.id,
                member_id: member.id.clone(),
                client_id: a.app.client_id.clone(),
                resource: a.resource.clone(),
                scopes: a.scopes.clone(),
                created_at: now,
                updated_at: now,
                last_used_at: None,
                revoked_at: None,
                revoked_reason: None,
            },
        };
        let code = random_id_text(43);
        let record = AuthCode {
            digest: rt.pepper.digest(&code),
            grant_id: grant.id.clone(),
            client_id: a.app.client_id.clone(),
            redirect_uri: a.redirect_uri.clone(),
            code_challenge: a.code_challenge.clone(),
            scopes: a.scopes.clone(),
            created_at: now,
            expires_at: code_expiry(now),
        };
        let p = member_principal(member);
        let event = rt.event(
            &p,
            Some(&member.org_id),
            "oauth_grant.consent",
            Some(&grant.id),
            meta,
            json!({
                "client_id": a.app.client_id,
                "client_name": a.app.name,
                "resource": a.resource,
                "scopes": a.scopes,
                "grant_scopes": grant.scopes,
            }),
        );
        rt.store.grant_save(&grant, &record, &event).await?;
        rt.invalidate(Invalidation::Grants).await?;
        let issuer = rt.settings.oauth.issuer.clone();
        let mut params = vec![("code", code.as_str())];
        if let Some(s) = a.state.as_deref() {
            params.push(("state", s));
        }
        params.push(("iss", issuer.as_str()));
        Ok(redirect_with(&a.redirect_uri, &params))
    }

    /// The person said no: `access_denied` goes back to the client (nothing is stored).
    pub fn authorize_deny(&self, a: &Authorization) -> String {
        let issuer = &self.rt.settings.oauth.issuer;
        let mut params = vec![
            ("error", "access_denied"),
            ("error_description", "the person declined"),
        ];
        if let Some(s) = a.state.as_deref() {
            params.push(("state", s));
        }
        params.push(("iss", issuer.as_str()));
        redirect_with(&a.redirect_uri, &params)
    }

    /// Installs what fetches client ID metadata documents (the binary's HTTP client).
    pub fn set_metadata_fetcher(&self, fetcher: Arc<dyn MetadataFetcher>) {
        *self
            .rt
            .oauth
            .metadata_fetcher
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(fetcher);
    }

    /// An app identified by the URL of its client ID metadata document: fetched (again, when
    /// `known` is stale), checked, stored. What goes wrong is shown to the person only.
    async fn metadata_app(
        &self,
        url: &str,
        known: Option<AppClient>,
    ) -> Result<AppClient, AuthorizeError> {
        let rt = &self.rt;
        let page = |why: String| {
            AuthorizeError::Page(format!(
                "This application's client ID metadata document cannot be used: {why}."
            ))
        };
        check_client_id_url(url, rt.settings.oauth.client_metadata_allow_loopback).map_err(page)?;
        let fetcher = rt
            .oauth
            .metadata_fetcher
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| page("this keyplane does not fetch them".into()))?;
        let body = fetcher.fetch(url).await.map_err(|e| {
            tracing::info!(client_id = %url, error = %e, "a client ID metadata document could not be fetched");
            page(e)
        })?;
        let (m, doc) = check_document(url, &body).map_err(|e| page(e.description))?;
        let now = rt.now();
        let app = AppClient {
            client_id: url.to_string(),
            kind: AppKind::Metadata,
            name: if m.name.is_empty() {
                url.to_string()
            } else {
                m.name
            },
            logo_uri: m.logo_uri,
            client_uri: m.client_uri,
            redirect_uris: m.redirect_uris,
            auth_method: AppAuth::None,
            secret_digest: None,
            document: doc,
            created_at: known.as_ref().map_or(now, |k| k.created_at),
            fetched_at: Some(now),
            blocked_at: None,
            blocked_by: None,
        };
        // The first sight of an app is an event; a refetch is not.
        let event = known.is_none().then(|| {
            rt.event(
                &Principal::admin(),
                None,
                "oauth_app.discover",
                Some(url),
                &RequestMeta::default(),
                json!({ "client_name": app.name, "redirect_uris": app.redirect_uris }),
            )
        });
        rt.store.app_put(&app, event.as_ref()).await.map_err(|e| {
            tracing::error!(error = %e, "storage failed storing an app");
            AuthorizeError::Page("keyplane cannot answer right now; try again in a moment.".into())
        })?;
        Ok(app)
    }

    // ----- the token endpoint -----

    /// Authenticates an app: a public one by its id alone (PKCE or its refresh token's binding
    /// prove the rest), a confidential one by its secret. Blocked apps are refused.
    async fn authenticate_app(
        &self,
        c: &AppCredentials,
        meta: &RequestMeta,
    ) -> Result<AppClient, OAuthError> {
        let rt = &self.rt;
        let fail = || OAuthError::InvalidClient { basic: c.basic };
        let app = rt.store.app_get(&c.client_id).await?;
        let Some(app) = app.filter(|a| a.blocked_at.is_none()) else {
            rt.queue_refusal("client_authentication", None, meta);
            return Err(fail());
        };
        match (app.auth_method, &c.secret, &app.secret_digest) {
            (AppAuth::None, None, _) => Ok(app),
            (AppAuth::None, Some(_), _) => Err(OAuthError::InvalidRequest(
                "this client is public (`token_endpoint_auth_method` `none`): send no secret"
                    .into(),
            )),
            (_, Some(secret), Some(digest)) => {
                if ct_eq(&rt.pepper.digest(secret.expose()).0, &digest.0) {
                    Ok(app)
                } else {
                    rt.queue_refusal("client_authentication", Some(app.client_id.clone()), meta);
                    Err(fail())
                }
            }
            _ => Err(fail()),
        }
    }

    /// A DPoP proof on the token request: the key's thumbprint.
    async fn grant_dpop(
        &self,
        dpop: Option<&DpopRequest<'_>>,
    ) -> Result<Option<String>, OAuthError> {
        let Some(d) = dpop else {
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

    /// Revokes a grant because one of its single-use credentials was presented twice.
    async fn revoke_for_reuse(&self, grant_id: &str, reason: &str, meta: &RequestMeta) {
        let rt = &self.rt;
        let event = rt.event(
            &Principal::admin(),
            None,
            "oauth_grant.revoke",
            Some(grant_id),
            meta,
            json!({ "reason": reason }),
        );
        let org = match rt.store.grant_get(grant_id).await {
            Ok(Some(g)) => Some(g.org_id),
            _ => None,
        };
        let event = crate::domain::model::NewEvent {
            org_id: org,
            ..event
        };
        match rt
            .store
            .grant_revoke(grant_id, rt.now(), reason, &event)
            .await
        {
            Ok(_) => {
                if let Err(e) = rt.invalidate(Invalidation::Grants).await {
                    tracing::error!(error = %e, "cannot tell other nodes of a revoked grant");
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot revoke a grant after a replay"),
        }
    }

    /// `grant_type=authorization_code`: a code redeemed once, by the app it was issued to, at
    /// the redirect URI it was sent to, with the PKCE verifier; a second redemption revokes the
    /// grant (RFC 6749 §4.1.2: tokens issued from a replayed code are revoked).
    pub async fn token_by_code(
        &self,
        creds: &AppCredentials,
        r: &CodeRedemption<'_>,
        resources: &[String],
        dpop: Option<&DpopRequest<'_>>,
        meta: &RequestMeta,
    ) -> Result<GrantTokens, OAuthError> {
        let rt = &self.rt;
        let app = self.authenticate_app(creds, meta).await?;
        let (Some(code), Some(verifier), redirect_uri) = (r.code, r.code_verifier, r.redirect_uri)
        else {
            return Err(OAuthError::InvalidRequest(
                "`code` and `code_verifier` are required".into(),
            ));
        };
        let jkt = self.grant_dpop(dpop).await?;
        let invalid = |d: &str| Err(OAuthError::InvalidGrant(d.into()));
        let stored = match rt
            .store
            .code_redeem(&rt.pepper.digest(code), rt.now())
            .await?
        {
            CodeUse::Unknown => return invalid("the authorization code is not valid"),
            CodeUse::Reused(c) => {
                self.revoke_for_reuse(&c.grant_id, "code_reuse", meta).await;
                return invalid(
                    "the authorization code was already used: the grant it came from is revoked",
                );
            }
            CodeUse::Fresh(c) => c,
        };
        if stored.client_id != app.client_id {
            return invalid("the authorization code was issued to another client");
        }
        if stored.expires_at <= rt.now() {
            return invalid("the authorization code has expired");
        }
        if redirect_uri != Some(stored.redirect_uri.as_str()) {
            return invalid("`redirect_uri` must be the one the authorization request used");
        }
        if let Err(e) = verifier_matches(verifier, &stored.code_challenge) {
            return invalid(&e);
        }
        let Some(grant) = rt.live_grant(&stored.grant_id).await else {
            return invalid("the grant behind this code has been revoked");
        };
        check_resource(resources, &grant.resource)?;
        let token = rt.mint_for_grant(&grant, &stored.scopes, jkt.clone());
        let refresh_token = self
            .new_refresh(&grant.id, &app.client_id, &stored.scopes, jkt)
            .await?;
        let p = app_principal(&app.client_id, &grant.org_id);
        let event = rt.event(
            &p,
            Some(&grant.org_id),
            "access_token.issue",
            Some(&app.client_id),
            meta,
            json!({ "via": "authorization_code", "grant_id": grant.id, "scope": token.scope, "resource": grant.resource }),
        );
        rt.store.activity_append(&[event]).await?;
        rt.store.grant_touch(&grant.id, rt.now()).await?;
        Ok(GrantTokens {
            token,
            refresh_token,
        })
    }

    /// `grant_type=refresh_token`: the refresh token is used up and replaced (rotation); one
    /// presented a second time revokes the grant (reuse detection). A DPoP-bound one needs a
    /// proof with the same key. `scope` may narrow, never widen.
    pub async fn token_by_refresh(
        &self,
        creds: &AppCredentials,
        refresh_token: Option<&str>,
        scope: Option<&str>,
        resources: &[String],
        dpop: Option<&DpopRequest<'_>>,
        meta: &RequestMeta,
    ) -> Result<GrantTokens, OAuthError> {
        let rt = &self.rt;
        let app = self.authenticate_app(creds, meta).await?;
        let Some(refresh_token) = refresh_token else {
            return Err(OAuthError::InvalidRequest(
                "`refresh_token` is required".into(),
            ));
        };
        let jkt = self.grant_dpop(dpop).await?;
        let invalid = |d: &str| Err(OAuthError::InvalidGrant(d.into()));
        let digest = rt.pepper.digest(refresh_token);
        let stored = match rt
            .store
            .refresh_redeem(&digest, rt.now(), &app.client_id, jkt.as_deref())
            .await?
        {
            RefreshUse::Unknown => return invalid("the refresh token is not valid"),
            RefreshUse::Refused(t) if t.client_id != app.client_id => {
                return invalid("the refresh token was issued to another client")
            }
            RefreshUse::Refused(_) => {
                return Err(OAuthError::InvalidDpopProof(
                    "this refresh token is bound to a DPoP key: send a proof signed with it".into(),
                ))
            }
            RefreshUse::Reused(t) => {
                self.revoke_for_reuse(&t.grant_id, "refresh_token_reuse", meta)
                    .await;
                return invalid(
                    "the refresh token was already used: the grant is revoked, sign in again",
                );
            }
            RefreshUse::Fresh(t) => t,
        };
        if stored.client_id != app.client_id {
            return invalid("the refresh token was issued to another client");
        }
        if stored.expires_at <= rt.now() {
            return invalid("the refresh token has expired");
        }
        if let Some(bound) = &stored.jkt {
            if jkt.as_deref() != Some(bound.as_str()) {
                return Err(OAuthError::InvalidDpopProof(
                    "this refresh token is bound to a DPoP key: send a proof signed with it".into(),
                ));
            }
        }
        let Some(grant) = rt.live_grant(&stored.grant_id).await else {
            return invalid("the grant has been revoked");
        };
        check_resource(resources, &grant.resource)?;
        let held: Vec<String> = stored
            .scopes
            .iter()
            .filter(|s| grant.scopes.contains(s))
            .cloned()
            .collect();
        let wanted = scope_list(scope);
        let scopes = if wanted.is_empty() {
            held.clone()
        } else {
            if let Some(s) = wanted.iter().find(|s| !held.contains(s)) {
                return Err(OAuthError::InvalidScope(format!(
                    "the refresh token does not hold the scope `{s}`"
                )));
            }
            wanted
        };
        let bound = stored.jkt.clone().or(jkt);
        let token = rt.mint_for_grant(&grant, &scopes, bound.clone());
        // The new refresh token keeps what the old one held (a narrower request narrows only
        // this access token).
        let refresh_token = self
            .new_refresh(&grant.id, &app.client_id, &held, bound)
            .await?;
        rt.store.grant_touch(&grant.id, rt.now()).await?;
        Ok(GrantTokens {
            token,
            refresh_token,
        })
    }

    async fn new_refresh(
        &self,
        grant_id: &str,
        client_id: &str,
        scopes: &[String],
        jkt: Option<String>,
    ) -> Result<String, OAuthError> {
        let rt = &self.rt;
        let secret = format!("kpr_{}", random_id_text(43));
        let now = rt.now();
        rt.store
            .refresh_put(&RefreshToken {
                digest: rt.pepper.digest(&secret),
                grant_id: grant_id.to_string(),
                client_id: client_id.to_string(),
                scopes: scopes.to_vec(),
                jkt,
                created_at: now,
                expires_at: now + REFRESH_TTL,
                used_at: None,
            })
            .await?;
        Ok(secret)
    }

    // ----- connected apps -----

    /// Grants ("connected apps"): a member's own; with `clients:manage`, the organization's
    /// (or one member's).
    pub async fn grants_list(
        &self,
        p: &Principal,
        org_id: Option<&str>,
        member_id: Option<&str>,
    ) -> Result<Vec<Grant>> {
        let (org, only) = grant_reach(p, org_id)?;
        let member = only.as_deref().or(member_id);
        if only.is_some() && member_id.is_some_and(|m| Some(m) != only.as_deref()) {
            return Ok(vec![]);
        }
        self.rt.store.grant_list(&org, member).await
    }

    /// Revokes a grant: its tokens stop at once, its refresh tokens are gone.
    pub async fn grant_revoke(&self, p: &Principal, id: &str, meta: &RequestMeta) -> Result<Grant> {
        let rt = &self.rt;
        let (org, only) = grant_reach(p, None)?;
        let g = rt
            .store
            .grant_get(id)
            .await?
            .filter(|g| g.org_id == org && only.as_deref().is_none_or(|m| m == g.member_id))
            .ok_or(Error::NotFound("grant"))?;
        if g.revoked_at.is_some() {
            return Ok(g);
        }
        let reason = if only.is_some() { "member" } else { "manager" };
        let event = rt.event(
            p,
            Some(&g.org_id),
            "oauth_grant.revoke",
            Some(&g.id),
            meta,
            json!({ "reason": reason, "client_id": g.client_id, "member_id": g.member_id }),
        );
        rt.store
            .grant_revoke(&g.id, rt.now(), reason, &event)
            .await?;
        rt.invalidate(Invalidation::Grants).await?;
        Ok(rt.store.grant_get(&g.id).await?.unwrap_or(g))
    }

    /// Forgets expired codes and refresh tokens (the node's periodic maintenance); how many.
    pub async fn purge_authorization_codes(&self) -> Result<u64> {
        self.rt.store.authcode_purge(self.rt.now()).await
    }

    /// An app's display name, for the console's tables (not a secret: a person saw it when
    /// they allowed it).
    pub async fn app_name(&self, client_id: &str) -> Option<String> {
        self.rt
            .store
            .app_get(client_id)
            .await
            .ok()
            .flatten()
            .map(|a| a.name)
    }

    /// The apps keyplane knows (registered or from metadata documents): the admin key only,
    /// since an app is the deployment's, not one organization's.
    pub async fn apps_list(
        &self,
        p: &Principal,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AppClient>> {
        admin_only(p)?;
        self.rt.store.app_list(after, limit.clamp(1, 200)).await
    }

    pub async fn app_get(&self, p: &Principal, client_id: &str) -> Result<AppClient> {
        admin_only(p)?;
        self.rt
            .store
            .app_get(client_id)
            .await?
            .ok_or(Error::NotFound("app"))
    }

    /// Blocks an app (it authenticates nowhere and every grant it holds is revoked) or
    /// unblocks it (its old grants stay revoked).
    pub async fn app_set_blocked(
        &self,
        p: &Principal,
        client_id: &str,
        blocked: bool,
        meta: &RequestMeta,
    ) -> Result<AppClient> {
        admin_only(p)?;
        let rt = &self.rt;
        let action = if blocked {
            "oauth_app.block"
        } else {
            "oauth_app.unblock"
        };
        let event = rt.event(p, None, action, Some(client_id), meta, json!({}));
        let set = blocked.then(|| (rt.now(), p.actor_label()));
        if !rt.store.app_block(client_id, set, &event).await? {
            return Err(Error::NotFound("app"));
        }
        rt.invalidate(Invalidation::Grants).await?;
        self.app_get(p, client_id).await
    }
}

/// A `resource` on a token request must be the grant's (RFC 8707 §2.2: no wider).
fn check_resource(resources: &[String], granted: &str) -> Result<(), OAuthError> {
    for r in resources {
        let uri = parse_resource(r).map_err(|e| {
            OAuthError::InvalidTarget(format!("`resource` is not a valid resource URI: {e}"))
        })?;
        if uri != granted {
            return Err(OAuthError::InvalidTarget(format!(
                "this grant is for `{granted}` only"
            )));
        }
    }
    Ok(())
}

fn admin_only(p: &Principal) -> Result<()> {
    if p.is_admin_key() {
        Ok(())
    } else {
        Err(Error::Forbidden(
            "apps are the deployment's: only the admin key lists and blocks them".into(),
        ))
    }
}

/// Whose grants a caller reaches: the organization's with `clients:manage`, else a member's
/// own (the access check says which: `only_member`).
fn grant_reach(p: &Principal, org_id: Option<&str>) -> Result<(String, Option<String>)> {
    match p.access(org_id, Permission::ClientsManage) {
        Ok(a) => Ok((a.org_id().to_string(), a.only_member().map(str::to_string))),
        Err(e) => match (p.member_id(), &p.org_id) {
            (Some(m), Some(org)) if org_id.is_none_or(|o| o == org) => {
                Ok((org.clone(), Some(m.to_string())))
            }
            _ => Err(e),
        },
    }
}

/// The principal a member acts as in the activity log, for their consent.
fn member_principal(m: &Member) -> Principal {
    Principal {
        actor: crate::domain::perm::Actor::ConsoleMember {
            member_id: m.id.clone(),
            member_role: m.role,
        },
        org_id: Some(m.org_id.clone()),
        project_id: None,
        permissions: m.role.permissions(),
        scopes: vec![],
    }
}

/// An app at the token endpoint, in the activity log (`client:<id>`).
fn app_principal(client_id: &str, org_id: &str) -> Principal {
    Principal {
        actor: crate::domain::perm::Actor::Client {
            client_id: client_id.to_string(),
        },
        org_id: Some(org_id.to_string()),
        project_id: None,
        permissions: crate::domain::perm::PermSet::EMPTY,
        scopes: vec![],
    }
}
