use proptest::prelude::*;

use super::*;

const MS: u64 = 1;

fn policy() -> SupervisionPolicy {
    SupervisionPolicy {
        start_timeout: Duration::from_secs(10),
        stop_timeout: Duration::from_secs(5),
        probe_interval: Duration::from_secs(1),
        unhealthy_probes_max: 3,
        crash_limit: 3,
        crash_window: Duration::from_secs(60),
        backoff: BackoffConfig::new(Duration::from_millis(100), Duration::from_secs(2)).unwrap(),
    }
}

fn at(ms: u64) -> UnixMillis {
    UnixMillis(1_000_000 + ms * MS)
}

fn has(effects: &[SupervisorEffect], wanted: &SupervisorEffect) -> bool {
    effects.contains(wanted)
}

fn phase_in(effects: &[SupervisorEffect]) -> Option<ComponentPhase> {
    effects.iter().rev().find_map(|effect| match effect {
        SupervisorEffect::PhaseChanged { phase, .. } => Some(*phase),
        _ => None,
    })
}

/// Starts and brings the component to running with pid 10.
fn running() -> ComponentSupervisor {
    let mut supervisor = ComponentSupervisor::new(policy());
    assert!(has(&supervisor.start(), &SupervisorEffect::Spawn));
    let effects = supervisor.on_spawned(10, at(0));
    assert!(has(&effects, &SupervisorEffect::Probe { generation: 1 }));
    let effects = supervisor.on_probe(1, Ok(()), at(5));
    assert_eq!(phase_in(&effects), Some(ComponentPhase::Running));
    supervisor
}

#[test]
fn start_then_healthy_is_running() {
    let supervisor = running();
    assert_eq!(supervisor.phase(), ComponentPhase::Running);
    assert_eq!(supervisor.pid(), Some(10));
    assert!(supervisor.desired_running());
}

#[test]
fn start_while_running_does_nothing() {
    let mut supervisor = running();
    assert!(supervisor.start().is_empty());
    assert_eq!(supervisor.pid(), Some(10));
}

#[test]
fn failed_probe_while_starting_waits() {
    let mut supervisor = ComponentSupervisor::new(policy());
    supervisor.start();
    supervisor.on_spawned(10, at(0));
    assert!(supervisor
        .on_probe(1, Err("refused".into()), at(1))
        .is_empty());
    assert_eq!(supervisor.phase(), ComponentPhase::Starting);
    // The next probe is due one interval later, not before.
    assert!(supervisor.on_tick(at(500)).is_empty());
    assert_eq!(
        supervisor.on_tick(at(1_001)),
        vec![SupervisorEffect::Probe { generation: 1 }]
    );
}

#[test]
fn no_health_within_start_timeout_counts_a_crash() {
    let mut supervisor = ComponentSupervisor::new(policy());
    supervisor.start();
    supervisor.on_spawned(10, at(0));
    let effects = supervisor.on_tick(at(10_000));
    assert!(has(&effects, &SupervisorEffect::Terminate { pid: 10 }));
    assert!(supervisor
        .detail()
        .contains("did not pass its health check"));
    let effects = supervisor.on_exited(10, ExitStatus::Signal(15), at(10_100), 0.0);
    assert_eq!(phase_in(&effects), Some(ComponentPhase::BackingOff));
    assert_eq!(supervisor.recent_crashes(), 1);
    assert!(supervisor
        .detail()
        .contains("did not pass its health check"));
}

#[test]
fn stop_terminates_then_kills_after_timeout() {
    let mut supervisor = running();
    let effects = supervisor.stop(at(100));
    assert!(has(&effects, &SupervisorEffect::Terminate { pid: 10 }));
    assert_eq!(supervisor.phase(), ComponentPhase::Stopping);
    assert!(supervisor.on_tick(at(5_099)).is_empty());
    assert_eq!(
        supervisor.on_tick(at(5_100)),
        vec![SupervisorEffect::Kill { pid: 10 }]
    );
    // SIGKILL goes out once.
    assert!(supervisor.on_tick(at(6_000)).is_empty());
    let effects = supervisor.on_exited(10, ExitStatus::Signal(9), at(6_001), 0.5);
    assert_eq!(phase_in(&effects), Some(ComponentPhase::Stopped));
    assert_eq!(supervisor.pid(), None);
    assert_eq!(supervisor.recent_crashes(), 0);
}

#[test]
fn graceful_exit_within_timeout_is_not_killed() {
    let mut supervisor = running();
    supervisor.stop(at(100));
    supervisor.on_exited(10, ExitStatus::Code(0), at(200), 0.5);
    assert!(supervisor.on_tick(at(60_000)).is_empty());
    assert_eq!(supervisor.phase(), ComponentPhase::Stopped);
}

#[test]
fn restart_stops_then_spawns_once() {
    let mut supervisor = running();
    let effects = supervisor.restart(at(100));
    assert!(has(&effects, &SupervisorEffect::Terminate { pid: 10 }));
    assert!(!has(&effects, &SupervisorEffect::Spawn));
    let effects = supervisor.on_exited(10, ExitStatus::Code(0), at(200), 0.5);
    assert!(has(&effects, &SupervisorEffect::Spawn));
    supervisor.on_spawned(11, at(210));
    assert_eq!(supervisor.pid(), Some(11));
    assert_eq!(supervisor.recent_crashes(), 0);
}

