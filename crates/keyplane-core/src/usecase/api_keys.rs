//! [`Keyplane`] use cases of API keys: create, list, get, edit, copy, revoke, regenerate.

use super::{check_version, retry_on_conflict};
use crate::app::Keyplane;
use crate::domain::ceiling::{owners_only, within, Authority};
use crate::domain::clock::rfc3339;
use crate::domain::error::{Error, Result};
use crate::domain::ids::new_id;
use crate::domain::model::{ApiKey, KeySecret, Role};
use crate::domain::perm::{MemberRole, Permission, Principal};
use crate::domain::request::{
    clean_description, clean_name, page_limit, paginate, parse_cursor, Page, RequestMeta,
};
use crate::domain::secret::SecretString;
use crate::domain::usage::{check_rate_limits, RateLimit};
use crate::store::{Invalidation, KeyFilter};
use time::OffsetDateTime;

/// Input for creating an API key.
#[derive(Debug, Clone, Default)]
pub struct NewApiKey {
    pub org_id: Option<String>,
    pub project_id: Option<String>,
    pub owner_member_id: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub scopes: Vec<String>,
    pub roles: Vec<String>,
    pub expires_at: Expiry,
    pub default_for_service: Option<String>,
    /// With no `owner_member_id`, make a project service token even when a member creates it
    /// (a copy of a service token stays one). Only org-wide managers may.
    pub service_token: bool,
    /// The OAuth clients that may act for the key's holder (RFC 8693 token exchange).
    pub may_act: Vec<String>,
    /// Named rate limits (issue 15).
    pub rate_limits: Vec<RateLimit>,
}

/// When a new key stops working.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Expiry {
    /// The deployment's default (`api_key_default_ttl_days`, 90 days unless configured).
    #[default]
    Default,
    /// Never: the caller asked for a key without an expiry.
    Never,
    At(OffsetDateTime),
}

/// Changes to an API key; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ApiKeyPatch {
    pub name: Option<String>,
    pub description: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub roles: Option<Vec<String>>,
    /// `Some(None)` removes the expiry.
    pub expires_at: Option<Option<OffsetDateTime>>,
    /// `Some(None)` removes the default mark.
    pub default_for_service: Option<Option<String>>,
    /// Replaces who may act for the key's holder (`[]`: nobody).
    pub may_act: Option<Vec<String>>,
    /// Replaces the key's rate limits (`[]`: none).
    pub rate_limits: Option<Vec<RateLimit>>,
}

impl Keyplane {
    async fn check_default_mark(
        &self,
        service: Option<String>,
        scopes: &[String],
        roles_scopes: &[String],
    ) -> Result<Option<String>> {
        let Some(service) = service else {
            return Ok(None);
        };
        let s = self
            .rt
            .store
            .service_list()
            .await?
            .into_iter()
            .find(|s| s.name == service)
            .ok_or_else(|| {
                Error::invalid(
                    "default_for_service",
                    format!("unknown service `{service}`"),
                )
            })?;
        if !s
            .scopes
            .iter()
            .any(|x| scopes.contains(x) || roles_scopes.contains(x))
        {
            return Err(Error::invalid(
                "default_for_service",
                format!("the default token of `{service}` must carry at least one of its scopes"),
            ));
        }
        Ok(Some(service))
    }

