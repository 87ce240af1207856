//! The management API's JSON shapes. Times are RFC 3339 strings in UTC.

use keyplane_core::domain::model::{ApiKey, Event, Member, Org, Project, Role, Service};
use serde::{Deserialize, Deserializer, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use utoipa::ToSchema;

/// RFC 3339, UTC, milliseconds: every timestamp keyplane answers has this form.
pub fn rfc3339(t: OffsetDateTime) -> String {
    keyplane_core::domain::clock::rfc3339(t)
}

pub fn rfc3339_opt(t: Option<OffsetDateTime>) -> Option<String> {
    t.map(rfc3339)
}

/// Parses an RFC 3339 time from a request field.
pub fn parse_time(field: &'static str, s: &str) -> Result<OffsetDateTime, keyplane_core::Error> {
    OffsetDateTime::parse(s, &Rfc3339).map_err(|_| {
        keyplane_core::Error::invalid(
            field,
            format!("`{field}` must be an RFC 3339 time such as 2030-01-31T12:00:00Z"),
        )
    })
}

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`).
pub fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct List<T: ToSchema> {
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrgView {
    pub id: String,
    pub name: String,
    /// `config` when keyplane's configuration file declares it: the API then refuses to change
    /// it unless the request sends `Keyplane-Override-Config: true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub managed_by: Option<String>,
    pub created_at: String,
}

