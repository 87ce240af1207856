//! The roles every organization has.

use crate::domain::model::Role;
use crate::domain::perm::Permission;
use time::OffsetDateTime;

/// The built-in role that manages every key of its organization (seed 002).
pub const ORG_ADMIN: &str = "ORG-ADMIN";

/// The roles every organization has. `ORG-ADMIN` fully manages its organization (seed 002).
pub fn builtin_roles(now: OffsetDateTime) -> Vec<Role> {
    let role = |id: &str, name: &str, description: &str, permissions: Vec<Permission>| Role {
        id: id.into(),
        org_id: None,
        name: name.into(),
        description: description.into(),
        permissions,
        scopes: vec![],
        created_at: now,
        managed_by: None,
    };
    vec![
        role(
            "role_org_admin",
            ORG_ADMIN,
            "Full management of its organization: keys, clients, members, projects, roles, activity",
            Permission::ALL.to_vec(),
        ),
        role(
            "role_org_auditor",
            "ORG-AUDITOR",
            "Reads its organization's activity log",
            vec![Permission::ActivityRead],
        ),
        role(
            "role_token_introspector",
            "TOKEN-INTROSPECTOR",
            "May call the introspection endpoint",
            vec![Permission::TokensIntrospect],
        ),
    ]
}
