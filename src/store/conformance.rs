//! The conformance suite of the `MessageStore` contract: one set of properties every backend
//! passes (embedded, PostgreSQL, MongoDB). It lives in the library (not under `tests/`) so that
//! every backend's test, and an operator checking a new database, runs the very same code.
//!
//! A backend is handed to the suite as a [`Backend`]: something that opens a store on the same
//! durable location every time (so restart persistence can be checked). Each run uses room
//! and user ids unique to that run, so a shared database needs no cleanup; only the outbox
//! property drains the outbox it finds (use a dedicated database or schema for it).
//!
//! Properties: ordering, `limit`/`before` paging and `after`, idempotency (also under
//! concurrent duplicates, and for shared backends between two instances), rooms and
//! participants, the outbox (entries, claim/ack, bound, and for shared backends the claim
//! between two instances), concurrent writers, restart persistence. Each property panics with
//! its name and what differed.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;

use super::{MessageStore, OutboxConfig, StoreError};
use crate::domain::{
    ClientMessageId, Message, MessageBody, MessageId, MessageType, NewRoom, RoomId, RoomType,
    UserId, Username, now_ms,
};

/// Opens stores of one backend for the suite.
#[async_trait]
pub trait Backend: Send + Sync {
    /// Opens a store on this backend's durable location (the same one on every call), with
    /// or without the outbox.
    async fn open(&self, outbox: Option<OutboxConfig>)
    -> Result<Arc<dyn MessageStore>, StoreError>;

    /// Whether several instances may share the location (then the outbox must be a claim).
    fn shared(&self) -> bool;
}

/// Runs every property against `backend`.
pub async fn run_all(backend: &dyn Backend) {
    let run = Run::new();
    let store = backend.open(None).await.expect("open the store");
    ordering(&*store, &run).await;
    paging(&*store, &run).await;
    idempotency(store.clone(), &run).await;
    rooms_and_participants(&*store, &run).await;
    concurrent_writers(store.clone(), &run).await;
    store.close().await;
    idempotency_across_instances(backend, &run).await;
    restart_persistence(backend, &run).await;
    outbox(backend, &run).await;
}

/// Ids unique to one run of the suite.
pub struct Run {
    prefix: String,
}

impl Default for Run {
    fn default() -> Self {
        Self::new()
    }
}

impl Run {
    pub fn new() -> Self {
        Self {
            prefix: format!("cf{}", MessageId::generate(now_ms())),
        }
    }

    pub fn room(&self, name: &str) -> RoomId {
        RoomId::parse(&format!("{}-{name}", self.prefix)).expect("room id")
    }

    pub fn user(&self, name: &str) -> UserId {
        UserId::parse(&format!("{}-{name}", self.prefix)).expect("user id")
    }
}

/// A new message (fresh id, current time) of `user` in `room`.
pub fn message(room: &RoomId, user: &UserId, text: &str, cmid: Option<&str>) -> Message {
    Message {
        message_id: MessageId::generate(now_ms()),
        room_id: room.clone(),
        user_id: user.clone(),
        username: Username::parse(user.as_str()).expect("username"),
        message: MessageBody::from_stored(text.to_string()),
        message_type: MessageType::Text,
        timestamp: now_ms(),
        client_message_id: cmid.map(|c| ClientMessageId::parse(c).expect("client message id")),
    }
}

fn texts(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m.message.as_str().to_string())
        .collect()
}

async fn append_texts(store: &dyn MessageStore, room: &RoomId, user: &UserId, n: usize) {
    for i in 0..n {
        store
            .append(message(room, user, &format!("m{i}"), None))
            .await
            .expect("append");
    }
}

fn numbered(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("m{i}")).collect()
}

