//! Group commit on PostgreSQL: one task per node owns a dedicated connection, drains the
//! queue of writes, applies them in one transaction and commits once, then answers every
//! waiter. Writes are data ([`Op`]), not closures, so a batch that PostgreSQL aborts for a
//! deadlock or serialization failure (possible when several nodes write the same rows) can
//! simply be applied again.
//!
//! If the connection is lost, or PostgreSQL does not commit a batch of bounded writes within
//! the deadline ([`Deadline`]), the batch in flight answers `Unavailable` (nothing is reported
//! committed that might not be) and the next batch reconnects; unless its `COMMIT` had been
//! sent, and PostgreSQL, asked on the new connection, says it committed ([`Writer::committed`]).

use latch_core::audit::{AuditContext, AuditEvent, Killed};
use latch_core::client::{Client, SecretHash};
use latch_core::clock::UnixTime;
use latch_core::commits::CommitMeter;
use latch_core::grant::{
    Grant, NewToken, Revocation, Rotation, RotationOutcome, RotationPrecondition,
};
use latch_core::id::{ClientId, Subject, TenantId};
use latch_core::store::StoreResult;
use latch_core::token::{TokenHash, TokenKind};
use latch_core::StoreError;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_postgres::error::SqlState;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client as PgClient, Statement, Transaction};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::deadline::{cancel_backend, Deadline};
use super::store_error;
use crate::target::{grant_condition, revoke_grants_sql, Target};

/// The most writes committed in one transaction.
const MAX_BATCH: usize = 256;
/// Writes waiting for the committer; past this, writers wait (backpressure).
const QUEUE_DEPTH: usize = 4096;
/// How often a batch aborted by a deadlock or serialization failure is retried.
const MAX_RETRIES: usize = 3;

/// A write.
pub(crate) enum Op {
    CreateTenant(TenantId, UnixTime),
    DeleteTenant(TenantId, AuditContext),
    /// A client; `true` to replace an existing one.
    PutClient(Client, bool),
    /// A client's secret hash replaced: the one read, and the new one.
    SetSecret(TenantId, ClientId, SecretHash, SecretHash),
    DeleteClient(TenantId, ClientId, AuditContext),
    /// Every declared client but these becomes undeclared.
    UndeclareClients(Vec<(TenantId, ClientId)>),
    Issue(Grant, Vec<NewToken>, Option<SecretHash>),
    Rotate(Rotation),
    Revoke(Revocation, AuditContext),
}

impl Op {
    /// Writes that can hit a constraint and must fail alone run in a savepoint (two more
    /// round trips). Not issuance: its keys are fresh random token hashes (256 bits) and a
    /// new grant id; should two ever collide, the batch fails as a whole, nothing of it is
    /// committed and its writers get a 503.
    fn may_conflict(&self) -> bool {
        matches!(self, Op::CreateTenant(..) | Op::PutClient(..))
    }
}

/// What an unbounded write ([`Op::reach`]) may hold locked for as long as it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Reach {
    /// A tenant's rows (its removal).
    Tenant(TenantId),
    /// A client's row and its grants' (its removal, or its grants' revocation).
    Client(TenantId, ClientId),
    /// A subject's grants (its log-out).
    Subject(TenantId, Subject),
}

impl Op {
    /// What the write may hold locked for long, if its work is unbounded; `None` when it is
    /// bounded (a token, a grant, a client's settings), so that its batch gets the
    /// [`Deadline`]. Removing a tenant or a client, revoking a client's grants and logging a
    /// subject out revoke every grant they hold, which may take longer than any deadline,
    /// and must still get done: those commit apart from the bounded ones ([`Committer`]).
    fn reach(&self) -> Option<Reach> {
        match self {
            Op::DeleteTenant(tenant, _) | Op::Revoke(Revocation::Tenant(tenant), _) => {
                Some(Reach::Tenant(tenant.clone()))
            }
            Op::DeleteClient(tenant, client_id, _)
            | Op::Revoke(Revocation::Client { tenant, client_id }, _) => {
                Some(Reach::Client(tenant.clone(), client_id.clone()))
            }
            Op::Revoke(Revocation::Subject { tenant, subject }, _) => {
                Some(Reach::Subject(tenant.clone(), subject.clone()))
            }
            _ => None,
        }
    }

    /// Whether this bounded write may need a row an unbounded write of `reach` holds
    /// locked. Coarse where a write does not say whose rows it touches (a grant's revocation
    /// names no client, nor always a subject): one wrongly taken to need them only waits a
    /// little longer.
    fn may_need(&self, reach: &Reach) -> bool {
        let tenant = match self {
            // At a start, on declared clients anywhere.
            Op::UndeclareClients(_) => return true,
            Op::CreateTenant(t, _)
            | Op::DeleteTenant(t, _)
            | Op::SetSecret(t, ..)
            | Op::DeleteClient(t, ..) => t,
            Op::PutClient(c, _) => &c.tenant,
            Op::Issue(g, ..) => &g.tenant,
            Op::Rotate(r) => &r.tenant,
            Op::Revoke(_, audit) => &audit.tenant,
        };
        match reach {
            Reach::Tenant(t) => tenant == t,
            Reach::Client(t, id) => {
                tenant == t
                    && match self {
                        Op::PutClient(c, _) => &c.id == id,
                        Op::SetSecret(_, c, ..) => c == id,
                        Op::Issue(g, ..) => &g.client_id == id,
                        Op::Rotate(r) => &r.client_id == id,
                        Op::Revoke(Revocation::Grant(_), _) => true,
                        _ => false,
                    }
            }
            Reach::Subject(t, subject) => {
                tenant == t
                    && match self {
                        Op::Rotate(r) => &r.subject == subject,
                        Op::Revoke(Revocation::Grant(_), audit) => {
                            audit.subject.as_ref().is_none_or(|s| s == subject)
                        }
                        _ => false,
                    }
            }
        }
    }
}

/// The long writes under way on a node, by what they may hold locked, and the bounded writes
/// let through to their queue and not yet answered, under one lock: a bounded write is let
/// through only if no long write under way may hold a row it needs, and a long write,
/// registered, waits for the bounded writes let through before it ([`UnderWay::drain`]),
/// which may be queued for a batch that its locks would otherwise hold up, with every other
/// write of that batch, until the deadline. Registering and letting through each take the
/// lock, so of two that cross, one sees the other.
#[derive(Default)]
struct UnderWay {
    state: Mutex<WritesUnderWay>,
    /// Signalled as a long write ends.
    ended: Notify,
    /// Signalled as a bounded write let through is answered while a long one drains.
    answered: Notify,
}

#[derive(Default)]
struct WritesUnderWay {
    /// The long writes, each with an id of its own.
    long: Vec<(u64, Reach)>,
    /// The ids of the bounded writes let through, until each is answered.
    let_through: HashSet<u64>,
    next_id: u64,
    /// Long writes waiting in [`UnderWay::drain`].
    draining: usize,
}

impl WritesUnderWay {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

impl UnderWay {
    /// Records a long write of `reach` as under way until the guard returned is dropped.
    fn begin(self: &Arc<Self>, reach: Reach) -> Running {
        let mut state = self.lock();
        let id = state.id();
        state.long.push((id, reach));
        Running {
            under_way: self.clone(),
            id,
        }
    }

    /// Waits, once a long write has begun ([`UnderWay::begin`]), until the bounded writes let
    /// through before are answered (those let through since may need none of its rows). A
    /// write is answered within its batch's deadline, when there is one.
    async fn drain(&self) {
        let before: Vec<u64> = {
            let mut state = self.lock();
            if state.let_through.is_empty() {
                return;
            }
            state.draining += 1;
            state.let_through.iter().copied().collect()
        };
        let _draining = Draining(self);
        loop {
            let answered = self.answered.notified();
            tokio::pin!(answered);
            // Registered before the check, so that an answer between the two is not missed.
            answered.as_mut().enable();
            let pending = {
                let state = self.lock();
                before.iter().any(|id| state.let_through.contains(id))
            };
            if !pending {
                return;
            }
            answered.await;
        }
    }

    /// Lets a bounded write through once no long write under way may hold a row `op` needs
    /// (each checked again as one ends: another may have begun meanwhile), within
    /// `deadline`; past it, `op` is refused, as a batch PostgreSQL leaves unanswered is. It
    /// counts as let through until the guard returned is dropped, once it is answered; not
    /// while it waits, so that a long write beginning meanwhile does not wait for it.
    async fn clear_for(self: &Arc<Self>, op: &Op, deadline: Deadline) -> StoreResult<LetThrough> {
        let cleared = async {
            loop {
                let holding: Vec<u64> = {
                    let mut state = self.lock();
                    let holding: Vec<u64> = (state.long.iter())
                        .filter(|(_, reach)| op.may_need(reach))
                        .map(|(id, _)| *id)
                        .collect();
                    if holding.is_empty() {
                        let id = state.id();
                        state.let_through.insert(id);
                        return LetThrough {
                            under_way: self.clone(),
                            id,
                        };
                    }
                    holding
                };
                loop {
                    let ended = self.ended.notified();
                    tokio::pin!(ended);
                    // Registered before the check, so that an end between the two is not
                    // missed.
                    ended.as_mut().enable();
                    if !self.lock().long.iter().any(|(id, _)| holding.contains(id)) {
                        break;
                    }
                    ended.await;
                }
            }
        };
        deadline.within(cleared).await.map_err(|late| {
            StoreError::Unavailable(format!(
                "a removal or a log-out holds what this write needs; {late}"
            ))
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WritesUnderWay> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A long write waiting in [`UnderWay::drain`], counted so that answers signal it.
struct Draining<'a>(&'a UnderWay);

impl Drop for Draining<'_> {
    fn drop(&mut self) {
        self.0.lock().draining -= 1;
    }
}

/// A bounded write let through to its queue ([`UnderWay::clear_for`]), until it is answered:
/// it goes with the write to its committer task, which drops it once it has answered.
struct LetThrough {
    under_way: Arc<UnderWay>,
    id: u64,
}

impl Drop for LetThrough {
    fn drop(&mut self) {
        let mut state = self.under_way.lock();
        state.let_through.remove(&self.id);
        let draining = state.draining > 0;
        drop(state);
        if draining {
            self.under_way.answered.notify_waiters();
        }
    }
}

/// A long write under way ([`UnderWay::begin`]).
struct Running {
    under_way: Arc<UnderWay>,
    id: u64,
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut state = self.under_way.lock();
        if let Some(i) = state.long.iter().position(|(id, _)| *id == self.id) {
            state.long.swap_remove(i);
        }
        drop(state);
        self.under_way.ended.notify_waiters();
    }
}

/// A write's result.
#[derive(Debug)]
pub(crate) enum Reply {
    Done,
    Flag(bool),
    /// A revocation's audit record (`None` when nothing was alive and nothing recorded).
    Audited(Option<AuditEvent>),
    /// A removal: `None` when the thing did not exist.
    Removed(Option<Option<AuditEvent>>),
    Rotation(RotationOutcome),
    /// The clients a write changed.
    Clients(Vec<(TenantId, ClientId)>),
    /// Refused: a client the configuration declares stands in the way.
    Declared,
}

impl Reply {
    pub(crate) fn flag(self) -> StoreResult<bool> {
        match self {
            Reply::Flag(b) => Ok(b),
            other => Err(other.unexpected()),
        }
    }

