//! How an OAuth client proves who it is: its registered `token_endpoint_auth_method` (RFC 7591
//! §2), the public keys of a `private_key_jwt` client (`jwks` or `jwks_uri`), and the rules a
//! client assertion (RFC 7523 §3, OpenID Connect Core §9) must meet once its signature has been
//! verified with [`crate::domain::jose`]. Pure: fetching a `jwks_uri` is behind
//! [`JwksFetcher`], implemented by the binary.

use crate::domain::jose::{JoseError, Jws};
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;

/// RFC 7521 §4.2's `client_assertion_type` for a JWT (RFC 7523 §2.2).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The longest `jti` kept in the replay cache.
pub const MAX_JTI_LEN: usize = 256;
/// The longest `jwks_uri`.
pub const MAX_JWKS_URI_LEN: usize = 512;

/// A client's registered authentication method (RFC 7591 §2 names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    /// A secret in HTTP Basic (RFC 6749 §2.3.1), the RFC 7591 default.
    ClientSecretBasic,
    /// A secret in the form. keyplane has always taken a client's secret either way, and still
    /// does: both secret methods name the same credential, and the registered value records
    /// how the client means to send it.
    ClientSecretPost,
    /// A JWT signed with the client's private key (RFC 7523 §2.2); the client has no secret.
    PrivateKeyJwt,
}

impl AuthMethod {
    pub const ALL: [AuthMethod; 3] = [
        AuthMethod::ClientSecretBasic,
        AuthMethod::ClientSecretPost,
        AuthMethod::PrivateKeyJwt,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ClientSecretBasic => "client_secret_basic",
            AuthMethod::ClientSecretPost => "client_secret_post",
            AuthMethod::PrivateKeyJwt => "private_key_jwt",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// Whether the client authenticates with a secret (and so has secrets).
    pub fn uses_secret(self) -> bool {
        !matches!(self, AuthMethod::PrivateKeyJwt)
    }
}

/// Fetches a client's `jwks_uri`. The implementation must refuse anything but the URL it is
/// given (no redirects), give up after a short timeout, and stop reading past
/// [`crate::domain::jose::MAX_JWKS_BYTES`].
#[async_trait]
pub trait JwksFetcher: Send + Sync {
    /// The document's bytes, or why it could not be had (logged, never shown to the caller).
    async fn fetch(&self, url: &str) -> Result<Vec<u8>, String>;
}

/// Checks a `jwks_uri`: an absolute `https://` URL without credentials or fragment; `http://`
/// only for a loopback host and only when `allow_loopback_http` (tests and development).
pub fn check_jwks_uri(uri: &str, allow_loopback_http: bool) -> Result<String, String> {
    let uri = uri.trim();
    if uri.is_empty() || uri.len() > MAX_JWKS_URI_LEN {
        return Err(format!(
            "`jwks_uri` must be 1 to {MAX_JWKS_URI_LEN} characters"
        ));
    }
    if uri.chars().any(|c| c.is_whitespace() || c.is_control()) || uri.contains('#') {
        return Err("`jwks_uri` must not contain spaces, control characters or a fragment".into());
    }
    let (scheme, rest) = uri
        .split_once("://")
        .ok_or_else(|| "`jwks_uri` must be an absolute https:// URL".to_string())?;
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') {
        return Err("`jwks_uri` must name a host, without credentials".into());
    }
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    match scheme.to_ascii_lowercase().as_str() {
        "https" => Ok(uri.to_string()),
        "http" if allow_loopback_http && is_loopback(host) => Ok(uri.to_string()),
        "http" => Err(
            "`jwks_uri` must be an https:// URL (plain http is allowed only for loopback hosts when the deployment enables it)"
                .into(),
        ),
        _ => Err("`jwks_uri` must be an https:// URL".into()),
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The limits a client assertion is held to.
#[derive(Debug, Clone, Copy)]
pub struct AssertionPolicy {
    /// The longest an assertion may live: `exp` at most this long after `iat` (and after now).
    pub max_lifetime_seconds: i64,
    /// Allowed clock difference for `exp`, `nbf` and `iat`.
    pub leeway_seconds: i64,
}

/// Why a verified assertion was refused; each says what to fix (only its signer reads it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssertionError {
    Claims,
    IssuerSubject,
    Audience,
    MissingExp,
    Expired,
    TooLongLived(i64),
    NotYetValid,
    IssuedInFuture,
    MissingJti,
    Replayed,
}

impl AssertionError {
    pub fn description(&self) -> String {
        match self {
            AssertionError::Claims => "the client assertion's claims are not a JSON object of the expected types".into(),
            AssertionError::IssuerSubject => "the client assertion's `iss` and `sub` must both be the client id".into(),
            AssertionError::Audience => "the client assertion's `aud` must be the issuer or this endpoint's URL".into(),
            AssertionError::MissingExp => "the client assertion has no `exp`".into(),
            AssertionError::Expired => "the client assertion has expired".into(),
            AssertionError::TooLongLived(max) => format!(
                "the client assertion lives too long: `exp` may be at most {max} seconds after `iat` and now"
            ),
            AssertionError::NotYetValid => "the client assertion is not valid yet (`nbf`)".into(),
            AssertionError::IssuedInFuture => "the client assertion's `iat` is in the future".into(),
            AssertionError::MissingJti => format!(
                "the client assertion needs a `jti` of 1 to {MAX_JTI_LEN} characters"
            ),
            AssertionError::Replayed => "the client assertion's `jti` has been used already".into(),
        }
    }
}

/// What a valid assertion leaves behind: its `jti`, to be refused until `keep_until_s`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedAssertion {
    pub jti: String,
    /// Seconds since the epoch: `exp` plus the leeway, when no clock could still accept it.
    pub keep_until_s: i64,
}

