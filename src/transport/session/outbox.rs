//! A session's outbox: the bounded queue of frames waiting for the client, shared by the
//! session's task (which writes it to a WebSocket) and, on long-polling, the GET requests that
//! take it. It is also the session's `ClientSink`: what `chat` pushes events into.

use std::collections::VecDeque;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::ws::Utf8Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::chat::conn::{ClientSink, SinkError};
use crate::chat::wire::ServerEvent;

/// Largest outbox buffer a connection keeps for reuse, frames.
const REUSED_OUTBOX_SLOTS: usize = 32;

/// One frame for the client, before its protocol's encoding.
pub enum Out {
    /// An event, as the codec frames it (shared by every recipient of a broadcast).
    Event(Arc<ServerEvent>),
    /// A frame already encoded for the session's protocol (acks, the open packet, pings).
    Frame(Utf8Bytes),
    /// A binary message (Socket.IO attachments, Engine.IO binary messages): a WebSocket
    /// binary frame, or a base64 `b` packet on long-polling.
    Binary(Bytes),
    /// A WebSocket ping control frame (the raw protocol's heartbeat).
    Ping,
    /// The server closes the session after what is queued before it (Socket.IO sends `41`).
    Disconnect,
}

/// Frames waiting for the client. The writer takes the whole queue at once, writes it and
/// hands the emptied buffer back (`give_back`): a few slots per connection, reused, so
/// queueing a broadcast for a recipient allocates nothing.
#[derive(Default)]
pub struct Outbox {
    pub frames: VecDeque<Out>,
    /// The session's task has ended: nothing more is accepted.
    pub closed: bool,
}

/// The session as `chat` sees it.
pub struct SessionSink {
    pub outbox: Mutex<Outbox>,
    /// Wakes whoever writes the outbox when it stops being empty: the session's task on a
    /// WebSocket, the pending GET on polling.
    pub wake: Notify,
    /// Ends the session at once (a slow consumer, a close that cannot be queued, a `41`
    /// delivered on polling, a polling request that breaks the protocol).
    pub kill: Notify,
    pub max_queued: usize,
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

    /// Queues a frame; a full queue is a slow consumer, which is cut off.
    pub fn queue(&self, out: Out) {
        if self.push(out).is_err() {
            self.kill.notify_one();
        }
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

    /// Closes the outbox for good. Returns whether the client is a slow consumer that the
    /// server cut off (`cut`: its queue was full), in which case what was queued is dropped.
    pub fn seal(&self, cut: bool) -> bool {
        let mut outbox = self.outbox.lock();
        outbox.closed = true;
        let slow = cut && outbox.frames.len() >= self.max_queued;
        if slow {
            outbox.frames.clear();
        }
        slow
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
