//! [`Keyplane`] use cases of organizations (tenants).

use crate::app::Keyplane;
use crate::domain::error::{Error, Result};
use crate::domain::ids::new_id;
use crate::domain::model::{Org, Project};
use crate::domain::perm::Principal;
use crate::domain::request::{clean_name, RequestMeta};

impl Keyplane {
    pub async fn org_create(&self, p: &Principal, name: &str, meta: &RequestMeta) -> Result<Org> {
        if !p.is_admin_key() {
            return Err(Error::Forbidden(
                "only the admin key may create organizations".into(),
            ));
        }
        let now = self.rt.now();
        let org = Org {
            id: new_id("org"),
            name: clean_name("name", name)?,
            created_at: now,
            managed_by: None,
        };
        let project = Project {
            id: new_id("prj"),
            org_id: org.id.clone(),
            name: "default".into(),
            created_at: now,
            managed_by: None,
        };
        let event = self.rt.event(
            p,
            Some(&org.id),
            "org.create",
            Some(&org.id),
            meta,
            serde_json::json!({ "name": org.name }),
        );
        self.rt.store.org_create(&org, &project, &event).await?;
        Ok(org)
    }

    /// Every organization for the admin key; one's own otherwise.
    pub async fn org_list(&self, p: &Principal) -> Result<Vec<Org>> {
        let mut orgs = if p.is_admin_key() {
            self.rt.store.org_list().await?
        } else {
            let own = p.org_for(None)?;
            self.rt.store.org_get(&own).await?.into_iter().collect()
        };
        self.rt.fill_managed(&mut orgs).await?;
        Ok(orgs)
    }
}
