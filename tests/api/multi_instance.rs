//! SPEC 7 in one process: two instances on the same (real) Redis behave, to every client, like
//! one instance. Room and user ids are unique per test; Redis is never flushed.

use redis::AsyncCommands;
use serde_json::{Value, json};

use crate::raw_ws;
use crate::support::{
    HoldProxy, WAIT, own_key, redis, redis_addr, redis_url, spawn_app_with, spawn_redis_app, unique,
};

fn user_ids(users: &Value) -> Vec<String> {
    let mut ids: Vec<String> = users
        .as_array()
        .expect("array")
        .iter()
        .map(|u| u["userId"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// The instances subscribed to the room's channel: on a cluster its sharded subscribers
/// (`PUBSUB SHARDNUMSUB`, summed over the nodes: only the shard of its slot has any).
async fn numsub(room: &str) -> i64 {
    if let Some(nodes) = chat_service::redis_link::cluster_nodes(&redis_url()) {
        let mut n = 0;
        for node in nodes {
            let client = redis::Client::open(node).unwrap();
            let mut c = client.get_multiplexed_async_connection().await.unwrap();
            let (_, k): (String, i64) = redis::cmd("PUBSUB")
                .arg("SHARDNUMSUB")
                .arg(format!("chat:room:{room}"))
                .query_async(&mut c)
                .await
                .unwrap();
            n += k;
        }
        return n;
    }
    let mut r = redis().await;
    let (_, n): (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(format!("chat:room:{room}"))
        .query_async(&mut r)
        .await
        .unwrap();
    n
}

async fn eventually<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    crate::support::eventually(what, WAIT, check).await
}

#[tokio::test]
async fn messages_typing_joins_and_leaves_cross_instances() {
    let (app_a, app_b) = (spawn_redis_app(&[]).await, spawn_redis_app(&[]).await);
    let room = unique("room");
    let (ua, ub) = (unique("ann"), unique("bob"));
    let mut a = app_a.member(&ua, &room).await;
    let mut b = app_b.user(&ub).await;
    let (_, users) = b.join(&room).await;
    assert_eq!(user_ids(&users), {
        let mut v = vec![ua.clone(), ub.clone()];
        v.sort();
        v
    });
    let joined = a.event("user_joined").await;
    assert_eq!(
        joined,
        json!({"roomId": room, "userId": ub, "username": ub})
    );

    let ack = a.say(&room, "hello from A").await;
    let on_b = b.event("new_message").await;
    assert_eq!(on_b["message"], "hello from A");
    assert_eq!(on_b["messageId"], ack["messageId"]);
    assert_eq!(on_b["userId"], ua.as_str());
    assert_eq!(a.event("new_message").await["message"], "hello from A");

    b.emit("typing", json!({"roomId": room, "isTyping": true}));
    let typing = a.event("user_typing").await;
    assert_eq!(
        typing,
        json!({"roomId": room, "userId": ub, "username": ub, "isTyping": true})
    );

    let ack = b.emit_ack("leave_room", json!({"roomId": room})).await;
    assert_eq!(ack["success"], true);
    assert_eq!(
        a.event("user_left").await,
        json!({"roomId": room, "userId": ub, "username": ub})
    );
    // Nobody got an event twice.
    a.say(&room, "marker").await;
    assert_eq!(a.event("new_message").await["message"], "marker");
    assert!(a.received("new_message").is_empty());
    assert!(a.received("user_joined").is_empty());
    assert!(b.received("new_message").is_empty());
}

#[tokio::test]
async fn per_sender_order_holds_across_instances_without_duplicates() {
    let (app_a, app_b) = (
        spawn_redis_app(&["--rate-limit-per-sec", "0"]).await,
        spawn_redis_app(&[]).await,
    );
    let room = unique("order");
    let mut a = app_a.member(&unique("a"), &room).await;
    let mut b = app_b.member(&unique("b"), &room).await;
    let mut c = app_b.member(&unique("c"), &room).await;
    const N: usize = 200;
    let acks: Vec<_> = (0..N)
        .map(|i| {
            a.emit_with_ack(
                "send_message",
                json!({"roomId": room, "message": format!("m{i}")}),
            )
        })
        .collect();
    for ack in acks {
        assert_eq!(ack.await.unwrap()["success"], true);
    }
    for client in [&mut a, &mut b, &mut c] {
        for i in 0..N {
            let m = client.event("new_message").await;
            assert_eq!(m["message"], format!("m{i}"));
        }
    }
    b.say(&room, "end").await;
    for client in [&mut a, &mut b, &mut c] {
        assert_eq!(client.event("new_message").await["message"], "end");
        assert!(client.received("new_message").is_empty(), "duplicates");
    }
}

#[tokio::test]
async fn membership_is_per_user_across_instances_and_disconnect_leaves() {
    let (app_a, app_b) = (spawn_redis_app(&[]).await, spawn_redis_app(&[]).await);
    let room = unique("members");
    let (uu, uw) = (unique("u"), unique("watcher"));
    let mut watcher = app_a.member(&uw, &room).await;
    let u_on_a = app_a.member(&uu, &room).await;
    assert_eq!(watcher.event("user_joined").await["userId"], uu.as_str());
    // The same user on the other instance: no second user_joined.
    let mut u_on_b = app_b.member(&uu, &room).await;
    let mut r = redis().await;
    let members: Vec<String> = r.smembers(format!("chat:room:{room}:users")).await.unwrap();
    assert_eq!(members.len(), 2);
    // Its connection on A goes: still a member (connected on B), no user_left.
    u_on_a.disconnect();
    u_on_b.say(&room, "still here").await;
    assert_eq!(watcher.event("new_message").await["message"], "still here");
    assert!(watcher.received("user_left").is_empty());
    assert!(watcher.received("user_joined").is_empty());
    // Its last connection goes (a disconnect on B): user_left reaches A.
    u_on_b.disconnect();
    assert_eq!(watcher.event("user_left").await["userId"], uu.as_str());
    let members: Vec<String> = r.smembers(format!("chat:room:{room}:users")).await.unwrap();
    assert_eq!(members, vec![uw.clone()]);
    // A newcomer on B sees the members of both instances.
    let mut late = app_b.user(&unique("late")).await;
    let (_, users) = late.join(&room).await;
    let ids = user_ids(&users);
    assert_eq!(ids.len(), 2, "{users}");
    assert!(ids.contains(&uw));
}

#[tokio::test]
async fn presence_hash_tracks_status_socket_and_name() {
    let app_a = spawn_redis_app(&[]).await;
    let user = unique("p");
    let room = unique("proom");
    let c = app_a.member(&user, &room).await;
    let mut r = redis().await;
    let key = format!("user:presence:{user}");
    let h: std::collections::HashMap<String, String> = r.hgetall(&key).await.unwrap();
    assert_eq!(h["status"], "online");
    assert_eq!(h["username"], user);
    // Socket.IO's socket.id, as the Node service stores it (issue 15.2).
    assert_eq!(h["socketId"], c.socket_id);
    assert_eq!(c.socket_id.len(), 20, "{}", c.socket_id);
    assert!(h["lastSeen"].parse::<u64>().unwrap() > 1_600_000_000_000);
    let ttl: i64 = r.ttl(&key).await.unwrap();
    assert!((3500..=3600).contains(&ttl), "ttl {ttl}");
    c.disconnect();
    eventually("presence offline", || {
        let key = key.clone();
        async move {
            let mut r = redis().await;
            let s: Option<String> = r.hget(&key, "status").await.unwrap();
            s.as_deref() == Some("offline")
        }
    })
    .await;
    // A raw WebSocket connection has no socket.id: it stores a random id of the same shape,
    // its own.
    let mut ws = raw_ws::connect(app_a.addr, "/ws").await;
    raw_ws::send(
        &mut ws,
        json!({"event": "authenticate", "data": {"userId": user, "username": user}}),
    )
    .await;
    raw_ws::next(&mut ws, "authenticated").await;
    let h: std::collections::HashMap<String, String> = r.hgetall(&key).await.unwrap();
    assert_eq!(h["status"], "online");
    assert_eq!(h["socketId"].len(), 20, "{}", h["socketId"]);
    assert_ne!(h["socketId"], c.socket_id);
}

#[tokio::test]
async fn instances_subscribe_only_to_rooms_with_local_members() {
    let (app_a, app_b) = (spawn_redis_app(&[]).await, spawn_redis_app(&[]).await);
    let room = unique("subs");
    assert_eq!(numsub(&room).await, 0);
    let mut a1 = app_a.member(&unique("a1"), &room).await;
    assert_eq!(numsub(&room).await, 1);
    let a2 = app_a.member(&unique("a2"), &room).await;
    assert_eq!(numsub(&room).await, 1);
    let b = app_b.member(&unique("b"), &room).await;
    assert_eq!(numsub(&room).await, 2);
    a1.emit_ack("leave_room", json!({"roomId": room})).await;
    assert_eq!(numsub(&room).await, 2);
    a2.disconnect();
    eventually("A unsubscribed", || async { numsub(&room).await == 1 }).await;
    b.disconnect();
    eventually("B unsubscribed", || async { numsub(&room).await == 0 }).await;
}

#[tokio::test]
async fn raw_websocket_and_socketio_clients_chat_across_instances() {
    let (app_a, app_b) = (spawn_redis_app(&[]).await, spawn_redis_app(&[]).await);
    let room = unique("mixed");
    let (uw, us) = (unique("ws"), unique("sio"));
    let mut sio = app_a.member(&us, &room).await;
    let mut ws = raw_ws::connect(app_b.addr, "/ws").await;
    raw_ws::send(
        &mut ws,
        json!({"event": "authenticate", "data": {"userId": uw, "username": uw}}),
    )
    .await;
    raw_ws::next(&mut ws, "authenticated").await;
    raw_ws::send(
        &mut ws,
        json!({"event": "join_room", "data": {"roomId": room}, "id": 1}),
    )
    .await;
    raw_ws::next(&mut ws, "room_users").await;
    assert_eq!(sio.event("user_joined").await["userId"], uw.as_str());
    raw_ws::send(
        &mut ws,
        json!({"event": "send_message", "data": {"roomId": room, "message": "from raw ws"}}),
    )
    .await;
    assert_eq!(sio.event("new_message").await["message"], "from raw ws");
    assert_eq!(
        raw_ws::next(&mut ws, "new_message").await["data"]["message"],
        "from raw ws"
    );
    sio.say(&room, "from socket.io").await;
    assert_eq!(
        raw_ws::next(&mut ws, "new_message").await["data"]["message"],
        "from socket.io"
    );
}

fn texts(messages: &Value) -> Vec<String> {
    messages
        .as_array()
        .expect("array")
        .iter()
        .map(|m| m["message"].as_str().unwrap().to_string())
        .collect()
}

/// Each instance here has its own embedded store: what B knows of A's messages comes from
/// the shared `chat:history:{roomId}` list.
#[tokio::test]
async fn history_is_shared_through_the_redis_cache() {
    let (app_a, app_b) = (
        spawn_redis_app(&["--max-message-history", "5", "--message-history-ttl", "600"]).await,
        spawn_redis_app(&["--max-message-history", "5", "--message-history-ttl", "600"]).await,
    );
    let room = unique("hist");
    let mut a = app_a.member(&unique("a"), &room).await;
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(a.say(&room, &format!("m{i}")).await["messageId"].clone());
    }
    let mut r = redis().await;
    let key = format!("chat:history:{room}");
    let cached: Vec<String> = r.lrange(&key, 0, -1).await.unwrap();
    assert_eq!(cached.len(), 5);
    let first: Value = serde_json::from_str(&cached[0]).unwrap();
    assert_eq!(first["message"], "m3");
    assert_eq!(
        crate::support::keys(&first),
        [
            "message",
            "messageId",
            "messageType",
            "roomId",
            "timestamp",
            "userId",
            "username"
        ]
    );
    let ttl: i64 = r.ttl(&key).await.unwrap();
    assert!((1..=600).contains(&ttl), "ttl {ttl}");

    // B has none of them in its own store: join history, REST history and `since` come from
    // the cache window.
    let mut b = app_b.user(&unique("b")).await;
    let (history, _) = b.join(&room).await;
    assert_eq!(texts(&history), ["m3", "m4", "m5", "m6", "m7"]);
    assert_eq!(
        app_b.stored_texts(&room).await,
        ["m3", "m4", "m5", "m6", "m7"]
    );
    let (status, body) = app_b
        .get(&format!("/api/chat/{room}/history?limit=2"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(texts(&body["messages"]), ["m6", "m7"]);
    let (status, body) = app_b
        .get(&format!(
            "/api/chat/{room}/history?limit=2&before={}",
            ids[6].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(texts(&body["messages"]), ["m4", "m5"]);
    let mut c = app_b.user(&unique("c")).await;
    c.emit_ack("join_room", json!({"roomId": room, "since": ids[5]}))
        .await;
    assert_eq!(texts(&c.event("message_history").await), ["m6", "m7"]);
    // A still answers beyond the window from its durable store.
    assert_eq!(app_a.stored_texts(&room).await.len(), 8);
}

/// A `since` resume on an instance whose own store has none of the room's messages: found
/// among the list's newest items, or (an older cursor) in the whole list, never cut short.
#[tokio::test]
async fn a_resume_reads_the_newest_items_first_and_the_whole_list_for_an_older_cursor() {
    let args = ["--rate-limit-per-sec", "0"];
    let (app_a, app_b) = (spawn_redis_app(&args).await, spawn_redis_app(&args).await);
    let room = unique("tail");
    let mut a = app_a.member(&unique("a"), &room).await;
    let mut ids = Vec::new();
    for i in 0..100 {
        ids.push(a.say(&room, &format!("m{i}")).await["messageId"].clone());
    }
    let expected = |from: usize| (from..100).map(|i| format!("m{i}")).collect::<Vec<_>>();
    for since in [90, 40, 10] {
        let mut c = app_b.user(&unique("c")).await;
        c.emit_ack("join_room", json!({"roomId": room, "since": ids[since]}))
            .await;
        let history = c.event("message_history").await;
        assert_eq!(texts(&history), expected(since + 1), "since m{since}");
    }
}

async fn authenticate(
    app: &crate::support::TestApp,
    user: &str,
) -> (crate::support::SioClient, Value) {
    let mut c = app.client().await;
    let ack = c
        .emit_ack("authenticate", json!({"userId": user, "username": user}))
        .await;
    (c, ack)
}

#[tokio::test]
async fn connection_limit_counts_every_instance() {
    let args = ["--max-connections-per-user", "2"];
    let (app_a, app_b) = (spawn_redis_app(&args).await, spawn_redis_app(&args).await);
    let user = unique("lim");
    let first = app_a.user(&user).await;
    let _second = app_b.user(&user).await;
    let (mut third, ack) = authenticate(&app_a, &user).await;
    assert_eq!(ack["error"]["code"], "too_many_connections");
    assert_eq!(third.event("error").await["code"], "too_many_connections");
    third.closed().await;
    let (_, ack) = authenticate(&app_b, &user).await;
    assert_eq!(ack["error"]["code"], "too_many_connections");
    // A slot freed on A admits a connection on B.
    first.disconnect();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_c, ack) = authenticate(&app_b, &user).await;
        if ack["success"] == true {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never re-admitted: {ack}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// An instance that died with connections open leaves entries nobody refreshes: they expire
/// and stop counting (no permanent lock-out), and its users leave the room's member set.
#[tokio::test]
async fn entries_of_a_dead_instance_expire() {
    let app = spawn_redis_app(&["--max-connections-per-user", "2"]).await;
    let (user, room, ghost) = (unique("heal"), unique("healroom"), unique("ghost"));
    let now = chat_service::domain::now_ms();
    let mut r = redis().await;
    // Two connections of `user` on a dead instance: one long expired, one expiring soon.
    let conns = own_key(
        &format!("user:presence:{user}"),
        ":conns",
        format!("chat:user:{user}:conns"),
    );
    let _: () = r.zadd(&conns, "dead:1", now - 60_000).await.unwrap();
    let _: () = r.zadd(&conns, "dead:2", now + 400).await.unwrap();
    let _: () = r.pexpire(&conns, 60_000).await.unwrap();
    // A ghost member of the room, from the dead instance.
    let room_conns = own_key(
        &format!("chat:room:{room}:users"),
        ":conns",
        format!("chat:room:{room}:conns"),
    );
    let _: () = r
        .zadd(&room_conns, format!("dead:3:{ghost}"), now - 1)
        .await
        .unwrap();
    let _: () = r
        .sadd(format!("chat:room:{room}:users"), &ghost)
        .await
        .unwrap();
    let _: () = r.pexpire(&room_conns, 60_000).await.unwrap();

    // The expired entry does not count: one slot is free.
    let mut c1 = app.user(&user).await;
    let (_, ack) = authenticate(&app, &user).await;
    assert_eq!(ack["error"]["code"], "too_many_connections");
    // Once the other dead entry expires, a second connection is admitted.
    let deadline = tokio::time::Instant::now() + WAIT;
    let _c2 = loop {
        let (c, ack) = authenticate(&app, &user).await;
        if ack["success"] == true {
            break c;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never admitted: {ack}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    // The ghost is no member any more.
    let (_, users) = c1.join(&room).await;
    assert_eq!(user_ids(&users), vec![user.clone()]);
    let members: Vec<String> = r.smembers(format!("chat:room:{room}:users")).await.unwrap();
    assert_eq!(members, vec![user.clone()]);
}

#[tokio::test]
async fn a_client_message_id_retried_on_another_instance_returns_the_original() {
    let (app_a, app_b) = (spawn_redis_app(&[]).await, spawn_redis_app(&[]).await);
    let (room, user, cmid) = (unique("idem"), unique("u"), unique("cmid"));
    let mut a = app_a.member(&user, &room).await;
    let payload = json!({"roomId": room, "message": "once", "clientMessageId": cmid});
    let original = a.emit_ack("send_message", payload.clone()).await;
    assert_eq!(original["success"], true);
    let mut b = app_b.member(&user, &room).await;
    let retry = b.emit_ack("send_message", payload).await;
    assert_eq!(retry, original);
    b.say(&room, "marker").await;
    assert_eq!(a.event("new_message").await["message"], "once");
    assert_eq!(a.event("new_message").await["message"], "marker");
}

/// Issue 15.4, the interleaving behind a message lost in a rolling restart: many clients
/// resume on a restarted instance at once; the room's first local member starts the Redis
/// SUBSCRIBE, and the others, not being first, read their history before that subscription
/// is live. A message published in between reached none of them. Here a proxy holds instance
/// A's SUBSCRIBE: the second joiner must not be answered while it is held (the old code
/// answered at once), and after it is let through, a message sent on instance B reaches
/// both joiners exactly once.
#[tokio::test]
async fn a_joiner_reads_history_only_once_its_rooms_subscription_is_live() {
    redis().await;
    let Some(target) = redis_addr() else { return };
    let proxy = HoldProxy::start(target, "SUBSCRIBE").await;
    let app_a = spawn_app_with(&["--redis-url", &format!("redis://{}", proxy.addr)]).await;
    let app_b = spawn_redis_app(&[]).await;
    let room = unique("live");
    let mut sender = app_b.member(&unique("sender"), &room).await;

    proxy.hold();
    let mut first = app_a.user(&unique("first")).await;
    let first_join = first.emit_with_ack("join_room", json!({"roomId": room}));
    proxy.wait_held(1).await;
    let mut second = app_a.user(&unique("second")).await;
    let mut second_join = second.emit_with_ack("join_room", json!({"roomId": room}));
    // Absence can only be checked for a while: an answer within 1 s, with the subscription
    // held, is the bug.
    let early = tokio::time::timeout(std::time::Duration::from_secs(1), &mut second_join).await;
    assert!(
        early.is_err(),
        "the second joiner was answered before its room's subscription was live: {early:?}"
    );
    let said = sender.say(&room, "in the window").await;
    assert_eq!(said["success"], true, "{said}");
    proxy.release();
    assert_eq!(
        tokio::time::timeout(WAIT, first_join)
            .await
            .unwrap()
            .unwrap()["success"],
        true
    );
    assert_eq!(
        tokio::time::timeout(WAIT, second_join)
            .await
            .unwrap()
            .unwrap()["success"],
        true
    );
    sender.say(&room, "after").await;
    for c in [&mut first, &mut second] {
        let history = c.event("message_history").await;
        let in_history = history
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["message"] == "in the window")
            .count();
        assert_eq!(in_history, 1, "{history}");
        // Published before A's subscription was live: in the history only, not also live
        // (live events arrive in order, so it would be before "after").
        c.event_where("new_message", |m| m["message"] == "after")
            .await;
        let live: Vec<Value> = c.received("new_message");
        assert!(
            live.iter().all(|m| m["message"] != "in the window"),
            "delivered twice: {live:?}"
        );
    }
}
