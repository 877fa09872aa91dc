//! Supervision of one component process (the Iggy server or the connectors runtime), free of
//! I/O.
//!
//! [`ComponentSupervisor`] takes the operator's wish (start, stop, restart), what happened to the
//! process (spawned, exited, probe result) and timer ticks, each with the current time, and
//! returns [`SupervisorEffect`]s. The caller spawns and signals the process and runs the probes.
//!
//! Guarantees, each checked by the tests below:
//! - at most one process is live: a spawn is only asked for when no process is known to run;
//! - a stop sends SIGTERM, and SIGKILL follows once the stop timeout has passed;
//! - a crash (an exit that was not requested, or no health within the start timeout) is retried
//!   after a capped exponential back-off with jitter, until `crash_limit` crashes fall within
//!   `crash_window`. The component is then `failed` and stays down until an operator starts it.

use std::collections::VecDeque;
use std::time::Duration;

use warden_actors::{Backoff, BackoffConfig};
use warden_bus::messages::ComponentPhase;
use warden_bus::UnixMillis;

/// Timing and limits of one component's supervision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SupervisionPolicy {
    /// How long a started process has to pass its first health probe.
    pub start_timeout: Duration,
    /// How long a process has to exit after SIGTERM before it gets SIGKILL.
    pub stop_timeout: Duration,
    /// Time between health probes.
    pub probe_interval: Duration,
    /// Consecutive failed probes after which a running process counts as crashed and is
    /// restarted.
    pub unhealthy_probes_max: u32,
    /// Crashes within [`Self::crash_window`] that mark the component failed.
    pub crash_limit: u32,
    /// The window in which crashes are counted.
    pub crash_window: Duration,
    /// Restart delays.
    pub backoff: BackoffConfig,
}

/// The end of a process, as the operating system reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal with this number ended it.
    Signal(i32),
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Code(code) => write!(f, "exit code {code}"),
            Self::Signal(signal) => write!(f, "signal {signal}"),
        }
    }
}

/// Something the caller must do for the supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SupervisorEffect {
    /// Start the process and feed the result to [`ComponentSupervisor::on_spawned`] or
    /// [`ComponentSupervisor::on_spawn_failed`].
    Spawn,
    /// Send SIGTERM to the process group of `pid`.
    Terminate {
        /// The process.
        pid: u32,
    },
    /// Send SIGKILL to the process group of `pid`.
    Kill {
        /// The process.
        pid: u32,
    },
    /// Run one health probe and feed its result to [`ComponentSupervisor::on_probe`] with this
    /// generation.
    Probe {
        /// The spawn the probe belongs to; a result for an older spawn is ignored.
        generation: u64,
    },
    /// The phase changed; report it.
    PhaseChanged {
        /// The new phase.
        phase: ComponentPhase,
        /// Why, for operators.
        detail: String,
    },
}

/// What happens when the process being stopped has exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterStop {
    StayStopped,
    Restart,
    /// The process was stopped because it crashed or stayed unhealthy: count a crash.
    CountCrash,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Stopped,
    /// A spawn was requested and its result is not in yet.
    Spawning,
    Starting {
        pid: u32,
        deadline: UnixMillis,
    },
    Running {
        pid: u32,
        failed_probes: u32,
    },
    BackingOff {
        until: UnixMillis,
    },
    Stopping {
        pid: u32,
        kill_at: UnixMillis,
        killed: bool,
        then: AfterStop,
    },
    Failed,
}

/// The supervision state machine of one component.
#[derive(Debug, Clone)]
pub struct ComponentSupervisor {
    policy: SupervisionPolicy,
    phase: Phase,
    /// Whether the operator wants the component running.
    desired_running: bool,
    generation: u64,
    next_probe_at: Option<UnixMillis>,
    probe_in_flight: bool,
    crashes: VecDeque<UnixMillis>,
    backoff: Backoff,
    last_detail: String,
}

