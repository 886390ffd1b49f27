//! The protocol-test server: what the official socket.io-protocol and engine.io-protocol test
//! suites expect to talk to, on this crate's own Engine.IO/Socket.IO code (the same routes,
//! carriers, codec and session engine as the chat; `examples/protocol_test.rs` runs it, README
//! "Protocol conformance").
//!
//! - `/socket.io/`: the Socket.IO codec in `Mode::Echo`: namespaces `/` and `/custom` take any
//!   auth payload (another namespace gets `44/<nsp>,{"message":"Invalid namespace"}`); each
//!   connect emits `auth` with the handshake auth (`{}` when there was none); `message` is
//!   sent back as `message-back` with the same arguments and attachments; `message-with-ack`
//!   is acked with its arguments (a BINARY_ACK when it carried attachments); `41` leaves a
//!   namespace and the Engine.IO session stays.
//! - `/engine.io/`: a bare Engine.IO echo (`EngineEcho`): every message comes back as it was
//!   sent, text or binary.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::Utf8Bytes;
use serde_json::Value;
use serde_json::value::RawValue;

use super::codec::{Header, SioCodec, connect_auth, payload_packets};
use super::{Mode, SocketIoConfig, engine_router};
use crate::chat::ChatService;
use crate::chat::wire::ServerEvent;
use crate::transport::session::random_id;
use crate::transport::session::{Codec, Conn, Out, Step};

/// `/socket.io/` (Socket.IO echo) and `/engine.io/` (Engine.IO echo).
pub fn router(chat: Arc<ChatService>, cfg: SocketIoConfig) -> Router {
    let cfg = Arc::new(cfg);
    engine_router(
        "/socket.io",
        chat.clone(),
        cfg.clone(),
        SioCodec::new(Mode::Echo),
    )
    .merge(engine_router("/engine.io", chat, cfg, EngineEcho))
}

/// The namespace bit of an echo namespace.
fn namespace(nsp: &str) -> Option<u8> {
    match nsp {
        "/" => Some(1),
        "/custom" => Some(2),
        _ => None,
    }
}

impl SioCodec {
    /// A whole Socket.IO packet of the protocol-test server.
    pub(super) fn echo_packet(
        &mut self,
        h: &Header,
        attachments: Vec<Bytes>,
        conn: &mut Conn<Self>,
    ) -> Result<(), &'static str> {
        let Some(bit) = namespace(h.nsp) else {
            if h.kind == b'0' {
                let body = serde_json::json!({"message": "Invalid namespace"});
                conn.queue(Out::Frame(format!("44{},{body}", h.nsp).into()));
            }
            return Ok(());
        };
        let prefix = match h.nsp {
            "/" => String::new(),
            nsp => format!("{nsp},"),
        };
        let connected = self.connected & bit != 0;
        match h.kind {
            b'0' => {
                connect_auth(h.data)?;
                if !connected {
                    self.connected |= bit;
                    let sid = random_id();
                    conn.queue(Out::Frame(format!(r#"40{prefix}{{"sid":"{sid}"}}"#).into()));
                    let auth = if h.data.is_empty() { "{}" } else { h.data };
                    conn.queue(Out::Frame(format!(r#"42{prefix}["auth",{auth}]"#).into()));
                }
            }
            b'1' => self.connected &= !bit,
            b'2' | b'5' if connected => {
                let args: Vec<&RawValue> =
                    serde_json::from_str(h.data).map_err(|_| "EVENT payload is not an array")?;
                let (name, rest) = args.split_first().ok_or("EVENT without a name")?;
                let name = match serde_json::from_str::<Value>(name.get()) {
                    Ok(Value::String(name)) => name,
                    _ => return Err("EVENT name is not a string"),
                };
                let rest: Vec<&str> = rest.iter().map(|a| a.get()).collect();
                // `2`/`3`, or `5<n>-`/`6<n>-` with attachments.
                let kind = |text: char, binary: char| match attachments.len() {
                    0 => text.to_string(),
                    n => format!("{binary}{n}-"),
                };
                let frame = match (name.as_str(), h.id) {
                    ("message", _) => {
                        let mut args = vec![r#""message-back""#];
                        args.extend(&rest);
                        format!("{}{prefix}[{}]", kind('2', '5'), args.join(","))
                    }
                    ("message-with-ack", Some(id)) => {
                        format!("{}{prefix}{id}[{}]", kind('3', '6'), rest.join(","))
                    }
                    _ => return Ok(()),
                };
                conn.queue(Out::Frame(format!("4{frame}").into()));
                for data in attachments {
                    conn.queue(Out::Binary(data));
                }
            }
            // Client acks (the server asks for none), events of a namespace not connected.
            _ => {}
        }
        Ok(())
    }
}

/// A bare Engine.IO session that sends every message back as it came.
#[derive(Clone, Copy, Default)]
pub struct EngineEcho;

impl Codec for EngineEcho {
    fn on_text(&mut self, text: &str, conn: &mut Conn<Self>) -> Step {
        match text.as_bytes().first() {
            Some(b'4') => {
                conn.queue(Out::Frame(Utf8Bytes::from(text.to_string())));
                Step::Continue
            }
            Some(b'3') => Step::Pong,
            Some(b'2' | b'6') => Step::Continue,
            // `1` (close), and anything that is not an Engine.IO packet.
            _ => Step::Close,
        }
    }

    fn on_payload(&mut self, payload: &str, conn: &mut Conn<Self>) -> Step {
        payload_packets(self, payload, conn)
    }

    fn on_binary(&mut self, data: Bytes, conn: &mut Conn<Self>) -> Step {
        conn.queue(Out::Binary(data));
        Step::Continue
    }

    fn on_control(&mut self) -> Step {
        Step::Continue
    }

    fn ping() -> Out {
        Out::Frame(Utf8Bytes::from_static("2"))
    }

    /// Never used: no chat event reaches an echo session.
    fn event_frame(event: &ServerEvent) -> Utf8Bytes {
        format!("4{}", event.data).into()
    }

    /// Never used: an echo session runs no chat event.
    fn ack_frame(_id: &Value, body: &str) -> Utf8Bytes {
        format!("4{body}").into()
    }

    fn disconnect_frame() -> Option<Utf8Bytes> {
        None
    }

    const CLOSE_REASON: &'static str = "";
}
