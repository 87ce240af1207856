//! [`Keyplane`] use cases of roles: named sets of permissions and scopes that keys carry.

use crate::app::Keyplane;
use crate::domain::ceiling::{within, Authority};
use crate::domain::error::{Error, Result};
use crate::domain::ids::new_id;
use crate::domain::model::Role;
use crate::domain::perm::{PermSet, Permission, Principal};
use crate::domain::request::{clean_description, clean_name, RequestMeta};

pub struct NewRole {
    pub org_id: Option<String>,
    pub name: String,
    pub description: Option<String>,
    pub permissions: Vec<String>,
    pub scopes: Vec<String>,
}

impl Keyplane {
    pub async fn role_create(
        &self,
        p: &Principal,
        input: NewRole,
        meta: &RequestMeta,
    ) -> Result<Role> {
        let access = p.access(input.org_id.as_deref(), Permission::RolesManage)?;
        self.rt.existing_org(access.org_id()).await?;
        let name = clean_name("name", &input.name)?;
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Error::invalid(
                "name",
                "a role name uses letters, digits, '-' and '_' (e.g. `KEY-AUDITOR`)",
            ));
        }
        let mut perms = Vec::new();
        for s in &input.permissions {
            let perm = Permission::parse(s).ok_or_else(|| {
                Error::invalid(
                    "permissions",
                    format!(
                        "unknown permission `{s}`; known: {}",
                        Permission::ALL.map(|p| p.as_str()).join(", ")
                    ),
                )
            })?;
            perms.push(perm);
        }
        let set: PermSet = perms.iter().copied().collect();
        let role = Role {
            id: new_id("role"),
            org_id: Some(access.org_id().to_string()),
            name,
            description: clean_description(input.description.as_deref())?,
            permissions: set.iter().collect(),
            scopes: self.rt.check_scopes(input.scopes).await?,
            created_at: self.rt.now(),
            managed_by: None,
        };
        within(
            &p.authority(),
            &Authority::of_role(&role),
            "create this role",
        )?;
        if self
            .rt
            .store
            .role_list(access.org_id())
            .await?
            .iter()
            .any(|r| r.name.eq_ignore_ascii_case(&role.name))
        {
            return Err(Error::Conflict(format!(
                "a role named `{}` already exists",
                role.name
            )));
        }
        let event = self.rt.event(
            p,
            Some(access.org_id()),
            "role.create",
            Some(&role.id),
            meta,
            serde_json::json!({
                "name": role.name,
                "permissions": role.permissions.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
                "scopes": role.scopes,
            }),
        );
        self.rt.store.role_create(&role, &event).await?;
        Ok(role)
    }

    pub async fn role_list(&self, p: &Principal, org_id: Option<&str>) -> Result<Vec<Role>> {
        let org = p.org_for(org_id)?;
        self.rt.existing_org(&org).await?;
        let mut roles = self.rt.store.role_list(&org).await?;
        self.rt.fill_managed(&mut roles).await?;
        Ok(roles)
    }
}
