//! A sweep of fixed seeds in both modes, sized to take about two minutes of a debug build on
//! two cores. Set `WARDEN_SIM_SEEDS` to run more seeds.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use warden_simulation::{Mode, RunConfig, World};

fn sweep(seeds: std::ops::Range<u64>, nodes: usize, duration: Duration) {
    let mut failures = Vec::new();
    for seed in seeds {
        for mode in [Mode::Safety, Mode::Liveness] {
            let outcome = World::new(RunConfig {
                seed,
                nodes,
                duration,
                mode,
                faults: true,
            })
            .run();
            if let Some(violation) = outcome.violation {
                failures.push(format!(
                    "seed {seed} {}: {}: {}\n  replay: {}",
                    mode.as_str(),
                    violation.invariant,
                    violation.detail,
                    outcome.config.replay_command()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failing runs:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn small_clusters_many_seeds() {
    let seeds = std::env::var("WARDEN_SIM_SEEDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(250);
    sweep(0..seeds, 5, Duration::from_secs(300));
}

#[test]
fn larger_clusters_longer_runs() {
    sweep(1000..1010, 25, Duration::from_secs(1200));
}
