//! `GET /metrics` (issue 18.1): the counters move as a scripted chat happens (connections by
//! transport and close reason, events by outcome, messages stored, deliveries, rate-limit
//! refusals, history reads), and `METRICS_TOKEN` protects the endpoint. A real Prometheus
//! scraping a real process is `prometheus.rs`.

use serde_json::json;

use crate::support::{Endpoint, WAIT, eventually, spawn_app, spawn_app_with};

/// The exposition text of an instance (no token).
pub async fn scrape(app: &Endpoint) -> String {
    scrape_with(app, None).await.2
}

async fn scrape_with(app: &Endpoint, token: Option<&str>) -> (u16, String, String) {
    let mut req = reqwest::Client::new().get(app.url("/metrics"));
    if let Some(token) = token {
        req = req.header("authorization", token);
    }
    let res = req.send().await.expect("GET /metrics");
    let status = res.status().as_u16();
    let content_type = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, content_type, res.text().await.unwrap())
}

/// The value of the one series of `name` that carries every label of `labels` (panics when
/// there is none or more than one).
pub fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
            let wanted = n == name
                && labels
                    .iter()
                    .all(|(k, want)| rest.contains(&format!("{k}=\"{want}\"")));
            wanted.then(|| v.parse().unwrap())
        })
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?} in\n{text}");
    found[0]
}

/// Waits until the metric has the value (for what happens after the last event a client
/// sees, such as the end of a disconnected session).
pub async fn wait_for(app: &Endpoint, name: &str, labels: &[(&str, &str)], want: f64) {
    eventually(&format!("{name} {labels:?} = {want}"), WAIT, || async {
        value(&scrape(app).await, name, labels) == want
    })
    .await;
}

#[tokio::test]
async fn a_scripted_chat_moves_the_counters() {
    let app = spawn_app_with(&["--rate-limit-per-sec", "1", "--rate-limit-burst", "2"]).await;
    let before = scrape(&app).await;
    assert_eq!(
        value(
            &before,
            "chat_connections_open",
            &[("transport", "socketio")]
        ),
        0.0
    );
    assert_eq!(value(&before, "chat_messages_stored_total", &[]), 0.0);
    let instance = before
        .lines()
        .find_map(|l| l.split("instance_id=\"").nth(1))
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_string();
    assert!(
        before
            .lines()
            .filter(|l| !l.starts_with('#'))
            .all(|l| l.contains(&format!("instance_id=\"{instance}\""))),
        "every series carries the instance id"
    );

    let mut alice = app.member("alice", "metrics-room").await;
    let mut bob = app.member("bob", "metrics-room").await;
    alice.event("user_joined").await;
    alice.say("metrics-room", "one").await;
    alice.say("metrics-room", "two").await;
    let refused = alice
        .emit_ack(
            "send_message",
            json!({"roomId": "metrics-room", "message": "three"}),
        )
        .await;
    assert_eq!(refused["error"]["code"], "rate_limited");
    let unknown = alice.emit_ack("no_such_event", json!({})).await;
    assert_eq!(unknown["error"]["code"], "invalid_payload");
    bob.event_where("new_message", |m| m["message"] == "two")
        .await;

    let text = scrape(&app).await;
    let v = |name: &str, labels: &[(&str, &str)]| value(&text, name, labels);
    assert_eq!(
        v(
            "chat_connections_opened_total",
            &[("transport", "socketio")]
        ),
        2.0
    );
    assert_eq!(
        v("chat_connections_open", &[("transport", "socketio")]),
        2.0
    );
    assert_eq!(v("chat_connections_open", &[("transport", "polling")]), 0.0);
    assert_eq!(v("chat_authenticated_connections", &[]), 2.0);
    assert_eq!(v("chat_authenticated_users", &[]), 2.0);
    assert_eq!(v("chat_rooms_local", &[]), 1.0);
    let events = |event: &str, outcome: &str| {
        v(
            "chat_events_total",
            &[("event", event), ("outcome", outcome)],
        )
    };
    assert_eq!(events("authenticate", "ok"), 2.0);
    assert_eq!(events("join_room", "ok"), 2.0);
    assert_eq!(events("send_message", "ok"), 2.0);
    assert_eq!(events("send_message", "rate_limited"), 1.0);
    assert_eq!(events("other", "invalid_payload"), 1.0);
    assert_eq!(v("chat_messages_stored_total", &[]), 2.0);
    assert_eq!(v("chat_rate_limited_total", &[("limit", "messages")]), 1.0);
    assert_eq!(v("chat_rate_limited_total", &[("limit", "events")]), 0.0);
    // bob's user_joined to alice, then each message to both members.
    assert_eq!(v("chat_deliveries_total", &[]), 5.0);
    assert_eq!(v("chat_bus_published_total", &[("event", "message")]), 2.0);
    assert_eq!(v("chat_bus_received_total", &[("event", "message")]), 2.0);
    // The refused send never reached the store.
    assert_eq!(v("chat_durable_write_seconds_count", &[]), 2.0);
    assert_eq!(
        v("chat_durable_write_seconds_bucket", &[("le", "+Inf")]),
        2.0
    );
    assert!(v("chat_durable_write_seconds_sum", &[]) > 0.0);
    assert_eq!(v("chat_delivery_latency_seconds_count", &[]), 2.0);
    // The two joins read the history from the store (there is no Redis cache here).
    assert_eq!(v("chat_history_reads_total", &[("source", "store")]), 2.0);
    assert_eq!(v("chat_history_reads_total", &[("source", "cache")]), 0.0);
    assert_eq!(v("chat_store_errors_total", &[("kind", "internal")]), 0.0);
    assert!(v("process_resident_memory_bytes", &[]) > 0.0);
    assert!(v("process_open_fds", &[]) > 0.0);
    assert!(v("process_threads", &[]) >= 1.0);
    // At least the connection tasks of alice and bob, and the app's own.
    let tasks = v("chat_runtime_tasks", &[]);
    assert!(tasks >= 2.0, "{tasks}");

    bob.disconnect();
    wait_for(
        &app,
        "chat_connections_closed_total",
        &[("transport", "socketio"), ("reason", "client")],
        1.0,
    )
    .await;
    let text = scrape(&app).await;
    assert_eq!(
        value(&text, "chat_connections_open", &[("transport", "socketio")]),
        1.0
    );
    assert_eq!(value(&text, "chat_authenticated_users", &[]), 1.0);
    assert_eq!(value(&text, "chat_rooms_local", &[]), 1.0);
    alice.disconnect();
    wait_for(&app, "chat_rooms_local", &[], 0.0).await;
    wait_for(&app, "chat_authenticated_users", &[], 0.0).await;
}

