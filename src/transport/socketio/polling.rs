//! Engine.IO v4 long-polling, and the upgrade of a polling session to WebSocket.
//!
//! A polling session runs on the session engine (`transport::session::run`) like a WebSocket
//! one; this file is its carrier (`PollCarrier`). The handshake GET starts the task and answers with the open packet
//! (`upgrades: ["websocket"]`). A POST's payload (packets separated by `\x1e`) goes to the task
//! through a small bounded channel, so a client that posts faster than its events run waits
//! for its POST. A GET takes the whole outbox (the same one a WebSocket writes) as one
//! payload, or waits until something is queued; the server's ping every `ping_interval`
//! bounds that wait. As in engine.io, a second GET (or POST) while one is pending breaks the
//! session; a body above `MAX_PAYLOAD_BYTES` gets `413`.
//!
//! The end of a session, as engine.io: a POST with the close packet `1` answers a pending GET
//! with a noop `6`; a session the client ended (close packet, a packet of no Engine.IO type,
//! no pong within `ping_timeout`) refuses every later request with 400 at once, while its
//! last events still run. A request that arrives after the pong was due is refused even if
//! the task's timer has not run yet. Only a shutdown or a server-side close (`41`) lets a GET
//! take what is left with the close packet `1`.
//!
//! Upgrade, as socket.io-client does it: a WebSocket with the session's `sid` sends `2probe`,
//! gets `3probe`; from then on a GET with nothing to take is answered with a noop `6` at once
//! (the pending one too), so the client can pause polling; the noop never reaches the
//! WebSocket. The client sends `5` on the WebSocket, and the WebSocket is handed to the session's task:
//! the carrier becomes that WebSocket, and the task writes the outbox to it from then on. Nothing queued is lost or reordered: frames
//! stay in the one outbox until the GET or the WebSocket takes them, and the client sends `5`
//! only after its last poll has completed. The `sid` stays known until the session ends:
//! polling requests for it get 400, another WebSocket for it is accepted and closed at once
//! (engine.io does the same).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use super::codec;
use super::{SocketIoState, engine_error};
use crate::transport::session::{self, Carrier, Codec, End, Input, Out, SessionSink, Written};
use crate::transport::websocket::{close_websocket, limited_upgrade, next_input, write_frames};

/// Sessions by Engine.IO id, from the handshake until the session ends.
pub type Sessions = Arc<Mutex<HashMap<String, Entry>>>;

/// What an Engine.IO id names.
#[derive(Clone)]
pub enum Entry {
    /// A polling session (or one whose upgrade is under way).
    Polling(Arc<PollSession>),
    /// A session that upgraded to a WebSocket: only its id is kept (polling requests get
    /// 400, another WebSocket is closed), not the polling state.
    Upgraded,
}

/// How long a client may take from opening the upgrade WebSocket to sending `5`.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);
/// POST payloads waiting for the session's task.
const INCOMING_PAYLOADS: usize = 4;

/// `PollSession::ended`: the session is live; the client closed it (`1`); the session ended
/// otherwise for the client (gone silent, broke the protocol).
const LIVE: u8 = 0;
const CLIENT_CLOSED: u8 = 1;
const GONE: u8 = 2;

/// What the HTTP requests of a polling session share with its task.
pub struct PollSession {
    sink: Arc<SessionSink>,
    incoming: mpsc::Sender<Incoming>,
    getting: AtomicBool,
    posting: AtomicBool,
    upgrading: AtomicBool,
    /// The upgrade's probe was answered: GETs are ended with a noop.
    probed: AtomicBool,
    upgraded: AtomicBool,
    /// `LIVE`, `CLIENT_CLOSED` or `GONE`: requests are refused unless `LIVE`.
    ended: AtomicU8,
    /// When the client's answer to the server's ping is due (none while not awaited).
    pong_due: Mutex<Option<Instant>>,
    /// A GET has delivered the close packet.
    close_sent: Notify,
}

pub enum Incoming {
    Payload(String),
    Upgrade(Box<WebSocket>),
}

/// A session's place in `Sessions`: the entry goes when the session's carrier does.
struct Registered {
    sid: String,
    sessions: Sessions,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.sessions.lock().remove(&self.sid);
    }
}

/// The task's side of a polling session.
pub struct PollLink {
    shared: Arc<PollSession>,
    rx: mpsc::Receiver<Incoming>,
}

/// A polling session's carrier: long-polling until an upgrade hands over a WebSocket.
pub struct PollCarrier {
    transport: Transport,
    _registered: Registered,
}