    pub(crate) fn removed(self) -> StoreResult<Option<Option<AuditEvent>>> {
        match self {
            Reply::Removed(r) => Ok(r),
            Reply::Declared => Err(StoreError::Conflict),
            other => Err(other.unexpected()),
        }
    }

    pub(crate) fn unexpected(self) -> StoreError {
        StoreError::Unavailable(format!("internal: unexpected write reply {self:?}"))
    }
}

/// Statements prepared on the committer's connection, so each write is one round trip.
#[derive(Default)]
struct Statements(HashMap<String, Statement>);

impl Statements {
    async fn execute(
        &mut self,
        tx: &Transaction<'_>,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        let stmt = self.prepared(tx, sql).await?;
        tx.execute(&stmt, params).await
    }

    async fn prepared(
        &mut self,
        tx: &Transaction<'_>,
        sql: &str,
    ) -> Result<Statement, tokio_postgres::Error> {
        if let Some(stmt) = self.0.get(sql) {
            return Ok(stmt.clone());
        }
        let stmt = tx.prepare(sql).await?;
        self.0.insert(sql.to_owned(), stmt.clone());
        Ok(stmt)
    }
}

struct Pending {
    op: Op,
    reply: oneshot::Sender<StoreResult<Reply>>,
    /// A bounded write's place among those let through, until the write is answered.
    _let_through: Option<LetThrough>,
}

/// The handle writers use to reach the node's two committer tasks: one for the bounded
/// writes, one for the others ([`Op::reach`]: removals, log-outs), each on a connection of
/// its own. A removal or a log-out of a subject holding many grants may take seconds, and on
/// the bounded writes' connection it held every other write of the node up meanwhile.
/// Apart, it holds up only the writes that may need a row it locks ([`Op::may_need`]),
/// which wait for it before they join a batch: in a batch, one waiting on its lock would
/// hold up the whole batch, and with it every bounded write of the node, then fail it at the
/// deadline. The others run one at a time, each its own transaction, under way
/// ([`UnderWay`]) from when its task takes it to when it is answered: one queued behind
/// another holds nothing, so holds nothing up. (Writes on two connections are concurrent,
/// as several nodes' are: the same locks order them.)
pub(crate) struct Committer {
    bounded: mpsc::Sender<Pending>,
    unbounded: mpsc::Sender<Pending>,
    under_way: Arc<UnderWay>,
    /// How long a bounded write waits for the unbounded ones it may need ([`UnderWay`]).
    deadline: Deadline,
}

impl Committer {
    /// True once a committer task has ended (it panicked, or the store was dropped).
    pub(crate) fn stopped(&self) -> bool {
        self.bounded.is_closed() || self.unbounded.is_closed()
    }

    /// Starts the committer tasks on the current runtime, counting their batches in `meter`;
    /// a batch of bounded writes that PostgreSQL does not commit within `deadline` is
    /// answered unavailable, and its connection closed. The others commit without it, and
    /// without the server's own timeouts ([`super::LIFT_TIMEOUTS_SQL`]), for as long as they take
    /// (TCP's bounds still catch a server that went silent).
    pub(crate) fn start(
        config: tokio_postgres::Config,
        tls: MakeRustlsConnect,
        meter: Arc<CommitMeter>,
        deadline: Deadline,
    ) -> Self {
        let under_way = Arc::new(UnderWay::default());
        let (bounded, rx) = mpsc::channel(QUEUE_DEPTH);
        let timeouts = ServerTimeouts::Kept;
        let writer = Writer::new(
            config.clone(),
            tls.clone(),
            meter.clone(),
            deadline,
            timeouts,
        );
        tokio::spawn(run(writer, rx, deadline, None));
        let (unbounded, rx) = mpsc::channel(QUEUE_DEPTH);
        let writer = Writer::new(config, tls, meter, deadline, ServerTimeouts::Lifted);
        tokio::spawn(run(writer, rx, Deadline(None), Some(under_way.clone())));
        Self {
            bounded,
            unbounded,
            under_way,
            deadline,
        }
    }

    /// Applies `op` in the next batch of its committer; returns once the batch is committed.
    pub(crate) async fn submit(&self, op: Op) -> StoreResult<Reply> {
        let (reply, answer) = oneshot::channel();
        let (queue, let_through) = match op.reach() {
            None => {
                let through = self.under_way.clear_for(&op, self.deadline).await?;
                (&self.bounded, Some(through))
            }
            Some(_) => (&self.unbounded, None),
        };
        let pending = Pending {
            op,
            reply,
            _let_through: let_through,
        };
        queue
            .send(pending)
            .await
            .map_err(|_| StoreError::Unavailable("the writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the writer stopped before answering".into()))?
    }
}

/// A batch's first statement. It takes the audit trail's lock shared ([`audit_lock_key!`]),
/// held to the end of the transaction, before the batch takes an audit id: a read of the
/// trail then waits for the batch to end. First, so the batch holds no row lock yet while it
/// waits behind such a read (for at most `reads::AUDIT_LOCK_TIMEOUT`).
///
/// And a 200 for a write means it is durable, so the writer never commits with
/// `synchronous_commit = off` (set on the server, the database, the role, in the URL's
/// options, or left on a pooled server connection by another client), which returns from
/// `COMMIT` before the WAL is flushed: a crash then loses writes latch has answered. Every
/// other value flushes the WAL locally at least; a stronger one (`remote_apply`, for a
/// standby) is kept. Set for each transaction (`SET LOCAL`), not the session: behind a
/// transaction pooler (PgBouncer in transaction mode) each transaction may run on another
/// server connection than the one a session-wide setting was made on.
///
/// It also reads the transaction's id and its backend's, so that a batch whose `COMMIT` went
/// unanswered (the connection lost meanwhile) can be asked after, and ended
/// ([`Writer::committed`]). And, given a number of milliseconds (`$1`, a bounded batch's
/// deadline), it has the server end the transaction once it sits idle that long
/// (`idle_in_transaction_session_timeout`, local to it): on a connection the network cut
/// silently, given up by latch whatever it was waiting for (an answer lost before latch
/// knew the transaction's id, or with no new connection to end its backend from), it would
/// otherwise hold its locks until the server noticed its peer gone.
const BEGIN_BATCH_SQL: &str = concat!(
    "SELECT pg_advisory_xact_lock_shared(",
    audit_lock_key!(),
    "), CASE WHEN current_setting('synchronous_commit') = 'off' \
          THEN set_config('synchronous_commit', 'on', true) END, txid_current(), \
     pg_backend_pid(), CASE WHEN $1::int > 0 \
          THEN set_config('idle_in_transaction_session_timeout', $1::int::text, true) END"
);

/// A batch's transaction as PostgreSQL knows it: enough to ask after it, and to end it, once
/// the connection it runs on is lost.
#[derive(Clone, Copy, Debug)]
struct Began {
    /// Its id (`txid_current()`, with the epoch).
    xid: i64,
    /// Its backend's process id.
    backend: i32,
}

/// Whether a committer's transactions keep the server's timeouts
/// ([`super::LIFT_TIMEOUTS_SQL`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ServerTimeouts {
    /// Bounded batches: the server's timeouts apply, as well as latch's deadline.
    Kept,
    /// Unbounded writes: none applies.
    Lifted,
}

/// The committer's connection, and the task that drives it.
struct Link {
    client: PgClient,
    task: tokio::task::JoinHandle<()>,
}

async fn connect(
    config: &tokio_postgres::Config,
    tls: &MakeRustlsConnect,
) -> Result<Link, tokio_postgres::Error> {
    let (client, connection) = config.connect(tls.clone()).await?;
    let task = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "writer connection closed");
        }
    });
    Ok(Link { client, task })
}

impl Link {
    /// Gives up on a connection PostgreSQL stopped answering: asks the server to cancel what
    /// its backend is doing (so that it lets go of the rows its transaction locked, which
    /// the next batches on a new connection may need), and closes the connection. Dropping
    /// the client alone would not close it while answers are pending.
    fn abandon(self, tls: &MakeRustlsConnect, deadline: Deadline) {
        cancel_backend(self.client.cancel_token(), tls, deadline);
        self.close();
    }

    /// Closes the connection, leaving its backend to finish what it was doing.
    fn close(self) {
        self.task.abort();
    }
}

/// Opens a batch's transaction ([`BEGIN_BATCH_SQL`]): one whose commit flushes the WAL, and
/// that holds the audit trail's lock shared. Returns it with its ids.
async fn begin_batch<'a>(
    client: &'a mut PgClient,
    st: &mut Statements,
    timeouts: ServerTimeouts,
    deadline: Deadline,
) -> Result<(Transaction<'a>, Began), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    if timeouts == ServerTimeouts::Lifted {
        let lift = st.prepared(&tx, super::LIFT_TIMEOUTS_SQL).await?;
        tx.query_one(&lift, &[]).await?;
    }
    // A bounded batch idle in its transaction past its deadline has been given up.
    let idle_limit: i32 = match (timeouts, deadline.0) {
        (ServerTimeouts::Kept, Some(limit)) => i32::try_from(limit.as_millis()).unwrap_or(i32::MAX),
        _ => 0,
    };
    let begin = st.prepared(&tx, BEGIN_BATCH_SQL).await?;
    let row = tx.query_one(&begin, &[&idle_limit]).await?;
    let began = Began {
        xid: row.try_get(2)?,
        backend: row.try_get(3)?,
    };
    Ok((tx, began))
}

