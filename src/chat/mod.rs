//! The use cases of the chat: authenticate, join, leave, send, typing, history and rooms.
//!
//! `ChatService` knows only the ports (`MessageStore`, `Bus`, `Presence`, `Authenticator`) and
//! the transport-neutral `ClientSink`; the Socket.IO and raw-WebSocket transports call the same
//! methods with a per-connection `Session`, so both behave identically. A transport processes
//! the events of one connection one at a time, in arrival order, which is what makes the
//! per-connection ordering guarantee of SPEC 1 hold.

pub mod conn;
mod limits;
pub mod rooms;
pub mod wire;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

use crate::auth::{AuthError, Authenticator, Credentials};
use crate::bus::Bus;
use crate::domain::{
    ClientMessageId, ConnId, Identity, Member, Message, MessageBody, MessageId, MessageType,
    NewRoom, Room, RoomEvent, RoomId, RoomType, UserId, now_ms,
};
use crate::events::EventPublisher;
use crate::presence::{Presence, PresenceError};
use crate::store::{MessageStore, StoreError};
use conn::ClientSink;
pub use limits::RateLimiter;
use rooms::RoomRegistry;
use wire::ServerEvent;

/// Why a use case refused. Each variant has a stable `code` shared by REST and both sockets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatError {
    #[error("Not authenticated")]
    NotAuthenticated,
    #[error("{0}")]
    AuthFailed(String),
    #[error("Token expired, authenticate again")]
    TokenExpired,
    #[error("{0}")]
    InvalidPayload(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("Too many messages, slow down")]
    RateLimited,
    #[error("Too many connections for this user")]
    TooManyConnections,
    #[error("Payload too large")]
    PayloadTooLarge,
    #[error("{0}")]
    Unavailable(String),
    /// The cause is logged where it happened; clients see a generic text.
    #[error("Internal error")]
    Internal,
}

impl ChatError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotAuthenticated => "not_authenticated",
            Self::AuthFailed(_) => "auth_failed",
            Self::TokenExpired => "token_expired",
            Self::InvalidPayload(_) => "invalid_payload",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::RateLimited => "rate_limited",
            Self::TooManyConnections => "too_many_connections",
            Self::PayloadTooLarge => "payload_too_large",
            Self::Unavailable(_) => "unavailable",
            Self::Internal => "internal",
        }
    }

    /// The `error` event payload / REST error body: `{message, code}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"message": self.to_string(), "code": self.code()})
    }

    /// Whether the transport closes the connection after reporting this error.
    pub fn closes_connection(&self) -> bool {
        matches!(self, Self::TooManyConnections)
    }
}

impl From<crate::domain::ValidationError> for ChatError {
    fn from(e: crate::domain::ValidationError) -> Self {
        Self::InvalidPayload(e.0)
    }
}

impl From<StoreError> for ChatError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(cause) => {
                tracing::warn!(%cause, "storage unavailable");
                Self::Unavailable("Storage is unavailable, try again".into())
            }
            StoreError::UnknownCursor => {
                Self::InvalidPayload("before names no message of this room".into())
            }
            StoreError::RoomExists => Self::InvalidPayload("roomId already exists".into()),
            // The store logged the warning (once per refused batch).
            StoreError::OutboxFull(_) => {
                Self::Unavailable("Notification outbox full, try again later".into())
            }
            StoreError::Internal(cause) => {
                tracing::error!(%cause, "storage error");
                Self::Internal
            }
        }
    }
}

impl From<PresenceError> for ChatError {
    fn from(e: PresenceError) -> Self {
        tracing::warn!(cause = %e, "presence unavailable");
        Self::Unavailable("Presence is unavailable, try again".into())
    }
}

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

/// The state of one connection, owned by its transport task.
pub struct Session {
    conn: ConnId,
    sink: Arc<dyn ClientSink>,
    identity: Option<Identity>,
    /// Epoch seconds at which the identity's token expires.
    expires_at: Option<u64>,
    /// Whether the client was already told that its token expired.
    expiry_notified: bool,
    connected_at: Instant,
    rooms: Vec<RoomId>,
    /// Per-connection event budget (tokens, last refill).
    events: (f64, Instant),
}

