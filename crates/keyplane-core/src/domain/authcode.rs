//! The authorization-code grant (RFC 6749 §4.1, with OAuth 2.1's rules): what an authorization
//! request must carry, PKCE (RFC 7636, `S256` only), how a redirect URI is matched (exactly,
//! but for a loopback redirect's port, RFC 8252 §7.3), and the records a person's consent
//! leaves: the grant (member, client, resource, scopes), the single-use code, and the rotated
//! refresh tokens (stored as keyed digests only). Pure.

use crate::domain::secret::Digest;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;
use time::{Duration, OffsetDateTime};

/// How long an authorization code can be redeemed (RFC 6749 §4.1.2: at most ten minutes;
/// one is plenty for a client that redirects at once).
pub const CODE_TTL: Duration = Duration::seconds(60);
/// How long a refresh token lives unused; each use rotates it and starts a new one.
pub const REFRESH_TTL: Duration = Duration::days(30);
/// The longest redirect URI, `state` and client id accepted.
pub const MAX_REDIRECT_URI_LEN: usize = 512;
pub const MAX_STATE_LEN: usize = 1024;
pub const MAX_CLIENT_ID_LEN: usize = 512;
/// Redirect URIs a client may register.
pub const MAX_REDIRECT_URIS: usize = 10;

/// A person's standing authorization of a client for one resource: the consent, remembered
/// (a later request for no more scopes needs no new consent) and revocable. Every token issued
/// under it carries its id and stops the moment it is revoked, its member removed or its
/// client blocked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub id: String,
    pub org_id: String,
    pub project_id: String,
    pub member_id: String,
    pub client_id: String,
    /// The RFC 8707 resource URI the tokens are for (their `aud`).
    pub resource: String,
    /// Sorted, unique.
    pub scopes: Vec<String>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub last_used_at: Option<OffsetDateTime>,
    pub revoked_at: Option<OffsetDateTime>,
    /// Why: `member`/`manager`/`admin` (by whom), `refresh_token_reuse`, `code_reuse`.
    pub revoked_reason: Option<String>,
}

impl Grant {
    pub fn is_live(&self) -> bool {
        self.revoked_at.is_none()
    }
}

/// An issued authorization code, by the digest of the code; redeemed at most once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthCode {
    pub digest: Digest,
    pub grant_id: String,
    pub client_id: String,
    pub redirect_uri: String,
    /// The PKCE `code_challenge` (S256).
    pub code_challenge: String,
    /// The scopes this authorization asked for (within the grant's).
    pub scopes: Vec<String>,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

/// A refresh token, by its digest. A used one has `used_at`; presenting it again means it was
/// stolen or replayed, and the whole grant is revoked (reuse detection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshToken {
    pub digest: Digest,
    pub grant_id: String,
    pub client_id: String,
    pub scopes: Vec<String>,
    /// DPoP (RFC 9449 §5): a public client's refresh token is bound to its key.
    pub jkt: Option<String>,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub used_at: Option<OffsetDateTime>,
}

/// What redeeming a code found (expiry is the caller's to check).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeUse {
    /// Not redeemed until now (and now marked redeemed).
    Fresh(AuthCode),
    /// Redeemed before: a replay.
    Reused(AuthCode),
    Unknown,
}

/// What redeeming a refresh token found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshUse {
    /// Unused until now (and now marked used).
    Fresh(RefreshToken),
    /// Already used before: a replay.
    Reused(RefreshToken),
    /// Unused, but presented by another client or without the key it is bound to (DPoP): not
    /// used up, so whoever presents a stolen token cannot burn it.
    Refused(RefreshToken),
    Unknown,
}

/// Checks a PKCE `code_challenge` and its method: `S256` only (OAuth 2.1; the MCP
/// authorization specification requires it), 43 characters of base64url (a SHA-256 digest).
pub fn check_code_challenge(
    challenge: Option<&str>,
    method: Option<&str>,
) -> Result<String, String> {
    let Some(challenge) = challenge.filter(|c| !c.is_empty()) else {
        return Err("`code_challenge` is required (PKCE, RFC 7636, with S256)".into());
    };
    match method {
        Some("S256") => {}
        None => {
            return Err(
                "`code_challenge_method` is required and must be `S256` (`plain` is not supported)"
                    .into(),
            )
        }
        Some(other) => {
            return Err(format!(
                "`code_challenge_method` `{}` is not supported: use `S256`",
                clip(other)
            ))
        }
    }
    if challenge.len() != 43 || B64.decode(challenge).map_or(true, |d| d.len() != 32) {
        return Err(
            "`code_challenge` must be the base64url SHA-256 of the verifier (43 characters)".into(),
        );
    }
    Ok(challenge.to_string())
}

