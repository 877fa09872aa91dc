//! The control plane's operations, shared by the HTTP API and the background actors.
//!
//! Replicas keep no state of their own: every record lives in JetStream key-value buckets and
//! changes by compare-and-set, so any number of replicas can serve the API and ingest reports
//! and heartbeats at the same time. All of them run the sweeper, and the one holding the sweep
//! lease does the work.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use rand::RngCore;
use warden::bootstrap::BootstrapFile;
use warden_actors::clock::SharedClock;
use warden_actors::entropy::Entropy;
use warden_bus::envelope::ENVELOPE_BYTES_MAX;
use warden_bus::messages::{CredentialReply, EnrollRequest, RenewRequest};
use warden_bus::subject::{
    task_consumer, CONTROL_BUCKET, REPORT_CONSUMER, REPORT_STREAM, TASK_STREAM,
};
use warden_bus::transport::{ConsumerSpec, StreamSpec};
use warden_bus::trust::{SignedDocument, TrustDocument};
use warden_bus::{
    Bus, BusError, DeploymentId, Envelope, Heartbeat, MessageId, NodeId, NodeSubject, SigningKey,
    Subject, TaskId, TaskReport, TelemetryKind, UnixMillis,
};
use warden_bus::{KeySignature, PublicKey, SignedEnvelope};

use crate::core::desired::IssueWindow;
use crate::core::enrollment::{EnrollOutcome, Enrollment};
use crate::core::health::{HealthTransition, NodeHealth, NodeRecord};
use crate::core::issue::{self, ActionRequest, FieldError};
use crate::core::lifecycle::{TaskRecord, TaskStatus};
use crate::keys;
use crate::releases::{ReleaseStore, RELEASE_MANIFESTS_BUCKET};
use crate::store::{DeploymentRecord, Record, Store, StoreError};

mod cache;
mod certificates;
mod desired;
mod lease;
mod releases;

pub use certificates::{
    AlertView, AuthorityView, CaStep, CaView, WaitingNode, BUNDLE_VERSION_CACHE, NUDGE_INTERVAL,
};
pub use lease::SWEEP_LEASE_KEY;
pub use releases::PublishedRelease;

/// How long tasks stay in the task stream.
pub const TASK_STREAM_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// How long reports stay in the report stream.
pub const REPORT_STREAM_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Reports kept per node in the report stream. The control plane consumes them within
/// seconds; the limit only bounds what one node, or a thief of its credentials, can make the
/// broker store: at most this many envelopes of at most 256 KiB.
pub const REPORTS_PER_NODE_MAX: u64 = 1000;
/// Default window in which the broker drops a repeated message id (the JetStream default).
pub const DUPLICATE_WINDOW_DEFAULT: Duration = Duration::from_secs(120);
/// Default time a node has to acknowledge a task before the broker redelivers it.
pub const TASK_ACK_WAIT_DEFAULT: Duration = Duration::from_secs(30);
/// Time a replica has to acknowledge a report before the broker redelivers it.
pub const REPORT_ACK_WAIT: Duration = Duration::from_secs(30);
/// A pending task not yet in the stream this long after issue is published by the sweeper.
pub const PUBLISH_RETRY_AFTER: Duration = Duration::from_secs(2);
/// Default wait after expiry before a task without outcome is marked expired: the Warden's
/// default clock-skew tolerance of 300 s plus 30 s for the report to arrive.
pub const EXPIRY_GRACE_DEFAULT: Duration = Duration::from_secs(330);
/// Maximum size of a deployment description, in bytes.
pub const DESCRIPTION_BYTES_MAX: usize = 1024;
/// Default time the broker keeps a task record after its last change. Task listings and the
/// sweep read every record kept, so the retention bounds their work.
pub const TASK_RETENTION_DEFAULT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Minimum task retention.
pub const TASK_RETENTION_MIN: Duration = Duration::from_secs(24 * 3600);
/// Maximum task retention.
pub const TASK_RETENTION_MAX: Duration = Duration::from_secs(366 * 24 * 3600);

/// A task retention the control plane cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskRetentionError {
    /// Outside [`TASK_RETENTION_MIN`] to [`TASK_RETENTION_MAX`].
    #[error(
        "task retention of {retention_secs} s is outside {} to {} s",
        TASK_RETENTION_MIN.as_secs(),
        TASK_RETENTION_MAX.as_secs()
    )]
    OutOfRange {
        /// The retention asked for, in seconds.
        retention_secs: u64,
    },
    /// Too short to keep an open task until the sweep gives it an outcome.
    #[error(
        "task retention of {retention_secs} s is not above {open_secs} s, the longest a task \
         can stay open without a change (longest validity plus expiry grace plus sweep \
         interval); raise the retention or lower the expiry grace"
    )]
    ShorterThanOpenTask {
        /// The retention asked for, in seconds.
        retention_secs: u64,
        /// Maximum time an open task's record may go unchanged, in seconds.
        open_secs: u64,
    },
}

/// Checks a task retention against its range and against the time an open task's record may
/// go without a write. That time runs from the task's issue until the sweep marks it expired:
/// at most [`issue::TASK_TTL_MAX`] plus the expiry grace plus one sweep interval. A shorter
/// retention would let the broker drop the record of a task that has no outcome yet.
///
/// NOTE: this sees only this replica's grace. The last replica to start sets the bucket's age,
/// so replicas with different retentions or graces can still lose open tasks.
pub fn check_task_retention(
    retention: Duration,
    expiry_grace: Duration,
    sweep_interval: Duration,
) -> Result<(), TaskRetentionError> {
    if !(TASK_RETENTION_MIN..=TASK_RETENTION_MAX).contains(&retention) {
        return Err(TaskRetentionError::OutOfRange {
            retention_secs: retention.as_secs(),
        });
    }
    let open = issue::TASK_TTL_MAX
        .saturating_add(expiry_grace)
        .saturating_add(sweep_interval);
    if retention <= open {
        return Err(TaskRetentionError::ShorterThanOpenTask {
            retention_secs: retention.as_secs(),
            open_secs: open.as_secs(),
        });
    }
    Ok(())
}

/// Deliveries of a report from a not-yet-enrolled node before it is dropped.
pub const ENROLLMENT_WAIT_DELIVERIES: u64 = 10;
/// Delay before such a report is delivered again.
pub const ENROLLMENT_WAIT: Duration = Duration::from_secs(2);
/// Default validity of an enrollment token.
pub const ENROLLMENT_TTL_DEFAULT: Duration = Duration::from_secs(3600);

/// Settlement of a delivery after handling it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Acknowledge it.
    Done,
    /// Ask for it again after the delay.
    Retry(Duration),
}

/// Key in [`CONTROL_BUCKET`] that stores the revoked node user keys, as JSON.
pub const REVOCATIONS_KEY: &str = "revocations";
/// Default validity of a node's user JWT.
pub const NODE_JWT_TTL_DEFAULT: Duration = Duration::from_secs(24 * 3600);

/// Key in [`CONTROL_BUCKET`] that stores the current signed trust document.
pub const TRUST_DOCUMENT_KEY: &str = "trust_document";
/// Key in [`CONTROL_BUCKET`] that stores the admin API key's SHA-256.
pub const ADMIN_KEY_HASH_KEY: &str = "admin_api_key_sha256";

/// Settings of a control-plane replica.
#[derive(Debug, Clone)]
pub struct Settings {
    /// NATS URL written into bootstrap files.
    pub advertise_nats_url: String,
    /// Time without heartbeats after which a node is unreachable.
    pub unreachable_after: Duration,
    /// Time between sweeps; the sweep lease lasts [`crate::core::lease::LEASE_INTERVALS`] of
    /// them.
    pub sweep_interval: Duration,
    /// Wait after a task's expiry before marking it expired.
    pub expiry_grace: Duration,
    /// Time the broker keeps a task record after its last change; see
    /// [`check_task_retention`].
    pub task_retention: Duration,
    /// Time a node has to acknowledge a task before it is redelivered; applies to consumers
    /// created from now on.
    pub task_ack_wait: Duration,
    /// Window in which the broker drops a repeated message id; applies when the streams are
    /// created.
    pub duplicate_window: Duration,
    /// How long a new node's enrollment token stays valid.
    pub enrollment_ttl: Duration,
    /// How long a node's user JWT stays valid.
    pub node_jwt_ttl: Duration,
    /// Clock-skew tolerance when checking a release key's validity window at publishing.
    pub release_clock_skew: Duration,
    /// Test-only crash point, honoured in debug builds.
    pub failpoint: Option<String>,
    /// Node certificate lifetime, rate limit and alert thresholds.
    pub certificates: CertificateSettings,
}

/// Settings of node certificate issuance and of certificate alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertificateSettings {
    /// Lifetime of a node certificate.
    pub lifetime: Duration,
    /// Certificates one node may receive per window.
    pub rate: crate::core::certificates::RateLimit,
    /// Alert thresholds.
    pub alerts: crate::core::certificates::AlertPolicy,
}

impl Default for CertificateSettings {
    fn default() -> Self {
        use crate::core::certificates as certs;
        Self {
            lifetime: certs::LIFETIME_DEFAULT,
            rate: certs::RateLimit {
                max: certs::RATE_MAX_DEFAULT,
                window: certs::RATE_WINDOW_DEFAULT,
            },
            alerts: certs::AlertPolicy {
                expiring_within: certs::EXPIRING_WITHIN_DEFAULT,
                refresh_failures: certs::REFRESH_FAILURES_DEFAULT,
            },
        }
    }
}

