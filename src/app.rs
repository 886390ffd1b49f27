//! The composition root: the only place that names concrete backends. It builds the ports
//! from `Config`, wires them into `ChatService`, binds the listener (port 0 works), owns the
//! background tasks and runs the graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method};
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use crate::auth::{Authenticator, grpc::GrpcAuth, jwt::JwtAuth, none::NoAuth};
use crate::bus::Bus;
use crate::bus::local::LocalBus;
use crate::bus::redis::RedisBus;
use crate::chat::ChatService;
use crate::chat::operator::Operator;
use crate::chat::rooms::RoomRegistry;
use crate::config::{AuthConfig, Config, CorsConfig, StorageKind};
use crate::events::EventPublisher;
use crate::events::amqp::{AmqpConfig, AmqpPublisher};
use crate::events::relay::{OutboxRelay, RelayConfig};
use crate::fleet::Fleet;
use crate::fleet::redis::RedisFleet;
use crate::metrics::Metrics;
use crate::presence::Presence;
use crate::presence::memory::MemoryPresence;
use crate::presence::redis::RedisPresence;
use crate::store::metered::MeteredStore;
use crate::store::mongo::{MongoConfig, MongoStore};
use crate::store::postgres::{PostgresConfig, PostgresStore};
use crate::store::redis_cache::RedisCachedStore;
use crate::store::{MessageStore, OutboxConfig, embedded::EmbeddedStore};
use crate::transport::session::SessionConfig;
use crate::transport::{admin, http, page, socketio, ws};

pub struct App {
    listener: TcpListener,
    router: Router,
    workers: TaskTracker,
    stop_workers: CancellationToken,
    chat: Arc<ChatService>,
    store: Arc<dyn MessageStore>,
    bus: Arc<dyn Bus>,
    events: Option<Arc<dyn EventPublisher>>,
    /// The operator's samples (`/admin`), when someone can read them: with `ADMIN_TOKEN` or
    /// with Redis (other instances' pages).
    operator: Option<Arc<Operator>>,
    shutdown_timeout: Duration,
    /// Adapter tasks (Redis bus, presence heartbeat), aborted after the drain.
    background: Background,
}

