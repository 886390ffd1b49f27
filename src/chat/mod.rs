//! The use cases of the chat: authenticate, join, leave, send, typing, the message lifecycle
//! (edit, delete, reactions, read markers), history and rooms.
//!
//! `ChatService` knows only the ports (`MessageStore`, `Bus`, `Presence`, `Authenticator`) and
//! the transport-neutral `ClientSink`; the Socket.IO and raw-WebSocket transports call the same
//! methods with a per-connection `Session`, so both behave identically. A transport processes
//! the events of one connection one at a time, in arrival order, which is what makes the
//! per-connection ordering guarantee of SPEC 1 hold.
//!
//! What lives where (every file adds methods to the one `ChatService`):
//!
//! | file | what |
//! | --- | --- |
//! | `mod.rs` | `ChatService` (its ports and state), `ChatConfig`, construction, `/ready`, the room-event publish every use case shares |
//! | `error.rs` | `ChatError` and its stable codes; the conversions from the ports' errors |
//! | `session.rs` | `Session` (one connection's state), identity (`authenticate`, `identify`), deadlines (auth timeout, token expiry), the per-connection event budget, `disconnect` |
//! | `membership.rs` | `join_room`, `leave_room`, `typing` and its expiry: rooms and presence |
//! | `messages.rs` | `send_message` and its ack |
//! | `lifecycle.rs` | SPEC 10: edit, delete, reactions, read markers (socket and REST) |
//! | `queries.rs` | the REST use cases: history, one room, create a room, the caller's rooms |
//! | `rooms.rs` | `RoomRegistry`: the local room -> connections registry, the bus handler |
//! | `conn.rs` | `ClientSink`: how the core reaches one connection, whatever its transport |
//! | `wire.rs` | socket event names and the shared outbound `ServerEvent` |
//! | `limits.rs` | `RateLimiter`: the per-user send rate |
//! | `operator.rs` | `Operator`: samples of this instance for the operator's page, published to the fleet; the fleet's view |

pub mod conn;
mod error;
mod lifecycle;
mod limits;
mod membership;
mod messages;
pub mod operator;
mod queries;
pub mod rooms;
mod session;
pub mod wire;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

use crate::auth::Authenticator;
use crate::bus::Bus;
use crate::domain::{Member, RoomEvent, RoomId, UserId};
use crate::events::EventPublisher;
use crate::metrics::{Metrics, ROOM_EVENTS};
use crate::presence::Presence;
use crate::store::MessageStore;
use rooms::RoomRegistry;

pub use error::ChatError;
pub use lifecycle::{ChangeAck, ChangeMessage};
pub use limits::RateLimiter;
pub use membership::{JoinRoom, Typing};
pub use messages::{SendMessage, Sent};
pub use session::{Deadline, Session};

/// The limits the use cases enforce (SPEC 3).
#[derive(Debug, Clone)]
pub struct ChatConfig {
    pub max_message_chars: usize,
    pub history_on_join: usize,
    /// Cap of a `since` resume answer (the client resumes again from the last id it got).
    pub max_resume: usize,
    pub max_connections_per_user: u32,
    pub rate_limit_per_sec: u32,
    pub rate_limit_burst: u32,
    pub typing_timeout: Duration,
    /// Events per second per connection, all events (0 disables), and its burst.
    pub event_rate_per_sec: u32,
    pub event_rate_burst: u32,
    /// Rooms one connection may be in at once.
    pub max_rooms_per_connection: usize,
    /// A connection not authenticated within this time is closed.
    pub auth_timeout: Duration,
}

impl Default for ChatConfig {
    fn default() -> Self {
        Self {
            max_message_chars: 4000,
            history_on_join: 50,
            max_resume: 1000,
            max_connections_per_user: 5,
            rate_limit_per_sec: 20,
            rate_limit_burst: 40,
            typing_timeout: Duration::from_secs(10),
            event_rate_per_sec: 100,
            event_rate_burst: 300,
            max_rooms_per_connection: 100,
            auth_timeout: Duration::from_secs(30),
        }
    }
}

