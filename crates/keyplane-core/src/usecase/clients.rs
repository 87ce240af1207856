//! [`Keyplane`] use cases of OAuth clients: create, list, get, edit, delete, add and retire
//! secrets, and issue an access token for a client from the management API.

use super::{check_version, retry_on_conflict};
use crate::app::Keyplane;
use crate::domain::ceiling::{owners_only, within, Authority};
use crate::domain::client_auth::{check_jwks_uri, AuthMethod};
use crate::domain::clock::to_ms;
use crate::domain::error::{Error, Result};
use crate::domain::federation::parse_credentials;
use crate::domain::ids::{is_id, new_id};
use crate::domain::jose::JwkSet;
use crate::domain::managed::ManagedKind;
use crate::domain::model::{ClientSecret, OAuthClient, TokenFormat};
use crate::domain::oauth::{IssuedToken, MintRequest, OAuthError};
use crate::domain::perm::{Permission, Principal};
use crate::domain::request::{
    clean_description, clean_name, page_limit, paginate, parse_cursor, Page, RequestMeta,
};
use crate::domain::secret::SecretString;
use crate::domain::token::Alg;
use crate::domain::usage::{check_rate_limits, RateLimit};
use crate::runtime::oauth::ceil_to_second;
use crate::store::{Invalidation, KeyFilter};
use time::OffsetDateTime;

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
    /// RFC 7591 `token_endpoint_auth_method`; `client_secret_basic` when absent.
    pub token_endpoint_auth_method: Option<String>,
    /// RFC 7591 `jwks`: the public keys of a `private_key_jwt` client, inline.
    pub jwks: Option<serde_json::Value>,
    /// RFC 7591 `jwks_uri`: where a `private_key_jwt` client publishes its public keys.
    pub jwks_uri: Option<String>,
    /// Workload identity federation: the external issuers whose tokens it trades (a JSON array).
    pub federated_credentials: Option<serde_json::Value>,
    /// The clients that may exchange this client's tokens to act for it (RFC 8693).
    pub may_act: Vec<String>,
    /// RFC 9449 §5.2 `dpop_bound_access_tokens`; `false` when absent.
    pub dpop_bound_access_tokens: Option<bool>,
    /// Named rate limits (issue 15).
    pub rate_limits: Vec<RateLimit>,
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
    pub token_endpoint_auth_method: Option<String>,
    pub jwks: Option<Option<serde_json::Value>>,
    pub jwks_uri: Option<Option<String>>,
    /// Replaces the list (`null` or `[]` clears it).
    pub federated_credentials: Option<Option<serde_json::Value>>,
    /// Replaces who may act for the client (`[]`: nobody).
    pub may_act: Option<Vec<String>>,
    /// RFC 9449 §5.2 `dpop_bound_access_tokens`.
    pub dpop_bound_access_tokens: Option<bool>,
    /// Replaces the client's rate limits (`[]`: none).
    pub rate_limits: Option<Vec<RateLimit>>,
}

