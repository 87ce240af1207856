//! What a verified credential says about its bearer: the value the layer puts into the
//! request's extensions.

use std::time::SystemTime;

/// The kind of credential that was verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CredentialKind {
    /// An RFC 9068 JWT access token, verified locally against the issuer's JWKS.
    JwtAccessToken,
    /// An opaque access token (`kpt_…`), checked by introspection.
    OpaqueAccessToken,
    /// An API key (`kp_…`), checked by introspection.
    ApiKey,
}

impl CredentialKind {
    /// `jwt_access_token`, `opaque_access_token` or `api_key`.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::JwtAccessToken => "jwt_access_token",
            CredentialKind::OpaqueAccessToken => "opaque_access_token",
            CredentialKind::ApiKey => "api_key",
        }
    }

    /// Whether it is an OAuth 2.0 access token (JWT or opaque), as opposed to an API key.
    pub fn is_access_token(self) -> bool {
        !matches!(self, CredentialKind::ApiKey)
    }
}

/// The verified identity behind a request's bearer credential.
///
/// The layer inserts it into the request's extensions; handlers get it with the
/// [`Identity`] or [`RequireScope`](crate::RequireScope) extractors (feature `axum`) or with
/// `request.extensions().get::<Identity>()`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Identity {
    /// `sub`: the client for an access token; the owning member (or the key itself) for an
    /// API key.
    pub subject: String,
    /// `client_id`, for access tokens.
    pub client_id: Option<String>,
    /// The granted scopes.
    pub scopes: Vec<String>,
    /// What kind of credential it was.
    pub kind: CredentialKind,
    /// When the credential expires (`exp`); `None` for an API key without an expiry.
    pub expires_at: Option<SystemTime>,
    /// `jti` of an access token, or the id of an API key, when the issuer said.
    pub credential_id: Option<String>,
    /// The client's or key's display name (`username` in an introspection answer).
    pub name: Option<String>,
    /// `cnf.jkt`: the RFC 7638 thumbprint of the key a DPoP-bound token (RFC 9449 §6) is
    /// bound to. The layer only accepts such a token with the `DPoP` scheme and a proof
    /// signed by that key; `None` for a token that is not bound (and for API keys).
    pub confirmation_jkt: Option<String>,
    /// `act.sub`: for a token obtained by token exchange (RFC 8693), the client acting for
    /// `subject`; `None` otherwise.
    pub actor: Option<String>,
}

impl Identity {
    /// An identity with no client id, expiry, id or name: for tests of handlers that take one.
    pub fn new(
        kind: CredentialKind,
        subject: impl Into<String>,
        scopes: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            subject: subject.into(),
            client_id: None,
            scopes: scopes.into_iter().map(Into::into).collect(),
            kind,
            expires_at: None,
            credential_id: None,
            name: None,
            confirmation_jkt: None,
            actor: None,
        }
    }

    /// Whether the credential grants `scope` (scopes are compared exactly, RFC 6749 §3.3).
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// The first of `required` that the credential lacks, if any.
    pub fn missing_scope<'a>(&self, required: &'a [impl AsRef<str>]) -> Option<&'a str> {
        required
            .iter()
            .map(AsRef::as_ref)
            .find(|s| !self.has_scope(s))
    }

    /// Whether the credential has expired at `now`.
    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|e| e <= now)
    }
}

/// Splits a space-delimited `scope` value (RFC 6749 §3.3).
pub(crate) fn split_scopes(scope: Option<&str>) -> Vec<String> {
    scope
        .unwrap_or_default()
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn scopes_are_compared_exactly() {
        let id = Identity::new(
            CredentialKind::ApiKey,
            "k",
            split_scopes(Some(" ai-guard:read  x ")),
        );
        assert_eq!(id.scopes, ["ai-guard:read", "x"]);
        assert!(id.has_scope("ai-guard:read"));
        assert!(!id.has_scope("ai-guard"));
        assert!(!id.has_scope("AI-GUARD:READ"));
        assert_eq!(id.missing_scope(&["x", "y"]), Some("y"));
        assert_eq!(id.missing_scope(&["x"]), None);
        assert!(split_scopes(None).is_empty());
    }

    #[test]
    fn expiry() {
        let now = SystemTime::now();
        let mut id = Identity::new(CredentialKind::JwtAccessToken, "c", ["a"]);
        assert!(!id.is_expired_at(now));
        id.expires_at = Some(now);
        assert!(id.is_expired_at(now));
        assert!(!id.is_expired_at(now - Duration::from_secs(1)));
        assert!(id.kind.is_access_token() && !CredentialKind::ApiKey.is_access_token());
    }
}
