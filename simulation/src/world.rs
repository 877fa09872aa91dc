//! The simulated world: one control plane, many nodes, one clock, one seed.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::executor::block_on;
use futures::{FutureExt, StreamExt};
use rand::{Rng, RngCore};
use sha2::{Digest, Sha256};
use warden::core::heartbeat::HeartbeatSchedule;
use warden::core::record::TaskRecord as NodeRecord;
use warden::core::verify::{Identity, Limits, VerifiedTask, TASK_VALIDITY_MAX_DEFAULT};
use warden::core::{ExecutionOutcome, Persisted, Pulled, WardenCore, CLOCK_SKEW_DEFAULT};
use warden::pipeline::{handle_pulled, IoFailure, NodeIo};
use warden_actors::entropy::{self, Entropy};
use warden_bus::subject::{
    task_consumer, CONTROL_PLANE_QUEUE, REPORT_CONSUMER, REPORT_STREAM, TASK_STREAM,
};
use warden_bus::transport::memory::MemoryBus;
use warden_bus::transport::Subscription;
use warden_bus::trust::{KeyGrant, SignedDocument, TrustDocument};
use warden_bus::{
    Bus, Clock, Delivery, DeploymentId, Envelope, ManualClock, MessageId, NodeId, SigningKey,
    Subject, TaskAction, TaskId, TaskReport, TelemetryKind, UnixMillis,
};
use warden_control_plane::core::issue::ActionRequest;
use warden_control_plane::core::lifecycle::TaskStatus;
use warden_control_plane::service::{
    ControlPlane, Disposition, NodeOptions, Settings, Target, TaskFilter,
};

/// Wall-clock time at which every run starts: 2026-12-05T00:00:00Z.
const START: UnixMillis = UnixMillis(1_796_428_800_000);
const DEPLOYMENT: &str = "sim";

/// Size and seed of a run.
#[derive(Debug, Clone, Copy)]
pub struct RunConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// Number of nodes.
    pub nodes: usize,
    /// Number of random steps before the final drain.
    pub steps: usize,
}

/// The ordered events of a run and their hash.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    events: Vec<String>,
}

impl Trace {
    fn push(&mut self, at: UnixMillis, event: String) {
        self.events.push(format!("{} {event}", at.0 - START.0));
    }

    /// The events, one line each, with milliseconds since the start of the run.
    pub fn events(&self) -> &[String] {
        &self.events
    }

    /// SHA-256 over all events, hex.
    pub fn hash(&self) -> String {
        let mut hasher = Sha256::new();
        for event in &self.events {
            hasher.update(event.as_bytes());
            hasher.update(b"\n");
        }
        hex::encode(hasher.finalize())
    }
}

/// Summary of a finished run.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The trace.
    pub trace: Trace,
    /// Tasks issued.
    pub tasks: usize,
    /// Task count by final status.
    pub statuses: BTreeMap<String, usize>,
    /// Executions per task id, over all nodes.
    pub executions: BTreeMap<String, usize>,
}

/// A node's simulated disk: what survives a restart of its Warden.
#[derive(Debug, Clone, Default)]
struct Disk {
    records: BTreeMap<String, NodeRecord>,
    config_version: u64,
    trust: Option<SignedDocument>,
    clock_high_water: UnixMillis,
}

struct SimNode {
    id: NodeId,
    key: SigningKey,
    core: WardenCore,
    disk: Disk,
    heartbeat: HeartbeatSchedule,
    next_beat_at: UnixMillis,
}

/// The simulated world.
pub struct World {
    clock: ManualClock,
    rng: Entropy,
    bus: MemoryBus,
    control_plane: ControlPlane,
    heartbeats: Subscription,
    deployment: DeploymentId,
    nodes: Vec<SimNode>,
    trace: Trace,
    executions: BTreeMap<String, usize>,
    next_config_version: u64,
    tasks: usize,
}

struct SimIo<'a> {
    node: &'a NodeId,
    disk: &'a mut Disk,
    bus: &'a MemoryBus,
    clock: &'a ManualClock,
    delivery: &'a Delivery,
    trace: &'a mut Trace,
    executions: &'a mut BTreeMap<String, usize>,
    rng: &'a mut Entropy,
    key: &'a SigningKey,
}

