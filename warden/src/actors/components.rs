//! One actor per defined component: it runs the [`ComponentSupervisor`] core and carries out its
//! effects (spawn, signals, probes), persists the desired state, forwards the component's
//! output as signed log batches, and publishes its phase for heartbeats.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use nix::sys::signal::Signal;
use rand::RngCore;
use warden_actors::clock::SharedClock;
use warden_actors::entropy::{self, Entropy};
use warden_bus::messages::{
    Component, ComponentLogs, ComponentPhase, ComponentStatus, COMPONENT_DETAIL_BYTES_MAX,
    LOG_LINES_PER_BATCH_MAX,
};
use warden_bus::{
    Bus, DeploymentId, Envelope, MessageId, NodeId, SigningKey, Subject, TelemetryKind,
};

use crate::components::definition::{
    check_kernel_for_iggy, render_launch, ComponentDefinition, RootCredentials,
    ROOT_CREDENTIALS_BYTES_MAX,
};
use crate::components::installer::Installer;
use crate::components::ownership;
use crate::components::process::{self, OutputStream, SharedOutput};
use crate::components::state::{ComponentState, DesiredState, LaunchRecord, ProcessRecord};
use crate::core::component::{ComponentSupervisor, ExitStatus, SupervisorEffect};
use crate::tls::TlsFiles;

/// How often the supervisor core gets a timer tick.
pub const TICK_INTERVAL: Duration = Duration::from_millis(100);
/// How often captured output is forwarded; each stream sends at most one batch per interval.
pub const LOG_FORWARD_INTERVAL: Duration = Duration::from_secs(1);
/// Output lines included in a failed task's reason.
pub const FAILURE_TAIL_LINES: usize = 10;

/// The phase of every component, read by the heartbeat actor.
pub type StatusBoard = Arc<Mutex<BTreeMap<&'static str, ComponentStatus>>>;

/// What a task asks of a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Run it.
    Start,
    /// Stop it.
    Stop,
    /// Run a fresh process.
    Restart,
}

/// A task's request, with the configuration version it runs with.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct Command {
    /// The request.
    pub request: Request,
    /// Configuration version to record, for reconfiguration.
    pub config_version: Option<u64>,
}

/// Asks for the current phase.
#[derive(Message)]
#[rtype(result = "Snapshot")]
pub struct GetSnapshot;

/// A component's phase at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The phase.
    pub phase: ComponentPhase,
    /// Why.
    pub detail: String,
    /// The live process.
    pub pid: Option<u32>,
    /// The last output lines.
    pub tail: Vec<String>,
}

/// What a component actor needs.
pub struct ComponentParts {
    /// The validated definition.
    pub definition: ComponentDefinition,
    /// Persisted desired state and process record.
    pub state: ComponentState,
    /// Installed releases.
    pub installer: Installer,
    /// Where phases are published for heartbeats.
    pub board: StatusBoard,
    /// Wall clock.
    pub clock: SharedClock,
    /// The broker, for log batches.
    pub bus: Arc<dyn Bus>,
    /// This node's deployment.
    pub deployment: DeploymentId,
    /// This node.
    pub node: NodeId,
    /// The node key, which signs log batches.
    pub node_key: SigningKey,
    /// File with the kernel release, [`KERNEL_RELEASE_FILE`] outside tests.
    pub kernel_release_file: std::path::PathBuf,
    /// The Warden's managed TLS files; a component with its own user that uses the managed key
    /// gets read access to it.
    pub tls_files: TlsFiles,
}

/// Where Linux exposes the running kernel's release.
pub const KERNEL_RELEASE_FILE: &str = "/proc/sys/kernel/osrelease";

/// Supervises one component process.
pub struct ComponentActor {
    parts: ComponentParts,
    core: ComponentSupervisor,
    output: SharedOutput,
    rng: Entropy,
    desired: DesiredState,
    /// Carries node_id, deployment_id and component into every log line of this actor.
    span: tracing::Span,
}

impl ComponentActor {
    /// Creates the actor; it reads its persisted state when it starts.
    pub fn new(parts: ComponentParts) -> Self {
        let core = ComponentSupervisor::new(parts.definition.policy);
        let span = tracing::info_span!(
            "component",
            node_id = %parts.node,
            deployment_id = %parts.deployment,
            component = %parts.definition.component
        );
        Self {
            span,
            parts,
            core,
            output: SharedOutput::default(),
            rng: entropy::from_os(),
            desired: DesiredState::default(),
        }
    }

