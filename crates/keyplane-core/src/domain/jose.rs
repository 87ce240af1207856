//! A small JOSE toolkit for signatures made by others: JSON Web Keys (RFC 7517, public keys
//! only), JWK sets, compact JWS (RFC 7515) verification and JWK thumbprints (RFC 7638). Pure:
//! ring does the cryptography; nothing here fetches, stores or knows what a token means.
//!
//! Algorithms: `ES256` (P-256), `EdDSA` and `Ed25519` (RFC 8037 and RFC 9864's fully specified
//! name for the same thing), `RS256` and `PS256` (RSA, 2048 to 8192 bits). Everything else —
//! `none`, the HMAC family (whose "key" would be a public key anyone holds), other curves, and
//! any name we do not know — is refused when the token is parsed, before any key is looked at.
//!
//! Use it in three steps, so that the caller decides which keys to trust:
//!
//! ```text
//! let jws = Jws::parse(token)?;            // shape, header, algorithm: nothing trusted yet
//! let who = jws.claims::<Peek>()?;        // unverified: only to find whose keys to use
//! let key = jws.verify_with_set(&keys, EcdsaForm::Any)?;   // now the payload is trusted
//! ```
//!
//! Client assertions (RFC 7523) use it today; DPoP proofs (RFC 9449, whose key arrives in the
//! header: [`JwsHeader::jwk`]) and workload-identity tokens (a foreign issuer's JWKS) are meant
//! to use it as it is.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// The longest compact JWS accepted (an RSA-8192 signature alone is 683 characters).
pub const MAX_JWS_LEN: usize = 8192;
/// The most keys a JWK set may hold.
pub const MAX_KEYS: usize = 20;
/// The longest JWK set accepted, as JSON.
pub const MAX_JWKS_BYTES: usize = 64 * 1024;
/// The longest `kid` accepted.
pub const MAX_KID_LEN: usize = 128;

/// Why a key, a key set or a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoseError {
    #[error("not a compact JWS: {0}")]
    Malformed(&'static str),
    /// `alg: none`: an unsigned token.
    #[error("unsigned tokens (alg `none`) are refused")]
    Unsigned,
    /// An algorithm we do not verify (HS256, ES384, RSA1_5, …) or do not know.
    #[error("the algorithm `{0}` is not supported; use ES256, EdDSA (Ed25519), RS256 or PS256")]
    UnsupportedAlg(String),
    /// A `crit` header: an extension we would have to understand.
    #[error("the header names critical extensions (`crit`), which are not supported")]
    Critical,
    /// A JWK that is not a usable public signing key.
    #[error("{0}")]
    BadKey(String),
    /// No key in the set has the token's `kid` (or, without a `kid`, none can take its `alg`):
    /// a caller with a key source that can be refreshed may try again after refreshing.
    #[error("no key matches the token's `kid` and algorithm")]
    UnknownKey,
    /// The key exists but cannot make this algorithm (wrong type, or its own `alg` differs).
    #[error("the key named by `kid` does not take the algorithm `{0}`")]
    KeyAlgMismatch(&'static str),
    #[error("the signature does not verify")]
    BadSignature,
}

/// A JWS algorithm we verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JwsAlg {
    ES256,
    /// RFC 8037 `EdDSA`; only with Ed25519 keys.
    EdDSA,
    /// RFC 9864's fully specified name of EdDSA over Ed25519 (openid-client sends it).
    Ed25519,
    RS256,
    PS256,
}

