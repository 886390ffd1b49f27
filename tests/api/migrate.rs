//! The operator's data commands (issue 18.4) through the real binary: `migrate` from the Node
//! service's MongoDB documents (100k messages on the MongoDB stand-in, or `MONGODB_TEST_URI`)
//! to PostgreSQL, interrupted halfway and re-run (nothing duplicated, REST history equal);
//! `migrate` back from a store with edits, deletes, reactions and read markers; `export` and
//! `erase` on the embedded store.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use chat_service::domain::{
    ChangeKind, Emoji, HistoryItem, Message, MessageBody, MessageChange, MessageId, MessageType,
    ReadMarker, RoomId, UserId, Username, now_ms,
};
use chat_service::store::MessageStore;
use chat_service::store::embedded::EmbeddedStore;
use chat_service::store::mongo::{MongoConfig, MongoStore};
use chat_service::store::postgres::{PostgresConfig, PostgresStore};
use mongodb::bson::{DateTime, Document, doc, oid::ObjectId};
use serde_json::Value;

use crate::mongo::{client, drop_database, uri_with_db};
use crate::postgres::{drop_schema, pg_url};
use crate::support::{TestApp, spawn_app_with, unique};

const BIN: &str = env!("CARGO_BIN_EXE_chat-service");

/// Rooms and messages per room of the big copy.
const ROOMS: usize = 10;
const PER_ROOM: usize = 10_000;

fn chat_service(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run chat-service")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `pg_url()` on a fresh schema of its own (created here): the URL and the schema.
async fn pg_schema() -> (String, String) {
    use sqlx::Connection;
    let schema = unique("chat_mig").replace('-', "_");
    let mut conn = sqlx::PgConnection::connect(&pg_url())
        .await
        .expect("connect to PostgreSQL");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{schema}\"")))
        .execute(&mut conn)
        .await
        .expect("create the test schema");
    let sep = if pg_url().contains('?') { '&' } else { '?' };
    (
        format!("{}{sep}options[search_path]={schema}", pg_url()),
        schema,
    )
}

/// The Node service's messages (README "Database Schema": ObjectId ids, `Date`s, no
/// clientMessageId, Mongoose's `__v`), `PER_ROOM` in each of `ROOMS` rooms, written with
/// `insertMany`; every third room has a room document (a private group of its two
/// writers), the others only messages, as open rooms had in the Node service.
async fn seed_node_messages(db: &mongodb::Database) -> Vec<String> {
    let rooms: Vec<String> = (0..ROOMS).map(|i| format!("node-room-{i:02}")).collect();
    let base = 1_700_000_000_000_i64;
    let messages = db.collection::<Document>("messages");
    for (r, room) in rooms.iter().enumerate() {
        let docs: Vec<Document> = (0..PER_ROOM)
            .map(|i| {
                let user = format!("user-{}", (i + r) % 3);
                doc! {
                    "_id": ObjectId::new(), "roomId": room, "userId": &user,
                    "username": format!("User {user}"),
                    "message": format!("message {i} of {room}"), "messageType": "text",
                    "timestamp": DateTime::from_millis(base + (i as i64) * 1000),
                    "createdAt": DateTime::from_millis(base + (i as i64) * 1000), "__v": 0,
                }
            })
            .collect();
        for chunk in docs.chunks(PER_ROOM) {
            messages
                .insert_many(chunk.to_vec())
                .await
                .expect("seed messages");
        }
        if r % 3 == 0 {
            db.collection::<Document>("rooms")
                .insert_one(doc! {
                    "_id": ObjectId::new(), "roomId": room, "type": "group",
                    "participants": ["user-0", "user-1", "user-2"],
                    "createdAt": DateTime::from_millis(base),
                    "updatedAt": DateTime::from_millis(base), "__v": 0,
                })
                .await
                .expect("seed a room");
        }
    }
    rooms
}

