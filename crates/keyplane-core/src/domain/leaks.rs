//! Leaked-credential reports (issue 16): what a report is, how a GitHub secret-scanning partner
//! report is authenticated (ECDSA P-256 with SHA-256 over the raw body, a DER signature in
//! base64, the key named by its identifier), which of keyplane's formats a reported token has
//! (prefix, length, alphabet and CRC32 — no storage lookup for anything else), the regular
//! expressions a scanner needs, and the feedback GitHub accepts. Pure: fetching GitHub's key
//! list is the binary's (through [`super::client_auth::JwksFetcher`]), caching it the runtime's.

use super::secret::{SecretFormat, BODY_LEN, CHECKSUM_LEN};
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// GitHub's published list of secret-scanning signing keys.
pub const GITHUB_KEYS_URL: &str = "https://api.github.com/meta/public_keys/secret_scanning";

/// Tokens taken from one report at most; a longer report is refused whole (GitHub batches a few).
pub const MAX_TOKENS_PER_REPORT: usize = 1000;

/// How long a signed report is remembered, so the same report (same body and signature) is
/// refused when it comes again within this time, on every node.
pub const REPLAY_WINDOW_SECONDS: i64 = 7 * 24 * 3600;

/// The reported URL and source are kept (in the activity event) up to this many characters.
pub const MAX_URL_LEN: usize = 2048;

/// What keyplane does with a live credential that is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LeakPolicy {
    /// Revoke the key or retire the client secret at once (the default).
    #[default]
    Revoke,
    /// Only record `credential.leaked`; the owner decides.
    Notify,
}

impl LeakPolicy {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "revoke" => Some(Self::Revoke),
            "notify" => Some(Self::Notify),
            _ => None,
        }
    }
}

/// The deployment's settings for leak reports.
#[derive(Debug, Clone)]
pub struct LeakSettings {
    pub policy: LeakPolicy,
    /// Keys configured by the operator (a file in GitHub's format); used before any fetched.
    pub github_keys: Vec<ReporterKey>,
    /// Where GitHub's key list is fetched from (`None`: only the configured keys).
    pub github_keys_url: Option<String>,
    /// The fetched list is fetched again for an unknown identifier at most once per this.
    pub refetch_interval_seconds: i64,
    /// A fetched list is used this long before it is fetched again.
    pub max_age_seconds: i64,
    /// Reports through the public form per client address per minute.
    pub form_reports_per_minute: u32,
}

impl Default for LeakSettings {
    fn default() -> Self {
        Self {
            policy: LeakPolicy::Revoke,
            github_keys: Vec::new(),
            github_keys_url: Some(GITHUB_KEYS_URL.into()),
            refetch_interval_seconds: 60,
            max_age_seconds: 3600,
            form_reports_per_minute: 10,
        }
    }
}

/// A public key that signs reports: its identifier and its uncompressed P-256 point.
#[derive(Clone, PartialEq, Eq)]
pub struct ReporterKey {
    pub id: String,
    point: Vec<u8>,
}

impl std::fmt::Debug for ReporterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReporterKey({})", self.id)
    }
}

/// The DER `SubjectPublicKeyInfo` of a P-256 key, before its 65-byte uncompressed point:
/// SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (0 unused bits) }.
const P256_SPKI_HEADER: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

impl ReporterKey {
    /// A key from a PEM `PUBLIC KEY` block (a P-256 `SubjectPublicKeyInfo`).
    pub fn from_pem(id: &str, pem: &str) -> Result<Self, String> {
        let body: String = pem
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("-----"))
            .collect();
        if !pem.contains("-----BEGIN PUBLIC KEY-----") {
            return Err(format!("key {id:?} is not a PEM PUBLIC KEY block"));
        }
        let der = base64::engine::general_purpose::STANDARD
            .decode(body.as_bytes())
            .map_err(|_| format!("key {id:?}: the PEM body is not base64"))?;
        if der.len() != P256_SPKI_HEADER.len() + 65
            || der[..P256_SPKI_HEADER.len()] != P256_SPKI_HEADER
            || der[P256_SPKI_HEADER.len()] != 0x04
        {
            return Err(format!("key {id:?} is not an ECDSA P-256 public key"));
        }
        if id.is_empty() || id.len() > 256 {
            return Err("a key identifier must be 1 to 256 characters".into());
        }
        Ok(Self {
            id: id.to_string(),
            point: der[P256_SPKI_HEADER.len()..].to_vec(),
        })
    }

    /// Whether `signature` (DER) is this key's ECDSA P-256 SHA-256 signature of `body`.
    pub fn verifies(&self, body: &[u8], signature: &[u8]) -> bool {
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_ASN1,
            &self.point,
        )
        .verify(body, signature)
        .is_ok()
    }
}