/// Error of a control-plane operation, in terms the API maps to HTTP statuses.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// Something the request names does not exist.
    #[error("{what} not found; {fix}")]
    NotFound {
        /// Name of the missing item.
        what: String,
        /// Suggested fix.
        fix: String,
    },
    /// The request conflicts with existing state.
    #[error("{what}; {fix}")]
    Conflict {
        /// Description of the conflict.
        what: String,
        /// Suggested fix.
        fix: String,
    },
    /// A request field is invalid.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// The broker or store is not available.
    #[error("the message broker is unavailable: {0}")]
    Unavailable(String),
    /// A stored record does not decode: something other than the control plane wrote it.
    #[error("{0}")]
    Damaged(String),
    /// This replica's artifact cache failed: a local disk problem, not the broker's.
    #[error("the artifact cache failed: {0}")]
    Cache(String),
}

impl From<StoreError> for ServiceError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Damaged { .. } => Self::Damaged(error.to_string()),
            other => Self::Unavailable(other.to_string()),
        }
    }
}

/// Decodes the stored revocation list. A list that does not decode is an error, not an empty
/// list, because an empty list would let every revoked node back in.
fn decode_revocations(bytes: Option<&[u8]>) -> Result<BTreeMap<String, i64>, ServiceError> {
    match bytes {
        None => Ok(BTreeMap::new()),
        Some(bytes) => serde_json::from_slice(bytes).map_err(|error| {
            ServiceError::Damaged(format!(
                "the stored revocation list ({CONTROL_BUCKET}/{REVOCATIONS_KEY}) is damaged: {error}; restore it from a backup of the broker's JetStream data (until then the broker keeps the revocations it was last given)"
            ))
        }),
    }
}

impl From<BusError> for ServiceError {
    fn from(error: BusError) -> Self {
        Self::Unavailable(error.to_string())
    }
}

/// Target nodes of a task request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One node.
    Node(NodeId),
    /// Every node of the deployment.
    AllNodes,
}

/// Filter for task listings.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    /// Only this deployment.
    pub deployment: Option<DeploymentId>,
    /// Only this node.
    pub node: Option<NodeId>,
    /// Only this status.
    pub status: Option<TaskStatus>,
    /// At most this many, newest first.
    pub limit: Option<usize>,
}

/// Heartbeats one replica takes from one node per [`HEARTBEAT_WINDOW`]; twice what the shortest
/// heartbeat interval (1 s) sends.
pub const HEARTBEATS_PER_WINDOW: u32 = 20;

/// Window of the heartbeat rate bound.
pub const HEARTBEAT_WINDOW: Duration = Duration::from_secs(10);

/// Component output lines one replica writes for one node per [`COMPONENT_LINES_WINDOW`]. A
/// Warden sends at most 64 lines per second for each stream of each component, so 2,560 for
/// its two components. The bound keeps a node's credentials from filling the control plane's
/// log as fast as the broker delivers.
pub const COMPONENT_LINES_PER_WINDOW: u32 = 4_096;

/// Window of the component output bound.
pub const COMPONENT_LINES_WINDOW: Duration = Duration::from_secs(10);

/// Options of a new node's bootstrap file.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// State directory on the node.
    pub state_dir: PathBuf,
    /// Heartbeat interval, if not the default.
    pub heartbeat_interval_secs: Option<u64>,
    /// DNS names and IP addresses the node's certificates may name; kept as registered when
    /// re-enrolling.
    pub tls_names: Vec<String>,
}

struct Inner {
    broker: Option<Arc<crate::broker::Broker>>,
    account_pusher: Option<async_nats::Client>,
    releases: Option<ReleaseStore>,
    bus: Arc<dyn Bus>,
    store: Store,
    signer: SigningKey,
    clock: SharedClock,
    rng: Mutex<Entropy>,
    settings: Settings,
    /// Random id of this replica process, as the sweep lease names its holder.
    replica_id: String,
    /// The sweep lease holder this replica last saw, to log changes once.
    sweep_holder: Mutex<Option<String>>,
    log_limiter: Mutex<crate::core::log_limit::LogLimiter>,
    heartbeat_limiter: Mutex<crate::core::log_limit::LogLimiter>,
    component_line_limiter: Mutex<crate::core::log_limit::LogLimiter>,
    secrets: Option<crate::ca::SecretsKey>,
    bundle_versions: cache::DeploymentCache<u64>,
    desired: cache::DeploymentCache<Option<Arc<crate::store::DeploymentRecord>>>,
}

/// One replica's handle on the control plane. Cheap to clone.
#[derive(Clone)]
pub struct ControlPlane {
    inner: Arc<Inner>,
}

impl ControlPlane {
    /// Creates a handle; call [`ControlPlane::setup`] before serving.
    pub fn new(
        bus: Arc<dyn Bus>,
        signer: SigningKey,
        clock: SharedClock,
        mut rng: Entropy,
        settings: Settings,
    ) -> Self {
        let store = Store::new(bus.clone());
        let mut replica_id = [0u8; 8];
        rng.fill_bytes(&mut replica_id);
        Self {
            inner: Arc::new(Inner {
                broker: None,
                account_pusher: None,
                releases: None,
                bus,
                store,
                signer,
                clock,
                rng: Mutex::new(rng),
                settings,
                replica_id: hex::encode(replica_id),
                sweep_holder: Mutex::new(None),
                log_limiter: Mutex::default(),
                heartbeat_limiter: Mutex::new(crate::core::log_limit::LogLimiter::new(
                    HEARTBEATS_PER_WINDOW,
                    HEARTBEAT_WINDOW,
                )),
                component_line_limiter: Mutex::new(crate::core::log_limit::LogLimiter::new(
                    COMPONENT_LINES_PER_WINDOW,
                    COMPONENT_LINES_WINDOW,
                )),
                secrets: None,
                bundle_versions: cache::DeploymentCache::default(),
                desired: cache::DeploymentCache::default(),
            }),
        }
    }

