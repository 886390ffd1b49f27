//! A session's client events: they run one at a time, in arrival order (SPEC 1). The running
//! event is a boxed future the session's task polls beside its transport (so reading, writing
//! and heartbeats go on while a store write is pending); the `Session` moves into that future
//! and comes back with the outcome. Events that arrive meanwhile wait in a queue.

use std::collections::VecDeque;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::Value;

use super::Codec;
use super::outbox::{Out, SessionSink};
use crate::auth::Credentials;
use crate::chat::conn::ClientSink;
use crate::chat::wire::{self, ServerEvent};
use crate::chat::{ChatError, ChatService, Deadline, Session};
use crate::metrics::{CloseReason, Metrics};
use crate::transport::{AckFields, ack_body, dispatch};

/// Events a connection may have waiting; past this (or `MAX_PENDING_BYTES`) the session stops
/// reading its carrier (backpressure) until the queue drains: a flooding client waits, it is
/// not refused.
pub const MAX_PENDING_EVENTS: usize = 256;
/// Bytes of waiting events (their frames' length) past which the session stops reading.
pub const MAX_PENDING_BYTES: usize = 1 << 20;

pub(super) enum Job {
    Event {
        name: String,
        data: Result<Value, String>,
        /// The client's ack id, as its protocol carries it.
        ack: Option<Value>,
        /// The length of the packet that carried it (the backpressure bound).
        bytes: usize,
    },
    HandshakeAuth(Box<Credentials>),
    /// The protocol's connect ended (Socket.IO's namespace DISCONNECT) but the connection
    /// stays: the chat forgets this connection (its rooms are left), and a new connect starts
    /// afresh.
    Leave,
}

pub(super) enum Outcome {
    Event(Option<Value>, Result<AckFields, ChatError>),
    Auth(Result<(), ChatError>),
    Left,
}

pub(super) type Running = Pin<Box<dyn Future<Output = (Session, Outcome)> + Send>>;