/// Who a signed token says it is from, read once, before anything is verified: only to find
/// whose keys to check it with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claimed {
    /// `iss`, when it is a string.
    pub iss: Option<String>,
    /// `sub`, when it is a string.
    pub sub: Option<String>,
    /// `sub` is present but not a string (it then names no client, and `iss` does not either).
    sub_malformed: bool,
}

impl Claimed {
    /// The `iss` and `sub` of `jws`'s payload (neither when it is not a JSON object).
    pub fn of(jws: &Jws) -> Self {
        #[derive(Deserialize)]
        struct Peek {
            iss: Option<Value>,
            sub: Option<Value>,
        }
        let Ok(p) = jws.claims::<Peek>() else {
            return Self::default();
        };
        let sub_malformed = matches!(&p.sub, Some(v) if !v.is_string());
        let string = |v: Option<Value>| match v {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        Self {
            iss: string(p.iss),
            sub: string(p.sub),
            sub_malformed,
        }
    }

    /// The client an assertion claims to come from: `sub`, else (no `sub` at all) `iss`.
    pub fn client(&self) -> Option<&str> {
        if self.sub_malformed {
            return None;
        }
        self.sub.as_deref().or(self.iss.as_deref())
    }
}

#[derive(Deserialize)]
struct Claims {
    iss: Option<String>,
    sub: Option<String>,
    aud: Option<Audience>,
    exp: Option<serde_json::Number>,
    nbf: Option<serde_json::Number>,
    iat: Option<serde_json::Number>,
    jti: Option<String>,
}

/// A token's `aud`: one string or an array of them (RFC 7519 §4.1.3).
#[derive(Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    /// Whether `aud` names an audience `ours` accepts (an array of at most 16).
    pub fn names(aud: &Option<Audience>, ours: impl Fn(&str) -> bool) -> bool {
        match aud {
            Some(Audience::One(a)) => ours(a),
            Some(Audience::Many(list)) => list.len() <= 16 && list.iter().any(|a| ours(a)),
            None => false,
        }
    }
}

fn seconds(n: &serde_json::Number) -> Option<i64> {
    n.as_i64().or_else(|| {
        n.as_f64()
            .filter(|f| f.is_finite())
            .map(|f| f.floor() as i64)
    })
}

/// Why a signed token's times were refused (client assertions and federated tokens alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeError {
    Claims,
    MissingExp,
    Expired,
    TooLongLived(i64),
    NotYetValid,
    IssuedInFuture,
}

