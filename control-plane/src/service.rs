//! The control plane's operations, shared by the HTTP API and the background actors.
//!
//! Replicas keep no state of their own: every record lives in JetStream key-value buckets and
//! changes by compare-and-set, so any number of replicas can serve the API, ingest reports and
//! heartbeats, and sweep at the same time.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use rand::RngCore;
use warden::bootstrap::{BootstrapFile, TrustedKey};
use warden_actors::clock::SharedClock;
use warden_actors::entropy::Entropy;
use warden_bus::subject::{
    task_consumer, CONTROL_BUCKET, REPORT_CONSUMER, REPORT_STREAM, TASK_STREAM,
};
use warden_bus::transport::{ConsumerSpec, StreamSpec};
use warden_bus::{
    Bus, BusError, DeploymentId, Envelope, Heartbeat, MessageId, NodeId, NodeSubject, SigningKey,
    Subject, TaskId, TaskReport, TelemetryKind, UnixMillis,
};

use crate::core::health::{HealthTransition, NodeHealth, NodeRecord};
use crate::core::issue::{self, ActionRequest, FieldError};
use crate::core::lifecycle::{TaskRecord, TaskStatus};
use crate::keys;
use crate::store::{DeploymentRecord, Record, Store, StoreError};

/// How long tasks stay in the task stream.
pub const TASK_STREAM_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// How long reports stay in the report stream.
pub const REPORT_STREAM_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Window in which the broker drops a repeated message id.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Default time a node has to acknowledge a task before the broker redelivers it.
pub const TASK_ACK_WAIT_DEFAULT: Duration = Duration::from_secs(30);
/// Time a replica has to acknowledge a report before the broker redelivers it.
pub const REPORT_ACK_WAIT: Duration = Duration::from_secs(30);
/// A pending task not yet in the stream this long after issue is published by the sweeper.
pub const PUBLISH_RETRY_AFTER: Duration = Duration::from_secs(2);
/// Default wait after expiry before a task without outcome is marked expired: the Warden's
/// default clock-skew tolerance of 300 s plus 30 s for the report to arrive.
pub const EXPIRY_GRACE_DEFAULT: Duration = Duration::from_secs(330);
/// Key in [`CONTROL_BUCKET`] that holds the admin API key's SHA-256.
pub const ADMIN_KEY_HASH_KEY: &str = "admin_api_key_sha256";

/// Settings of a control-plane replica.
#[derive(Debug, Clone)]
pub struct Settings {
    /// NATS URL written into bootstrap files.
    pub advertise_nats_url: String,
    /// Time without heartbeats after which a node is unreachable.
    pub unreachable_after: Duration,
    /// Wait after a task's expiry before marking it expired.
    pub expiry_grace: Duration,
    /// Time a node has to acknowledge a task before it is redelivered; applies to consumers
    /// created from now on.
    pub task_ack_wait: Duration,
    /// Test-only crash point, honoured in debug builds.
    pub failpoint: Option<String>,
}

/// Why an operation failed, in terms the API maps to HTTP statuses.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// Something the request names does not exist.
    #[error("{what} not found; {fix}")]
    NotFound {
        /// What is missing.
        what: String,
        /// What to do.
        fix: String,
    },
    /// The request conflicts with existing state.
    #[error("{what}; {fix}")]
    Conflict {
        /// What conflicts.
        what: String,
        /// What to do.
        fix: String,
    },
    /// A request field is invalid.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// The broker or store is not available.
    #[error("the message broker is unavailable: {0}")]
    Unavailable(String),
}

impl From<StoreError> for ServiceError {
    fn from(error: StoreError) -> Self {
        Self::Unavailable(error.to_string())
    }
}

impl From<BusError> for ServiceError {
    fn from(error: BusError) -> Self {
        Self::Unavailable(error.to_string())
    }
}

/// Which nodes a task request is for.
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

/// Options of a new node's bootstrap file.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// State directory on the node.
    pub state_dir: PathBuf,
    /// Heartbeat interval, if not the default.
    pub heartbeat_interval_secs: Option<u64>,
}

