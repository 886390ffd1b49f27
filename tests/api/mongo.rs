//! `STORAGE=mongodb` against `MONGODB_TEST_URI` (default `mongodb://127.0.0.1:27017`: the
//! nx-27017 stand-in that scripts/services.sh starts; a real MongoDB when the variable names
//! one): the conformance suite in a fresh database, documents written by the Node service read
//! through REST, the app's acceptance behaviours through `spawn_app_with(["--storage",
//! "mongodb", ..])`, an outage through a TCP proxy, and two instances relaying the outbox of one
//! database. A missing server fails these tests (never skipped).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chat_service::store::conformance::{self, Backend};
use chat_service::store::mongo::{MongoConfig, MongoStore};
use chat_service::store::{MessageStore, OutboxConfig, StoreError};
use mongodb::bson::{DateTime, doc, oid::ObjectId};

use crate::broker::{BROKER, TestQueue, collect_ids};
use crate::notifications::check_delivery;
use crate::stores::{
    outage_fails_fast_and_heals, restart_keeps_messages_rooms_and_idempotency, unique,
};
use crate::support::{TcpProxy, spawn_app_with};

pub fn base_uri() -> String {
    std::env::var("MONGODB_TEST_URI").unwrap_or_else(|_| "mongodb://127.0.0.1:27017".into())
}

/// `base_uri()` with its database replaced by `db` (options kept).
pub fn uri_with_db(db: &str) -> String {
    let base = base_uri();
    let (rest, query) = match base.split_once('?') {
        Some((r, q)) => (r.to_string(), Some(q.to_string())),
        None => (base.clone(), None),
    };
    let scheme_end = rest.find("://").map_or(0, |i| i + 3);
    let hosts_end = rest[scheme_end..]
        .find('/')
        .map_or(rest.len(), |i| scheme_end + i);
    let mut uri = format!("{}/{db}", &rest[..hosts_end]);
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        uri.push('?');
        uri.push_str(&q);
    }
    uri
}

pub async fn client() -> mongodb::Client {
    mongodb::Client::with_uri_str(base_uri())
        .await
        .expect("a MongoDB client for MONGODB_TEST_URI")
}

pub async fn drop_database(db: &str) {
    client()
        .await
        .database(db)
        .drop()
        .await
        .expect("drop the test database");
}

/// The MongoDB store in a database of its own (dropped at the end of the test).
struct Mongo {
    db: String,
}

#[async_trait]
impl Backend for Mongo {
    async fn open(
        &self,
        outbox: Option<OutboxConfig>,
    ) -> Result<Arc<dyn MessageStore>, StoreError> {
        Ok(Arc::new(
            MongoStore::open(MongoConfig {
                database: Some(self.db.clone()),
                outbox,
                ..MongoConfig::new(base_uri())
            })
            .await?,
        ))
    }

    fn shared(&self) -> bool {
        true
    }

    async fn raw_contains(&self, text: &str) -> bool {
        database_contains(&self.db, text).await
    }
}

/// Whether `text` appears in any string (or key) of any document of any collection of `db`.
async fn database_contains(db: &str, text: &str) -> bool {
    use futures::TryStreamExt;
    use mongodb::bson::{Bson, Document};
    fn holds(v: &Bson, text: &str) -> bool {
        match v {
            Bson::String(s) => s.contains(text),
            Bson::Array(items) => items.iter().any(|i| holds(i, text)),
            Bson::Document(d) => d.iter().any(|(k, v)| k.contains(text) || holds(v, text)),
            _ => false,
        }
    }
    let db = client().await.database(db);
    let names = db.list_collection_names().await.expect("collections");
    assert!(!names.is_empty(), "the test database has collections");
    for name in names {
        let docs: Vec<Document> = db
            .collection::<Document>(&name)
            .find(doc! {})
            .await
            .expect("find")
            .try_collect()
            .await
            .expect("documents");
        if docs.iter().any(|d| holds(&Bson::Document(d.clone()), text)) {
            return true;
        }
    }
    false
}

#[tokio::test]
async fn mongo_store_passes_the_conformance_suite() {
    let backend = Mongo {
        db: unique("chat_test_"),
    };
    conformance::run_all(&backend).await;
    drop_database(&backend.db).await;
}