impl JwsAlg {
    /// Every algorithm verified, by its registered name (what metadata advertises).
    pub const ALL: [JwsAlg; 5] = [
        JwsAlg::ES256,
        JwsAlg::EdDSA,
        JwsAlg::Ed25519,
        JwsAlg::RS256,
        JwsAlg::PS256,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JwsAlg::ES256 => "ES256",
            JwsAlg::EdDSA => "EdDSA",
            JwsAlg::Ed25519 => "Ed25519",
            JwsAlg::RS256 => "RS256",
            JwsAlg::PS256 => "PS256",
        }
    }

    /// The algorithm named `s`; `none`, HMAC and unknown names are errors saying which.
    pub fn parse(s: &str) -> Result<Self, JoseError> {
        Ok(match s {
            "ES256" => JwsAlg::ES256,
            "EdDSA" => JwsAlg::EdDSA,
            "Ed25519" => JwsAlg::Ed25519,
            "RS256" => JwsAlg::RS256,
            "PS256" => JwsAlg::PS256,
            n if n.eq_ignore_ascii_case("none") => return Err(JoseError::Unsigned),
            other => {
                return Err(JoseError::UnsupportedAlg(
                    other.chars().take(32).collect::<String>(),
                ))
            }
        })
    }

    fn kty(self) -> Kty {
        match self {
            JwsAlg::ES256 => Kty::P256,
            JwsAlg::EdDSA | JwsAlg::Ed25519 => Kty::Ed25519,
            JwsAlg::RS256 | JwsAlg::PS256 => Kty::Rsa,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kty {
    P256,
    Ed25519,
    Rsa,
}

/// Whether an ECDSA signature may have a high `s`. `(r, s)` and `(r, n - s)` both verify, so
/// accepting both lets anyone derive a second token string from a signed one. That matters
/// where the string itself is what is tracked (keyplane's own access tokens only ever carry
/// low-s signatures and refuse the twin); it does not where replay is stopped by the token's
/// `jti` (client assertions, DPoP proofs). WebCrypto, OpenSSL and Python's `cryptography`
/// make high-s signatures half the time, so signatures from other software need `Any`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EcdsaForm {
    LowSOnly,
    Any,
}

/// The key material of a public JWK.
#[derive(Clone, PartialEq, Eq)]
enum PublicKey {
    /// The uncompressed point (`0x04 ‖ x ‖ y`).
    P256(Vec<u8>),
    Ed25519([u8; 32]),
    /// Modulus and exponent, big-endian, without leading zeros.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
}

/// A public signing key (RFC 7517), as registered or fetched.
#[derive(Clone, PartialEq, Eq)]
pub struct Jwk {
    kid: Option<String>,
    /// The key's own `alg`, when it names one: then it signs with nothing else.
    alg: Option<JwsAlg>,
    key: PublicKey,
}

impl std::fmt::Debug for Jwk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwk")
            .field("kty", &self.kty_name())
            .field("kid", &self.kid)
            .field("alg", &self.alg.map(JwsAlg::as_str))
            .field("thumbprint", &self.thumbprint())
            .finish()
    }
}

fn b64_field(o: &Map<String, Value>, name: &str) -> Result<Vec<u8>, JoseError> {
    let text = o
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| JoseError::BadKey(format!("the JWK has no `{name}`")))?;
    B64.decode(text)
        .map_err(|_| JoseError::BadKey(format!("the JWK's `{name}` is not base64url")))
}

fn strip_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let lead = v.iter().take_while(|b| **b == 0).count();
    v.drain(..lead);
    v
}

