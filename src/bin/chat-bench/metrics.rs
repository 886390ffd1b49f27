//! The server's own durable-write latency: `chat_durable_write_seconds` scraped from
//! `GET /metrics` (Prometheus text) of every server at the start and at the end of the measured
//! window; the difference of the two is the window's histogram, whose p50 / p99 go into the
//! report (`server.durable_write_ms`). A server without the metric (Node.js, an older
//! chat-service) gives no figures.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const METRIC: &str = "chat_durable_write_seconds_bucket{";

/// Cumulative buckets: (upper bound in seconds, count), `+Inf` last as `f64::INFINITY`.
pub type Buckets = Vec<(f64, u64)>;

/// The histogram summed over `urls` (`http://host:port`); `None` when a server has none.
pub async fn scrape(urls: &[String]) -> Option<Buckets> {
    let mut total: Option<Buckets> = None;
    for url in urls {
        let one = scrape_one(url).await?;
        total = Some(match total {
            None => one,
            Some(t) if t.len() == one.len() => {
                t.iter().zip(&one).map(|(a, b)| (a.0, a.1 + b.1)).collect()
            }
            Some(_) => return None,
        });
    }
    total
}

async fn scrape_one(url: &str) -> Option<Buckets> {
    let addr = url
        .trim_start_matches("http://")
        .trim_start_matches("ws://")
        .split('/')
        .next()?
        .to_string();
    let body = tokio::time::timeout(Duration::from_secs(5), async {
        let mut s = TcpStream::connect(&addr).await.ok()?;
        let req = format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        Some(out)
    })
    .await
    .ok()??;
    let buckets: Buckets = body
        .lines()
        .filter_map(|l| l.strip_prefix(METRIC))
        .filter_map(|rest| {
            // Labels in any order (`instance_id`, `le`); the bound is `le`'s value.
            let (labels, count) = rest.split_once("} ")?;
            let le = labels
                .split(',')
                .find_map(|l| l.strip_prefix("le=\""))?
                .strip_suffix('"')?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect();
    (!buckets.is_empty()).then_some(buckets)
}

/// The `q` quantile of a cumulative histogram, interpolated linearly inside its bucket (as
/// Prometheus' `histogram_quantile`); in seconds.
fn quantile(buckets: &Buckets, q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut lower = (0.0, 0u64);
    for &(le, count) in buckets {
        if count as f64 >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let inside = (count - lower.1) as f64;
            let frac = if inside > 0.0 {
                (rank - lower.1 as f64) / inside
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * frac);
        }
        lower = (le, count);
    }
    None
}

/// The window's figures from the scrapes at its start and end (`null` without both).
pub fn window(start: Option<&Buckets>, end: Option<&Buckets>) -> Value {
    let (Some(s), Some(e)) = (start, end) else {
        return Value::Null;
    };
    if s.len() != e.len() {
        return Value::Null;
    }
    let diff: Buckets = s
        .iter()
        .zip(e)
        .map(|(a, b)| (b.0, b.1.saturating_sub(a.1)))
        .collect();
    let ms = |q| quantile(&diff, q).map(|v| v * 1e3);
    json!({
        "count": diff.last().map(|b| b.1),
        "p50": ms(0.5),
        "p90": ms(0.9),
        "p99": ms(0.99),
    })
}
