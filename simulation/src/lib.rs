//! Deterministic runs of the Warden and control-plane code over the in-memory bus.
//!
//! A [`World`] holds one control-plane replica ([`ControlPlane`], the same type the binary runs)
//! and any number of nodes, each a [`WardenCore`] driven through the same
//! [`warden::pipeline::handle_pulled`] the Warden binary uses. Time comes from a
//! [`ManualClock`] and every random choice from one seeded generator, so a seed replays a run
//! exactly; the [`Trace`] of a run is hashed to compare runs.
//!
//! What is simulated rather than real: the broker (the in-memory bus), the disk (records and the
//! configuration version in memory, written when the pipeline persists), and task effects
//! (ApplyConfig sets the node's configuration version; CollectDiagnostics returns fixed facts).
//! Faults are not injected yet.

#![forbid(unsafe_code)]

mod world;

pub use world::{Outcome, RunConfig, Trace, World};
