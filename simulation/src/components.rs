//! Supervision of the Iggy server on every simulated node.
//!
//! Each node runs the Warden's own [`ComponentSupervisor`] with the policy the Warden derives
//! from a bootstrap file that sets no timing, and this module carries out its effects the way
//! the component actor (`warden/src/actors/components.rs`) does, over a simulated process table.
//! Processes outlive a Warden crash, as real ones do (they run in their own process group), and
//! a restarted Warden stops the one its previous run left behind before it starts a new one.
//!
//! The actor ticks the core every 100 ms. A tick whose `on_tick` returns no effect changes
//! nothing, so the simulator schedules only the first tick on that 100 ms grid at which a
//! clone of the core returns an effect, which gives the same run for fewer events.
//!
//! Faults, drawn from the seed: a process crashes, a process hangs (its probes time out, and it
//! may ignore SIGTERM), or a spawn fails.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use warden::actors::components::TICK_INTERVAL;
use warden::components::definition::ComponentFile;
use warden::components::process::PROBE_TIMEOUT;
use warden::components::state::{DesiredState, ProcessRecord};
use warden::core::component::{
    ComponentSupervisor, ExitStatus, SupervisionPolicy, SupervisorEffect,
};
use warden::core::ExecutionOutcome;
use warden_actors::entropy::{self, Entropy};
use warden_bus::messages::{Component, ComponentPhase, Upgrade};
use warden_bus::{Clock, TaskAction, UnixMillis};
use warden_control_plane::core::issue::ActionRequest;

use super::{Event, World, CLOCK_OFFSET_MAX};
use crate::config::FaultRates;

/// Mixed into the seed for the components' own random streams, so their draws leave the
/// world's stream alone.
const COMPONENT_STREAM: u64 = 0x434f_4d50_4f4e_454e;
/// How far ahead, in ticks, the next useful tick is searched for. A core that needs none
/// within it waits for an input: it is stopped or failed, or a probe result is due.
const TICK_HORIZON: u64 = 1 << 16;
/// How often a restarted Warden checks whether the leftover process is gone, as
/// `stop_leftover` does.
const LEFTOVER_POLL: Duration = Duration::from_millis(100);

/// Invariant: one live process per component and node.
pub(super) const ONE_PROCESS: &str = "at most one live process per component on a node";
/// Invariant: processes run accepted releases.
pub(super) const ACCEPTED_RELEASE: &str =
    "a live component process runs the bootstrap release or one the oracle accepted";
/// Invariant: the crash limit.
pub(super) const FAILED_AFTER_LIMIT: &str =
    "a component is failed only after crash_limit crashes within the crash window";

/// Returns the supervision policy the Warden uses for an Iggy table with no timing set.
pub(super) fn default_policy() -> SupervisionPolicy {
    let file = ComponentFile {
        binary: "/opt/iggy/iggy-server".into(),
        data_dir: "/var/lib/iggy".into(),
        tcp_address: Some("127.0.0.1:8090".into()),
        ..ComponentFile::default()
    };
    match file.validate(Component::Iggy, Path::new("/etc/iggy/server.toml")) {
        Ok(definition) => definition.policy,
        Err(error) => unreachable!("the simulated Iggy definition is invalid: {error}"),
    }
}

/// Something that happens to a node's component at a scheduled time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum ComponentEvent {
    /// The actor's timer tick, if it is still the one scheduled.
    Tick,
    /// A probe of Warden run `run` finished.
    ProbeDone {
        run: u64,
        generation: u64,
        verdict: ProbeVerdict,
    },
    /// Process `pid` exits now.
    Exit { pid: u32, status: Status },
    /// Fault: process `pid` crashes now.
    Crash { pid: u32 },
    /// Fault: process `pid` hangs now.
    Hang { pid: u32 },
    /// A restarted Warden of run `run` checks its leftover process.
    LeftoverPoll { run: u64 },
}

/// Outcome of one health probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum ProbeVerdict {
    Healthy,
    Refused,
    TimedOut,
}

/// An exit status that fits in an ordered event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Status {
    Code(i32),
    Signal(i32),
}

impl From<Status> for ExitStatus {
    fn from(status: Status) -> Self {
        match status {
            Status::Code(code) => Self::Code(code),
            Status::Signal(signal) => Self::Signal(signal),
        }
    }
}

/// Fault rates of component processes.
#[derive(Debug, Clone, Copy)]
struct ComponentFaults {
    crash_every: Duration,
    hang_every: Duration,
    spawn_failure: f64,
}

