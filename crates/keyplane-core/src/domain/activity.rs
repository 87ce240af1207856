//! The activity log's hash chain. Each event's hash covers the previous event's hash and every
//! stored field of its own, so editing, deleting or reordering any event is detectable.
//!
//! **Checkpoints** make verification incremental and rewriting history detectable: a
//! verification that found the chain intact up to event `seq` records `(seq, hash)` with an
//! HMAC under a key derived from the pepper. The next verification starts from the newest
//! authentic checkpoint, so it costs the events appended since. A full verification walks the
//! chain from its first event and also checks that it passes through every checkpoint: someone
//! who can write to the database but lacks the pepper can neither forge a checkpoint nor
//! recompute the chain past one.

use crate::domain::clock::to_ms;
use crate::domain::model::{Event, NewEvent};
use crate::domain::secret::{ct_eq, Pepper};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use time::OffsetDateTime;

/// What checkpoint MAC keys are derived for ([`Pepper::derive`]).
pub const CHECKPOINT_KEY_PURPOSE: &str = "activity-checkpoint";

/// A new checkpoint is recorded once a verification got this many events past the last one.
pub const CHECKPOINT_EVERY: i64 = 1000;

/// A point of the chain a verification vouched for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The event vouched for (every event up to it was verified).
    pub seq: i64,
    /// Its hash.
    pub hash: String,
    pub at: OffsetDateTime,
    /// The pepper version the MAC's key was derived from.
    pub pepper_version: u32,
    /// Hex HMAC-SHA256 of `seq|hash` under the derived key.
    pub mac: String,
}

impl Checkpoint {
    /// A checkpoint at `seq` with `hash`, authenticated under the current pepper.
    pub fn new(pepper: &Pepper, seq: i64, hash: String, at: OffsetDateTime) -> Self {
        let key = pepper.derive(CHECKPOINT_KEY_PURPOSE);
        let mac = checkpoint_mac(&key, seq, &hash);
        Self {
            seq,
            hash,
            at,
            pepper_version: pepper.version(),
            mac,
        }
    }

    /// `Some(true)` when its MAC is right, `Some(false)` when it is not (forged or altered),
    /// `None` when the pepper it was made under is not available here.
    pub fn authentic(&self, pepper: &Pepper) -> Option<bool> {
        let key = pepper.derive_version(self.pepper_version, CHECKPOINT_KEY_PURPOSE)?;
        let expected = checkpoint_mac(&key, self.seq, &self.hash);
        Some(ct_eq(expected.as_bytes(), self.mac.as_bytes()))
    }
}

fn checkpoint_mac(key: &[u8], seq: i64, hash: &str) -> String {
    hex(&Pepper::mac(key, &format!("{seq}|{hash}")))
}

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
    /// Events checked (for an organization's caller: that organization's events among them).
    pub checked: u64,
    pub first_broken: Option<BrokenEvent>,
    /// Whether the chain was walked from its first event (else from `started_after`).
    pub full: bool,
    /// The checkpoint the walk started after (0: the start of the chain).
    pub started_after: i64,
    /// The last event verified.
    pub verified_to: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokenEvent {
    pub seq: i64,
    pub id: String,
    pub reason: String,
    /// The broken event's organization (not reported: it decides what a caller is told).
    #[serde(skip)]
    pub org_id: Option<String>,
}

/// Walks the chain page by page; feed it events in `seq` order, then the stored head.
#[derive(Debug)]
pub struct ChainVerifier {
    expected_prev: String,
    expected_seq: i64,
    checked: u64,
    broken: Option<BrokenEvent>,
    started_after: i64,
    /// Checkpoints the chain must pass through: seq → hash.
    checkpoints: BTreeMap<i64, String>,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self {
            expected_prev: GENESIS_HASH.to_string(),
            expected_seq: 1,
            checked: 0,
            broken: None,
            started_after: 0,
            checkpoints: BTreeMap::new(),
        }
    }
}

impl ChainVerifier {
    /// Continues after a checkpoint: the next event must follow event `seq` whose hash is `hash`.
    pub fn resume(seq: i64, hash: String) -> Self {
        Self {
            expected_prev: hash,
            expected_seq: seq + 1,
            started_after: seq,
            ..Self::default()
        }
    }

    /// Requires the chain to pass through these checkpoints (seq → hash), for a full walk.
    pub fn through(mut self, checkpoints: BTreeMap<i64, String>) -> Self {
        self.checkpoints = checkpoints;
        self
    }

    /// Marks the chain broken at a checkpoint that is not authentic.
    pub fn forged_checkpoint(&mut self, seq: i64) {
        if self.broken.is_none() {
            self.broken = Some(BrokenEvent {
                seq,
                id: String::new(),
                reason: format!(
                    "the checkpoint at event {seq} does not carry a valid MAC: it was forged or altered"
                ),
                org_id: None,
            });
        }
    }

