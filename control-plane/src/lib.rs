//! The Warden control plane and its operator CLI.
//!
//! The control plane records deployments, nodes and tasks in JetStream key-value buckets,
//! signs tasks with its task key and leaves them on each node's task subject, records the
//! reports nodes send back, and tracks node health from heartbeats. It never connects to a
//! node: nodes pull.
//!
//! - [`core`]: the pure state machines (task life, node health, task issuing).
//! - [`service`]: the operations, shared by the API and the actors.
//! - [`api`]: the operator HTTP API with RFC 7807 errors.
//! - [`actors`]: report and heartbeat ingestion, the sweeper, under a supervisor.
//! - [`releases`]: the object store of released artifacts and the cache that serves chunks.
//! - [`ctl`]: the `wardenctl` client.
//! - [`nats_security`]: nkeys, NATS JWTs, per-node permissions, nats-server configuration and
//!   TLS certificates for broker-enforced node identity. The binaries do not use it yet.
//!
//! Trust: operators are trusted once they present the admin API key. Reports and heartbeats
//! are untrusted input: they are size-capped, decoded defensively, and must name the node
//! whose subject carried them.

#![forbid(unsafe_code)]

pub mod actors;
pub mod api;
pub mod broker;
pub mod ca;
pub mod core;
pub mod ctl;
pub mod keys;
pub mod nats_security;
pub mod releases;
pub mod service;
pub mod store;
pub mod views;
