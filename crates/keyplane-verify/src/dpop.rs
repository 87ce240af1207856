//! DPoP (RFC 9449) at a resource server: the proof that must come with `Authorization: DPoP
//! <token>` (§4.3, §7), the RFC 7638 thumbprint it is bound by, and the `jti` replay cache.
//! Pure but for the cache, so every rule is tested here without an issuer.

use crate::error::ProofReason;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The `typ` of a DPoP proof (§4.2).
pub(crate) const PROOF_TYP: &str = "dpop+jwt";
/// The proof algorithms accepted, as named in the `algs` challenge parameter.
pub(crate) const ALGS: &str = "ES256 EdDSA RS256 PS256";
/// The longest `DPoP` header value read.
pub(crate) const MAX_PROOF_LEN: usize = 8192;
/// The longest `jti` remembered.
const MAX_JTI_LEN: usize = 256;
/// JWK members that only a private (or symmetric) key has.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// The request a proof must be for.
pub(crate) struct ProofRequest<'a> {
    /// The request's method (`htm`, compared exactly).
    pub htm: &'a str,
    /// The URLs (without query) the request may have been addressed to: `htu` must be one.
    pub htus: Vec<String>,
    /// The access token the proof came with (`ath`).
    pub access_token: &'a str,
    /// Seconds since the epoch.
    pub now_s: i64,
    /// `iat` may be at most this far from `now_s`, either way.
    pub iat_window: Duration,
}

/// A proof that passed every check but the replay cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CheckedProof {
    /// The RFC 7638 thumbprint of the proof's key.
    pub jkt: String,
    pub jti: String,
    pub iat: i64,
}

fn decode_json(part: &str) -> Result<Value, ProofReason> {
    let raw = B64.decode(part).map_err(|_| ProofReason::Malformed)?;
    match serde_json::from_slice(&raw) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(ProofReason::Malformed),
    }
}

fn text<'a>(v: &'a Value, name: &str) -> Option<&'a str> {
    v.get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// base64url(SHA-256(token)): the `ath` of a proof sent with `token` (§4.2).
pub(crate) fn ath(token: &str) -> String {
    B64.encode(Sha256::digest(token.as_bytes()))
}

/// The RFC 7638 thumbprint of a public JWK: SHA-256 of its required members in lexicographic
/// order without whitespace, base64url. `None` for a key type DPoP does not use.
pub(crate) fn thumbprint(jwk: &Value) -> Option<String> {
    let members: &[&str] = match text(jwk, "kty")? {
        "EC" => &["crv", "kty", "x", "y"],
        "OKP" => &["crv", "kty", "x"],
        "RSA" => &["e", "kty", "n"],
        _ => return None,
    };
    let mut canonical = serde_json::Map::new();
    for m in members {
        canonical.insert((*m).to_string(), Value::String(text(jwk, m)?.to_string()));
    }
    // serde_json's map is ordered by key (no `preserve_order`), and `to_string` is compact;
    // the values are strings, escaped as JSON, as RFC 7638 §3 asks.
    let json = Value::Object(canonical).to_string();
    Some(B64.encode(Sha256::digest(json.as_bytes())))
}

/// The algorithm of a proof's header with its key, after checking they go together: ES256 on
/// P-256, EdDSA (or `Ed25519`) on Ed25519, RS256 and PS256 on RSA.
fn proof_key(alg: &str, jwk: &Value) -> Result<(Algorithm, DecodingKey), ProofReason> {
    let obj = jwk.as_object().ok_or(ProofReason::Jwk)?;
    if PRIVATE_MEMBERS.iter().any(|m| obj.contains_key(*m)) {
        return Err(ProofReason::Jwk);
    }
    let name = alg;
    let (alg, kty, crv) = match alg {
        "ES256" => (Algorithm::ES256, "EC", Some("P-256")),
        "EdDSA" | "Ed25519" => (Algorithm::EdDSA, "OKP", Some("Ed25519")),
        "RS256" => (Algorithm::RS256, "RSA", None),
        "PS256" => (Algorithm::PS256, "RSA", None),
        _ => return Err(ProofReason::Algorithm),
    };
    if text(jwk, "kty") != Some(kty) || crv.is_some_and(|c| text(jwk, "crv") != Some(c)) {
        return Err(ProofReason::Jwk);
    }
    // A JWK's own `alg`, if any, must be the proof's.
    let same = |a: &str| a == name || (alg == Algorithm::EdDSA && matches!(a, "EdDSA" | "Ed25519"));
    if text(jwk, "alg").is_some_and(|a| !same(a)) {
        return Err(ProofReason::Jwk);
    }
    let parsed: Jwk = serde_json::from_value(jwk.clone()).map_err(|_| ProofReason::Jwk)?;
    let key = DecodingKey::from_jwk(&parsed).map_err(|_| ProofReason::Jwk)?;
    Ok((alg, key))
}

