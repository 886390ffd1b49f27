//! The Socket.IO codec (Engine.IO v4 framing, Socket.IO v5 packets), for the session engine
//! (`transport::session`), whichever carrier brings the packets.
//!
//! - Engine.IO: the open packet `0{...}` first (queued by whoever opens the session), a server
//!   ping `2` every `ping_interval` answered by `3` within `ping_timeout` (else the connection
//!   is closed), `1` close, `6` noop, `4` message; on long-polling a binary message is a base64
//!   `b` packet.
//! - Socket.IO packets `<type>[<attachments>-][<nsp>,][<ack id>][JSON]`; a binary packet
//!   (`5` BINARY_EVENT, `6` BINARY_ACK) is followed by its attachments (binary messages), and
//!   a text message before they are all there, a binary message nobody waits for, or a header
//!   that does not parse closes the connection, as socket.io-parser does.
//! - The chat (`Mode::Chat`), namespace `/` only: `0` CONNECT with an optional auth object (its
//!   `token` or `userId` authenticates), answered `40{"sid":..}`; another namespace gets
//!   `44/nsp,{"message":"Invalid namespace"}`; no CONNECT within `connect_timeout` closes;
//!   `2` EVENT with an optional ack id, answered by `3` ACK; `1` DISCONNECT leaves the
//!   namespace (the chat forgets the connection: its rooms see it leave) and the Engine.IO
//!   session stays, pinged, until the client connects again or closes it; `5` BINARY_EVENT
//!   (no chat event carries binary) is refused with `invalid_payload` once its attachments
//!   are in, and they are dropped; `6` BINARY_ACK is ignored with its attachments (the server
//!   asks for no ack).
//! - `Mode::Echo`: the protocol-test server's namespaces and events (`protocol_test.rs`).
//! - A server-side close (`too_many_connections`) sends `41` after the error and the ack.

use axum::body::Bytes;
use axum::extract::ws::Utf8Bytes;
use serde_json::Value;

use super::handshake_credentials;
use crate::chat::wire::{ServerEvent, concat};
use crate::transport::session::{Codec, Conn, Out, SIO_FRAME, SessionConfig, Step};

/// Attachments one binary packet may announce.
const MAX_ATTACHMENTS: usize = 64;

/// The Engine.IO open packet; `upgrades` names `websocket` for a polling session.
pub fn open_packet(sid: &str, upgrades: bool, cfg: &SessionConfig) -> String {
    format!(
        r#"0{{"sid":"{sid}","upgrades":[{}],"pingInterval":{},"pingTimeout":{},"maxPayload":{}}}"#,
        if upgrades { r#""websocket""# } else { "" },
        cfg.ping_interval.as_millis(),
        cfg.ping_timeout.as_millis(),
        cfg.max_payload_bytes
    )
}

/// A frame of the outbox as an Engine.IO packet in a polling payload.
pub fn packet_text<C: Codec>(out: Out) -> Utf8Bytes {
    match out {
        Out::Event(ev) => C::event_frame(&ev),
        Out::Frame(frame) => frame,
        Out::Binary(data) => {
            use base64::Engine as _;
            let mut packet = String::from("b");
            base64::engine::general_purpose::STANDARD.encode_string(&data, &mut packet);
            packet.into()
        }
        Out::Ping => Utf8Bytes::from_static("2"),
        Out::Disconnect => C::disconnect_frame().unwrap_or_else(|| Utf8Bytes::from_static("1")),
    }
}

/// A polling payload's packets in order (a base64 `b` packet is a binary message), until one
/// closes the session.
pub(super) fn payload_packets<C: Codec>(codec: &mut C, payload: &str, conn: &mut Conn<C>) -> Step {
    use base64::Engine as _;
    let mut step = Step::Continue;
    for packet in payload.split('\x1e') {
        let next = match packet.strip_prefix('b') {
            Some(b64) => match base64::engine::general_purpose::STANDARD.decode(b64) {
                Ok(data) => codec.on_binary(data.into(), conn),
                Err(_) => Step::Close,
            },
            None => codec.on_text(packet, conn),
        };
        match next {
            Step::Close => return Step::Close,
            Step::Pong => step = Step::Pong,
            Step::Continue => {}
        }
    }
    step
}

/// Who answers the Socket.IO packets of a session.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub enum Mode {
    /// The chat service.
    #[default]
    Chat,
    /// The protocol-test server (`protocol_test.rs`).
    Echo,
}

/// The Socket.IO protocol state of one session.
#[derive(Clone, Default)]
pub struct SioCodec {
    pub(super) mode: Mode,
    /// The namespaces connected, one bit each (chat: `/` only).
    pub(super) connected: u8,
    /// A binary packet waiting for its attachments.
    partial: Option<Box<Partial>>,
}