impl ComponentSupervisor {
    /// Creates a supervisor with no process and nothing desired.
    pub fn new(policy: SupervisionPolicy) -> Self {
        Self {
            policy,
            phase: Phase::Stopped,
            desired_running: false,
            generation: 0,
            next_probe_at: None,
            probe_in_flight: false,
            crashes: VecDeque::new(),
            backoff: Backoff::new(policy.backoff),
            last_detail: "never started".to_owned(),
        }
    }

    /// The phase as reported to operators.
    pub fn phase(&self) -> ComponentPhase {
        match self.phase {
            Phase::Stopped => ComponentPhase::Stopped,
            Phase::Spawning | Phase::Starting { .. } => ComponentPhase::Starting,
            Phase::Running { failed_probes, .. } if failed_probes > 0 => ComponentPhase::Unhealthy,
            Phase::Running { .. } => ComponentPhase::Running,
            Phase::BackingOff { .. } => ComponentPhase::BackingOff,
            Phase::Stopping { .. } => ComponentPhase::Stopping,
            Phase::Failed => ComponentPhase::Failed,
        }
    }

    /// Why the component is in its phase.
    pub fn detail(&self) -> &str {
        &self.last_detail
    }

    /// The live process, if one is known.
    pub fn pid(&self) -> Option<u32> {
        match self.phase {
            Phase::Starting { pid, .. }
            | Phase::Running { pid, .. }
            | Phase::Stopping { pid, .. } => Some(pid),
            _ => None,
        }
    }

    /// Whether the operator wants the component running.
    pub fn desired_running(&self) -> bool {
        self.desired_running
    }

    /// Crashes counted in the current window.
    pub fn recent_crashes(&self) -> usize {
        self.crashes.len()
    }

    /// Puts a stopped supervisor back in `failed` with `detail`, as a restarted Warden found it
    /// recorded. The phase is the one operators saw before the restart, so there are no
    /// effects. A supervisor that is not stopped, or that should run, is left alone.
    pub fn restore_failed(&mut self, detail: String) {
        if self.phase == Phase::Stopped && !self.desired_running {
            self.phase = Phase::Failed;
            self.last_detail = detail;
        }
    }

    /// The operator wants the component running. A failed component starts again with its crash
    /// count cleared; a running one is left alone.
    pub fn start(&mut self) -> Vec<SupervisorEffect> {
        self.desired_running = true;
        match self.phase {
            Phase::Stopped | Phase::Failed | Phase::BackingOff { .. } => {
                self.crashes.clear();
                self.backoff.reset();
                self.spawn("start requested".to_owned())
            }
            Phase::Stopping {
                pid,
                kill_at,
                killed,
                ..
            } => {
                // The process is on its way out; start a new one once it is gone.
                self.phase = Phase::Stopping {
                    pid,
                    kill_at,
                    killed,
                    then: AfterStop::Restart,
                };
                Vec::new()
            }
            Phase::Spawning | Phase::Starting { .. } | Phase::Running { .. } => Vec::new(),
        }
    }

    /// The operator wants the component stopped.
    pub fn stop(&mut self, now: UnixMillis) -> Vec<SupervisorEffect> {
        self.desired_running = false;
        match self.phase {
            Phase::Starting { pid, .. } | Phase::Running { pid, .. } => self.terminate(
                pid,
                now,
                AfterStop::StayStopped,
                "stop requested".to_owned(),
            ),
            Phase::Stopping {
                pid,
                kill_at,
                killed,
                ..
            } => {
                self.phase = Phase::Stopping {
                    pid,
                    kill_at,
                    killed,
                    then: AfterStop::StayStopped,
                };
                Vec::new()
            }
            // A spawn in progress is stopped as soon as its pid is known.
            Phase::Spawning => Vec::new(),
            Phase::BackingOff { .. } | Phase::Failed | Phase::Stopped => {
                self.set_phase(Phase::Stopped, "stop requested".to_owned())
            }
        }
    }

    /// The operator wants a fresh process: stop the live one, if any, then start.
    pub fn restart(&mut self, now: UnixMillis) -> Vec<SupervisorEffect> {
        self.desired_running = true;
        match self.phase {
            Phase::Starting { pid, .. } | Phase::Running { pid, .. } => {
                self.crashes.clear();
                self.backoff.reset();
                self.terminate(pid, now, AfterStop::Restart, "restart requested".to_owned())
            }
            _ => self.start(),
        }
    }

