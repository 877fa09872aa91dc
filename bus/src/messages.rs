//! Typed message bodies: tasks for nodes, task reports and heartbeats from nodes.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::envelope::{decode, encode, Message, MessageType, WireError};
use crate::ids::{DeploymentId, NodeId, TaskId};
use crate::time::UnixMillis;

/// Maximum size of an Iggy configuration document carried by [`ApplyConfig`], in bytes.
pub const CONFIG_BYTES_MAX: usize = 128 * 1024;

/// Maximum length of a free-text reason or detail in a report, in bytes. Longer text is cut.
pub const REASON_BYTES_MAX: usize = 2048;

/// A unit of work for exactly one node. It only travels inside a signed envelope.
///
/// The action is carried as a kind name and encoded parameters, so that a Warden can decode and
/// report a task whose kind it does not know instead of failing on the whole message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Unique id; a Warden executes each id at most once.
    pub id: TaskId,
    /// Deployment of the node the task is for.
    pub deployment: DeploymentId,
    /// The node the task is for.
    pub node: NodeId,
    /// When the control plane issued the task.
    pub issued_at: UnixMillis,
    /// Earliest time the node may execute the task.
    pub not_before: UnixMillis,
    /// Time after which the node must reject the task.
    pub expires_at: UnixMillis,
    /// Name of the action, one of [`TaskAction::kind`].
    pub kind: String,
    /// MessagePack encoding of the action's parameters.
    #[serde(with = "serde_bytes")]
    pub params: Vec<u8>,
}

impl Message for Task {
    const TYPE: MessageType = MessageType::Task;
}

impl Task {
    /// Decodes the action named by `kind` from `params`.
    pub fn action(&self) -> Result<TaskAction, ActionError> {
        TaskAction::from_parts(&self.kind, &self.params)
    }
}

/// The closed set of actions a task can ask for. None of them carries a command to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskAction {
    /// Write the Iggy server configuration file.
    ApplyConfig(ApplyConfig),
    /// Report facts about the node.
    CollectDiagnostics,
}

/// Parameters of [`TaskAction::ApplyConfig`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyConfig {
    /// Version of the document; a node applies only versions above the one it has.
    pub version: u64,
    /// The Iggy server configuration, TOML text.
    pub content: String,
}

impl fmt::Debug for ApplyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApplyConfig")
            .field("version", &self.version)
            .field("content_bytes", &self.content.len())
            .finish()
    }
}

/// Why a task's action could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ActionError {
    /// The kind is not one this build knows.
    #[error("unknown task kind {kind:?}; known kinds are {known}", known = TaskAction::KINDS.join(", "))]
    UnknownKind {
        /// The kind name from the task, cut to 64 bytes.
        kind: String,
    },
    /// The parameters do not decode or do not pass validation.
    #[error("invalid parameters for {kind} task: {reason}")]
    InvalidParams {
        /// The kind name.
        kind: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl TaskAction {
    /// Kind names of every action, in the order of the enum.
    pub const KINDS: &'static [&'static str] = &["apply_config", "collect_diagnostics"];

    /// The kind name carried in [`Task::kind`].
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ApplyConfig(_) => "apply_config",
            Self::CollectDiagnostics => "collect_diagnostics",
        }
    }

    /// Encodes the parameters carried in [`Task::params`].
    pub fn encode_params(&self) -> Result<Vec<u8>, WireError> {
        match self {
            Self::ApplyConfig(params) => encode("apply_config parameters", params),
            Self::CollectDiagnostics => encode("collect_diagnostics parameters", &()),
        }
    }

    /// Decodes and validates an action from its kind name and parameters.
    pub fn from_parts(kind: &str, params: &[u8]) -> Result<Self, ActionError> {
        match kind {
            "apply_config" => {
                let invalid = |reason: String| ActionError::InvalidParams {
                    kind: "apply_config",
                    reason,
                };
                let params: ApplyConfig = decode("apply_config parameters", params)
                    .map_err(|e| invalid(e.to_string()))?;
                params.validate().map_err(invalid)?;
                Ok(Self::ApplyConfig(params))
            }
            "collect_diagnostics" => {
                decode::<()>("collect_diagnostics parameters", params).map_err(|error| {
                    ActionError::InvalidParams {
                        kind: "collect_diagnostics",
                        reason: error.to_string(),
                    }
                })?;
                Ok(Self::CollectDiagnostics)
            }
            other => Err(ActionError::UnknownKind {
                kind: truncate(other, 64),
            }),
        }
    }
}