/// A committer task: commits the writes `rx` brings, a batch at a time, each batch within
/// `batch_deadline`.
/// A committer task: commits what `rx` brings within `batch_deadline`, in batches of what is
/// queued; or, given the node's [`UnderWay`] (the unbounded writes' task), one write at a
/// time, each under way from before it begins (once the bounded writes let through before
/// it are answered) until it is answered.
async fn run(
    mut writer: Writer,
    mut rx: mpsc::Receiver<Pending>,
    batch_deadline: Deadline,
    under_way: Option<Arc<UnderWay>>,
) {
    let most = if under_way.is_some() { 1 } else { MAX_BATCH };
    let mut batch: Vec<Pending> = Vec::with_capacity(most);
    // Waits for a write, then takes the others already queued, up to `most`.
    while rx.recv_many(&mut batch, most).await > 0 {
        let _running = match &under_way {
            Some(under_way) => {
                let running: Vec<_> = (batch.iter().filter_map(|p| p.op.reach()))
                    .map(|reach| under_way.begin(reach))
                    .collect();
                // Bounded writes let through before it may be queued for a batch that its
                // locks would hold up: they go first.
                under_way.drain().await;
                running
            }
            None => Vec::new(),
        };
        writer.commit(&mut batch, batch_deadline).await;
    }
}

/// The committer task's state: its connection and the statements prepared on it.
struct Writer {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    meter: Arc<CommitMeter>,
    /// The URL's deadline, which bounds connecting whatever the batch.
    deadline: Deadline,
    link: Option<Link>,
    statements: Statements,
    timeouts: ServerTimeouts,
}

impl Writer {
    /// A writer that connects when it first commits, within `deadline`.
    fn new(
        config: tokio_postgres::Config,
        tls: MakeRustlsConnect,
        meter: Arc<CommitMeter>,
        deadline: Deadline,
        timeouts: ServerTimeouts,
    ) -> Self {
        Self {
            config,
            tls,
            meter,
            deadline,
            link: None,
            statements: Statements::default(),
            timeouts,
        }
    }

    /// Commits `batch` in one transaction within `deadline` and answers each write, leaving
    /// it empty.
    async fn commit(&mut self, batch: &mut Vec<Pending>, deadline: Deadline) {
        let started = Instant::now();
        let outcome = self.apply(batch, deadline).await;
        self.meter
            .batch(batch.len(), started.elapsed(), outcome.is_ok());
        match outcome {
            Ok(replies) => {
                for (p, r) in batch.drain(..).zip(replies) {
                    let _ = p.reply.send(r);
                }
            }
            Err(err) => {
                tracing::error!(error = %err, writes = batch.len(), "commit failed; every write in the batch answers unavailable");
                for p in batch.drain(..) {
                    let _ = p.reply.send(Err(err.clone()));
                }
            }
        }
    }

    /// The replies of `batch`, committed; or why nothing of it was.
    async fn apply(
        &mut self,
        batch: &[Pending],
        deadline: Deadline,
    ) -> StoreResult<Vec<StoreResult<Reply>>> {
        let link = match &mut self.link {
            Some(link) if !link.client.is_closed() => link,
            slot => {
                self.statements = Statements::default();
                // A server that accepts the connection and never answers its startup would
                // otherwise hold every write up: `connect_timeout` bounds only the TCP connect.
                let link = self
                    .deadline
                    .within(connect(&self.config, &self.tls))
                    .await?;
                slot.insert(link.map_err(|e| store_error(&e))?)
            }
        };
        let ops: Vec<&Op> = batch.iter().map(|p| &p.op).collect();
        let statements = &mut self.statements;
        let timeouts = self.timeouts;
        let (mut begun, mut sent) = (None, None);
        let attempts = async {
            let mut attempt = 0;
            loop {
                let batch = commit_batch(
                    &mut link.client,
                    statements,
                    &ops,
                    timeouts,
                    deadline,
                    &mut begun,
                    &mut sent,
                );
                match batch.await {
                    Err(Failed::Aborted(e)) if is_retryable(&e) && attempt < MAX_RETRIES => {
                        attempt += 1
                    }
                    other => break other,
                }
            }
        };
        let unknown = match deadline.within(attempts).await {
            Ok(Ok(replies)) => return Ok(replies),
            Ok(Err(Failed::Aborted(e))) => {
                // The connection failed before the `COMMIT` was sent: the backend, on its
                // side of a connection the network may have cut silently, may still hold
                // the transaction open. (A statement PostgreSQL refused aborted it there;
                // and on a connection still open, the transaction's end is queued on it.)
                let lost = self.link.as_ref().is_none_or(|l| l.client.is_closed());
                if e.as_db_error().is_none() && lost {
                    if let Some(began) = begun {
                        self.end_in_background(began);
                    }
                }
                return Err(StoreError::Unavailable(super::describe(&e)));
            }
            Ok(Err(Failed::Unanswered(e))) => {
                self.link = None;
                StoreError::Unavailable(super::describe(&e))
            }
            Err(late) => {
                // The next batch would wait behind this one on that connection: a new one
                // (a new backend) instead. A COMMIT sent is left to end as it will: cancelled
                // while it waits for a synchronous standby, it would commit locally only.
                if let Some(link) = self.link.take() {
                    match sent {
                        Some(_) => link.close(),
                        None => link.abandon(&self.tls, self.deadline),
                    }
                }
                // Given up before its `COMMIT`, its backend may sit idle in the transaction
                // (a cancel does not end that) holding its locks.
                if let (None, Some(began)) = (&sent, begun) {
                    self.end_in_background(began);
                }
                late.into()
            }
        };
        // Whether a batch whose COMMIT was sent committed is PostgreSQL's to say. Answered
        // unavailable, a committed refresh-token exchange would be retried by its client
        // with the token it just retired: a reuse, which revokes the grant. A COMMIT the
        // deadline overtook has most likely committed (it was flushing the WAL).
        match sent {
            Some(Sent { began, replies }) if self.committed(began).await? => {
                tracing::warn!(error = %unknown, "the answer to a batch's COMMIT was lost; it had committed");
                Ok(replies)
            }
            _ => Err(unknown),
        }
    }

    /// Ends, on a connection of its own and in the background (the writes are answered
    /// meanwhile), the backend of a batch given up before its `COMMIT` was sent: idle in its
    /// transaction on a connection the network cut silently, it would hold the batch's locks
    /// (every batch of every node needing one of its rows held up, and the audit trail's
    /// head unreadable) until the server noticed its peer gone, minutes to hours later. The
    /// transaction never got a `COMMIT`: ended, it rolls back.
    fn end_in_background(&self, began: Began) {
        let (config, tls, deadline) = (self.config.clone(), self.tls.clone(), self.deadline);
        tokio::spawn(async move {
            let end = async {
                let link = connect(&config, &tls).await?;
                let backend = [&began.backend as &(dyn ToSql + Sync), &began.xid];
                let ended = link.client.execute(END_BACKEND_SQL, &backend).await;
                link.close();
                ended
            };
            match deadline.within(end).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(
                    error = %super::describe(&e),
                    "could not end the backend of a batch given up before its COMMIT"
                ),
                Err(late) => tracing::warn!(
                    error = %late,
                    "could not end the backend of a batch given up before its COMMIT"
                ),
            }
        });
    }

    /// Whether transaction `began` committed, asked on a new connection once the one it ran
    /// on was lost, or given up at the deadline, before `COMMIT` was answered. Its backend
    /// may not have ended it yet (only this side of the connection went, or it is still
    /// flushing the WAL): asked again until it has, for at most [`UNANSWERED_COMMIT_WAIT`].
    /// Still in progress then, its backend never got the `COMMIT` and waits for the next
    /// message of a connection the network cut silently: it is ended ([`END_BACKEND_SQL`]),
    /// then asked after once more. Left alive, it would hold its locks (every batch needing
    /// one of its rows held up) until the server noticed the dead peer, and a `COMMIT` still
    /// under way in the network could yet commit what was answered unavailable. All within
    /// the URL's deadline. An id PostgreSQL no longer knows (far too old) did not commit
    /// here; nor, for this answer, one whose commit waits for a synchronous standby
    /// ([`committed`]).
    async fn committed(&mut self, began: Began) -> StoreResult<bool> {
        // Both waits, and the backend's end between them, within the deadline: cut before
        // the end, the backend would keep its locks, and a `COMMIT` still in the network
        // could yet commit what was answered unavailable.
        let wait = self.deadline.0.map_or(UNANSWERED_COMMIT_WAIT, |limit| {
            UNANSWERED_COMMIT_WAIT.min(limit / 3)
        });
        let ask = async {
            let link = connect(&self.config, &self.tls).await?;
            let (mut status, mut standby) = ended(&link.client, began.xid, wait).await?;
            if status.as_deref() == Some("in progress") {
                let backend = [&began.backend as &(dyn ToSql + Sync), &began.xid];
                match link.client.execute(END_BACKEND_SQL, &backend).await {
                    Ok(_) => (status, standby) = ended(&link.client, began.xid, wait).await?,
                    Err(e) => {
                        tracing::warn!(error = %super::describe(&e), "could not end the backend of a batch whose COMMIT was lost")
                    }
                }
            }
            Ok::<_, tokio_postgres::Error>((link, status, standby))
        };
        let (link, status, standby) = self
            .deadline
            .within(ask)
            .await?
            .map_err(|e| StoreError::Unavailable(super::describe(&e)))?;
        self.statements = Statements::default();
        self.link = Some(link);
        Ok(committed(status.as_deref(), standby))
    }
}