/// The WebSocket is inline: boxing it would cost each upgraded session an allocation.
#[allow(clippy::large_enum_variant)]
enum Transport {
    Polling(Box<PollLink>),
    Ws(WebSocket),
}

impl Carrier for PollCarrier {
    async fn next(&mut self) -> Input {
        let polling = match &mut self.transport {
            Transport::Ws(ws) => return next_input(ws).await,
            Transport::Polling(polling) => polling,
        };
        match polling.rx.recv().await {
            Some(Incoming::Payload(payload)) => Input::Payload(payload),
            Some(Incoming::Upgrade(ws)) => {
                // The probe marked the session upgraded; what waits in the outbox goes out
                // on the WebSocket.
                self.transport = Transport::Ws(*ws);
                Input::Upgraded
            }
            None => Input::Closed,
        }
    }

    fn writes(&self) -> bool {
        matches!(self.transport, Transport::Ws(_))
    }

    fn polling(&self) -> bool {
        matches!(self.transport, Transport::Polling(_))
    }

    async fn write<C: Codec>(&mut self, frames: &mut VecDeque<Out>, kill: &Notify) -> Written {
        match &mut self.transport {
            Transport::Ws(ws) => write_frames::<C>(ws, frames, kill).await,
            // The GETs take the outbox.
            Transport::Polling(_) => Written::Ok,
        }
    }

    fn accepted(&mut self) -> Option<Input> {
        match &mut self.transport {
            Transport::Polling(polling) => polling.accepted_payload().map(Input::Payload),
            Transport::Ws(_) => None,
        }
    }

    fn awaiting_pong(&mut self, due: Option<Instant>) {
        if let Transport::Polling(polling) = &self.transport {
            *polling.shared.pong_due.lock() = due;
        }
    }

    fn ending(&mut self, end: End) {
        if let Transport::Polling(polling) = &self.transport
            && end == End::Client
        {
            polling.shared.end(GONE);
        }
    }

    async fn close<C: Codec>(&mut self, sink: &SessionSink, end: End, slow: bool) {
        match &mut self.transport {
            Transport::Polling(polling) => polling.close(end).await,
            Transport::Ws(ws) => close_websocket::<C>(ws, sink, slow).await,
        }
    }
}

impl PollLink {
    /// A payload already accepted (its POST answered `ok`) and not yet read.
    fn accepted_payload(&mut self) -> Option<String> {
        loop {
            match self.rx.try_recv().ok()? {
                Incoming::Payload(payload) => return Some(payload),
                // A WebSocket probe that completed too late: dropped (closed).
                Incoming::Upgrade(_) => {}
            }
        }
    }

    /// The task has ended and closed the outbox: a GET takes what is left with the close packet
    /// `1`. On shutdown that GET is waited for (bounded), so the client learns it should
    /// reconnect; a client that closed, went silent or broke the protocol is not waited for.
    async fn close(&mut self, end: End) {
        self.shared.sink.wake.notify_one();
        if end == End::Shutdown {
            let _ = tokio::time::timeout(Duration::from_secs(5), self.shared.close_sent.notified())
                .await;
        }
    }
}

/// Clears a request-in-progress flag when the request ends (also when its client goes away).
struct Busy<'a>(&'a AtomicBool);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl PollSession {
    /// Admits a GET or POST (`flag` says which is pending): refused after the upgrade, after
    /// the client ended the session or once its pong is overdue; a second one of the same kind
    /// while one is pending breaks the session, as in engine.io. `None`: answer 400.
    fn admit<'a>(&self, flag: &'a AtomicBool, what: &str) -> Option<Busy<'a>> {
        if self.upgraded.load(Ordering::Acquire) || self.ended.load(Ordering::Acquire) != LIVE {
            return None;
        }
        if self
            .pong_due
            .lock()
            .is_some_and(|due| due <= Instant::now())
        {
            tracing::debug!("socket.io polling: request after the pong was due");
            return None;
        }
        if flag.swap(true, Ordering::AcqRel) {
            tracing::debug!("socket.io polling: overlapping {what}, closing");
            self.end(GONE);
            self.sink.kill.notify_one();
            return None;
        }
        Some(Busy(flag))
    }

    /// The session ended for the client (`how`: `CLIENT_CLOSED` or `GONE`; the first one
    /// counts): requests are refused from now on, and a pending GET returns.
    fn end(&self, how: u8) {
        let _ = self
            .ended
            .compare_exchange(LIVE, how, Ordering::AcqRel, Ordering::Acquire);
        self.sink.wake.notify_one();
    }
}

