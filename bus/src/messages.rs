//! Typed message bodies: tasks for nodes, task reports and heartbeats from nodes.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::envelope::{decode, encode, Message, MessageType, WireError};
use crate::ids::{DeploymentId, KeyId, NodeId, TaskId};
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
    /// Unique id. A Warden runs each id once, and again only to finish it after an interruption.
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
    /// Id of the key that signs the task; must match the signed envelope's key id.
    pub key_id: KeyId,
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

/// The closed set of actions a task can ask for. None carries a command, script or path to
/// execute: every parameter is typed data that the Warden validates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskAction {
    /// Write the Iggy server configuration file.
    ApplyConfig(ApplyConfig),
    /// Start a supervised component.
    StartComponent(ComponentTarget),
    /// Stop a supervised component.
    StopComponent(ComponentTarget),
    /// Restart a supervised component.
    RestartComponent(ComponentTarget),
    /// Restart a component with the configuration of a given version.
    ReconfigureComponent(Reconfigure),
    /// Install and start a signed release of a component.
    UpgradeComponent(Upgrade),
    /// Replace the node's access rules.
    ApplyAccessRules(AccessRules),
    /// Renew the node's TLS certificate now.
    RotateCertificate,
    /// Replace the trust document with a newer root-signed one.
    UpdateTrust(UpdateTrust),
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

/// Components a Warden manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    /// The Iggy server.
    Iggy,
    /// The Iggy connectors runtime.
    Connectors,
    /// The Warden itself; only upgrades may name it.
    Warden,
}

impl Component {
    /// Returns the name as written on the wire and in the bootstrap file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Iggy => "iggy",
            Self::Connectors => "connectors",
            Self::Warden => "warden",
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Supervision phase of a component process on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComponentPhase {
    /// No process runs, and none is wanted.
    Stopped,
    /// A process was started and has not passed its health check yet.
    Starting,
    /// The process runs and passes its health checks.
    Running,
    /// The process runs but its latest health checks failed.
    Unhealthy,
    /// The process crashed and is restarted after a delay.
    BackingOff,
    /// The process was asked to stop and has not exited yet.
    Stopping,
    /// The process crashed too often; it stays down until a start task.
    Failed,
    /// A phase from a newer build that this build does not know.
    #[serde(other)]
    Unrecognized,
}

impl ComponentPhase {
    /// Returns the phase as written on the wire and shown to operators.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stopped => "stopped",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Unhealthy => "unhealthy",
            Self::BackingOff => "backing_off",
            Self::Stopping => "stopping",
            Self::Failed => "failed",
            Self::Unrecognized => "unrecognized",
        }
    }
}

impl fmt::Display for ComponentPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One component's state in a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentStatus {
    /// The component.
    pub component: Component,
    /// Its supervision phase.
    pub phase: ComponentPhase,
    /// The live process, if any.
    pub pid: Option<u32>,
    /// The reason for this phase, for operators; at most [`COMPONENT_DETAIL_BYTES_MAX`] bytes.
    pub detail: String,
}

/// Maximum length of [`ComponentStatus::detail`], in bytes.
pub const COMPONENT_DETAIL_BYTES_MAX: usize = 512;

/// Lines of a component's standard output or error, forwarded by its node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentLogs {
    /// Deployment of the node.
    pub deployment: DeploymentId,
    /// The node.
    pub node: NodeId,
    /// The component that wrote the lines.
    pub component: Component,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The lines, each truncated to [`LOG_LINE_BYTES_MAX`] bytes.
    pub lines: Vec<String>,
    /// Lines the node dropped since the previous batch because of the rate bound.
    pub dropped: u64,
    /// When the node sent the batch, by its clock.
    pub sent_at: UnixMillis,
}

/// Maximum length of one forwarded log line, in bytes.
pub const LOG_LINE_BYTES_MAX: usize = 1024;

/// Maximum number of lines in one [`ComponentLogs`] batch.
pub const LOG_LINES_PER_BATCH_MAX: usize = 64;

impl Message for ComponentLogs {
    const TYPE: MessageType = MessageType::ComponentLogs;
}

