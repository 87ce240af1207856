//! `keyplane webhooks ...`: webhook endpoints (`/v1/webhooks`), their secrets and delivery log.

use super::{object, push, render, s, seg, Client, ClientArgs, Paging};
use anyhow::Result;
use reqwest::Method;
use serde_json::{json, Value};

#[derive(Debug, clap::Subcommand)]
pub enum WebhooksCommand {
    /// Register an endpoint; its signing secret (whsec_…) is printed once (POST /v1/webhooks).
    Create {
        /// Where deliveries are POSTed: an https:// URL (`--url` is the server's).
        #[arg(id = "endpoint", value_name = "ENDPOINT_URL")]
        endpoint: String,
        /// An event type to send (repeat), e.g. api_key.revoke; `api_key.*` for an area, `*`
        /// for every event.
        #[arg(long = "event", value_name = "TYPE", required = true)]
        events: Vec<String>,
        /// The organization (default: the credential's).
        #[arg(long, value_name = "ID")]
        org_id: Option<String>,
        /// Only events about this project's credentials.
        #[arg(long, value_name = "ID")]
        project_id: Option<String>,
        /// What the endpoint is for.
        #[arg(long)]
        description: Option<String>,
    },
    /// List the organization's endpoints (GET /v1/webhooks).
    List {
        /// The organization (default: the credential's).
        #[arg(long, value_name = "ID")]
        org_id: Option<String>,
    },
    /// Show one endpoint (GET /v1/webhooks/ID).
    Get {
        /// The endpoint's id (whk_…).
        id: String,
    },
    /// Change an endpoint's URL, events, description, or enable or disable it
    /// (PATCH /v1/webhooks/ID).
    Update {
        /// The endpoint's id (whk_…).
        id: String,
        /// A new URL for deliveries (`--url` is the server's).
        #[arg(long = "endpoint-url", id = "endpoint_url", value_name = "URL")]
        endpoint_url: Option<String>,
        /// Replace the event types (repeat).
        #[arg(long = "event", value_name = "TYPE")]
        events: Vec<String>,
        /// A new description.
        #[arg(long)]
        description: Option<String>,
        /// Enable it (also one keyplane disabled after sustained failure).
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        /// Disable it: nothing is queued for it until enabled again.
        #[arg(long)]
        disable: bool,
    },
    /// Delete an endpoint and its delivery log (DELETE /v1/webhooks/ID).
    Delete {
        /// The endpoint's id (whk_…).
        id: String,
    },
    /// A new signing secret, printed once; the old one keeps signing beside it for the
    /// configured overlap (POST /v1/webhooks/ID/rotate-secret).
    RotateSecret {
        /// The endpoint's id (whk_…).
        id: String,
    },
    /// The delivery log, newest first: state, attempts, response codes, errors
    /// (GET /v1/webhooks/ID/deliveries).
    Deliveries {
        /// The endpoint's id (whk_…).
        id: String,
        #[command(flatten)]
        paging: Paging,
    },
    /// Send a delivery again now, with the same webhook-id
    /// (POST /v1/webhooks/ID/deliveries/DELIVERY_ID/redeliver).
    Redeliver {
        /// The endpoint's id (whk_…).
        id: String,
        /// The delivery's id (its webhook-id, msg_…; see `deliveries`).
        delivery_id: String,
    },
}

const COLUMNS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("URL", "url"),
    ("EVENTS", "events"),
    ("ENABLED", "enabled"),
    ("FAILING SINCE", "failing_since"),
    ("CREATED", "created_at"),
];

const FIELDS: &[&str] = &[
    "id",
    "url",
    "description",
    "org_id",
    "project_id",
    "events",
    "enabled",
    "disabled_reason",
    "failing_since",
    "previous_secret_until",
    "created_at",
    "updated_at",
];

const DELIVERY_COLUMNS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("EVENT", "event_type"),
    ("STATE", "state"),
    ("STATUS", "last_status"),
    ("ERROR", "last_error"),
    ("CREATED", "created_at"),
    ("NEXT ATTEMPT", "next_attempt_at"),
];

fn with_secret(v: &Value) -> String {
    format!(
        "{}\n\nsecret: {}\n{}",
        render::details(v, FIELDS),
        render::cell(v, "secret"),
        render::cell(v, "message")
    )
}

pub async fn run(args: &ClientArgs, cmd: WebhooksCommand) -> Result<()> {
    let c = Client::new(args)?;
    match cmd {
        WebhooksCommand::Create {
            endpoint,
            events,
            org_id,
            project_id,
            description,
        } => {
            let body = object(vec![
                ("url", Some(json!(endpoint))),
                ("events", Some(json!(events))),
                ("org_id", s(org_id)),
                ("project_id", s(project_id)),
                ("description", s(description)),
            ]);
            let a = c.post("/v1/webhooks", Some(body)).await?;
            c.print(&a, with_secret);
        }
        WebhooksCommand::List { org_id } => {
            let mut q = Vec::new();
            push(&mut q, "org_id", org_id);
            let a = c.get("/v1/webhooks", &q).await?;
            c.print_list(&a, COLUMNS);
        }
        WebhooksCommand::Get { id } => {
            let a = c
                .get(&format!("/v1/webhooks/{}", seg(&id)), &Vec::new())
                .await?;
            c.print_one(&a, FIELDS);
        }
        WebhooksCommand::Update {
            id,
            endpoint_url,
            events,
            description,
            enable,
            disable,
        } => {
            let enabled = if enable {
                Some(json!(true))
            } else if disable {
                Some(json!(false))
            } else {
                None
            };
            let body = object(vec![
                ("url", s(endpoint_url)),
                ("events", (!events.is_empty()).then(|| json!(events))),
                ("description", s(description)),
                ("enabled", enabled),
            ]);
            let a = c
                .send(
                    Method::PATCH,
                    &format!("/v1/webhooks/{}", seg(&id)),
                    &Vec::new(),
                    Some(body),
                    None,
                )
                .await?;
            c.print_one(&a, FIELDS);
        }
        WebhooksCommand::Delete { id } => {
            c.send(
                Method::DELETE,
                &format!("/v1/webhooks/{}", seg(&id)),
                &Vec::new(),
                None,
                None,
            )
            .await?;
            c.print_done(&format!("deleted webhook {id}"));
        }
        WebhooksCommand::RotateSecret { id } => {
            let a = c
                .post(&format!("/v1/webhooks/{}/rotate-secret", seg(&id)), None)
                .await?;
            c.print(&a, with_secret);
        }
        WebhooksCommand::Deliveries { id, paging } => {
            let mut q = Vec::new();
            push(&mut q, "limit", paging.limit);
            push(&mut q, "cursor", paging.cursor);
            let a = c
                .get(&format!("/v1/webhooks/{}/deliveries", seg(&id)), &q)
                .await?;
            c.print_list(&a, DELIVERY_COLUMNS);
        }
        WebhooksCommand::Redeliver { id, delivery_id } => {
            c.post(
                &format!(
                    "/v1/webhooks/{}/deliveries/{}/redeliver",
                    seg(&id),
                    seg(&delivery_id)
                ),
                None,
            )
            .await?;
            c.print_done(&format!("delivery {delivery_id} queued again"));
        }
    }
    Ok(())
}
