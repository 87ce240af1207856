//! DPoP (RFC 9449): checking a proof JWT against the request it came with (§4.3), binding an
//! access token to the proof's key (`cnf.jkt`, §6), and the server's stateless nonces (§8).
//! Pure: the `jti` replay cache is storage's, and the caller supplies the request's method and
//! the URLs it may have been sent to.

use crate::domain::client_auth::MAX_JTI_LEN;
use crate::domain::jose::{EcdsaForm, JoseError, Jws, JwsAlg};
use crate::domain::path::NormalPath;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use serde::Deserialize;

/// The `typ` of a DPoP proof (§4.2).
pub const PROOF_TYP: &str = "dpop+jwt";
/// The `alg`s a proof may use (`dpop_signing_alg_values_supported`).
pub const ALGS: [&str; 4] = ["ES256", "EdDSA", "RS256", "PS256"];
/// The longest `DPoP` header value read.
pub const MAX_PROOF_LEN: usize = 8192;

/// How a proof is checked.
#[derive(Debug, Clone, Copy)]
pub struct ProofPolicy {
    /// A proof's `iat` may be at most this many seconds before or after now.
    pub iat_window_seconds: i64,
}

/// The request a proof must be for.
#[derive(Debug, Clone)]
pub struct ProofRequest<'a> {
    /// The HTTP method of the (original) request.
    pub htm: &'a str,
    /// The URLs the request may have been addressed to (without query): `htu` must be one.
    pub htus: Vec<String>,
    /// The access token presented with the proof (resource requests): `ath` must be its hash.
    pub access_token: Option<&'a str>,
    /// Seconds since the epoch.
    pub now_s: i64,
}

/// Why a proof was refused; the description says what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DpopError {
    /// No `DPoP` header, or more than one (§4.3 check 1).
    Missing,
    Multiple,
    /// Not a JWS we read, or an alg we do not take (checks 2, 5).
    Jws(JoseError),
    /// `typ` is not `dpop+jwt` (check 4).
    Typ,
    /// No public `jwk` in the header (checks 3, 7: a private key is refused by the JWK reader).
    Jwk,
    /// The signature does not verify with the header's key (check 6).
    Signature,
    /// A required claim is missing or not of its type (check 3).
    Claims(&'static str),
    /// `htm` differs from the request's method (check 8).
    Htm,
    /// `htu` differs from the request's URL (check 9).
    Htu,
    /// `iat` is outside the window (check 11).
    Iat,
    /// `ath` is missing or not the hash of the access token (check 12).
    Ath,
    /// The `jti` has been used already (§11.1).
    Replayed,
    /// The server requires a nonce and this proof has none, or an old one (check 10).
    UseNonce,
}

impl DpopError {
    /// The RFC 9449 error code: `use_dpop_nonce` or `invalid_dpop_proof`.
    pub fn code(&self) -> &'static str {
        match self {
            DpopError::UseNonce => "use_dpop_nonce",
            _ => "invalid_dpop_proof",
        }
    }

    pub fn description(&self) -> String {
        match self {
            DpopError::Missing => "a DPoP proof is required (the `DPoP` header)".into(),
            DpopError::Multiple => "exactly one `DPoP` header is allowed".into(),
            DpopError::Jws(e) => format!("the DPoP proof is not a usable JWS: {e}"),
            DpopError::Typ => format!("the DPoP proof's `typ` must be `{PROOF_TYP}`"),
            DpopError::Jwk => "the DPoP proof's header must carry a public `jwk`".into(),
            DpopError::Signature => "the DPoP proof's signature does not verify with its `jwk`".into(),
            DpopError::Claims(what) => format!("the DPoP proof's claims are not valid: {what}"),
            DpopError::Htm => "the DPoP proof's `htm` is not this request's method".into(),
            DpopError::Htu => "the DPoP proof's `htu` is not this request's URL".into(),
            DpopError::Iat => "the DPoP proof's `iat` is too far from the current time".into(),
            DpopError::Ath => "the DPoP proof's `ath` is not the hash of the access token".into(),
            DpopError::Replayed => "the DPoP proof's `jti` has been used already".into(),
            DpopError::UseNonce => "the authorization server requires a DPoP nonce (the `DPoP-Nonce` header of this answer)".into(),
        }
    }
}

