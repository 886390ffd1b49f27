//! A rolling restart (issue 15.4): two instances on Redis, each on its own embedded store.
//! 24 receivers and 4 senders chat at about 60 messages a second in 4 rooms while instance 1
//! is stopped with SIGTERM and started again. Its receivers resume with `since` (the last
//! message they got), half of them on instance 2 at once, half on instance 1 once it is back;
//! its senders retry what was not acked on instance 2, with the same `clientMessageId`. Every
//! acked message reaches every receiver of its room, live or by the resume; 20 restarts in a
//! row, each with fresh rooms.
//!
//! The loss this scenario once showed (1 run in 6) was a resume reading history before its
//! room's subscription was live; `tests/api/multi_instance.rs` forces that interleaving.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::procs::{CHAT_BIN, Service, chat_command};
use crate::support::{Endpoint, SioClient, redis, redis_url, unique};
use crate::traffic::{Sent, send};

const RUNS: usize = 20;
const RECEIVERS: usize = 24;
const SENDERS: usize = 4;
const ROOMS: usize = 4;
/// Each sender's pace: 4 senders at 15 messages a second.
const PACE: Duration = Duration::from_millis(66);
/// Chat before the SIGTERM, and after the restart.
const CHAT: Duration = Duration::from_millis(400);
/// How long the acked messages may take to reach every receiver.
const DELIVERY: Duration = Duration::from_secs(20);

/// Where an instance is now: `(generation, address)`; the address is `None` while it is down,
/// the generation counts its starts.
type Whereabouts = watch::Sender<(usize, Option<SocketAddr>)>;

/// The ids a receiver got in its room, in arrival order (live, then each resume's history).
type Seen = Arc<Mutex<Vec<String>>>;

fn endpoint(addr: SocketAddr) -> Endpoint {
    Endpoint { addr }
}

/// Waits for an address of instance `at` of at least `generation`.
async fn address(at: &Whereabouts, generation: usize) -> (usize, SocketAddr) {
    let mut rx = at.subscribe();
    let v = tokio::time::timeout(
        Duration::from_secs(60),
        rx.wait_for(|(g, a)| *g >= generation && a.is_some()),
    )
    .await
    .expect("the instance came back")
    .expect("whereabouts");
    (v.0, v.1.unwrap())
}

/// Joins `room` (with `since` when resuming) and records the history it brings.
async fn join(addr: SocketAddr, user: &str, room: &str, seen: &Seen) -> SioClient {
    let mut client = endpoint(addr).user(user).await;
    let since = seen.lock().last().cloned();
    let mut cmd = json!({"roomId": room});
    if let Some(since) = &since {
        cmd["since"] = json!(since);
    }
    let ack = client.emit_ack("join_room", cmd).await;
    assert_eq!(
        ack["success"], true,
        "{user}: join {room} since {since:?}: {ack}"
    );
    let history = client.event("message_history").await;
    let mut seen = seen.lock();
    for m in history.as_array().expect("history") {
        seen.push(m["messageId"].as_str().unwrap().to_string());
    }
    drop(seen);
    client
}

/// A receiver: records every `new_message` of its room; when its connection closes it resumes
/// on instance `resume_on` (the other one, or its own once restarted).
#[allow(clippy::too_many_arguments)]
async fn receive(
    user: String,
    room: String,
    home: usize,
    resume_on: usize,
    instances: Arc<[Whereabouts; 2]>,
    seen: Seen,
    joined: Arc<AtomicUsize>,
    stop: CancellationToken,
) -> usize {
    let (mut generation, addr) = address(&instances[home], 0).await;
    let mut client = join(addr, &user, &room, &seen).await;
    joined.fetch_add(1, Ordering::AcqRel);
    let mut resumes = 0;
    loop {
        client
            .consume_until("new_message", Duration::from_millis(100), |m| {
                if m["roomId"] == room.as_str() {
                    seen.lock()
                        .push(m["messageId"].as_str().unwrap().to_string());
                }
                false
            })
            .await;
        if stop.is_cancelled() {
            return resumes;
        }
        if client.is_closed() {
            // Resuming on its own instance needs its next start.
            let wanted = if resume_on == home { generation + 1 } else { 0 };
            let (g, addr) = address(&instances[resume_on], wanted).await;
            if resume_on == home {
                generation = g;
            }
            client = join(addr, &user, &room, &seen).await;
            resumes += 1;
        }
    }
}

/// A sender: one message every `PACE` until `stop`; a send whose connection died is retried
/// on instance 2 (index 1) with the same `clientMessageId` until acked. Returns the acked sends.
async fn chat(
    user: String,
    room: String,
    home: usize,
    instances: Arc<[Whereabouts; 2]>,
    stop: CancellationToken,
) -> Vec<Sent> {
    let (_, addr) = address(&instances[home], 0).await;
    let mut client = endpoint(addr).member(&user, &room).await;
    let mut acked = Vec::new();
    let mut tick = tokio::time::interval(PACE);
    for n in 1.. {
        tick.tick().await;
        if stop.is_cancelled() {
            break;
        }
        let text = format!("{user}-{n}");
        loop {
            let s = send(&mut client, "restart", &room, &text).await;
            if s.acked() {
                acked.push(s);
                break;
            }
            assert!(
                client.is_closed(),
                "{user}: refused on a live connection: {s:?}"
            );
            let (_, addr) = address(&instances[1], 0).await;
            client = endpoint(addr).member(&user, &room).await;
        }
    }
    acked
}