    fn component(&self) -> Component {
        self.parts.definition.component
    }

    fn now(&self) -> warden_bus::UnixMillis {
        self.parts.clock.now()
    }

    fn unit(&mut self) -> f64 {
        entropy::unit_interval(&mut self.rng)
    }

    fn run(&mut self, effects: Vec<SupervisorEffect>, ctx: &mut Context<Self>) {
        let _entered = self.span.clone().entered();
        let mut queue = std::collections::VecDeque::from(effects);
        // Each spawn feeds back at most one round of effects, so the loop ends.
        while let Some(effect) = queue.pop_front() {
            match effect {
                SupervisorEffect::Spawn => {
                    let now = self.now();
                    let next = match self.spawn(ctx) {
                        Ok(pid) => self.core.on_spawned(pid, now),
                        Err(reason) => {
                            tracing::error!(component = %self.component(), reason = %reason, "failed to start component");
                            let unit = self.unit();
                            self.core.on_spawn_failed(&reason, now, unit)
                        }
                    };
                    queue.extend(next);
                }
                SupervisorEffect::Terminate { pid } => self.signal(pid, Signal::SIGTERM),
                SupervisorEffect::Kill { pid } => {
                    tracing::warn!(component = %self.component(), pid, "component did not stop in time; sending SIGKILL");
                    self.signal(pid, Signal::SIGKILL);
                }
                SupervisorEffect::Probe { generation } => {
                    let check = self.parts.definition.health.clone();
                    let probe = async move { process::probe(&check).await };
                    ctx.spawn(probe.into_actor(self).map(move |result, actor, ctx| {
                        let now = actor.now();
                        let effects = actor.core.on_probe(generation, result, now);
                        actor.run(effects, ctx);
                    }));
                }
                SupervisorEffect::PhaseChanged { phase, detail } => {
                    tracing::info!(component = %self.component(), phase = %phase, detail = %detail, "component phase changed");
                    if phase == ComponentPhase::Failed {
                        // A failed component stays down across Warden restarts too, and still
                        // reads as failed after one.
                        self.desired.running = false;
                        if let Err(error) = self
                            .parts
                            .state
                            .set_desired_and_failure(self.desired, Some(&detail))
                        {
                            tracing::error!(component = %self.component(), error = %error, "cannot record the failure");
                        }
                    }
                    self.publish_status();
                }
            }
        }
    }

    fn signal(&self, pid: u32, signal: Signal) {
        if let Err(reason) = process::signal_group(pid, signal) {
            tracing::error!(component = %self.component(), pid, reason = %reason, "failed to signal component");
        }
    }

    fn publish_status(&self) {
        let mut detail = self.core.detail().to_owned();
        if detail.len() > COMPONENT_DETAIL_BYTES_MAX {
            let mut end = COMPONENT_DETAIL_BYTES_MAX;
            while !detail.is_char_boundary(end) {
                end -= 1;
            }
            detail.truncate(end);
        }
        let status = ComponentStatus {
            component: self.component(),
            phase: self.core.phase(),
            pid: self.core.pid(),
            detail,
        };
        let mut board = self
            .parts
            .board
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        board.insert(self.component().as_str(), status);
    }