#[tokio::test]
async fn documents_written_by_the_node_service_are_read_through_rest() {
    let db_name = unique("chat_node_");
    let db = client().await.database(&db_name);
    let (room, alice, bob, eve) = (
        unique("node-room-"),
        unique("node-a-"),
        unique("node-b-"),
        unique("node-e-"),
    );
    // Exactly the Node service's shapes (README "Database Schema"): ObjectId ids, Dates, no
    // clientMessageId, no isPrivate, Mongoose's __v.
    let base = 1_700_000_000_000_i64;
    let ids: Vec<ObjectId> = (0..5).map(|_| ObjectId::new()).collect();
    let docs: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let (user, name) = if i % 2 == 0 {
                (&alice, "Alice")
            } else {
                (&bob, "Bob")
            };
            doc! {
                "_id": *id, "roomId": &room, "userId": user, "username": name,
                "message": format!("node message {i}"), "messageType": "text",
                "timestamp": DateTime::from_millis(base + i as i64 * 1000),
                "createdAt": DateTime::from_millis(base + i as i64 * 1000), "__v": 0,
            }
        })
        .collect();
    db.collection("messages")
        .insert_many(docs)
        .await
        .expect("seed messages");
    db.collection("rooms")
        .insert_one(doc! {
            "_id": ObjectId::new(), "roomId": &room, "type": "direct",
            "participants": [&alice, &bob],
            "lastMessage": {"content": "node message 4", "timestamp": DateTime::from_millis(base + 4000), "senderId": &alice},
            "createdAt": DateTime::from_millis(base), "updatedAt": DateTime::from_millis(base + 4000), "__v": 0,
        })
        .await
        .expect("seed the room");

    let uri = uri_with_db(&db_name);
    let mut app = spawn_app_with(&["--storage", "mongodb", "--mongodb-uri", &uri]).await;
    let as_alice = [("x-user-id", alice.as_str())];
    let (status, page) = app
        .get_with(&format!("/api/chat/{room}/history?limit=3"), &as_alice)
        .await;
    assert_eq!(status, 200, "{page}");
    let messages = page["messages"].as_array().expect("messages");
    let got: Vec<_> = messages
        .iter()
        .map(|m| m["messageId"].as_str().unwrap().to_string())
        .collect();
    let want: Vec<_> = ids[2..].iter().map(|id| id.to_hex()).collect();
    assert_eq!(
        got, want,
        "the newest three, oldest first, ids as hex: {page}"
    );
    assert_eq!(messages[0]["message"], "node message 2");
    assert_eq!(messages[0]["username"], "Alice");
    assert_eq!(messages[0]["userId"], alice.as_str());
    assert_eq!(messages[0]["messageType"], "text");
    assert_eq!(messages[0]["timestamp"], base + 2000, "{page}");
    let (status, older) = app
        .get_with(
            &format!("/api/chat/{room}/history?limit=10&before={}", want[0]),
            &as_alice,
        )
        .await;
    assert_eq!(status, 200, "{older}");
    assert_eq!(older["messages"].as_array().unwrap().len(), 2, "{older}");
    assert_eq!(older["messages"][0]["messageId"], ids[0].to_hex());

    // The Node room: listed for its participants with its lastMessage, private to them.
    let (status, rooms) = app.get_with("/api/chat/rooms", &as_alice).await;
    assert_eq!(status, 200, "{rooms}");
    assert_eq!(rooms["rooms"][0]["roomId"], room.as_str(), "{rooms}");
    assert_eq!(rooms["rooms"][0]["type"], "direct");
    assert_eq!(
        rooms["rooms"][0]["lastMessage"]["content"],
        "node message 4"
    );
    assert_eq!(rooms["rooms"][0]["lastMessage"]["timestamp"], base + 4000);
    let (status, body) = app
        .get_with(&format!("/api/chat/rooms/{room}"), &[("x-user-id", &eve)])
        .await;
    assert_eq!(
        status, 403,
        "a Node room with participants is private: {body}"
    );

    // New messages go after the Node ones and move the room's lastMessage.
    let mut a = app.member(&alice, &room).await;
    let ack = a.say(&room, "from the new service").await;
    let (status, all) = app
        .get_with(&format!("/api/chat/{room}/history?limit=100"), &as_alice)
        .await;
    assert_eq!(status, 200, "{all}");
    let texts: Vec<_> = all["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(texts.len(), 6, "{all}");
    assert_eq!(texts[5], "from the new service");
    let (_, rooms) = app
        .get_with("/api/chat/rooms", &[("x-user-id", bob.as_str())])
        .await;
    assert_eq!(
        rooms["rooms"][0]["lastMessage"]["content"], "from the new service",
        "{rooms}"
    );
    let stored = db
        .collection::<mongodb::bson::Document>("messages")
        .find_one(doc! {"_id": ObjectId::parse_str(ack["messageId"].as_str().unwrap()).unwrap()})
        .await
        .expect("find")
        .expect("the new message is a document");
    assert!(
        matches!(
            stored.get("timestamp"),
            Some(mongodb::bson::Bson::DateTime(_))
        ),
        "written in the Node service's shape: {stored}"
    );
    assert_eq!(stored.get_str("roomId").unwrap(), room);
    drop(a);
    app.stop().await;
    drop_database(&db_name).await;
}