/// One entry of the simulated process table.
#[derive(Debug, Clone)]
pub(super) struct SimProcess {
    pub(super) pid: u32,
    /// Release counter of the binary it runs; 0 for the bootstrap binary.
    pub(super) release: u64,
    /// True time it started; plays the start time that the process record keeps.
    started_at: UnixMillis,
    /// True time from which its listener accepts connections.
    ready_at: UnixMillis,
    hung: bool,
    ignores_sigterm: bool,
    /// Warden run that spawned it: only that run learns of its exit.
    parent_run: u64,
}

/// A leftover process that a restarted Warden is stopping.
#[derive(Debug, Clone, Copy)]
struct Leftover {
    pid: u32,
    kill_at: UnixMillis,
    killed: bool,
    /// The desired state read when the Warden started, restored once the leftover is gone.
    desired_running: bool,
}

/// Request of a component task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Request {
    Start,
    Stop,
    Restart,
}

/// Times of one step: true time and the node's clock.
#[derive(Debug, Clone, Copy)]
pub(super) struct Moment {
    pub(super) true_now: UnixMillis,
    pub(super) node_now: UnixMillis,
    /// Release counter the node has active for iggy; 0 for the bootstrap binary.
    pub(super) release: u64,
}

/// Something the world must record after a step.
#[derive(Debug, Clone)]
enum Observation {
    Fault(&'static str),
    /// A crash the core was fed, at true time.
    Crash(UnixMillis),
    /// The core marked the component failed, at true time.
    Failed(UnixMillis),
    /// A start task started a stopped or failed component afresh, which clears its crash
    /// history.
    Cleared,
    /// A process started after the node's first one.
    Restart,
    /// A line for the trace.
    Note(String),
    /// The oracle's `check_install` accepted this iggy release.
    Accepted(u64),
}

/// The Iggy component of one node: the Warden's supervisor (lost when the Warden crashes),
/// what the Warden keeps on disk, and the node's process table.
pub(super) struct NodeComponents {
    policy: SupervisionPolicy,
    faults: ComponentFaults,
    faults_on: bool,
    rng: Entropy,
    core: Option<ComponentSupervisor>,
    leftover: Option<Leftover>,
    /// Requests that arrived while the restarted Warden stopped a leftover process.
    pending: Vec<Request>,
    /// Number of the current Warden run.
    run: u64,
    /// True time the actor started. Its ticks fall on this plus multiples of 100 ms.
    tick_origin: UnixMillis,
    /// True time of the scheduled tick.
    next_tick: Option<UnixMillis>,
    /// The core took an input since the next tick was computed.
    dirty: bool,
    /// The node's clock offset when the next tick was computed.
    seen_offset: i64,
    /// Persisted desired state, as in `warden::components::state`.
    pub(super) desired: DesiredState,
    /// Persisted failure record, as in `warden::components::state`.
    failed: Option<String>,
    /// Persisted process record.
    record: Option<ProcessRecord>,
    /// Live processes.
    pub(super) processes: Vec<SimProcess>,
    next_pid: u32,
    /// Scheduled events, moved into the world's queue after the step.
    outbox: Vec<(UnixMillis, ComponentEvent)>,
    observations: Vec<Observation>,
    /// Whether the core's current input is an operator's request. A process terminated during
    /// any other input was terminated for its health, which counts as a crash.
    requested: bool,
    /// Processes terminated for their health, whose exit counts as a crash.
    terminated_for_health: BTreeSet<u32>,
}

impl NodeComponents {
    /// Creates the component of node `index` and starts it, as after a first start task.
    pub(super) fn new(seed: u64, index: usize, rates: &FaultRates) -> Self {
        let policy = default_policy();
        let mut components = Self {
            policy,
            faults: ComponentFaults {
                crash_every: rates.component_crash_every,
                hang_every: rates.component_hang_every,
                spawn_failure: rates.component_spawn_failure,
            },
            faults_on: true,
            rng: Entropy::seed_from_u64(seed ^ COMPONENT_STREAM ^ index as u64),
            core: Some(ComponentSupervisor::new(policy)),
            leftover: None,
            pending: Vec::new(),
            run: 0,
            tick_origin: super::START,
            next_tick: None,
            dirty: true,
            seen_offset: 0,
            desired: DesiredState::default(),
            failed: None,
            record: None,
            processes: Vec::new(),
            next_pid: 1000,
            outbox: Vec::new(),
            observations: Vec::new(),
            requested: false,
            terminated_for_health: BTreeSet::new(),
        };
        let start = super::START;
        components.request(
            Request::Start,
            Moment {
                true_now: start,
                node_now: start,
                release: 0,
            },
        );
        components
    }

