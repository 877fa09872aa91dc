//! Task verification: the checks a task must pass before a Warden acts on it.
//!
//! The checks run in a fixed order and the first failure decides the [`RejectCode`]:
//!
//! 1. size cap, then decoding of the signed envelope;
//! 2. the signing key is a task key of the current trust document, and the signature verifies;
//! 3. the task body decodes and names the same key id;
//! 4. every approval signature verifies with the deployment's approval key;
//! 5. the task is for this deployment and this node;
//! 6. (the caller's execution records: redelivery or replay);
//! 7. the trust document has not expired, unless the task replaces it;
//! 8. the signing key is inside its validity window;
//! 9. the task's validity is well formed and no longer than the maximum;
//! 10. the task is not expired and not before its start;
//! 11. the kind is in the vocabulary and its parameters are valid;
//! 12. an action that needs approval has it.
//!
//! Only [`check_window_and_action`] builds a [`VerifiedTask`], so code that executes tasks cannot
//! be handed one that skipped a check.

use std::time::Duration;

use warden_bus::messages::ActionError;

use super::release::VerifiedRelease;
use warden_bus::trust::{KeyGrant, TrustDocument};
use warden_bus::{
    DeploymentId, NodeId, PublicKey, RejectCode, SignedEnvelope, Task, TaskAction, TaskId,
    UnixMillis, ENVELOPE_BYTES_MAX,
};

/// Default maximum time between a task's issue and its expiry.
pub const TASK_VALIDITY_MAX_DEFAULT: Duration = Duration::from_secs(3600);

/// A task whose signature, audience and validity window were checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedTask {
    task: Task,
    action: TaskAction,
    release: Option<Box<VerifiedRelease>>,
}

impl VerifiedTask {
    /// Returns the task as signed.
    pub fn task(&self) -> &Task {
        &self.task
    }

    /// Returns the decoded action.
    pub fn action(&self) -> &TaskAction {
        &self.action
    }

    /// Returns the task id.
    pub fn id(&self) -> &TaskId {
        &self.task.id
    }

    /// Returns the checked release of an upgrade task.
    pub fn release(&self) -> Option<&VerifiedRelease> {
        self.release.as_deref()
    }

    /// Attaches the release that [`super::release::check_upgrade`] accepted.
    pub(crate) fn with_release(mut self, release: VerifiedRelease) -> Self {
        self.release = Some(Box::new(release));
        self
    }
}

/// Whether a rejection comes from a time check (trust expiry, key window, task window), which a
/// task can pass at one moment and fail later.
pub fn is_time_check(code: RejectCode) -> bool {
    matches!(
        code,
        RejectCode::TrustExpired
            | RejectCode::KeyOutsideWindow
            | RejectCode::Expired
            | RejectCode::NotYetValid
    )
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
    /// A rejection of the task with `id`.
    pub fn new(code: RejectCode, detail: impl Into<String>, claimed_id: Option<TaskId>) -> Self {
        Self {
            code,
            detail: detail.into(),
            claimed_id,
        }
    }
}

/// Whom a Warden acts for.
#[derive(Debug, Clone)]
pub struct Identity {
    /// This node's deployment.
    pub deployment: DeploymentId,
    /// This node.
    pub node: NodeId,
    /// The customer approval key pinned for this deployment, if any.
    pub approval_key: Option<PublicKey>,
}

/// The times a task's window is judged against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// The clock's reading now.
    pub clock: UnixMillis,
    /// The latest time the Warden has recorded. Expiry is judged against the later of the two.
    pub latest_seen: UnixMillis,
}

/// Limits a Warden applies to every task.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Tolerated clock difference on each side of a time comparison.
    pub clock_skew: Duration,
    /// Maximum time between a task's issue and its expiry.
    pub validity_max: Duration,
}

/// A task whose signature checked out, before its time and content checks.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The task body.
    pub task: Task,
    /// The grant of the key that signed it.
    pub grant: KeyGrant,
    /// Whether the deployment's approval key signed it too.
    pub approved: bool,
}

