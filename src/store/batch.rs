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

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Notify, mpsc, oneshot};

use super::{Appended, Changed, Key, MarkedRead, OutboxConfig, StoreError, key_of};
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

/// The writes of a transactional backend, each applied inside the batch's transaction.
pub(crate) trait Transaction {
    /// A run of consecutive appends; every caller's answer goes to `answers`, and the outbox
    /// entries they add to `count`.
    async fn appends(
        &mut self,
        run: Vec<(Message, Reply<Appended>)>,
        count: &mut OutboxCount,
        answers: &mut Answers,
    ) -> Result<(), StoreError>;

    /// `Err(RoomExists)` is the caller's answer; any other error fails the batch.
    async fn create_room(&mut self, room: NewRoom) -> Result<(Room, bool), StoreError>;

    async fn add_member(&mut self, room: &RoomId, user: &UserId) -> Result<(), StoreError>;

    /// Deletes the outbox entries `seqs` (unknown ones are ignored); how many there were.
    async fn mark_sent(&mut self, seqs: &[u64]) -> Result<u64, StoreError>;

    /// One change (the store's lifecycle contract). A refusal (`StoreError::is_refusal`) is
    /// the caller's answer; any other error fails the batch. An effective edit or delete
    /// writes its outbox entry when `count` is enabled (`count.admit()` first).
    async fn change(
        &mut self,
        change: &MessageChange,
        count: &mut OutboxCount,
    ) -> Result<Changed, StoreError>;

    /// One read marker (refusal: `NotFound`).
    async fn mark_read(&mut self, marker: &ReadMarker) -> Result<MarkedRead, StoreError>;
}

/// Applies `ops` through `tx` in queue order, consecutive appends as one run. An `Err` fails
/// the whole batch (the caller rolls it back).
pub(crate) async fn apply_in_order<T: Transaction>(
    tx: &mut T,
    ops: Vec<Write>,
    count: &mut OutboxCount,
    answers: &mut Answers,
) -> Result<(), StoreError> {
    let mut run = Vec::new();
    for op in ops {
        let op = match op {
            Write::Append(message, reply) => {
                run.push((message, reply));
                continue;
            }
            other => other,
        };
        if !run.is_empty() {
            tx.appends(std::mem::take(&mut run), count, answers).await?;
        }
        match op {
            Write::Append(..) => unreachable!("appends are gathered above"),
            Write::CreateRoom(room, reply) => match tx.create_room(room).await {
                Ok(created) => answers.push(Answer::CreateRoom(reply, Ok(created))),
                Err(StoreError::RoomExists) => {
                    answers.push(Answer::CreateRoom(reply, Err(StoreError::RoomExists)));
                }
                Err(e) => return Err(e),
            },
            Write::AddMember(room, user, reply) => {
                tx.add_member(&room, &user).await?;
                answers.push(Answer::Done(reply));
            }
            Write::MarkSent(seqs, reply) => {
                let removed = tx.mark_sent(&seqs).await?;
                count.removed(removed);
                answers.push(Answer::Done(reply));
            }
            Write::Change(change, reply) => match tx.change(&change, count).await {
                Err(e) if !e.is_refusal() => return Err(e),
                result => answers.push(Answer::Change(reply, result)),
            },
            Write::MarkRead(marker, reply) => match tx.mark_read(&marker).await {
                Err(e) if !e.is_refusal() => return Err(e),
                result => answers.push(Answer::MarkRead(reply, result)),
            },
        }
    }
    if !run.is_empty() {
        tx.appends(run, count, answers).await?;
    }
    Ok(())
}

/// A write's answer, held until its batch commits. An `Err` is a refusal of that write alone
/// (`RoomExists`, `OutboxFull`); it too waits for the commit, so that no caller hears of the
/// batch before the others.
pub(crate) enum Answer {
    Append(Reply<Appended>, Result<Appended, StoreError>),
    CreateRoom(Reply<(Room, bool)>, Result<(Room, bool), StoreError>),
    Done(Reply<()>),
    Change(Reply<Changed>, Result<Changed, StoreError>),
    MarkRead(Reply<MarkedRead>, Result<MarkedRead, StoreError>),
}

/// The answers of one batch.
pub(crate) struct Answers(Vec<Answer>);