/// A Socket.IO packet's header, and its JSON.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Header<'a> {
    pub kind: u8,
    pub attachments: usize,
    pub nsp: &'a str,
    pub id: Option<u64>,
    pub data: &'a str,
}

/// A binary packet whose attachments are on their way.
#[derive(Clone)]
struct Partial {
    kind: u8,
    nsp: String,
    id: Option<u64>,
    data: String,
    want: usize,
    /// The attachments so far (kept in echo mode only; the chat drops them).
    got: Vec<Bytes>,
    seen: usize,
}

/// The namespace bit of the chat's only namespace.
const MAIN: u8 = 1;

impl Codec for SioCodec {
    fn on_text(&mut self, text: &str, conn: &mut Conn<Self>) -> Step {
        match text.as_bytes().first() {
            Some(b'3') => Step::Pong,
            Some(b'4') => match self.on_message(&text[1..], conn) {
                Ok(()) => Step::Continue,
                Err(why) => {
                    tracing::debug!(%why, "socket.io: bad packet, closing");
                    Step::Close
                }
            },
            Some(b'6' | b'2') => Step::Continue,
            Some(b'1') => Step::Close,
            _ => {
                tracing::debug!("socket.io: bad engine.io packet, closing");
                Step::Close
            }
        }
    }

    /// A polling payload: its packets in order (base64 `b` packets are binary messages),
    /// until one closes the session.
    fn on_payload(&mut self, payload: &str, conn: &mut Conn<Self>) -> Step {
        payload_packets(self, payload, conn)
    }

    /// An attachment of the binary packet being received.
    fn on_binary(&mut self, data: Bytes, conn: &mut Conn<Self>) -> Step {
        let Some(partial) = self.partial.as_mut() else {
            tracing::debug!("socket.io: binary data without a binary packet, closing");
            return Step::Close;
        };
        partial.seen += 1;
        if self.mode == Mode::Echo {
            partial.got.push(data);
        }
        if partial.seen < partial.want {
            return Step::Continue;
        }
        let partial = self.partial.take().expect("checked above");
        let header = Header {
            kind: partial.kind,
            attachments: partial.want,
            nsp: &partial.nsp,
            id: partial.id,
            data: &partial.data,
        };
        match self.on_packet(&header, partial.got, conn) {
            Ok(()) => Step::Continue,
            Err(why) => {
                tracing::debug!(%why, "socket.io: bad packet, closing");
                Step::Close
            }
        }
    }

    fn on_control(&mut self) -> Step {
        Step::Continue
    }

    fn ready(&self) -> bool {
        self.connected != 0
    }

    fn ping() -> Out {
        Out::Frame(Utf8Bytes::from_static("2"))
    }

    fn event_frame(event: &ServerEvent) -> Utf8Bytes {
        // Event names are fixed ASCII identifiers (`chat::wire`): no escaping needed.
        event
            .encoded(SIO_FRAME, |e| {
                Utf8Bytes::from(concat(&["42[\"", e.name, "\",", e.data.get(), "]"]))
            })
            .clone()
    }

    fn ack_frame(id: &Value, body: &str) -> Utf8Bytes {
        concat(&["43", &id.to_string(), "[", body, "]"]).into()
    }

    fn disconnect_frame() -> Option<Utf8Bytes> {
        Some(Utf8Bytes::from_static("41"))
    }

    const CLOSE_REASON: &'static str = "";
}

