//! The simulated world: control-plane replicas and nodes running the real code over a faulty
//! network to one in-memory broker, driven by an event queue in simulated time.
//!
//! The replicas are [`ControlPlane`] values, the same type the `control-plane` binary runs. Each
//! node is a [`WardenCore`] driven through [`warden::pipeline`], the same functions the `warden`
//! binary runs, with a simulated disk. Only the I/O is simulated; no decision is copied.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use futures::executor::block_on;
use futures::{FutureExt, StreamExt};
use rand::{Rng, RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use warden::actors::access::ACCESS_TICK_INTERVAL;
use warden::core::access::{AccessCore, AccessEffect, AccessRecord, RuleSet};
use warden::core::certificate::{CertificateCore, CertificateEffect, CertificateRecord, Issued};
use warden::core::heartbeat::HeartbeatSchedule;
use warden::core::record::{RecordState, TaskRecord as NodeRecord};
use warden::core::release::BUILD_TARGET;
use warden::core::verify::{Identity, Limits, VerifiedTask, TASK_VALIDITY_MAX_DEFAULT};
use warden::core::{ExecutionOutcome, Persisted, Pulled, WardenCore, CLOCK_SKEW_DEFAULT};
use warden::pipeline::{handle_pulled, prune, IoFailure, NodeIo};
use warden::tls::{signing_request, NodeTlsKey};
use warden_actors::entropy::{self, Entropy};
use warden_bus::messages::{
    AccessRule, AccessRules, CertificateReply, CertificateRequest, Component, Protocol, Upgrade,
};
use warden_bus::release::{ReleaseManifest, SignedManifest};
use warden_bus::subject::{
    task_consumer, CONTROL_PLANE_QUEUE, REPORT_CONSUMER, REPORT_STREAM, TASK_STREAM,
};
use warden_bus::transport::memory::MemoryBus;
use warden_bus::transport::Subscription;
use warden_bus::trust::{KeyGrant, SignedDocument, TrustDocument};
use warden_bus::{
    Bus, Clock, Delivery, DeploymentId, Envelope, ManualClock, MessageId, NodeId, PublicKey,
    RpcVerb, SignedEnvelope, SigningKey, Subject, Task, TaskAction, TaskId, TaskReport,
    TelemetryKind, UnixMillis,
};
use warden_control_plane::ca::SecretsKey;
use warden_control_plane::core::certificates::{AlertPolicy, RateLimit};
use warden_control_plane::core::issue::ActionRequest;
use warden_control_plane::core::lifecycle::TaskStatus;
use warden_control_plane::service::{
    CaStep, CertificateSettings, ControlPlane, Disposition, NodeOptions, Settings, Target,
    TaskFilter, TASK_RETENTION_DEFAULT,
};

use crate::access::{AccessOracle, ACCESS_INVARIANT, CLEANUP_GRACE};
use crate::config::{FaultRates, Mode, RunConfig};
#[path = "components.rs"]
mod components;
use crate::net::{self, Cut, FaultCounts, FaultyBus, Network, Participant};
use crate::trace::Trace;
use components::{ComponentChecker, ComponentEvent, NodeComponents};

/// Wall-clock time at which every run starts: 2026-12-05T00:00:00Z.
pub const START: UnixMillis = UnixMillis(1_796_428_800_000);
/// Number of control-plane replicas.
pub const REPLICAS: usize = 2;
/// Largest clock error a node is given, in either direction.
pub const CLOCK_OFFSET_MAX: Duration = Duration::from_secs(600);
/// Time a live node has, after the faults stop, to converge: the default task validity plus
/// the expiry grace, the largest clock error, and a margin for the sweep interval.
pub const LIVENESS_BOUND: Duration = Duration::from_secs(15 * 60 + 330 + 600 + 120);
/// How often a node pulls when nothing wakes it, like the Warden's long poll.
const POLL_INTERVAL: Duration = Duration::from_secs(5);
/// How often a replica pulls reports and takes heartbeats.
const REPORT_INTERVAL: Duration = Duration::from_millis(500);
/// How often a replica sweeps.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Mean time between operator requests.
const ISSUE_EVERY: Duration = Duration::from_secs(15);
/// Deliveries one node poll handles at most.
const POLL_BATCH_MAX: usize = 16;
const DEPLOYMENT: &str = "sim";

/// Lifetime of node certificates: long enough that a node clock off by [`CLOCK_OFFSET_MAX`]
/// still takes them as valid, short enough that 20-minute runs see renewals.
pub const CERTIFICATE_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// The invariant about node certificates.
const CERTIFICATE_INVARIANT: &str =
    "no node holds an expired certificate when the control plane was reachable through its renewal window";

/// Mixed into the seed for the release key's own random stream.
const RELEASE_KEY_STREAM: u64 = 0x5245_4c45_4153_4521;

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Simulated time of the violation.
    pub at: UnixMillis,
    /// Which invariant.
    pub invariant: &'static str,
    /// Description of the event.
    pub detail: String,
}

/// Counters of a run.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Events handled.
    pub events: u64,
    /// Faults injected, by kind.
    pub faults: FaultCounts,
    /// Tasks the control plane issued.
    pub tasks: u64,
    /// Invariant checks made.
    pub checks: u64,
    /// Node certificates installed.
    pub certificates: u64,
    /// Access rule sets applied to node firewalls.
    pub access_applied: u64,
    /// Iggy processes started after the first one on each node.
    pub component_restarts: u64,
    /// Simulated time covered.
    pub simulated: Duration,
    /// Wall time taken.
    pub wall: Duration,
}

/// Result of a run.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The run.
    pub config: RunConfig,
    /// Its events.
    pub trace: Trace,
    /// Its counters.
    pub stats: Stats,
    /// The first broken invariant, if any.
    pub violation: Option<Violation>,
    /// Final task count by status, as the control plane recorded them.
    pub statuses: BTreeMap<String, usize>,
    /// Executions per task id, over all nodes.
    pub executions: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    NodePoll(usize),
    NodeBeat(usize),
    NodeRestart(usize),
    CertificateTick(usize),
    AccessTick(usize),
    AccessPoll(usize),
    ClockJump,
    Reports(usize),
    Sweep(usize),
    ReplicaCrash,
    ReplicaRestart(usize),
    Partition,
    PartitionEnd(Participant),
    Issue,
    Hostile,
    Heal,
    LivenessCheck,
    Component(usize, ComponentEvent),
}

/// A clock offset from the true time by an adjustable amount.
#[derive(Clone)]
struct OffsetClock {
    base: ManualClock,
    offset_ms: Arc<AtomicI64>,
}

impl Clock for OffsetClock {
    fn now(&self) -> UnixMillis {
        let now = self.base.now();
        let offset = self.offset_ms.load(Ordering::SeqCst);
        let magnitude = Duration::from_millis(offset.unsigned_abs());
        if offset < 0 {
            now.saturating_sub(magnitude)
        } else {
            now.saturating_add(magnitude)
        }
    }
}

/// State that survives a node's crash: everything persisted, since every write is flushed.
#[derive(Debug, Clone)]
struct Disk {
    records: BTreeMap<TaskId, NodeRecord>,
    config_version: u64,
    trust: TrustDocument,
    clock_high_water: UnixMillis,
    installed: BTreeMap<Component, u64>,
    certificate: Option<CertificateRecord>,
    access: Option<AccessRecord>,
}

struct SimNode {
    id: NodeId,
    key: SigningKey,
    bus: FaultyBus,
    clock: OffsetClock,
    core: Option<WardenCore>,
    disk: Disk,
    heartbeat: HeartbeatSchedule,
    in_flight: Option<TaskId>,
    /// The certificate lifecycle; `None` while the Warden is down.
    certificates: Option<CertificateCore>,
    /// When, in true time, the next certificate tick is due.
    certificate_wake: Option<UnixMillis>,
    /// A `rotate_certificate` task asked for a renewal.
    renewal_forced: bool,
    /// The access-rule state machine; `None` while the Warden is down.
    access: Option<AccessCore>,
    /// The kernel's table: what the Warden last applied. It outlives the Warden.
    firewall: Option<RuleSet>,
    /// When, in true time, the next access tick is due.
    access_wake: Option<UnixMillis>,
    /// Rule sets applied to the table.
    access_applies: u64,
    /// The supervised Iggy server and the node's process table.
    components: NodeComponents,
}

struct Replica {
    control_plane: ControlPlane,
    up: bool,
    heartbeats: Option<Subscription>,
}

/// Independent checks of what nodes do, from outside the code under test.
struct Oracle {
    task_key: PublicKey,
    release_key: PublicKey,
    installed: Vec<BTreeMap<Component, u64>>,
    skew: Duration,
    interrupted: BTreeSet<TaskId>,
    executions: BTreeMap<String, u64>,
    applied_config: Vec<u64>,
    /// Per node, the last time, in true time, it could not reach a control-plane replica:
    /// down, partitioned, no replica up, or a request or reply lost.
    last_cut: Vec<UnixMillis>,
    /// Per node, the last time, in true time, its clock was stepped.
    last_clock_step: Vec<UnixMillis>,
    access: AccessOracle,
    checks: u64,
    violation: Option<Violation>,
}

impl Oracle {
    fn fail(&mut self, at: UnixMillis, invariant: &'static str, detail: String) {
        if self.violation.is_none() {
            self.violation = Some(Violation {
                at,
                invariant,
                detail,
            });
        }
    }