/// Whether `verifier` (RFC 7636 §4.1: 43 to 128 unreserved characters) hashes to `challenge`;
/// compared in constant time.
pub fn verifier_matches(verifier: &str, challenge: &str) -> Result<(), String> {
    let ok_chars = verifier
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    if !(43..=128).contains(&verifier.len()) || !ok_chars {
        return Err(
            "`code_verifier` must be 43 to 128 characters of A-Z a-z 0-9 - . _ ~ (RFC 7636 §4.1)"
                .into(),
        );
    }
    let computed = B64.encode(Sha256::digest(verifier.as_bytes()));
    if bool::from(computed.as_bytes().ct_eq(challenge.as_bytes())) {
        Ok(())
    } else {
        Err("`code_verifier` does not match the `code_challenge`".into())
    }
}

/// A redirect URI a client may register: `https://`, or `http://` on a loopback address for
/// native applications (RFC 8252 §7.3: `127.0.0.1`, `[::1]`, or `localhost`); absolute, no
/// fragment, no user information, no whitespace.
pub fn check_redirect_uri(uri: &str) -> Result<(), String> {
    if uri.is_empty() || uri.len() > MAX_REDIRECT_URI_LEN {
        return Err(format!(
            "a redirect URI has 1 to {MAX_REDIRECT_URI_LEN} characters"
        ));
    }
    if uri.chars().any(|c| c.is_whitespace() || c.is_control()) || uri.contains('#') {
        return Err(format!(
            "the redirect URI `{}` has spaces, control characters or a fragment",
            clip(uri)
        ));
    }
    let Some(parts) = UriParts::of(uri) else {
        return Err(format!(
            "the redirect URI `{}` is not an absolute https:// (or loopback http://) URL",
            clip(uri)
        ));
    };
    match parts.scheme.as_str() {
        "https" => Ok(()),
        "http" if is_loopback(&parts.host) => Ok(()),
        "http" => Err(format!(
            "the redirect URI `{}` uses http:// on a host that is not loopback: use https:// (http:// only for 127.0.0.1, [::1] or localhost, RFC 8252 §7.3)",
            clip(uri)
        )),
        _ => Err(format!(
            "the redirect URI `{}` is not an https:// (or loopback http://) URL",
            clip(uri)
        )),
    }
}

/// Whether `presented` is one of `registered`: character for character, except that a
/// loopback `http://` redirect may use any port (RFC 8252 §7.3: a native app's port is chosen
/// when it runs).
pub fn redirect_uri_matches(registered: &[String], presented: &str) -> bool {
    registered.iter().any(|r| {
        if r == presented {
            return true;
        }
        match (UriParts::of(r), UriParts::of(presented)) {
            (Some(a), Some(b)) => {
                a.scheme == "http"
                    && b.scheme == "http"
                    && is_loopback(&a.host)
                    && a.host == b.host
                    && a.rest == b.rest
            }
            _ => false,
        }
    })
}

/// `redirect_uri` with the authorization response's parameters appended (RFC 6749 §4.1.2, and
/// RFC 9207's `iss`), each form-encoded.
pub fn redirect_with(redirect_uri: &str, params: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(redirect_uri.len() + 128);
    out.push_str(redirect_uri);
    let mut sep = if redirect_uri.contains('?') { '&' } else { '?' };
    for (k, v) in params {
        out.push(sep);
        sep = '&';
        out.push_str(k);
        out.push('=');
        out.extend(form_urlencoded::byte_serialize(v.as_bytes()));
    }
    out
}

fn is_loopback(host: &str) -> bool {
    host == "127.0.0.1" || host == "[::1]" || host == "localhost"
}

/// A URL's scheme and host (lowercased) and what follows the port.
struct UriParts {
    scheme: String,
    host: String,
    rest: String,
}

