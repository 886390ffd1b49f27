//! Chat traffic and the checks every scenario shares: members (Socket.IO clients that record
//! every message they got, live or by a `since` resume), senders that record every ack, and
//! the stored truth read back over REST.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Endpoint, SioClient};

/// How long a send may wait for its ack before the test counts it as unacknowledged.
pub const ACK_WAIT: Duration = Duration::from_secs(15);

/// One send and what came of it.
#[derive(Clone, Debug)]
pub struct Sent {
    pub room: String,
    /// Unique per run in its first 64 characters, which are its `clientMessageId`.
    pub text: String,
    /// The acked message id.
    pub id: Option<String>,
    /// The refusal's error code (`"timeout"` when no ack came within `ACK_WAIT`).
    pub error: Option<String>,
    pub latency: Duration,
    /// Label of the instance the sender is connected to.
    pub on: &'static str,
}

impl Sent {
    pub fn acked(&self) -> bool {
        self.id.is_some()
    }
}

/// Sends `text` to `room` with its first 64 characters as `clientMessageId` and waits up to
/// `ACK_WAIT` for the ack.
pub async fn send(client: &mut SioClient, on: &'static str, room: &str, text: &str) -> Sent {
    let started = Instant::now();
    let cmid: String = text.chars().take(64).collect();
    let rx = client.emit_with_ack(
        "send_message",
        json!({"roomId": room, "message": text, "clientMessageId": cmid}),
    );
    let (id, error) = match tokio::time::timeout(ACK_WAIT, rx).await {
        Ok(Ok(ack)) if ack["success"] == true => {
            (Some(ack["messageId"].as_str().unwrap().to_string()), None)
        }
        Ok(Ok(ack)) => (
            None,
            Some(ack["error"]["code"].as_str().unwrap_or("?").into()),
        ),
        Ok(Err(_)) => (None, Some("closed".into())),
        Err(_) => (None, Some("timeout".into())),
    };
    Sent {
        room: room.into(),
        text: text.into(),
        id,
        error,
        latency: started.elapsed(),
        on,
    }
}

/// A user connected to one instance and joined to some rooms, with every message id it got.
pub struct Member {
    pub user: String,
    pub on: &'static str,
    pub client: SioClient,
    pub rooms: Vec<String>,
    sent: usize,
    /// room -> message ids received live (`new_message`).
    live: HashMap<String, HashSet<String>>,
    /// room -> message ids received in a `message_history` (the join, a `since` resume).
    history: HashMap<String, HashSet<String>>,
    /// Live `new_message`s received twice.
    pub live_duplicates: usize,
}

impl Member {
    pub async fn join(endpoint: &Endpoint, on: &'static str, user: &str, rooms: &[String]) -> Self {
        let mut client = endpoint.user(user).await;
        let mut history = HashMap::new();
        for room in rooms {
            let (messages, _) = client.join(room).await;
            let ids: HashSet<String> = messages
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["messageId"].as_str().unwrap().to_string())
                .collect();
            history.insert(room.clone(), ids);
        }
        Member {
            user: user.into(),
            on,
            client,
            rooms: rooms.to_vec(),
            sent: 0,
            live: HashMap::new(),
            history,
            live_duplicates: 0,
        }
    }

    /// Sends the next message of this member to `room`.
    pub async fn say(&mut self, room: &str) -> Sent {
        self.sent += 1;
        let text = format!("{}-{}", self.user, self.sent);
        send(&mut self.client, self.on, room, &text).await
    }

    /// One message to each of its rooms.
    pub async fn round(&mut self) -> Vec<Sent> {
        let mut sent = Vec::new();
        for room in self.rooms.clone() {
            sent.push(self.say(&room).await);
        }
        sent
    }

    fn record(live: &mut HashMap<String, HashSet<String>>, dups: &mut usize, m: &Value) {
        let room = m["roomId"].as_str().unwrap_or_default().to_string();
        let id = m["messageId"].as_str().unwrap_or_default().to_string();
        if !live.entry(room).or_default().insert(id) {
            *dups += 1;
        }
    }

    /// Whether it has message `id` of `room`, live or from a history.
    fn has(&self, room: &str, id: &str) -> bool {
        [&self.live, &self.history]
            .iter()
            .any(|m| m.get(room).is_some_and(|ids| ids.contains(id)))
    }

    /// The acked messages of `sent` in this member's rooms that it has not seen.
    fn missing<'a>(&self, sent: impl IntoIterator<Item = &'a Sent>) -> Vec<String> {
        sent.into_iter()
            .filter(|s| self.rooms.contains(&s.room))
            .filter_map(|s| s.id.clone().filter(|id| !self.has(&s.room, id)))
            .collect()
    }

    /// Takes live `new_message`s until every acked message of `sent` (in its rooms) was seen
    /// or `wait` passed; returns the ids still missing.
    pub async fn expect(&mut self, sent: &[Sent], wait: Duration) -> Vec<String> {
        let want: HashSet<String> = self.missing(sent).into_iter().collect();
        let mut left = want.clone();
        if !left.is_empty() {
            let (live, dups) = (&mut self.live, &mut self.live_duplicates);
            self.client
                .consume_until("new_message", wait, |m| {
                    Self::record(live, dups, &m);
                    left.remove(m["messageId"].as_str().unwrap_or_default());
                    left.is_empty()
                })
                .await;
        }
        self.missing(sent)
    }

    /// Takes whatever live `new_message`s have arrived, without waiting.
    pub async fn take_live(&mut self) {
        let (live, dups) = (&mut self.live, &mut self.live_duplicates);
        self.client
            .consume_until("new_message", Duration::ZERO, |m| {
                Self::record(live, dups, &m);
                false
            })
            .await;
    }

    /// `join_room` again with `since` (gap-free resume); adds the history to what it has seen
    /// and returns how many messages it brought.
    pub async fn resume(&mut self, room: &str, since: &str) -> usize {
        self.take_live().await;
        let ack = self
            .client
            .emit_ack("join_room", json!({"roomId": room, "since": since}))
            .await;
        assert_eq!(ack["success"], true, "{}: resume {room}: {ack}", self.user);
        let history = self.client.event("message_history").await;
        self.client.event("room_users").await;
        let messages = history.as_array().expect("history array");
        let ids = self.history.entry(room.into()).or_default();
        for m in messages {
            ids.insert(m["messageId"].as_str().unwrap().to_string());
        }
        messages.len()
    }

    /// Every message id of `room` it has, live or from a history.
    pub fn seen(&self, room: &str) -> HashSet<String> {
        [&self.live, &self.history]
            .iter()
            .filter_map(|m| m.get(room))
            .flatten()
            .cloned()
            .collect()
    }
}