/// Messages of a room come back in append order, oldest first, with every field intact.
pub async fn ordering(store: &dyn MessageStore, run: &Run) {
    let room = run.room("order");
    let user = run.user("alice");
    let first = message(&room, &user, "m0", Some("order-0"));
    let stored = store.append(first.clone()).await.expect("append");
    assert!(
        !stored.duplicate,
        "ordering: a new message is not a duplicate"
    );
    assert_eq!(
        stored.message, first,
        "ordering: append returns the message"
    );
    for i in 1..20 {
        store
            .append(message(&room, &user, &format!("m{i}"), None))
            .await
            .expect("append");
    }
    let all = store.history(&room, 100, None).await.expect("history");
    assert_eq!(
        texts(&all),
        numbered(0..20),
        "ordering: history oldest first"
    );
    assert_eq!(all[0], first, "ordering: fields survive the round trip");
    let after = store
        .after(&room, &first.message_id, 100)
        .await
        .expect("after")
        .expect("after: known id");
    assert_eq!(texts(&after), numbered(1..20), "ordering: after");
    let after = store
        .after(&room, &first.message_id, 3)
        .await
        .expect("after")
        .expect("after: known id");
    assert_eq!(
        texts(&after),
        numbered(1..4),
        "ordering: after with a limit"
    );
}

/// `limit` takes the newest; `before` pages backwards; unknown rooms, cursors and ids.
pub async fn paging(store: &dyn MessageStore, run: &Run) {
    let room = run.room("paging");
    let user = run.user("bob");
    append_texts(store, &room, &user, 12).await;
    let page = store.history(&room, 5, None).await.expect("history");
    assert_eq!(texts(&page), numbered(7..12), "paging: newest page");
    let page = store
        .history(&room, 5, Some(&page[0].message_id))
        .await
        .expect("history before");
    assert_eq!(texts(&page), numbered(2..7), "paging: page before");
    let page = store
        .history(&room, 5, Some(&page[0].message_id))
        .await
        .expect("history before");
    assert_eq!(texts(&page), numbered(0..2), "paging: last page");
    let page = store
        .history(&room, 5, Some(&page[0].message_id))
        .await
        .expect("history before the first");
    assert!(page.is_empty(), "paging: nothing before the first message");

    let unknown = MessageId::generate(now_ms());
    assert!(
        matches!(
            store.history(&room, 5, Some(&unknown)).await,
            Err(StoreError::UnknownCursor)
        ),
        "paging: an unknown cursor is UnknownCursor"
    );
    // A message id of another room is unknown in this one.
    let other = run.room("paging-other");
    let elsewhere = store
        .append(message(&other, &user, "x", None))
        .await
        .expect("append");
    assert!(
        matches!(
            store
                .history(&room, 5, Some(&elsewhere.message.message_id))
                .await,
            Err(StoreError::UnknownCursor)
        ),
        "paging: a cursor of another room is unknown"
    );
    assert!(
        store
            .after(&room, &elsewhere.message.message_id, 5)
            .await
            .expect("after")
            .is_none(),
        "paging: after an id of another room is None"
    );
    assert!(
        store
            .history(&run.room("paging-empty"), 5, None)
            .await
            .expect("history")
            .is_empty(),
        "paging: an unknown room has no history"
    );
}

