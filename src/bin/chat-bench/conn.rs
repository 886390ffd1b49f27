//! One connection's task: it owns the WebSocket, writes `send_message` when the scheduler says
//! so (`Cmd::Send`), answers Engine.IO pings, and counts what comes back into the process's
//! `Stats`: acks of measured sends, `new_message` deliveries (latency from the send time
//! carried in the text; per-sender sequence numbers catch duplicates and reordering), server
//! `error` events and disconnects.
//!
//! Message text: `<phase>:<measured>:<sender>:<seq>:<send_unix_ns>:` padded with `x`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::protocol::{Protocol, Ws, frame, is_error_event, new_message_text, parse_ack};
use crate::stats::{Stats, now_ns};

/// What the scheduler tells a connection task.
pub enum Cmd {
    Send { phase: u32, measured: bool },
    Close,
}

/// Who one connection is and where it goes, decided before connecting.
pub struct ConnSpec {
    pub index: u32,
    /// Which of the `--url` servers.
    pub server: usize,
    pub source: Option<IpAddr>,
    pub user: String,
    pub room: String,
    pub room_len: u32,
    pub upgrade: bool,
}

/// The scheduler's handle of a running connection task.
pub struct Conn {
    pub tx: mpsc::Sender<Cmd>,
    /// Members of its room: deliveries expected per message it sends.
    pub room_len: u32,
}

pub struct ConnTask {
    pub ws: Ws,
    pub proto: Protocol,
    pub index: u32,
    pub room: String,
    pub message_size: usize,
    pub stats: Arc<Stats>,
}

impl ConnTask {
    pub async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let stats = self.stats.clone();
        stats.open.fetch_add(1, Ordering::Relaxed);
        let mut next_id: u64 = 2;
        let mut seq: u64 = 0;
        let mut pending: HashMap<u64, (u32, bool)> = HashMap::new();
        let mut last_seen: HashMap<u32, u64> = HashMap::new();
        let mut closing = false;
        loop {
            tokio::select! {
                cmd = rx.recv(), if !closing => match cmd {
                    Some(Cmd::Send { phase, measured }) => {
                        seq += 1;
                        let id = next_id;
                        next_id += 1;
                        let text = self.message_text(phase, measured, seq);
                        let data = json!({"roomId": self.room, "message": text});
                        pending.insert(id, (phase, measured));
                        if self.ws.send(WsMessage::text(frame(self.proto, "send_message", &data, id))).await.is_err() {
                            if measured {
                                stats.send_errors.fetch_add(1, Ordering::Relaxed);
                            }
                            stats.disconnects.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                    Some(Cmd::Close) | None => {
                        closing = true;
                        let _ = self.ws.close(None).await;
                    }
                },
                frame = self.ws.next() => match frame {
                    Some(Ok(WsMessage::Text(t))) => {
                        let t = t.as_str();
                        if self.proto == Protocol::Socketio && t == "2" {
                            if self.ws.send(WsMessage::text("3")).await.is_err() {
                                if !closing {
                                    stats.disconnects.fetch_add(1, Ordering::Relaxed);
                                }
                                break;
                            }
                        } else if let Some(body) = new_message_text(self.proto, t) {
                            self.on_message(body, &mut last_seen);
                        } else if let Some((id, ok)) = parse_ack(self.proto, t) {
                            if let Some((phase, measured)) = pending.remove(&id)
                                && measured
                                && phase == stats.phase.load(Ordering::Relaxed)
                            {
                                if ok {
                                    stats.acked.fetch_add(1, Ordering::Relaxed);
                                } else {
                                    stats.ack_failed.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        } else if is_error_event(self.proto, t) {
                            stats.server_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => {
                        if !closing {
                            stats.disconnects.fetch_add(1, Ordering::Relaxed);
                        }
                        break;
                    }
                    Some(Ok(_)) => {}
                },
            }
        }
        stats.open.fetch_sub(1, Ordering::Relaxed);
    }

    fn message_text(&self, phase: u32, measured: bool, seq: u64) -> String {
        let mut text = format!(
            "{phase}:{}:{}:{seq}:{}:",
            u8::from(measured),
            self.index,
            now_ns()
        );
        while text.len() < self.message_size {
            text.push('x');
        }
        text
    }

    fn on_message(&self, body: &str, last_seen: &mut HashMap<u32, u64>) {
        let now = now_ns();
        let mut parts = body.split(':');
        let (Some(phase), Some(measured), Some(sender), Some(seq), Some(sent_ns)) = (
            parts.next().and_then(|p| p.parse::<u32>().ok()),
            parts.next(),
            parts.next().and_then(|p| p.parse::<u32>().ok()),
            parts.next().and_then(|p| p.parse::<u64>().ok()),
            parts.next().and_then(|p| p.parse::<u64>().ok()),
        ) else {
            return;
        };
        // Per sender, sequence numbers must rise: anything else is a duplicate (or reordering).
        let last = last_seen.entry(sender).or_insert(0);
        let in_order = seq > *last;
        if in_order {
            *last = seq;
        }
        if measured != "1" || phase != self.stats.phase.load(Ordering::Relaxed) {
            return;
        }
        if !in_order {
            self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.stats.delivered.fetch_add(1, Ordering::Relaxed);
        self.stats
            .record_latency(now.saturating_sub(sent_ns) / 1_000);
    }
}