/// Parameters of start, stop and restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentTarget {
    /// The component; `warden` is not allowed.
    pub component: Component,
}

/// Parameters of [`TaskAction::ReconfigureComponent`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconfigure {
    /// The component; `warden` is not allowed.
    pub component: Component,
    /// Version of the configuration to run with.
    pub config_version: u64,
    /// A data encryption key sealed to the node's key, if the task sets one.
    #[serde(default, with = "serde_bytes")]
    pub sealed_encryption_key: Option<Vec<u8>>,
}

impl fmt::Debug for Reconfigure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reconfigure")
            .field("component", &self.component)
            .field("config_version", &self.config_version)
            .field("sets_encryption_key", &self.sealed_encryption_key.is_some())
            .finish()
    }
}

/// Parameters of [`TaskAction::UpgradeComponent`].
///
/// The task names the component, version, digest and counter, and carries the manifest that a
/// release key signed. A Warden installs only if both agree, so neither the control plane's task
/// key nor a release key alone can make a node run an artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upgrade {
    /// The component, `warden` included.
    pub component: Component,
    /// Release version, such as `0.8.1`.
    pub version: String,
    /// SHA-256 of the artifact.
    #[serde(with = "serde_bytes")]
    pub sha256: Vec<u8>,
    /// Monotonic release counter from the manifest.
    pub release_counter: u64,
    /// The manifest signed by a release key of the trust document. Boxed, like the permit,
    /// to keep [`TaskAction`] small.
    pub manifest: Box<crate::release::SignedManifest>,
    /// The root key's permit to go below the installed release counter, if the task does.
    #[serde(default)]
    pub rollback_permit: Option<Box<crate::release::SignedRollbackPermit>>,
}

/// Protocols an access rule can open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// Iggy TCP.
    Tcp,
    /// Iggy QUIC.
    Quic,
    /// Iggy HTTP.
    Http,
    /// Iggy WebSocket.
    Websocket,
}

/// One allowed source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRule {
    /// Source network in CIDR notation, IPv4 or IPv6.
    pub cidr: String,
    /// Protocol the rule opens.
    pub protocol: Protocol,
    /// When the rule closes by itself, if ever.
    #[serde(default)]
    pub expires_at: Option<UnixMillis>,
}

/// Parameters of [`TaskAction::ApplyAccessRules`]: the whole rule set, versioned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRules {
    /// Version of the rule set; a node applies only versions above the one it has.
    pub version: u64,
    /// The rules.
    pub rules: Vec<AccessRule>,
}

/// Parameters of [`TaskAction::UpdateTrust`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateTrust {
    /// The new root-signed trust document.
    pub document: crate::trust::SignedDocument,
}

/// Largest document version accepted: 2^53 - 1, so versions survive JSON and JavaScript, and
/// a typo cannot push a node's version to the end of the range where no later version fits.
pub const DOCUMENT_VERSION_MAX: u64 = (1 << 53) - 1;

/// Maximum number of access rules in one rule set.
pub const ACCESS_RULES_MAX: usize = 256;

/// Maximum size of a sealed encryption key, in bytes.
pub const SEALED_KEY_BYTES_MAX: usize = 512;

/// Error from decoding a task's action.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ActionError {
    /// The kind is not one this build supports.
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
        /// Description of the problem.
        reason: String,
    },
}

