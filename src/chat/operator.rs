//! The operator's view of this instance and of every instance sharing its Redis: what the
//! page at `GET /admin` polls (issue 18.3).
//!
//! `Operator::run` samples this instance every `SAMPLE_INTERVAL`: the gauges and counters of
//! the metrics registry (atomics read here, so the hot path pays nothing more), the room
//! registry's biggest rooms by local members, and `readiness` (the dependency states of
//! `/ready`). Rates per second are the counters' deltas over the time between two samples;
//! the last `HISTORY_LEN` samples stay in a ring for the page's charts. Each sample becomes
//! this instance's `InstanceReport`, which the fleet port (`fleet/`, Redis) keeps for
//! `REPORT_TTL`, a few intervals: an instance that stops publishing drops off the page by
//! itself, one that shuts down gracefully withdraws its report at once.
//!
//! `Operator::view` answers the page: this instance's latest report first, then every other
//! live report, fleet totals, and the fleet's biggest rooms: the union of every instance's
//! biggest rooms, each counted across instances by `Presence::member_counts` (the shared
//! `chat:room:{roomId}:users` sets with Redis). A room that is 11th on every instance may be
//! missing from that list; the biggest ones are not.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use tokio::time::MissedTickBehavior;

use super::{ChatService, DependencyStatus};
use crate::domain::{RoomId, now_ms};
use crate::fleet::{
    DependencyState, Fleet, FleetError, History, InstanceReport, OutboxState, RoomSize, Transports,
};
use crate::metrics::Transport;

/// How often this instance samples its figures and publishes its report.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(2);
/// Samples kept for the charts: five minutes.
pub const HISTORY_LEN: usize = 150;
/// How long a report stays visible without a newer one: five intervals.
pub const REPORT_TTL: Duration = Duration::from_secs(10);
/// Rooms listed per instance and for the fleet.
pub const BIGGEST_ROOMS: usize = 10;

/// What the page polls.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetView {
    /// The instance that answered.
    pub instance_id: String,
    /// Epoch ms.
    pub generated_at: u64,
    /// Whether instances share a Redis (multi-instance mode).
    pub shared: bool,
    /// Why the other instances' reports could not be read (Redis down), if so.
    pub fleet_error: Option<String>,
    pub totals: Totals,
    /// This instance first, then the others by id.
    pub instances: Vec<Arc<InstanceReport>>,
    pub biggest_rooms: Vec<FleetRoom>,
}

/// Sums over the listed instances (users and rooms are not additive: a user or a room may be
/// on several instances; see `biggest_rooms`).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub instances: usize,
    pub connections: i64,
    pub messages_per_sec: f64,
    pub deliveries_per_sec: f64,
}

/// A room of the fleet.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetRoom {
    pub room_id: String,
    /// Distinct users across every instance.
    pub members: u64,
    /// Local members by instance id (instances where the room is among the biggest).
    pub by_instance: BTreeMap<String, u64>,
}

pub struct Operator {
    chat: Arc<ChatService>,
    fleet: Option<Arc<dyn Fleet>>,
    started_at: u64,
    sampler: Mutex<Sampler>,
    latest: Mutex<Option<Arc<InstanceReport>>>,
    /// Whether the last publish worked (a change is logged once).
    publishing: AtomicBool,
}

impl Operator {
    pub fn new(chat: Arc<ChatService>, fleet: Option<Arc<dyn Fleet>>) -> Self {
        Self {
            chat,
            fleet,
            started_at: now_ms(),
            sampler: Mutex::new(Sampler::default()),
            latest: Mutex::new(None),
            publishing: AtomicBool::new(true),
        }
    }

    pub fn instance_id(&self) -> &str {
        self.chat.metrics().instance_id()
    }