impl NodeIo for SimIo<'_> {
    async fn forget(&mut self, ids: &[TaskId]) -> Result<(), IoFailure> {
        for id in ids {
            self.disk.records.remove(id.as_str());
        }
        Ok(())
    }

    async fn persist_clock(&mut self, time: UnixMillis) -> Result<(), IoFailure> {
        self.disk.clock_high_water = time;
        Ok(())
    }

    async fn retry(&mut self, delay: Duration) -> Result<(), IoFailure> {
        self.delivery
            .nak(Some(delay))
            .await
            .map_err(|error| IoFailure {
                operation: "asking for redelivery",
                reason: error.to_string(),
            })
    }

    async fn persist(&mut self, record: &NodeRecord) -> Result<(), IoFailure> {
        self.disk
            .records
            .insert(record.task_id.to_string(), record.clone());
        Ok(())
    }

    async fn execute(&mut self, task: &VerifiedTask) -> ExecutionOutcome {
        *self.executions.entry(task.id().to_string()).or_default() += 1;
        self.trace.push(
            self.clock.now(),
            format!(
                "{} execute {} {}",
                self.node,
                task.id(),
                task.action().kind()
            ),
        );
        match task.action() {
            TaskAction::ApplyConfig(config) => {
                self.disk.config_version = self.disk.config_version.max(config.version);
                Ok(BTreeMap::from([(
                    "config_version".to_owned(),
                    config.version.to_string(),
                )]))
            }
            TaskAction::CollectDiagnostics => Ok(BTreeMap::from([(
                "hostname".to_owned(),
                self.node.to_string(),
            )])),
            TaskAction::UpdateTrust(update) => {
                self.disk.trust = Some(update.document.clone());
                Ok(BTreeMap::new())
            }
            other => Err(format!("{} is not simulated", other.kind())),
        }
    }

    async fn report(&mut self, report: &TaskReport) -> Result<(), IoFailure> {
        let failure = |reason: String| IoFailure {
            operation: "publishing a report",
            reason,
        };
        let mut id = [0u8; 16];
        self.rng.fill_bytes(&mut id);
        let bytes = Envelope::seal(MessageId::from_random(id), report)
            .and_then(|envelope| self.key.sign(&envelope))
            .and_then(|signed| signed.encode())
            .map_err(|error| failure(error.to_string()))?;
        let subject = Subject::telemetry(&report.deployment, &report.node, TelemetryKind::Report);
        self.bus
            .persist(&subject, bytes.into(), None)
            .await
            .map_err(|error| failure(error.to_string()))?;
        Ok(())
    }

    async fn ack(&mut self) -> Result<(), IoFailure> {
        self.delivery.ack().await.map_err(|error| IoFailure {
            operation: "acknowledging",
            reason: error.to_string(),
        })
    }

    fn now(&self) -> UnixMillis {
        self.clock.now()
    }
}