/// Runs `migrate` and kills it once its progress lines show half the messages copied.
/// Returns the last progress it showed.
fn migrate_and_kill_halfway(from: &str, to: &str) -> u64 {
    let mut child = Command::new(BIN)
        .args(["migrate", "--from", from, "--to", to])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start migrate");
    let stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut seen = 0;
    for line in stderr.lines() {
        let line = line.expect("a stderr line");
        if let Some((done, total)) = line
            .strip_prefix("progress ")
            .and_then(|p| p.split_once('/'))
        {
            let (done, total): (u64, u64) = (done.parse().unwrap(), total.parse().unwrap());
            seen = done;
            if done * 2 >= total {
                child.kill().expect("kill migrate");
                break;
            }
        }
    }
    let status = child.wait().expect("wait for migrate");
    assert!(!status.success(), "migrate was killed, not finished");
    seen
}

/// Every message of a room as a REST history item, read through the store's scan.
async fn source_items(store: &MongoStore, room: &str) -> Vec<Value> {
    let room = RoomId::parse(room).unwrap();
    let mut all: Vec<Message> = Vec::new();
    loop {
        let after = all.last().map(|m| m.message_id.clone());
        let page = store.scan(&room, after.as_ref(), 5000).await.unwrap();
        if page.is_empty() {
            return all
                .iter()
                .map(|m| serde_json::to_value(HistoryItem::from(m)).unwrap())
                .collect();
        }
        all.extend(page);
    }
}

/// Every page of a room's REST history, oldest first.
async fn full_history(app: &TestApp, room: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let path = match &before {
            Some(b) => format!("/api/chat/{room}/history?limit=1000&before={b}"),
            None => format!("/api/chat/{room}/history?limit=1000"),
        };
        let (status, page) = app.get_with(&path, &[("x-user-id", "user-0")]).await;
        assert_eq!(status, 200, "{page}");
        let mut messages = page["messages"].as_array().expect("messages").clone();
        if messages.is_empty() {
            break;
        }
        before = Some(messages[0]["messageId"].as_str().unwrap().to_string());
        messages.extend(all);
        all = messages;
    }
    all
}