    /// The last event fed that was in order (or the starting point).
    pub fn last_seq(&self) -> i64 {
        self.expected_seq - 1
    }

    /// The hash of [`ChainVerifier::last_seq`].
    pub fn last_hash(&self) -> &str {
        &self.expected_prev
    }

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
        } else if self.checkpoints.get(&e.seq).is_some_and(|h| *h != e.hash) {
            Some(
                "its hash differs from the one a checkpoint recorded: the chain was rewritten from here or earlier"
                    .to_string(),
            )
        } else {
            None
        };
        if let Some(reason) = reason {
            self.broken = Some(BrokenEvent {
                seq: e.seq,
                id: e.id.clone(),
                reason,
                org_id: e.org_id.clone(),
            });
            return false;
        }
        self.expected_prev = e.hash.clone();
        self.expected_seq = e.seq + 1;
        true
    }

    /// Compares the end of the chain with the stored head (catches deleting the newest events).
    pub fn finish(mut self, head: Option<(i64, String)>) -> VerifyReport {
        let last_seq = self.expected_seq - 1;
        if self.broken.is_none() {
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
                    org_id: None,
                });
            }
        }
        if self.broken.is_none() {
            if let Some((&seq, _)) = self.checkpoints.range(last_seq + 1..).next() {
                self.broken = Some(BrokenEvent {
                    seq,
                    id: String::new(),
                    reason: format!(
                        "a checkpoint vouches for event {seq} but the chain ends at event {last_seq}: events were deleted"
                    ),
                    org_id: None,
                });
            }
        }
        VerifyReport {
            intact: self.broken.is_none(),
            checked: self.checked,
            first_broken: self.broken,
            full: self.started_after == 0,
            started_after: self.started_after,
            verified_to: last_seq,
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

    /// Rewrites the chain from `from` (0-based) with `actor` changed, recomputing every hash, as
    /// someone with write access to the database but not the pepper could.
    fn rewrite(c: &[Event], from: usize) -> Vec<Event> {
        let mut out = c.to_vec();
        let mut prev = if from == 0 {
            GENESIS_HASH.to_string()
        } else {
            out[from - 1].hash.clone()
        };
        for (i, e) in out.iter_mut().enumerate().skip(from) {
            if i == from {
                e.actor = "someone-else".into();
            }
            e.prev_hash = prev.clone();
            e.hash = recompute(e);
            prev = e.hash.clone();
        }
        out
    }

    #[test]
    fn checkpoints_resume_and_catch_rewrites() {
        let pepper = Pepper::new(1, &[7u8; 32]).unwrap();
        let c = chain(10);
        let head = Some((10, c[9].hash.clone()));
        let cp = Checkpoint::new(
            &pepper,
            6,
            c[5].hash.clone(),
            time::OffsetDateTime::UNIX_EPOCH,
        );
        assert_eq!(cp.authentic(&pepper), Some(true));
        let mut forged = cp.clone();
        forged.hash = c[4].hash.clone();
        assert_eq!(forged.authentic(&pepper), Some(false));
        let other = Pepper::new(2, &[8u8; 32]).unwrap();
        assert_eq!(cp.authentic(&other), None);

        // Resuming after the checkpoint checks only the events after it.
        let mut v = ChainVerifier::resume(cp.seq, cp.hash.clone());
        for e in &c[6..] {
            assert!(v.feed(e));
        }
        let r = v.finish(head.clone());
        assert!(r.intact);
        assert_eq!((r.checked, r.started_after, r.full), (4, 6, false));

        // A rewritten history passes a plain walk, but not one through the checkpoint.
        let rewritten = rewrite(&c, 2);
        let new_head = Some((10, rewritten[9].hash.clone()));
        assert!(verify(&rewritten, new_head.clone()).intact);
        let mut v = ChainVerifier::default().through(BTreeMap::from([(cp.seq, cp.hash.clone())]));
        for e in &rewritten {
            v.feed(e);
        }
        let r = v.finish(new_head.clone());
        assert_eq!(r.first_broken.unwrap().seq, 6);
        // Nor does resuming after the checkpoint: the next event no longer follows it.
        let mut v = ChainVerifier::resume(cp.seq, cp.hash.clone());
        for e in &rewritten[6..] {
            v.feed(e);
        }
        assert!(!v.finish(new_head).intact);

        // Deleting events up to past a checkpoint (and moving the head) is caught too.
        let mut v = ChainVerifier::default().through(BTreeMap::from([(cp.seq, cp.hash)]));
        for e in &c[..4] {
            v.feed(e);
        }
        assert!(!v.finish(Some((4, c[3].hash.clone()))).intact);
    }
}