    /// Adds the broker set-up, which lets this replica mint node credentials, and the system
    /// account connection that pushes account updates. Call it right after [`ControlPlane::new`].
    pub fn with_broker(
        mut self,
        broker: crate::broker::Broker,
        account_pusher: Option<async_nats::Client>,
    ) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.broker = Some(Arc::new(broker));
            inner.account_pusher = account_pusher;
        }
        self
    }

    /// Adds the release store, which lets this replica publish releases and serve artifact
    /// chunks to nodes. Call it right after [`ControlPlane::new`].
    pub fn with_releases(mut self, releases: ReleaseStore) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.releases = Some(releases);
        }
        self
    }

    /// Adds the key that seals deployment CA keys, which lets this replica issue node
    /// certificates. Call it right after [`ControlPlane::new`].
    pub fn with_secrets(mut self, secrets: Option<crate::ca::SecretsKey>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.secrets = secrets;
        }
        self
    }

    /// The bus.
    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.inner.bus
    }

    /// Returns the task-signing key's public half.
    pub fn task_public_key(&self) -> warden_bus::PublicKey {
        self.inner.signer.public_key()
    }

    /// Replica settings.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// Returns the random id of this replica, which names it in the sweep lease and the logs.
    pub fn replica_id(&self) -> &str {
        &self.inner.replica_id
    }

    fn now(&self) -> UnixMillis {
        self.inner.clock.now()
    }

    /// Returns `Some(suppressed)` if a warning about a message from `origin` may be written,
    /// with the count of such warnings held back before it; see
    /// [`crate::core::log_limit`].
    pub fn may_log(&self, origin: &NodeSubject) -> Option<u64> {
        let key = format!("{}.{}", origin.deployment, origin.node);
        let now = self.now();
        self.inner
            .log_limiter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .admit(&key, now)
    }

    fn random_bytes(&self) -> [u8; 16] {
        let mut bytes = [0u8; 16];
        self.inner
            .rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .fill_bytes(&mut bytes);
        bytes
    }

    #[cfg(debug_assertions)]
    fn failpoint(&self, name: &str) {
        if self.inner.settings.failpoint.as_deref() == Some(name) {
            tracing::error!(failpoint = name, "failpoint reached; aborting the process");
            std::process::abort();
        }
    }

    #[cfg(not(debug_assertions))]
    fn failpoint(&self, _name: &str) {}

    /// Creates the streams, consumers and buckets if they do not exist. Safe to run on every
    /// start of every replica.
    pub async fn setup(&self) -> Result<(), ServiceError> {
        let bus = &self.inner.bus;
        self.inner
            .store
            .ensure_buckets(self.inner.settings.task_retention)
            .await?;
        bus.ensure_bucket(CONTROL_BUCKET, None).await?;
        bus.ensure_bucket(RELEASE_MANIFESTS_BUCKET, None).await?;
        bus.ensure_stream(&StreamSpec {
            name: TASK_STREAM.into(),
            subjects: vec![Subject::all_tasks()],
            max_age: TASK_STREAM_MAX_AGE,
            duplicate_window: self.inner.settings.duplicate_window,
            max_message_bytes: Some(ENVELOPE_BYTES_MAX),
            max_messages_per_subject: None,
        })
        .await?;
        bus.ensure_stream(&StreamSpec {
            name: REPORT_STREAM.into(),
            subjects: vec![Subject::all_telemetry(TelemetryKind::Report)],
            max_age: REPORT_STREAM_MAX_AGE,
            duplicate_window: self.inner.settings.duplicate_window,
            max_message_bytes: Some(ENVELOPE_BYTES_MAX),
            max_messages_per_subject: Some(REPORTS_PER_NODE_MAX),
        })
        .await?;
        bus.ensure_consumer(&ConsumerSpec {
            stream: REPORT_STREAM.into(),
            name: REPORT_CONSUMER.into(),
            filter: Subject::all_telemetry(TelemetryKind::Report),
            ack_wait: REPORT_ACK_WAIT,
        })
        .await?;
        Ok(())
    }

    /// Creates the admin API key if no replica has yet. Returns the key only to the replica
    /// that created it; only its hash is stored.
    pub async fn ensure_admin_key(&self) -> Result<Option<String>, ServiceError> {
        let key = {
            let mut rng = self
                .inner
                .rng
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            keys::generate_api_key(&mut *rng)
        };
        let hash = keys::hash_api_key(&key);
        match self
            .inner
            .bus
            .kv_create(CONTROL_BUCKET, ADMIN_KEY_HASH_KEY, Bytes::from(hash))
            .await
        {
            Ok(_) => Ok(Some(key)),
            Err(BusError::KeyExists { .. }) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// Reads the stored SHA-256 of the admin API key, hex.
    pub async fn admin_key_hash(&self) -> Result<String, ServiceError> {
        let entry = self
            .inner
            .bus
            .kv_get(CONTROL_BUCKET, ADMIN_KEY_HASH_KEY)
            .await?
            .ok_or_else(|| {
                ServiceError::Unavailable(
                    "the admin API key hash is missing from the control bucket".into(),
                )
            })?;
        Ok(String::from_utf8_lossy(&entry.value).into_owned())
    }

    /// Creates a deployment.
    pub async fn create_deployment(
        &self,
        id: DeploymentId,
        description: String,
        approval_key: Option<String>,
    ) -> Result<DeploymentRecord, ServiceError> {
        if description.len() > DESCRIPTION_BYTES_MAX {
            return Err(FieldError {
                field: "description",
                reason: format!(
                    "{} bytes is over the maximum of {DESCRIPTION_BYTES_MAX}",
                    description.len()
                ),
            }
            .into());
        }
        if let Some(key) = &approval_key {
            PublicKey::from_hex(key).map_err(|error| FieldError {
                field: "approval_key",
                reason: format!("{error}; give the public key printed by `wardenctl key create`"),
            })?;
        }
        let record = DeploymentRecord {
            id,
            description,
            created_at: self.now(),
            approval_key,
            access_rules: None,
            config: None,
            access_rules_issue: None,
            config_issue: None,
        };
        match self.inner.store.create(&record).await {
            Ok(_) => {
                tracing::info!(deployment_id = %record.id, "deployment created");
                Ok(record)
            }
            Err(StoreError::Exists { .. }) => Err(ServiceError::Conflict {
                what: format!("deployment {} already exists", record.id),
                fix: "choose another id, or use the existing deployment".into(),
            }),
            Err(error) => Err(error.into()),
        }
    }

    /// Lists deployments by id.
    pub async fn list_deployments(&self) -> Result<Vec<DeploymentRecord>, ServiceError> {
        let mut deployments = self.inner.store.list::<DeploymentRecord>().await?;
        deployments.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(deployments)
    }

    async fn require_deployment(
        &self,
        id: &DeploymentId,
    ) -> Result<DeploymentRecord, ServiceError> {
        match self
            .inner
            .store
            .get::<DeploymentRecord>(id.as_str())
            .await?
        {
            Some((record, _)) => Ok(record),
            None => Err(ServiceError::NotFound {
                what: format!("deployment {id}"),
                fix: "create it first with `wardenctl deployment create`".into(),
            }),
        }
    }

    /// Registers a node, creates its durable task consumer and returns its bootstrap file with a
    /// one-time enrollment token.
    pub async fn add_node(
        &self,
        deployment: DeploymentId,
        node: NodeId,
        options: NodeOptions,
    ) -> Result<(NodeRecord, BootstrapFile), ServiceError> {
        let deployment_record = self.require_deployment(&deployment).await?;
        let mut options = options;
        validate_node_options(&mut options)?;
        let token = self.new_enrollment_token();
        let mut record = NodeRecord::new(deployment.clone(), node.clone(), self.now());
        record.tls_names = options.tls_names.clone();
        record.enrollment = Enrollment::issue(
            &token,
            self.now()
                .saturating_add(self.inner.settings.enrollment_ttl),
        );
        // The consumer first: a node record must never exist without its consumer.
        self.inner
            .bus
            .ensure_consumer(&ConsumerSpec {
                stream: TASK_STREAM.into(),
                name: task_consumer(&deployment, &node),
                filter: Subject::tasks(&deployment, &node),
                ack_wait: self.inner.settings.task_ack_wait,
            })
            .await?;
        match self.inner.store.create(&record).await {
            Ok(_) => {}
            Err(StoreError::Exists { .. }) => {
                return Err(ServiceError::Conflict {
                    what: format!("node {node} already exists in deployment {deployment}"),
                    fix: "choose another node id, or use `wardenctl node reenroll` for a node that lost its state".into(),
                })
            }
            Err(error) => return Err(error.into()),
        }

        tracing::info!(deployment_id = %deployment, node_id = %node, "node added");
        let bootstrap = self
            .bootstrap_for(&deployment_record, &node, options, token)
            .await?;
        Ok((record, bootstrap))
    }

    /// Issues a new enrollment token for an existing node and revokes its enrolled key, so a
    /// node that lost its state can enroll a new key. Returns the new bootstrap file.
    pub async fn reenroll(
        &self,
        deployment: DeploymentId,
        node: NodeId,
        options: NodeOptions,
    ) -> Result<(NodeRecord, BootstrapFile), ServiceError> {
        let deployment_record = self.require_deployment(&deployment).await?;
        let mut options = options;
        validate_node_options(&mut options)?;
        let token = self.new_enrollment_token();
        let expires_at = self
            .now()
            .saturating_add(self.inner.settings.enrollment_ttl);
        let (record, revoked) = self
            .revoke_then_update(&deployment, &node, |record| {
                record.enrollment = Enrollment::issue(&token, expires_at);
            })
            .await?;
        tracing::warn!(deployment_id = %deployment, node_id = %node, revoked_key = revoked.as_deref().unwrap_or("none"), "node identity revoked; new enrollment token issued");
        options.tls_names = record.tls_names.clone();
        let bootstrap = self
            .bootstrap_for(&deployment_record, &node, options, token)
            .await?;
        Ok((record, bootstrap))
    }

    fn new_enrollment_token(&self) -> String {
        let mut bytes = [0u8; 32];
        self.inner
            .rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .fill_bytes(&mut bytes);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    async fn bootstrap_for(
        &self,
        deployment: &DeploymentRecord,
        node: &NodeId,
        options: NodeOptions,
        token: String,
    ) -> Result<BootstrapFile, ServiceError> {
        let trust = self.current_trust().await?;
        let damaged = |error: String| {
            ServiceError::Unavailable(format!("the stored trust document is damaged: {error}"))
        };
        let root = trust
            .document_unverified()
            .and_then(|document| document.root())
            .map_err(|error| damaged(error.to_string()))?;
        let trust_bytes = trust.encode().map_err(|error| damaged(error.to_string()))?;

        // With a broker set-up the node first connects as a one-time enrollment user.
        let (ca_certificate, enrollment_jwt, enrollment_seed) = match self.inner.broker.as_ref() {
            Some(broker) => {
                let now = self.now();
                let expires_at = now.saturating_add(self.inner.settings.enrollment_ttl);
                let user = {
                    let mut rng = self
                        .inner
                        .rng
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    broker.mint_enrollment_user(
                        &deployment.id,
                        node,
                        unix_seconds(now),
                        unix_seconds(expires_at),
                        &mut *rng,
                    )
                }
                .map_err(|error| {
                    ServiceError::Unavailable(format!(
                        "failed to mint enrollment credentials: {error}"
                    ))
                })?;
                (
                    Some(broker.ca_pem().to_owned()),
                    Some(user.jwt),
                    Some(user.seed),
                )
            }
            None => (None, None, None),
        };
        Ok(BootstrapFile {
            deployment: deployment.id.to_string(),
            node: node.to_string(),
            nats_url: self.inner.settings.advertise_nats_url.clone(),
            state_dir: options.state_dir,
            root_key: root.to_hex(),
            trust_document: base64::engine::general_purpose::STANDARD.encode(trust_bytes),
            approval_key: deployment.approval_key.clone(),
            enrollment_token: Some(token),
            ca_certificate,
            enrollment_jwt,
            enrollment_seed,
            iggy_config_path: None,
            heartbeat_interval_secs: options.heartbeat_interval_secs,
            clock_skew_secs: None,
            task_validity_max_secs: None,
            self_upgrade_health_timeout_secs: None,
            components: Default::default(),
            tls_names: options.tls_names,
            tls_listen: None,
            access: None,
        })
    }

    /// Lists a deployment's nodes by id.
    pub async fn list_nodes(
        &self,
        deployment: &DeploymentId,
    ) -> Result<Vec<NodeRecord>, ServiceError> {
        self.require_deployment(deployment).await?;
        let mut nodes: Vec<NodeRecord> = self
            .inner
            .store
            .list::<NodeRecord>()
            .await?
            .into_iter()
            .filter(|node| &node.deployment == deployment)
            .collect();
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(nodes)
    }

    /// Signs and records one task per target node and leaves each on its node's subject.
    pub async fn issue(
        &self,
        deployment: DeploymentId,
        target: Target,
        request: ActionRequest,
        ttl_secs: Option<u64>,
    ) -> Result<Vec<TaskRecord>, ServiceError> {
        let deployment_record = self.require_deployment(&deployment).await?;
        let trust = self.current_trust().await?;
        let action = request.into_action(&trust)?;
        let needs_approval = action.needs_approval() && deployment_record.approval_key.is_some();
        let ttl = issue::validate_ttl(ttl_secs)?;
        // Set for an issue to all nodes that makes its document the deployment's desired one.
        let mut desired_issue_at = None;
        let nodes = match target {
            Target::Node(node) => {
                let key = warden_bus::subject::node_key(&deployment, &node);
                if self.inner.store.get::<NodeRecord>(&key).await?.is_none() {
                    return Err(ServiceError::NotFound {
                        what: format!("node {node} in deployment {deployment}"),
                        fix: "add it with `wardenctl node add`, or check `wardenctl node list`"
                            .into(),
                    });
                }
                vec![node]
            }
            Target::AllNodes => {
                // Taken before the listing: a node added after it counts as added later.
                let issued_at = self.now();
                let nodes: Vec<NodeId> = self
                    .list_nodes(&deployment)
                    .await?
                    .into_iter()
                    .map(|record| record.node)
                    .collect();
                if nodes.is_empty() {
                    return Err(ServiceError::Conflict {
                        what: format!("deployment {deployment} has no nodes"),
                        fix: "add nodes with `wardenctl node add` first".into(),
                    });
                }
                // A task that needs the customer's approval is not sent again without it.
                if !needs_approval {
                    desired_issue_at = Some(issued_at);
                }
                nodes
            }
        };

        let mut records = Vec::with_capacity(nodes.len());
        for node in nodes {
            let now = self.now();
            let signer = &self.inner.signer;
            let task = issue::build_task(
                self.random_bytes(),
                &deployment,
                &node,
                &action,
                now,
                ttl,
                signer.id(),
            )
            .map_err(|error| FieldError {
                field: "params",
                reason: error.to_string(),
            })?;
            let envelope = Envelope::seal(MessageId::from_random(self.random_bytes()), &task)
                .map_err(|error| FieldError {
                    field: "params",
                    reason: error.to_string(),
                })?;
            let signed = self
                .inner
                .signer
                .sign(&envelope)
                .and_then(|signed| signed.encode())
                .map_err(|error| FieldError {
                    field: "params",
                    reason: error.to_string(),
                })?;
            let mut record = TaskRecord::pending(
                task.id.clone(),
                deployment.clone(),
                node.clone(),
                task.kind.clone(),
                issue::summarize(&action),
                now,
                task.expires_at,
                base64::engine::general_purpose::STANDARD.encode(&signed),
            );
            if needs_approval {
                record.status = TaskStatus::AwaitingApproval;
                if let Some(first) = record.history.first_mut() {
                    first.status = TaskStatus::AwaitingApproval;
                }
            }
            if let Err(error) = self.inner.store.create(&record).await {
                // Tasks recorded so far stay and will be delivered; name them so the operator
                // does not issue them again.
                let created: Vec<String> = records
                    .iter()
                    .map(|task: &TaskRecord| format!("{} ({})", task.id, task.node))
                    .collect();
                let reason = if created.is_empty() {
                    error.to_string()
                } else {
                    format!("{error}; {} task(s) were recorded before the failure and will be delivered: {}", created.len(), created.join(", "))
                };
                return Err(ServiceError::Unavailable(reason));
            }
            tracing::info!(deployment_id = %deployment, node_id = %node, task_id = %task.id, kind = %task.kind, awaiting_approval = needs_approval, "task issued");
            self.failpoint("crash-after-task-record");
            if needs_approval {
                records.push(record);
                continue;
            }

            // A failed publish leaves the task pending; the sweeper publishes it later.
            match self.publish(&record).await {
                Ok(updated) => record = updated,
                Err(error) => {
                    tracing::warn!(task_id = %task.id, error = %error, "failed to publish task; the sweeper will retry");
                }
            }
            records.push(record);
        }
        if let Some(issued_at) = desired_issue_at {
            // From now on nodes that report an older rule set or configuration get this one
            // again. The tasks are recorded, so they reach their nodes even if this fails.
            let expires_at = records
                .iter()
                .map(|record| record.expires_at)
                .max()
                .unwrap_or(issued_at);
            let issue = IssueWindow {
                issued_at,
                expires_at,
            };
            if let Err(error) = self.record_desired(&deployment, &action, issue).await {
                tracing::warn!(deployment_id = %deployment, error = %error, "failed to record the desired document; nodes that miss their task will not get it again");
            }
        }
        Ok(records)
    }

    /// Stores a recorded task in the task stream and notes its sequence.
    async fn publish(&self, record: &TaskRecord) -> Result<TaskRecord, ServiceError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&record.signed_task)
            .map_err(|error| {
                ServiceError::Unavailable(format!(
                    "stored signed task {} is not base64: {error}",
                    record.id
                ))
            })?;
        let subject = Subject::tasks(&record.deployment, &record.node);
        let sequence = self
            .inner
            .bus
            .persist(&subject, bytes.into(), Some(record.id.as_str()))
            .await?;
        let updated = self
            .inner
            .store
            .update::<TaskRecord>(&record.key(), |stored| {
                if stored.published_sequence.is_some() {
                    return false;
                }
                stored.published_sequence = Some(sequence);
                true
            })
            .await?;
        tracing::debug!(task_id = %record.id, sequence, "task stored in the task stream");
        Ok(updated.unwrap_or_else(|| record.clone()))
    }

    /// Makes the trust document from the replica's file the shared current one, unless the
    /// shared one is the same or newer. Fails if this replica's task key is not listed and valid.
    pub async fn setup_trust(
        &self,
        from_file: &SignedDocument,
    ) -> Result<TrustDocument, ServiceError> {
        let offered = from_file
            .document_unverified()
            .map_err(|error| FieldError {
                field: "trust_document",
                reason: error.to_string(),
            })?;
        offered.validate().map_err(|error| FieldError {
            field: "trust_document",
            reason: error.to_string(),
        })?;
        let now = self.now();
        let skew = warden::core::CLOCK_SKEW_DEFAULT;
        let current = match self
            .inner
            .bus
            .kv_get(CONTROL_BUCKET, TRUST_DOCUMENT_KEY)
            .await?
        {
            None => {
                let root = offered.root().map_err(|error| FieldError {
                    field: "trust_document",
                    reason: error.to_string(),
                })?;
                let document = from_file
                    .verify_initial(&root, now, skew)
                    .map_err(|error| FieldError {
                        field: "trust_document",
                        reason: error.to_string(),
                    })?;
                self.store_trust(from_file, None).await?;
                document
            }
            Some(entry) => {
                let stored = decode_stored_trust(&entry.value)?;
                if offered.version > stored.version {
                    let document =
                        from_file
                            .verify_successor(&stored, now, skew)
                            .map_err(|error| FieldError {
                                field: "trust_document",
                                reason: error.to_string(),
                            })?;
                    self.store_trust(from_file, Some(entry.revision)).await?;
                    document
                } else {
                    stored
                }
            }
        };
        self.check_own_key(&current)?;
        Ok(current)
    }

    /// Replaces the shared trust document with a successor signed by the current root.
    pub async fn publish_trust(
        &self,
        document: &SignedDocument,
    ) -> Result<TrustDocument, ServiceError> {
        let entry = self
            .inner
            .bus
            .kv_get(CONTROL_BUCKET, TRUST_DOCUMENT_KEY)
            .await?
            .ok_or_else(|| {
                ServiceError::Unavailable(
                    "no trust document is stored; start a control plane with --trust-document"
                        .into(),
                )
            })?;
        let stored = decode_stored_trust(&entry.value)?;
        let next = document
            .verify_successor(&stored, self.now(), warden::core::CLOCK_SKEW_DEFAULT)
            .map_err(|error| FieldError {
                field: "document",
                reason: error.to_string(),
            })?;
        self.check_own_key(&next).map_err(|_| ServiceError::Conflict {
            what: format!(
                "trust document version {} does not list this control plane's task key {} as valid now",
                next.version,
                self.inner.signer.id()
            ),
            fix: "restart the control planes with a key the new document lists, then publish it".into(),
        })?;
        self.store_trust(document, Some(entry.revision)).await?;
        tracing::info!(
            from_version = stored.version,
            to_version = next.version,
            "trust document published"
        );
        Ok(next)
    }

    /// Reads the current signed trust document.
    pub async fn current_trust(&self) -> Result<SignedDocument, ServiceError> {
        let entry = self
            .inner
            .bus
            .kv_get(CONTROL_BUCKET, TRUST_DOCUMENT_KEY)
            .await?
            .ok_or_else(|| {
                ServiceError::Unavailable(
                    "no trust document is stored; start a control plane with --trust-document"
                        .into(),
                )
            })?;
        SignedDocument::decode(&entry.value).map_err(|error| {
            ServiceError::Unavailable(format!("the stored trust document is damaged: {error}"))
        })
    }

    async fn store_trust(
        &self,
        document: &SignedDocument,
        revision: Option<u64>,
    ) -> Result<(), ServiceError> {
        let bytes = document.encode().map_err(|error| FieldError {
            field: "trust_document",
            reason: error.to_string(),
        })?;
        match self
            .write_control(TRUST_DOCUMENT_KEY, bytes, revision)
            .await
        {
            Ok(_) => Ok(()),
            Err(BusError::KeyExists { .. } | BusError::RevisionMismatch { .. }) => {
                Err(ServiceError::Conflict {
                    what: "another replica changed the trust document at the same time".into(),
                    fix: "retry".into(),
                })
            }
            Err(error) => Err(error.into()),
        }
    }

    fn check_own_key(&self, document: &TrustDocument) -> Result<(), ServiceError> {
        let id = self.inner.signer.id();
        match document.task_key(id) {
            Some((grant, _)) if grant.is_valid_at(self.now(), Duration::ZERO) => Ok(()),
            Some((grant, _)) => Err(ServiceError::Conflict {
                what: format!(
                    "this control plane's task key {id} is valid from {} to {} in trust document version {}, not now",
                    grant.not_before, grant.not_after, document.version
                ),
                fix: "start with a task key that the trust document lists as valid now".into(),
            }),
            None => Err(ServiceError::Conflict {
                what: format!("trust document version {} does not list this control plane's task key {id}", document.version),
                fix: "sign a trust document that lists the key with `wardenctl trust sign --task-key`".into(),
            }),
        }
    }

    /// Attaches the deployment's approval signature to a task awaiting it and publishes the
    /// task. The signature must cover the signed task's envelope bytes.
    pub async fn approve(
        &self,
        id: &TaskId,
        approval: KeySignature,
    ) -> Result<TaskRecord, ServiceError> {
        let task = self.get_task(id).await?;
        if task.status != TaskStatus::AwaitingApproval {
            return Err(ServiceError::Conflict {
                what: format!(
                    "task {id} is {}, not awaiting approval",
                    task.status.as_str()
                ),
                fix: "approve only tasks listed with status awaiting_approval".into(),
            });
        }
        let deployment = self.require_deployment(&task.deployment).await?;
        let key = deployment
            .approval_key
            .as_deref()
            .map(PublicKey::from_hex)
            .transpose()
            .map_err(|error| {
                ServiceError::Unavailable(format!("stored approval key is damaged: {error}"))
            })?
            .ok_or_else(|| ServiceError::Conflict {
                what: format!("deployment {} has no approval key", task.deployment),
                fix: "nothing to approve".into(),
            })?;
        let mut signed = decode_signed_task(&task)?;
        if !key.verify_signature(&signed.body, &approval) {
            return Err(FieldError {
                field: "signature",
                reason: format!(
                    "does not verify with deployment {}'s approval key {}; sign the task's signed_body with that key",
                    task.deployment,
                    key.id()
                ),
            }
            .into());
        }
        signed.approvals.push(approval);
        let bytes = signed.encode().map_err(|error| FieldError {
            field: "signature",
            reason: error.to_string(),
        })?;
        let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
        let now = self.now();
        let mut approved = false;
        let record = self
            .inner
            .store
            .update::<TaskRecord>(id.as_str(), |record| {
                approved = record.status == TaskStatus::AwaitingApproval;
                if approved {
                    record.signed_task = encoded.clone();
                    record.status = TaskStatus::Pending;
                    record.history.push(crate::core::lifecycle::HistoryEntry {
                        at: now,
                        status: TaskStatus::Pending,
                        code: None,
                        detail: Some("approved".into()),
                        applied: true,
                    });
                }
                approved
            })
            .await?
            .ok_or_else(|| ServiceError::NotFound {
                what: format!("task {id}"),
                fix: "check the id".into(),
            })?;
        if !approved {
            return Err(ServiceError::Conflict {
                what: format!("task {id} changed while approving"),
                fix: "retry".into(),
            });
        }
        tracing::info!(task_id = %id, deployment_id = %record.deployment, "task approved");
        match self.publish(&record).await {
            Ok(updated) => Ok(updated),
            Err(error) => {
                tracing::warn!(task_id = %id, error = %error, "failed to publish approved task; the sweeper will retry");
                Ok(record)
            }
        }
    }

    /// Lists tasks, newest first.
    pub async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>, ServiceError> {
        let mut tasks: Vec<TaskRecord> = self
            .inner
            .store
            .list::<TaskRecord>()
            .await?
            .into_iter()
            .filter(|task| {
                filter
                    .deployment
                    .as_ref()
                    .is_none_or(|d| &task.deployment == d)
            })
            .filter(|task| filter.node.as_ref().is_none_or(|n| &task.node == n))
            .filter(|task| filter.status.is_none_or(|s| task.status == s))
            .collect();
        tasks.sort_by(|a, b| b.issued_at.cmp(&a.issued_at).then_with(|| a.id.cmp(&b.id)));
        if let Some(limit) = filter.limit {
            tasks.truncate(limit);
        }
        Ok(tasks)
    }

    /// Reads one task.
    pub async fn get_task(&self, id: &TaskId) -> Result<TaskRecord, ServiceError> {
        match self.inner.store.get::<TaskRecord>(id.as_str()).await? {
            Some((record, _)) => Ok(record),
            None => Err(ServiceError::NotFound {
                what: format!("task {id}"),
                fix: "check the id with `wardenctl task list`".into(),
            }),
        }
    }

    /// Applies a message from a node's report subject: an enrollment request or a signed task
    /// report. Malformed, unverifiable or misaddressed messages are logged and dropped; a
    /// report from a node whose enrollment has not been recorded yet is retried a few times,
    /// since the enrollment may be right behind it. Only broker failures return an error.
    pub async fn ingest_report(
        &self,
        subject: &str,
        payload: &[u8],
        delivered_count: u64,
    ) -> Result<Disposition, ServiceError> {
        let Some(origin) = NodeSubject::parse(subject) else {
            tracing::warn!(
                subject,
                "dropping report on a subject outside the node scheme"
            );
            return Ok(Disposition::Done);
        };
        let drop = |reason: &str, error: &dyn std::fmt::Display| {
            if let Some(suppressed) = self.may_log(&origin) {
                tracing::warn!(deployment_id = %origin.deployment, node_id = %origin.node, error = %error, suppressed, "{reason}");
            }
            Ok(Disposition::Done)
        };
        let signed = match SignedEnvelope::decode(payload) {
            Ok(signed) => signed,
            Err(error) => return drop("dropping malformed report", &error),
        };
        let unverified = match signed.decode_unverified() {
            Ok(envelope) => envelope,
            Err(error) => return drop("dropping malformed report", &error),
        };
        if unverified.message_type == warden_bus::MessageType::EnrollRequest {
            return self.enroll(&origin, &signed).await;
        }

        // Everything else must be signed by the node's enrolled key.
        let key = warden_bus::subject::node_key(&origin.deployment, &origin.node);
        let Some((node, _)) = self.inner.store.get::<NodeRecord>(&key).await? else {
            return drop(
                "dropping report from an unregistered node",
                &"no node record",
            );
        };
        let Some(node_key) = node.enrollment.node_key.as_deref() else {
            if delivered_count < ENROLLMENT_WAIT_DELIVERIES {
                return Ok(Disposition::Retry(ENROLLMENT_WAIT));
            }
            return drop(
                "dropping report from a node that has not enrolled",
                &"no enrolled key",
            );
        };
        let verified = PublicKey::from_hex(node_key)
            .map_err(|error| error.to_string())
            .and_then(|key| signed.verify_with(&key).map_err(|error| error.to_string()));
        let envelope = match verified {
            Ok(envelope) => envelope,
            Err(error) => {
                return drop(
                    "dropping report not signed by the node's enrolled key",
                    &error,
                )
            }
        };
        let report = match envelope.open::<TaskReport>() {
            Ok(report) => report,
            Err(error) => return drop("dropping malformed report", &error),
        };
        if report.deployment != origin.deployment || report.node != origin.node {
            if let Some(suppressed) = self.may_log(&origin) {
                tracing::warn!(
                    deployment_id = %origin.deployment,
                    node_id = %origin.node,
                    claimed_node = %report.node,
                    task_id = %report.task_id,
                    suppressed,
                    "dropping report that names another node than its subject"
                );
            }
            return Ok(Disposition::Done);
        }
        match self.apply_report(&report).await {
            Ok(()) => Ok(Disposition::Done),
            // A record that cannot be read or written will not get better on redelivery.
            Err(error @ (StoreError::Damaged { .. } | StoreError::Contended { .. })) => drop(
                "dropping report whose task record cannot be updated",
                &error,
            ),
            Err(error) => Err(error.into()),
        }
    }

    async fn apply_report(&self, report: &TaskReport) -> Result<(), StoreError> {
        let now = self.now();
        let mut foreign = false;
        let mut changed = false;
        let updated = self
            .inner
            .store
            .update::<TaskRecord>(report.task_id.as_str(), |record| {
                foreign = record.node != report.node || record.deployment != report.deployment;
                changed = !foreign && record.apply_report(report, now);
                changed
            })
            .await?;
        match updated {
            None => {
                tracing::warn!(node_id = %report.node, task_id = %report.task_id, "dropping report for an unknown task")
            }
            Some(_) if foreign => tracing::warn!(
                node_id = %report.node,
                task_id = %report.task_id,
                "dropping report from a node the task was not addressed to"
            ),
            Some(record) if changed => tracing::info!(
                deployment_id = %record.deployment,
                node_id = %record.node,
                task_id = %record.id,
                status = record.status.as_str(),
                reject_code = record.reject_code.as_deref().unwrap_or(""),
                "task report recorded"
            ),
            Some(_) => {}
        }
        Ok(())
    }

    async fn enroll(
        &self,
        origin: &NodeSubject,
        signed: &SignedEnvelope,
    ) -> Result<Disposition, ServiceError> {
        // A refusal is logged inside; on the report stream there is no one to answer.
        let _enrolled_or_refused = self.enroll_key(origin, signed).await?;
        Ok(Disposition::Done)
    }

    /// Applies a signed enrollment request. Returns the enrolled key, or why it was refused;
    /// refusals are logged.
    async fn enroll_key(
        &self,
        origin: &NodeSubject,
        signed: &SignedEnvelope,
    ) -> Result<Result<PublicKey, String>, ServiceError> {
        let refuse = |reason: String| {
            if let Some(suppressed) = self.may_log(origin) {
                tracing::warn!(deployment_id = %origin.deployment, node_id = %origin.node, reason = %reason, suppressed, "enrollment refused");
            }
            Ok(Err(reason))
        };

        // The request names the key that signed it: verifying proves the node has its private half.
        let request = match signed
            .decode_unverified()
            .and_then(|envelope| envelope.open::<EnrollRequest>())
        {
            Ok(request) => request,
            Err(error) => return refuse(format!("malformed enrollment request: {error}")),
        };
        let key = match PublicKey::from_bytes(&request.public_key) {
            Ok(key) => key,
            Err(error) => return refuse(error.to_string()),
        };
        if let Err(error) = signed.verify_with(&key) {
            return refuse(format!(
                "the request is not signed by the key it presents: {error}"
            ));
        }
        if request.deployment != origin.deployment || request.node != origin.node {
            return refuse("the request names another node than its subject".into());
        }

        let now = self.now();
        let mut outcome = EnrollOutcome::AlreadyEnrolled;
        let record_key = warden_bus::subject::node_key(&origin.deployment, &origin.node);
        let updated = self
            .inner
            .store
            .update::<NodeRecord>(&record_key, |record| {
                outcome = record.enrollment.enroll(&request.token, &key.to_hex(), now);
                outcome != EnrollOutcome::AlreadyEnrolled
            })
            .await?;
        if updated.is_none() {
            return refuse("no such node is registered".into());
        }
        match outcome {
            EnrollOutcome::Enrolled => {
                tracing::info!(deployment_id = %origin.deployment, node_id = %origin.node, node_key_id = %key.id(), "node enrolled");
                Ok(Ok(key))
            }
            EnrollOutcome::AlreadyEnrolled => Ok(Ok(key)),
            EnrollOutcome::Rejected(reason) => refuse(reason),
        }
    }

    /// Answers a node's request on `ld.<deployment>.<node>.rpc.<verb>`: enrollment with the
    /// one-time token, or renewal signed by the enrolled key. Either grants a user JWT for the
    /// node's key. Returns the encoded reply, or `None` when the request is not one to answer.
    pub async fn handle_rpc(
        &self,
        subject: &str,
        payload: &[u8],
    ) -> Result<Option<Vec<u8>>, ServiceError> {
        let Some(origin) = NodeSubject::parse(subject) else {
            return Ok(None);
        };
        let Some(verb) = subject.rsplit('.').next() else {
            return Ok(None);
        };
        if verb == "certificate" {
            return self.certificate_rpc(&origin, payload).await.map(Some);
        }
        if verb == "fetch" {
            let reply = match SignedEnvelope::decode(payload) {
                Ok(signed) => self.fetch(&origin, &signed).await?,
                Err(error) => warden_bus::messages::FetchReply::Refused {
                    reason: format!("malformed request: {error}"),
                },
            };
            return Ok(Some(reply.encode().unwrap_or_else(|error| {
                tracing::error!(error = %error, "failed to encode a fetch reply");
                Vec::new()
            })));
        }
        let signed = match SignedEnvelope::decode(payload) {
            Ok(signed) => signed,
            Err(error) => {
                return Ok(Some(
                    self.credential_reply(Err(format!("malformed request: {error}"))),
                ))
            }
        };
        let key = match verb {
            "enroll" => self.enroll_key(&origin, &signed).await?,
            "renew" => self.renew_key(&origin, &signed).await?,
            _ => return Ok(None),
        };
        let reply = match key {
            Ok(key) => self.grant(&origin, &key),
            Err(reason) => Err(reason),
        };
        Ok(Some(self.credential_reply(reply)))
    }

    /// Checks a renewal request against the node's enrolled key.
    async fn renew_key(
        &self,
        origin: &NodeSubject,
        signed: &SignedEnvelope,
    ) -> Result<Result<PublicKey, String>, ServiceError> {
        let opened = self
            .open_from_node::<RenewRequest>(origin, signed, |request| {
                (&request.deployment, &request.node)
            })
            .await?;
        match opened {
            Ok((key, _)) => Ok(Ok(key)),
            Err(reason) => {
                if let Some(suppressed) = self.may_log(origin) {
                    tracing::warn!(deployment_id = %origin.deployment, node_id = %origin.node, reason = %reason, suppressed, "credential renewal refused");
                }
                Ok(Err(reason))
            }
        }
    }

    /// Opens a request that `origin` signed with its enrolled key and that names `origin`
    /// itself. Returns the key and the request, or the reason for rejecting it; only broker
    /// failures are errors.
    pub(crate) async fn open_from_node<T: warden_bus::envelope::Message>(
        &self,
        origin: &NodeSubject,
        signed: &SignedEnvelope,
        names: impl Fn(&T) -> (&DeploymentId, &NodeId),
    ) -> Result<Result<(PublicKey, T), String>, ServiceError> {
        let record_key = warden_bus::subject::node_key(&origin.deployment, &origin.node);
        let Some((node, _)) = self.inner.store.get::<NodeRecord>(&record_key).await? else {
            return Ok(Err("no such node is registered".into()));
        };
        Ok(open_signed_by_node(&node, origin, signed, names))
    }

    /// Mints the node's user JWT, if this replica runs with a broker set-up.
    fn grant(&self, origin: &NodeSubject, key: &PublicKey) -> Result<(String, UnixMillis), String> {
        let Some(broker) = self.inner.broker.as_ref() else {
            return Err(
                "this control plane runs without broker credentials (no --broker-dir)".into(),
            );
        };
        let now = self.now();
        let expires_at = now.saturating_add(self.inner.settings.node_jwt_ttl);
        let user = crate::broker::node_user_public_key(key).map_err(|error| error.to_string())?;
        let jwt = broker
            .mint_node_jwt(
                &origin.deployment,
                &origin.node,
                &user,
                unix_seconds(now),
                unix_seconds(expires_at),
            )
            .map_err(|error| error.to_string())?;
        tracing::info!(deployment_id = %origin.deployment, node_id = %origin.node, expires_at = %expires_at, "issued node credentials");
        Ok((jwt, expires_at))
    }

    fn credential_reply(&self, result: Result<(String, UnixMillis), String>) -> Vec<u8> {
        let reply = match result {
            Ok((jwt, expires_at)) => CredentialReply::Granted { jwt, expires_at },
            Err(reason) => CredentialReply::Refused {
                reason: warden_bus::messages::truncate(
                    &reason,
                    warden_bus::messages::REASON_BYTES_MAX,
                ),
            },
        };
        Envelope::seal(MessageId::from_random(self.random_bytes()), &reply)
            .and_then(|envelope| envelope.encode())
            .unwrap_or_default()
    }

    /// Revokes a node's identity: its enrolled key stops counting at once, and with a broker
    /// set-up the broker disconnects the node and refuses its credentials.
    pub async fn revoke(
        &self,
        deployment: DeploymentId,
        node: NodeId,
    ) -> Result<NodeRecord, ServiceError> {
        let (record, _) = self
            .revoke_then_update(&deployment, &node, |record| {
                record.enrollment.node_key = None;
                record.enrollment.token_sha256 = None;
            })
            .await?;
        tracing::warn!(deployment_id = %deployment, node_id = %node, "node identity revoked");
        Ok(record)
    }

    /// Revokes the node's enrolled key at the broker, then applies `change` to its record.
    ///
    /// The broker learns first, so a crash in between leaves the key refused by the broker
    /// while the record still names it, and the operator's retry revokes it again. Returns the
    /// record as written and the revoked key, if the node had one.
    async fn revoke_then_update(
        &self,
        deployment: &DeploymentId,
        node: &NodeId,
        mut change: impl FnMut(&mut NodeRecord),
    ) -> Result<(NodeRecord, Option<String>), ServiceError> {
        let key = warden_bus::subject::node_key(deployment, node);
        let not_found = || ServiceError::NotFound {
            what: format!("node {node} in deployment {deployment}"),
            fix: "check `wardenctl node list`".into(),
        };
        for _ in 0..crate::store::UPDATE_ATTEMPTS_MAX {
            let (current, _) = self
                .inner
                .store
                .get::<NodeRecord>(&key)
                .await?
                .ok_or_else(not_found)?;
            let enrolled = current.enrollment.node_key;
            if let Some(old) = &enrolled {
                self.revoke_at_broker(old).await?;
            }
            // The node may have enrolled another key meanwhile; that one is revoked first too.
            let mut unchanged_key = false;
            let record = self
                .inner
                .store
                .update::<NodeRecord>(&key, |record| {
                    unchanged_key = record.enrollment.node_key == enrolled;
                    if unchanged_key {
                        change(record);
                    }
                    unchanged_key
                })
                .await?
                .ok_or_else(not_found)?;
            if unchanged_key {
                return Ok((record, enrolled));
            }
        }
        Err(ServiceError::Conflict {
            what: format!("node {node} kept enrolling new keys during the revocation"),
            fix: "retry".into(),
        })
    }

    /// Writes `key` in the control bucket: creates it when `revision` is `None`, otherwise
    /// replaces the value stored at `revision`.
    async fn write_control(
        &self,
        key: &str,
        bytes: Vec<u8>,
        revision: Option<u64>,
    ) -> Result<u64, BusError> {
        let bus = &self.inner.bus;
        match revision {
            None => bus.kv_create(CONTROL_BUCKET, key, bytes.into()).await,
            Some(revision) => {
                bus.kv_update(CONTROL_BUCKET, key, bytes.into(), revision)
                    .await
            }
        }
    }

    /// Adds a node key to the account's revocations and pushes the re-signed account JWT.
    async fn revoke_at_broker(&self, node_key_hex: &str) -> Result<(), ServiceError> {
        if self.inner.broker.is_none() {
            return Ok(());
        }
        let key = PublicKey::from_hex(node_key_hex).map_err(|error| {
            ServiceError::Unavailable(format!("stored node key is damaged: {error}"))
        })?;
        let user = crate::broker::node_user_public_key(&key)
            .map_err(|error| ServiceError::Unavailable(error.to_string()))?;
        let now = unix_seconds(self.now());
        for _ in 0..crate::store::UPDATE_ATTEMPTS_MAX {
            let current = self
                .inner
                .bus
                .kv_get(CONTROL_BUCKET, REVOCATIONS_KEY)
                .await?;
            let mut revocations =
                decode_revocations(current.as_ref().map(|entry| entry.value.as_ref()))?;
            revocations.insert(user.clone(), now);
            let bytes = serde_json::to_vec(&revocations).map_err(|error| {
                ServiceError::Unavailable(format!("failed to encode revocations: {error}"))
            })?;
            let revision = current.as_ref().map(|entry| entry.revision);
            match self.write_control(REVOCATIONS_KEY, bytes, revision).await {
                Ok(_) => return self.push_account().await,
                Err(BusError::KeyExists { .. } | BusError::RevisionMismatch { .. }) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(ServiceError::Conflict {
            what: "the revocation list kept changing".into(),
            fix: "retry".into(),
        })
    }

    /// Signs the application account with the stored revocations and pushes it to the broker.
    /// Safe to repeat; a replica runs it at start so the broker matches the stored list.
    pub async fn push_account(&self) -> Result<(), ServiceError> {
        let (Some(broker), Some(pusher)) = (
            self.inner.broker.as_ref(),
            self.inner.account_pusher.as_ref(),
        ) else {
            return Ok(());
        };
        let stored = self
            .inner
            .bus
            .kv_get(CONTROL_BUCKET, REVOCATIONS_KEY)
            .await?;
        let revocations = decode_revocations(stored.as_ref().map(|entry| entry.value.as_ref()))?;
        let jwt = broker
            .app_account_jwt(&revocations, unix_seconds(self.now()))
            .map_err(|error| ServiceError::Unavailable(error.to_string()))?;
        crate::nats_security::push_account_jwt(pusher, &broker.app_account_public_key(), &jwt)
            .await
            .map_err(|error| ServiceError::Unavailable(error.to_string()))?;
        tracing::info!(revoked = revocations.len(), "account pushed to the broker");
        Ok(())
    }

    /// Verifies a batch of component output from a node and writes each line to the control
    /// plane's log (target `component_logs`) with the node and component. Batches not signed
    /// by the node's enrolled key, naming another node, or over the size bounds are dropped.
    pub async fn ingest_logs(&self, subject: &str, payload: &[u8]) -> Result<(), ServiceError> {
        let Some(origin) = NodeSubject::parse(subject) else {
            return Ok(());
        };
        let key = warden_bus::subject::node_key(&origin.deployment, &origin.node);
        let Some((node, _)) = self.inner.store.get::<NodeRecord>(&key).await? else {
            return Ok(());
        };
        let Some(node_key) = node.enrollment.node_key.as_deref() else {
            return Ok(());
        };
        let verified = SignedEnvelope::decode(payload)
            .map_err(|error| error.to_string())
            .and_then(|signed| {
                let key = PublicKey::from_hex(node_key).map_err(|error| error.to_string())?;
                signed.verify_with(&key).map_err(|error| error.to_string())
            })
            .and_then(|envelope| {
                envelope
                    .open::<warden_bus::messages::ComponentLogs>()
                    .map_err(|error| error.to_string())
            });
        let batch = match verified {
            Ok(batch) => batch,
            Err(error) => {
                if let Some(suppressed) = self.may_log(&origin) {
                    tracing::warn!(deployment_id = %origin.deployment, node_id = %origin.node, error = %error, suppressed, "dropping log batch not signed by the node's enrolled key");
                }
                return Ok(());
            }
        };
        if batch.deployment != origin.deployment || batch.node != origin.node {
            if let Some(suppressed) = self.may_log(&origin) {
                tracing::warn!(deployment_id = %origin.deployment, node_id = %origin.node, suppressed, "dropping log batch that names another node than its subject");
            }
            return Ok(());
        }
        if batch.lines.len() > warden_bus::messages::LOG_LINES_PER_BATCH_MAX {
            if let Some(suppressed) = self.may_log(&origin) {
                tracing::warn!(deployment_id = %origin.deployment, node_id = %origin.node, lines = batch.lines.len(), suppressed, "dropping log batch over the line limit");
            }
            return Ok(());
        }
        let stream = match batch.stream.as_str() {
            "stdout" => "stdout",
            "stderr" => "stderr",
            _ => "unknown",
        };
        // The node's own report of dropped lines counts as one more line.
        let requested = batch.lines.len() + usize::from(batch.dropped > 0);
        let admission = self
            .inner
            .component_line_limiter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit_many(
                &warden_bus::subject::node_key(&origin.deployment, &origin.node),
                self.now(),
                u32::try_from(requested).unwrap_or(u32::MAX),
            );
        if admission.held_back > 0 {
            tracing::warn!(target: "component_logs", deployment_id = %origin.deployment, node_id = %origin.node, held_back = admission.held_back, "held back output lines of this node over the bound of {COMPONENT_LINES_PER_WINDOW} per {} s", COMPONENT_LINES_WINDOW.as_secs());
        }
        let mut allowance = usize::try_from(admission.written).unwrap_or(usize::MAX);
        if batch.dropped > 0 && allowance > 0 {
            allowance -= 1;
            tracing::warn!(target: "component_logs", deployment_id = %origin.deployment, node_id = %origin.node, component = %batch.component, stream, dropped = batch.dropped, "the node dropped output lines over its rate bound");
        }
        for line in batch.lines.iter().take(allowance) {
            let line =
                warden_bus::messages::truncate(line, warden_bus::messages::LOG_LINE_BYTES_MAX);
            tracing::info!(target: "component_logs", deployment_id = %origin.deployment, node_id = %origin.node, component = %batch.component, stream, line = %line);
        }
        Ok(())
    }

    /// Applies a heartbeat signed by the node's enrolled key. Anything else is dropped.
    pub async fn ingest_heartbeat(
        &self,
        subject: &str,
        payload: &[u8],
    ) -> Result<(), ServiceError> {
        let Some(origin) = NodeSubject::parse(subject) else {
            return Ok(());
        };
        // Each heartbeat costs a read and a write of the node record. Only the node's own
        // credentials can publish here, so a flood comes from that node or a thief of its key.
        let key = warden_bus::subject::node_key(&origin.deployment, &origin.node);
        let admitted = self
            .inner
            .heartbeat_limiter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(&key, self.now());
        if admitted.is_none() {
            if let Some(suppressed) = self.may_log(&origin) {
                tracing::warn!(deployment_id = %origin.deployment, node_id = %origin.node, suppressed, "dropping heartbeats over the rate bound of {HEARTBEATS_PER_WINDOW} per {} s", HEARTBEAT_WINDOW.as_secs());
            }
            return Ok(());
        }
        let Some((node, _)) = self.inner.store.get::<NodeRecord>(&key).await? else {
            tracing::debug!(deployment_id = %origin.deployment, node_id = %origin.node, "heartbeat from an unregistered node");
            return Ok(());
        };
        let Some(node_key) = node.enrollment.node_key.as_deref() else {
            tracing::debug!(deployment_id = %origin.deployment, node_id = %origin.node, "heartbeat from a node that has not enrolled");
            return Ok(());
        };
        let verified = SignedEnvelope::decode(payload)
            .map_err(|error| error.to_string())
            .and_then(|signed| {
                let key = PublicKey::from_hex(node_key).map_err(|error| error.to_string())?;
                signed.verify_with(&key).map_err(|error| error.to_string())
            })
            .and_then(|envelope| {
                envelope
                    .open::<Heartbeat>()
                    .map_err(|error| error.to_string())
            });
        let heartbeat = match verified {
            Ok(heartbeat) => heartbeat,
            Err(error) => {
                if let Some(suppressed) = self.may_log(&origin) {
                    tracing::warn!(deployment_id = %origin.deployment, node_id = %origin.node, error = %error, suppressed, "dropping heartbeat not signed by the node's enrolled key");
                }
                return Ok(());
            }
        };
        if heartbeat.deployment != origin.deployment || heartbeat.node != origin.node {
            if let Some(suppressed) = self.may_log(&origin) {
                tracing::warn!(deployment_id = %origin.deployment, node_id = %origin.node, suppressed, "dropping heartbeat that names another node than its subject");
            }
            return Ok(());
        }
        let now = self.now();
        let policy = self.inner.settings.certificates.alerts;
        let mut transition: Option<HealthTransition> = None;
        let mut alert_changes = Vec::new();
        let updated = self
            .inner
            .store
            .update::<NodeRecord>(&key, |record| {
                transition = record.on_heartbeat(&heartbeat, now);
                alert_changes = certificates::evaluate_alerts(record, now, policy);
                true
            })
            .await?;
        if let Some(transition) = transition {
            log_transition(&heartbeat.deployment, &heartbeat.node, &transition);
        }
        certificates::log_alert_changes(&heartbeat.deployment, &heartbeat.node, &alert_changes);
        if let Some(record) = updated {
            if let Err(error) = self.nudge_if_behind(&record).await {
                tracing::warn!(deployment_id = %record.deployment, node_id = %record.node, error = %error, "failed to ask a node to renew its certificate");
            }
            if let Err(error) = self.resend_desired_if_behind(&record).await {
                tracing::warn!(deployment_id = %record.deployment, node_id = %record.node, error = %error, "failed to send a node its desired documents");
            }
        }
        Ok(())
    }

    /// Marks silent nodes unreachable, publishes tasks whose publish failed and expires tasks
    /// without outcome, if this replica holds the sweep lease (see [`crate::core::lease`]).
    /// Every change is a compare-and-set, so two replicas that sweep together do no harm.
    pub async fn sweep(&self) -> Result<(), ServiceError> {
        let now = self.now();
        if !self.hold_sweep_lease(now).await? {
            return Ok(());
        }
        let threshold = self.inner.settings.unreachable_after;
        let policy = self.inner.settings.certificates.alerts;
        for node in self.inner.store.list::<NodeRecord>().await? {
            let alerts_change = certificates::alerts_would_change(&node, now, policy);
            if node.health != NodeHealth::Healthy && !alerts_change {
                continue;
            }
            let mut transition = None;
            let mut alert_changes = Vec::new();
            let result = self
                .inner
                .store
                .update::<NodeRecord>(&node.key(), |record| {
                    transition = record.on_tick(now, threshold);
                    alert_changes = certificates::evaluate_alerts(record, now, policy);
                    transition.is_some() || !alert_changes.is_empty()
                })
                .await;
            // One record that cannot be updated must not stop the sweep for every other one.
            if let Err(error) = result {
                tracing::error!(deployment_id = %node.deployment, node_id = %node.node, error = %error, "failed to update node health; skipping it");
                continue;
            }
            certificates::log_alert_changes(&node.deployment, &node.node, &alert_changes);
            if let Some(transition) = transition {
                log_transition(&node.deployment, &node.node, &transition);
            }
        }

        let grace = self.inner.settings.expiry_grace;
        for task in self.inner.store.list::<TaskRecord>().await? {
            if task.status.is_terminal() {
                continue;
            }
            if task.status == TaskStatus::Pending
                && task.published_sequence.is_none()
                && now.since(task.issued_at) >= PUBLISH_RETRY_AFTER
            {
                if let Err(error) = self.publish(&task).await {
                    tracing::warn!(task_id = %task.id, error = %error, "failed to publish pending task");
                }
            }
            let mut expired = false;
            let result = self
                .inner
                .store
                .update::<TaskRecord>(&task.key(), |record| {
                    expired = record.expire(now, grace);
                    expired
                })
                .await;
            if let Err(error) = result {
                tracing::error!(task_id = %task.id, error = %error, "failed to expire task; skipping it");
                continue;
            }
            if expired {
                tracing::warn!(deployment_id = %task.deployment, node_id = %task.node, task_id = %task.id, "task expired without an outcome");
            }
        }
        Ok(())
    }
}

/// Opens a request that `origin` signed with the enrolled key of `node`, its record, and that
/// names `origin` itself. Returns the key and the request, or the reason for rejecting it.
fn open_signed_by_node<T: warden_bus::envelope::Message>(
    node: &NodeRecord,
    origin: &NodeSubject,
    signed: &SignedEnvelope,
    names: impl Fn(&T) -> (&DeploymentId, &NodeId),
) -> Result<(PublicKey, T), String> {
    let Some(enrolled) = node.enrollment.node_key.as_deref() else {
        return Err("the node has no enrolled key; it was revoked or never enrolled".into());
    };
    let key = match PublicKey::from_hex(enrolled) {
        Ok(key) => key,
        Err(error) => return Err(format!("the stored node key is damaged: {error}")),
    };
    let opened = signed
        .verify_with(&key)
        .map_err(|error| error.to_string())
        .and_then(|envelope| envelope.open::<T>().map_err(|error| error.to_string()));
    let request = match opened {
        Ok(request) => request,
        Err(error) => {
            return Err(format!(
                "the request is not signed by the enrolled key: {error}"
            ))
        }
    };
    let (deployment, named) = names(&request);
    if deployment != &origin.deployment || named != &origin.node {
        return Err("the request names another node than its subject".into());
    }
    Ok((key, request))
}

fn decode_stored_trust(bytes: &[u8]) -> Result<TrustDocument, ServiceError> {
    let damaged = |reason: String| {
        ServiceError::Unavailable(format!("the stored trust document is damaged: {reason}"))
    };
    let signed = SignedDocument::decode(bytes).map_err(|error| damaged(error.to_string()))?;
    signed
        .document_unverified()
        .map_err(|error| damaged(error.to_string()))
}

fn validate_node_options(options: &mut NodeOptions) -> Result<(), ServiceError> {
    options.tls_names = crate::core::certificates::normalize_tls_names(&options.tls_names)
        .map_err(|reason| FieldError {
            field: "tls_names",
            reason,
        })?;
    if !options.state_dir.is_absolute() {
        return Err(FieldError {
            field: "state_dir",
            reason: format!("{:?} must be an absolute path", options.state_dir),
        }
        .into());
    }
    if let Some(secs) = options.heartbeat_interval_secs {
        let range = warden::bootstrap::HEARTBEAT_INTERVAL_SECS_RANGE;
        if !range.contains(&secs) {
            return Err(FieldError {
                field: "heartbeat_interval_secs",
                reason: format!("{secs} is outside {range:?}"),
            }
            .into());
        }
    }
    Ok(())
}

/// Decodes the signed task kept in a record.
pub fn decode_signed_task(record: &TaskRecord) -> Result<SignedEnvelope, ServiceError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&record.signed_task)
        .map_err(|error| {
            ServiceError::Unavailable(format!(
                "stored signed task {} is not base64: {error}",
                record.id
            ))
        })?;
    SignedEnvelope::decode(&bytes).map_err(|error| {
        ServiceError::Unavailable(format!(
            "stored signed task {} is damaged: {error}",
            record.id
        ))
    })
}

