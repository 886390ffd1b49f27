//! The group-commit writer every backend uses: one queue of writes, one writer that takes
//! every queued write at once (up to the backend's `MAX_BATCH`), applies them in one commit
//! and answers each caller only after that commit.
//!
//! - [`Writes`] is the store's end: `submit` queues one write and awaits its answer; `close`
//!   lets the writer finish what is queued before it (later writes fail with `Unavailable`)
//!   and returns once the writer has stopped.
//! - [`ApplyBatch`] is the backend's end: what "apply this batch" means (a transaction, a
//!   deadline, an `insertMany`, ...) and what to release when the writer stops. The writer is
//!   a tokio task (`Writes::start`) or an OS thread of its own (`Writes::start_thread`, for a
//!   backend whose calls block: the embedded store's SQLite connection); the queue's protocol
//!   ([`Queued`], [`split`], [`stop`]) and the callers are the same either way.
//! - [`Write`] lists the writes of the transactional backends (embedded, PostgreSQL), with the
//!   channel each caller awaits; [`apply_in_order`] hands them to a backend's [`Transaction`]
//!   (its connection, inside the batch's transaction) in queue order, consecutive appends as
//!   one run. A new kind of write is a new variant and
//!   a new `Transaction` method: the compiler then names every backend that lacks it.
//! - [`Answers`] holds every answer of a batch until its commit; [`conclude`] ends the batch:
//!   the outbox count, the relay's wake-up, the "outbox full" warning, then the answers (or the
//!   batch's error for every caller).
//! - [`AppendRun`]: a run of appends sorted against the stored idempotency keys (duplicates,
//!   the outbox bound, new messages) and answered once written.
//!
//! Where it lives: the queue, `Writes` and the writer loops here; `transaction.rs` has the
//! transactional backends' side (`Transaction`, `apply_in_order`, `Answers`, `conclude`,
//! the outbox count, `AppendRun`).

mod transaction;

pub(crate) use transaction::{
    Answers, AppendRun, Failing, OutboxCount, OutboxState, Transaction, apply_in_order,
    caller_error, conclude, newest_per_room, refuse, warn_outbox_full,
};

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

use super::{Appended, Changed, MarkedRead, StoreError};
use crate::domain::{Message, MessageChange, NewRoom, ReadMarker, Room, RoomId, UserId};

/// Where a caller awaits its write's answer.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// One write of a transactional backend, with its caller's channel.
pub(crate) enum Write {
    Append(Message, Reply<Appended>),
    CreateRoom(NewRoom, Reply<(Room, bool)>),
    AddMember(RoomId, UserId, Reply<()>),
    MarkSent(Vec<u64>, Reply<()>),
    Change(MessageChange, Reply<Changed>),
    MarkRead(ReadMarker, Reply<MarkedRead>),
}

/// What travels on the queue: a backend's write, or the request to stop.
pub(crate) enum Queued<Op> {
    Op(Op),
    Close(oneshot::Sender<()>),
}

/// The backend's end of the writer.
pub(crate) trait ApplyBatch: Send + 'static {
    /// The writes this backend queues.
    type Op: Send + 'static;
    /// The store's name in errors and logs (`embedded store is closed`).
    const STORE: &'static str;
    /// Most writes applied together.
    const MAX_BATCH: usize;
    /// Writes the queue holds before `submit` waits.
    const QUEUE: usize = 8 * Self::MAX_BATCH;

    /// Applies `ops` (queue order) in one commit and answers every op's caller, none of them
    /// before that commit.
    fn apply(&mut self, ops: Vec<Self::Op>) -> impl Future<Output = ()> + Send;

    /// Runs once, after the last batch, when the writer stops.
    fn finish(self) -> impl Future<Output = ()> + Send
    where
        Self: Sized,
    {
        async {}
    }
}

/// The store's end of the writer.
pub(crate) struct Writes<Op> {
    queue: mpsc::Sender<Queued<Op>>,
    store: &'static str,
}

