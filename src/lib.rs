//! chat-service: a real-time chat server, drop-in replacement for the Node.js Socket.IO
//! chat-service (contract: `SPEC.md` of the project, summarized in `docs/ARCHITECTURE.md`).
//!
//! Crate map and the dependency rule ("may use"):
//! - `domain`: ids, messages, rooms, room events. Uses nothing.
//! - `store`, `bus`, `presence`, `auth`, `events`, `fleet`: one port (trait + contract) per
//!   folder, with their adapters. Adapters use `domain` and their own config only.
//! - `chat`: the use cases and the local room registry. Uses `domain` and the port traits,
//!   never a concrete adapter.
//! - `transport`: Socket.IO, REST, the client page. Uses `chat`, `domain`, the `auth` types.
//! - `app`: the composition root, the only module that names concrete adapters.
//! - `commands`: the binary's operator commands (`migrate`, `export`, `erase`): parses them,
//!   opens stores through `app`, runs `migrate`.
//! - `migrate`: the operator's data use cases (copy between stores, data-subject export and
//!   erase). Uses `domain` and the `store` port only, like `chat`.
//! - `config`: the typed configuration tree.
//! - `redis_link`: the Redis connection settings the three Redis adapters share.
//! - `metrics`: the Prometheus registry (atomics, fixed label sets). Names nothing else of the
//!   crate, so every layer may count into it; adapters keep their figures in its stats structs.
//!
//! `tests/dependency_rule.rs` checks these arrows on the source text.
//! - `telemetry`: the log output (`LOG_FORMAT`: text or JSON lines).

pub mod app;
pub mod auth;
pub mod bus;
pub mod chat;
pub mod commands;
pub mod config;
pub mod domain;
pub mod events;
pub mod fleet;
pub mod metrics;
pub mod migrate;
pub mod presence;
pub mod redis_link;
pub mod store;
pub mod telemetry;
pub mod transport;
