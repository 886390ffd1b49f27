//! One connection's state (`Session`) and the use cases about the connection itself rather
//! than a room: who it is (`authenticate`, and `identify` for REST callers), the checks every
//! other use case starts with (authenticated, token not expired, member of the room), the
//! deadlines the transport waits for (authentication timeout, token expiry), the
//! per-connection event budget, and `disconnect`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::conn::ClientSink;
use super::error::auth_error;
use super::wire::{self, ServerEvent};
use super::{ChatError, ChatService};
use crate::auth::Credentials;
use crate::domain::{ConnId, Identity, RoomId, now_ms};

/// The state of one connection, owned by its transport task.
pub struct Session {
    pub(super) conn: ConnId,
    /// The id the client sees: Socket.IO's `socket.id` (sent in `40{"sid":..}`), stored as
    /// `socketId` in `user:presence:{userId}`.
    socket_id: Arc<str>,
    pub(super) sink: Arc<dyn ClientSink>,
    pub(super) identity: Option<Identity>,
    /// Epoch seconds at which the identity's token expires.
    expires_at: Option<u64>,
    /// Whether the client was already told that its token expired.
    expiry_notified: bool,
    connected_at: Instant,
    pub(super) rooms: Vec<RoomId>,
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
    /// `socket_id`: the id the client sees (see the field).
    pub fn new(sink: Arc<dyn ClientSink>, socket_id: Arc<str>) -> Self {
        let now = Instant::now();
        Self {
            conn: ConnId::next(),
            socket_id,
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

    /// The id the client sees (Socket.IO's `socket.id`).
    pub fn socket_id(&self) -> &Arc<str> {
        &self.socket_id
    }

    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// The connection's sink, for the transport's own replies (errors, acks).
    pub fn sink(&self) -> &Arc<dyn ClientSink> {
        &self.sink
    }

    pub(super) fn emit(&self, event: ServerEvent) {
        let _ = self.sink.send(&Arc::new(event));
    }
}

impl ChatService {
    pub(super) fn require_identity(&self, s: &Session) -> Result<Identity, ChatError> {
        let id = s.identity.clone().ok_or(ChatError::NotAuthenticated)?;
        if let Some(exp) = s.expires_at
            && now_ms() / 1000 >= exp
        {
            return Err(ChatError::TokenExpired);
        }
        Ok(id)
    }

    pub(super) fn require_member(&self, s: &Session, room: &RoomId) -> Result<Identity, ChatError> {
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
            self.metrics.rate_limited(crate::metrics::RateLimit::Events);
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
    ///
    /// Once a token established the identity (the Socket.IO handshake's `auth.token`), an
    /// `authenticate` without a token, as the seed's client sends after connecting, is
    /// answered with that identity while the token is valid: with auth configured the claimed
    /// fields never count. A
    /// token of another user is refused: a connection never switches users.
    pub async fn authenticate(
        &self,
        s: &mut Session,
        credentials: Credentials,
    ) -> Result<Identity, ChatError> {
        if credentials.token.is_none()
            && self.auth.requires_token()
            && let Ok(identity) = self.require_identity(s)
        {
            s.emit(ServerEvent::new(wire::AUTHENTICATED, &identity));
            return Ok(identity);
        }
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
                    .connect(
                        &identity.user_id,
                        s.conn,
                        &s.socket_id,
                        self.cfg.max_connections_per_user,
                    )
                    .await?;
                if !admitted {
                    tracing::info!(user = %identity.user_id, "connection refused: too many connections");
                    return Err(ChatError::TooManyConnections);
                }
                tracing::debug!(user = %identity.user_id, conn = %s.conn, "authenticated");
                self.count_user(&identity.user_id, true);
            }
        }
        s.identity = Some(identity.clone());
        s.expires_at = authenticated.expires_at;
        s.expiry_notified = false;
        s.emit(ServerEvent::new(wire::AUTHENTICATED, &identity));
        Ok(identity)
    }

    /// A closed connection leaves every room it was in.
    pub async fn disconnect(&self, s: &mut Session) {
        let Some(me) = s.identity.take() else {
            return;
        };
        self.count_user(&me.user_id, false);
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
}