    /// A spawn succeeded.
    pub fn on_spawned(&mut self, pid: u32, now: UnixMillis) -> Vec<SupervisorEffect> {
        debug_assert_eq!(
            self.phase,
            Phase::Spawning,
            "spawned without a spawn request"
        );
        if self.phase != Phase::Spawning {
            // Unexpected: do not lose track of a live process.
            return self.terminate(pid, now, AfterStop::StayStopped, "unexpected spawn".into());
        }
        if !self.desired_running {
            return self.terminate(pid, now, AfterStop::StayStopped, "stop requested".into());
        }
        self.generation += 1;
        self.next_probe_at = Some(now);
        self.probe_in_flight = false;
        let deadline = now.saturating_add(self.policy.start_timeout);
        let mut effects = self.set_phase(
            Phase::Starting { pid, deadline },
            format!("process {pid} started; waiting for its health check"),
        );
        effects.extend(self.due_probe(now));
        effects
    }

    /// A spawn failed, for example because the binary is missing: counted as a crash.
    pub fn on_spawn_failed(
        &mut self,
        reason: &str,
        now: UnixMillis,
        unit: f64,
    ) -> Vec<SupervisorEffect> {
        debug_assert_eq!(
            self.phase,
            Phase::Spawning,
            "spawn failed without a spawn request"
        );
        self.crash(format!("failed to start: {reason}"), now, unit)
    }

    /// The process `pid` exited.
    pub fn on_exited(
        &mut self,
        pid: u32,
        status: ExitStatus,
        now: UnixMillis,
        unit: f64,
    ) -> Vec<SupervisorEffect> {
        if self.pid() != Some(pid) {
            return Vec::new();
        }
        match self.phase {
            Phase::Stopping { then, .. } => {
                let detail = format!("process {pid} stopped with {status}");
                match then {
                    AfterStop::StayStopped => self.set_phase(Phase::Stopped, detail),
                    AfterStop::Restart => self.spawn(detail),
                    AfterStop::CountCrash => {
                        let reason = self.last_detail.clone();
                        self.crash(reason, now, unit)
                    }
                }
            }
            _ => self.crash(
                format!("process {pid} exited unexpectedly with {status}"),
                now,
                unit,
            ),
        }
    }

    /// A health probe finished.
    pub fn on_probe(
        &mut self,
        generation: u64,
        healthy: Result<(), String>,
        now: UnixMillis,
    ) -> Vec<SupervisorEffect> {
        if generation != self.generation {
            return Vec::new();
        }
        self.probe_in_flight = false;
        self.next_probe_at = Some(now.saturating_add(self.policy.probe_interval));
        match (self.phase.clone(), healthy) {
            (Phase::Starting { pid, .. }, Ok(())) => {
                self.backoff.reset();
                self.set_phase(
                    Phase::Running {
                        pid,
                        failed_probes: 0,
                    },
                    format!("process {pid} is healthy"),
                )
            }
            (Phase::Starting { .. }, Err(_)) => Vec::new(),
            (Phase::Running { pid, failed_probes }, Ok(())) => {
                if failed_probes == 0 {
                    return Vec::new();
                }
                self.set_phase(
                    Phase::Running {
                        pid,
                        failed_probes: 0,
                    },
                    format!("process {pid} is healthy again"),
                )
            }
            (Phase::Running { pid, failed_probes }, Err(reason)) => {
                let failed_probes = failed_probes.saturating_add(1);
                let detail =
                    format!("process {pid} failed {failed_probes} health checks: {reason}");
                if failed_probes >= self.policy.unhealthy_probes_max {
                    return self.terminate(pid, now, AfterStop::CountCrash, detail);
                }
                self.set_phase(Phase::Running { pid, failed_probes }, detail)
            }
            _ => Vec::new(),
        }
    }

