//! What the console's usage charts and top lists show, read through the usage use cases with
//! the session's principal (the same calls as `GET /v1/usage` and `GET /v1/usage/top`), so a
//! chart shows exactly what the API would answer that person.

use super::chart::{Range, Series};
use super::present::short_id;
use crate::AppState;
use keyplane_core::domain::perm::Principal;
use keyplane_core::domain::usage::{CredentialKind, Granularity, TopBy, TopQuery, UsageQuery};
use keyplane_core::Error;

/// One line of a top list.
pub struct TopRow {
    pub name: String,
    pub id: String,
    pub href: String,
    pub count: u64,
}

/// Whose requests a chart counts.
pub enum Subject<'a> {
    /// Every credential of a project.
    Project { org: &'a str, project: &'a str },
    /// One API key (`key_…`) or client (`kpc_…`).
    Credential(&'a str),
}

/// The requests of `subject` over `range`: per minute for the last hour, per hour for the
/// last day, and the hours of the last 30 days added up per day.
pub async fn series(
    s: &AppState,
    p: &Principal,
    subject: Subject<'_>,
    range: Range,
) -> Result<Series, Error> {
    let now = s.app.now();
    let mut out = Series::empty(range, now);
    let mut q = UsageQuery {
        since: Some(out.start),
        until: Some(now),
        granularity: match range {
            Range::Hour => Granularity::Minute,
            Range::Day | Range::Month => Granularity::Hour,
        },
        ..UsageQuery::default()
    };
    match subject {
        Subject::Project { org, project } => {
            q.org_id = Some(org.to_string());
            q.project_id = Some(project.to_string());
        }
        Subject::Credential(id) => q.credential_id = Some(id.to_string()),
    }
    let answer = s.app.usage(p, q).await?;
    for b in answer.buckets {
        for (outcome, count) in b.counts {
            out.add(b.start, outcome.as_str(), count);
        }
    }
    Ok(out)
}

/// The credentials of a project with the most requests and the most refusals over `range`.
pub async fn top(
    s: &AppState,
    p: &Principal,
    org: &str,
    project: &str,
    range: Range,
) -> Result<(Vec<TopRow>, Vec<TopRow>), Error> {
    let now = s.app.now();
    let mut lists = Vec::with_capacity(2);
    for by in [TopBy::Requests, TopBy::Refusals] {
        let rows = s
            .app
            .usage_top(
                p,
                TopQuery {
                    org_id: Some(org.to_string()),
                    project_id: Some(project.to_string()),
                    since: Some(range.start(now)),
                    until: Some(now),
                    by,
                    limit: Some(5),
                },
            )
            .await?;
        lists.push(
            rows.into_iter()
                .map(|t| {
                    let count = match by {
                        TopBy::Requests => t.requests,
                        TopBy::Refusals => t.refusals,
                    };
                    let href = match t.kind {
                        CredentialKind::ApiKey => {
                            format!("/console/keys?selected={}", t.credential_id)
                        }
                        CredentialKind::Client => format!(
                            "/console/clients?selected={}",
                            form_urlencoded::byte_serialize(t.credential_id.as_bytes())
                                .collect::<String>()
                        ),
                    };
                    TopRow {
                        name: if t.name.is_empty() {
                            format!("{} (deleted)", short_id(&t.credential_id))
                        } else {
                            t.name
                        },
                        id: t.credential_id,
                        href,
                        count,
                    }
                })
                .filter(|r| r.count > 0)
                .collect(),
        );
    }
    let refusals = lists.pop().unwrap_or_default();
    let traffic = lists.pop().unwrap_or_default();
    Ok((traffic, refusals))
}
