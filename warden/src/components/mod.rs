//! The components a Warden supervises on its node: the Iggy server and the connectors runtime.
//!
//! - [`definition`]: the bootstrap file's `[components.*]` tables and the rendered launch.
//! - [`installer`]: installed releases on disk and which one is active.
//! - [`ownership`]: what a component with its own user may reach.
//! - [`process`]: spawning, output capture, signals and health probes.
//! - [`state`]: desired state and the last started process, in sled.

pub mod definition;
pub mod installer;
pub mod ownership;
pub mod process;
pub mod state;
