//! The task runner: an actor around [`WardenCore`] that handles one pulled message at a time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use sha2::{Digest, Sha256};
use warden_actors::clock::SharedClock;
use warden_bus::messages::Component;
use warden_bus::{
    Bus, Delivery, Envelope, MessageId, ReportStatus, SigningKey, Subject, TaskAction, TaskId,
    TaskReport, TelemetryKind, UnixMillis,
};

use crate::core::record::TaskRecord;
use crate::core::self_upgrade::SWITCH_EXIT_STATUS;
use crate::core::verify::{Identity, Limits, VerifiedTask};
use crate::core::{ExecutionOutcome, Persisted, Pulled, WardenCore};
use crate::executor::{Executor, SelfUpgradeOutcome};
use crate::pipeline::{handle_pulled, prune, IoFailure, NodeIo};
use crate::store::TaskStore;

/// How often a running task tells the broker it is still in progress; below the smallest ack
/// wait the control plane sets by default (30 s).
pub const IN_PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

/// How often the runner forgets records past their expiry.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

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
    /// This node and its approval key.
    pub identity: Identity,
    /// Clock skew and task validity limits.
    pub limits: Limits,
    /// Persistent state.
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
    /// The node's own key, which signs reports.
    pub node_key: SigningKey,
    /// Whether the node manages access rules.
    pub access_managed: bool,
}

/// Owns the task core; rebuilt from the store whenever it restarts.
pub struct TaskRunner {
    core: Option<WardenCore>,
    parts: RunnerParts,
}

impl TaskRunner {
    /// Loads the records, trust document, latest time seen and configuration version from disk.
    pub fn load(parts: RunnerParts) -> Result<Self, String> {
        let records = parts.store.load().map_err(|error| error.to_string())?;
        let config_version = parts
            .executor
            .config_version_on_disk()
            .map_err(|error| error.to_string())?;
        let signed_trust = parts
            .store
            .load_trust()
            .map_err(|error| error.to_string())?
            .ok_or("no trust document is stored; the Warden stores one at start")?;
        let trust = signed_trust
            .document_unverified()
            .map_err(|error| error.to_string())?;
        let clock_high_water = parts
            .store
            .load_clock()
            .map_err(|error| error.to_string())?;
        let access_version = if parts.access_managed {
            let stored = parts
                .store
                .load_access()
                .map_err(|error| error.to_string())?;
            Some(stored.map_or(0, |record| record.version))
        } else {
            None
        };
        parts.config_version.store(config_version, Ordering::SeqCst);
        tracing::info!(
            node_id = %parts.identity.node,
            deployment_id = %parts.identity.deployment,
            records = records.len(),
            config_version,
            trust_version = trust.version,
            "task runner loaded its state"
        );
        let persisted = Persisted {
            records,
            config_version,
            trust,
            clock_high_water,
            installed: parts.executor.installed_counters(),
            access_version,
        };
        let core = WardenCore::new(parts.identity.clone(), parts.limits, persisted);
        Ok(Self {
            core: Some(core),
            parts,
        })
    }
}

impl Actor for TaskRunner {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(PRUNE_INTERVAL, |runner, ctx| {
            let Some(mut core) = runner.core.take() else {
                return;
            };
            let parts = runner.parts.clone();
            let work = async move {
                let mut io = ProductionIo {
                    parts: &parts,
                    delivery: None,
                };
                let result = prune(&mut core, &mut io).await;
                (core, result)
            };
            // wait: no delivery is handled while records are being deleted.
            ctx.wait(
                work.into_actor(runner).map(|(core, result), runner, ctx| {
                    runner.finish(core, result, ctx).unwrap_or(())
                }),
            );
        });
    }
}

impl TaskRunner {
    fn finish(
        &mut self,
        core: WardenCore,
        result: Result<(), IoFailure>,
        ctx: &mut Context<Self>,
    ) -> Result<(), String> {
        match result {
            Ok(()) => {
                self.parts
                    .config_version
                    .store(core.config_version(), Ordering::SeqCst);
                self.core = Some(core);
                Ok(())
            }
            Err(failure) => {
                // The core may be ahead of the disk now; stop, and the restart reloads it.
                tracing::error!(node_id = %self.parts.identity.node, error = %failure, "task handling failed; restarting the task runner");
                ctx.stop();
                Err(failure.to_string())
            }
        }
    }
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
                delivery: Some(&delivery),
            };
            let pulled = Pulled {
                payload: &delivery.payload,
                stream_sequence: delivery.stream_sequence,
            };
            let result = handle_pulled(&mut core, &mut io, pulled).await;
            (core, result)
        };
        Box::pin(
            work.into_actor(self)
                .map(|(core, result), runner, ctx| runner.finish(core, result, ctx)),
        )
    }
}

struct ProductionIo<'a> {
    parts: &'a RunnerParts,
    delivery: Option<&'a Delivery>,
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

    fn delivery(&self, operation: &'static str) -> Result<&Delivery, IoFailure> {
        self.delivery.ok_or(IoFailure {
            operation,
            reason: "no delivery is being handled".into(),
        })
    }
}

fn store_failure(operation: &'static str) -> impl Fn(crate::store::StoreError) -> IoFailure {
    move |error| IoFailure {
        operation,
        reason: error.to_string(),
    }
}

