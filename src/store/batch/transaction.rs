//! The transactional backends' side of the group-commit writer (embedded, PostgreSQL): the
//! writes applied in queue order inside one transaction, the answers held until its commit,
//! the outbox count, and runs of appends sorted against the stored idempotency keys.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

use super::{Reply, Write};
use crate::domain::{Message, MessageChange, NewRoom, ReadMarker, Room, RoomId, UserId};
use crate::store::{Appended, Changed, Key, MarkedRead, OutboxConfig, StoreError, key_of};

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
        let committed = std::time::Instant::now();
        for answer in self.0 {
            match answer {
                Answer::Append(tx, v) => drop(tx.send(v.map(|appended| Appended {
                    committed: Some(committed),
                    ..appended
                }))),
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
            failing.ok(store);
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
    /// Logs the recovery when the last batch had failed.
    pub(crate) fn ok(&mut self, store: &str) {
        if std::mem::take(&mut self.0) {
            tracing::info!("{store} store writes again");
        }
    }

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
                    committed: None,
                },
                Slot::Known(k) => Appended {
                    message: self.known[&k].clone(),
                    duplicate: true,
                    committed: None,
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
