//! Management permissions, roles and the authenticated principal.
//!
//! A management operation can only reach storage through an [`Access`], and the only way to
//! get one is [`Principal::access`], which checks the permission and the organization.

use crate::domain::ceiling::{Authority, Scopes};
use crate::domain::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// One management permission. Serialized as `area:verb`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum Permission {
    /// Manage every API key of the organization.
    #[serde(rename = "keys:manage")]
    KeysManage,
    /// Manage the API keys one owns.
    #[serde(rename = "keys:own")]
    KeysOwn,
    /// Manage OAuth clients.
    #[serde(rename = "clients:manage")]
    ClientsManage,
    /// Add members, change their roles, remove them.
    #[serde(rename = "members:manage")]
    MembersManage,
    /// Create projects.
    #[serde(rename = "projects:manage")]
    ProjectsManage,
    /// Define roles.
    #[serde(rename = "roles:manage")]
    RolesManage,
    /// Read and verify the activity log.
    #[serde(rename = "activity:read")]
    ActivityRead,
    /// Call the introspection endpoint.
    #[serde(rename = "tokens:introspect")]
    TokensIntrospect,
    /// Manage the organization's webhook endpoints and see their deliveries.
    #[serde(rename = "webhooks:manage")]
    WebhooksManage,
}

impl Permission {
    pub const ALL: [Permission; 9] = [
        Permission::KeysManage,
        Permission::KeysOwn,
        Permission::ClientsManage,
        Permission::MembersManage,
        Permission::ProjectsManage,
        Permission::RolesManage,
        Permission::ActivityRead,
        Permission::TokensIntrospect,
        Permission::WebhooksManage,
    ];

    fn bit(self) -> u32 {
        1 << (self as u32)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::KeysManage => "keys:manage",
            Permission::KeysOwn => "keys:own",
            Permission::ClientsManage => "clients:manage",
            Permission::MembersManage => "members:manage",
            Permission::ProjectsManage => "projects:manage",
            Permission::RolesManage => "roles:manage",
            Permission::ActivityRead => "activity:read",
            Permission::TokensIntrospect => "tokens:introspect",
            Permission::WebhooksManage => "webhooks:manage",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// A set of permissions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PermSet(u32);

impl PermSet {
    pub const EMPTY: PermSet = PermSet(0);

    pub fn all() -> Self {
        Self::from_iter(Permission::ALL)
    }
    pub fn has(self, p: Permission) -> bool {
        self.0 & p.bit() != 0
    }
    pub fn union(self, o: PermSet) -> PermSet {
        PermSet(self.0 | o.0)
    }
    pub fn contains(self, o: PermSet) -> bool {
        self.0 & o.0 == o.0
    }
    pub fn iter(self) -> impl Iterator<Item = Permission> {
        Permission::ALL.into_iter().filter(move |p| self.has(*p))
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl FromIterator<Permission> for PermSet {
    fn from_iter<I: IntoIterator<Item = Permission>>(iter: I) -> Self {
        PermSet(iter.into_iter().fold(0, |acc, p| acc | p.bit()))
    }
}

/// A member's role in their organization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberRole {
    Owner,
    Admin,
    Member,
}

impl MemberRole {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberRole::Owner => "owner",
            MemberRole::Admin => "admin",
            MemberRole::Member => "member",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "owner" => Some(MemberRole::Owner),
            "admin" => Some(MemberRole::Admin),
            "member" => Some(MemberRole::Member),
            _ => None,
        }
    }
    /// Owners and admins manage everything in the organization; members only their own keys.
    pub fn permissions(self) -> PermSet {
        match self {
            MemberRole::Owner | MemberRole::Admin => PermSet::all(),
            MemberRole::Member => PermSet::from_iter([Permission::KeysOwn]),
        }
    }
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// The deployment's admin key: every permission in every organization.
    AdminKey,
    /// An OAuth client (through one of its access tokens, or at an OAuth endpoint).
    Client { client_id: String },
    /// An API key, owned by a member or (a service token) by its project.
    ApiKey {
        key_id: String,
        member_id: Option<String>,
        member_role: Option<MemberRole>,
    },
    /// A web-console session opened with the admin key: the admin key's authority.
    ConsoleAdmin,
    /// A web-console session of a member (email and password): the member's current role.
    ConsoleMember {
        member_id: String,
        member_role: MemberRole,
    },
}

/// An authenticated caller: who, in which organization, with which permissions and scopes.
#[derive(Debug, Clone)]
pub struct Principal {
    pub actor: Actor,
    /// The caller's organization; `None` only for the admin key.
    pub org_id: Option<String>,
    pub project_id: Option<String>,
    pub permissions: PermSet,
    pub scopes: Vec<String>,
}

/// Proof that a caller may perform an operation in one organization, and how far it reaches.
/// Its fields are private: the only ways to get one are [`Principal::access`] and
/// [`Principal::access_in`], which check the permission and the organization, so a use case
/// (and a store filter, which takes one) cannot reach storage without that check.
#[derive(Debug, Clone)]
pub struct Access {
    org_id: String,
    only_member: Option<String>,
    permissions: PermSet,
    is_admin_key: bool,
}

impl Access {
    /// The organization this access is for.
    pub fn org_id(&self) -> &str {
        &self.org_id
    }
    /// `Some(member)` when the caller may only touch what that member owns.
    pub fn only_member(&self) -> Option<&str> {
        self.only_member.as_deref()
    }
    /// The caller's permissions.
    pub fn permissions(&self) -> PermSet {
        self.permissions
    }
    pub fn is_admin_key(&self) -> bool {
        self.is_admin_key
    }

