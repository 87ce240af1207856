//! The one reach check, and the lookups use cases share. A target the caller may not reach —
//! another organization's, or someone else's for a caller limited to their own — answers
//! exactly what an unknown id answers ([`Error::NotFound`] with the target's kind), on every
//! route, so a refusal teaches nothing.

use super::Runtime;
use crate::domain::ceiling::Authority;
use crate::domain::error::{Error, Result};
use crate::domain::ids::is_id;
use crate::domain::model::{ApiKey, ClientSecret, Member, OAuthClient, Org, Project, Role};
use crate::domain::perm::{Access, MemberRole, Permission, Principal};
use std::collections::BTreeSet;

impl Runtime {
    /// The access `p` has to something of `org_id` owned by `owner`, needing `perm`; anything
    /// out of reach is `NotFound(what)`, the answer an unknown id gets.
    pub fn reach(
        &self,
        p: &Principal,
        org_id: &str,
        owner: Option<&str>,
        perm: Permission,
        what: &'static str,
    ) -> Result<Access> {
        let access = p.access_in(org_id.to_string(), perm).map_err(|e| match e {
            Error::Forbidden(_) | Error::NotFound(_) => Error::NotFound(what),
            other => other,
        })?;
        if !access.reaches(org_id, owner) {
            return Err(Error::NotFound(what));
        }
        Ok(access)
    }

    /// A webhook endpoint `p` may manage.
    pub async fn webhook_in_reach(
        &self,
        p: &Principal,
        id: &str,
    ) -> Result<(crate::domain::webhook::Endpoint, Access)> {
        const WHAT: &str = "webhook";
        if !is_id("whk", id) {
            return Err(Error::NotFound(WHAT));
        }
        let ep = self
            .store
            .webhook_get(id)
            .await?
            .ok_or(Error::NotFound(WHAT))?;
        let access = self.reach(p, &ep.org_id, None, Permission::WebhooksManage, WHAT)?;
        Ok((ep, access))
    }

    /// An API key `p` may manage.
    pub async fn key_in_reach(&self, p: &Principal, id: &str) -> Result<(ApiKey, Access)> {
        const WHAT: &str = "API key";
        if !is_id("key", id) {
            return Err(Error::NotFound(WHAT));
        }
        let key = self
            .store
            .api_key_get(id)
            .await?
            .ok_or(Error::NotFound(WHAT))?;
        let access = self.reach(
            p,
            &key.org_id,
            key.owner_member_id.as_deref(),
            Permission::KeysManage,
            WHAT,
        )?;
        Ok((key, access))
    }

    /// An OAuth client `p` may manage, with its secrets.
    pub async fn client_in_reach(
        &self,
        p: &Principal,
        client_id: &str,
    ) -> Result<(OAuthClient, Vec<ClientSecret>, Access)> {
        const WHAT: &str = "OAuth client";
        if !self.settings.oauth.client_id_format.claims(client_id) || client_id.len() > 128 {
            return Err(Error::NotFound(WHAT));
        }
        let (c, s) = self
            .store
            .client_get(client_id)
            .await?
            .ok_or(Error::NotFound(WHAT))?;
        let access = self.reach(
            p,
            &c.org_id,
            c.owner_member_id.as_deref(),
            Permission::ClientsManage,
            WHAT,
        )?;
        Ok((c, s, access))
    }

    /// A member `p` may manage. A member asking to manage themself is told they may not (they
    /// know they exist); anyone else out of reach gets the unknown-id answer.
    pub async fn member_in_reach(&self, p: &Principal, id: &str) -> Result<(Member, Access)> {
        const WHAT: &str = "member";
        if !is_id("mem", id) {
            return Err(Error::NotFound(WHAT));
        }
        let m = self
            .store
            .member_get(id)
            .await?
            .ok_or(Error::NotFound(WHAT))?;
        let access = p
            .access_in(m.org_id.clone(), Permission::MembersManage)
            .map_err(|e| match e {
                Error::Forbidden(_) if p.member_id() == Some(id) => e,
                Error::Forbidden(_) | Error::NotFound(_) => Error::NotFound(WHAT),
                other => other,
            })?;
        Ok((m, access))
    }

    pub async fn existing_org(&self, org_id: &str) -> Result<Org> {
        if !is_id("org", org_id) {
            return Err(Error::NotFound("organization"));
        }
        self.store
            .org_get(org_id)
            .await?
            .ok_or(Error::NotFound("organization"))
    }

