//! One Socket.IO session: the task that serves it, whichever transport carries it. A session
//! opened directly on a WebSocket (`transports: ['websocket']`, the mobile clients,
//! `chat-bench`) runs on that WebSocket from its first frame; one opened on HTTP long-polling
//! (socket.io-client's default in browsers) runs on the packets its POSTs bring and the GETs
//! that take its outbox (`polling.rs`), until it upgrades: the upgraded WebSocket is handed to
//! this same task, which goes on with the same session, outbox and pending events.
//!
//! One task per connection reads, writes, pings and runs the chat calls; a broadcast's packet
//! is serialized once (`ServerEvent::sio_frame`) and every recipient's frame is a reference to
//! the same bytes; frames queued while the socket was busy go out in one write (one HTTP
//! response on polling). BENCHMARKS.md has the figures.
//!
//! The protocol:
//! - Engine.IO: the open packet `0{...}` first, a server ping `2` every `ping_interval` answered
//!   by `3` within `ping_timeout` (else the connection is closed), `1` close, `6` noop, `4`
//!   message. A message over `max_payload_bytes` closes the connection (like maxHttpBufferSize).
//! - Socket.IO, namespace `/` only: `0` CONNECT with an optional auth object (its `token` or
//!   `userId` authenticates), answered `40{"sid":..}`; another namespace gets
//!   `44/nsp,{"message":"Invalid namespace"}`; no CONNECT within `connect_timeout` closes;
//!   `2` EVENT with an optional ack id, answered by `3` ACK; `1` DISCONNECT ends the session;
//!   binary events (no chat event carries binary) are refused with `invalid_payload`.
//! - Events of a connection run one at a time in arrival order (SPEC 1); while one runs, later
//!   ones wait (up to `MAX_PENDING_EVENTS`, then `rate_limited`) and the socket keeps being
//!   read and written. A server-side close (`too_many_connections`) sends `41` after the
//!   error and the ack; a shutdown finishes the received events, then closes the transport
//!   without `41` (a WebSocket close frame, or the Engine.IO close packet `1` on polling), so
//!   clients reconnect.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::polling::{Incoming, PollLink};
use super::{MAX_PENDING_EVENTS, SocketIoState, handshake_credentials};
use crate::auth::Credentials;
use crate::chat::conn::{ClientSink, SinkError};
use crate::chat::wire::{self, ServerEvent};
use crate::chat::{ChatError, ChatService, Deadline, Session};
use crate::transport::{ack_body, dispatch, limited_upgrade, sleep_until_deadline};

/// Frames written before a slow write counts as a dead client.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest outbox buffer a connection keeps for reuse, frames.
const REUSED_OUTBOX_SLOTS: usize = 32;
/// Tungstenite writes its buffer out once it holds this much; `flush` writes the rest.
pub(super) const WS_WRITE_BUFFER: usize = 16 * 1024;
/// How long a transport that is closing may take to get its last frames out.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// A WebSocket upgrade with the service's limits and write buffer.
pub(super) fn websocket(ws: WebSocketUpgrade, state: &SocketIoState) -> WebSocketUpgrade {
    limited_upgrade(ws, state.cfg.max_payload_bytes).write_buffer_size(WS_WRITE_BUFFER)
}

/// A session opened directly on a WebSocket: the open packet is its first frame.
pub(super) fn accept_websocket(state: SocketIoState, ws: WebSocketUpgrade) -> Response {
    websocket(ws, &state).on_upgrade(move |socket| {
        let sink = SessionSink::new(state.cfg.max_queued_frames);
        let open = open_packet(&random_id(), false, &state);
        // The outbox is empty: this cannot be refused.
        let _ = sink.push(Out::Frame(open.into()));
        // `run` is the task's whole future (no wrapper holding the socket beside it): an idle
        // connection is mostly this task.
        let workers = state.cfg.workers.clone();
        workers.track_future(run(state, sink, Link::Ws(socket)))
    })
}