#[tokio::test]
async fn app_on_mongodb_keeps_messages_rooms_and_idempotency_across_a_restart() {
    let db_name = unique("chat_app_");
    let uri = uri_with_db(&db_name);
    let mut app = restart_keeps_messages_rooms_and_idempotency(&[
        "--storage",
        "mongodb",
        "--mongodb-uri",
        &uri,
    ])
    .await;
    app.stop().await;
    drop_database(&db_name).await;
}

/// The first host:port of the test URI (the proxy's upstream).
fn upstream() -> std::net::SocketAddr {
    let base = base_uri();
    let after_scheme = base.split("://").nth(1).unwrap_or("127.0.0.1:27017");
    let hosts = after_scheme.split(['/', '?']).next().unwrap_or_default();
    let host = hosts.rsplit('@').next().unwrap_or_default();
    let first = host.split(',').next().unwrap_or("127.0.0.1:27017");
    let first = if first.contains(':') {
        first.to_string()
    } else {
        format!("{first}:27017")
    };
    use std::net::ToSocketAddrs;
    first
        .to_socket_addrs()
        .expect("resolve the MongoDB host")
        .next()
        .expect("an address")
}

#[tokio::test]
async fn database_outage_fails_sends_fast_shows_in_ready_and_heals_by_itself() {
    let proxy = TcpProxy::start(upstream()).await;
    let db_name = unique("chat_outage_");
    let uri = format!("mongodb://{}/{db_name}?directConnection=true", proxy.addr);
    let mut app =
        outage_fails_fast_and_heals(&["--storage", "mongodb", "--mongodb-uri", &uri], &proxy).await;
    app.stop().await;
    drop_database(&db_name).await;
}

#[tokio::test]
async fn two_instances_on_one_database_relay_each_event_once() {
    let mut queue = TestQueue::new().await;
    let db_name = unique("chat_relay_");
    let uri = uri_with_db(&db_name);
    let start = || {
        let mut args = queue.args(BROKER);
        args.extend(
            ["--storage", "mongodb", "--mongodb-uri", &uri]
                .iter()
                .map(|s| s.to_string()),
        );
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            spawn_app_with(&args).await
        }
    };
    let (mut one, mut two) = (start().await, start().await);
    let (r1, r2) = (unique("mg-inst-1-"), unique("mg-inst-2-"));
    let mut a = one.member("a", &r1).await;
    let mut b = two.member("b", &r2).await;
    let mut sent = Vec::new();
    for i in 0..50 {
        for (client, room) in [(&mut a, &r1), (&mut b, &r2)] {
            let ack = client.say(room, &format!("{room} {i}")).await;
            sent.push((room.clone(), ack["messageId"].as_str().unwrap().to_string()));
        }
    }
    let ids: HashSet<String> = sent.iter().map(|(_, id)| id.clone()).collect();
    let mut events = collect_ids(&mut queue, &ids).await;
    // Anything published twice would follow shortly.
    while let Some(e) = queue.next_within(Duration::from_millis(500)).await {
        events.push(e);
    }
    assert_eq!(check_delivery(&sent, &events), 0, "no double publishing");
    assert_eq!(events[0]["eventType"], "message.sent", "{}", events[0]);
    drop((a, b));
    one.stop().await;
    two.stop().await;
    queue.delete().await;
    drop_database(&db_name).await;
}

