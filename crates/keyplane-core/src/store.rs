//! The storage interface. keyplane-store implements it for SQLite and PostgreSQL; both pass the
//! same contract suite. Methods that change a credential return the digests they affected so
//! the caller can invalidate its cache (and, on PostgreSQL, the store notifies other nodes).

use crate::error::Result;
use crate::model::{
    ApiKey, ClientSecret, Event, KeySecret, Member, NewEvent, OAuthClient, Org, Project, Role,
    Service, StoredSigningKey,
};
use crate::perm::MemberRole;
use crate::secret::Digest;
use async_trait::async_trait;
use time::OffsetDateTime;

/// Which API keys a listing returns.
#[derive(Debug, Clone, Default)]
pub struct KeyFilter {
    pub org_id: String,
    /// Only keys owned by this member (a `member` sees only their own).
    pub owner_member_id: Option<String>,
    pub project_id: Option<String>,
    /// Include revoked keys.
    pub include_inactive: bool,
}

/// Which activity events a query returns (newest first).
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// `None` means every organization and deployment-wide events (the admin key only).
    pub org_id: Option<String>,
    pub action: Option<String>,
    pub actor: Option<String>,
    pub target: Option<String>,
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
}

/// What a cache miss learns about a presented secret in one read.
#[derive(Debug, Clone)]
pub struct KeyLookup {
    pub key: ApiKey,
    pub secret: KeySecret,
    /// The owning member's current role, when the key has an owner who still exists.
    pub owner_role: Option<MemberRole>,
    /// The key's roles as currently defined.
    pub roles: Vec<Role>,
}

