//! Network faults between real hosts: two chat-service instances (A and B), Redis and
//! PostgreSQL, each in its own namespace. A reaches Redis and PostgreSQL over wires the test
//! impairs; B over veth pairs that stay clean. Both instances use the shared PostgreSQL (the
//! production layout), Redis for the bus, presence and the history cache. Clients (the test)
//! reach the instances over their own veth pairs. Every scenario asserts that no acked message
//! is lost and that the cluster heals by itself, without a restart.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::net::{Impairment, Lab, Wire};
use crate::procs::{self, CHAT_BIN, Proc, Service, chat_command};
use crate::support::{Endpoint, WAIT, eventually, unique};
use crate::traffic::{
    Member, Sent, chat_for, check_stored, expect_everywhere, latencies, round, send, stored,
};

/// Both instances, their dependencies and the lab. Fields drop in this order: the
/// instances, then Redis and PostgreSQL, then the lab's namespaces.
struct Cluster {
    a: Service,
    b: Service,
    redis: Proc,
    pg: Proc,
    /// A's path to Redis.
    a_redis: Wire,
    /// A's path to PostgreSQL.
    a_pg: Wire,
    _lab: Lab,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for p in [&self.a.proc, &self.b.proc, &self.redis, &self.pg] {
                eprintln!("{}", p.log_tail());
            }
        }
    }
}

async fn cluster(test: &str) -> Option<Cluster> {
    let mut lab = Lab::new(test)?;
    let (redis_h, pg_h) = (lab.host("redis"), lab.host("pg"));
    let (a_h, b_h) = (lab.host("a"), lab.host("b"));
    let (redis_ip, pg_ip) = (lab.access(&redis_h), lab.access(&pg_h));
    let (a_ip, b_ip) = (lab.access(&a_h), lab.access(&b_h));
    let (a_redis, _, redis_for_a) = lab.wire(&a_h, &redis_h);
    let (a_pg, _, pg_for_a) = lab.wire(&a_h, &pg_h);
    let (_, redis_for_b) = lab.veth(&b_h, &redis_h);
    let (_, pg_for_b) = lab.veth(&b_h, &pg_h);
    let redis = procs::redis(&lab, &redis_h, redis_ip).await;
    let pg = procs::postgres(&lab, &pg_h, pg_ip).await;
    let mut instances = Vec::new();
    for (label, host, ip, redis_at, pg_at) in [
        ("A", &a_h, a_ip, redis_for_a, pg_for_a),
        ("B", &b_h, b_ip, redis_for_b, pg_for_b),
    ] {
        let cmd = chat_command(
            lab.command(host, CHAT_BIN),
            &[
                ("STORAGE", "postgres"),
                (
                    "DATABASE_URL",
                    &format!("postgres://postgres@{pg_at}:5432/postgres"),
                ),
                ("REDIS_URL", &format!("redis://{redis_at}:6379")),
            ],
        );
        let log = lab.dir.path().join(format!("{label}.log"));
        instances.push(Service::start(label, cmd, ip, &log).await);
    }
    let b = instances.pop().unwrap();
    let a = instances.pop().unwrap();
    Some(Cluster {
        a,
        b,
        redis,
        pg,
        a_redis,
        a_pg,
        _lab: lab,
    })
}

/// Two rooms; two members on each instance, each in both rooms.
async fn members(c: &Cluster) -> (Vec<String>, Vec<Member>) {
    let rooms = vec![unique("lab-room"), unique("lab-room")];
    let mut members = Vec::new();
    for (on, endpoint) in [("A", &*c.a), ("B", &*c.b), ("A", &*c.a), ("B", &*c.b)] {
        members.push(Member::join(endpoint, on, &unique(&format!("u{on}")), &rooms).await);
    }
    (rooms, members)
}

/// Both instances' REST history is exactly what was acked (and nothing twice), and every
/// member has exactly that, live or by a resume.
async fn every_member_has_every_message(
    c: &Cluster,
    rooms: &[String],
    members: &[Member],
    sent: &[Sent],
) {
    for room in rooms {
        for (label, endpoint) in [("A", &*c.a), ("B", &*c.b)] {
            let ids = check_stored(room, &stored(endpoint, room).await, sent);
            for m in members {
                let seen = m.seen(room);
                let missing: Vec<_> = ids.difference(&seen).collect();
                let extra: Vec<_> = seen.difference(&ids).collect();
                assert!(
                    missing.is_empty() && extra.is_empty(),
                    "{} (on {}) in {room}: {} stored messages (history via {label}) missing, \
                     e.g. {:?}; {} unknown ones, e.g. {:?}",
                    m.user,
                    m.on,
                    missing.len(),
                    &missing[..missing.len().min(3)],
                    extra.len(),
                    &extra[..extra.len().min(3)]
                );
            }
        }
    }
    for m in members {
        assert_eq!(m.live_duplicates, 0, "{} got messages twice live", m.user);
    }
}