/// A database written before SPEC 10: the Node service's documents and one message written by
/// the previous version of this store with its pending `outbox` field (and the outbox
/// counter). The store opens it as is: the messages read back and take every lifecycle
/// change, the old entry reads as `message.sent` and is blanked by the delete, the Node
/// fields stay untouched, and the deleted text is gone from every document.
#[tokio::test]
async fn mongo_store_runs_the_lifecycle_on_a_database_written_before_it() {
    use chat_service::domain::{MessageId, RoomId, UserId};
    use chat_service::store::OutboxEvent;
    use mongodb::bson::Document;

    let db_name = unique("chat_old_");
    let db = client().await.database(&db_name);
    let base = chat_service::domain::now_ms() as i64 - 60_000;
    let ids: Vec<ObjectId> = (0..3).map(|_| ObjectId::new()).collect();
    let mut docs: Vec<Document> = ids[..2]
        .iter()
        .enumerate()
        .map(|(i, id)| {
            doc! {
                "_id": *id, "roomId": "old-room", "userId": "alice", "username": "Alice",
                "message": format!("old {i}"), "messageType": "text",
                "timestamp": DateTime::from_millis(base + i as i64 * 1000),
                "createdAt": DateTime::from_millis(base + i as i64 * 1000), "__v": 0,
            }
        })
        .collect();
    docs.push(doc! {
        "_id": ids[2], "roomId": "old-room", "userId": "alice", "username": "Alice",
        "message": "old 2", "messageType": "text",
        "timestamp": DateTime::from_millis(base + 2000),
        "createdAt": DateTime::from_millis(base + 2000), "clientMessageId": "client-2",
        "outbox": {"seq": 3_i64, "receiverId": "bob", "receiverIds": ["bob"]},
    });
    db.collection::<Document>("messages")
        .insert_many(docs)
        .await
        .expect("seed messages");
    db.collection::<Document>("counters")
        .insert_one(doc! {"_id": "outbox", "seq": 3_i64})
        .await
        .expect("seed the counter");
    db.collection::<Document>("rooms")
        .insert_one(doc! {
            "_id": ObjectId::new(), "roomId": "old-room", "type": "group",
            "participants": ["alice", "bob"],
            "lastMessage": {"content": "old 2", "timestamp": DateTime::from_millis(base + 2000),
                "senderId": "alice"},
            "createdAt": DateTime::from_millis(base), "updatedAt": DateTime::from_millis(base + 2000),
            "__v": 0,
        })
        .await
        .expect("seed the room");

    let backend = Mongo {
        db: db_name.clone(),
    };
    let outbox = Some(OutboxConfig { max_pending: 100 });
    let store = backend.open(outbox).await.expect("open the old database");
    let room = RoomId::parse("old-room").unwrap();
    let (alice, bob) = (
        UserId::parse("alice").unwrap(),
        UserId::parse("bob").unwrap(),
    );
    let texts: Vec<String> = store
        .history(&room, 10, None)
        .await
        .expect("history")
        .iter()
        .map(|m| m.message.as_str().to_string())
        .collect();
    assert_eq!(texts, ["old 0", "old 1", "old 2"]);
    let pending = store.outbox_pending(10).await.expect("pending");
    assert_eq!(pending.len(), 1);
    assert_eq!(
        (
            pending[0].seq,
            pending[0].event,
            pending[0].message.as_str()
        ),
        (3, OutboxEvent::Sent, "old 2"),
        "an old entry reads as message.sent"
    );

    let old: Vec<MessageId> = ids
        .iter()
        .map(|i| MessageId::parse(&i.to_hex()).unwrap())
        .collect();
    conformance::lifecycle_on_old_messages(&*store, &room, &old, &alice, &bob).await;
    let pending = store.outbox_pending(10).await.expect("pending");
    let events: Vec<(&str, OutboxEvent, &str)> = pending
        .iter()
        .map(|e| (e.message_id.as_str(), e.event, e.message.as_str()))
        .collect();
    assert_eq!(
        events,
        [
            (old[2].as_str(), OutboxEvent::Sent, ""),
            (
                pending[1].message_id.as_str(),
                OutboxEvent::Sent,
                "a reply to an old message"
            ),
            (old[0].as_str(), OutboxEvent::Edited, "old, edited"),
            (old[2].as_str(), OutboxEvent::Deleted, ""),
        ],
        "the old entry first, blanked by the delete"
    );
    assert!(pending.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(
        !database_contains(&db_name, "old 2").await,
        "the deleted text is gone from every document"
    );
    assert!(database_contains(&db_name, "old 1").await);

    // The Node fields stay; the new ones are added beside them.
    let edited = db
        .collection::<Document>("messages")
        .find_one(doc! {"_id": ids[0]})
        .await
        .expect("find")
        .expect("the edited message");
    assert_eq!(edited.get_i32("__v").ok(), Some(0), "{edited}");
    assert!(matches!(
        edited.get("createdAt"),
        Some(mongodb::bson::Bson::DateTime(_))
    ));
    assert_eq!(edited.get_str("message").ok(), Some("old, edited"));
    assert!(
        edited.contains_key("editedAt") && !edited.contains_key("pending"),
        "{edited}"
    );
    let deleted = db
        .collection::<Document>("messages")
        .find_one(doc! {"_id": ids[2]})
        .await
        .expect("find")
        .expect("the deleted message stays as a tombstone");
    assert_eq!(deleted.get_str("message").ok(), Some(""));
    assert!(deleted.contains_key("deletedAt"));
    store.close().await;
    drop_database(&db_name).await;
}
