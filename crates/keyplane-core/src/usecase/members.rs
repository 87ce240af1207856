//! [`Keyplane`] use cases of members: the people of an organization and their roles.

use super::{check_version, retry_on_conflict};
use crate::app::Keyplane;
use crate::domain::ceiling::{owners_only, within, Authority};
use crate::domain::error::{Error, Result};
use crate::domain::ids::{is_id, new_id};
use crate::domain::managed::ManagedKind;
use crate::domain::model::Member;
use crate::domain::perm::{MemberRole, Permission, Principal};
use crate::domain::request::{clean_name, RequestMeta};
use crate::store::Invalidation;

fn parse_role(role: &str) -> Result<MemberRole> {
    MemberRole::parse(role)
        .ok_or_else(|| Error::invalid("role", "`role` must be `owner`, `admin` or `member`"))
}

impl Keyplane {
    pub async fn member_create(
        &self,
        p: &Principal,
        org_id: Option<&str>,
        email: &str,
        name: Option<&str>,
        role: &str,
        meta: &RequestMeta,
    ) -> Result<Member> {
        let rt = &self.rt;
        let access = p.access(org_id, Permission::MembersManage)?;
        rt.existing_org(access.org_id()).await?;
        let email = email.trim().to_lowercase();
        if email.len() > 254
            || !email.contains('@')
            || email.starts_with('@')
            || email.ends_with('@')
            || email.chars().any(char::is_whitespace)
        {
            return Err(Error::invalid("email", "`email` must be an email address"));
        }
        let role = parse_role(role)?;
        within(
            &p.authority(),
            &Authority::of_member(role),
            "add this member",
        )?;
        let member = Member {
            id: new_id("mem"),
            org_id: access.org_id().to_string(),
            name: clean_name("name", name.unwrap_or(&email))?,
            email,
            role,
            created_at: rt.now(),
            managed_by: None,
            version: 1,
        };
        let event = rt.event(
            p,
            Some(&member.org_id),
            "member.create",
            Some(&member.id),
            meta,
            serde_json::json!({ "role": role.as_str() }),
        );
        rt.store.member_create(&member, &event).await?;
        Ok(member)
    }

    pub async fn member_list(&self, p: &Principal, org_id: Option<&str>) -> Result<Vec<Member>> {
        let org = p.org_for(org_id)?;
        self.rt.existing_org(&org).await?;
        let mut members = self.rt.store.member_list(&org).await?;
        if !p.permissions.has(Permission::MembersManage) {
            // A member sees themself only.
            members.retain(|m| Some(m.id.as_str()) == p.member_id());
        }
        self.rt.fill_managed(&mut members).await?;
        Ok(members)
    }

    pub async fn member_get(&self, p: &Principal, id: &str) -> Result<Member> {
        if !is_id("mem", id) {
            return Err(Error::NotFound("member"));
        }
        let m = self
            .rt
            .store
            .member_get(id)
            .await?
            .ok_or(Error::NotFound("member"))?;
        let own = p.member_id() == Some(id) && p.org_id.as_deref() == Some(m.org_id.as_str());
        if own
            || p.access_in(m.org_id.clone(), Permission::MembersManage)
                .is_ok()
        {
            let mut one = [m];
            self.rt.fill_managed(&mut one).await?;
            let [m] = one;
            Ok(m)
        } else {
            Err(Error::NotFound("member"))
        }
    }

    /// Changes a member's role: the caller must hold the member's power before and after.
    pub async fn member_set_role(
        &self,
        p: &Principal,
        id: &str,
        role: &str,
        if_match: Option<i64>,
        meta: &RequestMeta,
    ) -> Result<Member> {
        let role = parse_role(role)?;
        retry_on_conflict!(
            if_match,
            self.member_set_role_once(p, id, role, if_match, meta)
        )
    }

    async fn member_set_role_once(
        &self,
        p: &Principal,
        id: &str,
        role: MemberRole,
        if_match: Option<i64>,
        meta: &RequestMeta,
    ) -> Result<Member> {
        let rt = &self.rt;
        let (mut m, _) = rt.member_in_reach(p, id).await?;
        check_version(if_match, m.version, "member")?;
        let caller = p.authority();
        within(
            &caller,
            &Authority::of_member(m.role),
            "change this member's role",
        )?;
        within(&caller, &Authority::of_member(role), "give this role")?;
        rt.guard_managed(ManagedKind::Member, id, "member", meta)
            .await?;
        let event = rt.event(
            p,
            Some(&m.org_id),
            "member.role_change",
            Some(id),
            meta,
            serde_json::json!({ "from": m.role.as_str(), "to": role.as_str() }),
        );
        rt.store
            .member_set_role(id, role, m.version, &event)
            .await?;
        rt.invalidate(Invalidation::All).await?;
        m.role = role;
        m.version += 1;
        Ok(m)
    }

    /// Removes a member: their keys are revoked, their OAuth clients disabled (their tokens
    /// stop at once), their console sessions and password links ended, in one transaction.
    pub async fn member_delete(
        &self,
        p: &Principal,
        id: &str,
        if_match: Option<i64>,
        meta: &RequestMeta,
    ) -> Result<()> {
        retry_on_conflict!(if_match, self.member_delete_once(p, id, if_match, meta))
    }

    async fn member_delete_once(
        &self,
        p: &Principal,
        id: &str,
        if_match: Option<i64>,
        meta: &RequestMeta,
    ) -> Result<()> {
        let rt = &self.rt;
        let (m, _) = rt.member_in_reach(p, id).await?;
        check_version(if_match, m.version, "member")?;
        owners_only(
            &p.authority(),
            &Authority::of_member(m.role),
            "remove this member",
        )?;
        rt.guard_managed(ManagedKind::Member, id, "member", meta)
            .await?;
        let event = rt.event(
            p,
            Some(&m.org_id),
            "member.delete",
            Some(id),
            meta,
            serde_json::json!({ "keys_revoked": "all owned", "clients_disabled": "all owned" }),
        );
        let removed = rt
            .store
            .member_delete(id, m.version, rt.now(), &event)
            .await?;
        rt.invalidate(Invalidation::Digests(removed.digests))
            .await?;
        for client_id in removed.client_ids {
            rt.invalidate(Invalidation::Client(client_id)).await?;
        }
        // Their grants went with them: the tokens apps hold for them stop now.
        rt.invalidate(Invalidation::Grants).await?;
        Ok(())
    }
}