    /// Checks an execution against the raw message it came from.
    fn check_execution(
        &mut self,
        node_index: usize,
        node: &NodeId,
        payload: &[u8],
        task: &VerifiedTask,
        node_now: UnixMillis,
        true_now: UnixMillis,
    ) -> bool {
        self.checks += 4;
        let id = task.id().clone();
        let resumed = self.interrupted.contains(&id);

        // Signed by the control plane's task key, with exactly this body.
        let signed_body = SignedEnvelope::decode(payload)
            .ok()
            .and_then(|signed| signed.verify_with(&self.task_key).ok())
            .and_then(|envelope| envelope.open::<Task>().ok());
        if signed_body.as_ref() != Some(task.task()) {
            self.fail(
                true_now,
                "no task runs without a valid signature",
                format!("node {node} executed task {id} that the task key did not sign"),
            );
        }
        let signed = signed_body.as_ref() == Some(task.task());
        if &task.task().node != node || task.task().deployment.as_str() != DEPLOYMENT {
            self.fail(
                true_now,
                "no task runs on the wrong node",
                format!(
                    "node {node} executed task {id} addressed to {}",
                    task.task().node
                ),
            );
        }
        let within_window = node_now.saturating_add(self.skew) >= task.task().not_before
            && node_now.saturating_sub(self.skew) <= task.task().expires_at
            && true_now.saturating_sub(self.skew + CLOCK_OFFSET_MAX) <= task.task().expires_at;
        // Strict even for a resumed task: one outside its window is settled, never run.
        if !within_window {
            self.fail(
                true_now,
                "no task runs outside its validity",
                format!(
                    "node {node} executed task {id} at {node_now} outside {}..{}",
                    task.task().not_before,
                    task.task().expires_at
                ),
            );
        }

        let count = {
            let count = self.executions.entry(id.to_string()).or_insert(0);
            *count += 1;
            *count
        };
        if count > 1 && !resumed {
            self.fail(
                true_now,
                "no task runs twice",
                format!("node {node} executed task {id} {count} times without an interruption"),
            );
        }

        if let TaskAction::ApplyConfig(config) = task.action() {
            let applied = self.applied_config.get(node_index).copied().unwrap_or(0);
            let stale = config.version < applied || (config.version == applied && !resumed);
            if stale {
                self.fail(
                    true_now,
                    "no document version applied after a newer one",
                    format!(
                        "node {node} applied configuration {} after {applied}",
                        config.version
                    ),
                );
            }
        }
        signed
    }

    /// Checks an installation against the release key, independently of the node's checks:
    /// the manifest verifies with the release key, names what the task names and this node's
    /// target, and its counter is not below what the node installed before.
    fn check_install(
        &mut self,
        node_index: usize,
        node: &NodeId,
        upgrade: &Upgrade,
        true_now: UnixMillis,
    ) {
        self.checks += 1;
        let manifest = upgrade.manifest.manifest_unverified().ok();
        let signed = self
            .release_key
            .verify_signature(&upgrade.manifest.body, &upgrade.manifest.signature);
        let agrees = manifest.as_ref().is_some_and(|manifest| {
            manifest.component == upgrade.component
                && manifest.sha256 == upgrade.sha256
                && manifest.release_counter == upgrade.release_counter
                && manifest.version == upgrade.version
                && manifest.target == BUILD_TARGET
        });
        if !signed || !agrees {
            self.fail(
                true_now,
                "no component installed without a valid manifest",
                format!(
                    "node {node} installed {} release {} (signed by the release key: {signed}, manifest agrees with the task: {agrees})",
                    upgrade.component, upgrade.release_counter
                ),
            );
        }
        let before = self
            .installed
            .get(node_index)
            .and_then(|installed| installed.get(&upgrade.component))
            .copied()
            .unwrap_or(0);
        if upgrade.release_counter < before {
            self.fail(
                true_now,
                "no release installed below the installed counter",
                format!(
                    "node {node} installed {} release {} after release {before}",
                    upgrade.component, upgrade.release_counter
                ),
            );
        }
        if let Some(installed) = self.installed.get_mut(node_index) {
            installed.insert(upgrade.component, upgrade.release_counter);
        }
    }

    /// Fails if node `node_index` holds an expired certificate although nothing cut it off the
    /// control plane since the start of its renewal window, the second half of the lifetime, and
    /// its clock was not stepped since the certificate was issued.
    fn check_certificate(
        &mut self,
        node_index: usize,
        node: &NodeId,
        record: Option<&CertificateRecord>,
        now: UnixMillis,
    ) {
        self.checks += 1;
        let Some(record) = record else {
            return;
        };
        if record.not_after > now {
            return;
        }
        let lifetime = record.not_after.since(record.not_before);
        let window_start = record.not_before.saturating_add(lifetime / 2);
        let last_cut = self.last_cut.get(node_index).copied().unwrap_or(now);
        if last_cut >= window_start {
            return;
        }
        // NOTE: the Warden schedules renewal on its wall clock, so a clock stepped back at any
        // time after the certificate was issued delays the renewal by the step.
        let last_clock_step = self.last_clock_step.get(node_index).copied().unwrap_or(now);
        if last_clock_step >= record.not_before {
            return;
        }
        self.fail(
            now,
            CERTIFICATE_INVARIANT,
            format!(
                "{node} holds a certificate that expired at {}; its renewal window began at {window_start} and it was last cut off at {last_cut}",
                record.not_after
            ),
        );
    }

    fn record_applied(&mut self, node_index: usize, version: u64) {
        if let Some(applied) = self.applied_config.get_mut(node_index) {
            *applied = (*applied).max(version);
        }
    }
}

struct SimIo<'a> {
    node_index: usize,
    node: &'a mut SimNode,
    delivery: Option<&'a Delivery>,
    oracle: &'a mut Oracle,
    rng: &'a mut Entropy,
    faults: &'a mut FaultCounts,
    crash_rate: f64,
    crashed: bool,
    true_clock: &'a ManualClock,
}

impl SimIo<'_> {
    fn step(&mut self, operation: &'static str) -> Result<(), IoFailure> {
        if self.crashed {
            return Err(IoFailure {
                operation,
                reason: "simulated crash".into(),
            });
        }
        if self.crash_rate > 0.0 && self.rng.gen_bool(self.crash_rate) {
            self.crashed = true;
            self.faults.add("node crash");
            return Err(IoFailure {
                operation,
                reason: "simulated crash".into(),
            });
        }
        Ok(())
    }

    /// Installs an access document as the Warden's access actor does: each effect in order,
    /// stopping at a crash.
    fn install_access(&mut self, document: &AccessRules) -> ExecutionOutcome {
        let now = self.node.clock.now();
        let core = self
            .node
            .access
            .as_mut()
            .ok_or("the access rules are not running")?;
        let effects = core
            .install(document, now)
            .map_err(|error| error.to_string())?;
        for effect in effects {
            self.step("applying access rules")
                .map_err(|failure| failure.reason)?;
            match effect {
                AccessEffect::Persist(record) => self.node.disk.access = Some(record),
                AccessEffect::Apply(set) => {
                    self.node.firewall = Some(set);
                    self.node.access_applies += 1;
                }
            }
        }
        let checked =
            self.oracle
                .access
                .check(self.node_index, self.node.firewall.as_ref(), now, false);
        if let Err(detail) = checked {
            let detail = format!("{}: {detail}", self.node.id);
            self.oracle
                .fail(self.true_clock.now(), ACCESS_INVARIANT, detail);
        }
        Ok(BTreeMap::from([(
            "access_version".to_owned(),
            document.version.to_string(),
        )]))
    }

    fn delivery(&self, operation: &'static str) -> Result<&Delivery, IoFailure> {
        self.delivery.ok_or(IoFailure {
            operation,
            reason: "no delivery".into(),
        })
    }
}