/// The Engine.IO open packet; `upgrades` names `websocket` for a polling session.
pub(super) fn open_packet(sid: &str, upgrades: bool, state: &SocketIoState) -> String {
    let cfg = &state.cfg;
    format!(
        r#"0{{"sid":"{sid}","upgrades":[{}],"pingInterval":{},"pingTimeout":{},"maxPayload":{}}}"#,
        if upgrades { r#""websocket""# } else { "" },
        cfg.ping_interval.as_millis(),
        cfg.ping_timeout.as_millis(),
        cfg.max_payload_bytes
    )
}

pub(super) enum Out {
    Event(Arc<ServerEvent>),
    Frame(Utf8Bytes),
    /// Socket.IO DISCONNECT (`41`), then close: a server-side close.
    Disconnect,
}

impl Out {
    /// The Engine.IO packet, as a WebSocket frame carries it (and a polling payload).
    pub fn into_text(self) -> Utf8Bytes {
        match self {
            Out::Event(ev) => ev.sio_frame().clone(),
            Out::Frame(frame) => frame,
            Out::Disconnect => Utf8Bytes::from_static("41"),
        }
    }
}

/// Frames waiting for the socket. The connection's task takes the whole queue at once, writes
/// it and hands the emptied buffer back (`give_back`): a few slots per connection, reused, so
/// queueing a broadcast for a recipient allocates nothing.
#[derive(Default)]
pub(super) struct Outbox {
    pub frames: VecDeque<Out>,
    /// The connection's task has ended: nothing more is accepted.
    pub closed: bool,
}

/// A Socket.IO session as `chat` sees it.
pub(super) struct SessionSink {
    pub outbox: Mutex<Outbox>,
    /// Wakes whoever writes the outbox when it stops being empty: the connection's task on a
    /// WebSocket, the pending GET on polling.
    pub wake: Notify,
    /// Ends the connection at once (a slow consumer, a close that cannot be queued, a `41`
    /// delivered on polling, a polling request that breaks the protocol).
    pub kill: Notify,
    max_queued: usize,
}

impl SessionSink {
    pub fn new(max_queued: usize) -> Arc<Self> {
        Arc::new(Self {
            outbox: Mutex::new(Outbox::default()),
            wake: Notify::new(),
            kill: Notify::new(),
            max_queued: max_queued.max(1),
        })
    }

    pub fn push(&self, out: Out) -> Result<(), SinkError> {
        let mut outbox = self.outbox.lock();
        if outbox.closed {
            return Err(SinkError::Closed);
        }
        if outbox.frames.len() >= self.max_queued {
            return Err(SinkError::Full);
        }
        let was_empty = outbox.frames.is_empty();
        outbox.frames.push_back(out);
        drop(outbox);
        if was_empty {
            self.wake.notify_one();
        }
        Ok(())
    }

    pub fn take(&self) -> VecDeque<Out> {
        std::mem::take(&mut self.outbox.lock().frames)
    }

    /// Returns a written (empty) queue's buffer for reuse, so that a busy connection does not
    /// allocate per frame. Only when nothing was queued meanwhile (else that queue has one),
    /// and only a small one: a burst's big buffer (a join storm) is freed, not kept per
    /// connection.
    pub fn give_back(&self, frames: VecDeque<Out>) {
        debug_assert!(frames.is_empty());
        if frames.capacity() > REUSED_OUTBOX_SLOTS {
            return;
        }
        let mut outbox = self.outbox.lock();
        if outbox.frames.capacity() == 0 {
            outbox.frames = frames;
        }
    }
}

impl ClientSink for SessionSink {
    fn send(&self, event: &Arc<ServerEvent>) -> Result<(), SinkError> {
        self.push(Out::Event(event.clone()))
    }

    fn close(&self) {
        // After what is already queued (the error event and the ack come first); a client
        // that stopped reading is cut off instead.
        if self.push(Out::Disconnect).is_err() {
            self.kill.notify_one();
        }
    }
}

enum Job {
    Event {
        name: String,
        data: Result<Value, String>,
        ack: Option<u64>,
    },
    HandshakeAuth(Box<Credentials>),
}

enum Outcome {
    Event(Option<u64>, Result<Value, ChatError>),
    Auth(Result<(), ChatError>),
}

type Running = Pin<Box<dyn Future<Output = (Session, Outcome)> + Send>>;

/// Runs one job; the session moves into the future and comes back with the outcome, so the
/// connection's task keeps reading and writing meanwhile.
fn start(chat: Arc<ChatService>, mut session: Session, job: Job) -> Running {
    Box::pin(async move {
        let outcome = match job {
            Job::Event { name, data, ack } => {
                Outcome::Event(ack, dispatch(&chat, &mut session, &name, data).await)
            }
            Job::HandshakeAuth(credentials) => Outcome::Auth(
                chat.authenticate(&mut session, *credentials)
                    .await
                    .map(|_| ()),
            ),
        };
        (session, outcome)
    })
}

async fn poll_running(running: &mut Option<Running>) -> (Session, Outcome) {
    match running {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// Why the read loop ended.
#[derive(PartialEq, Eq, Clone, Copy)]
pub(super) enum End {
    /// The client closed, went silent or broke the protocol: received events still run.
    Client,
    /// The server closed the session (`41` sent) or cut off a slow consumer.
    Server,
    /// Shutdown: received events run, then the transport closes without `41`.
    Shutdown,
}

/// What carries the session now. The WebSocket is inline: it is what most connections hold
/// for their whole life, and boxing it would cost each of them an allocation.
#[allow(clippy::large_enum_variant)]
pub(super) enum Link {
    Ws(WebSocket),
    /// Long-polling, until an upgrade hands over a WebSocket.
    Polling(Box<PollLink>),
}

/// What the transport brought.
enum Input {
    /// One Engine.IO packet (a WebSocket text frame).
    Packet(Utf8Bytes),
    /// A polling POST's payload: packets separated by `\x1e`.
    Payload(String),
    /// The upgraded WebSocket of a polling session.
    Upgrade(Box<WebSocket>),
    /// Nothing for the session (binary frames, WebSocket pings).
    Skip,
    Closed,
}

async fn next_input(link: &mut Link) -> Input {
    match link {
        Link::Ws(ws) => match ws.next().await {
            Some(Ok(Message::Text(text))) => Input::Packet(text),
            // Attachments of a (refused) binary event.
            Some(Ok(Message::Binary(_) | Message::Ping(_) | Message::Pong(_))) => Input::Skip,
            Some(Ok(Message::Close(_))) | None => Input::Closed,
            Some(Err(e)) => {
                // Oversized messages end here too (the protocol layer refuses them).
                tracing::debug!(error = %e, "socket.io websocket read error");
                Input::Closed
            }
        },
        Link::Polling(polling) => match polling.incoming().await {
            Some(Incoming::Payload(payload)) => Input::Payload(payload),
            Some(Incoming::Upgrade(ws)) => Input::Upgrade(ws),
            None => Input::Closed,
        },
    }
}

/// What one Engine.IO packet asks of the connection's loop.
enum Step {
    Continue,
    Pong,
    Close,
}

struct Conn {
    chat: Arc<ChatService>,
    sink: Arc<SessionSink>,
    session: Option<Session>,
    running: Option<Running>,
    pending: VecDeque<Job>,
    /// The namespace CONNECT has been received.
    connected: bool,
}

/// The connection's task. Its future stays small (an idle connection is mostly this task):
/// the chat calls and the socket writes are boxed futures that exist only while they run.
pub(super) async fn run(state: SocketIoState, sink: Arc<SessionSink>, mut link: Link) {
    let cfg = &state.cfg;
    let mut conn = Conn {
        chat: state.chat.clone(),
        session: Some(Session::new(sink.clone())),
        sink,
        running: None,
        pending: VecDeque::new(),
        connected: false,
    };
    let connect_deadline = Instant::now() + cfg.connect_timeout;
    let heartbeat = tokio::time::sleep(cfg.ping_interval);
    tokio::pin!(heartbeat);
    let mut awaiting_pong = false;
    let end = loop {
        let deadline = if !conn.connected {
            Some(connect_deadline.into_std())
        } else {
            conn.session.as_ref().and_then(|s| conn.chat.deadline(s))
        };
        let step = tokio::select! {
            biased;
            () = conn.sink.kill.notified() => break End::Server,
            () = cfg.shutdown.cancelled() => break End::Shutdown,
            // On polling the GETs write the outbox.
            () = conn.sink.wake.notified(), if matches!(link, Link::Ws(_)) => {
                let Link::Ws(ws) = &mut link else { continue };
                let mut frames = conn.sink.take();
                match Box::pin(write_frames(ws, &mut frames, &conn.sink.kill)).await {
                    Written::Ok => conn.sink.give_back(frames),
                    Written::Disconnected | Written::Killed => break End::Server,
                    Written::Failed => break End::Client,
                }
                continue;
            }
            (session, outcome) = poll_running(&mut conn.running) => {
                conn.running = None;
                conn.session = Some(session);
                conn.finish(outcome);
                conn.start_next();
                continue;
            }
            () = &mut heartbeat => {
                if awaiting_pong {
                    tracing::debug!("socket.io: no pong in time, closing");
                    break End::Client;
                }
                conn.queue(Out::Frame(Utf8Bytes::from_static("2")));
                awaiting_pong = true;
                heartbeat.as_mut().reset(Instant::now() + cfg.ping_timeout);
                continue;
            }
            () = sleep_until_deadline(deadline) => {
                if !conn.connected {
                    tracing::debug!("socket.io: no CONNECT in time, closing");
                    break End::Client;
                }
                if conn.running.is_none() {
                    conn.deadline_passed();
                }
                continue;
            }
            input = next_input(&mut link) => match input {
                Input::Packet(text) => conn.on_engine_packet(&text),
                Input::Payload(payload) => match conn.on_payload(&payload) {
                    Ok(step) => step,
                    Err(()) => break End::Client,
                },
                Input::Upgrade(ws) => {
                    if let Link::Polling(polling) = &link {
                        polling.upgraded();
                        link = Link::Ws(*ws);
                        // What waits in the outbox goes out on the WebSocket now.
                        conn.sink.wake.notify_one();
                    }
                    Step::Continue
                }
                Input::Skip => Step::Continue,
                Input::Closed => break End::Client,
            },
        };
        match step {
            Step::Continue => {}
            Step::Pong => {
                awaiting_pong = false;
                heartbeat.as_mut().reset(Instant::now() + cfg.ping_interval);
            }
            Step::Close => break End::Client,
        }
    };
    Box::pin(conn.close(end, &mut link)).await;
}

enum Written {
    Ok,
    /// A `41` went out: the session is closed by the server.
    Disconnected,
    /// Cut off (slow consumer).
    Killed,
    Failed,
}

/// Writes the queued frames with one flush (one socket write for the lot when it fits).
async fn write_frames(ws: &mut WebSocket, frames: &mut VecDeque<Out>, kill: &Notify) -> Written {
    let mut disconnect = false;
    let write = async {
        for out in frames.drain(..) {
            disconnect = matches!(out, Out::Disconnect);
            ws.feed(Message::Text(out.into_text())).await?;
            if disconnect {
                break;
            }
        }
        ws.flush().await
    };
    let result = tokio::select! {
        r = tokio::time::timeout(WRITE_TIMEOUT, write) => match r {
            Ok(Ok(())) => Written::Ok,
            _ => Written::Failed,
        },
        () = kill.notified() => Written::Killed,
    };
    match result {
        Written::Ok if disconnect => Written::Disconnected,
        other => other,
    }
}

impl Conn {
    /// Queues a frame; a full queue is a slow consumer, which is cut off.
    fn queue(&self, out: Out) {
        if self.sink.push(out).is_err() {
            self.sink.kill.notify_one();
        }
    }

    fn emit_error(&self, e: &ChatError) {
        self.queue(Out::Event(Arc::new(ServerEvent::from_value(
            wire::ERROR,
            e.body(),
        ))));
    }

    fn ack(&self, id: u64, body: &Value) {
        self.queue(Out::Frame(format!("43{id}[{body}]").into()));
    }

    /// A polling payload: its packets in order. `Err` when one closes the session.
    fn on_payload(&mut self, payload: &str) -> Result<Step, ()> {
        let mut step = Step::Continue;
        // Base64 packets (`b...`) are attachments of a refused binary event.
        for packet in payload.split('\x1e').filter(|p| !p.starts_with('b')) {
            match self.on_engine_packet(packet) {
                Step::Close => return Err(()),
                Step::Pong => step = Step::Pong,
                Step::Continue => {}
            }
        }
        Ok(step)
    }

    /// One Engine.IO packet from the client.
    fn on_engine_packet(&mut self, text: &str) -> Step {
        match text.as_bytes().first() {
            Some(b'3') => Step::Pong,
            Some(b'4') => {
                if let Err(why) = self.on_packet(&text[1..]) {
                    tracing::debug!(%why, "socket.io: bad packet, closing");
                    return Step::Close;
                }
                self.start_next();
                Step::Continue
            }
            Some(b'6' | b'2') => Step::Continue,
            Some(b'1') => Step::Close,
            _ => {
                tracing::debug!("socket.io: bad engine.io packet, closing");
                Step::Close
            }
        }
    }

    /// A Socket.IO packet (the Engine.IO message's payload). `Err` closes the connection.
    fn on_packet(&mut self, packet: &str) -> Result<(), &'static str> {
        let mut chars = packet.char_indices();
        let kind = chars.next().map(|(_, c)| c).ok_or("empty packet")?;
        let rest = &packet[kind.len_utf8()..];
        let (nsp, rest) = match rest.strip_prefix('/') {
            Some(_) => rest.split_once(',').unwrap_or((rest, "")),
            None => ("/", rest),
        };
        match kind {
            '0' => {
                if nsp != "/" {
                    let body = serde_json::json!({"message": "Invalid namespace"});
                    self.queue(Out::Frame(format!("44{nsp},{body}").into()));
                    return Ok(());
                }
                if self.connected {
                    return Ok(());
                }
                let auth = match rest {
                    "" => None,
                    json => match serde_json::from_str::<Value>(json) {
                        Ok(v @ Value::Object(_)) => Some(v),
                        _ => return Err("CONNECT payload is not an object"),
                    },
                };
                self.connected = true;
                let ack = format!(r#"40{{"sid":"{}"}}"#, random_id());
                self.queue(Out::Frame(ack.into()));
                if let Some(credentials) = auth.as_ref().and_then(handshake_credentials) {
                    self.on_event(Job::HandshakeAuth(Box::new(credentials)));
                }
                Ok(())
            }
            '1' if nsp == "/" => Err("client disconnected"),
            '2' | '5' if nsp == "/" && self.connected => {
                // The attachments of a binary event follow as binary frames, which are skipped.
                let ((ack, _attachments), json) = split_ack_id(rest, kind == '5')?;
                let (name, data) = parse_event(json)?;
                let data = if kind == '5' {
                    Err("binary attachments are not supported".to_string())
                } else {
                    data
                };
                self.on_event(Job::Event { name, data, ack });
                Ok(())
            }
            // Client acks (the server asks for none), packets of other namespaces and events
            // before CONNECT are ignored, as socket.io does.
            '1'..='6' => Ok(()),
            _ => Err("unknown packet type"),
        }
    }

    fn on_event(&mut self, job: Job) {
        if self.running.is_none()
            && self.pending.is_empty()
            && let Some(session) = self.session.take()
        {
            self.running = Some(start(self.chat.clone(), session, job));
            return;
        }
        if self.pending.len() >= MAX_PENDING_EVENTS {
            let e = ChatError::RateLimited;
            self.emit_error(&e);
            if let Job::Event { ack: Some(id), .. } = job {
                self.ack(id, &ack_body(&Err(e)));
            }
            return;
        }
        self.pending.push_back(job);
    }

    /// Starts the next waiting job when none runs.
    fn start_next(&mut self) {
        if self.running.is_some() {
            return;
        }
        if let Some(job) = self.pending.pop_front()
            && let Some(session) = self.session.take()
        {
            self.running = Some(start(self.chat.clone(), session, job));
        }
        if self.pending.is_empty() && self.pending.capacity() > 0 {
            // A burst is over: give its memory back.
            self.pending = VecDeque::new();
        }
    }

    fn finish(&mut self, outcome: Outcome) {
        let result = match outcome {
            Outcome::Event(ack, result) => {
                if let Err(e) = &result {
                    self.emit_error(e);
                }
                if let Some(id) = ack {
                    self.ack(id, &ack_body(&result));
                }
                result.map(|_| ())
            }
            Outcome::Auth(result) => {
                if let Err(e) = &result {
                    self.emit_error(e);
                }
                result
            }
        };
        if let Err(e) = result
            && e.closes_connection()
        {
            self.sink.close();
        }
    }

    fn deadline_passed(&mut self) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        match self.chat.deadline_passed(session) {
            Some(Deadline::Notify(e)) => self.emit_error(&e),
            Some(Deadline::Close(e)) => {
                self.emit_error(&e);
                self.sink.close();
            }
            None => {}
        }
    }

    /// Ends the session: the running event finishes (a store write is never cut in half), the
    /// events already received run unless the server closed the session, the chat forgets the
    /// connection, and what is queued for the client is written before the WebSocket closes.
    async fn close(mut self, end: End, link: &mut Link) {
        if end != End::Server
            && let Link::Polling(polling) = link
        {
            // Packets whose POST was answered `ok` count as received.
            while let Some(payload) = polling.accepted_payload() {
                if self.on_payload(&payload).is_err() {
                    break;
                }
            }
        }
        if let Some(running) = self.running.take() {
            let (session, outcome) = running.await;
            self.session = Some(session);
            self.finish(outcome);
        }
        if end != End::Server {
            while let Some(job) = self.pending.pop_front() {
                let Some(session) = self.session.take() else {
                    break;
                };
                let (session, outcome) = start(self.chat.clone(), session, job).await;
                self.session = Some(session);
                self.finish(outcome);
            }
        }
        if let Some(mut session) = self.session.take() {
            Box::pin(self.chat.disconnect(&mut session)).await;
        }
        let (slow, mut frames) = {
            let mut outbox = self.sink.outbox.lock();
            outbox.closed = true;
            let slow = end == End::Server && outbox.frames.len() >= self.sink.max_queued;
            if slow {
                // A slow consumer: nothing more is written to it.
                outbox.frames.clear();
            }
            match link {
                // The next GET takes what is left, with the close packet.
                Link::Polling(_) => (slow, VecDeque::new()),
                Link::Ws(_) => (slow, std::mem::take(&mut outbox.frames)),
            }
        };
        let ws = match link {
            Link::Polling(polling) => return polling.close(end).await,
            Link::Ws(ws) => ws,
        };
        if slow {
            return;
        }
        let flushed = async {
            if matches!(
                write_frames(ws, &mut frames, &Notify::new()).await,
                Written::Failed
            ) {
                return;
            }
            let _ = ws
                .send(Message::Close(Some(CloseFrame {
                    code: 1000,
                    reason: Utf8Bytes::from_static(""),
                })))
                .await;
        };
        let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, flushed).await;
    }
}

/// An EVENT's arguments `[name, data, ...]`: the name (empty when not a string) and the first
/// argument, or why it cannot be read (missing, or a value no decoder takes, such as nesting
/// deeper than serde_json's recursion limit: that is the client's `invalid_payload`, not a
/// broken packet). Later arguments are ignored, as socketioxide's `Data` extractor did.
fn parse_event(json: &str) -> Result<(String, Result<Value, String>), &'static str> {
    let name_of = |v: Value| match v {
        Value::String(name) => name,
        _ => String::new(),
    };
    // One pass for a well-formed event, the common case.
    if let Ok((Some(name), data)) = read_args(json, Args::Both) {
        let data = data.ok_or_else(|| "first element not found".to_string());
        return Ok((name_of(name), data));
    }
    // The name alone (the rest skipped without decoding), then the data alone, for its error.
    let Ok((Some(name), _)) = read_args(json, Args::Name) else {
        return Err("EVENT payload is not an array with a name");
    };
    let data = match read_args(json, Args::Data) {
        Ok((_, Some(data))) => Ok(data),
        Ok((_, None)) => Err("first element not found".to_string()),
        Err(e) => Err(e.to_string()),
    };
    Ok((name_of(name), data))
}

