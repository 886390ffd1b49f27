//! The session engine: one task per client connection, whatever its protocol and carrier.
//!
//! Map of this folder:
//! - `mod.rs`: the task (`run`): it reads the carrier, writes the outbox, sends heartbeats,
//!   watches the chat deadlines, and ends the session (slow consumer, client close, shutdown);
//!   the `Codec` and `Carrier` traits the protocols and transports implement.
//! - `outbox.rs`: the bounded outbox (`SessionSink`), also the session's `ClientSink`.
//! - `events.rs`: the client events of a session, run one at a time in arrival order.
//!
//! A protocol is a `Codec`: Engine.IO/Socket.IO framing (`transport/socketio/codec.rs`) or raw
//! JSON frames (`transport/ws/`). A transport is a `Carrier`: a WebSocket
//! (`transport/websocket.rs`, both protocols) or HTTP long-polling
//! (`transport/socketio/polling.rs`, Socket.IO only, which can hand the session over to a
//! WebSocket: the upgrade). Codecs and carriers depend on this engine, never the reverse.
//!
//! What every session gets from here:
//! - one task that owns the connection; its future stays small (the running event, the socket
//!   writes and the end of the session are boxed futures that exist only while they run), so
//!   an idle connection costs about 5 KB (BENCHMARKS.md, S3);
//! - per-connection ordering: events run one at a time in arrival order (`events.rs`), and
//!   backpressure: while `MAX_PENDING_EVENTS` wait, the carrier is not read (a WebSocket's
//!   client waits on TCP, a polling POST is held), so a burst is processed, never refused;
//! - the outbox: a broadcast's frame is encoded once and shared by every recipient; what was
//!   queued while the socket was busy goes out in one write; a full outbox is a slow consumer,
//!   cut off at once;
//! - heartbeats: a ping every `ping_interval`, and a session whose client does not answer
//!   within `ping_timeout` is closed;
//! - shutdown: the events already received run (and are acked while the connection is open),
//!   then the carrier closes without a protocol-level disconnect, so clients reconnect.

pub mod events;
pub mod outbox;

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::Utf8Bytes;
use serde_json::Value;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::chat::ChatService;
use crate::chat::wire::ServerEvent;
use crate::metrics::{CloseReason, Transport};
use crate::transport::sleep_until_deadline;

/// A random id of 20 URL-safe characters, the shape of Engine.IO's `sid` and Socket.IO's
/// `socket.id`.
pub fn random_id() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 15]>())
}
pub use events::Conn;
pub use outbox::{Out, SessionSink};

/// The `ServerEvent::encoded` slot of each protocol's event frame: `42["name",data]` and
/// `{"event":"name","data":data}`.
pub const SIO_FRAME: usize = 0;
pub const RAW_FRAME: usize = 1;

/// What every session shares, whatever its protocol.
pub struct SessionConfig {
    pub max_payload_bytes: usize,
    /// Outbound frames queued per connection before it counts as a slow consumer.
    pub max_queued_frames: usize,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    /// How long a client may take to complete its protocol's connect (Socket.IO's namespace
    /// CONNECT); protocols without one are ready at once.
    pub connect_timeout: Duration,
    /// Tracks the session tasks, so shutdown can wait for their in-flight events.
    pub workers: TaskTracker,
    /// Cancelled at shutdown: each session finishes the events it already received (acking
    /// them while the connection is still open), leaves its rooms and closes.
    pub shutdown: CancellationToken,
}

/// What one client input asks of the session's loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Continue,
    /// The client answered the heartbeat.
    Pong,
    /// The client closed or broke the protocol.
    Close,
}

/// A protocol: how client frames become events, and how frames for the client are encoded.
pub trait Codec: Sized + Send + 'static {
    /// One text frame of a WebSocket.
    fn on_text(&mut self, text: &str, conn: &mut Conn<Self>) -> Step;
    /// One long-polling payload (Socket.IO: packets separated by `\x1e`).
    fn on_payload(&mut self, payload: &str, conn: &mut Conn<Self>) -> Step {
        self.on_text(payload, conn)
    }
    /// One binary frame of a WebSocket.
    fn on_binary(&mut self, data: Bytes, conn: &mut Conn<Self>) -> Step;
    /// A WebSocket ping or pong control frame.
    fn on_control(&mut self) -> Step;
    /// Whether the client completed the protocol's connect (else `connect_timeout` runs,
    /// again from when it stops being ready: Socket.IO's namespace DISCONNECT).
    fn ready(&self) -> bool {
        true
    }
    /// The heartbeat the server sends.
    fn ping() -> Out;
    /// An event's frame (cached in the event, so a broadcast is encoded once).
    fn event_frame(event: &ServerEvent) -> Utf8Bytes;
    /// The answer to a client event that asked for one; `body` is JSON text (`ack_body`).
    fn ack_frame(id: &Value, body: &str) -> Utf8Bytes;
    /// What a server-side close sends before the carrier closes (Socket.IO: `41`).
    fn disconnect_frame() -> Option<Utf8Bytes>;
    /// The reason of the WebSocket close frame.
    const CLOSE_REASON: &'static str;
    /// The `transport` label of this protocol's sessions on a WebSocket.
    const WS_TRANSPORT: Transport = Transport::SocketIo;
}

