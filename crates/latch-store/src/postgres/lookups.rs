//! The hot path's lookup (a client and a token: every introspection and revocation),
//! batched across concurrent requests.
//!
//! One statement per request, most of PostgreSQL's time went to starting and finishing
//! executions, not to the index probes (perf: `ExecutorStart`, portals, `ExecInitNode`).
//! Here requests queue their lookups; one task takes everything queued (up to
//! [`MAX_BATCH`]), runs one statement over arrays of the keys on a shared connection, and
//! hands each request its row. Under light load a batch is one lookup; under load dozens
//! share one execution, as concurrent writes share one commit.

use std::sync::Arc;

use latch_core::client::Client;
use latch_core::grant::TokenRecord;
use latch_core::id::{ClientId, TenantId};
use latch_core::store::StoreResult;
use latch_core::token::TokenHash;
use latch_core::StoreError;
use tokio::sync::{mpsc, oneshot};

use super::pipelined::Pipelined;
use super::reads::{self, ClientAndToken};

/// The most lookups in one statement.
const MAX_BATCH: usize = 256;
/// Lookups waiting for the task; past this, requests wait (backpressure).
const QUEUE_DEPTH: usize = 4096;

type Answer = StoreResult<(Option<Client>, Option<TokenRecord>)>;

struct Pending {
    lookup: ClientAndToken,
    reply: oneshot::Sender<Answer>,
}

/// The handle requests use; the task stops when it is dropped.
pub(super) struct Lookups {
    queue: mpsc::Sender<Pending>,
}

impl Lookups {
    /// Starts the batching task, which runs its statements on `hot`. Must be called within
    /// a tokio runtime.
    pub(super) fn start(hot: Arc<Pipelined>) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(run(hot, rx));
        Self { queue }
    }

    /// Looks up a client and a token in the next batch.
    pub(super) async fn client_and_token(
        &self,
        tenant: &TenantId,
        client: &ClientId,
        hash: &TokenHash,
    ) -> Answer {
        let (reply, answer) = oneshot::channel();
        let lookup = ClientAndToken {
            tenant: tenant.clone(),
            client: client.clone(),
            hash: *hash,
        };
        let stopped = || StoreError::Unavailable("the lookup task has stopped".into());
        self.queue
            .send(Pending { lookup, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn run(hot: Arc<Pipelined>, mut rx: mpsc::Receiver<Pending>) {
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    // Waits for a lookup, then takes every other one already queued.
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (lookups, replies): (Vec<_>, Vec<_>) =
            batch.drain(..).map(|p| (p.lookup, p.reply)).unzip();
        let answers = hot
            .read(async |c| reads::clients_and_tokens(c, &lookups).await)
            .await;
        match answers {
            Ok(answers) => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(Ok(answer));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}