impl Answers {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self(Vec::with_capacity(n))
    }

    pub(crate) fn push(&mut self, answer: Answer) {
        self.0.push(answer);
    }

    /// Appends refused because the outbox is full.
    fn outbox_full(&self) -> usize {
        self.0
            .iter()
            .filter(|a| {
                matches!(
                    a,
                    Answer::Append(_, Err(StoreError::OutboxFull(_)))
                        | Answer::Change(_, Err(StoreError::OutboxFull(_)))
                )
            })
            .count()
    }

    /// The batch committed: every caller gets its answer.
    fn send(self) {
        for answer in self.0 {
            match answer {
                Answer::Append(tx, v) => drop(tx.send(v)),
                Answer::CreateRoom(tx, v) => drop(tx.send(v)),
                Answer::Done(tx) => drop(tx.send(Ok(()))),
                Answer::Change(tx, v) => drop(tx.send(v)),
                Answer::MarkRead(tx, v) => drop(tx.send(v)),
            }
        }
    }

    /// The batch failed: every caller gets its error.
    fn fail(self, e: &StoreError) {
        for answer in self.0 {
            match answer {
                Answer::Append(tx, _) => drop(tx.send(Err(caller_error(e)))),
                Answer::CreateRoom(tx, _) => drop(tx.send(Err(caller_error(e)))),
                Answer::Done(tx) => drop(tx.send(Err(caller_error(e)))),
                Answer::Change(tx, _) => drop(tx.send(Err(caller_error(e)))),
                Answer::MarkRead(tx, _) => drop(tx.send(Err(caller_error(e)))),
            }
        }
    }
}

/// What each caller of a failed batch gets: `Unavailable` stays so (the caller may retry),
/// anything else is `Internal`.
pub(crate) fn caller_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        other => StoreError::Internal(other.to_string()),
    }
}

/// Whether a writer's last batch failed: the condition is logged when it starts and when it
/// clears, not once per batch (a full disk fails every write until space comes back).
#[derive(Default)]
pub(crate) struct Failing(bool);

/// Ends a batch of a transactional backend: after a commit, the outbox count and the relay's
/// wake-up, then the answers; after a failure, the batch's error for every caller.
pub(crate) fn conclude(
    store: &str,
    result: Result<(), StoreError>,
    answers: Answers,
    outbox: &OutboxState,
    count: OutboxCount,
    failing: &mut Failing,
) {
    match result {
        Ok(()) => {
            if std::mem::take(&mut failing.0) {
                tracing::info!("{store} store writes again");
            }
            outbox.committed(count.pending, count.added);
            let refused = answers.outbox_full();
            if refused > 0 {
                warn_outbox_full(count.pending, refused);
            }
            answers.send();
        }
        Err(e) => {
            failing.fail(store, &e);
            answers.fail(&e);
        }
    }
}

impl Failing {
    /// Logs the failure when it is the first since the last success.
    pub(crate) fn fail(&mut self, store: &str, e: &StoreError) {
        if !std::mem::replace(&mut self.0, true) {
            tracing::error!(error = %e, "{store} store batch failed; writes are refused until it recovers");
        }
    }
}

/// Answers every write of a batch that could not even start with `e`.
pub(crate) fn refuse(ops: Vec<Write>, e: &StoreError) {
    for op in ops {
        match op {
            Write::Append(_, tx) => drop(tx.send(Err(caller_error(e)))),
            Write::CreateRoom(_, tx) => drop(tx.send(Err(caller_error(e)))),
            Write::AddMember(_, _, tx) | Write::MarkSent(_, tx) => {
                drop(tx.send(Err(caller_error(e))))
            }
            Write::Change(_, tx) => drop(tx.send(Err(caller_error(e)))),
            Write::MarkRead(_, tx) => drop(tx.send(Err(caller_error(e)))),
        }
    }
}

pub(crate) fn warn_outbox_full(pending: u64, refused: usize) {
    tracing::warn!(
        pending,
        refused,
        "notification outbox full: refusing new messages until the relay catches up (OUTBOX_MAX_PENDING)"
    );
}

/// The outbox settings and size, shared by a store handle and its writer.
pub(crate) struct OutboxState {
    pub(crate) config: Option<OutboxConfig>,
    /// Pending entries as last counted, plus the writer's changes since.
    pub(crate) pending: AtomicU64,
    pub(crate) signal: Arc<Notify>,
}

impl OutboxState {
    pub(crate) fn new(config: Option<OutboxConfig>, pending: u64) -> Arc<Self> {
        Arc::new(Self {
            config,
            pending: AtomicU64::new(pending),
            signal: Arc::new(Notify::new()),
        })
    }

    /// The count a new batch starts from.
    pub(crate) fn count(&self) -> OutboxCount {
        OutboxCount {
            max: self.config.map(|c| c.max_pending),
            pending: self.pending.load(Ordering::Relaxed),
            added: 0,
        }
    }

    /// A batch committed with `pending` entries, `added` of them its own: wakes the relay.
    pub(crate) fn committed(&self, pending: u64, added: u64) {
        self.pending.store(pending, Ordering::Relaxed);
        if added > 0 {
            self.signal.notify_one();
        }
    }
}

