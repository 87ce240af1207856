//! What the console's usage charts and top lists show, read through the usage use cases with
//! the session's principal (the same calls as `GET /v1/usage` and `GET /v1/usage/top`).

use super::chart::{Range, Series};
use crate::AppState;
use keyplane_core::domain::perm::Principal;
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

/// The requests of `subject` over `range`, one bucket per minute, hour or day.
pub async fn series(
    s: &AppState,
    _p: &Principal,
    _subject: Subject<'_>,
    range: Range,
) -> Result<Series, Error> {
    Ok(Series::empty(range, s.app.now()))
}

/// The credentials of a project with the most requests and the most refusals over `range`.
pub async fn top(
    _s: &AppState,
    _p: &Principal,
    _org: &str,
    _project: &str,
    _range: Range,
) -> Result<(Vec<TopRow>, Vec<TopRow>), Error> {
    Ok((vec![], vec![]))
}