impl Jwk {
    /// A public signing key from its JSON. Refused: private keys (`d`, RSA's primes), other key
    /// types and curves, `use` other than `sig`, `key_ops` without `verify`, an `alg` the key
    /// cannot make, RSA keys under 2048 or over 8192 bits, and malformed coordinates.
    pub fn from_json(v: &Value) -> Result<Jwk, JoseError> {
        let o = v
            .as_object()
            .ok_or_else(|| JoseError::BadKey("a JWK must be a JSON object".into()))?;
        let text = |name: &str| -> Result<Option<&str>, JoseError> {
            match o.get(name) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(_) => Err(JoseError::BadKey(format!(
                    "the JWK's `{name}` must be a string"
                ))),
            }
        };
        for private in ["d", "p", "q", "dp", "dq", "qi", "oth", "k"] {
            if o.contains_key(private) {
                return Err(JoseError::BadKey(format!(
                    "the JWK has the private member `{private}`: register the public key only"
                )));
            }
        }
        let kty = text("kty")?.ok_or_else(|| JoseError::BadKey("the JWK has no `kty`".into()))?;
        let key = match kty {
            "EC" => {
                let crv = text("crv")?.unwrap_or("");
                if crv != "P-256" {
                    return Err(JoseError::BadKey(format!(
                        "EC keys must be on P-256 (ES256), not `{crv}`"
                    )));
                }
                let (x, y) = (b64_field(o, "x")?, b64_field(o, "y")?);
                if x.len() != 32 || y.len() != 32 {
                    return Err(JoseError::BadKey(
                        "a P-256 key's `x` and `y` are 32 bytes each".into(),
                    ));
                }
                let mut point = Vec::with_capacity(65);
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                PublicKey::P256(point)
            }
            "OKP" => {
                let crv = text("crv")?.unwrap_or("");
                if crv != "Ed25519" {
                    return Err(JoseError::BadKey(format!(
                        "OKP keys must be Ed25519 (EdDSA), not `{crv}`"
                    )));
                }
                let x: [u8; 32] = b64_field(o, "x")?
                    .try_into()
                    .map_err(|_| JoseError::BadKey("an Ed25519 key's `x` is 32 bytes".into()))?;
                PublicKey::Ed25519(x)
            }
            "RSA" => {
                let n = strip_zeros(b64_field(o, "n")?);
                let e = strip_zeros(b64_field(o, "e")?);
                let bits = n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize);
                if !(2048..=8192).contains(&bits) {
                    return Err(JoseError::BadKey(format!(
                        "RSA keys must have 2048 to 8192 bits; this one has {bits}"
                    )));
                }
                let e_ok = !e.is_empty()
                    && e.len() <= 4
                    && e.last().is_some_and(|b| b & 1 == 1)
                    && (e.len() > 1 || e[0] >= 3);
                if !e_ok {
                    return Err(JoseError::BadKey(
                        "the RSA exponent `e` must be odd, at least 3 and at most 32 bits".into(),
                    ));
                }
                PublicKey::Rsa { n, e }
            }
            other => {
                return Err(JoseError::BadKey(format!(
                    "the key type `{other}` is not supported: use EC (P-256), OKP (Ed25519) or RSA"
                )))
            }
        };
        if let Some(u) = text("use")? {
            if u != "sig" {
                return Err(JoseError::BadKey(format!(
                    "the JWK's `use` is `{u}`; a signing key has `sig`"
                )));
            }
        }
        if let Some(ops) = o.get("key_ops") {
            let verifies = ops
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == "verify"));
            if !verifies {
                return Err(JoseError::BadKey(
                    "the JWK's `key_ops` does not include `verify`".into(),
                ));
            }
        }
        let kid = text("kid")?.map(str::to_string);
        if kid
            .as_deref()
            .is_some_and(|k| k.is_empty() || k.len() > MAX_KID_LEN)
        {
            return Err(JoseError::BadKey(format!(
                "a `kid` has 1 to {MAX_KID_LEN} characters"
            )));
        }
        let mut jwk = Jwk {
            kid,
            alg: None,
            key,
        };
        if let Some(a) = text("alg")? {
            let alg = JwsAlg::parse(a).map_err(|e| JoseError::BadKey(e.to_string()))?;
            if alg.kty() != jwk.kty() {
                return Err(JoseError::BadKey(format!(
                    "the JWK's `alg` is {a}, which a {} key cannot make",
                    jwk.kty_name()
                )));
            }
            jwk.alg = Some(alg);
        }
        Ok(jwk)
    }

    fn kty(&self) -> Kty {
        match self.key {
            PublicKey::P256(_) => Kty::P256,
            PublicKey::Ed25519(_) => Kty::Ed25519,
            PublicKey::Rsa { .. } => Kty::Rsa,
        }
    }

    /// `EC`, `OKP` or `RSA`.
    pub fn kty_name(&self) -> &'static str {
        match self.key {
            PublicKey::P256(_) => "EC",
            PublicKey::Ed25519(_) => "OKP",
            PublicKey::Rsa { .. } => "RSA",
        }
    }

    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The key's own `alg`, when it names one.
    pub fn alg(&self) -> Option<JwsAlg> {
        self.alg
    }

    /// Whether this key verifies `alg`: the right key type, and its own `alg` (if any) agrees.
    /// `EdDSA` and `Ed25519` name the same algorithm over Ed25519 keys.
    pub fn takes(&self, alg: JwsAlg) -> bool {
        let same = |a: JwsAlg, b: JwsAlg| {
            a == b
                || matches!(
                    (a, b),
                    (JwsAlg::EdDSA, JwsAlg::Ed25519) | (JwsAlg::Ed25519, JwsAlg::EdDSA)
                )
        };
        alg.kty() == self.kty() && self.alg.is_none_or(|own| same(own, alg))
    }

    /// The required members of RFC 7638 §3.2, in its order, for the thumbprint and for output.
    fn required_members(&self) -> Vec<(&'static str, String)> {
        match &self.key {
            PublicKey::P256(p) => vec![
                ("crv", "P-256".into()),
                ("kty", "EC".into()),
                ("x", B64.encode(&p[1..33])),
                ("y", B64.encode(&p[33..65])),
            ],
            PublicKey::Ed25519(x) => vec![
                ("crv", "Ed25519".into()),
                ("kty", "OKP".into()),
                ("x", B64.encode(x)),
            ],
            PublicKey::Rsa { n, e } => vec![
                ("e", B64.encode(e)),
                ("kty", "RSA".into()),
                ("n", B64.encode(n)),
            ],
        }
    }

    /// The RFC 7638 JWK thumbprint (SHA-256, base64url): a name for the key itself, the same
    /// whatever `kid` or member order it was registered with (DPoP's `jkt` is this value).
    pub fn thumbprint(&self) -> String {
        let members: Vec<String> = self
            .required_members()
            .into_iter()
            .map(|(k, v)| format!("\"{k}\":\"{v}\""))
            .collect();
        let canonical = format!("{{{}}}", members.join(","));
        B64.encode(ring::digest::digest(
            &ring::digest::SHA256,
            canonical.as_bytes(),
        ))
    }

    /// The public JWK: its required members, `kid` and `alg` when set, and `use: sig`.
    pub fn to_json(&self) -> Value {
        let mut o = Map::new();
        for (k, v) in self.required_members() {
            o.insert(k.into(), Value::String(v));
        }
        if let Some(kid) = &self.kid {
            o.insert("kid".into(), json!(kid));
        }
        if let Some(alg) = self.alg {
            o.insert("alg".into(), json!(alg.as_str()));
        }
        o.insert("use".into(), json!("sig"));
        Value::Object(o)
    }

    /// Verifies `sig` over `message` with `alg`. The key must take `alg` ([`Jwk::takes`]).
    pub fn verify(
        &self,
        alg: JwsAlg,
        message: &[u8],
        sig: &[u8],
        form: EcdsaForm,
    ) -> Result<(), JoseError> {
        if !self.takes(alg) {
            return Err(JoseError::KeyAlgMismatch(alg.as_str()));
        }
        let ok = match (&self.key, alg) {
            (PublicKey::P256(point), JwsAlg::ES256) => {
                (form == EcdsaForm::Any || crate::domain::token::is_p256_low_s(sig))
                    && UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                        .verify(message, sig)
                        .is_ok()
            }
            (PublicKey::Ed25519(x), _) => UnparsedPublicKey::new(&signature::ED25519, x)
                .verify(message, sig)
                .is_ok(),
            (PublicKey::Rsa { n, e }, JwsAlg::RS256 | JwsAlg::PS256) => {
                let params = if alg == JwsAlg::RS256 {
                    &signature::RSA_PKCS1_2048_8192_SHA256
                } else {
                    &signature::RSA_PSS_2048_8192_SHA256
                };
                RsaPublicKeyComponents { n, e }
                    .verify(params, message, sig)
                    .is_ok()
            }
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(JoseError::BadSignature)
        }
    }
}