    /// Returns the phase the Warden reports, or `None` while it is down or stopping a
    /// leftover process.
    pub(super) fn phase(&self) -> Option<ComponentPhase> {
        match (&self.core, &self.leftover) {
            (Some(core), None) => Some(core.phase()),
            _ => None,
        }
    }

    fn schedule(&mut self, at: UnixMillis, event: ComponentEvent) {
        self.outbox.push((at, event));
    }

    fn unit(&mut self) -> f64 {
        entropy::unit_interval(&mut self.rng)
    }

    fn millis(&mut self, range: std::ops::Range<u64>) -> Duration {
        Duration::from_millis(self.rng.gen_range(range))
    }

    fn exponential(&mut self, mean: Duration) -> Option<Duration> {
        if mean == Duration::MAX || !self.faults_on {
            return None;
        }
        let unit = self.unit();
        Some(mean.mul_f64(-(1.0 - unit).ln()).min(mean * 20))
    }

    /// Carries out a task's request, as the component actor's command handler does: the
    /// desired state is persisted first, then the core gets the request.
    pub(super) fn request(&mut self, request: Request, at: Moment) {
        self.desired.running = request != Request::Stop;
        self.failed = None;
        if self.core.is_none() || self.leftover.is_some() {
            // The actor handles no command before a leftover process is gone.
            self.pending.push(request);
            return;
        }
        self.apply(request, at);
    }

    fn apply(&mut self, request: Request, at: Moment) {
        let Some(core) = self.core.as_mut() else {
            return;
        };
        let before = core.phase();
        let effects = match request {
            Request::Start => core.start(),
            Request::Stop => core.stop(at.node_now),
            Request::Restart => core.restart(at.node_now),
        };
        if request != Request::Stop
            && matches!(before, ComponentPhase::Stopped | ComponentPhase::Failed)
        {
            // A start task starts a stopped or failed component afresh.
            self.observations.push(Observation::Cleared);
        }
        self.requested = true;
        self.run_effects(effects, at);
        self.requested = false;
    }

    /// Carries out the core's effects, like `ComponentActor::run`.
    fn run_effects(&mut self, effects: Vec<SupervisorEffect>, at: Moment) {
        self.dirty = true;
        let mut queue = VecDeque::from(effects);
        while let Some(effect) = queue.pop_front() {
            match effect {
                SupervisorEffect::Spawn => {
                    let failed = self.faults_on
                        && self.faults.spawn_failure > 0.0
                        && self.rng.gen_bool(self.faults.spawn_failure.min(1.0));
                    let unit = self.unit();
                    let next = if failed {
                        self.observations
                            .push(Observation::Fault("component spawn failure"));
                        self.observations.push(Observation::Crash(at.true_now));
                        self.core.as_mut().map(|core| {
                            core.on_spawn_failed("simulated spawn failure", at.node_now, unit)
                        })
                    } else {
                        let pid = self.spawn(at);
                        self.core
                            .as_mut()
                            .map(|core| core.on_spawned(pid, at.node_now))
                    };
                    queue.extend(next.unwrap_or_default());
                }
                SupervisorEffect::Terminate { pid } => {
                    if !self.requested {
                        self.terminated_for_health.insert(pid);
                    }
                    self.sigterm(pid, at);
                }
                SupervisorEffect::Kill { pid } => self.sigkill(pid, at),
                SupervisorEffect::Probe { generation } => self.probe(generation, at),
                SupervisorEffect::PhaseChanged { phase, detail } => {
                    self.observations
                        .push(Observation::Note(format!("iggy is {phase}")));
                    if phase == ComponentPhase::Failed {
                        // A failed component stays down across Warden restarts too.
                        self.desired.running = false;
                        self.failed = Some(detail);
                        self.observations.push(Observation::Failed(at.true_now));
                    }
                }
            }
        }
    }

    /// Starts a process of the active release and records it, as `ComponentActor::spawn`.
    fn spawn(&mut self, at: Moment) -> u32 {
        let pid = self.next_pid;
        self.next_pid += 1;
        // Process ids start at 1000, so any later one is a restart.
        if pid > 1000 {
            self.observations.push(Observation::Restart);
        }
        self.observations.push(Observation::Note(format!(
            "iggy process {pid} of release {} started",
            at.release
        )));

        let ready = self.millis(200..3_000);
        self.processes.push(SimProcess {
            pid,
            release: at.release,
            started_at: at.true_now,
            ready_at: at.true_now.saturating_add(ready),
            hung: false,
            ignores_sigterm: false,
            parent_run: self.run,
        });
        self.record = Some(ProcessRecord {
            pid,
            start_ticks: at.true_now.0,
        });

        // One quick crash loop in four, so some runs reach the crash limit.
        let quick = self.rng.gen_bool(0.25);
        let crash_mean = if quick && self.faults.crash_every != Duration::MAX {
            Duration::from_secs(3).min(self.faults.crash_every)
        } else {
            self.faults.crash_every
        };
        if let Some(delay) = self.exponential(crash_mean) {
            self.schedule(
                at.true_now.saturating_add(delay),
                ComponentEvent::Crash { pid },
            );
        }
        if let Some(delay) = self.exponential(self.faults.hang_every) {
            self.schedule(
                at.true_now.saturating_add(delay),
                ComponentEvent::Hang { pid },
            );
        }
        pid
    }

