//! What the OAuth 2.0 endpoints take and answer, apart from HTTP: client authentication,
//! issued tokens, introspection answers and the errors of RFC 6749 §5.2, RFC 7009 and RFC 7662.

use crate::domain::error::Error;
use crate::domain::secret::SecretString;

/// Errors of the OAuth endpoints (RFC 6749 §5.2, RFC 7009, RFC 7662).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OAuthError {
    InvalidRequest(String),
    /// Client authentication failed; `basic` when HTTP Basic was tried.
    InvalidClient {
        basic: bool,
    },
    InvalidScope(String),
    UnauthorizedClient(String),
    UnsupportedGrantType,
    /// Too many failed authentications; retry after this many seconds.
    TooManyRequests(u64),
    Server,
}

impl From<Error> for OAuthError {
    fn from(e: Error) -> Self {
        tracing::error!(error = %e, "storage failed on an OAuth endpoint");
        OAuthError::Server
    }
}

/// How a client authenticated to an OAuth endpoint.
#[derive(Clone)]
pub struct ClientAuth {
    pub client_id: String,
    pub secret: SecretString,
    pub basic: bool,
}

/// A successful token response.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub access_token: String,
    pub expires_in: i64,
    pub scope: String,
}

/// A verified access token, or an API key, as introspection reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Introspection {
    pub sub: String,
    pub client_id: Option<String>,
    pub exp: Option<i64>,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    pub username: String,
    pub scope: String,
    /// `access_token` or `api_key`.
    pub credential_type: &'static str,
    pub aud: Option<String>,
    pub org_id: String,
    pub project_id: String,
}

/// A verified access token, for `/v1/authz` and the management API.
#[derive(Debug)]
pub struct TokenIdentity {
    pub client_id: String,
    pub jti: String,
    pub org_id: String,
    pub project_id: String,
    pub owner_member_id: Option<String>,
    pub scopes: Vec<String>,
    pub scopes_joined: String,
}

/// The outcome of a revocation request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeOutcome {
    Revoked,
    /// Not a token of ours at all (seed 000 answers this with an error body).
    Unknown,
}