/// A JWK set (RFC 7517 §5): at most [`MAX_KEYS`] public signing keys, `kid`s unique.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JwkSet {
    keys: Vec<Jwk>,
}

impl JwkSet {
    /// A set from JSON text (a fetched `jwks_uri` document).
    pub fn parse(bytes: &[u8]) -> Result<JwkSet, JoseError> {
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(JoseError::BadKey(format!(
                "a JWK set is at most {MAX_JWKS_BYTES} bytes"
            )));
        }
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|_| JoseError::BadKey("the JWK set is not JSON".into()))?;
        Self::from_json(&v)
    }

    /// A set from its JSON value: `{"keys": [...]}` with at least one key. Every key must be
    /// usable (a set with one bad key is refused whole, so a typo is seen at registration).
    pub fn from_json(v: &Value) -> Result<JwkSet, JoseError> {
        let list = v.get("keys").and_then(Value::as_array).ok_or_else(|| {
            JoseError::BadKey("a JWK set is an object with a `keys` array".into())
        })?;
        if list.is_empty() || list.len() > MAX_KEYS {
            return Err(JoseError::BadKey(format!(
                "a JWK set holds 1 to {MAX_KEYS} keys"
            )));
        }
        let mut keys = Vec::with_capacity(list.len());
        for (i, k) in list.iter().enumerate() {
            let jwk = Jwk::from_json(k).map_err(|e| JoseError::BadKey(format!("key {i}: {e}")))?;
            if let Some(kid) = jwk.kid() {
                if keys.iter().any(|o: &Jwk| o.kid() == Some(kid)) {
                    return Err(JoseError::BadKey(format!(
                        "two keys have the `kid` `{kid}`"
                    )));
                }
            }
            keys.push(jwk);
        }
        Ok(JwkSet { keys })
    }

    pub fn keys(&self) -> &[Jwk] {
        &self.keys
    }

    pub fn to_json(&self) -> Value {
        json!({ "keys": self.keys.iter().map(Jwk::to_json).collect::<Vec<_>>() })
    }

    /// The keys that may have signed with `alg` under `kid`: the one with that `kid` (an error
    /// if it cannot take `alg`), or without a `kid` every key that takes `alg`.
    pub fn candidates(&self, kid: Option<&str>, alg: JwsAlg) -> Result<Vec<&Jwk>, JoseError> {
        match kid {
            Some(kid) => {
                let key = self
                    .keys
                    .iter()
                    .find(|k| k.kid() == Some(kid))
                    .ok_or(JoseError::UnknownKey)?;
                if key.takes(alg) {
                    Ok(vec![key])
                } else {
                    Err(JoseError::KeyAlgMismatch(alg.as_str()))
                }
            }
            None => {
                let keys: Vec<&Jwk> = self.keys.iter().filter(|k| k.takes(alg)).collect();
                if keys.is_empty() {
                    Err(JoseError::UnknownKey)
                } else {
                    Ok(keys)
                }
            }
        }
    }
}

