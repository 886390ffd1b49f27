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
use std::time::{Duration, Instant};

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
    ///
    /// `window` is the [`CommitWindow`]: how long a small batch may wait for more writes
    /// when writes are arriving fast enough to fill it (`Duration::ZERO`: never).
    pub(crate) fn start_thread<B: ApplyBatch<Op = Op>>(
        backend: B,
        name: &str,
        window: Duration,
    ) -> std::io::Result<Self> {
        let (queue, rx) = mpsc::channel(B::QUEUE);
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || run_blocking(backend, rx, CommitWindow::new(window)))?;
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

/// The writer thread of `start_thread`: the loop of `run`, blocking, with the commit window.
fn run_blocking<B: ApplyBatch>(
    mut backend: B,
    mut rx: mpsc::Receiver<Queued<B::Op>>,
    mut window: CommitWindow,
) {
    let mut batch = Vec::with_capacity(B::MAX_BATCH);
    while rx.blocking_recv_many(&mut batch, B::MAX_BATCH) > 0 {
        // A batch that holds a close request commits at once.
        let hold = window
            .hold(Instant::now(), batch.len())
            .filter(|_| !batch.iter().any(|q| matches!(q, Queued::Close(_))));
        if let Some(hold) = hold {
            std::thread::sleep(hold);
            let before = batch.len();
            while batch.len() < B::MAX_BATCH {
                match rx.try_recv() {
                    Ok(queued) => batch.push(queued),
                    Err(_) => break,
                }
            }
            window.gathered(Instant::now(), batch.len() - before);
        }
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

/// The commit window of a writer thread: when writes arrive faster than one per commit, a
/// small batch waits a little for the next ones, so that one commit (one fsync) carries several
/// of them. On this kind of disk the flush is most of a commit's CPU and wall time whether it
/// carries one row or eight (BENCHMARKS.md, "The durable write: a commit window, and the floor").
///
/// The window opens only when it is likely to pay: the batch is smaller than [`FULL`] and
/// the recent rate of writes (an average over batches) expects at least half a write more
/// within it. A quiet service (a write now and then) commits each write at once, without
/// added latency; a busy one gathers what it gets anyway. The wait is bounded by the window,
/// so it adds at most that much to a write's latency.
///
/// [`FULL`]: CommitWindow::FULL
pub(crate) struct CommitWindow {
    max: Duration,
    /// Moving averages of the writes taken per take and of the seconds between takes: their
    /// ratio is the recent rate of writes.
    writes: f64,
    seconds: f64,
    last: Option<Instant>,
}

impl CommitWindow {
    /// A batch of this many writes commits without waiting: the flush is already shared.
    const FULL: usize = 8;
    /// Weight of the newest take in the moving averages.
    const WEIGHT: f64 = 0.1;

    pub(crate) fn new(max: Duration) -> Self {
        Self {
            max,
            writes: 0.0,
            seconds: 0.0,
            last: None,
        }
    }

    /// Takes note of `taken` writes taken from the queue at `now`.
    fn taken(&mut self, now: Instant, taken: usize) {
        if let Some(last) = self.last {
            let gap = now.saturating_duration_since(last).as_secs_f64();
            self.writes += Self::WEIGHT * (taken as f64 - self.writes);
            self.seconds += Self::WEIGHT * (gap - self.seconds);
        }
        self.last = Some(now);
    }

    /// Takes note of a batch of `queued` writes taken at `now` and says how long it should
    /// wait for more, if at all. After the wait, [`CommitWindow::gathered`] counts what came.
    pub(crate) fn hold(&mut self, now: Instant, queued: usize) -> Option<Duration> {
        if self.max.is_zero() {
            return None;
        }
        self.taken(now, queued);
        let expected = self.writes * self.max.as_secs_f64() / self.seconds.max(1e-9);
        (queued < Self::FULL && expected >= 0.5).then_some(self.max)
    }

    /// Takes note of the `gathered` writes taken at `now`, at the end of a wait.
    pub(crate) fn gathered(&mut self, now: Instant, gathered: usize) {
        self.taken(now, gathered);
    }
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Feeds `window` one write per `gap` for `n` takes (each commit immediate) and returns
    /// the last decision.
    fn steady(
        window: &mut CommitWindow,
        start: Instant,
        gap: Duration,
        n: u32,
    ) -> Option<Duration> {
        let mut decision = None;
        for i in 1..=n {
            decision = window.hold(start + gap * i, 1);
        }
        decision
    }

    #[test]
    fn the_window_opens_only_when_writes_come_fast_enough_to_fill_it() {
        let max = Duration::from_micros(400);
        let start = Instant::now();
        // 2,000 writes/s: 0.8 expected in 400 µs.
        let mut busy = CommitWindow::new(max);
        assert_eq!(
            steady(&mut busy, start, Duration::from_micros(500), 50),
            Some(max)
        );
        // ... but a batch that already shares its flush does not wait.
        assert_eq!(
            busy.hold(start + Duration::from_millis(26), CommitWindow::FULL),
            None
        );
        // 100 writes/s: 0.04 expected, so each write commits at once.
        let mut quiet = CommitWindow::new(max);
        assert_eq!(
            steady(&mut quiet, start, Duration::from_millis(10), 50),
            None
        );
        // A quiet spell after a busy one closes the window again.
        assert_eq!(
            steady(
                &mut busy,
                start + Duration::from_secs(1),
                Duration::from_millis(50),
                50
            ),
            None
        );
        // Zero: never.
        let mut off = CommitWindow::new(Duration::ZERO);
        assert_eq!(steady(&mut off, start, Duration::from_micros(10), 50), None);
    }

    #[test]
    fn writes_gathered_during_a_wait_count_towards_the_rate() {
        let max = Duration::from_micros(400);
        let start = Instant::now();
        let mut window = CommitWindow::new(max);
        // One write per millisecond: 0.4 expected in 400 µs, under the bar of 0.5...
        let mut t = start;
        for _ in 0..50 {
            t += Duration::from_micros(1000);
            window.hold(t, 1);
        }
        assert_eq!(window.hold(t + Duration::from_micros(1000), 1), None);
        // ... but with three more gathered after each take it is 4 writes per ms.
        for _ in 0..50 {
            t += Duration::from_micros(1000);
            window.hold(t, 1);
            window.gathered(t + Duration::from_micros(400), 3);
        }
        assert_eq!(window.hold(t + Duration::from_micros(1000), 1), Some(max));
    }

    /// A backend that answers every write and records each batch's size.
    struct Sizes(Arc<Mutex<Vec<usize>>>);

    impl ApplyBatch for Sizes {
        type Op = Reply<()>;
        const STORE: &'static str = "test";
        const MAX_BATCH: usize = 64;

        async fn apply(&mut self, ops: Vec<Reply<()>>) {
            self.0.lock().unwrap().push(ops.len());
            for reply in ops {
                let _ = reply.send(Ok(()));
            }
        }
    }

    /// Writes queued one per millisecond through a writer thread with `window`: the sizes of
    /// the batches it committed.
    async fn batches(window: Duration) -> Vec<usize> {
        let sizes = Arc::default();
        let writes =
            Writes::start_thread(Sizes(Arc::clone(&sizes)), "test-writer", window).unwrap();
        let writes = Arc::new(writes);
        let mut callers = Vec::new();
        for _ in 0..120 {
            let writes = Arc::clone(&writes);
            callers.push(tokio::spawn(
                async move { writes.submit(|reply| reply).await },
            ));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for caller in callers {
            caller.await.unwrap().unwrap();
        }
        writes.close().await;
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(
            sizes.iter().sum::<usize>(),
            120,
            "every write committed once"
        );
        sizes
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_writer_thread_gathers_writes_into_its_window_and_answers_them_all() {
        let mean = |s: &[usize]| s.iter().sum::<usize>() as f64 / s.len() as f64;
        // A write a millisecond against a 20 ms window: the window opens and each commit
        // carries several writes (about 20; 4 leaves room for a slow machine).
        let windowed = batches(Duration::from_millis(20)).await;
        assert!(
            mean(&windowed) >= 4.0,
            "batches with a window: {windowed:?}"
        );
        // Without one, the writer takes what is queued: a write a millisecond commits
        // mostly alone.
        let alone = batches(Duration::ZERO).await;
        assert!(
            mean(&alone) < mean(&windowed) / 2.0,
            "without: {alone:?}, with: {windowed:?}"
        );
    }
}