/// Background adapter tasks; aborted when dropped, so an app that is dropped (or whose run
/// future is aborted) stops talking to Redis.
struct Background(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Background {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// How long a Socket.IO client may take to connect to a namespace (socket.io's default).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(45);
/// How long the shutdown waits for the operator's report to be withdrawn from Redis.
const WITHDRAW_TIMEOUT: Duration = Duration::from_secs(3);

impl App {
    /// The protocol-test server (`transport::socketio::protocol_test`; README, "Protocol
    /// conformance"): built from `cfg` like the service (listener, session settings, graceful
    /// shutdown), but serving only the echo endpoints `/socket.io/` and `/engine.io/` that the
    /// official socket.io-protocol and engine.io-protocol test suites talk to.
    pub async fn build_protocol_test(mut cfg: Config) -> anyhow::Result<Self> {
        // No echo session ever authenticates: the chat's authentication timeout must not
        // close it.
        cfg.chat.auth_timeout = Duration::from_secs(86_400);
        let (max_payload, max_queued) = (cfg.max_payload_bytes as usize, cfg.max_outbound_queue);
        let (ping_interval, ping_timeout) = (cfg.ping_interval, cfg.ping_timeout);
        let mut app = Self::build(cfg).await?;
        let session = Arc::new(SessionConfig {
            max_payload_bytes: max_payload,
            max_queued_frames: max_queued,
            ping_interval,
            ping_timeout,
            connect_timeout: CONNECT_TIMEOUT,
            workers: app.workers.clone(),
            shutdown: app.stop_workers.clone(),
        });
        app.router =
            socketio::protocol_test::router(app.chat.clone(), socketio::SocketIoConfig { session })
                .layer(DefaultBodyLimit::max(max_payload));
        Ok(app)
    }

    pub async fn build(cfg: Config) -> anyhow::Result<Self> {
        // Names this process in the metrics (`instance_id`) and, with Redis, in its entries and
        // bus envelopes.
        let origin = instance_id();
        let metrics = Arc::new(Metrics::new(origin.clone()));
        // With RabbitMQ, every stored message also writes its event to the store's outbox.
        let outbox = cfg.rabbitmq.as_ref().map(|_| OutboxConfig {
            max_pending: cfg.outbox_max_pending,
        });
        let store = durable_store(&cfg, outbox).await?;
        // Counted right around the durable backend: its reads and errors (`GET /metrics`).
        let metered = MeteredStore::new(store);
        metrics.register_store(metered.stats());
        let store: Arc<dyn MessageStore> = Arc::new(metered);
        // With Redis, history is read from the shared cache first (SPEC 7).
        let store: Arc<dyn MessageStore> = match &cfg.redis {
            None => store,
            Some(redis) => {
                let cached = RedisCachedStore::new(
                    store,
                    &redis.url,
                    redis.max_message_history,
                    redis.message_history_ttl,
                )
                .map_err(|e| anyhow::anyhow!("REDIS_URL/REDIS_HOST: {e}"))?;
                metrics.register_history_cache(cached.stats());
                Arc::new(cached)
            }
        };
        let auth: Arc<dyn Authenticator> = match &cfg.auth {
            AuthConfig::None => {
                tracing::warn!(
                    "AUTH_MODE=none: clients are trusted to name their own userId; set AUTH_MODE=jwt in production"
                );
                Arc::new(NoAuth)
            }
            AuthConfig::Jwt(jwt) => {
                Arc::new(JwtAuth::new(jwt).map_err(|e| anyhow::anyhow!("AUTH_MODE=jwt: {e}"))?)
            }
            AuthConfig::Grpc(grpc) => {
                Arc::new(GrpcAuth::new(grpc).map_err(|e| anyhow::anyhow!("AUTH_MODE=grpc: {e}"))?)
            }
        };
        let registry = Arc::new(RoomRegistry::new(metrics.clone()));
        let mut background = Vec::new();
        let (bus, presence): (Arc<dyn Bus>, Arc<dyn Presence>) = match &cfg.redis {
            None => {
                let bus = Arc::new(LocalBus::new());
                bus.set_handler(registry.clone());
                (bus, Arc::new(MemoryPresence::new()))
            }
            Some(redis) => {
                if cfg.storage == StorageKind::Embedded {
                    tracing::warn!(
                        "Redis with STORAGE=embedded: each instance keeps its own durable store; share MongoDB or PostgreSQL in production"
                    );
                }
                let bus = Arc::new(
                    RedisBus::new(&redis.url, origin.clone())
                        .map_err(|e| anyhow::anyhow!("REDIS_URL/REDIS_HOST: {e}"))?,
                );
                bus.set_handler(registry.clone());
                metrics.register_redis_bus(bus.stats());
                let presence = Arc::new(
                    RedisPresence::new(&redis.url, origin.clone())
                        .map_err(|e| anyhow::anyhow!("REDIS_URL/REDIS_HOST: {e}"))?,
                );
                background.push(tokio::spawn(bus.clone().run()));
                background.push(tokio::spawn(presence.clone().run_heartbeat()));
                if !bus.wait_connected(Duration::from_secs(3)).await {
                    tracing::warn!(
                        "Redis is not reachable yet: serving this instance's clients alone until it is"
                    );
                }
                tracing::info!(instance = %origin, "multi-instance mode: Redis bus and presence");
                (bus, presence)
            }
        };
        // Not connected here: start-up does not wait for the broker; the relay connects (and
        // reconnects) and `/ready` reports it down meanwhile.
        let events: Option<Arc<dyn EventPublisher>> = cfg.rabbitmq.as_ref().map(|url| {
            Arc::new(AmqpPublisher::new(AmqpConfig {
                url: url.clone(),
                queue: cfg.rabbitmq_queue.clone(),
                timeout: Duration::from_secs(10),
            })) as Arc<dyn EventPublisher>
        });
        let mut chat = ChatService::new(
            cfg.chat.clone(),
            store.clone(),
            bus.clone(),
            presence,
            auth,
            registry,
            metrics,
        );
        if let Some(events) = &events {
            chat = chat.with_events(events.clone());
        }
        let chat = Arc::new(chat);
        // The operator's page (`/admin`): every instance on a Redis publishes its report there,
        // so that the page of any instance shows them all, whether or not it serves the page.
        let fleet: Option<Arc<dyn Fleet>> = match &cfg.redis {
            None => None,
            Some(redis) => Some(Arc::new(
                RedisFleet::new(&redis.url)
                    .map_err(|e| anyhow::anyhow!("REDIS_URL/REDIS_HOST: {e}"))?,
            )),
        };
        let sampled = cfg.admin_token.is_some() || fleet.is_some();
        let operator = Arc::new(Operator::new(chat.clone(), fleet));

        let workers = TaskTracker::new();
        let stop_workers = CancellationToken::new();
        let allowed_origins = match &cfg.cors {
            CorsConfig::Any => None,
            CorsConfig::List(list) => Some(list.clone()),
        };
        let session = Arc::new(SessionConfig {
            max_payload_bytes: cfg.max_payload_bytes as usize,
            max_queued_frames: cfg.max_outbound_queue,
            ping_interval: cfg.ping_interval,
            ping_timeout: cfg.ping_timeout,
            connect_timeout: CONNECT_TIMEOUT,
            workers: workers.clone(),
            shutdown: stop_workers.clone(),
        });
        let ws_routes = ws::router(
            chat.clone(),
            ws::WsConfig {
                session: session.clone(),
                allowed_origins,
            },
            page::index,
        );
        let socket_io = socketio::router(chat.clone(), socketio::SocketIoConfig { session });
        let router = http::router(http::HttpState {
            chat: chat.clone(),
            metrics_token: cfg.metrics_token.as_deref().map(Arc::from),
        })
        .merge(page::router())
        .merge(admin::router(operator.clone(), cfg.admin_token.as_deref()))
        .merge(ws_routes)
        .merge(socket_io)
        .layer(DefaultBodyLimit::max(cfg.max_payload_bytes as usize))
        .layer(cors_layer(&cfg.cors));

        let listener = TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("PORT/HOST: cannot listen on {}", cfg.listen))?;
        Ok(Self {
            listener,
            router,
            workers,
            stop_workers,
            chat,
            store,
            bus,
            events,
            operator: sampled.then_some(operator),
            shutdown_timeout: cfg.shutdown_timeout,
            background: Background(background),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` resolves, then stops accepting, disconnects every client (which
    /// leaves their rooms), finishes in-flight requests and flushes pending writes, each step
    /// bounded by the shutdown timeout.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            listener,
            router,
            workers,
            stop_workers,
            chat,
            store,
            bus,
            events,
            operator,
            shutdown_timeout,
            background,
        } = self;
        let stop_relay = CancellationToken::new();
        let relay = events.clone().map(|publisher| {
            let relay = OutboxRelay::new(store.clone(), publisher, RelayConfig::default());
            chat.metrics().register_outbox(relay.stats());
            tokio::spawn(relay.run(stop_relay.clone()))
        });
        let typing = tokio::spawn({
            let chat = chat.clone();
            async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    chat.expire_typing().await;
                }
            }
        });
        // Aborted if this future is dropped (an app aborted in a test stops publishing).
        let stop_operator = CancellationToken::new();
        let mut operator = Background(
            operator
                .map(|op| tokio::spawn(op.run(stop_operator.clone().cancelled_owned())))
                .into_iter()
                .collect(),
        );
        let (stop_http, http_stopped) = oneshot::channel::<()>();
        let server =
            // TCP_NODELAY: chat frames are small and often written back to back (an ack, then
            // the broadcast); with Nagle's algorithm the second waits for the client's delayed
            // ACK, up to 40 ms (seen as the p99 of S1 in BENCHMARKS.md).
            axum::serve(
                listener.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                }),
                router.into_make_service(),
            )
            .with_graceful_shutdown(async move {
                let _ = http_stopped.await;
            });
        let server = tokio::spawn(async move { server.await });

        shutdown.await;
        tracing::info!("shutting down: finishing in-flight events");
        // Each connection's worker finishes the events it already received, acks them while
        // the connection is still open, and leaves its rooms; then the transports close.
        stop_workers.cancel();
        workers.close();
        if tokio::time::timeout(shutdown_timeout, workers.wait())
            .await
            .is_err()
        {
            tracing::warn!("connection workers did not finish in time");
        }
        let _ = stop_http.send(());
        match tokio::time::timeout(shutdown_timeout, server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "server error"),
            Ok(Err(e)) => tracing::error!(error = %e, "server task failed"),
            Err(_) => tracing::warn!("in-flight requests did not finish in time"),
        }
        typing.abort();
        // Off the operator's page of the other instances at once (a report expires anyway):
        // one Redis call, bounded apart from the four steps of SHUTDOWN_TIMEOUT_SECS.
        stop_operator.cancel();
        let _ = tokio::time::timeout(WITHDRAW_TIMEOUT, async {
            for task in &mut operator.0 {
                let _ = task.await;
            }
        })
        .await;
        drop(operator);
        // No new messages now: publish what the outbox holds (best effort, bounded); the rest
        // stays in the store and is sent after the next start.
        if let Some(mut relay) = relay {
            stop_relay.cancel();
            if tokio::time::timeout(shutdown_timeout, &mut relay)
                .await
                .is_err()
            {
                tracing::warn!(
                    "outbox relay did not flush in time; the rest is sent after restart"
                );
                relay.abort();
            }
        }
        if let Some(events) = &events {
            events.close().await;
        }
        // The room events already acked to their senders reach the other instances before
        // the bus task stops (members there do not resume: they never disconnected).
        if tokio::time::timeout(shutdown_timeout, bus.flush())
            .await
            .is_err()
        {
            tracing::warn!("room events not sent to other instances in time");
        }
        drop(background);
        if tokio::time::timeout(shutdown_timeout, store.close())
            .await
            .is_err()
        {
            tracing::warn!("storage did not flush in time");
        }
        tracing::info!("stopped");
        Ok(())
    }
}

fn cors_layer(cors: &CorsConfig) -> CorsLayer {
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([
            axum::http::header::AUTHORIZATION,
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderName::from_static("x-user-id"),
            axum::http::HeaderName::from_static("x-username"),
        ]);
    match cors {
        CorsConfig::Any => layer.allow_origin(Any),
        CorsConfig::List(origins) => layer.allow_origin(AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect::<Vec<_>>(),
        )),
    }
}

/// A random id naming this process in the metrics, Redis entries and bus envelopes.
fn instance_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// The durable store `cfg` names (`STORAGE`, `DATA_DIR`, `DATABASE_URL`, `MONGODB_URI`), with
/// the outbox when `outbox` is given: the app's, and the operator's commands' by default.
pub async fn durable_store(
    cfg: &Config,
    outbox: Option<OutboxConfig>,
) -> anyhow::Result<Arc<dyn MessageStore>> {
    let store: Arc<dyn MessageStore> = match cfg.storage {
        StorageKind::Embedded => Arc::new(
            EmbeddedStore::open_with_window(&cfg.data_dir, outbox, cfg.commit_window)
                .await
                .with_context(|| {
                    format!(
                        "DATA_DIR: cannot open the embedded store in {}",
                        cfg.data_dir.display()
                    )
                })?,
        ),
        StorageKind::Mongo => {
            let uri = cfg
                .mongodb_uri
                .clone()
                .context("MONGODB_URI is required with STORAGE=mongodb")?;
            Arc::new(
                MongoStore::open(MongoConfig {
                    outbox,
                    ..MongoConfig::new(uri)
                })
                .await
                .context("MONGODB_URI: cannot open the MongoDB store")?,
            )
        }
        StorageKind::Postgres => {
            let url = cfg
                .database_url
                .clone()
                .context("DATABASE_URL is required with STORAGE=postgres")?;
            Arc::new(
                PostgresStore::open(PostgresConfig {
                    outbox,
                    ..PostgresConfig::new(url)
                })
                .await
                .context("DATABASE_URL: cannot open the PostgreSQL store")?,
            )
        }
    };
    Ok(store)
}

/// The store of the operator's `export` and `erase` (`crate::commands`): the durable store
/// `cfg` names, behind the Redis history cache when `cfg` has Redis (so an erase blanks the
/// cached items too), with the outbox when RabbitMQ is configured (an erase's
/// `message.deleted` events wait there for a running instance's relay).
pub async fn command_store(cfg: &Config) -> anyhow::Result<Arc<dyn MessageStore>> {
    let outbox = cfg.rabbitmq.as_ref().map(|_| OutboxConfig {
        max_pending: cfg.outbox_max_pending,
    });
    let store = durable_store(cfg, outbox).await?;
    Ok(match &cfg.redis {
        None => store,
        Some(redis) => Arc::new(
            RedisCachedStore::new(
                store,
                &redis.url,
                redis.max_message_history,
                redis.message_history_ttl,
            )
            .map_err(|e| anyhow::anyhow!("REDIS_URL/REDIS_HOST: {e}"))?,
        ),
    })
}
