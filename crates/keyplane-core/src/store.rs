//! The storage interface. keyplane-store implements it for SQLite and PostgreSQL; both pass the
//! same contract suite. Methods that change a credential return the digests they affected so
//! the caller can invalidate its cache (and, on PostgreSQL, the store notifies other nodes).
//!
//! Every method that changes something takes the activity event that records it and appends it
//! to the chain in the same transaction: a change without its event (or the reverse) cannot be
//! committed. Rows that can be changed concurrently (API keys, OAuth clients with their secrets,
//! members) carry a `version`; a change names the version it was computed from and fails with
//! [`crate::domain::error::Error::VersionConflict`] when another change committed first.

/// How often a server asks an embedded database to copy its write-ahead log into its file
/// ([`Store::checkpoint`]).
pub const CHECKPOINT_EVERY_MS: u64 = 100;

use crate::domain::activity::Checkpoint;
use crate::domain::apps::AppClient;
use crate::domain::authcode::{AuthCode, CodeUse, Grant, RefreshToken, RefreshUse};
use crate::domain::console::{ConsoleSession, PasswordLink};
use crate::domain::error::Result;
use crate::domain::managed::{ManagedKind, ManagedObject};
use crate::domain::model::{
    ApiKey, ClientSecret, Event, KeySecret, Member, NewEvent, OAuthClient, Org, Project, Role,
    Service, StoredSigningKey,
};
use crate::domain::perm::{Access, MemberRole};
use crate::domain::secret::Digest;
use crate::domain::webhook::{
    Attempt, Delivery, DeliveryResult, Endpoint, NoticeCandidate, NoticeKind,
};
use async_trait::async_trait;
use time::OffsetDateTime;

/// Which API keys (or OAuth clients) a listing returns. Made only from an [`Access`], so a
/// listing is always limited to what the caller proved it may reach.
#[derive(Debug, Clone)]
pub struct KeyFilter {
    org_id: String,
    owner_member_id: Option<String>,
    project_id: Option<String>,
    include_inactive: bool,
}

impl KeyFilter {
    pub fn new(access: &Access, project_id: Option<&str>, include_inactive: bool) -> Self {
        Self {
            org_id: access.org_id().to_string(),
            owner_member_id: access.only_member().map(str::to_string),
            project_id: project_id.map(str::to_string),
            include_inactive,
        }
    }
    pub fn org_id(&self) -> &str {
        &self.org_id
    }
    /// Only keys owned by this member (a `member` sees only their own).
    pub fn owner_member_id(&self) -> Option<&str> {
        self.owner_member_id.as_deref()
    }
    pub fn project_id(&self) -> Option<&str> {
        self.project_id.as_deref()
    }
    /// Include revoked keys.
    pub fn include_inactive(&self) -> bool {
        self.include_inactive
    }
}

/// What removing a member took with them, for cache invalidation.
#[derive(Debug, Clone, Default)]
pub struct MemberRemoval {
    /// Digests of the keys revoked.
    pub digests: Vec<Digest>,
    /// OAuth clients disabled.
    pub client_ids: Vec<String>,
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

/// Which usage rows a usage query reads. Made by the usage use case after it resolved what the
/// caller may see: `org_id: None` only for the admin key asking deployment-wide.
#[derive(Debug, Clone, Default)]
pub struct UsageFilter {
    pub org_id: Option<String>,
    pub project_id: Option<String>,
    pub credential_id: Option<String>,
    pub service: Option<String>,
    pub outcome: Option<crate::domain::usage::Outcome>,
}

/// One credential's totals in a window (`usage_top`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialTotals {
    pub credential_id: String,
    pub org_id: String,
    pub project_id: String,
    pub requests: u64,
    pub refusals: u64,
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
    /// A service's resource URIs (or description) changed.
    Services,
    /// A grant of the authorization-code grant was revoked (or its member removed, its app
    /// blocked): tokens issued under it stop.
    Grants,
    /// Webhook deliveries were queued: every node's delivery worker may look at once. Storage
    /// publishes it itself, in the transaction that queues them (PostgreSQL `NOTIFY`).
    Webhooks,
    /// Not a change, and never published: the store's feed of other nodes' changes is down, so
    /// changes may be missed from now on (the runtime bounds how long caches are trusted).
    FeedLost,
    /// Not a change, and never published: the feed is back; anything may have changed meanwhile.
    FeedRestored,
}

