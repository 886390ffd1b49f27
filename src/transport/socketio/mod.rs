//! Socket.IO v4 (Engine.IO v4, protocol v5) on `/socket.io/`. Sessions opened directly on a
//! WebSocket are served by `direct` (our own Engine.IO code, the hot path); sessions that start
//! on HTTP long-polling, and their upgrade, go through socketioxide, set up here.
//!
//! socketioxide runs each async event handler in its own task, which would let two events of
//! one connection overtake each other. So the handlers do their work in an extractor
//! (`Enqueue`), which socketioxide runs synchronously, in arrival order, on the connection's
//! read path: it puts the event on the connection's queue, and one worker task per connection
//! takes events from that queue one at a time and calls `ChatService`. The handlers, the
//! queue and the worker are set up in a connect middleware, before the client is told it is
//! connected, so no event can arrive before them.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use serde_json::Value;
use socketioxide::adapter::LocalAdapter;
use socketioxide::extract::{AckSender, Event, SocketRef, TryData};
use socketioxide::handler::{ConnectHandler, FromMessageParts};
use socketioxide::layer::SocketIoLayer;
use socketioxide::socket::Socket;
use socketioxide::{SendError, SocketError, SocketIo};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Credentials;
use crate::chat::conn::{ClientSink, SinkError};
use crate::chat::wire::{self, ServerEvent};
use crate::chat::{ChatError, ChatService, Deadline, Session};
use crate::transport::{WS_READ_BUFFER, ack_body, dispatch, sleep_until_deadline};

pub mod direct;

/// Events a connection may have waiting; past this a client is flooding and further events
/// are refused with `rate_limited` until the queue drains.
const MAX_PENDING_EVENTS: usize = 256;

#[derive(Clone)]
pub struct SocketIoConfig {
    pub max_payload_bytes: u64,
    /// Tracks the connection workers, so shutdown can wait for their in-flight events.
    pub workers: TaskTracker,
    /// Cancelled at shutdown: each worker finishes the events it already received (acking
    /// them while the connection is still open), leaves its rooms and stops.
    pub shutdown: CancellationToken,
    /// Outbound packets buffered per connection before it counts as a slow consumer.
    pub max_buffered_packets: usize,
    pub ping_interval: std::time::Duration,
    pub ping_timeout: std::time::Duration,
}

/// Boxed payloads keep `Job` at two words: the queue's first block (32 slots, allocated
/// with the channel) is part of every idle connection's memory.
enum Job {
    Event(Box<EventJob>),
    HandshakeAuth(Box<Credentials>),
    Disconnect,
}

struct EventJob {
    name: String,
    data: Result<Value, String>,
    ack: AckSender,
}

#[derive(Clone)]
struct JobQueue {
    tx: mpsc::UnboundedSender<Job>,
    pending: Arc<AtomicUsize>,
}

/// A Socket.IO connection as `chat` sees it.
struct SocketIoSink {
    socket: SocketRef,
    jobs: mpsc::UnboundedSender<Job>,
}

impl ClientSink for SocketIoSink {
    fn send(&self, event: &Arc<ServerEvent>) -> Result<(), SinkError> {
        match self.socket.emit(event.name, &event.data) {
            Ok(()) => Ok(()),
            Err(SendError::Socket(SocketError::InternalChannelFull)) => Err(SinkError::Full),
            Err(_) => Err(SinkError::Closed),
        }
    }

    fn close(&self) {
        if let Err(SocketError::InternalChannelFull) = self.socket.clone().disconnect() {
            // socketioxide cannot queue its disconnect packet to a client that stopped reading
            // (and then does not close). Drop the connection from the chat now (its rooms see
            // `user_left`, nothing more is queued for it); Engine.IO's heartbeat, which such a
            // client cannot answer, closes the transport.
            let _ = self.jobs.send(Job::Disconnect);
        }
    }
}

/// Puts the event on the connection's queue (runs synchronously, in arrival order).
struct Enqueue;

impl FromMessageParts<LocalAdapter> for Enqueue {
    type Error = Infallible;