/// A proof that passed every check but the replay cache and the nonce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedProof {
    /// The RFC 7638 thumbprint of the proof's key.
    pub jkt: String,
    pub jti: String,
    pub iat: i64,
    pub nonce: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    jti: Option<serde_json::Value>,
    htm: Option<serde_json::Value>,
    htu: Option<serde_json::Value>,
    iat: Option<serde_json::Number>,
    ath: Option<serde_json::Value>,
    nonce: Option<serde_json::Value>,
}

fn text(v: Option<serde_json::Value>, what: &'static str) -> Result<String, DpopError> {
    match v {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s),
        _ => Err(DpopError::Claims(what)),
    }
}

/// base64url(SHA-256(token)): the `ath` of a proof sent with `token` (§4.2).
pub fn ath(token: &str) -> String {
    B64.encode(ring::digest::digest(
        &ring::digest::SHA256,
        token.as_bytes(),
    ))
}

/// Checks a proof (§4.3 checks 2 to 9, 11 and 12); the caller checks the nonce and the replay
/// cache.
pub fn check_proof(
    proof: &str,
    req: &ProofRequest<'_>,
    policy: ProofPolicy,
) -> Result<CheckedProof, DpopError> {
    if proof.len() > MAX_PROOF_LEN {
        return Err(DpopError::Jws(JoseError::Malformed("too long")));
    }
    let jws = Jws::parse(proof).map_err(DpopError::Jws)?;
    let h = jws.header();
    if !h
        .typ
        .as_deref()
        .is_some_and(|t| t.eq_ignore_ascii_case(PROOF_TYP))
    {
        return Err(DpopError::Typ);
    }
    // `Ed25519` (the fully-specified name) is the same signature as `EdDSA`.
    if !matches!(
        h.alg,
        JwsAlg::ES256 | JwsAlg::EdDSA | JwsAlg::Ed25519 | JwsAlg::RS256 | JwsAlg::PS256
    ) {
        return Err(DpopError::Jws(JoseError::UnsupportedAlg(
            h.alg.as_str().into(),
        )));
    }
    let Some(jwk) = h.jwk.as_ref() else {
        return Err(DpopError::Jwk);
    };
    // Replay is stopped by `jti`, so a high-s ECDSA signature (WebCrypto) is as good as low-s.
    jws.verify(jwk, EcdsaForm::Any)
        .map_err(|_| DpopError::Signature)?;
    let c: Claims = jws
        .claims()
        .map_err(|_| DpopError::Claims("not a JSON object"))?;
    let jti = text(c.jti, "`jti` must be a non-empty string")?;
    if jti.len() > MAX_JTI_LEN {
        return Err(DpopError::Claims("`jti` is too long"));
    }
    let htm = text(c.htm, "`htm` must be a string")?;
    let htu = text(c.htu, "`htu` must be a string")?;
    let iat = c
        .iat
        .as_ref()
        .and_then(|n| {
            n.as_i64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite())
                    .map(|f| f.floor() as i64)
            })
        })
        .ok_or(DpopError::Claims("`iat` must be a number"))?;
    let nonce = match c.nonce {
        None => None,
        Some(serde_json::Value::String(s)) => Some(s),
        Some(_) => return Err(DpopError::Claims("`nonce` must be a string")),
    };
    // Methods are case-sensitive (RFC 9110 §9.1).
    if htm != req.htm {
        return Err(DpopError::Htm);
    }
    let want = htu_key(&htu).ok_or(DpopError::Htu)?;
    if !req
        .htus
        .iter()
        .any(|u| htu_key(u).is_some_and(|k| k == want))
    {
        return Err(DpopError::Htu);
    }
    if (iat - req.now_s).abs() > policy.iat_window_seconds {
        return Err(DpopError::Iat);
    }
    if let Some(token) = req.access_token {
        let ath_claim = match c.ath {
            Some(serde_json::Value::String(s)) => s,
            _ => return Err(DpopError::Ath),
        };
        if !crate::domain::secret::ct_eq(ath_claim.as_bytes(), ath(token).as_bytes()) {
            return Err(DpopError::Ath);
        }
    }
    Ok(CheckedProof {
        jkt: jwk.thumbprint(),
        jti,
        iat,
        nonce,
    })
}