    /// Starts the process: the active release or the bootstrap's binary, with the rendered
    /// environment. Returns its pid.
    fn spawn(&mut self, ctx: &mut Context<Self>) -> Result<u32, String> {
        let definition = &self.parts.definition;
        if definition.component == Component::Iggy {
            let file = &self.parts.kernel_release_file;
            let release = std::fs::read_to_string(file).map_err(|error| {
                format!(
                    "cannot read the kernel version from {}: {error}",
                    file.display()
                )
            })?;
            check_kernel_for_iggy(&release)?;
        }

        // The active installed release wins over the operator's binary.
        let program = self
            .parts
            .installer
            .active_binary()
            .map_err(|error| error.to_string())?
            .unwrap_or_else(|| definition.binary.clone());
        let first_start = std::fs::read_dir(&definition.data_dir)
            .map(|mut entries| entries.next().is_none())
            .unwrap_or(true);
        let root = match (&definition.root_credentials_file, first_start) {
            (Some(path), true) => Some(read_root_credentials(path)?),
            _ => None,
        };

        let mut spec = render_launch(definition, &program, first_start, root.as_ref());
        let created = create_private_dir(&spec.working_dir)?;
        if let Some(user) = &spec.user {
            ownership::own_data_dir(&spec.working_dir, user, created)?;
            if let Some((_, key)) = &definition.tls {
                ownership::share_managed_key(key, &self.parts.tls_files, user)?;
            }
        }
        // Recorded before the spawn: if the Warden crashes before it records the process id,
        // its next run still finds the process by this id.
        let launch = LaunchRecord::generate(&mut self.rng);
        self.parts
            .state
            .set_launch(Some(&launch))
            .map_err(|error| format!("cannot record the launch: {error}"))?;
        spec.env
            .insert(process::LAUNCH_ID_VARIABLE.to_owned(), launch.id.clone());
        self.output
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .start_process();
        tracing::info!(component = %self.component(), program = %program.display(), first_start, "starting component");
        let spawned = process::spawn(&spec, &self.output)
            .map_err(|error| format!("cannot run {}: {error}", program.display()))?;
        let pid = spawned.pid;

        // Recorded before anything else happens; a crash before this write is covered by the
        // launch record.
        let record = ProcessRecord {
            pid,
            start_ticks: process::process_start_ticks(pid).unwrap_or(0),
        };
        if let Err(error) = self.parts.state.set_process(Some(record)) {
            // Without the record a restarted Warden could start a second process; stop this one.
            let _ = process::signal_group(pid, Signal::SIGKILL);
            return Err(format!("cannot record the started process: {error}"));
        }

        let mut child = spawned.child;
        let wait = async move { child.wait().await };
        ctx.spawn(wait.into_actor(self).map(move |status, actor, ctx| {
            let status = match status {
                Ok(status) => process::exit_status(status),
                Err(_) => ExitStatus::Code(-1),
            };
            let _entered = actor.span.clone().entered();
            tracing::info!(component = %actor.component(), pid, status = %status, "component process exited");
            // The leader is gone; whatever else it started in its group goes with it, or a
            // restart would run beside it. The group id cannot have been reused while the
            // group has members.
            if process::orphaned_group(pid) {
                tracing::warn!(component = %actor.component(), pid, "processes of the exited component's group are still running; killing them");
                actor.signal(pid, Signal::SIGKILL);
            }
            // Processes that left the group with setsid still carry the launch id.
            let component = actor.component();
            let launch_id = launch.id.clone();
            ctx.spawn(
                async move { kill_strays(component, pid, &launch_id).await }.into_actor(actor),
            );
            if let Err(error) = actor.parts.state.set_process(None) {
                tracing::error!(component = %actor.component(), error = %error, "cannot clear the process record");
            }
            let now = actor.now();
            let unit = actor.unit();
            let effects = actor.core.on_exited(pid, status, now, unit);
            actor.run(effects, ctx);
        }));
        Ok(pid)
    }

    /// Forwards pending output, one batch per stream.
    fn forward_logs(&mut self, ctx: &mut Context<Self>) {
        for stream in [OutputStream::Stdout, OutputStream::Stderr] {
            let (lines, dropped) = {
                let mut output = self
                    .output
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                output.drain(stream, LOG_LINES_PER_BATCH_MAX)
            };
            if lines.is_empty() && dropped == 0 {
                continue;
            }
            let batch = ComponentLogs {
                deployment: self.parts.deployment.clone(),
                node: self.parts.node.clone(),
                component: self.component(),
                stream: stream.as_str().to_owned(),
                lines,
                dropped,
                sent_at: self.now(),
            };
            let mut id = [0u8; 16];
            self.rng.fill_bytes(&mut id);
            let bytes = match Envelope::seal(MessageId::from_random(id), &batch)
                .and_then(|envelope| self.parts.node_key.sign(&envelope))
                .and_then(|signed| signed.encode())
            {
                Ok(bytes) => bytes,
                Err(error) => {
                    tracing::warn!(component = %self.component(), error = %error, "failed to encode a log batch");
                    continue;
                }
            };
            let bus = self.parts.bus.clone();
            let subject = Subject::telemetry(
                &self.parts.deployment,
                &self.parts.node,
                TelemetryKind::Logs,
            );
            let component = self.component();
            ctx.spawn(
                async move {
                    if let Err(error) = bus.publish(&subject, bytes.into()).await {
                        tracing::debug!(component = %component, error = %error, "failed to forward a log batch");
                    }
                }
                .into_actor(self),
            );
        }
    }

