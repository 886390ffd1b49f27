//! The instances that share one Redis, as the operator's page (`GET /admin`) sees them. Every
//! instance publishes a small report of its own figures every few seconds and reads the
//! reports of the others; the report is built by `chat::operator`, this port only moves it.
//!
//! # Contract
//! - `publish` makes this instance's report visible to every instance's `reports` until `ttl`
//!   has passed without another publish, so an instance that dies disappears by itself.
//! - `reports` returns every live report, this instance's included, in no particular order. A
//!   report that cannot be decoded (another version's shape) is skipped, never an error.
//! - `withdraw` removes this instance's report at once (graceful shutdown).
//! - Outage: every call fails promptly with `FleetError`; nothing is retried here (the next
//!   report comes one interval later, and the page shows this instance alone meanwhile).
//!
//! Without Redis there is no fleet: the composition root passes none, and the page shows this
//! instance alone. `redis.rs` (`RedisFleet`) is the only adapter.
//!
//! A report is for an operator: counts, rates, dependency states, room ids and their sizes,
//! never a token, a user id or a message text.

pub mod redis;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
#[error("fleet unavailable: {0}")]
pub struct FleetError(pub String);

#[async_trait]
pub trait Fleet: Send + Sync + 'static {
    async fn publish(&self, report: &InstanceReport, ttl: Duration) -> Result<(), FleetError>;
    async fn reports(&self) -> Result<Vec<InstanceReport>, FleetError>;
    async fn withdraw(&self, instance_id: &str) -> Result<(), FleetError>;
}

/// One instance's figures at one moment, with its recent history (JSON, camelCase: what the
/// page reads). Every field has a default, so a report of an older or newer version still
/// decodes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct InstanceReport {
    /// The instance id (`app.rs`; also the `instance_id` label of `/metrics`).
    pub instance_id: String,
    /// The crate version the instance runs.
    pub version: String,
    /// Epoch ms.
    pub started_at: u64,
    /// Epoch ms of this sample.
    pub sampled_at: u64,
    /// The sampling interval, ms (the page calls a report stale after a few of them).
    pub interval_ms: u64,
    /// Open sessions, all transports.
    pub connections: i64,
    pub connections_by_transport: Transports,
    /// Distinct authenticated users with a session on this instance.
    pub users: i64,
    /// Rooms with a member connected to this instance.
    pub rooms: i64,
    /// Messages stored per second over the last interval.
    pub messages_per_sec: f64,
    /// Room events handed to local recipients per second over the last interval.
    pub deliveries_per_sec: f64,
    /// Totals since the start.
    pub messages_stored: u64,
    pub deliveries: u64,
    pub dependencies: Vec<DependencyState>,
    /// The notification outbox (only with RabbitMQ).
    pub outbox: Option<OutboxState>,
    /// This instance's biggest rooms by local members, biggest first.
    pub biggest_rooms: Vec<RoomSize>,
    pub history: History,
}

/// Open sessions by transport (the `transport` label of `/metrics`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Transports {
    pub socketio: i64,
    pub polling: i64,
    pub raw: i64,
}

/// A dependency as `/ready` reports it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DependencyState {
    pub name: String,
    pub up: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The outbox backlog as the relay last saw it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OutboxState {
    /// Events waiting to be published.
    pub depth: i64,
    /// Age of the oldest waiting event, ms (0 when none waits).
    pub oldest_age_ms: u64,
    pub broker_up: bool,
}

/// A room and its members on one instance.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RoomSize {
    pub room_id: String,
    /// Distinct users.
    pub members: u64,
    /// Their sessions in the room.
    pub connections: u64,
}

/// The last samples, oldest first, one array per figure (columns keep the JSON small).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct History {
    /// Epoch ms of each sample.
    pub at: Vec<u64>,
    pub connections: Vec<i64>,
    pub users: Vec<i64>,
    pub rooms: Vec<i64>,
    pub messages_per_sec: Vec<f64>,
    pub deliveries_per_sec: Vec<f64>,
}
