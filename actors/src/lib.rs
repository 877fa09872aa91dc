//! actix plumbing shared by the Warden and the control plane.
//!
//! - [`backoff`]: capped, jittered exponential back-off, a pure calculation.
//! - [`supervisor`]: restarts failed child actors after a back-off and logs why.
//! - [`bridge`]: actors that carry bus subscriptions and durable consumers to actix recipients.
//! - [`entropy`] and [`clock`]: the randomness and time sources that state machines receive as
//!   inputs, so the simulator can replace them with seeded ones.
//!
//! This crate makes no decisions about messages; it only moves them and keeps actors running.

#![forbid(unsafe_code)]

pub mod backoff;
pub mod bridge;
pub mod clock;
pub mod entropy;
pub mod supervisor;

pub use backoff::{Backoff, BackoffConfig};
pub use supervisor::{ChildGuard, Supervisor};
