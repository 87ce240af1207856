//! [`Keyplane`] use cases of declarative configuration: what applying a configuration file
//! needs beyond the other use cases, which the binary orchestrates (`keyplane/src/declare.rs`).
//! A declared client's secret comes from the operator (a file, an environment variable) or is
//! generated here and written by the binary to the file the operator names.

use crate::app::Keyplane;
use crate::domain::ceiling::within;
use crate::domain::clock::to_ms;
use crate::domain::declared::{ApplyReport, ConfigApplier};
use crate::domain::error::{Error, Result};
use crate::domain::ids::new_id;
use crate::domain::managed::{ManagedKind, ManagedObject, MANAGED_BY_CONFIG};
use crate::domain::model::ClientSecret;
use crate::domain::perm::Principal;
use crate::domain::request::RequestMeta;
use crate::domain::secret::SecretString;
use crate::runtime::oauth::ceil_to_second;
use crate::store::Invalidation;
use std::sync::Arc;

impl Keyplane {
    /// Registers what applies configuration files (the binary's `declare` module).
    pub fn set_config_applier(&self, applier: Arc<dyn ConfigApplier>) {
        *self
            .rt
            .config_applier
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(applier);
    }

    /// Applies a configuration file's declarations, or says what applying would change
    /// (`keyplane apply`, `POST /v1/admin/config/apply`): the admin key only.
    pub async fn config_apply(
        &self,
        p: &Principal,
        file: Option<String>,
        text: Option<String>,
        dry_run: bool,
    ) -> Result<ApplyReport> {
        if !p.is_admin_key() {
            return Err(Error::Forbidden(
                "only the admin key may apply configuration".into(),
            ));
        }
        let applier = self
            .rt
            .config_applier
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| {
                Error::Conflict("this server does not apply configuration files".into())
            })?;
        applier
            .apply(file, text, dry_run)
            .await
            .map_err(|e| Error::invalid("config", e))
    }

    /// Every object a configuration file declares (the admin key only).
    pub async fn config_managed_list(&self, p: &Principal) -> Result<Vec<ManagedObject>> {
        if !p.is_admin_key() {
            return Err(Error::Forbidden(
                "only the admin key may apply configuration".into(),
            ));
        }
        self.rt.store.managed_list().await
    }

    /// Marks an object as declared by the configuration file (`managed_by: config`), or no
    /// longer; recorded as `config.manage` / `config.unmanage`.
    pub async fn config_mark(
        &self,
        p: &Principal,
        kind: ManagedKind,
        id: &str,
        managed: bool,
        meta: &RequestMeta,
    ) -> Result<()> {
        if !p.is_admin_key() {
            return Err(Error::Forbidden(
                "only the admin key may apply configuration".into(),
            ));
        }
        let action = if managed {
            "config.manage"
        } else {
            "config.unmanage"
        };
        let event = self.rt.event(
            p,
            None,
            action,
            Some(id),
            meta,
            serde_json::json!({ "kind": kind.as_str(), "managed_by": managed.then_some(MANAGED_BY_CONFIG) }),
        );
        self.rt
            .store
            .managed_set(
                kind,
                id,
                managed.then_some(MANAGED_BY_CONFIG),
                self.rt.now(),
                &event,
            )
            .await
    }

    /// A new client secret in this deployment's format, for a declared client whose secret
    /// keyplane generates (the binary writes it to the operator's file, once).
    pub fn declared_secret_generate(&self) -> SecretString {
        self.rt.settings.oauth.client_secret_format.generate()
    }

    /// Refuses a supplied client secret that is not in this deployment's format (its prefix
    /// and checksum), since the token endpoint refuses those without looking them up.
    pub fn declared_secret_check(&self, secret: &SecretString) -> Result<()> {
        let format = &self.rt.settings.oauth.client_secret_format;
        format.check(secret.expose()).map_err(|e| {
            Error::invalid(
                "secret",
                format!(
                    "the secret is not a keyplane client secret ({e}): it must be `{}` followed by 32 random bytes in base62 and a checksum; let keyplane generate one (`generate_secret = true` with `secret_file`)",
                    format.prefix()
                ),
            )
        })
    }

    /// Whether `secret` is the client's one live secret.
    pub async fn declared_secret_is_current(
        &self,
        p: &Principal,
        client_id: &str,
        secret: &SecretString,
    ) -> Result<bool> {
        let (_, secrets, _) = self.rt.client_in_reach(p, client_id).await?;
        let digest = self.rt.pepper.digest(secret.expose());
        let now = self.rt.now();
        let live: Vec<_> = secrets
            .iter()
            .filter(|s| s.expires_at.is_none_or(|e| e > now))
            .collect();
        Ok(live.len() == 1 && live[0].digest == digest)
    }

    /// Makes `secret` the client's one live secret, unless it already is (then nothing is
    /// written and `false` is answered). A new secret is added and the others expire at once,
    /// in one transaction; when `secret` is already one of several live secrets, the others
    /// are retired (as `client_secret_retire` does: tokens issued before stop working).
    pub async fn declared_secret_install(
        &self,
        p: &Principal,
        client_id: &str,
        secret: &SecretString,
        meta: &RequestMeta,
    ) -> Result<bool> {
        self.declared_secret_check(secret)?;
        let rt = &self.rt;
        let (c, secrets, _) = rt.client_in_reach(p, client_id).await?;
        let digest = rt.pepper.digest(secret.expose());
        let now = rt.now();
        let live: Vec<&ClientSecret> = secrets
            .iter()
            .filter(|s| s.expires_at.is_none_or(|e| e > now))
            .collect();
        if live.len() == 1 && live[0].digest == digest {
            return Ok(false);
        }
        within(
            &p.authority(),
            &rt.client_authority(&c).await?,
            "set a secret of this client",
        )?;
        if !c.auth_method.uses_secret() {
            return Err(Error::Conflict(
                "this client authenticates with `private_key_jwt` and has no secrets".into(),
            ));
        }
        if live.iter().any(|s| s.digest == digest) {
            let others = live.iter().filter(|s| s.digest != digest);
            for (version, other) in (c.version..).zip(others) {
                let event = rt.event(
                    p,
                    Some(&c.org_id),
                    "client_secret.retire",
                    Some(client_id),
                    meta,
                    serde_json::json!({ "secret_id": other.id, "source": "configuration" }),
                );
                rt.store
                    .client_secret_delete(
                        client_id,
                        &other.id,
                        version,
                        ceil_to_second(now),
                        &event,
                    )
                    .await?;
            }
            rt.invalidate(Invalidation::Client(client_id.to_string()))
                .await?;
            return Ok(true);
        }
        if secrets.iter().any(|s| s.digest == digest) {
            return Err(Error::Conflict(
                "this secret was this client's before and has expired; declare a new one".into(),
            ));
        }
        let prefix_len = rt.settings.oauth.client_secret_format.prefix().len();
        let cs = ClientSecret {
            id: new_id("sec"),
            client_id: client_id.to_string(),
            digest,
            pepper_version: rt.pepper.version(),
            start: secret.expose()[..prefix_len + 4].to_string(),
            created_at: now,
            expires_at: None,
            last_used_at: None,
            use_count: 0,
            expiry_warned_at: None,
        };
        let event = rt.event(
            p,
            Some(&c.org_id),
            "client_secret.create",
            Some(client_id),
            meta,
            serde_json::json!({
                "secret_id": cs.id,
                "source": "configuration",
                "old_secrets_expire_at": to_ms(now),
            }),
        );
        rt.store
            .client_secret_add(&cs, c.version, Some(now), &event)
            .await?;
        rt.invalidate(Invalidation::Client(client_id.to_string()))
            .await?;
        Ok(true)
    }
}