impl NodeIo for SimIo<'_> {
    async fn persist(&mut self, record: &NodeRecord) -> Result<(), IoFailure> {
        self.step("persisting a task record")?;
        self.node.in_flight = match record.state {
            RecordState::Started => Some(record.task_id.clone()),
            RecordState::Finished(_) => None,
        };
        self.node
            .disk
            .records
            .insert(record.task_id.clone(), record.clone());
        Ok(())
    }

    async fn forget(&mut self, ids: &[TaskId]) -> Result<(), IoFailure> {
        self.step("deleting task records")?;
        for id in ids {
            self.node.disk.records.remove(id);
        }
        Ok(())
    }

    async fn persist_clock(&mut self, time: UnixMillis) -> Result<(), IoFailure> {
        self.step("recording the latest time seen")?;
        self.node.disk.clock_high_water = time;
        Ok(())
    }

    async fn execute(&mut self, task: &VerifiedTask) -> ExecutionOutcome {
        let payload = self
            .delivery
            .map(|delivery| delivery.payload.clone())
            .unwrap_or_default();
        let signed = self.oracle.check_execution(
            self.node_index,
            &self.node.id,
            &payload,
            task,
            self.node.clock.now(),
            self.true_clock.now(),
        );
        let outcome = match task.action() {
            TaskAction::ApplyConfig(config) => {
                // The file write is atomic: after a crash it is either all there or not at all.
                self.node.disk.config_version = self.node.disk.config_version.max(config.version);
                self.oracle.record_applied(self.node_index, config.version);
                Ok(BTreeMap::from([(
                    "config_version".to_owned(),
                    config.version.to_string(),
                )]))
            }
            TaskAction::UpdateTrust(update) => match update.document.document_unverified() {
                Ok(document) => {
                    self.node.disk.trust = document;
                    Ok(BTreeMap::new())
                }
                Err(error) => Err(error.to_string()),
            },
            TaskAction::CollectDiagnostics => Ok(BTreeMap::from([(
                "hostname".to_owned(),
                self.node.id.to_string(),
            )])),
            TaskAction::UpgradeComponent(upgrade) if task.release().is_some() => {
                // Download, install and health check all succeed here; the real ones are
                // tested against real processes. What matters is which releases get in.
                self.oracle.check_install(
                    self.node_index,
                    &self.node.id,
                    upgrade,
                    self.true_clock.now(),
                );
                self.node
                    .disk
                    .installed
                    .insert(upgrade.component, upgrade.release_counter);
                components::restart_after_upgrade(
                    self.node,
                    upgrade,
                    self.oracle,
                    self.node_index,
                    self.true_clock.now(),
                );
                Ok(BTreeMap::from([(
                    "release_counter".to_owned(),
                    upgrade.release_counter.to_string(),
                )]))
            }
            TaskAction::RotateCertificate => {
                // The world forces the renewal after the poll; its outcome is not awaited here.
                self.node.renewal_forced = true;
                Ok(BTreeMap::new())
            }
            TaskAction::ApplyAccessRules(rules) => {
                self.oracle.access.executed(self.node_index, rules, signed);
                self.install_access(rules)
            }
            action @ (TaskAction::StartComponent(_)
            | TaskAction::StopComponent(_)
            | TaskAction::RestartComponent(_)) => {
                components::execute(self.node, action, self.true_clock.now())
            }
            other => Err(format!("{} is not simulated", other.kind())),
        };
        // A crash right after the effect: the outcome is never recorded.
        let _ = self.step("executing a task");
        outcome
    }

    async fn report(&mut self, report: &TaskReport) -> Result<(), IoFailure> {
        self.step("publishing a task report")?;
        let failure = |reason: String| IoFailure {
            operation: "publishing a task report",
            reason,
        };
        let sequence = self.delivery("publishing a task report")?.stream_sequence;
        let id = warden::actors::tasks::report_message_id(report, sequence, &self.node.key.seed());
        let bytes = Envelope::seal(id.clone(), report)
            .and_then(|envelope| self.node.key.sign(&envelope))
            .and_then(|signed| signed.encode())
            .map_err(|error| failure(error.to_string()))?;
        let subject = Subject::telemetry(&report.deployment, &report.node, TelemetryKind::Report);
        self.node
            .bus
            .persist(&subject, bytes.into(), Some(id.as_str()))
            .await
            .map_err(|error| failure(error.to_string()))?;
        Ok(())
    }

    async fn ack(&mut self) -> Result<(), IoFailure> {
        self.step("acknowledging a task")?;
        self.delivery("acknowledging a task")?
            .ack()
            .await
            .map_err(|error| IoFailure {
                operation: "acknowledging a task",
                reason: error.to_string(),
            })
    }

    async fn retry(&mut self, delay: Duration) -> Result<(), IoFailure> {
        self.step("asking for redelivery")?;
        self.delivery("asking for redelivery")?
            .nak(Some(delay))
            .await
            .map_err(|error| IoFailure {
                operation: "asking for redelivery",
                reason: error.to_string(),
            })
    }

    fn now(&self) -> UnixMillis {
        self.node.clock.now()
    }
}

/// The simulated world.
pub struct World {
    config: RunConfig,
    rates: FaultRates,
    rng: Entropy,
    clock: ManualClock,
    broker: MemoryBus,
    network: Arc<Mutex<Network>>,
    replicas: Vec<Replica>,
    nodes: Vec<SimNode>,
    deployment: DeploymentId,
    queue: BinaryHeap<Reverse<(UnixMillis, u64, Event)>>,
    queued: u64,
    oracle: Oracle,
    trace: Trace,
    stats: Stats,
    faults: FaultCounts,
    next_config_version: u64,
    next_access_version: u64,
    final_access: Option<u64>,
    faults_on: bool,
    healed_at: Option<UnixMillis>,
    final_version: Option<u64>,
    converged: bool,
    signed_tasks: Vec<(usize, Vec<u8>)>,
    /// Held by the hostile actor too: it plays a thief of the task key, whose upgrades must
    /// still fail without the release key.
    task_key: SigningKey,
    release_key: SigningKey,
    next_release_counter: u64,
    /// Manifests the release key signed, for the hostile actor to pair with other digests.
    manifests: Vec<SignedManifest>,
    component_checker: ComponentChecker,
}

fn expect<T, E: std::fmt::Display>(result: Result<T, E>, step: &str) -> T {
    match result {
        Ok(value) => value,
        // The world's own set-up runs without faults; a failure there is a bug in the world.
        Err(error) => unreachable!("simulation set-up step {step} failed: {error}"),
    }
}

impl World {
    /// Builds the world: replicas, trust, one deployment and its enrolled nodes.
    pub fn new(config: RunConfig) -> Self {
        let clock = ManualClock::new(START);
        let mut rng = entropy::from_seed(config.seed);
        let rates = if config.faults {
            FaultRates::draw(&mut rng)
        } else {
            FaultRates::none()
        };
        let network = Arc::new(Mutex::new(Network::new(
            Entropy::seed_from_u64(rng.next_u64()),
            rates,
        )));
        let broker = MemoryBus::new(Arc::new(clock.clone()));

        // The operator's offline steps: a root key signs a trust document listing the task key.
        let root = SigningKey::generate(&mut rng);
        let task_key = SigningKey::generate(&mut rng);
        // The release key comes from its own stream, so the draws that follow stay the same.
        let release_key = SigningKey::generate(&mut Entropy::seed_from_u64(
            config.seed ^ RELEASE_KEY_STREAM,
        ));
        let year = Duration::from_secs(365 * 86_400);
        let trust = TrustDocument {
            version: 1,
            issued_at: START.saturating_sub(Duration::from_secs(3600)),
            expires_at: START.saturating_add(year),
            root_key: root.public_key().as_bytes().to_vec(),
            task_keys: vec![KeyGrant {
                public_key: task_key.public_key().as_bytes().to_vec(),
                not_before: START.saturating_sub(Duration::from_secs(3600)),
                not_after: START.saturating_add(year),
            }],
            release_keys: vec![KeyGrant {
                public_key: release_key.public_key().as_bytes().to_vec(),
                not_before: START.saturating_sub(Duration::from_secs(3600)),
                not_after: START.saturating_add(year),
            }],
        };
        let signed_trust = expect(
            SignedDocument::sign(&trust, &[&root]),
            "sign the trust document",
        );

        let settings = Settings {
            advertise_nats_url: "nats://simulated:4222".into(),
            unreachable_after: Duration::from_secs(120),
            sweep_interval: SWEEP_INTERVAL,
            expiry_grace: Duration::from_secs(330),
            task_retention: TASK_RETENTION_DEFAULT,
            task_ack_wait: Duration::from_secs(30),
            duplicate_window: Duration::from_secs(120),
            enrollment_ttl: Duration::from_secs(3600),
            node_jwt_ttl: Duration::from_secs(24 * 3600),
            release_clock_skew: Duration::from_secs(300),
            failpoint: None,
            certificates: CertificateSettings {
                lifetime: CERTIFICATE_LIFETIME,
                rate: RateLimit {
                    max: 10,
                    window: Duration::from_secs(3600),
                },
                alerts: AlertPolicy {
                    expiring_within: CERTIFICATE_LIFETIME / 5,
                    refresh_failures: 3,
                },
            },
        };
        let mut secrets = [0u8; 32];
        rng.fill_bytes(&mut secrets);
        let mut replicas = Vec::with_capacity(REPLICAS);
        for index in 0..REPLICAS {
            let bus = FaultyBus::new(
                broker.clone(),
                Participant::Replica(index),
                network.clone(),
                clock.clone(),
            );
            let replica_clock = OffsetClock {
                base: clock.clone(),
                offset_ms: Arc::new(AtomicI64::new(rng.gen_range(-1000..=1000))),
            };
            let control_plane = ControlPlane::new(
                Arc::new(bus),
                task_key.clone(),
                Arc::new(replica_clock),
                Entropy::seed_from_u64(rng.next_u64()),
                settings.clone(),
            )
            .with_secrets(Some(SecretsKey::from_bytes(secrets)));
            replicas.push(Replica {
                control_plane,
                up: true,
                heartbeats: None,
            });
        }

        // Set-up happens before any fault: the network is quiet until the first event.
        lock_network(&network).set_enabled(false);
        let deployment = expect(DeploymentId::new(DEPLOYMENT), "deployment id");
        let first = expect(
            replicas
                .first()
                .map(|replica| replica.control_plane.clone())
                .ok_or("no replica"),
            "first replica",
        );
        block_on(async {
            expect(first.setup().await, "setup");
            expect(first.setup_trust(&signed_trust).await, "set up trust");
            expect(
                first
                    .create_deployment(deployment.clone(), String::new(), None)
                    .await,
                "create deployment",
            );
        });
        for replica in &mut replicas {
            replica.heartbeats = Some(expect(
                block_on(replica.control_plane.bus().subscribe(
                    &Subject::all_telemetry(TelemetryKind::Heartbeat),
                    Some(CONTROL_PLANE_QUEUE),
                )),
                "subscribe to heartbeats",
            ));
        }

        let mut nodes = Vec::with_capacity(config.nodes);
        for index in 0..config.nodes {
            let id = expect(NodeId::new(format!("node-{index}")), "node id");
            let options = NodeOptions {
                state_dir: "/sim".into(),
                heartbeat_interval_secs: None,
                tls_names: Vec::new(),
            };
            let (_, bootstrap) = expect(
                block_on(first.add_node(deployment.clone(), id.clone(), options)),
                "add node",
            );
            let key = SigningKey::generate(&mut rng);
            let bus = FaultyBus::new(
                broker.clone(),
                Participant::Node(index),
                network.clone(),
                clock.clone(),
            );
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
            let disk = Disk {
                records: BTreeMap::new(),
                config_version: 0,
                trust: trust.clone(),
                clock_high_water: UnixMillis(0),
                installed: BTreeMap::new(),
                certificate: None,
                access: None,
            };
            let clock = OffsetClock {
                base: clock.clone(),
                offset_ms: Arc::new(AtomicI64::new(0)),
            };
            let heartbeat = HeartbeatSchedule::new(
                deployment.clone(),
                id.clone(),
                Duration::from_secs(10),
                "sim".into(),
            );
            let mut node = SimNode {
                id,
                key,
                bus,
                clock,
                core: None,
                disk,
                heartbeat,
                in_flight: None,
                certificates: None,
                certificate_wake: None,
                renewal_forced: false,
                access: None,
                firewall: None,
                access_wake: None,
                access_applies: 0,
                components: NodeComponents::new(config.seed, index, &rates),
            };
            node.core = Some(Self::boot(&node, &deployment));
            nodes.push(node);
        }
        lock_network(&network).set_enabled(config.faults);

        let oracle = Oracle {
            task_key: task_key.public_key(),
            release_key: release_key.public_key(),
            installed: vec![BTreeMap::new(); config.nodes],
            skew: CLOCK_SKEW_DEFAULT,
            interrupted: BTreeSet::new(),
            executions: BTreeMap::new(),
            applied_config: vec![0; config.nodes],
            last_cut: vec![START; config.nodes],
            last_clock_step: vec![START; config.nodes],
            access: AccessOracle::new(config.nodes),
            checks: 0,
            violation: None,
        };
        let mut world = Self {
            config,
            rates,
            rng,
            clock,
            broker,
            network,
            replicas,
            nodes,
            deployment,
            queue: BinaryHeap::new(),
            queued: 0,
            oracle,
            trace: Trace::default(),
            stats: Stats::default(),
            faults: FaultCounts::default(),
            next_config_version: 1,
            next_access_version: 1,
            final_access: None,
            faults_on: config.faults,
            healed_at: None,
            final_version: None,
            converged: false,
            signed_tasks: Vec::new(),
            task_key,
            release_key,
            next_release_counter: 1,
            manifests: Vec::new(),
            component_checker: ComponentChecker::new(config.nodes),
        };
        // Every Warden puts its access rules in place before it connects.
        for index in 0..world.nodes.len() {
            world.access_start(index);
        }
        world.schedule_start();
        world
    }