    fn from_message_parts(
        s: &Arc<Socket<LocalAdapter>>,
        v: &mut socketioxide_core::Value,
        ack_id: &Option<i64>,
    ) -> Result<Self, Infallible> {
        let name = Event::from_message_parts(s, v, ack_id)
            .map(|e| e.0)
            .unwrap_or_default();
        let Ok(TryData(data)) = TryData::<Value>::from_message_parts(s, v, ack_id);
        let Ok(ack) = AckSender::from_message_parts(s, v, ack_id);
        let Some(queue) = s.extensions.get::<JobQueue>() else {
            return Ok(Enqueue);
        };
        if queue.pending.fetch_add(1, Ordering::AcqRel) >= MAX_PENDING_EVENTS {
            queue.pending.fetch_sub(1, Ordering::AcqRel);
            let e = ChatError::RateLimited;
            let _ = s.emit(wire::ERROR, &e.body());
            let _ = ack.send(&ack_body(&Err(e)));
            return Ok(Enqueue);
        }
        let data = data.map_err(|e| e.to_string());
        let _ = queue
            .tx
            .send(Job::Event(Box::new(EventJob { name, data, ack })));
        Ok(Enqueue)
    }
}

/// Copies the request's URI and header values out of hyper's read buffer. hyper parses them as
/// slices of the connection's read buffer (8 to 16 KiB), and socketioxide keeps every socket's
/// request URI and headers for its lifetime: without the copy each idle connection pins that
/// whole buffer (measured with heaptrack: 16 KiB per connection, a third of its heap).
pub fn compact_request<B>(mut req: axum::http::Request<B>) -> axum::http::Request<B> {
    if let Ok(uri) = req.uri().to_string().parse::<axum::http::Uri>() {
        // axum's router keeps a clone of the original URI in the extensions, which
        // socketioxide keeps too.
        if let Some(original) = req.extensions_mut().get_mut::<axum::extract::OriginalUri>() {
            original.0 = uri.clone();
        }
        *req.uri_mut() = uri;
    }
    let shared = std::mem::take(req.headers_mut());
    let mut owned = axum::http::HeaderMap::with_capacity(shared.len());
    for (name, value) in &shared {
        match axum::http::HeaderValue::from_bytes(value.as_bytes()) {
            Ok(mut copy) => {
                copy.set_sensitive(value.is_sensitive());
                owned.append(name.clone(), copy);
            }
            // Not expected (hyper validated it); kept as it was rather than lost.
            Err(_) => {
                owned.append(name.clone(), value.clone());
            }
        }
    }
    *req.headers_mut() = owned;
    req
}

/// Builds the Socket.IO layer (mounted by the composition root) and its handle.
pub fn build(chat: Arc<ChatService>, cfg: SocketIoConfig) -> (SocketIoLayer, SocketIo) {
    let (layer, io) = SocketIo::builder()
        .max_payload(cfg.max_payload_bytes)
        .ws_max_message_size(cfg.max_payload_bytes as usize)
        .ws_max_frame_size(cfg.max_payload_bytes as usize)
        .max_buffer_size(cfg.max_buffered_packets)
        .ping_interval(cfg.ping_interval)
        .ping_timeout(cfg.ping_timeout)
        // Each WebSocket keeps a read buffer of this size for its lifetime (engineioxide's
        // default is 4 KiB); chat frames are small, and a bigger frame takes several reads.
        .ws_read_buffer_size(WS_READ_BUFFER)
        .build_layer();
    let workers = cfg.workers.clone();
    let shutdown = cfg.shutdown.clone();
    let setup = move |s: SocketRef, TryData(auth): TryData<Value>| {
        let chat = chat.clone();
        let workers = workers.clone();
        let shutdown = shutdown.clone();
        async move {
            setup_connection(chat, &workers, shutdown, s, auth.ok());
            Ok::<(), Infallible>(())
        }
    };
    io.ns("/", start_worker.with(setup));
    (layer, io)
}

fn setup_connection(
    chat: Arc<ChatService>,
    workers: &TaskTracker,
    shutdown: CancellationToken,
    s: SocketRef,
    auth: Option<Value>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queue = JobQueue {
        tx,
        pending: Arc::new(AtomicUsize::new(0)),
    };
    if let Some(credentials) = auth.as_ref().and_then(handshake_credentials) {
        let _ = queue.tx.send(Job::HandshakeAuth(Box::new(credentials)));
    }
    s.extensions.insert(queue.clone());
    // One handler for every event (the worker dispatches by name): a handler per event name
    // would be a map per connection.
    s.on_fallback(async |_: Enqueue| {});
    let disconnect_queue = queue.clone();
    s.on_disconnect(async move || {
        let _ = disconnect_queue.tx.send(Job::Disconnect);
    });
    let session = Session::new(Arc::new(SocketIoSink {
        socket: s.clone(),
        jobs: queue.tx.clone(),
    }));
    let worker = run_connection(chat, session, rx, queue.pending, shutdown);
    s.extensions.insert(PendingWorker(Arc::new(Mutex::new(Some(
        workers.track_future(Box::pin(worker) as Pin<Box<dyn Future<Output = ()> + Send>>),
    )))));
}