/// Transaction `xid`'s status and whether commits wait for a synchronous standby
/// ([`ASK_COMMITTED_SQL`]), asked until it is no longer in progress, for at most `wait`.
async fn ended(
    client: &PgClient,
    xid: i64,
    wait: Duration,
) -> Result<(Option<String>, bool), tokio_postgres::Error> {
    let asked = Instant::now();
    loop {
        let row = client.query_one(ASK_COMMITTED_SQL, &[&xid]).await?;
        let status: Option<String> = row.try_get(0)?;
        if status.as_deref() != Some("in progress") || asked.elapsed() >= wait {
            return Ok((status, row.try_get(1)?));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Ends backend `$1` if it still runs transaction `$2` (a `txid_current()`, whose low 32 bits
/// are the `xid` PostgreSQL shows): a process id alone could by now be another session's.
/// PostgreSQL rolls back a transaction whose `COMMIT` it never got; one it did get ends as
/// it would have. A role may end its own backends.
const END_BACKEND_SQL: &str = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
     WHERE pid = $1 AND backend_xid::text::bigint = $2::bigint % 4294967296";

/// Asks after transaction `$1`: its status, and whether a commit waits for a synchronous
/// standby (`synchronous_standby_names` set, and `synchronous_commit` not `local`; the
/// batch's own `off` became `on`, [`BEGIN_BATCH_SQL`]).
const ASK_COMMITTED_SQL: &str = "SELECT txid_status($1), \
     current_setting('synchronous_standby_names') <> '' \
     AND current_setting('synchronous_commit') <> 'local'";

/// Whether a transaction whose `COMMIT` went unanswered is to be answered as committed, from
/// its `status` and whether commits wait for a synchronous `standby`. With one, PostgreSQL
/// marks a transaction committed before the standby has it (the commit is local until then),
/// and the wait may never end: such a write is answered unavailable, as any whose fate is
/// unknown, since answered `200` it could be lost with the primary.
fn committed(status: Option<&str>, standby: bool) -> bool {
    status == Some("committed") && !standby
}

/// How long [`Writer::committed`] waits for a transaction whose `COMMIT` went unanswered to
/// end, before its backend is ended and again after, every write of the node waiting
/// meanwhile; a third of the URL's deadline if that is shorter.
const UNANSWERED_COMMIT_WAIT: Duration = Duration::from_secs(2);

/// How a batch that was not committed, or not known to be, failed.
enum Failed {
    /// Nothing of it was committed: PostgreSQL refused a statement or the `COMMIT`, or the
    /// connection failed before the `COMMIT` was sent.
    Aborted(tokio_postgres::Error),
    /// Its `COMMIT` was sent ([`Sent`]) and the connection failed before the answer came:
    /// it may have committed.
    Unanswered(tokio_postgres::Error),
}

/// A batch whose `COMMIT` was sent: its transaction, and its writes' replies should it have
/// committed.
struct Sent {
    began: Began,
    replies: Vec<StoreResult<Reply>>,
}

impl From<tokio_postgres::Error> for Failed {
    fn from(e: tokio_postgres::Error) -> Self {
        Failed::Aborted(e)
    }
}

/// Whether PostgreSQL aborted a transaction that can simply be run again.
pub(crate) fn is_retryable(e: &tokio_postgres::Error) -> bool {
    matches!(e.code(), Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE)
}

/// Applies a batch in one transaction. The outer error aborts the whole batch; per-write
/// errors (constraint violations in a savepoint) are in the replies. `begun` holds the
/// transaction once it has begun, `sent` once its `COMMIT` is sent, until this attempt is
/// answered.
async fn commit_batch(
    client: &mut PgClient,
    st: &mut Statements,
    ops: &[&Op],
    timeouts: ServerTimeouts,
    deadline: Deadline,
    begun: &mut Option<Began>,
    sent: &mut Option<Sent>,
) -> Result<Vec<StoreResult<Reply>>, Failed> {
    (*begun, *sent) = (None, None);
    let (mut tx, began) = begin_batch(client, st, timeouts, deadline).await?;
    *begun = Some(began);
    let mut replies = Vec::with_capacity(ops.len());
    let mut rest = ops;
    while let Some(op) = rest.first() {
        let run = rest
            .iter()
            .take_while(|op| OneStatement::of(op).is_some())
            .count();
        if run > 1 {
            replies.extend(pipeline(&tx, st, &rest[..run]).await?);
            rest = &rest[run..];
            continue;
        }
        rest = &rest[1..];
        if op.may_conflict() {
            let sp = tx.savepoint("w").await?;
            match apply(&sp, st, op).await {
                Ok(reply) => {
                    sp.commit().await?;
                    replies.push(Ok(reply));
                }
                Err(e)
                    if e.code().is_some_and(|c| {
                        *c == SqlState::UNIQUE_VIOLATION || *c == SqlState::FOREIGN_KEY_VIOLATION
                    }) =>
                {
                    sp.rollback().await?;
                    replies.push(Err(StoreError::Conflict));
                }
                // A value PostgreSQL cannot store (class 22, data exception): this write
                // fails alone, not the batch of other requests' writes it shares.
                Err(e) if e.code().is_some_and(|c| c.code().starts_with("22")) => {
                    sp.rollback().await?;
                    replies.push(Err(StoreError::Unavailable(super::describe(&e))));
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            replies.push(Ok(apply(&tx, st, op).await?));
        }
    }
    let sent = sent.insert(Sent { began, replies });
    match tx.commit().await {
        Ok(()) => Ok(std::mem::take(&mut sent.replies)),
        // PostgreSQL answered: it did not commit.
        Err(e) if e.as_db_error().is_some() => Err(Failed::Aborted(e)),
        Err(e) => Err(Failed::Unanswered(e)),
    }
}

/// An issuance as the committer runs it: the grant, its tokens, and the client's secret
/// hash as the request's authentication read it.
type Issuance<'a> = (&'a Grant, &'a [NewToken], Option<&'a SecretHash>);

/// A write that is one statement, whose text and parameters depend on no earlier write's
/// result, and that needs no savepoint: a run of them can be pipelined.
enum OneStatement<'a> {
    Issue(Issuance<'a>),
    Revoke(Target<'a>, &'a AuditContext),
    Rotate(&'a Rotation),
}

impl<'a> OneStatement<'a> {
    fn of(op: &'a Op) -> Option<Self> {
        match op {
            Op::Issue(g, tokens, secret) => Some(OneStatement::Issue((g, tokens, secret.as_ref()))),
            Op::Rotate(r) => Some(OneStatement::Rotate(r)),
            Op::Revoke(rev, audit) => Some(OneStatement::Revoke(Target::of(rev), audit)),
            _ => None,
        }
    }

    /// Its statement's text.
    fn sql(&self) -> Cow<'static, str> {
        match self {
            OneStatement::Issue(..) => Cow::Borrowed(ISSUE_SQL.as_str()),
            OneStatement::Revoke(target, _) => revoke_sql(target),
            OneStatement::Rotate(r) => Cow::Borrowed(rotate_sql(r)),
        }
    }

    /// Runs it with [`Self::sql`], prepared as `stmt`; an exchange takes `locks` first.
    async fn run(
        &self,
        tx: &Transaction<'_>,
        stmt: &Statement,
        locks: &ExchangeLocks,
    ) -> Result<Reply, tokio_postgres::Error> {
        match self {
            OneStatement::Issue(issuance) => {
                let stored = issue(tx, stmt, &[*issuance]).await?;
                Ok(Reply::Flag(stored.first() == Some(&true)))
            }
            OneStatement::Revoke(target, audit) => revoke_target(tx, stmt, target, audit)
                .await
                .map(Reply::Audited),
            OneStatement::Rotate(r) => rotate(tx, locks, stmt, r).await,
        }
    }

    /// Prepares (once per connection) and runs it.
    async fn apply(
        &self,
        tx: &Transaction<'_>,
        st: &mut Statements,
    ) -> Result<Reply, tokio_postgres::Error> {
        let stmt = st.prepared(tx, &self.sql()).await?;
        let locks = ExchangeLocks::prepared(tx, st, false).await?;
        self.run(tx, &stmt, &locks).await
    }
}

/// Runs a run of single-statement writes as one pipeline: every statement is sent before
/// the first answer is awaited, and PostgreSQL executes them one after the other as they
/// arrive, in one round trip instead of one each. The first error fails the whole batch, as
/// it would one statement at a time.
///
/// The run's one-token revocations and its issuances (the commonest writes) go in one
/// statement of their own each ([`REVOKE_TOKENS_SQL`], [`ISSUE_SQL`]), since most of a
/// small statement's cost in PostgreSQL is starting and finishing its execution.
async fn pipeline(
    tx: &Transaction<'_>,
    st: &mut Statements,
    ops: &[&Op],
) -> Result<Vec<StoreResult<Reply>>, tokio_postgres::Error> {
    let mut writes = Vec::with_capacity(ops.len());
    let mut revocations = Vec::new();
    let mut issuances = Vec::new();
    for (i, w) in ops.iter().filter_map(|op| OneStatement::of(op)).enumerate() {
        match w {
            OneStatement::Revoke(Target::Token(hash), audit) => {
                revocations.push((i, hash, audit));
            }
            OneStatement::Issue(issuance) => issuances.push((i, issuance)),
            w => {
                // Prepared once per connection; afterwards a lookup, no round trip.
                let stmt = st.prepared(tx, &w.sql()).await?;
                writes.push((i, w, stmt));
            }
        }
    }
    let locks = ExchangeLocks::prepared(tx, st, true).await?;
    let mut clients: Vec<(&str, &str)> = ops
        .iter()
        .filter_map(|op| match OneStatement::of(op)? {
            OneStatement::Issue((g, _, _)) => Some((g.tenant.as_str(), g.client_id.as_str())),
            OneStatement::Rotate(r) => Some((r.tenant.as_str(), r.client_id.as_str())),
            OneStatement::Revoke(..) => None,
        })
        .collect();
    clients.sort_unstable();
    clients.dedup();
    let lock_clients_stmt = if clients.is_empty() {
        None
    } else {
        Some(st.prepared(tx, LOCK_CLIENTS_SQL).await?)
    };
    let revoke_tokens_stmt = if revocations.is_empty() {
        None
    } else {
        Some(st.prepared(tx, REVOKE_TOKENS_SQL).await?)
    };
    let issue_stmt = if issuances.is_empty() {
        None
    } else {
        Some(st.prepared(tx, &ISSUE_SQL).await?)
    };
    // `join_all` polls every future once before waiting on any, and a tokio-postgres query
    // is sent at its first poll: all the statements are in flight together. The clients'
    // locks go first; the others' order does not matter to their outcome: an issuance
    // touches only new rows; of two revocations of one token the later finds nothing left to
    // kill, and of two exchanges of one refresh token the later finds it claimed, whichever
    // it is. Deadlocks remain possible with another node's batch that locks several rows in
    // another order (grants revoked one by one, several clients' secrets or removals):
    // PostgreSQL detects them, and the batch is run again (`is_retryable`).
    let lock_clients = async {
        let Some(stmt) = &lock_clients_stmt else {
            return Ok(());
        };
        let (tenants, ids): (Vec<&str>, Vec<&str>) = clients.iter().copied().unzip();
        tx.execute(stmt, &[&tenants, &ids]).await.map(|_| ())
    };
    let locks = &locks;
    let singles = futures_util::future::join_all(
        writes
            .iter()
            .map(|(i, w, stmt)| async move { Ok((*i, w.run(tx, stmt, locks).await?)) }),
    );
    let batched = async {
        let Some(stmt) = &revoke_tokens_stmt else {
            return Ok(Vec::new());
        };
        let items: Vec<_> = revocations.iter().map(|(_, h, a)| (*h, *a)).collect();
        let events = revoke_tokens(tx, stmt, &items).await?;
        Ok(revocations
            .iter()
            .zip(events)
            .map(|((i, _, _), event)| (*i, Reply::Audited(event)))
            .collect::<Vec<_>>())
    };
    let issued = async {
        let Some(stmt) = &issue_stmt else {
            return Ok(Vec::new());
        };
        let items: Vec<_> = issuances.iter().map(|(_, item)| *item).collect();
        let stored = issue(tx, stmt, &items).await?;
        Ok(issuances
            .iter()
            .zip(stored)
            .map(|((i, _), stored)| (*i, Reply::Flag(stored)))
            .collect::<Vec<_>>())
    };
    let (locked, (singles, batched, issued)) = futures_util::future::join(
        lock_clients,
        futures_util::future::join3(singles, batched, issued),
    )
    .await;
    locked?;
    let mut replies: Vec<Option<Reply>> = (0..ops.len()).map(|_| None).collect();
    for single in singles {
        let (i, reply): (usize, Reply) = single?;
        replies[i] = Some(reply);
    }
    for (i, reply) in batched?.into_iter().chain(issued?) {
        replies[i] = Some(reply);
    }
    Ok(replies
        .into_iter()
        .map(|r| r.ok_or_else(|| StoreError::Unavailable("a write was not applied".into())))
        .collect())
}

fn kind_code(kind: TokenKind) -> i16 {
    match kind {
        TokenKind::Access => 0,
        TokenKind::Refresh => 1,
    }
}

/// The columns of new tokens, as arrays: every token of a write in one statement.
#[derive(Default)]
struct TokenArrays {
    hashes: Vec<Vec<u8>>,
    kinds: Vec<i16>,
    scopes: Vec<String>,
    issued: Vec<i64>,
    expires: Vec<i64>,
    generations: Vec<i64>,
}

impl TokenArrays {
    fn of<'t>(tokens: impl IntoIterator<Item = &'t NewToken>) -> Self {
        let mut a = Self::default();
        for t in tokens {
            a.hashes.push(t.hash.as_bytes().to_vec());
            a.kinds.push(kind_code(t.kind));
            a.scopes.push(t.scope.to_string());
            a.issued.push(t.issued_at);
            a.expires.push(t.expires_at);
            a.generations.push(i64::from(t.generation));
        }
        a
    }

    /// The parameters [`TOKEN_ROWS`] binds: `grant` as `$1`, the arrays as `$2`..`$7`.
    /// [`ISSUE_SQL`] binds the same after its grants' columns (`$9`..`$15`), `grant` then
    /// being an array of each token's grant id.
    fn params<'a>(&'a self, grant: &'a (dyn ToSql + Sync)) -> Vec<&'a (dyn ToSql + Sync)> {
        vec![
            grant,
            &self.hashes,
            &self.kinds,
            &self.scopes,
            &self.issued,
            &self.expires,
            &self.generations,
        ]
    }
}

/// The rows of a rotation's new tokens, from the arrays bound at `$2`..`$7`, for the grant
/// `$1`: each access token with its grant's owner (schema version 5), as an issuance's.
const TOKEN_ROWS: &str = "SELECT t.h, g.id, t.k, t.s, t.i, t.e, t.n, \
       CASE WHEN t.k = 0 THEN g.tenant_id END, CASE WHEN t.k = 0 THEN g.client_id END, \
       CASE WHEN t.k = 0 THEN g.subject END \
     FROM unnest($2::BYTEA[], $3::SMALLINT[], $4::TEXT[], $5::BIGINT[], $6::BIGINT[], \
       $7::BIGINT[]) AS t(h, k, s, i, e, n) JOIN grants g ON g.id = $1";

/// The columns a new token's row is written with, in the order of [`TOKEN_ROWS`].
const TOKEN_INSERT: &str = "INSERT INTO tokens (hash, grant_id, kind, scope, issued_at, \
     expires_at, generation, tenant_id, client_id, subject)";

/// Issuances as one statement, however many: the grants' INSERT as a data-modifying CTE,
/// then their tokens, each row from arrays (`$1`..`$8` the grants' columns, `$9` each
/// token's grant id, `$10`..`$15` the tokens' columns, `$16`..`$18` an access token's
/// grant's owner, NULL for a refresh token). A pipelined run's issuances share it, as its
/// one-token revocations share [`REVOKE_TOKENS_SQL`]; a lone issuance is a run of one.
///
/// A grant is stored only if its client still exists with the secret hash the request
/// authenticated against (`$19`), and the check locks the client's
/// row (`FOR SHARE`) until the issuance commits. A removal, or a new secret, on any node
/// either changed the row first (the check, re-evaluated on the row as that change
/// committed it, finds nothing or another secret, and the grant is not stored) or waits for
/// this issuance to commit: the removal's revocation, a later statement, then sees this
/// grant, as does a revocation of the client's grants run after the new secret, which is
/// how a compromised client's tokens are killed (`FOR KEY SHARE` let the secret's UPDATE
/// through, and a grant on the old secret could commit after both). The run's distinct
/// clients are looked up and locked once (`live`), not once per grant (a pipelined run has
/// locked them already, with [`LOCK_CLIENTS_SQL`]). Answers the ids of the grants stored.
static ISSUE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH live AS (SELECT c.tenant_id, c.client_id, c.secret_hash FROM clients c \
           WHERE (c.tenant_id, c.client_id) IN (SELECT * FROM unnest($2::TEXT[], $3::TEXT[])) \
           ORDER BY c.tenant_id, c.client_id FOR SHARE), \
         g AS (INSERT INTO grants (id, tenant_id, client_id, subject, scope, \
           created_at, expires_at, revoked_at) \
           SELECT n.id, n.tenant_id, n.client_id, n.subject, n.scope, n.created_at, \
             n.expires_at, n.revoked_at \
           FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], \
             $5::TEXT[], $6::BIGINT[], $7::BIGINT[], $8::BIGINT[], $19::TEXT[]) \
             AS n(id, tenant_id, client_id, subject, scope, created_at, expires_at, revoked_at, \
               secret_hash) \
           WHERE EXISTS (SELECT 1 FROM live l WHERE l.tenant_id = n.tenant_id \
             AND l.client_id = n.client_id AND l.secret_hash IS NOT DISTINCT FROM n.secret_hash) \
           RETURNING id), \
         t AS ({TOKEN_INSERT} SELECT x.* FROM unnest($10::BYTEA[], $9::TEXT[], \
           $11::SMALLINT[], $12::TEXT[], $13::BIGINT[], $14::BIGINT[], $15::BIGINT[], \
           $16::TEXT[], $17::TEXT[], $18::TEXT[]) \
           AS x(hash, grant_id, kind, scope, issued_at, expires_at, generation, tenant_id, \
             client_id, subject) \
           WHERE x.grant_id IN (SELECT id FROM g)) \
         SELECT id FROM g"
    )
});