    fn process(&self, pid: u32) -> Option<&SimProcess> {
        self.processes.iter().find(|process| process.pid == pid)
    }

    fn sigterm(&mut self, pid: u32, at: Moment) {
        let Some(process) = self.process(pid) else {
            return;
        };
        if process.ignores_sigterm {
            return;
        }
        let delay = self.millis(50..3_000);
        self.schedule(
            at.true_now.saturating_add(delay),
            ComponentEvent::Exit {
                pid,
                status: Status::Signal(15),
            },
        );
    }

    fn sigkill(&mut self, pid: u32, at: Moment) {
        if self.process(pid).is_some() {
            self.schedule(
                at.true_now.saturating_add(Duration::from_millis(1)),
                ComponentEvent::Exit {
                    pid,
                    status: Status::Signal(9),
                },
            );
        }
    }

    /// Runs a probe against the live process: a hung one times out, one that is not listening
    /// yet refuses at once.
    fn probe(&mut self, generation: u64, at: Moment) {
        let pid = self.core.as_ref().and_then(ComponentSupervisor::pid);
        let process = pid.and_then(|pid| self.process(pid));
        let (verdict, delay) = match process {
            Some(process) if process.hung => (ProbeVerdict::TimedOut, PROBE_TIMEOUT),
            Some(process) if process.ready_at <= at.true_now => {
                (ProbeVerdict::Healthy, Duration::from_millis(1))
            }
            _ => (ProbeVerdict::Refused, Duration::from_millis(1)),
        };
        let run = self.run;
        self.schedule(
            at.true_now.saturating_add(delay),
            ComponentEvent::ProbeDone {
                run,
                generation,
                verdict,
            },
        );
    }

    /// Handles one scheduled event.
    pub(super) fn handle(&mut self, event: ComponentEvent, at: Moment) {
        match event {
            ComponentEvent::Tick => {
                if self.next_tick != Some(at.true_now) || self.leftover.is_some() {
                    return;
                }
                self.next_tick = None;
                let effects = match self.core.as_mut() {
                    Some(core) => core.on_tick(at.node_now),
                    None => return,
                };
                self.run_effects(effects, at);
            }
            ComponentEvent::ProbeDone {
                run,
                generation,
                verdict,
            } => {
                if run != self.run {
                    return;
                }
                let result = match verdict {
                    ProbeVerdict::Healthy => Ok(()),
                    ProbeVerdict::Refused => Err("connection refused".to_owned()),
                    ProbeVerdict::TimedOut => {
                        Err(format!("health check timed out after {PROBE_TIMEOUT:?}"))
                    }
                };
                let effects = match self.core.as_mut() {
                    Some(core) => core.on_probe(generation, result, at.node_now),
                    None => return,
                };
                self.run_effects(effects, at);
            }
            ComponentEvent::Exit { pid, status } => self.exit(pid, status, at),
            ComponentEvent::Crash { pid } => {
                if self.faults_on && self.process(pid).is_some() {
                    self.observations
                        .push(Observation::Fault("component crash"));
                    self.exit(pid, Status::Code(1), at);
                }
            }
            ComponentEvent::Hang { pid } => {
                if !self.faults_on {
                    return;
                }
                let ignores_sigterm = self.rng.gen_bool(0.5);
                if let Some(process) = self.processes.iter_mut().find(|p| p.pid == pid) {
                    process.hung = true;
                    process.ignores_sigterm = ignores_sigterm;
                    self.observations.push(Observation::Fault("component hang"));
                }
            }
            ComponentEvent::LeftoverPoll { run } => {
                if run == self.run {
                    self.poll_leftover(at);
                }
            }
        }
    }