/// What a carrier brought.
pub enum Input {
    /// One WebSocket text frame.
    Text(Utf8Bytes),
    /// One long-polling payload.
    Payload(String),
    Binary(Bytes),
    /// A WebSocket ping or pong.
    Control,
    /// The carrier changed (a polling session upgraded): write the outbox now.
    Upgraded,
    Closed,
}

/// The outcome of writing the outbox.
pub enum Written {
    Ok,
    /// The disconnect went out: the session is closed by the server.
    Disconnected,
    /// Cut off (slow consumer).
    Killed,
    Failed,
}

/// Why the session ended.
#[derive(PartialEq, Eq, Clone, Copy, Debug)]
pub enum End {
    /// The client closed, went silent or broke the protocol: received events still run.
    Client,
    /// The server closed the session (disconnect sent) or cut off a slow consumer.
    Server,
    /// Shutdown: received events run, then the carrier closes without a disconnect.
    Shutdown,
}

/// A transport that carries a session.
pub trait Carrier: Send + 'static {
    /// The client's next input.
    fn next(&mut self) -> impl Future<Output = Input> + Send;
    /// Whether the session's task writes the outbox to this carrier (a WebSocket); on
    /// long-polling the GET requests take it instead.
    fn writes(&self) -> bool;
    /// Writes (drains) `frames` with one flush; gives up when `kill` is notified.
    fn write<C: Codec>(
        &mut self,
        frames: &mut VecDeque<Out>,
        kill: &Notify,
    ) -> impl Future<Output = Written> + Send;
    /// Input the client was told had been received, not yet read (polling: payloads whose
    /// POST was answered `ok`); run before a session that the client ended ends.
    fn accepted(&mut self) -> Option<Input> {
        None
    }
    /// The heartbeat now waits for the client's answer until `due` (`None`: answered). A
    /// carrier whose requests arrive beside the task (polling) refuses them once it is due,
    /// even before the task's timer has run.
    fn awaiting_pong(&mut self, _due: Option<Instant>) {}
    /// The session's loop has ended (before its last events run and the carrier closes): a
    /// carrier that other requests reach (polling) stops admitting them when the client
    /// ended the session.
    fn ending(&mut self, _end: End) {}
    /// Whether the session is on long-polling now (the `transport` label).
    fn polling(&self) -> bool {
        false
    }
    /// Closes the carrier once the session has ended and its outbox is sealed (`slow`: the
    /// client was cut off as a slow consumer; nothing more is written to it).
    fn close<C: Codec>(
        &mut self,
        sink: &SessionSink,
        end: End,
        slow: bool,
    ) -> impl Future<Output = ()> + Send;
}

/// The session's task. Its future stays small: an idle connection is mostly this task.
///
/// The heartbeat and connect timers start when `run` is called (before the open packet goes
/// out), not when the task is first polled: a client that stops answering is gone at
/// `ping_interval + ping_timeout` after the open packet it received, never later.
pub fn run<C: Codec, K: Carrier>(
    chat: Arc<ChatService>,
    cfg: Arc<SessionConfig>,
    sink: Arc<SessionSink>,
    codec: C,
    carrier: K,
) -> impl Future<Output = ()> + Send {
    let started = Instant::now();
    run_from(started, chat, cfg, sink, codec, carrier)
}