    fn boot(node: &SimNode, deployment: &DeploymentId) -> WardenCore {
        let identity = Identity {
            deployment: deployment.clone(),
            node: node.id.clone(),
            approval_key: None,
        };
        let limits = Limits {
            clock_skew: CLOCK_SKEW_DEFAULT,
            validity_max: TASK_VALIDITY_MAX_DEFAULT,
        };
        let persisted = Persisted {
            records: node.disk.records.values().cloned().collect(),
            config_version: node.disk.config_version,
            trust: node.disk.trust.clone(),
            clock_high_water: node.disk.clock_high_water,
            installed: node.disk.installed.clone(),
            access_version: Some(node.disk.access.as_ref().map_or(0, |record| record.version)),
        };
        WardenCore::new(identity, limits, persisted)
    }

    fn schedule_start(&mut self) {
        for index in 0..self.nodes.len() {
            let offset = Duration::from_millis(self.rng.gen_range(0..10_000));
            self.schedule(offset, Event::NodeBeat(index));
            self.schedule(offset, Event::NodePoll(index));
            self.schedule(offset, Event::CertificateTick(index));
        }
        for index in 0..REPLICAS {
            self.schedule(Duration::from_millis(100), Event::Reports(index));
            self.schedule(SWEEP_INTERVAL, Event::Sweep(index));
        }
        let first_issue = self.exponential(ISSUE_EVERY);
        self.schedule(first_issue, Event::Issue);
        if self.config.faults {
            for (every, event) in [
                (self.rates.partition_every, Event::Partition),
                (self.rates.replica_crash_every, Event::ReplicaCrash),
                (self.rates.clock_jump_every, Event::ClockJump),
                (self.rates.hostile_every, Event::Hostile),
            ] {
                let delay = self.exponential(every);
                self.schedule(delay, event);
            }
        }
        if self.config.mode == Mode::Liveness {
            self.schedule(self.config.duration, Event::Heal);
        }
    }

    fn exponential(&mut self, mean: Duration) -> Duration {
        let unit = entropy::unit_interval(&mut self.rng);
        mean.mul_f64(-(1.0 - unit).ln()).min(mean * 20)
    }

    fn schedule(&mut self, delay: Duration, event: Event) {
        self.queued += 1;
        self.queue.push(Reverse((
            self.clock.now().saturating_add(delay),
            self.queued,
            event,
        )));
    }

    fn note(&mut self, event: &str) {
        self.trace.push(self.clock.now(), START, event);
    }

    /// Runs the world to its end and returns what happened.
    pub fn run(mut self) -> Outcome {
        let wall = Instant::now();
        let end = match self.config.mode {
            Mode::Safety => START.saturating_add(self.config.duration),
            Mode::Liveness => START.saturating_add(self.config.duration + LIVENESS_BOUND),
        };
        self.after_component_step(0..self.nodes.len());
        while let Some(Reverse((at, _, event))) = self.queue.pop() {
            if at > end || self.oracle.violation.is_some() || self.converged {
                break;
            }
            if at > self.clock.now() {
                self.clock.set(at);
            }
            block_on(net::release_due(&self.network, &self.broker, at));
            self.handle(event);
            // Only the nodes an event can change need their processes checked.
            let touched = self.touched_by(event);
            self.after_component_step(touched);
            self.stats.events += 1;
        }
        if self.config.mode == Mode::Liveness && !self.converged && self.oracle.violation.is_none()
        {
            let detail = self
                .liveness_gap()
                .unwrap_or_else(|| "the run ended before the final check".into());
            self.oracle.fail(
                self.clock.now(),
                "every live node converges after the faults stop",
                detail,
            );
        }
        self.finish(wall.elapsed())
    }

    /// Returns the nodes whose state `event` can change.
    fn touched_by(&self, event: Event) -> std::ops::Range<usize> {
        match event {
            Event::NodePoll(index)
            | Event::NodeBeat(index)
            | Event::NodeRestart(index)
            | Event::CertificateTick(index)
            | Event::AccessTick(index)
            | Event::AccessPoll(index)
            | Event::Component(index, _) => index..index + 1,
            Event::ClockJump | Event::Heal => 0..self.nodes.len(),
            Event::Reports(_)
            | Event::Sweep(_)
            | Event::ReplicaCrash
            | Event::ReplicaRestart(_)
            | Event::Partition
            | Event::PartitionEnd(_)
            | Event::Issue
            | Event::Hostile
            | Event::LivenessCheck => 0..0,
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::NodePoll(index) => self.node_poll(index, true),
            Event::NodeBeat(index) => self.node_beat(index),
            Event::NodeRestart(index) => self.node_restart(index),
            Event::CertificateTick(index) => self.certificate_tick(index),
            Event::AccessTick(index) => self.access_tick(index, false),
            Event::AccessPoll(index) => self.access_tick(index, true),
            Event::ClockJump => self.clock_jump(),
            Event::Reports(index) => self.replica_reports(index),
            Event::Sweep(index) => self.replica_sweep(index),
            Event::ReplicaCrash => self.replica_crash(),
            Event::ReplicaRestart(index) => self.replica_restart(index),
            Event::Partition => self.partition(),
            Event::PartitionEnd(who) => {
                self.mark_partition(who);
                net::lock(&self.network).heal(who);
                self.note(&format!("partition of {who:?} healed"));
            }
            Event::Issue => self.issue(),
            Event::Hostile => self.hostile(),
            Event::Heal => self.heal(),
            Event::LivenessCheck => self.liveness_check(),
            Event::Component(index, event) => self.component_event(index, event),
        }
    }

