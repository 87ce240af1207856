//! Access tokens, issued without a storage write: opaque tokens are sealed (XChaCha20-Poly1305
//! under a key derived from the pepper) so only keyplane can read them; JWT access tokens
//! follow RFC 9068 and are signed with a key from the [`Keyring`], published in the JWKS.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use rand::RngCore;
use ring::aead;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A JWS signing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Alg {
    ES256,
    EdDSA,
}

impl Alg {
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::ES256 => "ES256",
            Alg::EdDSA => "EdDSA",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ES256" => Some(Alg::ES256),
            "EdDSA" => Some(Alg::EdDSA),
            _ => None,
        }
    }
}

/// XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha): HChaCha20 derives a subkey from the key and
/// the nonce's first 16 bytes; ChaCha20-Poly1305 (RFC 8439, ring's implementation) seals under
/// it with the nonce's last 8 bytes. ring's AEAD is several times faster than the pure-Rust one
/// on token-sized messages, where the latter's vectorized Poly1305 set-up dominates.
fn xchacha_key(key: &[u8; 32], nonce: &[u8; 24]) -> (aead::LessSafeKey, aead::Nonce) {
    let subkey = chacha20::hchacha::<chacha20::cipher::consts::U10>(
        key.into(),
        chacha20::cipher::generic_array::GenericArray::from_slice(&nonce[..16]),
    );
    let unbound = aead::UnboundKey::new(&aead::CHACHA20_POLY1305, &subkey)
        .expect("a 32-byte key is a valid ChaCha20-Poly1305 key");
    let mut inner = [0u8; 12];
    inner[4..].copy_from_slice(&nonce[16..]);
    (
        aead::LessSafeKey::new(unbound),
        aead::Nonce::assume_unique_for_key(inner),
    )
}

/// Encrypts `plaintext` under `key`: a random 24-byte nonce followed by the ciphertext and tag.
/// The nonce comes from the thread's CSPRNG (ChaCha, seeded and reseeded from the OS), so
/// issuing a token makes no system call.
pub fn seal(key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut nonce);
    seal_with_nonce(key, &nonce, aad, plaintext)
}

fn seal_with_nonce(key: &[u8; 32], nonce: &[u8; 24], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let (k, n) = xchacha_key(key, nonce);
    let mut out = Vec::with_capacity(24 + plaintext.len() + 16);
    out.extend_from_slice(nonce);
    out.extend_from_slice(plaintext);
    let tag = k
        .seal_in_place_separate_tag(n, aead::Aad::from(aad), &mut out[24..])
        .expect("a bounded message seals");
    out.extend_from_slice(tag.as_ref());
    out
}

/// Opens what [`seal`] made; `None` if it was tampered with or made under another key.
pub fn open(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    let mut buf = sealed.to_vec();
    let len = open_in_place(key, aad, &mut buf)?.len();
    buf.drain(..24);
    buf.truncate(len);
    Some(buf)
}

/// [`open`] without a copy: decrypts `sealed` where it lies and returns the plaintext in it.
fn open_in_place<'a>(key: &[u8; 32], aad: &[u8], sealed: &'a mut [u8]) -> Option<&'a mut [u8]> {
    if sealed.len() < 24 + 16 {
        return None;
    }
    let (nonce, rest) = sealed.split_at_mut(24);
    let nonce: &[u8; 24] = (&*nonce).try_into().ok()?;
    let (k, n) = xchacha_key(key, nonce);
    k.open_in_place(n, aead::Aad::from(aad), rest).ok()
}

/// What an opaque access token carries, sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpaqueClaims {
    /// client id
    pub c: String,
    /// scopes, space-delimited
    pub s: String,
    /// issued at, ms
    pub i: i64,
    /// expires at, ms
    pub e: i64,
    /// token id
    pub j: String,
    /// DPoP (RFC 9449): the thumbprint of the key the token is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<String>,
    /// The audience when the token was requested for resources (RFC 8707); empty: the
    /// client's configured audience, else the issuer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub a: Vec<String>,
    /// Delegation (RFC 8693): whom the token is for, who acts, and the credential it came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub d: Option<Delegation>,
    /// The external identity a federated client proved itself with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub f: Option<FederatedRef>,
    /// The authorization-code grant: the person's grant the token was issued under (it lives
    /// only while the grant does) and the person (the token's subject).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub u: Option<GrantRef>,
}

/// A token of the authorization-code grant: whose grant, which person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRef {
    /// The grant's id.
    pub g: String,
    /// The member (the token's `sub`).
    pub m: String,
}

/// RFC 8693 §4.1 `act`: the party acting, with earlier actors nested (least recent deepest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Act {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<Act>>,
}