#[derive(Deserialize)]
struct GithubKeyList {
    public_keys: Vec<GithubKey>,
}

#[derive(Deserialize)]
struct GithubKey {
    key_identifier: String,
    key: String,
}

/// Parses GitHub's key list (`{"public_keys": [{"key_identifier", "key", "is_current"}]}`).
/// Keys that are not P-256 are skipped (GitHub publishes only P-256 keys today); a list with
/// no usable key is an error.
pub fn parse_github_keys(bytes: &[u8]) -> Result<Vec<ReporterKey>, String> {
    let list: GithubKeyList =
        serde_json::from_slice(bytes).map_err(|e| format!("not a GitHub public key list: {e}"))?;
    let keys: Vec<ReporterKey> = list
        .public_keys
        .iter()
        .filter_map(|k| ReporterKey::from_pem(&k.key_identifier, &k.key).ok())
        .collect();
    if keys.is_empty() {
        return Err("the list holds no ECDSA P-256 public key".into());
    }
    Ok(keys)
}

/// Why a report's signature is refused (the reporter only learns that it was).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error(
        "the Github-Public-Key-Identifier and Github-Public-Key-Signature headers are required"
    )]
    Missing,
    #[error("the signature is not base64")]
    Encoding,
    #[error("no known key has this identifier")]
    UnknownKey,
    #[error("the signature does not match the body")]
    Mismatch,
}

/// Decodes the `Github-Public-Key-Signature` header (base64 of a DER signature).
pub fn decode_signature(header: &str) -> Result<Vec<u8>, SignatureError> {
    let der = base64::engine::general_purpose::STANDARD
        .decode(header.trim().as_bytes())
        .map_err(|_| SignatureError::Encoding)?;
    // A DER P-256 signature is 8 to 72 bytes.
    if der.len() < 8 || der.len() > 72 {
        return Err(SignatureError::Encoding);
    }
    Ok(der)
}

/// One entry of GitHub's report: `{"token", "type", "url", "source"}`.
#[derive(Debug, Clone, Deserialize)]
pub struct GithubMatch {
    pub token: String,
    #[serde(rename = "type", default)]
    pub token_type: String,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
}

/// Parses a report's body: a JSON array of matches, at most [`MAX_TOKENS_PER_REPORT`].
pub fn parse_github_report(body: &[u8]) -> Result<Vec<GithubMatch>, String> {
    let matches: Vec<GithubMatch> = serde_json::from_slice(body).map_err(|e| {
        format!("the report must be a JSON array of {{token, type, url, source}}: {e}")
    })?;
    if matches.len() > MAX_TOKENS_PER_REPORT {
        return Err(format!(
            "a report may name at most {MAX_TOKENS_PER_REPORT} tokens"
        ));
    }
    Ok(matches)
}

/// GitHub's feedback on one reported token: `token_hash` (hex SHA-256 of the token, so the
/// answer never repeats a secret), `token_type` as reported, and `label`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Feedback {
    pub token_hash: String,
    pub token_type: String,
    /// `true_positive`: a credential keyplane issued (live or not); `false_positive`: not one.
    pub label: &'static str,
}

/// The hex SHA-256 of a token, as GitHub's feedback names it.
pub fn token_hash(token: &str) -> String {
    sha256_hex(token.as_bytes())
}

/// The hex SHA-256 of `bytes` (a report's body, as the replay table keeps it).
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Which kind of keyplane secret a reported token is formatted as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeakedKind {
    ApiKey,
    ClientSecret,
    AdminKey,
}

impl LeakedKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ApiKey => "api_key",
            Self::ClientSecret => "client_secret",
            Self::AdminKey => "admin_key",
        }
    }
}

/// The formats a report is checked against, longest prefix first (so `kps_` is not taken for
/// a `kp_`-style key when one prefix begins another).
pub fn formats<'a>(
    api_key: &'a SecretFormat,
    client_secret: &'a SecretFormat,
    admin_key: &'a SecretFormat,
) -> Vec<(LeakedKind, &'a SecretFormat)> {
    let mut all = vec![
        (LeakedKind::ApiKey, api_key),
        (LeakedKind::ClientSecret, client_secret),
        (LeakedKind::AdminKey, admin_key),
    ];
    all.sort_by_key(|(_, f)| std::cmp::Reverse(f.prefix().len()));
    all
}