    /// Ends process `pid`. Only the Warden run that spawned it learns of it, through its wait.
    fn exit(&mut self, pid: u32, status: Status, at: Moment) {
        let Some(position) = self.processes.iter().position(|p| p.pid == pid) else {
            return;
        };
        let process = self.processes.remove(position);
        self.observations.push(Observation::Note(format!(
            "iggy process {pid} exited with {}",
            ExitStatus::from(status)
        )));
        let for_health = self.terminated_for_health.remove(&pid);
        if self.core.is_none() || process.parent_run != self.run {
            return;
        }
        self.record = None;
        let unrequested = !matches!(status, Status::Signal(15 | 9));
        let counted = self.core.as_ref().and_then(ComponentSupervisor::pid) == Some(pid)
            && (unrequested || for_health);
        if counted {
            self.observations.push(Observation::Crash(at.true_now));
        }
        let unit = self.unit();
        let effects = match self.core.as_mut() {
            Some(core) => core.on_exited(pid, status.into(), at.node_now, unit),
            None => return,
        };
        self.run_effects(effects, at);
    }

    /// Drops the supervisor and its timers after a Warden crash. The processes run on.
    pub(super) fn warden_crashed(&mut self) {
        self.core = None;
        self.leftover = None;
        self.pending.clear();
        self.next_tick = None;
        self.run += 1;
    }

    /// Starts the supervisor after a Warden restart. Like `ComponentActor::started`, it stops
    /// the process its previous run recorded, if that still runs, before it restores the
    /// desired state.
    pub(super) fn warden_started(&mut self, at: Moment) {
        if self.core.is_some() {
            return;
        }
        self.run += 1;
        self.core = Some(ComponentSupervisor::new(self.policy));
        self.tick_origin = at.true_now;
        self.next_tick = None;
        self.dirty = true;
        let desired_running = self.desired.running;
        let live = self.record.and_then(|record| {
            self.process(record.pid)
                .filter(|process| process.started_at.0 == record.start_ticks)
                .map(|process| process.pid)
        });
        match live {
            Some(pid) => {
                self.leftover = Some(Leftover {
                    pid,
                    kill_at: at.true_now.saturating_add(self.policy.stop_timeout),
                    killed: false,
                    desired_running,
                });
                self.sigterm(pid, at);
                let run = self.run;
                self.schedule(
                    at.true_now.saturating_add(LEFTOVER_POLL),
                    ComponentEvent::LeftoverPoll { run },
                );
            }
            None => self.restore(desired_running, at),
        }
    }

    fn poll_leftover(&mut self, at: Moment) {
        let Some(mut leftover) = self.leftover else {
            return;
        };
        if self.process(leftover.pid).is_none() {
            self.restore(leftover.desired_running, at);
            return;
        }
        if !leftover.killed && at.true_now >= leftover.kill_at {
            leftover.killed = true;
            self.leftover = Some(leftover);
            self.sigkill(leftover.pid, at);
        }
        let run = self.run;
        self.schedule(
            at.true_now.saturating_add(LEFTOVER_POLL),
            ComponentEvent::LeftoverPoll { run },
        );
    }

    /// Clears the process record, starts the component if it was desired, then carries out
    /// the requests that waited.
    fn restore(&mut self, desired_running: bool, at: Moment) {
        self.leftover = None;
        self.record = None;
        if let (false, Some(core), Some(detail)) =
            (desired_running, self.core.as_mut(), self.failed.clone())
        {
            core.restore_failed(detail);
        }
        if desired_running {
            let effects = self
                .core
                .as_mut()
                .map(ComponentSupervisor::start)
                .unwrap_or_default();
            self.requested = true;
            self.run_effects(effects, at);
            self.requested = false;
        }
        for request in std::mem::take(&mut self.pending) {
            self.apply(request, at);
        }
        self.dirty = true;
    }

