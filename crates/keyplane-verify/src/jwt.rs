//! Local verification of RFC 9068 JWT access tokens against a JWKS, with `jsonwebtoken`. Pure:
//! no I/O, so every rule is tested here without an issuer.

use crate::config::Settings;
use crate::error::InvalidReason;
use crate::identity::{split_scopes, CredentialKind, Identity};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

/// The longest token this verifier reads; anything longer is refused unparsed.
pub(crate) const MAX_TOKEN_LEN: usize = 8192;

/// A usable public key from the JWKS.
#[derive(Clone)]
pub(crate) struct PublicKey {
    alg: Algorithm,
    key: DecodingKey,
}

/// The issuer's signing keys by `kid`: ES256 keys on P-256 and EdDSA keys on Ed25519 only.
#[derive(Clone, Default)]
pub(crate) struct KeySet {
    keys: HashMap<String, PublicKey>,
}

impl KeySet {
    /// Reads a JWKS document. Keys this verifier cannot use (other algorithms, encryption
    /// keys, no `kid`, unreadable) are skipped one by one rather than failing the whole set.
    pub fn parse(doc: &serde_json::Value) -> Result<KeySet, String> {
        let list = doc
            .get("keys")
            .and_then(|k| k.as_array())
            .ok_or("the JWKS has no `keys` array")?;
        let mut keys = HashMap::new();
        for raw in list {
            match usable_key(raw) {
                Ok((kid, key)) => {
                    keys.insert(kid, key);
                }
                Err(why) => tracing::debug!(target: "keyplane_verify", %why, "JWKS entry skipped"),
            }
        }
        Ok(KeySet { keys })
    }

    pub fn get(&self, kid: &str) -> Option<&PublicKey> {
        self.keys.get(kid)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }
}

fn usable_key(raw: &serde_json::Value) -> Result<(String, PublicKey), String> {
    let jwk: Jwk = serde_json::from_value(raw.clone()).map_err(|e| e.to_string())?;
    let kid = jwk.common.key_id.clone().ok_or("no kid")?;
    if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
        return Err(format!("{kid}: not a signing key"));
    }
    let (alg, expected) = match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
            (Algorithm::ES256, KeyAlgorithm::ES256)
        }
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            (Algorithm::EdDSA, KeyAlgorithm::EdDSA)
        }
        _ => return Err(format!("{kid}: neither EC P-256 nor OKP Ed25519")),
    };
    if matches!(jwk.common.key_algorithm, Some(a) if a != expected) {
        return Err(format!("{kid}: `alg` does not match the key type"));
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("{kid}: {e}"))?;
    Ok((kid, PublicKey { alg, key }))
}

/// Whether a bearer credential has the shape of a JWS compact serialization of a JSON header.
pub(crate) fn looks_like_jwt(token: &str) -> bool {
    token.starts_with("eyJ") && token.bytes().filter(|b| *b == b'.').count() == 2
}

/// The `kid` and algorithm of a JWT, after the header checks of RFC 9068 §2.1 and §4: `typ`
/// is `at+jwt` (or `application/at+jwt`), `alg` is ES256 or EdDSA, and a `kid` is present.
pub(crate) fn header(token: &str) -> Result<(String, Algorithm), InvalidReason> {
    let h = jsonwebtoken::decode_header(token).map_err(|_| InvalidReason::Malformed)?;
    let typ_ok = h.typ.as_deref().is_some_and(|t| {
        t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt")
    });
    if !typ_ok {
        return Err(InvalidReason::WrongType);
    }
    if !matches!(h.alg, Algorithm::ES256 | Algorithm::EdDSA) {
        return Err(InvalidReason::Algorithm);
    }
    let kid = h.kid.ok_or(InvalidReason::Malformed)?;
    Ok((kid, h.alg))
}

/// ⌊n / 2⌋ for the P-256 group order n, big-endian.
const P256_HALF_N: [u8; 32] = [
    0x7f, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0x00, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xde, 0x73, 0x7d, 0x56, 0xd3, 0x8b, 0xcf, 0x42, 0x79, 0xdc, 0xe5, 0x61, 0x7e, 0x31, 0x92, 0xa8,
];

/// Whether an ES256 token's signature is in low-s form. `(r, s)` and `(r, n - s)` both verify,
/// so accepting both would let anyone turn one token into another string (malleability);
/// keyplane signs low-s only, and so does every mainstream JOSE library's canonical output.
fn es256_low_s(token: &str) -> bool {
    use base64::Engine;
    let Some(sig) = token.rsplit('.').next() else {
        return false;
    };
    match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(sig) {
        Ok(raw) => raw.len() == 64 && raw[32..] <= P256_HALF_N[..],
        Err(_) => false,
    }
}