impl TaskAction {
    /// Kind names of every action, in the order of the enum.
    pub const KINDS: &'static [&'static str] = &[
        "apply_config",
        "start_component",
        "stop_component",
        "restart_component",
        "reconfigure_component",
        "upgrade_component",
        "apply_access_rules",
        "rotate_certificate",
        "update_trust",
        "collect_diagnostics",
    ];

    /// Returns the kind name carried in [`Task::kind`].
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ApplyConfig(_) => "apply_config",
            Self::StartComponent(_) => "start_component",
            Self::StopComponent(_) => "stop_component",
            Self::RestartComponent(_) => "restart_component",
            Self::ReconfigureComponent(_) => "reconfigure_component",
            Self::UpgradeComponent(_) => "upgrade_component",
            Self::ApplyAccessRules(_) => "apply_access_rules",
            Self::RotateCertificate => "rotate_certificate",
            Self::UpdateTrust(_) => "update_trust",
            Self::CollectDiagnostics => "collect_diagnostics",
        }
    }

    /// Whether the action needs a customer approval signature on deployments that pin an
    /// approval key: access rules, and anything that sets an encryption key.
    pub fn needs_approval(&self) -> bool {
        match self {
            Self::ApplyAccessRules(_) => true,
            Self::ReconfigureComponent(reconfigure) => reconfigure.sealed_encryption_key.is_some(),
            _ => false,
        }
    }

    /// Encodes the parameters carried in [`Task::params`].
    pub fn encode_params(&self) -> Result<Vec<u8>, WireError> {
        let what = "task parameters";
        match self {
            Self::ApplyConfig(params) => encode(what, params),
            Self::StartComponent(params)
            | Self::StopComponent(params)
            | Self::RestartComponent(params) => encode(what, params),
            Self::ReconfigureComponent(params) => encode(what, params),
            Self::UpgradeComponent(params) => encode(what, params),
            Self::ApplyAccessRules(params) => encode(what, params),
            Self::UpdateTrust(params) => encode(what, params),
            Self::RotateCertificate | Self::CollectDiagnostics => encode(what, &()),
        }
    }

    /// Decodes and validates an action from its kind name and parameters.
    pub fn from_parts(kind: &str, params: &[u8]) -> Result<Self, ActionError> {
        let Some(kind) = Self::KINDS.iter().copied().find(|known| *known == kind) else {
            return Err(ActionError::UnknownKind {
                kind: truncate(kind, 64),
            });
        };
        let invalid = |reason: String| ActionError::InvalidParams { kind, reason };
        let what = "task parameters";
        let action = match kind {
            "apply_config" => {
                Self::ApplyConfig(decode(what, params).map_err(|e| invalid(e.to_string()))?)
            }
            "start_component" => {
                Self::StartComponent(decode(what, params).map_err(|e| invalid(e.to_string()))?)
            }
            "stop_component" => {
                Self::StopComponent(decode(what, params).map_err(|e| invalid(e.to_string()))?)
            }
            "restart_component" => {
                Self::RestartComponent(decode(what, params).map_err(|e| invalid(e.to_string()))?)
            }
            "reconfigure_component" => Self::ReconfigureComponent(
                decode(what, params).map_err(|e| invalid(e.to_string()))?,
            ),
            "upgrade_component" => {
                Self::UpgradeComponent(decode(what, params).map_err(|e| invalid(e.to_string()))?)
            }
            "apply_access_rules" => {
                Self::ApplyAccessRules(decode(what, params).map_err(|e| invalid(e.to_string()))?)
            }
            "update_trust" => {
                Self::UpdateTrust(decode(what, params).map_err(|e| invalid(e.to_string()))?)
            }
            "rotate_certificate" => {
                decode::<()>(what, params).map_err(|e| invalid(e.to_string()))?;
                Self::RotateCertificate
            }
            _ => {
                decode::<()>(what, params).map_err(|e| invalid(e.to_string()))?;
                Self::CollectDiagnostics
            }
        };
        action.validate().map_err(invalid)?;
        Ok(action)
    }

    /// Checks the parameters beyond their types.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Self::ApplyConfig(config) => config.validate(),
            Self::StartComponent(target)
            | Self::StopComponent(target)
            | Self::RestartComponent(target) => runtime_component(target.component),
            Self::ReconfigureComponent(reconfigure) => {
                runtime_component(reconfigure.component)?;
                if reconfigure.config_version == 0
                    || reconfigure.config_version > DOCUMENT_VERSION_MAX
                {
                    return Err(format!(
                        "config_version must be 1 to {DOCUMENT_VERSION_MAX}"
                    ));
                }
                match &reconfigure.sealed_encryption_key {
                    Some(key) if key.is_empty() || key.len() > SEALED_KEY_BYTES_MAX => {
                        Err(format!(
                        "sealed_encryption_key of {} bytes is outside 1 to {SEALED_KEY_BYTES_MAX}",
                        key.len()
                    ))
                    }
                    _ => Ok(()),
                }
            }
            Self::UpgradeComponent(upgrade) => {
                if upgrade.sha256.len() != 32 {
                    return Err(format!(
                        "sha256 has {} bytes; expected 32",
                        upgrade.sha256.len()
                    ));
                }
                let valid_version = !upgrade.version.is_empty()
                    && upgrade.version.len() <= 64
                    && upgrade
                        .version
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+'));
                if !valid_version {
                    return Err(format!(
                        "version {:?} must be 1 to 64 characters of a-z, 0-9, '.', '-' and '+'",
                        truncate(&upgrade.version, 80)
                    ));
                }
                upgrade
                    .manifest
                    .manifest_unverified()
                    .map_err(|error| format!("manifest: {error}"))?;
                if let Some(permit) = &upgrade.rollback_permit {
                    permit
                        .permit_unverified()
                        .map_err(|error| format!("rollback_permit: {error}"))?;
                }
                Ok(())
            }
            Self::ApplyAccessRules(rules) => {
                if rules.version == 0 || rules.version > DOCUMENT_VERSION_MAX {
                    return Err(format!("version must be 1 to {DOCUMENT_VERSION_MAX}"));
                }
                if rules.rules.len() > ACCESS_RULES_MAX {
                    return Err(format!(
                        "{} rules is over the maximum of {ACCESS_RULES_MAX}",
                        rules.rules.len()
                    ));
                }
                for rule in &rules.rules {
                    validate_cidr(&rule.cidr)?;
                }
                Ok(())
            }
            Self::UpdateTrust(update) => {
                let document = update
                    .document
                    .document_unverified()
                    .map_err(|error| error.to_string())?;
                document.validate().map_err(|error| error.to_string())
            }
            Self::RotateCertificate | Self::CollectDiagnostics => Ok(()),
        }
    }
}

