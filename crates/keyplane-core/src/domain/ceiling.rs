//! The privilege ceiling: nothing can create, change or act with more than the credential that
//! makes or touches it holds. Written once, here; every use case that creates or changes a key,
//! a client, a role or a member asks [`within`] (or, for removals, [`owners_only`]).
//!
//! An [`Authority`] is what a caller or a target holds: management permissions, scopes, and
//! whether it is an owner's (only owners touch owners) or the admin key's (above owners).
//! `docs/authorization.md` has the tables of who holds what and which operation checks what.

use crate::domain::error::{Error, Result};
use crate::domain::model::Role;
use crate::domain::perm::{MemberRole, PermSet, Permission};
use std::collections::BTreeSet;

/// The scopes an authority holds: every scope (the admin key, a person), or a fixed set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scopes {
    All,
    Only(BTreeSet<String>),
}

impl Scopes {
    pub fn only(scopes: impl IntoIterator<Item = String>) -> Self {
        Scopes::Only(scopes.into_iter().collect())
    }

    /// The scopes of `self` that `holder` lacks (empty when `self` is within `holder`);
    /// `None` when `self` is every scope and `holder` is not.
    fn missing_from(&self, holder: &Scopes) -> Option<Vec<String>> {
        match (self, holder) {
            (_, Scopes::All) => Some(vec![]),
            (Scopes::All, Scopes::Only(_)) => None,
            (Scopes::Only(mine), Scopes::Only(theirs)) => {
                Some(mine.difference(theirs).cloned().collect())
            }
        }
    }
}

/// What a caller or a target holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    pub permissions: PermSet,
    pub scopes: Scopes,
    /// An owner, or something of an owner's (their key or client).
    pub owner: bool,
    /// The admin key: above owners, within every ceiling.
    pub above_owners: bool,
}

impl Authority {
    /// The admin key (on the API or in the console).
    pub fn admin_key() -> Self {
        Authority {
            permissions: PermSet::all(),
            scopes: Scopes::All,
            owner: true,
            above_owners: true,
        }
    }

    /// A member with `role`: the role's permissions, and every scope (a person may use every
    /// service; the keys they make are capped by what makes them).
    pub fn of_member(role: MemberRole) -> Self {
        Authority {
            permissions: role.permissions(),
            scopes: Scopes::All,
            owner: role == MemberRole::Owner,
            above_owners: false,
        }
    }

    /// An API key: owned by a member with `owner_role` (a member's key acts with the member's
    /// role, whatever roles it carries), or a service token (`None`: its roles' permissions).
    /// Its scopes are its own and its roles'.
    pub fn of_key(owner_role: Option<MemberRole>, scopes: &[String], roles: &[Role]) -> Self {
        let permissions = match owner_role {
            Some(role) => role.permissions(),
            None => roles
                .iter()
                .fold(PermSet::EMPTY, |acc, r| acc.union(r.perm_set())),
        };
        let all_scopes = scopes
            .iter()
            .cloned()
            .chain(roles.iter().flat_map(|r| r.scopes.iter().cloned()));
        Authority {
            permissions,
            scopes: Scopes::only(all_scopes),
            owner: owner_role == Some(MemberRole::Owner),
            above_owners: false,
        }
    }

    /// An OAuth client: no management permissions, its scopes; an owner's if its member is one.
    pub fn of_client(owner_role: Option<MemberRole>, scopes: &[String]) -> Self {
        Authority {
            permissions: PermSet::EMPTY,
            scopes: Scopes::only(scopes.iter().cloned()),
            owner: owner_role == Some(MemberRole::Owner),
            above_owners: false,
        }
    }

    /// A role: what it grants.
    pub fn of_role(role: &Role) -> Self {
        Authority {
            permissions: role.perm_set(),
            scopes: Scopes::only(role.scopes.iter().cloned()),
            owner: false,
            above_owners: false,
        }
    }
}

/// Only owners (and the admin key) touch owners and what is theirs.
pub fn owners_only(caller: &Authority, target: &Authority, what: &str) -> Result<()> {
    if target.owner && !caller.owner && !caller.above_owners {
        return Err(Error::Forbidden(format!(
            "cannot {what}: only an owner (or the admin key) may touch an owner or what is theirs"
        )));
    }
    Ok(())
}

