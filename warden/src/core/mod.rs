//! The Warden's decisions, free of I/O.
//!
//! [`WardenCore`] takes inputs (a pulled message with the current time, the outcome of an
//! execution) and returns [`Effect`]s in the order they must happen. The caller carries them
//! out one by one and stops at the first failure; the next start rebuilds the core from the
//! persisted records, so a failure at any point leaves a consistent state.
//!
//! For a new valid task the effects are: persist `Started`, report `Delivered`, execute. The
//! execution's outcome then gives: persist `Finished`, report the outcome, acknowledge. The
//! report goes out before the acknowledgement so that a failed report is retried by the
//! broker's redelivery, which republishes the recorded outcome without executing again.

pub mod heartbeat;
pub mod record;
pub mod verify;

use std::collections::BTreeMap;
use std::time::Duration;

use warden_bus::messages::ApplyConfig;
use warden_bus::{ReportStatus, Task, TaskAction, TaskId, TaskReport, UnixMillis};

use self::record::{RecordState, TaskRecord};
use self::verify::{Audience, Rejection, VerifiedTask};

/// Default tolerance for clock differences between control plane and node.
pub const CLOCK_SKEW_DEFAULT: Duration = Duration::from_secs(300);

/// Something the caller must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Write the record and flush it to disk.
    Persist(TaskRecord),
    /// Execute the task and feed the outcome to [`WardenCore::on_executed`].
    Execute(VerifiedTask),
    /// Publish the report and wait until the broker stored it.
    Report(TaskReport),
    /// Acknowledge the delivery being handled.
    Ack,
}

/// Outcome of executing a task: output facts, or why it failed.
pub type ExecutionOutcome = Result<BTreeMap<String, String>, String>;

/// A message pulled from this node's task consumer.
#[derive(Debug, Clone, Copy)]
pub struct Pulled<'a> {
    /// Message payload.
    pub payload: &'a [u8],
    /// Stream sequence of the message.
    pub stream_sequence: u64,
}

/// The Warden's state machine for tasks.
#[derive(Debug, Clone)]
pub struct WardenCore {
    audience: Audience,
    skew: Duration,
    records: BTreeMap<TaskId, TaskRecord>,
    config_version: u64,
    in_flight: Option<InFlight>,
}

#[derive(Debug, Clone)]
struct InFlight {
    task: Task,
    stream_sequence: u64,
    config_version: Option<u64>,
}

impl WardenCore {
    /// Rebuilds the core from persisted records and the version of the configuration on disk.
    pub fn new(
        audience: Audience,
        skew: Duration,
        records: impl IntoIterator<Item = TaskRecord>,
        config_version: u64,
    ) -> Self {
        Self {
            audience,
            skew,
            records: records
                .into_iter()
                .map(|record| (record.task_id.clone(), record))
                .collect(),
            config_version,
            in_flight: None,
        }
    }

    /// Version of the applied Iggy configuration, 0 if none.
    pub fn config_version(&self) -> u64 {
        self.config_version
    }

    /// The execution record of a task, if this node accepted it.
    pub fn record(&self, id: &TaskId) -> Option<&TaskRecord> {
        self.records.get(id)
    }

    /// Number of execution records held.
    pub fn record_count(&self) -> usize {
        self.records.len()
    }