    fn node_poll(&mut self, index: usize, periodic: bool) {
        if periodic {
            self.schedule(POLL_INTERVAL, Event::NodePoll(index));
        }
        let crash_rate = if self.faults_on {
            self.rates.node_crash
        } else {
            0.0
        };
        let Some(node) = self.nodes.get_mut(index) else {
            return;
        };
        let Some(mut core) = node.core.take() else {
            return;
        };
        let consumer = task_consumer(&self.deployment, &node.id);
        let mut crashed = false;
        let mut failed = false;
        let mut handled = Vec::new();
        for _ in 0..POLL_BATCH_MAX {
            let deliveries =
                match block_on(node.bus.pull(TASK_STREAM, &consumer, 1, Duration::ZERO)) {
                    Ok(deliveries) if !deliveries.is_empty() => deliveries,
                    _ => break,
                };
            for delivery in deliveries {
                let mut io = SimIo {
                    node_index: index,
                    node: &mut *node,
                    delivery: Some(&delivery),
                    oracle: &mut self.oracle,
                    rng: &mut self.rng,
                    faults: &mut self.faults,
                    crash_rate,
                    crashed: false,
                    true_clock: &self.clock,
                };
                let pulled = Pulled {
                    payload: &delivery.payload,
                    stream_sequence: delivery.stream_sequence,
                };
                let result = block_on(handle_pulled(&mut core, &mut io, pulled));
                crashed = io.crashed;
                failed = result.is_err();
                handled.push(delivery.stream_sequence);
                if failed {
                    break;
                }
            }
            if failed {
                break;
            }
        }
        if !failed {
            let mut io = SimIo {
                node_index: index,
                node: &mut *node,
                delivery: None,
                oracle: &mut self.oracle,
                rng: &mut self.rng,
                faults: &mut self.faults,
                crash_rate,
                crashed: false,
                true_clock: &self.clock,
            };
            failed = block_on(prune(&mut core, &mut io)).is_err();
            crashed = io.crashed;
        }

        let node_id = node.id.clone();
        let forced = !crashed && std::mem::take(&mut node.renewal_forced);
        if crashed {
            // The process is gone; whatever was in flight was interrupted.
            if let Some(task) = node.in_flight.take() {
                self.oracle.interrupted.insert(task);
            }
            node.certificates = None;
            node.certificate_wake = None;
            node.renewal_forced = false;
            // The kernel keeps the table; only the Warden's core is gone.
            node.access = None;
            node.access_wake = None;
            node.components.warden_crashed();
            self.mark_cut(index);
            let downtime = Duration::from_millis(self.rng.gen_range(1_000..30_000));
            self.schedule(downtime, Event::NodeRestart(index));
            self.note(&format!("{node_id} crashed"));
        } else if failed {
            // An I/O error: like the Warden's task runner, rebuild the core from disk. A task
            // with a Started record is resumed on its redelivery.
            if let Some(task) = node.in_flight.take() {
                self.oracle.interrupted.insert(task);
            }
            node.core = Some(Self::boot(node, &self.deployment));
        } else {
            node.core = Some(core);
        }
        for sequence in handled {
            self.note(&format!("{node_id} handled message {sequence}"));
        }
        if forced {
            let effects = self
                .nodes
                .get_mut(index)
                .and_then(|node| node.certificates.as_mut())
                .map(CertificateCore::force)
                .unwrap_or_default();
            self.apply_certificate_effects(index, effects);
        }
        self.schedule_access_wake(index);
        self.check_access(index);
    }

    /// Starts node `index`'s access core from its disk and applies the rule set it returns, as
    /// the Warden does before it connects.
    fn access_start(&mut self, index: usize) {
        let Some(node) = self.nodes.get_mut(index) else {
            return;
        };
        let (core, effects) = AccessCore::start(node.disk.access.clone(), node.clock.now());
        node.access = Some(core);
        node.access_wake = None;
        self.apply_access_effects(index, effects);
    }

    /// Carries out an access core's effects the way the Warden's access actor does.
    fn apply_access_effects(&mut self, index: usize, effects: Vec<AccessEffect>) {
        if let Some(node) = self.nodes.get_mut(index) {
            for effect in effects {
                match effect {
                    AccessEffect::Persist(record) => node.disk.access = Some(record),
                    AccessEffect::Apply(set) => {
                        node.firewall = Some(set);
                        node.access_applies += 1;
                    }
                }
            }
        }
        self.schedule_access_wake(index);
        self.check_access(index);
    }

    /// Runs node `index`'s access core: at the expiry it asked to be woken for, or, `polled`,
    /// at the Warden's periodic check, which notices a clock step within a second.
    fn access_tick(&mut self, index: usize, polled: bool) {
        let true_now = self.clock.now();
        let Some(node) = self.nodes.get_mut(index) else {
            return;
        };
        if !polled {
            if node.access_wake != Some(true_now) {
                return;
            }
            node.access_wake = None;
        }
        let now = node.clock.now();
        let Some(core) = node.access.as_mut() else {
            return;
        };
        let effects = core.tick(now);
        self.apply_access_effects(index, effects);
    }

    /// Schedules node `index`'s next access tick at the next expiry on its own clock, unless
    /// one is due no later.
    fn schedule_access_wake(&mut self, index: usize) {
        let true_now = self.clock.now();
        let Some(node) = self.nodes.get_mut(index) else {
            return;
        };
        let Some(at) = node.access.as_ref().and_then(AccessCore::next_expiry) else {
            return;
        };
        let node_now = node.clock.now();
        // A rule still open past its expiry waits for the Warden's next periodic check.
        let delay = if at > node_now {
            at.since(node_now)
        } else {
            ACCESS_TICK_INTERVAL
        };
        let due = true_now.saturating_add(delay);
        if node
            .access_wake
            .is_some_and(|wake| wake >= true_now && wake <= due)
        {
            return;
        }
        node.access_wake = Some(due);
        self.schedule(delay, Event::AccessTick(index));
    }

    /// Checks node `index`'s firewall table against the signed documents it received.
    fn check_access(&mut self, index: usize) {
        let true_now = self.clock.now();
        let Some(node) = self.nodes.get(index) else {
            return;
        };
        let steady = self
            .oracle
            .last_clock_step
            .get(index)
            .is_none_or(|step| true_now.since(*step) > CLEANUP_GRACE);
        let settled = node.core.is_some() && node.access.is_some() && steady;
        self.oracle.checks += 1;
        let checked =
            self.oracle
                .access
                .check(index, node.firewall.as_ref(), node.clock.now(), settled);
        if let Err(detail) = checked {
            let detail = format!("{}: {detail}", node.id);
            self.oracle.fail(true_now, ACCESS_INVARIANT, detail);
        }
    }

    /// Marks node `index` as cut off from the control plane now.
    fn mark_cut(&mut self, index: usize) {
        let now = self.clock.now();
        if let Some(last_cut) = self.oracle.last_cut.get_mut(index) {
            *last_cut = now;
        }
    }

    /// Marks every node as cut off now if no replica is both up and connected.
    fn mark_cut_if_no_replica(&mut self) {
        let reachable = {
            let network = net::lock(&self.network);
            self.replicas.iter().enumerate().any(|(index, replica)| {
                replica.up && network.connected(Participant::Replica(index))
            })
        };
        if !reachable {
            for index in 0..self.nodes.len() {
                self.mark_cut(index);
            }
        }
    }

    /// Runs node `index`'s certificate core if this tick is the one it asked for.
    fn certificate_tick(&mut self, index: usize) {
        let true_now = self.clock.now();
        let Some(node) = self.nodes.get_mut(index) else {
            return;
        };
        if node.core.is_none() || node.certificate_wake.is_some_and(|wake| wake != true_now) {
            return;
        }
        node.certificate_wake = None;
        self.check_certificate(index);
        let Some(node) = self.nodes.get_mut(index) else {
            return;
        };
        let now = node.clock.now();
        let effects = match node.certificates.as_mut() {
            Some(core) => core.tick(now),
            None => {
                // The Warden's files are written atomically with the record in the simulation,
                // so they always match it.
                let (core, effects) = CertificateCore::start(node.disk.certificate, true, now);
                node.certificates = Some(core);
                effects
            }
        };
        self.apply_certificate_effects(index, effects);
    }

    /// Carries out a certificate core's effects the way the Warden's certificate actor does.
    fn apply_certificate_effects(&mut self, index: usize, effects: Vec<CertificateEffect>) {
        let mut pending: VecDeque<CertificateEffect> = effects.into();
        while let Some(effect) = pending.pop_front() {
            match effect {
                CertificateEffect::Request => pending.extend(self.certificate_request(index)),
                CertificateEffect::Install(installation) => {
                    let Some(node) = self.nodes.get_mut(index) else {
                        return;
                    };
                    // Persisted and flushed before the files switch; one step here.
                    node.disk.certificate = Some(installation.record);
                    let effects = node
                        .certificates
                        .as_mut()
                        .map(CertificateCore::on_installed)
                        .unwrap_or_default();
                    let id = node.id.clone();
                    self.stats.certificates += 1;
                    self.note(&format!(
                        "{id} installed a certificate of bundle {}",
                        installation.record.bundle_version
                    ));
                    pending.extend(effects);
                }
                CertificateEffect::WakeAt(at) => self.schedule_certificate_wake(index, at),
                CertificateEffect::Failed { failures, .. } => {
                    let id = self.nodes.get(index).map(|node| node.id.clone());
                    if let Some(id) = id {
                        self.note(&format!("{id} certificate attempt {failures} failed"));
                    }
                }
                CertificateEffect::Status(_) | CertificateEffect::Installed(_) => {}
            }
        }
        self.check_certificate(index);
    }

    /// Schedules node `index`'s next certificate tick at `at` on its own clock.
    fn schedule_certificate_wake(&mut self, index: usize, at: UnixMillis) {
        let true_now = self.clock.now();
        let Some(node) = self.nodes.get_mut(index) else {
            return;
        };
        let delay = if at > node.clock.now() {
            at.since(node.clock.now())
        } else {
            Duration::ZERO
        };
        let due = true_now.saturating_add(delay);
        node.certificate_wake = Some(due);
        self.schedule(delay, Event::CertificateTick(index));
    }