/// The protected header of a compact JWS, as far as we read it.
#[derive(Debug, Clone)]
pub struct JwsHeader {
    pub alg: JwsAlg,
    pub kid: Option<String>,
    pub typ: Option<String>,
    /// A public key carried in the header (DPoP proofs carry theirs here). Never a reason to
    /// trust the signature by itself: the caller decides whether this key is acceptable.
    pub jwk: Option<Jwk>,
}

/// A parsed, not yet verified, compact JWS.
#[derive(Debug, Clone)]
pub struct Jws {
    header: JwsHeader,
    /// `BASE64URL(header) || '.' || BASE64URL(payload)`.
    signing_input: String,
    payload: Vec<u8>,
    signature: Vec<u8>,
}

impl Jws {
    /// Reads a compact JWS: three base64url parts, a JSON header with a supported `alg`, no
    /// `crit`. Duplicate header members are refused (RFC 7515 §5.2 lets us).
    pub fn parse(token: &str) -> Result<Jws, JoseError> {
        if token.len() > MAX_JWS_LEN {
            return Err(JoseError::Malformed("too long"));
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JoseError::Malformed("a compact JWS has three parts"));
        };
        let header_bytes = B64
            .decode(h)
            .map_err(|_| JoseError::Malformed("the header is not base64url"))?;
        #[derive(Deserialize)]
        struct RawHeader {
            alg: Option<Value>,
            kid: Option<Value>,
            typ: Option<Value>,
            jwk: Option<Value>,
            crit: Option<Value>,
        }
        let raw: RawHeader = serde_json::from_slice(&header_bytes)
            .map_err(|_| JoseError::Malformed("the header is not a JSON object"))?;
        if raw.crit.is_some() {
            return Err(JoseError::Critical);
        }
        let alg = match raw.alg {
            Some(Value::String(a)) => JwsAlg::parse(&a)?,
            _ => return Err(JoseError::Malformed("the header has no `alg`")),
        };
        let string = |v: Option<Value>, what: &'static str| match v {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(JoseError::Malformed(what)),
        };
        let kid = string(raw.kid, "the header's `kid` is not a string")?;
        if kid.as_deref().is_some_and(|k| k.len() > MAX_KID_LEN) {
            return Err(JoseError::Malformed("the header's `kid` is too long"));
        }
        let typ = string(raw.typ, "the header's `typ` is not a string")?;
        let jwk = raw.jwk.as_ref().map(Jwk::from_json).transpose()?;
        let payload = B64
            .decode(p)
            .map_err(|_| JoseError::Malformed("the payload is not base64url"))?;
        let signature = B64
            .decode(s)
            .map_err(|_| JoseError::Malformed("the signature is not base64url"))?;
        if signature.is_empty() {
            return Err(JoseError::Unsigned);
        }
        Ok(Jws {
            header: JwsHeader { alg, kid, typ, jwk },
            signing_input: token[..h.len() + 1 + p.len()].to_string(),
            payload,
            signature,
        })
    }

    pub fn header(&self) -> &JwsHeader {
        &self.header
    }

    /// The payload, unverified: trust it only after [`Jws::verify`] succeeded.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The payload read as `T` (a JSON object), unverified like [`Jws::payload`].
    pub fn claims<T: DeserializeOwned>(&self) -> Result<T, JoseError> {
        const NOT_OBJECT: JoseError =
            JoseError::Malformed("the payload is not the expected JSON object");
        // A claims set is a JSON object (RFC 7519 §7.2); serde would also read a struct from
        // an array, field by field.
        if self.payload.trim_ascii_start().first() != Some(&b'{') {
            return Err(NOT_OBJECT);
        }
        serde_json::from_slice(&self.payload).map_err(|_| NOT_OBJECT)
    }

    /// Verifies the signature with `key`.
    pub fn verify(&self, key: &Jwk, form: EcdsaForm) -> Result<(), JoseError> {
        key.verify(
            self.header.alg,
            self.signing_input.as_bytes(),
            &self.signature,
            form,
        )
    }

    /// Verifies the signature with the key of `set` that the header names (by `kid`, or
    /// without one every key that takes the algorithm); returns the key that verified.
    /// [`JoseError::UnknownKey`] means the set may be out of date.
    pub fn verify_with_set<'a>(
        &self,
        set: &'a JwkSet,
        form: EcdsaForm,
    ) -> Result<&'a Jwk, JoseError> {
        let candidates = set.candidates(self.header.kid.as_deref(), self.header.alg)?;
        candidates
            .into_iter()
            .find(|k| self.verify(k, form).is_ok())
            .ok_or(JoseError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};

    /// A 2048-bit RSA key made for these tests only (`openssl genpkey -algorithm RSA`).
    const RSA_PKCS8_PEM: &str = include_str!("../../tests/fixtures/rsa-2048.pem");

    fn pem_der(pem: &str) -> Vec<u8> {
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap()
    }

    fn b64(v: &[u8]) -> String {
        B64.encode(v)
    }

    fn compact(header: Value, payload: &[u8], sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
        let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(payload));
        let sig = sign(input.as_bytes());
        format!("{input}.{}", b64(&sig))
    }

    fn es256() -> (EcdsaKeyPair, Jwk) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .unwrap();
        let p = kp.public_key().as_ref();
        let jwk = Jwk::from_json(&json!({
            "kty": "EC", "crv": "P-256", "kid": "ec", "x": b64(&p[1..33]), "y": b64(&p[33..65]),
        }))
        .unwrap();
        (kp, jwk)
    }

    fn rsa() -> (RsaKeyPair, Jwk) {
        let kp = RsaKeyPair::from_pkcs8(&pem_der(RSA_PKCS8_PEM)).unwrap();
        let public = kp.public();
        let comps: RsaPublicKeyComponents<Vec<u8>> = public.into();
        let jwk = Jwk::from_json(&json!({
            "kty": "RSA", "kid": "rsa", "n": b64(&comps.n), "e": b64(&comps.e),
        }))
        .unwrap();
        (kp, jwk)
    }

    /// RFC 7638 §3.1's example key and thumbprint.
    #[test]
    fn rsa_thumbprint_matches_rfc_7638() {
        let jwk = Jwk::from_json(&json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        }))
        .unwrap();
        assert_eq!(
            jwk.thumbprint(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    /// RFC 8037 A.3 (thumbprint) and A.4 (an Ed25519 signature) with its example key.
    #[test]
    fn ed25519_matches_rfc_8037() {
        let jwk = Jwk::from_json(&json!({
            "kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
        }))
        .unwrap();
        assert_eq!(
            jwk.thumbprint(),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
        let token = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";
        let jws = Jws::parse(token).unwrap();
        assert_eq!(jws.header().alg, JwsAlg::EdDSA);
        assert_eq!(jws.payload(), b"Example of Ed25519 signing");
        jws.verify(&jwk, EcdsaForm::LowSOnly).unwrap();
        // The same key under RFC 9864's name.
        let renamed = compact(json!({"alg": "Ed25519"}), b"x", |_| vec![0; 64]);
        assert_eq!(Jws::parse(&renamed).unwrap().header().alg, JwsAlg::Ed25519);
    }

    #[test]
    fn every_algorithm_verifies_and_a_changed_byte_does_not() {
        let (ec, ec_jwk) = es256();
        let ed_pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let ed = Ed25519KeyPair::from_pkcs8(ed_pkcs8.as_ref()).unwrap();
        let ed_jwk = Jwk::from_json(
            &json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": b64(ed.public_key().as_ref())}),
        )
        .unwrap();
        let (rsa_kp, rsa_jwk) = rsa();
        let rng = SystemRandom::new();
        let rsa_sign = |params: &'static dyn signature::RsaEncoding| {
            let rsa_kp = &rsa_kp;
            let rng = &rng;
            move |m: &[u8]| {
                let mut sig = vec![0; rsa_kp.public().modulus_len()];
                rsa_kp.sign(params, rng, m, &mut sig).unwrap();
                sig
            }
        };
        let cases: Vec<(&str, String, &Jwk)> = vec![
            (
                "ES256",
                compact(json!({"alg": "ES256", "kid": "ec"}), b"{}", |m| {
                    let mut s = ec.sign(&rng, m).unwrap().as_ref().to_vec();
                    crate::domain::token::p256_low_s(&mut s);
                    s
                }),
                &ec_jwk,
            ),
            (
                "EdDSA",
                compact(json!({"alg": "EdDSA", "kid": "ed"}), b"{}", |m| {
                    ed.sign(m).as_ref().to_vec()
                }),
                &ed_jwk,
            ),
            (
                "Ed25519",
                compact(json!({"alg": "Ed25519"}), b"{}", |m| {
                    ed.sign(m).as_ref().to_vec()
                }),
                &ed_jwk,
            ),
            (
                "RS256",
                compact(
                    json!({"alg": "RS256", "kid": "rsa"}),
                    b"{}",
                    rsa_sign(&signature::RSA_PKCS1_SHA256),
                ),
                &rsa_jwk,
            ),
            (
                "PS256",
                compact(
                    json!({"alg": "PS256"}),
                    b"{}",
                    rsa_sign(&signature::RSA_PSS_SHA256),
                ),
                &rsa_jwk,
            ),
        ];
        let set = JwkSet::from_json(&json!({
            "keys": [ec_jwk.to_json(), ed_jwk.to_json(), rsa_jwk.to_json()]
        }))
        .unwrap();
        for (what, token, key) in cases {
            let jws = Jws::parse(&token).unwrap();
            jws.verify(key, EcdsaForm::LowSOnly)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(
                jws.verify_with_set(&set, EcdsaForm::LowSOnly).unwrap(),
                key,
                "{what}"
            );
            // One character of the payload changed.
            let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
            parts[1] = b64(b"{ }");
            let bad = Jws::parse(&parts.join(".")).unwrap();
            assert_eq!(
                bad.verify(key, EcdsaForm::Any),
                Err(JoseError::BadSignature),
                "{what}"
            );
        }
        // A key of another type is a mismatch, not a bad signature.
        let es = compact(json!({"alg": "ES256", "kid": "rsa"}), b"{}", |_| {
            vec![1; 64]
        });
        assert_eq!(
            Jws::parse(&es)
                .unwrap()
                .verify_with_set(&set, EcdsaForm::Any),
            Err(JoseError::KeyAlgMismatch("ES256"))
        );
        let unknown = compact(json!({"alg": "ES256", "kid": "gone"}), b"{}", |_| {
            vec![1; 64]
        });
        assert_eq!(
            Jws::parse(&unknown)
                .unwrap()
                .verify_with_set(&set, EcdsaForm::Any),
            Err(JoseError::UnknownKey)
        );
    }

    /// `s := n - s`: the other valid ECDSA signature of the same message.
    fn flip_s(sig: &mut [u8]) {
        const N: [u8; 32] = [
            0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2,
            0xfc, 0x63, 0x25, 0x51,
        ];
        let mut borrow = 0i16;
        for j in (0..32).rev() {
            let d = i16::from(N[j]) - i16::from(sig[32 + j]) - borrow;
            borrow = i16::from(d < 0);
            sig[32 + j] = (d + 256 * borrow) as u8;
        }
    }

    #[test]
    fn high_s_is_refused_only_when_asked() {
        let (ec, jwk) = es256();
        let rng = SystemRandom::new();
        for i in 0..16u8 {
            let token = compact(json!({"alg": "ES256"}), &[b'{', i, b'}'], |m| {
                let mut s = ec.sign(&rng, m).unwrap().as_ref().to_vec();
                crate::domain::token::p256_low_s(&mut s);
                flip_s(&mut s);
                s
            });
            let jws = Jws::parse(&token).unwrap();
            assert_eq!(
                jws.verify(&jwk, EcdsaForm::LowSOnly),
                Err(JoseError::BadSignature)
            );
            jws.verify(&jwk, EcdsaForm::Any).unwrap();
        }
    }

    #[test]
    fn unsigned_hmac_unknown_and_critical_tokens_are_refused_at_parse() {
        let t = |h: Value| compact(h, b"{}", |_| vec![7; 32]);
        assert_eq!(
            Jws::parse(&t(json!({"alg": "none"}))).unwrap_err(),
            JoseError::Unsigned
        );
        assert_eq!(
            Jws::parse(&format!("{}.{}.", b64(br#"{"alg":"ES256"}"#), b64(b"{}"))).unwrap_err(),
            JoseError::Unsigned
        );
        for alg in ["HS256", "HS512", "ES384", "RS512", "ES256K", "foo"] {
            assert_eq!(
                Jws::parse(&t(json!({ "alg": alg }))).unwrap_err(),
                JoseError::UnsupportedAlg(alg.into())
            );
        }
        assert_eq!(
            Jws::parse(&t(json!({"alg": "ES256", "crit": ["b64"], "b64": false}))).unwrap_err(),
            JoseError::Critical
        );
        assert!(matches!(
            Jws::parse(&t(json!({"kid": "x"}))).unwrap_err(),
            JoseError::Malformed(_)
        ));
        let dup = format!(
            "{}.{}.{}",
            b64(br#"{"alg":"ES256","alg":"none"}"#),
            b64(b"{}"),
            b64(&[1; 64])
        );
        assert!(matches!(
            Jws::parse(&dup).unwrap_err(),
            JoseError::Malformed(_)
        ));
        for bad in ["a.b", "a.b.c.d", "!!.e30.AA", &"a".repeat(MAX_JWS_LEN + 1)] {
            assert!(matches!(
                Jws::parse(bad).unwrap_err(),
                JoseError::Malformed(_)
            ));
        }
    }

    #[test]
    fn keys_are_checked_when_registered() {
        let (_, ec) = es256();
        let good = ec.to_json();
        let with = |k: &str, v: Value| {
            let mut o = good.clone();
            o[k] = v;
            o
        };
        let refused = [
            with("d", json!("AAAA")),
            with("crv", json!("P-384")),
            with("x", json!("AAAA")),
            with("use", json!("enc")),
            with("alg", json!("RS256")),
            with("alg", json!("HS256")),
            with("key_ops", json!(["encrypt"])),
            with("kty", json!("oct")),
            with("kid", json!("")),
            json!({"kty": "OKP", "crv": "X25519", "x": b64(&[1; 32])}),
            json!("a string"),
        ];
        for k in refused {
            assert!(Jwk::from_json(&k).is_err(), "accepted {k}");
        }
        assert!(Jwk::from_json(&with("key_ops", json!(["verify"]))).is_ok());
        // An RSA key below 2048 bits, and a bad exponent.
        let (_, rsa) = rsa();
        let mut small = rsa.to_json();
        small["n"] = json!(b64(&[0xc1; 128]));
        assert!(Jwk::from_json(&small)
            .unwrap_err()
            .to_string()
            .contains("1024"));
        let mut even = rsa.to_json();
        even["e"] = json!(b64(&[1, 0]));
        assert!(Jwk::from_json(&even).is_err());
        // A leading zero in `n` (some libraries add one) is read as the same key.
        let mut padded = rsa.to_json();
        let n = B64.decode(padded["n"].as_str().unwrap()).unwrap();
        padded["n"] = json!(b64(&[&[0u8][..], &n].concat()));
        assert_eq!(Jwk::from_json(&padded).unwrap(), rsa);
        // Sets: not empty, not too many, unique kids.
        assert!(JwkSet::from_json(&json!({"keys": []})).is_err());
        assert!(JwkSet::from_json(&json!({"keys": [good, good]})).is_err());
        assert!(JwkSet::from_json(&json!([good])).is_err());
        let many: Vec<Value> = (0..=MAX_KEYS)
            .map(|i| with("kid", json!(format!("k{i}"))))
            .collect();
        assert!(JwkSet::from_json(&json!({ "keys": many })).is_err());
        // Round trip through the stored form.
        let set = JwkSet::from_json(&json!({"keys": [good, rsa.to_json()]})).unwrap();
        assert_eq!(
            JwkSet::parse(set.to_json().to_string().as_bytes()).unwrap(),
            set
        );
    }
}
