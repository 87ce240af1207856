//! `keyplane keys ...`: API keys (`/v1/api-keys`).

use super::{
    list_or_clear, object, push, render, s, seg, value_or_null, Client, ClientArgs, Paging,
};
use anyhow::Result;
use serde_json::{json, Value};

#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Create an API key; its secret is printed once (POST /v1/api-keys).
    Create {
        /// A name, unique among the project's keys (default: generated).
        #[arg(long)]
        name: Option<String>,
        /// What the key is for.
        #[arg(long)]
        description: Option<String>,
        /// A scope the key grants (repeat for more).
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        /// A role the key carries, e.g. ORG-ADMIN (repeat for more).
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
        /// When the key stops working (RFC 3339, e.g. 2027-01-01T00:00:00Z, or `never`); without
        /// it the server's default applies (`api_key_default_ttl_days`, 90 days unless configured).
        #[arg(long, value_name = "TIME")]
        expires_at: Option<String>,
        /// Never expire (the same as `--expires-at never`).
        #[arg(long, conflicts_with = "expires_at")]
        no_expiry: bool,
        /// The organization (the admin key's choice; others act in their own).
        #[arg(long, value_name = "ID")]
        org_id: Option<String>,
        /// The project (default: the organization's `default` project).
        #[arg(long, value_name = "ID")]
        project_id: Option<String>,
        /// The member who owns the key (org-wide managers only; default: a project key).
        #[arg(long, value_name = "ID")]
        owner_member_id: Option<String>,
        /// Mark it the default token of this service.
        #[arg(long, value_name = "SERVICE")]
        default_for_service: Option<String>,
        /// An OAuth client that may exchange this key for tokens acting for it (RFC 8693;
        /// repeat for more).
        #[arg(long = "may-act", value_name = "CLIENT_ID")]
        may_act: Vec<String>,
        /// A named rate limit, NAME=LIMIT/WINDOW[,cost=N][,shared=owner|project], e.g.
        /// burst=100/1s or daily=10000/1d,shared=owner (repeat for more).
        #[arg(long = "rate-limit", value_name = "SPEC")]
        rate_limits: Vec<String>,
    },
    /// List API keys, oldest first (GET /v1/api-keys).
    List {
        /// The organization (the admin key's choice).
        #[arg(long, value_name = "ID")]
        org_id: Option<String>,
        /// Only this project's keys.
        #[arg(long, value_name = "ID")]
        project_id: Option<String>,
        /// Include revoked keys.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        paging: Paging,
    },
    /// Show one API key (GET /v1/api-keys/ID).
    #[command(visible_alias = "show")]
    Get {
        /// The key's id.
        id: String,
    },
    /// Change a key's name, description, scopes, roles, expiry, default mark or may_act
    /// (PATCH /v1/api-keys/ID). What is not given stays as it is.
    Update {
        /// The key's id.
        id: String,
        /// A new name.
        #[arg(long)]
        name: Option<String>,
        /// A new description.
        #[arg(long)]
        description: Option<String>,
        /// The key's scopes become these (repeat for more).
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        /// Take every scope away.
        #[arg(long, conflicts_with = "scopes")]
        no_scopes: bool,
        /// The key's roles become these (repeat for more).
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
        /// Take every role away.
        #[arg(long, conflicts_with = "roles")]
        no_roles: bool,
        /// A new expiry (RFC 3339, or `never`).
        #[arg(long, value_name = "TIME")]
        expires_at: Option<String>,
        /// Never expire.
        #[arg(long, conflicts_with = "expires_at")]
        no_expiry: bool,
        /// Mark it the default token of this service.
        #[arg(long, value_name = "SERVICE")]
        default_for_service: Option<String>,
        /// Remove the default mark.
        #[arg(long, conflicts_with = "default_for_service")]
        no_default_for_service: bool,
        /// The clients that may exchange this key become these (repeat for more).
        #[arg(long = "may-act", value_name = "CLIENT_ID")]
        may_act: Vec<String>,
        /// No client may exchange this key.
        #[arg(long, conflicts_with = "may_act")]
        no_may_act: bool,
        /// The key's rate limits become these, NAME=LIMIT/WINDOW[,cost=N][,shared=owner|project]
        /// (repeat for more).
        #[arg(long = "rate-limit", value_name = "SPEC")]
        rate_limits: Vec<String>,
        /// Remove every rate limit.
        #[arg(long, conflicts_with = "rate_limits")]
        no_rate_limits: bool,
        /// Only if the key is still at this version (its ETag, shown by `get`); else 412.
        #[arg(long, value_name = "VERSION")]
        if_match: Option<String>,
    },
    /// Revoke an API key: refused from the very next request (POST /v1/api-keys/ID/revoke).
    #[command(visible_alias = "delete")]
    Revoke {
        /// The key's id.
        id: String,
        /// Only if the key is still at this version; else 412.
        #[arg(long, value_name = "VERSION")]
        if_match: Option<String>,
    },
    /// Give an API key a new secret, printed once (POST /v1/api-keys/ID/regenerate).
    Regenerate {
        /// The key's id.
        id: String,
        /// Keep the old secret working this many seconds (default: refused at once).
        #[arg(long, value_name = "SECONDS")]
        grace_seconds: Option<i64>,
        /// Only if the key is still at this version; else 412.
        #[arg(long, value_name = "VERSION")]
        if_match: Option<String>,
    },
    /// Create a new key with the same configuration and a new secret, printed once
    /// (POST /v1/api-keys/ID/copy).
    Copy {
        /// The id of the key to copy.
        id: String,
        /// The new key's name (default: generated).
        #[arg(long)]
        name: Option<String>,
    },
}