/// A repeated `(room, user, clientMessageId)` stores nothing and returns the stored message,
/// also when the duplicates race.
pub async fn idempotency(store: Arc<dyn MessageStore>, run: &Run) {
    let room = run.room("idem");
    let (a, b) = (run.user("a"), run.user("b"));
    let first = store
        .append(message(&room, &a, "hello", Some("k1")))
        .await
        .expect("append");
    assert!(!first.duplicate);
    let again = store
        .append(message(&room, &a, "hello again", Some("k1")))
        .await
        .expect("append duplicate");
    assert!(again.duplicate, "idempotency: same key is a duplicate");
    assert_eq!(
        again.message, first.message,
        "idempotency: the stored message is returned"
    );
    let other_user = store
        .append(message(&room, &b, "hello", Some("k1")))
        .await
        .expect("append");
    assert!(!other_user.duplicate, "idempotency: the key is per user");
    let other_room = store
        .append(message(&run.room("idem-2"), &a, "hello", Some("k1")))
        .await
        .expect("append");
    assert!(!other_room.duplicate, "idempotency: the key is per room");
    let no_key = store
        .append(message(&room, &a, "hello", None))
        .await
        .expect("append");
    assert!(!no_key.duplicate, "idempotency: no key, no dedupe");

    // Concurrent duplicates: exactly one is stored, everyone gets its id.
    let racing = (0..16).map(|i| {
        let store = store.clone();
        let m = message(&room, &a, &format!("race {i}"), Some("race"));
        tokio::spawn(async move { store.append(m).await })
    });
    let results: Vec<_> = futures::future::join_all(racing)
        .await
        .into_iter()
        .map(|r| r.expect("task").expect("append"))
        .collect();
    assert_eq!(
        results.iter().filter(|r| !r.duplicate).count(),
        1,
        "idempotency: one of the racing duplicates is stored"
    );
    let ids: HashSet<_> = results
        .iter()
        .map(|r| r.message.message_id.clone())
        .collect();
    assert_eq!(ids.len(), 1, "idempotency: racing duplicates share one id");
    let stored = store.history(&room, 1000, None).await.expect("history");
    assert_eq!(
        texts(&stored).len(),
        4,
        "idempotency: hello, hello (b), hello (no key), one race: {:?}",
        texts(&stored)
    );
}

/// A backend shared by instances: the same key appended through two instances at once is
/// stored once, and both callers get the stored message (the loser of the race too).
pub async fn idempotency_across_instances(backend: &dyn Backend, run: &Run) {
    if !backend.shared() {
        return;
    }
    const ROUNDS: usize = 8;
    let one = backend.open(None).await.expect("open");
    let two = backend.open(None).await.expect("open a second instance");
    let room = run.room("idem-shared");
    let user = run.user("twice");
    for round in 0..ROUNDS {
        let key = format!("shared-{round}");
        let (a, b) = tokio::join!(
            one.append(message(&room, &user, "through one", Some(&key))),
            two.append(message(&room, &user, "through two", Some(&key))),
        );
        let (a, b) = (a.expect("append on one"), b.expect("append on two"));
        assert_eq!(
            a.message, b.message,
            "idempotency across instances: both get the stored message"
        );
        assert_ne!(
            a.duplicate, b.duplicate,
            "idempotency across instances: exactly one of them is new"
        );
    }
    let stored = one.history(&room, 100, None).await.expect("history");
    assert_eq!(
        stored.len(),
        ROUNDS,
        "idempotency across instances: one message per key"
    );
    one.close().await;
    two.close().await;
}