impl From<Org> for OrgView {
    fn from(o: Org) -> Self {
        Self {
            id: o.id,
            name: o.name,
            created_at: rfc3339(o.created_at),
            managed_by: o.managed_by,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrg {
    pub name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectView {
    pub id: String,
    pub org_id: String,
    pub name: String,
    /// `config` when keyplane's configuration file declares it: the API then refuses to change
    /// it unless the request sends `Keyplane-Override-Config: true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub managed_by: Option<String>,
    pub created_at: String,
}

impl From<Project> for ProjectView {
    fn from(p: Project) -> Self {
        Self {
            id: p.id,
            org_id: p.org_id,
            name: p.name,
            created_at: rfc3339(p.created_at),
            managed_by: p.managed_by,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    pub org_id: Option<String>,
    pub name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ServiceView {
    pub id: String,
    pub name: String,
    pub description: String,
    pub scopes: Vec<String>,
    /// Its resource URIs (RFC 8707).
    pub resources: Vec<String>,
    /// `config` when keyplane's configuration file declares it: the API then refuses to change
    /// it unless the request sends `Keyplane-Override-Config: true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub managed_by: Option<String>,
    pub created_at: String,
}

impl From<Service> for ServiceView {
    fn from(s: Service) -> Self {
        Self {
            id: s.id,
            name: s.name,
            description: s.description,
            scopes: s.scopes,
            resources: s.resources,
            created_at: rfc3339(s.created_at),
            managed_by: s.managed_by,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateService {
    /// e.g. `ai-guard`
    pub name: String,
    pub description: Option<String>,
    /// e.g. `["ai-guard:read", "ai-guard:write"]`
    pub scopes: Vec<String>,
    /// Its resource URIs (RFC 8707), e.g. `["https://guard.example.com"]`: tokens requested
    /// with `resource=` name them in `aud`, and access tokens need one of them in their
    /// audience to use this service's scopes at `/v1/authz` and the gateway.
    #[serde(default)]
    pub resources: Vec<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateService {
    pub description: Option<String>,
    /// Replaces its resource URIs (`[]`: none, so no audience is checked for its scopes).
    pub resources: Option<Vec<String>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemberView {
    pub id: String,
    pub org_id: String,
    pub email: String,
    pub name: String,
    /// `owner`, `admin` or `member`
    pub role: String,
    /// `config` when keyplane's configuration file declares it: the API then refuses to change
    /// it unless the request sends `Keyplane-Override-Config: true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub managed_by: Option<String>,
    pub created_at: String,
}

impl From<Member> for MemberView {
    fn from(m: Member) -> Self {
        Self {
            id: m.id,
            org_id: m.org_id,
            email: m.email,
            name: m.name,
            role: m.role.as_str().into(),
            created_at: rfc3339(m.created_at),
            managed_by: m.managed_by,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMember {
    pub org_id: Option<String>,
    pub email: String,
    pub name: Option<String>,
    /// `owner`, `admin` or `member`
    pub role: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMember {
    pub role: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RoleView {
    pub id: String,
    /// Absent for built-in roles, which exist in every organization.
    pub org_id: Option<String>,
    pub name: String,
    pub description: String,
    pub permissions: Vec<String>,
    pub scopes: Vec<String>,
    /// `config` when keyplane's configuration file declares it: the API then refuses to change
    /// it unless the request sends `Keyplane-Override-Config: true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub managed_by: Option<String>,
    pub built_in: bool,
}

impl From<Role> for RoleView {
    fn from(r: Role) -> Self {
        Self {
            built_in: r.org_id.is_none(),
            id: r.id,
            org_id: r.org_id,
            name: r.name,
            description: r.description,
            permissions: r
                .permissions
                .iter()
                .map(|p| p.as_str().to_string())
                .collect(),
            scopes: r.scopes,
            managed_by: r.managed_by,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRole {
    pub org_id: Option<String>,
    pub name: String,
    pub description: Option<String>,
    /// e.g. `["keys:manage", "activity:read"]`
    #[serde(default)]
    pub permissions: Vec<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// An API key as lists and gets show it: never its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyView {
    pub id: String,
    pub org_id: String,
    pub project_id: String,
    /// The owning member; absent for a project's service token.
    pub owner_member_id: Option<String>,
    pub name: String,
    pub description: String,
    pub scopes: Vec<String>,
    pub roles: Vec<String>,
    /// The secret's first characters, to recognise it.
    pub prefix: String,
    pub created_at: String,
    pub created_by: String,
    pub expires_at: Option<String>,
    pub last_used_at: Option<String>,
    pub is_active: bool,
    /// `active`, `revoked` or `expired`.
    pub status: String,
    pub deactivated_at: Option<String>,
    /// The service this key is the default token of.
    pub default_for_service: Option<String>,
    /// The OAuth clients that may exchange this key for a token that acts for its holder
    /// (RFC 8693 token exchange).
    pub may_act: Vec<String>,
    /// Named rate limits applied wherever the key is checked.
    pub rate_limits: Vec<RateLimitView>,
}

impl ApiKeyView {
    pub fn new(k: ApiKey, now: OffsetDateTime) -> Self {
        let status = if !k.is_active {
            "revoked"
        } else if k.is_expired(now) {
            "expired"
        } else {
            "active"
        };
        Self {
            status: status.into(),
            id: k.id,
            org_id: k.org_id,
            project_id: k.project_id,
            owner_member_id: k.owner_member_id,
            name: k.name,
            description: k.description,
            scopes: k.scopes,
            roles: k.roles,
            prefix: format!("{}…", k.start),
            created_at: rfc3339(k.created_at),
            created_by: k.created_by,
            expires_at: rfc3339_opt(k.expires_at),
            last_used_at: rfc3339_opt(k.last_used_at),
            is_active: k.is_active,
            deactivated_at: rfc3339_opt(k.deactivated_at),
            default_for_service: k.default_for_service,
            may_act: k.may_act,
            rate_limits: k.rate_limits.iter().map(RateLimitView::from).collect(),
        }
    }
}

/// A key with its secret: the only response that ever contains it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyWithSecret {
    #[serde(flatten)]
    pub api_key: ApiKeyView,
    /// The secret. Store it now: it is not shown again.
    pub key: String,
    pub message: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    pub org_id: Option<String>,
    pub project_id: Option<String>,
    /// Only org-wide managers may create a key for another member; a member's keys are their own.
    pub owner_member_id: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    /// RFC 3339; `null` means the key never expires; absent means the deployment's default
    /// (`api_key_default_ttl_days`, 90 days unless configured).
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub expires_at: Option<Option<String>>,
    /// Mark the key the default token of this service (taking the mark from any other key).
    pub default_for_service: Option<String>,
    /// OAuth clients of the organization that may exchange this key (RFC 8693) for a
    /// short-lived token acting for its holder; none by default.
    #[serde(default)]
    pub may_act: Vec<String>,
    /// Named rate limits, e.g. `[{"name": "burst", "limit": 100, "window": "1s"}]`.
    #[serde(default)]
    pub rate_limits: Vec<RateLimitView>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateApiKey {
    pub name: Option<String>,
    pub description: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub roles: Option<Vec<String>>,
    /// RFC 3339, or `null` to remove the expiry.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub expires_at: Option<Option<String>>,
    /// A service name, or `null` to remove the default mark.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub default_for_service: Option<Option<String>>,
    /// Replaces the clients that may act for the key's holder (`[]`: none).
    pub may_act: Option<Vec<String>>,
    /// Replaces the key's rate limits (`[]`: none).
    pub rate_limits: Option<Vec<RateLimitView>>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CopyApiKey {
    pub name: Option<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegenerateApiKey {
    /// Keep the old secret working this many seconds (at most 30 days); absent or 0 refuses it at once.
    pub grace_period_seconds: Option<i64>,
}

/// Seed 002's body for `POST /auth/api_keys`: create, or regenerate when an id is given.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SeedCreateApiKey {
    pub description: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    pub name: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The id of a key to regenerate (also accepted as `api_key_id`).
    #[serde(alias = "api_key_id")]
    pub id: Option<String>,
    pub grace_period_seconds: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    pub seq: i64,
    pub id: String,
    pub at: String,
    pub org_id: Option<String>,
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    /// `success`, `denied` or `failure`
    pub outcome: String,
    pub client_addr: Option<String>,
    pub user_agent: Option<String>,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

impl From<Event> for EventView {
    fn from(e: Event) -> Self {
        Self {
            seq: e.seq,
            id: e.id,
            at: rfc3339(e.at),
            org_id: e.org_id,
            actor: e.actor,
            action: e.action,
            target: e.target,
            outcome: e.outcome.as_str().into(),
            client_addr: e.client_addr,
            user_agent: e.user_agent,
            details: serde_json::from_str(&e.details)
                .unwrap_or(serde_json::Value::String(e.details)),
            prev_hash: e.prev_hash,
            hash: e.hash,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyView {
    /// Whether every event is present, in order and unedited.
    pub intact: bool,
    /// How many events were checked (for a caller scoped to an organization: how many of its
    /// organization's).
    pub checked: u64,
    pub first_broken: Option<BrokenView>,
    /// Whether the chain was walked from its first event.
    pub full: bool,
    /// The checkpoint the walk started after (0: the first event).
    pub started_after: i64,
    /// The last event verified.
    pub verified_to: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BrokenView {
    pub seq: i64,
    pub id: String,
    pub reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WhoAmI {
    /// `admin-key` or `api-key`
    pub kind: String,
    pub actor: String,
    pub org_id: Option<String>,
    pub project_id: Option<String>,
    pub member_id: Option<String>,
    pub permissions: Vec<String>,
    pub scopes: Vec<String>,
}

/// One secret of a client, never its value.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClientSecretView {
    pub id: String,
    /// The secret's first characters, to recognise it.
    pub prefix: String,
    pub created_at: String,
    pub age_days: i64,
    /// When it stops working: its grace-period end or its maximum age under the rotation policy.
    pub expires_at: Option<String>,
    /// `active` or `expired`.
    pub status: String,
    pub last_used_at: Option<String>,
    /// Uses since this secret was created, so an old one can be seen to be unused before its grace ends.
    pub use_count: i64,
}

/// An OAuth client; never its secrets' values.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClientView {
    pub client_id: String,
    pub org_id: String,
    pub project_id: String,
    pub owner_member_id: Option<String>,
    pub name: String,
    pub description: String,
    pub scopes: Vec<String>,
    pub access_token_ttl_seconds: i64,
    /// `opaque` or `jwt`
    pub token_format: String,
    /// `ES256` or `EdDSA` for JWTs; absent means the deployment's default.
    pub signing_alg: Option<String>,
    pub audience: Option<String>,
    pub secret_rotation_days: Option<i64>,
    /// How it authenticates (RFC 7591): `client_secret_basic`, `client_secret_post` (both take
    /// its secret either way) or `private_key_jwt` (a signed assertion; no secrets).
    pub token_endpoint_auth_method: String,
    /// A `private_key_jwt` client's public keys (RFC 7591 `jwks`), as registered.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub jwks: Option<serde_json::Value>,
    /// Where a `private_key_jwt` client publishes its public keys (RFC 7591 `jwks_uri`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// The external issuers whose tokens a `private_key_jwt` client may trade for its own
    /// (workload identity federation): each `issuer`, `subject` or `subject_pattern`, `audience`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub federated_credentials: Vec<serde_json::Value>,
    /// The OAuth clients that may exchange this client's access tokens for tokens acting for
    /// it (RFC 8693 token exchange).
    pub may_act: Vec<String>,
    /// RFC 9449 §5.2: when true the client always uses DPoP, and the token endpoint refuses
    /// its token requests that carry no `DPoP` proof (`invalid_dpop_proof`).
    pub dpop_bound_access_tokens: bool,
    /// Named rate limits applied wherever the client's access tokens are checked.
    pub rate_limits: Vec<RateLimitView>,
    pub created_at: String,
    pub created_by: String,
    /// `config` when keyplane's configuration file declares it: the API then refuses to change
    /// it unless the request sends `Keyplane-Override-Config: true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub managed_by: Option<String>,
    pub secrets: Vec<ClientSecretView>,
}

impl ClientView {
    pub fn new(
        c: keyplane_core::domain::model::OAuthClient,
        secrets: Vec<keyplane_core::domain::model::ClientSecret>,
        now: OffsetDateTime,
    ) -> Self {
        let max_age = c.secret_rotation_days.map(time::Duration::days);
        Self {
            secrets: secrets
                .into_iter()
                .map(|s| {
                    let by_policy = max_age.map(|a| s.created_at + a);
                    let expires = match (s.expires_at, by_policy) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    ClientSecretView {
                        status: if expires.is_some_and(|e| e <= now) {
                            "expired"
                        } else {
                            "active"
                        }
                        .into(),
                        id: s.id,
                        prefix: format!("{}…", s.start),
                        created_at: rfc3339(s.created_at),
                        age_days: (now - s.created_at).whole_days(),
                        expires_at: rfc3339_opt(expires),
                        last_used_at: rfc3339_opt(s.last_used_at),
                        use_count: s.use_count,
                    }
                })
                .collect(),
            client_id: c.client_id,
            org_id: c.org_id,
            project_id: c.project_id,
            owner_member_id: c.owner_member_id,
            name: c.name,
            description: c.description,
            scopes: c.scopes,
            access_token_ttl_seconds: c.access_token_ttl_seconds,
            token_format: c.token_format.as_str().into(),
            signing_alg: c.signing_alg.map(|a| a.as_str().to_string()),
            audience: c.audience,
            secret_rotation_days: c.secret_rotation_days,
            token_endpoint_auth_method: c.auth_method.as_str().into(),
            jwks: c.jwks.as_ref().map(|j| j.to_json()),
            jwks_uri: c.jwks_uri,
            federated_credentials: c
                .federated_credentials
                .iter()
                .map(|f| serde_json::to_value(f).unwrap_or_default())
                .collect(),
            may_act: c.may_act,
            dpop_bound_access_tokens: c.dpop_bound_access_tokens,
            rate_limits: c.rate_limits.iter().map(RateLimitView::from).collect(),
            created_at: rfc3339(c.created_at),
            created_by: c.created_by,
            managed_by: c.managed_by,
        }
    }
}

/// A new client with its first secret: the only response that shows the secret. A
/// `private_key_jwt` client has none.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClientWithSecret {
    #[serde(flatten)]
    pub client: ClientView,
    /// The secret. Store it now: it is not shown again. Absent for `private_key_jwt`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_id: Option<String>,
    pub message: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateClient {
    pub name: String,
    pub org_id: Option<String>,
    pub project_id: Option<String>,
    pub owner_member_id: Option<String>,
    pub description: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// 60 to 86400; 3600 by default.
    pub access_token_ttl_seconds: Option<i64>,
    /// `opaque` (default) or `jwt`.
    pub token_format: Option<String>,
    /// `ES256` (default) or `EdDSA`.
    pub signing_alg: Option<String>,
    /// The `aud` of its JWTs; the issuer by default.
    pub audience: Option<String>,
    /// Each secret's maximum age in days.
    pub secret_rotation_days: Option<i64>,
    /// `client_secret_basic` (default), `client_secret_post` or `private_key_jwt` (RFC 7591).
    pub token_endpoint_auth_method: Option<String>,
    /// For `private_key_jwt`: its public keys as a JWK set (EC P-256, OKP Ed25519 or RSA of at
    /// least 2048 bits), checked now.
    #[schema(value_type = Option<Object>)]
    pub jwks: Option<serde_json::Map<String, serde_json::Value>>,
    /// For `private_key_jwt`, instead of `jwks`: an https URL where its JWK set is published.
    pub jwks_uri: Option<String>,
    /// For `private_key_jwt`: external OIDC issuers whose tokens it may trade for its own, each
    /// `{"issuer", "subject" | "subject_pattern", "audience"}` (workload identity federation).
    #[schema(value_type = Option<Vec<Object>>)]
    pub federated_credentials: Option<Vec<serde_json::Value>>,
    /// RFC 9449 §5.2: `true` makes the token endpoint refuse this client's token requests
    /// without a `DPoP` proof; `false` (the default) lets it choose per request.
    pub dpop_bound_access_tokens: Option<bool>,
    /// OAuth clients of the organization that may exchange this client's access tokens
    /// (RFC 8693) for short-lived tokens acting for it; none by default.
    #[serde(default)]
    pub may_act: Vec<String>,
    /// Named rate limits, e.g. `[{"name": "daily", "limit": 10000, "window": "1d"}]`.
    #[serde(default)]
    pub rate_limits: Vec<RateLimitView>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateClient {
    pub name: Option<String>,
    pub description: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub access_token_ttl_seconds: Option<i64>,
    pub token_format: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub signing_alg: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub audience: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<i64>)]
    pub secret_rotation_days: Option<Option<i64>>,
    /// Switching to `private_key_jwt` deletes the client's secrets; switching away from it
    /// drops its keys (add a secret afterwards).
    pub token_endpoint_auth_method: Option<String>,
    /// A JWK set, or `null`; setting it replaces `jwks_uri`.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Object>)]
    pub jwks: Option<Option<serde_json::Map<String, serde_json::Value>>>,
    /// An https URL, or `null`; setting it replaces `jwks`.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub jwks_uri: Option<Option<String>>,
    /// Replaces the external issuers it trusts; `null` or `[]` removes them all.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub federated_credentials: Option<Option<Vec<serde_json::Value>>>,
    /// RFC 9449 §5.2: `true` requires a `DPoP` proof on every token request of this client;
    /// `false` or `null` (the default) makes it optional. Takes effect on every node at once.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<bool>)]
    pub dpop_bound_access_tokens: Option<Option<bool>>,
    /// Replaces the clients that may act for it (`[]`: none).
    pub may_act: Option<Vec<String>>,
    /// Replaces the client's rate limits (`[]`: none).
    pub rate_limits: Option<Vec<RateLimitView>>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddClientSecret {
    /// The client's other secrets stop working after this many seconds (at most 90 days).
    /// Absent: they keep working until retired or expired.
    pub old_secrets_expire_in_seconds: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NewClientSecret {
    pub secret_id: String,
    pub client_id: String,
    /// The secret. Store it now: it is not shown again.
    pub client_secret: String,
    pub created_at: String,
    pub message: String,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueClientToken {
    /// Space-delimited subset of the client's scopes; all of them when absent.
    pub scope: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IssuedTokenView {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: i64,
    pub scope: String,
}

/// One named rate limit of an API key or OAuth client.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitView {
    /// 1 to 32 letters, digits, `_` or `-`; unique per credential.
    pub name: String,
    /// At most this many units (requests, unless a cost says otherwise) per window.
    pub limit: u64,
    /// `1s`, `30s`, `1m`, `1h`, `1d` (a whole number and a unit; 100 ms to 30 days).
    #[schema(example = "1s")]
    pub window: String,
    /// Units one request costs when no route rule names another cost (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<u64>,
    /// Who shares the count: `credential` (default), `owner` (every credential of the key's
    /// or client's owner) or `project` (every credential of its project).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<String>,
}

impl From<&keyplane_core::domain::usage::RateLimit> for RateLimitView {
    fn from(l: &keyplane_core::domain::usage::RateLimit) -> Self {
        Self {
            name: l.name.clone(),
            limit: l.limit,
            window: l.window.to_string(),
            cost: l.cost,
            shared: l.shared.map(|s| {
                serde_json::to_value(s)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            }),
        }
    }
}

/// Reads rate limits from a request body: every window and share checked, with the field named.
///
/// The limits are checked here too (names, bounds, count), so a bad list is refused before
/// anything else about the request is looked at — an `If-Match` that no longer matches
/// included: bad input answers 422 whatever the version.
pub fn rate_limits_in(
    views: Vec<RateLimitView>,
) -> Result<Vec<keyplane_core::domain::usage::RateLimit>, keyplane_core::Error> {
    use keyplane_core::domain::usage::{check_rate_limits, LimitShare, RateLimit, Window};
    let limits = views
        .into_iter()
        .map(|v| {
            let window = Window::parse(&v.window)
                .map_err(|e| keyplane_core::Error::invalid("rate_limits", e))?;
            let shared = match v.shared.as_deref() {
                None => None,
                Some("credential") => Some(LimitShare::Credential),
                Some("owner") => Some(LimitShare::Owner),
                Some("project") => Some(LimitShare::Project),
                Some(other) => {
                    return Err(keyplane_core::Error::invalid(
                        "rate_limits",
                        format!("`shared` is `credential`, `owner` or `project`, not {other:?}"),
                    ))
                }
            };
            Ok(RateLimit {
                name: v.name,
                limit: v.limit,
                window,
                cost: v.cost,
                shared,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    check_rate_limits(&limits)?;
    Ok(limits)
}

/// Requests in one bucket of a usage series.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageBucketView {
    /// The bucket's first instant (RFC 3339, UTC).
    pub start: String,
    /// Requests per outcome (`allowed`, `unknown`, `revoked`, `expired`, `insufficient_scope`,
    /// `rate_limited`, `missing`, `malformed`, `wrong_audience`, `no_rule`, `dpop`); outcomes
    /// with no request are absent.
    #[schema(value_type = Object)]
    pub counts: std::collections::BTreeMap<String, u64>,
    pub total: u64,
}

/// Requests over time: one bucket per minute or hour from `since` to `until`, empty ones
/// included.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageView {
    /// `minute` or `hour`.
    pub granularity: String,
    pub since: String,
    pub until: String,
    pub buckets: Vec<UsageBucketView>,
}

impl From<keyplane_core::domain::usage::UsageSeries> for UsageView {
    fn from(s: keyplane_core::domain::usage::UsageSeries) -> Self {
        Self {
            granularity: s.granularity.as_str().into(),
            since: rfc3339(s.since),
            until: rfc3339(s.until),
            buckets: s
                .buckets
                .into_iter()
                .map(|b| UsageBucketView {
                    start: rfc3339(b.start),
                    counts: b
                        .counts
                        .into_iter()
                        .map(|(o, n)| (o.as_str().to_string(), n))
                        .collect(),
                    total: b.total,
                })
                .collect(),
        }
    }
}

/// One credential of `GET /v1/usage/top`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopCredentialView {
    pub credential_id: String,
    /// `api_key` or `client`.
    pub kind: String,
    /// Empty when the credential has since been deleted.
    pub name: String,
    pub org_id: String,
    pub project_id: String,
    pub requests: u64,
    pub refusals: u64,
}

impl From<keyplane_core::domain::usage::TopCredential> for TopCredentialView {
    fn from(t: keyplane_core::domain::usage::TopCredential) -> Self {
        use keyplane_core::domain::usage::CredentialKind;
        Self {
            kind: match t.kind {
                CredentialKind::ApiKey => "api_key",
                CredentialKind::Client => "client",
            }
            .into(),
            credential_id: t.credential_id,
            name: t.name,
            org_id: t.org_id,
            project_id: t.project_id,
            requests: t.requests,
            refusals: t.refusals,
        }
    }
}
