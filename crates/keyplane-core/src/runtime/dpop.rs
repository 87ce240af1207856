//! The runtime's DPoP (shared by the token endpoint's and the resource checks' use cases) (RFC 9449): checking a proof against its request (every
//! §4.3 check), recording its `jti` so it is refused on every node that shares the database,
//! and the stateless nonces of §8.

use super::Runtime;
use crate::domain::clock::from_ms;
use crate::domain::dpop::{
    check_proof, nonce_input, nonce_text, CheckedProof, DpopError, ProofPolicy, ProofRequest,
};

/// The replay cache's namespace for DPoP proofs (it shares the table of client assertions'
/// `jti`s: a thumbprint never looks like a client id).
const JTI_NAMESPACE: &str = "dpop:";

impl Runtime {
    fn nonce_slot(&self, now_ms: i64) -> i64 {
        now_ms / 1000 / self.settings.oauth.dpop_nonce_period_seconds.max(1)
    }

    fn nonce_for_slot(&self, slot: i64) -> String {
        nonce_text(&self.pepper.digest(&nonce_input(slot)).0)
    }

    /// The current DPoP nonce when the deployment requires nonces: derived from the pepper and
    /// the time, so every node issues and accepts the same ones without storage.
    pub fn dpop_nonce(&self) -> Option<String> {
        self.settings
            .oauth
            .dpop_require_nonce
            .then(|| self.nonce_for_slot(self.nonce_slot(self.now_ms())))
    }

    fn nonce_ok(&self, nonce: Option<&str>) -> bool {
        if !self.settings.oauth.dpop_require_nonce {
            return true;
        }
        let Some(nonce) = nonce else { return false };
        let slot = self.nonce_slot(self.now_ms());
        [slot, slot - 1].into_iter().any(|s| {
            crate::domain::secret::ct_eq(nonce.as_bytes(), self.nonce_for_slot(s).as_bytes())
        })
    }

    /// Checks the `DPoP` header values of a request (exactly one), then the nonce, then records
    /// the proof's `jti` (last, so only a fully valid proof uses it up). Call it only for a
    /// caller that authenticated (a client at the token endpoint, a valid access token at a
    /// resource), so nobody else can grow the replay cache.
    pub async fn check_dpop_proof(
        &self,
        proofs: &[&str],
        htm: &str,
        htus: Vec<String>,
        access_token: Option<&str>,
    ) -> Result<CheckedProof, DpopError> {
        let proof = match proofs {
            [] => return Err(DpopError::Missing),
            [one] => *one,
            _ => return Err(DpopError::Multiple),
        };
        let s = &self.settings.oauth;
        let now_ms = self.now_ms();
        let req = ProofRequest {
            htm,
            htus,
            access_token,
            now_s: now_ms / 1000,
        };
        let policy = ProofPolicy {
            iat_window_seconds: s.dpop_iat_window_seconds,
        };
        let checked = check_proof(proof, &req, policy)?;
        if !self.nonce_ok(checked.nonce.as_deref()) {
            return Err(DpopError::UseNonce);
        }
        // No clock accepts the proof once its `iat` is a window older than now.
        let keep_until_ms = (checked.iat.max(now_ms / 1000) + s.dpop_iat_window_seconds + 1) * 1000;
        let fresh = self
            .jti_use_once(
                format!("{JTI_NAMESPACE}{}", checked.jkt),
                checked.jti.clone(),
                from_ms(keep_until_ms),
            )
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "storage failed while recording a DPoP proof");
                DpopError::Replayed
            })?;
        if !fresh {
            return Err(DpopError::Replayed);
        }
        Ok(checked)
    }
}
