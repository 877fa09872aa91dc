//! The same seed gives the same run; the run converges.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use warden_simulation::{RunConfig, World};

fn run(seed: u64) -> warden_simulation::Outcome {
    World::new(RunConfig {
        seed,
        nodes: 3,
        steps: 400,
    })
    .run(400)
}

#[test]
fn same_seed_same_trace() {
    let first = run(7);
    let second = run(7);
    assert!(
        first.trace.events().len() > 100,
        "the run did too little: {:?}",
        first.trace.events()
    );
    assert_eq!(first.trace.events(), second.trace.events());
    assert_eq!(first.trace.hash(), second.trace.hash());
}

#[test]
fn different_seed_different_trace() {
    assert_ne!(run(7).trace.hash(), run(8).trace.hash());
}

#[test]
fn every_task_succeeds_exactly_once() {
    for seed in 0..5 {
        let outcome = run(seed);
        assert!(outcome.tasks > 0, "seed {seed} issued no task");
        assert_eq!(
            outcome.statuses.get("succeeded").copied().unwrap_or(0),
            outcome.tasks,
            "seed {seed}: {:?}",
            outcome.statuses
        );
        for (task, count) in &outcome.executions {
            assert_eq!(*count, 1, "seed {seed}: task {task} executed {count} times");
        }
        assert_eq!(outcome.executions.len(), outcome.tasks);
    }
}