/// The RFC 9068 §2.2 claims this verifier needs beyond those `jsonwebtoken` checks.
#[derive(Deserialize)]
struct AccessTokenClaims {
    sub: String,
    client_id: String,
    exp: u64,
    #[allow(dead_code)] // Required by RFC 9068; read to refuse tokens without it.
    iat: u64,
    jti: String,
    #[serde(default)]
    scope: Option<String>,
    /// RFC 7800 / RFC 9449 §6.1: `{"jkt": …}` for a DPoP-bound token.
    #[serde(default)]
    cnf: Option<Confirmation>,
    /// RFC 8693 §4.1: who acts for `sub` (a token obtained by token exchange).
    #[serde(default)]
    act: Option<Act>,
}

/// The `act` claim: the current actor (earlier ones, nested, are not needed here).
#[derive(Deserialize)]
pub(crate) struct Act {
    pub sub: String,
}

/// The `cnf` claim, as far as DPoP goes.
#[derive(Deserialize)]
pub(crate) struct Confirmation {
    #[serde(default)]
    pub jkt: Option<String>,
}

/// Verifies `token` (whose header [`header`] accepted with `alg`) with `key`: signature,
/// `iss`, `aud`, `exp`, `nbf` (with leeway), and the claims RFC 9068 requires.
pub(crate) fn verify(
    token: &str,
    alg: Algorithm,
    key: &PublicKey,
    s: &Settings,
) -> Result<Identity, InvalidReason> {
    if key.alg != alg {
        return Err(InvalidReason::Algorithm);
    }
    if alg == Algorithm::ES256 && !es256_low_s(token) {
        return Err(InvalidReason::Signature);
    }
    let mut v = Validation::new(alg);
    v.set_issuer(&[&s.issuer]);
    v.set_audience(&s.audiences);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    v.validate_nbf = true;
    v.leeway = s.leeway.as_secs();
    let data =
        jsonwebtoken::decode::<AccessTokenClaims>(token, &key.key, &v).map_err(|e| {
            match e.kind() {
                ErrorKind::ExpiredSignature => InvalidReason::Expired,
                ErrorKind::ImmatureSignature => InvalidReason::NotYetValid,
                ErrorKind::InvalidSignature | ErrorKind::Crypto(_) => InvalidReason::Signature,
                ErrorKind::InvalidIssuer => InvalidReason::Issuer,
                ErrorKind::InvalidAudience => InvalidReason::Audience,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidKeyFormat => {
                    InvalidReason::Algorithm
                }
                ErrorKind::MissingRequiredClaim(_) | ErrorKind::Json(_) => InvalidReason::Claims,
                _ => InvalidReason::Malformed,
            }
        })?;
    let c = data.claims;
    Ok(Identity {
        subject: c.sub,
        client_id: Some(c.client_id),
        scopes: split_scopes(c.scope.as_deref()),
        kind: CredentialKind::JwtAccessToken,
        expires_at: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(c.exp)),
        credential_id: Some(c.jti),
        name: None,
        confirmation_jkt: c.cnf.and_then(|c| c.jkt),
        actor: c.act.map(|a| a.sub),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair};
    use serde_json::{json, Value};

    const ISS: &str = "https://auth.example";

    struct Signer {
        kid: &'static str,
        alg: Algorithm,
        enc: EncodingKey,
        jwk: Value,
    }

    fn b64(b: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }

    fn signer(kid: &'static str, alg: Algorithm) -> Signer {
        let rng = ring::rand::SystemRandom::new();
        match alg {
            Algorithm::ES256 => {
                let a = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
                let der = EcdsaKeyPair::generate_pkcs8(a, &rng).unwrap();
                let pair = EcdsaKeyPair::from_pkcs8(a, der.as_ref(), &rng).unwrap();
                let p = pair.public_key().as_ref();
                Signer {
                    kid,
                    alg,
                    enc: EncodingKey::from_ec_der(der.as_ref()),
                    jwk: json!({"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
                        "x": b64(&p[1..33]), "y": b64(&p[33..65])}),
                }
            }
            _ => {
                let der = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
                let pair = Ed25519KeyPair::from_pkcs8(der.as_ref()).unwrap();
                Signer {
                    kid,
                    alg,
                    enc: EncodingKey::from_ed_der(der.as_ref()),
                    jwk: json!({"kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": kid,
                        "x": b64(pair.public_key().as_ref())}),
                }
            }
        }
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn claims() -> Value {
        let n = now();
        json!({"iss": ISS, "sub": "kpc_1", "aud": ISS, "exp": n + 600, "iat": n, "nbf": n,
            "jti": "j1", "client_id": "kpc_1", "scope": "ai-guard:read x"})
    }

    fn sign(s: &Signer, typ: Option<&str>, claims: &Value) -> String {
        let mut h = Header::new(s.alg);
        h.kid = Some(s.kid.into());
        h.typ = typ.map(str::to_string);
        let token = jsonwebtoken::encode(&h, claims, &s.enc).unwrap();
        if s.alg == Algorithm::ES256 {
            low_s(token)
        } else {
            token
        }
    }

    /// What a careful issuer (keyplane among them) signs: ES256 signatures in low-s form. The
    /// `jsonwebtoken` crate leaves `s` as ring made it, so tests normalize it (`s := n - s`).
    fn low_s(token: String) -> String {
        use base64::Engine;
        const N: [u8; 32] = [
            0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2,
            0xfc, 0x63, 0x25, 0x51,
        ];
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let (head, sig) = token.rsplit_once('.').unwrap();
        let mut raw = b64.decode(sig).unwrap();
        let half = {
            let mut h = [0u8; 32];
            let mut carry = 0u8;
            for (i, b) in N.iter().enumerate() {
                h[i] = (carry << 7) | (b >> 1);
                carry = b & 1;
            }
            h
        };
        if raw.len() != 64 || raw[32..] <= half[..] {
            return token;
        }
        let mut borrow = 0i16;
        for i in (0..32).rev() {
            let d = i16::from(N[i]) - i16::from(raw[32 + i]) - borrow;
            borrow = i16::from(d < 0);
            raw[32 + i] = (d + 256 * borrow) as u8;
        }
        format!("{head}.{}", b64.encode(raw))
    }

    #[test]
    fn many_low_s_tokens_verify() {
        let es = signer("k1", Algorithm::ES256);
        let set = KeySet::parse(&json!({ "keys": [es.jwk] })).unwrap();
        for _ in 0..40 {
            let token = sign(&es, Some("at+jwt"), &claims());
            assert!(super::es256_low_s(&token), "helper left it high");
            check(&token, &set, &settings()).unwrap();
        }
    }

    #[test]
    fn a_high_s_twin_of_a_good_token_is_refused() {
        use base64::Engine;
        let es = signer("k1", Algorithm::ES256);
        let set = KeySet::parse(&json!({ "keys": [es.jwk] })).unwrap();
        let token = sign(&es, Some("at+jwt"), &claims());
        assert!(check(&token, &set, &settings()).is_ok());
        // n - s: still a valid ECDSA signature of the same bytes, and another token string.
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let (head, sig) = token.rsplit_once('.').unwrap();
        let mut raw = b64.decode(sig).unwrap();
        let n: [u8; 32] = [
            0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2,
            0xfc, 0x63, 0x25, 0x51,
        ];
        let mut borrow = 0i16;
        for i in (0..32).rev() {
            let d = i16::from(n[i]) - i16::from(raw[32 + i]) - borrow;
            borrow = i16::from(d < 0);
            raw[32 + i] = (d + 256 * borrow) as u8;
        }
        let twin = format!("{head}.{}", b64.encode(raw));
        assert!(matches!(
            check(&twin, &set, &settings()),
            Err(InvalidReason::Signature)
        ));
    }

    fn settings() -> Settings {
        let v = crate::Verifier::builder(ISS).build().unwrap();
        v.settings().clone()
    }

    fn check(token: &str, set: &KeySet, s: &Settings) -> Result<Identity, InvalidReason> {
        let (kid, alg) = header(token)?;
        let key = set.get(&kid).ok_or(InvalidReason::UnknownKey)?;
        verify(token, alg, key, s)
    }

    #[test]
    fn es256_and_eddsa_verify_and_every_claim_is_checked() {
        let es = signer("es", Algorithm::ES256);
        let ed = signer("ed", Algorithm::EdDSA);
        let set = KeySet::parse(&json!({"keys": [es.jwk, ed.jwk,
            {"kty": "RSA", "kid": "rsa", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "crv": "P-256", "use": "enc", "kid": "enc", "x": "AA", "y": "AA"},
            {"kty": "OKP", "crv": "Ed25519", "x": "AA"}]}))
        .unwrap();
        assert_eq!(set.len(), 2, "only the two signing keys are usable");
        let s = settings();

        for signer in [&es, &ed] {
            let id = check(&sign(signer, Some("at+jwt"), &claims()), &set, &s).unwrap();
            assert_eq!(id.subject, "kpc_1");
            assert_eq!(id.client_id.as_deref(), Some("kpc_1"));
            assert_eq!(id.scopes, ["ai-guard:read", "x"]);
            assert_eq!(id.kind, CredentialKind::JwtAccessToken);
            assert_eq!(id.credential_id.as_deref(), Some("j1"));
            assert!(id.expires_at.unwrap() > SystemTime::now());
            assert_eq!(id.actor, None);
        }
        let ok = |t: &str| check(t, &set, &s);
        // A token obtained by token exchange (RFC 8693): `act.sub` is the actor.
        let mut exchanged = claims();
        exchanged["sub"] = json!("kpc_user");
        exchanged["client_id"] = json!("kpc_agent");
        exchanged["act"] = json!({"sub": "kpc_agent", "act": {"sub": "kpc_first"}});
        let id = ok(&sign(&es, Some("at+jwt"), &exchanged)).unwrap();
        assert_eq!(id.subject, "kpc_user");
        assert_eq!(id.actor.as_deref(), Some("kpc_agent"));
        assert!(ok(&sign(&es, Some("application/AT+JWT"), &claims())).is_ok());

        let with = |k: &str, v: Value| {
            let mut c = claims();
            c[k] = v;
            sign(&es, Some("at+jwt"), &c)
        };
        let without = |k: &str| {
            let mut c = claims();
            c.as_object_mut().unwrap().remove(k);
            sign(&es, Some("at+jwt"), &c)
        };
        let n = now();
        let cases: Vec<(&str, String, InvalidReason)> = vec![
            (
                "typ JWT",
                sign(&es, Some("JWT"), &claims()),
                InvalidReason::WrongType,
            ),
            (
                "no typ",
                sign(&es, None, &claims()),
                InvalidReason::WrongType,
            ),
            (
                "other issuer",
                with("iss", json!("https://evil.example")),
                InvalidReason::Issuer,
            ),
            (
                "other audience",
                with("aud", json!("https://other.example")),
                InvalidReason::Audience,
            ),
            (
                "expired",
                with("exp", json!(n - 60)),
                InvalidReason::Expired,
            ),
            (
                "not yet valid",
                with("nbf", json!(n + 60)),
                InvalidReason::NotYetValid,
            ),
            ("no aud", without("aud"), InvalidReason::Claims),
            ("no client_id", without("client_id"), InvalidReason::Claims),
            ("no jti", without("jti"), InvalidReason::Claims),
            ("no exp", without("exp"), InvalidReason::Claims),
        ];
        for (what, token, reason) in cases {
            assert_eq!(ok(&token).err(), Some(reason), "{what}");
        }
        // Within the leeway: accepted.
        assert!(ok(&with("exp", json!(n - 2))).is_ok());
        // An audience list containing ours: accepted.
        assert!(ok(&with("aud", json!(["https://other.example", ISS]))).is_ok());

        // A token signed by another key under a known kid; a kid the set lacks.
        let impostor = Signer {
            kid: "es",
            ..signer("es", Algorithm::ES256)
        };
        assert_eq!(
            ok(&sign(&impostor, Some("at+jwt"), &claims())).err(),
            Some(InvalidReason::Signature)
        );
        let stranger = signer("new", Algorithm::ES256);
        assert_eq!(
            ok(&sign(&stranger, Some("at+jwt"), &claims())).err(),
            Some(InvalidReason::UnknownKey)
        );
        // An EdDSA header naming the ES256 key: refused before any signature check.
        let confused = Signer {
            kid: "es",
            ..signer("x", Algorithm::EdDSA)
        };
        assert_eq!(
            ok(&sign(&confused, Some("at+jwt"), &claims())).err(),
            Some(InvalidReason::Algorithm)
        );
        // HS256 and alg none are never accepted.
        let mut h = Header::new(Algorithm::HS256);
        h.typ = Some("at+jwt".into());
        h.kid = Some("es".into());
        let hs = jsonwebtoken::encode(&h, &claims(), &EncodingKey::from_secret(b"k")).unwrap();
        assert_eq!(ok(&hs).err(), Some(InvalidReason::Algorithm));
        let none = format!(
            "{}.{}.",
            b64(br#"{"alg":"none","typ":"at+jwt","kid":"es"}"#),
            b64(claims().to_string().as_bytes())
        );
        assert!(ok(&none).is_err());
        assert_eq!(ok("eyJ.eyJ.x").err(), Some(InvalidReason::Malformed));
        assert!(looks_like_jwt(&sign(&es, Some("at+jwt"), &claims())));
        assert!(!looks_like_jwt("kpt_abc") && !looks_like_jwt("eyJa.b"));
    }

    #[test]
    fn a_jwks_without_keys_is_an_error() {
        assert!(KeySet::parse(&json!({"nope": []})).is_err());
        assert_eq!(KeySet::parse(&json!({"keys": []})).unwrap().len(), 0);
    }
}