    pub async fn api_key_create(
        &self,
        p: &Principal,
        input: NewApiKey,
        meta: &RequestMeta,
    ) -> Result<(ApiKey, SecretString)> {
        let rt = &self.rt;
        let access = p.access(input.org_id.as_deref(), Permission::KeysManage)?;
        rt.existing_org(access.org_id()).await?;
        let project = rt
            .project_in(access.org_id(), input.project_id.as_deref())
            .await?;
        let owner = rt
            .credential_owner(
                &access,
                p,
                input.owner_member_id,
                "keys",
                input.service_token,
            )
            .await?;
        let now = rt.now();
        let expires_at = match input.expires_at {
            Expiry::Default => rt
                .settings
                .api_key_default_ttl_days
                .map(|d| now + time::Duration::days(d)),
            Expiry::Never => None,
            Expiry::At(t) => Some(t),
        };
        if let Some(exp) = expires_at {
            if exp <= now {
                return Err(Error::invalid(
                    "expires_at",
                    "`expires_at` must be in the future",
                ));
            }
        }
        let scopes = rt.check_scopes(input.scopes).await?;
        let roles = rt.roles_named(access.org_id(), &input.roles).await?;
        let owner_role = rt.owner_role(owner.as_deref()).await?;
        let caller = p.authority();
        within(
            &caller,
            &Authority::of_key(owner_role, &scopes, &roles),
            "create this key",
        )?;
        self.roles_within(&caller, owner_role, &roles)?;
        let roles_scopes: Vec<String> = roles.iter().flat_map(|r| r.scopes.clone()).collect();
        let default_for_service = self
            .check_default_mark(input.default_for_service, &scopes, &roles_scopes)
            .await?;
        let secret = rt.settings.api_key_format.generate();
        let name = match input.name {
            Some(n) => clean_name("name", &n)?,
            None => "api-key".to_string(),
        };
        let key = ApiKey {
            id: new_id("key"),
            org_id: access.org_id().to_string(),
            project_id: project.id,
            owner_member_id: owner,
            name,
            description: clean_description(input.description.as_deref())?,
            scopes,
            roles: roles.into_iter().map(|r| r.name).collect(),
            start: self.key_start(&secret),
            created_at: now,
            created_by: p.actor_label(),
            expires_at,
            last_used_at: None,
            is_active: true,
            deactivated_at: None,
            default_for_service,
            may_act: rt.check_may_act(access.org_id(), input.may_act).await?,
            rate_limits: {
                check_rate_limits(&input.rate_limits)?;
                input.rate_limits
            },
            seq: 0,
            version: 1,
        };
        let ks = KeySecret {
            digest: rt.pepper.digest(secret.expose()),
            key_id: key.id.clone(),
            pepper_version: rt.pepper.version(),
            created_at: now,
            expires_at: None,
        };
        let event = rt.event(
            p,
            Some(&key.org_id),
            "api_key.create",
            Some(&key.id),
            meta,
            key_details(&key),
        );
        rt.store
            .api_key_create(&key, &ks, rt.settings.max_active_keys_per_org, now, &event)
            .await?;
        // A digest that was once looked up and found unknown must not stay negative.
        rt.cache.invalidate(&[ks.digest]);
        let key = rt
            .store
            .api_key_get(&key.id)
            .await?
            .ok_or(Error::NotFound("API key"))?;
        Ok((key, secret))
    }

    /// Nobody hands out a role granting more than they hold; and a member's key (which acts
    /// with the member's role) carries no role granting more than that member holds.
    fn roles_within(
        &self,
        caller: &Authority,
        owner_role: Option<MemberRole>,
        roles: &[Role],
    ) -> Result<()> {
        let granted = Authority::of_key(None, &[], roles);
        within(caller, &granted, "grant these roles")?;
        if let Some(member) = owner_role {
            within(
                &Authority::of_member(member),
                &granted,
                "give a member's key roles beyond the member's own",
            )?;
        }
        Ok(())
    }

    /// The secret's prefix and first characters, enough to recognise it in a list.
    fn key_start(&self, secret: &SecretString) -> String {
        let prefix_len = self.rt.settings.api_key_format.prefix().len();
        secret.expose()[..prefix_len + 4].to_string()
    }

    pub async fn api_key_get(&self, p: &Principal, id: &str) -> Result<ApiKey> {
        Ok(self.rt.key_in_reach(p, id).await?.0)
    }

    pub async fn api_key_list(
        &self,
        p: &Principal,
        org_id: Option<&str>,
        project_id: Option<&str>,
        include_inactive: bool,
        cursor: Option<&str>,
        limit: Option<i64>,
    ) -> Result<Page<ApiKey>> {
        let access = p.access(org_id, Permission::KeysManage)?;
        self.rt.existing_org(access.org_id()).await?;
        if let Some(pid) = project_id {
            self.rt.project_in(access.org_id(), Some(pid)).await?;
        }
        let limit = page_limit(limit)?;
        let filter = KeyFilter::new(&access, project_id, include_inactive);
        let items = self
            .rt
            .store
            .api_key_list(&filter, parse_cursor(cursor)?, limit + 1)
            .await?;
        Ok(paginate(items, limit, |k| k.seq))
    }

    /// Edits a key. Without `if_match`, a concurrent change is waited out and the edit applied
    /// on top of it; with it, a key changed since that version is refused.
    pub async fn api_key_update(
        &self,
        p: &Principal,
        id: &str,
        patch: ApiKeyPatch,
        if_match: Option<i64>,
        meta: &RequestMeta,
    ) -> Result<ApiKey> {
        retry_on_conflict!(
            if_match,
            self.api_key_update_once(p, id, &patch, if_match, meta)
        )
    }