/// Stores new grants and their tokens with [`ISSUE_SQL`], prepared as `stmt`; answers, for
/// each issuance in order, whether it was stored (its client still existed).
async fn issue(
    tx: &Transaction<'_>,
    stmt: &Statement,
    issuances: &[Issuance<'_>],
) -> Result<Vec<bool>, tokio_postgres::Error> {
    let grants = || issuances.iter().map(|(g, _, _)| *g);
    let ids: Vec<&str> = grants().map(|g| g.id.as_str()).collect();
    let tenants: Vec<&str> = grants().map(|g| g.tenant.as_str()).collect();
    let clients: Vec<&str> = grants().map(|g| g.client_id.as_str()).collect();
    let subjects: Vec<&str> = grants().map(|g| g.subject.as_str()).collect();
    let scopes: Vec<String> = grants().map(|g| g.scope.to_string()).collect();
    let created: Vec<i64> = grants().map(|g| g.created_at).collect();
    let expires: Vec<i64> = grants().map(|g| g.expires_at).collect();
    let revoked: Vec<Option<i64>> = grants().map(|g| g.revoked_at).collect();
    // Each token's grant; an access token also carries its grant's owner (a refresh token,
    // nothing of it).
    let mut token_grants: Vec<&str> = Vec::new();
    let (mut owner_tenants, mut owner_clients, mut owner_subjects) =
        (Vec::<Option<&str>>::new(), Vec::new(), Vec::new());
    for (g, tokens, _) in issuances {
        for t in tokens.iter() {
            token_grants.push(g.id.as_str());
            let owner = (t.kind == TokenKind::Access).then_some(*g);
            owner_tenants.push(owner.map(|g| g.tenant.as_str()));
            owner_clients.push(owner.map(|g| g.client_id.as_str()));
            owner_subjects.push(owner.map(|g| g.subject.as_str()));
        }
    }
    let secrets: Vec<Option<&str>> = issuances
        .iter()
        .map(|(_, _, secret)| secret.map(SecretHash::as_str))
        .collect();
    let a = TokenArrays::of(issuances.iter().flat_map(|(_, tokens, _)| tokens.iter()));
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![
        &ids, &tenants, &clients, &subjects, &scopes, &created, &expires, &revoked,
    ];
    params.extend(a.params(&token_grants));
    params.extend([
        &owner_tenants as &(dyn ToSql + Sync),
        &owner_clients,
        &owner_subjects,
        &secrets,
    ]);
    let stored: Vec<String> = tx
        .query(stmt, &params)
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    Ok(ids
        .iter()
        .map(|id| stored.iter().any(|s| s == id))
        .collect())
}

/// A refresh-token exchange as one statement: claim the old token (the conditional UPDATE
/// that makes exactly one of two concurrent exchanges win) and, only if it was claimed,
/// store the new tokens and move the grant's generation and expiry on. An unused token's
/// exchange also retires the grant's other unused refresh tokens, which only a grace use
/// leaves (as SQLite's `retire_siblings`), if the grant ever forked (schema version 6's
/// `forked_generation`, which gates the search), or, for a client with a grace period,
/// whatever the grant records (a fork made before version 6 whose grace-used token the
/// clean-up had deleted before the migration, which therefore could not find it). `$1` grant id, `$2`..`$7` the new tokens ([`TOKEN_ROWS`]), `$8`
/// the old token's hash, `$9` the time (unused precondition) or the old generation (grace
/// precondition), `$10` the new generation, `$11` the grant's new expiry, `$12`..`$14` the
/// tenant, client id and stored secret hash the request authenticated as: nothing is
/// claimed unless the client still has that secret (`live`, read after [`rotate`] locked
/// the client's row with [`LOCK_CLIENT_SQL`], and its grant's with [`LOCK_GRANT_SQL`]).
/// Answers how many tokens were claimed (0 or 1) and whether the client was.
fn rotate_sql(r: &Rotation) -> &'static str {
    const RETIRE: &str =
        "retired AS (UPDATE tokens SET rotated_at = $9::BIGINT, grace_used = TRUE \
           WHERE grant_id = $1 AND kind = 1 AND hash <> $8 AND rotated_at IS NULL \
             AND revoked_at IS NULL AND EXISTS (SELECT 1 FROM claimed)";
    static UNUSED: LazyLock<String> = LazyLock::new(|| {
        rotation(
            UNUSED_CLAIM,
            &format!(
                "{RETIRE} AND EXISTS (SELECT 1 FROM grants \
                   WHERE id = $1 AND forked_generation IS NOT NULL)), "
            ),
        )
    });
    static UNUSED_WITH_GRACE: LazyLock<String> =
        LazyLock::new(|| rotation(UNUSED_CLAIM, &format!("{RETIRE}), ")));
    static GRACE: LazyLock<String> = LazyLock::new(|| {
        rotation(
            "UPDATE tokens SET grace_used = TRUE \
             WHERE hash = $8 AND kind = 1 AND rotated_at IS NOT NULL \
               AND NOT grace_used AND revoked_at IS NULL \
               AND EXISTS (SELECT 1 FROM grants WHERE id = $1 AND revoked_at IS NULL \
                           AND refresh_generation = $9::BIGINT + 1)",
            "",
        )
    });
    fn rotation(claim: &str, retire: &str) -> String {
        format!(
            "WITH live AS (SELECT 1 FROM clients WHERE tenant_id = $12 AND client_id = $13 \
               AND secret_hash IS NOT DISTINCT FROM $14::TEXT), \
             claimed AS ({claim} AND EXISTS (SELECT 1 FROM live) RETURNING 1), {retire}\
             new_tokens AS ({TOKEN_INSERT} {TOKEN_ROWS} WHERE EXISTS (SELECT 1 FROM claimed)), \
             moved AS (UPDATE grants SET refresh_generation = GREATEST(refresh_generation, $10), \
               expires_at = GREATEST(expires_at, $11) \
               WHERE id = $1 AND EXISTS (SELECT 1 FROM claimed)) \
             SELECT (SELECT count(*) FROM claimed), EXISTS (SELECT 1 FROM live)"
        )
    }
    match (r.precondition, r.client_has_grace) {
        (RotationPrecondition::Unused, false) => &UNUSED,
        (RotationPrecondition::Unused, true) => &UNUSED_WITH_GRACE,
        (RotationPrecondition::GraceUnspent, _) => &GRACE,
    }
}

