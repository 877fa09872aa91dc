//! JSON shapes of the operator API, shared by the server and `wardenctl`.

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Serialize};
use warden::bootstrap::BootstrapFile;
use warden_bus::trust::{KeyGrant, SignedDocument};

use crate::core::health::NodeRecord;
use crate::core::issue::ActionRequest;
use crate::core::lifecycle::{TaskRecord, TaskStatus};
use crate::store::DeploymentRecord;

/// An RFC 7807 problem document. `field` and `fix` are extension members that name the
/// offending request field and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// URI identifying the problem type.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// Short summary of the problem type.
    pub title: String,
    /// HTTP status code.
    pub status: u16,
    /// What went wrong in this request.
    pub detail: String,
    /// The request field at fault, if one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// What to do about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// Body of `POST /v1/deployments`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateDeployment {
    /// Deployment id.
    pub id: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Customer approval public key, hex; makes access rules and encryption keys need its
    /// signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_key: Option<String>,
}

/// A deployment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentView {
    /// Deployment id.
    pub id: String,
    /// Free text.
    pub description: String,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// Customer approval public key, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_key: Option<String>,
    /// Version of the configuration last issued to all nodes, which nodes behind get again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_config_version: Option<u64>,
    /// Version of the access rules last issued to all nodes, which nodes behind get again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_access_version: Option<u64>,
}

impl From<DeploymentRecord> for DeploymentView {
    fn from(record: DeploymentRecord) -> Self {
        Self {
            id: record.id.to_string(),
            description: record.description,
            created_at: record.created_at.to_string(),
            approval_key: record.approval_key,
            desired_config_version: record.config.map(|config| config.version),
            desired_access_version: record.access_rules.map(|rules| rules.version),
        }
    }
}

/// Body of `POST /v1/deployments/{deployment}/nodes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddNode {
    /// Node id.
    pub id: String,
    /// State directory on the node.
    pub state_dir: String,
    /// Heartbeat interval in seconds, if not the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_secs: Option<u64>,
    /// DNS names and IP addresses the node's TLS certificates may name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_names: Vec<String>,
}

/// Body of `POST /v1/deployments/{deployment}/nodes/{node}/reenroll`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reenroll {
    /// State directory on the node.
    pub state_dir: String,
    /// Heartbeat interval in seconds, if not the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_secs: Option<u64>,
}

/// Response of `POST /v1/deployments/{deployment}/nodes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddedNode {
    /// The node.
    pub node: NodeView,
    /// The bootstrap file to install on the node.
    pub bootstrap: BootstrapFile,
}

/// A health transition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransitionView {
    /// When, RFC 3339.
    pub at: String,
    /// Health before.
    pub from: String,
    /// Health after.
    pub to: String,
    /// Why.
    pub reason: String,
}

/// One supervised component of a node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComponentView {
    /// iggy or connectors.
    pub component: String,
    /// stopped, starting, running, unhealthy, backing_off, stopping or failed.
    pub phase: String,
    /// The live process.
    pub pid: Option<u32>,
    /// Why it is in this phase.
    pub detail: String,
}

/// A node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    /// Deployment id.
    pub deployment: String,
    /// Node id.
    pub node: String,
    /// pending, healthy or unreachable.
    pub health: String,
    /// Last heartbeat received, RFC 3339.
    pub last_heartbeat_at: Option<String>,
    /// Warden version from the last heartbeat.
    pub warden_version: Option<String>,
    /// Applied configuration version from the last heartbeat.
    pub config_version: u64,
    /// Component phases from the last heartbeat.
    #[serde(default)]
    pub components: Vec<ComponentView>,
    /// When the node was added, RFC 3339.
    pub registered_at: String,
    /// Recent health transitions, oldest first.
    pub transitions: Vec<TransitionView>,
    /// Id of the node's enrolled key, if it has enrolled.
    pub node_key_id: Option<String>,
    /// Why the last enrollment request was refused.
    pub enrollment_error: Option<String>,
    /// Names its TLS certificates may carry.
    #[serde(default)]
    pub tls_names: Vec<String>,
    /// Its certificate, from the last heartbeat that described one.
    #[serde(default)]
    pub certificate: Option<CertificateView>,
    /// Active alerts.
    #[serde(default)]
    pub alerts: Vec<String>,
    /// Version of the installed access rules, if the node manages them.
    #[serde(default)]
    pub access_version: Option<u64>,
}

