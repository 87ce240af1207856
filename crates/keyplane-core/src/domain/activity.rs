//! The activity log's hash chain. Each event's hash covers the previous event's hash and every
//! stored field of its own, so editing, deleting or reordering any event is detectable.

use crate::domain::clock::to_ms;
use crate::domain::model::{Event, NewEvent};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

/// The `prev_hash` of the first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The hash of an event at `seq` whose predecessor's hash is `prev_hash`.
#[allow(clippy::too_many_arguments)]
pub fn event_hash(prev_hash: &str, seq: i64, e: &NewEvent, details_text: &str) -> String {
    let fields = (
        seq,
        &e.id,
        to_ms(e.at),
        &e.org_id,
        &e.actor,
        &e.action,
        &e.target,
        e.outcome.as_str(),
        &e.client_addr,
        &e.user_agent,
        details_text,
    );
    let canonical = serde_json::to_string(&fields).expect("tuples of strings serialize");
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"|");
    h.update(canonical.as_bytes());
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Recomputes a stored event's hash from its stored fields.
pub fn recompute(e: &Event) -> String {
    let as_new = NewEvent {
        id: e.id.clone(),
        at: e.at,
        org_id: e.org_id.clone(),
        actor: e.actor.clone(),
        action: e.action.clone(),
        target: e.target.clone(),
        outcome: e.outcome,
        client_addr: e.client_addr.clone(),
        user_agent: e.user_agent.clone(),
        details: serde_json::Value::Null,
    };
    event_hash(&e.prev_hash, e.seq, &as_new, &e.details)
}

/// The result of checking the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub intact: bool,
    pub checked: u64,
    pub first_broken: Option<BrokenEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokenEvent {
    pub seq: i64,
    pub id: String,
    pub reason: String,
}

/// Walks the chain page by page; feed it events in `seq` order, then the stored head.
#[derive(Debug)]
pub struct ChainVerifier {
    expected_prev: String,
    expected_seq: i64,
    checked: u64,
    broken: Option<BrokenEvent>,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self {
            expected_prev: GENESIS_HASH.to_string(),
            expected_seq: 1,
            checked: 0,
            broken: None,
        }
    }
}

impl ChainVerifier {
    /// Checks one event; returns false once the chain is found broken.
    pub fn feed(&mut self, e: &Event) -> bool {
        if self.broken.is_some() {
            return false;
        }
        self.checked += 1;
        let reason = if e.seq != self.expected_seq {
            Some(format!(
                "expected event number {} but found {}: events are missing or reordered",
                self.expected_seq, e.seq
            ))
        } else if e.prev_hash != self.expected_prev {
            Some("its previous-hash does not match the event before it".to_string())
        } else if recompute(e) != e.hash {
            Some("its content does not match its hash: the event was edited".to_string())
        } else {
            None
        };
        if let Some(reason) = reason {
            self.broken = Some(BrokenEvent {
                seq: e.seq,
                id: e.id.clone(),
                reason,
            });
            return false;
        }
        self.expected_prev = e.hash.clone();
        self.expected_seq = e.seq + 1;
        true
    }

    /// Compares the end of the chain with the stored head (catches deleting the newest events).
    pub fn finish(mut self, head: Option<(i64, String)>) -> VerifyReport {
        if self.broken.is_none() {
            let last_seq = self.expected_seq - 1;
            let ok = match &head {
                None => last_seq == 0,
                Some((seq, hash)) => *seq == last_seq && *hash == self.expected_prev,
            };
            if !ok {
                self.broken = Some(BrokenEvent {
                    seq: head.as_ref().map_or(0, |h| h.0),
                    id: String::new(),
                    reason: format!(
                        "the chain ends at event {last_seq} but the recorded head is event {}: the newest events were deleted",
                        head.as_ref().map_or(0, |h| h.0)
                    ),
                });
            }
        }
        VerifyReport {
            intact: self.broken.is_none(),
            checked: self.checked,
            first_broken: self.broken,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::Outcome;

    fn chain(n: i64) -> Vec<Event> {
        let mut prev = GENESIS_HASH.to_string();
        (1..=n)
            .map(|seq| {
                let ne = NewEvent {
                    id: format!("evt_{seq}"),
                    at: time::OffsetDateTime::UNIX_EPOCH,
                    org_id: None,
                    actor: "admin-key".into(),
                    action: "api_key.create".into(),
                    target: Some("key_x".into()),
                    outcome: Outcome::Success,
                    client_addr: None,
                    user_agent: None,
                    details: serde_json::Value::Null,
                };
                let hash = event_hash(&prev, seq, &ne, "{}");
                let e = Event {
                    seq,
                    id: ne.id,
                    at: ne.at,
                    org_id: None,
                    actor: ne.actor,
                    action: ne.action,
                    target: ne.target,
                    outcome: ne.outcome,
                    client_addr: None,
                    user_agent: None,
                    details: "{}".into(),
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                };
                prev = hash;
                e
            })
            .collect()
    }

    fn verify(events: &[Event], head: Option<(i64, String)>) -> VerifyReport {
        let mut v = ChainVerifier::default();
        for e in events {
            v.feed(e);
        }
        v.finish(head)
    }

    #[test]
    fn intact_edited_deleted() {
        let c = chain(5);
        let head = Some((5, c[4].hash.clone()));
        assert!(verify(&c, head.clone()).intact);

        let mut edited = c.clone();
        edited[2].actor = "someone-else".into();
        let r = verify(&edited, head.clone());
        assert_eq!(r.first_broken.unwrap().seq, 3);

        let mut deleted = c.clone();
        deleted.remove(1);
        assert_eq!(verify(&deleted, head.clone()).first_broken.unwrap().seq, 3);

        let truncated = &c[..4];
        assert!(!verify(truncated, head).intact);
    }
}
