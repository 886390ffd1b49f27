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
//! Upgrade, as socket.io-client does it: a WebSocket with the session's `sid` sends `2probe`,
//! gets `3probe`; the pending GET is answered with a noop `6` so the client can pause polling;
//! the client sends `5` on the WebSocket, and the WebSocket is handed to the session's task:
//! the carrier becomes that WebSocket, and the task writes the outbox to it from then on. Nothing queued is lost or reordered: frames
//! stay in the one outbox until the GET or the WebSocket takes them, and the client sends `5`
//! only after its last poll has completed.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};

use super::codec::{self, SioCodec};
use super::{SocketIoState, engine_error};
use crate::transport::session::{self, Carrier, Codec, End, Input, Out, SessionSink, Written};
use crate::transport::websocket::{close_websocket, limited_upgrade, next_input, write_frames};

/// Polling sessions by Engine.IO id; a session leaves it when it upgrades or ends.
pub type Sessions = Arc<Mutex<HashMap<String, Arc<PollSession>>>>;

/// How long a client may take from opening the upgrade WebSocket to sending `5`.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);
/// POST payloads waiting for the session's task.
const INCOMING_PAYLOADS: usize = 4;

/// What the HTTP requests of a polling session share with its task.
pub struct PollSession {
    sink: Arc<SessionSink>,
    incoming: mpsc::Sender<Incoming>,
    getting: AtomicBool,
    posting: AtomicBool,
    upgrading: AtomicBool,
    upgraded: AtomicBool,
    /// A GET has delivered the close packet.
    close_sent: Notify,
}

pub enum Incoming {
    Payload(String),
    Upgrade(Box<WebSocket>),
}

/// The task's side of a polling session.
pub struct PollLink {
    shared: Arc<PollSession>,
    rx: mpsc::Receiver<Incoming>,
    sid: String,
    sessions: Sessions,
}

/// A polling session's carrier: long-polling until an upgrade hands over a WebSocket. The
/// WebSocket is inline: boxing it would cost each upgraded session an allocation.
#[allow(clippy::large_enum_variant)]
pub enum PollCarrier {
    Polling(Box<PollLink>),
    Ws(WebSocket),
}

impl Carrier for PollCarrier {
    async fn next(&mut self) -> Input {
        let polling = match self {
            PollCarrier::Ws(ws) => return next_input(ws).await,
            PollCarrier::Polling(polling) => polling,
        };
        match polling.rx.recv().await {
            Some(Incoming::Payload(payload)) => Input::Payload(payload),
            Some(Incoming::Upgrade(ws)) => {
                polling.upgraded();
                *self = PollCarrier::Ws(*ws);
                Input::Upgraded
            }
            None => Input::Closed,
        }
    }

    fn writes(&self) -> bool {
        matches!(self, PollCarrier::Ws(_))
    }

    async fn write<C: Codec>(&mut self, frames: &mut VecDeque<Out>, kill: &Notify) -> Written {
        match self {
            PollCarrier::Ws(ws) => write_frames::<C>(ws, frames, kill).await,
            // The GETs take the outbox.
            PollCarrier::Polling(_) => Written::Ok,
        }
    }

    fn accepted(&mut self) -> Option<Input> {
        match self {
            PollCarrier::Polling(polling) => polling.accepted_payload().map(Input::Payload),
            PollCarrier::Ws(_) => None,
        }
    }