    fn check_certificate(&mut self, index: usize) {
        let now = self.clock.now();
        if let Some(node) = self.nodes.get(index) {
            if node.core.is_some() {
                self.oracle
                    .check_certificate(index, &node.id, node.disk.certificate.as_ref(), now);
            }
        }
    }

    /// Sends node `index`'s certificate request to a replica over the simulated network and
    /// feeds the outcome to its certificate core.
    fn certificate_request(&mut self, index: usize) -> Vec<CertificateEffect> {
        let unit = entropy::unit_interval(&mut self.rng);
        let outcome = self.certificate_round_trip(index);
        if let Err((_, cut)) = &outcome {
            if *cut {
                self.mark_cut(index);
            }
        }
        let Some(node) = self.nodes.get_mut(index) else {
            return Vec::new();
        };
        let now = node.clock.now();
        let Some(core) = node.certificates.as_mut() else {
            return Vec::new();
        };
        match outcome {
            Ok((issued, key_info)) => core.on_issued(issued, &key_info, now, unit),
            Err((reason, _)) => core.on_failed(&reason, now, unit),
        }
    }

    /// Returns the issued certificate and the requested key's SubjectPublicKeyInfo, or the
    /// reason of the failure and whether the control plane was out of reach.
    fn certificate_round_trip(
        &mut self,
        index: usize,
    ) -> Result<(Issued, Vec<u8>), (String, bool)> {
        let cut = |reason: &str| (reason.to_owned(), true);
        let replica_index = self
            .up_replica()
            .ok_or_else(|| cut("no control-plane replica is up"))?;
        let mut message_id = [0u8; 16];
        self.rng.fill_bytes(&mut message_id);
        let node = self.nodes.get(index).ok_or_else(|| cut("no such node"))?;
        let key = NodeTlsKey::generate().map_err(|error| (error.to_string(), false))?;
        let csr_pem =
            signing_request(&node.id, &[], &key).map_err(|error| (error.to_string(), false))?;
        let request = CertificateRequest {
            deployment: self.deployment.clone(),
            node: node.id.clone(),
            csr_pem,
            sent_at: node.clock.now(),
        };
        let payload = Envelope::seal(MessageId::from_random(message_id), &request)
            .and_then(|envelope| node.key.sign(&envelope))
            .and_then(|signed| signed.encode())
            .map_err(|error| (error.to_string(), false))?;
        net::lock(&self.network)
            .round_trip(
                Participant::Node(index),
                Participant::Replica(replica_index),
            )
            .map_err(cut)?;
        let subject = Subject::rpc(&self.deployment, &node.id, RpcVerb::Certificate);
        let replica = self
            .replicas
            .get(replica_index)
            .ok_or_else(|| cut("no such replica"))?;
        let reply = block_on(replica.control_plane.handle_rpc(subject.as_str(), &payload))
            .map_err(|error| cut(&error.to_string()))?
            .ok_or_else(|| cut("the control plane sent no reply"))?;
        let reply = Envelope::decode(&reply)
            .and_then(|envelope| envelope.open::<CertificateReply>())
            .map_err(|error| (error.to_string(), false))?;
        match reply {
            CertificateReply::Issued {
                chain_pem,
                bundle_pem,
                bundle_version,
                ..
            } => Ok((
                Issued {
                    chain_pem,
                    bundle_pem,
                    bundle_version,
                },
                key.public_key_info(),
            )),
            CertificateReply::Refused { code, reason } => Err((format!("{code}: {reason}"), false)),
        }
    }

    fn node_restart(&mut self, index: usize) {
        let Some(node) = self.nodes.get_mut(index) else {
            return;
        };
        if node.core.is_some() {
            return;
        }
        node.in_flight = None;
        node.core = Some(Self::boot(node, &self.deployment));
        node.certificates = None;
        node.certificate_wake = None;
        let id = node.id.clone();
        self.access_start(index);
        self.component_warden_started(index);
        self.note(&format!("{id} restarted"));
        self.mark_cut(index);
        self.schedule(Duration::from_millis(10), Event::NodePoll(index));
        self.schedule(Duration::from_millis(10), Event::CertificateTick(index));
    }

    fn node_beat(&mut self, index: usize) {
        self.check_certificate(index);
        self.check_access(index);
        let unit = entropy::unit_interval(&mut self.rng);
        let Some(node) = self.nodes.get_mut(index) else {
            return;
        };
        let delay = node.heartbeat.next_delay(unit);
        if let Some(core) = &node.core {
            let mut heartbeat = node.heartbeat.beat(node.clock.now(), core.config_version());
            heartbeat.certificate = node.certificates.as_ref().and_then(CertificateCore::status);
            heartbeat.access_version = node.access.as_ref().map(AccessCore::version);
            let mut id = [0u8; 16];
            self.rng.fill_bytes(&mut id);
            let signed = Envelope::seal(MessageId::from_random(id), &heartbeat)
                .and_then(|envelope| node.key.sign(&envelope))
                .and_then(|signed| signed.encode());
            if let Ok(bytes) = signed {
                let subject =
                    Subject::telemetry(&self.deployment, &node.id, TelemetryKind::Heartbeat);
                let _ = block_on(node.bus.publish(&subject, bytes.into()));
            }
        }
        self.schedule(delay, Event::NodeBeat(index));
    }

    fn clock_jump(&mut self) {
        if !self.faults_on {
            return;
        }
        let index = self.rng.gen_range(0..self.nodes.len().max(1));
        let limit = i64::try_from(CLOCK_OFFSET_MAX.as_millis()).unwrap_or(i64::MAX);
        let jump = self.rng.gen_range(-limit..=limit);
        if let Some(node) = self.nodes.get(index) {
            self.oracle.access.saw_clock(index, node.clock.now());
            let current = node.clock.offset_ms.load(Ordering::SeqCst);
            node.clock
                .offset_ms
                .store((current + jump).clamp(-limit, limit), Ordering::SeqCst);
            let id = node.id.clone();
            self.faults.add(if jump < 0 {
                "clock jumped back"
            } else {
                "clock jumped forward"
            });
            self.note(&format!("{id} clock jumped {jump} ms"));
            let now = self.clock.now();
            if let Some(step) = self.oracle.last_clock_step.get_mut(index) {
                *step = now;
            }
            // The Warden's access check runs every second.
            let poll = Duration::from_millis(self.rng.gen_range(0..=1000));
            self.schedule(poll, Event::AccessPoll(index));
        }
        let next = self.exponential(self.rates.clock_jump_every);
        self.schedule(next, Event::ClockJump);
    }

    fn replica_reports(&mut self, index: usize) {
        self.schedule(REPORT_INTERVAL, Event::Reports(index));
        let Some(replica) = self.replicas.get_mut(index) else {
            return;
        };
        if !replica.up {
            return;
        }
        let mut heartbeats = Vec::new();
        if let Some(subscription) = replica.heartbeats.as_mut() {
            while let Some(Some(message)) = subscription.next().now_or_never() {
                heartbeats.push(message);
            }
        }
        for message in heartbeats {
            let _ = block_on(
                replica
                    .control_plane
                    .ingest_heartbeat(&message.subject, &message.payload),
            );
        }
        let bus = replica.control_plane.bus().clone();
        let Ok(deliveries) = block_on(bus.pull(REPORT_STREAM, REPORT_CONSUMER, 64, Duration::ZERO))
        else {
            return;
        };
        let mut recorded = Vec::new();
        for delivery in deliveries {
            let result = block_on(replica.control_plane.ingest_report(
                &delivery.subject,
                &delivery.payload,
                delivery.delivered_count,
            ));
            let settled = match result {
                Ok(Disposition::Done) => block_on(delivery.ack()),
                Ok(Disposition::Retry(delay)) => block_on(delivery.nak(Some(delay))),
                // Like the report bridge: stop, and the report comes back after the ack wait.
                Err(_) => break,
            };
            if settled.is_ok() {
                recorded.push(delivery.stream_sequence);
            }
        }
        for sequence in recorded {
            self.note(&format!("replica {index} settled report {sequence}"));
        }
    }

    fn replica_sweep(&mut self, index: usize) {
        self.schedule(SWEEP_INTERVAL, Event::Sweep(index));
        let Some(replica) = self.replicas.get(index) else {
            return;
        };
        if replica.up {
            let _ = block_on(replica.control_plane.sweep());
        }
    }

    fn replica_crash(&mut self) {
        if !self.faults_on {
            return;
        }
        let index = self.rng.gen_range(0..REPLICAS);
        if let Some(replica) = self.replicas.get_mut(index) {
            if replica.up {
                replica.up = false;
                replica.heartbeats = None;
                self.mark_cut_if_no_replica();
                self.faults.add("control-plane replica crash");
                self.note(&format!("replica {index} crashed"));
                let downtime = Duration::from_millis(self.rng.gen_range(5_000..60_000));
                self.schedule(downtime, Event::ReplicaRestart(index));
            }
        }
        let next = self.exponential(self.rates.replica_crash_every);
        self.schedule(next, Event::ReplicaCrash);
    }

    fn replica_restart(&mut self, index: usize) {
        let Some(replica) = self.replicas.get_mut(index) else {
            return;
        };
        if replica.up {
            return;
        }
        self.mark_cut_if_no_replica();
        let Some(replica) = self.replicas.get_mut(index) else {
            return;
        };
        let subscribed = block_on(replica.control_plane.bus().subscribe(
            &Subject::all_telemetry(TelemetryKind::Heartbeat),
            Some(CONTROL_PLANE_QUEUE),
        ));
        replica.heartbeats = subscribed.ok();
        replica.up = true;
        self.note(&format!("replica {index} restarted"));
    }