/// Issue 18.4's test: 100k messages in the Node service's MongoDB shape, migrated to
/// PostgreSQL by the binary, killed halfway, re-run: every room's count matches, no message
/// twice, a third run copies nothing, and REST history on PostgreSQL equals REST history on
/// the MongoDB source.
#[tokio::test(flavor = "multi_thread")]
async fn migrate_100k_node_messages_to_postgres_resumes_without_duplicates() {
    let db_name = unique("chat_mig");
    let db = client().await.database(&db_name);
    let t = Instant::now();
    let rooms = seed_node_messages(&db).await;
    eprintln!(
        "seeded {} messages on MongoDB in {:?}",
        ROOMS * PER_ROOM,
        t.elapsed()
    );
    let from = uri_with_db(&db_name);
    let (to, schema) = pg_schema().await;

    let t = Instant::now();
    let halfway = migrate_and_kill_halfway(&from, &to);
    eprintln!("killed after {halfway} messages, {:?}", t.elapsed());
    let t = Instant::now();
    let out = chat_service(&["migrate", "--from", &from, "--to", &to]);
    let stdout = text(&out.stdout);
    eprintln!("re-run in {:?}:\n{stdout}", t.elapsed());
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("count check: ok"), "{stdout}");
    let copied: u64 = stdout
        .strip_prefix("copied ")
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("copied N");
    assert!(
        copied < (ROOMS * PER_ROOM) as u64 && copied > 0,
        "the re-run copies only what the first run had not: {stdout}"
    );

    // No message twice, each room complete, in the source's order.
    let target = PostgresStore::open(PostgresConfig {
        schema: Some(schema.clone()),
        ..PostgresConfig::new(pg_url())
    })
    .await
    .expect("open the target");
    for room in &rooms {
        let room = RoomId::parse(room).unwrap();
        assert_eq!(target.count(&room).await.unwrap(), PER_ROOM as u64);
    }
    target.close().await;

    // A third run copies nothing.
    let out = chat_service(&["migrate", "--from", &from, "--to", &to]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.starts_with(&format!(
            "copied 0 messages, {} already there",
            ROOMS * PER_ROOM
        )),
        "{stdout}"
    );

    // REST history: every page of three rooms (one with a room document) on PostgreSQL equals
    // the source's messages as history items (read through the MongoDB store: REST pages on
    // the stand-in take ~1 s each), and the newest page of every room equals the one REST
    // gives on the MongoDB source.
    let source = spawn_app_with(&["--storage", "mongodb", "--mongodb-uri", &from]).await;
    let copy = spawn_app_with(&["--storage", "postgres", "--database-url", &to]).await;
    let t = Instant::now();
    let mongo = MongoStore::open(MongoConfig::new(from.clone()))
        .await
        .expect("open the source");
    for room in &rooms[..3] {
        let (a, b) = (
            source_items(&mongo, room).await,
            full_history(&copy, room).await,
        );
        assert_eq!((a.len(), b.len()), (PER_ROOM, PER_ROOM), "{room}");
        if let Some(i) = (0..a.len()).find(|&i| a[i] != b[i]) {
            panic!(
                "REST history of {room} differs at {i}: {} vs {}",
                a[i], b[i]
            );
        }
    }
    mongo.close().await;
    for room in &rooms {
        let path = format!("/api/chat/{room}/history?limit=1000");
        let h = [("x-user-id", "user-0")];
        let (a, b) = tokio::join!(source.get_with(&path, &h), copy.get_with(&path, &h));
        assert_eq!(a.0, 200);
        assert_eq!(a, b, "REST history of {room}");
    }
    eprintln!("REST history compared in {:?}", t.elapsed());
    let (status, room) = copy
        .get_with("/api/chat/rooms/node-room-00", &[("x-user-id", "user-0")])
        .await;
    assert_eq!(status, 200, "{room}");
    assert_eq!(
        room["room"]["participants"],
        serde_json::json!(["user-0", "user-1", "user-2"])
    );
    drop_database(&db_name).await;
    drop_schema(&schema).await;
}

fn msg(room: &str, user: &str, text: &str, at: u64) -> Message {
    Message::new(
        MessageId::generate(at),
        RoomId::parse(room).unwrap(),
        UserId::parse(user).unwrap(),
        Username::parse(&format!("{user}'s name")).unwrap(),
        MessageBody::parse(text, 4000).unwrap(),
        MessageType::Text,
        at,
        None,
    )
}

fn change(m: &Message, user: &str, at: u64, kind: ChangeKind) -> MessageChange {
    MessageChange {
        room_id: m.room_id.clone(),
        message_id: m.message_id.clone(),
        user_id: UserId::parse(user).unwrap(),
        at,
        kind,
    }
}

/// An embedded store with what a copy must carry: an open room with a reply, an edit, a
/// delete, reactions and read markers; a private room. Returns its messages as stored.
async fn seed_lifecycle(dir: &std::path::Path) -> Vec<Message> {
    let store = EmbeddedStore::open(dir).await.expect("open the source");
    let at = now_ms() - 60_000;
    let mut sent: Vec<Message> = Vec::new();
    for (i, user) in ["alice", "bob", "alice", "bob", "alice", "bob"]
        .iter()
        .enumerate()
    {
        let mut m = msg("open-room", user, &format!("hello {i}"), at + i as u64);
        if i == 3 {
            m.reply_to = Some(sent[0].message_id.clone());
        }
        sent.push(store.append(m).await.unwrap().message);
    }
    store
        .create_room(chat_service::domain::NewRoom {
            room_id: RoomId::parse("private-room").unwrap(),
            room_type: chat_service::domain::RoomType::Group,
            participants: vec![
                UserId::parse("alice").unwrap(),
                UserId::parse("bob").unwrap(),
            ],
        })
        .await
        .unwrap();
    for (i, user) in ["bob", "alice"].iter().enumerate() {
        let m = msg(
            "private-room",
            user,
            &format!("secret {i}"),
            at + 10 + i as u64,
        );
        sent.push(store.append(m).await.unwrap().message);
    }
    let edit = ChangeKind::Edit(MessageBody::parse("hello 2, edited", 4000).unwrap());
    store
        .change(change(&sent[2], "alice", at + 20, edit))
        .await
        .unwrap();
    store
        .change(change(&sent[1], "bob", at + 21, ChangeKind::Delete))
        .await
        .unwrap();
    for (user, emoji) in [("bob", "👍"), ("alice", "👍"), ("alice", "🎉")] {
        let react = ChangeKind::React {
            emoji: Emoji::parse(emoji).unwrap(),
            add: true,
        };
        store
            .change(change(&sent[0], user, at + 22, react))
            .await
            .unwrap();
    }
    for (user, i) in [("bob", 3), ("alice", 5)] {
        store
            .mark_read(ReadMarker {
                room_id: RoomId::parse("open-room").unwrap(),
                user_id: UserId::parse(user).unwrap(),
                message_id: sent[i].message_id.clone(),
                read_at: at + 30,
            })
            .await
            .unwrap();
    }
    store.close().await;
    sent
}

