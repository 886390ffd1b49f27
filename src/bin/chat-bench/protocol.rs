//! The protocol clients: how one connection reaches the server and speaks to it. Socket.IO v5
//! over Engine.IO v4 opened on a WebSocket (open packet, namespace connect) or on HTTP
//! long-polling and then upgraded (`polling_handshake`, `2probe`/`3probe`/`5`), or the raw
//! JSON-frame protocol on `/ws`; then `authenticate` and `join_room`, both acked. Also the
//! framing and the cheap recognizers the connection task uses on every frame (acks,
//! `new_message`, `error`), which look at the text without parsing JSON where they can.

use std::net::{IpAddr, SocketAddr};

use clap::ValueEnum;
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::conn::ConnSpec;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Socket.IO v5 over Engine.IO v4, websocket transport (`/socket.io/`).
    Socketio,
    /// Plain WebSocket JSON frames (`/ws`).
    Raw,
}

pub type Ws = WebSocketStream<TcpStream>;

pub(crate) fn ws_config() -> WebSocketConfig {
    // Small buffers: thousands of connections live in this process.
    WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(0)
}

/// Frames an event for the wire (`42<id>[name,data]` or `{"event","data","id"}`).
pub fn frame(proto: Protocol, name: &str, data: &Value, id: u64) -> String {
    match proto {
        Protocol::Socketio => format!("42{id}[\"{name}\",{data}]"),
        Protocol::Raw => json!({"event": name, "data": data, "id": id}).to_string(),
    }
}

/// An ack frame: `(id, success)`.
pub fn parse_ack(proto: Protocol, text: &str) -> Option<(u64, bool)> {
    match proto {
        Protocol::Socketio => {
            let rest = text.strip_prefix("43")?;
            let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
            let id = rest[..digits].parse().ok()?;
            Some((id, rest[digits..].contains("\"success\":true")))
        }
        Protocol::Raw => {
            if !text.starts_with("{\"event\":\"ack\"") {
                return None;
            }
            let v: Value = serde_json::from_str(text).ok()?;
            Some((v["id"].as_u64()?, v["data"]["success"] == true))
        }
    }
}

/// The text of a `new_message` frame, if this is one.
pub fn new_message_text(proto: Protocol, text: &str) -> Option<&str> {
    let is_new = match proto {
        Protocol::Socketio => text.starts_with("42[\"new_message\","),
        Protocol::Raw => text.starts_with("{\"event\":\"new_message\""),
    };
    if !is_new {
        return None;
    }
    const KEY: &str = "\"message\":\"";
    let start = text.find(KEY)? + KEY.len();
    let len = text[start..].find('"')?;
    Some(&text[start..start + len])
}

pub fn is_error_event(proto: Protocol, text: &str) -> bool {
    match proto {
        Protocol::Socketio => text.starts_with("42[\"error\""),
        Protocol::Raw => text.starts_with("{\"event\":\"error\""),
    }
}

pub(crate) async fn tcp_connect(
    addr: SocketAddr,
    source: Option<IpAddr>,
) -> Result<TcpStream, String> {
    let sock = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    if let Some(ip) = source {
        sock.bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("bind {ip}: {e}"))?;
    }
    let stream = sock
        .connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// The Engine.IO polling handshake (one HTTP/1.1 GET on its own connection): the session id.
async fn polling_handshake(
    addr: SocketAddr,
    host: &str,
    source: Option<IpAddr>,
) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tcp_connect(addr, source).await?;
    let request = format!(
        "GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("handshake write: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .map_err(|e| format!("handshake read: {e}"))?;
    let response = String::from_utf8_lossy(&response);
    if !response.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "handshake refused: {}",
            response.lines().next().unwrap_or("")
        ));
    }
    // The body is the open packet `0{...}` (maybe chunked: the first JSON value is taken).
    let open = response
        .find("\r\n\r\n")
        .and_then(|at| response[at..].find("0{").map(|o| at + o + 1))
        .ok_or("handshake: no open packet")?;
    let open: Value = serde_json::Deserializer::from_str(&response[open..])
        .into_iter::<Value>()
        .next()
        .and_then(Result::ok)
        .ok_or("handshake: bad open packet")?;
    open["sid"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| "handshake: no sid".to_string())
}

/// Opens one connection and sets it up: transport, (Socket.IO) namespace connect,
/// `authenticate` and `join_room`, returning once both are acked.
pub async fn connect_one(
    addr: SocketAddr,
    host: &str,
    proto: Protocol,
    spec: &ConnSpec,
) -> Result<Ws, String> {
    let sid = match spec.upgrade {
        true => Some(polling_handshake(addr, host, spec.source).await?),
        false => None,
    };
    let stream = tcp_connect(addr, spec.source).await?;
    let url = match (proto, &sid) {
        (Protocol::Socketio, None) => format!("ws://{host}/socket.io/?EIO=4&transport=websocket"),
        (Protocol::Socketio, Some(sid)) => {
            format!("ws://{host}/socket.io/?EIO=4&transport=websocket&sid={sid}")
        }
        (Protocol::Raw, _) => format!("ws://{host}/ws"),
    };
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config()))
        .await
        .map_err(|e| format!("websocket: {e}"))?;
    if proto == Protocol::Socketio {
        if sid.is_some() {
            // The upgrade: probe, then switch the session to this WebSocket.
            send_text(&mut ws, "2probe".into()).await?;
            wait_text(&mut ws, proto, |t| t == "3probe").await?;
            send_text(&mut ws, "5".into()).await?;
        } else {
            // The Engine.IO open packet.
            wait_text(&mut ws, proto, |t| t.starts_with('0')).await?;
        }
        // The Socket.IO connect of the main namespace.
        send_text(&mut ws, "40".into()).await?;
        wait_text(&mut ws, proto, |t| t.starts_with("40")).await?;
    }
    let auth = json!({"userId": spec.user, "username": spec.user});
    send_text(&mut ws, frame(proto, "authenticate", &auth, 0)).await?;
    let join = json!({"roomId": spec.room});
    send_text(&mut ws, frame(proto, "join_room", &join, 1)).await?;
    let mut ok = [false, false];
    while !(ok[0] && ok[1]) {
        let text = next_text(&mut ws, proto).await?;
        if let Some((id, success)) = parse_ack(proto, &text) {
            if !success {
                return Err(format!("set-up refused: {text}"));
            }
            if id < 2 {
                ok[id as usize] = true;
            }
        }
    }
    Ok(ws)
}

async fn send_text(ws: &mut Ws, text: String) -> Result<(), String> {
    ws.send(WsMessage::text(text))
        .await
        .map_err(|e| format!("send: {e}"))
}

/// The next text frame; answers Engine.IO pings on the way.
async fn next_text(ws: &mut Ws, proto: Protocol) -> Result<String, String> {
    loop {
        match ws.next().await {
            Some(Ok(WsMessage::Text(t))) => {
                if proto == Protocol::Socketio && t.as_str() == "2" {
                    send_text(ws, "3".into()).await?;
                    continue;
                }
                return Ok(t.as_str().to_string());
            }
            Some(Ok(WsMessage::Close(_))) | None => return Err("closed by server".into()),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("read: {e}")),
        }
    }
}

async fn wait_text(
    ws: &mut Ws,
    proto: Protocol,
    pred: impl Fn(&str) -> bool,
) -> Result<String, String> {
    loop {
        let t = next_text(ws, proto).await?;
        if pred(&t) {
            return Ok(t);
        }
    }
}
