//! The embedded store's apply thread (`embedded-apply`): the only connection that writes
//! SQLite. It takes what the writer thread (`writes.rs`) hands it, in order:
//!
//! - journal records the writer flushed and already answered: handed over through
//!   `Progress::pending` (the thread is woken for the first one and at `APPLY_MAX` messages,
//!   not for each), then written into SQLite together, with the last one's number
//!   (`journal_state.applied`) in the same transaction, when `APPLY_EVERY` has passed since
//!   the first, when `APPLY_MAX` messages wait, when a reader needs them (`Flush`) or before
//!   anything else;
//! - any other batch of writes (edits, rooms, read markers, outbox marks, sends too large for
//!   a record): committed at once, after the held records, in the same transaction (the writer
//!   waits for it, so the order of every write stays the queue's).
//!
//! When a transaction fails (a full disk) the held records stay held (they are durable in the
//! journal) and are tried again every `RETRY`; meanwhile `Progress::failing` makes the writer
//! refuse sends, as the store always did while it could not write. The failure is logged once
//! (`batch::Failing`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rusqlite::Connection;

use super::checkpoint::Checkpoints;
use super::journal;
use super::record::Record;
use super::writes::{self, Tx, insert_messages};
use super::{outbox, sqlite_error};
use crate::store::StoreError;
use crate::store::batch::{
    Answers, ApplyBatch, Failing, OutboxState, Write, apply_in_order, caller_error, conclude,
    refuse,
};

/// Longest a flushed record waits before it is written into SQLite.
const APPLY_EVERY: Duration = Duration::from_millis(100);
/// Held messages that are written into SQLite at once.
const APPLY_MAX: usize = 1024;
/// After a failed transaction, when the held records are tried again.
const RETRY: Duration = Duration::from_millis(200);

/// What the writer thread hands the apply thread.
pub(super) enum ToApply {
    /// Journal records wait in `Progress::pending`: the first after the thread took them,
    /// or `APPLY_MAX` messages.
    Records,
    /// Writes to commit now, after every record before them; `done` once they are answered.
    Batch(Vec<Write>, SyncSender<()>),
    /// A reader waits for the records flushed so far.
    Flush,
    /// The writer stops: write what is held, then stop (the readers' handles keep the
    /// channel open, so its end is not the signal).
    Stop,
}

/// The journal's progress, shared by the writer, the apply thread and the readers.
pub(super) struct Progress {
    /// The last record flushed (its senders are answered, or about to be).
    pub(super) written: AtomicU64,
    /// The last record written into SQLite.
    pub(super) applied: tokio::sync::watch::Sender<u64>,
    /// While held records cannot be written into SQLite: why (the writer refuses sends).
    pub(super) failing: Mutex<Option<String>>,
    /// Records flushed and answered that the apply thread has not taken yet, in order, and
    /// their messages. A mailbox instead of one channel message per record: the apply thread
    /// sleeps until they are due instead of waking for each of ~1,500 records a second.
    pending: Mutex<(Vec<Record>, usize)>,
}

impl Progress {
    pub(super) fn new(applied: u64) -> Arc<Self> {
        Arc::new(Self {
            written: AtomicU64::new(applied),
            applied: tokio::sync::watch::Sender::new(applied),
            failing: Mutex::new(None),
            pending: Mutex::new((Vec::new(), 0)),
        })
    }

    /// Hands a flushed record to the apply thread; returns whether the thread must be woken
    /// (`ToApply::Records`): for the first record it has not taken, and when `APPLY_MAX`
    /// messages are reached.
    pub(super) fn hand_over(&self, record: Record) -> bool {
        let mut pending = self.pending.lock();
        let (records, messages) = &mut *pending;
        let first = records.is_empty();
        let before = *messages;
        *messages += record.messages.len();
        records.push(record);
        first || (before < APPLY_MAX && *messages >= APPLY_MAX)
    }

    /// The records handed over so far, and their messages.
    fn take(&self) -> (Vec<Record>, usize) {
        std::mem::take(&mut *self.pending.lock())
    }

    /// Whether every flushed record is in SQLite.
    pub(super) fn caught_up(&self) -> bool {
        *self.applied.borrow() >= self.written.load(Ordering::Acquire)
    }
}

pub(super) struct Applier {
    /// `None` after a failed transaction: the next one opens a fresh connection (closing the
    /// old one rolls back whatever it left open).
    conn: Option<Connection>,
    file: PathBuf,
    outbox: Arc<OutboxState>,
    checkpoints: Checkpoints,
    failing: Failing,
    progress: Arc<Progress>,
    held: Vec<Record>,
    held_messages: usize,
}