/// What a transport does when `ChatService::deadline` passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deadline {
    /// Tell the client (error event) and keep the connection.
    Notify(ChatError),
    /// Tell the client and close the connection.
    Close(ChatError),
}

impl Session {
    pub fn new(sink: Arc<dyn ClientSink>) -> Self {
        let now = Instant::now();
        Self {
            conn: ConnId::next(),
            sink,
            identity: None,
            expires_at: None,
            expiry_notified: false,
            connected_at: now,
            rooms: Vec::new(),
            events: (f64::MAX, now),
        }
    }

    pub fn conn(&self) -> ConnId {
        self.conn
    }

    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    fn emit(&self, event: ServerEvent) {
        let _ = self.sink.send(&Arc::new(event));
    }
}

// Commands, built by the transports' DTO conversion.
#[derive(Debug, Clone)]
pub struct JoinRoom {
    pub room_id: RoomId,
    pub since: Option<MessageId>,
}

#[derive(Debug, Clone)]
pub struct SendMessage {
    pub room_id: RoomId,
    pub body: MessageBody,
    pub message_type: MessageType,
    pub client_message_id: Option<ClientMessageId>,
}

#[derive(Debug, Clone)]
pub struct Typing {
    pub room_id: RoomId,
    pub is_typing: bool,
}

/// The ack of `send_message`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sent {
    pub message_id: MessageId,
    pub timestamp: u64,
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
}

impl ChatService {
    pub fn new(
        cfg: ChatConfig,
        store: Arc<dyn MessageStore>,
        bus: Arc<dyn Bus>,
        presence: Arc<dyn Presence>,
        auth: Arc<dyn Authenticator>,
        registry: Arc<RoomRegistry>,
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
        }
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

    fn require_identity(&self, s: &Session) -> Result<Identity, ChatError> {
        let id = s.identity.clone().ok_or(ChatError::NotAuthenticated)?;
        if let Some(exp) = s.expires_at
            && now_ms() / 1000 >= exp
        {
            return Err(ChatError::TokenExpired);
        }
        Ok(id)
    }

    fn require_member(&self, s: &Session, room: &RoomId) -> Result<Identity, ChatError> {
        let id = self.require_identity(s)?;
        if !s.rooms.contains(room) {
            return Err(ChatError::Forbidden(format!(
                "Not a member of room {room}: join it first"
            )));
        }
        Ok(id)
    }

    /// Charges one event to the connection's budget (every client event, any transport).
    pub fn admit_event(&self, s: &mut Session) -> Result<(), ChatError> {
        if self.cfg.event_rate_per_sec == 0 {
            return Ok(());
        }
        let burst = f64::from(self.cfg.event_rate_burst.max(1));
        let now = Instant::now();
        let (tokens, last) = &mut s.events;
        *tokens = (*tokens
            + now.duration_since(*last).as_secs_f64() * f64::from(self.cfg.event_rate_per_sec))
        .min(burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(ChatError::RateLimited)
        }
    }

    /// When the transport must next call `deadline_passed` for this connection: the
    /// authentication timeout of an unauthenticated connection, or the expiry of its token.
    pub fn deadline(&self, s: &Session) -> Option<Instant> {
        match (&s.identity, s.expires_at) {
            (None, _) => Some(s.connected_at + self.cfg.auth_timeout),
            (Some(_), Some(exp)) if !s.expiry_notified => {
                let left = exp.saturating_sub(now_ms() / 1000);
                Some(Instant::now() + Duration::from_secs(left))
            }
            _ => None,
        }
    }