async fn ready(endpoint: &Endpoint) -> (u16, serde_json::Value) {
    endpoint.get("/ready").await
}

/// Cleans `wire` and waits until A's `/ready` answers 200 again; returns how long that took.
async fn heal(c: &Cluster, wire: &Wire) -> Duration {
    wire.set(Impairment::CLEAN);
    let healed = Instant::now();
    eventually("A ready again", Duration::from_secs(30), || async {
        ready(&c.a).await.0 == 200
    })
    .await;
    healed.elapsed()
}

/// Clients on both instances chat in shared rooms for a while with `impairment` on A's path
/// to Redis: every send is acked, every member gets every message live, the stores hold
/// exactly what was acked; then the path is clean again and chat goes on.
async fn chat_through(test: &str, impairment: Impairment) {
    let Some(c) = cluster(test).await else { return };
    let (rooms, members) = members(&c).await;
    c.a_redis.set(impairment);
    let (mut members, mut sent) =
        chat_for(members, Duration::from_secs(6), Duration::from_millis(250)).await;
    let failed: Vec<&Sent> = sent.iter().filter(|s| !s.acked()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} sends not acked, e.g. {:?}",
        failed.len(),
        sent.len(),
        failed.first()
    );
    let last_ack = Instant::now();
    expect_everywhere(&mut members, &sent, Duration::from_secs(20)).await;
    let delivered = last_ack.elapsed();
    c.a_redis.set(Impairment::CLEAN);
    let (mut members, after) = round(members).await;
    expect_everywhere(&mut members, &after, WAIT).await;
    sent.extend(after);
    every_member_has_every_message(&c, &rooms, &members, &sent).await;
    eprintln!(
        "lab: {test}: on A {}; on B {}; every message live everywhere {} ms after the last ack",
        latencies(&sent, "A"),
        latencies(&sent, "B"),
        delivered.as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_and_jitter_to_redis_lose_nothing() {
    let impairment = Impairment::delay(Duration::from_millis(100), Duration::from_millis(30));
    chat_through("latency_and_jitter_to_redis_lose_nothing", impairment).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packet_loss_to_redis_loses_nothing() {
    chat_through("packet_loss_to_redis_loses_nothing", Impairment::loss(0.05)).await;
}

/// A is cut from Redis for 20 s while clients on A and B keep chatting: each instance serves
/// its own clients; after the heal A is ready again by itself, messages cross instances live
/// again, and every member has every message: live, or by a `join_room` with `since` = the
/// last message it had when the partition began (a client resuming after a gap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20s_partition_from_redis_heals_and_every_client_has_every_message() {
    const TEST: &str = "a_20s_partition_from_redis_heals_and_every_client_has_every_message";
    let Some(c) = cluster(TEST).await else { return };
    let (rooms, members) = members(&c).await;
    let (mut members, mut sent) = round(members).await;
    expect_everywhere(&mut members, &sent, WAIT).await;
    let mut cursors = HashMap::new();
    for room in &rooms {
        let newest = stored(&c.b, room).await.pop().expect("a message");
        cursors.insert(
            room.clone(),
            newest["messageId"].as_str().unwrap().to_string(),
        );
    }

    c.a_redis.set(Impairment::PARTITION);
    let cut = Instant::now();
    let a = Endpoint { addr: c.a.addr };
    let noticed = tokio::spawn(async move {
        eventually("A reports redis down", Duration::from_secs(20), || async {
            let (status, body) = ready(&a).await;
            status == 503 && body["dependencies"]["redis"]["status"] == "down"
        })
        .await;
        cut.elapsed()
    });
    let (mut members, during) =
        chat_for(members, Duration::from_secs(20), Duration::from_millis(500)).await;
    let noticed = noticed.await.expect("A reports redis down");
    assert_eq!(ready(&c.b).await.0, 200, "B is not affected");
    let failed: Vec<&Sent> = during.iter().filter(|s| !s.acked()).collect();
    assert!(
        failed.is_empty(),
        "each instance serves its own clients: {} of {} sends not acked, e.g. {:?}",
        failed.len(),
        during.len(),
        failed.first()
    );
    // Each side's members got their own side's messages live.
    for m in members.iter_mut() {
        let own: Vec<Sent> = during.iter().filter(|s| s.on == m.on).cloned().collect();
        let missing = m.expect(&own, WAIT).await;
        assert!(missing.is_empty(), "{} missed {missing:?}", m.user);
    }
    sent.extend(during.iter().cloned());

    let ready_after = heal(&c, &c.a_redis).await;
    // Right away, before anyone sends again: every member resumes from where it was, B's
    // first (B's cached lists missed what A stored meanwhile).
    let mut resumed = 0;
    for side in ["B", "A"] {
        for m in members.iter_mut().filter(|m| m.on == side) {
            for room in &rooms {
                resumed += m.resume(room, &cursors[room]).await;
            }
        }
    }
    let round_started = Instant::now();
    let (mut members, after) = round(members).await;
    expect_everywhere(&mut members, &after, Duration::from_secs(30)).await;
    let live_after = round_started.elapsed();
    sent.extend(after);
    every_member_has_every_message(&c, &rooms, &members, &sent).await;
    eprintln!(
        "lab: partition: A noticed in {} ms; during it, on A {}, on B {}; after the heal A ready \
         in {} ms, {resumed} messages resumed, then a round live everywhere in {} ms (on A {})",
        noticed.as_millis(),
        latencies(&during, "A"),
        latencies(&during, "B"),
        ready_after.as_millis(),
        live_after.as_millis(),
        latencies(&sent[sent.len() - 8..], "A")
    );
}

/// A is cut from PostgreSQL: its sends fail fast with `unavailable` (never acked), `/ready`
/// answers 503 with `store` down, B and A's bus go on; after the heal A is ready again by
/// itself and the refused sends, retried with their `clientMessageId`, are stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_from_postgres_fails_sends_fast_and_recovers() {
    const TEST: &str = "a_partition_from_postgres_fails_sends_fast_and_recovers";
    let Some(c) = cluster(TEST).await else { return };
    let room = vec![unique("lab-pg")];
    let mut on_a = Member::join(&c.a, "A", &unique("uA"), &room).await;
    let mut on_b = Member::join(&c.b, "B", &unique("uB"), &room).await;
    let mut sent = vec![on_a.say(&room[0]).await, on_b.say(&room[0]).await];

    c.a_pg.set(Impairment::PARTITION);
    let cut = Instant::now();
    let mut refused = Vec::new();
    for _ in 0..3 {
        let s = on_a.say(&room[0]).await;
        assert_eq!(s.error.as_deref(), Some("unavailable"), "{s:?}");
        assert!(s.latency < Duration::from_secs(7), "not fast: {s:?}");
        refused.push(s);
    }
    eventually("A reports store down", Duration::from_secs(15), || async {
        let (status, body) = ready(&c.a).await;
        status == 503 && body["dependencies"]["store"]["status"] == "down"
    })
    .await;
    let noticed = cut.elapsed();
    // B stores, and A's clients still get B's messages (A's bus is fine).
    let from_b = on_b.say(&room[0]).await;
    assert!(from_b.acked(), "{from_b:?}");
    let missing = on_a.expect(std::slice::from_ref(&from_b), WAIT).await;
    assert!(missing.is_empty(), "A's client missed B's message");
    sent.push(from_b);

    let ready_after = heal(&c, &c.a_pg).await;
    for r in &refused {
        let again = send(&mut on_a.client, "A", &r.room, &r.text).await;
        assert!(again.acked(), "retry after the heal: {again:?}");
        sent.push(again);
    }
    sent.push(on_a.say(&room[0]).await);
    sent.extend(refused.iter().cloned());
    let acked: Vec<Sent> = sent.iter().filter(|s| s.acked()).cloned().collect();
    assert_eq!(acked.len(), sent.len() - refused.len(), "{sent:?}");
    let mut members = [on_a, on_b];
    expect_everywhere(&mut members, &acked, WAIT).await;
    every_member_has_every_message(&c, &room, &members, &sent).await;
    eprintln!(
        "lab: postgres partition: unavailable in {:?} ms; /ready 503 after {} ms; after the heal \
         ready in {} ms",
        refused
            .iter()
            .map(|s| s.latency.as_millis())
            .collect::<Vec<_>>(),
        noticed.as_millis(),
        ready_after.as_millis()
    );
}