    /// Time passed: fire due probes, start timeouts, kill deadlines and back-off ends.
    pub fn on_tick(&mut self, now: UnixMillis) -> Vec<SupervisorEffect> {
        match self.phase {
            Phase::Starting { pid, deadline } if now >= deadline => {
                let detail = format!(
                    "process {pid} did not pass its health check within {:?}",
                    self.policy.start_timeout
                );
                self.terminate(pid, now, AfterStop::CountCrash, detail)
            }
            Phase::Starting { .. } | Phase::Running { .. } => self.due_probe(now),
            Phase::Stopping {
                pid,
                kill_at,
                killed: false,
                then,
            } if now >= kill_at => {
                self.phase = Phase::Stopping {
                    pid,
                    kill_at,
                    killed: true,
                    then,
                };
                vec![SupervisorEffect::Kill { pid }]
            }
            Phase::BackingOff { until } if now >= until => {
                self.spawn(format!("restarting after back-off; {}", self.last_detail))
            }
            _ => Vec::new(),
        }
    }

    fn due_probe(&mut self, now: UnixMillis) -> Vec<SupervisorEffect> {
        match self.next_probe_at {
            Some(at) if at <= now && !self.probe_in_flight => {
                self.probe_in_flight = true;
                vec![SupervisorEffect::Probe {
                    generation: self.generation,
                }]
            }
            _ => Vec::new(),
        }
    }

    fn spawn(&mut self, detail: String) -> Vec<SupervisorEffect> {
        // Stopping is allowed: its process has just exited, and the caller is on_exited.
        debug_assert!(
            !matches!(
                self.phase,
                Phase::Spawning | Phase::Starting { .. } | Phase::Running { .. }
            ),
            "spawn while a process is live"
        );
        let mut effects = self.set_phase(Phase::Spawning, detail);
        effects.push(SupervisorEffect::Spawn);
        effects
    }

    fn terminate(
        &mut self,
        pid: u32,
        now: UnixMillis,
        then: AfterStop,
        detail: String,
    ) -> Vec<SupervisorEffect> {
        let kill_at = now.saturating_add(self.policy.stop_timeout);
        let mut effects = self.set_phase(
            Phase::Stopping {
                pid,
                kill_at,
                killed: false,
                then,
            },
            detail,
        );
        effects.push(SupervisorEffect::Terminate { pid });
        effects
    }

    /// Counts a crash, then backs off, or fails at the crash limit.
    fn crash(&mut self, reason: String, now: UnixMillis, unit: f64) -> Vec<SupervisorEffect> {
        let horizon = now.saturating_sub(self.policy.crash_window);
        while self.crashes.front().is_some_and(|at| *at < horizon) {
            self.crashes.pop_front();
        }
        self.crashes.push_back(now);
        if !self.desired_running {
            return self.set_phase(Phase::Stopped, reason);
        }
        let count = self.crashes.len();
        if count >= usize::try_from(self.policy.crash_limit).unwrap_or(usize::MAX) {
            let detail = format!(
                "{count} crashes within {:?}, the limit; not restarting until a start task; last: {reason}",
                self.policy.crash_window
            );
            self.desired_running = false;
            return self.set_phase(Phase::Failed, detail);
        }
        let delay = self.backoff.next_delay(unit);
        let until = now.saturating_add(delay);
        self.set_phase(
            Phase::BackingOff { until },
            format!("{reason}; restarting in {} ms", delay.as_millis()),
        )
    }

    fn set_phase(&mut self, phase: Phase, detail: String) -> Vec<SupervisorEffect> {
        let before = self.phase();
        self.phase = phase;
        self.last_detail = detail;
        if !matches!(self.phase, Phase::Starting { .. } | Phase::Running { .. }) {
            self.next_probe_at = None;
        }
        let after = self.phase();
        if before == after && after != ComponentPhase::Unhealthy {
            return Vec::new();
        }
        vec![SupervisorEffect::PhaseChanged {
            phase: after,
            detail: self.last_detail.clone(),
        }]
    }
}

#[cfg(test)]
mod tests;