/// Whether `target` is within what `caller` holds: only owners touch owners, and the target's
/// permissions and scopes are a subset of the caller's. `what` names the operation for the
/// refusal ("create this key", "regenerate this key", ...).
pub fn within(caller: &Authority, target: &Authority, what: &str) -> Result<()> {
    if caller.above_owners {
        return Ok(());
    }
    owners_only(caller, target, what)?;
    // Managing every key includes managing one's own.
    let held = if caller.permissions.has(Permission::KeysManage) {
        caller
            .permissions
            .union(PermSet::from_iter([Permission::KeysOwn]))
    } else {
        caller.permissions
    };
    if !held.contains(target.permissions) {
        let missing: Vec<&str> = target
            .permissions
            .iter()
            .filter(|p| !held.has(*p))
            .map(|p| p.as_str())
            .collect();
        return Err(Error::Forbidden(format!(
            "cannot {what}: it would hold permissions this credential lacks ({})",
            missing.join(", ")
        )));
    }
    match target.scopes.missing_from(&caller.scopes) {
        Some(missing) if missing.is_empty() => Ok(()),
        Some(missing) => Err(Error::Forbidden(format!(
            "cannot {what}: it would hold scopes this credential lacks ({})",
            missing.join(", ")
        ))),
        None => Err(Error::Forbidden(format!(
            "cannot {what}: a member may use every scope, and this credential holds only some; \
             use the admin key or an owner's or admin's console session"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(perms: &[Permission], scopes: &[&str], owner: bool) -> Authority {
        Authority {
            permissions: perms.iter().copied().collect(),
            scopes: Scopes::only(scopes.iter().map(|s| s.to_string())),
            owner,
            above_owners: false,
        }
    }

    /// caller × target → allowed, as a table.
    #[test]
    fn the_ceiling_as_a_table() {
        use Permission::*;
        let admin_key = Authority::admin_key();
        let owner = Authority::of_member(MemberRole::Owner);
        let admin = Authority::of_member(MemberRole::Admin);
        let member = Authority::of_member(MemberRole::Member);
        let km_read = key(&[KeysManage], &["s:read"], false);
        let all_read = key(&Permission::ALL, &["s:read"], false);
        let owner_key = key(&Permission::ALL, &["s:read"], true);
        let read = key(&[], &["s:read"], false);
        let write = key(&[], &["s:write"], false);
        let owners_thing = key(&[], &[], true);
        let members_read_key = key(&[KeysOwn], &["s:read"], false);
        let rows: Vec<(&str, &Authority, &Authority, bool)> = vec![
            ("admin key over an owner", &admin_key, &owner, true),
            ("admin key over anything", &admin_key, &owner_key, true),
            ("owner over an owner", &owner, &owner, true),
            ("owner over an admin", &owner, &admin, true),
            ("admin over an owner", &admin, &owner, false),
            (
                "admin over an owner's empty key",
                &admin,
                &owners_thing,
                false,
            ),
            ("admin over an admin", &admin, &admin, true),
            ("admin over a read key", &admin, &read, true),
            ("member over an admin", &member, &admin, false),
            ("member over a read key", &member, &read, true),
            ("keys:manage+read over a read key", &km_read, &read, true),
            ("keys:manage+read over a write key", &km_read, &write, false),
            ("keys:manage+read over an owner", &km_read, &owner, false),
            ("keys:manage+read over a member", &km_read, &member, false),
            (
                "keys:manage+read over a member's read key",
                &km_read,
                &members_read_key,
                true,
            ),
            (
                "all perms, read scope, over a member",
                &all_read,
                &member,
                false,
            ),
            (
                "owner's read key over a write key",
                &owner_key,
                &write,
                false,
            ),
            (
                "owner's read key over an owner's key",
                &owner_key,
                &owner_key,
                true,
            ),
        ];
        let wrong: Vec<_> = rows
            .iter()
            .filter(|(_, c, t, ok)| within(c, t, "act").is_ok() != *ok)
            .map(|(name, ..)| *name)
            .collect();
        assert!(wrong.is_empty(), "rows that disagree: {wrong:?}");
    }

    #[test]
    fn a_refusal_names_what_is_missing() {
        let e = within(
            &key(&[Permission::KeysManage], &["s:read"], false),
            &key(&[Permission::KeysManage], &["s:read", "s:write"], false),
            "create this key",
        )
        .unwrap_err();
        assert!(e.to_string().contains("s:write"), "{e}");
    }
}