/// Every member sends one message to each of its rooms every `pace` (each member waits for
/// its own acks, like a person typing), all members at once, for `duration` (at least once). Returns the
/// members (in order) and every send.
pub async fn chat_for(
    members: Vec<Member>,
    duration: Duration,
    pace: Duration,
) -> (Vec<Member>, Vec<Sent>) {
    let end = Instant::now() + duration;
    let tasks: Vec<_> = members
        .into_iter()
        .map(|mut m| {
            tokio::spawn(async move {
                let mut sent = Vec::new();
                let mut tick = tokio::time::interval(pace);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    sent.extend(m.round().await);
                    if Instant::now() >= end {
                        break;
                    }
                }
                (m, sent)
            })
        })
        .collect();
    let mut members = Vec::new();
    let mut all = Vec::new();
    for t in tasks {
        let (m, sent) = t.await.expect("sender task");
        members.push(m);
        all.extend(sent);
    }
    (members, all)
}

/// One round of every member, all at once.
pub async fn round(members: Vec<Member>) -> (Vec<Member>, Vec<Sent>) {
    chat_for(members, Duration::ZERO, Duration::from_millis(1)).await
}

/// Waits until every member has every acked message of `sent` in its rooms (live).
pub async fn expect_everywhere(members: &mut [Member], sent: &[Sent], wait: Duration) {
    for m in members.iter_mut() {
        let missing = m.expect(sent, wait).await;
        assert!(
            missing.is_empty(),
            "{} (on {}) never got {} acked messages live, e.g. {:?}",
            m.user,
            m.on,
            missing.len(),
            &missing[..missing.len().min(3)]
        );
    }
}

/// Every stored message of a room over REST, oldest first (paged by `before`).
pub async fn stored(endpoint: &Endpoint, room: &str) -> Vec<Value> {
    let mut all: Vec<Value> = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let path = match &before {
            Some(id) => format!("/api/chat/{room}/history?limit=1000&before={id}"),
            None => format!("/api/chat/{room}/history?limit=1000"),
        };
        let (status, body) = endpoint.get(&path).await;
        assert_eq!(status, 200, "history of {room}: {body}");
        let page = body["messages"].as_array().expect("messages").clone();
        let full = page.len() == 1000;
        before = page
            .first()
            .map(|m| m["messageId"].as_str().unwrap().into());
        all.splice(0..0, page);
        if !full {
            return all;
        }
    }
}

/// The stored truth of `room` against what was sent: every acked message is stored once
/// under its acked id, nothing is stored twice (texts are unique), nothing is stored that
/// nobody sent. Returns the stored ids.
pub fn check_stored(room: &str, stored: &[Value], sent: &[Sent]) -> HashSet<String> {
    let mut ids = HashSet::new();
    let mut texts: HashMap<&str, &str> = HashMap::new();
    for m in stored {
        let id = m["messageId"].as_str().unwrap();
        let text = m["message"].as_str().unwrap();
        assert!(ids.insert(id.to_string()), "{room}: {id} stored twice");
        assert!(
            texts.insert(text, id).is_none(),
            "{room}: {text:?} stored twice"
        );
    }
    let sent_texts: HashSet<&str> = sent
        .iter()
        .filter(|s| s.room == room)
        .map(|s| s.text.as_str())
        .collect();
    for text in texts.keys() {
        assert!(sent_texts.contains(text), "{room}: {text:?} nobody sent");
    }
    for s in sent.iter().filter(|s| s.room == room) {
        if let Some(id) = &s.id {
            assert_eq!(
                texts.get(s.text.as_str()).copied(),
                Some(id.as_str()),
                "{room}: acked {:?} ({id}) is not stored under its id",
                s.text
            );
        }
    }
    ids
}

/// `p50 / p99 / max` of the ack latencies of the sends on instance `on` (acked or not).
pub fn latencies(sent: &[Sent], on: &str) -> String {
    let mut ms: Vec<u128> = sent
        .iter()
        .filter(|s| s.on == on)
        .map(|s| s.latency.as_millis())
        .collect();
    if ms.is_empty() {
        return "no sends".into();
    }
    ms.sort();
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    format!(
        "{} sends, ack p50 {} ms, p99 {} ms, max {} ms",
        ms.len(),
        at(0.5),
        at(0.99),
        ms[ms.len() - 1]
    )
}
