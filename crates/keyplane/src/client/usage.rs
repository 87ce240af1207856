//! `keyplane usage [top]`: usage analytics through a running server (`/v1/usage`,
//! `/v1/usage/top`).

use super::{push, render, Client, ClientArgs};
use anyhow::Result;
use serde_json::Value;

#[derive(Debug, Clone, clap::Args)]
pub struct UsageArgs {
    #[command(subcommand)]
    pub command: Option<UsageCommand>,
    #[command(flatten)]
    pub filters: UsageFilters,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum UsageCommand {
    /// The credentials with the most requests or refusals (GET /v1/usage/top).
    Top {
        /// Only this organization (the admin key: every one by default).
        #[arg(long, value_name = "ID")]
        org_id: Option<String>,
        /// Only this project.
        #[arg(long, value_name = "ID")]
        project_id: Option<String>,
        /// From this time (RFC 3339; default a day ago).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Until this time (RFC 3339; default now).
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        /// Rank by `requests` (default) or `refusals`.
        #[arg(long, value_name = "WHAT")]
        by: Option<String>,
        /// How many (1 to 100; default 10).
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
    },
}

/// The filters of `keyplane usage` (GET /v1/usage).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct UsageFilters {
    /// One API key (key_…) or OAuth client id.
    #[arg(long, value_name = "ID")]
    pub credential_id: Option<String>,
    /// Only this organization (the admin key: the whole deployment by default).
    #[arg(long, value_name = "ID")]
    pub org_id: Option<String>,
    /// Only this project.
    #[arg(long, value_name = "ID")]
    pub project_id: Option<String>,
    /// Only this service.
    #[arg(long, value_name = "NAME")]
    pub service: Option<String>,
    /// Only this outcome (allowed, unknown, revoked, expired, insufficient_scope, rate_limited, …).
    #[arg(long, value_name = "OUTCOME")]
    pub outcome: Option<String>,
    /// From this time (RFC 3339; default an hour, or with --granularity hour a day, ago).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Until this time (RFC 3339; default now).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// `minute` (default) or `hour`.
    #[arg(long, value_name = "G")]
    pub granularity: Option<String>,
    /// Show empty buckets too.
    #[arg(long)]
    pub all_buckets: bool,
}

/// The series as a table: one line per bucket with requests (empty ones only with
/// --all-buckets), each outcome's count, and a total line.
fn series(v: &Value, all: bool) -> String {
    let buckets = v["buckets"].as_array().cloned().unwrap_or_default();
    let mut outcomes: Vec<String> = Vec::new();
    for b in &buckets {
        if let Some(c) = b["counts"].as_object() {
            for k in c.keys() {
                if !outcomes.contains(k) {
                    outcomes.push(k.clone());
                }
            }
        }
    }
    outcomes.sort_by_key(|o| (o != "allowed", o.clone()));
    let mut headers = vec!["START".to_string(), "TOTAL".to_string()];
    headers.extend(outcomes.iter().map(|o| o.to_uppercase()));
    let mut rows = Vec::new();
    let mut sum = 0u64;
    for b in &buckets {
        let total = b["total"].as_u64().unwrap_or(0);
        sum += total;
        if total == 0 && !all {
            continue;
        }
        let mut row = vec![render::cell(b, "start"), total.to_string()];
        for o in &outcomes {
            row.push(b["counts"][o].as_u64().unwrap_or(0).to_string());
        }
        rows.push(row);
    }
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let mut out = render::table(&headers, &rows);
    out.push_str(&format!(
        "\n{} requests in {} {} buckets from {} to {}",
        sum,
        buckets.len(),
        render::cell(v, "granularity"),
        render::cell(v, "since"),
        render::cell(v, "until")
    ));
    out
}

const TOP_COLUMNS: &[(&str, &str)] = &[
    ("CREDENTIAL", "credential_id"),
    ("KIND", "kind"),
    ("NAME", "name"),
    ("REQUESTS", "requests"),
    ("REFUSALS", "refusals"),
    ("ORG", "org_id"),
    ("PROJECT", "project_id"),
];

pub async fn run(args: &ClientArgs, u: UsageArgs) -> Result<()> {
    let c = Client::new(args)?;
    match u.command {
        None => {
            let f = u.filters;
            let mut q = Vec::new();
            push(&mut q, "credential_id", f.credential_id);
            push(&mut q, "org_id", f.org_id);
            push(&mut q, "project_id", f.project_id);
            push(&mut q, "service", f.service);
            push(&mut q, "outcome", f.outcome);
            push(&mut q, "since", f.since);
            push(&mut q, "until", f.until);
            push(&mut q, "granularity", f.granularity);
            let a = c.get("/v1/usage", &q).await?;
            let all = f.all_buckets;
            c.print(&a, |v| series(v, all));
        }
        Some(UsageCommand::Top {
            org_id,
            project_id,
            since,
            until,
            by,
            limit,
        }) => {
            let mut q = Vec::new();
            push(&mut q, "org_id", org_id);
            push(&mut q, "project_id", project_id);
            push(&mut q, "since", since);
            push(&mut q, "until", until);
            push(&mut q, "by", by);
            push(&mut q, "limit", limit);
            let a = c.get("/v1/usage/top", &q).await?;
            c.print(&a, |v| {
                render::rows(v.as_array().map(Vec::as_slice).unwrap_or(&[]), TOP_COLUMNS)
            });
        }
    }
    Ok(())
}