    /// Stops a process a previous Warden run left behind, if its record still names a live
    /// process with the same start time.
    async fn stop_leftover(record: ProcessRecord, stop_timeout: Duration) {
        let alive = || process::process_start_ticks(record.pid) == Some(record.start_ticks);
        if !alive() {
            // The leader is gone, but processes it started may still run in its group, which
            // keeps the group id from being reused.
            if process::orphaned_group(record.pid) {
                tracing::warn!(
                    pgid = record.pid,
                    "processes of a component group from an earlier Warden run are still running; killing them"
                );
                let _ = process::signal_group(record.pid, Signal::SIGKILL);
                wait_while(|| process::orphaned_group(record.pid), REAP_WAIT).await;
            }
            return;
        }
        tracing::warn!(
            pid = record.pid,
            "a component process from an earlier Warden run is still running; stopping it"
        );
        let _ = process::signal_group(record.pid, Signal::SIGTERM);
        wait_while(alive, stop_timeout).await;
        let remaining = || alive() || process::orphaned_group(record.pid);
        if remaining() {
            let _ = process::signal_group(record.pid, Signal::SIGKILL);
            // It is not this Warden's child, so it is reaped by init; wait until it is gone.
            wait_while(remaining, REAP_WAIT).await;
        }
    }
}

