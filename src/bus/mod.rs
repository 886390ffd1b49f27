//! Fan-out of room events to every instance that has members of the room.
//!
//! # Contract
//! - `publish` hands an event to every subscribed instance, this one included, through the
//!   `BusHandler` given at construction; events published by one caller arrive in publish order.
//! - An instance receives a room's events only between `subscribe` and `unsubscribe` of that
//!   room (the room registry subscribes when the first local member joins). `subscribe`
//!   returns once the subscription is live; `subscribed` waits for a subscription another
//!   caller asked for (a member joining while the first member's `subscribe` is in flight),
//!   so no joiner reads history before it receives the room's events. Both return at once
//!   while the backing service is down (the subscription is applied when it is back).
//! - Outage: `publish` fails with `BusError`; the caller still delivers to local members.
//!   A bus that delivers to this instance itself before going remote (`RedisBus`) never
//!   reports a remote failure as `BusError` (the caller would deliver twice): it logs it and
//!   recovers by itself.
//! - `health` names the backing service for `/ready` (`None` for the in-process bus).

pub mod local;
pub mod redis;

use std::sync::Arc;

use async_trait::async_trait;

use crate::domain::{RoomEvent, RoomId};

#[derive(Debug, thiserror::Error)]
#[error("bus unavailable: {0}")]
pub struct BusError(pub String);

/// Receives the events of subscribed rooms (the room registry).
pub trait BusHandler: Send + Sync + 'static {
    fn on_event(&self, event: Arc<RoomEvent>);
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    async fn publish(&self, event: Arc<RoomEvent>) -> Result<(), BusError>;
    async fn subscribe(&self, room: &RoomId) -> Result<(), BusError>;
    async fn unsubscribe(&self, room: &RoomId) -> Result<(), BusError>;
    /// Returns once every event published so far has left for the other instances (or
    /// failed to); at shutdown, before the bus stops.
    async fn flush(&self) {}
    /// Returns once an earlier `subscribe` of `room` is live (see the contract).
    async fn subscribed(&self, _room: &RoomId) -> Result<(), BusError> {
        Ok(())
    }
    /// The dependency behind the bus and whether it is reachable now, for `/ready`.
    async fn health(&self) -> Option<(&'static str, Result<(), BusError>)> {
        None
    }
}
