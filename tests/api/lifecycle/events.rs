//! Socket.IO: every change reaches every member with its ack; bad input is refused and changes nothing.

use serde_json::json;

use super::{CHANGES, c_delete, edit, history, react, refused, rest};
use crate::support::{spawn_app, unique};

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