    /// Whether a resource of `org_id` owned by `owner` is within reach.
    pub fn reaches(&self, org_id: &str, owner: Option<&str>) -> bool {
        org_id == self.org_id
            && match &self.only_member {
                None => true,
                Some(me) => owner == Some(me.as_str()),
            }
    }
}

impl Principal {
    pub fn admin() -> Self {
        Principal {
            actor: Actor::AdminKey,
            org_id: None,
            project_id: None,
            permissions: PermSet::all(),
            scopes: vec![],
        }
    }

    /// The admin key itself, or a console session opened with it.
    pub fn is_admin_key(&self) -> bool {
        matches!(self.actor, Actor::AdminKey | Actor::ConsoleAdmin)
    }

    /// How the caller is named in the activity log.
    pub fn actor_label(&self) -> String {
        match &self.actor {
            Actor::AdminKey => "admin-key".into(),
            Actor::ApiKey {
                key_id,
                member_id: Some(m),
                ..
            } => format!("member:{m} via api-key:{key_id}"),
            Actor::ApiKey { key_id, .. } => format!("api-key:{key_id}"),
            Actor::Client { client_id } => format!("client:{client_id}"),
            Actor::ConsoleAdmin => "admin-key via console".into(),
            Actor::ConsoleMember { member_id, .. } => format!("member:{member_id} via console"),
        }
    }

    /// What the caller holds, for the ceiling rule ([`crate::domain::ceiling`]).
    pub fn authority(&self) -> Authority {
        match &self.actor {
            Actor::AdminKey | Actor::ConsoleAdmin => Authority::admin_key(),
            Actor::ConsoleMember { member_role, .. } => Authority::of_member(*member_role),
            Actor::ApiKey { member_role, .. } => Authority {
                permissions: self.permissions,
                scopes: Scopes::only(self.scopes.iter().cloned()),
                owner: *member_role == Some(MemberRole::Owner),
                above_owners: false,
            },
            Actor::Client { .. } => Authority {
                permissions: PermSet::EMPTY,
                scopes: Scopes::only(self.scopes.iter().cloned()),
                owner: false,
                above_owners: false,
            },
        }
    }

    /// The member's role when the caller acts as a member (their key or their console session).
    pub fn member_role(&self) -> Option<MemberRole> {
        match &self.actor {
            Actor::ApiKey { member_role, .. } => *member_role,
            Actor::ConsoleMember { member_role, .. } => Some(*member_role),
            Actor::AdminKey | Actor::ConsoleAdmin | Actor::Client { .. } => None,
        }
    }

