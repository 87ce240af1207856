//! The console's Webhooks page: the organization's endpoints (create, enable or disable,
//! delete) and the delivery log of one, through the same use cases as `/v1/webhooks`.

use super::pages::layout;
use super::views::{html, Layout, When};
use super::{done, Answer, Fail, Posted, Session};
use crate::error::ApiError;
use crate::AppState;
use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use keyplane_core::domain::perm::Permission;
use keyplane_core::usecase::webhooks::{NewWebhook, WebhookPatch};
use keyplane_core::Error;
use serde::Deserialize;
use serde_json::json;

const BACK: &str = "/console/webhooks";

fn fail(js: bool) -> impl Fn(Error) -> Fail {
    move |e| Fail::new(js, BACK, ApiError::from(e))
}

#[derive(Template)]
#[template(path = "console/webhooks.html")]
pub struct WebhooksPage {
    pub layout: Layout,
    /// Whether the session may manage webhooks (`webhooks:manage`).
    pub allowed: bool,
    pub endpoints: Vec<EndpointRow>,
    /// The endpoint whose deliveries are shown, with them.
    pub selected: Option<(String, Vec<DeliveryRow>)>,
}

pub struct EndpointRow {
    pub id: String,
    pub url: String,
    pub events: String,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub failing_since: When,
    pub created: When,
}

pub struct DeliveryRow {
    pub id: String,
    pub event_type: String,
    pub state: &'static str,
    pub created: When,
    pub attempts: usize,
    pub last_status: String,
    pub last_error: String,
}

#[derive(Deserialize)]
pub struct PageQuery {
    #[serde(default)]
    pub selected: Option<String>,
}

pub async fn page(
    State(s): State<AppState>,
    sess: Session,
    Query(q): Query<PageQuery>,
) -> Result<Response, Fail> {
    let (layout, org, _) = layout(&s, &sess, "Webhooks", "webhooks").await?;
    let p = &sess.signed.principal;
    let allowed = p.permissions.has(Permission::WebhooksManage) || p.is_admin_key();
    let fail = |e: Error| Fail::new(false, "/console/overview", e.into());
    let mut endpoints = Vec::new();
    let mut selected = None;
    if allowed {
        for e in s.app.webhook_list(p, Some(&org)).await.map_err(fail)? {
            endpoints.push(EndpointRow {
                url: e.url,
                events: e.events.join(" "),
                enabled: e.enabled,
                disabled_reason: e.disabled_reason,
                failing_since: When(e.failing_since),
                created: When(Some(e.created_at)),
                id: e.id,
            });
        }
        if let Some(id) = q
            .selected
            .filter(|id| endpoints.iter().any(|e| &e.id == id))
        {
            let page = s
                .app
                .webhook_deliveries(p, &id, None, Some(20))
                .await
                .map_err(fail)?;
            let rows = page
                .items
                .into_iter()
                .map(|(d, attempts)| DeliveryRow {
                    id: d.id,
                    event_type: d.event_type,
                    state: d.state.as_str(),
                    created: When(Some(d.created_at)),
                    attempts: attempts.len(),
                    last_status: d.last_status.map(|s| s.to_string()).unwrap_or_default(),
                    last_error: d.last_error.unwrap_or_default(),
                })
                .collect();
            selected = Some((id, rows));
        }
    }
    Ok(html(&WebhooksPage {
        layout,
        allowed,
        endpoints,
        selected,
    }))
}

pub async fn create(State(s): State<AppState>, p: Posted) -> Answer {
    let (org, _) = super::pages::scope(&s, &p.signed)
        .await
        .map_err(fail(p.js))?;
    let f = &p.form;
    let events: Vec<String> = f
        .get("events")
        .unwrap_or("")
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect();
    let input = NewWebhook {
        org_id: Some(org),
        project_id: None,
        url: f.get("url").unwrap_or("").to_string(),
        events,
        description: f.get("description").map(str::to_string),
    };
    let (ep, secret) = s
        .app
        .webhook_create(&p.signed.principal, input, &p.meta)
        .await
        .map_err(fail(p.js))?;
    Ok(Json(json!({
        "secret": {
            "title": "Webhook endpoint created",
            "warning": "Copy the signing secret now: it will not be shown again. Receivers verify each delivery's webhook-signature with it (Standard Webhooks).",
            "items": [
                { "label": "Endpoint", "value": ep.url },
                { "label": "Signing secret", "value": secret.expose() },
            ],
            "token_action": null,
        }
    }))
    .into_response())
}

pub async fn toggle(State(s): State<AppState>, Path(id): Path<String>, p: Posted) -> Answer {
    let patch = WebhookPatch {
        enabled: Some(p.form.get("enabled") == Some("true")),
        ..Default::default()
    };
    s.app
        .webhook_update(&p.signed.principal, &id, patch, &p.meta)
        .await
        .map_err(fail(p.js))?;
    Ok(done(p.js, BACK))
}

pub async fn delete(State(s): State<AppState>, Path(id): Path<String>, p: Posted) -> Answer {
    s.app
        .webhook_delete(&p.signed.principal, &id, &p.meta)
        .await
        .map_err(fail(p.js))?;
    Ok(done(p.js, BACK))
}