/// A node's TLS certificate, as its heartbeat describes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertificateView {
    /// When it expires, RFC 3339.
    pub not_after: String,
    /// Version of the trust bundle the node holds.
    pub bundle_version: u64,
    /// Failed renewals in a row.
    pub refresh_failures: u32,
}

impl From<NodeRecord> for NodeView {
    fn from(record: NodeRecord) -> Self {
        Self {
            deployment: record.deployment.to_string(),
            node: record.node.to_string(),
            health: record.health.as_str().into(),
            last_heartbeat_at: record.last_heartbeat_at.map(|at| at.to_string()),
            warden_version: record.warden_version,
            config_version: record.config_version,
            components: record
                .components
                .iter()
                .map(|status| ComponentView {
                    component: status.component.to_string(),
                    phase: status.phase.to_string(),
                    pid: status.pid,
                    detail: status.detail.clone(),
                })
                .collect(),
            registered_at: record.registered_at.to_string(),
            node_key_id: record
                .enrollment
                .node_key
                .as_deref()
                .and_then(|key| warden_bus::PublicKey::from_hex(key).ok())
                .map(|key| key.id().to_string()),
            enrollment_error: record.enrollment.last_rejection.clone(),
            tls_names: record.tls_names.clone(),
            certificate: record.certificate.map(|status| CertificateView {
                not_after: status.not_after.to_string(),
                bundle_version: status.bundle_version,
                refresh_failures: status.refresh_failures,
            }),
            alerts: record
                .alerts
                .iter()
                .filter(|alert| alert.resolved_at.is_none())
                .map(|alert| alert.kind.as_str().to_owned())
                .collect(),
            access_version: record.access_version,
            transitions: record
                .transitions
                .into_iter()
                .map(|transition| TransitionView {
                    at: transition.at.to_string(),
                    from: transition.from.as_str().into(),
                    to: transition.to.as_str().into(),
                    reason: transition.reason,
                })
                .collect(),
        }
    }
}

/// Body of `POST /v1/deployments/{deployment}/tasks`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueTasks {
    /// One target node; give this or `all_nodes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Target every node of the deployment.
    #[serde(default)]
    pub all_nodes: bool,
    /// Validity in seconds, 1 to 3600; 900 if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    /// Suggested fix.
    pub action: ActionRequest,
}

/// Response of `POST /v1/deployments/{deployment}/tasks`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IssuedTasks {
    /// One task per target node.
    pub tasks: Vec<TaskView>,
}

/// An event in a task's life.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryView {
    /// When, RFC 3339.
    pub at: String,
    /// Status reported or reached.
    pub status: String,
    /// Rejection code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Reason or detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Whether it changed the task's status.
    pub applied: bool,
}

/// A task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskView {
    /// Task id.
    pub id: String,
    /// Deployment id.
    pub deployment: String,
    /// Node id.
    pub node: String,
    /// Action kind.
    pub kind: String,
    /// Short facts about the parameters.
    pub summary: BTreeMap<String, String>,
    /// Status.
    pub status: String,
    /// Rejection code, when rejected.
    pub reject_code: Option<String>,
    /// Failure, rejection or expiry reason.
    pub reason: Option<String>,
    /// Issue time, RFC 3339.
    pub issued_at: String,
    /// Expiry, RFC 3339.
    pub expires_at: String,
    /// Output of a successful execution.
    pub output: BTreeMap<String, String>,
    /// Events in order.
    pub history: Vec<HistoryView>,
    /// For a task awaiting approval: the bytes to sign with the approval key, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_body: Option<String>,
}

impl From<TaskRecord> for TaskView {
    fn from(record: TaskRecord) -> Self {
        let signed_body = (record.status == TaskStatus::AwaitingApproval)
            .then(|| crate::service::decode_signed_task(&record).ok())
            .flatten()
            .map(|signed| base64::engine::general_purpose::STANDARD.encode(signed.body));
        Self {
            id: record.id.to_string(),
            deployment: record.deployment.to_string(),
            node: record.node.to_string(),
            kind: record.kind,
            summary: record.summary,
            status: record.status.as_str().into(),
            reject_code: record.reject_code,
            reason: record.reason,
            issued_at: record.issued_at.to_string(),
            expires_at: record.expires_at.to_string(),
            output: record.output,
            history: record
                .history
                .into_iter()
                .map(|entry| HistoryView {
                    at: entry.at.to_string(),
                    status: entry.status.as_str().into(),
                    code: entry.code,
                    detail: entry.detail,
                    applied: entry.applied,
                })
                .collect(),
            signed_body,
        }
    }
}

