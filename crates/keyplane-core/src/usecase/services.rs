//! [`Keyplane`] use cases of services: the platform's APIs and the scopes they understand.

use crate::app::Keyplane;
use crate::domain::error::{Error, Result};
use crate::domain::ids::new_id;
use crate::domain::managed::ManagedKind;
use crate::domain::model::Service;
use crate::domain::perm::Principal;
use crate::domain::request::{clean_description, clean_name, valid_scope_name, RequestMeta};
use crate::domain::resource::parse_resource;
use crate::store::Invalidation;
use std::collections::BTreeSet;

/// Resource URIs: valid (RFC 8707 §2), at most 16, and none another service declares.
fn check_resources(
    resources: Vec<String>,
    existing: &[Service],
    this: Option<&str>,
) -> Result<Vec<String>> {
    if resources.len() > 16 {
        return Err(Error::invalid(
            "resources",
            "a service declares at most 16 resource URIs",
        ));
    }
    let mut out = BTreeSet::new();
    for r in resources {
        let uri = parse_resource(&r).map_err(|e| Error::invalid("resources", e))?;
        if let Some(other) = existing
            .iter()
            .find(|s| Some(s.id.as_str()) != this && s.resources.contains(&uri))
        {
            return Err(Error::Conflict(format!(
                "the resource URI `{uri}` already belongs to the service `{}`",
                other.name
            )));
        }
        out.insert(uri);
    }
    Ok(out.into_iter().collect())
}

impl Keyplane {
    pub async fn service_create(
        &self,
        p: &Principal,
        name: &str,
        description: Option<&str>,
        scopes: Vec<String>,
        resources: Vec<String>,
        meta: &RequestMeta,
    ) -> Result<Service> {
        if !p.is_admin_key() {
            return Err(Error::Forbidden(
                "only the admin key may register services".into(),
            ));
        }
        let name = clean_name("name", name)?;
        if !valid_scope_name(&name) || name.contains(':') {
            return Err(Error::invalid(
                "name",
                "a service name uses letters, digits, '.', '_', '-' only (e.g. `ai-guard`)",
            ));
        }
        if scopes.is_empty() {
            return Err(Error::invalid(
                "scopes",
                "a service needs at least one scope",
            ));
        }
        let mut set = BTreeSet::new();
        for s in scopes {
            if !valid_scope_name(&s) {
                return Err(Error::invalid(
                    "scopes",
                    format!("scope {s:?} is not valid: use letters, digits and ':._-/*', at most 128 characters"),
                ));
            }
            set.insert(s);
        }
        let existing = self.rt.store.service_list().await?;
        let resources = check_resources(resources, &existing, None)?;
        let taken: BTreeSet<String> = existing.into_iter().flat_map(|s| s.scopes).collect();
        if let Some(dup) = set.iter().find(|s| taken.contains(*s)) {
            return Err(Error::Conflict(format!(
                "scope `{dup}` already belongs to another service"
            )));
        }
        let service = Service {
            id: new_id("svc"),
            name,
            description: clean_description(description)?,
            scopes: set.into_iter().collect(),
            resources,
            created_at: self.rt.now(),
            managed_by: None,
        };
        let event = self.rt.event(
            p,
            None,
            "service.create",
            Some(&service.id),
            meta,
            serde_json::json!({ "name": service.name, "scopes": service.scopes, "resources": service.resources }),
        );
        self.rt.store.service_create(&service, &event).await?;
        self.rt.invalidate(Invalidation::Services).await?;
        Ok(service)
    }

    /// Changes a service's description or its resource URIs (RFC 8707). Declaring resource
    /// URIs makes `/v1/authz` and the gateway require, for the service's scopes, an access
    /// token whose audience names one of them; every node learns it at once.
    pub async fn service_update(
        &self,
        p: &Principal,
        id: &str,
        description: Option<&str>,
        resources: Option<Vec<String>>,
        meta: &RequestMeta,
    ) -> Result<Service> {
        if !p.is_admin_key() {
            return Err(Error::Forbidden(
                "only the admin key may change services".into(),
            ));
        }
        let existing = self.rt.store.service_list().await?;
        let Some(mut service) = existing.iter().find(|s| s.id == id).cloned() else {
            return Err(Error::NotFound("service"));
        };
        self.rt
            .guard_managed(ManagedKind::Service, id, "service", meta)
            .await?;
        if let Some(d) = description {
            service.description = clean_description(Some(d))?;
        }
        if let Some(r) = resources {
            service.resources = check_resources(r, &existing, Some(id))?;
        }
        let event = self.rt.event(
            p,
            None,
            "service.update",
            Some(&service.id),
            meta,
            serde_json::json!({ "name": service.name, "resources": service.resources }),
        );
        self.rt.store.service_update(&service, &event).await?;
        self.rt.invalidate(Invalidation::Services).await?;
        let mut one = [service];
        self.rt.fill_managed(&mut one).await?;
        let [service] = one;
        Ok(service)
    }

    pub async fn service_list(&self, _p: &Principal) -> Result<Vec<Service>> {
        let mut services = self.rt.store.service_list().await?;
        self.rt.fill_managed(&mut services).await?;
        Ok(services)
    }

    /// Every registered scope (the metadata's `scopes_supported`).
    pub async fn scopes_supported(&self) -> Result<BTreeSet<String>> {
        self.rt.scopes_supported().await
    }
}