/// Kills the processes that carry `launch_id` after the component's main process `pid` exited.
/// It scans again until two scans in a row find nothing, so a stray that was starting a program
/// during a scan (its environment is readable only once the program is loaded) or that forked
/// meanwhile is caught too. It gives up after 20 scans.
async fn kill_strays(component: Component, pid: u32, launch_id: &str) {
    let mut quiet = 0;
    for _ in 0..20 {
        let strays = process::launched_processes(launch_id);
        if strays.is_empty() {
            quiet += 1;
            if quiet == 2 {
                return;
            }
        } else {
            quiet = 0;
            tracing::warn!(component = %component, pid, strays = ?strays, "processes the exited component started outside its group are still running; killing them");
            process::signal_each(&strays, Signal::SIGKILL);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops processes of an earlier Warden run's latest launch that its records do not name: the
/// process itself if that run crashed before recording it, and whatever the process started
/// outside its group. SIGTERM first, then SIGKILL after `stop_timeout`.
async fn stop_launched_processes(launch: &LaunchRecord, stop_timeout: Duration) {
    let found = process::launched_processes(&launch.id);
    if found.is_empty() {
        return;
    }
    tracing::warn!(pids = ?found, "processes of a component launch from an earlier Warden run are still running; stopping them");
    process::signal_each(&found, Signal::SIGTERM);
    let running = || !process::launched_processes(&launch.id).is_empty();
    wait_while(running, stop_timeout).await;
    let remaining = process::launched_processes(&launch.id);
    if remaining.is_empty() {
        return;
    }
    process::signal_each(&remaining, Signal::SIGKILL);
    // They are not this Warden's children, so init reaps them; wait until they are gone.
    wait_while(running, REAP_WAIT).await;
}

/// How long the Warden waits for killed processes that are not its children to be reaped.
const REAP_WAIT: Duration = Duration::from_secs(5);

/// Waits while `condition` holds, checking every 50 ms, for at most `within`.
async fn wait_while(condition: impl Fn() -> bool, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while condition() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates the component's data directory (mode 0700) if it is missing. Returns whether it
/// did. Missing parents get the default mode, so a component with its own user can pass
/// through them.
fn create_private_dir(path: &std::path::Path) -> Result<bool, String> {
    use std::os::unix::fs::DirBuilderExt;
    if path.is_dir() {
        return Ok(false);
    }
    let failed =
        |error: std::io::Error| format!("cannot create data directory {}: {error}", path.display());
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(failed)?;
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .map_err(failed)?;
    Ok(true)
}

fn read_root_credentials(path: &std::path::Path) -> Result<RootCredentials, String> {
    use std::os::unix::fs::PermissionsExt;
    let metadata = std::fs::metadata(path).map_err(|error| {
        format!(
            "cannot read root credentials file {}: {error}",
            path.display()
        )
    })?;
    if metadata.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "root credentials file {} is readable by others; chmod 600 it",
            path.display()
        ));
    }
    if metadata.len() > ROOT_CREDENTIALS_BYTES_MAX {
        return Err(format!(
            "root credentials file {} is over {ROOT_CREDENTIALS_BYTES_MAX} bytes",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|error| {
        format!(
            "cannot read root credentials file {}: {error}",
            path.display()
        )
    })?;
    RootCredentials::parse(&text)
        .map_err(|reason| format!("root credentials file {} {reason}", path.display()))
}

impl Actor for ComponentActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let _entered = self.span.clone().entered();
        self.publish_status();
        let desired = match self.parts.state.desired() {
            Ok(desired) => desired,
            Err(error) => {
                tracing::error!(component = %self.component(), error = %error, "cannot read the desired state; the component stays stopped");
                DesiredState::default()
            }
        };
        self.desired = desired;
        let leftover = self.parts.state.process().unwrap_or_else(|error| {
            tracing::error!(component = %self.component(), error = %error, "cannot read the process record");
            None
        });
        let failed = self.parts.state.failed().unwrap_or_else(|error| {
            tracing::error!(component = %self.component(), error = %error, "cannot read the failure record");
            None
        });
        let leftover_launch = self.parts.state.launch().unwrap_or_else(|error| {
            tracing::error!(component = %self.component(), error = %error, "cannot read the launch record");
            None
        });
        let stop_timeout = self.parts.definition.policy.stop_timeout;

        // wait: no command is handled before a leftover process is gone.
        let span = self.span.clone();
        ctx.wait(
            tracing::Instrument::instrument(
                async move {
                    if let Some(record) = leftover {
                        Self::stop_leftover(record, stop_timeout).await;
                    }
                    if let Some(launch) = leftover_launch {
                        stop_launched_processes(&launch, stop_timeout).await;
                    }
                },
                span,
            )
            .into_actor(self)
            .map(|(), actor, ctx| {
                let _entered = actor.span.clone().entered();
                if let Err(error) = actor.parts.state.set_process(None) {
                    tracing::error!(component = %actor.component(), error = %error, "cannot clear the process record");
                }
                if let Err(error) = actor.parts.state.set_launch(None) {
                    tracing::error!(component = %actor.component(), error = %error, "cannot clear the launch record");
                }
                if let (false, Some(detail)) = (actor.desired.running, failed) {
                    actor.core.restore_failed(detail);
                    actor.publish_status();
                }
                if actor.desired.running {
                    tracing::info!(component = %actor.component(), "restoring the desired state: running");
                    let effects = actor.core.start();
                    actor.run(effects, ctx);
                }
            }),
        );
        ctx.run_interval(TICK_INTERVAL, |actor, ctx| {
            let now = actor.now();
            let effects = actor.core.on_tick(now);
            actor.run(effects, ctx);
        });
        ctx.run_interval(LOG_FORWARD_INTERVAL, |actor, ctx| actor.forward_logs(ctx));
    }
}

impl Handler<Command> for ComponentActor {
    type Result = Result<(), String>;

    fn handle(&mut self, command: Command, ctx: &mut Self::Context) -> Self::Result {
        let _entered = self.span.clone().entered();
        let mut desired = self.desired;
        desired.running = command.request != Request::Stop;
        if let Some(version) = command.config_version {
            desired.config_version = version;
        }
        // Persist first: a Warden restart must restore what the operator asked for. Any task
        // also ends a failure, because the component starts afresh or is stopped on purpose.
        self.parts
            .state
            .set_desired_and_failure(desired, None)
            .map_err(|error| format!("cannot record the desired state: {error}"))?;
        self.desired = desired;
        let now = self.now();
        let effects = match command.request {
            Request::Start => self.core.start(),
            Request::Stop => self.core.stop(now),
            Request::Restart => self.core.restart(now),
        };
        self.run(effects, ctx);
        Ok(())
    }
}

impl Handler<GetSnapshot> for ComponentActor {
    type Result = MessageResult<GetSnapshot>;

    fn handle(&mut self, _: GetSnapshot, _: &mut Self::Context) -> Self::Result {
        let tail = self
            .output
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .tail(FAILURE_TAIL_LINES);
        MessageResult(Snapshot {
            phase: self.core.phase(),
            detail: self.core.detail().to_owned(),
            pid: self.core.pid(),
            tail,
        })
    }
}
