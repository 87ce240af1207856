//! [`Keyplane`] use cases of the activity log: querying it, verifying its chain, and recording
//! refused management requests.

use crate::app::Keyplane;
use crate::domain::activity::{ChainVerifier, Checkpoint, VerifyReport, CHECKPOINT_EVERY};
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
                details: meta.details(serde_json::json!({ "reason": why })),
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

    /// Verifies the activity chain for `p`: the admin key, or `activity:read`.
    ///
    /// The chain is one for the whole deployment, so an organization's events can only be
    /// vouched for by verifying the chain they are links of. Without `full`, the walk starts at
    /// the newest authentic checkpoint (see [`crate::domain::activity`]) and costs the events
    /// appended since; `full` (the admin key only) walks from the first event and checks every
    /// checkpoint on the way. A caller scoped to an organization learns whether the chain is
    /// intact, how many of its organization's events were checked, and where it is broken only
    /// when the broken event is one of its own (otherwise its position, with a reason that names
    /// nothing it may not see).
    pub async fn activity_verify(&self, p: &Principal, full: bool) -> Result<VerifyReport> {
        if !p.is_admin_key() && !p.permissions.has(Permission::ActivityRead) {
            return Err(Error::Forbidden(
                "this credential lacks the `activity:read` permission".into(),
            ));
        }
        if full && !p.is_admin_key() {
            return Err(Error::Forbidden(
                "only the admin key verifies the whole chain from its first event (`full=true`); without it, the chain is verified from its last checkpoint".into(),
            ));
        }
        let scope = if p.is_admin_key() {
            None
        } else {
            Some(p.org_id.clone().ok_or_else(|| {
                Error::Forbidden("this credential belongs to no organization".into())
            })?)
        };
        self.verify_activity(full, scope.as_deref(), true).await
    }

    /// Verifies the whole chain from its first event, through every checkpoint (the CLI's
    /// `keyplane activity verify`). Writes nothing, so it also runs with read-only access.
    pub async fn verify_chain(&self) -> Result<VerifyReport> {
        self.verify_activity(true, None, false).await
    }

    /// Verifies the events appended since the last checkpoint and records a new one (the
    /// maintenance task, once a minute, so an API verification stays short).
    pub async fn checkpoint_activity(&self) -> Result<VerifyReport> {
        self.verify_activity(false, None, true).await
    }

    async fn verify_activity(
        &self,
        full: bool,
        org: Option<&str>,
        record: bool,
    ) -> Result<VerifyReport> {
        // One walk at a time: others wait, then start from the checkpoint it left.
        let _one_at_a_time = self.rt.verifying.lock().await;
        let store = &self.rt.store;
        let pepper = &self.rt.pepper;
        let latest = store.activity_checkpoint_last().await?;
        let mut v = if full {
            let mut through = std::collections::BTreeMap::new();
            let mut forged = None;
            let mut after = 0;
            loop {
                let page = store.activity_checkpoints(after, 10_000).await?;
                let Some(last) = page.last() else { break };
                after = last.seq;
                for cp in page {
                    match cp.authentic(pepper) {
                        Some(true) => {
                            through.insert(cp.seq, cp.hash);
                        }
                        Some(false) => {
                            forged.get_or_insert(cp.seq);
                        }
                        // Made under a pepper no longer available here: it vouches for nothing.
                        None => {}
                    }
                }
            }
            let mut v = ChainVerifier::default().through(through);
            if let Some(seq) = forged {
                v.forged_checkpoint(seq);
            }
            v
        } else {
            match &latest {
                Some(cp) => match cp.authentic(pepper) {
                    Some(true) => ChainVerifier::resume(cp.seq, cp.hash.clone()),
                    Some(false) => {
                        let mut v = ChainVerifier::default();
                        v.forged_checkpoint(cp.seq);
                        v
                    }
                    None => ChainVerifier::default(),
                },
                None => ChainVerifier::default(),
            }
        };
        // The head is read first and the walk stops there, so events appended meanwhile are
        // left for the next verification rather than mistaken for a mismatch with the head.
        let head = store.activity_head().await?;
        let end = head.as_ref().map_or(0, |h| h.0);
        let mut after = v.last_seq();
        let mut in_org = 0u64;
        'walk: while after < end {
            let page = store.activity_page(after, 1000).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for e in page.iter().take_while(|e| e.seq <= end) {
                if !v.feed(e) {
                    break 'walk;
                }
                if org.is_some() && e.org_id.as_deref() == org {
                    in_org += 1;
                }
            }
        }
        let (seq, hash) = (v.last_seq(), v.last_hash().to_string());
        let mut report = v.finish(head);
        if report.intact {
            let since = latest.as_ref().map_or(0, |c| c.seq);
            if record && seq - since >= CHECKPOINT_EVERY {
                let cp = Checkpoint::new(pepper, seq, hash, self.rt.now());
                if let Err(e) = store.activity_checkpoint_add(&cp).await {
                    // The verification stands; the next one starts from the older checkpoint.
                    tracing::warn!(error = %e, "could not record an activity checkpoint");
                }
            }
        } else {
            tracing::error!(
                broken_at = report.first_broken.as_ref().map_or(0, |b| b.seq),
                reason = report
                    .first_broken
                    .as_ref()
                    .map_or("", |b| b.reason.as_str()),
                "the activity chain is broken"
            );
        }
        if let Some(org) = org {
            report.checked = in_org;
            if let Some(b) = &mut report.first_broken {
                if b.org_id.as_deref() != Some(org) {
                    b.id = String::new();
                    b.reason = "the chain is broken at an event outside this organization: the events after it cannot be vouched for".into();
                }
            }
        }
        Ok(report)
    }
}