/// The SPEC 10 events are room events of their own kind on the bus (a regression: the bus
/// counters once had room for the first four kinds only, and publishing an edit panicked).
#[tokio::test]
async fn lifecycle_events_are_counted_by_kind() {
    let app = spawn_app().await;
    let mut alice = app.member("alice", "metrics-life").await;
    let id = alice.say("metrics-life", "hi").await["messageId"].clone();
    for (event, extra) in [
        ("edit_message", json!({"message": "hello"})),
        ("add_reaction", json!({"emoji": "👍"})),
        ("mark_read", json!({})),
        ("delete_message", json!({})),
    ] {
        let mut data = json!({"roomId": "metrics-life", "messageId": id});
        data.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let ack = alice.emit_ack(event, data).await;
        assert_eq!(ack["success"], true, "{event}: {ack}");
    }
    alice.event("message_deleted").await;
    let text = scrape(&app).await;
    for kind in ["message", "edited", "reaction", "read", "deleted"] {
        assert_eq!(
            value(&text, "chat_bus_published_total", &[("event", kind)]),
            1.0,
            "{kind}"
        );
        assert_eq!(
            value(&text, "chat_bus_received_total", &[("event", kind)]),
            1.0,
            "{kind}"
        );
    }
}

#[tokio::test]
async fn sessions_are_counted_by_transport_and_close_reason() {
    let app = spawn_app_with(&[
        "--max-connections-per-user",
        "1",
        "--auth-timeout-secs",
        "1",
        "--event-rate-limit-per-sec",
        "1",
        "--event-rate-limit-burst",
        "3",
    ])
    .await;
    // Limit: a second connection of the same user is refused and closed.
    let _first = app.user("limited").await;
    let mut second = app.client().await;
    let ack = second
        .emit_ack(
            "authenticate",
            json!({"userId": "limited", "username": "limited"}),
        )
        .await;
    assert_eq!(ack["error"]["code"], "too_many_connections");
    second.closed().await;
    wait_for(
        &app,
        "chat_connections_closed_total",
        &[("transport", "socketio"), ("reason", "limit")],
        1.0,
    )
    .await;

    // Timeout: never authenticates.
    let mut idle = app.client().await;
    idle.closed().await;
    wait_for(
        &app,
        "chat_connections_closed_total",
        &[("transport", "socketio"), ("reason", "timeout")],
        1.0,
    )
    .await;

    // The per-connection event budget: 3 events, then refusals.
    let mut busy = app.member("busy", "budget").await;
    let ack = busy
        .emit_ack("typing", json!({"roomId": "budget", "isTyping": true}))
        .await;
    assert_eq!(ack["success"], true, "{ack}");
    let ack = busy
        .emit_ack("typing", json!({"roomId": "budget", "isTyping": false}))
        .await;
    assert_eq!(ack["error"]["code"], "rate_limited", "{ack}");
    let text = scrape(&app).await;
    assert_eq!(
        value(&text, "chat_rate_limited_total", &[("limit", "events")]),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "chat_events_total",
            &[("event", "typing"), ("outcome", "rate_limited")]
        ),
        1.0
    );

    // Raw WebSocket: opened, then closed by the client.
    let (mut raw, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", app.addr))
        .await
        .unwrap();
    wait_for(&app, "chat_connections_open", &[("transport", "raw")], 1.0).await;
    raw.close(None).await.unwrap();
    wait_for(
        &app,
        "chat_connections_closed_total",
        &[("transport", "raw"), ("reason", "client")],
        1.0,
    )
    .await;
    assert_eq!(
        value(
            &scrape(&app).await,
            "chat_connections_opened_total",
            &[("transport", "raw")]
        ),
        1.0
    );

    // Socket.IO long-polling: the handshake opens a polling session.
    let open = reqwest::get(app.url("/socket.io/?EIO=4&transport=polling"))
        .await
        .unwrap();
    assert_eq!(open.status(), 200);
    let text = scrape(&app).await;
    assert_eq!(
        value(
            &text,
            "chat_connections_opened_total",
            &[("transport", "polling")]
        ),
        1.0
    );
    assert_eq!(
        value(&text, "chat_connections_open", &[("transport", "polling")]),
        1.0
    );
}

