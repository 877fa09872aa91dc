//! Decisions of the Warden's self-upgrade, free of I/O.
//!
//! The launcher and the agent share one small record, `<state_dir>/warden-release.json`: which
//! binary runs as the agent, the binary before it, and the trial of a new binary. The agent
//! writes a pending trial and exits with [`SWITCH_EXIT_STATUS`]; the launcher starts the trial
//! binary and gives it a deadline; the new agent confirms; the launcher then makes it active.
//! A trial whose agent exits or misses its deadline fails, and the previous binary runs again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use warden_bus::UnixMillis;

/// Exit status with which the agent asks the launcher to start the trial binary.
pub const SWITCH_EXIT_STATUS: i32 = 100;

/// Which Warden binary runs, and the trial of a new one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    /// The binary the launcher runs as the agent.
    pub active: PathBuf,
    /// The binary that was active before, kept for reference.
    #[serde(default)]
    pub previous: Option<PathBuf>,
    /// A new binary on trial.
    #[serde(default)]
    pub trial: Option<Trial>,
}

/// A new Warden binary on trial, started for an `upgrade_component` task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    /// The upgrade task.
    pub task_id: String,
    /// The new binary.
    pub binary: PathBuf,
    /// Version of the new release, from its manifest.
    pub version: String,
    /// Where the trial stands.
    pub state: TrialState,
}

/// Where a trial stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TrialState {
    /// Written by the old agent just before it exits; the launcher has not started it yet.
    Pending,
    /// The launcher runs the new binary, which must confirm before the deadline.
    Running {
        /// Unix time in milliseconds.
        deadline: UnixMillis,
    },
    /// The new agent connected and sent a heartbeat.
    Confirmed,
    /// The new binary exited or missed its deadline; the previous binary runs again.
    Failed {
        /// Why the trial failed.
        reason: String,
    },
}

impl ReleaseRecord {
    /// A record that runs `binary` with no trial.
    pub fn new(binary: PathBuf) -> Self {
        Self {
            active: binary,
            previous: None,
            trial: None,
        }
    }
}

/// How an agent process ended, as the launcher saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentExit {
    /// It exited with this status.
    Exited(i32),
    /// A signal ended it.
    Signaled(i32),
}

impl std::fmt::Display for AgentExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exited(status) => write!(f, "exited with status {status}"),
            Self::Signaled(signal) => write!(f, "was ended by signal {signal}"),
        }
    }
}

/// What the launcher does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LauncherStep {
    /// Keep waiting for the agent.
    Wait,
    /// Store the record, then start `binary` as the agent.
    Start {
        /// The record to store first.
        record: ReleaseRecord,
        /// The binary to start.
        binary: PathBuf,
        /// Whether the start follows a crash and must wait for the restart back-off.
        after_crash: bool,
    },
    /// Stop the running trial agent, store the record (trial failed), then start the active
    /// binary.
    RollBack {
        /// The record to store after the agent stopped.
        record: ReleaseRecord,
    },
    /// Store the record (trial binary now active), then re-execute the launcher from it,
    /// adopting the running agent.
    Promote {
        /// The record to store first.
        record: ReleaseRecord,
    },
}

/// Settles a trial left by an earlier launcher process that stopped mid-trial: a trial that
/// had not been confirmed fails, because nothing watches its deadline any more. Returns the
/// record to store and whether it changed.
pub fn on_launcher_start(mut record: ReleaseRecord) -> (ReleaseRecord, bool) {
    match record.trial.as_ref().map(|trial| &trial.state) {
        Some(TrialState::Pending | TrialState::Running { .. }) => {
            set_failed(
                &mut record,
                "the launcher restarted before the new binary confirmed it was healthy".to_owned(),
            );
            (record, true)
        }
        Some(TrialState::Confirmed) => {
            let changed = promote(&mut record);
            (record, changed)
        }
        Some(TrialState::Failed { .. }) | None => (record, false),
    }
}

