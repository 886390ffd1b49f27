//! SPEC 8 / issue 5: `message.sent` events on RabbitMQ through the transactional outbox, on
//! the real local broker. Each test declares its own queue (`TestQueue`) and deletes it.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{Value, json};

use crate::broker::{BROKER, TcpProxy, TestQueue, collect_ids};
use crate::support::{TestApp, keys, spawn_app_with};

async fn app_on(queue: &TestQueue, addr: &str, extra: &[&str]) -> TestApp {
    let mut args = queue.args(addr);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    spawn_app_with(&args).await
}

/// Polls `/ready` until it answers `status` (the relay reconnects on its own back-off).
async fn ready_becomes(app: &TestApp, status: u16) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (got, body) = app.get("/ready").await;
        if got == status {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/ready stayed {got} ({body}), expected {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every sent id arrived, nothing else did, and per room the first copies keep the send
/// order. Returns the number of duplicates (the documented at-least-once window).
pub(crate) fn check_delivery(sent: &[(String, String)], events: &[Value]) -> usize {
    let sent_ids: HashSet<&str> = sent.iter().map(|(_, id)| id.as_str()).collect();
    let mut first: HashMap<String, Vec<String>> = HashMap::new();
    let mut seen = HashSet::new();
    let mut duplicates = 0;
    for e in events {
        let id = e["data"]["messageId"].as_str().unwrap().to_string();
        assert!(sent_ids.contains(id.as_str()), "unexpected event {e}");
        if seen.insert(id.clone()) {
            let room = e["data"]["roomId"].as_str().unwrap().to_string();
            first.entry(room).or_default().push(id);
        } else {
            duplicates += 1;
        }
    }
    let mut expected: HashMap<String, Vec<String>> = HashMap::new();
    for (room, id) in sent {
        expected.entry(room.clone()).or_default().push(id.clone());
    }
    assert_eq!(first, expected, "per-room order of the events");
    duplicates
}

#[tokio::test]
async fn events_have_the_spec_shape_for_direct_and_group_rooms() {
    let mut queue = TestQueue::new().await;
    let app = app_on(&queue, BROKER, &[]).await;
    ready_becomes(&app, 200).await;

    // A direct room: receiverId is the other participant.
    let (status, body) = app
        .post(
            "/api/chat/rooms",
            &json!({"type": "direct", "participants": ["alice", "bob"]}),
            &[("x-user-id", "alice")],
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let direct = body["room"]["roomId"].as_str().unwrap().to_string();
    let mut alice = app.member("alice", &direct).await;
    let ack = alice.say(&direct, "hello bob").await;
    let event = queue.next().await;
    assert_eq!(keys(&event), ["data", "eventType", "timestamp"]);
    assert_eq!(
        keys(&event["data"]),
        [
            "message",
            "messageId",
            "receiverId",
            "receiverIds",
            "roomId",
            "senderId",
            "timestamp"
        ]
    );
    assert_eq!(event["eventType"], "message.sent");
    assert_eq!(event["data"]["messageId"], ack["messageId"]);
    assert_eq!(event["data"]["roomId"], direct.as_str());
    assert_eq!(event["data"]["senderId"], "alice");
    assert_eq!(event["data"]["receiverId"], "bob");
    assert_eq!(event["data"]["receiverIds"], json!(["bob"]));
    assert_eq!(event["data"]["message"], "hello bob");
    assert_eq!(event["data"]["timestamp"], ack["timestamp"]);
    // ISO-8601 of the same instant, as JavaScript's toISOString writes it.
    let iso = event["timestamp"].as_str().unwrap();
    assert_eq!(iso.len(), 24, "{iso}");
    assert!(iso.ends_with('Z') && iso.as_bytes()[10] == b'T', "{iso}");
    let ms = ack["timestamp"].as_u64().unwrap();
    assert!(
        iso.ends_with(&format!(".{:03}Z", ms % 1000)),
        "{iso} vs {ms}"
    );

    // An open group room: no receiverId, every member but the sender.
    let mut a = app.member("a", "group-room").await;
    let _b = app.member("b", "group-room").await;
    let _c = app.member("c", "group-room").await;
    let first = a
        .emit_ack(
            "send_message",
            json!({"roomId": "group-room", "message": "hi all", "clientMessageId": "g1"}),
        )
        .await;
    // A replay of the same clientMessageId stores nothing and publishes nothing.
    let again = a
        .emit_ack(
            "send_message",
            json!({"roomId": "group-room", "message": "hi all", "clientMessageId": "g1"}),
        )
        .await;
    assert_eq!(again, first);
    let last = a.say("group-room", "last").await;
    let event = queue.next().await;
    assert_eq!(event["data"]["messageId"], first["messageId"]);
    assert_eq!(event["data"]["receiverId"], Value::Null);
    assert_eq!(event["data"]["receiverIds"], json!(["b", "c"]));
    assert_eq!(event["data"]["senderId"], "a");
    let event = queue.next().await;
    assert_eq!(
        event["data"]["messageId"], last["messageId"],
        "no duplicate event"
    );

    let (_, ready) = app.get("/ready").await;
    assert_eq!(ready["dependencies"]["rabbitmq"]["status"], "up");
    queue.delete().await;
}

#[tokio::test]
async fn a_broker_outage_delays_events_and_loses_none() {
    let mut queue = TestQueue::new().await;
    let proxy = TcpProxy::start().await;
    let app = app_on(&queue, &proxy.addr(), &[]).await;
    ready_becomes(&app, 200).await;
    let mut a = app.member("a", "out-1").await;
    a.join("out-2").await;
    let mut sent = Vec::new();
    for i in 0..4 {
        let room = if i % 2 == 0 { "out-1" } else { "out-2" };
        let ack = a.say(room, &format!("before {i}")).await;
        sent.push((
            room.to_string(),
            ack["messageId"].as_str().unwrap().to_string(),
        ));
    }
    let ids_before: HashSet<String> = sent.iter().map(|(_, id)| id.clone()).collect();
    collect_ids(&mut queue, &ids_before).await;

    proxy.cut();
    let body = ready_becomes(&app, 503).await;
    assert_eq!(body["dependencies"]["rabbitmq"]["status"], "down");
    assert_eq!(body["dependencies"]["store"]["status"], "up");
    // Chat keeps working: every send is acknowledged while the broker is away.
    let mut during = Vec::new();
    let started = std::time::Instant::now();
    for i in 0..300 {
        let room = if i % 3 == 0 { "out-1" } else { "out-2" };
        let ack = a.say(room, &format!("during {i}")).await;
        during.push((
            room.to_string(),
            ack["messageId"].as_str().unwrap().to_string(),
        ));
    }
    eprintln!("300 sends during the outage took {:?}", started.elapsed());
    assert!(
        queue
            .next_within(Duration::from_millis(200))
            .await
            .is_none(),
        "nothing can arrive while the proxy is cut"
    );

    proxy.restore();
    let ids: HashSet<String> = during.iter().map(|(_, id)| id.clone()).collect();
    let events = collect_ids(&mut queue, &ids).await;
    // A batch confirmed just before the cut may be published again after it (the documented
    // at-least-once window): copies of the "before" events are allowed, nothing else.
    let events: Vec<Value> = events
        .into_iter()
        .filter(|e| !ids_before.contains(e["data"]["messageId"].as_str().unwrap()))
        .collect();
    let duplicates = check_delivery(&during, &events);
    eprintln!(
        "outage: {} events delivered, {duplicates} duplicates",
        events.len()
    );
    ready_becomes(&app, 200).await;
    queue.delete().await;
}

#[tokio::test]
async fn a_restart_with_a_non_empty_outbox_delivers_everything() {
    let mut queue = TestQueue::new().await;
    let proxy = TcpProxy::start().await;
    proxy.cut();
    // Start-up does not need the broker.
    let mut app = app_on(&queue, &proxy.addr(), &[]).await;
    let mut a = app.member("a", "restart-room").await;
    let mut sent = Vec::new();
    for i in 0..50 {
        let ack = a.say("restart-room", &format!("m{i}")).await;
        sent.push((
            "restart-room".to_string(),
            ack["messageId"].as_str().unwrap().to_string(),
        ));
    }
    drop(a);
    app.stop().await;
    proxy.restore();
    let app = app.restart().await;
    let ids: HashSet<String> = sent.iter().map(|(_, id)| id.clone()).collect();
    let events = collect_ids(&mut queue, &ids).await;
    assert_eq!(
        check_delivery(&sent, &events),
        0,
        "nothing was published twice"
    );
    drop(app);
    queue.delete().await;
}

#[tokio::test]
async fn two_instances_relay_each_event_once() {
    let mut queue = TestQueue::new().await;
    let one = app_on(&queue, BROKER, &[]).await;
    let two = app_on(&queue, BROKER, &[]).await;
    let mut a = one.member("a", "inst-1").await;
    let mut b = two.member("b", "inst-2").await;
    let mut sent = Vec::new();
    for i in 0..100 {
        let ack = a.say("inst-1", &format!("one {i}")).await;
        sent.push((
            "inst-1".to_string(),
            ack["messageId"].as_str().unwrap().to_string(),
        ));
        let ack = b.say("inst-2", &format!("two {i}")).await;
        sent.push((
            "inst-2".to_string(),
            ack["messageId"].as_str().unwrap().to_string(),
        ));
    }
    let ids: HashSet<String> = sent.iter().map(|(_, id)| id.clone()).collect();
    let mut events = collect_ids(&mut queue, &ids).await;
    // Anything published twice would follow shortly.
    while let Some(e) = queue.next_within(Duration::from_millis(500)).await {
        events.push(e);
    }
    assert_eq!(check_delivery(&sent, &events), 0, "no double publishing");
    queue.delete().await;
}

#[tokio::test]
async fn a_full_outbox_refuses_sends_until_the_broker_is_back() {
    let mut queue = TestQueue::new().await;
    let proxy = TcpProxy::start().await;
    proxy.cut();
    let app = app_on(&queue, &proxy.addr(), &["--outbox-max-pending", "3"]).await;
    let mut a = app.member("a", "full-room").await;
    let mut sent = Vec::new();
    for i in 0..3 {
        let ack = a.say("full-room", &format!("m{i}")).await;
        sent.push((
            "full-room".to_string(),
            ack["messageId"].as_str().unwrap().to_string(),
        ));
    }
    let refused = a
        .emit_ack(
            "send_message",
            json!({"roomId": "full-room", "message": "one too many"}),
        )
        .await;
    assert_eq!(refused["success"], false, "{refused}");
    assert_eq!(refused["error"]["code"], "unavailable");
    // The refused message was not stored either.
    assert_eq!(app.stored_texts("full-room").await, ["m0", "m1", "m2"]);

    proxy.restore();
    let ids: HashSet<String> = sent.iter().map(|(_, id)| id.clone()).collect();
    let events = collect_ids(&mut queue, &ids).await;
    check_delivery(&sent, &events);
    // Room again once the relay has drained the outbox.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ack = a
            .emit_ack(
                "send_message",
                json!({"roomId": "full-room", "message": "after"}),
            )
            .await;
        if ack["success"] == true {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still refused: {ack}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    queue.delete().await;
}

#[tokio::test]
async fn edits_and_deletes_are_notified_through_the_outbox() {
    let mut queue = TestQueue::new().await;
    let app = app_on(&queue, BROKER, &[]).await;
    ready_becomes(&app, 200).await;
    let room = crate::support::unique("notify-life");
    let mut a = app.member("ann", &room).await;
    let _b = app.member("bob", &room).await;
    let sent = a.say(&room, "first text").await;
    let id = sent["messageId"].clone();
    let edited = a
        .emit_ack(
            "edit_message",
            json!({"roomId": room, "messageId": id, "message": "second text"}),
        )
        .await;
    assert_eq!(edited["success"], true, "{edited}");
    // Reactions and read markers are not notified; a second delete is not either.
    let r = a
        .emit_ack(
            "add_reaction",
            json!({"roomId": room, "messageId": id, "emoji": "👍"}),
        )
        .await;
    assert_eq!(r["success"], true);
    let deleted = a
        .emit_ack("delete_message", json!({"roomId": room, "messageId": id}))
        .await;
    assert_eq!(deleted["success"], true);
    a.emit_ack("delete_message", json!({"roomId": room, "messageId": id}))
        .await;
    let last = a.say(&room, "after").await;

    let e = queue.next().await;
    assert_eq!(e["eventType"], "message.sent");
    assert_eq!(e["data"]["messageId"], id);
    // The delete erased the text of the events still pending (at-least-once: the relay may
    // have sent it already).
    assert!(
        e["data"]["message"] == "first text" || e["data"]["message"] == "",
        "{e}"
    );
    let e = queue.next().await;
    assert_eq!(e["eventType"], "message.edited");
    assert_eq!(
        keys(&e["data"]),
        [
            "editedAt",
            "message",
            "messageId",
            "receiverIds",
            "roomId",
            "userId"
        ]
    );
    assert_eq!(e["data"]["editedAt"], edited["editedAt"]);
    assert_eq!(e["data"]["receiverIds"], json!(["bob"]));
    assert_eq!(e["data"]["userId"], "ann");
    assert!(
        e["data"]["message"] == "second text" || e["data"]["message"] == "",
        "{e}"
    );
    let e = queue.next().await;
    assert_eq!(e["eventType"], "message.deleted");
    assert_eq!(
        keys(&e["data"]),
        ["deletedAt", "messageId", "receiverIds", "roomId", "userId"]
    );
    assert_eq!(e["data"]["deletedAt"], deleted["deletedAt"]);
    assert_eq!(e["data"]["messageId"], id);
    let e = queue.next().await;
    assert_eq!(
        (e["eventType"].clone(), e["data"]["messageId"].clone()),
        (json!("message.sent"), last["messageId"].clone()),
        "nothing between the delete and the next message"
    );
    queue.delete().await;
}