    /// Returns the first tick after `true_now`, on the actor's 100 ms grid, at which the core
    /// has something to do, judged by a clone of the core at the node's clock.
    fn next_useful_tick(&self, true_now: UnixMillis, offset_ms: i64) -> Option<UnixMillis> {
        let core = self.core.as_ref()?;
        if self.leftover.is_some() {
            return None;
        }
        let step = u64::try_from(TICK_INTERVAL.as_millis()).unwrap_or(100);
        let first = true_now.0.saturating_sub(self.tick_origin.0) / step + 1;
        let grid = |k: u64| UnixMillis(self.tick_origin.0.saturating_add(k.saturating_mul(step)));
        let acts = |k: u64| {
            let node_now = offset(grid(k), offset_ms);
            !core.clone().on_tick(node_now).is_empty()
        };
        // Exponential search for a tick that acts, then binary search for the first one:
        // once `on_tick` acts at some time, it acts at every later time until an input comes.
        let mut span = 1;
        let mut low = first;
        loop {
            let high = first.saturating_add(span);
            if acts(high) {
                if acts(low) {
                    return Some(grid(low));
                }
                let mut high = high;
                while high - low > 1 {
                    let middle = low + (high - low) / 2;
                    if acts(middle) {
                        high = middle;
                    } else {
                        low = middle;
                    }
                }
                return Some(grid(high));
            }
            if span >= TICK_HORIZON {
                return None;
            }
            low = high;
            span *= 2;
        }
    }
}

/// Returns `time` moved by `offset_ms`.
fn offset(time: UnixMillis, offset_ms: i64) -> UnixMillis {
    let magnitude = Duration::from_millis(offset_ms.unsigned_abs());
    if offset_ms < 0 {
        time.saturating_sub(magnitude)
    } else {
        time.saturating_add(magnitude)
    }
}

/// Executes a component task on `node`.
///
/// NOTE: the Warden's executor waits until the component is running (start, restart) or
/// stopped (stop), up to the stop and start timeouts, and fails the task if it ends failed,
/// backing off or stopped. A task executes at one instant in the simulator, so it succeeds as
/// soon as the supervisor has taken the request, with the phase of that instant. Task outcomes
/// therefore do not reflect the component's health here, which the component invariants check.
pub(super) fn execute(
    node: &mut super::SimNode,
    action: &TaskAction,
    true_now: UnixMillis,
) -> ExecutionOutcome {
    let (target, request) = match action {
        TaskAction::StartComponent(target) => (target, Request::Start),
        TaskAction::StopComponent(target) => (target, Request::Stop),
        TaskAction::RestartComponent(target) => (target, Request::Restart),
        other => return Err(format!("{} is not a component request", other.kind())),
    };
    if target.component != Component::Iggy {
        let name = target.component.as_str();
        return Err(format!(
            "component {name} is not defined on this node; add [components.{name}] to its bootstrap file"
        ));
    }
    let at = node_moment(node, true_now);
    node.components.request(request, at);
    let phase = node
        .components
        .phase()
        .map_or_else(|| "waiting".to_owned(), |phase| phase.to_string());
    Ok(BTreeMap::from([
        ("component".to_owned(), target.component.as_str().to_owned()),
        ("phase".to_owned(), phase),
    ]))
}

/// Restarts iggy after its upgrade was installed, as the Warden's upgrade does, so the new
/// process runs the new release. The Warden's rollback after a failed health check is not
/// simulated.
pub(super) fn restart_after_upgrade(
    node: &mut super::SimNode,
    upgrade: &Upgrade,
    oracle: &super::Oracle,
    node_index: usize,
    true_now: UnixMillis,
) {
    if upgrade.component == Component::Iggy {
        let accepted = oracle.violation.is_none()
            && oracle
                .installed
                .get(node_index)
                .and_then(|installed| installed.get(&Component::Iggy))
                == Some(&upgrade.release_counter);
        if accepted {
            node.components
                .observations
                .push(Observation::Accepted(upgrade.release_counter));
        }
        let at = node_moment(node, true_now);
        node.components.request(Request::Restart, at);
    }
}

fn node_moment(node: &super::SimNode, true_now: UnixMillis) -> Moment {
    Moment {
        true_now,
        node_now: node.clock.now(),
        release: node
            .disk
            .installed
            .get(&Component::Iggy)
            .copied()
            .unwrap_or(0),
    }
}

/// Independent records for the component invariants, kept outside the code under test.
#[derive(Debug, Default)]
pub(super) struct ComponentChecker {
    /// Per node, the iggy releases the oracle's `check_install` accepted.
    accepted: Vec<BTreeSet<u64>>,
    /// Per node, true times of the crashes fed to the supervisor since a start task last
    /// started the component afresh.
    crashes: Vec<Vec<UnixMillis>>,
}

impl ComponentChecker {
    pub(super) fn new(nodes: usize) -> Self {
        Self {
            accepted: vec![BTreeSet::from([0]); nodes],
            crashes: vec![Vec::new(); nodes],
        }
    }

    /// Returns the first broken invariant of a node's process table, if any.
    pub(super) fn check_processes(
        &self,
        index: usize,
        processes: &[SimProcess],
    ) -> Option<(&'static str, String)> {
        if processes.len() > 1 {
            let pids: Vec<u32> = processes.iter().map(|process| process.pid).collect();
            return Some((ONE_PROCESS, format!("node-{index} runs iggy as {pids:?}")));
        }
        let accepted = self.accepted.get(index)?;
        processes
            .iter()
            .find(|process| !accepted.contains(&process.release))
            .map(|process| {
                (
                    ACCEPTED_RELEASE,
                    format!(
                        "node-{index} runs iggy process {} of release {}, accepted: {accepted:?}",
                        process.pid, process.release
                    ),
                )
            })
    }

