//! Configuration-managed objects (`crate::domain::managed`): which objects a configuration file
//! declares, read from storage on each management request (so every node agrees at once), and
//! the one check that refuses to change them through the API.

use super::Runtime;
use crate::domain::error::{Error, Result};
use crate::domain::managed::{ConfigWrite, Declarable, ManagedKind, ManagedObject};
use crate::domain::request::RequestMeta;
use std::collections::HashMap;

impl Runtime {
    /// Every managed object, by kind and id.
    pub(crate) async fn managed_map(&self) -> Result<HashMap<(ManagedKind, String), String>> {
        Ok(self
            .store
            .managed_list()
            .await?
            .into_iter()
            .map(|m| ((m.kind, m.id), m.managed_by))
            .collect())
    }

    /// Sets `managed_by` on records about to be answered.
    pub(crate) async fn fill_managed<T: Declarable>(&self, items: &mut [T]) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let map = self.managed_map().await?;
        for item in items {
            let by = map.get(&(T::KIND, item.declared_id().to_string())).cloned();
            item.set_managed_by(by);
        }
        Ok(())
    }

    /// Refuses to change a managed object unless the request overrides (its events then say
    /// so) or is the configuration being applied.
    pub(crate) async fn guard_managed(
        &self,
        kind: ManagedKind,
        id: &str,
        what: &'static str,
        meta: &RequestMeta,
    ) -> Result<()> {
        if meta.config != ConfigWrite::Refuse {
            return Ok(());
        }
        let managed = self
            .store
            .managed_list()
            .await?
            .iter()
            .any(|m: &ManagedObject| m.kind == kind && m.id == id);
        if managed {
            return Err(Error::ManagedByConfig(what));
        }
        Ok(())
    }
}
