//! The shared replay table's writer. Every client assertion, DPoP proof and platform token
//! records its one-time identifier in storage, so a replay is refused on every node that shares
//! the database; written one statement and one commit per request, that write capped these
//! requests at a few thousand a second on both backends. Here concurrent requests' identifiers
//! are gathered while the previous batch is being written and go to storage together — one
//! multi-row statement, one commit — and each request is told whether its own entry was new.
//! Nothing waits for a timer: with one request at a time a batch holds one entry and costs what
//! the single write did; under load, batches grow with the number of requests waiting.

use super::Runtime;
use crate::domain::clock::Clock;
use crate::domain::error::{Error, Result};
use crate::store::{JtiUse, Store};
use std::sync::{Arc, OnceLock};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

/// At most this many entries in one statement (three bound values each, well under either
/// backend's limit on bound values).
const MAX_BATCH: usize = 512;

/// At most this many scheduler rounds spent gathering one batch (see [`gather`]).
const GATHER_ROUNDS: usize = 4;

struct Pending {
    entry: JtiUse,
    reply: oneshot::Sender<Result<bool>>,
}

/// The queue in front of the writer task, which starts with the first use (in the caller's
/// tokio runtime) and ends when the runtime is dropped.
#[derive(Default)]
pub(crate) struct ReplayWriter {
    queue: OnceLock<Option<mpsc::UnboundedSender<Pending>>>,
}

impl ReplayWriter {
    fn queue(
        &self,
        store: &Arc<dyn Store>,
        clock: &Arc<dyn Clock>,
    ) -> Option<&mpsc::UnboundedSender<Pending>> {
        self.queue
            .get_or_init(|| {
                let handle = tokio::runtime::Handle::try_current().ok()?;
                let (tx, rx) = mpsc::unbounded_channel();
                handle.spawn(write_batches(Arc::clone(store), Arc::clone(clock), rx));
                Some(tx)
            })
            .as_ref()
    }
}

async fn write_batches(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    mut rx: mpsc::UnboundedReceiver<Pending>,
) {
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    let mut entries: Vec<JtiUse> = Vec::with_capacity(MAX_BATCH);
    let in_process = store.writes_in_process();
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        if in_process {
            gather(&mut rx, &mut batch).await;
        }
        entries.extend(batch.iter().map(|p| p.entry.clone()));
        let written = store.client_assertion_jtis_use(&entries, clock.now()).await;
        entries.clear();
        match written {
            Ok(fresh) => {
                for (p, fresh) in batch.drain(..).zip(fresh) {
                    // A requester that went away (its client disconnected) is not waiting.
                    let _ = p.reply.send(Ok(fresh));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, entries = batch.len(), "storage failed while recording one-time identifiers");
                for p in batch.drain(..) {
                    let _ = p.reply.send(Err(Error::Storage(
                        "recording a one-time identifier failed".into(),
                    )));
                }
            }
        }
    }
}

/// Lets the requests that are ready run up to their own entry before the batch is written, for
/// a store whose writes run on this process's own threads (SQLite's worker thread). Without
/// this, the first entry wakes the database's thread at once, which takes the core from the
/// requests (one core: the benchmark's setting, and a small container's), and every batch holds
/// one entry: a commit and two thread switches per request. Each round yields once to the
/// scheduler, which runs the other ready tasks and polls the sockets first; gathering stops when
/// a round brings nothing new, or after [`GATHER_ROUNDS`] (so that with several cores busy
/// with requests a batch does not wait for ever-new arrivals). A request alone waits one
/// scheduler round, not a timer. Not for a database server (PostgreSQL): its writes cost
/// another process's CPU, and a batch in flight is the time the next one gathers in.
async fn gather(rx: &mut mpsc::UnboundedReceiver<Pending>, batch: &mut Vec<Pending>) {
    for _ in 0..GATHER_ROUNDS {
        if batch.len() >= MAX_BATCH {
            break;
        }
        tokio::task::yield_now().await;
        let before = batch.len();
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        if batch.len() == before {
            break;
        }
    }
}

impl Runtime {
    /// Records one use of `jti` under `scope` in the shared replay table until `expires_at`:
    /// true when it is the first (live) use on any node, false for a replay. Batched with
    /// concurrent requests' uses (see the module's comment).
    pub(crate) async fn jti_use_once(
        &self,
        scope: String,
        jti: String,
        expires_at: OffsetDateTime,
    ) -> Result<bool> {
        let entry = JtiUse {
            scope,
            jti,
            expires_at,
        };
        let Some(queue) = self.replay.queue(&self.store, &self.clock) else {
            // No tokio runtime to run the writer in: write this one alone.
            return self.single_use(entry).await;
        };
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError(p)) = queue.send(Pending { entry, reply }) {
            // The writer is gone (its tokio runtime stopped): write this one alone.
            return self.single_use(p.entry).await;
        }
        answer.await.unwrap_or_else(|_| {
            Err(Error::Storage(
                "the replay table's writer stopped before answering".into(),
            ))
        })
    }

    async fn single_use(&self, entry: JtiUse) -> Result<bool> {
        let fresh = self
            .store
            .client_assertion_jtis_use(std::slice::from_ref(&entry), self.now())
            .await?;
        Ok(fresh.first().copied().unwrap_or(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(i: usize) -> (Pending, oneshot::Receiver<Result<bool>>) {
        let (reply, answer) = oneshot::channel();
        let entry = JtiUse {
            scope: "client".into(),
            jti: format!("jti-{i}"),
            expires_at: OffsetDateTime::UNIX_EPOCH,
        };
        (Pending { entry, reply }, answer)
    }

    /// Requests that are still working (each needs a few scheduler rounds, as a request
    /// checking a signature and reading its socket does) when the first entry arrives: the
    /// first receive holds only what was ready, gathering holds them all — one write, not one
    /// per request.
    #[test]
    fn gather_waits_for_the_requests_that_are_ready() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (first, gathered) = rt.block_on(async {
            let (tx, mut rx) = mpsc::unbounded_channel();
            let mut answers = Vec::new();
            for i in 0..32 {
                let tx = tx.clone();
                let (p, answer) = pending(i);
                answers.push(answer);
                tokio::spawn(async move {
                    for _ in 0..i % 3 {
                        tokio::task::yield_now().await;
                    }
                    tx.send(p).ok();
                });
            }
            let mut batch = Vec::new();
            rx.recv_many(&mut batch, MAX_BATCH).await;
            let first = batch.len();
            gather(&mut rx, &mut batch).await;
            (first, batch.len())
        });
        assert!(
            first < 32,
            "the first receive already held every entry ({first}): the test shows nothing"
        );
        assert_eq!(gathered, 32);
    }

    /// A request alone is written after one empty scheduler round, and gathering never takes
    /// more than MAX_BATCH.
    #[test]
    fn gather_stops_when_nothing_comes_and_at_the_cap() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let (tx, mut rx) = mpsc::unbounded_channel();
            let (p, _a) = pending(0);
            tx.send(p).ok();
            let mut batch = Vec::new();
            rx.recv_many(&mut batch, MAX_BATCH).await;
            gather(&mut rx, &mut batch).await;
            assert_eq!(batch.len(), 1);

            let mut keep = Vec::new();
            for i in 0..MAX_BATCH + 10 {
                let (p, a) = pending(i);
                keep.push(a);
                tx.send(p).ok();
            }
            let mut batch = Vec::new();
            rx.recv_many(&mut batch, 1).await;
            gather(&mut rx, &mut batch).await;
            assert_eq!(batch.len(), MAX_BATCH);
        });
    }
}