impl Act {
    /// The actors from the current one to the first.
    pub fn chain(&self) -> impl Iterator<Item = &Act> {
        std::iter::successors(Some(self), |a| a.act.as_deref())
    }
}

/// The credential an exchanged token acts for: it lives only as long as that credential does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SubjectCredential {
    /// An access token of ours (its `jti`, client and issue time, for revocation and the
    /// client's not-before).
    AccessToken {
        jti: String,
        client_id: String,
        iat: i64,
    },
    /// An API key, by id.
    ApiKey { id: String },
}

/// What a token obtained by token exchange carries about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delegation {
    /// The subject (`sub`): the subject credential's holder.
    pub sub: String,
    pub act: Act,
    /// The credentials it was exchanged from, the original first (then, for an exchanged
    /// token exchanged again, each intermediate token): it is live only while all of them are.
    pub subject_credentials: Vec<SubjectCredential>,
}

/// The external (platform) identity behind a federated client's token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederatedRef {
    pub iss: String,
    pub sub: String,
}

/// A JWT `aud`: one audience as a string, several as an array (RFC 7519 §4.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Audience(pub Vec<String>);

impl Audience {
    pub fn one(aud: String) -> Self {
        Self(vec![aud])
    }
    pub fn contains(&self, aud: &str) -> bool {
        self.0.iter().any(|a| a == aud)
    }
}

impl Serialize for Audience {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => s.serialize_str(one),
            many => many.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Audience {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        Ok(match OneOrMany::deserialize(d)? {
            OneOrMany::One(a) => Audience(vec![a]),
            OneOrMany::Many(v) => Audience(v),
        })
    }
}

/// Seals and opens opaque access tokens: `prefix` + base64url(nonce ‖ ciphertext) + CRC32.
pub struct Sealer {
    key: [u8; 32],
    prefix: String,
}

impl Sealer {
    pub fn new(key: [u8; 32], prefix: &str) -> Self {
        Self {
            key,
            prefix: prefix.to_string(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn seal(&self, claims: &OpaqueClaims) -> String {
        let json = serde_json::to_vec(claims).expect("claims serialize");
        let sealed = seal(&self.key, self.prefix.as_bytes(), &json);
        let mut out = format!("{}{}", self.prefix, B64.encode(sealed));
        let sum = crate::domain::secret::crc_text(out.as_bytes());
        out.push_str(std::str::from_utf8(&sum).expect("alphabet is ASCII"));
        out
    }

    /// The claims of a token this deployment sealed, or `None` for anything else.
    pub fn open(&self, token: &str) -> Option<OpaqueClaims> {
        let rest = token.strip_prefix(&self.prefix)?;
        if rest.len() < 7 || rest.len() > 2048 || !token.is_char_boundary(token.len() - 6) {
            return None;
        }
        let split = token.len() - 6;
        let bytes = token.as_bytes();
        let sum = crate::domain::secret::crc_text(&bytes[..split]);
        if !crate::domain::secret::ct_eq(&sum, &bytes[split..]) {
            return None;
        }
        let mut sealed = B64.decode(&token[self.prefix.len()..split]).ok()?;
        let json = open_in_place(&self.key, self.prefix.as_bytes(), &mut sealed)?;
        serde_json::from_slice(json).ok()
    }
}

/// RFC 9068 access-token claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwtClaims {
    pub iss: String,
    pub sub: String,
    pub aud: Audience,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    pub client_id: String,
    pub scope: String,
    /// DPoP (RFC 9449 §6.1): the key the token is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
    /// Token exchange (RFC 8693 §4.1): who acts for `sub`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Act>,
    /// Token exchange: the credentials the token acts for (it ends with any of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_credentials: Option<Vec<SubjectCredential>>,
    /// Workload identity federation: the external identity the client proved itself with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federated: Option<FederatedRef>,
}

/// RFC 7800 `cnf` with RFC 9449's `jkt`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    pub jkt: String,
}

enum Signer {
    Es256(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// One signing key: its private half (to sign) and its public half (to verify and publish).
pub struct SigningKey {
    pub kid: String,
    pub alg: Alg,
    /// When it starts signing (ms); it is published from creation.
    pub activates_at_ms: i64,
    /// When it leaves the JWKS (ms): after every token it signed has expired.
    pub unpublish_at_ms: Option<i64>,
    signer: Signer,
    public: Vec<u8>,
    /// The JWT header this key signs under, base64url-encoded once.
    header_b64: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// A new private key in PKCS#8.
pub fn generate_pkcs8(alg: Alg) -> Vec<u8> {
    let rng = SystemRandom::new();
    match alg {
        Alg::ES256 => {
            EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .expect("key generation")
                .as_ref()
                .to_vec()
        }
        Alg::EdDSA => Ed25519KeyPair::generate_pkcs8(&rng)
            .expect("key generation")
            .as_ref()
            .to_vec(),
    }
}

impl SigningKey {
    pub fn from_pkcs8(
        kid: String,
        alg: Alg,
        pkcs8: &[u8],
        activates_at_ms: i64,
        unpublish_at_ms: Option<i64>,
    ) -> Option<Self> {
        let signer = match alg {
            Alg::ES256 => Signer::Es256(
                EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    pkcs8,
                    &SystemRandom::new(),
                )
                .ok()?,
            ),
            Alg::EdDSA => Signer::Ed25519(Ed25519KeyPair::from_pkcs8(pkcs8).ok()?),
        };
        let public = match &signer {
            Signer::Es256(k) => k.public_key().as_ref().to_vec(),
            Signer::Ed25519(k) => k.public_key().as_ref().to_vec(),
        };
        let header = serde_json::json!({ "alg": alg.as_str(), "typ": "at+jwt", "kid": kid });
        let header_b64 = B64.encode(serde_json::to_vec(&header).expect("header"));
        Some(Self {
            kid,
            alg,
            activates_at_ms,
            unpublish_at_ms,
            signer,
            public,
            header_b64,
        })
    }

    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        match &self.signer {
            Signer::Es256(k) => {
                let mut sig = k
                    .sign(&SystemRandom::new(), msg)
                    .expect("signing cannot fail")
                    .as_ref()
                    .to_vec();
                p256_low_s(&mut sig);
                sig
            }
            Signer::Ed25519(k) => k.sign(msg).as_ref().to_vec(),
        }
    }

    /// Checks a signature. ES256 signatures must be in low-s form: `(r, s)` and `(r, n - s)`
    /// are both valid ECDSA signatures of the same message, so accepting both would let anyone
    /// mint a second, different token string from any token (malleability); we sign low-s only.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        let alg: &dyn signature::VerificationAlgorithm = match self.alg {
            Alg::ES256 => {
                if !is_p256_low_s(sig) {
                    return false;
                }
                &signature::ECDSA_P256_SHA256_FIXED
            }
            Alg::EdDSA => &signature::ED25519,
        };
        UnparsedPublicKey::new(alg, &self.public)
            .verify(msg, sig)
            .is_ok()
    }