/// Rooms: created by a first message or a join (open group), private rooms through
/// `create_room` (direct pairs unique), members, `lastMessage`, listing per participant.
pub async fn rooms_and_participants(store: &dyn MessageStore, run: &Run) {
    let (a, b, c) = (run.user("ra"), run.user("rb"), run.user("rc"));
    assert!(
        store
            .get_room(&run.room("nowhere"))
            .await
            .expect("get_room")
            .is_none(),
        "rooms: an unknown room is None"
    );

    let open = run.room("open");
    store.add_member(&open, &a).await.expect("add_member");
    store.add_member(&open, &b).await.expect("add_member");
    store.add_member(&open, &a).await.expect("add_member again");
    let room = store
        .get_room(&open)
        .await
        .expect("get_room")
        .expect("joined room exists");
    assert_eq!(
        room.room_type,
        RoomType::Group,
        "rooms: a joined room is a group"
    );
    assert!(!room.private, "rooms: a joined room is open");
    assert_eq!(
        room.participants,
        vec![a.clone(), b.clone()],
        "rooms: members, sorted, once"
    );
    assert!(room.last_message.is_none());

    let sent = message(&open, &b, "last words", None);
    store.append(sent.clone()).await.expect("append");
    let room = store
        .get_room(&open)
        .await
        .expect("get_room")
        .expect("room");
    let last = room
        .last_message
        .expect("rooms: lastMessage after a message");
    assert_eq!(last.content.as_str(), "last words");
    assert_eq!(last.sender_id, b);
    assert_eq!(last.timestamp, sent.timestamp);
    assert!(
        room.updated_at >= sent.timestamp,
        "rooms: updatedAt follows the message"
    );

    let implicit = run.room("implicit");
    store
        .append(message(&implicit, &c, "first", None))
        .await
        .expect("append");
    let room = store
        .get_room(&implicit)
        .await
        .expect("get_room")
        .expect("room");
    assert_eq!(
        room.room_type,
        RoomType::Group,
        "rooms: a first message creates a group"
    );
    assert!(!room.private);

    let direct = NewRoom::new(
        run.room("direct"),
        RoomType::Direct,
        vec![c.clone(), a.clone()],
    )
    .expect("new room");
    let (created, new) = store
        .create_room(direct.clone())
        .await
        .expect("create_room");
    assert!(new, "rooms: created");
    assert!(created.private, "rooms: created rooms are private");
    assert_eq!(created.room_type, RoomType::Direct);
    assert_eq!(created.participants, vec![a.clone(), c.clone()]);
    let again = NewRoom::new(
        run.room("direct-2"),
        RoomType::Direct,
        vec![a.clone(), c.clone()],
    )
    .expect("new room");
    let (existing, new) = store.create_room(again).await.expect("create_room again");
    assert!(!new, "rooms: one direct room per pair");
    assert_eq!(existing.room_id, direct.room_id);
    let taken =
        NewRoom::new(direct.room_id.clone(), RoomType::Group, vec![b.clone()]).expect("new room");
    assert!(
        matches!(store.create_room(taken).await, Err(StoreError::RoomExists)),
        "rooms: a taken room id is RoomExists"
    );

    // a takes part in `open` (last active above) and `direct`; make `direct` the most recent.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    store
        .append(message(&direct.room_id, &a, "newest", None))
        .await
        .expect("append");
    let rooms = store.rooms_of(&a).await.expect("rooms_of");
    let ids: Vec<_> = rooms.iter().map(|r| r.room_id.clone()).collect();
    assert_eq!(
        ids,
        vec![direct.room_id.clone(), open.clone()],
        "rooms: rooms of a participant, most recently active first"
    );
    assert_eq!(rooms[0].participants, vec![a.clone(), c.clone()]);
    let of_c: Vec<_> = store
        .rooms_of(&c)
        .await
        .expect("rooms_of")
        .into_iter()
        .map(|r| r.room_id)
        .collect();
    assert_eq!(
        of_c.len(),
        1,
        "rooms: a sender is not a participant of an open room it never joined"
    );
    assert!(
        store
            .rooms_of(&run.user("nobody"))
            .await
            .expect("rooms_of")
            .is_empty()
    );
}

/// Many tasks appending at once: everything is stored, each writer's messages in its order.
pub async fn concurrent_writers(store: Arc<dyn MessageStore>, run: &Run) {
    const WRITERS: usize = 16;
    const EACH: usize = 50;
    let room = run.room("busy");
    let tasks = (0..WRITERS).map(|w| {
        let store = store.clone();
        let room = room.clone();
        let own = run.room(&format!("busy-{w}"));
        let user = run.user(&format!("w{w}"));
        tokio::spawn(async move {
            for i in 0..EACH {
                store
                    .append(message(
                        &room,
                        &user,
                        &format!("{w}:{i}"),
                        Some(&format!("c{i}")),
                    ))
                    .await
                    .expect("append");
                store
                    .append(message(&own, &user, &format!("m{i}"), None))
                    .await
                    .expect("append");
            }
        })
    });
    for t in futures::future::join_all(tasks).await {
        t.expect("writer task");
    }
    let all = store.history(&room, 10_000, None).await.expect("history");
    assert_eq!(
        all.len(),
        WRITERS * EACH,
        "concurrent writers: every message stored"
    );
    for w in 0..WRITERS {
        let mine: Vec<_> = texts(&all)
            .into_iter()
            .filter(|t| t.starts_with(&format!("{w}:")))
            .collect();
        let expected: Vec<_> = (0..EACH).map(|i| format!("{w}:{i}")).collect();
        assert_eq!(
            mine, expected,
            "concurrent writers: writer {w} in its order"
        );
        let own = store
            .history(&run.room(&format!("busy-{w}")), 10_000, None)
            .await
            .expect("history");
        assert_eq!(
            texts(&own),
            numbered(0..EACH),
            "concurrent writers: room of {w}"
        );
    }
}