impl Keyplane {
    fn check_ttl(&self, ttl: i64) -> Result<i64> {
        let max = self.rt.settings.oauth.max_ttl_seconds;
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

    /// Applies a requested authentication method and keys to `c`: a `private_key_jwt` client
    /// ends with exactly one of `jwks` (checked key by key) and `jwks_uri` (https, or loopback
    /// http where the deployment allows it); a secret client with neither. Setting one of the
    /// two replaces the other; switching to a secret method drops them.
    fn settle_client_keys(
        &self,
        c: &mut OAuthClient,
        method: Option<&str>,
        jwks: Option<Option<&serde_json::Value>>,
        jwks_uri: Option<Option<&str>>,
        federated: Option<Option<&serde_json::Value>>,
    ) -> Result<()> {
        if let Some(m) = method {
            c.auth_method = AuthMethod::parse(m).ok_or_else(|| {
                Error::invalid(
                    "token_endpoint_auth_method",
                    "`token_endpoint_auth_method` must be `client_secret_basic`, `client_secret_post` or `private_key_jwt`",
                )
            })?;
        }
        if c.auth_method.uses_secret() {
            for (field, given) in [
                ("jwks", matches!(jwks, Some(Some(_)))),
                ("jwks_uri", matches!(jwks_uri, Some(Some(_)))),
                (
                    "federated_credentials",
                    matches!(federated, Some(Some(v)) if v.as_array().is_none_or(|a| !a.is_empty())),
                ),
            ] {
                if given {
                    return Err(Error::invalid(
                        field,
                        format!("`{field}` is for clients whose `token_endpoint_auth_method` is `private_key_jwt`"),
                    ));
                }
            }
            c.jwks = None;
            c.jwks_uri = None;
            c.federated_credentials = Vec::new();
            return Ok(());
        }
        let allow_http = self.rt.settings.oauth.jwks_uri_allow_loopback_http;
        if let Some(f) = federated {
            c.federated_credentials = match f {
                Some(v) => parse_credentials(v, allow_http)
                    .map_err(|e| Error::invalid("federated_credentials", e))?,
                None => Vec::new(),
            };
        }
        match (jwks, jwks_uri) {
            (Some(Some(_)), Some(Some(_))) => {
                return Err(Error::invalid(
                    "jwks_uri",
                    "give `jwks` or `jwks_uri`, not both",
                ))
            }
            (Some(set), uri) => {
                c.jwks = set
                    .map(|v| {
                        JwkSet::from_json(v).map_err(|e| Error::invalid("jwks", e.to_string()))
                    })
                    .transpose()?;
                match uri {
                    // `jwks: null` with a `jwks_uri` (both values at once were refused above).
                    Some(Some(u)) => {
                        c.jwks_uri = Some(
                            check_jwks_uri(u, allow_http)
                                .map_err(|e| Error::invalid("jwks_uri", e))?,
                        )
                    }
                    Some(None) => c.jwks_uri = None,
                    None if c.jwks.is_some() => c.jwks_uri = None,
                    None => {}
                }
            }
            (None, Some(uri)) => {
                c.jwks_uri = uri
                    .map(|u| {
                        check_jwks_uri(u, allow_http).map_err(|e| Error::invalid("jwks_uri", e))
                    })
                    .transpose()?;
                if c.jwks_uri.is_some() {
                    c.jwks = None;
                }
            }
            (None, None) => {}
        }
        if c.jwks.is_none() && c.jwks_uri.is_none() && c.federated_credentials.is_empty() {
            return Err(Error::invalid(
                "jwks",
                "a `private_key_jwt` client needs its public keys: `jwks` (a JWK set) or `jwks_uri`, or external issuers it trusts (`federated_credentials`)",
            ));
        }
        Ok(())
    }

    fn new_secret(
        &self,
        client_id: &str,
        expires_at: Option<OffsetDateTime>,
    ) -> (ClientSecret, SecretString) {
        let secret = self.rt.settings.oauth.client_secret_format.generate();
        let prefix_len = self.rt.settings.oauth.client_secret_format.prefix().len();
        let cs = ClientSecret {
            id: new_id("sec"),
            client_id: client_id.to_string(),
            digest: self.rt.pepper.digest(secret.expose()),
            pepper_version: self.rt.pepper.version(),
            start: secret.expose()[..prefix_len + 4].to_string(),
            created_at: self.rt.now(),
            expires_at,
            last_used_at: None,
            use_count: 0,
            expiry_warned_at: None,
        };
        (cs, secret)
    }

    /// Registers a client. A secret client gets its first secret (shown once, returned here);
    /// a `private_key_jwt` client gets none.
    pub async fn client_create(
        &self,
        p: &Principal,
        input: NewClient,
        meta: &RequestMeta,
    ) -> Result<(OAuthClient, Option<(ClientSecret, SecretString)>)> {
        let rt = &self.rt;
        let access = p.access(input.org_id.as_deref(), Permission::ClientsManage)?;
        rt.existing_org(access.org_id()).await?;
        let project = rt
            .project_in(access.org_id(), input.project_id.as_deref())
            .await?;
        let owner = rt
            .credential_owner(&access, p, input.owner_member_id, "clients", false)
            .await?;
        let settings = &rt.settings.oauth;
        let client = OAuthClient {
            seq: 0,
            client_id: settings.client_id_format.generate().expose().to_string(),
            org_id: access.org_id().to_string(),
            project_id: project.id,
            owner_member_id: owner,
            name: clean_name("name", &input.name)?,
            description: clean_description(input.description.as_deref())?,
            scopes: rt.check_scopes(input.scopes).await?,
            access_token_ttl_seconds: self.check_ttl(
                input
                    .access_token_ttl_seconds
                    .unwrap_or(settings.default_ttl_seconds),
            )?,
            token_format: Self::check_format(input.token_format.as_deref().unwrap_or("opaque"))?,
            signing_alg: input
                .signing_alg
                .as_deref()
                .map(Self::check_alg)
                .transpose()?,
            audience: Self::check_audience(input.audience)?,
            secret_rotation_days: Self::check_rotation(input.secret_rotation_days)?,
            auth_method: AuthMethod::ClientSecretBasic,
            jwks: None,
            jwks_uri: None,
            federated_credentials: Vec::new(),
            may_act: rt.check_may_act(access.org_id(), input.may_act).await?,
            dpop_bound_access_tokens: input.dpop_bound_access_tokens.unwrap_or(false),
            rate_limits: {
                check_rate_limits(&input.rate_limits)?;
                input.rate_limits
            },
            not_before: None,
            created_at: rt.now(),
            created_by: p.actor_label(),
            disabled_at: None,
            managed_by: None,
            version: 1,
        };
        let mut client = client;
        self.settle_client_keys(
            &mut client,
            input.token_endpoint_auth_method.as_deref(),
            input.jwks.as_ref().map(Some),
            input.jwks_uri.as_deref().map(Some),
            input.federated_credentials.as_ref().map(Some),
        )?;
        within(
            &p.authority(),
            &rt.client_authority(&client).await?,
            "create this client",
        )?;
        let first = client
            .auth_method
            .uses_secret()
            .then(|| self.new_secret(&client.client_id, None));
        let event = rt.event(
            p,
            Some(&client.org_id),
            "oauth_client.create",
            Some(&client.client_id),
            meta,
            client_details(&client),
        );
        rt.store
            .client_create(&client, first.as_ref().map(|(cs, _)| cs), &event)
            .await?;
        rt.oauth.invalidate_client(&client.client_id);
        let (client, _) = rt
            .store
            .client_get(&client.client_id)
            .await?
            .ok_or(Error::NotFound("OAuth client"))?;
        Ok((client, first))
    }

    pub async fn client_list(
        &self,
        p: &Principal,
        org_id: Option<&str>,
        project_id: Option<&str>,
        cursor: Option<&str>,
        limit: Option<i64>,
    ) -> Result<Page<(OAuthClient, Vec<ClientSecret>)>> {
        let rt = &self.rt;
        let access = p.access(org_id, Permission::ClientsManage)?;
        rt.existing_org(access.org_id()).await?;
        if let Some(pid) = project_id {
            rt.project_in(access.org_id(), Some(pid)).await?;
        }
        let limit = page_limit(limit)?;
        let filter = KeyFilter::new(&access, project_id, true);
        let clients = rt
            .store
            .client_list(&filter, parse_cursor(cursor)?, limit + 1)
            .await?;
        let mut page = paginate(clients, limit, |c| c.seq);
        rt.fill_managed(&mut page.items).await?;
        let mut items = Vec::new();
        for c in page.items {
            let secrets = rt
                .store
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
        let (c, s, _) = self.rt.client_in_reach(p, client_id).await?;
        let mut one = [c];
        self.rt.fill_managed(&mut one).await?;
        let [c] = one;
        Ok((c, s))
    }

    /// Edits a client (see [`Keyplane::api_key_update`] for `if_match`).
    pub async fn client_update(
        &self,
        p: &Principal,
        client_id: &str,
        patch: ClientPatch,
        if_match: Option<i64>,
        meta: &RequestMeta,
    ) -> Result<(OAuthClient, Vec<ClientSecret>)> {
        retry_on_conflict!(
            if_match,
            self.client_update_once(p, client_id, &patch, if_match, meta)
        )
    }

    async fn client_update_once(
        &self,
        p: &Principal,
        client_id: &str,
        patch: &ClientPatch,
        if_match: Option<i64>,
        meta: &RequestMeta,
    ) -> Result<(OAuthClient, Vec<ClientSecret>)> {
        let rt = &self.rt;
        let (mut c, secrets, _) = rt.client_in_reach(p, client_id).await?;
        check_version(if_match, c.version, "OAuth client")?;
        let caller = p.authority();
        within(
            &caller,
            &rt.client_authority(&c).await?,
            "change this client",
        )?;
        rt.guard_managed(ManagedKind::Client, client_id, "OAuth client", meta)
            .await?;
        let patch = patch.clone();
        if let Some(n) = patch.name {
            c.name = clean_name("name", &n)?;
        }
        if let Some(d) = patch.description {
            c.description = clean_description(Some(&d))?;
        }
        if let Some(s) = patch.scopes {
            c.scopes = rt.check_scopes(s).await?;
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
        if let Some(m) = patch.may_act {
            c.may_act = rt.check_may_act(&c.org_id, m).await?;
        }
        if let Some(d) = patch.dpop_bound_access_tokens {
            c.dpop_bound_access_tokens = d;
        }
        if let Some(l) = patch.rate_limits {
            check_rate_limits(&l)?;
            c.rate_limits = l;
        }
        self.settle_client_keys(
            &mut c,
            patch.token_endpoint_auth_method.as_deref(),
            patch.jwks.as_ref().map(Option::as_ref),
            patch.jwks_uri.as_ref().map(Option::as_deref),
            patch.federated_credentials.as_ref().map(Option::as_ref),
        )?;
        within(
            &caller,
            &rt.client_authority(&c).await?,
            "give this client those scopes",
        )?;
        let event = rt.event(
            p,
            Some(&c.org_id),
            "oauth_client.update",
            Some(client_id),
            meta,
            client_details(&c),
        );
        let stored = rt.store.client_update(&c, &event).await?;
        rt.invalidate(Invalidation::Client(client_id.to_string()))
            .await?;
        // A client that now uses private_key_jwt kept none of its secrets.
        let secrets = if stored.auth_method.uses_secret() {
            secrets
        } else {
            Vec::new()
        };
        Ok((stored, secrets))
    }

    /// Deletes a client; its tokens stop working at once (they name a client that is gone).
    /// Any client manager may (deletion grants nothing), except that only owners delete an
    /// owner's.
    pub async fn client_delete(
        &self,
        p: &Principal,
        client_id: &str,
        if_match: Option<i64>,
        meta: &RequestMeta,
    ) -> Result<()> {
        retry_on_conflict!(
            if_match,
            self.client_delete_once(p, client_id, if_match, meta)
        )
    }

    async fn client_delete_once(
        &self,
        p: &Principal,
        client_id: &str,
        if_match: Option<i64>,
        meta: &RequestMeta,
    ) -> Result<()> {
        let rt = &self.rt;
        let (c, _, _) = rt.client_in_reach(p, client_id).await?;
        check_version(if_match, c.version, "OAuth client")?;
        let owner = rt
            .owner_role(c.owner_member_id.as_deref())
            .await
            .ok()
            .flatten();
        owners_only(
            &p.authority(),
            &Authority::of_client(owner, &[]),
            "delete this client",
        )?;
        rt.guard_managed(ManagedKind::Client, client_id, "OAuth client", meta)
            .await?;
        let event = rt.event(
            p,
            Some(&c.org_id),
            "oauth_client.delete",
            Some(client_id),
            meta,
            serde_json::json!({ "name": c.name }),
        );
        rt.store.client_delete(client_id, c.version, &event).await?;
        rt.invalidate(Invalidation::Client(client_id.to_string()))
            .await
    }

    /// Adds a secret (shown once); with a grace period, the others expire when it ends.
    /// Concurrent additions with no grace period leave exactly one live secret: the last one's.
    pub async fn client_secret_add(
        &self,
        p: &Principal,
        client_id: &str,
        old_expire_in: Option<time::Duration>,
        if_match: Option<i64>,
        meta: &RequestMeta,
    ) -> Result<(ClientSecret, SecretString)> {
        if let Some(g) = old_expire_in {
            if g.is_negative() || g > time::Duration::days(90) {
                return Err(Error::invalid(
                    "old_secrets_expire_in_seconds",
                    "the grace period must be between 0 and 90 days",
                ));
            }
        }
        retry_on_conflict!(
            if_match,
            self.client_secret_add_once(p, client_id, old_expire_in, if_match, meta)
        )
    }

    async fn client_secret_add_once(
        &self,
        p: &Principal,
        client_id: &str,
        old_expire_in: Option<time::Duration>,
        if_match: Option<i64>,
        meta: &RequestMeta,
    ) -> Result<(ClientSecret, SecretString)> {
        let rt = &self.rt;
        let (c, _, _) = rt.client_in_reach(p, client_id).await?;
        check_version(if_match, c.version, "OAuth client")?;
        within(
            &p.authority(),
            &rt.client_authority(&c).await?,
            "add a secret to this client",
        )?;
        rt.guard_managed(ManagedKind::Client, client_id, "OAuth client", meta)
            .await?;
        if !c.auth_method.uses_secret() {
            return Err(Error::Conflict(
                "this client authenticates with `private_key_jwt` and has no secrets; set its `token_endpoint_auth_method` to a secret method first".into(),
            ));
        }
        let (cs, secret) = self.new_secret(client_id, None);
        let old_expire_at = old_expire_in.map(|g| rt.now() + g);
        let event = rt.event(
            p,
            Some(&c.org_id),
            "client_secret.create",
            Some(client_id),
            meta,
            serde_json::json!({
                "secret_id": cs.id,
                "old_secrets_expire_at": old_expire_at.map(to_ms),
            }),
        );
        rt.store
            .client_secret_add(&cs, c.version, old_expire_at, &event)
            .await?;
        rt.invalidate(Invalidation::Client(client_id.to_string()))
            .await?;
        Ok((cs, secret))
    }

    /// Retires a secret at once. Tokens issued before the next whole second stop working (the
    /// client's not-before moves), so whatever the secret obtained is cut off too; tokens are
    /// never issued before the not-before, so one obtained right after is valid.
    pub async fn client_secret_retire(
        &self,
        p: &Principal,
        client_id: &str,
        secret_id: &str,
        if_match: Option<i64>,
        meta: &RequestMeta,
    ) -> Result<()> {
        retry_on_conflict!(
            if_match,
            self.client_secret_retire_once(p, client_id, secret_id, if_match, meta)
        )
    }

    async fn client_secret_retire_once(
        &self,
        p: &Principal,
        client_id: &str,
        secret_id: &str,
        if_match: Option<i64>,
        meta: &RequestMeta,
    ) -> Result<()> {
        let rt = &self.rt;
        let (c, _, _) = rt.client_in_reach(p, client_id).await?;
        check_version(if_match, c.version, "OAuth client")?;
        within(
            &p.authority(),
            &rt.client_authority(&c).await?,
            "retire a secret of this client",
        )?;
        rt.guard_managed(ManagedKind::Client, client_id, "OAuth client", meta)
            .await?;
        if !is_id("sec", secret_id) {
            return Err(Error::NotFound("client secret"));
        }
        let event = rt.event(
            p,
            Some(&c.org_id),
            "client_secret.retire",
            Some(client_id),
            meta,
            serde_json::json!({ "secret_id": secret_id }),
        );
        let not_before = ceil_to_second(rt.now());
        if !rt
            .store
            .client_secret_delete(client_id, secret_id, c.version, not_before, &event)
            .await?
        {
            return Err(Error::NotFound("client secret"));
        }
        rt.invalidate(Invalidation::Client(client_id.to_string()))
            .await
    }

    /// Issues a token for a client from the management API (the console's "create access
    /// token"): the caller acts with the client's power, so it must hold it.
    pub async fn client_token(
        &self,
        p: &Principal,
        client_id: &str,
        scope: Option<&str>,
        meta: &RequestMeta,
    ) -> Result<IssuedToken> {
        let rt = &self.rt;
        let (c, _, _) = rt.client_in_reach(p, client_id).await?;
        within(
            &p.authority(),
            &rt.client_authority(&c).await?,
            "issue a token for this client",
        )?;
        // RFC 9449 §5.2: such a client's tokens are all DPoP-bound, and only the client holds
        // the key a token would be bound to, so no unbound token is made for it here.
        if c.dpop_bound_access_tokens {
            return Err(Error::Conflict(
                "this client requires DPoP-bound access tokens (`dpop_bound_access_tokens`): it obtains them itself at the token endpoint, with a DPoP proof made with its own key".into(),
            ));
        }
        let cached = rt
            .cached_client(client_id)
            .await?
            .filter(|c| c.is_enabled())
            .ok_or(Error::NotFound("OAuth client"))?;
        let req = MintRequest {
            scope,
            ..Default::default()
        };
        let issued = rt.mint(&cached, req).map_err(|e| match e {
            OAuthError::InvalidScope(m) => Error::invalid("scope", m),
            _ => Error::Storage("no signing key is active".into()),
        })?;
        let event = rt.event(
            p,
            Some(&c.org_id),
            "access_token.issue",
            Some(client_id),
            meta,
            serde_json::json!({ "scope": issued.scope, "via": "management" }),
        );
        rt.store.activity_append(&[event]).await?;
        Ok(issued)
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
        "token_endpoint_auth_method": c.auth_method.as_str(),
        // The keys by RFC 7638 thumbprint: enough to tell which were registered.
        "jwks_thumbprints": c.jwks.as_ref().map(|s| s.keys().iter().map(|k| k.thumbprint()).collect::<Vec<_>>()),
        "jwks_uri": c.jwks_uri,
        "federated_credentials": c.federated_credentials,
        "may_act": c.may_act,
        "dpop_bound_access_tokens": c.dpop_bound_access_tokens,
        "rate_limits": c.rate_limits,
    })
}
