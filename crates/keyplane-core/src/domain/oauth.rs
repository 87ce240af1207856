//! What the OAuth 2.0 endpoints take and answer, apart from HTTP: client authentication,
//! issued tokens, introspection answers and the errors of RFC 6749 §5.2, RFC 7009 and RFC 7662.

use crate::domain::error::Error;
use crate::domain::secret::SecretString;
use crate::domain::token::{Act, Delegation, FederatedRef, SubjectCredential};
use std::sync::Arc;

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
    /// RFC 6749 §5.2 `invalid_grant`: a code or refresh token that is not (or no longer) good.
    InvalidGrant(String),
    /// RFC 8707 §2 / RFC 8693 §2.2.2: a `resource` (or `audience`) the token cannot be for.
    InvalidTarget(String),
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
    /// Token exchange (RFC 8693 §2.2.1): what was issued.
    pub issued_token_type: Option<&'static str>,
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
    /// The audience (an access token always has one; an API key none).
    pub aud: Vec<String>,
    /// Token exchange: who acts for `sub` (RFC 8693 §4.1).
    pub act: Option<Act>,
    /// Workload identity federation: the external identity behind the token.
    pub federated: Option<FederatedRef>,
    /// Token exchange: the credentials an exchanged token was made from (not reported).
    pub subject_credentials: Vec<SubjectCredential>,
    pub org_id: String,
    pub project_id: String,
    /// DPoP: the thumbprint of the key the token is bound to (`cnf.jkt`).
    pub jkt: Option<String>,
    /// The answer as the HTTP layer writes it, kept when this introspection is shared (an
    /// opened token's is, by every request for that token while it is kept): it depends on
    /// nothing but the fields above and the issuer.
    pub answer: std::sync::OnceLock<Arc<[u8]>>,
}

/// A verified access token, for `/v1/authz` and the management API.
#[derive(Debug)]
pub struct TokenIdentity {
    /// The client the token was issued to (for an exchanged token: the actor).
    pub client_id: String,
    /// Whom it is for: the client, or for an exchanged token the subject credential's holder.
    pub sub: String,
    pub aud: Vec<String>,
    pub act: Option<Act>,
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

/// What a token is minted with, beyond its client.
#[derive(Debug, Default)]
pub struct MintRequest<'a> {
    /// The `scope` parameter (`None`: every scope allowed).
    pub scope: Option<&'a str>,
    /// The `resource`s named (RFC 8707), each with the scopes of the service it belongs to.
    pub targets: Vec<(String, Vec<String>)>,
    /// DPoP: the thumbprint of the key the token is bound to.
    pub jkt: Option<String>,
    pub federated: Option<FederatedRef>,
    pub exchange: Option<ExchangeBounds>,
}

/// Token exchange (RFC 8693): what the subject credential allows, which the token never exceeds.
#[derive(Debug)]
pub struct ExchangeBounds {
    pub delegation: Delegation,
    /// The subject credential's scopes.
    pub scopes: Vec<String>,
    /// The subject credential's audience when it was requested for resources (empty: it is for
    /// any service its scopes allow).
    pub audience: Vec<String>,
    /// When the subject credential expires (ms; `None`: it does not).
    pub expires_at_ms: Option<i64>,
}

/// RFC 8693's grant type and the token types keyplane takes and issues.
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

/// A token exchange request (RFC 8693 §2.1), as sent.
#[derive(Debug, Default)]
pub struct ExchangeRequest<'a> {
    pub subject_token: Option<&'a str>,
    pub subject_token_type: Option<&'a str>,
    pub actor_token: Option<&'a str>,
    pub actor_token_type: Option<&'a str>,
    pub requested_token_type: Option<&'a str>,
    pub scope: Option<&'a str>,
    /// `resource` and `audience` values (both name registered resource URIs here).
    pub resources: Vec<String>,
}