const COLUMNS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("PREFIX", "prefix"),
    ("SCOPES", "scopes"),
    ("ROLES", "roles"),
    ("STATUS", "status"),
    ("CREATED", "created_at"),
    ("LAST USED", "last_used_at"),
    ("EXPIRES", "expires_at"),
];

const FIELDS: &[&str] = &[
    "id",
    "name",
    "description",
    "prefix",
    "status",
    "org_id",
    "project_id",
    "owner_member_id",
    "scopes",
    "roles",
    "default_for_service",
    "may_act",
    "rate_limits",
    "created_at",
    "created_by",
    "last_used_at",
    "expires_at",
    "deactivated_at",
];

/// A key with its secret: its row, then `key: SECRET` and the server's message.
fn with_secret(v: &Value) -> String {
    format!(
        "{}\n\nkey: {}\n{}",
        render::rows(std::slice::from_ref(v), COLUMNS),
        render::cell(v, "key"),
        render::cell(v, "message")
    )
}

pub async fn run(args: &ClientArgs, cmd: KeysCommand) -> Result<()> {
    let c = Client::new(args)?;
    match cmd {
        KeysCommand::Create {
            name,
            description,
            scopes,
            roles,
            expires_at,
            no_expiry,
            org_id,
            project_id,
            owner_member_id,
            default_for_service,
            may_act,
            rate_limits,
        } => {
            let never = no_expiry || expires_at.as_deref() == Some("never");
            let body = object(vec![
                ("rate_limits", super::rate_limits(&rate_limits, false)?),
                ("scopes", Some(json!(scopes))),
                ("roles", Some(json!(roles))),
                ("may_act", (!may_act.is_empty()).then(|| json!(may_act))),
                ("name", s(name)),
                ("description", s(description)),
                (
                    "expires_at",
                    value_or_null(s(expires_at.filter(|_| !never)), never),
                ),
                ("org_id", s(org_id)),
                ("project_id", s(project_id)),
                ("owner_member_id", s(owner_member_id)),
                ("default_for_service", s(default_for_service)),
            ]);
            let a = c.post("/v1/api-keys", Some(body)).await?;
            c.print(&a, with_secret);
        }
        KeysCommand::List {
            org_id,
            project_id,
            all,
            paging,
        } => {
            let mut q = vec![("include_inactive", all.to_string())];
            push(&mut q, "org_id", org_id);
            push(&mut q, "project_id", project_id);
            if !paging.one_page() {
                q.push(("limit", "200".into()));
            }
            let a = c.list("/v1/api-keys", q, &paging).await?;
            c.print_list(&a, COLUMNS);
        }
        KeysCommand::Get { id } => {
            let a = c
                .get(&format!("/v1/api-keys/{}", seg(&id)), &Vec::new())
                .await?;
            c.print_one(&a, FIELDS);
        }
        KeysCommand::Update {
            id,
            name,
            description,
            scopes,
            no_scopes,
            roles,
            no_roles,
            expires_at,
            no_expiry,
            default_for_service,
            no_default_for_service,
            may_act,
            no_may_act,
            rate_limits,
            no_rate_limits,
            if_match,
        } => {
            let never = no_expiry || expires_at.as_deref() == Some("never");
            let body = object(vec![
                (
                    "rate_limits",
                    super::rate_limits(&rate_limits, no_rate_limits)?,
                ),
                ("name", s(name)),
                ("description", s(description)),
                ("scopes", list_or_clear(scopes, no_scopes)),
                ("roles", list_or_clear(roles, no_roles)),
                ("may_act", list_or_clear(may_act, no_may_act)),
                (
                    "expires_at",
                    value_or_null(s(expires_at.filter(|_| !never)), never),
                ),
                (
                    "default_for_service",
                    value_or_null(s(default_for_service), no_default_for_service),
                ),
            ]);
            let a = c
                .send(
                    reqwest::Method::PATCH,
                    &format!("/v1/api-keys/{}", seg(&id)),
                    &Vec::new(),
                    Some(body),
                    if_match.as_deref(),
                )
                .await?;
            c.print_one(&a, FIELDS);
        }
        KeysCommand::Revoke { id, if_match } => {
            let a = c
                .send(
                    reqwest::Method::POST,
                    &format!("/v1/api-keys/{}/revoke", seg(&id)),
                    &Vec::new(),
                    None,
                    if_match.as_deref(),
                )
                .await?;
            c.print(&a, |v| render::rows(std::slice::from_ref(v), COLUMNS));
        }
        KeysCommand::Regenerate {
            id,
            grace_seconds,
            if_match,
        } => {
            let a = c
                .send(
                    reqwest::Method::POST,
                    &format!("/v1/api-keys/{}/regenerate", seg(&id)),
                    &Vec::new(),
                    Some(object(vec![(
                        "grace_period_seconds",
                        grace_seconds.map(|g| json!(g)),
                    )])),
                    if_match.as_deref(),
                )
                .await?;
            c.print(&a, with_secret);
        }
        KeysCommand::Copy { id, name } => {
            let a = c
                .post(
                    &format!("/v1/api-keys/{}/copy", seg(&id)),
                    Some(object(vec![("name", s(name))])),
                )
                .await?;
            c.print(&a, with_secret);
        }
    }
    Ok(())
}