    /// Called by the transport when `deadline` has passed.
    pub fn deadline_passed(&self, s: &mut Session) -> Option<Deadline> {
        match (&s.identity, s.expires_at) {
            (None, _) if s.connected_at.elapsed() >= self.cfg.auth_timeout => {
                tracing::debug!(conn = %s.conn, "closing unauthenticated connection");
                Some(Deadline::Close(ChatError::AuthFailed(
                    "Authentication timeout: authenticate first".into(),
                )))
            }
            (Some(_), Some(exp)) if !s.expiry_notified && now_ms() / 1000 >= exp => {
                s.expiry_notified = true;
                Some(Deadline::Notify(ChatError::TokenExpired))
            }
            _ => None,
        }
    }

    /// Turns credentials into an identity, for REST callers.
    pub async fn identify(&self, credentials: Credentials) -> Result<Identity, ChatError> {
        Ok(self
            .auth
            .authenticate(credentials)
            .await
            .map_err(auth_error)?
            .identity)
    }

    /// `authenticate`: sets the identity of the connection and emits `authenticated`.
    pub async fn authenticate(
        &self,
        s: &mut Session,
        credentials: Credentials,
    ) -> Result<Identity, ChatError> {
        let authenticated = self
            .auth
            .authenticate(credentials)
            .await
            .map_err(auth_error)?;
        let identity = authenticated.identity;
        match &s.identity {
            Some(current) if current.user_id != identity.user_id => {
                return Err(ChatError::Forbidden(
                    "This connection is authenticated as another user".into(),
                ));
            }
            Some(_) => {}
            None => {
                let admitted = self
                    .presence
                    .connect(&identity.user_id, s.conn, self.cfg.max_connections_per_user)
                    .await?;
                if !admitted {
                    tracing::info!(user = %identity.user_id, "connection refused: too many connections");
                    return Err(ChatError::TooManyConnections);
                }
                tracing::debug!(user = %identity.user_id, conn = %s.conn, "authenticated");
            }
        }
        s.identity = Some(identity.clone());
        s.expires_at = authenticated.expires_at;
        s.expiry_notified = false;
        s.emit(ServerEvent::new(wire::AUTHENTICATED, &identity));
        Ok(identity)
    }

    /// `join_room`: emits `message_history` and `room_users` to the joiner and `user_joined`
    /// to the others (once per user).
    pub async fn join(&self, s: &mut Session, cmd: JoinRoom) -> Result<RoomId, ChatError> {
        let me = self.require_identity(s)?;
        let room_id = cmd.room_id;
        if !s.rooms.contains(&room_id) {
            if s.rooms.len() >= self.cfg.max_rooms_per_connection {
                return Err(ChatError::Forbidden(format!(
                    "A connection may be in at most {} rooms",
                    self.cfg.max_rooms_per_connection
                )));
            }
            match self.store.get_room(&room_id).await? {
                Some(room) if !room.admits(&me.user_id) => {
                    return Err(ChatError::Forbidden(format!(
                        "Room {room_id} is private to its participants"
                    )));
                }
                Some(room) if room.private => {}
                _ => self.store.add_member(&room_id, &me.user_id).await?,
            }
            // Registered before history is read, so no message falls between the two; a
            // message sent meanwhile may arrive both live and in the history (same messageId).
            if self
                .registry
                .add(&room_id, s.conn, &me.user_id, s.sink.clone())
                && let Err(e) = self.bus.subscribe(&room_id).await
            {
                tracing::warn!(room = %room_id, cause = %e, "bus subscribe failed");
            }
            s.rooms.push(room_id.clone());
            let member = Member {
                user_id: me.user_id.clone(),
                username: me.username.clone(),
            };
            if self.presence.join(&room_id, &member, s.conn).await? {
                self.publish(RoomEvent::Joined {
                    room_id: room_id.clone(),
                    member,
                })
                .await;
            }
        }
        let history = match &cmd.since {
            Some(since) => match self
                .store
                .after(&room_id, since, self.cfg.max_resume)
                .await?
            {
                Some(messages) => messages,
                None => {
                    self.store
                        .history(&room_id, self.cfg.history_on_join, None)
                        .await?
                }
            },
            None => {
                self.store
                    .history(&room_id, self.cfg.history_on_join, None)
                    .await?
            }
        };
        s.emit(ServerEvent::new(wire::MESSAGE_HISTORY, &history));
        let users = self.presence.members(&room_id).await?;
        s.emit(ServerEvent::new(wire::ROOM_USERS, &users));
        tracing::debug!(room = %room_id, user = %me.user_id, "joined");
        Ok(room_id)
    }