    /// Samples every `SAMPLE_INTERVAL` until `stop`, then withdraws the report (one Redis
    /// call, which fails within the Redis timeout when Redis is away).
    pub async fn run(self: Arc<Self>, stop: impl Future<Output = ()>) {
        let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            // A sample in flight is dropped at `stop` (nothing of it needs finishing).
            tokio::select! {
                () = &mut stop => break,
                _ = async {
                    tick.tick().await;
                    self.sample().await;
                } => {}
            }
        }
        if let Some(fleet) = &self.fleet
            && let Err(e) = fleet.withdraw(self.instance_id()).await
        {
            tracing::debug!(cause = %e, "operator report not withdrawn; it expires by itself");
        }
    }

    /// Takes one sample, keeps it as the latest report and publishes it.
    pub async fn sample(&self) -> Arc<InstanceReport> {
        let dependencies = self
            .chat
            .readiness()
            .await
            .into_iter()
            .map(|d: DependencyStatus| DependencyState {
                name: d.name.to_string(),
                up: d.up,
                error: d.error,
            })
            .collect();
        let report = Arc::new(self.report(dependencies));
        *self.latest.lock() = Some(report.clone());
        if let Some(fleet) = &self.fleet {
            let published = fleet.publish(&report, REPORT_TTL).await;
            self.published(published);
        }
        report
    }

    fn published(&self, result: Result<(), FleetError>) {
        match result {
            Ok(()) => {
                if !self.publishing.swap(true, Ordering::Relaxed) {
                    tracing::info!("operator report published to Redis again");
                }
            }
            Err(e) => {
                if self.publishing.swap(false, Ordering::Relaxed) {
                    tracing::warn!(cause = %e, "cannot publish the operator report to Redis");
                }
            }
        }
    }

    fn report(&self, dependencies: Vec<DependencyState>) -> InstanceReport {
        let m = self.chat.metrics();
        let open = |t: Transport| m.connections_open[t as usize].get();
        let by_transport = Transports {
            socketio: open(Transport::SocketIo),
            polling: open(Transport::Polling),
            raw: open(Transport::Raw),
        };
        let point = Point {
            at: now_ms(),
            connections: by_transport.socketio + by_transport.polling + by_transport.raw,
            users: m.authenticated_users.get(),
            rooms: m.rooms_local.get(),
            messages_per_sec: 0.0,
            deliveries_per_sec: 0.0,
        };
        let reading = Reading {
            at: Instant::now(),
            stored: m.messages_stored.get(),
            deliveries: m.deliveries.get(),
        };
        let outbox = m.outbox_stats().map(|o| OutboxState {
            depth: o.depth.get(),
            oldest_age_ms: o.oldest_age_ms.load(Ordering::Relaxed),
            broker_up: o.broker_up.load(Ordering::Relaxed),
        });
        let biggest_rooms = self
            .chat
            .registry
            .biggest(BIGGEST_ROOMS)
            .into_iter()
            .map(|(room, members, connections)| RoomSize {
                room_id: room.to_string(),
                members: members as u64,
                connections: connections as u64,
            })
            .collect();
        let (point, history) = {
            let mut sampler = self.sampler.lock();
            let point = sampler.add(reading, point);
            (point, sampler.history())
        };
        InstanceReport {
            instance_id: self.instance_id().to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: self.started_at,
            sampled_at: point.at,
            interval_ms: SAMPLE_INTERVAL.as_millis() as u64,
            connections: point.connections,
            connections_by_transport: by_transport,
            users: point.users,
            rooms: point.rooms,
            messages_per_sec: point.messages_per_sec,
            deliveries_per_sec: point.deliveries_per_sec,
            messages_stored: reading.stored,
            deliveries: reading.deliveries,
            dependencies,
            outbox,
            biggest_rooms,
            history,
        }
    }

    /// This instance and every other one that shares its Redis.
    pub async fn view(&self) -> FleetView {
        let latest = self.latest.lock().clone();
        let own = match latest {
            Some(report) => report,
            None => self.sample().await,
        };
        let (mut peers, fleet_error) = match &self.fleet {
            None => (Vec::new(), None),
            Some(fleet) => match fleet.reports().await {
                Ok(reports) => (
                    reports
                        .into_iter()
                        .filter(|r| r.instance_id != own.instance_id)
                        .map(Arc::new)
                        .collect(),
                    None,
                ),
                Err(e) => (Vec::new(), Some(e.to_string())),
            },
        };
        peers.sort_by(|a: &Arc<InstanceReport>, b| a.instance_id.cmp(&b.instance_id));
        let mut instances = vec![own];
        instances.extend(peers);
        let totals = Totals {
            instances: instances.len(),
            connections: instances.iter().map(|r| r.connections).sum(),
            messages_per_sec: round2(instances.iter().map(|r| r.messages_per_sec).sum()),
            deliveries_per_sec: round2(instances.iter().map(|r| r.deliveries_per_sec).sum()),
        };
        let biggest_rooms = self.fleet_rooms(&instances).await;
        FleetView {
            instance_id: self.instance_id().to_string(),
            generated_at: now_ms(),
            shared: self.fleet.is_some(),
            fleet_error,
            totals,
            instances,
            biggest_rooms,
        }
    }

    async fn fleet_rooms(&self, instances: &[Arc<InstanceReport>]) -> Vec<FleetRoom> {
        let mut local: BTreeMap<&str, BTreeMap<String, u64>> = BTreeMap::new();
        for report in instances {
            for room in &report.biggest_rooms {
                local
                    .entry(room.room_id.as_str())
                    .or_default()
                    .insert(report.instance_id.clone(), room.members);
            }
        }
        let ids: Vec<RoomId> = local
            .keys()
            .filter_map(|id| RoomId::parse(id).ok())
            .collect();
        // The shared count; on failure, the sum of the local ones (an upper bound).
        let counts = self.chat.presence.member_counts(&ids).await.ok();
        let mut rooms: Vec<FleetRoom> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let by_instance = local.remove(id.as_str()).unwrap_or_default();
                let members = counts
                    .as_ref()
                    .and_then(|c| c.get(i).copied())
                    .unwrap_or_else(|| by_instance.values().sum());
                FleetRoom {
                    room_id: id.to_string(),
                    members,
                    by_instance,
                }
            })
            .collect();
        rooms.sort_by(|a, b| {
            b.members
                .cmp(&a.members)
                .then_with(|| a.room_id.cmp(&b.room_id))
        });
        rooms.truncate(BIGGEST_ROOMS);
        rooms
    }
}