/// One use of a one-time identifier (a client assertion's or a DPoP proof's `jti`, a platform
/// token's replay key) in the shared replay table: `scope` is whose it is (a client id, or a
/// namespaced issuer or key thumbprint), kept until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JtiUse {
    pub scope: String,
    pub jti: String,
    pub expires_at: OffsetDateTime,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `"sqlite"` or `"postgres"`.
    fn backend(&self) -> &'static str;
    /// Whether writes run on this process's own threads (an embedded database) rather than in
    /// a database server: the replay table's writer then gathers its batches before writing
    /// (`runtime/replay.rs`).
    fn writes_in_process(&self) -> bool {
        false
    }
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
        event: &NewEvent,
    ) -> Result<()>;

    // Organizations and projects.
    /// Creates an organization with its default project. A taken name is a conflict.
    async fn org_create(
        &self,
        org: &Org,
        default_project: &Project,
        event: &NewEvent,
    ) -> Result<()>;
    async fn org_list(&self) -> Result<Vec<Org>>;
    async fn org_get(&self, id: &str) -> Result<Option<Org>>;
    async fn project_create(&self, project: &Project, event: &NewEvent) -> Result<()>;
    async fn project_list(&self, org_id: &str) -> Result<Vec<Project>>;
    async fn project_get(&self, id: &str) -> Result<Option<Project>>;

    // Services (deployment-wide).
    async fn service_create(&self, service: &Service, event: &NewEvent) -> Result<()>;
    async fn service_list(&self) -> Result<Vec<Service>>;

    // Configuration-managed objects (`crate::domain::managed`).
    /// Every object a configuration file declares.
    async fn managed_list(&self) -> Result<Vec<ManagedObject>>;
    /// Marks an object as managed (`managed_by: Some`) or no longer (`None`), with its event.
    async fn managed_set(
        &self,
        kind: ManagedKind,
        id: &str,
        managed_by: Option<&str>,
        now: OffsetDateTime,
        event: &NewEvent,
    ) -> Result<()>;
    /// Writes a service's description and resource URIs (`NotFound` for an unknown id).
    async fn service_update(&self, service: &Service, event: &NewEvent) -> Result<()>;

    // Members.
    async fn member_create(&self, member: &Member, event: &NewEvent) -> Result<()>;
    async fn member_list(&self, org_id: &str) -> Result<Vec<Member>>;
    async fn member_get(&self, id: &str) -> Result<Option<Member>>;
    /// Changes a member's role if the member is still at `version`.
    async fn member_set_role(
        &self,
        id: &str,
        role: MemberRole,
        version: i64,
        event: &NewEvent,
    ) -> Result<()>;
    /// Removes a member (at `version`), revokes the keys they own, disables the OAuth clients
    /// they own, and ends their console sessions and password links, in one transaction.
    async fn member_delete(
        &self,
        id: &str,
        version: i64,
        now: OffsetDateTime,
        event: &NewEvent,
    ) -> Result<MemberRemoval>;

    // Roles.
    async fn role_create(&self, role: &Role, event: &NewEvent) -> Result<()>;
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
        event: &NewEvent,
    ) -> Result<()>;
    /// Keys matching `filter`, oldest first, after the cursor `after_seq`.
    async fn api_key_list(
        &self,
        filter: &KeyFilter,
        after_seq: Option<i64>,
        limit: i64,
    ) -> Result<Vec<ApiKey>>;
    async fn api_key_get(&self, id: &str) -> Result<Option<ApiKey>>;
    /// Writes the editable fields (name, description, scopes, roles, expiry, default mark) if
    /// the key is still at `key.version`; returns the key as stored (version bumped) and its
    /// digests.
    async fn api_key_update(&self, key: &ApiKey, event: &NewEvent)
        -> Result<(ApiKey, Vec<Digest>)>;
    /// Deactivates a key that is still at `version`.
    async fn api_key_deactivate(
        &self,
        id: &str,
        version: i64,
        at: OffsetDateTime,
        event: &NewEvent,
    ) -> Result<Vec<Digest>>;
    /// Adds `secret` as the current secret of a key still at `version` (its display `start`
    /// changes with it). Existing secrets are deleted, or with `old_expire_at` kept until then
    /// (never later than they would have expired anyway).
    async fn api_key_replace_secret(
        &self,
        key_id: &str,
        version: i64,
        secret: &KeySecret,
        start: &str,
        old_expire_at: Option<OffsetDateTime>,
        event: &NewEvent,
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
    /// Inserts a client with its first secret (none for a `private_key_jwt` client). A name
    /// taken in the project is a conflict.
    async fn client_create(
        &self,
        client: &OAuthClient,
        secret: Option<&ClientSecret>,
        event: &NewEvent,
    ) -> Result<()>;
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
    /// rotation policy, authentication method and keys) if the client is still at
    /// `client.version`; returns it as stored. A client that now authenticates with
    /// `private_key_jwt` keeps no secret: its secrets are deleted in the same transaction.
    async fn client_update(&self, client: &OAuthClient, event: &NewEvent) -> Result<OAuthClient>;
    /// Deletes a client (still at `version`) and its secrets.
    async fn client_delete(&self, client_id: &str, version: i64, event: &NewEvent) -> Result<()>;
    /// Adds a secret to a client still at `version`; with `old_expire_at`, the client's other
    /// secrets expire then (or earlier).
    async fn client_secret_add(
        &self,
        secret: &ClientSecret,
        version: i64,
        old_expire_at: Option<OffsetDateTime>,
        event: &NewEvent,
    ) -> Result<()>;
    /// Deletes one secret of a client still at `version` and moves the client's not-before;
    /// false if the client has no such secret.
    async fn client_secret_delete(
        &self,
        client_id: &str,
        secret_id: &str,
        version: i64,
        not_before: OffsetDateTime,
        event: &NewEvent,
    ) -> Result<bool>;
    /// The client and the id of the secret whose digest this is (a leaked-credential report
    /// names a secret, not its client), or `None`.
    async fn client_secret_find(&self, digest: &Digest) -> Result<Option<(String, String)>>;
    /// Adds batched use counts and last-used times: `(secret id, last used, uses)`.
    async fn client_secrets_used(&self, used: &[(String, OffsetDateTime, i64)]) -> Result<()>;
    /// Secrets under a rotation policy that have not been warned about yet, with their client.
    async fn client_secrets_unwarned(&self) -> Result<Vec<(OAuthClient, ClientSecret)>>;
    async fn client_secret_mark_warned(
        &self,
        secret_id: &str,
        at: OffsetDateTime,
        event: &NewEvent,
    ) -> Result<()>;

    // Signing keys and revoked tokens.
    async fn signing_keys(&self) -> Result<Vec<StoredSigningKey>>;
    /// Adds a key; every older key of the same algorithm leaves the JWKS at `retire_others_at`.
    async fn signing_key_add(
        &self,
        key: &StoredSigningKey,
        retire_others_at: OffsetDateTime,
        event: &NewEvent,
    ) -> Result<()>;
    /// Remembers a revoked token until it would have expired. Revoking twice is a no-op.
    async fn token_revoke(
        &self,
        jti: &str,
        client_id: &str,
        expires_at: OffsetDateTime,
        now: OffsetDateTime,
        event: &NewEvent,
    ) -> Result<()>;
    /// Records the `jti` of a client assertion (`private_key_jwt`) until `expires_at`, when no
    /// clock could still accept that assertion; false when the same client's `jti` is already
    /// recorded and live — a replay, whichever node saw it first. Like use counts, this is a
    /// record of use, not a change to a credential, so it has no activity event.
    async fn client_assertion_jti_use(
        &self,
        client_id: &str,
        jti: &str,
        expires_at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<bool> {
        let one = [JtiUse {
            scope: client_id.to_string(),
            jti: jti.to_string(),
            expires_at,
        }];
        Ok(self.client_assertion_jtis_use(&one, now).await?[0])
    }
    /// [`Store::client_assertion_jti_use`] for many at once, in one statement and one commit:
    /// the answer holds one flag per entry, in order. Within one call an entry repeated is
    /// fresh at most once (its first occurrence).
    async fn client_assertion_jtis_use(
        &self,
        uses: &[JtiUse],
        now: OffsetDateTime,
    ) -> Result<Vec<bool>>;
    /// Forgets assertion `jti`s past their expiry.
    async fn client_assertion_jtis_purge(&self, now: OffsetDateTime) -> Result<u64>;
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
    /// Records a checkpoint of the chain; one at a `seq` already recorded is ignored.
    async fn activity_checkpoint_add(&self, checkpoint: &Checkpoint) -> Result<()>;
    /// The newest checkpoint (highest `seq`).
    async fn activity_checkpoint_last(&self) -> Result<Option<Checkpoint>>;
    /// Checkpoints after `after_seq`, oldest first (for a full verification).
    async fn activity_checkpoints(&self, after_seq: i64, limit: i64) -> Result<Vec<Checkpoint>>;

    // Changes other nodes must learn of.
    /// Publishes an invalidation to other nodes (a no-op where there are none to tell).
    async fn publish(&self, change: &Invalidation) -> Result<()>;
    /// Calls `on_change` for every change another node publishes (from a background task).
    fn subscribe(&self, on_change: std::sync::Arc<dyn Fn(Invalidation) + Send + Sync>);

    /// At a clean stop, after the last write: SQLite copies its write-ahead log into the
    /// database file and closes, so that file alone holds everything; PostgreSQL does nothing.
    /// Storage is not used afterwards.
    async fn close(&self) -> Result<()>;

    /// Copies an embedded database's write-ahead log into its file, off the writer's path
    /// (SQLite; the server calls it every [`CHECKPOINT_EVERY_MS`]); a database server does
    /// this by itself.
    async fn checkpoint(&self) -> Result<()> {
        Ok(())
    }

    // The web console (see `crate::domain::console`).
    /// Sets (or replaces) a member's argon2id password hash and ends their sessions.
    async fn member_password_set(
        &self,
        member_id: &str,
        hash: &str,
        now: OffsetDateTime,
        event: &NewEvent,
    ) -> Result<()>;
    /// Members with this (lower-case) email that have a password, with its hash.
    async fn member_credentials(&self, email: &str) -> Result<Vec<(Member, String)>>;
    /// Stores a one-time password link; the member's earlier links are deleted.
    async fn console_link_create(&self, link: &PasswordLink, event: &NewEvent) -> Result<()>;
    async fn console_link_get(&self, digest: &Digest) -> Result<Option<PasswordLink>>;
    /// Uses a link up: deletes it and returns its member when it had not expired. Of two
    /// concurrent uses, one wins.
    async fn console_link_consume(
        &self,
        digest: &Digest,
        now: OffsetDateTime,
    ) -> Result<Option<String>>;
    async fn console_session_create(
        &self,
        session: &ConsoleSession,
        event: &NewEvent,
    ) -> Result<()>;
    async fn console_session_get(&self, digest: &Digest) -> Result<Option<ConsoleSession>>;
    /// Records the organization and project a session shows.
    async fn console_session_set_context(
        &self,
        digest: &Digest,
        org_id: Option<&str>,
        project_id: Option<&str>,
    ) -> Result<()>;
    /// Ends a session; with an event (a sign-out), records it in the same transaction.
    async fn console_session_delete(&self, digest: &Digest, event: Option<&NewEvent>)
        -> Result<()>;
    /// Moves a session to another member it proved at sign-in (and that member's organization).
    async fn console_session_set_member(
        &self,
        digest: &Digest,
        member_id: &str,
        org_id: &str,
    ) -> Result<()>;
    /// Forgets expired sessions and links.
    async fn console_sessions_purge(&self, now: OffsetDateTime) -> Result<u64>;

    // Apps (dynamic registration, client ID metadata documents) and the authorization-code
    // grant (`domain::apps`, `domain::authcode`).
    /// Stores an app, replacing one with the same client id (a refetched metadata document
    /// keeps its block and creation time); with an event, in the same transaction.
    async fn app_put(&self, app: &AppClient, event: Option<&NewEvent>) -> Result<()>;
    async fn app_get(&self, client_id: &str) -> Result<Option<AppClient>>;
    /// Apps by client id, after `after`.
    async fn app_list(&self, after: Option<&str>, limit: i64) -> Result<Vec<AppClient>>;
    /// Blocks an app (revoking every grant it holds) or unblocks it; false when unknown.
    async fn app_block(
        &self,
        client_id: &str,
        blocked: Option<(OffsetDateTime, String)>,
        event: &NewEvent,
    ) -> Result<bool>;
    /// The live grant of a person to an app at a resource.
    async fn grant_live_for(
        &self,
        member_id: &str,
        client_id: &str,
        resource: &str,
    ) -> Result<Option<Grant>>;
    async fn grant_get(&self, id: &str) -> Result<Option<Grant>>;
    /// Grants of an organization (of one member when given), live first, newest first.
    async fn grant_list(&self, org_id: &str, member_id: Option<&str>) -> Result<Vec<Grant>>;
    /// Creates the grant or widens it (its scopes and `updated_at`), and stores the code, with
    /// the event, in one transaction.
    async fn grant_save(&self, grant: &Grant, code: &AuthCode, event: &NewEvent) -> Result<()>;
    /// Revokes a grant and forgets its codes and refresh tokens; false when it was not live.
    async fn grant_revoke(
        &self,
        id: &str,
        now: OffsetDateTime,
        reason: &str,
        event: &NewEvent,
    ) -> Result<bool>;
    /// Records a grant's use (at most its time; a later one wins).
    async fn grant_touch(&self, id: &str, at: OffsetDateTime) -> Result<()>;
    /// Redeems a code: of two concurrent redemptions one is `Fresh`, the other `Reused`.
    async fn code_redeem(&self, digest: &Digest, now: OffsetDateTime) -> Result<CodeUse>;
    async fn refresh_put(&self, token: &RefreshToken) -> Result<()>;
    /// Uses a refresh token up when `client_id` is its client and, for a DPoP-bound one, `jkt`
    /// its key (else `Refused`, and it stays unused): of two concurrent uses one is `Fresh`,
    /// the other `Reused`.
    async fn refresh_redeem(
        &self,
        digest: &Digest,
        now: OffsetDateTime,
        client_id: &str,
        jkt: Option<&str>,
    ) -> Result<RefreshUse>;
    /// Forgets expired codes and refresh tokens.
    async fn authcode_purge(&self, now: OffsetDateTime) -> Result<u64>;

    // Usage analytics and rate limits (issue 15; `keyplane-store/src/usage.rs`).
    /// Adds counted requests to the minute and hour rows (an upsert that adds, so several
    /// nodes merge).
    async fn usage_add(&self, counts: &[crate::domain::usage::UsageCount]) -> Result<()>;
    /// `(bucket, outcome, count)` of the rows in buckets `first..end` of `granularity`.
    async fn usage_series(
        &self,
        filter: &UsageFilter,
        granularity: crate::domain::usage::Granularity,
        first: i64,
        end: i64,
    ) -> Result<Vec<(i64, crate::domain::usage::Outcome, u64)>>;
    /// The credentials with the most requests (or refusals) in hours `first..end`.
    async fn usage_top(
        &self,
        filter: &UsageFilter,
        first_hour: i64,
        end_hour: i64,
        by_refusals: bool,
        limit: i64,
    ) -> Result<Vec<CredentialTotals>>;
    /// Forgets minute rows before `minute` and hour rows before `hour`.
    async fn usage_purge(&self, minute: i64, hour: i64) -> Result<u64>;
    /// Adds to rate-limit window counts: `(counter, window_start_ms, window_end_ms, count)`.
    async fn rate_windows_add(&self, counts: &[(String, i64, i64, u64)]) -> Result<()>;
    /// Rate-limit windows still open at `now_ms`: `(counter, window_start_ms, count)`.
    async fn rate_windows_live(&self, now_ms: i64) -> Result<Vec<(String, i64, u64)>>;
    /// Forgets windows that ended before `now_ms`.
    async fn rate_windows_purge(&self, now_ms: i64) -> Result<u64>;
    // Webhooks (`domain::webhook`). Deliveries are queued by `activity_append` and every other
    // method that appends an event, for the organization's enabled endpoints whose patterns
    // match, in the same transaction.
    /// Inserts an endpoint (and its patterns). At most `limit` per organization.
    async fn webhook_create(
        &self,
        endpoint: &Endpoint,
        limit: usize,
        event: &NewEvent,
    ) -> Result<()>;
    async fn webhook_get(&self, id: &str) -> Result<Option<Endpoint>>;
    /// An organization's endpoints, oldest first.
    async fn webhook_list(&self, org_id: &str) -> Result<Vec<Endpoint>>;
    /// Writes an endpoint's URL, description, patterns, enabled flag and secrets; `NotFound`
    /// when it is gone. Enabling it again clears `failing_since`.
    async fn webhook_update(&self, endpoint: &Endpoint, event: &NewEvent) -> Result<()>;
    /// Deletes an endpoint and its deliveries; false when unknown.
    async fn webhook_delete(&self, id: &str, event: &NewEvent) -> Result<bool>;
    /// An endpoint's deliveries, newest first, before the delivery made at `before_ms`, each
    /// with its attempts (newest first).
    async fn webhook_deliveries(
        &self,
        endpoint_id: &str,
        before_ms: Option<i64>,
        limit: i64,
    ) -> Result<Vec<(Delivery, Vec<Attempt>)>>;
    /// Queues a delivery again for now (pending, its schedule restarted); false when the
    /// endpoint has no such delivery.
    async fn webhook_redeliver(
        &self,
        endpoint_id: &str,
        delivery_id: &str,
        now: OffsetDateTime,
        event: &NewEvent,
    ) -> Result<bool>;
    /// Claims up to `limit` due deliveries of enabled endpoints until `lease_until`: a claimed
    /// delivery is not claimed again (by any node) before its lease ends or its result is
    /// recorded. Counts the attempt.
    async fn webhook_claim(
        &self,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        limit: i64,
    ) -> Result<Vec<(Delivery, Endpoint)>>;
    /// Whether any delivery may be due at `now` (a cheap read before claiming).
    async fn webhook_due(&self, now: OffsetDateTime) -> Result<bool>;
    /// Records an attempt and its outcome; a success clears the endpoint's `failing_since`,
    /// a failure sets it when unset. With `disable`, the endpoint is disabled for sustained
    /// failure (its pending deliveries fail) and that event appended, in the same transaction.
    async fn webhook_record(
        &self,
        result: &DeliveryResult,
        disable: Option<&NewEvent>,
    ) -> Result<()>;

    /// Forgets delivered and failed deliveries (with their attempts) queued before `before`.
    async fn webhook_purge(&self, before: OffsetDateTime) -> Result<u64>;

    // Notices (`domain::webhook::NoticeKind`).
    /// Credentials a notice of `kind` at `threshold` days may be due for and that have not had
    /// it: keys expiring before `cutoff` (KeyExpiring), secrets made before `cutoff` or past
    /// their client's own policy (SecretRotationDue), keys unused since `cutoff` (KeyUnused).
    async fn notice_candidates(
        &self,
        kind: NoticeKind,
        threshold: i64,
        now: OffsetDateTime,
        cutoff: OffsetDateTime,
        limit: i64,
    ) -> Result<Vec<NoticeCandidate>>;
    /// Records that a notice was given, with its event; false (and nothing written) when it
    /// already was, by this node or another.
    async fn notice_record(
        &self,
        kind: NoticeKind,
        credential_id: &str,
        threshold: i64,
        event: &NewEvent,
    ) -> Result<bool>;
}
