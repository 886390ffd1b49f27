//! `AmqpPublisher`: publishes `message.sent` events to RabbitMQ with publisher confirms (lapin).
//!
//! One connection and one confirm-mode channel, opened lazily by the relay (start-up never
//! waits for the broker) and again after any failure; every (re)connect declares the durable
//! queue. A batch puts every publish in flight at once (each polled once in order, so its
//! frames are queued in outbox order), then awaits all confirms together: the broker confirms
//! a whole window per round trip, which is what makes the relay fast. Messages are persistent
//! (`delivery_mode` 2), `content_type: application/json`, `message_id` = the chat message id,
//! published to the default exchange with the queue name as routing key.
//!
//! Any error (connection lost, nack, timeout) drops the link and fails the batch: the relay
//! retries the same entries on a new connection, so a batch is either fully confirmed or
//! retried (possibly republishing entries the broker already had: the at-least-once window).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::{Either, join_all, ready};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use parking_lot::Mutex;

use super::{EventPublisher, PublishError, event_body, event_id};
use crate::store::OutboxEntry;

/// Where and how to publish.
#[derive(Debug, Clone)]
pub struct AmqpConfig {
    /// `amqp://user:pass@host:port/vhost` (or `amqps://`).
    pub url: String,
    /// The durable queue of the events (`RABBITMQ_QUEUE_NEW_MESSAGE`).
    pub queue: String,
    /// Bound of a connect and of one batch's publishes and confirms.
    pub timeout: Duration,
}

struct Link {
    conn: Connection,
    chan: Channel,
}

impl Link {
    fn is_up(&self) -> bool {
        self.conn.status().connected() && self.chan.status().connected()
    }
}

pub struct AmqpPublisher {
    cfg: AmqpConfig,
    link: Mutex<Option<Arc<Link>>>,
    last_error: Mutex<String>,
    /// One connect at a time.
    connecting: tokio::sync::Mutex<()>,
}

fn unavailable(e: impl std::fmt::Display) -> PublishError {
    PublishError::Unavailable(e.to_string())
}

impl AmqpPublisher {
    /// Does not connect: the relay does, and retries while the broker is down.
    pub fn new(cfg: AmqpConfig) -> Self {
        Self {
            cfg,
            link: Mutex::new(None),
            last_error: Mutex::new("not connected yet".into()),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    fn current(&self) -> Option<Arc<Link>> {
        self.link.lock().clone().filter(|l| l.is_up())
    }

    async fn link(&self) -> Result<Arc<Link>, PublishError> {
        if let Some(link) = self.current() {
            return Ok(link);
        }
        let _one = self.connecting.lock().await;
        if let Some(link) = self.current() {
            return Ok(link);
        }
        self.drop_link(None);
        let opened = tokio::time::timeout(self.cfg.timeout, self.open())
            .await
            .map_err(|_| unavailable("connect timed out"))
            .and_then(|r| r.map_err(unavailable));
        match opened {
            Ok(link) => {
                let link = Arc::new(link);
                *self.link.lock() = Some(link.clone());
                tracing::info!(queue = %self.cfg.queue, "connected to RabbitMQ");
                Ok(link)
            }
            Err(e) => {
                *self.last_error.lock() = e.to_string();
                Err(e)
            }
        }
    }

    async fn open(&self) -> lapin::Result<Link> {
        let conn = Connection::connect(
            &self.cfg.url,
            ConnectionProperties::default().with_connection_name("chat-service".into()),
        )
        .await?;
        let chan = conn.create_channel().await?;
        chan.confirm_select(ConfirmSelectOptions::default()).await?;
        chan.queue_declare(
            ShortString::from(self.cfg.queue.as_str()),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
        Ok(Link { conn, chan })
    }

    /// Forgets the link (`failed`: only if it is still that one) and closes it in the
    /// background.
    fn drop_link(&self, failed: Option<&Arc<Link>>) {
        let old = {
            let mut link = self.link.lock();
            match (failed, link.as_ref()) {
                (Some(f), Some(cur)) if !Arc::ptr_eq(f, cur) => None,
                _ => link.take(),
            }
        };
        if let Some(old) = old
            && old.conn.status().connected()
        {
            tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    old.conn.close(320, "reconnecting".into()),
                )
                .await;
            });
        }
    }

    async fn publish_on(&self, link: &Link, entries: &[OutboxEntry]) -> Result<(), PublishError> {
        let chan = &link.chan;
        let queue = ShortString::from(self.cfg.queue.as_str());
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        type Confirm<'a> = Pin<Box<dyn Future<Output = lapin::Result<Confirmation>> + Send + 'a>>;
        let mut confirms: Vec<Either<Confirm<'_>, _>> = Vec::with_capacity(entries.len());
        for entry in entries {
            let body = event_body(entry);
            let props = props.clone().with_message_id(event_id(entry).into());
            let queue = queue.clone();
            let mut publish: Confirm<'_> = Box::pin(async move {
                chan.basic_publish(
                    ShortString::from(""),
                    queue,
                    BasicPublishOptions::default(),
                    &body,
                    props,
                )
                .await?
                .await
            });
            // The first poll queues the frames (and takes the delivery tag): doing it here,
            // one entry after the other, keeps the outbox order on the wire.
            match futures::poll!(publish.as_mut()) {
                Poll::Ready(done) => confirms.push(Either::Right(ready(done))),
                Poll::Pending => confirms.push(Either::Left(publish)),
            }
        }
        for result in join_all(confirms).await {
            match result.map_err(unavailable)? {
                Confirmation::Ack(_) => {}
                Confirmation::Nack(_) => {
                    return Err(PublishError::Rejected("nack from the broker".into()));
                }
                Confirmation::NotRequested => {
                    return Err(PublishError::Rejected("publisher confirms are off".into()));
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl EventPublisher for AmqpPublisher {
    async fn publish_batch(&self, entries: &[OutboxEntry]) -> Result<(), PublishError> {
        if entries.is_empty() {
            return Ok(());
        }
        let link = self.link().await?;
        let result = tokio::time::timeout(self.cfg.timeout, self.publish_on(&link, entries))
            .await
            .unwrap_or_else(|_| Err(unavailable("publisher confirms timed out")));
        if let Err(e) = &result {
            *self.last_error.lock() = e.to_string();
            self.drop_link(Some(&link));
        }
        result
    }

    async fn connect(&self) -> Result<(), PublishError> {
        self.link().await.map(|_| ())
    }

    async fn ping(&self) -> Result<(), PublishError> {
        match self.current() {
            Some(_) => Ok(()),
            None => Err(PublishError::Unavailable(self.last_error.lock().clone())),
        }
    }

    async fn close(&self) {
        let link = self.link.lock().take();
        if let Some(link) = link
            && link.conn.status().connected()
        {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                link.conn.close(200, "shutting down".into()),
            )
            .await;
        }
    }
}