impl Applier {
    pub(super) fn new(
        conn: Connection,
        file: PathBuf,
        outbox: Arc<OutboxState>,
        checkpoints: Checkpoints,
        progress: Arc<Progress>,
    ) -> Self {
        Self {
            conn: Some(conn),
            file,
            outbox,
            checkpoints,
            failing: Failing::default(),
            progress,
            held: Vec::new(),
            held_messages: 0,
        }
    }

    /// Starts the apply thread; it stops at `ToApply::Stop` (or when every sender is gone),
    /// after writing what it holds.
    pub(super) fn start(self, rx: Receiver<ToApply>) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("embedded-apply".into())
            .spawn(move || {
                background(APPLY_NICE);
                self.run(&rx)
            })
    }

    fn run(mut self, rx: &Receiver<ToApply>) {
        // When the held records are to be written (`None`: nothing held).
        let mut due: Option<Instant> = None;
        loop {
            let next = match due {
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
            };
            if !matches!(next, Ok(ToApply::Records)) {
                // Anything but the wake-up writes what was handed over, first.
                self.take_pending();
            }
            due = match next {
                Ok(ToApply::Records) => {
                    if self.held_messages + self.progress.pending.lock().1 >= APPLY_MAX {
                        self.take_pending();
                        self.commit(Vec::new(), None)
                    } else {
                        due.or_else(|| Some(Instant::now() + APPLY_EVERY))
                    }
                }
                // Nothing to write (a reader's `Flush` or the wake-up's due time came after
                // the records were written).
                Ok(ToApply::Flush) | Err(RecvTimeoutError::Timeout) if self.held.is_empty() => None,
                Ok(ToApply::Flush) | Err(RecvTimeoutError::Timeout) => {
                    self.commit(Vec::new(), None)
                }
                Ok(ToApply::Batch(ops, done)) => self.commit(ops, Some(done)),
                Ok(ToApply::Stop) | Err(RecvTimeoutError::Disconnected) => {
                    if !self.held.is_empty() {
                        self.commit(Vec::new(), None);
                    }
                    self.checkpoints.stop();
                    // Closing the last connection checkpoints the whole WAL and removes it.
                    drop(self.conn.take());
                    return;
                }
            };
        }
    }

    /// Moves the records handed over behind the held ones.
    fn take_pending(&mut self) {
        let (records, messages) = self.progress.take();
        if self.held.is_empty() {
            self.held = records;
        } else {
            self.held.extend(records);
        }
        self.held_messages += messages;
    }

    /// Writes the held records and `ops` in one transaction and answers `ops`' callers
    /// (`done` after that). Returns when the held records are due again: `None` when written.
    fn commit(&mut self, ops: Vec<Write>, done: Option<SyncSender<()>>) -> Option<Instant> {
        let conn = match self.conn.take() {
            Some(conn) => Ok(conn),
            None => writes::open(&self.file).map_err(sqlite_error),
        };
        let (result, conn) = match conn {
            Ok(mut conn) => {
                let (result, outboxed) = self.transaction(&mut conn, ops);
                if result.is_ok() && outboxed {
                    self.outbox.signal.notify_one();
                }
                (result, Some(conn))
            }
            Err(e) => {
                self.failing.fail(<writes::Writer as ApplyBatch>::STORE, &e);
                refuse(ops, &e);
                (Err(e), None)
            }
        };
        let ok = result.is_ok();
        if let Err(e) = &result
            && !self.held.is_empty()
        {
            let why = match e {
                StoreError::Unavailable(why) => why.clone(),
                other => other.to_string(),
            };
            *self.progress.failing.lock() = Some(why);
        }
        if ok {
            if let Some(last) = self.held.last() {
                self.progress.applied.send_replace(last.lsn);
            }
            self.held.clear();
            self.held_messages = 0;
            *self.progress.failing.lock() = None;
        }
        if let Some(done) = done {
            let _ = done.send(());
        }
        match conn {
            Some(conn) if ok => {
                self.checkpoints.committed(&conn);
                self.conn = Some(conn);
            }
            // Dropped: closing it rolls back the failed transaction.
            _ => {}
        }
        (!self.held.is_empty()).then(|| Instant::now() + RETRY)
    }

    /// One `BEGIN IMMEDIATE .. COMMIT`: the held records, then `ops` (answered through
    /// `conclude`). Returns its result and whether it wrote outbox entries of held records.
    fn transaction(
        &mut self,
        conn: &mut Connection,
        ops: Vec<Write>,
    ) -> (Result<(), StoreError>, bool) {
        let with_ops = !ops.is_empty();
        let mut answers = Answers::with_capacity(ops.len());
        let mut count = self.outbox.count();
        let mut outboxed = false;
        let held = &self.held;
        let result = (|| {
            // Cached like every statement of the writer: not parsed again per transaction.
            conn.prepare_cached("BEGIN IMMEDIATE")
                .and_then(|mut s| s.execute([]))
                .map_err(sqlite_error)?;
            outboxed = write_records(conn, held)?;
            futures::executor::block_on(apply_in_order(
                &mut Tx(conn),
                ops,
                &mut count,
                &mut answers,
            ))?;
            conn.prepare_cached("COMMIT")
                .and_then(|mut s| s.execute([]))
                .map_err(sqlite_error)
                .map(|_| ())
        })();
        if with_ops {
            // The writer waits for this batch: the outbox count is this thread's to set.
            let copy = result.as_ref().map(|_| ()).map_err(caller_error);
            conclude(
                <writes::Writer as ApplyBatch>::STORE,
                copy,
                answers,
                &self.outbox,
                count,
                &mut self.failing,
            );
        } else {
            match &result {
                Ok(()) => self.failing.ok(<writes::Writer as ApplyBatch>::STORE),
                Err(e) => self.failing.fail(<writes::Writer as ApplyBatch>::STORE, e),
            }
        }
        (result, outboxed)
    }
}