/// A change that other nodes must learn about at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// These digests changed (revoked, regenerated, edited).
    Digests(Vec<Digest>),
    /// Something that affects many credentials changed (a member's role, a role's definition).
    All,
    /// An OAuth client (its configuration or secrets) changed or was deleted.
    Client(String),
    /// An access token was revoked (`jti`, and when it would have expired, in ms).
    Token(String, i64),
    /// The signing keys changed.
    SigningKeys,
    /// Not a change, and never published: the store's feed of other nodes' changes is down, so
    /// changes may be missed from now on ([`crate::feed`] bounds how long caches are trusted).
    FeedLost,
    /// Not a change, and never published: the feed is back; anything may have changed meanwhile.
    FeedRestored,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `"sqlite"` or `"postgres"`.
    fn backend(&self) -> &'static str;
    /// Whether storage answers (readiness).
    async fn ping(&self) -> Result<()>;
    /// Creates the default organization and project and the built-in roles when missing.
    async fn ensure_defaults(&self, now: OffsetDateTime) -> Result<()>;

    // The admin key.
    async fn admin_key_get(&self) -> Result<Option<(Digest, u32)>>;
    /// Replaces the admin key's digest (first start, operator-supplied key, or rotation).
    async fn admin_key_set(
        &self,
        digest: Digest,
        pepper_version: u32,
        now: OffsetDateTime,
    ) -> Result<()>;

    // Organizations and projects.
    /// Creates an organization with its default project. A taken name is a conflict.
    async fn org_create(&self, org: &Org, default_project: &Project) -> Result<()>;
    async fn org_list(&self) -> Result<Vec<Org>>;
    async fn org_get(&self, id: &str) -> Result<Option<Org>>;
    async fn project_create(&self, project: &Project) -> Result<()>;
    async fn project_list(&self, org_id: &str) -> Result<Vec<Project>>;
    async fn project_get(&self, id: &str) -> Result<Option<Project>>;

    // Services (deployment-wide).
    async fn service_create(&self, service: &Service) -> Result<()>;
    async fn service_list(&self) -> Result<Vec<Service>>;

    // Members.
    async fn member_create(&self, member: &Member) -> Result<()>;
    async fn member_list(&self, org_id: &str) -> Result<Vec<Member>>;
    async fn member_get(&self, id: &str) -> Result<Option<Member>>;
    async fn member_set_role(&self, id: &str, role: MemberRole) -> Result<()>;
    /// Removes a member and revokes the keys they own; returns those keys' digests.
    async fn member_delete(&self, id: &str, now: OffsetDateTime) -> Result<Vec<Digest>>;

    // Roles.
    async fn role_create(&self, role: &Role) -> Result<()>;
    /// The built-in roles and the organization's own.
    async fn role_list(&self, org_id: &str) -> Result<Vec<Role>>;

    // API keys.
    /// Inserts a key and its first secret. With `active_limit`, refuses (LimitExceeded) when the
    /// organization already has that many active keys; concurrent creations never overshoot.
    /// Marking it the default token of a service takes that mark from any other key.
    async fn api_key_create(
        &self,
        key: &ApiKey,
        secret: &KeySecret,
        active_limit: Option<i64>,
        now: OffsetDateTime,
    ) -> Result<()>;
    /// Keys matching `filter`, oldest first, after the cursor `after_seq`.
    async fn api_key_list(
        &self,
        filter: &KeyFilter,
        after_seq: Option<i64>,
        limit: i64,
    ) -> Result<Vec<ApiKey>>;
    async fn api_key_get(&self, id: &str) -> Result<Option<ApiKey>>;
    /// Writes the editable fields (name, description, scopes, roles, expiry, default mark).
    async fn api_key_update(&self, key: &ApiKey) -> Result<Vec<Digest>>;
    /// Deactivates a key (idempotent: `deactivated_at` keeps its first value).
    async fn api_key_deactivate(&self, id: &str, at: OffsetDateTime) -> Result<Vec<Digest>>;
    /// Adds `secret` as the key's current secret. Existing secrets are deleted, or with
    /// `old_expire_at` kept until then (never later than they would have expired anyway).
    async fn api_key_replace_secret(
        &self,
        key_id: &str,
        secret: &KeySecret,
        old_expire_at: Option<OffsetDateTime>,
    ) -> Result<Vec<Digest>>;
    /// The key behind a digest, with what its authority depends on.
    async fn api_key_lookup(&self, digest: &Digest) -> Result<Option<KeyLookup>>;
    /// Active keys with their secrets, in digest order after `after`, at most `limit` (for
    /// filling the cache at start).
    async fn api_key_lookups_after(
        &self,
        after: Option<&Digest>,
        limit: i64,
    ) -> Result<Vec<KeyLookup>>;
    /// Records last-used times in one batch.
    async fn api_keys_touch(&self, used: &[(String, OffsetDateTime)]) -> Result<()>;

    // OAuth clients.
    /// Inserts a client with its first secret. A name taken in the project is a conflict.
    async fn client_create(&self, client: &OAuthClient, secret: &ClientSecret) -> Result<()>;
    /// A client and its secrets.
    async fn client_get(&self, client_id: &str)
        -> Result<Option<(OAuthClient, Vec<ClientSecret>)>>;
    /// Clients matching `filter` (same fields as for keys), oldest first, after `after_seq`.
    async fn client_list(
        &self,
        filter: &KeyFilter,
        after_seq: Option<i64>,
        limit: i64,
    ) -> Result<Vec<OAuthClient>>;
    /// Writes the editable fields (name, description, scopes, TTL, format, algorithm, audience,
    /// rotation policy, not-before).
    async fn client_update(&self, client: &OAuthClient) -> Result<()>;
    /// Deletes a client and its secrets.
    async fn client_delete(&self, client_id: &str) -> Result<()>;
    /// Adds a secret; with `old_expire_at`, the client's other secrets expire then (or earlier).
    async fn client_secret_add(
        &self,
        secret: &ClientSecret,
        old_expire_at: Option<OffsetDateTime>,
    ) -> Result<()>;
    /// Deletes one secret; false if the client has no such secret.
    async fn client_secret_delete(&self, client_id: &str, secret_id: &str) -> Result<bool>;
    /// Adds batched use counts and last-used times: `(secret id, last used, uses)`.
    async fn client_secrets_used(&self, used: &[(String, OffsetDateTime, i64)]) -> Result<()>;
    /// Secrets under a rotation policy that have not been warned about yet, with their client.
    async fn client_secrets_unwarned(&self) -> Result<Vec<(OAuthClient, ClientSecret)>>;
    async fn client_secret_mark_warned(&self, secret_id: &str, at: OffsetDateTime) -> Result<()>;

    // Signing keys and revoked tokens.
    async fn signing_keys(&self) -> Result<Vec<StoredSigningKey>>;
    /// Adds a key; every older key of the same algorithm leaves the JWKS at `retire_others_at`.
    async fn signing_key_add(
        &self,
        key: &StoredSigningKey,
        retire_others_at: OffsetDateTime,
    ) -> Result<()>;
    /// Remembers a revoked token until it would have expired. Revoking twice is a no-op.
    async fn token_revoke(
        &self,
        jti: &str,
        client_id: &str,
        expires_at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<()>;
    /// Revoked tokens that have not expired yet.
    async fn revoked_tokens(&self, now: OffsetDateTime) -> Result<Vec<(String, i64)>>;
    /// Forgets revocations of tokens that have expired anyway.
    async fn revoked_tokens_purge(&self, now: OffsetDateTime) -> Result<u64>;

    // The activity log.
    /// Appends events to the chain, in order, atomically.
    async fn activity_append(&self, events: &[NewEvent]) -> Result<()>;
    /// Events matching `filter`, newest first, before the cursor `before_seq`.
    async fn activity_query(
        &self,
        filter: &EventFilter,
        before_seq: Option<i64>,
        limit: i64,
    ) -> Result<Vec<Event>>;
    /// Events in chain order after `after_seq` (for verification).
    async fn activity_page(&self, after_seq: i64, limit: i64) -> Result<Vec<Event>>;
    /// The recorded end of the chain: its last `seq` and hash.
    async fn activity_head(&self) -> Result<Option<(i64, String)>>;

    // Changes other nodes must learn of.
    /// Publishes an invalidation to other nodes (a no-op where there are none to tell).
    async fn publish(&self, change: &Invalidation) -> Result<()>;
    /// Calls `on_change` for every change another node publishes (from a background task).
    fn subscribe(&self, on_change: std::sync::Arc<dyn Fn(Invalidation) + Send + Sync>);

    // The web console (see `crate::console`).
    /// Sets (or replaces) a member's argon2id password hash.
    async fn member_password_set(
        &self,
        member_id: &str,
        hash: &str,
        now: OffsetDateTime,
    ) -> Result<()>;
    /// Members with this (lower-case) email that have a password, with its hash.
    async fn member_credentials(&self, email: &str) -> Result<Vec<(Member, String)>>;
    /// Stores a one-time password link; the member's earlier links are deleted.
    async fn console_link_create(&self, link: &crate::console::PasswordLink) -> Result<()>;
    async fn console_link_get(
        &self,
        digest: &Digest,
    ) -> Result<Option<crate::console::PasswordLink>>;
    /// Uses a link up: deletes it and returns its member when it had not expired. Of two
    /// concurrent uses, one wins.
    async fn console_link_consume(
        &self,
        digest: &Digest,
        now: OffsetDateTime,
    ) -> Result<Option<String>>;
    async fn console_session_create(&self, session: &crate::console::ConsoleSession) -> Result<()>;
    async fn console_session_get(
        &self,
        digest: &Digest,
    ) -> Result<Option<crate::console::ConsoleSession>>;
    /// Records the organization and project a session shows.
    async fn console_session_set_context(
        &self,
        digest: &Digest,
        org_id: Option<&str>,
        project_id: Option<&str>,
    ) -> Result<()>;
    async fn console_session_delete(&self, digest: &Digest) -> Result<()>;
    /// Moves a session to another member it proved at sign-in (and that member's organization).
    async fn console_session_set_member(
        &self,
        digest: &Digest,
        member_id: &str,
        org_id: &str,
    ) -> Result<()>;
    /// Ends every session of a member (after a password change).
    async fn console_sessions_delete_member(&self, member_id: &str) -> Result<()>;
    /// Forgets expired sessions and links.
    async fn console_sessions_purge(&self, now: OffsetDateTime) -> Result<u64>;
}