/// An `htu` compared the way RFC 9449 §4.3 asks (RFC 3986 §6 normalization): scheme and host
/// lowercased, a default (or empty) port dropped as for resource URIs, query and fragment
/// ignored, and the path through the one path normalizer (so `htu` names the path the rules
/// and the upstream see). `None` for anything that is not an absolute http(s) URL with a host
/// and an unambiguous path.
pub fn htu_key(url: &str) -> Option<(String, String)> {
    let url = url.split(['?', '#']).next().unwrap_or("");
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "https" && scheme != "http" {
        return None;
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let authority = authority.to_ascii_lowercase();
    let authority = crate::domain::resource::without_default_port(&scheme, &authority);
    if authority.is_empty() || authority.starts_with(':') {
        return None;
    }
    let path = NormalPath::parse(path).ok()?;
    Some((format!("{scheme}://{authority}"), path.as_str().to_string()))
}

/// The nonce of a time slot: base64url of the first 16 bytes of a keyed digest of the slot
/// (the caller's HMAC under the pepper), so every node that shares the pepper issues and accepts
/// the same nonces without storage.
pub fn nonce_text(digest: &[u8]) -> String {
    B64.encode(&digest[..16.min(digest.len())])
}

/// What the nonce digest is computed over for `slot`.
pub fn nonce_input(slot: i64) -> String {
    format!("keyplane-dpop-nonce|{slot}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn htu_normalization() {
        assert_eq!(
            htu_key("HTTPS://Api.Example:443/a/./b?x=1#f"),
            Some(("https://api.example".into(), "/a/b".into()))
        );
        assert_eq!(htu_key("http://h"), Some(("http://h".into(), "/".into())));
        assert_eq!(htu_key("ftp://h/"), None);
        assert_eq!(htu_key("/relative"), None);
        assert_ne!(htu_key("http://h:8080/a"), htu_key("http://h/a"));
        // The same rule as resource URIs: an empty port is the default one; no host, no URL.
        assert_eq!(htu_key("https://h:/a"), htu_key("https://h/a"));
        assert_eq!(htu_key("http://h:80/a"), htu_key("http://h/a"));
        assert_ne!(htu_key("http://h:443/a"), htu_key("http://h/a"));
        assert_eq!(htu_key("https://:443/a"), None);
    }
}

/// What a resource request carried for DPoP (`Authorization: DPoP <token>`): its `DPoP` header
/// values, the original method, and the URLs the request may have been addressed to.
#[derive(Debug, Clone)]
pub struct DpopRequest<'a> {
    pub proofs: Vec<&'a str>,
    pub htm: &'a str,
    pub htus: Vec<String>,
}

/// Why a resource request was refused for DPoP: 401 with a `DPoP` challenge (RFC 9449 §7.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpopRefusal {
    /// `invalid_dpop_proof`, `use_dpop_nonce` or `invalid_token`.
    pub error: &'static str,
    pub description: String,
    /// The nonce to send (`DPoP-Nonce`), when the server requires one.
    pub nonce: Option<String>,
}

impl DpopRefusal {
    pub fn token(description: &str) -> Self {
        DpopRefusal {
            error: "invalid_token",
            description: description.into(),
            nonce: None,
        }
    }
}
