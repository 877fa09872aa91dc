//! The Warden node agent.
//!
//! A Warden pulls signed tasks from its own durable consumer, verifies each one (trusted key,
//! valid signature, this deployment and node, within its validity window, never executed),
//! executes it at most once, records the outcome in sled before it acknowledges, and reports.
//! It sends heartbeats on an interval with jitter. It keeps a TLS certificate for its node,
//! issued by the deployment's CA from a signing request whose key never leaves the node. It
//! opens no listening socket unless the bootstrap file sets `tls_listen`, and then only that
//! TLS listener. Every other connection is an outbound connection to NATS.
//!
//! - [`core`]: the pure state machines that make every decision.
//! - [`pipeline`]: runs the core's effects in order; shared with the simulator.
//! - [`actors`]: the supervised actor tree that does the I/O.
//! - [`bootstrap`], [`store`], [`executor`]: the bootstrap file, the record store, the effects.
//! - [`tls`], [`certificates`]: the node's TLS key, files and listener, and the certificate
//!   request and installation.
//! - [`artifacts`]: downloads a verified release's artifact in chunks and stages it, mode 0600.
//! - [`launcher`], [`self_upgrade`]: the launcher process and the record it shares with the
//!   agent to switch the Warden's own binary and roll it back.
//!
//! Trust: the Warden trusts only its bootstrap file and the keys listed in it. Messages from
//! the broker are untrusted until verified.

#![forbid(unsafe_code)]

pub mod access;
pub mod actors;
pub mod artifacts;
pub mod bootstrap;
pub mod certificates;
pub mod components;
pub mod core;
pub mod credentials;
pub mod enroll;
pub mod executor;
pub mod identity;
pub mod launcher;
pub mod pipeline;
pub mod self_upgrade;
pub mod store;
pub mod tls;

/// Version of this build as reported in heartbeats and task outputs: the crate version, with
/// `+<tag>` appended when `WARDEN_BUILD_TAG` was set at compile time.
pub fn version() -> String {
    match option_env!("WARDEN_BUILD_TAG") {
        Some(tag) if !tag.is_empty() => format!("{}+{tag}", env!("CARGO_PKG_VERSION")),
        _ => env!("CARGO_PKG_VERSION").to_owned(),
    }
}
