//! The use cases, one file per aggregate, each an `impl Keyplane` block opening with a line
//! saying what it serves. A use case never imports a sibling: what two share lives in
//! [`crate::runtime`] (state and shared checks) or [`crate::domain`] (pure rules).
//!
//! Every management use case takes the caller's [`crate::domain::perm::Principal`], reaches its
//! target through the one reach check, applies the privilege ceiling
//! ([`crate::domain::ceiling`]) to whatever it creates or changes, and writes the change with
//! its activity event in one transaction.

pub mod activity;
pub mod admin_key;
pub mod api_keys;
pub mod check;
pub mod clients;
pub mod console;
pub mod declared;
pub mod grants;
pub mod leaks;
pub mod members;
pub mod operations;
pub mod orgs;
pub mod projects;
pub mod resources;
pub mod roles;
pub mod services;
pub mod signing_keys;
pub mod tokens;
pub mod usage;

/// How many times a change is computed again when another change to the same row committed
/// first (without `If-Match`). Each try re-reads the row, so no edit is lost.
pub(crate) const RETRIES: usize = 8;

use crate::domain::error::{Error, Result};

/// Refuses a change computed from a row at `current` when the caller asked for another
/// version (`If-Match`).
pub(crate) fn check_version(if_match: Option<i64>, current: i64, what: &'static str) -> Result<()> {
    match if_match {
        Some(v) if v != current => Err(Error::PreconditionFailed(what)),
        _ => Ok(()),
    }
}

/// Runs one attempt of a read-modify-write again while another change to the same row commits
/// first: each attempt re-reads the row, so no edit is lost. With `If-Match`, a conflict is the
/// caller's precondition failing instead.
macro_rules! retry_on_conflict {
    ($if_match:expr, $attempt:expr) => {{
        let mut tries = 0;
        loop {
            match $attempt.await {
                Err($crate::domain::error::Error::VersionConflict(what)) => {
                    if $if_match.is_some() {
                        break Err($crate::domain::error::Error::PreconditionFailed(what));
                    }
                    tries += 1;
                    if tries >= $crate::usecase::RETRIES {
                        break Err($crate::domain::error::Error::VersionConflict(what));
                    }
                }
                other => break other,
            }
        }
    }};
}
pub(crate) use retry_on_conflict;