/// The worker of a connection, built by the middleware, started by the connect handler.
#[derive(Clone)]
struct PendingWorker(Arc<Mutex<Option<TrackedWorker>>>);

type TrackedWorker =
    tokio_util::task::task_tracker::TrackedFuture<Pin<Box<dyn Future<Output = ()> + Send>>>;

/// The connect handler runs once the client has been told it is connected; only then can the
/// worker emit (an emit before that is dropped by socketioxide). Events that arrived in between
/// wait in the queue, in order.
async fn start_worker(s: SocketRef) {
    let worker = s
        .extensions
        .get::<PendingWorker>()
        .and_then(|p| p.0.lock().take());
    if let Some(worker) = worker {
        tokio::spawn(worker);
    }
}

/// The connection's worker: one event at a time, in arrival order. The futures of the chat
/// calls are boxed so that an idle worker (the common state of a connection) holds only its
/// small loop state, not room for the largest use case's future.
async fn run_connection(
    chat: Arc<ChatService>,
    mut session: Session,
    mut rx: mpsc::UnboundedReceiver<Job>,
    pending: Arc<AtomicUsize>,
    shutdown: CancellationToken,
) {
    loop {
        let deadline = chat.deadline(&session);
        let job = tokio::select! {
            biased;
            () = sleep_until_deadline(deadline) => {
                match chat.deadline_passed(&mut session) {
                    Some(Deadline::Notify(e)) => emit_error(&session, &e),
                    Some(Deadline::Close(e)) => {
                        emit_error(&session, &e);
                        session.sink().close();
                    }
                    None => {}
                }
                continue;
            }
            () = shutdown.cancelled() => {
                while let Ok(job) = rx.try_recv() {
                    if !Box::pin(handle(&chat, &mut session, job, &pending)).await {
                        return;
                    }
                }
                Box::pin(chat.disconnect(&mut session)).await;
                return;
            }
            job = rx.recv() => job,
        };
        let Some(job) = job else {
            break;
        };
        if !Box::pin(handle(&chat, &mut session, job, &pending)).await {
            break;
        }
    }
    Box::pin(chat.disconnect(&mut session)).await;
}

/// Handles one job; false when the connection is gone.
async fn handle(
    chat: &ChatService,
    session: &mut Session,
    job: Job,
    pending: &AtomicUsize,
) -> bool {
    let sink = session.sink().clone();
    match job {
        Job::Event(event) => {
            let EventJob { name, data, ack } = *event;
            pending.fetch_sub(1, Ordering::AcqRel);
            let result = dispatch(chat, session, &name, data).await;
            if let Err(e) = &result {
                emit_error(session, e);
            }
            let _ = ack.send(&ack_body(&result));
            if let Err(e) = &result
                && e.closes_connection()
            {
                sink.close();
            }
            true
        }
        Job::HandshakeAuth(credentials) => {
            if let Err(e) = chat.authenticate(session, *credentials).await {
                emit_error(session, &e);
                if e.closes_connection() {
                    sink.close();
                }
            }
            true
        }
        Job::Disconnect => false,
    }
}

/// The handshake `auth` object authenticates when it carries a `token` (or, with
/// `AUTH_MODE=none`, a `userId`).
fn handshake_credentials(auth: &Value) -> Option<Credentials> {
    let text = |k: &str| match auth.get(k)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let credentials = Credentials {
        token: text("token"),
        user_id: text("userId"),
        username: text("username"),
    };
    (credentials.token.is_some() || credentials.user_id.is_some()).then_some(credentials)
}

fn emit_error(session: &Session, e: &ChatError) {
    let _ = session
        .sink()
        .send(&Arc::new(ServerEvent::from_value(wire::ERROR, e.body())));
}
