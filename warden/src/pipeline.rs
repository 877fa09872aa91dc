//! Carries out the core's effects for one pulled message, in order, stopping at the first
//! failure. The production actors and the simulator both run this function, each with its own
//! [`NodeIo`].

use warden_bus::{TaskReport, UnixMillis};

use crate::core::record::TaskRecord;
use crate::core::verify::VerifiedTask;
use crate::core::{Effect, ExecutionOutcome, Pulled, WardenCore};

/// An I/O step that failed; the delivery stays unacknowledged and comes back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{operation} failed: {reason}")]
pub struct IoFailure {
    /// The step.
    pub operation: &'static str,
    /// What went wrong.
    pub reason: String,
}

/// The I/O a Warden performs for one delivery.
#[allow(async_fn_in_trait)] // Used generically, never as a trait object.
pub trait NodeIo {
    /// Writes a record and flushes it to disk.
    async fn persist(&mut self, record: &TaskRecord) -> Result<(), IoFailure>;
    /// Executes a verified task.
    async fn execute(&mut self, task: &VerifiedTask) -> ExecutionOutcome;
    /// Publishes a report and waits until the broker stored it.
    async fn report(&mut self, report: &TaskReport) -> Result<(), IoFailure>;
    /// Acknowledges the delivery.
    async fn ack(&mut self) -> Result<(), IoFailure>;
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
    let mut effects = std::collections::VecDeque::from(core.on_pulled(pulled, io.now()));
    // Each task yields at most two rounds of effects, so this loop is bounded.
    while let Some(effect) = effects.pop_front() {
        match effect {
            Effect::Persist(record) => io.persist(&record).await?,
            Effect::Report(report) => io.report(&report).await?,
            Effect::Ack => io.ack().await?,
            Effect::Execute(task) => {
                let outcome = io.execute(&task).await;
                effects.extend(core.on_executed(outcome, io.now()));
            }
        }
    }
    Ok(())
}