/// Content type of the polling payloads and the open packet.
const PLAIN: &str = "text/plain; charset=UTF-8";

fn text(body: impl Into<axum::body::Body>, content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body.into()).into_response()
}

fn bad_request() -> Response {
    engine_error(3, "Bad request")
}

/// The handshake GET: starts the session's task and returns the open packet.
pub fn handshake<C: Codec + Clone>(state: &SocketIoState<C>) -> Response {
    let sid = crate::transport::session::random_id();
    let sink = SessionSink::new(state.cfg.session.max_queued_frames);
    let (tx, rx) = mpsc::channel(INCOMING_PAYLOADS);
    let shared = Arc::new(PollSession {
        sink: sink.clone(),
        incoming: tx,
        getting: AtomicBool::new(false),
        posting: AtomicBool::new(false),
        upgrading: AtomicBool::new(false),
        probed: AtomicBool::new(false),
        upgraded: AtomicBool::new(false),
        ended: AtomicU8::new(LIVE),
        pong_due: Mutex::new(None),
        close_sent: Notify::new(),
    });
    state
        .sessions
        .lock()
        .insert(sid.clone(), Entry::Polling(shared.clone()));
    let open = codec::open_packet(&sid, true, &state.cfg.session);
    let carrier = PollCarrier {
        transport: Transport::Polling(Box::new(PollLink { shared, rx })),
        _registered: Registered {
            sid,
            sessions: state.sessions.clone(),
        },
    };
    let session = session::run(
        state.chat.clone(),
        state.cfg.session.clone(),
        sink,
        state.codec.clone(),
        carrier,
    );
    tokio::spawn(state.cfg.session.workers.track_future(session));
    text(open, PLAIN)
}

/// A GET: everything queued, as one payload, once there is something.
pub async fn poll<C: Codec>(session: Arc<PollSession>) -> Response {
    let Some(_busy) = session.admit(&session.getting, "GET") else {
        return bad_request();
    };
    loop {
        if session.upgraded.load(Ordering::Acquire) {
            // The task writes the WebSocket now; pass on the wake-up this took.
            session.sink.wake.notify_one();
            return text("6", PLAIN);
        }
        match session.ended.load(Ordering::Acquire) {
            // The client closed the session: the pending poll ends with a noop.
            CLIENT_CLOSED => return text("6", PLAIN),
            GONE => return text("1", PLAIN),
            _ => {}
        }
        let (mut frames, closed) = {
            let mut outbox = session.sink.outbox.lock();
            (std::mem::take(&mut outbox.frames), outbox.closed)
        };
        if frames.is_empty() && !closed {
            session.sink.give_back(frames);
            if session.probed.load(Ordering::Acquire) {
                // An upgrade is under way: end this poll so the client can pause polling.
                return text("6", PLAIN);
            }
            session.sink.wake.notified().await;
            continue;
        }
        let mut payload = String::new();
        let mut disconnect = false;
        for out in frames.drain(..) {
            disconnect = matches!(out, Out::Disconnect);
            if !payload.is_empty() {
                payload.push('\x1e');
            }
            payload.push_str(&codec::packet_text::<C>(out));
            if disconnect {
                // The session is closed by the server: nothing after `41`.
                break;
            }
        }
        if !closed {
            session.sink.give_back(frames);
        }
        if disconnect {
            session.sink.kill.notify_one();
        }
        if closed {
            if !payload.is_empty() {
                payload.push('\x1e');
            }
            payload.push('1');
            session.close_sent.notify_one();
        }
        return text(payload, PLAIN);
    }
}

/// What a POST's payload means for the Engine.IO session.
#[derive(Debug, PartialEq, Eq)]
enum Scan {
    Packets,
    /// It carries the close packet `1`.
    Close,
    /// A packet of no Engine.IO type a client sends (or an empty one): the session ends.
    Invalid,
}

/// Checks a payload's packet types (`1` close, `2` ping, `3` pong, `4` message, `6` noop,
/// `b` base64 binary message); the packets themselves are the codec's.
fn scan(payload: &str) -> Scan {
    for packet in payload.split('\x1e') {
        match packet.as_bytes().first() {
            Some(b'1') => return Scan::Close,
            Some(b'2' | b'3' | b'4' | b'6' | b'b') => {}
            _ => return Scan::Invalid,
        }
    }
    Scan::Packets
}

