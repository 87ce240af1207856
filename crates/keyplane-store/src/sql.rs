//! The SQL behind the store, written once and stamped out per backend by `impl_store!`.

use crate::authcode::split_scopes;
use async_trait::async_trait;
use keyplane_core::domain::activity::{event_hash, Checkpoint, GENESIS_HASH};
use keyplane_core::domain::apps::{AppAuth, AppClient, AppKind};
use keyplane_core::domain::authcode::{AuthCode, CodeUse, Grant, RefreshToken, RefreshUse};
use keyplane_core::domain::client_auth::AuthMethod;
use keyplane_core::domain::clock::{from_ms, to_ms};
use keyplane_core::domain::console::{ConsoleSession, PasswordLink};
use keyplane_core::domain::error::{Error, Result};
use keyplane_core::domain::ids::{DEFAULT_ORG_ID, DEFAULT_PROJECT_ID};
use keyplane_core::domain::jose::JwkSet;
use keyplane_core::domain::managed::{ManagedKind, ManagedObject};
use keyplane_core::domain::model::*;
use keyplane_core::domain::perm::{MemberRole, Permission};
use keyplane_core::domain::roles::builtin_roles;
use keyplane_core::domain::secret::Digest;
use keyplane_core::domain::token::Alg;
use keyplane_core::domain::usage::{Granularity, Outcome as UsageOutcome, UsageCount};
use keyplane_core::domain::webhook::{
    self, Attempt, Delivery, DeliveryResult, DeliveryState, Endpoint, NoticeCandidate, NoticeKind,
};
use keyplane_core::store::*;
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::Row;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

/// The PostgreSQL channel on which nodes tell each other which credentials changed.
pub const NOTIFY_CHANNEL: &str = "keyplane_invalidate";

fn db_err(e: sqlx::Error) -> Error {
    Error::Storage(Box::new(e))
}

fn unique_or(e: sqlx::Error, message: impl FnOnce() -> String) -> Error {
    if e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
    {
        Error::Conflict(message())
    } else {
        db_err(e)
    }
}

fn to_json<T: serde::Serialize>(list: &[T]) -> String {
    serde_json::to_string(list).expect("a list of strings or records serializes")
}

fn from_json(text: &str) -> Result<Vec<String>> {
    from_json_any(text)
}

fn from_json_any<T: serde::de::DeserializeOwned>(text: &str) -> Result<Vec<T>> {
    serde_json::from_str(text).map_err(|e| Error::Storage(Box::new(e)))
}

fn opt_time(ms: Option<i64>) -> Option<OffsetDateTime> {
    ms.map(from_ms)
}

fn corrupt(what: &str) -> Error {
    Error::Storage(format!("stored {what} is not valid").into())
}

macro_rules! key_cols {
    () => {
        "k.seq, k.id, k.org_id, k.project_id, k.owner_member_id, k.name, k.description, k.scopes, \
         k.roles, k.start, k.created_at, k.created_by, k.expires_at, k.last_used_at, k.is_active, \
         k.deactivated_at, k.default_for_service, k.version, k.may_act, k.rate_limits"
    };
}

/// An API key with one of its secrets and its owner's role (`api_key_lookup*`).
macro_rules! lookup_select {
    () => {
        concat!(
            "SELECT ",
            key_cols!(),
            ", s.digest AS s_digest, s.pepper_version AS s_pepper_version, s.created_at AS s_created_at, \
             s.expires_at AS s_expires_at, m.role AS owner_role \
             FROM api_key_secrets s JOIN api_keys k ON k.id = s.key_id \
             LEFT JOIN members m ON m.id = k.owner_member_id"
        )
    };
}

macro_rules! client_cols {
    () => {
        "seq, client_id, org_id, project_id, owner_member_id, name, description, scopes, access_token_ttl_seconds, \
         token_format, signing_alg, audience, secret_rotation_days, not_before, created_at, created_by, disabled_at, version, \
         token_endpoint_auth_method, jwks, jwks_uri, federated_credentials, dpop_bound_access_tokens, may_act, rate_limits"
    };
}

macro_rules! secret_cols {
    () => {
        "id, client_id, digest, pepper_version, start, created_at, expires_at, last_used_at, use_count, expiry_warned_at"
    };
}

macro_rules! event_cols {
    () => {
        "seq, id, at, org_id, actor, action, target, outcome, client_addr, user_agent, details, prev_hash, hash"
    };
}