    /// The public key as a JWK (RFC 7517).
    pub fn jwk(&self) -> serde_json::Value {
        match self.alg {
            Alg::ES256 => serde_json::json!({
                "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
                "x": B64.encode(&self.public[1..33]), "y": B64.encode(&self.public[33..65]),
            }),
            Alg::EdDSA => serde_json::json!({
                "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": self.kid,
                "x": B64.encode(&self.public),
            }),
        }
    }

    pub fn is_published(&self, now_ms: i64) -> bool {
        self.unpublish_at_ms.is_none_or(|u| u > now_ms)
    }
}

/// The order n of the P-256 group, big-endian.
const P256_N: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];
/// ⌊n / 2⌋: the largest `s` of a low-s signature.
const P256_HALF_N: [u8; 32] = [
    0x7f, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0x00, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xde, 0x73, 0x7d, 0x56, 0xd3, 0x8b, 0xcf, 0x42, 0x79, 0xdc, 0xe5, 0x61, 0x7e, 0x31, 0x92, 0xa8,
];

/// Whether a fixed-size (r ‖ s) P-256 signature has `s ≤ n/2`.
pub fn is_p256_low_s(sig: &[u8]) -> bool {
    sig.len() == 64 && sig[32..] <= P256_HALF_N[..]
}

/// Puts a fixed-size P-256 signature in low-s form (`s := n - s` when `s > n/2`).
pub fn p256_low_s(sig: &mut [u8]) {
    if sig.len() != 64 || is_p256_low_s(sig) {
        return;
    }
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let d = i16::from(P256_N[i]) - i16::from(sig[32 + i]) - borrow;
        borrow = i16::from(d < 0);
        sig[32 + i] = (d + 256 * borrow) as u8;
    }
}

/// The signing keys this node knows, newest first.
#[derive(Debug, Default)]
pub struct Keyring {
    keys: Vec<Arc<SigningKey>>,
}

impl Keyring {
    pub fn new(mut keys: Vec<SigningKey>) -> Self {
        keys.sort_by_key(|k| std::cmp::Reverse(k.activates_at_ms));
        Self {
            keys: keys.into_iter().map(Arc::new).collect(),
        }
    }

