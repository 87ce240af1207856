//! Refused credentials, aggregated until the next flush so a flood writes a bounded log.
//!
//! Refusals are aggregated per (action, reason, credential, client address): the user agent is
//! not part of the key (a caller chooses it freely), only the first one seen is kept, with the
//! number of distinct ones in `details.user_agents` (counted up to [`MAX_AGENTS`]). A credential
//! is named only when it exists (a revoked or expired key, a known client), so the caller cannot
//! vary it either. At most `cap` aggregates are kept per flush interval; refusals past the cap
//! are only counted, in one more event (`details.reason = "flood"`), so no flood grows the
//! activity chain faster than `cap + 1` events per flush. An aggregate names the id of the first
//! request it counts (`details.request_id`).

use crate::domain::ids::new_id;
use crate::domain::model::{NewEvent, Outcome};
use crate::domain::request::RequestMeta;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Mutex;
use time::OffsetDateTime;

/// Distinct user agents counted per aggregate.
pub const MAX_AGENTS: usize = 64;
/// Distinct addresses counted in the overflow event.
pub const MAX_OVERFLOW_ADDRESSES: usize = 10_000;

type RefusalKey = (&'static str, &'static str, Option<String>, Option<IpAddr>);

struct Aggregate {
    event: NewEvent,
    count: u64,
    agents: HashSet<u64>,
    /// The first request's id.
    request_id: Option<crate::domain::request::RequestId>,
}

#[derive(Default)]
struct Queue {
    pending: HashMap<RefusalKey, Aggregate>,
    dropped: u64,
    dropped_addrs: HashSet<IpAddr>,
    first_dropped: Option<OffsetDateTime>,
}

/// One refusal to record.
pub struct Refused<'a> {
    /// `credential.refused`, or e.g. `console.sign_in`.
    pub action: &'static str,
    pub reason: &'static str,
    /// The credential refused, only when it exists.
    pub target: Option<String>,
    pub org_id: Option<String>,
    pub meta: &'a RequestMeta,
}

/// The queue of refusals awaiting the next flush.
pub struct Refusals {
    queue: Mutex<Queue>,
    cap: usize,
}

impl Refusals {
    /// At most `cap` aggregated events (and one overflow event) per flush.
    pub fn new(cap: usize) -> Self {
        Self {
            queue: Mutex::default(),
            cap: cap.max(1),
        }
    }

    /// Queues an aggregated refusal; never the secret, only its kind or id.
    pub fn note(&self, r: Refused<'_>, now: OffsetDateTime) {
        let agent = r.meta.user_agent.as_ref().map(|v| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            v.as_bytes().hash(&mut h);
            h.finish()
        });
        let addr = r.meta.client_addr;
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let key = (r.action, r.reason, r.target, addr);
        if let Some(a) = q.pending.get_mut(&key) {
            a.count += 1;
            if let Some(h) = agent {
                if a.agents.len() < MAX_AGENTS {
                    a.agents.insert(h);
                }
            }
            return;
        }
        if q.pending.len() >= self.cap {
            q.dropped += 1;
            q.first_dropped.get_or_insert(now);
            if let Some(a) = addr {
                if q.dropped_addrs.len() < MAX_OVERFLOW_ADDRESSES {
                    q.dropped_addrs.insert(a);
                }
            }
            return;
        }
        let event = NewEvent {
            id: new_id("evt"),
            at: now,
            org_id: r.org_id,
            actor: "anonymous".into(),
            action: r.action.into(),
            target: key.2.clone(),
            outcome: Outcome::Denied,
            client_addr: r.meta.addr_text(),
            user_agent: r.meta.agent_text(),
            details: serde_json::Value::Null,
        };
        q.pending.insert(
            key,
            Aggregate {
                event,
                count: 1,
                agents: agent.into_iter().collect(),
                request_id: r.meta.request_id,
            },
        );
    }

    /// The events to append now (oldest first), including one for refusals past the cap.
    pub fn take(&self, now: OffsetDateTime) -> Vec<NewEvent> {
        let q = std::mem::take(&mut *self.queue.lock().unwrap_or_else(|e| e.into_inner()));
        let mut batch: Vec<NewEvent> = q
            .pending
            .into_iter()
            .map(|((_, reason, ..), a)| {
                let mut e = a.event;
                let first = RequestMeta {
                    request_id: a.request_id,
                    ..RequestMeta::default()
                };
                e.details = first.details(serde_json::json!({
                    "reason": reason,
                    "count": a.count,
                    "user_agents": a.agents.len(),
                }));
                e
            })
            .collect();
        if q.dropped > 0 {
            batch.push(NewEvent {
                id: new_id("evt"),
                at: q.first_dropped.unwrap_or(now),
                org_id: None,
                actor: "system".into(),
                action: "credential.refused".into(),
                target: None,
                outcome: Outcome::Denied,
                client_addr: None,
                user_agent: None,
                details: serde_json::json!({
                    "reason": "flood",
                    "count": q.dropped,
                    "addresses": q.dropped_addrs.len(),
                    "events_per_flush": self.cap,
                }),
            });
        }
        batch.sort_by_key(|e| e.at);
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(addr: &str, agent: &str) -> RequestMeta {
        RequestMeta {
            client_addr: Some(addr.parse().unwrap()),
            user_agent: Some(http::HeaderValue::from_str(agent).unwrap()),
            ..Default::default()
        }
    }

    fn refused<'a>(m: &'a RequestMeta) -> Refused<'a> {
        Refused {
            action: "credential.refused",
            reason: "unknown",
            target: None,
            org_id: None,
            meta: m,
        }
    }

    #[test]
    fn agents_do_not_multiply_events_and_the_cap_holds() {
        let r = Refusals::new(5);
        let now = OffsetDateTime::UNIX_EPOCH;
        for i in 0..2000 {
            r.note(refused(&meta("10.0.0.1", &format!("agent-{i}"))), now);
        }
        let batch = r.take(now);
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].details["count"], 2000);
        assert_eq!(batch[0].details["user_agents"], MAX_AGENTS);
        assert_eq!(batch[0].user_agent.as_deref(), Some("agent-0"));

        for i in 0..2000 {
            r.note(
                refused(&meta(&format!("10.0.{}.{}", i / 250, i % 250), "x")),
                now,
            );
        }
        let batch = r.take(now);
        assert_eq!(batch.len(), 6);
        let flood = batch
            .iter()
            .find(|e| e.details["reason"] == "flood")
            .unwrap();
        assert_eq!(flood.details["count"], 1995);
        assert_eq!(flood.details["addresses"], 1995);
        assert!(r.take(now).is_empty());
    }
}