fn log_transition(deployment: &DeploymentId, node: &NodeId, transition: &HealthTransition) {
    match transition.to {
        NodeHealth::Unreachable => tracing::warn!(
            deployment_id = %deployment,
            node_id = %node,
            from = transition.from.as_str(),
            to = transition.to.as_str(),
            reason = %transition.reason,
            "node health changed"
        ),
        _ => tracing::info!(
            deployment_id = %deployment,
            node_id = %node,
            from = transition.from.as_str(),
            to = transition.to.as_str(),
            reason = %transition.reason,
            "node health changed"
        ),
    }
}

/// Converts milliseconds since the epoch to whole seconds, as NATS JWTs use.
fn unix_seconds(time: UnixMillis) -> i64 {
    i64::try_from(time.0 / 1000).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_retention_must_outlast_an_open_task() {
        let grace = EXPIRY_GRACE_DEFAULT;
        let sweep = Duration::from_secs(5);
        assert_eq!(
            check_task_retention(TASK_RETENTION_DEFAULT, grace, sweep),
            Ok(())
        );
        assert_eq!(
            check_task_retention(TASK_RETENTION_MIN, grace, sweep),
            Ok(())
        );
        for out_of_range in [
            TASK_RETENTION_MIN - Duration::from_secs(1),
            TASK_RETENTION_MAX + Duration::from_secs(1),
            Duration::ZERO,
        ] {
            assert!(
                matches!(
                    check_task_retention(out_of_range, grace, sweep),
                    Err(TaskRetentionError::OutOfRange { .. })
                ),
                "{out_of_range:?}"
            );
        }
        // An expiry grace of a day leaves an open task unchanged for longer than the shortest
        // retention.
        let error =
            check_task_retention(TASK_RETENTION_MIN, TASK_RETENTION_MIN, sweep).unwrap_err();
        assert_eq!(
            error,
            TaskRetentionError::ShorterThanOpenTask {
                retention_secs: 86_400,
                open_secs: 3600 + 86_400 + 5,
            }
        );
        assert!(error.to_string().contains("expiry grace"), "{error}");
    }

    #[test]
    fn damaged_revocation_list_is_an_error_not_an_empty_list() {
        assert!(decode_revocations(None).unwrap().is_empty());
        let stored = serde_json::to_vec(&BTreeMap::from([("UKEY".to_owned(), 1_i64)])).unwrap();
        assert_eq!(decode_revocations(Some(&stored)).unwrap().len(), 1);
        for damaged in [&b"not json"[..], b"", b"[1,2]", b"{\"UKEY\": \"x\"}"] {
            let error = decode_revocations(Some(damaged)).unwrap_err();
            assert!(
                matches!(&error, ServiceError::Damaged(reason) if reason.contains("revocation list")),
                "{error}"
            );
        }
    }
}