/// Locks a grant's row (`$1`) for the rest of the batch, just before an exchange of one of
/// its refresh tokens. One statement sees only what was committed when it started: a grace
/// use committed by another node meanwhile (its new token, the fork it records) would be
/// missed by an exchange of the other unused token, and both would succeed, leaving the
/// grant two chains. Locked first, the second of two such exchanges waits for the first to
/// commit, and its statement then starts after it: it retires the grace use's token, or (a
/// grace use second) finds the grant moved on and loses, a reuse. `NO KEY`: the lock the
/// exchange's own UPDATE of the grant takes.
const LOCK_GRANT_SQL: &str = "SELECT 1 FROM grants WHERE id = $1 FOR NO KEY UPDATE";

/// Locks a client's row (`$1`, `$2`) for the rest of the batch, just before an exchange of
/// one of its refresh tokens, as an issuance does ([`ISSUE_SQL`]): a new secret committed
/// by another node meanwhile is seen by the exchange (which then claims nothing), or waits
/// for it to commit, and a revocation of the client's grants run after that secret then
/// sees the exchange's tokens. Before the grant's lock, the order in which a removal takes
/// them (it deletes the client, then revokes its grants).
const LOCK_CLIENT_SQL: &str =
    "SELECT 1 FROM clients WHERE tenant_id = $1 AND client_id = $2 FOR SHARE";

/// Locks the rows of the clients (`$1`, `$2`: tenants and ids) whose grants a pipelined run
/// issues or exchanges, in key order, before any statement of the run locks a grant's row
/// ([`pipeline`]): a write of another node that holds one of those clients' rows (a new
/// secret, a removal) is waited for before the run holds a grant that write may want.
const LOCK_CLIENTS_SQL: &str = "SELECT 1 FROM clients \
     WHERE (tenant_id, client_id) IN (SELECT * FROM unnest($1::TEXT[], $2::TEXT[])) \
     ORDER BY tenant_id, client_id FOR SHARE";

/// The row locks an exchange of a refresh token takes before its statement, prepared.
struct ExchangeLocks {
    /// [`LOCK_CLIENT_SQL`]; `None` in a pipelined run, which has locked its clients' rows
    /// already ([`LOCK_CLIENTS_SQL`]).
    client: Option<Statement>,
    /// [`LOCK_GRANT_SQL`]
    grant: Statement,
}

impl ExchangeLocks {
    /// Prepares them (once per connection; afterwards a lookup, no round trip), the
    /// client's lock unless `clients_locked`.
    async fn prepared(
        tx: &Transaction<'_>,
        st: &mut Statements,
        clients_locked: bool,
    ) -> Result<Self, tokio_postgres::Error> {
        let client = if clients_locked {
            None
        } else {
            Some(st.prepared(tx, LOCK_CLIENT_SQL).await?)
        };
        Ok(Self {
            client,
            grant: st.prepared(tx, LOCK_GRANT_SQL).await?,
        })
    }
}

/// The claim of an unused refresh token, for [`rotate_sql`].
const UNUSED_CLAIM: &str = "UPDATE tokens SET rotated_at = $9::BIGINT \
     WHERE hash = $8 AND kind = 1 AND rotated_at IS NULL AND revoked_at IS NULL \
       AND EXISTS (SELECT 1 FROM grants WHERE id = $1 AND revoked_at IS NULL)";

/// Exchanges a refresh token with [`rotate_sql`], prepared as `stmt`, after locking its client
/// (unless its pipelined run did) and its grant (`locks`). They are sent at once, in that
/// order, so the locks cost no round trip: PostgreSQL runs a pipeline's statements one after the other, each with a
/// snapshot taken when it starts.
async fn rotate(
    tx: &Transaction<'_>,
    locks: &ExchangeLocks,
    stmt: &Statement,
    r: &Rotation,
) -> Result<Reply, tokio_postgres::Error> {
    let a = TokenArrays::of(&r.new_tokens);
    let gid = r.grant_id.as_str();
    let old_generation = i64::from(r.old_generation);
    let condition = match r.precondition {
        RotationPrecondition::Unused => r.now,
        RotationPrecondition::GraceUnspent => old_generation,
    };
    let new_generation = old_generation + 1;
    let old = r.old.as_bytes();
    let mut params = a.params(&gid);
    let (tenant, client_id) = (r.tenant.as_str(), r.client_id.as_str());
    let secret = r.client_secret.as_ref().map(|s| s.as_str());
    params.extend([
        &old as &(dyn ToSql + Sync),
        &condition,
        &new_generation,
        &r.grant_expires_at,
        &tenant,
        &client_id,
        &secret,
    ]);
    // `join3` polls them in order, and a query is sent at its first poll.
    let (client_locked, grant_locked, exchanged) = futures_util::future::join3(
        async {
            match &locks.client {
                Some(lock) => tx.execute(lock, &[&tenant, &client_id]).await.map(|_| ()),
                None => Ok(()),
            }
        },
        tx.execute(&locks.grant, &[&gid]),
        tx.query_one(stmt, &params),
    )
    .await;
    client_locked?;
    grant_locked?;
    let row = exchanged?;
    let (claimed, client_live): (i64, bool) = (row.get(0), row.get(1));
    Ok(Reply::Rotation(match (claimed, client_live) {
        (0, false) => RotationOutcome::ClientChanged,
        (0, true) => RotationOutcome::Lost,
        _ => RotationOutcome::Rotated,
    }))
}

