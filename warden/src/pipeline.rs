//! Carries out the core's effects for one pulled message, in order, stopping at the first
//! failure. The production actors and the simulator both run these functions, each with its
//! own [`NodeIo`].

use std::time::Duration;

use warden_bus::{TaskId, TaskReport, UnixMillis};

use crate::core::record::TaskRecord;
use crate::core::verify::VerifiedTask;
use crate::core::{Effect, ExecutionOutcome, Pulled, WardenCore};

/// An I/O step that failed; the delivery stays unacknowledged and comes back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{operation} failed: {reason}")]
pub struct IoFailure {
    /// The step.
    pub operation: &'static str,
    /// Description of the failure.
    pub reason: String,
}

/// The I/O a Warden performs for one delivery.
#[allow(async_fn_in_trait)] // Used generically, never as a trait object.
pub trait NodeIo {
    /// Writes a record and flushes it to disk.
    async fn persist(&mut self, record: &TaskRecord) -> Result<(), IoFailure>;
    /// Deletes records and flushes.
    async fn forget(&mut self, ids: &[TaskId]) -> Result<(), IoFailure>;
    /// Records the latest time seen and flushes.
    async fn persist_clock(&mut self, time: UnixMillis) -> Result<(), IoFailure>;
    /// Executes a verified task.
    async fn execute(&mut self, task: &VerifiedTask) -> ExecutionOutcome;
    /// Publishes a report and waits until the broker stored it.
    async fn report(&mut self, report: &TaskReport) -> Result<(), IoFailure>;
    /// Acknowledges the delivery.
    async fn ack(&mut self) -> Result<(), IoFailure>;
    /// Asks the broker to deliver the message again after `delay`.
    async fn retry(&mut self, delay: Duration) -> Result<(), IoFailure>;
    /// The current time.
    fn now(&self) -> UnixMillis;
}

/// Handles one pulled message from decision to acknowledgement.
///
/// After an error the in-memory core may be ahead of the disk; the caller must drop it and
/// rebuild it from the store before handling the next message.
pub async fn handle_pulled(
    core: &mut WardenCore,
    io: &mut impl NodeIo,
    pulled: Pulled<'_>,
) -> Result<(), IoFailure> {
    let effects = core.on_pulled(pulled, io.now());
    run_effects(core, io, effects).await
}

/// Forgets records past their expiry plus the clock skew.
pub async fn prune(core: &mut WardenCore, io: &mut impl NodeIo) -> Result<(), IoFailure> {
    let effects = core.prune(io.now());
    run_effects(core, io, effects).await
}

async fn run_effects(
    core: &mut WardenCore,
    io: &mut impl NodeIo,
    effects: Vec<Effect>,
) -> Result<(), IoFailure> {
    let mut effects = std::collections::VecDeque::from(effects);
    // Each task yields at most two rounds of effects, so this loop is bounded.
    while let Some(effect) = effects.pop_front() {
        match effect {
            Effect::PersistClock(time) => io.persist_clock(time).await?,
            Effect::Persist(record) => io.persist(&record).await?,
            Effect::Forget(ids) => io.forget(&ids).await?,
            Effect::Report(report) => io.report(&report).await?,
            Effect::Ack => io.ack().await?,
            Effect::Retry(delay) => io.retry(delay).await?,
            Effect::Execute(task) => {
                let outcome = io.execute(&task).await;
                effects.extend(core.on_executed(outcome, io.now()));
            }
        }
    }
    Ok(())
}