impl World {
    /// Builds a world: the control plane's streams and buckets, one deployment and its nodes.
    pub fn new(config: RunConfig) -> Self {
        let clock = ManualClock::new(START);
        let mut rng = entropy::from_seed(config.seed);
        let bus = MemoryBus::new(Arc::new(clock.clone()));
        let root = SigningKey::generate(&mut rng);
        let signer = SigningKey::generate(&mut rng);
        let year = Duration::from_secs(365 * 86_400);
        let trust = TrustDocument {
            version: 1,
            issued_at: START,
            expires_at: START.saturating_add(year),
            root_key: root.public_key().as_bytes().to_vec(),
            task_keys: vec![KeyGrant {
                public_key: signer.public_key().as_bytes().to_vec(),
                not_before: START,
                not_after: START.saturating_add(year),
            }],
            release_keys: Vec::new(),
        };
        let signed_trust = expect(
            SignedDocument::sign(&trust, &[&root]),
            "sign the trust document",
        );
        let settings = Settings {
            advertise_nats_url: "nats://simulated:4222".into(),
            unreachable_after: Duration::from_secs(120),
            expiry_grace: Duration::from_secs(330),
            task_ack_wait: Duration::from_secs(30),
            duplicate_window: Duration::from_secs(120),
            enrollment_ttl: Duration::from_secs(3600),
            failpoint: None,
        };
        let control_plane = ControlPlane::new(
            Arc::new(bus.clone()),
            signer,
            Arc::new(clock.clone()),
            entropy::from_seed(rng.next_u64()),
            settings,
        );
        let deployment =
            DeploymentId::new(DEPLOYMENT).unwrap_or_else(|_| unreachable!("constant id is valid"));
        let heartbeats = block_on(async {
            expect(control_plane.setup().await, "setup");
            expect(
                control_plane.setup_trust(&signed_trust).await,
                "set up trust",
            );
            expect(
                control_plane
                    .create_deployment(deployment.clone(), String::new(), None)
                    .await,
                "create deployment",
            );
            expect(
                bus.subscribe(
                    &Subject::all_telemetry(TelemetryKind::Heartbeat),
                    Some(CONTROL_PLANE_QUEUE),
                )
                .await,
                "subscribe to heartbeats",
            )
        });

        let mut nodes = Vec::with_capacity(config.nodes);
        for index in 0..config.nodes {
            let id = NodeId::new(format!("node-{index}"))
                .unwrap_or_else(|_| unreachable!("generated id is valid"));
            let options = NodeOptions {
                state_dir: "/sim".into(),
                heartbeat_interval_secs: None,
            };
            let (_, bootstrap) = expect(
                block_on(control_plane.add_node(deployment.clone(), id.clone(), options)),
                "add node",
            );
            // The node makes its key and enrolls it with the bootstrap file's token.
            let key = SigningKey::generate(&mut rng);
            let token = bootstrap.enrollment_token.unwrap_or_default();
            let enrollment = expect(
                warden::enroll::request(&deployment, &id, &token, &key, START),
                "build enrollment",
            );
            expect(
                block_on(bus.persist(
                    &enrollment.subject,
                    enrollment.bytes.into(),
                    Some(&enrollment.dedup_id),
                )),
                "send enrollment",
            );
            let identity = Identity {
                deployment: deployment.clone(),
                node: id.clone(),
                approval_key: None,
            };
            let limits = Limits {
                clock_skew: CLOCK_SKEW_DEFAULT,
                validity_max: TASK_VALIDITY_MAX_DEFAULT,
            };
            let persisted = Persisted {
                records: Vec::new(),
                config_version: 0,
                trust: trust.clone(),
                clock_high_water: UnixMillis(0),
            };
            let jitter = rng.gen_range(0..10_000);
            nodes.push(SimNode {
                core: WardenCore::new(identity, limits, persisted),
                disk: Disk {
                    trust: Some(signed_trust.clone()),
                    ..Disk::default()
                },
                heartbeat: HeartbeatSchedule::new(
                    deployment.clone(),
                    id.clone(),
                    Duration::from_secs(10),
                    "sim".into(),
                ),
                next_beat_at: START.saturating_add(Duration::from_millis(jitter)),
                id,
                key,
            });
        }
        Self {
            clock,
            rng,
            bus,
            control_plane,
            heartbeats,
            deployment,
            nodes,
            trace: Trace::default(),
            executions: BTreeMap::new(),
            next_config_version: 1,
            tasks: 0,
        }
    }

    /// Runs `steps` random steps, then lets every node and the control plane drain.
    pub fn run(mut self, steps: usize) -> Outcome {
        for _ in 0..steps {
            self.step();
        }
        // Drain: enough rounds for every issued task to travel to its node and back.
        for _ in 0..4 {
            for index in 0..self.nodes.len() {
                self.node_pulls(index);
            }
            self.control_plane_pulls();
        }
        self.finish()
    }

    fn step(&mut self) {
        let elapsed = Duration::from_millis(self.rng.gen_range(0..2_000));
        self.clock.advance(elapsed);
        self.send_due_heartbeats();
        match self.rng.gen_range(0..100) {
            0..=9 => self.issue(),
            10..=59 => {
                let index = self.rng.gen_range(0..self.nodes.len().max(1));
                self.node_pulls(index);
            }
            60..=89 => self.control_plane_pulls(),
            _ => {
                expect(block_on(self.control_plane.sweep()), "sweep");
            }
        }
        self.ingest_heartbeats();
    }

    fn issue(&mut self) {
        let all = self.rng.gen_bool(0.5);
        let target = if all || self.nodes.is_empty() {
            Target::AllNodes
        } else {
            let index = self.rng.gen_range(0..self.nodes.len());
            self.nodes
                .get(index)
                .map_or(Target::AllNodes, |node| Target::Node(node.id.clone()))
        };
        let request = if self.rng.gen_bool(0.7) {
            let version = self.next_config_version;
            self.next_config_version += 1;
            ActionRequest::ApplyConfig {
                version,
                content: format!("[system]\nversion = {version}\n"),
            }
        } else {
            ActionRequest::CollectDiagnostics
        };
        let issued = expect(
            block_on(
                self.control_plane
                    .issue(self.deployment.clone(), target, request, None),
            ),
            "issue",
        );
        for task in issued {
            self.tasks += 1;
            self.trace.push(
                self.clock.now(),
                format!("issue {} to {} {}", task.id, task.node, task.kind),
            );
        }
    }