/// Everything but the connection handling, for one backend. `$lock` is appended to the SELECT
/// that must serialize a transaction (` FOR UPDATE` on PostgreSQL; SQLite has one writer).
macro_rules! impl_store {
    ($ty:ty, $row:ty, $conn:ty, $backend:literal, $lock:literal, $skip:literal) => {
        impl $ty {
            authcode_rows!($row, $conn);
            authcode_store!($row, $conn);
            usage_store!($row, $conn);
            webhook_store!($row, $conn, $backend, $lock, $skip);

            fn org_row(r: &$row) -> Result<Org> {
                Ok(Org {
                    id: r.try_get("id").map_err(db_err)?,
                    name: r.try_get("name").map_err(db_err)?,
                    created_at: from_ms(r.try_get("created_at").map_err(db_err)?),
                    managed_by: None,
                })
            }

            fn project_row(r: &$row) -> Result<Project> {
                Ok(Project {
                    id: r.try_get("id").map_err(db_err)?,
                    org_id: r.try_get("org_id").map_err(db_err)?,
                    name: r.try_get("name").map_err(db_err)?,
                    created_at: from_ms(r.try_get("created_at").map_err(db_err)?),
                    managed_by: None,
                })
            }

            fn member_row(r: &$row) -> Result<Member> {
                let role: String = r.try_get("role").map_err(db_err)?;
                Ok(Member {
                    id: r.try_get("id").map_err(db_err)?,
                    org_id: r.try_get("org_id").map_err(db_err)?,
                    email: r.try_get("email").map_err(db_err)?,
                    name: r.try_get("name").map_err(db_err)?,
                    role: MemberRole::parse(&role).ok_or_else(|| corrupt("member role"))?,
                    created_at: from_ms(r.try_get("created_at").map_err(db_err)?),
                    managed_by: None,
                    version: r.try_get("version").map_err(db_err)?,
                })
            }

            fn role_row(r: &$row) -> Result<Role> {
                let perms: String = r.try_get("permissions").map_err(db_err)?;
                let scopes: String = r.try_get("scopes").map_err(db_err)?;
                Ok(Role {
                    id: r.try_get("id").map_err(db_err)?,
                    org_id: r.try_get("org_id").map_err(db_err)?,
                    name: r.try_get("name").map_err(db_err)?,
                    description: r.try_get("description").map_err(db_err)?,
                    permissions: from_json(&perms)?
                        .iter()
                        .map(|p| Permission::parse(p).ok_or_else(|| corrupt("permission")))
                        .collect::<Result<_>>()?,
                    scopes: from_json(&scopes)?,
                    created_at: from_ms(r.try_get("created_at").map_err(db_err)?),
                    managed_by: None,
                })
            }

            fn service_row(r: &$row) -> Result<Service> {
                let scopes: String = r.try_get("scopes").map_err(db_err)?;
                Ok(Service {
                    id: r.try_get("id").map_err(db_err)?,
                    name: r.try_get("name").map_err(db_err)?,
                    description: r.try_get("description").map_err(db_err)?,
                    scopes: from_json(&scopes)?,
                    resources: from_json(&r.try_get::<String, _>("resources").map_err(db_err)?)?,
                    created_at: from_ms(r.try_get("created_at").map_err(db_err)?),
                    managed_by: None,
                })
            }

            /// A key with its secret, its owner's role and its roles, from a row of
            /// `lookup_select!`; `roles` caches each organization's role list across rows.
            async fn lookup_row(
                &self,
                row: &$row,
                roles: &mut HashMap<String, Vec<Role>>,
            ) -> Result<KeyLookup> {
                let key = Self::key_row(row)?;
                let v: i64 = row.try_get("s_pepper_version").map_err(db_err)?;
                let digest: Vec<u8> = row.try_get("s_digest").map_err(db_err)?;
                let secret = KeySecret {
                    digest: Digest(
                        digest
                            .try_into()
                            .map_err(|_| corrupt("api key secret digest"))?,
                    ),
                    key_id: key.id.clone(),
                    pepper_version: v as u32,
                    created_at: from_ms(row.try_get("s_created_at").map_err(db_err)?),
                    expires_at: opt_time(row.try_get("s_expires_at").map_err(db_err)?),
                };
                let owner_role: Option<String> = row.try_get("owner_role").map_err(db_err)?;
                let key_roles = if key.roles.is_empty() {
                    vec![]
                } else {
                    if !roles.contains_key(&key.org_id) {
                        let list = self.role_list(&key.org_id).await?;
                        roles.insert(key.org_id.clone(), list);
                    }
                    roles[&key.org_id]
                        .iter()
                        .filter(|r| key.roles.contains(&r.name))
                        .cloned()
                        .collect()
                };
                Ok(KeyLookup {
                    owner_role: owner_role.as_deref().and_then(MemberRole::parse),
                    key,
                    secret,
                    roles: key_roles,
                })
            }

            fn key_row(r: &$row) -> Result<ApiKey> {
                let scopes: String = r.try_get("scopes").map_err(db_err)?;
                let roles: String = r.try_get("roles").map_err(db_err)?;
                Ok(ApiKey {
                    seq: r.try_get("seq").map_err(db_err)?,
                    id: r.try_get("id").map_err(db_err)?,
                    org_id: r.try_get("org_id").map_err(db_err)?,
                    project_id: r.try_get("project_id").map_err(db_err)?,
                    owner_member_id: r.try_get("owner_member_id").map_err(db_err)?,
                    name: r.try_get("name").map_err(db_err)?,
                    description: r.try_get("description").map_err(db_err)?,
                    scopes: from_json(&scopes)?,
                    roles: from_json(&roles)?,
                    start: r.try_get("start").map_err(db_err)?,
                    created_at: from_ms(r.try_get("created_at").map_err(db_err)?),
                    created_by: r.try_get("created_by").map_err(db_err)?,
                    expires_at: opt_time(r.try_get("expires_at").map_err(db_err)?),
                    last_used_at: opt_time(r.try_get("last_used_at").map_err(db_err)?),
                    is_active: r.try_get("is_active").map_err(db_err)?,
                    deactivated_at: opt_time(r.try_get("deactivated_at").map_err(db_err)?),
                    default_for_service: r.try_get("default_for_service").map_err(db_err)?,
                    may_act: from_json(&r.try_get::<String, _>("may_act").map_err(db_err)?)?,
                    rate_limits: from_json_any(&r.try_get::<String, _>("rate_limits").map_err(db_err)?)?,
                    version: r.try_get("version").map_err(db_err)?,
                })
            }

            fn client_row(r: &$row) -> Result<OAuthClient> {
                let scopes: String = r.try_get("scopes").map_err(db_err)?;
                let format: String = r.try_get("token_format").map_err(db_err)?;
                let alg: Option<String> = r.try_get("signing_alg").map_err(db_err)?;
                let method: String = r.try_get("token_endpoint_auth_method").map_err(db_err)?;
                let jwks: Option<String> = r.try_get("jwks").map_err(db_err)?;
                let federated: Option<String> = r.try_get("federated_credentials").map_err(db_err)?;
                Ok(OAuthClient {
                    seq: r.try_get("seq").map_err(db_err)?,
                    client_id: r.try_get("client_id").map_err(db_err)?,
                    org_id: r.try_get("org_id").map_err(db_err)?,
                    project_id: r.try_get("project_id").map_err(db_err)?,
                    owner_member_id: r.try_get("owner_member_id").map_err(db_err)?,
                    name: r.try_get("name").map_err(db_err)?,
                    description: r.try_get("description").map_err(db_err)?,
                    scopes: from_json(&scopes)?,
                    access_token_ttl_seconds: r.try_get("access_token_ttl_seconds").map_err(db_err)?,
                    token_format: TokenFormat::parse(&format).ok_or_else(|| corrupt("token format"))?,
                    signing_alg: match alg {
                        Some(a) => Some(Alg::parse(&a).ok_or_else(|| corrupt("signing algorithm"))?),
                        None => None,
                    },
                    audience: r.try_get("audience").map_err(db_err)?,
                    secret_rotation_days: r.try_get("secret_rotation_days").map_err(db_err)?,
                    auth_method: AuthMethod::parse(&method).ok_or_else(|| corrupt("client authentication method"))?,
                    jwks: match jwks {
                        Some(text) => Some(JwkSet::parse(text.as_bytes()).map_err(|_| corrupt("client JWK set"))?),
                        None => None,
                    },
                    jwks_uri: r.try_get("jwks_uri").map_err(db_err)?,
                    federated_credentials: match federated {
                        Some(text) => serde_json::from_str(&text).map_err(|_| corrupt("federated credentials"))?,
                        None => Vec::new(),
                    },
                    may_act: from_json(&r.try_get::<String, _>("may_act").map_err(db_err)?)?,
                    rate_limits: from_json_any(&r.try_get::<String, _>("rate_limits").map_err(db_err)?)?,
                    dpop_bound_access_tokens: r.try_get("dpop_bound_access_tokens").map_err(db_err)?,
                    not_before: opt_time(r.try_get("not_before").map_err(db_err)?),
                    created_at: from_ms(r.try_get("created_at").map_err(db_err)?),
                    created_by: r.try_get("created_by").map_err(db_err)?,
                    disabled_at: opt_time(r.try_get("disabled_at").map_err(db_err)?),
                    managed_by: None,
                    version: r.try_get("version").map_err(db_err)?,
                })
            }

            fn secret_row(r: &$row) -> Result<ClientSecret> {
                let digest: Vec<u8> = r.try_get("digest").map_err(db_err)?;
                let v: i64 = r.try_get("pepper_version").map_err(db_err)?;
                Ok(ClientSecret {
                    id: r.try_get("id").map_err(db_err)?,
                    client_id: r.try_get("client_id").map_err(db_err)?,
                    digest: Digest::from_slice(&digest).ok_or_else(|| corrupt("digest"))?,
                    pepper_version: v as u32,
                    start: r.try_get("start").map_err(db_err)?,
                    created_at: from_ms(r.try_get("created_at").map_err(db_err)?),
                    expires_at: opt_time(r.try_get("expires_at").map_err(db_err)?),
                    last_used_at: opt_time(r.try_get("last_used_at").map_err(db_err)?),
                    use_count: r.try_get("use_count").map_err(db_err)?,
                    expiry_warned_at: opt_time(r.try_get("expiry_warned_at").map_err(db_err)?),
                })
            }

            async fn insert_secret(conn: &mut $conn, s: &ClientSecret) -> Result<()> {
                sqlx::query(
                    "INSERT INTO oauth_client_secrets (id, client_id, digest, pepper_version, start, created_at, expires_at, \
                     last_used_at, use_count, expiry_warned_at) VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, 0, NULL)",
                )
                .bind(&s.id)
                .bind(&s.client_id)
                .bind(s.digest.0.to_vec())
                .bind(i64::from(s.pepper_version))
                .bind(&s.start)
                .bind(to_ms(s.created_at))
                .bind(s.expires_at.map(to_ms))
                .execute(&mut *conn)
                .await
                .map_err(db_err)?;
                Ok(())
            }

            fn event_row(r: &$row) -> Result<Event> {
                let outcome: String = r.try_get("outcome").map_err(db_err)?;
                Ok(Event {
                    seq: r.try_get("seq").map_err(db_err)?,
                    id: r.try_get("id").map_err(db_err)?,
                    at: from_ms(r.try_get("at").map_err(db_err)?),
                    org_id: r.try_get("org_id").map_err(db_err)?,
                    actor: r.try_get("actor").map_err(db_err)?,
                    action: r.try_get("action").map_err(db_err)?,
                    target: r.try_get("target").map_err(db_err)?,
                    outcome: Outcome::parse(&outcome).ok_or_else(|| corrupt("outcome"))?,
                    client_addr: r.try_get("client_addr").map_err(db_err)?,
                    user_agent: r.try_get("user_agent").map_err(db_err)?,
                    details: r.try_get("details").map_err(db_err)?,
                    prev_hash: r.try_get("prev_hash").map_err(db_err)?,
                    hash: r.try_get("hash").map_err(db_err)?,
                })
            }

            fn checkpoint_row(r: &$row) -> Result<Checkpoint> {
                let version: i64 = r.try_get("pepper_version").map_err(db_err)?;
                Ok(Checkpoint {
                    seq: r.try_get("seq").map_err(db_err)?,
                    hash: r.try_get("hash").map_err(db_err)?,
                    at: from_ms(r.try_get("at").map_err(db_err)?),
                    pepper_version: u32::try_from(version).map_err(|_| corrupt("pepper_version"))?,
                    mac: r.try_get("mac").map_err(db_err)?,
                })
            }

            /// Appends events to the chain inside the caller's transaction, so a change and its
            /// event commit together. The chain head is locked (PostgreSQL) or the writer is
            /// single (SQLite), so concurrent appends never fork it.
            async fn append_in(conn: &mut $conn, events: &[NewEvent]) -> Result<()> {
                if events.is_empty() {
                    return Ok(());
                }
                let head = sqlx::query(concat!("SELECT seq, hash FROM activity_head WHERE id = 1", $lock))
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(db_err)?;
                let (mut seq, mut prev): (i64, String) = match head {
                    Some(r) => (r.try_get("seq").map_err(db_err)?, r.try_get("hash").map_err(db_err)?),
                    None => (0, GENESIS_HASH.to_string()),
                };
                for e in events {
                    seq += 1;
                    let details = if e.details.is_null() { "{}".to_string() } else { e.details.to_string() };
                    let hash = event_hash(&prev, seq, e, &details);
                    sqlx::query(
                        "INSERT INTO activity_events (seq, id, at, org_id, actor, action, target, outcome, client_addr, \
                         user_agent, details, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                    )
                    .bind(seq)
                    .bind(&e.id)
                    .bind(to_ms(e.at))
                    .bind(&e.org_id)
                    .bind(&e.actor)
                    .bind(&e.action)
                    .bind(&e.target)
                    .bind(e.outcome.as_str())
                    .bind(&e.client_addr)
                    .bind(&e.user_agent)
                    .bind(&details)
                    .bind(&prev)
                    .bind(&hash)
                    .execute(&mut *conn)
                    .await
                    .map_err(db_err)?;
                    Self::webhook_outbox_in(conn, e).await?;
                    prev = hash;
                }
                sqlx::query(
                    "INSERT INTO activity_head (id, seq, hash) VALUES (1, $1, $2) \
                     ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
                )
                .bind(seq)
                .bind(&prev)
                .execute(&mut *conn)
                .await
                .map_err(db_err)?;
                Ok(())
            }


            /// A credential's owner must still be a member of its organization when it is made:
            /// the member's row is locked (PostgreSQL), so a concurrent removal either comes
            /// first (and the creation is refused) or after (and takes the new credential too).
            async fn owner_exists(conn: &mut $conn, org_id: &str, owner: Option<&str>) -> Result<()> {
                let Some(owner) = owner else { return Ok(()) };
                let found = sqlx::query(concat!("SELECT id FROM members WHERE id = $1 AND org_id = $2", $lock))
                    .bind(owner)
                    .bind(org_id)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(db_err)?;
                match found {
                    Some(_) => Ok(()),
                    None => Err(Error::invalid("owner_member_id", "no such member in this organization")),
                }
            }

            /// Who may act for the client (RFC 8693) and its rate limits, written with the
            /// client's row.
            async fn set_may_act(conn: &mut $conn, c: &OAuthClient) -> Result<()> {
                sqlx::query("UPDATE oauth_clients SET may_act = $2, rate_limits = $3 WHERE client_id = $1")
                    .bind(&c.client_id)
                    .bind(to_json(&c.may_act))
                    .bind(to_json(&c.rate_limits))
                    .execute(&mut *conn)
                    .await
                    .map_err(db_err)?;
                Ok(())
            }

            async fn key_digests(
                conn: &mut $conn,
                key_id: &str,
            ) -> Result<Vec<Digest>> {
                let rows = sqlx::query("SELECT digest FROM api_key_secrets WHERE key_id = $1")
                    .bind(key_id)
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(db_err)?;
                rows.iter()
                    .map(|r| {
                        let b: Vec<u8> = r.try_get("digest").map_err(db_err)?;
                        Digest::from_slice(&b).ok_or_else(|| corrupt("digest"))
                    })
                    .collect()
            }
        }

        #[async_trait]
        impl Store for $ty {
            async fn webhook_create(&self, endpoint: &Endpoint, limit: usize, event: &NewEvent) -> Result<()> {
                self.wh_create(endpoint, limit, event).await
            }
            async fn webhook_get(&self, id: &str) -> Result<Option<Endpoint>> {
                self.wh_get(id).await
            }
            async fn webhook_list(&self, org_id: &str) -> Result<Vec<Endpoint>> {
                self.wh_list(org_id).await
            }
            async fn webhook_update(&self, endpoint: &Endpoint, event: &NewEvent) -> Result<()> {
                self.wh_update(endpoint, event).await
            }
            async fn webhook_delete(&self, id: &str, event: &NewEvent) -> Result<bool> {
                self.wh_delete(id, event).await
            }
            async fn webhook_deliveries(
                &self,
                endpoint_id: &str,
                before_ms: Option<i64>,
                limit: i64,
            ) -> Result<Vec<(Delivery, Vec<Attempt>)>> {
                self.wh_deliveries(endpoint_id, before_ms, limit).await
            }
            async fn webhook_redeliver(
                &self,
                endpoint_id: &str,
                delivery_id: &str,
                now: OffsetDateTime,
                event: &NewEvent,
            ) -> Result<bool> {
                self.wh_redeliver(endpoint_id, delivery_id, now, event).await
            }
            async fn webhook_claim(
                &self,
                now: OffsetDateTime,
                lease_until: OffsetDateTime,
                limit: i64,
            ) -> Result<Vec<(Delivery, Endpoint)>> {
                self.wh_claim(now, lease_until, limit).await
            }
            async fn webhook_purge(&self, before: OffsetDateTime) -> Result<u64> {
                self.wh_purge(before).await
            }
            async fn webhook_due(&self, now: OffsetDateTime) -> Result<bool> {
                self.wh_due(now).await
            }
            async fn webhook_record(&self, result: &DeliveryResult, disable: Option<&NewEvent>) -> Result<()> {
                self.wh_record(result, disable).await
            }
            async fn notice_candidates(
                &self,
                kind: NoticeKind,
                threshold: i64,
                now: OffsetDateTime,
                cutoff: OffsetDateTime,
                limit: i64,
            ) -> Result<Vec<NoticeCandidate>> {
                self.wh_notice_candidates(kind, threshold, now, cutoff, limit).await
            }
            async fn notice_record(
                &self,
                kind: NoticeKind,
                credential_id: &str,
                threshold: i64,
                event: &NewEvent,
            ) -> Result<bool> {
                self.wh_notice_record(kind, credential_id, threshold, event).await
            }
            async fn app_put(&self, app: &AppClient, event: Option<&NewEvent>) -> Result<()> {
                self.db_app_put(app, event).await
            }
            async fn app_get(&self, client_id: &str) -> Result<Option<AppClient>> {
                self.db_app_get(client_id).await
            }
            async fn app_list(&self, after: Option<&str>, limit: i64) -> Result<Vec<AppClient>> {
                self.db_app_list(after, limit).await
            }
            async fn app_block(&self, client_id: &str, blocked: Option<(OffsetDateTime, String)>, event: &NewEvent) -> Result<bool> {
                self.db_app_block(client_id, blocked, event).await
            }
            async fn grant_live_for(&self, member_id: &str, client_id: &str, resource: &str,) -> Result<Option<Grant>> {
                self.db_grant_live_for(member_id, client_id, resource).await
            }
            async fn grant_get(&self, id: &str) -> Result<Option<Grant>> {
                self.db_grant_get(id).await
            }
            async fn grant_list(&self, org_id: &str, member_id: Option<&str>) -> Result<Vec<Grant>> {
                self.db_grant_list(org_id, member_id).await
            }
            async fn grant_save(&self, grant: &Grant, code: &AuthCode, event: &NewEvent) -> Result<()> {
                self.db_grant_save(grant, code, event).await
            }
            async fn grant_revoke(&self, id: &str, now: OffsetDateTime, reason: &str, event: &NewEvent) -> Result<bool> {
                self.db_grant_revoke(id, now, reason, event).await
            }
            async fn grant_touch(&self, id: &str, at: OffsetDateTime) -> Result<()> {
                self.db_grant_touch(id, at).await
            }
            async fn code_redeem(&self, digest: &Digest, now: OffsetDateTime) -> Result<CodeUse> {
                self.db_code_redeem(digest, now).await
            }
            async fn refresh_put(&self, token: &RefreshToken) -> Result<()> {
                self.db_refresh_put(token).await
            }
            async fn refresh_redeem(&self, digest: &Digest, now: OffsetDateTime, client_id: &str, jkt: Option<&str>) -> Result<RefreshUse> {
                self.db_refresh_redeem(digest, now, client_id, jkt).await
            }
            async fn authcode_purge(&self, now: OffsetDateTime) -> Result<u64> {
                self.db_authcode_purge(now).await
            }
            async fn usage_add(&self, counts: &[UsageCount]) -> Result<()> {
                self.db_usage_add(counts).await
            }
            async fn usage_series(&self, filter: &UsageFilter, granularity: Granularity, first: i64, end: i64) -> Result<Vec<(i64, UsageOutcome, u64)>> {
                self.db_usage_series(filter, granularity, first, end).await
            }
            async fn usage_top(&self, filter: &UsageFilter, first: i64, end: i64, by_refusals: bool, limit: i64) -> Result<Vec<CredentialTotals>> {
                self.db_usage_top(filter, first, end, by_refusals, limit).await
            }
            async fn usage_purge(&self, minute: i64, hour: i64) -> Result<u64> {
                self.db_usage_purge(minute, hour).await
            }
            async fn rate_windows_add(&self, counts: &[(String, i64, i64, u64)]) -> Result<()> {
                self.db_rate_windows_add(counts).await
            }
            async fn rate_windows_live(&self, now_ms: i64) -> Result<Vec<(String, i64, u64)>> {
                self.db_rate_windows_live(now_ms).await
            }
            async fn rate_windows_purge(&self, now_ms: i64) -> Result<u64> {
                self.db_rate_windows_purge(now_ms).await
            }

            fn backend(&self) -> &'static str {
                $backend
            }

            fn writes_in_process(&self) -> bool {
                // SQLite runs in sqlx's worker thread, in this process.
                $backend == "sqlite"
            }

            async fn ping(&self) -> Result<()> {
                sqlx::query("SELECT 1").execute(self.r()).await.map_err(db_err)?;
                Ok(())
            }

            async fn ensure_defaults(&self, now: OffsetDateTime) -> Result<()> {
                let mut tx = self.w().begin().await.map_err(db_err)?;
                sqlx::query("INSERT INTO orgs (id, name, created_at) VALUES ($1, 'default', $2) ON CONFLICT DO NOTHING")
                    .bind(DEFAULT_ORG_ID)
                    .bind(to_ms(now))
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                sqlx::query("INSERT INTO projects (id, org_id, name, created_at) VALUES ($1, $2, 'default', $3) ON CONFLICT DO NOTHING")
                    .bind(DEFAULT_PROJECT_ID)
                    .bind(DEFAULT_ORG_ID)
                    .bind(to_ms(now))
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                for role in builtin_roles(now) {
                    let perms: Vec<String> = role.permissions.iter().map(|p| p.as_str().to_string()).collect();
                    sqlx::query(
                        "INSERT INTO roles (id, org_id, name, description, permissions, scopes, created_at) \
                         VALUES ($1, NULL, $2, $3, $4, $5, $6) \
                         ON CONFLICT (id) DO UPDATE SET description = excluded.description, permissions = excluded.permissions",
                    )
                    .bind(&role.id)
                    .bind(&role.name)
                    .bind(&role.description)
                    .bind(to_json(&perms))
                    .bind(to_json(&role.scopes))
                    .bind(to_ms(now))
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                }
                sqlx::query("INSERT INTO activity_head (id, seq, hash) VALUES (1, 0, $1) ON CONFLICT DO NOTHING")
                    .bind(GENESIS_HASH)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                tx.commit().await.map_err(db_err)
            }

            async fn admin_key_get(&self) -> Result<Option<(Digest, u32)>> {
                let row = sqlx::query("SELECT digest, pepper_version FROM admin_keys WHERE id = 1")
                    .fetch_optional(self.r())
                    .await
                    .map_err(db_err)?;
                row.map(|r| {
                    let b: Vec<u8> = r.try_get("digest").map_err(db_err)?;
                    let v: i64 = r.try_get("pepper_version").map_err(db_err)?;
                    Ok((Digest::from_slice(&b).ok_or_else(|| corrupt("digest"))?, v as u32))
                })
                .transpose()
            }

            async fn admin_key_set(&self, digest: Digest, pepper_version: u32, now: OffsetDateTime, event: &NewEvent) -> Result<()> {
                let mut tx = self.w().begin().await.map_err(db_err)?;
                sqlx::query(
                    "INSERT INTO admin_keys (id, digest, pepper_version, created_at) VALUES (1, $1, $2, $3) \
                     ON CONFLICT (id) DO UPDATE SET digest = excluded.digest, pepper_version = excluded.pepper_version, created_at = excluded.created_at",
                )
                .bind(digest.0.to_vec())
                .bind(i64::from(pepper_version))
                .bind(to_ms(now))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                Self::append_in(&mut tx, std::slice::from_ref(event)).await?;
                tx.commit().await.map_err(db_err)
            }

            async fn org_create(&self, org: &Org, project: &Project, event: &NewEvent) -> Result<()> {
                let mut tx = self.w().begin().await.map_err(db_err)?;
                sqlx::query("INSERT INTO orgs (id, name, created_at) VALUES ($1, $2, $3)")
                    .bind(&org.id)
                    .bind(&org.name)
                    .bind(to_ms(org.created_at))
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| unique_or(e, || format!("an organization named `{}` already exists", org.name)))?;
                sqlx::query("INSERT INTO projects (id, org_id, name, created_at) VALUES ($1, $2, $3, $4)")
                    .bind(&project.id)
                    .bind(&project.org_id)
                    .bind(&project.name)
                    .bind(to_ms(project.created_at))
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                Self::append_in(&mut tx, std::slice::from_ref(event)).await?;
                tx.commit().await.map_err(db_err)
            }

            async fn org_list(&self) -> Result<Vec<Org>> {
                let rows = sqlx::query("SELECT id, name, created_at FROM orgs ORDER BY created_at, id")
                    .fetch_all(self.r())
                    .await
                    .map_err(db_err)?;
                rows.iter().map(Self::org_row).collect()
            }

            async fn org_get(&self, id: &str) -> Result<Option<Org>> {
                let row = sqlx::query("SELECT id, name, created_at FROM orgs WHERE id = $1")
                    .bind(id)
                    .fetch_optional(self.r())
                    .await
                    .map_err(db_err)?;
                row.as_ref().map(Self::org_row).transpose()
            }

            async fn project_create(&self, p: &Project, event: &NewEvent) -> Result<()> {
                let mut tx = self.w().begin().await.map_err(db_err)?;
                sqlx::query("INSERT INTO projects (id, org_id, name, created_at) VALUES ($1, $2, $3, $4)")
                    .bind(&p.id)
                    .bind(&p.org_id)
                    .bind(&p.name)
                    .bind(to_ms(p.created_at))
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| unique_or(e, || format!("a project named `{}` already exists in this organization", p.name)))?;
                Self::append_in(&mut tx, std::slice::from_ref(event)).await?;
                tx.commit().await.map_err(db_err)
            }

            async fn project_list(&self, org_id: &str) -> Result<Vec<Project>> {
                let rows = sqlx::query("SELECT id, org_id, name, created_at FROM projects WHERE org_id = $1 ORDER BY created_at, id")
                    .bind(org_id)
                    .fetch_all(self.r())
                    .await
                    .map_err(db_err)?;
                rows.iter().map(Self::project_row).collect()
            }

            async fn project_get(&self, id: &str) -> Result<Option<Project>> {
                let row = sqlx::query("SELECT id, org_id, name, created_at FROM projects WHERE id = $1")
                    .bind(id)
                    .fetch_optional(self.r())
                    .await
                    .map_err(db_err)?;
                row.as_ref().map(Self::project_row).transpose()
            }

            async fn service_create(&self, s: &Service, event: &NewEvent) -> Result<()> {
                let mut tx = self.w().begin().await.map_err(db_err)?;
                sqlx::query("INSERT INTO services (id, name, description, scopes, created_at, resources) VALUES ($1, $2, $3, $4, $5, $6)")
                    .bind(&s.id)
                    .bind(&s.name)
                    .bind(&s.description)
                    .bind(to_json(&s.scopes))
                    .bind(to_ms(s.created_at))
                    .bind(to_json(&s.resources))
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| unique_or(e, || format!("a service named `{}` already exists", s.name)))?;
                Self::append_in(&mut tx, std::slice::from_ref(event)).await?;
                tx.commit().await.map_err(db_err)
            }

            async fn service_update(&self, s: &Service, event: &NewEvent) -> Result<()> {
                let mut tx = self.w().begin().await.map_err(db_err)?;
                let done = sqlx::query("UPDATE services SET description = $2, resources = $3 WHERE id = $1")
                    .bind(&s.id)
                    .bind(&s.description)
                    .bind(to_json(&s.resources))
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                if done.rows_affected() == 0 {
                    return Err(Error::NotFound("service"));
                }
                Self::append_in(&mut tx, std::slice::from_ref(event)).await?;
                tx.commit().await.map_err(db_err)
            }

            async fn service_list(&self) -> Result<Vec<Service>> {
                let rows = sqlx::query("SELECT id, name, description, scopes, created_at, resources FROM services ORDER BY name")
                    .fetch_all(self.r())
                    .await
                    .map_err(db_err)?;
                rows.iter().map(Self::service_row).collect()
            }

            async fn managed_list(&self) -> Result<Vec<ManagedObject>> {
                let rows = sqlx::query("SELECT kind, object_id, managed_by FROM config_managed ORDER BY kind, object_id")
                    .fetch_all(self.r())
                    .await
                    .map_err(db_err)?;
                rows.iter()
                    .map(|r| {
                        let kind: String = r.try_get("kind").map_err(db_err)?;
                        Ok(ManagedObject {
                            kind: ManagedKind::parse(&kind).ok_or_else(|| corrupt("managed object kind"))?,
                            id: r.try_get("object_id").map_err(db_err)?,
                            managed_by: r.try_get("managed_by").map_err(db_err)?,
                        })
                    })
                    .collect()
            }

            async fn managed_set(&self, kind: ManagedKind, id: &str, managed_by: Option<&str>, now: OffsetDateTime, event: &NewEvent) -> Result<()> {
                let mut tx = self.w().begin().await.map_err(db_err)?;
                match managed_by {
                    Some(by) => sqlx::query("INSERT INTO config_managed (kind, object_id, managed_by, marked_at) VALUES ($1, $2, $3, $4) \
                                             ON CONFLICT (kind, object_id) DO UPDATE SET managed_by = excluded.managed_by")
                        .bind(kind.as_str())
                        .bind(id)
                        .bind(by)
                        .bind(to_ms(now))
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?,
                    None => sqlx::query("DELETE FROM config_managed WHERE kind = $1 AND object_id = $2")
                        .bind(kind.as_str())
                        .bind(id)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?,
                };
                Self::append_in(&mut tx, std::slice::from_ref(event)).await?;
                tx.commit().await.map_err(db_err)
            }

            async fn member_create(&self, m: &Member, event: &NewEvent) -> Result<()> {
                let mut tx = self.w().begin().await.map_err(db_err)?;
                sqlx::query("INSERT INTO members (id, org_id, email, name, role, created_at, version) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                    .bind(&m.id)
                    .bind(&m.org_id)
                    .bind(&m.email)
                    .bind(&m.name)
                    .bind(m.role.as_str())
                    .bind(to_ms(m.created_at))
                    .bind(m.version)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| unique_or(e, || format!("`{}` is already a member of this organization", m.email)))?;
                Self::append_in(&mut tx, std::slice::from_ref(event)).await?;
                tx.commit().await.map_err(db_err)
            }

            async fn member_list(&self, org_id: &str) -> Result<Vec<Member>> {
                let rows = sqlx::query("SELECT id, org_id, email, name, role, created_at, version FROM members WHERE org_id = $1 ORDER BY created_at, id")
                    .bind(org_id)
                    .fetch_all(self.r())
                    .await
                    .map_err(db_err)?;
                rows.iter().map(Self::member_row).collect()
            }

            async fn member_get(&self, id: &str) -> Result<Option<Member>> {
                let row = sqlx::query("SELECT id, org_id, email, name, role, created_at, version FROM members WHERE id = $1")
                    .bind(id)
                    .fetch_optional(self.r())
                    .await
                    .map_err(db_err)?;
                row.as_ref().map(Self::member_row).transpose()
            }

            async fn member_set_role(&self, id: &str, role: MemberRole, version: i64, event: &NewEvent) -> Result<()> {
                let mut tx = self.w().begin().await.map_err(db_err)?;
                let done = sqlx::query("UPDATE members SET role = $2, version = version + 1 WHERE id = $1 AND version = $3")
                    .bind(id)
                    .bind(role.as_str())
                    .bind(version)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                if done.rows_affected() == 0 {
                    return Err(Error::VersionConflict("member"));
                }
                Self::append_in(&mut tx, std::slice::from_ref(event)).await?;
                tx.commit().await.map_err(db_err)
            }

            async fn member_delete(&self, id: &str, version: i64, now: OffsetDateTime, event: &NewEvent) -> Result<MemberRemoval> {
                let mut tx = self.w().begin().await.map_err(db_err)?;
                // The version check first: it also locks the member's row for the rest.
                let done = sqlx::query("UPDATE members SET version = version + 1 WHERE id = $1 AND version = $2")
                    .bind(id)
                    .bind(version)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                if done.rows_affected() == 0 {
                    return Err(Error::VersionConflict("member"));
                }
                let keys = sqlx::query("SELECT id FROM api_keys WHERE owner_member_id = $1")
                    .bind(id)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(db_err)?;
                let mut digests = Vec::new();
                for k in &keys {
                    let key_id: String = k.try_get("id").map_err(db_err)?;
                    digests.extend(Self::key_digests(&mut *tx, &key_id).await?);
                }
                sqlx::query(
                    "UPDATE api_keys SET is_active = $2, default_for_service = NULL, version = version + 1, \
                     deactivated_at = COALESCE(deactivated_at, $3) WHERE owner_member_id = $1",
                )
                .bind(id)
                .bind(false)
                .bind(to_ms(now))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                let clients = sqlx::query(
                    "UPDATE oauth_clients SET disabled_at = COALESCE(disabled_at, $2), version = version + 1 \
                     WHERE owner_member_id = $1 RETURNING client_id",
                )
                .bind(id)
                .bind(to_ms(now))
                .fetch_all(&mut *tx)
                .await
                .map_err(db_err)?;
                let client_ids = clients
                    .iter()
                    .map(|r| r.try_get("client_id").map_err(db_err))
                    .collect::<Result<Vec<String>>>()?;
                for q in [
                    "DELETE FROM console_sessions WHERE member_id = $1",
                    "DELETE FROM console_links WHERE member_id = $1",
                    "DELETE FROM member_passwords WHERE member_id = $1",
                    "DELETE FROM members WHERE id = $1",
                ] {
                    sqlx::query(q)
                        .bind(id)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                }
                Self::append_in(&mut tx, std::slice::from_ref(event)).await?;
                tx.commit().await.map_err(db_err)?;
                Ok(MemberRemoval { digests, client_ids })
            }

            async fn role_create(&self, role: &Role, event: &NewEvent) -> Result<()> {
                let mut tx = self.w().begin().await.map_err(db_err)?;
                let perms: Vec<String> = role.permissions.iter().map(|p| p.as_str().to_string()).collect();
                sqlx::query(
                    "INSERT INTO roles (id, org_id, name, description, permissions, scopes, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(&role.id)
                .bind(&role.org_id)
                .bind(&role.name)
                .bind(&role.description)
                .bind(to_json(&perms))
                .bind(to_json(&role.scopes))
                .bind(to_ms(role.created_at))
                .execute(&mut *tx)
                .await
                .map_err(|e| unique_or(e, || format!("a role named `{}` already exists", role.name)))?;
                Self::append_in(&mut tx, std::slice::from_ref(event)).await?;
                tx.commit().await.map_err(db_err)
            }

            async fn role_list(&self, org_id: &str) -> Result<Vec<Role>> {
                let rows = sqlx::query(
                    "SELECT id, org_id, name, description, permissions, scopes, created_at FROM roles \
                     WHERE org_id IS NULL OR org_id = $1 ORDER BY name",
                )
                .bind(org_id)
                .fetch_all(self.r())
                .await
                .map_err(db_err)?;
                rows.iter().map(Self::role_row).collect()
            }

            async fn api_key_create(
                &self,
                key: &ApiKey,
                secret: &KeySecret,
                active_limit: Option<i64>,
                now: OffsetDateTime,
                event: &NewEvent,
            ) -> Result<()> {
                let mut tx = self.w().begin().await.map_err(db_err)?;
                // Serializes key creation per organization, so the limit holds under concurrency.
                sqlx::query(concat!("SELECT id FROM orgs WHERE id = $1", $lock))
                    .bind(&key.org_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_err)?;
                Self::owner_exists(&mut tx, &key.org_id, key.owner_member_id.as_deref()).await?;
                if let Some(limit) = active_limit {
                    let active: i64 = sqlx::query_scalar(
                        "SELECT COUNT(*) FROM api_keys WHERE org_id = $1 AND is_active \
                         AND (expires_at IS NULL OR expires_at > $2)",
                    )
                    .bind(&key.org_id)
                    .bind(to_ms(now))
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db_err)?;
                    if active >= limit {
                        return Err(Error::LimitExceeded(format!(
                            "this organization already has {active} active API keys, the most it may have ({limit}); revoke one first"
                        )));
                    }
                }
                if let Some(service) = &key.default_for_service {
                    sqlx::query(
                        "UPDATE api_keys SET default_for_service = NULL, version = version + 1 \
                         WHERE project_id = $1 AND default_for_service = $2",
                    )
                        .bind(&key.project_id)
                        .bind(service)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                }
                sqlx::query(
                    "INSERT INTO api_keys (id, org_id, project_id, owner_member_id, name, description, scopes, roles, \
                     start, created_at, created_by, expires_at, last_used_at, is_active, deactivated_at, default_for_service, version, may_act, rate_limits) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, NULL, $13, NULL, $14, $15, $16, $17)",
                )
                .bind(&key.id)
                .bind(&key.org_id)
                .bind(&key.project_id)
                .bind(&key.owner_member_id)
                .bind(&key.name)
                .bind(&key.description)
                .bind(to_json(&key.scopes))
                .bind(to_json(&key.roles))
                .bind(&key.start)
                .bind(to_ms(key.created_at))
                .bind(&key.created_by)
                .bind(key.expires_at.map(to_ms))
                .bind(key.is_active)
                .bind(&key.default_for_service)
                .bind(key.version)
                .bind(to_json(&key.may_act))
                .bind(to_json(&key.rate_limits))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                sqlx::query(
                    "INSERT INTO api_key_secrets (digest, key_id, pepper_version, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(secret.digest.0.to_vec())
                .bind(&secret.key_id)
                .bind(i64::from(secret.pepper_version))
                .bind(to_ms(secret.created_at))
                .bind(secret.expires_at.map(to_ms))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                Self::append_in(&mut tx, std::slice::from_ref(event)).await?;
                tx.commit().await.map_err(db_err)
            }

            async fn api_key_list(&self, f: &KeyFilter, after_seq: Option<i64>, limit: i64) -> Result<Vec<ApiKey>> {
                let rows = sqlx::query(concat!(
                    "SELECT ",
                    key_cols!(),
                    " FROM api_keys k WHERE k.org_id = $1 AND ($2 IS NULL OR k.owner_member_id = $2) \
                     AND ($3 IS NULL OR k.project_id = $3) AND ($4 OR k.is_active) AND k.seq > $5 \
                     ORDER BY k.seq LIMIT $6"
                ))
                .bind(f.org_id())
                .bind(f.owner_member_id())
                .bind(f.project_id())
                .bind(f.include_inactive())
                .bind(after_seq.unwrap_or(0))
                .bind(limit)
                .fetch_all(self.r())
                .await
                .map_err(db_err)?;
                rows.iter().map(Self::key_row).collect()
            }

            async fn api_key_get(&self, id: &str) -> Result<Option<ApiKey>> {
                let row = sqlx::query(concat!("SELECT ", key_cols!(), " FROM api_keys k WHERE k.id = $1"))
                    .bind(id)
                    .fetch_optional(self.r())
                    .await
                    .map_err(db_err)?;
                row.as_ref().map(Self::key_row).transpose()
            }

            async fn api_key_update(&self, key: &ApiKey, event: &NewEvent) -> Result<(ApiKey, Vec<Digest>)> {
                let mut tx = self.w().begin().await.map_err(db_err)?;
                // The version check first: it takes the row's lock (PostgreSQL) before anything else.
                let done = sqlx::query(
                    "UPDATE api_keys SET version = version + 1 WHERE id = $1 AND version = $2 AND is_active",
                )
                .bind(&key.id)
                .bind(key.version)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                if done.rows_affected() == 0 {
                    return Err(Error::VersionConflict("API key"));
                }
                // Taking the default mark from another key changes that key too.
                if let Some(service) = &key.default_for_service {
                    sqlx::query(
                        "UPDATE api_keys SET default_for_service = NULL, version = version + 1 \
                         WHERE project_id = $1 AND default_for_service = $2 AND id <> $3",
                    )
                    .bind(&key.project_id)
                    .bind(service)
                    .bind(&key.id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                }
                sqlx::query(
                    "UPDATE api_keys SET name = $2, description = $3, scopes = $4, roles = $5, expires_at = $6, \
                     default_for_service = $7, may_act = $8, rate_limits = $9 WHERE id = $1",
                )
                .bind(&key.id)
                .bind(&key.name)
                .bind(&key.description)
                .bind(to_json(&key.scopes))
                .bind(to_json(&key.roles))
                .bind(key.expires_at.map(to_ms))
                .bind(&key.default_for_service)
                .bind(to_json(&key.may_act))
                .bind(to_json(&key.rate_limits))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                let digests = Self::key_digests(&mut *tx, &key.id).await?;
                let row = sqlx::query(concat!("SELECT ", key_cols!(), " FROM api_keys k WHERE k.id = $1"))
                    .bind(&key.id)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db_err)?;
                let stored = Self::key_row(&row)?;
                Self::append_in(&mut tx, std::slice::from_ref(event)).await?;
                tx.commit().await.map_err(db_err)?;
                Ok((stored, digests))
            }

            async fn api_key_deactivate(&self, id: &str, version: i64, at: OffsetDateTime, event: &NewEvent) -> Result<Vec<Digest>> {
                let mut tx = self.w().begin().await.map_err(db_err)?;
                let done = sqlx::query(
                    "UPDATE api_keys SET is_active = $2, default_for_service = NULL, version = version + 1, \
                     deactivated_at = COALESCE(deactivated_at, $3) WHERE id = $1 AND version = $4",
                )
                .bind(id)
                .bind(false)
                .bind(to_ms(at))
                .bind(version)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                if done.rows_affected() == 0 {
                    return Err(Error::VersionConflict("API key"));
                }
                let digests = Self::key_digests(&mut *tx, id).await?;
                Self::append_in(&mut tx, std::slice::from_ref(event)).await?;
                tx.commit().await.map_err(db_err)?;
                Ok(digests)
            }

            async fn api_key_replace_secret(
                &self,
                key_id: &str,
                version: i64,
                secret: &KeySecret,
                start: &str,
                old_expire_at: Option<OffsetDateTime>,
                event: &NewEvent,
            ) -> Result<Vec<Digest>> {
                let mut tx = self.w().begin().await.map_err(db_err)?;
                // The versioned write first: concurrent rotations serialize on the row, and a
                // rotation computed from an older version is refused (and retried by the caller).
                let done = sqlx::query(
                    "UPDATE api_keys SET start = $2, version = version + 1 WHERE id = $1 AND version = $3 AND is_active",
                )
                .bind(key_id)
                .bind(start)
                .bind(version)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                if done.rows_affected() == 0 {
                    return Err(Error::VersionConflict("API key"));
                }
                let digests = Self::key_digests(&mut *tx, key_id).await?;
                match old_expire_at {
                    None => {
                        sqlx::query("DELETE FROM api_key_secrets WHERE key_id = $1")
                            .bind(key_id)
                            .execute(&mut *tx)
                            .await
                            .map_err(db_err)?;
                    }
                    Some(at) => {
                        sqlx::query("DELETE FROM api_key_secrets WHERE key_id = $1 AND expires_at IS NOT NULL AND expires_at <= $2")
                            .bind(key_id)
                            .bind(to_ms(secret.created_at))
                            .execute(&mut *tx)
                            .await
                            .map_err(db_err)?;
                        sqlx::query(
                            "UPDATE api_key_secrets SET expires_at = $2 WHERE key_id = $1 AND (expires_at IS NULL OR expires_at > $2)",
                        )
                        .bind(key_id)
                        .bind(to_ms(at))
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                    }
                }
                sqlx::query(
                    "INSERT INTO api_key_secrets (digest, key_id, pepper_version, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(secret.digest.0.to_vec())
                .bind(&secret.key_id)
                .bind(i64::from(secret.pepper_version))
                .bind(to_ms(secret.created_at))
                .bind(secret.expires_at.map(to_ms))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                Self::append_in(&mut tx, std::slice::from_ref(event)).await?;
                tx.commit().await.map_err(db_err)?;
                Ok(digests)
            }

            async fn api_key_lookup(&self, digest: &Digest) -> Result<Option<KeyLookup>> {
                let row = sqlx::query(concat!(lookup_select!(), " WHERE s.digest = $1"))
                    .bind(digest.0.to_vec())
                    .fetch_optional(self.r())
                    .await
                    .map_err(db_err)?;
                let Some(row) = row else { return Ok(None) };
                let mut roles = HashMap::new();
                Ok(Some(self.lookup_row(&row, &mut roles).await?))
            }

            async fn api_key_lookups_after(
                &self,
                after: Option<&Digest>,
                limit: i64,
            ) -> Result<Vec<KeyLookup>> {
                let rows = sqlx::query(concat!(
                    lookup_select!(),
                    " WHERE k.is_active AND s.digest > $1 ORDER BY s.digest LIMIT $2"
                ))
                .bind(after.map(|d| d.0.to_vec()).unwrap_or_default())
                .bind(limit)
                .fetch_all(self.r())
                .await
                .map_err(db_err)?;
                let mut roles = HashMap::new();
                let mut out = Vec::with_capacity(rows.len());
                for row in &rows {
                    out.push(self.lookup_row(row, &mut roles).await?);
                }
                Ok(out)
            }

            async fn api_keys_touch(&self, used: &[(String, OffsetDateTime)]) -> Result<()> {
                // One statement per 500 keys used in the same second (the runtime rounds uses
                // to the second and sorts them), instead of one per key: a busy node touches thousands of keys
                // a second, on the same core that answers checks.
                let mut tx = self.w().begin().await.map_err(db_err)?;
                let mut rest = used;
                while let Some((_, at)) = rest.first() {
                    let n = rest
                        .iter()
                        .take(500)
                        .take_while(|(_, t)| t == at)
                        .count();
                    let (batch, next) = rest.split_at(n);
                    let marks: Vec<String> = (2..n + 2).map(|i| format!("${i}")).collect();
                    let sql = format!(
                        "UPDATE api_keys SET last_used_at = $1 WHERE id IN ({})",
                        marks.join(", ")
                    );
                    let mut q = sqlx::query(&sql).bind(to_ms(*at));
                    for (id, _) in batch {
                        q = q.bind(id);
                    }
                    q.execute(&mut *tx).await.map_err(db_err)?;
                    rest = next;
                }
                tx.commit().await.map_err(db_err)
            }

            async fn client_create(&self, c: &OAuthClient, secret: Option<&ClientSecret>, event: &NewEvent) -> Result<()> {
                let mut tx = self.w().begin().await.map_err(db_err)?;
                Self::owner_exists(&mut tx, &c.org_id, c.owner_member_id.as_deref()).await?;
                sqlx::query(
                    "INSERT INTO oauth_clients (client_id, org_id, project_id, owner_member_id, name, description, scopes, \
                     access_token_ttl_seconds, token_format, signing_alg, audience, secret_rotation_days, not_before, created_at, created_by, version, \
                     token_endpoint_auth_method, jwks, jwks_uri, federated_credentials, dpop_bound_access_tokens) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)",
                )
                .bind(&c.client_id)
                .bind(&c.org_id)
                .bind(&c.project_id)
                .bind(&c.owner_member_id)
                .bind(&c.name)
                .bind(&c.description)
                .bind(to_json(&c.scopes))
                .bind(c.access_token_ttl_seconds)
                .bind(c.token_format.as_str())
                .bind(c.signing_alg.map(|a| a.as_str()))
                .bind(&c.audience)
                .bind(c.secret_rotation_days)
                .bind(c.not_before.map(to_ms))
                .bind(to_ms(c.created_at))
                .bind(&c.created_by)
                .bind(c.version)
                .bind(c.auth_method.as_str())
                .bind(c.jwks.as_ref().map(|j| j.to_json().to_string()))
                .bind(&c.jwks_uri)
                .bind((!c.federated_credentials.is_empty()).then(|| serde_json::to_string(&c.federated_credentials).expect("credentials serialize")))
                .bind(c.dpop_bound_access_tokens)
                .execute(&mut *tx)
                .await
                .map_err(|e| unique_or(e, || format!("a client named `{}` already exists in this project", c.name)))?;
                Self::set_may_act(&mut tx, c).await?;
                if let Some(secret) = secret {
                    Self::insert_secret(&mut tx, secret).await?;
                }
                Self::append_in(&mut tx, std::slice::from_ref(event)).await?;
                tx.commit().await.map_err(db_err)
            }

            async fn client_get(&self, client_id: &str) -> Result<Option<(OAuthClient, Vec<ClientSecret>)>> {
                let row = sqlx::query(concat!("SELECT ", client_cols!(), " FROM oauth_clients WHERE client_id = $1"))
                    .bind(client_id)
                    .fetch_optional(self.r())
                    .await
                    .map_err(db_err)?;
                let Some(row) = row else { return Ok(None) };
                let client = Self::client_row(&row)?;
                let rows = sqlx::query(concat!("SELECT ", secret_cols!(), " FROM oauth_client_secrets WHERE client_id = $1 ORDER BY created_at, id"))
                    .bind(client_id)
                    .fetch_all(self.r())
                    .await
                    .map_err(db_err)?;
                let secrets = rows.iter().map(Self::secret_row).collect::<Result<_>>()?;
                Ok(Some((client, secrets)))
            }

            async fn client_list(&self, f: &KeyFilter, after_seq: Option<i64>, limit: i64) -> Result<Vec<OAuthClient>> {
                let rows = sqlx::query(concat!(
                    "SELECT ",
                    client_cols!(),
                    " FROM oauth_clients WHERE org_id = $1 AND ($2 IS NULL OR owner_member_id = $2) \
                     AND ($3 IS NULL OR project_id = $3) AND seq > $4 ORDER BY seq LIMIT $5"
                ))
                .bind(f.org_id())
                .bind(f.owner_member_id())
                .bind(f.project_id())
                .bind(after_seq.unwrap_or(0))
                .bind(limit)
                .fetch_all(self.r())
                .await
                .map_err(db_err)?;
                rows.iter().map(Self::client_row).collect()
            }

            async fn client_update(&self, c: &OAuthClient, event: &NewEvent) -> Result<OAuthClient> {
                let mut tx = self.w().begin().await.map_err(db_err)?;
                let done = sqlx::query(
                    "UPDATE oauth_clients SET name = $2, description = $3, scopes = $4, access_token_ttl_seconds = $5, \
                     token_format = $6, signing_alg = $7, audience = $8, secret_rotation_days = $9, version = version + 1, \
                     token_endpoint_auth_method = $11, jwks = $12, jwks_uri = $13, federated_credentials = $14, \
                     dpop_bound_access_tokens = $15 \
                     WHERE client_id = $1 AND version = $10",
                )
                .bind(&c.client_id)
                .bind(&c.name)
                .bind(&c.description)
                .bind(to_json(&c.scopes))
                .bind(c.access_token_ttl_seconds)
                .bind(c.token_format.as_str())
                .bind(c.signing_alg.map(|a| a.as_str()))
                .bind(&c.audience)
                .bind(c.secret_rotation_days)
                .bind(c.version)
                .bind(c.auth_method.as_str())
                .bind(c.jwks.as_ref().map(|j| j.to_json().to_string()))
                .bind(&c.jwks_uri)
                .bind((!c.federated_credentials.is_empty()).then(|| serde_json::to_string(&c.federated_credentials).expect("credentials serialize")))
                .bind(c.dpop_bound_access_tokens)
                .execute(&mut *tx)
                .await
                .map_err(|e| unique_or(e, || format!("a client named `{}` already exists in this project", c.name)))?;
                if done.rows_affected() == 0 {
                    return Err(Error::VersionConflict("OAuth client"));
                }
                Self::set_may_act(&mut tx, c).await?;
                if !c.auth_method.uses_secret() {
                    sqlx::query("DELETE FROM oauth_client_secrets WHERE client_id = $1")
                        .bind(&c.client_id)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                }
                let row = sqlx::query(concat!("SELECT ", client_cols!(), " FROM oauth_clients WHERE client_id = $1"))
                    .bind(&c.client_id)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db_err)?;
                let stored = Self::client_row(&row)?;
                Self::append_in(&mut tx, std::slice::from_ref(event)).await?;
                tx.commit().await.map_err(db_err)?;
                Ok(stored)
            }

            async fn client_delete(&self, client_id: &str, version: i64, event: &NewEvent) -> Result<()> {
                let mut tx = self.w().begin().await.map_err(db_err)?;
                let done = sqlx::query("UPDATE oauth_clients SET version = version + 1 WHERE client_id = $1 AND version = $2")
                    .bind(client_id)
                    .bind(version)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                if done.rows_affected() == 0 {
                    return Err(Error::VersionConflict("OAuth client"));
                }
                sqlx::query("DELETE FROM oauth_client_secrets WHERE client_id = $1")
                    .bind(client_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                sqlx::query("DELETE FROM oauth_clients WHERE client_id = $1")
                    .bind(client_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                Self::append_in(&mut tx, std::slice::from_ref(event)).await?;
                tx.commit().await.map_err(db_err)
            }

            async fn client_secret_add(&self, secret: &ClientSecret, version: i64, old_expire_at: Option<OffsetDateTime>, event: &NewEvent) -> Result<()> {
                let mut tx = self.w().begin().await.map_err(db_err)?;
                // The versioned write first: concurrent rotations serialize on the client's row.
                let done = sqlx::query("UPDATE oauth_clients SET version = version + 1 WHERE client_id = $1 AND version = $2")
                    .bind(&secret.client_id)
                    .bind(version)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                if done.rows_affected() == 0 {
                    return Err(Error::VersionConflict("OAuth client"));
                }
                if let Some(at) = old_expire_at {
                    sqlx::query(
                        "UPDATE oauth_client_secrets SET expires_at = $2 WHERE client_id = $1 AND (expires_at IS NULL OR expires_at > $2)",
                    )
                    .bind(&secret.client_id)
                    .bind(to_ms(at))
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                }
                Self::insert_secret(&mut tx, secret).await?;
                Self::append_in(&mut tx, std::slice::from_ref(event)).await?;
                tx.commit().await.map_err(db_err)
            }

            async fn client_secret_delete(&self, client_id: &str, secret_id: &str, version: i64, not_before: OffsetDateTime, event: &NewEvent) -> Result<bool> {
                let mut tx = self.w().begin().await.map_err(db_err)?;
                let done = sqlx::query(
                    "UPDATE oauth_clients SET version = version + 1, \
                     not_before = CASE WHEN not_before IS NULL OR not_before < $3 THEN $3 ELSE not_before END \
                     WHERE client_id = $1 AND version = $2",
                )
                .bind(client_id)
                .bind(version)
                .bind(to_ms(not_before))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                if done.rows_affected() == 0 {
                    return Err(Error::VersionConflict("OAuth client"));
                }
                let deleted = sqlx::query("DELETE FROM oauth_client_secrets WHERE client_id = $1 AND id = $2")
                    .bind(client_id)
                    .bind(secret_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                if deleted.rows_affected() == 0 {
                    // Nothing to retire: the transaction (and its version bump) is dropped.
                    return Ok(false);
                }
                Self::append_in(&mut tx, std::slice::from_ref(event)).await?;
                tx.commit().await.map_err(db_err)?;
                Ok(true)
            }

            async fn client_secret_find(&self, digest: &Digest) -> Result<Option<(String, String)>> {
                let row = sqlx::query("SELECT client_id, id FROM oauth_client_secrets WHERE digest = $1")
                    .bind(digest.0.to_vec())
                    .fetch_optional(self.r())
                    .await
                    .map_err(db_err)?;
                row.map(|r| Ok((r.try_get("client_id").map_err(db_err)?, r.try_get("id").map_err(db_err)?)))
                    .transpose()
            }

            async fn client_secrets_used(&self, used: &[(String, OffsetDateTime, i64)]) -> Result<()> {
                let mut tx = self.w().begin().await.map_err(db_err)?;
                for (id, at, n) in used {
                    sqlx::query("UPDATE oauth_client_secrets SET last_used_at = $2, use_count = use_count + $3 WHERE id = $1")
                        .bind(id)
                        .bind(to_ms(*at))
                        .bind(*n)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                }
                tx.commit().await.map_err(db_err)
            }

            async fn client_secrets_unwarned(&self) -> Result<Vec<(OAuthClient, ClientSecret)>> {
                let rows = sqlx::query(
                    "SELECT c.client_id AS cid, s.id AS sid FROM oauth_client_secrets s JOIN oauth_clients c ON c.client_id = s.client_id \
                     WHERE c.secret_rotation_days IS NOT NULL AND s.expiry_warned_at IS NULL",
                )
                .fetch_all(self.r())
                .await
                .map_err(db_err)?;
                let mut out = Vec::new();
                for r in rows {
                    let cid: String = r.try_get("cid").map_err(db_err)?;
                    let sid: String = r.try_get("sid").map_err(db_err)?;
                    if let Some((c, secrets)) = self.client_get(&cid).await? {
                        if let Some(s) = secrets.into_iter().find(|s| s.id == sid) {
                            out.push((c, s));
                        }
                    }
                }
                Ok(out)
            }

            async fn client_secret_mark_warned(&self, secret_id: &str, at: OffsetDateTime, event: &NewEvent) -> Result<()> {
                let mut tx = self.w().begin().await.map_err(db_err)?;
                sqlx::query("UPDATE oauth_client_secrets SET expiry_warned_at = $2 WHERE id = $1")
                    .bind(secret_id)
                    .bind(to_ms(at))
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                Self::append_in(&mut tx, std::slice::from_ref(event)).await?;
                tx.commit().await.map_err(db_err)
            }

            async fn signing_keys(&self) -> Result<Vec<StoredSigningKey>> {
                let rows = sqlx::query("SELECT kid, alg, private_sealed, created_at, activates_at, unpublish_at FROM signing_keys ORDER BY activates_at")
                    .fetch_all(self.r())
                    .await
                    .map_err(db_err)?;
                rows.iter()
                    .map(|r| {
                        Ok(StoredSigningKey {
                            kid: r.try_get("kid").map_err(db_err)?,
                            alg: r.try_get("alg").map_err(db_err)?,
                            private_sealed: r.try_get("private_sealed").map_err(db_err)?,
                            created_at: from_ms(r.try_get("created_at").map_err(db_err)?),
                            activates_at: from_ms(r.try_get("activates_at").map_err(db_err)?),
                            unpublish_at: opt_time(r.try_get("unpublish_at").map_err(db_err)?),
                        })
                    })
                    .collect()
            }

            async fn signing_key_add(&self, key: &StoredSigningKey, retire_others_at: OffsetDateTime, event: &NewEvent) -> Result<()> {
                let mut tx = self.w().begin().await.map_err(db_err)?;
                sqlx::query(
                    "UPDATE signing_keys SET unpublish_at = $2 WHERE alg = $1 AND (unpublish_at IS NULL OR unpublish_at > $2)",
                )
                .bind(&key.alg)
                .bind(to_ms(retire_others_at))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                sqlx::query(
                    "INSERT INTO signing_keys (kid, alg, private_sealed, created_at, activates_at, unpublish_at) VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&key.kid)
                .bind(&key.alg)
                .bind(&key.private_sealed)
                .bind(to_ms(key.created_at))
                .bind(to_ms(key.activates_at))
                .bind(key.unpublish_at.map(to_ms))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                Self::append_in(&mut tx, std::slice::from_ref(event)).await?;
                tx.commit().await.map_err(db_err)
            }

            async fn token_revoke(&self, jti: &str, client_id: &str, expires_at: OffsetDateTime, now: OffsetDateTime, event: &NewEvent) -> Result<()> {
                let mut tx = self.w().begin().await.map_err(db_err)?;
                sqlx::query(
                    "INSERT INTO revoked_tokens (jti, client_id, expires_at, revoked_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                )
                .bind(jti)
                .bind(client_id)
                .bind(to_ms(expires_at))
                .bind(to_ms(now))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                Self::append_in(&mut tx, std::slice::from_ref(event)).await?;
                tx.commit().await.map_err(db_err)
            }

            async fn client_assertion_jtis_use(&self, uses: &[JtiUse], now: OffsetDateTime) -> Result<Vec<bool>> {
                // One multi-row upsert, one commit, for a whole batch. An entry repeated in the
                // batch is written once (its first occurrence; the others are replays), since
                // one statement may not touch a row twice. A row whose assertion has expired
                // (not purged yet) does not block a new one that happens to reuse its jti: it
                // is taken over instead; RETURNING names the rows written, the fresh ones.
                let mut first: HashMap<(&str, &str), usize> = HashMap::with_capacity(uses.len());
                let mut fresh = vec![false; uses.len()];
                let mut sql = String::from("INSERT INTO client_assertion_jtis (client_id, jti, expires_at) VALUES ");
                let mut rows = Vec::with_capacity(uses.len());
                for (i, u) in uses.iter().enumerate() {
                    if first.contains_key(&(u.scope.as_str(), u.jti.as_str())) {
                        continue;
                    }
                    first.insert((u.scope.as_str(), u.jti.as_str()), i);
                    let n = rows.len() * 3;
                    if !rows.is_empty() {
                        sql.push(',');
                    }
                    sql.push_str(&format!("(${}, ${}, ${})", n + 1, n + 2, n + 3));
                    rows.push(u);
                }
                if rows.is_empty() {
                    return Ok(fresh);
                }
                sql.push_str(&format!(
                    " ON CONFLICT (client_id, jti) DO UPDATE SET expires_at = excluded.expires_at \
                     WHERE client_assertion_jtis.expires_at <= ${} RETURNING client_id, jti",
                    rows.len() * 3 + 1
                ));
                let mut q = sqlx::query(&sql);
                for u in &rows {
                    q = q.bind(u.scope.as_str()).bind(u.jti.as_str()).bind(to_ms(u.expires_at));
                }
                let written = q.bind(to_ms(now)).fetch_all(self.w()).await.map_err(db_err)?;
                for r in &written {
                    let scope: String = r.try_get("client_id").map_err(db_err)?;
                    let jti: String = r.try_get("jti").map_err(db_err)?;
                    if let Some(&i) = first.get(&(scope.as_str(), jti.as_str())) {
                        fresh[i] = true;
                    }
                }
                Ok(fresh)
            }

            async fn client_assertion_jtis_purge(&self, now: OffsetDateTime) -> Result<u64> {
                let done = sqlx::query("DELETE FROM client_assertion_jtis WHERE expires_at <= $1")
                    .bind(to_ms(now))
                    .execute(self.w())
                    .await
                    .map_err(db_err)?;
                Ok(done.rows_affected())
            }

            async fn revoked_tokens(&self, now: OffsetDateTime) -> Result<Vec<(String, i64)>> {
                let rows = sqlx::query("SELECT jti, expires_at FROM revoked_tokens WHERE expires_at > $1")
                    .bind(to_ms(now))
                    .fetch_all(self.r())
                    .await
                    .map_err(db_err)?;
                rows.iter()
                    .map(|r| Ok((r.try_get("jti").map_err(db_err)?, r.try_get("expires_at").map_err(db_err)?)))
                    .collect()
            }

            async fn revoked_tokens_purge(&self, now: OffsetDateTime) -> Result<u64> {
                let done = sqlx::query("DELETE FROM revoked_tokens WHERE expires_at <= $1")
                    .bind(to_ms(now))
                    .execute(self.w())
                    .await
                    .map_err(db_err)?;
                Ok(done.rows_affected())
            }

            async fn activity_append(&self, events: &[NewEvent]) -> Result<()> {
                if events.is_empty() {
                    return Ok(());
                }
                let mut tx = self.w().begin().await.map_err(db_err)?;
                Self::append_in(&mut tx, events).await?;
                tx.commit().await.map_err(db_err)
            }

            async fn activity_query(&self, f: &EventFilter, before_seq: Option<i64>, limit: i64) -> Result<Vec<Event>> {
                let rows = sqlx::query(concat!(
                    "SELECT ",
                    event_cols!(),
                    " FROM activity_events WHERE ($1 IS NULL OR org_id = $1) AND ($2 IS NULL OR action = $2) \
                     AND ($3 IS NULL OR actor LIKE '%' || $3 || '%') AND ($4 IS NULL OR target = $4) \
                     AND ($5 IS NULL OR at >= $5) AND ($6 IS NULL OR at < $6) AND seq < $7 \
                     ORDER BY seq DESC LIMIT $8"
                ))
                .bind(&f.org_id)
                .bind(&f.action)
                .bind(&f.actor)
                .bind(&f.target)
                .bind(f.since.map(to_ms))
                .bind(f.until.map(to_ms))
                .bind(before_seq.unwrap_or(i64::MAX))
                .bind(limit)
                .fetch_all(self.r())
                .await
                .map_err(db_err)?;
                rows.iter().map(Self::event_row).collect()
            }

            async fn activity_page(&self, after_seq: i64, limit: i64) -> Result<Vec<Event>> {
                let rows = sqlx::query(concat!(
                    "SELECT ",
                    event_cols!(),
                    " FROM activity_events WHERE seq > $1 ORDER BY seq LIMIT $2"
                ))
                .bind(after_seq)
                .bind(limit)
                .fetch_all(self.r())
                .await
                .map_err(db_err)?;
                rows.iter().map(Self::event_row).collect()
            }

            async fn activity_head(&self) -> Result<Option<(i64, String)>> {
                let row = sqlx::query("SELECT seq, hash FROM activity_head WHERE id = 1")
                    .fetch_optional(self.r())
                    .await
                    .map_err(db_err)?;
                row.map(|r| Ok((r.try_get("seq").map_err(db_err)?, r.try_get("hash").map_err(db_err)?)))
                    .transpose()
            }

            async fn activity_checkpoint_add(&self, cp: &Checkpoint) -> Result<()> {
                sqlx::query(
                    "INSERT INTO activity_checkpoints (seq, hash, at, pepper_version, mac) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (seq) DO NOTHING",
                )
                .bind(cp.seq)
                .bind(&cp.hash)
                .bind(to_ms(cp.at))
                .bind(i64::from(cp.pepper_version))
                .bind(&cp.mac)
                .execute(self.w())
                .await
                .map_err(db_err)?;
                Ok(())
            }

            async fn activity_checkpoint_last(&self) -> Result<Option<Checkpoint>> {
                let row = sqlx::query(
                    "SELECT seq, hash, at, pepper_version, mac FROM activity_checkpoints ORDER BY seq DESC LIMIT 1",
                )
                .fetch_optional(self.r())
                .await
                .map_err(db_err)?;
                row.as_ref().map(Self::checkpoint_row).transpose()
            }

            async fn activity_checkpoints(&self, after_seq: i64, limit: i64) -> Result<Vec<Checkpoint>> {
                let rows = sqlx::query(
                    "SELECT seq, hash, at, pepper_version, mac FROM activity_checkpoints \
                     WHERE seq > $1 ORDER BY seq LIMIT $2",
                )
                .bind(after_seq)
                .bind(limit)
                .fetch_all(self.r())
                .await
                .map_err(db_err)?;
                rows.iter().map(Self::checkpoint_row).collect()
            }

            async fn publish(&self, change: &Invalidation) -> Result<()> {
                self.publish_change(change).await
            }

            fn subscribe(&self, on_change: Arc<dyn Fn(Invalidation) + Send + Sync>) {
                self.subscribe_changes(on_change)
            }

            async fn close(&self) -> Result<()> {
                self.close_at_stop().await
            }

            async fn checkpoint(&self) -> Result<()> {
                self.checkpoint_now().await
            }

            async fn member_password_set(&self, member_id: &str, hash: &str, now: OffsetDateTime, event: &NewEvent) -> Result<()> {
                let mut tx = self.w().begin().await.map_err(db_err)?;
                sqlx::query(
                    "INSERT INTO member_passwords (member_id, hash, updated_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (member_id) DO UPDATE SET hash = excluded.hash, updated_at = excluded.updated_at",
                )
                .bind(member_id)
                .bind(hash)
                .bind(to_ms(now))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                // A new password ends every session the member had.
                sqlx::query("DELETE FROM console_sessions WHERE member_id = $1")
                    .bind(member_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                Self::append_in(&mut tx, std::slice::from_ref(event)).await?;
                tx.commit().await.map_err(db_err)
            }

            async fn member_credentials(&self, email: &str) -> Result<Vec<(Member, String)>> {
                let rows = sqlx::query(
                    "SELECT m.id, m.org_id, m.email, m.name, m.role, m.created_at, m.version, p.hash FROM members m \
                     JOIN member_passwords p ON p.member_id = m.id WHERE m.email = $1 ORDER BY m.created_at, m.id",
                )
                .bind(email)
                .fetch_all(self.r())
                .await
                .map_err(db_err)?;
                rows.iter()
                    .map(|r| Ok((Self::member_row(r)?, r.try_get("hash").map_err(db_err)?)))
                    .collect()
            }

            async fn console_link_create(&self, link: &PasswordLink, event: &NewEvent) -> Result<()> {
                let mut tx = self.w().begin().await.map_err(db_err)?;
                sqlx::query("DELETE FROM console_links WHERE member_id = $1")
                    .bind(&link.member_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                sqlx::query(
                    "INSERT INTO console_links (digest, member_id, created_at, expires_at, created_by) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(link.digest.0.to_vec())
                .bind(&link.member_id)
                .bind(to_ms(link.created_at))
                .bind(to_ms(link.expires_at))
                .bind(&link.created_by)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                Self::append_in(&mut tx, std::slice::from_ref(event)).await?;
                tx.commit().await.map_err(db_err)
            }

            async fn console_link_get(&self, digest: &Digest) -> Result<Option<PasswordLink>> {
                let row = sqlx::query("SELECT digest, member_id, created_at, expires_at, created_by FROM console_links WHERE digest = $1")
                    .bind(digest.0.to_vec())
                    .fetch_optional(self.r())
                    .await
                    .map_err(db_err)?;
                row.map(|r| {
                    let d: Vec<u8> = r.try_get("digest").map_err(db_err)?;
                    Ok(PasswordLink {
                        digest: Digest::from_slice(&d).ok_or_else(|| corrupt("digest"))?,
                        member_id: r.try_get("member_id").map_err(db_err)?,
                        created_at: from_ms(r.try_get("created_at").map_err(db_err)?),
                        expires_at: from_ms(r.try_get("expires_at").map_err(db_err)?),
                        created_by: r.try_get("created_by").map_err(db_err)?,
                    })
                })
                .transpose()
            }

            async fn console_link_consume(&self, digest: &Digest, now: OffsetDateTime) -> Result<Option<String>> {
                let row = sqlx::query("DELETE FROM console_links WHERE digest = $1 RETURNING member_id, expires_at")
                    .bind(digest.0.to_vec())
                    .fetch_optional(self.w())
                    .await
                    .map_err(db_err)?;
                let Some(r) = row else { return Ok(None) };
                let expires_at: i64 = r.try_get("expires_at").map_err(db_err)?;
                if expires_at <= to_ms(now) {
                    return Ok(None);
                }
                Ok(Some(r.try_get("member_id").map_err(db_err)?))
            }

            async fn console_session_create(&self, s: &ConsoleSession, event: &NewEvent) -> Result<()> {
                let mut tx = self.w().begin().await.map_err(db_err)?;
                sqlx::query(
                    "INSERT INTO console_sessions (digest, member_id, admin_key_digest, org_id, project_id, created_at, expires_at, member_ids) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(s.digest.0.to_vec())
                .bind(&s.member_id)
                .bind(s.admin_key_digest.map(|d| d.0.to_vec()))
                .bind(&s.org_id)
                .bind(&s.project_id)
                .bind(to_ms(s.created_at))
                .bind(to_ms(s.expires_at))
                .bind(to_json(&s.member_ids))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                Self::append_in(&mut tx, std::slice::from_ref(event)).await?;
                tx.commit().await.map_err(db_err)
            }

            async fn console_session_get(&self, digest: &Digest) -> Result<Option<ConsoleSession>> {
                let row = sqlx::query(
                    "SELECT digest, member_id, admin_key_digest, org_id, project_id, created_at, expires_at, member_ids \
                     FROM console_sessions WHERE digest = $1",
                )
                .bind(digest.0.to_vec())
                .fetch_optional(self.r())
                .await
                .map_err(db_err)?;
                row.map(|r| {
                    let d: Vec<u8> = r.try_get("digest").map_err(db_err)?;
                    let a: Option<Vec<u8>> = r.try_get("admin_key_digest").map_err(db_err)?;
                    Ok(ConsoleSession {
                        digest: Digest::from_slice(&d).ok_or_else(|| corrupt("digest"))?,
                        member_id: r.try_get("member_id").map_err(db_err)?,
                        admin_key_digest: a
                            .map(|a| Digest::from_slice(&a).ok_or_else(|| corrupt("digest")))
                            .transpose()?,
                        org_id: r.try_get("org_id").map_err(db_err)?,
                        project_id: r.try_get("project_id").map_err(db_err)?,
                        member_ids: from_json(&r.try_get::<String, _>("member_ids").map_err(db_err)?)?,
                        created_at: from_ms(r.try_get("created_at").map_err(db_err)?),
                        expires_at: from_ms(r.try_get("expires_at").map_err(db_err)?),
                    })
                })
                .transpose()
            }

            async fn console_session_set_context(&self, digest: &Digest, org_id: Option<&str>, project_id: Option<&str>) -> Result<()> {
                sqlx::query("UPDATE console_sessions SET org_id = $2, project_id = $3 WHERE digest = $1")
                    .bind(digest.0.to_vec())
                    .bind(org_id)
                    .bind(project_id)
                    .execute(self.w())
                    .await
                    .map_err(db_err)?;
                Ok(())
            }

            async fn console_session_set_member(&self, digest: &Digest, member_id: &str, org_id: &str) -> Result<()> {
                sqlx::query("UPDATE console_sessions SET member_id = $2, org_id = $3, project_id = NULL WHERE digest = $1")
                    .bind(digest.0.to_vec())
                    .bind(member_id)
                    .bind(org_id)
                    .execute(self.w())
                    .await
                    .map_err(db_err)?;
                Ok(())
            }

            async fn console_session_delete(&self, digest: &Digest, event: Option<&NewEvent>) -> Result<()> {
                let mut tx = self.w().begin().await.map_err(db_err)?;
                sqlx::query("DELETE FROM console_sessions WHERE digest = $1")
                    .bind(digest.0.to_vec())
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                if let Some(event) = event {
                    Self::append_in(&mut tx, std::slice::from_ref(event)).await?;
                }
                tx.commit().await.map_err(db_err)
            }

            async fn console_sessions_purge(&self, now: OffsetDateTime) -> Result<u64> {
                let mut tx = self.w().begin().await.map_err(db_err)?;
                let sessions = sqlx::query("DELETE FROM console_sessions WHERE expires_at <= $1")
                    .bind(to_ms(now))
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                let links = sqlx::query("DELETE FROM console_links WHERE expires_at <= $1")
                    .bind(to_ms(now))
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                tx.commit().await.map_err(db_err)?;
                Ok(sessions.rows_affected() + links.rows_affected())
            }
        }
    };
}

/// SQLite: every write goes through one connection, so transactions never contend; reads use
/// a pool of their own. A third connection copies the write-ahead log into the database file
/// ([`Store::checkpoint`], called in the background by the server), so that the writer does
/// not wait for the disk (a checkpoint's `fsync`) in the middle of a commit; the writer still
/// checkpoints by itself when the log passes [`WRITER_CHECKPOINT_PAGES`] (nobody calling
/// `checkpoint`: the commands, the tests; or a checkpointer that cannot keep up).
pub struct SqliteStore {
    read: SqlitePool,
    write: SqlitePool,
    checkpointer: SqlitePool,
}

/// Pages (4 KiB each) of write-ahead log past which the writer checkpoints by itself (SQLite's
/// own default is 1,000).
pub const WRITER_CHECKPOINT_PAGES: u32 = 8_000;

impl SqliteStore {
    /// Opens (creating when missing) the database a `sqlite://PATH` URL names and applies the
    /// migrations. The file and its `-wal` and `-shm` are readable by their owner only (see
    /// [`crate::files`]); a missing folder is created 0700.
    pub async fn open(url: &str) -> Result<Self> {
        Self::open_with(url, crate::Migrations::Apply).await
    }

    /// [`SqliteStore::open`], applying the migrations or only checking that none is missing.
    pub async fn open_with(url: &str, migrations: crate::Migrations) -> Result<Self> {
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::invalid("database", format!("bad SQLite URL: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let file = crate::files::sqlite_file(url);
        if let Some(path) = &file {
            if migrations == crate::Migrations::RequireApplied && !path.exists() {
                return Err(Error::invalid(
                    "database",
                    format!(
                        "--no-migrate: there is no database at {}; create it with `keyplane migrate --create` (same --database/--config), or start without --no-migrate",
                        path.display()
                    ),
                ));
            }
            crate::files::prepare_sqlite_file(path).map_err(|e| file_err(path, e))?;
        }
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                opts.clone()
                    .pragma("wal_autocheckpoint", WRITER_CHECKPOINT_PAGES.to_string()),
            )
            .await
            .map_err(db_err)?;
        crate::migrations::ensure_sqlite(&write, migrations).await?;
        // Connected at its first checkpoint; a command that never calls one never opens it.
        let checkpointer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .connect_lazy_with(opts.clone());
        let read = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts.read_only(true))
            .await
            .map_err(db_err)?;
        // SQLite gives `-wal` and `-shm` the database file's mode; this only catches the
        // unexpected (a companion some other program created).
        if let Some(path) = &file {
            crate::files::restrict_sqlite_files(path);
        }
        Ok(Self {
            read,
            write,
            checkpointer,
        })
    }

    /// Copies what it can of the write-ahead log into the database file without waiting for
    /// readers or the writer (`wal_checkpoint(PASSIVE)`), on a connection of its own: its disk
    /// flushes hold up no request. The writer starts the log over once all of it is copied.
    async fn checkpoint_now(&self) -> Result<()> {
        sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&self.checkpointer)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    fn r(&self) -> &SqlitePool {
        &self.read
    }
    fn w(&self) -> &SqlitePool {
        &self.write
    }

    async fn publish_change(&self, _change: &Invalidation) -> Result<()> {
        // One SQLite file serves one node: there is nobody else to tell.
        Ok(())
    }

    fn subscribe_changes(&self, _on_change: Arc<dyn Fn(Invalidation) + Send + Sync>) {}

    /// At a clean stop (and at the end of a command on the database): closes the readers,
    /// copies the write-ahead log into the database file and empties it
    /// (`wal_checkpoint(TRUNCATE)`), then closes the writer, so the database file alone holds
    /// everything (closing the last connection also removes `-wal` and `-shm`). Nothing uses
    /// the store afterwards.
    async fn close_at_stop(&self) -> Result<()> {
        // A pool waits for its connections to come back; nothing should hold one by now, and a
        // stop must not hang if something does.
        let bound = Duration::from_secs(5);
        if tokio::time::timeout(bound, self.read.close())
            .await
            .is_err()
        {
            tracing::warn!("a database reader was still busy when closing");
        }
        if tokio::time::timeout(bound, self.checkpointer.close())
            .await
            .is_err()
        {
            tracing::warn!("the database checkpointer was still busy when closing");
        }
        let row = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(&self.write)
            .await
            .map_err(db_err)?;
        // (busy, frames in the log, frames copied); after TRUNCATE both counts read 0.
        let busy: i64 = row.try_get(0).map_err(db_err)?;
        if busy != 0 {
            tracing::warn!(
                "could not empty the write-ahead log: another process is using the database (it is copied into the database file later, at the latest when the last process closes it)"
            );
        } else {
            tracing::info!("write-ahead log copied into the database file and emptied");
        }
        if tokio::time::timeout(bound, self.write.close())
            .await
            .is_err()
        {
            tracing::warn!("the database writer was still busy when closing");
        }
        Ok(())
    }
}

fn file_err(path: &std::path::Path, e: std::io::Error) -> Error {
    Error::Storage(format!("{}: {e}", path.display()).into())
}

impl_store!(
    SqliteStore,
    SqliteRow,
    sqlx::SqliteConnection,
    "sqlite",
    "",
    ""
);

/// PostgreSQL: one pool; rows that serialize a transaction are locked `FOR UPDATE`; changes
/// are announced with `NOTIFY` so every node drops what it cached at once.
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    pub async fn open(url: &str) -> Result<Self> {
        Self::open_with(url, crate::Migrations::Apply).await
    }

    /// [`PgStore::open`], applying the migrations or only checking that none is missing.
    pub async fn open_with(url: &str, migrations: crate::Migrations) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(db_err)?;
        crate::migrations::ensure_pg(&pool, migrations).await?;
        Ok(Self { pool })
    }

    fn r(&self) -> &PgPool {
        &self.pool
    }
    fn w(&self) -> &PgPool {
        &self.pool
    }

    async fn publish_change(&self, change: &Invalidation) -> Result<()> {
        // A NOTIFY payload is limited to 8000 bytes: send digests in chunks.
        let payloads: Vec<String> = match change {
            Invalidation::All => vec!["all".into()],
            Invalidation::SigningKeys => vec!["keys".into()],
            Invalidation::Services => vec!["services".into()],
            Invalidation::Grants => vec!["grants".into()],
            Invalidation::Webhooks => vec!["webhooks".into()],
            Invalidation::Client(id) => vec![format!("c:{id}")],
            Invalidation::Token(jti, exp) => vec![format!("t:{exp}:{jti}")],
            Invalidation::Digests(d) => d
                .chunks(100)
                .map(|c| c.iter().map(|d| hex(&d.0)).collect::<Vec<_>>().join(","))
                .collect(),
            // The feed's own state is local to each node.
            Invalidation::FeedLost | Invalidation::FeedRestored => vec![],
        };
        for p in payloads {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(NOTIFY_CHANNEL)
                .bind(p)
                .execute(&self.pool)
                .await
                .map_err(db_err)?;
        }
        Ok(())
    }

    /// Listens for other nodes' changes, and reports the feed's state: `FeedLost` as soon as
    /// the listening connection drops (changes may be missed from then on), and once it listens
    /// again `FeedRestored` followed by `All` (anything may have changed meanwhile; `All` also
    /// makes the server reload what it keeps besides the caches, such as signing keys).
    fn subscribe_changes(&self, on_change: Arc<dyn Fn(Invalidation) + Send + Sync>) {
        let pool = self.pool.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                let listening = async {
                    let mut l = PgListener::connect_with(&pool).await?;
                    l.listen(NOTIFY_CHANNEL).await?;
                    Ok::<_, sqlx::Error>(l)
                };
                let mut listener = match listening.await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot listen for invalidations; retrying");
                        on_change(Invalidation::FeedLost);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        continue;
                    }
                };
                backoff = Duration::from_millis(100);
                on_change(Invalidation::FeedRestored);
                on_change(Invalidation::All);
                loop {
                    match listener.try_recv().await {
                        Ok(Some(n)) => on_change(parse_payload(n.payload())),
                        // `None`: the connection dropped. Rather than let the listener reconnect
                        // by itself, start over here so the loss and the return are reported.
                        Ok(None) => {
                            tracing::warn!(
                                "invalidation listener lost its connection; reconnecting"
                            );
                            on_change(Invalidation::FeedLost);
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "invalidation listener failed; reconnecting");
                            on_change(Invalidation::FeedLost);
                            break;
                        }
                    }
                }
            }
        });
    }

    /// At a clean stop: nothing to do. PostgreSQL keeps its own files; the pool's connections
    /// end with the process (closing it here would only set the change listener retrying).
    async fn close_at_stop(&self) -> Result<()> {
        Ok(())
    }

    /// PostgreSQL checkpoints by itself.
    async fn checkpoint_now(&self) -> Result<()> {
        Ok(())
    }
}

