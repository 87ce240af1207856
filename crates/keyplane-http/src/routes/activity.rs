//! The activity log: query and verify.

use crate::auth::Caller;
use crate::dto::*;
use crate::error::{ApiResult, AppQuery};
use crate::AppState;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use keyplane_core::store::EventFilter;
use serde::Deserialize;
use utoipa::IntoParams;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/activity", get(query))
        .route("/v1/activity/verify", get(verify))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ActivityQuery {
    /// Only this organization's events (the admin key sees all by default).
    pub org_id: Option<String>,
    /// e.g. `api_key.revoke`, `credential.refused`
    pub action: Option<String>,
    /// Matches any part of the actor, e.g. a key or member id.
    pub actor: Option<String>,
    /// The id the event is about.
    pub target: Option<String>,
    /// RFC 3339; events at or after.
    pub since: Option<String>,
    /// RFC 3339; events before.
    pub until: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<i64>,
}

/// Activity events, newest first.
#[utoipa::path(get, path = "/v1/activity", operation_id = "activity_list", tag = "activity", params(ActivityQuery),
    responses((status = 200, body = List<EventView>)), security(("bearer" = [])))]
pub async fn query(
    State(s): State<AppState>,
    c: Caller,
    AppQuery(q): AppQuery<ActivityQuery>,
) -> ApiResult<Json<List<EventView>>> {
    let filter = EventFilter {
        org_id: None,
        action: q.action,
        actor: q.actor,
        target: q.target,
        since: q
            .since
            .as_deref()
            .map(|t| parse_time("since", t))
            .transpose()?,
        until: q
            .until
            .as_deref()
            .map(|t| parse_time("until", t))
            .transpose()?,
    };
    let page = s
        .app
        .activity_query(
            &c.principal,
            q.org_id.as_deref(),
            filter,
            q.cursor.as_deref(),
            q.limit,
        )
        .await?;
    Ok(Json(List {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct VerifyQuery {
    /// Walk the chain from its first event, through every checkpoint (the admin key only).
    /// Without it, the events since the last checkpoint are verified.
    pub full: Option<bool>,
}

/// Whether the activity chain is intact: every event present, in order, unedited. Verifies the
/// events appended since the last checkpoint (`full=true`: the whole chain, admin key only).
/// A caller scoped to an organization gets the chain's state with its organization's events
/// counted, and the broken event named only when it is one of them.
#[utoipa::path(get, path = "/v1/activity/verify", operation_id = "activity_verify", tag = "activity", params(VerifyQuery),
    responses((status = 200, body = VerifyView)), security(("bearer" = [])))]
pub async fn verify(
    State(s): State<AppState>,
    c: Caller,
    AppQuery(q): AppQuery<VerifyQuery>,
) -> ApiResult<Json<VerifyView>> {
    let r = s
        .app
        .activity_verify(&c.principal, q.full.unwrap_or(false))
        .await?;
    Ok(Json(VerifyView {
        intact: r.intact,
        checked: r.checked,
        first_broken: r.first_broken.map(|b| BrokenView {
            seq: b.seq,
            id: b.id,
            reason: b.reason,
        }),
        full: r.full,
        started_after: r.started_after,
        verified_to: r.verified_to,
    }))
}