    fn partition(&mut self) {
        if !self.faults_on {
            return;
        }
        let total = self.nodes.len() + REPLICAS;
        let pick = self.rng.gen_range(0..total);
        let who = if pick < self.nodes.len() {
            Participant::Node(pick)
        } else {
            Participant::Replica(pick - self.nodes.len())
        };
        let cut = match self.rng.gen_range(0..3) {
            0 => Cut::Both,
            1 => Cut::Sending,
            _ => Cut::Receiving,
        };
        net::lock(&self.network).partition(who, cut);
        self.note(&format!("partition of {who:?}: {cut:?}"));
        self.mark_partition(who);
        let length = Duration::from_millis(self.rng.gen_range(5_000..90_000));
        self.schedule(length, Event::PartitionEnd(who));
        let next = self.exponential(self.rates.partition_every);
        self.schedule(next, Event::Partition);
    }

    /// Marks the nodes a partition of `who` cuts off, when it starts and when it ends.
    fn mark_partition(&mut self, who: Participant) {
        match who {
            Participant::Node(index) => self.mark_cut(index),
            Participant::Replica(_) => self.mark_cut_if_no_replica(),
        }
    }

    fn up_replica(&mut self) -> Option<usize> {
        let up: Vec<usize> = (0..REPLICAS)
            .filter(|index| self.replicas.get(*index).is_some_and(|r| r.up))
            .collect();
        if up.is_empty() {
            return None;
        }
        up.get(self.rng.gen_range(0..up.len())).copied()
    }

    fn issue(&mut self) {
        if self.healed_at.is_none() || self.config.mode == Mode::Safety {
            let next = self.exponential(ISSUE_EVERY);
            self.schedule(next, Event::Issue);
        }
        if self.healed_at.is_some() {
            return;
        }
        let target = if self.rng.gen_bool(0.5) || self.nodes.is_empty() {
            Target::AllNodes
        } else {
            let index = self.rng.gen_range(0..self.nodes.len());
            Target::Node(
                self.nodes
                    .get(index)
                    .map(|node| node.id.clone())
                    .unwrap_or_else(|| unreachable!("index is in range")),
            )
        };
        let pick = self.rng.gen_range(0..52);
        let request = if pick >= 48 {
            self.access_request()
        } else if pick < 28 {
            let version = self.next_config_version;
            self.next_config_version += 1;
            ActionRequest::ApplyConfig {
                version,
                content: format!("[system]\nversion = {version}\n"),
            }
        } else if pick < 34 {
            match self.release_request() {
                Some(request) => request,
                None => return,
            }
        } else if pick < 38 {
            ActionRequest::CollectDiagnostics {}
        } else if pick >= 40 {
            self.component_request()
        } else if pick == 38 {
            // Renewals a node forces must not stand in for the ones it schedules, so this goes
            // to one node.
            let index = self.rng.gen_range(0..self.nodes.len().max(1));
            if let Some(node) = self.nodes.get(index) {
                let target = Target::Node(node.id.clone());
                self.issue_request(target, ActionRequest::RotateCertificate {});
            }
            return;
        } else {
            self.ca_step();
            return;
        };
        self.issue_request(target, request);
    }

    /// Builds the operator's next access rules: a few rules from a small pool of sources, half
    /// of them expiring within the next quarter hour.
    fn access_request(&mut self) -> ActionRequest {
        const SOURCES: [&str; 4] = [
            "10.0.0.0/8",
            "192.0.2.0/24",
            "2001:db8::/32",
            "203.0.113.7/32",
        ];
        let version = self.next_access_version;
        self.next_access_version += 1;
        let now = self.clock.now();
        let mut rules = Vec::new();
        for _ in 0..self.rng.gen_range(0..=4) {
            let cidr = SOURCES
                .get(self.rng.gen_range(0..SOURCES.len()))
                .copied()
                .unwrap_or("10.0.0.0/8");
            let protocol = match self.rng.gen_range(0..4) {
                0 => Protocol::Tcp,
                1 => Protocol::Quic,
                2 => Protocol::Http,
                _ => Protocol::Websocket,
            };
            let expires_at = self.rng.gen_bool(0.5).then(|| {
                now.saturating_add(Duration::from_millis(self.rng.gen_range(5_000..900_000)))
            });
            rules.push(AccessRule {
                cidr: cidr.to_owned(),
                protocol,
                expires_at,
            });
        }
        ActionRequest::ApplyAccessRules { version, rules }
    }

    /// Signs the next release of iggy with the release key, as the release pipeline would, and
    /// builds the control plane's upgrade request for it.
    fn release_request(&mut self) -> Option<ActionRequest> {
        let counter = self.next_release_counter;
        self.next_release_counter += 1;
        let manifest = ReleaseManifest {
            component: Component::Iggy,
            version: format!("0.8.{counter}"),
            target: BUILD_TARGET.to_owned(),
            sha256: Sha256::digest(counter.to_be_bytes()).to_vec(),
            size: 1024,
            release_counter: counter,
            issued_at: self.clock.now(),
        };
        let signed = SignedManifest::sign(&manifest, &self.release_key).ok()?;
        let encoded = base64::engine::general_purpose::STANDARD.encode(signed.encode().ok()?);
        self.manifests.push(signed);
        Some(ActionRequest::UpgradeComponent {
            component: Component::Iggy,
            version: manifest.version,
            sha256: hex::encode(&manifest.sha256),
            release_counter: counter,
            manifest: encoded,
            rollback_permit: None,
        })
    }

    /// An upgrade task signed with the real task key, as a thief of that key would make, but
    /// without the release key: either its manifest is signed by the thief, or it pairs a real
    /// manifest with another digest.
    fn forged_upgrade(&mut self, id: [u8; 16], node: &NodeId) -> Vec<u8> {
        let counter = self.next_release_counter + (1 << 20);
        let evil = Sha256::digest(b"not a release").to_vec();
        let reuse = !self.manifests.is_empty() && self.rng.gen_bool(0.5);
        let manifest = if reuse {
            let pick = self.rng.gen_range(0..self.manifests.len());
            self.manifests.get(pick).cloned()
        } else {
            let thief = SigningKey::generate(&mut self.rng);
            let manifest = ReleaseManifest {
                component: Component::Iggy,
                version: "6.6.6".into(),
                target: BUILD_TARGET.to_owned(),
                sha256: evil.clone(),
                size: 1024,
                release_counter: counter,
                issued_at: self.clock.now(),
            };
            SignedManifest::sign(&manifest, &thief).ok()
        };
        let Some(manifest) = manifest else {
            return Vec::new();
        };
        let stated = manifest.manifest_unverified().ok();
        let action = TaskAction::UpgradeComponent(Upgrade {
            component: Component::Iggy,
            version: stated
                .as_ref()
                .map_or_else(|| "6.6.6".to_owned(), |m| m.version.clone()),
            sha256: evil,
            release_counter: stated.as_ref().map_or(counter, |m| m.release_counter),
            manifest: Box::new(manifest),
            rollback_permit: None,
        });
        let now = self.clock.now();
        let task = Task {
            id: TaskId::from_random(id),
            deployment: self.deployment.clone(),
            node: node.clone(),
            issued_at: now,
            not_before: now,
            expires_at: now.saturating_add(Duration::from_secs(600)),
            key_id: self.task_key.id().clone(),
            kind: action.kind().to_owned(),
            params: action.encode_params().unwrap_or_default(),
        };
        Envelope::seal(MessageId::from_random(id), &task)
            .and_then(|envelope| self.task_key.sign(&envelope))
            .and_then(|signed| signed.encode())
            .unwrap_or_default()
    }

    /// Issues through a live replica; returns whether the replica reported success.
    /// Takes one step of the deployment's CA rotation as an operator would: begin when stable,
    /// otherwise mostly advance and sometimes roll back. The control plane rejects a step that
    /// live nodes are not ready for.
    fn ca_step(&mut self) {
        let Some(index) = self.up_replica() else {
            return;
        };
        let Some(control_plane) = self
            .replicas
            .get(index)
            .map(|replica| replica.control_plane.clone())
        else {
            return;
        };
        let Ok(view) = block_on(control_plane.ca_status(&self.deployment)) else {
            return;
        };
        let step = if view.phase == "stable" {
            CaStep::Begin
        } else if self.rng.gen_bool(0.8) {
            CaStep::Advance
        } else {
            CaStep::Rollback
        };
        let taken = block_on(control_plane.ca_step(&self.deployment, step)).is_ok();
        self.note(&format!(
            "CA step {step:?} {}",
            if taken { "taken" } else { "rejected" }
        ));
    }