    /// A `may_act` list (RFC 8693 delegation): existing OAuth clients of the organization,
    /// each once, at most 32.
    pub async fn check_may_act(&self, org_id: &str, ids: Vec<String>) -> Result<Vec<String>> {
        if ids.len() > 32 {
            return Err(Error::invalid(
                "may_act",
                "`may_act` names at most 32 clients",
            ));
        }
        let mut out = std::collections::BTreeSet::new();
        for id in ids {
            let known = self
                .cached_client(&id)
                .await?
                .is_some_and(|c| c.client.org_id == org_id);
            if !known {
                return Err(Error::invalid(
                    "may_act",
                    format!("`{id}` is not an OAuth client of this organization"),
                ));
            }
            out.insert(id);
        }
        Ok(out.into_iter().collect())
    }

    /// The project a credential goes in: the one named (it must belong to the organization),
    /// or the organization's default project.
    pub async fn project_in(&self, org_id: &str, project_id: Option<&str>) -> Result<Project> {
        match project_id {
            Some(id) => {
                if !is_id("prj", id) {
                    return Err(Error::NotFound("project"));
                }
                match self.store.project_get(id).await? {
                    Some(pr) if pr.org_id == org_id => Ok(pr),
                    _ => Err(Error::NotFound("project")),
                }
            }
            None => self
                .store
                .project_list(org_id)
                .await?
                .into_iter()
                .find(|pr| pr.name == "default")
                .ok_or(Error::NotFound("project")),
        }
    }

    /// Every registered scope (the metadata's `scopes_supported`).
    pub async fn scopes_supported(&self) -> Result<BTreeSet<String>> {
        Ok(self
            .store
            .service_list()
            .await?
            .into_iter()
            .flat_map(|s| s.scopes)
            .collect())
    }

    /// Registered scopes only, sorted and without repeats.
    pub async fn check_scopes(&self, scopes: Vec<String>) -> Result<Vec<String>> {
        let known = self.scopes_supported().await?;
        let mut out = BTreeSet::new();
        for s in scopes {
            if !known.contains(&s) {
                return Err(Error::invalid(
                    "scopes",
                    format!(
                        "unknown scope `{s}`: register it with a service first (POST /v1/services)"
                    ),
                ));
            }
            out.insert(s);
        }
        Ok(out.into_iter().collect())
    }

    /// The roles named, as defined in the organization; an unknown name is invalid input.
    pub async fn roles_named(&self, org_id: &str, names: &[String]) -> Result<Vec<Role>> {
        if names.is_empty() {
            return Ok(vec![]);
        }
        let defined = self.store.role_list(org_id).await?;
        let mut out: Vec<Role> = Vec::new();
        for name in names {
            let role = defined
                .iter()
                .find(|r| &r.name == name)
                .ok_or_else(|| Error::invalid("roles", format!("unknown role `{name}`")))?;
            if !out.iter().any(|r| r.name == role.name) {
                out.push(role.clone());
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The current role of a credential's owning member (`None` for a service credential). A
    /// member who no longer exists owns nothing any more: refused as not found.
    pub async fn owner_role(&self, owner: Option<&str>) -> Result<Option<MemberRole>> {
        match owner {
            None => Ok(None),
            Some(id) => Ok(Some(
                self.store
                    .member_get(id)
                    .await?
                    .ok_or(Error::NotFound("member"))?
                    .role,
            )),
        }
    }

    /// What a key holds, for the ceiling.
    pub async fn key_authority(&self, key: &ApiKey) -> Result<Authority> {
        let owner = self.owner_role(key.owner_member_id.as_deref()).await?;
        let roles = self.roles_named(&key.org_id, &key.roles).await?;
        Ok(Authority::of_key(owner, &key.scopes, &roles))
    }

    /// What a client holds, for the ceiling.
    pub async fn client_authority(&self, c: &OAuthClient) -> Result<Authority> {
        let owner = self.owner_role(c.owner_member_id.as_deref()).await?;
        Ok(Authority::of_client(owner, &c.scopes))
    }

    /// Who owns a new credential (`what`: "keys" or "clients"): a member's are always their
    /// own; an org-wide manager may name a member of the organization; otherwise the calling
    /// member, or nobody (a project's service credential) when `service` is asked for or the
    /// caller is no member.
    pub async fn credential_owner(
        &self,
        access: &Access,
        p: &Principal,
        asked: Option<String>,
        what: &str,
        service: bool,
    ) -> Result<Option<String>> {
        match (access.only_member(), asked) {
            (Some(me), Some(asked)) if me != asked => Err(Error::Forbidden(format!(
                "a member can only create {what} they own"
            ))),
            (Some(me), _) => Ok(Some(me.to_string())),
            (None, Some(asked)) => {
                let m = if is_id("mem", &asked) {
                    self.store.member_get(&asked).await?
                } else {
                    None
                };
                match m {
                    Some(m) if m.org_id == access.org_id() => Ok(Some(m.id)),
                    _ => Err(Error::invalid(
                        "owner_member_id",
                        "no such member in this organization",
                    )),
                }
            }
            (None, None) if service => Ok(None),
            (None, None) => Ok(p.member_id().map(str::to_string)),
        }
    }
}
