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
    /// A client assertion whose signature verified broke a rule (expired, replayed, wrong
    /// audience, …): `invalid_client` with a description saying which, since only the holder
    /// of the client's private key can get this far.
    InvalidClientAssertion(String),
    /// DPoP (RFC 9449 §5): the proof is missing or invalid (`invalid_dpop_proof`).
    InvalidDpopProof(String),
    /// DPoP §8: the proof must carry this server nonce (`use_dpop_nonce`, `DPoP-Nonce`).
    UseDpopNonce(String),
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

/// The canonical paths of the OAuth endpoints (the metadata names these under the issuer).
pub const TOKEN_PATH: &str = "/v1/oauth/token";
pub const INTROSPECTION_PATH: &str = "/v1/oauth/token/introspect";
pub const REVOCATION_PATH: &str = "/v1/oauth/token/revoke";

/// An OAuth endpoint that authenticates clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Token,
    Introspection,
    Revocation,
}

impl Endpoint {
    /// Its canonical path (the one the metadata document names).
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Token => TOKEN_PATH,
            Endpoint::Introspection => INTROSPECTION_PATH,
            Endpoint::Revocation => REVOCATION_PATH,
        }
    }
}

/// How a client authenticated to an OAuth endpoint.
#[derive(Clone)]
pub enum ClientCredentials {
    /// A secret, in HTTP Basic or in the form (`client_secret_basic`, `client_secret_post`).
    Secret(ClientAuth),
    /// A JWT signed with the client's key (`private_key_jwt`, RFC 7523 §2.2).
    Assertion(ClientAssertion),
}

/// A client id and secret, as presented.
#[derive(Clone)]
pub struct ClientAuth {
    pub client_id: String,
    pub secret: SecretString,
    pub basic: bool,
}

/// `client_assertion` with `client_assertion_type` = [`crate::domain::client_auth::JWT_BEARER`].
#[derive(Clone)]
pub struct ClientAssertion {
    /// `client_id` from the form, when sent (RFC 7521 §4.2: optional); it must name the client
    /// the assertion is from.
    pub client_id: Option<String>,
    pub assertion: String,
    /// The endpoint it was sent to, and the path it was sent on (an alias such as
    /// `/v1beta/oauth/token` counts as that endpoint's URL too): `aud` may name either URL or
    /// the issuer.
    pub endpoint: Endpoint,
    pub path: String,
}

impl std::fmt::Debug for ClientAssertion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAssertion")
            .field("client_id", &self.client_id)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// A successful token response.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub access_token: String,
    /// `Bearer`, or `DPoP` for a token bound to a key (RFC 9449 §5).
    pub token_type: &'static str,
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
    /// DPoP: the thumbprint of the key the token is bound to (`cnf.jkt`).
    pub jkt: Option<String>,
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
    /// DPoP: the thumbprint of the key the token is bound to.
    pub jkt: Option<String>,
}

/// The outcome of a revocation request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeOutcome {
    Revoked,
    /// Not a token of ours at all (seed 000 answers this with an error body).
    Unknown,
}