/// The kind whose prefix, length, alphabet and checksum `token` has; `None` for anything else
/// (which is never looked up).
pub fn classify(token: &str, formats: &[(LeakedKind, &SecretFormat)]) -> Option<LeakedKind> {
    formats
        .iter()
        .find(|(_, f)| f.check(token).is_ok())
        .map(|(k, _)| *k)
}

/// A regular expression a secret scanner can use for one kind of credential.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Pattern {
    /// `api_key`, `client_secret` or `admin_key`.
    pub kind: &'static str,
    pub prefix: String,
    /// The expression (RE2, PCRE and Rust's `regex` alike): the prefix, then 49 base62
    /// characters (43 of random body, 6 of CRC32 checksum), not inside a longer word.
    pub regex: String,
    /// How to rule out a match that is no credential (no scanner needs to call keyplane).
    pub checksum: &'static str,
}

/// The checksum rule, in words, for scanners.
pub const CHECKSUM_RULE: &str = "the last 6 characters are the CRC32 (IEEE) of everything before them, written as a big-endian base62 number with the alphabet 0-9A-Za-z, left-padded with '0'";

/// The patterns of the given formats.
pub fn patterns(formats: &[(LeakedKind, &SecretFormat)]) -> Vec<Pattern> {
    let mut out: Vec<Pattern> = formats
        .iter()
        .map(|(k, f)| Pattern {
            kind: k.as_str(),
            prefix: f.prefix().to_string(),
            regex: format!(
                r"\b{}[0-9A-Za-z]{{{}}}\b",
                f.prefix(),
                BODY_LEN + CHECKSUM_LEN
            ),
            checksum: CHECKSUM_RULE,
        })
        .collect();
    out.sort_by_key(|p| match p.kind {
        "api_key" => 0,
        "client_secret" => 1,
        _ => 2,
    });
    out
}

/// Cuts reported text (a URL, a source) to what an event keeps: at most [`MAX_URL_LEN`]
/// characters, control characters removed.
pub fn clean_reported(text: Option<&str>) -> Option<String> {
    let t: String = text?
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_URL_LEN)
        .collect();
    let t = t.trim().to_string();
    (!t.is_empty()).then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};

    fn pem_of(point: &[u8]) -> String {
        let mut der = P256_SPKI_HEADER.to_vec();
        der.extend_from_slice(point);
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n")
    }

    #[test]
    fn signature_round_trip() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let key = ReporterKey::from_pem("k1", &pem_of(pair.public_key().as_ref())).unwrap();
        let body = br#"[{"token":"x","type":"t","url":"u","source":"content"}]"#;
        let sig = pair.sign(&rng, body).unwrap();
        assert!(key.verifies(body, sig.as_ref()));
        assert!(!key.verifies(b"[]", sig.as_ref()));
        let list = serde_json::json!({"public_keys": [
            {"key_identifier": "k1", "key": pem_of(pair.public_key().as_ref()), "is_current": true},
            {"key_identifier": "rsa", "key": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----", "is_current": false},
        ]});
        let keys = parse_github_keys(list.to_string().as_bytes()).unwrap();
        assert_eq!(keys, vec![key]);
        assert!(parse_github_keys(br#"{"public_keys": []}"#).is_err());
    }

    #[test]
    fn classify_needs_the_checksum() {
        let (a, c, m) = (
            SecretFormat::new("kp_").unwrap(),
            SecretFormat::new("kps_").unwrap(),
            SecretFormat::new("kpa_").unwrap(),
        );
        let f = formats(&a, &c, &m);
        assert_eq!(
            classify(a.generate().expose(), &f),
            Some(LeakedKind::ApiKey)
        );
        assert_eq!(
            classify(c.generate().expose(), &f),
            Some(LeakedKind::ClientSecret)
        );
        assert_eq!(
            classify(m.generate().expose(), &f),
            Some(LeakedKind::AdminKey)
        );
        let mut bad = a.generate().expose().to_string();
        let last = bad.pop().unwrap();
        bad.push(if last == 'a' { 'b' } else { 'a' });
        assert_eq!(classify(&bad, &f), None);
        assert_eq!(classify("kp_short", &f), None);
    }

    #[test]
    fn hash_is_hex_sha256() {
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