/// Checks a proof (§4.3 checks 2 to 9, 11 and 12); the caller compares the thumbprint with
/// the token's `cnf.jkt` and asks the replay cache.
pub(crate) fn check_proof(
    proof: &str,
    req: &ProofRequest<'_>,
) -> Result<CheckedProof, ProofReason> {
    if proof.len() > MAX_PROOF_LEN {
        return Err(ProofReason::Malformed);
    }
    let mut parts = proof.split('.');
    let (Some(h64), Some(c64), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ProofReason::Malformed);
    };
    let header = decode_json(h64)?;
    if !text(&header, "typ").is_some_and(|t| t.eq_ignore_ascii_case(PROOF_TYP)) {
        return Err(ProofReason::Type);
    }
    let alg = text(&header, "alg").ok_or(ProofReason::Algorithm)?;
    let jwk = header.get("jwk").ok_or(ProofReason::Jwk)?;
    let (alg, key) = proof_key(alg, jwk)?;
    let jkt = thumbprint(jwk).ok_or(ProofReason::Jwk)?;
    // Replay is stopped by `jti`, so a high-s ECDSA signature (WebCrypto) is as good as low-s.
    let signed = &proof[..h64.len() + 1 + c64.len()];
    match jsonwebtoken::crypto::verify(sig, signed.as_bytes(), &key, alg) {
        Ok(true) => {}
        _ => return Err(ProofReason::Signature),
    }
    let claims = decode_json(c64)?;
    let jti = text(&claims, "jti").ok_or(ProofReason::Claims)?;
    if jti.len() > MAX_JTI_LEN {
        return Err(ProofReason::Claims);
    }
    let htm = text(&claims, "htm").ok_or(ProofReason::Claims)?;
    let htu = text(&claims, "htu").ok_or(ProofReason::Claims)?;
    let iat = claims
        .get("iat")
        .and_then(Value::as_number)
        .and_then(|n| {
            n.as_i64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite())
                    .map(|f| f.floor() as i64)
            })
        })
        .ok_or(ProofReason::Claims)?;
    // Methods are case-sensitive (RFC 9110 §9.1).
    if htm != req.htm {
        return Err(ProofReason::Htm);
    }
    let want = htu_key(htu).ok_or(ProofReason::Htu)?;
    if !req
        .htus
        .iter()
        .any(|u| htu_key(u).is_some_and(|k| k == want))
    {
        return Err(ProofReason::Htu);
    }
    if iat.abs_diff(req.now_s) > req.iat_window.as_secs() {
        return Err(ProofReason::Iat);
    }
    let ath_claim = text(&claims, "ath").ok_or(ProofReason::Ath)?;
    if !ct_eq(ath_claim.as_bytes(), ath(req.access_token).as_bytes()) {
        return Err(ProofReason::Ath);
    }
    Ok(CheckedProof {
        jkt,
        jti: jti.to_string(),
        iat,
    })
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An `htu` compared the way RFC 9449 §4.3 asks (RFC 3986 §6.2.3): scheme and host
/// lowercased, a default port dropped, query and fragment ignored, an empty path as `/`.
/// `None` for anything that is not an absolute http(s) URL.
pub(crate) fn htu_key(url: &str) -> Option<(String, String)> {
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
    let mut authority = authority.to_ascii_lowercase();
    let default = if scheme == "https" { ":443" } else { ":80" };
    if let Some(a) = authority.strip_suffix(default) {
        authority = a.to_string();
    }
    Some((format!("{scheme}://{authority}"), path.to_string()))
}

/// The `jti`s of the proofs accepted lately, each kept until its `iat` leaves the window.
///
/// In memory and per process: several instances of a resource server each keep their own, so
/// a proof could be replayed once on each instance within the `iat` window. Bounded: when full
/// of live entries, new proofs are refused (503) rather than old ones forgotten, since
/// forgetting would let a proof be replayed.
pub(crate) struct ReplayCache {
    capacity: usize,
    seen: Mutex<HashMap<[u8; 32], Instant>>,
}

impl ReplayCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Records `jti` of the key `jkt` until `until`. `Ok(false)` if it is there already,
    /// `Err(())` if the cache is full.
    pub fn insert(&self, jkt: &str, jti: &str, until: Instant, now: Instant) -> Result<bool, ()> {
        let key: [u8; 32] = Sha256::new()
            .chain_update(jkt.as_bytes())
            .chain_update([0])
            .chain_update(jti.as_bytes())
            .finalize()
            .into();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = seen.get(&key) {
            if *t > now {
                return Ok(false);
            }
        }
        if seen.len() >= self.capacity {
            seen.retain(|_, t| *t > now);
            if seen.len() >= self.capacity {
                return Err(());
            }
        }
        seen.insert(key, until);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn htu_normalization() {
        assert_eq!(
            htu_key("HTTPS://Api.Example:443/a/b?x=1#f"),
            Some(("https://api.example".into(), "/a/b".into()))
        );
        assert_eq!(htu_key("http://h"), Some(("http://h".into(), "/".into())));
        assert_eq!(htu_key("ftp://h/"), None);
        assert_eq!(htu_key("/relative"), None);
        assert_ne!(htu_key("http://h:8080/a"), htu_key("http://h/a"));
        assert_ne!(htu_key("http://h/A"), htu_key("http://h/a"));
    }

    #[test]
    fn thumbprint_follows_rfc_7638() {
        // RFC 7638 §3.1's example key and thumbprint.
        let jwk = serde_json::json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        assert_eq!(
            thumbprint(&jwk).as_deref(),
            Some("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs")
        );
        assert_eq!(
            thumbprint(&serde_json::json!({"kty": "oct", "k": "x"})),
            None
        );
    }

    #[test]
    fn the_replay_cache_refuses_a_second_use_and_when_full() {
        let c = ReplayCache::new(2);
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        assert_eq!(c.insert("k", "1", later, now), Ok(true));
        assert_eq!(c.insert("k", "1", later, now), Ok(false));
        assert_eq!(c.insert("other", "1", later, now), Ok(true));
        assert_eq!(c.insert("k", "2", later, now), Err(()));
        // Once the entries are past their time, there is room again.
        assert_eq!(c.insert("k", "2", later, later), Ok(true));
        assert_eq!(
            c.insert("k", "1", later + Duration::from_secs(1), later),
            Ok(true)
        );
    }
}