    /// The key that signs now for `alg`: the newest that has activated.
    pub fn signer(&self, alg: Alg, now_ms: i64) -> Option<&Arc<SigningKey>> {
        self.keys
            .iter()
            .find(|k| k.alg == alg && k.activates_at_ms <= now_ms)
    }

    pub fn get(&self, kid: &str) -> Option<&Arc<SigningKey>> {
        self.keys.iter().find(|k| k.kid == kid)
    }

    /// The JWKS: every key still published (the next one, the current one, retired ones whose
    /// tokens may still be live).
    pub fn jwks(&self, now_ms: i64) -> serde_json::Value {
        let keys: Vec<_> = self
            .keys
            .iter()
            .filter(|k| k.is_published(now_ms))
            .map(|k| k.jwk())
            .collect();
        serde_json::json!({ "keys": keys })
    }

    /// Signs RFC 9068 claims: header `typ: at+jwt`, the key's `alg` and `kid`.
    pub fn sign_jwt(key: &SigningKey, claims: &JwtClaims) -> String {
        let mut out = String::with_capacity(1024);
        out.push_str(&key.header_b64);
        out.push('.');
        B64.encode_string(serde_json::to_vec(claims).expect("claims"), &mut out);
        let sig = key.sign(out.as_bytes());
        out.push('.');
        B64.encode_string(sig, &mut out);
        out
    }

    /// Verifies a JWT's signature with a key of ours and returns its claims (expiry is the
    /// caller's to check). Anything malformed, unsigned or signed by another key is `None`.
    pub fn verify_jwt(&self, token: &str) -> Option<JwtClaims> {
        if token.len() > 8192 {
            return None;
        }
        let mut parts = token.split('.');
        let (h, c, s) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        #[derive(Deserialize)]
        struct Header {
            alg: String,
            kid: String,
            typ: Option<String>,
        }
        let header: Header = serde_json::from_slice(&B64.decode(h).ok()?).ok()?;
        let key = self.get(&header.kid)?;
        if header.alg != key.alg.as_str()
            || header
                .typ
                .as_deref()
                .is_some_and(|t| !t.eq_ignore_ascii_case("at+jwt"))
        {
            return None;
        }
        let sig = B64.decode(s).ok()?;
        if !key.verify(&token.as_bytes()[..h.len() + 1 + c.len()], &sig) {
            return None;
        }
        serde_json::from_slice(&B64.decode(c).ok()?).ok()
    }
}

