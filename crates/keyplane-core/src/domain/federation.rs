//! Workload identity federation: a client trusts external OIDC issuers (GitHub Actions,
//! Kubernetes service accounts, any issuer with discovery) instead of holding a secret or a key.
//! Each of its *federated credentials* names an issuer, the `sub` it accepts (exactly, or by a
//! pattern where `*` stands for any run of characters) and the `aud` the token must carry. A
//! workload sends its platform token as the client assertion, with `client_id`; the token is
//! recognised as federated because its `iss` is not the client id. Pure: fetching the issuer's
//! discovery document and keys is the runtime's (through the binary's fetcher).

use crate::domain::client_auth::{
    check_jwks_uri, check_times, AssertionPolicy, Audience, TimeError, MAX_JTI_LEN,
};
use crate::domain::jose::{JoseError, Jws};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The most federated credentials one client may have.
pub const MAX_FEDERATED_CREDENTIALS: usize = 20;
/// The longest issuer, subject, pattern or audience.
pub const MAX_FIELD_LEN: usize = 512;

/// One external identity a client trusts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederatedCredential {
    /// The issuer, exactly as its tokens' `iss` and its discovery document's `issuer` say.
    pub issuer: String,
    /// The `sub` accepted, exactly. Exactly one of `subject` and `subject_pattern` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The `sub`s accepted: `*` matches any run of characters (none included); every other
    /// character matches itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_pattern: Option<String>,
    /// What the token's `aud` must be (or contain).
    pub audience: String,
}

impl FederatedCredential {
    /// Whether `sub` is one this credential accepts.
    pub fn accepts_subject(&self, sub: &str) -> bool {
        match (&self.subject, &self.subject_pattern) {
            (Some(s), _) => s == sub,
            (None, Some(p)) => glob(p, sub),
            (None, None) => false,
        }
    }
}

/// `*` matches any run of characters (including none); everything else is literal.
pub fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if text.len() < first.len() + last.len() || !text.starts_with(first) || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

fn field(v: &Value, name: &str, i: usize) -> Result<Option<String>, String> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            let s = s.trim();
            if s.is_empty() || s.len() > MAX_FIELD_LEN || s.chars().any(char::is_control) {
                Err(format!(
                    "`federated_credentials[{i}].{name}` must be 1 to {MAX_FIELD_LEN} characters without control characters"
                ))
            } else {
                Ok(Some(s.to_string()))
            }
        }
        Some(_) => Err(format!(
            "`federated_credentials[{i}].{name}` must be a string"
        )),
    }
}

/// Reads and checks a client's `federated_credentials` (a JSON array): each an `issuer`
/// (`https://`, or `http://` on a loopback host when `allow_loopback_http`), exactly one of
/// `subject` and `subject_pattern` (a pattern with at least one character besides `*`), and an
/// `audience`; no two alike.
pub fn parse_credentials(
    v: &Value,
    allow_loopback_http: bool,
) -> Result<Vec<FederatedCredential>, String> {
    let list = v
        .as_array()
        .ok_or("`federated_credentials` must be an array")?;
    if list.len() > MAX_FEDERATED_CREDENTIALS {
        return Err(format!(
            "a client may have at most {MAX_FEDERATED_CREDENTIALS} federated credentials"
        ));
    }
    let mut out: Vec<FederatedCredential> = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let obj = item
            .as_object()
            .ok_or_else(|| format!("`federated_credentials[{i}]` must be an object"))?;
        if let Some(k) = obj
            .keys()
            .find(|k| !["issuer", "subject", "subject_pattern", "audience"].contains(&k.as_str()))
        {
            return Err(format!(
                "`federated_credentials[{i}].{k}` is not a known field"
            ));
        }
        let issuer = field(item, "issuer", i)?
            .ok_or_else(|| format!("`federated_credentials[{i}].issuer` is required"))?;
        check_jwks_uri(&issuer, allow_loopback_http).map_err(|e| {
            format!(
                "`federated_credentials[{i}].issuer`: {}",
                e.replace("`jwks_uri`", "the issuer")
            )
        })?;
        if issuer.contains('?') {
            return Err(format!(
                "`federated_credentials[{i}].issuer` must not have a query"
            ));
        }
        let subject = field(item, "subject", i)?;
        let subject_pattern = field(item, "subject_pattern", i)?;
        match (&subject, &subject_pattern) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(format!(
                "`federated_credentials[{i}]` needs exactly one of `subject` and `subject_pattern`"
            ))
            }
            (None, Some(p)) if p.chars().all(|c| c == '*') => {
                return Err(format!(
                    "`federated_credentials[{i}].subject_pattern` must have characters besides `*`"
                ))
            }
            _ => {}
        }
        let audience = field(item, "audience", i)?
            .ok_or_else(|| format!("`federated_credentials[{i}].audience` is required"))?;
        let c = FederatedCredential {
            issuer,
            subject,
            subject_pattern,
            audience,
        };
        if out.contains(&c) {
            return Err(format!("`federated_credentials[{i}]` is listed twice"));
        }
        out.push(c);
    }
    Ok(out)
}