    fn node_pulls(&mut self, index: usize) {
        let Some(node) = self.nodes.get_mut(index) else {
            return;
        };
        let consumer = task_consumer(&self.deployment, &node.id);
        let deliveries = expect(
            block_on(self.bus.pull(TASK_STREAM, &consumer, 1, Duration::ZERO)),
            "pull tasks",
        );
        for delivery in deliveries {
            let mut io = SimIo {
                node: &node.id,
                disk: &mut node.disk,
                bus: &self.bus,
                clock: &self.clock,
                delivery: &delivery,
                trace: &mut self.trace,
                executions: &mut self.executions,
                rng: &mut self.rng,
                key: &node.key,
            };
            let pulled = Pulled {
                payload: &delivery.payload,
                stream_sequence: delivery.stream_sequence,
            };
            expect(
                block_on(handle_pulled(&mut node.core, &mut io, pulled)),
                "handle task",
            );
            self.trace.push(
                self.clock.now(),
                format!("{} handled message {}", node.id, delivery.stream_sequence),
            );
        }
    }

    fn control_plane_pulls(&mut self) {
        let deliveries = expect(
            block_on(
                self.bus
                    .pull(REPORT_STREAM, REPORT_CONSUMER, 64, Duration::ZERO),
            ),
            "pull reports",
        );
        for delivery in deliveries {
            let disposition = expect(
                block_on(self.control_plane.ingest_report(
                    &delivery.subject,
                    &delivery.payload,
                    delivery.delivered_count,
                )),
                "ingest report",
            );
            match disposition {
                Disposition::Done => expect(block_on(delivery.ack()), "ack report"),
                Disposition::Retry(delay) => {
                    expect(block_on(delivery.nak(Some(delay))), "retry report")
                }
            }
            self.trace.push(
                self.clock.now(),
                format!("control plane recorded report {}", delivery.stream_sequence),
            );
        }
    }

    fn send_due_heartbeats(&mut self) {
        let now = self.clock.now();
        for node in &mut self.nodes {
            if node.next_beat_at > now {
                continue;
            }
            let heartbeat = node.heartbeat.beat(now, node.core.config_version());
            let mut id = [0u8; 16];
            self.rng.fill_bytes(&mut id);
            let bytes = expect(
                Envelope::seal(MessageId::from_random(id), &heartbeat)
                    .and_then(|envelope| node.key.sign(&envelope))
                    .and_then(|signed| signed.encode()),
                "encode heartbeat",
            );
            let subject = Subject::telemetry(&self.deployment, &node.id, TelemetryKind::Heartbeat);
            expect(
                block_on(self.bus.publish(&subject, bytes.into())),
                "publish heartbeat",
            );
            let delay = node
                .heartbeat
                .next_delay(entropy::unit_interval(&mut self.rng));
            node.next_beat_at = now.saturating_add(delay);
        }
    }

    fn ingest_heartbeats(&mut self) {
        let mut pending = VecDeque::new();
        while let Some(Some(message)) = self.heartbeats.next().now_or_never() {
            pending.push_back(message);
        }
        for message in pending {
            expect(
                block_on(
                    self.control_plane
                        .ingest_heartbeat(&message.subject, &message.payload),
                ),
                "ingest heartbeat",
            );
        }
    }

    fn finish(mut self) -> Outcome {
        let tasks = expect(
            block_on(self.control_plane.list_tasks(&TaskFilter::default())),
            "list tasks",
        );
        let mut statuses = BTreeMap::new();
        let mut sorted = tasks;
        sorted.sort_by(|a, b| a.id.cmp(&b.id));
        for task in &sorted {
            *statuses.entry(task.status.as_str().to_owned()).or_insert(0) += 1;
            self.trace.push(
                self.clock.now(),
                format!("final {} {} {}", task.id, task.node, task.status.as_str()),
            );
        }
        let nodes = expect(
            block_on(self.control_plane.list_nodes(&self.deployment)),
            "list nodes",
        );
        for node in nodes {
            self.trace.push(
                self.clock.now(),
                format!(
                    "final {} {} config {}",
                    node.node,
                    node.health.as_str(),
                    node.config_version
                ),
            );
        }
        debug_assert!(sorted
            .iter()
            .all(|task| task.status != TaskStatus::Delivered || !task.history.is_empty()));
        Outcome {
            trace: self.trace,
            tasks: self.tasks,
            statuses,
            executions: self.executions,
        }
    }
}

/// Unwraps a result of the simulated world, whose in-memory I/O cannot fail unless the code
/// under test is wrong; the message names the step.
fn expect<T, E: std::fmt::Display>(result: Result<T, E>, step: &str) -> T {
    match result {
        Ok(value) => value,
        Err(error) => unreachable!("simulated step {step} failed: {error}"),
    }
}
