//! Usage analytics: requests over time by outcome, and the busiest credentials.

use crate::auth::Caller;
use crate::dto::*;
use crate::error::{ApiError, ApiResult, AppQuery};
use crate::AppState;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use keyplane_core::domain::usage::{Granularity, Outcome, TopBy, TopQuery, UsageQuery};
use keyplane_core::Error;
use serde::Deserialize;
use utoipa::IntoParams;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/usage", get(usage))
        .route("/v1/usage/top", get(top))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UsageParams {
    /// One API key (`key_…`) or OAuth client (its `client_id`; its access tokens count for it).
    pub credential_id: Option<String>,
    /// An organization (the admin key without it: the whole deployment, including requests
    /// no credential could be named for).
    pub org_id: Option<String>,
    pub project_id: Option<String>,
    /// A service name, as route rules and scopes name it.
    pub service: Option<String>,
    /// Only this outcome: `allowed`, `unknown`, `revoked`, `expired`, `insufficient_scope`,
    /// `rate_limited`, `missing`, `malformed`, `wrong_audience`, `no_rule`, `dpop`.
    pub outcome: Option<String>,
    /// RFC 3339; default: an hour (minutes) or a day (hours) before `until`.
    pub since: Option<String>,
    /// RFC 3339, exclusive; default: now.
    pub until: Option<String>,
    /// `minute` (the default; kept a day) or `hour` (kept 90 days by default).
    pub granularity: Option<String>,
}

/// A bad filter is the request's fault as a whole: 400 problem+json, naming the parameter.
fn bad_filter(e: Error) -> ApiError {
    match e {
        Error::Invalid { field, message } => {
            let mut a = ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "invalid-filter",
                "Invalid filter",
                message,
            );
            a.field = field.map(str::to_string);
            a
        }
        other => other.into(),
    }
}

fn times(
    since: Option<&str>,
    until: Option<&str>,
) -> Result<(Option<time::OffsetDateTime>, Option<time::OffsetDateTime>), Error> {
    Ok((
        since.map(|t| parse_time("since", t)).transpose()?,
        until.map(|t| parse_time("until", t)).transpose()?,
    ))
}

/// Requests over time, one bucket per minute or hour (empty buckets included), counted per
/// outcome. A credential out of the caller's reach answers 404 like an unknown id.
#[utoipa::path(get, path = "/v1/usage", operation_id = "usage_get", tag = "usage", params(UsageParams),
    responses((status = 200, body = UsageView), (status = 400, body = crate::error::Problem, description = "a bad filter: `since` after `until`, too many buckets, an unknown outcome or granularity"), (status = 404, body = crate::error::Problem)),
    security(("bearer" = [])))]
pub async fn usage(
    State(s): State<AppState>,
    c: Caller,
    AppQuery(q): AppQuery<UsageParams>,
) -> ApiResult<Json<UsageView>> {
    let (since, until) = times(q.since.as_deref(), q.until.as_deref()).map_err(bad_filter)?;
    let granularity = match q.granularity.as_deref() {
        None => Granularity::Minute,
        Some(g) => Granularity::parse(g).ok_or_else(|| {
            bad_filter(Error::invalid(
                "granularity",
                "`granularity` is `minute` or `hour`",
            ))
        })?,
    };
    let outcome = q
        .outcome
        .as_deref()
        .map(|o| {
            Outcome::parse(o).ok_or_else(|| {
                bad_filter(Error::invalid(
                    "outcome",
                    format!("no outcome is called {o:?}"),
                ))
            })
        })
        .transpose()?;
    let series = s
        .app
        .usage(
            &c.principal,
            UsageQuery {
                credential_id: q.credential_id,
                org_id: q.org_id,
                project_id: q.project_id,
                service: q.service,
                outcome,
                since,
                until,
                granularity,
            },
        )
        .await
        .map_err(bad_filter)?;
    Ok(Json(series.into()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TopParams {
    pub org_id: Option<String>,
    pub project_id: Option<String>,
    /// RFC 3339; default: a day before `until`.
    pub since: Option<String>,
    /// RFC 3339; default: now.
    pub until: Option<String>,
    /// `requests` (the default) or `refusals`.
    pub by: Option<String>,
    /// 1 to 100; default 10.
    pub limit: Option<u32>,
}

/// The credentials with the most requests (or refusals) in a window, counted by the hour.
#[utoipa::path(get, path = "/v1/usage/top", operation_id = "usage_top", tag = "usage", params(TopParams),
    responses((status = 200, body = Vec<TopCredentialView>), (status = 400, body = crate::error::Problem)),
    security(("bearer" = [])))]
pub async fn top(
    State(s): State<AppState>,
    c: Caller,
    AppQuery(q): AppQuery<TopParams>,
) -> ApiResult<Json<Vec<TopCredentialView>>> {
    let (since, until) = times(q.since.as_deref(), q.until.as_deref()).map_err(bad_filter)?;
    let by = match q.by.as_deref() {
        None | Some("requests") => TopBy::Requests,
        Some("refusals") => TopBy::Refusals,
        Some(_) => {
            return Err(bad_filter(Error::invalid(
                "by",
                "`by` is `requests` or `refusals`",
            )))
        }
    };
    let top = s
        .app
        .usage_top(
            &c.principal,
            TopQuery {
                org_id: q.org_id,
                project_id: q.project_id,
                since,
                until,
                by,
                limit: q.limit,
            },
        )
        .await
        .map_err(bad_filter)?;
    Ok(Json(top.into_iter().map(Into::into).collect()))
}