/// Lowers the calling thread's priority to `nice` (any process may): the apply thread and the
/// checkpointer do work that no sender waits for, so on a busy core they yield it to the
/// writer thread and the runtime, which are on the ack path.
pub(super) fn background(nice: i32) {
    let me = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(me), nice) {
        tracing::debug!(error = %e, "embedded store: cannot lower a background thread's priority");
    }
}

/// The apply thread's `nice` value: the lowest. Its transactions are the largest piece of work
/// on the store's side (up to `APPLY_MAX` messages). Against a runnable thread at `nice` 0 it
/// weighs 15 to 1,024 in the scheduler (110 at `nice` 10), so a transaction delays acks and
/// broadcasts less (measured: BENCHMARKS.md, "SQLite's share ten times rarer, as the default").
const APPLY_NICE: i32 = 19;
/// The checkpointer's `nice` value.
pub(super) const CHECKPOINT_NICE: i32 = 10;

/// Writes `records` into SQLite (inside a transaction) and records the last one as applied;
/// returns whether any of them wrote outbox entries. Also used at open, for the records a
/// crash left unapplied.
pub(super) fn write_records(conn: &Connection, records: &[Record]) -> Result<bool, StoreError> {
    let mut outboxed = false;
    for record in records {
        insert_messages(conn, &record.messages).map_err(sqlite_error)?;
        if record.outbox {
            outbox::insert_all(conn, &record.messages)?;
            outboxed = true;
        }
    }
    if let Some(last) = records.last() {
        journal::set_applied(conn, last.lsn).map_err(sqlite_error)?;
    }
    Ok(outboxed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Message, MessageBody, MessageId, MessageType, RoomId, UserId, Username};

    fn record(lsn: u64, messages: usize) -> Record {
        let m = Message::new(
            MessageId::generate(1_700_000_000_000),
            RoomId::parse("r").unwrap(),
            UserId::parse("u").unwrap(),
            Username::parse("u").unwrap(),
            MessageBody::parse("hi", 100).unwrap(),
            MessageType::Text,
            1_700_000_000_000,
            None,
        );
        Record {
            lsn,
            outbox: false,
            messages: vec![m; messages],
        }
    }

    #[test]
    fn the_apply_thread_is_woken_for_the_first_record_and_at_apply_max() {
        let progress = Progress::new(0);
        assert!(
            progress.hand_over(record(1, 1)),
            "the first record wakes it"
        );
        assert!(
            !progress.hand_over(record(2, 1)),
            "the next ones wait for its due time"
        );
        assert!(
            progress.hand_over(record(3, APPLY_MAX - 2)),
            "reaching APPLY_MAX wakes it"
        );
        assert!(!progress.hand_over(record(4, 1)), "past it: woken already");
        let (records, messages) = progress.take();
        assert_eq!(
            records.iter().map(|r| r.lsn).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        assert_eq!(messages, APPLY_MAX + 1);
        assert!(
            progress.hand_over(record(5, 1)),
            "taken: the next one wakes it again"
        );
    }
}