async fn run_from<C: Codec, K: Carrier>(
    started: Instant,
    chat: Arc<ChatService>,
    cfg: Arc<SessionConfig>,
    sink: Arc<SessionSink>,
    mut codec: C,
    mut carrier: K,
) {
    let mut conn = Conn::<C>::new(chat, sink);
    conn.metrics()
        .connection_opened(transport_of::<C>(carrier.polling()));
    // Why the client's side ended it, when the loop knows better than `End::Client`.
    let mut timed_out = None;
    let mut connect_deadline = started + cfg.connect_timeout;
    let mut was_ready = false;
    let heartbeat = tokio::time::sleep_until(started + cfg.ping_interval);
    tokio::pin!(heartbeat);
    let mut awaiting_pong = false;
    let end = loop {
        let ready = codec.ready();
        if was_ready && !ready {
            connect_deadline = Instant::now() + cfg.connect_timeout;
        }
        was_ready = ready;
        let deadline = if !ready {
            Some(connect_deadline.into_std())
        } else {
            conn.deadline()
        };
        let step = tokio::select! {
            biased;
            () = conn.sink.kill.notified() => break End::Server,
            () = cfg.shutdown.cancelled() => break End::Shutdown,
            () = conn.sink.wake.notified(), if carrier.writes() => {
                let mut frames = conn.sink.take();
                match Box::pin(carrier.write::<C>(&mut frames, &conn.sink.kill)).await {
                    Written::Ok => conn.sink.give_back(frames),
                    Written::Disconnected | Written::Killed => break End::Server,
                    Written::Failed => break End::Client,
                }
                continue;
            }
            (session, outcome) = events::poll_running(&mut conn.running) => {
                conn.done(session, outcome);
                continue;
            }
            () = &mut heartbeat => {
                if awaiting_pong && conn.saturated() {
                    // Not reading (backpressure): the answer may wait behind the client's
                    // events, and a client that floods us is alive.
                    let due = Instant::now() + cfg.ping_timeout;
                    heartbeat.as_mut().reset(due);
                    carrier.awaiting_pong(Some(due));
                    continue;
                }
                if awaiting_pong {
                    tracing::debug!("session: no pong in time, closing");
                    timed_out = Some(CloseReason::PingTimeout);
                    break End::Client;
                }
                conn.queue(C::ping());
                awaiting_pong = true;
                // From when the ping was due, so late timers do not add up.
                let due = heartbeat.deadline() + cfg.ping_timeout;
                heartbeat.as_mut().reset(due);
                carrier.awaiting_pong(Some(due));
                continue;
            }
            () = sleep_until_deadline(deadline) => {
                if !codec.ready() {
                    tracing::debug!("session: no connect in time, closing");
                    timed_out = Some(CloseReason::Timeout);
                    break End::Client;
                }
                conn.deadline_passed();
                continue;
            }
            input = carrier.next(), if !conn.saturated() => on_input(&mut codec, &mut conn, input),
        };
        match step {
            Step::Continue => {}
            Step::Pong => {
                if awaiting_pong {
                    awaiting_pong = false;
                    heartbeat.as_mut().reset(Instant::now() + cfg.ping_interval);
                    carrier.awaiting_pong(None);
                }
            }
            Step::Close => break End::Client,
        }
    };
    carrier.ending(end);
    Box::pin(close(codec, conn, carrier, end, timed_out)).await;
}

/// The `transport` label of a session of codec `C`.
fn transport_of<C: Codec>(polling: bool) -> Transport {
    if polling {
        Transport::Polling
    } else {
        C::WS_TRANSPORT
    }
}

fn on_input<C: Codec>(codec: &mut C, conn: &mut Conn<C>, input: Input) -> Step {
    let step = match input {
        Input::Text(text) => codec.on_text(&text, conn),
        Input::Payload(payload) => codec.on_payload(&payload, conn),
        Input::Binary(data) => codec.on_binary(data, conn),
        Input::Control => codec.on_control(),
        Input::Upgraded => {
            conn.metrics().connection_upgraded();
            // What waits in the outbox goes out on the new carrier now.
            conn.sink.wake.notify_one();
            Step::Continue
        }
        Input::Closed => Step::Close,
    };
    conn.start_next();
    step
}

/// Ends the session: input the client was told had arrived runs (unless the server closed
/// the session), then the events, the chat forgets the connection, and the carrier closes
/// after what is queued for the client. Counted in `chat_connections_closed_total` with why
/// (`timed_out`: the loop's heartbeat or connect timer ended it).
async fn close<C: Codec, K: Carrier>(
    mut codec: C,
    mut conn: Conn<C>,
    mut carrier: K,
    end: End,
    timed_out: Option<CloseReason>,
) {
    if end != End::Server {
        while let Some(input) = carrier.accepted() {
            if on_input(&mut codec, &mut conn, input) == Step::Close {
                break;
            }
        }
    }
    conn.finish_all(end != End::Server).await;
    let slow = conn.sink.seal(end == End::Server);
    let reason = match end {
        End::Shutdown => CloseReason::Shutdown,
        End::Client => timed_out.unwrap_or(CloseReason::Client),
        End::Server if slow => CloseReason::SlowConsumer,
        End::Server => conn.closing.unwrap_or(CloseReason::Server),
    };
    let transport = transport_of::<C>(carrier.polling());
    conn.log_closed(transport, reason);
    conn.metrics().connection_closed(transport, reason);
    carrier.close::<C>(&conn.sink, end, slow).await;
}