    async fn api_key_update_once(
        &self,
        p: &Principal,
        id: &str,
        patch: &ApiKeyPatch,
        if_match: Option<i64>,
        meta: &RequestMeta,
    ) -> Result<ApiKey> {
        let rt = &self.rt;
        let (mut key, _) = rt.key_in_reach(p, id).await?;
        check_version(if_match, key.version, "API key")?;
        if !key.is_active {
            return Err(Error::Conflict("a revoked key cannot be edited".into()));
        }
        let caller = p.authority();
        within(&caller, &rt.key_authority(&key).await?, "change this key")?;
        if let Some(n) = &patch.name {
            key.name = clean_name("name", n)?;
        }
        if let Some(d) = &patch.description {
            key.description = clean_description(Some(d))?;
        }
        if let Some(s) = &patch.scopes {
            key.scopes = rt.check_scopes(s.clone()).await?;
        }
        if let Some(m) = &patch.may_act {
            key.may_act = rt.check_may_act(&key.org_id, m.clone()).await?;
        }
        if let Some(l) = &patch.rate_limits {
            check_rate_limits(l)?;
            key.rate_limits = l.clone();
        }
        let roles = rt
            .roles_named(&key.org_id, patch.roles.as_ref().unwrap_or(&key.roles))
            .await?;
        key.roles = roles.iter().map(|r| r.name.clone()).collect();
        if let Some(e) = patch.expires_at {
            if e.is_some_and(|e| e <= rt.now()) {
                return Err(Error::invalid(
                    "expires_at",
                    "`expires_at` must be in the future",
                ));
            }
            key.expires_at = e;
        }
        let owner_role = rt.owner_role(key.owner_member_id.as_deref()).await?;
        within(
            &caller,
            &Authority::of_key(owner_role, &key.scopes, &roles),
            "give this key those scopes or roles",
        )?;
        self.roles_within(&caller, owner_role, &roles)?;
        let roles_scopes: Vec<String> = roles.iter().flat_map(|r| r.scopes.clone()).collect();
        let mark = patch
            .default_for_service
            .clone()
            .unwrap_or(key.default_for_service.take());
        key.default_for_service = self
            .check_default_mark(mark, &key.scopes, &roles_scopes)
            .await?;
        let event = rt.event(
            p,
            Some(&key.org_id),
            "api_key.update",
            Some(&key.id),
            meta,
            key_details(&key),
        );
        let (stored, digests) = rt.store.api_key_update(&key, &event).await?;
        rt.invalidate(Invalidation::Digests(digests)).await?;
        Ok(stored)
    }

    /// A new key with the same configuration as `id` (and a new secret).
    pub async fn api_key_copy(
        &self,
        p: &Principal,
        id: &str,
        name: Option<String>,
        meta: &RequestMeta,
    ) -> Result<(ApiKey, SecretString)> {
        let (key, _) = self.rt.key_in_reach(p, id).await?;
        within(
            &p.authority(),
            &self.rt.key_authority(&key).await?,
            "copy this key",
        )?;
        let input = NewApiKey {
            org_id: Some(key.org_id.clone()),
            project_id: Some(key.project_id.clone()),
            owner_member_id: key.owner_member_id.clone(),
            name: Some(name.unwrap_or_else(|| copy_name(&key.name))),
            description: Some(key.description.clone()),
            scopes: key.scopes.clone(),
            roles: key.roles.clone(),
            // The same expiry while it is ahead; an expired key's copy gets the default.
            expires_at: match key.expires_at {
                None => Expiry::Never,
                Some(e) if e > self.rt.now() => Expiry::At(e),
                Some(_) => Expiry::Default,
            },
            default_for_service: None,
            service_token: key.owner_member_id.is_none(),
            may_act: key.may_act.clone(),
            rate_limits: key.rate_limits.clone(),
        };
        self.api_key_create(p, input, meta).await
    }

    /// Revokes a key; revoking a revoked key is a no-op that answers the key. Any key manager
    /// may stop a key (revocation grants nothing), except that only owners stop an owner's.
    pub async fn api_key_revoke(
        &self,
        p: &Principal,
        id: &str,
        if_match: Option<i64>,
        meta: &RequestMeta,
    ) -> Result<ApiKey> {
        retry_on_conflict!(if_match, self.api_key_revoke_once(p, id, if_match, meta))
    }

