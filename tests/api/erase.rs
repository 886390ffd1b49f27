//! `chat-service erase --user` with the server's own configuration (issue 18.4): the store it
//! is given by `STORAGE`/`DATA_DIR`, the Redis history cache of `REDIS_URL` and the outbox of
//! `RABBITMQ_URL`. The erased text leaves the Redis list too, and each erased message becomes
//! a `message.deleted` event, published by the server's relay once it runs again.

use std::collections::HashSet;
use std::process::Command;

use redis::AsyncCommands;
use serde_json::{Value, json};

use crate::broker::{BROKER, TestQueue, broker_url, collect_ids};
use crate::support::{TestApp, redis, redis_url, spawn_app_with, unique};

/// The server's arguments on the test Redis, publishing to `queue`.
fn server_args(queue: &TestQueue) -> Vec<String> {
    let mut args = queue.args(BROKER);
    args.extend(["--redis-url".to_string(), redis_url()]);
    args
}

async fn history(app: &TestApp, room: &str) -> Vec<Value> {
    let (status, body) = app
        .get(&format!("/api/chat/{room}/history?limit=100"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["messages"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn erase_with_the_servers_configuration_clears_the_cache_and_notifies() {
    let mut queue = TestQueue::new().await;
    let args = server_args(&queue);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let app = spawn_app_with(&argv).await;
    let (room, alice, bob) = (unique("erase-room"), unique("alice"), unique("bob"));
    let secrets = [unique("alice-secret"), unique("alice-secret")];
    let mut a = app.member(&alice, &room).await;
    let mut b = app.member(&bob, &room).await;
    let mut erased = HashSet::new();
    let mut sent = HashSet::new();
    for s in &secrets {
        let id = a.say(&room, s).await["messageId"]
            .as_str()
            .unwrap()
            .to_string();
        erased.insert(id.clone());
        sent.insert(id);
    }
    let kept = b.say(&room, "bob stays").await["messageId"]
        .as_str()
        .unwrap()
        .to_string();
    sent.insert(kept.clone());
    collect_ids(&mut queue, &sent).await;
    // The history list in Redis holds the three messages, alice's texts included.
    let key = format!("chat:history:{room}");
    let mut r = redis().await;
    let cached: Vec<String> = r.lrange(&key, 0, -1).await.unwrap();
    assert_eq!(cached.len(), 3);
    assert!(cached.iter().any(|i| i.contains(&secrets[0])));
    drop((a, b));
    let data_dir = app.data_dir.clone();
    let mut app = app;
    app.stop().await;

    // The command, configured as the server is (environment only).
    let out = Command::new(env!("CARGO_BIN_EXE_chat-service"))
        .args(["erase", "--user", &alice])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .env("STORAGE", "embedded")
        .env("DATA_DIR", data_dir.path())
        .env("REDIS_URL", redis_url())
        .env("RABBITMQ_URL", broker_url(BROKER))
        .env("RABBITMQ_QUEUE_NEW_MESSAGE", &queue.name)
        .output()
        .expect("run chat-service erase");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), format!("erased 2 messages of {alice}"));

    // Redis: the list keeps three items, alice's two as tombstones without their text.
    let cached: Vec<String> = r.lrange(&key, 0, -1).await.unwrap();
    assert_eq!(cached.len(), 3, "{cached:?}");
    for s in &secrets {
        assert!(cached.iter().all(|i| !i.contains(s.as_str())), "{cached:?}");
    }
    assert!(cached.iter().any(|i| i.contains("bob stays")));

    // The server, back on the same data: history shows the tombstones, and its relay publishes
    // one message.deleted per erased message (the outbox entries the command committed).
    let app = app.restart().await;
    let items = history(&app, &room).await;
    assert_eq!(items.len(), 3);
    for item in &items {
        let id = item["messageId"].as_str().unwrap();
        if erased.contains(id) {
            assert_eq!(
                (&item["deleted"], &item["message"]),
                (&json!(true), &json!("")),
                "{item}"
            );
        } else {
            assert_eq!(item["message"], "bob stays");
        }
    }
    let events = collect_ids(&mut queue, &erased).await;
    let deleted: HashSet<&str> = events
        .iter()
        .filter(|e| e["eventType"] == "message.deleted")
        .map(|e| e["data"]["messageId"].as_str().unwrap())
        .collect();
    assert_eq!(
        deleted,
        erased.iter().map(String::as_str).collect::<HashSet<_>>()
    );
    assert!(
        events
            .iter()
            .all(|e| e["data"]["messageId"] != kept.as_str()),
        "bob's message is not notified again: {events:?}"
    );
    queue.delete().await;
}