/// The running event's outcome; never resolves while none runs.
pub(super) async fn poll_running(running: &mut Option<Running>) -> (Session, Outcome) {
    match running {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// Runs one job; the session moves into the future and comes back with the outcome.
fn start(chat: Arc<ChatService>, mut session: Session, job: Job) -> Running {
    Box::pin(async move {
        let outcome = match job {
            Job::Event {
                name, data, ack, ..
            } => Outcome::Event(ack, dispatch(&chat, &mut session, &name, data).await),
            Job::HandshakeAuth(credentials) => Outcome::Auth(
                chat.authenticate(&mut session, *credentials)
                    .await
                    .map(|_| ()),
            ),
            Job::Leave => {
                chat.disconnect(&mut session).await;
                // A new namespace connection of the same Engine.IO session keeps its id.
                session = Session::new(session.sink().clone(), session.socket_id().clone());
                Outcome::Left
            }
        };
        (session, outcome)
    })
}

fn job_bytes(job: &Job) -> usize {
    match job {
        Job::Event { bytes, .. } => *bytes,
        Job::HandshakeAuth(_) | Job::Leave => 0,
    }
}

/// A session's state beside its transport: what the codecs act on.
pub struct Conn<C> {
    chat: Arc<ChatService>,
    pub(super) sink: Arc<SessionSink>,
    /// `None` while an event runs (the session is inside `running`).
    session: Option<Session>,
    pub(super) running: Option<Running>,
    pending: VecDeque<Job>,
    /// The `bytes` of the waiting events.
    pending_bytes: usize,
    /// The id the client sees (Socket.IO's `socket.id`), also in the session.
    socket_id: Arc<str>,
    /// Why the chat asked to close the session (a limit, the authentication timeout).
    pub(super) closing: Option<CloseReason>,
    codec: PhantomData<fn() -> C>,
}

impl<C: Codec> Conn<C> {
    pub(super) fn new(chat: Arc<ChatService>, sink: Arc<SessionSink>) -> Self {
        let socket_id: Arc<str> = super::random_id().into();
        Self {
            session: Some(Session::new(sink.clone(), socket_id.clone())),
            socket_id,
            chat,
            sink,
            running: None,
            pending: VecDeque::new(),
            pending_bytes: 0,
            closing: None,
            codec: PhantomData,
        }
    }

    pub(super) fn metrics(&self) -> &Metrics {
        self.chat.metrics()
    }

    /// The id the client sees: Socket.IO's `socket.id`, the `sid` of its CONNECT answer.
    pub fn socket_id(&self) -> &str {
        &self.socket_id
    }

    /// Queues a frame for the client; a full queue is a slow consumer, which is cut off.
    pub fn queue(&self, out: Out) {
        self.sink.queue(out);
    }

    /// The `error` event, without an ack.
    pub fn emit_error(&self, e: &ChatError) {
        self.queue(Out::Event(Arc::new(ServerEvent::from_value(
            wire::ERROR,
            e.body(),
        ))));
    }

    fn ack(&self, id: &Value, result: &Result<AckFields, ChatError>) {
        self.queue(Out::Frame(C::ack_frame(id, &ack_body(result))));
    }

    /// A client event, run after those before it; `bytes`: the length of its packet.
    pub fn event(
        &mut self,
        name: String,
        data: Result<Value, String>,
        ack: Option<Value>,
        bytes: usize,
    ) {
        self.submit(Job::Event {
            name,
            data,
            ack,
            bytes,
        });
    }

    /// The credentials of a protocol handshake (Socket.IO's CONNECT `auth`), run like an
    /// `authenticate` without an ack.
    pub fn handshake_auth(&mut self, credentials: Credentials) {
        self.submit(Job::HandshakeAuth(Box::new(credentials)));
    }

    /// The protocol's connect ended but the connection stays (Socket.IO `41`): after the
    /// events before it, the chat forgets this connection as on a disconnect, and the next
    /// connect is a new connection for the chat.
    pub fn leave(&mut self) {
        self.submit(Job::Leave);
    }

    fn submit(&mut self, job: Job) {
        if self.running.is_none()
            && self.pending.is_empty()
            && let Some(session) = self.session.take()
        {
            self.running = Some(start(self.chat.clone(), session, job));
            return;
        }
        // One carrier input may bring many events (a polling payload): they all wait; the
        // session reads no more input until the queue is below the bounds again.
        self.pending_bytes += job_bytes(&job);
        self.pending.push_back(job);
    }

    /// Whether the queue of waiting events is full: the session stops reading its carrier.
    pub(super) fn saturated(&self) -> bool {
        self.pending.len() >= MAX_PENDING_EVENTS || self.pending_bytes >= MAX_PENDING_BYTES
    }

    fn next_job(&mut self) -> Option<Job> {
        let job = self.pending.pop_front()?;
        self.pending_bytes -= job_bytes(&job);
        Some(job)
    }

    /// The running event ended: report it and start the next one.
    pub(super) fn done(&mut self, session: Session, outcome: Outcome) {
        self.running = None;
        self.session = Some(session);
        self.finish(outcome);
        self.start_next();
    }

    /// Starts the next waiting event when none runs.
    pub(super) fn start_next(&mut self) {
        if self.running.is_some() {
            return;
        }
        if !self.pending.is_empty()
            && let Some(session) = self.session.take()
            && let Some(job) = self.next_job()
        {
            self.running = Some(start(self.chat.clone(), session, job));
        }
        if self.pending.is_empty() && self.pending.capacity() > 0 {
            // A burst is over: give its memory back.
            self.pending = VecDeque::new();
        }
    }

    /// The event's answer: the `error` event first on a refusal, then the ack.
    fn finish(&mut self, outcome: Outcome) {
        let result = match outcome {
            Outcome::Event(ack, result) => {
                if let Err(e) = &result {
                    self.emit_error(e);
                }
                if let Some(id) = ack {
                    self.ack(&id, &result);
                }
                result.map(|_| ())
            }
            Outcome::Auth(result) => {
                if let Err(e) = &result {
                    self.emit_error(e);
                }
                result
            }
            Outcome::Left => Ok(()),
        };
        if let Err(e) = result
            && e.closes_connection()
        {
            self.closing.get_or_insert(CloseReason::Limit);
            self.sink.close();
        }
    }

    /// When the session's chat deadline (auth timeout, token expiry) is due.
    pub(super) fn deadline(&self) -> Option<std::time::Instant> {
        self.session.as_ref().and_then(|s| self.chat.deadline(s))
    }

    /// The chat deadline passed (checked only between events): tell the client, and close
    /// the session when the deadline says so.
    pub(super) fn deadline_passed(&mut self) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        match self.chat.deadline_passed(session) {
            Some(Deadline::Notify(e)) => self.emit_error(&e),
            Some(Deadline::Close(e)) => {
                self.emit_error(&e);
                self.closing.get_or_insert(CloseReason::Timeout);
                self.sink.close();
            }
            None => {}
        }
    }

    /// The end of the session: the running event finishes (a store write is never cut in
    /// half), then, unless the server closed the session, the events already received run;
    /// the chat forgets the connection.
    /// Logs the session's end at debug: its ids, transport and close reason (never a token
    /// or a text).
    pub(super) fn log_closed(&self, transport: crate::metrics::Transport, reason: CloseReason) {
        let user = self
            .session
            .as_ref()
            .and_then(|s| s.identity())
            .map(|i| i.user_id.to_string());
        tracing::debug!(
            conn = %self.socket_id,
            user = user.as_deref().unwrap_or(""),
            transport = crate::metrics::TRANSPORTS[transport as usize],
            reason = crate::metrics::CLOSE_REASONS[reason as usize],
            "connection closed"
        );
    }

    pub(super) async fn finish_all(&mut self, run_pending: bool) {
        if let Some(running) = self.running.take() {
            let (session, outcome) = running.await;
            self.session = Some(session);
            self.finish(outcome);
        }
        if run_pending {
            while let Some(session) = self.session.take() {
                let Some(job) = self.next_job() else {
                    self.session = Some(session);
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
    }
}
