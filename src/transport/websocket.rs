//! The WebSocket carrier of a session (`session::Carrier`), for both protocols: Socket.IO
//! sessions opened on (or upgraded to) a WebSocket, and raw JSON-frame connections.

use std::collections::VecDeque;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use futures::{SinkExt, StreamExt};
use tokio::sync::Notify;

use super::session::{Carrier, Codec, End, Input, Out, SessionSink, Written};

/// Read buffer of each WebSocket, bytes: allocated for the connection's lifetime, so small
/// (chat frames are small; a bigger frame takes several reads).
pub const WS_READ_BUFFER: usize = 512;
/// Tungstenite writes its buffer out once it holds this much; `flush` writes the rest.
pub const WS_WRITE_BUFFER: usize = 16 * 1024;
/// Frames written before a slow write counts as a dead client.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a carrier that is closing may take to get its last frames out.
pub const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// A WebSocket upgrade with the service's limits: the small read buffer, the write buffer
/// and the payload cap (a longer message or frame closes the connection).
pub fn limited_upgrade(ws: WebSocketUpgrade, max_payload: usize) -> WebSocketUpgrade {
    ws.read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(WS_WRITE_BUFFER)
        .max_message_size(max_payload)
        .max_frame_size(max_payload)
}

/// A frame of the outbox as a WebSocket message of the codec's protocol; `None` for a
/// disconnect the protocol has no frame for.
fn message<C: Codec>(out: Out) -> Option<Message> {
    Some(match out {
        Out::Event(ev) => Message::Text(C::event_frame(&ev)),
        Out::Frame(frame) => Message::Text(frame),
        Out::Binary(data) => Message::Binary(data),
        Out::Ping => Message::Ping(Default::default()),
        Out::Disconnect => Message::Text(C::disconnect_frame()?),
    })
}

/// Writes the queued frames with one flush (one socket write for the lot when it fits).
pub async fn write_frames<C: Codec>(
    ws: &mut WebSocket,
    frames: &mut VecDeque<Out>,
    kill: &Notify,
) -> Written {
    let mut disconnect = false;
    let write = async {
        for out in frames.drain(..) {
            disconnect = matches!(out, Out::Disconnect);
            if let Some(msg) = message::<C>(out) {
                ws.feed(msg).await?;
            }
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

/// The client's next input on a WebSocket.
pub async fn next_input(ws: &mut WebSocket) -> Input {
    match ws.next().await {
        Some(Ok(Message::Text(text))) => Input::Text(text),
        Some(Ok(Message::Binary(data))) => Input::Binary(data),
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Input::Control,
        Some(Ok(Message::Close(_))) | None => Input::Closed,
        Some(Err(e)) => {
            // Oversized messages end here too (the protocol layer refuses them).
            tracing::debug!(error = %e, "websocket read error");
            Input::Closed
        }
    }
}

/// Writes what is left in the sealed outbox, then the close frame (bounded in time); nothing
/// for a slow consumer.
pub async fn close_websocket<C: Codec>(ws: &mut WebSocket, sink: &SessionSink, slow: bool) {
    if slow {
        return;
    }
    let mut frames = sink.take();
    let flushed = async {
        if matches!(
            write_frames::<C>(ws, &mut frames, &Notify::new()).await,
            Written::Failed
        ) {
            return;
        }
        let _ = ws
            .send(Message::Close(Some(CloseFrame {
                code: 1000,
                reason: Utf8Bytes::from_static(C::CLOSE_REASON),
            })))
            .await;
    };
    let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, flushed).await;
}

/// A session carried by a WebSocket for its whole life.
pub struct WsCarrier(pub WebSocket);

impl Carrier for WsCarrier {
    async fn next(&mut self) -> Input {
        next_input(&mut self.0).await
    }

    fn writes(&self) -> bool {
        true
    }

    async fn write<C: Codec>(&mut self, frames: &mut VecDeque<Out>, kill: &Notify) -> Written {
        write_frames::<C>(&mut self.0, frames, kill).await
    }

    async fn close<C: Codec>(&mut self, sink: &SessionSink, _end: End, slow: bool) {
        close_websocket::<C>(&mut self.0, sink, slow).await;
    }
}
