//! [`Keyplane`] use cases of usage analytics: requests over time by outcome
//! (`GET /v1/usage`) and the credentials with the most traffic (`GET /v1/usage/top`).
//!
//! Who sees what: usage of one credential needs the permission to manage it (`keys:manage`
//! for an API key, `clients:manage` for an OAuth client; a member with `keys:own` sees their
//! own credentials), and a credential out of reach answers exactly like an unknown id. Usage of
//! a whole organization or project needs `keys:manage` over the whole organization. The admin
//! key without `org_id` sees the deployment: every organization plus the requests no
//! credential could be named for (missing, malformed or unknown credentials, counted with an
//! empty organization).

use crate::app::Keyplane;
use crate::domain::error::{Error, Result};
use crate::domain::ids::is_id;
use crate::domain::perm::{Permission, Principal};
use crate::domain::usage::{
    CredentialKind, Granularity, TopBy, TopCredential, TopQuery, UsageQuery, UsageSeries,
    UsageWindow,
};
use crate::store::UsageFilter;

impl Keyplane {
    /// Requests over time, one bucket per minute or hour from `since` to `until` (empty buckets
    /// included), counted per outcome.
    pub async fn usage(&self, p: &Principal, q: UsageQuery) -> Result<UsageSeries> {
        let window = UsageWindow::resolve(q.granularity, q.since, q.until, self.rt.now())?;
        let filter = self
            .usage_filter(
                p,
                q.org_id.as_deref(),
                q.project_id,
                q.credential_id,
                q.service,
            )
            .await?;
        let filter = UsageFilter {
            outcome: q.outcome,
            ..filter
        };
        let rows = self
            .rt
            .store
            .usage_series(&filter, window.granularity, window.first, window.end)
            .await?;
        Ok(window.series(&rows))
    }

    /// The credentials with the most requests (or refusals) in a window (default: the last
    /// day), counted from the hourly rows.
    pub async fn usage_top(&self, p: &Principal, q: TopQuery) -> Result<Vec<TopCredential>> {
        let now = self.rt.now();
        let since = q.since.unwrap_or(now - time::Duration::days(1));
        let window = UsageWindow::resolve(Granularity::Hour, Some(since), q.until, now)?;
        let limit = q.limit.unwrap_or(10);
        if !(1..=100).contains(&limit) {
            return Err(Error::invalid("limit", "`limit` must be from 1 to 100"));
        }
        let filter = self
            .usage_filter(p, q.org_id.as_deref(), q.project_id, None, None)
            .await?;
        let rows = self
            .rt
            .store
            .usage_top(
                &filter,
                window.first,
                window.end,
                q.by == TopBy::Refusals,
                i64::from(limit),
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let (kind, name) = if is_id("key", &r.credential_id) {
                let name = self.rt.store.api_key_get(&r.credential_id).await?;
                (CredentialKind::ApiKey, name.map(|k| k.name))
            } else {
                let name = self.rt.store.client_get(&r.credential_id).await?;
                (CredentialKind::Client, name.map(|(c, _)| c.name))
            };
            out.push(TopCredential {
                credential_id: r.credential_id,
                kind,
                name: name.unwrap_or_default(),
                org_id: r.org_id,
                project_id: r.project_id,
                requests: r.requests,
                refusals: r.refusals,
            });
        }
        Ok(out)
    }

    /// What rows a caller may read: one credential in reach, or an organization (or project)
    /// it manages every key of, or (the admin key, without `org_id`) everything.
    async fn usage_filter(
        &self,
        p: &Principal,
        org_id: Option<&str>,
        project_id: Option<String>,
        credential_id: Option<String>,
        service: Option<String>,
    ) -> Result<UsageFilter> {
        const WHAT: &str = "credential";
        if service
            .as_ref()
            .is_some_and(|s| s.is_empty() || s.len() > 128)
        {
            return Err(Error::invalid(
                "service",
                "`service` must be 1 to 128 characters",
            ));
        }
        let rt = &self.rt;
        if let Some(id) = credential_id {
            let org = if is_id("key", &id) {
                let (key, _) = rt
                    .key_in_reach(p, &id)
                    .await
                    .map_err(|e| not_found_as(e, WHAT))?;
                (key.org_id, key.project_id)
            } else {
                let (c, _, _) = rt
                    .client_in_reach(p, &id)
                    .await
                    .map_err(|e| not_found_as(e, WHAT))?;
                (c.org_id, c.project_id)
            };
            // Asking for another organization (or project) than the credential's is a filter
            // that matches nothing; say so as for an unknown id.
            if org_id.is_some_and(|o| o != org.0)
                || project_id.as_ref().is_some_and(|pr| *pr != org.1)
            {
                return Err(Error::NotFound(WHAT));
            }
            return Ok(UsageFilter {
                org_id: Some(org.0),
                project_id: Some(org.1),
                credential_id: Some(id),
                service,
                outcome: None,
            });
        }
        if p.is_admin_key() && org_id.is_none() {
            if project_id.is_some() {
                return Err(Error::invalid(
                    "project_id",
                    "`project_id` needs `org_id` for the admin key",
                ));
            }
            return Ok(UsageFilter {
                service,
                ..UsageFilter::default()
            });
        }
        let access = p.access(org_id, Permission::KeysManage)?;
        if access.only_member().is_some() {
            return Err(Error::Forbidden(
                "usage of a whole organization needs the `keys:manage` permission; ask for one of your own credentials with `credential_id`".into(),
            ));
        }
        if let Some(pr) = &project_id {
            rt.project_in(access.org_id(), Some(pr)).await?;
        }
        Ok(UsageFilter {
            org_id: Some(access.org_id().to_string()),
            project_id,
            credential_id: None,
            service,
            outcome: None,
        })
    }
}

fn not_found_as(e: Error, what: &'static str) -> Error {
    match e {
        Error::NotFound(_) => Error::NotFound(what),
        other => other,
    }
}