/// Why a platform token whose signature verified was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FederationError {
    Claims,
    Subject,
    Audience,
    MissingExp,
    Expired,
    TooLongLived(i64),
    NotYetValid,
    IssuedInFuture,
    Replayed,
}

impl FederationError {
    pub fn description(&self) -> String {
        match self {
            FederationError::Claims => "the federated token's claims are not a JSON object of the expected types".into(),
            FederationError::Subject => "the federated token's `sub` is not one this client trusts".into(),
            FederationError::Audience => "the federated token's `aud` is not the audience this client expects".into(),
            FederationError::MissingExp => "the federated token has no `exp`".into(),
            FederationError::Expired => "the federated token has expired".into(),
            FederationError::TooLongLived(max) => format!(
                "the federated token lives too long: `exp` may be at most {max} seconds after `iat` and now"
            ),
            FederationError::NotYetValid => "the federated token is not valid yet (`nbf`)".into(),
            FederationError::IssuedInFuture => "the federated token's `iat` is in the future".into(),
            FederationError::Replayed => "the federated token has been used already".into(),
        }
    }
}

/// The external identity a valid platform token proved, and how to refuse it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederatedIdentity {
    pub iss: String,
    pub sub: String,
    /// The replay cache's key: its `jti`, or `sha256:` and the token's hash when it has none
    /// (or one longer than [`MAX_JTI_LEN`]).
    pub replay_key: String,
    /// Seconds since the epoch: `exp` plus the leeway.
    pub keep_until_s: i64,
}

#[derive(Deserialize)]
struct Claims {
    iss: Option<String>,
    sub: Option<String>,
    aud: Option<Audience>,
    exp: Option<serde_json::Number>,
    nbf: Option<serde_json::Number>,
    iat: Option<serde_json::Number>,
    jti: Option<Value>,
}

impl From<TimeError> for FederationError {
    fn from(e: TimeError) -> Self {
        match e {
            TimeError::Claims => FederationError::Claims,
            TimeError::MissingExp => FederationError::MissingExp,
            TimeError::Expired => FederationError::Expired,
            TimeError::TooLongLived(max) => FederationError::TooLongLived(max),
            TimeError::NotYetValid => FederationError::NotYetValid,
            TimeError::IssuedInFuture => FederationError::IssuedInFuture,
        }
    }
}

/// Checks the claims of a platform token whose signature the issuer's key verified, against
/// the client's credentials `creds` for that issuer: some credential accepts its `sub` and
/// finds its audience in `aud`; `exp` present, not past, at most the policy's lifetime ahead
/// (and after `iat`); `nbf` and `iat` not in the future. `token` is the compact token, hashed
/// for the replay key when there is no usable `jti`.
pub fn check_federated(
    jws: &Jws,
    token: &str,
    creds: &[&FederatedCredential],
    now_s: i64,
    policy: AssertionPolicy,
) -> Result<FederatedIdentity, FederationError> {
    let c: Claims = jws
        .claims()
        .map_err(|_: JoseError| FederationError::Claims)?;
    let iss = c.iss.ok_or(FederationError::Claims)?;
    let sub = c.sub.ok_or(FederationError::Subject)?;
    let matching: Vec<_> = creds
        .iter()
        .filter(|f| f.issuer == iss && f.accepts_subject(&sub))
        .collect();
    if matching.is_empty() {
        return Err(FederationError::Subject);
    }
    if !matching
        .iter()
        .any(|f| Audience::names(&c.aud, |a| a == f.audience))
    {
        return Err(FederationError::Audience);
    }
    let leeway = policy.leeway_seconds;
    let exp = check_times(
        c.exp.as_ref(),
        c.nbf.as_ref(),
        c.iat.as_ref(),
        now_s,
        policy,
    )?;
    let replay_key = match c.jti {
        Some(Value::String(j)) if !j.is_empty() && j.len() <= MAX_JTI_LEN => j,
        _ => {
            let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
            let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
            format!("sha256:{hex}")
        }
    };
    Ok(FederatedIdentity {
        iss,
        sub,
        replay_key,
        keep_until_s: exp + leeway,
    })
}

/// The replay cache's client column for tokens of `issuer`: a platform token is single-use
/// across every client of the deployment, not per client.
pub fn replay_scope(issuer: &str) -> String {
    format!("federated|{issuer}")
}

/// The discovery document of `issuer` (OpenID Connect Discovery §4).
pub fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

