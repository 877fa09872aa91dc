//! The task runner: an actor around [`WardenCore`] that handles one pulled message at a time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use sha2::{Digest, Sha256};
use warden_actors::clock::SharedClock;
use warden_bus::{
    Bus, Delivery, Envelope, MessageId, ReportStatus, Subject, TaskReport, TelemetryKind,
    UnixMillis,
};

use crate::core::record::TaskRecord;
use crate::core::verify::{Audience, VerifiedTask};
use crate::core::{ExecutionOutcome, Pulled, WardenCore};
use crate::executor::Executor;
use crate::pipeline::{handle_pulled, IoFailure, NodeIo};
use crate::store::TaskStore;

/// A delivery from this node's task consumer.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct PulledTask(pub Delivery);

impl From<Delivery> for PulledTask {
    fn from(delivery: Delivery) -> Self {
        Self(delivery)
    }
}

/// Everything the runner needs besides the core; cloned into each handling future.
#[derive(Clone)]
pub struct RunnerParts {
    /// This node and its trusted keys.
    pub audience: Audience,
    /// Tolerated clock difference.
    pub clock_skew: std::time::Duration,
    /// Execution records.
    pub store: TaskStore,
    /// Carries out tasks.
    pub executor: Executor,
    /// The broker.
    pub bus: Arc<dyn Bus>,
    /// Wall clock.
    pub clock: SharedClock,
    /// Applied configuration version, read by the heartbeat actor.
    pub config_version: Arc<AtomicU64>,
    /// Test-only crash point, honoured in debug builds.
    pub failpoint: Option<String>,
}

/// Owns the task core; rebuilt from the store whenever it restarts.
pub struct TaskRunner {
    core: Option<WardenCore>,
    parts: RunnerParts,
}

impl TaskRunner {
    /// Loads the execution records and the configuration version from disk.
    pub fn load(parts: RunnerParts) -> Result<Self, String> {
        let records = parts.store.load().map_err(|error| error.to_string())?;
        let config_version = parts
            .executor
            .config_version_on_disk()
            .map_err(|error| error.to_string())?;
        parts.config_version.store(config_version, Ordering::SeqCst);
        tracing::info!(
            node_id = %parts.audience.node,
            deployment_id = %parts.audience.deployment,
            records = records.len(),
            config_version,
            "task runner loaded its state"
        );
        let core = WardenCore::new(
            parts.audience.clone(),
            parts.clock_skew,
            records,
            config_version,
        );
        Ok(Self {
            core: Some(core),
            parts,
        })
    }
}

impl Actor for TaskRunner {
    type Context = Context<Self>;
}

impl Handler<PulledTask> for TaskRunner {
    type Result = ResponseActFuture<Self, Result<(), String>>;

    fn handle(&mut self, PulledTask(delivery): PulledTask, _: &mut Self::Context) -> Self::Result {
        let Some(mut core) = self.core.take() else {
            return Box::pin(fut::ready(Err(
                "task core lost by an earlier failure".to_owned()
            )));
        };
        let parts = self.parts.clone();
        let work = async move {
            let mut io = ProductionIo {
                parts: &parts,
                delivery: &delivery,
            };
            let pulled = Pulled {
                payload: &delivery.payload,
                stream_sequence: delivery.stream_sequence,
            };
            let result = handle_pulled(&mut core, &mut io, pulled).await;
            (core, result)
        };
        Box::pin(work.into_actor(self).map(|(core, result), runner, ctx| match result {
            Ok(()) => {
                runner.parts.config_version.store(core.config_version(), Ordering::SeqCst);
                runner.core = Some(core);
                Ok(())
            }
            Err(failure) => {
                // The core may be ahead of the disk now; stop, and the restart reloads it.
                tracing::error!(node_id = %runner.parts.audience.node, error = %failure, "task handling failed; restarting the task runner");
                ctx.stop();
                Err(failure.to_string())
            }
        }))
    }
}

struct ProductionIo<'a> {
    parts: &'a RunnerParts,
    delivery: &'a Delivery,
}

impl ProductionIo<'_> {
    #[cfg(debug_assertions)]
    fn failpoint(&self, name: &str) {
        if self.parts.failpoint.as_deref() == Some(name) {
            tracing::error!(failpoint = name, "failpoint reached; aborting the process");
            std::process::abort();
        }
    }

    #[cfg(not(debug_assertions))]
    fn failpoint(&self, _name: &str) {}
}

impl NodeIo for ProductionIo<'_> {
    async fn persist(&mut self, record: &TaskRecord) -> Result<(), IoFailure> {
        self.parts
            .store
            .persist(record)
            .await
            .map_err(|error| IoFailure {
                operation: "persisting a task record",
                reason: error.to_string(),
            })
    }

    async fn execute(&mut self, task: &VerifiedTask) -> ExecutionOutcome {
        tracing::info!(
            node_id = %self.parts.audience.node,
            deployment_id = %self.parts.audience.deployment,
            task_id = %task.id(),
            kind = task.action().kind(),
            "executing task"
        );
        let outcome = self.parts.executor.execute(task).await;
        match &outcome {
            Ok(_) => tracing::info!(task_id = %task.id(), "task succeeded"),
            Err(reason) => tracing::warn!(task_id = %task.id(), reason = %reason, "task failed"),
        }
        outcome
    }

    async fn report(&mut self, report: &TaskReport) -> Result<(), IoFailure> {
        let failure = |reason: String| IoFailure {
            operation: "publishing a task report",
            reason,
        };
        let id = report_message_id(report, self.delivery.stream_sequence);
        let bytes = Envelope::seal(id.clone(), report)
            .and_then(|envelope| envelope.encode())
            .map_err(|error| failure(error.to_string()))?;
        let subject = Subject::telemetry(&report.deployment, &report.node, TelemetryKind::Report);
        self.parts
            .bus
            .persist(&subject, bytes.into(), Some(id.as_str()))
            .await
            .map_err(|error| failure(error.to_string()))?;
        Ok(())
    }

    async fn ack(&mut self) -> Result<(), IoFailure> {
        self.failpoint("crash-before-ack");
        self.delivery.ack().await.map_err(|error| IoFailure {
            operation: "acknowledging a task",
            reason: error.to_string(),
        })
    }

    fn now(&self) -> UnixMillis {
        self.parts.clock.now()
    }
}

/// Derives a report's message id from its content and the delivery, so the broker drops a
/// report republished for the same message and keeps one for a different message.
pub fn report_message_id(report: &TaskReport, stream_sequence: u64) -> MessageId {
    let status = match &report.status {
        ReportStatus::Delivered => "delivered".to_owned(),
        ReportStatus::Succeeded { .. } => "succeeded".to_owned(),
        ReportStatus::Failed { .. } => "failed".to_owned(),
        ReportStatus::Rejected { code, .. } => format!("rejected-{code}"),
    };
    let mut hasher = Sha256::new();
    hasher.update(report.task_id.as_str().as_bytes());
    hasher.update([0]);
    hasher.update(status.as_bytes());
    hasher.update([0]);
    hasher.update(stream_sequence.to_be_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    for (slot, byte) in bytes.iter_mut().zip(digest.iter()) {
        *slot = *byte;
    }
    MessageId::from_random(bytes)
}