impl<Op: Send + 'static> Writes<Op> {
    /// Starts the writer task of `backend`.
    pub(crate) fn start<B: ApplyBatch<Op = Op>>(backend: B) -> Self {
        let (queue, rx) = mpsc::channel(B::QUEUE);
        tokio::spawn(run(backend, rx));
        Self {
            queue,
            store: B::STORE,
        }
    }

    /// Starts the writer of `backend` on an OS thread of its own, named `name`: the thread
    /// blocks on the queue and applies each batch with `block_on`, so `backend.apply` must not
    /// wait on the tokio runtime (a backend whose calls block, e.g. a synchronous SQLite
    /// connection). A write then costs its caller one queue send and one reply, and no tokio
    /// task sits between the queue and the database.
    pub(crate) fn start_thread<B: ApplyBatch<Op = Op>>(
        backend: B,
        name: &str,
    ) -> std::io::Result<Self> {
        let (queue, rx) = mpsc::channel(B::QUEUE);
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || run_blocking(backend, rx))?;
        Ok(Self {
            queue,
            store: B::STORE,
        })
    }

    /// Queues the write `make` builds around its reply channel and awaits its answer.
    pub(crate) async fn submit<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> Op,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .send(Queued::Op(make(tx)))
            .await
            .map_err(|_| self.closed())?;
        rx.await.map_err(|_| self.closed())?
    }

    /// Queues the writes `makes` build, one after the other in this order (so the writer
    /// applies and commits them in this order), then awaits every answer. Stops queueing at the
    /// first write the writer no longer takes.
    pub(crate) async fn submit_all<T, F>(
        &self,
        makes: impl IntoIterator<Item = F>,
    ) -> Result<Vec<T>, StoreError>
    where
        F: FnOnce(Reply<T>) -> Op,
    {
        let mut answers = Vec::new();
        for make in makes {
            let (tx, rx) = oneshot::channel();
            self.queue
                .send(Queued::Op(make(tx)))
                .await
                .map_err(|_| self.closed())?;
            answers.push(rx);
        }
        let mut out = Vec::with_capacity(answers.len());
        for rx in answers {
            out.push(rx.await.map_err(|_| self.closed())??);
        }
        Ok(out)
    }

    /// Whether the writer has stopped taking writes.
    pub(crate) fn is_closed(&self) -> bool {
        self.queue.is_closed()
    }

    /// The error of a write the writer no longer takes.
    pub(crate) fn closed(&self) -> StoreError {
        StoreError::Unavailable(format!("{} store is closed", self.store))
    }

    /// Finishes the writes queued before this call; later ones fail with `Unavailable`.
    /// Returns when the writer has stopped (at once when it already had).
    pub(crate) async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.queue.send(Queued::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

impl Writes<Write> {
    pub(crate) async fn append(&self, message: Message) -> Result<Appended, StoreError> {
        self.submit(|tx| Write::Append(message, tx)).await
    }

    pub(crate) async fn append_all(
        &self,
        messages: Vec<Message>,
    ) -> Result<Vec<Appended>, StoreError> {
        self.submit_all(messages.into_iter().map(|m| move |tx| Write::Append(m, tx)))
            .await
    }

    pub(crate) async fn create_room(&self, room: NewRoom) -> Result<(Room, bool), StoreError> {
        self.submit(|tx| Write::CreateRoom(room, tx)).await
    }

    pub(crate) async fn add_member(&self, room: &RoomId, user: &UserId) -> Result<(), StoreError> {
        let (room, user) = (room.clone(), user.clone());
        self.submit(|tx| Write::AddMember(room, user, tx)).await
    }

    pub(crate) async fn mark_sent(&self, seqs: &[u64]) -> Result<(), StoreError> {
        let seqs = seqs.to_vec();
        self.submit(|tx| Write::MarkSent(seqs, tx)).await
    }

    pub(crate) async fn change(&self, change: MessageChange) -> Result<Changed, StoreError> {
        self.submit(|tx| Write::Change(change, tx)).await
    }

    pub(crate) async fn mark_read(&self, marker: ReadMarker) -> Result<MarkedRead, StoreError> {
        self.submit(|tx| Write::MarkRead(marker, tx)).await
    }
}

/// The writer task: one batch after the other until `close` or until every `Writes` is gone.
async fn run<B: ApplyBatch>(mut backend: B, mut rx: mpsc::Receiver<Queued<B::Op>>) {
    let mut batch = Vec::with_capacity(B::MAX_BATCH);
    while rx.recv_many(&mut batch, B::MAX_BATCH).await > 0 {
        let (ops, close) = split(&mut batch);
        if !ops.is_empty() {
            backend.apply(ops).await;
        }
        if let Some(done) = close {
            stop(&mut rx);
            backend.finish().await;
            let _ = done.send(());
            return;
        }
    }
    backend.finish().await;
}

/// The writer thread of `start_thread`: the loop of `run`, blocking.
fn run_blocking<B: ApplyBatch>(mut backend: B, mut rx: mpsc::Receiver<Queued<B::Op>>) {
    let mut batch = Vec::with_capacity(B::MAX_BATCH);
    while rx.blocking_recv_many(&mut batch, B::MAX_BATCH) > 0 {
        let (ops, close) = split(&mut batch);
        if !ops.is_empty() {
            futures::executor::block_on(backend.apply(ops));
        }
        if let Some(done) = close {
            stop(&mut rx);
            futures::executor::block_on(backend.finish());
            let _ = done.send(());
            return;
        }
    }
    futures::executor::block_on(backend.finish());
}

/// The writes of a batch taken from the queue, and the close request among them.
pub(crate) fn split<Op>(batch: &mut Vec<Queued<Op>>) -> (Vec<Op>, Option<oneshot::Sender<()>>) {
    let mut close = None;
    let mut ops = Vec::with_capacity(batch.len());
    for queued in batch.drain(..) {
        match queued {
            Queued::Op(op) => ops.push(op),
            Queued::Close(done) => close = Some(done),
        }
    }
    (ops, close)
}

/// Closes the queue: writes queued after the close request are dropped (their callers get
/// `Unavailable`), other close requests are answered.
pub(crate) fn stop<Op>(rx: &mut mpsc::Receiver<Queued<Op>>) {
    rx.close();
    while let Ok(queued) = rx.try_recv() {
        if let Queued::Close(done) = queued {
            let _ = done.send(());
        }
    }
}