/// Two decimals are plenty for a page and keep the JSON short.
fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The counters a rate comes from, and when they were read.
#[derive(Clone, Copy)]
struct Reading {
    at: Instant,
    stored: u64,
    deliveries: u64,
}

/// One sample of the charts.
#[derive(Clone, Copy)]
struct Point {
    at: u64,
    connections: i64,
    users: i64,
    rooms: i64,
    messages_per_sec: f64,
    deliveries_per_sec: f64,
}

/// The rates between samples and the ring of the last `HISTORY_LEN` samples.
#[derive(Default)]
struct Sampler {
    previous: Option<Reading>,
    points: VecDeque<Point>,
}

impl Sampler {
    /// Adds a sample: fills in its rates (zero for the first one) and keeps it.
    fn add(&mut self, reading: Reading, mut point: Point) -> Point {
        if let Some(prev) = self.previous {
            let secs = reading.at.saturating_duration_since(prev.at).as_secs_f64();
            let rate = |now: u64, before: u64| {
                if secs > 0.0 {
                    round2(now.saturating_sub(before) as f64 / secs)
                } else {
                    0.0
                }
            };
            point.messages_per_sec = rate(reading.stored, prev.stored);
            point.deliveries_per_sec = rate(reading.deliveries, prev.deliveries);
        }
        self.previous = Some(reading);
        if self.points.len() == HISTORY_LEN {
            self.points.pop_front();
        }
        self.points.push_back(point);
        point
    }

    fn history(&self) -> History {
        let column = |f: fn(&Point) -> i64| self.points.iter().map(f).collect();
        History {
            at: self.points.iter().map(|p| p.at).collect(),
            connections: column(|p| p.connections),
            users: column(|p| p.users),
            rooms: column(|p| p.rooms),
            messages_per_sec: self.points.iter().map(|p| p.messages_per_sec).collect(),
            deliveries_per_sec: self.points.iter().map(|p| p.deliveries_per_sec).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(at: u64, connections: i64) -> Point {
        Point {
            at,
            connections,
            users: 1,
            rooms: 1,
            messages_per_sec: 0.0,
            deliveries_per_sec: 0.0,
        }
    }

    #[test]
    fn rates_are_deltas_over_the_time_between_samples() {
        let mut s = Sampler::default();
        let t0 = Instant::now();
        let first = s.add(
            Reading {
                at: t0,
                stored: 100,
                deliveries: 1000,
            },
            point(0, 3),
        );
        assert_eq!(
            first.messages_per_sec, 0.0,
            "no rate without a previous sample"
        );
        let second = s.add(
            Reading {
                at: t0 + Duration::from_millis(2500),
                stored: 105,
                deliveries: 1010,
            },
            point(2500, 4),
        );
        assert_eq!(second.messages_per_sec, 2.0);
        assert_eq!(second.deliveries_per_sec, 4.0);
        let h = s.history();
        assert_eq!(h.at, vec![0, 2500]);
        assert_eq!(h.connections, vec![3, 4]);
        assert_eq!(h.messages_per_sec, vec![0.0, 2.0]);
    }

    #[test]
    fn the_history_keeps_the_last_samples_only() {
        let mut s = Sampler::default();
        let t0 = Instant::now();
        for i in 0..(HISTORY_LEN as u64 + 7) {
            s.add(
                Reading {
                    at: t0 + Duration::from_secs(i),
                    stored: i,
                    deliveries: 0,
                },
                point(i, i as i64),
            );
        }
        let h = s.history();
        assert_eq!(h.at.len(), HISTORY_LEN);
        assert_eq!(h.at[0], 7, "the oldest samples went first");
        assert_eq!(*h.at.last().unwrap(), HISTORY_LEN as u64 + 6);
        assert!(h.messages_per_sec[1..].iter().all(|r| *r == 1.0));
    }
}
