//! The in-process bus of a single instance: `publish` calls the handler directly, so delivery
//! is synchronous and in publish order.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;

use super::{Bus, BusError, BusHandler};
use crate::domain::{RoomEvent, RoomId};

#[derive(Default)]
pub struct LocalBus {
    handler: OnceLock<Arc<dyn BusHandler>>,
}

impl LocalBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Connects the receiving side; called once by the composition root.
    pub fn set_handler(&self, handler: Arc<dyn BusHandler>) {
        let _ = self.handler.set(handler);
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn publish(&self, event: Arc<RoomEvent>) -> Result<(), BusError> {
        match self.handler.get() {
            Some(h) => {
                h.on_event(event);
                Ok(())
            }
            None => Err(BusError("local bus has no handler".into())),
        }
    }

    async fn subscribe(&self, _room: &RoomId) -> Result<(), BusError> {
        Ok(())
    }

    async fn unsubscribe(&self, _room: &RoomId) -> Result<(), BusError> {
        Ok(())
    }
}