    /// Returns why a failed verdict at `now` came too early, if it did.
    fn check_failed(
        &self,
        index: usize,
        now: UnixMillis,
        policy: &SupervisionPolicy,
        last_clock_step: UnixMillis,
    ) -> Option<String> {
        let horizon = now.saturating_sub(policy.crash_window);
        let count = self
            .crashes
            .get(index)?
            .iter()
            .filter(|at| **at >= horizon)
            .count();
        if count >= usize::try_from(policy.crash_limit).unwrap_or(usize::MAX) {
            return None;
        }
        // NOTE: the supervisor counts crashes on the node's wall clock, so a clock stepped
        // back keeps older crashes in its window. A verdict after such a step is not judged.
        let excused_since = now.saturating_sub(policy.crash_window + CLOCK_OFFSET_MAX * 2);
        if last_clock_step >= excused_since {
            return None;
        }
        Some(format!(
            "node-{index} marked iggy failed after {count} crashes within {:?}; the limit is {}",
            policy.crash_window, policy.crash_limit
        ))
    }
}

impl World {
    /// Returns the node's times and active iggy release now.
    fn component_moment(&self, index: usize) -> Option<Moment> {
        let node = self.nodes.get(index)?;
        Some(node_moment(node, self.clock.now()))
    }

    /// Handles a component event of node `index`.
    pub(super) fn component_event(&mut self, index: usize, event: ComponentEvent) {
        let Some(at) = self.component_moment(index) else {
            return;
        };
        if let Some(node) = self.nodes.get_mut(index) {
            node.components.handle(event, at);
        }
    }

    /// Tells node `index`'s component that its Warden started again.
    pub(super) fn component_warden_started(&mut self, index: usize) {
        let Some(at) = self.component_moment(index) else {
            return;
        };
        if let Some(node) = self.nodes.get_mut(index) {
            node.components.warden_started(at);
        }
    }

    /// Draws an operator's component task: mostly starts, some restarts and stops.
    pub(super) fn component_request(&mut self) -> ActionRequest {
        let component = Component::Iggy;
        match self.rng.gen_range(0..4) {
            0 | 1 => ActionRequest::StartComponent { component },
            2 => ActionRequest::RestartComponent { component },
            _ => ActionRequest::StopComponent { component },
        }
    }

    /// Moves what the components scheduled and observed into the world, and checks the
    /// component invariants. Runs after every step.
    pub(super) fn after_component_step(&mut self, nodes: std::ops::Range<usize>) {
        let true_now = self.clock.now();
        let faults_on = self.faults_on;
        for index in nodes {
            let last_clock_step = self
                .oracle
                .last_clock_step
                .get(index)
                .copied()
                .unwrap_or(true_now);
            let Some(node) = self.nodes.get_mut(index) else {
                continue;
            };
            let components = &mut node.components;
            components.faults_on = faults_on;
            let offset_ms = node.clock.offset_ms.load(Ordering::SeqCst);
            if components.dirty || components.seen_offset != offset_ms {
                components.dirty = false;
                components.seen_offset = offset_ms;
                let next = components.next_useful_tick(true_now, offset_ms);
                if next != components.next_tick {
                    components.next_tick = next;
                    if let Some(at) = next {
                        components.outbox.push((at, ComponentEvent::Tick));
                    }
                }
            }
            let scheduled = std::mem::take(&mut components.outbox);
            let observations = std::mem::take(&mut components.observations);
            let policy = components.policy;
            for (at, event) in scheduled {
                let delay = if at > true_now {
                    at.since(true_now)
                } else {
                    Duration::ZERO
                };
                self.schedule(delay, Event::Component(index, event));
            }
            for observation in observations {
                match observation {
                    Observation::Fault(kind) => self.faults.add(kind),
                    Observation::Restart => self.stats.component_restarts += 1,
                    Observation::Accepted(release) => {
                        if let Some(accepted) = self.component_checker.accepted.get_mut(index) {
                            accepted.insert(release);
                        }
                    }
                    Observation::Note(line) => {
                        let id = self.nodes.get(index).map(|node| node.id.to_string());
                        self.note(&format!("{} {line}", id.unwrap_or_default()));
                    }
                    Observation::Crash(at) => {
                        if let Some(crashes) = self.component_checker.crashes.get_mut(index) {
                            crashes.push(at);
                        }
                    }
                    Observation::Cleared => {
                        if let Some(crashes) = self.component_checker.crashes.get_mut(index) {
                            crashes.clear();
                        }
                    }
                    Observation::Failed(at) => {
                        self.oracle.checks += 1;
                        if let Some(detail) =
                            self.component_checker
                                .check_failed(index, at, &policy, last_clock_step)
                        {
                            self.oracle.fail(at, FAILED_AFTER_LIMIT, detail);
                        }
                    }
                }
            }
            self.oracle.checks += 1;
            let Some(node) = self.nodes.get(index) else {
                continue;
            };
            if let Some((invariant, detail)) = self
                .component_checker
                .check_processes(index, &node.components.processes)
            {
                self.oracle.fail(true_now, invariant, detail);
            }
        }
    }

