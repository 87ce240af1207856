//! [`Keyplane`] use cases of the keys that sign JWT access tokens (published in the JWKS), and
//! of the revoked-token list every node keeps.

use crate::app::Keyplane;
use crate::domain::clock::rfc3339;
use crate::domain::clock::to_ms;
use crate::domain::error::Result;
use crate::domain::model::StoredSigningKey;
use crate::domain::secret::random_base62;
use crate::domain::token::{generate_pkcs8, Alg, Keyring, SigningKey};
use crate::store::Invalidation;
use std::sync::Arc;

impl Keyplane {
    /// Loads every signing key from storage (after start, a rotation, or another node's change).
    pub async fn reload_signing_keys(&self) -> Result<()> {
        let stored = self.rt.store.signing_keys().await?;
        let mut keys = Vec::new();
        for k in stored {
            let Some(alg) = Alg::parse(&k.alg) else {
                continue;
            };
            let Some(pkcs8) = crate::domain::token::open(
                &self.rt.oauth.key_seal,
                k.kid.as_bytes(),
                &k.private_sealed,
            ) else {
                tracing::error!(kid = %k.kid, "a signing key cannot be opened: was the pepper changed?");
                continue;
            };
            if let Some(key) = SigningKey::from_pkcs8(
                k.kid,
                alg,
                &pkcs8,
                to_ms(k.activates_at),
                k.unpublish_at.map(to_ms),
            ) {
                keys.push(key);
            }
        }
        *self
            .rt
            .oauth
            .keyring
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(Keyring::new(keys));
        Ok(())
    }

    /// Makes sure every algorithm has a signing key (first start), and loads them.
    pub async fn ensure_signing_keys(&self) -> Result<()> {
        self.reload_signing_keys().await?;
        let ring = self.rt.oauth.keyring();
        for alg in [Alg::ES256, Alg::EdDSA] {
            if ring.signer(alg, i64::MAX).is_none() {
                self.add_signing_key(alg, 0).await?;
            }
        }
        self.reload_signing_keys().await
    }

    async fn add_signing_key(&self, alg: Alg, lead_seconds: i64) -> Result<String> {
        let now = self.rt.now();
        let kid = format!("{}-{}", alg.as_str().to_lowercase(), random_base62(12));
        let sealed = crate::domain::token::seal(
            &self.rt.oauth.key_seal,
            kid.as_bytes(),
            &generate_pkcs8(alg),
        );
        let activates_at = now + time::Duration::seconds(lead_seconds);
        // Older keys stay published until every token they may still sign has expired.
        let retire_others_at =
            activates_at + time::Duration::seconds(self.rt.settings.oauth.max_ttl_seconds);
        let event = self.rt.system_event(
            "signing_key.create",
            serde_json::json!({ "kid": kid, "alg": alg.as_str(), "activates_at": rfc3339(activates_at) }),
        );
        self.rt
            .store
            .signing_key_add(
                &StoredSigningKey {
                    kid: kid.clone(),
                    alg: alg.as_str().into(),
                    private_sealed: sealed,
                    created_at: now,
                    activates_at,
                    unpublish_at: None,
                },
                retire_others_at,
                &event,
            )
            .await?;
        Ok(kid)
    }

    /// Rotates the signing key of `alg`: the new key is published now and signs after the lead.
    pub async fn rotate_signing_key(&self, alg: Alg, lead_seconds: Option<i64>) -> Result<String> {
        let lead = lead_seconds.unwrap_or(self.rt.settings.oauth.signing_key_lead_seconds);
        let kid = self.add_signing_key(alg, lead).await?;
        self.reload_signing_keys().await?;
        self.rt.store.publish(&Invalidation::SigningKeys).await?;
        Ok(kid)
    }

    /// Rotates any algorithm whose newest key is older than the rotation interval.
    pub async fn rotate_due_signing_keys(&self) -> Result<()> {
        let Some(days) = self.rt.settings.oauth.signing_key_rotation_days else {
            return Ok(());
        };
        let ring = self.rt.oauth.keyring();
        let now = self.rt.now_ms();
        for alg in [Alg::ES256, Alg::EdDSA] {
            if let Some(newest) = ring.signer(alg, i64::MAX) {
                if now - newest.activates_at_ms > days * 86_400_000 {
                    self.rotate_signing_key(alg, None).await?;
                }
            }
        }
        Ok(())
    }

    /// The JWKS document.
    pub fn jwks(&self) -> serde_json::Value {
        self.rt.oauth.keyring().jwks(self.rt.now_ms())
    }

    /// Loads revocations that are still live (at start, and as a safety net).
    pub async fn reload_revocations(&self) -> Result<()> {
        let live = self.rt.store.revoked_tokens(self.rt.now()).await?;
        let mut r = self
            .rt
            .oauth
            .revoked
            .write()
            .unwrap_or_else(|e| e.into_inner());
        r.clear();
        r.extend(live);
        Ok(())
    }
}