/// The time rules every signed token keyplane accepts from another party meets: `exp` present
/// and not past, at most the policy's lifetime ahead of now and of `iat`, `nbf` and `iat` not
/// in the future (each with the policy's leeway). Returns `exp`.
pub fn check_times(
    exp: Option<&serde_json::Number>,
    nbf: Option<&serde_json::Number>,
    iat: Option<&serde_json::Number>,
    now_s: i64,
    policy: AssertionPolicy,
) -> Result<i64, TimeError> {
    let leeway = policy.leeway_seconds;
    let exp = exp.and_then(seconds).ok_or(TimeError::MissingExp)?;
    if exp + leeway <= now_s {
        return Err(TimeError::Expired);
    }
    let iat = match iat {
        Some(n) => Some(seconds(n).ok_or(TimeError::Claims)?),
        None => None,
    };
    if iat.is_some_and(|i| i > now_s + leeway) {
        return Err(TimeError::IssuedInFuture);
    }
    let max = policy.max_lifetime_seconds;
    if exp - now_s > max + leeway || iat.is_some_and(|i| exp - i > max) {
        return Err(TimeError::TooLongLived(max));
    }
    if let Some(n) = nbf {
        if seconds(n).ok_or(TimeError::Claims)? > now_s + leeway {
            return Err(TimeError::NotYetValid);
        }
    }
    Ok(exp)
}

impl From<TimeError> for AssertionError {
    fn from(e: TimeError) -> Self {
        match e {
            TimeError::Claims => AssertionError::Claims,
            TimeError::MissingExp => AssertionError::MissingExp,
            TimeError::Expired => AssertionError::Expired,
            TimeError::TooLongLived(max) => AssertionError::TooLongLived(max),
            TimeError::NotYetValid => AssertionError::NotYetValid,
            TimeError::IssuedInFuture => AssertionError::IssuedInFuture,
        }
    }
}