/// Returns the current trust document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrustView {
    /// Version.
    pub version: u64,
    /// Expiry, RFC 3339.
    pub expires_at: String,
    /// Id of the root key.
    pub root_key_id: String,
    /// Task-signing keys with their windows.
    pub task_keys: Vec<KeyGrantView>,
    /// Release-signing keys with their windows.
    pub release_keys: Vec<KeyGrantView>,
    /// The signed document, base64, as used in bootstrap files and `trust publish`.
    pub document: String,
}

/// A key and its validity window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyGrantView {
    /// Key id.
    pub key_id: String,
    /// Public key, hex.
    pub public_key: String,
    /// Start of the window, RFC 3339.
    pub not_before: String,
    /// End of the window, RFC 3339.
    pub not_after: String,
}

impl TrustView {
    /// Summarises a signed trust document.
    pub fn new(signed: &SignedDocument) -> Result<Self, String> {
        let document = signed
            .document_unverified()
            .map_err(|error| error.to_string())?;
        let root = document.root().map_err(|error| error.to_string())?;
        let grants = |grants: &[KeyGrant]| -> Vec<KeyGrantView> {
            grants
                .iter()
                .filter_map(|grant| {
                    let key = grant.key().ok()?;
                    Some(KeyGrantView {
                        key_id: key.id().to_string(),
                        public_key: key.to_hex(),
                        not_before: grant.not_before.to_string(),
                        not_after: grant.not_after.to_string(),
                    })
                })
                .collect()
        };
        let bytes = signed.encode().map_err(|error| error.to_string())?;
        Ok(Self {
            version: document.version,
            expires_at: document.expires_at.to_string(),
            root_key_id: root.id().to_string(),
            task_keys: grants(&document.task_keys),
            release_keys: grants(&document.release_keys),
            document: base64::engine::general_purpose::STANDARD.encode(bytes),
        })
    }
}

/// Body of `PUT /v1/trust`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishTrust {
    /// The signed trust document, base64.
    pub document: String,
}

/// Body of `POST /v1/tasks/{task}/approval`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approve {
    /// Id of the approval key.
    pub key_id: String,
    /// Ed25519 signature over the task's `signed_body`, base64.
    pub signature: String,
}

/// Header of `PUT /v1/releases` that carries the signed manifest, base64 as
/// `wardenctl release sign` writes it. The body is the artifact.
pub const MANIFEST_HEADER: &str = "x-warden-manifest";

/// A published release.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseView {
    /// iggy, connectors or warden.
    pub component: String,
    /// Release version.
    pub version: String,
    /// Target triple.
    pub target: String,
    /// SHA-256 of the artifact, hex.
    pub sha256: String,
    /// Size of the artifact, in bytes.
    pub size: u64,
    /// Monotonic release counter.
    pub release_counter: u64,
    /// When the manifest was signed, RFC 3339.
    pub issued_at: String,
    /// Id of the release key that signed the manifest.
    pub signed_by: String,
    /// The signed manifest, base64, for `wardenctl task issue upgrade-component --manifest`.
    pub manifest: String,
}

impl From<crate::service::PublishedRelease> for ReleaseView {
    fn from(release: crate::service::PublishedRelease) -> Self {
        let manifest = &release.manifest;
        Self {
            component: format!("{:?}", manifest.component).to_lowercase(),
            version: manifest.version.clone(),
            target: manifest.target.clone(),
            sha256: hex::encode(&manifest.sha256),
            size: manifest.size,
            release_counter: manifest.release_counter,
            issued_at: manifest.issued_at.to_string(),
            signed_by: release.signed.signature.key_id.to_string(),
            manifest: release
                .signed
                .encode()
                .map(|bytes| base64::engine::general_purpose::STANDARD.encode(bytes))
                .unwrap_or_default(),
        }
    }
}
