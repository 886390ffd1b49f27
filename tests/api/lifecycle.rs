//! SPEC 10, the message lifecycle, black-box: edits, deletes, replies, reactions and read
//! receipts on Socket.IO and the raw WebSocket protocol, through REST, across a resume and
//! across two instances on Redis.

use redis::AsyncCommands;
use serde_json::{Value, json};

use crate::raw_ws;
use crate::support::{Endpoint, SioClient, redis, spawn_app, spawn_redis_app, unique};

const CHANGES: [&str; 4] = [
    "message_edited",
    "message_deleted",
    "reaction_updated",
    "read_receipt",
];

/// A REST call as `user` (AUTH_MODE=none: `X-User-Id`).
async fn rest(
    app: &Endpoint,
    method: &str,
    path: &str,
    user: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = reqwest::Client::new()
        .request(method, app.url(path))
        .header("x-user-id", user)
        .header("x-username", user);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let res = req.send().await.expect("http");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn history(app: &Endpoint, room: &str) -> Vec<Value> {
    let (status, body) = app
        .get(&format!("/api/chat/{room}/history?limit=1000"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["messages"].as_array().expect("messages").clone()
}

fn refused(ack: &Value, code: &str) {
    assert_eq!(ack["success"], false, "{ack}");
    assert_eq!(ack["error"]["code"], code, "{ack}");
}

async fn edit(c: &mut SioClient, room: &str, id: &Value, text: &str) -> Value {
    c.emit_ack(
        "edit_message",
        json!({"roomId": room, "messageId": id, "message": text}),
    )
    .await
}

async fn react(c: &mut SioClient, event: &str, room: &str, id: &Value, emoji: &str) -> Value {
    c.emit_ack(
        event,
        json!({"roomId": room, "messageId": id, "emoji": emoji}),
    )
    .await
}

#[tokio::test]
async fn edits_deletes_replies_reactions_and_receipts_reach_every_member() {
    let app = spawn_app().await;
    let room = unique("life");
    let (ua, ub) = (unique("ann"), unique("bob"));
    let mut a = app.member(&ua, &room).await;
    let mut b = app.member(&ub, &room).await;

    let m1 = a.say(&room, "helo").await["messageId"].clone();
    let ack = b
        .emit_ack(
            "send_message",
            json!({"roomId": room, "message": "hi ann", "replyTo": m1}),
        )
        .await;
    assert_eq!(ack["success"], true, "{ack}");
    let m2 = ack["messageId"].clone();
    let on_a = a.event_where("new_message", |m| m["messageId"] == m2).await;
    assert_eq!(on_a["replyTo"], m1);

    // Edit: the author only; everyone (the author too) gets message_edited.
    let ack = edit(&mut a, &room, &m1, "hello").await;
    assert_eq!(ack["success"], true, "{ack}");
    assert_eq!(ack["messageId"], m1);
    for c in [&mut a, &mut b] {
        let e = c.event("message_edited").await;
        assert_eq!(
            (&e["roomId"], &e["messageId"], &e["message"], &e["userId"]),
            (&json!(room), &m1, &json!("hello"), &json!(ua))
        );
        assert_eq!(e["editedAt"], ack["editedAt"]);
    }
    let ack = edit(&mut b, &room, &m1, "not mine").await;
    refused(&ack, "forbidden");
    assert_eq!(b.event("error").await["code"], "forbidden");

    // Reactions: idempotent per user and emoji, counted per emoji.
    let ack = react(&mut b, "add_reaction", &room, &m2, "👍").await;
    assert_eq!(
        (ack["success"].clone(), ack["count"].clone()),
        (json!(true), json!(1))
    );
    let ack = react(&mut a, "add_reaction", &room, &m2, "👍").await;
    assert_eq!(ack["count"], 2);
    let ack = react(&mut b, "add_reaction", &room, &m2, "👍").await;
    assert_eq!(
        (ack["success"].clone(), ack["count"].clone()),
        (json!(true), json!(2))
    );
    let ack = react(&mut b, "remove_reaction", &room, &m2, "👍").await;
    assert_eq!(ack["count"], 1);
    for c in [&mut a, &mut b] {
        let mut seen = Vec::new();
        for _ in 0..3 {
            let (name, e) = c.next_of(&CHANGES).await;
            assert_eq!(name, "reaction_updated", "{e}");
            seen.push((e["userId"].clone(), e["added"].clone(), e["count"].clone()));
        }
        // The repeated add changed nothing and was not broadcast.
        assert_eq!(
            seen,
            vec![
                (json!(ub), json!(true), json!(1)),
                (json!(ua), json!(true), json!(2)),
                (json!(ub), json!(false), json!(1)),
            ]
        );
    }

    // Delete: author only, twice is harmless and broadcast once.
    refused(&c_delete(&mut b, &room, &m1).await, "forbidden");
    let ack = c_delete(&mut a, &room, &m1).await;
    assert_eq!(ack["success"], true, "{ack}");
    let again = c_delete(&mut a, &room, &m1).await;
    assert_eq!(again["success"], true, "{again}");
    assert_eq!(again["deletedAt"], ack["deletedAt"]);
    refused(&edit(&mut a, &room, &m1, "back").await, "not_found");
    refused(
        &react(&mut b, "add_reaction", &room, &m1, "👍").await,
        "not_found",
    );

    // Read markers: forward only; every member (and the reader) gets read_receipt.
    let ack = b
        .emit_ack("mark_read", json!({"roomId": room, "messageId": m2}))
        .await;
    assert_eq!(
        (ack["success"].clone(), ack["messageId"].clone()),
        (json!(true), m2.clone())
    );
    let back = b
        .emit_ack("mark_read", json!({"roomId": room, "messageId": m1}))
        .await;
    assert_eq!(back["success"], true, "{back}");
    assert_eq!(back["messageId"], m2, "a marker never moves backwards");
    for c in [&mut a, &mut b] {
        let (name, e) = c.next_of(&CHANGES).await;
        assert_eq!(name, "message_deleted", "{e}");
        assert_eq!((&e["messageId"], &e["userId"]), (&m1, &json!(ua)));
        let (name, e) = c.next_of(&CHANGES).await;
        assert_eq!(
            name, "read_receipt",
            "one delete event, then the receipt: {e}"
        );
        assert_eq!(
            (&e["roomId"], &e["userId"], &e["messageId"]),
            (&json!(room), &json!(ub), &m2)
        );
        assert!(c.received("read_receipt").is_empty() && c.received("message_deleted").is_empty());
    }

    // History (REST and a fresh join) shows the current state.
    let items = history(&app, &room).await;
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["deleted"], true);
    assert_eq!(items[0]["message"], "");
    assert!(items[0].get("editedAt").is_some());
    assert_eq!(items[1]["replyTo"], m1);
    assert_eq!(
        items[1]["reactions"],
        json!([{"emoji": "👍", "count": 1, "userIds": [ua]}])
    );
    assert_eq!(items[0]["reactions"], json!([]));
    let mut c = app.user(&unique("cid")).await;
    c.emit_ack("join_room", json!({"roomId": room})).await;
    assert_eq!(c.event("message_history").await, json!(items));

    // Receipts and unread counts.
    let (status, body) = rest(
        &app,
        "GET",
        &format!("/api/chat/{room}/receipts"),
        &ua,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let receipts = body["receipts"].as_array().unwrap();
    assert_eq!(receipts.len(), 1);
    assert_eq!(
        (&receipts[0]["userId"], &receipts[0]["messageId"]),
        (&json!(ub), &m2)
    );
    let unread = |user: String| {
        let app = &app;
        let room = room.clone();
        async move {
            let (status, body) = rest(app, "GET", "/api/chat/rooms", &user, None).await;
            assert_eq!(status, 200, "{body}");
            body["rooms"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["roomId"] == room.as_str())
                .unwrap_or_else(|| panic!("{room} not in {body}"))["unreadCount"]
                .clone()
        }
    };
    // Ann has no marker: Bob's one message is unread (her deleted one is hers anyway).
    assert_eq!(unread(ua.clone()).await, 1);
    assert_eq!(unread(ub.clone()).await, 0);
    a.say(&room, "more").await;
    assert_eq!(unread(ub.clone()).await, 1);
}

async fn c_delete(c: &mut SioClient, room: &str, id: &Value) -> Value {
    c.emit_ack("delete_message", json!({"roomId": room, "messageId": id}))
        .await
}

#[tokio::test]
async fn bad_lifecycle_input_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let (room, other) = (unique("bad"), unique("bad-other"));
    let ua = unique("ann");
    let mut a = app.member(&ua, &room).await;
    a.join(&other).await;
    let m1 = a.say(&room, "original").await["messageId"].clone();
    let elsewhere = a.say(&other, "elsewhere").await["messageId"].clone();
    let unknown = json!("65a1b2c3d4e5f60718293a4b");

    for (event, data, code) in [
        (
            "edit_message",
            json!({"roomId": room, "messageId": unknown, "message": "x"}),
            "not_found",
        ),
        (
            "edit_message",
            json!({"roomId": room, "messageId": elsewhere, "message": "x"}),
            "not_found",
        ),
        (
            "edit_message",
            json!({"roomId": room, "messageId": m1, "message": "  "}),
            "invalid_payload",
        ),
        (
            "edit_message",
            json!({"roomId": room, "messageId": m1, "message": "x".repeat(4001)}),
            "invalid_payload",
        ),
        (
            "edit_message",
            json!({"roomId": room, "messageId": "nope", "message": "x"}),
            "invalid_payload",
        ),
        (
            "delete_message",
            json!({"roomId": room, "messageId": unknown}),
            "not_found",
        ),
        (
            "delete_message",
            json!({"roomId": room, "messageId": elsewhere}),
            "not_found",
        ),
        (
            "add_reaction",
            json!({"roomId": room, "messageId": m1, "emoji": "x".repeat(33)}),
            "invalid_payload",
        ),
        (
            "add_reaction",
            json!({"roomId": room, "messageId": m1, "emoji": "👍 👍"}),
            "invalid_payload",
        ),
        (
            "add_reaction",
            json!({"roomId": room, "messageId": m1, "emoji": ""}),
            "invalid_payload",
        ),
        (
            "add_reaction",
            json!({"roomId": room, "messageId": m1}),
            "invalid_payload",
        ),
        (
            "add_reaction",
            json!({"roomId": room, "messageId": unknown, "emoji": "👍"}),
            "not_found",
        ),
        (
            "remove_reaction",
            json!({"roomId": room, "messageId": elsewhere, "emoji": "👍"}),
            "not_found",
        ),
        (
            "mark_read",
            json!({"roomId": room, "messageId": unknown}),
            "not_found",
        ),
        (
            "mark_read",
            json!({"roomId": room, "messageId": elsewhere}),
            "not_found",
        ),
        (
            "send_message",
            json!({"roomId": room, "message": "re", "replyTo": unknown}),
            "not_found",
        ),
        (
            "send_message",
            json!({"roomId": room, "message": "re", "replyTo": elsewhere}),
            "not_found",
        ),
        (
            "edit_message",
            json!({"roomId": unique("notjoined"), "messageId": m1, "message": "x"}),
            "forbidden",
        ),
    ] {
        let ack = a.emit_ack(event, data.clone()).await;
        assert_eq!(ack["success"], false, "{event} {data}: {ack}");
        assert_eq!(ack["error"]["code"], code, "{event} {data}: {ack}");
        assert_eq!(a.event("error").await["code"], code);
    }
    // At most 20 distinct emoji per message.
    for i in 0..20 {
        let ack = react(&mut a, "add_reaction", &room, &m1, &format!("e{i}")).await;
        assert_eq!(ack["success"], true, "{ack}");
    }
    refused(
        &react(&mut a, "add_reaction", &room, &m1, "e20").await,
        "invalid_payload",
    );
    // A 21st user on an existing emoji is fine.
    let ack = react(&mut a, "add_reaction", &room, &m1, "e0").await;
    assert_eq!(ack["success"], true);

    // Nothing was stored: the texts and the second room are as sent, no reply was stored.
    let items = history(&app, &room).await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["message"], "original");
    assert!(items[0].get("editedAt").is_none() && items[0].get("deleted").is_none());
    assert_eq!(items[0]["reactions"].as_array().unwrap().len(), 20);
    assert_eq!(history(&app, &other).await[0]["message"], "elsewhere");
}

#[tokio::test]
async fn rest_paths_of_the_lifecycle() {
    let app = spawn_app().await;
    let room = unique("rest-life");
    let (ua, ub) = (unique("ann"), unique("bob"));
    let mut a = app.member(&ua, &room).await;
    let mut b = app.member(&ub, &room).await;
    let m1 = a.say(&room, "typo").await["messageId"].clone();
    let id = m1.as_str().unwrap();

    let (s, body) = rest(
        &app,
        "PATCH",
        &format!("/api/chat/{room}/messages/{id}"),
        &ua,
        Some(json!({"message": "fixed"})),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["success"], true);
    assert_eq!(b.event("message_edited").await["message"], "fixed");
    let (s, body) = rest(
        &app,
        "PATCH",
        &format!("/api/chat/{room}/messages/{id}"),
        &ub,
        Some(json!({"message": "mine"})),
    )
    .await;
    assert_eq!(
        (s, body["error"]["code"].clone()),
        (403, json!("forbidden"))
    );
    let (s, _) = rest(
        &app,
        "PATCH",
        &format!("/api/chat/{room}/messages/{id}"),
        &ua,
        Some(json!({"text": "x"})),
    )
    .await;
    assert_eq!(s, 400);
    let outsider = unique("eve");
    let (s, _) = rest(
        &app,
        "PUT",
        &format!("/api/chat/{room}/messages/{id}/reactions/%F0%9F%8E%89"),
        &outsider,
        None,
    )
    .await;
    assert_eq!(s, 403, "only members act in a room");

    let (s, body) = rest(
        &app,
        "PUT",
        &format!("/api/chat/{room}/messages/{id}/reactions/%F0%9F%8E%89"),
        &ub,
        None,
    )
    .await;
    assert_eq!((s, body["count"].clone()), (200, json!(1)), "{body}");
    let e = a.event("reaction_updated").await;
    assert_eq!(
        (e["emoji"].clone(), e["added"].clone()),
        (json!("🎉"), json!(true))
    );
    let (s, body) = rest(
        &app,
        "DELETE",
        &format!("/api/chat/{room}/messages/{id}/reactions/%F0%9F%8E%89"),
        &ub,
        None,
    )
    .await;
    assert_eq!((s, body["count"].clone()), (200, json!(0)), "{body}");
    let (s, _) = rest(
        &app,
        "PUT",
        &format!("/api/chat/{room}/messages/{id}/reactions/a%20b"),
        &ub,
        None,
    )
    .await;
    assert_eq!(s, 400);

    let (s, body) = rest(
        &app,
        "POST",
        &format!("/api/chat/{room}/read"),
        &ub,
        Some(json!({"messageId": m1})),
    )
    .await;
    assert_eq!((s, body["messageId"].clone()), (200, m1.clone()), "{body}");
    assert_eq!(a.event("read_receipt").await["userId"], ub.as_str());
    let (s, body) = rest(
        &app,
        "GET",
        &format!("/api/chat/{room}/receipts"),
        &ua,
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(body["receipts"][0]["messageId"], m1);
    let (s, _) = rest(
        &app,
        "POST",
        &format!("/api/chat/{room}/read"),
        &ub,
        Some(json!({"messageId": "65a1b2c3d4e5f60718293a4b"})),
    )
    .await;
    assert_eq!(s, 404);

    let (s, body) = rest(
        &app,
        "DELETE",
        &format!("/api/chat/{room}/messages/{id}"),
        &ua,
        None,
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(b.event("message_deleted").await["messageId"], m1);
    assert_eq!(history(&app, &room).await[0]["message"], "");
    // Without an identity: 401.
    let (s, _) = app
        .post(
            &format!("/api/chat/{room}/read"),
            &json!({"messageId": m1}),
            &[],
        )
        .await;
    assert_eq!(s, 401);
}

#[tokio::test]
async fn a_resume_replays_what_changed_and_the_view_equals_rest_history() {
    let app = spawn_app().await;
    let room = unique("resume");
    let (ua, ub) = (unique("ann"), unique("bob"));
    let mut a = app.member(&ua, &room).await;
    let mut b = app.member(&ub, &room).await;
    let mut ids = Vec::new();
    for text in ["one", "two", "three"] {
        ids.push(a.say(&room, text).await["messageId"].clone());
    }
    let mut view: Vec<Value> = Vec::new();
    for _ in 0..3 {
        view.push(b.event("new_message").await);
    }
    let last = ids[2].clone();
    b.disconnect();
    b.closed().await;

    // While Bob is away: an edit, a delete, reactions, and a new message.
    assert_eq!(edit(&mut a, &room, &ids[0], "uno").await["success"], true);
    assert_eq!(c_delete(&mut a, &room, &ids[1]).await["success"], true);
    assert_eq!(
        react(&mut a, "add_reaction", &room, &ids[2], "🔥").await["count"],
        1
    );
    assert_eq!(
        react(&mut a, "add_reaction", &room, &ids[0], "👀").await["count"],
        1
    );
    assert_eq!(
        react(&mut a, "remove_reaction", &room, &ids[0], "👀").await["count"],
        0
    );
    a.say(&room, "four").await;

    let mut b = app.user(&ub).await;
    let ack = b
        .emit_ack("join_room", json!({"roomId": room, "since": last}))
        .await;
    assert_eq!(ack["success"], true);
    let (name, missed) = b
        .next_of(&[
            "message_history",
            "message_edited",
            "message_deleted",
            "reaction_updated",
        ])
        .await;
    assert_eq!(name, "message_history", "history comes first");
    assert_eq!(missed.as_array().unwrap().len(), 1);
    assert_eq!(missed[0]["message"], "four");
    let mut kinds = Vec::new();
    for _ in 0..5 {
        let (name, e) = b.next_of(&CHANGES).await;
        kinds.push(name.clone());
        let i = view
            .iter()
            .position(|m| m["messageId"] == e["messageId"])
            .expect("a change of a message Bob had");
        let m = &mut view[i];
        match name.as_str() {
            "message_edited" => {
                m["message"] = e["message"].clone();
                m["editedAt"] = e["editedAt"].clone();
            }
            "message_deleted" => {
                m["message"] = json!("");
                m["deleted"] = json!(true);
            }
            _ => {
                let reactions = m
                    .as_object_mut()
                    .unwrap()
                    .entry("reactions")
                    .or_insert(json!([]))
                    .as_array_mut()
                    .unwrap();
                reactions.retain(|r| r["emoji"] != e["emoji"]);
                if e["count"].as_u64().unwrap() > 0 {
                    reactions.push(
                        json!({"emoji": e["emoji"], "count": e["count"], "userIds": [e["userId"]]}),
                    );
                }
            }
        }
    }
    assert_eq!(
        kinds,
        [
            "message_edited",
            "message_deleted",
            "reaction_updated",
            "reaction_updated",
            "reaction_updated"
        ]
    );
    for m in &mut view {
        m.as_object_mut()
            .unwrap()
            .entry("reactions")
            .or_insert(json!([]));
    }
    view.extend(missed.as_array().unwrap().iter().cloned());
    assert_eq!(json!(view), json!(history(&app, &room).await));
}

#[tokio::test]
async fn raw_websocket_clients_use_the_lifecycle_too() {
    let app = spawn_app().await;
    let room = unique("raw-life");
    let (ua, ub) = (unique("raw"), unique("sio"));
    let mut ws = raw_ws::connect(app.addr, "/ws").await;
    raw_ws::send(
        &mut ws,
        json!({"event": "authenticate", "data": {"userId": ua, "username": ua}}),
    )
    .await;
    raw_ws::send(
        &mut ws,
        json!({"event": "join_room", "data": {"roomId": room}, "id": 1}),
    )
    .await;
    raw_ws::next(&mut ws, "message_history").await;
    assert_eq!(raw_ws::next(&mut ws, "ack").await["id"], 1);
    let mut sio = app.member(&ub, &room).await;
    raw_ws::send(
        &mut ws,
        json!({"event": "send_message", "data": {"roomId": room, "message": "raw"}, "id": 2}),
    )
    .await;
    let ack = raw_ws::next(&mut ws, "ack").await;
    let id = ack["data"]["messageId"].clone();
    assert!(id.is_string(), "{ack}");
    for (n, event, data) in [
        (
            3,
            "edit_message",
            json!({"roomId": room, "messageId": id, "message": "raw!"}),
        ),
        (
            4,
            "add_reaction",
            json!({"roomId": room, "messageId": id, "emoji": "✅"}),
        ),
        (5, "mark_read", json!({"roomId": room, "messageId": id})),
        (
            6,
            "delete_message",
            json!({"roomId": room, "messageId": id}),
        ),
    ] {
        raw_ws::send(&mut ws, json!({"event": event, "data": data, "id": n})).await;
        let ack = raw_ws::next(&mut ws, "ack").await;
        assert_eq!(
            (ack["id"].clone(), ack["data"]["success"].clone()),
            (json!(n), json!(true)),
            "{event}: {ack}"
        );
    }
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(sio.next_of(&CHANGES).await.0);
    }
    assert_eq!(
        got,
        [
            "message_edited",
            "reaction_updated",
            "read_receipt",
            "message_deleted"
        ]
    );
    // A reaction on the deleted message is refused; the Socket.IO client's receipt reaches
    // the raw client.
    refused(
        &react(&mut sio, "add_reaction", &room, &id, "✅").await,
        "not_found",
    );
    let ack = sio
        .emit_ack("mark_read", json!({"roomId": room, "messageId": id}))
        .await;
    assert_eq!(ack["success"], true);
    let e = raw_ws::next(&mut ws, "read_receipt").await;
    assert_eq!(
        (&e["data"]["userId"], &e["data"]["messageId"]),
        (&json!(ub), &id)
    );
    raw_ws::send(&mut ws, json!({"event": "add_reaction", "data": {"roomId": room, "messageId": id, "emoji": "no way"}, "id": 7})).await;
    let ack = raw_ws::next(&mut ws, "ack").await;
    assert_eq!(ack["data"]["error"]["code"], "invalid_payload", "{ack}");
}

#[tokio::test]
async fn changes_cross_instances_and_the_redis_cache_follows_the_store() {
    let (app_a, app_b) = (spawn_redis_app(&[]).await, spawn_redis_app(&[]).await);
    let room = unique("life-2");
    let (ua, ub) = (unique("ann"), unique("bob"));
    let mut a = app_a.member(&ua, &room).await;
    let mut b = app_b.member(&ub, &room).await;
    let secret = format!("secret {}", unique("text"));
    let ack = a
        .emit_ack(
            "send_message",
            json!({"roomId": room, "message": secret, "clientMessageId": "c-1"}),
        )
        .await;
    let m1 = ack["messageId"].clone();
    let m2 = a.say(&room, "keep").await["messageId"].clone();
    b.event_where("new_message", |m| m["messageId"] == m2).await;

    assert_eq!(edit(&mut a, &room, &m2, "kept").await["success"], true);
    assert_eq!(
        react(&mut a, "add_reaction", &room, &m2, "👍").await["success"],
        true
    );
    assert_eq!(c_delete(&mut a, &room, &m1).await["success"], true);
    let ack = a
        .emit_ack("mark_read", json!({"roomId": room, "messageId": m2}))
        .await;
    assert_eq!(ack["success"], true);
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(b.next_of(&CHANGES).await.0);
    }
    assert_eq!(
        got,
        [
            "message_edited",
            "reaction_updated",
            "message_deleted",
            "read_receipt"
        ]
    );

    // Instance B serves history from the Redis list, which holds the new state.
    let on_b = history(&app_b, &room).await;
    assert_eq!(on_b, history(&app_a, &room).await);
    assert_eq!(
        (on_b[0]["deleted"].clone(), on_b[0]["message"].clone()),
        (json!(true), json!(""))
    );
    assert_eq!(on_b[1]["message"], "kept");
    assert_eq!(on_b[1]["reactions"][0]["count"], 1);
    // The deleted text is gone from Redis: the history list and the idempotency record.
    let mut r = redis().await;
    let items: Vec<String> = r
        .lrange(format!("chat:history:{room}"), 0, -1)
        .await
        .unwrap();
    assert_eq!(items.len(), 2);
    assert!(items.iter().all(|i| !i.contains(&secret)), "{items:?}");
    let idem: Option<String> = r.get(format!("chat:idem:{room}:{ua}:c-1")).await.unwrap();
    let idem = idem.expect("the idempotency record stays");
    assert!(!idem.contains(&secret), "{idem}");
    // A replay of the deleted message's clientMessageId is still that (deleted) message.
    let replay = a
        .emit_ack(
            "send_message",
            json!({"roomId": room, "message": "again", "clientMessageId": "c-1"}),
        )
        .await;
    assert_eq!(
        (replay["success"].clone(), replay["messageId"].clone()),
        (json!(true), m1)
    );
    assert_eq!(history(&app_a, &room).await.len(), 2);
}