    /// Decides what to do with a pulled message.
    pub fn on_pulled(&mut self, pulled: Pulled<'_>, now: UnixMillis) -> Vec<Effect> {
        debug_assert!(self.in_flight.is_none(), "a task is already executing");
        let task = match verify::verify_signed(pulled.payload, &self.audience) {
            Ok(task) => task,
            Err(rejection) => return self.reject(rejection, now),
        };

        // A task with a record was accepted before: from this message it is a redelivery,
        // from another message a replay.
        if let Some(record) = self.records.get(&task.id) {
            if record.stream_sequence != pulled.stream_sequence {
                let detail = format!(
                    "task {} was already accepted from stream message {}; this copy is message {}",
                    task.id, record.stream_sequence, pulled.stream_sequence
                );
                return self.reject(
                    Rejection {
                        code: warden_bus::RejectCode::Replayed,
                        detail,
                        claimed_id: Some(task.id),
                    },
                    now,
                );
            }
            if let RecordState::Finished(status) = &record.state {
                tracing::info!(
                    node_id = %self.audience.node,
                    task_id = %task.id,
                    stream_sequence = pulled.stream_sequence,
                    "task redelivered; reporting its recorded outcome again without executing"
                );
                let report = self.report(&task.id, status.clone(), now);
                return vec![Effect::Report(report), Effect::Ack];
            }
            // Started but never finished: the Warden stopped mid-execution. Every action is
            // idempotent, so it runs again below; ApplyConfig sees its own version on disk.
        }

        let verified = match verify::check_window_and_action(task, now, self.skew) {
            Ok(verified) => verified,
            Err(rejection) => return self.reject(rejection, now),
        };
        let resumed = self.records.contains_key(verified.id());
        let config_version = match verified.action() {
            TaskAction::ApplyConfig(ApplyConfig { version, content }) => {
                if let Err(error) = content.parse::<toml::Table>() {
                    let detail = format!(
                        "configuration of task {} is not valid TOML: {error}",
                        verified.id()
                    );
                    let claimed_id = Some(verified.id().clone());
                    return self.reject(
                        Rejection {
                            code: warden_bus::RejectCode::InvalidParams,
                            detail,
                            claimed_id,
                        },
                        now,
                    );
                }
                if *version < self.config_version || (*version == self.config_version && !resumed) {
                    let detail = format!(
                        "configuration version {version} is not above the applied version {}; issue a higher version",
                        self.config_version
                    );
                    let claimed_id = Some(verified.id().clone());
                    return self.reject(
                        Rejection {
                            code: warden_bus::RejectCode::StaleVersion,
                            detail,
                            claimed_id,
                        },
                        now,
                    );
                }
                Some(*version)
            }
            TaskAction::CollectDiagnostics => None,
        };

        let record = TaskRecord {
            task_id: verified.id().clone(),
            stream_sequence: pulled.stream_sequence,
            expires_at: verified.task().expires_at,
            state: RecordState::Started,
        };
        self.records.insert(record.task_id.clone(), record.clone());
        self.in_flight = Some(InFlight {
            task: verified.task().clone(),
            stream_sequence: pulled.stream_sequence,
            config_version,
        });
        let delivered = self.report(verified.id(), ReportStatus::Delivered, now);
        vec![
            Effect::Persist(record),
            Effect::Report(delivered),
            Effect::Execute(verified),
        ]
    }

    /// Records the outcome of the task in flight.
    pub fn on_executed(&mut self, outcome: ExecutionOutcome, now: UnixMillis) -> Vec<Effect> {
        let Some(in_flight) = self.in_flight.take() else {
            debug_assert!(false, "an execution finished but no task was in flight");
            return Vec::new();
        };
        let status = match outcome {
            Ok(output) => {
                if let Some(version) = in_flight.config_version {
                    self.config_version = self.config_version.max(version);
                }
                ReportStatus::Succeeded { output }
            }
            Err(reason) => ReportStatus::failed(reason),
        };
        let record = TaskRecord {
            task_id: in_flight.task.id.clone(),
            stream_sequence: in_flight.stream_sequence,
            expires_at: in_flight.task.expires_at,
            state: RecordState::Finished(status.clone()),
        };
        self.records.insert(record.task_id.clone(), record.clone());
        let report = self.report(&in_flight.task.id, status, now);
        vec![Effect::Persist(record), Effect::Report(report), Effect::Ack]
    }

    fn reject(&self, rejection: Rejection, now: UnixMillis) -> Vec<Effect> {
        tracing::warn!(
            node_id = %self.audience.node,
            deployment_id = %self.audience.deployment,
            task_id = rejection.claimed_id.as_ref().map(TaskId::as_str).unwrap_or("unknown"),
            code = %rejection.code,
            detail = %rejection.detail,
            "rejected task"
        );
        let mut effects = Vec::new();
        if let Some(id) = &rejection.claimed_id {
            let status = ReportStatus::rejected(rejection.code, &rejection.detail);
            effects.push(Effect::Report(self.report(id, status, now)));
        }
        effects.push(Effect::Ack);
        effects
    }

    fn report(&self, task_id: &TaskId, status: ReportStatus, now: UnixMillis) -> TaskReport {
        TaskReport {
            task_id: task_id.clone(),
            deployment: self.audience.deployment.clone(),
            node: self.audience.node.clone(),
            at: now,
            status,
        }
    }
}

#[cfg(test)]
mod tests;