/// Whether a bearer credential looks like a JWT (three base64url parts).
pub fn looks_like_jwt(token: &str) -> bool {
    token.starts_with("ey") && token.bytes().filter(|b| *b == b'.').count() == 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// draft-irtf-cfrg-xchacha-03, appendix A.3.1: the AEAD test vector.
    #[test]
    fn xchacha20_poly1305_matches_the_drafts_test_vector() {
        let key: [u8; 32] =
            unhex("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f")
                .try_into()
                .unwrap();
        let nonce: [u8; 24] = unhex("404142434445464748494a4b4c4d4e4f5051525354555657")
            .try_into()
            .unwrap();
        let aad = unhex("50515253c0c1c2c3c4c5c6c7");
        let msg = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let want = unhex(concat!(
            "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb",
            "731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452",
            "2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9",
            "21f9664c97637da9768812f615c68b13b52e",
            "c0875924c1c7987947deafd8780acf49"
        ));
        let sealed = seal_with_nonce(&key, &nonce, &aad, msg);
        assert_eq!(&sealed[..24], &nonce);
        assert_eq!(sealed[24..], want[..]);
        assert_eq!(open(&key, &aad, &sealed).as_deref(), Some(&msg[..]));
        let mut bad = sealed.clone();
        bad[30] ^= 1;
        assert_eq!(open(&key, &aad, &bad), None);
        assert_eq!(open(&key, b"other", &sealed), None);
    }

    #[test]
    fn opaque_tokens_round_trip_and_resist_tampering() {
        let s = Sealer::new([7; 32], "kpt_");
        let claims = OpaqueClaims {
            c: "kpc_x".into(),
            s: "a b".into(),
            i: 1,
            e: 2,
            j: "j".into(),
            k: None,
            a: vec![],
            d: None,
            f: None,
            u: None,
        };
        let t = s.seal(&claims);
        // Delegation, audience and federation survive the seal too.
        let full = OpaqueClaims {
            a: vec!["https://a.example".into()],
            d: Some(Delegation {
                sub: "kpc_u".into(),
                act: Act {
                    sub: "kpc_b".into(),
                    act: Some(Box::new(Act {
                        sub: "kpc_a".into(),
                        act: None,
                    })),
                },
                subject_credentials: vec![SubjectCredential::ApiKey { id: "key_1".into() }],
            }),
            f: Some(FederatedRef {
                iss: "https://issuer".into(),
                sub: "repo:x".into(),
            }),
            u: Some(GrantRef {
                g: "grt_1".into(),
                m: "mem_1".into(),
            }),
            ..claims.clone()
        };
        assert_eq!(s.open(&s.seal(&full)), Some(full));
        assert!(t.starts_with("kpt_"));
        assert_eq!(s.open(&t), Some(claims.clone()));
        let mut bad = t.clone().into_bytes();
        bad[10] ^= 1;
        assert_eq!(s.open(&String::from_utf8_lossy(&bad)), None);
        assert_eq!(Sealer::new([8; 32], "kpt_").open(&t), None);
        assert_eq!(s.open("kpt_"), None);
        assert_eq!(s.open("kpt_é€€€€€€€"), None);
    }

    #[test]
    fn jwts_sign_and_verify_with_both_algorithms() {
        for alg in [Alg::ES256, Alg::EdDSA] {
            let key =
                SigningKey::from_pkcs8("k1".into(), alg, &generate_pkcs8(alg), 0, None).unwrap();
            let claims = JwtClaims {
                iss: "i".into(),
                sub: "s".into(),
                aud: Audience::one("a".into()),
                exp: 2,
                iat: 1,
                nbf: 1,
                jti: "j".into(),
                client_id: "s".into(),
                scope: "x".into(),
                cnf: None,
                act: None,
                subject_credentials: None,
                federated: None,
            };
            let t = Keyring::sign_jwt(&key, &claims);
            // One audience is a string, several an array; both read back.
            let payload = |t: &str| -> serde_json::Value {
                serde_json::from_slice(&B64.decode(t.split('.').nth(1).unwrap()).unwrap()).unwrap()
            };
            assert_eq!(payload(&t)["aud"], "a");
            let many = JwtClaims {
                aud: Audience(vec!["a".into(), "b".into()]),
                ..claims.clone()
            };
            let tm = Keyring::sign_jwt(&key, &many);
            assert_eq!(payload(&tm)["aud"], serde_json::json!(["a", "b"]));
            let ring = Keyring::new(vec![key]);
            assert_eq!(ring.verify_jwt(&t), Some(claims));
            assert!(looks_like_jwt(&t));
            let mut bad = t.clone();
            bad.pop();
            bad.push(if t.ends_with('A') { 'B' } else { 'A' });
            assert_eq!(ring.verify_jwt(&bad), None);
            assert_eq!(ring.jwks(0)["keys"][0]["kid"], "k1");
        }
    }

    #[test]
    fn the_newest_active_key_signs() {
        let k = |kid: &str, at| {
            SigningKey::from_pkcs8(
                kid.into(),
                Alg::ES256,
                &generate_pkcs8(Alg::ES256),
                at,
                None,
            )
            .unwrap()
        };
        let ring = Keyring::new(vec![k("old", 0), k("next", 100)]);
        assert_eq!(ring.signer(Alg::ES256, 50).unwrap().kid, "old");
        assert_eq!(ring.signer(Alg::ES256, 100).unwrap().kid, "next");
        assert_eq!(ring.jwks(50)["keys"].as_array().unwrap().len(), 2);
        assert!(ring.signer(Alg::EdDSA, 100).is_none());
    }
}

#[cfg(test)]
mod low_s_tests {
    use super::*;

    #[test]
    fn high_s_signatures_are_refused_and_ours_are_low_s() {
        let key =
            SigningKey::from_pkcs8("k".into(), Alg::ES256, &generate_pkcs8(Alg::ES256), 0, None)
                .unwrap();
        for i in 0..64u8 {
            let msg = [i; 7];
            let sig = key.sign(&msg);
            assert!(is_p256_low_s(&sig), "we signed high-s");
            assert!(key.verify(&msg, &sig));
            // The same signature with s replaced by n - s is valid ECDSA, and refused.
            let mut high = sig.clone();
            let mut borrow = 0i16;
            for j in (0..32).rev() {
                let d = i16::from(P256_N[j]) - i16::from(sig[32 + j]) - borrow;
                borrow = i16::from(d < 0);
                high[32 + j] = (d + 256 * borrow) as u8;
            }
            assert!(!is_p256_low_s(&high));
            assert!(!key.verify(&msg, &high), "a high-s twin was accepted");
            // Normalizing it gives the original back.
            p256_low_s(&mut high);
            assert_eq!(high, sig);
        }
    }
}