/// One dependency's state for `/ready`.
#[derive(Debug, Clone, Serialize)]
pub struct DependencyStatus {
    pub name: &'static str,
    pub up: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub struct ChatService {
    cfg: ChatConfig,
    store: Arc<dyn MessageStore>,
    bus: Arc<dyn Bus>,
    presence: Arc<dyn Presence>,
    auth: Arc<dyn Authenticator>,
    registry: Arc<RoomRegistry>,
    /// The notification broker, when configured (only its status is used here: `/ready`).
    events: Option<Arc<dyn EventPublisher>>,
    rate: RateLimiter,
    /// (room, user) -> (member, when the typing state expires).
    typing: Mutex<HashMap<(RoomId, UserId), (Member, Instant)>>,
    metrics: Arc<Metrics>,
    /// Authenticated sessions per user on this instance (`chat_authenticated_users`); touched
    /// on authentication and disconnect only.
    users: Mutex<HashMap<UserId, u32>>,
}

impl ChatService {
    pub fn new(
        cfg: ChatConfig,
        store: Arc<dyn MessageStore>,
        bus: Arc<dyn Bus>,
        presence: Arc<dyn Presence>,
        auth: Arc<dyn Authenticator>,
        registry: Arc<RoomRegistry>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let rate = RateLimiter::new(cfg.rate_limit_per_sec, cfg.rate_limit_burst);
        Self {
            cfg,
            store,
            bus,
            presence,
            auth,
            registry,
            events: None,
            rate,
            typing: Mutex::new(HashMap::new()),
            metrics,
            users: Mutex::new(HashMap::new()),
        }
    }

    /// The instance's metrics registry (the transports count their sessions into it).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Reports the notification broker in `/ready` (as `rabbitmq`). The events themselves
    /// come from the store's outbox, written by `send` through `MessageStore::append`.
    pub fn with_events(mut self, events: Arc<dyn EventPublisher>) -> Self {
        self.events = Some(events);
        self
    }

    pub fn config(&self) -> &ChatConfig {
        &self.cfg
    }

    pub fn authenticator(&self) -> &Arc<dyn Authenticator> {
        &self.auth
    }

    /// Hands a room event to the bus; on a bus failure, local members still get it.
    async fn publish(&self, event: RoomEvent) {
        let event = Arc::new(event);
        self.metrics.bus_published[event_kind(&event)].inc();
        if let Err(e) = self.bus.publish(event.clone()).await {
            // Members on this instance still get it; other instances miss it until the bus
            // is back (the durable store keeps messages for `since` resume).
            tracing::warn!(cause = %e, "bus publish failed, delivering locally only");
            crate::bus::BusHandler::on_event(&*self.registry, event);
        }
    }

    /// A session authenticated (`true`) or went away (`false`): the authenticated gauges.
    fn count_user(&self, user: &UserId, authenticated: bool) {
        let mut users = self.users.lock();
        if authenticated {
            *users.entry(user.clone()).or_default() += 1;
            self.metrics.authenticated_connections.inc();
        } else if let Some(n) = users.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                users.remove(user);
            }
            self.metrics.authenticated_connections.dec();
        }
        self.metrics.authenticated_users.set(users.len() as i64);
    }

    pub async fn readiness(&self) -> Vec<DependencyStatus> {
        let store = self.store.ping().await;
        let mut deps = vec![DependencyStatus {
            name: "store",
            up: store.is_ok(),
            error: store.err().map(|e| e.to_string()),
        }];
        if let Some((name, bus)) = self.bus.health().await {
            deps.push(DependencyStatus {
                name,
                up: bus.is_ok(),
                error: bus.err().map(|e| e.to_string()),
            });
        }
        if self.auth.mode() == "grpc" {
            let auth = self.auth.ping().await;
            deps.push(DependencyStatus {
                name: "auth",
                up: auth.is_ok(),
                error: auth.err().map(|e| e.to_string()),
            });
        }
        if let Some(events) = &self.events {
            let broker = events.ping().await;
            deps.push(DependencyStatus {
                name: "rabbitmq",
                up: broker.is_ok(),
                error: broker.err().map(|e| e.to_string()),
            });
        }
        deps
    }
}

/// The index of a room event's kind in `metrics::ROOM_EVENTS`.
pub(crate) fn event_kind(event: &RoomEvent) -> usize {
    let kind = match event {
        RoomEvent::Message(_) => 0,
        RoomEvent::Joined { .. } => 1,
        RoomEvent::Left { .. } => 2,
        RoomEvent::Typing { .. } => 3,
        RoomEvent::Edited { .. } => 4,
        RoomEvent::Deleted { .. } => 5,
        RoomEvent::Reaction { .. } => 6,
        RoomEvent::Read(_) => 7,
    };
    debug_assert!(kind < ROOM_EVENTS.len());
    kind
}