    /// `leave_room`: others get `user_left` when the user's last connection leaves.
    pub async fn leave(&self, s: &mut Session, room_id: RoomId) -> Result<RoomId, ChatError> {
        let me = self.require_identity(s)?;
        if let Some(i) = s.rooms.iter().position(|r| *r == room_id) {
            s.rooms.swap_remove(i);
            self.leave_inner(s.conn, &me, &room_id).await?;
        }
        Ok(room_id)
    }

    async fn leave_inner(
        &self,
        conn: ConnId,
        me: &Identity,
        room_id: &RoomId,
    ) -> Result<(), ChatError> {
        if self.registry.remove(room_id, conn)
            && let Err(e) = self.bus.unsubscribe(room_id).await
        {
            tracing::warn!(room = %room_id, cause = %e, "bus unsubscribe failed");
        }
        if self.presence.leave(room_id, &me.user_id, conn).await? {
            self.typing
                .lock()
                .remove(&(room_id.clone(), me.user_id.clone()));
            self.publish(RoomEvent::Left {
                room_id: room_id.clone(),
                member: Member {
                    user_id: me.user_id.clone(),
                    username: me.username.clone(),
                },
            })
            .await;
        }
        Ok(())
    }

    /// `send_message`: stored durably, then delivered to every member including the sender.
    pub async fn send(&self, s: &mut Session, cmd: SendMessage) -> Result<Sent, ChatError> {
        let me = self.require_member(s, &cmd.room_id)?;
        if !self.rate.allow(&me.user_id) {
            return Err(ChatError::RateLimited);
        }
        let now = now_ms();
        let message = Message {
            message_id: MessageId::generate(now),
            room_id: cmd.room_id,
            user_id: me.user_id,
            username: me.username,
            message: cmd.body,
            message_type: cmd.message_type,
            timestamp: now,
            client_message_id: cmd.client_message_id,
        };
        let appended = self.store.append(message).await?;
        let sent = Sent {
            message_id: appended.message.message_id.clone(),
            timestamp: appended.message.timestamp,
        };
        if !appended.duplicate {
            self.publish(RoomEvent::Message(appended.message)).await;
        }
        Ok(sent)
    }

    /// `typing`: others get `user_typing`; a `true` not renewed expires as `false`.
    pub async fn typing(&self, s: &mut Session, cmd: Typing) -> Result<(), ChatError> {
        let me = self.require_member(s, &cmd.room_id)?;
        let member = Member {
            user_id: me.user_id,
            username: me.username,
        };
        {
            let key = (cmd.room_id.clone(), member.user_id.clone());
            let mut typing = self.typing.lock();
            if cmd.is_typing {
                typing.insert(
                    key,
                    (member.clone(), Instant::now() + self.cfg.typing_timeout),
                );
            } else {
                typing.remove(&key);
            }
        }
        self.publish(RoomEvent::Typing {
            room_id: cmd.room_id,
            member,
            is_typing: cmd.is_typing,
        })
        .await;
        Ok(())
    }

    /// A closed connection leaves every room it was in.
    pub async fn disconnect(&self, s: &mut Session) {
        let Some(me) = s.identity.take() else {
            return;
        };
        // The connection slot is released first, so once others see `user_left` the user can
        // connect again.
        match self.presence.disconnect(&me.user_id, s.conn).await {
            Ok(0) => self.rate.forget(&me.user_id),
            Ok(_) => {}
            Err(e) => tracing::warn!(user = %me.user_id, cause = %e, "presence disconnect failed"),
        }
        for room_id in std::mem::take(&mut s.rooms) {
            if let Err(e) = self.leave_inner(s.conn, &me, &room_id).await {
                tracing::warn!(room = %room_id, error = %e, "leave on disconnect failed");
            }
        }
        tracing::debug!(user = %me.user_id, conn = %s.conn, "disconnected");
    }

