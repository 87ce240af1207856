//! The records keyplane keeps. Secrets never appear here: only digests and display prefixes.

use crate::domain::perm::{MemberRole, PermSet, Permission};
use crate::domain::secret::Digest;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Org {
    pub id: String,
    pub name: String,
    /// `config` when a configuration file declares it (see `domain::managed`).
    pub managed_by: Option<String>,
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub id: String,
    pub org_id: String,
    pub name: String,
    /// `config` when a configuration file declares it (see `domain::managed`).
    pub managed_by: Option<String>,
    pub created_at: OffsetDateTime,
}

/// An API of the platform, with the scopes it understands. Services are deployment-wide: every
/// organization's credentials are scoped to the same platform APIs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub id: String,
    pub name: String,
    pub description: String,
    pub scopes: Vec<String>,
    /// Its resource URIs (RFC 8707): a token requested for one of them names it in `aud`,
    /// and, when there are any, an access token needs one of them in its audience to be
    /// accepted for the service's scopes at `/v1/authz` and the gateway.
    pub resources: Vec<String>,
    /// `config` when a configuration file declares it (see `domain::managed`).
    pub managed_by: Option<String>,
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub org_id: String,
    pub email: String,
    pub name: String,
    pub role: MemberRole,
    pub created_at: OffsetDateTime,
    /// `config` when a configuration file declares it (see `domain::managed`).
    pub managed_by: Option<String>,
    /// Bumped by every change (the `ETag`).
    pub version: i64,
}

/// A named set of management permissions and scopes an API key can carry.
/// Built-in roles have no organization and exist in every one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub id: String,
    pub org_id: Option<String>,
    pub name: String,
    pub description: String,
    pub permissions: Vec<Permission>,
    pub scopes: Vec<String>,
    /// `config` when a configuration file declares it (see `domain::managed`).
    pub managed_by: Option<String>,
    pub created_at: OffsetDateTime,
}

impl Role {
    pub fn perm_set(&self) -> PermSet {
        self.permissions.iter().copied().collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: String,
    pub org_id: String,
    pub project_id: String,
    /// The member who owns the key; `None` for a project's service token.
    pub owner_member_id: Option<String>,
    pub name: String,
    pub description: String,
    pub scopes: Vec<String>,
    pub roles: Vec<String>,
    /// The secret's prefix and first characters, enough to recognise it in a list.
    pub start: String,
    pub created_at: OffsetDateTime,
    pub created_by: String,
    pub expires_at: Option<OffsetDateTime>,
    pub last_used_at: Option<OffsetDateTime>,
    pub is_active: bool,
    pub deactivated_at: Option<OffsetDateTime>,
    /// The service this key is the default token of, if any (at most one per project and service).
    pub default_for_service: Option<String>,
    /// The OAuth clients that may act for this key's holder (RFC 8693 token exchange).
    pub may_act: Vec<String>,
    /// Named rate limits applied wherever the key is checked (issue 15).
    pub rate_limits: Vec<crate::domain::usage::RateLimit>,
    /// Ordering for cursor pagination.
    pub seq: i64,
    /// Bumped by every change: concurrent changes are detected, and it is the `ETag`.
    pub version: i64,
}

impl ApiKey {
    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        self.expires_at.is_some_and(|e| e <= now)
    }
}

/// One secret of an API key, by digest. A key has one current secret, and after a regeneration
/// with a grace period the old one too, until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySecret {
    pub digest: Digest,
    pub key_id: String,
    pub pepper_version: u32,
    pub created_at: OffsetDateTime,
    pub expires_at: Option<OffsetDateTime>,
}

/// Outcome of a logged action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Denied,
    Failure,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Denied => "denied",
            Outcome::Failure => "failure",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "success" => Some(Outcome::Success),
            "denied" => Some(Outcome::Denied),
            "failure" => Some(Outcome::Failure),
            _ => None,
        }
    }
}

/// An event before it joins the chain.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub id: String,
    pub at: OffsetDateTime,
    pub org_id: Option<String>,
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub outcome: Outcome,
    pub client_addr: Option<String>,
    pub user_agent: Option<String>,
    pub details: serde_json::Value,
}

