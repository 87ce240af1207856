//! [`Keyplane`] use cases of projects (groups of credentials inside an organization).

use crate::app::Keyplane;
use crate::domain::error::Result;
use crate::domain::ids::new_id;
use crate::domain::model::Project;
use crate::domain::perm::{Permission, Principal};
use crate::domain::request::{clean_name, RequestMeta};

impl Keyplane {
    pub async fn project_create(
        &self,
        p: &Principal,
        org_id: Option<&str>,
        name: &str,
        meta: &RequestMeta,
    ) -> Result<Project> {
        let access = p.access(org_id, Permission::ProjectsManage)?;
        self.rt.existing_org(access.org_id()).await?;
        let project = Project {
            id: new_id("prj"),
            org_id: access.org_id().to_string(),
            name: clean_name("name", name)?,
            created_at: self.rt.now(),
            managed_by: None,
        };
        let event = self.rt.event(
            p,
            Some(&project.org_id),
            "project.create",
            Some(&project.id),
            meta,
            serde_json::json!({ "name": project.name }),
        );
        self.rt.store.project_create(&project, &event).await?;
        Ok(project)
    }

    pub async fn project_list(&self, p: &Principal, org_id: Option<&str>) -> Result<Vec<Project>> {
        let org = p.org_for(org_id)?;
        self.rt.existing_org(&org).await?;
        let mut projects = self.rt.store.project_list(&org).await?;
        self.rt.fill_managed(&mut projects).await?;
        Ok(projects)
    }
}