    /// Describes a live node whose iggy should run but does not, if there is one.
    pub(super) fn component_liveness_gap(&self) -> Option<String> {
        self.nodes.iter().find_map(|node| {
            let components = &node.components;
            let phase = components.phase();
            (components.desired.running && phase != Some(ComponentPhase::Running)).then(|| {
                format!(
                    "{} wants iggy running but it is {}",
                    node.id,
                    phase.map_or_else(|| "not supervised".to_owned(), |p| p.to_string())
                )
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(pid: u32, release: u64) -> SimProcess {
        SimProcess {
            pid,
            release,
            started_at: super::super::START,
            ready_at: super::super::START,
            hung: false,
            ignores_sigterm: false,
            parent_run: 0,
        }
    }

    #[test]
    fn checker_accepts_one_bootstrap_process() {
        let checker = ComponentChecker::new(1);
        assert_eq!(checker.check_processes(0, &[process(1000, 0)]), None);
    }

    #[test]
    fn checker_rejects_two_live_processes() {
        let checker = ComponentChecker::new(1);
        let verdict = checker.check_processes(0, &[process(1000, 0), process(1001, 0)]);
        assert_eq!(verdict.map(|(invariant, _)| invariant), Some(ONE_PROCESS));
    }

    #[test]
    fn checker_rejects_unaccepted_release() {
        let mut checker = ComponentChecker::new(1);
        let verdict = checker.check_processes(0, &[process(1000, 3)]);
        assert_eq!(
            verdict.map(|(invariant, _)| invariant),
            Some(ACCEPTED_RELEASE)
        );
        checker.accepted[0].insert(3);
        assert_eq!(checker.check_processes(0, &[process(1000, 3)]), None);
    }

    #[test]
    fn checker_rejects_early_failure() {
        let policy = default_policy();
        let mut checker = ComponentChecker::new(1);
        let now = super::super::START.saturating_add(Duration::from_secs(3600));
        let long_ago = super::super::START;
        let limit = usize::try_from(policy.crash_limit).unwrap();
        for crash in 0..limit - 1 {
            checker.crashes[0].push(now.saturating_sub(Duration::from_secs(crash as u64)));
        }
        assert!(checker.check_failed(0, now, &policy, long_ago).is_some());
        checker.crashes[0].push(now);
        assert_eq!(checker.check_failed(0, now, &policy, long_ago), None);
    }

    fn moment(after_secs: u64) -> Moment {
        let now = super::super::START.saturating_add(Duration::from_secs(after_secs));
        Moment {
            true_now: now,
            node_now: now,
            release: 0,
        }
    }

    #[test]
    fn warden_restart_stops_leftover_first() {
        let mut components = NodeComponents::new(1, 0, &FaultRates::none());
        assert_eq!(components.processes.len(), 1);
        components.warden_crashed();
        components.warden_started(moment(10));
        assert_eq!(components.processes.len(), 1);
        assert_eq!(components.phase(), None);
        let checker = ComponentChecker::new(1);
        assert_eq!(checker.check_processes(0, &components.processes), None);
    }

    #[test]
    fn lost_process_record_caught() {
        let mut components = NodeComponents::new(1, 0, &FaultRates::none());
        components.warden_crashed();
        // A broken Warden that lost its process record starts a second process.
        components.record = None;
        components.warden_started(moment(10));
        let checker = ComponentChecker::new(1);
        let verdict = checker.check_processes(0, &components.processes);
        assert_eq!(verdict.map(|(invariant, _)| invariant), Some(ONE_PROCESS));
    }

    #[test]
    fn default_policy_is_the_wardens() {
        let policy = default_policy();
        assert_eq!(
            policy.crash_limit,
            warden::components::definition::CRASH_LIMIT_DEFAULT
        );
        assert_eq!(
            policy.probe_interval,
            warden::components::definition::PROBE_INTERVAL
        );
    }
}