#[test]
fn crash_backs_off_then_respawns() {
    let mut supervisor = running();
    let effects = supervisor.on_exited(10, ExitStatus::Code(1), at(1_000), 0.0);
    assert_eq!(phase_in(&effects), Some(ComponentPhase::BackingOff));
    assert!(supervisor.detail().contains("exit code 1"));
    // unit 0.0 draws the lower half of the first delay: 50 ms.
    assert!(supervisor.on_tick(at(1_049)).is_empty());
    assert!(has(
        &supervisor.on_tick(at(1_050)),
        &SupervisorEffect::Spawn
    ));
}

#[test]
fn crash_loop_reaches_failed_and_stays_down() {
    let mut supervisor = running();
    let mut now = 1_000;
    for pid in 10..12 {
        supervisor.on_exited(pid, ExitStatus::Code(1), at(now), 0.99);
        now += 3_000;
        assert!(has(&supervisor.on_tick(at(now)), &SupervisorEffect::Spawn));
        supervisor.on_spawned(pid + 1, at(now));
    }
    let effects = supervisor.on_exited(12, ExitStatus::Code(1), at(now), 0.99);
    assert_eq!(phase_in(&effects), Some(ComponentPhase::Failed));
    assert!(
        supervisor.detail().contains("3 crashes"),
        "{}",
        supervisor.detail()
    );
    assert!(!supervisor.desired_running());
    for later in 0..100 {
        assert!(supervisor.on_tick(at(now + later * 1_000)).is_empty());
    }

    // An operator's start clears the count.
    assert!(has(&supervisor.start(), &SupervisorEffect::Spawn));
    assert_eq!(supervisor.recent_crashes(), 0);
}

#[test]
fn crashes_outside_window_are_forgotten() {
    let mut supervisor = running();
    let mut now = 0;
    for pid in 10..20 {
        supervisor.on_exited(pid, ExitStatus::Code(1), at(now), 0.5);
        assert_ne!(supervisor.phase(), ComponentPhase::Failed, "crash of {pid}");
        now += 40_000;
        assert!(has(&supervisor.on_tick(at(now)), &SupervisorEffect::Spawn));
        supervisor.on_spawned(pid + 1, at(now));
    }
}

#[test]
fn unhealthy_running_process_is_restarted_after_limit() {
    let mut supervisor = running();
    let effects = supervisor.on_probe(1, Err("timeout".into()), at(1_000));
    assert_eq!(phase_in(&effects), Some(ComponentPhase::Unhealthy));
    supervisor.on_probe(1, Err("timeout".into()), at(2_000));
    let effects = supervisor.on_probe(1, Err("timeout".into()), at(3_000));
    assert!(has(&effects, &SupervisorEffect::Terminate { pid: 10 }));
    supervisor.on_exited(10, ExitStatus::Signal(15), at(3_100), 0.5);
    assert_eq!(supervisor.phase(), ComponentPhase::BackingOff);
    assert_eq!(supervisor.recent_crashes(), 1);
}

#[test]
fn unhealthy_recovers_on_good_probe() {
    let mut supervisor = running();
    supervisor.on_probe(1, Err("timeout".into()), at(1_000));
    let effects = supervisor.on_probe(1, Ok(()), at(2_000));
    assert_eq!(phase_in(&effects), Some(ComponentPhase::Running));
}

#[test]
fn stale_probe_and_exit_are_ignored() {
    let mut supervisor = running();
    supervisor.restart(at(100));
    supervisor.on_exited(10, ExitStatus::Code(0), at(200), 0.5);
    supervisor.on_spawned(11, at(210));
    assert!(supervisor.on_probe(1, Ok(()), at(300)).is_empty());
    assert_eq!(supervisor.phase(), ComponentPhase::Starting);
    assert!(supervisor
        .on_exited(10, ExitStatus::Code(0), at(300), 0.5)
        .is_empty());
    assert_eq!(supervisor.pid(), Some(11));
}

#[test]
fn stop_during_spawn_terminates_new_process() {
    let mut supervisor = ComponentSupervisor::new(policy());
    supervisor.start();
    assert_eq!(
        supervisor
            .stop(at(0))
            .iter()
            .find(|e| matches!(e, SupervisorEffect::Terminate { .. })),
        None
    );
    let effects = supervisor.on_spawned(10, at(1));
    assert!(has(&effects, &SupervisorEffect::Terminate { pid: 10 }));
    supervisor.on_exited(10, ExitStatus::Code(0), at(2), 0.5);
    assert_eq!(supervisor.phase(), ComponentPhase::Stopped);
}

#[test]
fn spawn_failure_counts_as_crash() {
    let mut supervisor = ComponentSupervisor::new(policy());
    supervisor.start();
    let effects = supervisor.on_spawn_failed("No such file", at(0), 0.5);
    assert_eq!(phase_in(&effects), Some(ComponentPhase::BackingOff));
    assert!(supervisor.detail().contains("No such file"));
}

