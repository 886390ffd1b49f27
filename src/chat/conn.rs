//! The transport-neutral handle of one client connection: what the core needs to reach it.

use std::sync::Arc;

use super::wire::ServerEvent;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// The connection's outbound queue is full: a slow consumer, to be disconnected.
    #[error("outbound queue full")]
    Full,
    #[error("connection closed")]
    Closed,
}

/// Implemented by each transport (Socket.IO, raw WebSocket). Both calls are non-blocking.
pub trait ClientSink: Send + Sync + 'static {
    /// Queues an event for the client. Never waits: a full queue is `SinkError::Full`.
    fn send(&self, event: &Arc<ServerEvent>) -> Result<(), SinkError>;
    /// Closes the connection from the server side (its disconnect then runs as usual).
    fn close(&self);
}