#[derive(Clone, Copy)]
enum Args {
    Both,
    Name,
    Data,
}

impl<'de> serde::de::Visitor<'de> for Args {
    type Value = (Option<Value>, Option<Value>);

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of event arguments")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        use serde::de::IgnoredAny;
        let name = match self {
            Args::Data => seq.next_element::<IgnoredAny>()?.map(|_| Value::Null),
            _ => seq.next_element::<Value>()?,
        };
        let data = match self {
            Args::Name => None,
            _ => seq.next_element::<Value>()?,
        };
        // Skipping does not decode, so it has no depth limit.
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok((name, data))
    }
}

fn read_args(json: &str, what: Args) -> serde_json::Result<(Option<Value>, Option<Value>)> {
    use serde::Deserializer as _;
    let mut de = serde_json::Deserializer::from_str(json);
    let args = (&mut de).deserialize_seq(what)?;
    de.end()?;
    Ok(args)
}

/// Splits `[ack id]json` (EVENT) or `attachments-[ack id]json` (BINARY_EVENT).
fn split_ack_id(rest: &str, binary: bool) -> Result<((Option<u64>, usize), &str), &'static str> {
    let (attachments, rest) = if binary {
        let (n, rest) = rest
            .split_once('-')
            .ok_or("BINARY_EVENT without attachments")?;
        (
            n.parse::<usize>().map_err(|_| "bad attachment count")?,
            rest,
        )
    } else {
        (0, rest)
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let ack = match digits {
        0 => None,
        _ => Some(rest[..digits].parse::<u64>().map_err(|_| "bad ack id")?),
    };
    Ok(((ack, attachments), &rest[digits..]))
}