/// Reads a discovery document: its `issuer` must be `issuer` exactly, and its `jwks_uri` an
/// acceptable URL (https, or loopback http when allowed).
pub fn jwks_uri_from_discovery(
    doc: &[u8],
    issuer: &str,
    allow_loopback_http: bool,
) -> Result<String, String> {
    let v: Value = serde_json::from_slice(doc)
        .map_err(|e| format!("the discovery document is not JSON: {e}"))?;
    if v.get("issuer").and_then(Value::as_str) != Some(issuer) {
        return Err("the discovery document's `issuer` is not the configured issuer".into());
    }
    let uri = v
        .get("jwks_uri")
        .and_then(Value::as_str)
        .ok_or("the discovery document has no `jwks_uri`")?;
    check_jwks_uri(uri, allow_loopback_http)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine;
    use serde_json::json;

    const POLICY: AssertionPolicy = AssertionPolicy {
        max_lifetime_seconds: 3600,
        leeway_seconds: 60,
    };

    fn token(claims: Value) -> (Jws, String) {
        let t = format!(
            "{}.{}.{}",
            B64.encode(br#"{"alg":"RS256"}"#),
            B64.encode(claims.to_string()),
            B64.encode([1u8; 64])
        );
        (Jws::parse(&t).unwrap(), t)
    }

    fn cred() -> FederatedCredential {
        FederatedCredential {
            issuer: "https://iss".into(),
            subject: None,
            subject_pattern: Some("repo:org/app:*".into()),
            audience: "https://kp".into(),
        }
    }

    fn good() -> Value {
        json!({"iss": "https://iss", "sub": "repo:org/app:ref:refs/heads/main", "aud": "https://kp",
               "exp": 1600, "iat": 1000, "nbf": 1000, "jti": "j1"})
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

    fn check(claims: Value) -> Result<FederatedIdentity, FederationError> {
        let c = cred();
        let (jws, t) = token(claims);
        check_federated(&jws, &t, &[&c], 1000, POLICY)
    }

    #[test]
    fn globs() {
        assert!(glob("repo:org/app:*", "repo:org/app:ref:refs/heads/main"));
        assert!(glob("repo:org/app:*", "repo:org/app:"));
        assert!(!glob("repo:org/app:*", "repo:org/app2:x"));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(glob("a*b*c", "abc"));
        assert!(!glob("a*b*c", "acb"));
        assert!(!glob("ab*ba", "aba"));
        assert!(glob("*:main", "x:main"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
    }

    #[test]
    fn good_tokens_pass_and_each_broken_rule_is_named() {
        let ok = check(good()).unwrap();
        assert_eq!(ok.sub, "repo:org/app:ref:refs/heads/main");
        assert_eq!(ok.replay_key, "j1");
        assert_eq!(ok.keep_until_s, 1660);
        assert!(check(with("aud", json!(["x", "https://kp"]))).is_ok());
        let no_jti = check(with("jti", Value::Null)).unwrap();
        assert!(no_jti.replay_key.starts_with("sha256:"));
        use FederationError::*;
        for (claims, want) in [
            (with("sub", json!("repo:other/app:x")), Subject),
            (with("iss", json!("https://other")), Subject),
            (with("aud", json!("https://elsewhere")), Audience),
            (with("aud", Value::Null), Audience),
            (with("exp", Value::Null), MissingExp),
            (with("exp", json!(900)), Expired),
            (with("exp", json!(5000)), TooLongLived(3600)),
            (with("nbf", json!(1100)), NotYetValid),
            (with("iat", json!(1100)), IssuedInFuture),
        ] {
            assert_eq!(check(claims.clone()), Err(want), "{claims}");
        }
    }

    #[test]
    fn credentials_are_checked() {
        let ok = json!([{"issuer": "https://token.actions.githubusercontent.com",
                         "subject": "repo:o/r:ref:refs/heads/main", "audience": "https://kp"},
                        {"issuer": "http://127.0.0.1:9/", "subject_pattern": "system:serviceaccount:ns:*",
                         "audience": "kp"}]);
        assert_eq!(parse_credentials(&ok, true).unwrap().len(), 2);
        assert!(
            parse_credentials(&ok, false).is_err(),
            "loopback http needs the setting"
        );
        for bad in [
            json!({}),
            json!([{"issuer": "http://example.com", "subject": "s", "audience": "a"}]),
            json!([{"issuer": "https://i", "audience": "a"}]),
            json!([{"issuer": "https://i", "subject": "s", "subject_pattern": "s*", "audience": "a"}]),
            json!([{"issuer": "https://i", "subject_pattern": "**", "audience": "a"}]),
            json!([{"issuer": "https://i", "subject": "s"}]),
            json!([{"issuer": "https://i", "subject": "s", "audience": "a", "extra": 1}]),
            json!([{"issuer": "https://i", "subject": "s", "audience": "a"},
                   {"issuer": "https://i", "subject": "s", "audience": "a"}]),
        ] {
            assert!(parse_credentials(&bad, true).is_err(), "{bad}");
        }
    }

    #[test]
    fn discovery_must_name_the_issuer() {
        let doc = br#"{"issuer":"https://i","jwks_uri":"https://i/keys"}"#;
        assert_eq!(
            jwks_uri_from_discovery(doc, "https://i", false).unwrap(),
            "https://i/keys"
        );
        assert!(jwks_uri_from_discovery(doc, "https://i/", false).is_err());
        let http = br#"{"issuer":"https://i","jwks_uri":"http://evil/keys"}"#;
        assert!(jwks_uri_from_discovery(http, "https://i", true).is_err());
    }
}