fn runtime_component(component: Component) -> Result<(), String> {
    if component == Component::Warden {
        return Err("component warden can only be upgraded; use iggy or connectors".into());
    }
    Ok(())
}

/// Checks an IPv4 or IPv6 network in CIDR notation, such as `10.0.0.0/8` or `2001:db8::/32`.
pub fn validate_cidr(cidr: &str) -> Result<(), String> {
    let invalid = || {
        format!(
            "{:?} is not a CIDR such as 10.0.0.0/8 or 2001:db8::/32",
            truncate(cidr, 80)
        )
    };
    let (address, prefix) = cidr.split_once('/').ok_or_else(invalid)?;
    let address: std::net::IpAddr = address.parse().map_err(|_| invalid())?;
    let prefix: u8 = prefix.parse().map_err(|_| invalid())?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(format!(
            "prefix /{prefix} of {:?} is over /{max}",
            truncate(cidr, 80)
        ));
    }
    Ok(())
}

impl ApplyConfig {
    /// Checks the size cap and that the content has no NUL bytes.
    pub fn validate(&self) -> Result<(), String> {
        if self.version == 0 {
            return Err("version 0 is reserved for 'no configuration'; use 1 or higher".into());
        }
        if self.version > DOCUMENT_VERSION_MAX {
            return Err(format!(
                "version {} is over the maximum of {DOCUMENT_VERSION_MAX}",
                self.version
            ));
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
    /// Description of the event.
    pub status: ReportStatus,
}

impl Message for TaskReport {
    const TYPE: MessageType = MessageType::TaskReport;
}

/// Status a node reports for a task.
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
        /// Description of the failure.
        reason: String,
    },
    /// The task was not executed because it did not pass a check.
    Rejected {
        /// The failed check.
        code: RejectCode,
        /// Details for the operator.
        detail: String,
    },
}

impl ReportStatus {
    /// Builds a failure with its reason cut to [`REASON_BYTES_MAX`].
    pub fn failed(reason: impl AsRef<str>) -> Self {
        Self::Failed {
            reason: truncate(reason.as_ref(), REASON_BYTES_MAX),
        }
    }