/// 20 URL-safe characters, like the ids socket.io hands out.
pub(super) fn random_id() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 15]>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_arguments() {
        let ok = |json| parse_event(json).unwrap();
        assert_eq!(
            ok(r#"["join_room",{"roomId":"r"},5]"#),
            ("join_room".into(), Ok(serde_json::json!({"roomId": "r"})))
        );
        assert_eq!(
            ok(r#"["join_room"]"#),
            ("join_room".into(), Err("first element not found".into()))
        );
        assert_eq!(ok(r#"[7,{}]"#).0, "");
        let deep = format!(
            r#"["send_message",{}{}]"#,
            "[".repeat(5000),
            "]".repeat(5000)
        );
        let (name, data) = ok(&deep);
        assert_eq!(name, "send_message");
        assert!(data.unwrap_err().contains("recursion"));
        assert!(parse_event(r#"{"a":1}"#).is_err());
        assert!(parse_event("[]").is_err());
        assert!(parse_event(r#"["a",1"#).is_err());
    }

    #[test]
    fn ack_ids_and_attachments() {
        assert_eq!(
            split_ack_id(r#"12["a"]"#, false).unwrap(),
            ((Some(12), 0), r#"["a"]"#)
        );
        assert_eq!(
            split_ack_id(r#"["a"]"#, false).unwrap(),
            ((None, 0), r#"["a"]"#)
        );
        assert_eq!(
            split_ack_id(r#"2-7["a"]"#, true).unwrap(),
            ((Some(7), 2), r#"["a"]"#)
        );
        assert!(split_ack_id(r#"["a"]"#, true).is_err());
        assert!(split_ack_id("99999999999999999999999[]", false).is_err());
    }
}
