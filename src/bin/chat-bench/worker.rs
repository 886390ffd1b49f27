//! One process's share of the load (`LocalWorker`): it decides which connections are its own
//! (whole rooms, so a message's sender and receivers live in one process), opens them with
//! bounded concurrency, and runs a phase: the scheduler offers `send_message` at the phase's
//! rate round robin over its connections, then waits for outstanding acks and deliveries.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::mpsc;

use crate::Args;
use crate::conn::{Cmd, Conn, ConnSpec, ConnTask};
use crate::protocol::{Protocol, connect_one};
use crate::stats::{PhaseResult, Stats};

pub struct LocalWorker {
    pub conns: Vec<Conn>,
    pub stats: Arc<Stats>,
    pub connect_errors: u64,
    pub first_connect_error: Option<String>,
}

/// Parses `127.0.0.1-127.0.0.8` (last octet range) or `a,b,c`.
fn parse_source_ips(s: &str) -> Result<Vec<IpAddr>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: Ipv4Addr = a.parse().map_err(|_| format!("bad address {a}"))?;
            let b: Ipv4Addr = b.parse().map_err(|_| format!("bad address {b}"))?;
            let (a, b) = (u32::from(a), u32::from(b));
            if b < a || b - a > 65_535 {
                return Err(format!("bad range {part}"));
            }
            out.extend((a..=b).map(|x| IpAddr::V4(Ipv4Addr::from(x))));
        } else {
            out.push(part.parse().map_err(|_| format!("bad address {part}"))?);
        }
    }
    if out.is_empty() {
        return Err("no source address".into());
    }
    Ok(out)
}

/// `host:port` of the URL.
pub(crate) fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split('/').next().unwrap_or(rest);
    if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:80")
    }
}

impl LocalWorker {
    /// Opens the connections of worker `index` of `count` (rooms `r` with `r % count == index`).
    pub async fn connect(
        args: &Args,
        index: usize,
        count: usize,
        run_id: &str,
    ) -> Result<Self, String> {
        let mut servers = Vec::new();
        for url in &args.url {
            let host = host_port(url);
            let addr = tokio::net::lookup_host(&host)
                .await
                .map_err(|e| format!("resolve {host}: {e}"))?
                .find(SocketAddr::is_ipv4)
                .ok_or_else(|| format!("no IPv4 address for {host}"))?;
            servers.push((addr, host));
        }
        let servers = Arc::new(servers);
        let sources = match &args.source_ips {
            Some(s) => Some(parse_source_ips(s)?),
            None => None,
        };
        let room_size = args.room_size.max(1);
        let rooms = args.connections.div_ceil(room_size);
        let mut specs = Vec::new();
        for room in (0..rooms).filter(|r| r % count == index) {
            let first = room * room_size;
            let last = ((room + 1) * room_size).min(args.connections);
            for i in first..last {
                specs.push(ConnSpec {
                    index: i as u32,
                    server: i % servers.len(),
                    source: sources.as_ref().map(|s| s[i % s.len()]),
                    user: format!("b{run_id}-{i}"),
                    room: format!("bench-{run_id}-{room}"),
                    room_len: (last - first) as u32,
                    upgrade: args.upgrade && args.protocol == Protocol::Socketio,
                });
            }
        }
        let stats = Arc::new(Stats::default());
        stats.reset(0);
        let timeout = Duration::from_secs_f64(args.connect_timeout);
        let proto = args.protocol;
        let message_size = args.message_size;
        let results: Vec<Result<Conn, String>> = futures::stream::iter(specs)
            .map(|spec| {
                let servers = servers.clone();
                let stats = stats.clone();
                async move {
                    let (addr, host) = &servers[spec.server];
                    let ws = tokio::time::timeout(timeout, connect_one(*addr, host, proto, &spec))
                        .await
                        .map_err(|_| "connect timed out".to_string())??;
                    let (tx, rx) = mpsc::channel(64);
                    let task = ConnTask {
                        ws,
                        proto,
                        index: spec.index,
                        room: spec.room,
                        message_size,
                        stats,
                    };
                    tokio::spawn(task.run(rx));
                    Ok(Conn {
                        tx,
                        room_len: spec.room_len,
                    })
                }
            })
            .buffer_unordered(args.connect_concurrency.max(1))
            .collect()
            .await;
        let mut conns = Vec::new();
        let mut connect_errors = 0;
        let mut first_connect_error = None;
        for r in results {
            match r {
                Ok(c) => conns.push(c),
                Err(e) => {
                    connect_errors += 1;
                    first_connect_error.get_or_insert(e);
                }
            }
        }
        Ok(Self {
            conns,
            stats,
            connect_errors,
            first_connect_error,
        })
    }

    /// Sends at `rate` for warmup + duration, then waits up to `drain` for acks and deliveries.
    pub async fn run_phase(
        &self,
        phase: u32,
        rate: f64,
        warmup: f64,
        duration: f64,
        drain: f64,
    ) -> PhaseResult {
        let stats = &self.stats;
        stats.reset(phase);
        let total = warmup + duration;
        let start = Instant::now();
        if rate > 0.0 && !self.conns.is_empty() {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut issued: u64 = 0;
            let mut next = 0usize;
            let last = (total * rate).floor() as u64;
            while issued < last {
                tick.tick().await;
                let due = ((start.elapsed().as_secs_f64() * rate) as u64).min(last);
                while issued < due {
                    let measured = issued as f64 / rate >= warmup;
                    let conn = &self.conns[next];
                    next = (next + 1) % self.conns.len();
                    issued += 1;
                    if measured {
                        // Counted when offered: a message that cannot be written (connection
                        // gone or backed up) is still expected, and so counts as lost.
                        stats.sent.fetch_add(1, Ordering::Relaxed);
                        stats
                            .expected
                            .fetch_add(u64::from(conn.room_len), Ordering::Relaxed);
                    }
                    if conn.tx.try_send(Cmd::Send { phase, measured }).is_err() && measured {
                        stats.send_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            let deadline = Instant::now() + Duration::from_secs_f64(drain);
            while Instant::now() < deadline {
                let c = stats.snapshot();
                let settled = c.acked + c.ack_failed + c.send_errors >= c.sent
                    && c.delivered + c.duplicates >= c.expected;
                if settled || c.open == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        } else {
            tokio::time::sleep(Duration::from_secs_f64(total)).await;
        }
        PhaseResult {
            counters: stats.snapshot(),
            hist: stats.hist_pairs(),
        }
    }

    pub async fn close(&self) {
        for c in &self.conns {
            let _ = c.tx.try_send(Cmd::Close);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.stats.open.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
