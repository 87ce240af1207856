//! [`Keyplane`] use cases of services: the platform's APIs and the scopes they understand.

use crate::app::Keyplane;
use crate::domain::error::{Error, Result};
use crate::domain::ids::new_id;
use crate::domain::model::Service;
use crate::domain::perm::Principal;
use crate::domain::request::{clean_description, clean_name, valid_scope_name, RequestMeta};
use std::collections::BTreeSet;

impl Keyplane {
    pub async fn service_create(
        &self,
        p: &Principal,
        name: &str,
        description: Option<&str>,
        scopes: Vec<String>,
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
        let taken: BTreeSet<String> = self
            .rt
            .store
            .service_list()
            .await?
            .into_iter()
            .flat_map(|s| s.scopes)
            .collect();
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
            created_at: self.rt.now(),
        };
        let event = self.rt.event(
            p,
            None,
            "service.create",
            Some(&service.id),
            meta,
            serde_json::json!({ "name": service.name, "scopes": service.scopes }),
        );
        self.rt.store.service_create(&service, &event).await?;
        Ok(service)
    }

    pub async fn service_list(&self, _p: &Principal) -> Result<Vec<Service>> {
        self.rt.store.service_list().await
    }

    /// Every registered scope (the metadata's `scopes_supported`).
    pub async fn scopes_supported(&self) -> Result<BTreeSet<String>> {
        self.rt.scopes_supported().await
    }
}