/// Messages, rooms, members and idempotency keys survive closing and reopening.
pub async fn restart_persistence(backend: &dyn Backend, run: &Run) {
    let room = run.room("restart");
    let user = run.user("keeper");
    let store = backend.open(None).await.expect("open");
    let first = store
        .append(message(&room, &user, "kept", Some("keep-1")))
        .await
        .expect("append");
    store.add_member(&room, &user).await.expect("add_member");
    let pair = NewRoom::new(
        run.room("restart-direct"),
        RoomType::Direct,
        vec![user.clone(), run.user("other")],
    )
    .expect("new room");
    store.create_room(pair.clone()).await.expect("create_room");
    store.close().await;
    assert!(
        store
            .append(message(&room, &user, "late", None))
            .await
            .is_err(),
        "restart: a closed store refuses writes"
    );

    let store = backend.open(None).await.expect("reopen");
    let history = store.history(&room, 10, None).await.expect("history");
    assert_eq!(
        history,
        vec![first.message.clone()],
        "restart: messages kept"
    );
    let again = store
        .append(message(&room, &user, "kept", Some("keep-1")))
        .await
        .expect("append");
    assert!(again.duplicate, "restart: idempotency keys kept");
    assert_eq!(again.message, first.message);
    let kept = store
        .get_room(&room)
        .await
        .expect("get_room")
        .expect("room kept");
    assert_eq!(
        kept.participants,
        vec![user.clone()],
        "restart: members kept"
    );
    let rooms = store.rooms_of(&user).await.expect("rooms_of");
    assert_eq!(rooms.len(), 2, "restart: rooms kept");
    store.close().await;
}