    pub fn member_id(&self) -> Option<&str> {
        match &self.actor {
            Actor::ApiKey { member_id, .. } => member_id.as_deref(),
            Actor::ConsoleMember { member_id, .. } => Some(member_id),
            Actor::AdminKey | Actor::ConsoleAdmin | Actor::Client { .. } => None,
        }
    }

    /// The organization an operation acts in: the one asked for (admin key), or the caller's own.
    /// Asking for another organization than one's own answers 404, as if it did not exist.
    pub fn org_for(&self, requested: Option<&str>) -> Result<String> {
        match (&self.org_id, requested) {
            (None, Some(r)) => Ok(r.to_string()),
            (None, None) => Ok(crate::domain::ids::DEFAULT_ORG_ID.to_string()),
            (Some(own), None) => Ok(own.clone()),
            (Some(own), Some(r)) if own == r => Ok(own.clone()),
            (Some(_), Some(_)) => Err(Error::NotFound("organization")),
        }
    }

    /// Checks `perm` in the requested organization and returns the access that proves it.
    /// `keys:own` alone grants access limited to the caller's own resources.
    pub fn access(&self, requested_org: Option<&str>, perm: Permission) -> Result<Access> {
        let org_id = self.org_for(requested_org)?;
        self.access_in(org_id, perm)
    }

    pub fn access_in(&self, org_id: String, perm: Permission) -> Result<Access> {
        if let Some(own) = &self.org_id {
            if *own != org_id {
                return Err(Error::NotFound("organization"));
            }
        }
        if self.permissions.has(perm) {
            return Ok(Access {
                org_id,
                only_member: None,
                permissions: self.permissions,
                is_admin_key: self.is_admin_key(),
            });
        }
        let own_kind = matches!(perm, Permission::KeysManage | Permission::ClientsManage);
        if own_kind && self.permissions.has(Permission::KeysOwn) {
            if let Some(member) = self.member_id() {
                return Ok(Access {
                    org_id,
                    only_member: Some(member.to_string()),
                    permissions: self.permissions,
                    is_admin_key: false,
                });
            }
        }
        Err(Error::Forbidden(format!(
            "this credential lacks the `{}` permission",
            perm.as_str()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member_key(role: MemberRole) -> Principal {
        Principal {
            actor: Actor::ApiKey {
                key_id: "key_a".into(),
                member_id: Some("mem_a".into()),
                member_role: Some(role),
            },
            org_id: Some("org_a".into()),
            project_id: None,
            permissions: role.permissions(),
            scopes: vec![],
        }
    }

    #[test]
    fn members_reach_only_their_own_keys() {
        let access = member_key(MemberRole::Member)
            .access(None, Permission::KeysManage)
            .unwrap();
        assert_eq!(access.only_member(), Some("mem_a"));
        assert!(access.reaches("org_a", Some("mem_a")));
        assert!(!access.reaches("org_a", Some("mem_b")));
        assert!(!access.reaches("org_a", None));
        assert!(matches!(
            member_key(MemberRole::Member).access(None, Permission::MembersManage),
            Err(Error::Forbidden(_))
        ));
    }

    #[test]
    fn other_organizations_do_not_exist() {
        assert!(matches!(
            member_key(MemberRole::Owner).access(Some("org_b"), Permission::KeysManage),
            Err(Error::NotFound(_))
        ));
        let admin = Principal::admin()
            .access(Some("org_b"), Permission::KeysManage)
            .unwrap();
        assert_eq!(admin.org_id(), "org_b");
        assert!(admin.reaches("org_b", None));
    }

    #[test]
    fn permission_names_round_trip() {
        for p in Permission::ALL {
            assert_eq!(Permission::parse(p.as_str()), Some(p));
        }
        assert_eq!(PermSet::all().iter().count(), Permission::ALL.len());
    }
}