impl ApplyConfig {
    /// Checks the size cap and that the content is TOML text without NUL bytes.
    pub fn validate(&self) -> Result<(), String> {
        if self.version == 0 {
            return Err("version 0 is reserved for 'no configuration'; use 1 or higher".into());
        }
        if self.content.len() > CONFIG_BYTES_MAX {
            return Err(format!(
                "configuration of {} bytes is over the maximum of {CONFIG_BYTES_MAX} bytes",
                self.content.len()
            ));
        }
        if self.content.contains('\0') {
            return Err("configuration contains a NUL byte; it must be TOML text".into());
        }
        Ok(())
    }
}

/// Progress or outcome of one task, sent by the node it was for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskReport {
    /// The task this report is about. For a rejected task this is the id the task claimed,
    /// which may be forged.
    pub task_id: TaskId,
    /// Deployment of the reporting node.
    pub deployment: DeploymentId,
    /// The reporting node.
    pub node: NodeId,
    /// When the node made the report, by its clock.
    pub at: UnixMillis,
    /// What happened.
    pub status: ReportStatus,
}

impl Message for TaskReport {
    const TYPE: MessageType = MessageType::TaskReport;
}

/// What a node reports about a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportStatus {
    /// The node accepted the task and starts executing it.
    Delivered,
    /// The task ran and its effect is in place.
    Succeeded {
        /// Facts the action returned.
        output: BTreeMap<String, String>,
    },
    /// The task was accepted but its effect could not be made.
    Failed {
        /// What went wrong.
        reason: String,
    },
    /// The task was not executed because it did not pass a check.
    Rejected {
        /// Which check failed.
        code: RejectCode,
        /// Details for the operator.
        detail: String,
    },
}

impl ReportStatus {
    /// A failure with its reason cut to [`REASON_BYTES_MAX`].
    pub fn failed(reason: impl AsRef<str>) -> Self {
        Self::Failed {
            reason: truncate(reason.as_ref(), REASON_BYTES_MAX),
        }
    }

    /// A rejection with its detail cut to [`REASON_BYTES_MAX`].
    pub fn rejected(code: RejectCode, detail: impl AsRef<str>) -> Self {
        Self::Rejected {
            code,
            detail: truncate(detail.as_ref(), REASON_BYTES_MAX),
        }
    }
}

/// The check a rejected task failed. Each has its own code so operators and tests can tell
/// them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RejectCode {
    /// The message could not be decoded.
    Malformed,
    /// Signed by a key the node does not trust.
    UnknownKey,
    /// The signature does not verify.
    BadSignature,
    /// Addressed to another deployment.
    WrongDeployment,
    /// Addressed to another node.
    WrongNode,
    /// Past its expiry time.
    Expired,
    /// Before its not-before time.
    NotYetValid,
    /// A task with this id was already executed, from another message.
    Replayed,
    /// The kind is not in the vocabulary.
    UnknownKind,
    /// The parameters are invalid.
    InvalidParams,
    /// The document version is not above the applied one.
    StaleVersion,
    /// A code from a newer build that this build does not know.
    #[serde(other)]
    Unrecognized,
}

impl RejectCode {
    /// The code as written on the wire and shown to operators.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnknownKey => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::WrongDeployment => "wrong_deployment",
            Self::WrongNode => "wrong_node",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::Replayed => "replayed",
            Self::UnknownKind => "unknown_kind",
            Self::InvalidParams => "invalid_params",
            Self::StaleVersion => "stale_version",
            Self::Unrecognized => "unrecognized",
        }
    }
}

impl fmt::Display for RejectCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Liveness beacon a node sends on an interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Deployment of the node.
    pub deployment: DeploymentId,
    /// The node.
    pub node: NodeId,
    /// Counter that starts at 1 when the Warden process starts.
    pub sequence: u64,
    /// When the node sent the heartbeat, by its clock.
    pub sent_at: UnixMillis,
    /// Version of the Warden binary.
    pub warden_version: String,
    /// Version of the applied Iggy configuration, 0 if none.
    pub config_version: u64,
}

impl Message for Heartbeat {
    const TYPE: MessageType = MessageType::Heartbeat;
}

/// Cuts `text` to at most `max` bytes on a character boundary.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default().to_owned()
}