    /// Ends typing states that were not renewed in time; run by the composition root until
    /// shutdown.
    pub async fn expire_typing(&self) {
        let now = Instant::now();
        let expired: Vec<(RoomId, Member)> = {
            let mut typing = self.typing.lock();
            let keys: Vec<_> = typing
                .iter()
                .filter(|(_, (_, deadline))| *deadline <= now)
                .map(|(k, _)| k.clone())
                .collect();
            keys.into_iter()
                .filter_map(|k| typing.remove(&k).map(|(m, _)| (k.0, m)))
                .collect()
        };
        for (room_id, member) in expired {
            self.publish(RoomEvent::Typing {
                room_id,
                member,
                is_typing: false,
            })
            .await;
        }
    }

    async fn publish(&self, event: RoomEvent) {
        let event = Arc::new(event);
        if let Err(e) = self.bus.publish(event.clone()).await {
            // Members on this instance still get it; other instances miss it until the bus
            // is back (the durable store keeps messages for `since` resume).
            tracing::warn!(cause = %e, "bus publish failed, delivering locally only");
            crate::bus::BusHandler::on_event(&*self.registry, event);
        }
    }

    // REST use cases.

    async fn readable_room(
        &self,
        caller: Option<&Identity>,
        room_id: &RoomId,
    ) -> Result<Option<Room>, ChatError> {
        let room = self.store.get_room(room_id).await?;
        if let Some(room) = &room
            && room.private
            && !caller.is_some_and(|c| room.participants.contains(&c.user_id))
        {
            return Err(ChatError::Forbidden(format!(
                "Room {room_id} is private to its participants"
            )));
        }
        Ok(room)
    }

    /// The `limit` most recent messages before `before`, oldest first.
    pub async fn history(
        &self,
        caller: Option<&Identity>,
        room_id: &RoomId,
        limit: usize,
        before: Option<&MessageId>,
    ) -> Result<Vec<Message>, ChatError> {
        self.readable_room(caller, room_id).await?;
        Ok(self.store.history(room_id, limit, before).await?)
    }

    pub async fn room(
        &self,
        caller: Option<&Identity>,
        room_id: &RoomId,
    ) -> Result<Room, ChatError> {
        self.readable_room(caller, room_id)
            .await?
            .ok_or_else(|| ChatError::NotFound(format!("Room {room_id} not found")))
    }

    /// Creates a private room; returns the room and whether it was created (false: the
    /// existing direct room of the pair).
    pub async fn create_room(
        &self,
        caller: &Identity,
        room_type: RoomType,
        participants: Vec<UserId>,
        room_id: Option<RoomId>,
    ) -> Result<(Room, bool), ChatError> {
        if !participants.contains(&caller.user_id) {
            return Err(ChatError::Forbidden(
                "The caller must be among the participants".into(),
            ));
        }
        let room_id = match room_id {
            Some(id) => id,
            None => RoomId::parse(&format!(
                "{}-{}",
                room_type.as_str(),
                MessageId::generate(now_ms())
            ))?,
        };
        let new_room = NewRoom::new(room_id, room_type, participants)?;
        Ok(self.store.create_room(new_room).await?)
    }

    pub async fn rooms_of(&self, caller: &Identity) -> Result<Vec<Room>, ChatError> {
        Ok(self.store.rooms_of(&caller.user_id).await?)
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

fn auth_error(e: AuthError) -> ChatError {
    match e {
        AuthError::Failed(m) => ChatError::AuthFailed(format!("Authentication failed: {m}")),
        AuthError::Expired => ChatError::TokenExpired,
        AuthError::Unavailable(m) => {
            tracing::warn!(cause = %m, "authentication service unavailable");
            ChatError::Unavailable("Authentication service unavailable".into())
        }
        AuthError::Invalid(m) => ChatError::InvalidPayload(m),
    }
}

impl Session {
    /// The connection's sink, for the transport's own replies (errors, acks).
    pub fn sink(&self) -> &Arc<dyn ClientSink> {
        &self.sink
    }
}
