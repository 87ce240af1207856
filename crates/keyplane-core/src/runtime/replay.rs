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
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
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
