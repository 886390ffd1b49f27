//! `SioClient`: a minimal Socket.IO v5 client over WebSocket (Engine.IO v4) that records every
//! event it receives, so tests can wait for events instead of sleeping.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::WAIT;

#[derive(Default)]
struct Inbox {
    events: VecDeque<(String, Value)>,
    acks: HashMap<u64, oneshot::Sender<Value>>,
    closed: bool,
}

/// A Socket.IO client speaking the raw protocol over WebSocket.
pub struct SioClient {
    out: mpsc::UnboundedSender<WsMessage>,
    inbox: Arc<Mutex<Inbox>>,
    notify: Arc<Notify>,
    next_ack: u64,
    /// Socket.IO's `socket.id`: the `sid` of the server's CONNECT answer.
    pub socket_id: String,
}

impl SioClient {
    pub async fn connect(addr: SocketAddr, auth: Option<Value>) -> SioClient {
        Self::try_connect(addr, auth)
            .await
            .expect("socket.io connect")
    }

    pub async fn try_connect(addr: SocketAddr, auth: Option<Value>) -> Result<SioClient, String> {
        let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .map_err(|e| e.to_string())?;
        let (mut write, mut read) = ws.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<WsMessage>();
        tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                if write.send(m).await.is_err() {
                    break;
                }
            }
            let _ = write.close().await;
        });
        let inbox = Arc::new(Mutex::new(Inbox::default()));
        let notify = Arc::new(Notify::new());
        let (connected_tx, connected_rx) = oneshot::channel::<Result<String, String>>();
        {
            let inbox = inbox.clone();
            let notify = notify.clone();
            let out = out.clone();
            tokio::spawn(async move {
                let mut connected = Some(connected_tx);
                while let Some(Ok(frame)) = read.next().await {
                    let WsMessage::Text(text) = frame else {
                        if let WsMessage::Close(_) = frame {
                            break;
                        }
                        continue;
                    };
                    let text = text.as_str();
                    match text.as_bytes().first() {
                        Some(b'2') => {
                            let _ = out.send(WsMessage::text("3"));
                        }
                        Some(b'4') => {
                            let packet = &text[1..];
                            match packet.as_bytes().first() {
                                Some(b'0') => {
                                    if let Some(tx) = connected.take() {
                                        let sid = serde_json::from_str::<Value>(&packet[1..])
                                            .ok()
                                            .and_then(|v| v["sid"].as_str().map(String::from))
                                            .unwrap_or_default();
                                        let _ = tx.send(Ok(sid));
                                    }
                                }
                                Some(b'4') => {
                                    if let Some(tx) = connected.take() {
                                        let _ = tx.send(Err(packet[1..].to_string()));
                                    }
                                }
                                Some(b'1') => {
                                    inbox
                                        .lock()
                                        .events
                                        .push_back(("__disconnect".into(), Value::Null));
                                }
                                Some(b'2') => {
                                    if let Ok(Value::Array(mut args)) =
                                        serde_json::from_str(&packet[1..])
                                    {
                                        let name =
                                            args.remove(0).as_str().unwrap_or("").to_string();
                                        let data = if args.is_empty() {
                                            Value::Null
                                        } else {
                                            args.remove(0)
                                        };
                                        inbox.lock().events.push_back((name, data));
                                    }
                                }
                                Some(b'3') => {
                                    let rest = &packet[1..];
                                    let digits =
                                        rest.bytes().take_while(u8::is_ascii_digit).count();
                                    let id: u64 = rest[..digits].parse().unwrap_or(0);
                                    let data = match serde_json::from_str(&rest[digits..]) {
                                        Ok(Value::Array(mut a)) if !a.is_empty() => a.remove(0),
                                        _ => Value::Null,
                                    };
                                    if let Some(tx) = inbox.lock().acks.remove(&id) {
                                        let _ = tx.send(data);
                                    }
                                }
                                _ => {}
                            }
                            notify.notify_waiters();
                        }
                        _ => {}
                    }
                }
                {
                    let mut inbox = inbox.lock();
                    inbox.closed = true;
                    // Pending acks will never come: their receivers see the sender dropped.
                    inbox.acks.clear();
                }
                notify.notify_waiters();
            });
        }
        let open = match &auth {
            Some(a) => format!("40{a}"),
            None => "40".into(),
        };
        out.send(WsMessage::text(open)).map_err(|e| e.to_string())?;
        let socket_id = tokio::time::timeout(WAIT, connected_rx)
            .await
            .map_err(|_| "no connect packet".to_string())?
            .map_err(|_| "closed before connect".to_string())??;
        Ok(SioClient {
            out,
            inbox,
            notify,
            next_ack: 0,
            socket_id,
        })
    }

    /// Emits without an ack.
    pub fn emit(&self, event: &str, data: Value) {
        let _ = self
            .out
            .send(WsMessage::text(format!("42{}", json!([event, data]))));
    }

    /// Emits with an ack request and returns a receiver of the ack (to pipeline emits).
    pub fn emit_with_ack(&mut self, event: &str, data: Value) -> oneshot::Receiver<Value> {
        let id = self.next_ack;
        self.next_ack += 1;
        let (tx, rx) = oneshot::channel();
        let mut inbox = self.inbox.lock();
        // On a closed connection the ack will never come: the receiver sees that at once.
        if !inbox.closed {
            inbox.acks.insert(id, tx);
        }
        drop(inbox);
        let _ = self
            .out
            .send(WsMessage::text(format!("42{id}{}", json!([event, data]))));
        rx
    }

    /// Emits with an ack a payload given as raw JSON text (for payloads `Value` cannot hold).
    pub async fn emit_raw_ack(&mut self, event: &str, raw_data: &str) -> Value {
        let id = self.next_ack;
        self.next_ack += 1;
        let (tx, rx) = oneshot::channel();
        self.inbox.lock().acks.insert(id, tx);
        let _ = self.out.send(WsMessage::text(format!(
            "42{id}[{},{raw_data}]",
            Value::from(event)
        )));
        tokio::time::timeout(WAIT, rx)
            .await
            .unwrap_or_else(|_| panic!("no ack for raw {event} within {WAIT:?}"))
            .expect("ack channel")
    }

    pub async fn emit_ack(&mut self, event: &str, data: Value) -> Value {
        let rx = self.emit_with_ack(event, data);
        tokio::time::timeout(WAIT, rx)
            .await
            .unwrap_or_else(|_| panic!("no ack for {event} within {WAIT:?}"))
            .expect("ack channel")
    }

    /// Waits for the next (oldest unconsumed) event named `name` and consumes it.
    pub async fn event(&mut self, name: &str) -> Value {
        self.event_where(name, |_| true).await
    }

    /// Waits for the oldest unconsumed `name` event that satisfies `pred`, and consumes it.
    pub async fn event_where(&mut self, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.event_within(name, pred, WAIT).await
    }

    /// Waits for the oldest unconsumed event whose name is one of `names`, consumes it and
    /// returns its name and data (so the order of different events can be checked).
    #[allow(dead_code)] // not every test crate that includes this file uses it
    pub async fn next_of(&mut self, names: &[&str]) -> (String, Value) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notified = self.notify.notified();
            {
                let mut inbox = self.inbox.lock();
                if let Some(i) = inbox
                    .events
                    .iter()
                    .position(|(n, _)| names.contains(&n.as_str()))
                {
                    return inbox.events.remove(i).expect("index");
                }
                if inbox.closed {
                    panic!("connection closed while waiting for one of {names:?}");
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "none of {names:?} within {WAIT:?}; got {}",
                    summary(&self.inbox.lock().events)
                );
            }
        }
    }

    /// Like `event_where` with a custom deadline.
    pub async fn event_within(
        &mut self,
        name: &str,
        pred: impl Fn(&Value) -> bool,
        wait: Duration,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.notify.notified();
            {
                let mut inbox = self.inbox.lock();
                if let Some(i) = inbox.events.iter().position(|(n, v)| n == name && pred(v)) {
                    return inbox.events.remove(i).expect("index").1;
                }
                if inbox.closed {
                    panic!(
                        "connection closed while waiting for {name}; got {}",
                        summary(&inbox.events)
                    );
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "no {name} event within {wait:?}; got {}",
                    summary(&self.inbox.lock().events)
                );
            }
        }
    }

    /// Consumes the `name` events as they arrive (those already received first), handing each
    /// to `each`, until `each` has returned true or `wait` has passed; returns whether it did.
    /// Never panics on a timeout or a closed connection, so the caller can say what is missing.
    #[allow(dead_code)] // used by the fault lab (tests/lab), which includes this file
    pub async fn consume_until(
        &mut self,
        name: &str,
        wait: Duration,
        mut each: impl FnMut(Value) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        let mut done = false;
        loop {
            let notified = self.notify.notified();
            let (taken, closed) = {
                let mut inbox = self.inbox.lock();
                let (taken, kept) = std::mem::take(&mut inbox.events)
                    .into_iter()
                    .partition::<VecDeque<_>, _>(|(n, _)| n == name);
                inbox.events = kept;
                (taken, inbox.closed)
            };
            for (_, v) in taken {
                done |= each(v);
            }
            if done || closed || tokio::time::timeout_at(deadline, notified).await.is_err() {
                return done;
            }
        }
    }

    /// Unconsumed events named `name` received so far (not waiting).
    pub fn received(&self, name: &str) -> Vec<Value> {
        self.inbox
            .lock()
            .events
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Whether the server has closed the connection (Socket.IO disconnect or socket close).
    #[allow(dead_code)] // used by the fault lab (tests/lab), which includes this file
    pub fn is_closed(&self) -> bool {
        let inbox = self.inbox.lock();
        inbox.closed || inbox.events.iter().any(|(n, _)| n == "__disconnect")
    }

    /// Waits until the server closes the connection (Socket.IO disconnect or socket close).
    pub async fn closed(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notified = self.notify.notified();
            {
                let inbox = self.inbox.lock();
                if inbox.closed || inbox.events.iter().any(|(n, _)| n == "__disconnect") {
                    return;
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("connection not closed within {WAIT:?}");
            }
        }
    }

    /// Joins a room and returns (message_history, room_users).
    pub async fn join(&mut self, room: &str) -> (Value, Value) {
        let ack = self.emit_ack("join_room", json!({"roomId": room})).await;
        assert_eq!(ack, json!({"success": true, "roomId": room}));
        let history = self.event("message_history").await;
        let users = self.event("room_users").await;
        (history, users)
    }

    /// Sends a message and returns its ack.
    pub async fn say(&mut self, room: &str, text: &str) -> Value {
        let ack = self
            .emit_ack("send_message", json!({"roomId": room, "message": text}))
            .await;
        assert_eq!(ack["success"], true, "send: {ack}");
        ack
    }

    /// Closes the connection from the client side.
    pub fn disconnect(&self) {
        let _ = self.out.send(WsMessage::text("41"));
        let _ = self.out.send(WsMessage::Close(None));
    }
}

/// Unconsumed events for a failure message: names, and payloads shortened.
fn summary(events: &VecDeque<(String, Value)>) -> String {
    let shown: Vec<String> = events
        .iter()
        .take(20)
        .map(|(n, v)| {
            let v = v.to_string();
            format!("{n} {}", v.chars().take(120).collect::<String>())
        })
        .collect();
    format!("{} events: [{}]", events.len(), shown.join(", "))
}
