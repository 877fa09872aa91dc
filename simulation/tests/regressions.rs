//! Bugs the simulator found, each replayed from the seed that found it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use warden_simulation::{Mode, RunConfig, World};

fn replay(seed: u64, nodes: usize, duration_secs: u64) {
    for mode in [Mode::Safety, Mode::Liveness] {
        let config = RunConfig {
            seed,
            nodes,
            duration: Duration::from_secs(duration_secs),
            mode,
            faults: true,
        };
        let outcome = World::new(config).run();
        assert_eq!(
            outcome.violation,
            None,
            "replay: {}",
            config.replay_command()
        );
    }
}

/// A task whose report of delivery failed was resumed after the node's clock jumped back, and
/// the resumed task skipped the time checks, so it ran outside its validity window. Resumed
/// tasks now pass the time checks or are settled from what is on disk.
#[test]
fn resumed_task_ran_outside_window_seed_234() {
    replay(234, 5, 300);
}

/// A node whose clock ran ahead forgot a task's record once the task expired by that clock.
/// After the clock was set back, a replayed copy was inside its window again and ran a second
/// time. Expiry is now judged against the latest time the node has seen, which pruning
/// records first.
#[test]
fn pruned_task_replayed_after_clock_set_back_seed_516() {
    replay(516, 25, 1200);
}
