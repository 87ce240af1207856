//! [`Keyplane`] use cases for the admin key: settling it at start, and rotating it.

use crate::app::Keyplane;
use crate::domain::error::{Error, Result};
use crate::domain::secret::SecretString;

impl Keyplane {
    /// Creates the defaults and settles the admin key. Returns a newly generated admin key,
    /// which the caller prints once; `None` when one was supplied or already exists.
    pub async fn bootstrap(
        &self,
        supplied_admin_key: Option<&SecretString>,
    ) -> Result<Option<SecretString>> {
        let rt = &self.rt;
        let now = rt.now();
        rt.store.ensure_defaults(now).await?;
        match supplied_admin_key {
            Some(key) => {
                if key.expose().len() < 32 {
                    return Err(Error::invalid(
                        "admin_key",
                        "the admin key must be at least 32 characters long",
                    ));
                }
                if rt.settings.api_key_format.claims(key.expose()) {
                    return Err(Error::invalid(
                        "admin_key",
                        "the admin key must not start with the API key prefix",
                    ));
                }
                let digest = rt.pepper.digest(key.expose());
                let current = rt.store.admin_key_get().await?;
                if current.map(|c| c.0) != Some(digest) {
                    let event = rt.system_event(
                        "admin_key.set",
                        serde_json::json!({ "note": "operator-supplied admin key installed" }),
                    );
                    rt.store
                        .admin_key_set(digest, rt.pepper.version(), now, &event)
                        .await?;
                }
                Ok(None)
            }
            None => {
                if rt.store.admin_key_get().await?.is_some() {
                    return Ok(None);
                }
                let key = rt.settings.admin_key_format.generate();
                let event = rt.system_event(
                    "admin_key.generate",
                    serde_json::json!({ "note": "admin key generated on first start" }),
                );
                rt.store
                    .admin_key_set(
                        rt.pepper.digest(key.expose()),
                        rt.pepper.version(),
                        now,
                        &event,
                    )
                    .await?;
                Ok(Some(key))
            }
        }
    }

    /// Whether the deployment has an admin key (generated or supplied) yet.
    pub async fn admin_key_exists(&self) -> Result<bool> {
        Ok(self.rt.store.admin_key_get().await?.is_some())
    }

    /// Replaces the admin key; the old one is refused from now on.
    pub async fn rotate_admin_key(&self) -> Result<SecretString> {
        let rt = &self.rt;
        let key = rt.settings.admin_key_format.generate();
        let event = rt.system_event(
            "admin_key.rotate",
            serde_json::json!({ "note": "admin key rotated" }),
        );
        rt.store
            .admin_key_set(
                rt.pepper.digest(key.expose()),
                rt.pepper.version(),
                rt.now(),
                &event,
            )
            .await?;
        Ok(key)
    }

    /// Creates the default organization, project and built-in roles when missing (the CLI's
    /// database commands, before they act).
    pub async fn ensure_defaults(&self) -> Result<()> {
        self.rt.store.ensure_defaults(self.rt.now()).await
    }
}