    /// Builds a rejection with its detail cut to [`REASON_BYTES_MAX`].
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
    /// The message is over the size cap.
    Oversized,
    /// Signed by a key the trust document does not list.
    UnknownKey,
    /// The signature does not verify.
    BadSignature,
    /// Signed by a listed key outside its validity window.
    KeyOutsideWindow,
    /// Addressed to another deployment.
    WrongDeployment,
    /// Addressed to another node.
    WrongNode,
    /// Past its expiry time.
    Expired,
    /// Before its not-before time.
    NotYetValid,
    /// Valid for longer than the node allows.
    ValidityTooLong,
    /// A task with this id was already executed, from another message.
    Replayed,
    /// The kind is not in the vocabulary.
    UnknownKind,
    /// The kind is in the vocabulary but this Warden cannot carry it out yet.
    Unsupported,
    /// The parameters are invalid.
    InvalidParams,
    /// The document version is not above the applied one.
    StaleVersion,
    /// A trust document whose version is not above the current one.
    TrustDowngrade,
    /// A trust document not signed by the current root (and by a new root it introduces).
    TrustNotRootSigned,
    /// The node's trust document has expired; only a trust update is accepted.
    TrustExpired,
    /// The task needs the deployment's approval signature and lacks it.
    ApprovalMissing,
    /// An approval signature does not verify with the deployment's approval key.
    ApprovalInvalid,
    /// The node's clock is behind the latest time it recorded, so expiry cannot be judged.
    ClockRegressed,
    /// The release manifest does not verify with a release key of the trust document, or does
    /// not decode.
    ManifestInvalid,
    /// The release manifest names another component, version, digest or counter than the task.
    ManifestMismatch,
    /// The release manifest is for another target triple than the node's.
    WrongTarget,
    /// The release counter is below the installed one and no valid rollback permit covers it.
    ReleaseRollback,
    /// The rollback permit is not signed by the root key, has expired or does not cover the task.
    RollbackPermitInvalid,
    /// The downloaded artifact does not have the manifest's size or SHA-256.
    ArtifactCorrupt,
    /// A code from a newer build that this build does not know.
    #[serde(other)]
    Unrecognized,
}

impl RejectCode {
    /// Returns the code as written on the wire and shown to operators.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Oversized => "oversized",
            Self::UnknownKey => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::KeyOutsideWindow => "key_outside_window",
            Self::WrongDeployment => "wrong_deployment",
            Self::WrongNode => "wrong_node",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::ValidityTooLong => "validity_too_long",
            Self::Replayed => "replayed",
            Self::UnknownKind => "unknown_kind",
            Self::Unsupported => "unsupported",
            Self::InvalidParams => "invalid_params",
            Self::StaleVersion => "stale_version",
            Self::TrustDowngrade => "trust_downgrade",
            Self::TrustNotRootSigned => "trust_not_root_signed",
            Self::TrustExpired => "trust_expired",
            Self::ApprovalMissing => "approval_missing",
            Self::ApprovalInvalid => "approval_invalid",
            Self::ClockRegressed => "clock_regressed",
            Self::ManifestInvalid => "manifest_invalid",
            Self::ManifestMismatch => "manifest_mismatch",
            Self::WrongTarget => "wrong_target",
            Self::ReleaseRollback => "release_rollback",
            Self::RollbackPermitInvalid => "rollback_permit_invalid",
            Self::ArtifactCorrupt => "artifact_corrupt",
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
    /// State of each component the node supervises; empty from nodes without components and
    /// from older Wardens.
    #[serde(default)]
    pub components: Vec<ComponentStatus>,
    /// The node's TLS certificate; absent before the first one is issued and from older
    /// Wardens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateStatus>,
    /// Version of the installed access rules (0 before the first); absent from nodes that do
    /// not manage access rules and from older Wardens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_version: Option<u64>,
}

