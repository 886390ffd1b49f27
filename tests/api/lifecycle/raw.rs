//! The raw WebSocket protocol carries the lifecycle too.

use serde_json::json;

use super::{CHANGES, react, refused};
use crate::raw_ws;
use crate::support::{spawn_app, unique};

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