struct Inner {
    bus: Arc<dyn Bus>,
    store: Store,
    signer: SigningKey,
    clock: SharedClock,
    rng: Mutex<Entropy>,
    settings: Settings,
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
        rng: Entropy,
        settings: Settings,
    ) -> Self {
        let store = Store::new(bus.clone());
        Self {
            inner: Arc::new(Inner {
                bus,
                store,
                signer,
                clock,
                rng: Mutex::new(rng),
                settings,
            }),
        }
    }

    /// The bus.
    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.inner.bus
    }

    /// The task-signing key's public half.
    pub fn task_public_key(&self) -> warden_bus::PublicKey {
        self.inner.signer.public_key()
    }

    /// Replica settings.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    fn now(&self) -> UnixMillis {
        self.inner.clock.now()
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
        self.inner.store.ensure_buckets().await?;
        bus.ensure_bucket(CONTROL_BUCKET).await?;
        bus.ensure_stream(&StreamSpec {
            name: TASK_STREAM.into(),
            subjects: vec![Subject::all_tasks()],
            max_age: TASK_STREAM_MAX_AGE,
            duplicate_window: DUPLICATE_WINDOW,
        })
        .await?;
        bus.ensure_stream(&StreamSpec {
            name: REPORT_STREAM.into(),
            subjects: vec![Subject::all_telemetry(TelemetryKind::Report)],
            max_age: REPORT_STREAM_MAX_AGE,
            duplicate_window: DUPLICATE_WINDOW,
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

    /// The stored SHA-256 of the admin API key, hex.
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
    ) -> Result<DeploymentRecord, ServiceError> {
        let record = DeploymentRecord {
            id,
            description,
            created_at: self.now(),
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

    /// Registers a node, creates its durable task consumer and returns its bootstrap file.
    pub async fn add_node(
        &self,
        deployment: DeploymentId,
        node: NodeId,
        options: NodeOptions,
    ) -> Result<(NodeRecord, BootstrapFile), ServiceError> {
        self.require_deployment(&deployment).await?;
        if !options.state_dir.is_absolute() {
            return Err(FieldError {
                field: "state_dir",
                reason: format!("{:?} must be an absolute path", options.state_dir),
            }
            .into());
        }
        if let Some(secs) = options.heartbeat_interval_secs {
            if !warden::bootstrap::HEARTBEAT_INTERVAL_SECS_RANGE.contains(&secs) {
                return Err(FieldError {
                    field: "heartbeat_interval_secs",
                    reason: format!(
                        "{secs} is outside {:?}",
                        warden::bootstrap::HEARTBEAT_INTERVAL_SECS_RANGE
                    ),
                }
                .into());
            }
        }
        let record = NodeRecord::new(deployment.clone(), node.clone(), self.now());
        match self.inner.store.create(&record).await {
            Ok(_) => {}
            Err(StoreError::Exists { .. }) => {
                return Err(ServiceError::Conflict {
                    what: format!("node {node} already exists in deployment {deployment}"),
                    fix: "choose another node id".into(),
                })
            }
            Err(error) => return Err(error.into()),
        }
        self.inner
            .bus
            .ensure_consumer(&ConsumerSpec {
                stream: TASK_STREAM.into(),
                name: task_consumer(&deployment, &node),
                filter: Subject::tasks(&deployment, &node),
                ack_wait: self.inner.settings.task_ack_wait,
            })
            .await?;
        tracing::info!(deployment_id = %deployment, node_id = %node, "node added");
        let key = self.task_public_key();
        let bootstrap = BootstrapFile {
            deployment: deployment.to_string(),
            node: node.to_string(),
            nats_url: self.inner.settings.advertise_nats_url.clone(),
            state_dir: options.state_dir,
            iggy_config_path: None,
            heartbeat_interval_secs: options.heartbeat_interval_secs,
            clock_skew_secs: None,
            trusted_task_keys: vec![TrustedKey {
                key_id: key.id().to_string(),
                public_key: key.to_hex(),
            }],
        };
        Ok((record, bootstrap))
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
        self.require_deployment(&deployment).await?;
        let action = request.into_action()?;
        let ttl = issue::validate_ttl(ttl_secs)?;
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
                nodes
            }
        };

        let mut records = Vec::with_capacity(nodes.len());
        for node in nodes {
            let now = self.now();
            let task =
                issue::build_task(self.random_bytes(), &deployment, &node, &action, now, ttl)
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
            self.inner.store.create(&record).await?;
            tracing::info!(deployment_id = %deployment, node_id = %node, task_id = %task.id, kind = %task.kind, "task issued");
            self.failpoint("crash-after-task-record");

            // A failed publish leaves the task pending; the sweeper publishes it later.
            match self.publish(&record).await {
                Ok(updated) => record = updated,
                Err(error) => {
                    tracing::warn!(task_id = %task.id, error = %error, "failed to publish task; the sweeper will retry");
                }
            }
            records.push(record);
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

    /// Applies a task report from the report stream. Malformed or misaddressed reports are
    /// logged and dropped; only broker failures return an error, so the report is redelivered.
    pub async fn ingest_report(&self, subject: &str, payload: &[u8]) -> Result<(), ServiceError> {
        let Some(origin) = NodeSubject::parse(subject) else {
            tracing::warn!(
                subject,
                "dropping report on a subject outside the node scheme"
            );
            return Ok(());
        };
        let report = match Envelope::decode(payload)
            .and_then(|envelope| envelope.open::<TaskReport>())
        {
            Ok(report) => report,
            Err(error) => {
                tracing::warn!(deployment_id = %origin.deployment, node_id = %origin.node, error = %error, "dropping malformed report");
                return Ok(());
            }
        };
        if report.deployment != origin.deployment || report.node != origin.node {
            tracing::warn!(
                deployment_id = %origin.deployment,
                node_id = %origin.node,
                claimed_node = %report.node,
                task_id = %report.task_id,
                "dropping report that names another node than its subject"
            );
            return Ok(());
        }

        let now = self.now();
        let mut foreign = false;
        let mut changed = false;
        let updated = self
            .inner
            .store
            .update::<TaskRecord>(report.task_id.as_str(), |record| {
                foreign = record.node != report.node || record.deployment != report.deployment;
                changed = !foreign && record.apply_report(&report, now);
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

    /// Applies a heartbeat. Malformed or misaddressed heartbeats are logged and dropped.
    pub async fn ingest_heartbeat(
        &self,
        subject: &str,
        payload: &[u8],
    ) -> Result<(), ServiceError> {
        let Some(origin) = NodeSubject::parse(subject) else {
            return Ok(());
        };
        let heartbeat = match Envelope::decode(payload)
            .and_then(|envelope| envelope.open::<Heartbeat>())
        {
            Ok(heartbeat) => heartbeat,
            Err(error) => {
                tracing::warn!(deployment_id = %origin.deployment, node_id = %origin.node, error = %error, "dropping malformed heartbeat");
                return Ok(());
            }
        };
        if heartbeat.deployment != origin.deployment || heartbeat.node != origin.node {
            tracing::warn!(deployment_id = %origin.deployment, node_id = %origin.node, "dropping heartbeat that names another node than its subject");
            return Ok(());
        }
        let now = self.now();
        let mut transition: Option<HealthTransition> = None;
        let key = warden_bus::subject::node_key(&heartbeat.deployment, &heartbeat.node);
        let updated = self
            .inner
            .store
            .update::<NodeRecord>(&key, |record| {
                transition = record.on_heartbeat(&heartbeat, now);
                true
            })
            .await?;
        if updated.is_none() {
            tracing::debug!(deployment_id = %heartbeat.deployment, node_id = %heartbeat.node, "heartbeat from an unregistered node");
        }
        if let Some(transition) = transition {
            log_transition(&heartbeat.deployment, &heartbeat.node, &transition);
        }
        Ok(())
    }

    /// Marks silent nodes unreachable, publishes tasks whose publish failed and expires tasks
    /// without outcome. Every change is a compare-and-set, so replicas may sweep together.
    pub async fn sweep(&self) -> Result<(), ServiceError> {
        let now = self.now();
        let threshold = self.inner.settings.unreachable_after;
        for node in self.inner.store.list::<NodeRecord>().await? {
            if node.health != NodeHealth::Healthy {
                continue;
            }
            let mut transition = None;
            self.inner
                .store
                .update::<NodeRecord>(&node.key(), |record| {
                    transition = record.on_tick(now, threshold);
                    transition.is_some()
                })
                .await?;
            if let Some(transition) = transition {
                log_transition(&node.deployment, &node.node, &transition);
            }
        }

        let grace = self.inner.settings.expiry_grace;
        for task in self.inner.store.list::<TaskRecord>().await? {
            if task.status.is_terminal() {
                continue;
            }
            if task.published_sequence.is_none() && now.since(task.issued_at) >= PUBLISH_RETRY_AFTER
            {
                if let Err(error) = self.publish(&task).await {
                    tracing::warn!(task_id = %task.id, error = %error, "failed to publish pending task");
                }
            }
            let mut expired = false;
            self.inner
                .store
                .update::<TaskRecord>(&task.key(), |record| {
                    expired = record.expire(now, grace);
                    expired
                })
                .await?;
            if expired {
                tracing::warn!(deployment_id = %task.deployment, node_id = %task.node, task_id = %task.id, "task expired without an outcome");
            }
        }
        Ok(())
    }
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