/// Any number of one-token revocations as one statement: the tokens' UPDATE, then an audit row
/// for each that killed its token, with ids drawn beforehand so that each is matched to its
/// revocation. Of two revocations of one token, one kills it and the other finds nothing; so
/// does one of a token whose grant died since the token was read (a grant's revocation
/// leaves its tokens' rows as they are), probed in `grants_revoked`, the small index of
/// revoked grants: a sign-out revoking a refresh token and its access token at once would
/// otherwise audit the access token killed twice, once with its grant. (`OFFSET 0` keeps the
/// probe one index search per token: as an anti join, PostgreSQL hashed the whole index,
/// 118,120 revoked grants, for a batch of 32 tokens.) A token expired within the clocks'
/// allowance is revoked (for the clocks that lag this one) but not audited: nothing live
/// died.
/// `$1`..`$9`: arrays of the hashes and of each revocation's audit columns. The audit ids
/// come from the `BIGSERIAL`'s sequence named outright (`audit_id_seq`, schema version 2),
/// resolved once when the statement is prepared: `pg_get_serial_sequence` ran its catalog
/// lookup again for every row (1.9 µs a row in `psql`).
const REVOKE_TOKENS_SQL: &str = "WITH q AS (SELECT * FROM unnest($1::BYTEA[], $2::BIGINT[], \
       $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::TEXT[], $7::TEXT[], $8::TEXT[], $9::TEXT[]) \
       WITH ORDINALITY AS q(hash, at, tenant, actor, route, reason, grant_id, subject, \
       address, i)), \
     killed AS (UPDATE tokens t SET revoked_at = q.at FROM q \
       WHERE t.hash = q.hash AND t.revoked_at IS NULL \
         AND NOT EXISTS (SELECT 1 FROM grants r \
                         WHERE r.id = t.grant_id AND r.revoked_at IS NOT NULL OFFSET 0) \
       RETURNING q.i, t.expires_at > q.at AS live), \
     numbered AS (SELECT q.*, nextval('audit_id_seq') AS id \
       FROM q JOIN killed USING (i) WHERE killed.live), \
     audited AS (INSERT INTO audit (id, tenant_id, at, actor, route, reason, grant_id, \
       subject, grants, tokens, address) \
       SELECT id, tenant, at, actor, route, reason, grant_id, subject, 0, 1, address \
       FROM numbered) \
     SELECT i, id FROM numbered";

/// Revokes tokens with [`REVOKE_TOKENS_SQL`], prepared as `stmt`; the audit record of each
/// revocation, in order (`None` where nothing was alive).
async fn revoke_tokens(
    tx: &Transaction<'_>,
    stmt: &Statement,
    items: &[(&TokenHash, &AuditContext)],
) -> Result<Vec<Option<AuditEvent>>, tokio_postgres::Error> {
    let hashes: Vec<&[u8]> = items.iter().map(|(h, _)| h.as_bytes()).collect();
    let at: Vec<i64> = items.iter().map(|(_, a)| a.at).collect();
    let tenant: Vec<&str> = items.iter().map(|(_, a)| a.tenant.as_str()).collect();
    let actor: Vec<&str> = items.iter().map(|(_, a)| a.actor.as_str()).collect();
    let route: Vec<&str> = items.iter().map(|(_, a)| a.route).collect();
    let reason: Vec<&str> = items.iter().map(|(_, a)| a.reason.as_str()).collect();
    let grant_id: Vec<Option<&str>> = items
        .iter()
        .map(|(_, a)| a.grant_id.as_ref().map(|g| g.as_str()))
        .collect();
    let subject: Vec<Option<&str>> = items
        .iter()
        .map(|(_, a)| a.subject.as_ref().map(|s| s.as_str()))
        .collect();
    let address: Vec<Option<String>> = items
        .iter()
        .map(|(_, a)| a.address.map(|a| a.to_string()))
        .collect();
    let rows = tx
        .query(
            stmt,
            &[
                &hashes, &at, &tenant, &actor, &route, &reason, &grant_id, &subject, &address,
            ],
        )
        .await?;
    let mut events: Vec<Option<AuditEvent>> = items.iter().map(|_| None).collect();
    let killed = Killed {
        grants: 0,
        tokens: 1,
    };
    for r in rows {
        let (i, id): (i64, i64) = (r.get(0), r.get(1));
        if let Some((slot, (_, audit))) = usize::try_from(i - 1)
            .ok()
            .and_then(|i| events.get_mut(i).zip(items.get(i)))
        {
            *slot = Some(audit.event(id, killed));
        }
    }
    Ok(events)
}

