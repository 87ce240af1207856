//! `keyplane activity query|verify`: the activity log through a running server
//! (`/v1/activity`); `verify` also runs on the database directly (`crate::database`).

use super::{push, render, Client, ClientArgs, Paging};
use crate::config::ConfigFlags;
use anyhow::Result;
use serde_json::Value;

#[derive(Debug, clap::Subcommand)]
pub enum ActivityCommand {
    /// Activity events, newest first (GET /v1/activity): one page (50 by default) unless
    /// --all.
    Query {
        /// Only this organization's events (the admin key sees all by default).
        #[arg(long, value_name = "ID")]
        org_id: Option<String>,
        /// Only this action, e.g. api_key.revoke or credential.refused.
        #[arg(long)]
        action: Option<String>,
        /// Only events whose actor contains this, e.g. a key or member id.
        #[arg(long)]
        actor: Option<String>,
        /// Only events about this id.
        #[arg(long, value_name = "ID")]
        target: Option<String>,
        /// Only events at or after this time (RFC 3339).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Only events before this time (RFC 3339).
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        /// Read every page, not only the first.
        #[arg(long, conflicts_with_all = ["limit", "cursor"])]
        all: bool,
        #[command(flatten)]
        paging: Paging,
    },
    /// Check that no event was edited, deleted or reordered. Through a running server
    /// (GET /v1/activity/verify: the events since the last checkpoint, or --full), or with
    /// --local (implied by --database, --config or --data-dir) on the database directly: the
    /// whole chain through every checkpoint. Exits 1 if the chain is broken.
    Verify(VerifyArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// Walk the whole chain from its first event, through every checkpoint (through a server:
    /// the admin key only; on the database it always does).
    #[arg(long)]
    pub full: bool,
    /// Verify on the database directly instead of through a server (the deployment's
    /// database and pepper; it writes nothing and never creates either).
    #[arg(long)]
    pub local: bool,
    #[command(flatten)]
    pub database: ConfigFlags,
}

impl VerifyArgs {
    /// Whether to verify on the database: asked for, or implied by a database flag.
    pub fn is_local(&self) -> bool {
        self.local
            || self.database.config.is_some()
            || self.database.database.is_some()
            || self.database.data_dir.is_some()
    }
}

const COLUMNS: &[(&str, &str)] = &[
    ("SEQ", "seq"),
    ("AT", "at"),
    ("ACTION", "action"),
    ("OUTCOME", "outcome"),
    ("ACTOR", "actor"),
    ("TARGET", "target"),
    ("ORG", "org_id"),
    ("CLIENT ADDR", "client_addr"),
];

/// A verification report (the API's `VerifyView` or the core's report), for people.
pub fn verify_report(v: &Value) -> String {
    let mut out = render::details(
        v,
        &["intact", "checked", "full", "started_after", "verified_to"],
    );
    if let Some(b) = v.get("first_broken").filter(|b| !b.is_null()) {
        out.push_str(&format!(
            "\nfirst broken event: #{} {}: {}",
            render::cell(b, "seq"),
            render::cell(b, "id"),
            render::cell(b, "reason")
        ));
    }
    out
}

pub async fn query(args: &ClientArgs, cmd: ActivityCommand) -> Result<bool> {
    if matches!(cmd, ActivityCommand::Verify(_)) && args.token.is_none() {
        anyhow::bail!(
            "no credential: pass --token or set KEYPLANE_TOKEN to verify through a running \
             server, or pass --local (or --database/--config) to verify the database directly"
        );
    }
    let c = Client::new(args)?;
    match cmd {
        ActivityCommand::Query {
            org_id,
            action,
            actor,
            target,
            since,
            until,
            all,
            paging,
        } => {
            let mut q = Vec::new();
            push(&mut q, "org_id", org_id);
            push(&mut q, "action", action);
            push(&mut q, "actor", actor);
            push(&mut q, "target", target);
            push(&mut q, "since", since);
            push(&mut q, "until", until);
            let a = if all {
                q.push(("limit", "200".into()));
                c.list("/v1/activity", q, &Paging::default()).await?
            } else {
                // One page: the server's default size unless --limit.
                let mut q = q;
                push(&mut q, "limit", paging.limit);
                push(&mut q, "cursor", paging.cursor);
                c.get("/v1/activity", &q).await?
            };
            c.print_list(&a, COLUMNS);
            Ok(true)
        }
        ActivityCommand::Verify(v) => {
            let mut q = Vec::new();
            if v.full {
                q.push(("full", "true".to_string()));
            }
            let a = c.get("/v1/activity/verify", &q).await?;
            c.print(&a, verify_report);
            Ok(a.value["intact"] == true)
        }
    }
}