impl SioCodec {
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            ..Self::default()
        }
    }

    /// An Engine.IO message: a Socket.IO packet, or the header of a binary one. `Err` closes
    /// the connection.
    fn on_message(&mut self, packet: &str, conn: &mut Conn<Self>) -> Result<(), &'static str> {
        if self.partial.is_some() {
            return Err("a text packet while attachments were expected");
        }
        let header = parse_header(packet)?;
        if header.attachments == 0 {
            return self.on_packet(&header, Vec::new(), conn);
        }
        if header.attachments > MAX_ATTACHMENTS {
            return Err("too many attachments");
        }
        self.partial = Some(Box::new(Partial {
            kind: header.kind,
            nsp: header.nsp.to_string(),
            id: header.id,
            data: header.data.to_string(),
            want: header.attachments,
            got: Vec::new(),
            seen: 0,
        }));
        Ok(())
    }

    /// A whole Socket.IO packet (attachments included).
    fn on_packet(
        &mut self,
        h: &Header,
        attachments: Vec<Bytes>,
        conn: &mut Conn<Self>,
    ) -> Result<(), &'static str> {
        match self.mode {
            Mode::Chat => self.chat_packet(h, conn),
            Mode::Echo => self.echo_packet(h, attachments, conn),
        }
    }

    /// The chat's Socket.IO: namespace `/` only.
    fn chat_packet(&mut self, h: &Header, conn: &mut Conn<Self>) -> Result<(), &'static str> {
        let main = h.nsp == "/";
        let connected = self.connected & MAIN != 0;
        match h.kind {
            b'0' if !main => {
                let body = serde_json::json!({"message": "Invalid namespace"});
                conn.queue(Out::Frame(format!("44{},{body}", h.nsp).into()));
                Ok(())
            }
            b'0' if connected => Ok(()),
            b'0' => {
                let auth = connect_auth(h.data)?;
                self.connected |= MAIN;
                let ack = format!(r#"40{{"sid":"{}"}}"#, conn.socket_id());
                conn.queue(Out::Frame(ack.into()));
                if let Some(credentials) = auth.as_ref().and_then(handshake_credentials) {
                    conn.handshake_auth(credentials);
                }
                Ok(())
            }
            b'1' if main && connected => {
                self.connected &= !MAIN;
                conn.leave();
                Ok(())
            }
            b'2' | b'5' if main && connected => {
                let (name, data) = parse_event(h.data)?;
                let data = if h.kind == b'5' {
                    Err("binary attachments are not supported".to_string())
                } else {
                    data
                };
                conn.event(name, data, h.id.map(Value::from), h.data.len());
                Ok(())
            }
            // Client acks (the server asks for none), packets of other namespaces and events
            // before CONNECT are ignored, as socket.io does.
            _ => Ok(()),
        }
    }
}

/// A CONNECT's payload: nothing, or an object (the handshake auth).
pub(super) fn connect_auth(data: &str) -> Result<Option<Value>, &'static str> {
    match data {
        "" => Ok(None),
        json => match serde_json::from_str::<Value>(json) {
            Ok(v @ Value::Object(_)) => Ok(Some(v)),
            _ => Err("CONNECT payload is not an object"),
        },
    }
}

/// `<type>[<attachments>-][<nsp>,][<ack id>]<JSON>`, as socket.io-parser reads it.
pub(super) fn parse_header(packet: &str) -> Result<Header<'_>, &'static str> {
    let kind = *packet.as_bytes().first().ok_or("empty packet")?;
    if !(b'0'..=b'6').contains(&kind) {
        return Err("unknown packet type");
    }
    let mut rest = &packet[1..];
    let mut attachments = 0;
    if kind == b'5' || kind == b'6' {
        let (n, after) = rest
            .split_once('-')
            .ok_or("binary packet without attachments")?;
        if n.is_empty() || !n.bytes().all(|c| c.is_ascii_digit()) {
            return Err("bad attachment count");
        }
        attachments = n.parse().map_err(|_| "bad attachment count")?;
        rest = after;
    }
    let mut nsp = "/";
    if rest.starts_with('/') {
        (nsp, rest) = rest.split_once(',').unwrap_or((rest, ""));
    }
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let id = match digits {
        0 => None,
        _ => Some(rest[..digits].parse::<u64>().map_err(|_| "bad ack id")?),
    };
    Ok(Header {
        kind,
        attachments,
        nsp,
        id,
        data: &rest[digits..],
    })
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
    fn event_and_ack_frames() {
        let ev = ServerEvent::new("new_message", &serde_json::json!({"text": "say \"hi\""}));
        let frame = SioCodec::event_frame(&ev);
        assert_eq!(frame.as_str(), r#"42["new_message",{"text":"say \"hi\""}]"#);
        // Encoded once: the same bytes for every recipient.
        assert_eq!(
            SioCodec::event_frame(&ev).as_str().as_ptr(),
            frame.as_str().as_ptr()
        );
        let ack = SioCodec::ack_frame(&Value::from(12), r#"{"success":true}"#);
        assert_eq!(ack.as_str(), r#"4312[{"success":true}]"#);
    }

    #[test]
    fn packet_headers() {
        let h = |p| parse_header(p).unwrap();
        assert_eq!(
            h(r#"212["a"]"#),
            Header {
                kind: b'2',
                attachments: 0,
                nsp: "/",
                id: Some(12),
                data: r#"["a"]"#
            }
        );
        assert_eq!(
            h(r#"52-/admin,7["a"]"#),
            Header {
                kind: b'5',
                attachments: 2,
                nsp: "/admin",
                id: Some(7),
                data: r#"["a"]"#
            }
        );
        assert_eq!((h("0/custom").nsp, h("0/custom").data), ("/custom", ""));
        assert_eq!(h("1").nsp, "/");
        assert!(parse_header(r#"5["a"]"#).is_err());
        assert!(parse_header(r#"5x-["a"]"#).is_err());
        assert!(parse_header("abc").is_err());
        assert!(parse_header("").is_err());
        assert!(parse_header("299999999999999999999999[]").is_err());
    }
}
