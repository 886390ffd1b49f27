//! The Socket.IO codec (Engine.IO v4 framing, Socket.IO v5 packets, namespace `/`), for the
//! session engine (`transport::session`), whichever carrier brings the packets.
//!
//! - Engine.IO: the open packet `0{...}` first (queued by whoever opens the session), a server
//!   ping `2` every `ping_interval` answered by `3` within `ping_timeout` (else the connection
//!   is closed), `1` close, `6` noop, `4` message.
//! - Socket.IO, namespace `/` only: `0` CONNECT with an optional auth object (its `token` or
//!   `userId` authenticates), answered `40{"sid":..}`; another namespace gets
//!   `44/nsp,{"message":"Invalid namespace"}`; no CONNECT within `connect_timeout` closes;
//!   `2` EVENT with an optional ack id, answered by `3` ACK; `1` DISCONNECT ends the session;
//!   binary events (no chat event carries binary) are refused with `invalid_payload`.
//! - A server-side close (`too_many_connections`) sends `41` after the error and the ack.

use axum::extract::ws::Utf8Bytes;
use serde_json::Value;

use super::handshake_credentials;
use crate::chat::wire::ServerEvent;
use crate::transport::session::{Codec, Conn, Out, SIO_FRAME, SessionConfig, Step};

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
pub fn packet_text(out: Out) -> Utf8Bytes {
    match out {
        Out::Event(ev) => SioCodec::event_frame(&ev),
        Out::Frame(frame) => frame,
        Out::Ping => Utf8Bytes::from_static("2"),
        Out::Disconnect => Utf8Bytes::from_static("41"),
    }
}

/// The Socket.IO protocol state of one session.
#[derive(Default)]
pub struct SioCodec {
    /// The namespace CONNECT has been received.
    connected: bool,
}

impl Codec for SioCodec {
    fn on_text(&mut self, text: &str, conn: &mut Conn<Self>) -> Step {
        match text.as_bytes().first() {
            Some(b'3') => Step::Pong,
            Some(b'4') => match self.on_packet(&text[1..], conn) {
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

    /// A polling payload: its packets in order, until one closes the session.
    fn on_payload(&mut self, payload: &str, conn: &mut Conn<Self>) -> Step {
        let mut step = Step::Continue;
        // Base64 packets (`b...`) are attachments of a refused binary event.
        for packet in payload.split('\x1e').filter(|p| !p.starts_with('b')) {
            match self.on_text(packet, conn) {
                Step::Close => return Step::Close,
                Step::Pong => step = Step::Pong,
                Step::Continue => {}
            }
        }
        step
    }

    /// Attachments of a (refused) binary event.
    fn on_binary(&mut self, _conn: &mut Conn<Self>) -> Step {
        Step::Continue
    }

    fn on_control(&mut self) -> Step {
        Step::Continue
    }

    fn ready(&self) -> bool {
        self.connected
    }

    fn ping() -> Out {
        Out::Frame(Utf8Bytes::from_static("2"))
    }

    fn event_frame(event: &ServerEvent) -> Utf8Bytes {
        // Event names are fixed ASCII identifiers (`chat::wire`): no escaping needed.
        event
            .encoded(SIO_FRAME, |e| {
                Utf8Bytes::from(format!(r#"42["{}",{}]"#, e.name, e.data))
            })
            .clone()
    }

    fn ack_frame(id: &Value, body: &Value) -> Utf8Bytes {
        format!("43{id}[{body}]").into()
    }

    fn disconnect_frame() -> Option<Utf8Bytes> {
        Some(Utf8Bytes::from_static("41"))
    }

    const CLOSE_REASON: &'static str = "";
}

impl SioCodec {
    /// A Socket.IO packet (the Engine.IO message's payload). `Err` closes the connection.
    fn on_packet(&mut self, packet: &str, conn: &mut Conn<Self>) -> Result<(), &'static str> {
        let mut chars = packet.char_indices();
        let kind = chars.next().map(|(_, c)| c).ok_or("empty packet")?;
        let rest = &packet[kind.len_utf8()..];
        let (nsp, rest) = match rest.strip_prefix('/') {
            Some(_) => rest.split_once(',').unwrap_or((rest, "")),
            None => ("/", rest),
        };
        match kind {
            '0' => {
                if nsp != "/" {
                    let body = serde_json::json!({"message": "Invalid namespace"});
                    conn.queue(Out::Frame(format!("44{nsp},{body}").into()));
                    return Ok(());
                }
                if self.connected {
                    return Ok(());
                }
                let auth = match rest {
                    "" => None,
                    json => match serde_json::from_str::<Value>(json) {
                        Ok(v @ Value::Object(_)) => Some(v),
                        _ => return Err("CONNECT payload is not an object"),
                    },
                };
                self.connected = true;
                let ack = format!(r#"40{{"sid":"{}"}}"#, conn.socket_id());
                conn.queue(Out::Frame(ack.into()));
                if let Some(credentials) = auth.as_ref().and_then(handshake_credentials) {
                    conn.handshake_auth(credentials);
                }
                Ok(())
            }
            '1' if nsp == "/" => Err("client disconnected"),
            '2' | '5' if nsp == "/" && self.connected => {
                // The attachments of a binary event follow as binary frames, which are skipped.
                let ((ack, _attachments), json) = split_ack_id(rest, kind == '5')?;
                let (name, data) = parse_event(json)?;
                let data = if kind == '5' {
                    Err("binary attachments are not supported".to_string())
                } else {
                    data
                };
                conn.event(name, data, ack.map(Value::from), packet.len());
                Ok(())
            }
            // Client acks (the server asks for none), packets of other namespaces and events
            // before CONNECT are ignored, as socket.io does.
            '1'..='6' => Ok(()),
            _ => Err("unknown packet type"),
        }
    }
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

/// Splits `[ack id]json` (EVENT) or `attachments-[ack id]json` (BINARY_EVENT).
fn split_ack_id(rest: &str, binary: bool) -> Result<((Option<u64>, usize), &str), &'static str> {
    let (attachments, rest) = if binary {
        let (n, rest) = rest
            .split_once('-')
            .ok_or("BINARY_EVENT without attachments")?;
        (
            n.parse::<usize>().map_err(|_| "bad attachment count")?,
            rest,
        )
    } else {
        (0, rest)
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let ack = match digits {
        0 => None,
        _ => Some(rest[..digits].parse::<u64>().map_err(|_| "bad ack id")?),
    };
    Ok(((ack, attachments), &rest[digits..]))
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
    fn ack_ids_and_attachments() {
        assert_eq!(
            split_ack_id(r#"12["a"]"#, false).unwrap(),
            ((Some(12), 0), r#"["a"]"#)
        );
        assert_eq!(
            split_ack_id(r#"["a"]"#, false).unwrap(),
            ((None, 0), r#"["a"]"#)
        );
        assert_eq!(
            split_ack_id(r#"2-7["a"]"#, true).unwrap(),
            ((Some(7), 2), r#"["a"]"#)
        );
        assert!(split_ack_id(r#"["a"]"#, true).is_err());
        assert!(split_ack_id("99999999999999999999999[]", false).is_err());
    }
}
