//! SPEC 4: health, readiness, history paging, rooms, errors (the OpenAPI document: openapi.rs).

use serde_json::{Value, json};

use crate::support::{keys, spawn_app};

#[tokio::test]
async fn health_and_ready() {
    let app = spawn_app().await;
    assert_eq!(
        app.get("/health").await,
        (200, json!({"status": "ok", "service": "chat-service"}))
    );
    let (status, body) = app.get("/ready").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["dependencies"]["store"]["status"], "up");
}

#[tokio::test]
async fn history_pages_with_limit_and_before_under_both_prefixes() {
    let app = spawn_app().await;
    let mut a = app.member("a", "paging").await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(
            a.say("paging", &format!("m{i}")).await["messageId"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let texts = |body: &Value| -> Vec<String> {
        body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["message"].as_str().unwrap().to_string())
            .collect()
    };
    let (status, body) = app.get("/api/chat/paging/history").await;
    assert_eq!(status, 200);
    assert_eq!(body["success"], true);
    assert_eq!(texts(&body).len(), 10);
    assert_eq!(
        keys(&body["messages"][0]),
        [
            "message",
            "messageId",
            "messageType",
            "reactions",
            "roomId",
            "timestamp",
            "userId",
            "username"
        ]
    );
    let (_, body) = app.get("/api/chat/paging/history?limit=3").await;
    assert_eq!(texts(&body), ["m7", "m8", "m9"]);
    let (_, body) = app
        .get(&format!(
            "/api/chat/paging/history?limit=3&before={}",
            ids[7]
        ))
        .await;
    assert_eq!(texts(&body), ["m4", "m5", "m6"]);
    let (_, body) = app
        .get(&format!("/chat/paging/history?limit=50&before={}", ids[2]))
        .await;
    assert_eq!(texts(&body), ["m0", "m1"]);
    let (status, body) = app.get("/api/chat/never-used/history").await;
    assert_eq!(
        (status, body),
        (200, json!({"success": true, "messages": []}))
    );
}

#[tokio::test]
async fn history_rejects_bad_parameters_with_json_errors() {
    let app = spawn_app().await;
    for path in [
        "/api/chat/r/history?limit=0",
        "/api/chat/r/history?limit=1001",
        "/api/chat/r/history?limit=abc",
        "/api/chat/r/history?limit=-1",
        "/api/chat/r/history?before=zzz",
        "/api/chat/bad%20room/history",
    ] {
        let (status, body) = app.get(path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["success"], false);
        assert_eq!(body["error"]["code"], "invalid_payload", "{path}");
        assert!(body["error"]["message"].is_string());
    }
    // A well-formed cursor naming no message of the room.
    let (status, body) = app
        .get("/api/chat/r/history?before=0123456789abcdef01234567")
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("invalid_payload"))
    );
}

#[tokio::test]
async fn rooms_create_list_get_and_privacy() {
    let app = spawn_app().await;
    let as_alice = [("x-user-id", "alice")];
    let as_bob = [("x-user-id", "bob")];
    let as_eve = [("x-user-id", "eve")];
    let (status, body) = app
        .post(
            "/api/chat/rooms",
            &json!({"type": "direct", "participants": ["alice", "bob"]}),
            &as_alice,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let room = body["room"].clone();
    let room_id = room["roomId"].as_str().unwrap().to_string();
    assert_eq!(room["type"], "direct");
    assert_eq!(room["participants"], json!(["alice", "bob"]));
    assert_eq!(room["lastMessage"], Value::Null);
    // The same pair again (from the other side) returns the existing room.
    let (status, body) = app
        .post(
            "/api/chat/rooms",
            &json!({"type": "direct", "participants": ["bob", "alice"]}),
            &as_bob,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["room"]["roomId"], room_id.as_str());
    // The caller must be a participant; a direct room has exactly two.
    let (status, body) = app
        .post(
            "/api/chat/rooms",
            &json!({"type": "direct", "participants": ["alice", "bob"]}),
            &as_eve,
        )
        .await;
    assert_eq!((status, &body["error"]["code"]), (403, &json!("forbidden")));
    for bad in [
        json!({"type": "direct", "participants": ["alice"]}),
        json!({"type": "direct", "participants": ["alice", "bob", "carol"]}),
        json!({"type": "party", "participants": ["alice"]}),
        json!({"type": "group", "participants": "alice"}),
        json!({"type": "group", "participants": ["alice"], "roomId": "bad id"}),
        json!("nope"),
    ] {
        let (status, body) = app.post("/api/chat/rooms", &bad, &as_alice).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_payload");
    }
    let (status, _) = app
        .post(
            "/api/chat/rooms",
            &json!({"type": "group", "participants": ["alice"]}),
            &[],
        )
        .await;
    assert_eq!(status, 401);

    // A private room refuses joins, and its history, to non-participants.
    let mut eve = app.user("eve").await;
    let ack = eve.emit_ack("join_room", json!({"roomId": room_id})).await;
    assert_eq!(ack["error"]["code"], "forbidden");
    let (status, _) = app
        .get_with(&format!("/api/chat/{room_id}/history"), &as_eve)
        .await;
    assert_eq!(status, 403);
    let (status, _) = app
        .get_with(&format!("/api/chat/rooms/{room_id}"), &as_eve)
        .await;
    assert_eq!(status, 403);
    let (status, body) = app.get_with("/api/chat/rooms/nope", &as_alice).await;
    assert_eq!((status, &body["error"]["code"]), (404, &json!("not_found")));

    // Participants chat; lastMessage follows; rooms are listed most recent first.
    let mut alice = app.member("alice", &room_id).await;
    alice.say(&room_id, "hi bob").await;
    app.member("alice", "open-room")
        .await
        .say("open-room", "later")
        .await;
    let (status, body) = app.get_with("/api/chat/rooms", &as_alice).await;
    assert_eq!(status, 200);
    let rooms = body["rooms"].as_array().unwrap();
    let ids: Vec<&str> = rooms
        .iter()
        .map(|r| r["roomId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["open-room", room_id.as_str()]);
    assert_eq!(rooms[1]["lastMessage"]["content"], "hi bob");
    assert_eq!(rooms[1]["lastMessage"]["senderId"], "alice");
    assert!(rooms[1]["lastMessage"]["timestamp"].is_u64());
    let (status, body) = app
        .get_with(&format!("/chat/rooms/{room_id}"), &as_bob)
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["room"]["lastMessage"]["content"], "hi bob");
    let (_, body) = app.get_with("/api/chat/rooms", &as_eve).await;
    assert_eq!(body["rooms"], json!([]));
    let (status, _) = app.get("/api/chat/rooms").await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn the_client_page_is_served_at_root() {
    let app = spawn_app().await;
    let res = reqwest::get(app.url("/")).await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(res.text().await.unwrap().contains("<html"));
}

#[tokio::test]
async fn cors_allows_only_the_configured_origin() {
    let app = crate::support::spawn_app_with(&["--cors-origin", "http://good.example"]).await;
    let client = reqwest::Client::new();
    for (origin, allowed) in [
        ("http://good.example", true),
        ("http://evil.example", false),
    ] {
        for path in ["/health", "/socket.io/?EIO=4&transport=polling"] {
            let res = client
                .get(app.url(path))
                .header("origin", origin)
                .send()
                .await
                .unwrap();
            let header = res
                .headers()
                .get("access-control-allow-origin")
                .map(|v| v.to_str().unwrap().to_string());
            if allowed {
                assert_eq!(header.as_deref(), Some(origin), "{path}");
            } else {
                assert_eq!(header, None, "{path} allowed {origin}");
            }
        }
    }
}