#[test]
fn stop_while_backing_off_is_stopped() {
    let mut supervisor = running();
    supervisor.on_exited(10, ExitStatus::Code(1), at(0), 0.5);
    supervisor.stop(at(1));
    assert_eq!(supervisor.phase(), ComponentPhase::Stopped);
    assert!(supervisor.on_tick(at(100_000)).is_empty());
}

#[derive(Debug, Clone)]
enum Input {
    Start,
    Stop,
    Restart,
    Exit(u8),
    Probe(bool),
    Tick(u16),
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        Just(Input::Start),
        Just(Input::Stop),
        Just(Input::Restart),
        (0u8..3).prop_map(Input::Exit),
        any::<bool>().prop_map(Input::Probe),
        any::<u16>().prop_map(Input::Tick),
    ]
}

/// A model of the operating system: which processes live, which got SIGTERM and when.
#[derive(Default)]
struct World {
    live: Vec<u32>,
    next_pid: u32,
    terminated_at: std::collections::BTreeMap<u32, u64>,
    killed: std::collections::BTreeSet<u32>,
    pending_probe: Option<u64>,
}

proptest! {
    #[test]
    fn invariants_hold_for_any_inputs(inputs in proptest::collection::vec(input(), 1..200)) {
        let mut supervisor = ComponentSupervisor::new(policy());
        let mut world = World { next_pid: 100, ..World::default() };
        let mut now = 0u64;
        for input in inputs {
            let mut effects = match input {
                Input::Start => supervisor.start(),
                Input::Stop => supervisor.stop(at(now)),
                Input::Restart => supervisor.restart(at(now)),
                Input::Exit(which) => match world.live.get(usize::from(which)).copied() {
                    Some(pid) => {
                        world.live.retain(|p| *p != pid);
                        supervisor.on_exited(pid, ExitStatus::Code(1), at(now), 0.5)
                    }
                    None => Vec::new(),
                },
                Input::Probe(healthy) => match world.pending_probe.take() {
                    Some(generation) => {
                        let result = if healthy { Ok(()) } else { Err("down".to_owned()) };
                        supervisor.on_probe(generation, result, at(now))
                    }
                    None => Vec::new(),
                },
                Input::Tick(ms) => {
                    now += u64::from(ms);
                    supervisor.on_tick(at(now))
                }
            };
            // Carry out effects; spawns feed back immediately.
            while !effects.is_empty() {
                let mut next = Vec::new();
                for effect in effects {
                    match effect {
                        SupervisorEffect::Spawn => {
                            prop_assert!(world.live.is_empty(), "spawn while {:?} live", world.live);
                            world.next_pid += 1;
                            world.live.push(world.next_pid);
                            next.extend(supervisor.on_spawned(world.next_pid, at(now)));
                        }
                        SupervisorEffect::Terminate { pid } => {
                            prop_assert!(world.live.contains(&pid));
                            world.terminated_at.entry(pid).or_insert(now);
                        }
                        SupervisorEffect::Kill { pid } => {
                            let termed = world.terminated_at.get(&pid).copied();
                            prop_assert!(termed.is_some(), "SIGKILL before SIGTERM");
                            prop_assert!(now >= termed.unwrap_or(0) + 5_000, "SIGKILL before the stop timeout");
                            prop_assert!(world.killed.insert(pid), "SIGKILL twice");
                        }
                        SupervisorEffect::Probe { generation } => {
                            world.pending_probe = Some(generation);
                        }
                        SupervisorEffect::PhaseChanged { .. } => {}
                    }
                }
                effects = next;
            }
            prop_assert!(world.live.len() <= 1, "more than one live process: {:?}", world.live);
            prop_assert_eq!(supervisor.pid(), world.live.first().copied());
        }

        // Every process that got SIGTERM gets SIGKILL once the timeout passed, unless it exited.
        now += 5_000;
        let effects = supervisor.on_tick(at(now));
        if let Some(pid) = world.live.first() {
            if world.terminated_at.contains_key(pid) && !world.killed.contains(pid) {
                let kill = SupervisorEffect::Kill { pid: *pid };
                prop_assert!(effects.contains(&kill), "no SIGKILL after the stop timeout");
            }
        }
    }
}

#[test]
fn restored_failure_holds_until_start() {
    let mut supervisor = ComponentSupervisor::new(policy());
    supervisor.restore_failed("3 crashes within 60s".into());
    assert_eq!(supervisor.phase(), ComponentPhase::Failed);
    assert_eq!(supervisor.detail(), "3 crashes within 60s");
    assert!(supervisor.on_tick(at(100_000)).is_empty());
    assert!(has(&supervisor.start(), &SupervisorEffect::Spawn));
}

#[test]
fn restore_failed_ignored_when_not_stopped() {
    let mut supervisor = running();
    supervisor.restore_failed("old failure".into());
    assert_eq!(supervisor.phase(), ComponentPhase::Running);
    assert_ne!(supervisor.detail(), "old failure");
}