/// Runs checks 1 to 5.
pub fn verify_signed(
    bytes: &[u8],
    identity: &Identity,
    trust: &TrustDocument,
) -> Result<Signed, Rejection> {
    if bytes.len() > ENVELOPE_BYTES_MAX {
        let detail = format!(
            "task message of {} bytes is over the maximum of {ENVELOPE_BYTES_MAX}",
            bytes.len()
        );
        return Err(Rejection::new(RejectCode::Oversized, detail, None));
    }
    let signed = SignedEnvelope::decode(bytes)
        .map_err(|error| Rejection::new(RejectCode::Malformed, error.to_string(), None))?;
    let Some((grant, key)) = trust.task_key(&signed.key_id) else {
        let detail = format!(
            "task signed by unknown key {}; trust document version {} does not list it",
            signed.key_id, trust.version
        );
        return Err(Rejection::new(
            RejectCode::UnknownKey,
            detail,
            claimed_id(&signed),
        ));
    };
    let envelope = signed.verify_with(&key).map_err(|error| {
        Rejection::new(
            RejectCode::BadSignature,
            error.to_string(),
            claimed_id(&signed),
        )
    })?;
    let task: Task = envelope
        .open()
        .map_err(|error| Rejection::new(RejectCode::Malformed, error.to_string(), None))?;
    if task.key_id != signed.key_id {
        let detail = format!(
            "task {} names key {} but is signed by {}",
            task.id, task.key_id, signed.key_id
        );
        return Err(Rejection::new(RejectCode::Malformed, detail, Some(task.id)));
    }

    // Every approval must verify, so no unverifiable bytes ride along with a task.
    let approved = !signed.approvals.is_empty();
    for approval in &signed.approvals {
        let valid = identity
            .approval_key
            .as_ref()
            .is_some_and(|key| key.verify_signature(&signed.body, approval));
        if !valid {
            let detail = format!(
                "task {} carries an approval by {} that does not verify with this deployment's approval key",
                task.id, approval.key_id
            );
            return Err(Rejection::new(
                RejectCode::ApprovalInvalid,
                detail,
                Some(task.id),
            ));
        }
    }

    if task.deployment != identity.deployment {
        let detail = format!(
            "task {} is for deployment {} but this node belongs to {}",
            task.id, task.deployment, identity.deployment
        );
        return Err(Rejection::new(
            RejectCode::WrongDeployment,
            detail,
            Some(task.id),
        ));
    }
    if task.node != identity.node {
        let detail = format!(
            "task {} is for node {} but this is node {}",
            task.id, task.node, identity.node
        );
        return Err(Rejection::new(RejectCode::WrongNode, detail, Some(task.id)));
    }
    Ok(Signed {
        task,
        grant: grant.clone(),
        approved,
    })
}

/// Runs checks 7 to 12.
pub fn check_window_and_action(
    signed: Signed,
    trust: &TrustDocument,
    identity: &Identity,
    times: Now,
    limits: Limits,
) -> Result<VerifiedTask, Rejection> {
    let now = times.clock;
    let Signed {
        task,
        grant,
        approved,
    } = signed;
    let id = Some(task.id.clone());
    let skew = limits.clock_skew;
    let reject = |code: RejectCode, detail: String| Err(Rejection::new(code, detail, id.clone()));

    if now.saturating_sub(skew) > trust.expires_at && task.kind != "update_trust" {
        return reject(
            RejectCode::TrustExpired,
            format!(
                "trust document version {} expired at {}; only an update_trust task is accepted until a newer one arrives",
                trust.version, trust.expires_at
            ),
        );
    }
    if !grant.is_valid_at(now, skew) {
        return reject(
            RejectCode::KeyOutsideWindow,
            format!(
                "task {} is signed by key {} whose validity is {} to {}, and it is now {now}",
                task.id, task.key_id, grant.not_before, grant.not_after
            ),
        );
    }
    if task.expires_at <= task.not_before || task.not_before < task.issued_at.saturating_sub(skew) {
        return reject(
            RejectCode::Malformed,
            format!(
                "task {} has an invalid window: issued {}, not before {}, expires {}",
                task.id, task.issued_at, task.not_before, task.expires_at
            ),
        );
    }
    let validity = task.expires_at.since(task.issued_at);
    if validity > limits.validity_max {
        return reject(
            RejectCode::ValidityTooLong,
            format!(
                "task {} is valid for {}s, over the maximum of {}s",
                task.id,
                validity.as_secs(),
                limits.validity_max.as_secs()
            ),
        );
    }
    // A record is forgotten once its task expired by the latest time seen, so a copy must be
    // judged expired by that time too, even when the clock has since stepped back.
    let latest = now.max(times.latest_seen);
    if latest.saturating_sub(skew) > task.expires_at {
        return reject(
            RejectCode::Expired,
            format!(
                "task {} expired at {} and it is now {now}, latest seen {latest} (clock skew tolerance {}s)",
                task.id,
                task.expires_at,
                skew.as_secs()
            ),
        );
    }
    if now.saturating_add(skew) < task.not_before {
        return reject(
            RejectCode::NotYetValid,
            format!(
                "task {} is not valid before {} and it is now {now} (clock skew tolerance {}s)",
                task.id,
                task.not_before,
                skew.as_secs()
            ),
        );
    }
    let action = match task.action() {
        Ok(action) => action,
        Err(error @ ActionError::UnknownKind { .. }) => {
            return reject(RejectCode::UnknownKind, error.to_string())
        }
        Err(error) => return reject(RejectCode::InvalidParams, error.to_string()),
    };
    if action.needs_approval() && identity.approval_key.is_some() && !approved {
        return reject(
            RejectCode::ApprovalMissing,
            format!(
                "task {} ({}) needs this deployment's approval signature; approve it with `wardenctl task approve`",
                task.id,
                action.kind()
            ),
        );
    }
    Ok(VerifiedTask {
        task,
        action,
        release: None,
    })
}

fn claimed_id(signed: &SignedEnvelope) -> Option<TaskId> {
    let envelope = signed.decode_unverified().ok()?;
    envelope.open::<Task>().ok().map(|task| task.id)
}
