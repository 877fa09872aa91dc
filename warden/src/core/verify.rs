//! Task verification: the checks a task must pass before a Warden acts on it.
//!
//! The checks run in a fixed order and the first failure decides the [`RejectCode`]:
//! decode, known key, valid signature, body, deployment, node, then (in the caller) the
//! execution record, expiry, kind and parameters. Only [`check_window_and_action`] builds a
//! [`VerifiedTask`],
//! so code that executes tasks cannot be handed one that skipped a check.

use std::time::Duration;

use warden_bus::messages::ActionError;
use warden_bus::signed::SignatureError;
use warden_bus::{
    DeploymentId, Keyring, NodeId, RejectCode, SignedEnvelope, Task, TaskAction, TaskId, UnixMillis,
};

/// A task whose signature, audience and validity window were checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedTask {
    task: Task,
    action: TaskAction,
}

impl VerifiedTask {
    /// The task as signed.
    pub fn task(&self) -> &Task {
        &self.task
    }

    /// The decoded action.
    pub fn action(&self) -> &TaskAction {
        &self.action
    }

    /// The task id.
    pub fn id(&self) -> &TaskId {
        &self.task.id
    }
}

/// A task that failed a check, with the id it claimed if one could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The check that failed.
    pub code: RejectCode,
    /// What exactly was wrong.
    pub detail: String,
    /// The task id from the message. Unverified when the code is a signature or decode failure.
    pub claimed_id: Option<TaskId>,
}

impl Rejection {
    fn new(code: RejectCode, detail: impl Into<String>, claimed_id: Option<TaskId>) -> Self {
        Self {
            code,
            detail: detail.into(),
            claimed_id,
        }
    }
}

/// Whom a Warden acts for and which keys it trusts.
#[derive(Debug, Clone)]
pub struct Audience {
    /// This node's deployment.
    pub deployment: DeploymentId,
    /// This node.
    pub node: NodeId,
    /// Keys whose task signatures this node accepts.
    pub keyring: Keyring,
}

/// Runs the signature and audience checks and decodes the task.
///
/// Time and replay are checked by [`check_window`] and by the caller's execution records,
/// because a redelivered task must be recognised even after it expired.
pub fn verify_signed(bytes: &[u8], audience: &Audience) -> Result<Task, Rejection> {
    let signed = SignedEnvelope::decode(bytes)
        .map_err(|error| Rejection::new(RejectCode::Malformed, error.to_string(), None))?;
    let envelope = signed.verify(&audience.keyring).map_err(|error| {
        let claimed_id = claimed_id(&signed);
        match error {
            SignatureError::UnknownKey { .. } => {
                Rejection::new(RejectCode::UnknownKey, error.to_string(), claimed_id)
            }
            SignatureError::BadSignature { .. } => {
                Rejection::new(RejectCode::BadSignature, error.to_string(), claimed_id)
            }
            other => Rejection::new(RejectCode::Malformed, other.to_string(), claimed_id),
        }
    })?;
    let task: Task = envelope
        .open()
        .map_err(|error| Rejection::new(RejectCode::Malformed, error.to_string(), None))?;
    if task.deployment != audience.deployment {
        return Err(Rejection::new(
            RejectCode::WrongDeployment,
            format!(
                "task {} is for deployment {} but this node belongs to {}",
                task.id, task.deployment, audience.deployment
            ),
            Some(task.id),
        ));
    }
    if task.node != audience.node {
        return Err(Rejection::new(
            RejectCode::WrongNode,
            format!(
                "task {} is for node {} but this is node {}",
                task.id, task.node, audience.node
            ),
            Some(task.id),
        ));
    }
    Ok(task)
}

/// Checks the validity window with `skew` of tolerance on each side, then decodes the action.
pub fn check_window_and_action(
    task: Task,
    now: UnixMillis,
    skew: Duration,
) -> Result<VerifiedTask, Rejection> {
    let id = Some(task.id.clone());
    if now.saturating_sub(skew) > task.expires_at {
        return Err(Rejection::new(
            RejectCode::Expired,
            format!(
                "task {} expired at {} and it is now {} (clock skew tolerance {}s)",
                task.id,
                task.expires_at,
                now,
                skew.as_secs()
            ),
            id,
        ));
    }
    if now.saturating_add(skew) < task.not_before {
        return Err(Rejection::new(
            RejectCode::NotYetValid,
            format!(
                "task {} is not valid before {} and it is now {} (clock skew tolerance {}s)",
                task.id,
                task.not_before,
                now,
                skew.as_secs()
            ),
            id,
        ));
    }
    let action = task.action().map_err(|error| match error {
        ActionError::UnknownKind { .. } => {
            Rejection::new(RejectCode::UnknownKind, error.to_string(), id.clone())
        }
        _ => Rejection::new(RejectCode::InvalidParams, error.to_string(), id.clone()),
    })?;
    Ok(VerifiedTask { task, action })
}

fn claimed_id(signed: &SignedEnvelope) -> Option<TaskId> {
    let envelope = signed.decode_unverified().ok()?;
    envelope.open::<Task>().ok().map(|task| task.id)
}