/// The node's TLS certificate, as a heartbeat reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateStatus {
    /// When the certificate in use expires.
    pub not_after: UnixMillis,
    /// Version of the trust bundle the node holds.
    pub bundle_version: u64,
    /// Renewal attempts that failed in a row since the last success.
    pub refresh_failures: u32,
}

impl Message for Heartbeat {
    const TYPE: MessageType = MessageType::Heartbeat;
}

/// A node's first message: it presents its one-time enrollment token and the public key it
/// generated. It travels signed by that key, which proves the node holds the private half.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// Deployment of the node.
    pub deployment: DeploymentId,
    /// The node.
    pub node: NodeId,
    /// The one-time token from the bootstrap file.
    pub token: String,
    /// The node's Ed25519 public key.
    #[serde(with = "serde_bytes")]
    pub public_key: Vec<u8>,
    /// When the node sent the request, by its clock.
    pub sent_at: UnixMillis,
}

impl fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollRequest")
            .field("deployment", &self.deployment)
            .field("node", &self.node)
            .field("public_key", &hex::encode(&self.public_key))
            .finish_non_exhaustive()
    }
}

impl Message for EnrollRequest {
    const TYPE: MessageType = MessageType::EnrollRequest;
}

/// A node's request for a fresh user JWT, signed with its enrolled key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewRequest {
    /// Deployment of the node.
    pub deployment: DeploymentId,
    /// The node.
    pub node: NodeId,
    /// When the node sent the request, by its clock.
    pub sent_at: UnixMillis,
}

impl Message for RenewRequest {
    const TYPE: MessageType = MessageType::RenewRequest;
}

/// The control plane's answer to an enrollment or renewal request.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialReply {
    /// A user JWT for the node's key.
    Granted {
        /// The user JWT; worthless without the node's private key.
        jwt: String,
        /// When it expires.
        expires_at: UnixMillis,
    },
    /// The request was refused.
    Refused {
        /// Why, for the node's log.
        reason: String,
    },
}

impl fmt::Debug for CredentialReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Granted { expires_at, .. } => f
                .debug_struct("Granted")
                .field("expires_at", expires_at)
                .finish_non_exhaustive(),
            Self::Refused { reason } => f.debug_struct("Refused").field("reason", reason).finish(),
        }
    }
}

impl Message for CredentialReply {
    const TYPE: MessageType = MessageType::CredentialReply;
}

/// Maximum size of a PEM certificate signing request, in bytes.
pub const CSR_PEM_BYTES_MAX: usize = 8 * 1024;

/// A node's certificate signing request for the TLS key it generated, signed with its
/// enrolled key. The signature binds the request to the node's identity; the TLS private key
/// never leaves the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateRequest {
    /// Deployment of the node.
    pub deployment: DeploymentId,
    /// The node.
    pub node: NodeId,
    /// PKCS#10 request in PEM, at most [`CSR_PEM_BYTES_MAX`] bytes. Its common name is the node
    /// id and its subject alternative names are names and addresses registered for the node.
    pub csr_pem: String,
    /// When the node sent the request, by its clock.
    pub sent_at: UnixMillis,
}

impl Message for CertificateRequest {
    const TYPE: MessageType = MessageType::CertificateRequest;
}

impl CertificateRequest {
    /// Checks the size and framing of the PEM text.
    pub fn validate(&self) -> Result<(), String> {
        if self.csr_pem.len() > CSR_PEM_BYTES_MAX {
            return Err(format!(
                "csr_pem has {} bytes; the maximum is {CSR_PEM_BYTES_MAX}",
                self.csr_pem.len()
            ));
        }
        if !self.csr_pem.contains("-----BEGIN CERTIFICATE REQUEST-----") {
            return Err("csr_pem is not a PEM certificate request".to_owned());
        }
        Ok(())
    }
}