/// Checks the claims of an assertion whose signature `client_id`'s key verified: `iss` and
/// `sub` are the client, `aud` names an audience `ours` accepts (a string, or an array holding one),
/// `exp` is present, not past and at most the policy's lifetime ahead, `nbf` and `iat` are not
/// in the future, and there is a `jti`. Whether the `jti` is new is storage's to say.
pub fn check_assertion(
    jws: &Jws,
    client_id: &str,
    ours: &dyn Fn(&str) -> bool,
    now_s: i64,
    policy: AssertionPolicy,
) -> Result<CheckedAssertion, AssertionError> {
    let c: Claims = jws
        .claims()
        .map_err(|_: JoseError| AssertionError::Claims)?;
    if c.iss.as_deref() != Some(client_id) || c.sub.as_deref() != Some(client_id) {
        return Err(AssertionError::IssuerSubject);
    }
    if !Audience::names(&c.aud, ours) {
        return Err(AssertionError::Audience);
    }
    let leeway = policy.leeway_seconds;
    let exp = check_times(
        c.exp.as_ref(),
        c.nbf.as_ref(),
        c.iat.as_ref(),
        now_s,
        policy,
    )?;
    let jti = c
        .jti
        .filter(|j| !j.is_empty() && j.len() <= MAX_JTI_LEN)
        .ok_or(AssertionError::MissingJti)?;
    Ok(CheckedAssertion {
        jti,
        keep_until_s: exp + leeway,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine;
    use serde_json::json;

    const ID: &str = "kpc_client";
    const POLICY: AssertionPolicy = AssertionPolicy {
        max_lifetime_seconds: 300,
        leeway_seconds: 60,
    };

    fn jws(claims: Value) -> Jws {
        let token = format!(
            "{}.{}.{}",
            B64.encode(br#"{"alg":"ES256"}"#),
            B64.encode(claims.to_string()),
            B64.encode([1u8; 64])
        );
        Jws::parse(&token).unwrap()
    }

    fn check(claims: Value) -> Result<CheckedAssertion, AssertionError> {
        let auds = ["https://as", "https://as/token"];
        check_assertion(&jws(claims), ID, &|a| auds.contains(&a), 1000, POLICY)
    }

    fn good() -> Value {
        json!({"iss": ID, "sub": ID, "aud": "https://as", "exp": 1060, "iat": 1000, "jti": "j1"})
    }

    fn with(k: &str, v: Value) -> Value {
        let mut c = good();
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v;
        }
        c
    }

    #[test]
    fn a_good_assertion_passes_and_is_kept_past_its_expiry() {
        assert_eq!(
            check(good()),
            Ok(CheckedAssertion {
                jti: "j1".into(),
                keep_until_s: 1120
            })
        );
        assert!(check(with("aud", json!("https://as/token"))).is_ok());
        assert!(check(with("aud", json!(["https://other", "https://as"]))).is_ok());
        assert!(check(with("iat", Value::Null)).is_ok());
        assert!(check(with("exp", json!(1060.7))).is_ok());
        assert!(check(with("nbf", json!(1050))).is_ok(), "within the leeway");
        assert_eq!(Claimed::of(&jws(good())).client(), Some(ID));
    }

    /// Who an unverified token claims to be from: `sub`, else `iss`; a `sub` that is no
    /// string names nobody (not even through `iss`).
    #[test]
    fn the_claimed_client_is_sub_else_iss() {
        let of = |c: Value| Claimed::of(&jws(c));
        assert_eq!(of(json!({"iss": "a", "sub": "b"})).client(), Some("b"));
        assert_eq!(of(json!({"iss": "a"})).client(), Some("a"));
        assert_eq!(of(json!({"iss": "a"})).iss.as_deref(), Some("a"));
        assert_eq!(of(json!({"iss": "a", "sub": 7})).client(), None);
        assert_eq!(of(json!({"iss": 7, "sub": "b"})).iss, None);
        assert_eq!(of(json!({"iss": 7, "sub": "b"})).client(), Some("b"));
        assert_eq!(of(json!({})).client(), None);
        // A claims set is a JSON object: an array (which serde would read field by field)
        // names nobody.
        assert_eq!(of(json!(["a", "b"])), Claimed::default());
        assert_eq!(of(json!("a")), Claimed::default());
    }

    #[test]
    fn each_broken_rule_is_named() {
        use AssertionError::*;
        let cases = [
            (with("iss", json!("kpc_other")), IssuerSubject),
            (with("sub", Value::Null), IssuerSubject),
            (with("aud", json!("https://elsewhere")), Audience),
            (with("aud", json!(["https://elsewhere"])), Audience),
            (with("aud", Value::Null), Audience),
            (with("exp", Value::Null), MissingExp),
            (with("exp", json!(900)), Expired),
            (with("exp", json!(1400)), TooLongLived(300)),
            (
                json!({"iss": ID, "sub": ID, "aud": "https://as", "exp": 1200, "iat": 800, "jti": "j"}),
                TooLongLived(300),
            ),
            (with("nbf", json!(1100)), NotYetValid),
            (with("iat", json!(1100)), IssuedInFuture),
            (with("jti", Value::Null), MissingJti),
            (with("jti", json!("")), MissingJti),
            (with("jti", json!("x".repeat(MAX_JTI_LEN + 1))), MissingJti),
            (with("exp", json!("1060")), Claims),
            // Every claim in place, but as an array: not a claims set.
            (
                json!([ID, ID, "https://as", 1060, null, 1000, "j1"]),
                Claims,
            ),
        ];
        for (claims, want) in cases {
            assert_eq!(check(claims.clone()), Err(want), "{claims}");
        }
    }

    #[test]
    fn jwks_uris_are_https_or_opted_in_loopback() {
        assert!(check_jwks_uri("https://keys.example.com/jwks.json", false).is_ok());
        for ok in [
            "http://127.0.0.1:8080/jwks",
            "http://localhost/jwks",
            "http://[::1]:9/k",
        ] {
            assert!(check_jwks_uri(ok, true).is_ok(), "{ok}");
            assert!(check_jwks_uri(ok, false).is_err(), "{ok}");
        }
        for bad in [
            "http://keys.example.com/jwks",
            "http://10.0.0.1/jwks",
            "ftp://x/y",
            "https://user:pw@host/jwks",
            "https:///jwks",
            "https://host/jwks#frag",
            "https://host/a b",
            "keys.example.com/jwks",
            "",
        ] {
            assert!(check_jwks_uri(bad, true).is_err(), "{bad}");
        }
    }

    #[test]
    fn auth_methods_round_trip() {
        for m in AuthMethod::ALL {
            assert_eq!(AuthMethod::parse(m.as_str()), Some(m));
        }
        assert_eq!(AuthMethod::parse("client_secret_jwt"), None);
        assert!(!AuthMethod::PrivateKeyJwt.uses_secret());
    }
}