/// The outbox contract: one entry per stored message in the same transaction, oldest first,
/// returned again until marked sent (also after a restart), the bound, and between two
/// instances of a shared backend a claim.
pub async fn outbox(backend: &dyn Backend, run: &Run) {
    let unbounded = Some(OutboxConfig {
        max_pending: u64::MAX,
    });
    let store = backend.open(unbounded).await.expect("open with outbox");
    // Start from an empty outbox (entries of earlier runs).
    loop {
        let old = store.outbox_pending(4096).await.expect("outbox_pending");
        if old.is_empty() {
            break;
        }
        let seqs: Vec<u64> = old.iter().map(|e| e.seq).collect();
        store.outbox_mark_sent(&seqs).await.expect("mark_sent");
    }
    assert_eq!(store.outbox_len().await.expect("outbox_len"), 0);

    let room = run.room("outbox");
    let (a, b, c) = (run.user("oa"), run.user("ob"), run.user("oc"));
    store.add_member(&room, &a).await.expect("add_member");
    store.add_member(&room, &b).await.expect("add_member");
    let first = store
        .append(message(&room, &a, "to b", Some("o1")))
        .await
        .expect("append");
    let dup = store
        .append(message(&room, &a, "to b", Some("o1")))
        .await
        .expect("append duplicate");
    assert!(dup.duplicate);
    store.add_member(&room, &c).await.expect("add_member");
    let second = store
        .append(message(&room, &b, "to a and c", None))
        .await
        .expect("append");
    assert_eq!(
        store.outbox_len().await.expect("outbox_len"),
        2,
        "outbox: one entry per stored message"
    );

    let pending = store.outbox_pending(100).await.expect("outbox_pending");
    assert_eq!(pending.len(), 2, "outbox: pending entries");
    let (e1, e2) = (&pending[0], &pending[1]);
    assert!(e1.seq < e2.seq, "outbox: oldest first, increasing seq");
    assert_eq!(e1.message_id, first.message.message_id);
    assert_eq!(e1.room_id, room);
    assert_eq!(e1.sender_id, a);
    assert_eq!(
        e1.receiver_id,
        Some(b.clone()),
        "outbox: the other one of two"
    );
    assert_eq!(e1.receiver_ids, vec![b.clone()]);
    assert_eq!(e1.message, "to b");
    assert_eq!(e1.timestamp, first.message.timestamp);
    assert_eq!(e2.message_id, second.message.message_id);
    assert_eq!(
        e2.receiver_id, None,
        "outbox: no single receiver in a room of three"
    );
    assert_eq!(
        e2.receiver_ids,
        vec![a.clone(), c.clone()],
        "outbox: receivers sorted"
    );

    // Returned again until marked sent, also after a restart.
    let again = store.outbox_pending(100).await.expect("outbox_pending");
    assert_eq!(again, pending, "outbox: pending until marked sent");
    store.close().await;
    let store = backend.open(unbounded).await.expect("reopen");
    let again = store.outbox_pending(100).await.expect("outbox_pending");
    assert_eq!(again, pending, "outbox: pending after a restart");

    if backend.shared() {
        // A second instance does not get entries the first has claimed.
        let other = backend
            .open(unbounded)
            .await
            .expect("open a second instance");
        assert!(
            other
                .outbox_pending(100)
                .await
                .expect("outbox_pending")
                .is_empty(),
            "outbox: claimed entries are not handed to another instance"
        );
        let third = other
            .append(message(&room, &c, "from the other", None))
            .await
            .expect("append");
        let theirs = other.outbox_pending(100).await.expect("outbox_pending");
        assert_eq!(
            theirs.len(),
            1,
            "outbox: the other instance claims new entries"
        );
        assert_eq!(theirs[0].message_id, third.message.message_id);
        other
            .outbox_mark_sent(&[theirs[0].seq])
            .await
            .expect("mark_sent");
        other.close().await;
    }

    store.outbox_mark_sent(&[e1.seq]).await.expect("mark_sent");
    store
        .outbox_mark_sent(&[e1.seq, u64::MAX / 2])
        .await
        .expect("mark_sent of unknown seqs is harmless");
    let left = store.outbox_pending(100).await.expect("outbox_pending");
    assert_eq!(left, vec![e2.clone()], "outbox: sent entries leave");
    assert_eq!(store.outbox_len().await.expect("outbox_len"), 1);
    store.outbox_mark_sent(&[e2.seq]).await.expect("mark_sent");
    assert_eq!(store.outbox_len().await.expect("outbox_len"), 0);
    store.close().await;

    // The bound: a full outbox refuses new messages, stores nothing; replays still succeed.
    let store = backend
        .open(Some(OutboxConfig { max_pending: 2 }))
        .await
        .expect("open bounded");
    let room = run.room("outbox-full");
    let kept = store
        .append(message(&room, &a, "one", Some("f1")))
        .await
        .expect("append");
    store
        .append(message(&room, &a, "two", None))
        .await
        .expect("append");
    assert!(
        matches!(
            store.append(message(&room, &a, "three", None)).await,
            Err(StoreError::OutboxFull(_))
        ),
        "outbox: a full outbox refuses the message"
    );
    let replay = store
        .append(message(&room, &a, "one", Some("f1")))
        .await
        .expect("a replay of a stored message succeeds");
    assert!(replay.duplicate);
    assert_eq!(replay.message, kept.message);
    let stored = store.history(&room, 10, None).await.expect("history");
    assert_eq!(
        texts(&stored),
        ["one", "two"],
        "outbox: the refused message is not stored"
    );
    let pending = store.outbox_pending(100).await.expect("outbox_pending");
    let seqs: Vec<u64> = pending.iter().map(|e| e.seq).collect();
    store.outbox_mark_sent(&seqs).await.expect("mark_sent");
    store.close().await;

    // Without the outbox, no entries are written.
    let store = backend.open(None).await.expect("open without outbox");
    store
        .append(message(&room, &a, "quiet", None))
        .await
        .expect("append");
    assert_eq!(
        store.outbox_len().await.expect("outbox_len"),
        0,
        "outbox: off writes none"
    );
    store.close().await;
}