/// The outbox size while a batch is written (applied by `conclude` after the commit).
pub(crate) struct OutboxCount {
    /// `OutboxConfig::max_pending`; `None` when the store writes no entries.
    pub(crate) max: Option<u64>,
    pub(crate) pending: u64,
    /// Entries this batch wrote.
    pub(crate) added: u64,
}

impl OutboxCount {
    /// Whether appends write outbox entries.
    pub(crate) fn enabled(&self) -> bool {
        self.max.is_some()
    }

    /// Counts a new entry, or refuses it: `OutboxFull` when the bound is reached.
    pub(crate) fn admit(&mut self) -> Result<(), StoreError> {
        match self.max {
            Some(max) if self.pending >= max => Err(StoreError::OutboxFull(self.pending)),
            Some(_) => {
                self.pending += 1;
                self.added += 1;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Takes back an admitted entry that was not written.
    fn withdraw(&mut self) {
        if self.enabled() {
            self.pending -= 1;
            self.added -= 1;
        }
    }

    /// `n` entries were marked sent.
    fn removed(&mut self, n: u64) {
        self.pending = self.pending.saturating_sub(n);
    }
}

/// A run of appends sorted against the stored idempotency keys: `fresh` is what to write;
/// the rest are duplicates (of a stored message, or of one earlier in the run) or refusals.
pub(crate) struct AppendRun {
    /// New messages, in queue order.
    pub(crate) fresh: Vec<Message>,
    /// Messages by idempotency key: the stored ones, and those of `fresh`.
    known: HashMap<Key, Message>,
    callers: Vec<(Reply<Appended>, Slot)>,
}

/// A caller's message: `fresh[i]`, or the one stored under a key.
enum Slot {
    Fresh(usize),
    Known(Key),
}

impl AppendRun {
    /// Sorts `appends`; `known` holds the stored messages with their keys. A new message
    /// beyond the outbox bound is refused (`OutboxFull`, answered through `answers`).
    pub(crate) fn sort(
        appends: Vec<(Message, Reply<Appended>)>,
        mut known: HashMap<Key, Message>,
        count: &mut OutboxCount,
        answers: &mut Answers,
    ) -> Self {
        let mut fresh = Vec::with_capacity(appends.len());
        let mut callers = Vec::with_capacity(appends.len());
        for (message, reply) in appends {
            let key = key_of(&message);
            if let Some(k) = key.as_ref().filter(|k| known.contains_key(*k)) {
                callers.push((reply, Slot::Known(k.clone())));
                continue;
            }
            if let Err(e) = count.admit() {
                answers.push(Answer::Append(reply, Err(e)));
                continue;
            }
            if let Some(k) = key {
                known.insert(k, message.clone());
            }
            callers.push((reply, Slot::Fresh(fresh.len())));
            fresh.push(message);
        }
        Self {
            fresh,
            known,
            callers,
        }
    }

    /// Another writer stored `fresh[i]`'s key first, as `stored`: its caller gets that one,
    /// and the entry admitted for it is taken back.
    pub(crate) fn lost_race(&mut self, i: usize, stored: Message, count: &mut OutboxCount) {
        let Some(key) = key_of(&stored) else { return };
        for (_, slot) in &mut self.callers {
            if matches!(slot, Slot::Fresh(j) if *j == i) {
                *slot = Slot::Known(key.clone());
            }
        }
        self.known.insert(key, stored);
        count.withdraw();
    }

    /// Every caller's answer, held in `answers` until the commit.
    pub(crate) fn answer(self, answers: &mut Answers) {
        let mut fresh: Vec<Option<Message>> = self.fresh.into_iter().map(Some).collect();
        for (reply, slot) in self.callers {
            let appended = match slot {
                Slot::Fresh(i) => Appended {
                    message: fresh[i].take().expect("each new message is answered once"),
                    duplicate: false,
                },
                Slot::Known(k) => Appended {
                    message: self.known[&k].clone(),
                    duplicate: true,
                },
            };
            answers.push(Answer::Append(reply, Ok(appended)));
        }
    }
}

/// Each room's newest message of `messages` (the last one per room), rooms in id order (so
/// that two writers lock rooms in the same order).
pub(crate) fn newest_per_room<'a>(
    messages: impl IntoIterator<Item = &'a Message>,
) -> Vec<&'a Message> {
    let mut last: HashMap<&str, &Message> = HashMap::new();
    for m in messages {
        last.insert(m.room_id.as_str(), m);
    }
    let mut newest: Vec<&Message> = last.into_values().collect();
    newest.sort_by(|a, b| a.room_id.as_str().cmp(b.room_id.as_str()));
    newest
}
