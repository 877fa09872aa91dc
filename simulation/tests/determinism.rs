//! The same seed gives the same run.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use warden_simulation::{Mode, RunConfig, World};

fn config(seed: u64, mode: Mode) -> RunConfig {
    RunConfig {
        seed,
        nodes: 5,
        duration: Duration::from_secs(300),
        mode,
        faults: true,
    }
}

#[test]
fn same_seed_same_trace() {
    for mode in [Mode::Safety, Mode::Liveness] {
        let first = World::new(config(7, mode)).run();
        let second = World::new(config(7, mode)).run();
        assert!(
            first.trace.len() > 100,
            "the run did too little: {} events",
            first.trace.len()
        );
        assert_eq!(first.trace.hash(), second.trace.hash(), "{mode:?}");
        assert_eq!(first.stats.events, second.stats.events);
        assert_eq!(first.stats.faults, second.stats.faults);
        assert_eq!(first.statuses, second.statuses);
    }
}

#[test]
fn different_seed_different_trace() {
    let first = World::new(config(7, Mode::Safety)).run();
    let second = World::new(config(8, Mode::Safety)).run();
    assert_ne!(first.trace.hash(), second.trace.hash());
}

#[test]
fn faults_are_injected() {
    let outcome = World::new(config(3, Mode::Safety)).run();
    assert!(outcome.stats.faults.total() > 0);
    let kinds = outcome.stats.faults.by_kind.len();
    assert!(
        kinds >= 5,
        "only {kinds} kinds of fault: {:?}",
        outcome.stats.faults
    );
}

#[test]
fn without_faults_every_task_succeeds_once() {
    let outcome = World::new(RunConfig {
        faults: false,
        ..config(5, Mode::Liveness)
    })
    .run();
    assert_eq!(outcome.violation, None);
    assert_eq!(outcome.stats.faults.total(), 0);
    let tasks = usize::try_from(outcome.stats.tasks).unwrap();
    assert!(tasks > 0);
    // Besides the operator's tasks, the control plane issues rotate_certificate tasks to nodes
    // behind a CA rotation step.
    let succeeded = outcome.statuses.get("succeeded").copied().unwrap_or(0);
    assert!(succeeded >= tasks, "{:?}", outcome.statuses);
    assert_eq!(outcome.statuses.len(), 1, "{:?}", outcome.statuses);
    assert!(outcome.executions.values().all(|count| *count == 1));
}