impl UriParts {
    fn of(uri: &str) -> Option<Self> {
        let (scheme, after) = uri.split_once("://")?;
        let end = after.find(['/', '?']).unwrap_or(after.len());
        let (authority, rest) = after.split_at(end);
        if authority.is_empty() || authority.contains('@') {
            return None;
        }
        let (host, port) = if authority.starts_with('[') {
            let close = authority.find(']')?;
            let rest = &authority[close + 1..];
            let port = match rest.strip_prefix(':') {
                Some(p) => Some(p),
                None if rest.is_empty() => None,
                None => return None,
            };
            (&authority[..=close], port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        // A port is digits (`127.0.0.1:9.evil.example` is no loopback address).
        if host.is_empty()
            || port.is_some_and(|p| {
                p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit())
            })
        {
            return None;
        }
        Some(UriParts {
            scheme: scheme.to_ascii_lowercase(),
            host: host.to_ascii_lowercase(),
            rest: rest.to_string(),
        })
    }
}

/// `text` cut short for an error message.
fn clip(text: &str) -> String {
    text.chars().take(80).collect()
}

/// A `state` as sent: any printable text up to [`MAX_STATE_LEN`], returned verbatim.
pub fn check_state(state: Option<&str>) -> Result<(), String> {
    match state {
        Some(s) if s.len() > MAX_STATE_LEN => {
            Err(format!("`state` is longer than {MAX_STATE_LEN} characters"))
        }
        Some(s) if s.chars().any(char::is_control) => Err("`state` has control characters".into()),
        _ => Ok(()),
    }
}

/// Scopes as a sorted, unique list from a space-delimited `scope` parameter.
pub fn scope_list(scope: Option<&str>) -> Vec<String> {
    let mut v: Vec<String> = scope
        .unwrap_or("")
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// When a code made at `now` stops being redeemable.
pub fn code_expiry(now: OffsetDateTime) -> OffsetDateTime {
    now + CODE_TTL
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_s256_only() {
        // RFC 7636 Appendix B's example.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert_eq!(
            check_code_challenge(Some(challenge), Some("S256")).unwrap(),
            challenge
        );
        assert!(verifier_matches(verifier, challenge).is_ok());
        let wrong = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXK";
        assert!(verifier_matches(wrong, challenge)
            .unwrap_err()
            .contains("does not match"));
        assert!(check_code_challenge(Some(challenge), Some("plain"))
            .unwrap_err()
            .contains("S256"));
        assert!(check_code_challenge(Some(challenge), None).is_err());
        assert!(check_code_challenge(None, Some("S256"))
            .unwrap_err()
            .contains("required"));
        assert!(check_code_challenge(Some("short"), Some("S256")).is_err());
        // A verifier too short, too long, or with characters RFC 7636 excludes.
        assert!(verifier_matches("abc", challenge).is_err());
        assert!(verifier_matches(&"a".repeat(129), challenge).is_err());
        assert!(verifier_matches(&format!("{}+", &verifier[..43]), challenge).is_err());
        // The plain method's trick: the challenge itself as the verifier.
        assert!(verifier_matches(challenge, challenge).is_err());
    }

    #[test]
    fn redirect_uris() {
        for ok in [
            "https://app.example.com/callback",
            "http://127.0.0.1/callback",
            "http://127.0.0.1:8123/cb?x=1",
            "http://[::1]:9/cb",
            "http://localhost:3000/oauth/callback",
        ] {
            check_redirect_uri(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            "http://app.example.com/cb",
            "https://app.example.com/cb#frag",
            "https://user@app.example.com/cb",
            "javascript:alert(1)",
            "myapp:/cb",
            "https:///cb",
            "https://app.example.com/c b",
            "http://127.0.0.1.evil.com/cb",
            "http://localhost.evil.com/cb",
            "http://127.0.0.1:9.evil.com/cb",
            "http://127.0.0.1:/cb",
            "http://[::1]x/cb",
        ] {
            assert!(check_redirect_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn redirect_matching_is_exact_but_for_loopback_ports() {
        let reg = vec![
            "https://app.example.com/callback".to_string(),
            "http://127.0.0.1/cb".to_string(),
        ];
        assert!(redirect_uri_matches(
            &reg,
            "https://app.example.com/callback"
        ));
        assert!(!redirect_uri_matches(
            &reg,
            "https://app.example.com/callback/"
        ));
        assert!(!redirect_uri_matches(
            &reg,
            "https://app.example.com/callback?x=1"
        ));
        assert!(!redirect_uri_matches(
            &reg,
            "https://app.example.com:444/callback"
        ));
        assert!(!redirect_uri_matches(
            &reg,
            "https://evil.example.com/callback"
        ));
        assert!(!redirect_uri_matches(
            &reg,
            "HTTPS://app.example.com/callbacK"
        ));
        assert!(redirect_uri_matches(&reg, "http://127.0.0.1:51234/cb"));
        assert!(!redirect_uri_matches(&reg, "http://127.0.0.1:51234/cb2"));
        assert!(!redirect_uri_matches(&reg, "http://localhost:51234/cb"));
        assert!(!redirect_uri_matches(
            &reg,
            "http://127.0.0.1:1.evil.example/cb"
        ));
        // A non-loopback registered URI never matches another port.
        let reg = vec!["https://app.example.com:8443/cb".to_string()];
        assert!(!redirect_uri_matches(
            &reg,
            "https://app.example.com:9443/cb"
        ));
    }

    #[test]
    fn responses_are_encoded() {
        assert_eq!(
            redirect_with(
                "https://a.example/cb",
                &[("code", "x y"), ("state", "s&t=1")]
            ),
            "https://a.example/cb?code=x+y&state=s%26t%3D1"
        );
        assert_eq!(
            redirect_with("https://a.example/cb?k=v", &[("error", "access_denied")]),
            "https://a.example/cb?k=v&error=access_denied"
        );
    }

    #[test]
    fn scopes_and_state() {
        assert_eq!(scope_list(Some("b a  b")), vec!["a", "b"]);
        assert!(scope_list(None).is_empty());
        assert!(check_state(Some("abc")).is_ok());
        assert!(check_state(Some("a\nb")).is_err());
        assert!(check_state(Some(&"x".repeat(1025))).is_err());
    }
}