/// The control plane's reply to a [`CertificateRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertificateReply {
    /// The certificate for the requested key.
    Issued {
        /// The node certificate followed by the CA certificate that signed it, in PEM.
        chain_pem: String,
        /// Every CA certificate the deployment trusts now, in PEM.
        bundle_pem: String,
        /// Version of that trust bundle; it grows with every change of the bundle or of the
        /// signing CA.
        bundle_version: u64,
        /// Start of the certificate's validity.
        not_before: UnixMillis,
        /// End of the certificate's validity.
        not_after: UnixMillis,
    },
    /// The request was refused.
    Refused {
        /// Stable code for the refusal, such as `name_not_registered`.
        code: String,
        /// Why, for the node's log.
        reason: String,
    },
}

impl Message for CertificateReply {
    const TYPE: MessageType = MessageType::CertificateReply;
}

/// Maximum length of one artifact chunk a node may ask for, in bytes.
pub const FETCH_CHUNK_BYTES_MAX: u32 = 512 * 1024;

/// Maximum size of an encoded [`FetchReply`]: a full chunk and room for its framing.
pub const FETCH_REPLY_BYTES_MAX: usize = FETCH_CHUNK_BYTES_MAX as usize + 1024;

/// A node's request for one chunk of a released artifact, signed with its enrolled key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchRequest {
    /// Deployment of the node.
    pub deployment: DeploymentId,
    /// The node.
    pub node: NodeId,
    /// SHA-256 of the artifact, which is its name in the release store.
    #[serde(with = "serde_bytes")]
    pub sha256: Vec<u8>,
    /// Byte offset of the chunk.
    pub offset: u64,
    /// Length of the chunk in bytes, 1 to [`FETCH_CHUNK_BYTES_MAX`].
    pub length: u32,
    /// When the node sent the request, by its clock.
    pub sent_at: UnixMillis,
}

impl Message for FetchRequest {
    const TYPE: MessageType = MessageType::FetchRequest;
}

impl FetchRequest {
    /// Checks the digest length and the chunk length.
    pub fn validate(&self) -> Result<(), String> {
        if self.sha256.len() != 32 {
            return Err(format!(
                "sha256 has {} bytes; expected 32",
                self.sha256.len()
            ));
        }
        if self.length == 0 || self.length > FETCH_CHUNK_BYTES_MAX {
            return Err(format!(
                "length {} is outside 1 to {FETCH_CHUNK_BYTES_MAX} bytes",
                self.length
            ));
        }
        Ok(())
    }
}

/// The control plane's answer to a [`FetchRequest`].
///
/// It travels unsigned and outside an envelope, because a chunk is larger than
/// [`crate::ENVELOPE_BYTES_MAX`]. The node trusts no byte of it: the whole artifact must match
/// the size and SHA-256 of a manifest that a release key signed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FetchReply {
    /// The requested bytes; shorter than asked only at the end of the artifact.
    Chunk {
        /// Byte offset of the chunk.
        offset: u64,
        /// Total size of the artifact, in bytes.
        size: u64,
        /// The bytes.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// No artifact with this digest is published.
    NotFound,
    /// The offset is at or past the end of the artifact.
    OutOfRange {
        /// Total size of the artifact, in bytes.
        size: u64,
    },
    /// The request was refused, such as for a bad signature.
    Refused {
        /// Why, for the node's log.
        reason: String,
    },
}

impl fmt::Debug for FetchReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Chunk {
                offset,
                size,
                bytes,
            } => f
                .debug_struct("Chunk")
                .field("offset", offset)
                .field("size", size)
                .field("bytes", &bytes.len())
                .finish(),
            Self::NotFound => f.write_str("NotFound"),
            Self::OutOfRange { size } => f.debug_struct("OutOfRange").field("size", size).finish(),
            Self::Refused { reason } => f.debug_struct("Refused").field("reason", reason).finish(),
        }
    }
}

impl FetchReply {
    /// Encodes the reply, failing if it is over [`FETCH_REPLY_BYTES_MAX`].
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        crate::envelope::encode_capped("fetch reply", self, FETCH_REPLY_BYTES_MAX)
    }

    /// Decodes a reply, checking [`FETCH_REPLY_BYTES_MAX`] first.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        crate::envelope::decode_capped("fetch reply", bytes, FETCH_REPLY_BYTES_MAX)
    }
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
