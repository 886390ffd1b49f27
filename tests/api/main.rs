//! Black-box tests: the real app on port 0 (`spawn_app()`), driven over Socket.IO and REST.

mod support;

mod admin;
mod auth;
mod bad_input;
mod broker;
mod burst;
mod conformance;
mod erase;
mod grpc_auth;
mod lifecycle;
mod limits;
mod logs;
mod malloc;
mod metrics;
mod migrate;
mod mongo;
mod multi_instance;
mod notifications;
mod openapi;
mod persistence;
mod postgres;
mod prometheus;
mod protocol_test;
mod raw_ws;
mod redis_outage;
mod rest;
mod socket_events;
mod socketio_polling;
mod socketio_wire;
mod stores;
mod validation;