/// A POST: the client's packets, for the session's task.
pub async fn post(session: Arc<PollSession>, body: Result<Bytes, Response>) -> Response {
    let Some(_busy) = session.admit(&session.posting, "POST") else {
        return bad_request();
    };
    // Over `MAX_PAYLOAD_BYTES`: 413, as engine.io answers (the session stays).
    let body = match body {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let Ok(payload) = String::from_utf8(body.into()) else {
        tracing::debug!("socket.io polling: payload is not UTF-8, closing");
        session.end(GONE);
        session.sink.kill.notify_one();
        return bad_request();
    };
    // Decided here, not when the task reads the payload, so the next request already sees
    // the session ended; the packets before the end still run.
    let scanned = scan(&payload);
    match scanned {
        Scan::Close => session.end(CLIENT_CLOSED),
        Scan::Invalid => {
            tracing::debug!("socket.io polling: bad engine.io packet, closing");
            session.end(GONE);
        }
        Scan::Packets => {}
    }
    if session
        .incoming
        .send(Incoming::Payload(payload))
        .await
        .is_err()
    {
        return engine_error(1, "Session ID unknown");
    }
    match scanned {
        Scan::Invalid => bad_request(),
        _ => text("ok", "text/html"),
    }
}

/// A WebSocket with a polling session's `sid`: the upgrade. One for a session that is already
/// upgrading or upgraded is accepted and closed at once, as engine.io does.
pub fn upgrade<C>(
    state: &SocketIoState<C>,
    sid: &str,
    session: Arc<PollSession>,
    ws: WebSocketUpgrade,
) -> Response {
    if session.ended.load(Ordering::Acquire) != LIVE {
        return engine_error(1, "Session ID unknown");
    }
    if session.upgraded.load(Ordering::Acquire) || session.upgrading.swap(true, Ordering::AcqRel) {
        return super::accept_and_close(ws);
    }
    let (sid, sessions) = (sid.to_string(), state.sessions.clone());
    limited_upgrade(ws, state.cfg.session.max_payload_bytes)
        .on_upgrade(move |socket| probe(session, socket, sid, sessions))
}

/// `2probe` → `3probe` (GETs are ended with a noop from then on), then `5`: the session is
/// upgraded and the WebSocket goes to the session's task. Anything else, or a timeout, drops
/// this WebSocket and the session goes on polling.
async fn probe(session: Arc<PollSession>, mut ws: WebSocket, sid: String, sessions: Sessions) {
    let probed = tokio::time::timeout(UPGRADE_TIMEOUT, async {
        expect(&mut ws, "2probe").await?;
        ws.send(Message::Text(Utf8Bytes::from_static("3probe")))
            .await
            .ok()?;
        session.probed.store(true, Ordering::Release);
        session.sink.wake.notify_one();
        expect(&mut ws, "5").await
    })
    .await;
    if let Ok(Some(())) = probed {
        // Upgraded from here on: a GET still waiting returns, later ones get 400, the polling
        // state is released (only the id stays known).
        session.upgraded.store(true, Ordering::Release);
        session.sink.wake.notify_one();
        if let Some(entry) = sessions.lock().get_mut(&sid) {
            *entry = Entry::Upgraded;
        }
        // Fails only when the session ended meanwhile: the WebSocket is dropped.
        let _ = session.incoming.send(Incoming::Upgrade(Box::new(ws))).await;
        return;
    }
    tracing::debug!("socket.io: upgrade probe failed");
    session.probed.store(false, Ordering::Release);
    session.upgrading.store(false, Ordering::Release);
}

/// Reads until a text frame; `Some` when it is `want`.
async fn expect(ws: &mut WebSocket, want: &str) -> Option<()> {
    loop {
        match ws.next().await? {
            Ok(Message::Text(text)) => return (text.as_str() == want).then_some(()),
            Ok(Message::Ping(_) | Message::Pong(_)) => {}
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_scan() {
        assert_eq!(scan("3"), Scan::Packets);
        assert_eq!(scan("42[\"a\"]\x1ebAQID\x1e6\x1e2"), Scan::Packets);
        assert_eq!(scan("4hello\x1e1"), Scan::Close);
        assert_eq!(scan("abc"), Scan::Invalid);
        assert_eq!(scan(""), Scan::Invalid);
        assert_eq!(scan("3\x1e\x1e3"), Scan::Invalid);
        assert_eq!(scan("5"), Scan::Invalid);
    }
}