/// Decides after the agent ended with `exit` while `record` was stored.
pub fn on_agent_exit(
    mut record: ReleaseRecord,
    exit: AgentExit,
    now: UnixMillis,
    health_timeout: Duration,
) -> LauncherStep {
    let state = record.trial.as_ref().map(|trial| trial.state.clone());
    match state {
        Some(TrialState::Pending) if exit == AgentExit::Exited(SWITCH_EXIT_STATUS) => {
            let Some(trial) = record.trial.as_mut() else {
                unreachable!("the state was read from this trial");
            };
            trial.state = TrialState::Running {
                deadline: now.saturating_add(health_timeout),
            };
            let binary = trial.binary.clone();
            LauncherStep::Start {
                record,
                binary,
                after_crash: false,
            }
        }
        Some(TrialState::Running { .. }) => {
            set_failed(
                &mut record,
                format!("the new binary {exit} before it confirmed it was healthy"),
            );
            let binary = record.active.clone();
            LauncherStep::Start {
                record,
                binary,
                after_crash: false,
            }
        }
        Some(TrialState::Confirmed) => {
            // The new agent confirmed and then ended: it becomes active all the same, and is
            // restarted like any agent that ended.
            promote(&mut record);
            let binary = record.active.clone();
            LauncherStep::Start {
                record,
                binary,
                after_crash: true,
            }
        }
        Some(TrialState::Pending) => {
            // The agent wrote a trial but ended some other way than asking for the switch.
            set_failed(
                &mut record,
                format!("the Warden {exit} before it started the new binary"),
            );
            let binary = record.active.clone();
            LauncherStep::Start {
                record,
                binary,
                after_crash: true,
            }
        }
        Some(TrialState::Failed { .. }) | None => {
            let binary = record.active.clone();
            LauncherStep::Start {
                record,
                binary,
                after_crash: true,
            }
        }
    }
}

/// Decides while the agent runs.
pub fn on_poll(mut record: ReleaseRecord, now: UnixMillis) -> LauncherStep {
    match record.trial.as_ref().map(|trial| trial.state.clone()) {
        Some(TrialState::Confirmed) => {
            promote(&mut record);
            LauncherStep::Promote { record }
        }
        Some(TrialState::Running { deadline }) if now >= deadline => {
            set_failed(
                &mut record,
                "the new binary did not confirm it was healthy before its deadline".to_owned(),
            );
            LauncherStep::RollBack { record }
        }
        _ => LauncherStep::Wait,
    }
}

fn set_failed(record: &mut ReleaseRecord, reason: String) {
    if let Some(trial) = record.trial.as_mut() {
        trial.state = TrialState::Failed { reason };
    }
}

/// Makes a confirmed trial's binary active; returns whether anything changed.
fn promote(record: &mut ReleaseRecord) -> bool {
    match record.trial.take() {
        Some(trial) if trial.state == TrialState::Confirmed => {
            let old = std::mem::replace(&mut record.active, trial.binary);
            record.previous = Some(old);
            true
        }
        other => {
            record.trial = other;
            false
        }
    }
}

/// What the agent does with a self-upgrade task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentStep {
    /// Install the release, write a pending trial and exit for the switch.
    Install,
    /// This process is the trial binary: wait for a heartbeat, then confirm.
    Confirm,
    /// The trial of this task failed and this is the previous binary again: clear the trial
    /// and fail the task with the reason.
    RolledBack {
        /// Why the trial failed.
        reason: String,
    },
    /// The release already runs as the active binary: the task succeeded.
    AlreadyActive,
}

