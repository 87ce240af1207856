//! [`Keyplane`] use cases of the activity log: querying it, verifying its chain, and recording
//! refused management requests.

use crate::app::Keyplane;
use crate::domain::activity::{ChainVerifier, VerifyReport};
use crate::domain::error::{Error, Result};
use crate::domain::ids::new_id;
use crate::domain::model::{Event, NewEvent, Outcome};
use crate::domain::perm::{Permission, Principal};
use crate::domain::request::{page_limit, paginate, parse_cursor, Page, RequestMeta};
use crate::store::EventFilter;

impl Keyplane {
    /// Records a management request that was refused for lack of permission.
    pub async fn record_denied(&self, p: &Principal, action: &str, meta: &RequestMeta, why: &str) {
        let result = self
            .rt
            .store
            .activity_append(&[NewEvent {
                id: new_id("evt"),
                at: self.rt.now(),
                org_id: p.org_id.clone(),
                actor: p.actor_label(),
                action: action.into(),
                target: None,
                outcome: Outcome::Denied,
                client_addr: meta.addr_text(),
                user_agent: meta.agent_text(),
                details: serde_json::json!({ "reason": why }),
            }])
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "could not record a denied request");
        }
    }

    pub async fn activity_query(
        &self,
        p: &Principal,
        org_id: Option<&str>,
        mut filter: EventFilter,
        cursor: Option<&str>,
        limit: Option<i64>,
    ) -> Result<Page<Event>> {
        // The admin key sees every organization's events unless it names one; others their own.
        filter.org_id = if p.is_admin_key() {
            org_id.map(str::to_string)
        } else {
            Some(
                p.access(org_id, Permission::ActivityRead)?
                    .org_id()
                    .to_string(),
            )
        };
        let limit = page_limit(limit)?;
        let items = self
            .rt
            .store
            .activity_query(&filter, parse_cursor(cursor)?, limit + 1)
            .await?;
        Ok(paginate(items, limit, |e| e.seq))
    }

    /// Walks the whole chain (it spans every organization): the admin key, or `activity:read`.
    pub async fn activity_verify(&self, p: &Principal) -> Result<VerifyReport> {
        if !p.is_admin_key() && !p.permissions.has(Permission::ActivityRead) {
            return Err(Error::Forbidden(
                "this credential lacks the `activity:read` permission".into(),
            ));
        }
        self.verify_chain().await
    }

    pub async fn verify_chain(&self) -> Result<VerifyReport> {
        let mut v = ChainVerifier::default();
        let mut after = 0;
        loop {
            let page = self.rt.store.activity_page(after, 1000).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for e in &page {
                if !v.feed(e) {
                    return Ok(v.finish(None));
                }
            }
        }
        let head = self.rt.store.activity_head().await?;
        Ok(v.finish(head))
    }
}