/// A stored event: its place in the chain, the hash of the one before it, and its own.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub seq: i64,
    pub id: String,
    pub at: OffsetDateTime,
    pub org_id: Option<String>,
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub outcome: Outcome,
    pub client_addr: Option<String>,
    pub user_agent: Option<String>,
    /// The details exactly as stored (JSON text), since the hash covers these bytes.
    pub details: String,
    pub prev_hash: String,
    pub hash: String,
}

/// How a client's access tokens are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFormat {
    /// Sealed handles only keyplane can read (`kpt_…`).
    Opaque,
    /// RFC 9068 JWTs, verifiable offline against the JWKS.
    Jwt,
}

impl TokenFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenFormat::Opaque => "opaque",
            TokenFormat::Jwt => "jwt",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "opaque" => Some(TokenFormat::Opaque),
            "jwt" => Some(TokenFormat::Jwt),
            _ => None,
        }
    }
}

/// An OAuth 2.0 client-credentials client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthClient {
    pub seq: i64,
    pub client_id: String,
    pub org_id: String,
    pub project_id: String,
    pub owner_member_id: Option<String>,
    pub name: String,
    pub description: String,
    pub scopes: Vec<String>,
    pub access_token_ttl_seconds: i64,
    pub token_format: TokenFormat,
    /// `None`: the deployment's default algorithm.
    pub signing_alg: Option<crate::domain::token::Alg>,
    /// `None`: tokens' `aud` is the issuer.
    pub audience: Option<String>,
    /// Each secret's maximum age, when set.
    pub secret_rotation_days: Option<i64>,
    /// How it authenticates (RFC 7591 `token_endpoint_auth_method`). A `private_key_jwt`
    /// client has no secret and exactly one of `jwks` and `jwks_uri`; the others have neither.
    pub auth_method: crate::domain::client_auth::AuthMethod,
    /// Its public keys, registered inline (RFC 7591 `jwks`).
    pub jwks: Option<crate::domain::jose::JwkSet>,
    /// Where its public keys are published (RFC 7591 `jwks_uri`), fetched and cached.
    pub jwks_uri: Option<String>,
    /// External issuers whose tokens it may trade for its own (workload identity federation);
    /// only a `private_key_jwt` client has any.
    pub federated_credentials: Vec<crate::domain::federation::FederatedCredential>,
    /// The OAuth clients that may exchange this client's access tokens for tokens that act
    /// for it (RFC 8693 delegation; `may_act` in RFC 8693 §4.4's sense). Empty: nobody.
    pub may_act: Vec<String>,
    /// RFC 9449 §5.2 `dpop_bound_access_tokens`: the client always uses DPoP, so the token
    /// endpoint refuses its token requests that carry no `DPoP` proof (and the management API
    /// issues it no unbound token).
    pub dpop_bound_access_tokens: bool,
    /// Named rate limits applied wherever the client's access tokens are checked (issue 15).
    pub rate_limits: Vec<crate::domain::usage::RateLimit>,
    /// Tokens issued before this are refused (set when a secret is retired).
    pub not_before: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
    pub created_by: String,
    /// Set when the member who owned it was removed: it authenticates nowhere and its tokens stop.
    pub disabled_at: Option<OffsetDateTime>,
    /// `config` when a configuration file declares it (see `domain::managed`).
    pub managed_by: Option<String>,
    /// Bumped by every change to the client or its secrets (the `ETag`).
    pub version: i64,
}

/// One secret of a client, by digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSecret {
    pub id: String,
    pub client_id: String,
    pub digest: Digest,
    pub pepper_version: u32,
    pub start: String,
    pub created_at: OffsetDateTime,
    pub expires_at: Option<OffsetDateTime>,
    pub last_used_at: Option<OffsetDateTime>,
    /// Uses since this secret was created (it is the count since the rotation that made it).
    pub use_count: i64,
    pub expiry_warned_at: Option<OffsetDateTime>,
}

/// A signing key as stored: the private half sealed under a key derived from the pepper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSigningKey {
    pub kid: String,
    pub alg: String,
    pub private_sealed: Vec<u8>,
    pub created_at: OffsetDateTime,
    pub activates_at: OffsetDateTime,
    pub unpublish_at: Option<OffsetDateTime>,
}