    fn issue_request(&mut self, target: Target, request: ActionRequest) -> bool {
        let Some(replica) = self.up_replica() else {
            return false;
        };
        let Some(control_plane) = self.replicas.get(replica).map(|r| r.control_plane.clone())
        else {
            return false;
        };
        match block_on(control_plane.issue(self.deployment.clone(), target, request, None)) {
            Ok(tasks) => {
                for task in tasks {
                    self.stats.tasks += 1;
                    let index = self.nodes.iter().position(|node| node.id == task.node);
                    if let (Some(index), Ok(signed)) = (
                        index,
                        warden_control_plane::service::decode_signed_task(&task),
                    ) {
                        if let Ok(bytes) = signed.encode() {
                            self.signed_tasks.push((index, bytes));
                        }
                        // The node's long poll returns as soon as the task is stored.
                        self.schedule(Duration::from_millis(5), Event::NodePoll(index));
                    }
                    self.note(&format!(
                        "issued {} to {} ({})",
                        task.id, task.node, task.kind
                    ));
                }
                true
            }
            Err(error) => {
                self.note(&format!("issue failed: {error}"));
                false
            }
        }
    }

    /// Injects what a hostile publisher would: forged, replayed, misaddressed and stale tasks.
    fn hostile(&mut self) {
        if !self.faults_on {
            return;
        }
        let next = self.exponential(self.rates.hostile_every);
        self.schedule(next, Event::Hostile);
        let Some(target) =
            (!self.nodes.is_empty()).then(|| self.rng.gen_range(0..self.nodes.len()))
        else {
            return;
        };
        let Some(target_id) = self.nodes.get(target).map(|node| node.id.clone()) else {
            return;
        };
        let subject = Subject::tasks(&self.deployment, &target_id);
        let kind = self.rng.gen_range(0..5);
        let bytes = match kind {
            4 => {
                let mut id = [0u8; 16];
                self.rng.fill_bytes(&mut id);
                self.forged_upgrade(id, &target_id)
            }
            // Replay or misaddress a task the control plane really signed.
            0..=2 if !self.signed_tasks.is_empty() => {
                let pick = self.rng.gen_range(0..self.signed_tasks.len());
                self.signed_tasks
                    .get(pick)
                    .map(|(_, bytes)| bytes.clone())
                    .unwrap_or_default()
            }
            // A task signed by the attacker's own key.
            _ => {
                let attacker = SigningKey::generate(&mut self.rng);
                let mut id = [0u8; 16];
                self.rng.fill_bytes(&mut id);
                let now = self.clock.now();
                let action = if self.rng.gen_bool(0.5) {
                    TaskAction::ApplyConfig(warden_bus::messages::ApplyConfig {
                        version: 1 << 40,
                        content: "owned = true\n".into(),
                    })
                } else {
                    TaskAction::ApplyAccessRules(AccessRules {
                        version: 1 << 40,
                        rules: vec![AccessRule {
                            cidr: "0.0.0.0/0".into(),
                            protocol: Protocol::Tcp,
                            expires_at: None,
                        }],
                    })
                };
                let task = Task {
                    id: TaskId::from_random(id),
                    deployment: self.deployment.clone(),
                    node: target_id.clone(),
                    issued_at: now,
                    not_before: now,
                    expires_at: now.saturating_add(Duration::from_secs(600)),
                    key_id: attacker.id().clone(),
                    kind: action.kind().to_owned(),
                    params: action.encode_params().unwrap_or_default(),
                };
                Envelope::seal(MessageId::from_random(id), &task)
                    .and_then(|envelope| attacker.sign(&envelope))
                    .and_then(|signed| signed.encode())
                    .unwrap_or_default()
            }
        };
        let _ = block_on(self.broker.persist(&subject, bytes.into(), None));
        self.faults.add(match kind {
            4 => "hostile upgrade without the release key",
            0..=2 if !self.signed_tasks.is_empty() => "hostile replayed or misaddressed task",
            _ => "hostile forged task",
        });
        self.note(&format!("hostile message to {target_id}"));
        self.schedule(Duration::from_millis(5), Event::NodePoll(target));
    }

    fn heal(&mut self) {
        self.faults_on = false;
        net::lock(&self.network).set_enabled(false);
        self.healed_at = Some(self.clock.now());
        let now = self.clock.now();
        for (index, node) in self.nodes.iter().enumerate() {
            self.oracle.access.saw_clock(index, node.clock.now());
            // Setting the clock right is a step too.
            if node.clock.offset_ms.swap(0, Ordering::SeqCst) != 0 {
                if let Some(step) = self.oracle.last_clock_step.get_mut(index) {
                    *step = now;
                }
            }
        }
        for index in 0..REPLICAS {
            self.replica_restart(index);
        }
        for index in 0..self.nodes.len() {
            self.node_restart(index);
            self.schedule(Duration::from_millis(500), Event::AccessPoll(index));
        }
        self.note("faults stopped");

        // The desired state every live node must reach.
        let version = self.next_config_version;
        self.next_config_version += 1;
        let request = ActionRequest::ApplyConfig {
            version,
            content: format!("[system]\nversion = {version}\n"),
        };
        while !self.issue_request(Target::AllNodes, request.clone()) {
            self.clock.advance(Duration::from_secs(1));
        }
        // Every node must run iggy again, including those an operator stopped.
        let start = ActionRequest::StartComponent {
            component: Component::Iggy,
        };
        while !self.issue_request(Target::AllNodes, start.clone()) {
            self.clock.advance(Duration::from_secs(1));
        }
        self.final_version = Some(version);
        let request = self.access_request();
        let ActionRequest::ApplyAccessRules { version, .. } = &request else {
            unreachable!("access_request builds access rules")
        };
        self.final_access = Some(*version);
        while !self.issue_request(Target::AllNodes, request.clone()) {
            self.clock.advance(Duration::from_secs(1));
        }
        self.schedule(Duration::from_secs(5), Event::LivenessCheck);
    }

    /// Describes what still keeps the run from converging, if anything.
    fn liveness_gap(&mut self) -> Option<String> {
        let final_version = self.final_version?;
        if let Some(node) = self
            .nodes
            .iter()
            .find(|node| node.disk.config_version != final_version)
        {
            return Some(format!(
                "{} has configuration {} instead of {final_version}",
                node.id, node.disk.config_version
            ));
        }
        let now = self.clock.now();
        if let Some(node) = self.nodes.iter().find(|node| {
            node.disk
                .certificate
                .is_none_or(|record| record.not_after <= now)
        }) {
            return Some(format!("{} holds no valid certificate", node.id));
        }
        if let Some(index) = (0..self.nodes.len()).find(|index| !self.access_converged(*index)) {
            let node = self.nodes.get(index)?;
            return Some(format!(
                "{} holds access rules {:?} instead of version {:?}",
                node.id, node.firewall, self.final_access
            ));
        }
        if let Some(gap) = self.component_liveness_gap() {
            return Some(gap);
        }
        let control_plane = self.replicas.first()?.control_plane.clone();
        let tasks = block_on(control_plane.list_tasks(&TaskFilter::default())).ok()?;
        let open = tasks.iter().find(|task| !task.status.is_terminal())?;
        Some(format!(
            "task {} to {} is still {}",
            open.id,
            open.node,
            open.status.as_str()
        ))
    }

    fn liveness_check(&mut self) {
        self.schedule(Duration::from_secs(5), Event::LivenessCheck);
        self.stats.checks += 1;
        let final_version = self.final_version;
        let now = self.clock.now();
        let nodes_done = final_version.is_some_and(|version| {
            self.nodes.iter().all(|node| {
                node.disk.config_version == version
                    && node
                        .disk
                        .certificate
                        .is_some_and(|record| record.not_after > now)
            })
        });
        if !nodes_done
            || !(0..self.nodes.len()).all(|index| self.access_converged(index))
            || self.component_liveness_gap().is_some()
        {
            return;
        }
        let Some(control_plane) = self
            .replicas
            .first()
            .map(|replica| replica.control_plane.clone())
        else {
            return;
        };
        if let Ok(tasks) = block_on(control_plane.list_tasks(&TaskFilter::default())) {
            if tasks.iter().all(|task| task.status.is_terminal()) {
                self.converged = true;
                self.note("converged");
            }
        }
    }

    /// Returns whether node `index`'s table is the final access document minus its expired
    /// rules.
    fn access_converged(&self, index: usize) -> bool {
        let (Some(version), Some(node)) = (self.final_access, self.nodes.get(index)) else {
            return false;
        };
        self.oracle
            .access
            .converged(index, node.firewall.as_ref(), version, node.clock.now())
    }

    fn finish(mut self, wall: Duration) -> Outcome {
        self.stats.access_applied = self.nodes.iter().map(|node| node.access_applies).sum();
        let control_plane = self
            .replicas
            .first()
            .map(|replica| replica.control_plane.clone());
        let mut statuses = BTreeMap::new();
        net::lock(&self.network).set_enabled(false);
        if let Some(control_plane) = control_plane {
            if let Ok(tasks) = block_on(control_plane.list_tasks(&TaskFilter::default())) {
                for task in tasks {
                    *statuses.entry(task.status.as_str().to_owned()).or_insert(0) += 1;
                    let _: TaskStatus = task.status;
                }
            }
        }
        self.stats.checks += self.oracle.checks;
        self.stats.simulated = self.clock.now().since(START);
        self.stats.wall = wall;
        let mut faults = net::lock(&self.network).faults.clone();
        for (kind, count) in &self.faults.by_kind {
            *faults.by_kind.entry(kind).or_insert(0) += count;
        }
        self.stats.faults = faults;
        Outcome {
            config: self.config,
            trace: self.trace,
            stats: self.stats,
            violation: self.oracle.violation,
            statuses,
            executions: self.oracle.executions,
        }
    }
}

fn lock_network(network: &Mutex<Network>) -> std::sync::MutexGuard<'_, Network> {
    net::lock(network)
}