    async fn api_key_revoke_once(
        &self,
        p: &Principal,
        id: &str,
        if_match: Option<i64>,
        meta: &RequestMeta,
    ) -> Result<ApiKey> {
        let rt = &self.rt;
        let (key, _) = rt.key_in_reach(p, id).await?;
        check_version(if_match, key.version, "API key")?;
        if key.is_active {
            let owner = rt
                .owner_role(key.owner_member_id.as_deref())
                .await
                .ok()
                .flatten();
            owners_only(
                &p.authority(),
                &Authority::of_key(owner, &[], &[]),
                "revoke this key",
            )?;
            let event = rt.event(
                p,
                Some(&key.org_id),
                "api_key.revoke",
                Some(id),
                meta,
                serde_json::json!({ "name": key.name }),
            );
            let digests = rt
                .store
                .api_key_deactivate(id, key.version, rt.now(), &event)
                .await?;
            rt.invalidate(Invalidation::Digests(digests)).await?;
        }
        rt.store
            .api_key_get(id)
            .await?
            .ok_or(Error::NotFound("API key"))
    }

    /// Gives a key a new secret. The old one is refused at once, or after `grace` if given.
    /// Concurrent regenerations leave exactly one secret: the last one's.
    pub async fn api_key_regenerate(
        &self,
        p: &Principal,
        id: &str,
        grace: Option<time::Duration>,
        if_match: Option<i64>,
        meta: &RequestMeta,
    ) -> Result<(ApiKey, SecretString)> {
        if let Some(g) = grace {
            if g.is_negative() || g > time::Duration::days(30) {
                return Err(Error::invalid(
                    "grace_period_seconds",
                    "the grace period must be between 0 and 30 days",
                ));
            }
        }
        retry_on_conflict!(
            if_match,
            self.api_key_regenerate_once(p, id, grace, if_match, meta)
        )
    }

    async fn api_key_regenerate_once(
        &self,
        p: &Principal,
        id: &str,
        grace: Option<time::Duration>,
        if_match: Option<i64>,
        meta: &RequestMeta,
    ) -> Result<(ApiKey, SecretString)> {
        let rt = &self.rt;
        let (key, _) = rt.key_in_reach(p, id).await?;
        check_version(if_match, key.version, "API key")?;
        if !key.is_active {
            return Err(Error::Conflict(
                "a revoked key cannot be regenerated; copy it to make a new key with the same configuration".into(),
            ));
        }
        within(
            &p.authority(),
            &rt.key_authority(&key).await?,
            "regenerate this key",
        )?;
        let now = rt.now();
        let secret = rt.settings.api_key_format.generate();
        let ks = KeySecret {
            digest: rt.pepper.digest(secret.expose()),
            key_id: key.id.clone(),
            pepper_version: rt.pepper.version(),
            created_at: now,
            expires_at: None,
        };
        let old_expire = grace.filter(|g| g.is_positive()).map(|g| now + g);
        let event = rt.event(
            p,
            Some(&key.org_id),
            "api_key.regenerate",
            Some(id),
            meta,
            serde_json::json!({ "grace_period_seconds": grace.map(|g| g.whole_seconds()) }),
        );
        let digests = rt
            .store
            .api_key_replace_secret(
                id,
                key.version,
                &ks,
                &self.key_start(&secret),
                old_expire,
                &event,
            )
            .await?;
        rt.invalidate(Invalidation::Digests(digests)).await?;
        rt.cache.invalidate(&[ks.digest]);
        let key = rt
            .store
            .api_key_get(id)
            .await?
            .ok_or(Error::NotFound("API key"))?;
        Ok((key, secret))
    }
}

fn copy_name(name: &str) -> String {
    let base: String = name.chars().take(120).collect();
    format!("{base} (copy)")
}

fn key_details(k: &ApiKey) -> serde_json::Value {
    serde_json::json!({
        "name": k.name,
        "scopes": k.scopes,
        "roles": k.roles,
        "project_id": k.project_id,
        "owner_member_id": k.owner_member_id,
        "expires_at": k.expires_at.map(rfc3339),
        "default_for_service": k.default_for_service,
        "may_act": k.may_act,
        "rate_limits": k.rate_limits,
    })
}