/// SIGTERM, then waits (without blocking the runtime) until the process is gone.
async fn terminate(service: &mut Service) {
    let pid = service.proc.pid().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success(), "kill -TERM {pid}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !service.proc.exited() {
        assert!(
            Instant::now() < deadline,
            "no exit after SIGTERM\n{}",
            service.proc.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn no_message_is_lost_in_20_rolling_restarts() {
    redis().await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let url = redis_url();
    let start = |i: usize| {
        let data = dirs[i].path().join("data");
        let log = dirs[i].path().join("chat-service.log");
        let mut cmd = Command::new(CHAT_BIN);
        cmd.env_clear().current_dir(dirs[i].path());
        let env = [
            ("HOST", "127.0.0.1"),
            ("REDIS_URL", url.as_str()),
            ("STORAGE", "embedded"),
            ("DATA_DIR", data.to_str().unwrap()),
            ("RUST_LOG", "warn"),
        ];
        let cmd = chat_command(cmd, &env);
        async move {
            Service::start(
                &format!("chat-service {}", i + 1),
                cmd,
                Ipv4Addr::LOCALHOST,
                &log,
            )
            .await
        }
    };
    let mut one = start(0).await;
    let two = start(1).await;
    let instances: Arc<[Whereabouts; 2]> = Arc::new([
        watch::Sender::new((0, Some(one.addr))),
        watch::Sender::new((0, Some(two.addr))),
    ]);
    let mut report = Vec::new();
    for run in 1..=RUNS {
        let rooms: Vec<String> = (0..ROOMS).map(|_| unique("roll")).collect();
        let stop_receivers = CancellationToken::new();
        let joined = Arc::new(AtomicUsize::new(0));
        let receivers: Vec<_> = (0..RECEIVERS)
            .map(|i| {
                let (home, room) = (i % 2, rooms[i % ROOMS].clone());
                // Instance 1's receivers: every other one resumes on instance 2.
                let resume_on = if home == 0 && (i / 2) % 2 == 0 {
                    1
                } else {
                    home
                };
                let seen: Seen = Arc::default();
                let task = tokio::spawn(receive(
                    unique(&format!("r{i}")),
                    room.clone(),
                    home,
                    resume_on,
                    instances.clone(),
                    seen.clone(),
                    joined.clone(),
                    stop_receivers.clone(),
                ));
                (room, seen, task)
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        while joined.load(Ordering::Acquire) < RECEIVERS {
            assert!(
                Instant::now() < deadline,
                "run {run}: receivers did not join"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let stop_senders = CancellationToken::new();
        let senders: Vec<_> = (0..SENDERS)
            .map(|i| {
                tokio::spawn(chat(
                    unique(&format!("s{i}")),
                    rooms[i % ROOMS].clone(),
                    i % 2,
                    instances.clone(),
                    stop_senders.clone(),
                ))
            })
            .collect();

        // The scenario's timing: chat, restart instance 1 under load, chat on.
        tokio::time::sleep(CHAT).await;
        let generation = instances[0].borrow().0;
        instances[0].send_replace((generation, None));
        terminate(&mut one).await;
        one = start(0).await;
        instances[0].send_replace((generation + 1, Some(one.addr)));
        tokio::time::sleep(CHAT).await;
        stop_senders.cancel();
        let mut sent = Vec::new();
        for s in senders {
            sent.extend(s.await.expect("sender"));
        }

        let deadline = Instant::now() + DELIVERY;
        loop {
            let missing: Vec<(usize, usize)> = receivers
                .iter()
                .enumerate()
                .map(|(i, (room, seen, _))| {
                    let seen: HashSet<String> = seen.lock().iter().cloned().collect();
                    let lost = sent
                        .iter()
                        .filter(|s| &s.room == room)
                        .filter(|s| !seen.contains(s.id.as_deref().unwrap()))
                        .count();
                    (i, lost)
                })
                .filter(|(_, lost)| *lost > 0)
                .collect();
            if missing.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "run {run}: acked messages never reached (receiver, how many): {missing:?} \
                 of {} acked\n{}\n{}",
                sent.len(),
                one.proc.log_tail(),
                two.proc.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop_receivers.cancel();
        let mut resumes = 0;
        for (_, _, task) in receivers {
            resumes += task.await.expect("receiver");
        }
        assert!(
            resumes >= RECEIVERS / 2,
            "run {run}: instance 1's receivers did not all resume ({resumes})"
        );
        report.push(format!(
            "run {run}: {} acked, {resumes} resumes",
            sent.len()
        ));
    }
    eprintln!("rolling restarts: {}", report.join("; "));
}