impl_store!(
    PgStore,
    PgRow,
    sqlx::PgConnection,
    "postgres",
    " FOR UPDATE",
    " FOR UPDATE SKIP LOCKED"
);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_payload(payload: &str) -> Invalidation {
    if payload == "all" {
        return Invalidation::All;
    }
    if payload == "keys" {
        return Invalidation::SigningKeys;
    }
    if payload == "services" {
        return Invalidation::Services;
    }
    if payload == "grants" {
        return Invalidation::Grants;
    }
    if payload == "webhooks" {
        return Invalidation::Webhooks;
    }
    if let Some(id) = payload.strip_prefix("c:") {
        return Invalidation::Client(id.to_string());
    }
    if let Some(rest) = payload.strip_prefix("t:") {
        return match rest
            .split_once(':')
            .and_then(|(e, j)| Some((e.parse().ok()?, j)))
        {
            Some((exp, jti)) => Invalidation::Token(jti.to_string(), exp),
            None => Invalidation::All,
        };
    }
    let mut out = Vec::new();
    for part in payload.split(',') {
        let bytes: Option<Vec<u8>> = (0..part.len())
            .step_by(2)
            .map(|i| {
                part.get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .collect();
        match bytes.as_deref().and_then(Digest::from_slice) {
            Some(d) => out.push(d),
            // A payload we cannot read: be safe and drop everything.
            None => return Invalidation::All,
        }
    }
    Invalidation::Digests(out)
}
