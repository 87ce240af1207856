//! Refused credentials, aggregated until the next flush so a flood writes a bounded log.
//! Refusals are aggregated by reason, credential id, client address and user agent; past
//! [`QUEUE_LIMIT`] distinct aggregates, further refusals are only counted (one `flood` event).

use crate::domain::ids::new_id;
use crate::domain::model::{NewEvent, Outcome};
use crate::domain::request::RequestMeta;
use std::collections::HashMap;
use std::sync::Mutex;
use time::OffsetDateTime;

const QUEUE_LIMIT: usize = 10_000;

type RefusalKey = (&'static str, Option<String>, Option<String>, Option<String>);

#[derive(Default)]
struct Queue {
    pending: HashMap<RefusalKey, (NewEvent, u64)>,
    dropped: u64,
}

/// The queue of refusals awaiting the next flush.
#[derive(Default)]
pub struct Refusals {
    queue: Mutex<Queue>,
}

impl Refusals {
    /// Queues an aggregated `credential.refused` event; never the secret, only its kind or id.
    pub fn note(
        &self,
        reason: &'static str,
        target: Option<String>,
        org_id: Option<String>,
        meta: &RequestMeta,
        now: OffsetDateTime,
    ) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let agg = (reason, target.clone(), meta.addr_text(), meta.agent_text());
        if let Some((_, count)) = q.pending.get_mut(&agg) {
            *count += 1;
            return;
        }
        if q.pending.len() >= QUEUE_LIMIT {
            q.dropped += 1;
            return;
        }
        let event = NewEvent {
            id: new_id("evt"),
            at: now,
            org_id,
            actor: "anonymous".into(),
            action: "credential.refused".into(),
            target,
            outcome: Outcome::Denied,
            client_addr: meta.addr_text(),
            user_agent: meta.agent_text(),
            details: serde_json::Value::Null,
        };
        q.pending.insert(agg, (event, 1));
    }

    /// The events to append now (oldest first), including one for refusals dropped in a flood.
    pub fn take(&self, now: OffsetDateTime) -> Vec<NewEvent> {
        let (events, dropped) = {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            (
                std::mem::take(&mut q.pending),
                std::mem::take(&mut q.dropped),
            )
        };
        let mut batch: Vec<NewEvent> = events
            .into_iter()
            .map(|((reason, ..), (mut e, count))| {
                e.details = serde_json::json!({ "reason": reason, "count": count });
                e
            })
            .collect();
        if dropped > 0 {
            batch.push(NewEvent {
                id: new_id("evt"),
                at: now,
                org_id: None,
                actor: "system".into(),
                action: "credential.refused".into(),
                target: None,
                outcome: Outcome::Denied,
                client_addr: None,
                user_agent: None,
                details: serde_json::json!({ "reason": "flood", "count": dropped }),
            });
        }
        batch.sort_by_key(|e| e.at);
        batch
    }
}
