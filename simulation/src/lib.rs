//! Deterministic simulation of the Warden system under faults, replayable from a seed.
//!
//! A [`World`] runs control-plane replicas (the same [`warden_control_plane::service::ControlPlane`]
//! the binary runs) and nodes (the same [`warden::core::WardenCore`] and
//! [`warden::pipeline`] functions the Warden runs) in one thread, over a simulated network to one
//! in-memory broker with JetStream's semantics, with a simulated clock per node and simulated
//! disks. Every random choice comes from the run's seed, so a seed replays a run exactly and gives
//! the same trace hash.
//!
//! Faults: message loss, delay, duplication and reordering; one-way and symmetric partitions;
//! lost acknowledgements and redelivery; ambiguous store failures; node crashes at any I/O step;
//! control-plane replica crashes; clock jumps on nodes; and a hostile publisher of forged,
//! replayed, misaddressed and stale tasks.
//!
//! Invariants, checked as the run goes by an oracle outside the code under test: no task runs
//! without the task key's signature, on the wrong node or outside its validity; no task runs
//! twice unless a crash interrupted it; no configuration version is applied after a newer one.
//! A node's firewall table equals one signed access document minus its expired rules, and a
//! node runs at most one Iggy process, of an accepted release.
//! In liveness mode the faults stop after the given duration, the control plane issues one more
//! configuration to every node, and every node must reach it and every task must reach an
//! outcome within [`world::LIVENESS_BOUND`] of simulated time.

#![forbid(unsafe_code)]

pub mod access;
pub mod config;
pub mod net;
pub mod trace;
pub mod world;

pub use config::{FaultRates, Mode, RunConfig};
pub use trace::Trace;
pub use world::{Outcome, Stats, Violation, World};