    async fn close<C: Codec>(&mut self, sink: &SessionSink, end: End, slow: bool) {
        match self {
            PollCarrier::Polling(polling) => polling.close(end).await,
            PollCarrier::Ws(ws) => close_websocket::<C>(ws, sink, slow).await,
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

    /// The session now runs on its WebSocket: polling requests are refused from here on.
    fn upgraded(&self) {
        self.shared.upgraded.store(true, Ordering::Release);
        self.sessions.lock().remove(&self.sid);
        // A GET still waiting (a client that did not pause) returns.
        self.shared.sink.wake.notify_one();
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
        self.sessions.lock().remove(&self.sid);
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
    /// Admits a GET or POST (`flag` says which is pending): refused after the upgrade, and a
    /// second one of the same kind while one is pending breaks the session, as in engine.io.
    /// `None`: answer 400.
    fn admit<'a>(&self, flag: &'a AtomicBool, what: &str) -> Option<Busy<'a>> {
        if self.upgraded.load(Ordering::Acquire) {
            return None;
        }
        if flag.swap(true, Ordering::AcqRel) {
            tracing::debug!("socket.io polling: overlapping {what}, closing");
            self.sink.kill.notify_one();
            return None;
        }
        Some(Busy(flag))
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
pub fn handshake(state: &SocketIoState) -> Response {
    let sid = crate::transport::session::random_id();
    let sink = SessionSink::new(state.cfg.session.max_queued_frames);
    let (tx, rx) = mpsc::channel(INCOMING_PAYLOADS);
    let shared = Arc::new(PollSession {
        sink: sink.clone(),
        incoming: tx,
        getting: AtomicBool::new(false),
        posting: AtomicBool::new(false),
        upgrading: AtomicBool::new(false),
        upgraded: AtomicBool::new(false),
        close_sent: Notify::new(),
    });
    state.sessions.lock().insert(sid.clone(), shared.clone());
    let carrier = PollCarrier::Polling(Box::new(PollLink {
        shared,
        rx,
        sid: sid.clone(),
        sessions: state.sessions.clone(),
    }));
    let open = codec::open_packet(&sid, true, &state.cfg.session);
    let session = session::run(
        state.chat.clone(),
        state.cfg.session.clone(),
        sink,
        SioCodec::default(),
        carrier,
    );
    tokio::spawn(state.cfg.session.workers.track_future(session));
    text(open, PLAIN)
}

/// A GET: everything queued, as one payload, once there is something.
pub async fn poll(session: Arc<PollSession>) -> Response {
    let Some(_busy) = session.admit(&session.getting, "GET") else {
        return bad_request();
    };
    loop {
        if session.upgraded.load(Ordering::Acquire) {
            // The task writes the WebSocket now; pass on the wake-up this took.
            session.sink.wake.notify_one();
            return text("6", PLAIN);
        }
        let (mut frames, closed) = {
            let mut outbox = session.sink.outbox.lock();
            (std::mem::take(&mut outbox.frames), outbox.closed)
        };
        if frames.is_empty() && !closed {
            session.sink.give_back(frames);
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
            payload.push_str(&codec::packet_text(out));
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
        session.sink.kill.notify_one();
        return bad_request();
    };
    if session
        .incoming
        .send(Incoming::Payload(payload))
        .await
        .is_err()
    {
        return engine_error(1, "Session ID unknown");
    }
    text("ok", "text/html")
}

/// A WebSocket with a polling session's `sid`: the upgrade.
pub fn upgrade(state: &SocketIoState, session: Arc<PollSession>, ws: WebSocketUpgrade) -> Response {
    if session.upgraded.load(Ordering::Acquire) || session.upgrading.swap(true, Ordering::AcqRel) {
        return bad_request();
    }
    limited_upgrade(ws, state.cfg.session.max_payload_bytes)
        .on_upgrade(move |socket| probe(session, socket))
}

/// `2probe` → `3probe`, a noop for the pending GET, then `5`: the WebSocket goes to the
/// session's task. Anything else, or a timeout, drops this WebSocket and the session goes on
/// polling.
async fn probe(session: Arc<PollSession>, mut ws: WebSocket) {
    let probed = tokio::time::timeout(UPGRADE_TIMEOUT, async {
        expect(&mut ws, "2probe").await?;
        ws.send(Message::Text(Utf8Bytes::from_static("3probe")))
            .await
            .ok()?;
        // Ignored when the outbox is closed or full: the session is ending, or a GET is due.
        let _ = session.sink.push(Out::Frame(Utf8Bytes::from_static("6")));
        expect(&mut ws, "5").await
    })
    .await;
    if let Ok(Some(())) = probed
        && session
            .incoming
            .send(Incoming::Upgrade(Box::new(ws)))
            .await
            .is_ok()
    {
        return;
    }
    tracing::debug!("socket.io: upgrade probe failed");
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