/// Revoking grants (a refresh token's, a subject's, a client's, a tenant's) as one
/// statement: the UPDATE (expired grants too, for the clocks that lag this one), the counts
/// of the live grants and tokens that die, and, if a live grant died or the reason is always
/// recorded (the last parameter), the audit row. `$1` is
/// the time, `$2`.. the condition's values, then the audit columns.
fn revoke_grants_audited_sql(columns: &[(&'static str, &str)]) -> String {
    let condition = grant_condition(columns, |n| format!("${n}"));
    let a = columns.len() + 2;
    format!(
        "WITH dead AS ({update} RETURNING g.id, g.expires_at > $1 AS live), \
         killed AS (SELECT (SELECT count(*) FROM dead WHERE live) AS grants, \
           (SELECT count(*) FROM tokens t JOIN dead ON t.grant_id = dead.id \
            WHERE t.revoked_at IS NULL AND t.rotated_at IS NULL AND t.expires_at > $1) \
           AS tokens), \
         audited AS (INSERT INTO audit (tenant_id, at, actor, route, reason, grant_id, \
           subject, grants, tokens, address) \
           SELECT ${a}, $1, ${}, ${}, ${}, ${}, ${}, grants, tokens, ${} FROM killed \
           WHERE grants > 0 OR ${} RETURNING id) \
         SELECT grants, tokens, (SELECT id FROM audited) FROM killed",
        a + 1,
        a + 2,
        a + 3,
        a + 4,
        a + 5,
        a + 6,
        a + 7,
        update = revoke_grants_sql("$1", &condition),
    )
}

/// Revokes grants with [`revoke_grants_audited_sql`], prepared as `stmt`.
async fn revoke_grants(
    tx: &Transaction<'_>,
    stmt: &Statement,
    columns: &[(&'static str, &str)],
    audit: &AuditContext,
) -> Result<Option<AuditEvent>, tokio_postgres::Error> {
    let address = audit.address.map(|a| a.to_string());
    let (tenant, reason) = (audit.tenant.as_str(), audit.reason.as_str());
    let always = audit.reason.always_recorded();
    let (grant_id, subject) = (
        audit.grant_id.as_ref().map(|g| g.as_str()),
        audit.subject.as_ref().map(|s| s.as_str()),
    );
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&audit.at];
    params.extend(columns.iter().map(|(_, v)| v as &(dyn ToSql + Sync)));
    params.extend([
        &tenant as &(dyn ToSql + Sync),
        &audit.actor,
        &audit.route,
        &reason,
        &grant_id,
        &subject,
        &address,
        &always,
    ]);
    let row = tx.query_one(stmt, &params).await?;
    let (grants, tokens, id): (i64, i64, Option<i64>) = (row.get(0), row.get(1), row.get(2));
    let killed = Killed {
        grants: grants as u64,
        tokens: tokens as u64,
    };
    Ok(id.map(|id| audit.event(id, killed)))
}

/// Applies a revocation inside a transaction and records it in the audit trail. Returns the
/// audit record, or `None` when nothing was alive (nothing is recorded then, unless the
/// reason is [always recorded](latch_core::audit::Reason::always_recorded)).
async fn revoke(
    tx: &Transaction<'_>,
    st: &mut Statements,
    revocation: &Revocation,
    audit: &AuditContext,
) -> Result<Option<AuditEvent>, tokio_postgres::Error> {
    let target = Target::of(revocation);
    let stmt = st.prepared(tx, &revoke_sql(&target)).await?;
    revoke_target(tx, &stmt, &target, audit).await
}

/// A revocation's statement: one token's, or the grants'.
fn revoke_sql(target: &Target<'_>) -> Cow<'static, str> {
    match target {
        Target::Token(_) => Cow::Borrowed(REVOKE_TOKENS_SQL),
        Target::Grants(columns) => Cow::Owned(revoke_grants_audited_sql(columns)),
    }
}

/// Runs a revocation's statement ([`revoke_sql`]), prepared as `stmt`.
async fn revoke_target(
    tx: &Transaction<'_>,
    stmt: &Statement,
    target: &Target<'_>,
    audit: &AuditContext,
) -> Result<Option<AuditEvent>, tokio_postgres::Error> {
    match target {
        // The statement that revokes a pipelined run's tokens, with a run of one.
        Target::Token(hash) => Ok(revoke_tokens(tx, stmt, &[(*hash, audit)])
            .await?
            .pop()
            .flatten()),
        Target::Grants(columns) => revoke_grants(tx, stmt, columns, audit).await,
    }
}

fn join<T: AsRef<str>>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|s| s.as_ref().to_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

async fn apply(
    tx: &Transaction<'_>,
    st: &mut Statements,
    op: &Op,
) -> Result<Reply, tokio_postgres::Error> {
    Ok(match op {
        Op::CreateTenant(t, now) => {
            st.execute(
                tx,
                "INSERT INTO tenants (id, created_at) VALUES ($1, $2)",
                &[&t.as_str(), now],
            )
            .await?;
            Reply::Done
        }
        Op::DeleteTenant(t, audit) => {
            // The tenant's row first: a client being created in it on another node holds
            // the row `FOR KEY SHARE` (its foreign key) until it commits, and this waits for
            // it, so the clients' DELETE below sees that client and the tenant's DELETE
            // cannot then fail on it (which would fail this whole batch).
            st.execute(
                tx,
                "SELECT 1 FROM tenants WHERE id = $1 FOR UPDATE",
                &[&t.as_str()],
            )
            .await?;
            // A client the configuration declares is removed there alone. A node declaring a
            // new one holds the tenant's row (its foreign key) until it commits, which the
            // lock above waits for; one declaring a client that exists updates its row alone,
            // which takes no lock on the tenant's. So every client of the tenant is locked
            // too, which waits for such an update and then reads the row as it committed it:
            // no write has been made when this refuses.
            let clients = st
                .prepared(
                    tx,
                    "SELECT declared FROM clients WHERE tenant_id = $1 FOR UPDATE",
                )
                .await?;
            let rows = tx.query(&clients, &[&t.as_str()]).await?;
            if rows.iter().any(|row| row.get::<_, bool>(0)) {
                return Ok(Reply::Declared);
            }
            st.execute(
                tx,
                "DELETE FROM clients WHERE tenant_id = $1",
                &[&t.as_str()],
            )
            .await?;
            if st
                .execute(tx, "DELETE FROM tenants WHERE id = $1", &[&t.as_str()])
                .await?
                == 0
            {
                Reply::Removed(None)
            } else {
                let rev = Revocation::Tenant(t.clone());
                Reply::Removed(Some(revoke(tx, st, &rev, audit).await?))
            }
        }
        Op::PutClient(c, replace) => {
            let conflict = if *replace {
                crate::client_sql::REPLACE_SETTINGS
            } else {
                ""
            };
            st.execute(
                tx,
                &format!(
                    "INSERT INTO clients (tenant_id, client_id, secret_hash, auth_method, \
                       grant_types, scope, redirect_uris, access_token_ttl, refresh_token_ttl, \
                       rotation_grace, access_token_revocation, created_at, declared, \
                       introspects) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
                     {conflict}"
                ),
                &[
                    &c.tenant.as_str(),
                    &c.id.as_str(),
                    &c.secret.as_ref().map(|s| s.as_str()),
                    &c.auth_method.as_str(),
                    &join(c.grant_types.iter().map(|g| g.as_str())),
                    &c.scope.to_string(),
                    &join(&c.redirect_uris),
                    &i64::from(c.access_token_ttl),
                    &i64::from(c.refresh_token_ttl),
                    &i64::from(c.rotation_grace),
                    &c.access_token_revocation.as_str(),
                    &c.created_at,
                    &c.declared,
                    &c.introspects.as_str(),
                ],
            )
            .await?;
            Reply::Done
        }
        Op::SetSecret(t, id, replaced, secret) => Reply::Flag(
            st.execute(
                tx,
                "UPDATE clients SET secret_hash = $4 \
                 WHERE tenant_id = $1 AND client_id = $2 AND secret_hash = $3 AND NOT declared",
                &[
                    &t.as_str(),
                    &id.as_str(),
                    &replaced.as_str(),
                    &secret.as_str(),
                ],
            )
            .await?
                > 0,
        ),
        Op::DeleteClient(t, id, audit) => {
            let deleted = tx
                .execute(
                    "DELETE FROM clients WHERE tenant_id = $1 AND client_id = $2 AND NOT declared",
                    &[&t.as_str(), &id.as_str()],
                )
                .await?;
            if deleted == 0 {
                Reply::Removed(None)
            } else {
                let rev = Revocation::Client {
                    tenant: t.clone(),
                    client_id: id.clone(),
                };
                Reply::Removed(Some(revoke(tx, st, &rev, audit).await?))
            }
        }
        Op::UndeclareClients(keep) => {
            let tenants: Vec<&str> = keep.iter().map(|k| k.0.as_str()).collect();
            let ids: Vec<&str> = keep.iter().map(|k| k.1.as_str()).collect();
            let rows = tx
                .query(
                    "UPDATE clients SET declared = FALSE WHERE declared \
                       AND (tenant_id, client_id) NOT IN \
                         (SELECT * FROM unnest($1::TEXT[], $2::TEXT[])) \
                     RETURNING tenant_id, client_id",
                    &[&tenants, &ids],
                )
                .await?;
            Reply::Clients(
                rows.iter()
                    .map(|r| {
                        (
                            TenantId::from_stored(r.get(0)),
                            ClientId::from_stored(r.get(1)),
                        )
                    })
                    .collect(),
            )
        }
        Op::Issue(g, tokens, secret) => {
            OneStatement::Issue((g, tokens, secret.as_ref()))
                .apply(tx, st)
                .await?
        }
        Op::Rotate(r) => OneStatement::Rotate(r).apply(tx, st).await?,
        Op::Revoke(rev, audit) => Reply::Audited(revoke(tx, st, rev, audit).await?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A subject's log-out and a grant's revocation in its tenant, by `subject`.
    fn logout(subject: &str) -> Reach {
        Reach::Subject(TenantId::default_tenant(), Subject::parse(subject).unwrap())
    }

    fn grant_revocation() -> Op {
        let audit = AuditContext::new(
            TenantId::default_tenant(),
            "app",
            "test",
            latch_core::audit::Reason::ClientRequest,
            None,
            0,
        );
        Op::Revoke(
            Revocation::Grant(latch_core::id::GrantId::generate()),
            audit,
        )
    }

    /// A refresh-token exchange is held back only by a log-out of its own grant's subject; a
    /// grant's revocation that names no subject by any log-out in its tenant.
    #[test]
    fn an_exchange_waits_only_for_a_logout_of_its_own_subject() {
        let exchange = |subject: &str| {
            Op::Rotate(Rotation {
                grant_id: latch_core::id::GrantId::generate(),
                tenant: TenantId::default_tenant(),
                client_id: ClientId::parse("app").unwrap(),
                subject: Subject::parse(subject).unwrap(),
                client_secret: None,
                old: TokenHash::of("rt"),
                old_generation: 0,
                precondition: RotationPrecondition::Unused,
                new_tokens: vec![],
                grant_expires_at: 0,
                now: 0,
                client_has_grace: false,
            })
        };
        assert!(exchange("alice").may_need(&logout("alice")));
        assert!(!exchange("bob").may_need(&logout("alice")));
        let elsewhere = Reach::Subject(
            TenantId::parse("acme").unwrap(),
            Subject::parse("alice").unwrap(),
        );
        assert!(!exchange("alice").may_need(&elsewhere));
        assert!(grant_revocation().may_need(&logout("alice")));
    }

    /// A long write waits for the bounded writes let through before it began to be answered,
    /// not for those held back meanwhile (however often they are polled), which are let
    /// through only once no long write they may need is under way: one that began as the one
    /// they waited for ended holds them back too.
    #[tokio::test]
    async fn a_long_write_lets_the_writes_let_through_before_it_go_first() {
        let under_way = Arc::new(UnderWay::default());
        let op = grant_revocation();
        let queued = under_way.clear_for(&op, Deadline(None)).await.unwrap();
        let first = under_way.begin(logout("alice"));
        let draining = under_way.drain();
        tokio::pin!(draining);
        assert!(
            futures_util::poll!(draining.as_mut()).is_pending(),
            "it waits"
        );
        // Held back by the log-out, a write is not let through, nor counted as answered.
        let held = under_way.clear_for(&op, Deadline(None));
        tokio::pin!(held);
        for _ in 0..3 {
            assert!(futures_util::poll!(held.as_mut()).is_pending());
            assert!(futures_util::poll!(draining.as_mut()).is_pending());
        }
        drop(queued);
        assert!(
            futures_util::poll!(draining.as_mut()).is_ready(),
            "the write let through before it was answered"
        );
        // The log-out ends, and another it may need begins before it is polled again.
        drop(first);
        let again = under_way.begin(logout("alice"));
        assert!(
            futures_util::poll!(held.as_mut()).is_pending(),
            "held back again"
        );
        drop(again);
        let after = match futures_util::poll!(held.as_mut()) {
            std::task::Poll::Ready(let_through) => let_through.unwrap(),
            std::task::Poll::Pending => panic!("no log-out is under way"),
        };
        // Let through before the next log-out began: it waits for it.
        let second = under_way.begin(logout("bob"));
        let draining = under_way.drain();
        tokio::pin!(draining);
        assert!(futures_util::poll!(draining.as_mut()).is_pending());
        drop(after);
        assert!(futures_util::poll!(draining.as_mut()).is_ready());
        drop(second);
        // With none let through, a long write waits for nothing.
        let third = under_way.begin(logout("carol"));
        assert!(futures_util::poll!(std::pin::pin!(under_way.drain())).is_ready());
        drop(third);
    }

    /// A transaction whose `COMMIT` went unanswered is answered committed only when
    /// PostgreSQL says so and commits do not wait for a synchronous standby: with one,
    /// "committed" may be the primary's alone (a deadline's cancel ends the wait so).
    #[test]
    fn an_unanswered_commit_counts_only_where_no_standby_is_waited_for() {
        assert!(committed(Some("committed"), false));
        assert!(!committed(Some("committed"), true));
        assert!(!committed(Some("in progress"), false));
        assert!(!committed(Some("aborted"), false));
        assert!(!committed(None, false));
    }

    /// The writer's session commits durably whatever the URL's options say, and keeps a
    /// stronger setting. Needs the PostgreSQL the test suite uses (`.ci/run` starts it).
    #[tokio::test]
    async fn the_writer_never_commits_without_flushing_its_wal() {
        for (configured, used) in [
            ("off", "on"),
            ("local", "local"),
            ("remote_apply", "remote_apply"),
        ] {
            let crate::postgres::tls::Target {
                mut config, tls, ..
            } = crate::postgres::tls::parse("postgres://root@127.0.0.1:5432/test").unwrap();
            config.options(format!("-c synchronous_commit={configured}"));
            let Link { mut client, .. } = connect(&config, &tls)
                .await
                .expect("PostgreSQL on 127.0.0.1:5432");
            // The batch's lock is keyed by the `audit` table, which this bare database lacks.
            client
                .batch_execute("CREATE TEMP TABLE audit (id BIGINT)")
                .await
                .unwrap();
            let mut st = Statements::default();
            // As behind a transaction pooler, whose next transaction may run on a server
            // connection another client left with `off`, however the session began.
            for (setting, used) in [(None, used), (Some("off"), "on")] {
                if let Some(setting) = setting {
                    let set = format!("SET synchronous_commit = {setting}");
                    client.batch_execute(&set).await.unwrap();
                }
                let deadline = Deadline::default();
                let (tx, _) = begin_batch(&mut client, &mut st, ServerTimeouts::Kept, deadline)
                    .await
                    .unwrap();
                let row = tx.query_one("SHOW synchronous_commit", &[]).await.unwrap();
                assert_eq!(row.get::<_, String>(0), used, "configured {configured}");
                // A bounded batch is ended by the server once idle past its deadline.
                let row = tx
                    .query_one("SHOW idle_in_transaction_session_timeout", &[])
                    .await
                    .unwrap();
                assert_eq!(row.get::<_, String>(0), "10s");
                tx.commit().await.unwrap();
            }
        }
    }
}
