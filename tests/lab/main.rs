//! The fault lab (issue 19): chat-service as real processes under the faults production
//! meets, each scenario asserting that no acked message is lost and that the service heals
//! by itself. docs/RELIABILITY.md describes every scenario and the figures it produced.
//!
//! - `net`: hosts (network namespaces) and paths between them: veth pairs, and wires whose
//!   packets the test delays, drops or cuts.
//! - `procs`: chat-service, redis-server and a PostgreSQL cluster of the lab's own.
//! - `traffic`: members that record every message they get, senders that record every ack,
//!   and the stored truth read back over REST.
//! - `network`: latency, loss and partitions between instances, Redis and PostgreSQL.
//! - `crash`: kill -9 under load, 20 times in a row, on the embedded store and on PostgreSQL.
//! - `disk`: the embedded store on a filesystem that fills up.
//! - `restart`: rolling restarts of one of two instances on Redis, 20 in a row, under chat.
//!
//! The network and disk scenarios need root (namespaces, TUN devices, mounts) and print
//! `SKIPPED: ...` and pass without it; the crash scenarios need only the machine's PostgreSQL
//! and RabbitMQ, like the `api` tests, and fail loudly without them.

#[allow(dead_code)]
#[path = "../api/support/mod.rs"]
mod support;

#[allow(dead_code)]
#[path = "../api/broker.rs"]
mod broker;

mod net;
mod procs;
mod traffic;

mod crash;
mod disk;
mod network;
mod restart;