/// A store's messages of both rooms and the open room's markers, without the store's own
/// revision numbers.
async fn contents(store: &dyn MessageStore) -> (Vec<Message>, Vec<(String, String)>) {
    let mut all = Vec::new();
    for room in ["open-room", "private-room"] {
        let room = RoomId::parse(room).unwrap();
        all.extend(store.history(&room, 100, None).await.unwrap());
    }
    for m in &mut all {
        m.rev = 0;
    }
    let room = RoomId::parse("open-room").unwrap();
    let markers = store
        .receipts(&room)
        .await
        .unwrap()
        .into_iter()
        .map(|m| {
            (
                m.user_id.as_str().to_string(),
                m.message_id.as_str().to_string(),
            )
        })
        .collect();
    (all, markers)
}

fn lines(out: &Output) -> Vec<Value> {
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// `migrate` there and back (embedded -> MongoDB -> embedded) keeps every message with its
/// edit, tombstone, reply and reactions, the read markers and the private room; a re-run
/// copies nothing. Then `export --room`, `export --user` and `erase --user` on the copy.
#[tokio::test(flavor = "multi_thread")]
async fn migrate_there_and_back_then_export_and_erase() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let sent = seed_lifecycle(a.path()).await;
    let db_name = unique("chat_mig");
    let mongo = uri_with_db(&db_name);
    let (from, back) = (
        format!("embedded:{}", a.path().display()),
        format!("embedded:{}", b.path().display()),
    );
    for (src, dst) in [(&from, &mongo), (&mongo, &back), (&mongo, &back)] {
        let out = chat_service(&["migrate", "--from", src, "--to", dst]);
        assert!(
            out.status.success(),
            "{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        assert!(
            text(&out.stdout).contains("count check: ok"),
            "{}",
            text(&out.stdout)
        );
    }
    let out = chat_service(&["migrate", "--from", &mongo, "--to", &back]);
    assert!(
        text(&out.stdout)
            .starts_with("copied 0 messages, 8 already there, 0 changes, 0 read markers"),
        "{}",
        text(&out.stdout)
    );
    let original = EmbeddedStore::open(a.path()).await.unwrap();
    let copy = EmbeddedStore::open(b.path()).await.unwrap();
    let (want, got) = (contents(&original).await, contents(&copy).await);
    assert_eq!(got, want, "the copy of the copy equals the source");
    assert!(got.0[1].deleted && got.0[1].message.as_str().is_empty());
    assert_eq!(got.0[0].reactions.len(), 2);
    let room = copy
        .get_room(&RoomId::parse("private-room").unwrap())
        .await
        .unwrap();
    assert!(room.expect("the private room").private);
    original.close().await;
    copy.close().await;
    drop_database(&db_name).await;

    // export --room: one history item per line, oldest first.
    let items = lines(&chat_service(&[
        "export",
        "--room",
        "open-room",
        "--store",
        &back,
    ]));
    let ids: Vec<&str> = items
        .iter()
        .map(|i| i["messageId"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = sent[..6].iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(ids, want);
    assert_eq!(items[1]["deleted"], true);
    assert_eq!(items[1]["message"], "");
    assert_eq!(items[2]["message"], "hello 2, edited");
    assert!(items[2]["editedAt"].is_u64());
    assert_eq!(items[3]["replyTo"], sent[0].message_id.as_str());
    assert_eq!(items[0]["reactions"][0]["emoji"], "👍");
    // export --user: the user's messages of every room.
    let items = lines(&chat_service(&[
        "export", "--user", "alice", "--store", &back,
    ]));
    assert_eq!(items.len(), 4, "{items:?}");
    assert!(items.iter().all(|i| i["userId"] == "alice"));
    assert!(items.iter().any(|i| i["roomId"] == "private-room"));

    // erase --user: every message of alice becomes a tombstone; bob's stay.
    let out = chat_service(&["erase", "--user", "alice", "--store", &back]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "erased 4 messages of alice");
    let out = chat_service(&["erase", "--user", "alice", "--store", &back]);
    assert_eq!(text(&out.stdout).trim(), "erased 0 messages of alice");
    let items = lines(&chat_service(&[
        "export",
        "--room",
        "open-room",
        "--store",
        &back,
    ]));
    for item in &items {
        if item["userId"] == "alice" {
            assert_eq!(item["deleted"], true, "{item}");
            assert_eq!(item["message"], "", "{item}");
        } else if item["messageId"] != sent[1].message_id.as_str() {
            assert!(item.get("deleted").is_none(), "{item}");
            assert!(
                item["message"].as_str().unwrap().starts_with("hello"),
                "{item}"
            );
        }
    }
    let store = EmbeddedStore::open(b.path()).await.unwrap();
    let held = store
        .history(&RoomId::parse("private-room").unwrap(), 10, None)
        .await
        .unwrap();
    assert_eq!(held[1].user_id.as_str(), "alice");
    assert!(held[1].deleted && held[1].message.as_str().is_empty());
    assert_eq!(held[0].message.as_str(), "secret 0");
    store.close().await;
}

/// A target that holds a message of its own in a copied room: the copy walks that room
/// (every source message once, none twice, even when run again), and the count check shows
/// the difference with exit status 1.
#[tokio::test(flavor = "multi_thread")]
async fn a_target_with_messages_of_its_own_fails_the_count_check() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    seed_lifecycle(a.path()).await;
    let target = EmbeddedStore::open(b.path()).await.unwrap();
    let own = msg("open-room", "carol", "only in the target", now_ms());
    target.append(own).await.unwrap();
    target.close().await;
    let (from, to) = (
        format!("embedded:{}", a.path().display()),
        format!("embedded:{}", b.path().display()),
    );
    for run in 0..2 {
        let out = chat_service(&["migrate", "--from", &from, "--to", &to]);
        let stdout = text(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(1),
            "run {run}: {stdout}{}",
            text(&out.stderr)
        );
        assert!(
            stdout
                .lines()
                .any(|l| l.split_whitespace().eq(["open-room", "6", "7", "MISMATCH"])),
            "{stdout}"
        );
        assert!(stdout.contains("count check: 1 rooms differ"), "{stdout}");
    }
    let original = EmbeddedStore::open(a.path()).await.unwrap();
    let copy = EmbeddedStore::open(b.path()).await.unwrap();
    let room = RoomId::parse("open-room").unwrap();
    let mut want = original.history(&room, 100, None).await.unwrap();
    let mut got = copy.history(&room, 100, None).await.unwrap();
    got.retain(|m| m.user_id.as_str() != "carol");
    for m in want.iter_mut().chain(got.iter_mut()) {
        m.rev = 0;
    }
    assert_eq!(got, want, "every source message once, with its state");
    original.close().await;
    copy.close().await;
}