impl ProductionIo<'_> {
    /// Ends the process so the launcher starts the new binary. The task stays recorded as
    /// started and unacknowledged; asking for its redelivery now spares the new agent the
    /// broker's ack wait.
    async fn switch_binary(&self, task: &VerifiedTask) -> ! {
        if let Some(delivery) = self.delivery {
            if let Err(error) = delivery.nak(None).await {
                tracing::warn!(task_id = %task.id(), error = %error, "failed to ask for redelivery; the new binary gets the task after the ack wait");
            }
        }
        tracing::info!(node_id = %self.parts.identity.node, task_id = %task.id(), "exiting for the switch to the new Warden binary");
        std::process::exit(SWITCH_EXIT_STATUS)
    }
}

impl NodeIo for ProductionIo<'_> {
    async fn persist(&mut self, record: &TaskRecord) -> Result<(), IoFailure> {
        self.parts
            .store
            .persist(record)
            .await
            .map_err(store_failure("persisting a task record"))
    }

    async fn forget(&mut self, ids: &[TaskId]) -> Result<(), IoFailure> {
        self.parts
            .store
            .forget(ids)
            .await
            .map_err(store_failure("deleting expired task records"))?;
        tracing::info!(node_id = %self.parts.identity.node, records = ids.len(), "forgot task records past their expiry");
        Ok(())
    }

    async fn persist_clock(&mut self, time: UnixMillis) -> Result<(), IoFailure> {
        self.parts
            .store
            .persist_clock(time)
            .await
            .map_err(store_failure("recording the latest time seen"))
    }

    async fn execute(&mut self, task: &VerifiedTask) -> ExecutionOutcome {
        tracing::info!(
            node_id = %self.parts.identity.node,
            deployment_id = %self.parts.identity.deployment,
            task_id = %task.id(),
            kind = task.action().kind(),
            "executing task"
        );
        let outcome = match task.action() {
            // The trust document is state of the Warden itself, kept in its store.
            TaskAction::UpdateTrust(update) => {
                match self.parts.store.persist_trust(&update.document).await {
                    Ok(()) => {
                        let version = update
                            .document
                            .document_unverified()
                            .map(|doc| doc.version)
                            .unwrap_or(0);
                        Ok([("trust_version".to_owned(), version.to_string())].into())
                    }
                    Err(error) => Err(format!("failed to store the trust document: {error}")),
                }
            }
            TaskAction::UpgradeComponent(upgrade) if upgrade.component == Component::Warden => {
                let work = self.parts.executor.self_upgrade(task);
                match while_in_progress(self.delivery, task, work).await {
                    SelfUpgradeOutcome::Finished(outcome) => outcome,
                    SelfUpgradeOutcome::Switch => self.switch_binary(task).await,
                }
            }
            _ => {
                let work = self.parts.executor.execute(task);
                while_in_progress(self.delivery, task, work).await
            }
        };
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
        let sequence = self.delivery("publishing a task report")?.stream_sequence;
        let id = report_message_id(report, sequence, &self.parts.node_key.seed());
        let bytes = Envelope::seal(id.clone(), report)
            .and_then(|envelope| self.parts.node_key.sign(&envelope))
            .and_then(|signed| signed.encode())
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
        self.delivery("acknowledging a task")?
            .ack()
            .await
            .map_err(|error| IoFailure {
                operation: "acknowledging a task",
                reason: error.to_string(),
            })
    }

    async fn retry(&mut self, delay: Duration) -> Result<(), IoFailure> {
        self.delivery("asking for redelivery")?
            .nak(Some(delay))
            .await
            .map_err(|error| IoFailure {
                operation: "asking for redelivery",
                reason: error.to_string(),
            })
    }

    fn now(&self) -> UnixMillis {
        self.parts.clock.now()
    }
}

/// Runs `work`, telling the broker every [`IN_PROGRESS_INTERVAL`] that the task is still
/// running, because a component task can outlast the broker's ack wait and would otherwise be
/// redelivered meanwhile.
async fn while_in_progress<T>(
    delivery: Option<&Delivery>,
    task: &VerifiedTask,
    work: impl std::future::Future<Output = T>,
) -> T {
    tokio::pin!(work);
    let mut ticker = tokio::time::interval(IN_PROGRESS_INTERVAL);
    ticker.tick().await;
    loop {
        tokio::select! {
            outcome = &mut work => return outcome,
            _ = ticker.tick() => {
                if let Some(delivery) = delivery {
                    if let Err(error) = delivery.in_progress().await {
                        tracing::warn!(task_id = %task.id(), error = %error, "failed to mark the task in progress");
                    }
                }
            }
        }
    }
}

/// Derives a report's message id from its content and the delivery, so the broker drops a
/// report republished for the same message and keeps one for a different message. The id is
/// keyed with the node's secret so no one else can predict it and take it first, which would
/// make the broker drop the real report as a duplicate.
pub fn report_message_id(
    report: &TaskReport,
    stream_sequence: u64,
    secret: &[u8; 32],
) -> MessageId {
    let status = match &report.status {
        ReportStatus::Delivered => "delivered".to_owned(),
        ReportStatus::Succeeded { .. } => "succeeded".to_owned(),
        ReportStatus::Failed { .. } => "failed".to_owned(),
        ReportStatus::Rejected { code, .. } => format!("rejected-{code}"),
    };
    let mut hasher = Sha256::new();
    hasher.update(b"warden report id\0");
    hasher.update(secret);
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