#[tokio::test]
async fn the_token_protects_the_endpoint() {
    let app = spawn_app_with(&["--metrics-token", "m3trics"]).await;
    for header in [
        None,
        Some("Bearer wrong"),
        Some("Basic m3trics"),
        Some("Bearer m3trics2"),
    ] {
        let res = reqwest::Client::new().get(app.url("/metrics"));
        let res = match header {
            Some(h) => res.header("authorization", h),
            None => res,
        }
        .send()
        .await
        .unwrap();
        assert_eq!(res.status(), 401, "{header:?}");
        assert_eq!(res.headers()["www-authenticate"], "Bearer");
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "auth_failed");
    }
    let (status, content_type, text) = scrape_with(&app, Some("Bearer m3trics")).await;
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    assert!(text.contains("# TYPE chat_durable_write_seconds histogram"));
    // The document of this instance declares the token; one without declares none.
    let (_, doc) = app.get("/api/openapi.json").await;
    assert_eq!(
        doc["paths"]["/metrics"]["get"]["security"],
        json!([{"metricsToken": []}])
    );
    assert!(doc["paths"]["/metrics"]["get"]["responses"]["401"].is_object());
    let open = spawn_app().await;
    let (status, _, _) = scrape_with(&open, None).await;
    assert_eq!(status, 200);
    let (_, doc) = open.get("/api/openapi.json").await;
    assert_eq!(doc["paths"]["/metrics"]["get"]["security"], json!([]));
    assert!(doc["paths"]["/metrics"]["get"]["responses"]["401"].is_null());
}

#[tokio::test]
async fn with_redis_the_bus_and_the_history_cache_are_counted() {
    let app = crate::support::spawn_redis_app(&["--history-on-join", "1"]).await;
    let room = crate::support::unique("metrics-redis");
    let mut alice = app.member("alice", &room).await;
    alice.say(&room, "cached").await;
    // The second join's history (the newest message) comes from the Redis list alone.
    let _bob = app.member("bob", &room).await;
    let text = scrape(&app).await;
    assert_eq!(value(&text, "chat_redis_up", &[]), 1.0);
    assert_eq!(
        value(&text, "chat_history_reads_total", &[("source", "cache")]),
        1.0
    );
    // alice's join (an empty list) was answered by the durable store.
    assert_eq!(
        value(&text, "chat_history_reads_total", &[("source", "store")]),
        1.0
    );
    // Her join and her message, then bob's join, left for the other instances.
    wait_for(&app, "chat_bus_remote_sent_total", &[], 3.0).await;
    wait_for(&app, "chat_bus_queued", &[], 0.0).await;
}

/// `chat_runtime_tasks` follows the connections: up by one per open session, back down when
/// they close (a task leak would keep it up: the soak in BENCHMARKS.md watches it).
#[tokio::test]
async fn runtime_tasks_follow_the_connections() {
    let app = spawn_app().await;
    let tasks = |text: &str| value(text, "chat_runtime_tasks", &[]);
    let base = tasks(&scrape(&app).await);
    let mut clients = Vec::new();
    for i in 0..20 {
        clients.push(app.user(&format!("tasks-{i}")).await);
    }
    let open = tasks(&scrape(&app).await);
    assert!(open >= base + 20.0, "{base} -> {open}");
    for c in &clients {
        c.disconnect();
    }
    drop(clients);
    eventually("the sessions' tasks end", WAIT, || async {
        let now = tasks(&scrape(&app).await);
        eprintln!("tasks: {base} before, {open} open, {now} now");
        now < base + 5.0
    })
    .await;
}