/// Decides what the agent running `own_binary` does with the self-upgrade task `task_id`,
/// whose release installs as `target_binary`.
pub fn agent_step(
    record: &ReleaseRecord,
    task_id: &str,
    own_binary: &Path,
    target_binary: &Path,
) -> AgentStep {
    if let Some(trial) = record
        .trial
        .as_ref()
        .filter(|trial| trial.task_id == task_id)
    {
        match &trial.state {
            TrialState::Failed { reason } => {
                return AgentStep::RolledBack {
                    reason: reason.clone(),
                }
            }
            TrialState::Running { .. } | TrialState::Confirmed if own_binary == trial.binary => {
                return AgentStep::Confirm
            }
            _ => {}
        }
    }
    if own_binary == target_binary && record.active == target_binary {
        return AgentStep::AlreadyActive;
    }
    AgentStep::Install
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT_MS: Duration = Duration::from_secs(60);

    fn pending() -> ReleaseRecord {
        ReleaseRecord {
            active: "/usr/bin/warden".into(),
            previous: None,
            trial: Some(Trial {
                task_id: "t1".into(),
                binary: "/state/releases/2/warden".into(),
                version: "0.2.0".into(),
                state: TrialState::Pending,
            }),
        }
    }

    fn started(record: ReleaseRecord) -> ReleaseRecord {
        match on_agent_exit(
            record,
            AgentExit::Exited(SWITCH_EXIT_STATUS),
            UnixMillis(1_000),
            TIMEOUT_MS,
        ) {
            LauncherStep::Start { record, .. } => record,
            other => panic!("expected a start, got {other:?}"),
        }
    }

    #[test]
    fn switch_status_starts_trial_with_deadline() {
        let step = on_agent_exit(
            pending(),
            AgentExit::Exited(SWITCH_EXIT_STATUS),
            UnixMillis(1_000),
            TIMEOUT_MS,
        );
        let LauncherStep::Start {
            record,
            binary,
            after_crash,
        } = step
        else {
            panic!("expected a start, got {step:?}");
        };
        assert_eq!(binary, PathBuf::from("/state/releases/2/warden"));
        assert!(!after_crash);
        assert_eq!(
            record.trial.map(|trial| trial.state),
            Some(TrialState::Running {
                deadline: UnixMillis(61_000)
            })
        );
    }

    #[test]
    fn trial_exit_rolls_back_with_reason() {
        let step = on_agent_exit(
            started(pending()),
            AgentExit::Exited(3),
            UnixMillis(2_000),
            TIMEOUT_MS,
        );
        let LauncherStep::Start { record, binary, .. } = step else {
            panic!("expected a start, got {step:?}");
        };
        assert_eq!(binary, PathBuf::from("/usr/bin/warden"));
        let Some(TrialState::Failed { reason }) = record.trial.map(|trial| trial.state) else {
            panic!("the trial must have failed");
        };
        assert!(reason.contains("exited with status 3"), "{reason}");
    }

    #[test]
    fn missed_deadline_rolls_back() {
        let record = started(pending());
        assert_eq!(
            on_poll(record.clone(), UnixMillis(60_999)),
            LauncherStep::Wait
        );
        let step = on_poll(record, UnixMillis(61_000));
        let LauncherStep::RollBack { record } = step else {
            panic!("expected a rollback, got {step:?}");
        };
        assert_eq!(record.active, PathBuf::from("/usr/bin/warden"));
        assert!(matches!(
            record.trial.map(|trial| trial.state),
            Some(TrialState::Failed { .. })
        ));
    }

    #[test]
    fn confirmation_promotes_trial_binary() {
        let mut record = started(pending());
        if let Some(trial) = record.trial.as_mut() {
            trial.state = TrialState::Confirmed;
        }
        let step = on_poll(record, UnixMillis(5_000));
        let LauncherStep::Promote { record } = step else {
            panic!("expected a promotion, got {step:?}");
        };
        assert_eq!(record.active, PathBuf::from("/state/releases/2/warden"));
        assert_eq!(record.previous, Some(PathBuf::from("/usr/bin/warden")));
        assert_eq!(record.trial, None);
    }

    #[test]
    fn crash_without_trial_restarts_active() {
        let record = ReleaseRecord::new("/usr/bin/warden".into());
        let step = on_agent_exit(record, AgentExit::Signaled(9), UnixMillis(0), TIMEOUT_MS);
        assert!(matches!(
            step,
            LauncherStep::Start {
                after_crash: true,
                ..
            }
        ));
    }

    #[test]
    fn launcher_restart_fails_unconfirmed_trial() {
        let (record, changed) = on_launcher_start(started(pending()));
        assert!(changed);
        assert!(matches!(
            record.trial.map(|trial| trial.state),
            Some(TrialState::Failed { .. })
        ));
    }

    #[test]
    fn agent_steps_follow_trial() {
        let new = Path::new("/state/releases/2/warden");
        let old = Path::new("/usr/bin/warden");
        assert_eq!(
            agent_step(&ReleaseRecord::new(old.into()), "t1", old, new),
            AgentStep::Install
        );
        let running = started(pending());
        assert_eq!(agent_step(&running, "t1", new, new), AgentStep::Confirm);
        assert_eq!(agent_step(&running, "t2", old, new), AgentStep::Install);
        let (failed, _) = on_launcher_start(running);
        assert!(matches!(
            agent_step(&failed, "t1", old, new),
            AgentStep::RolledBack { .. }
        ));
        let mut active = ReleaseRecord::new(new.into());
        active.previous = Some(old.into());
        assert_eq!(
            agent_step(&active, "t1", new, new),
            AgentStep::AlreadyActive
        );
    }
}
