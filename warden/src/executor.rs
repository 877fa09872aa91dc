//! Carries out verified tasks on the node: writes the Iggy configuration and collects facts.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use warden_actors::clock::SharedClock;
use warden_bus::messages::{ApplyConfig, Component, ComponentPhase};
use warden_bus::{Bus, DeploymentId, NodeId, SigningKey, TaskAction};

use crate::artifacts::{fetch_verified, Requester};
use crate::components::installer::{sha256_file, ActiveReleases, Installer, Release};
use crate::core::release::VerifiedRelease;
use crate::core::self_upgrade::{agent_step, AgentStep, ReleaseRecord, Trial, TrialState};
use crate::self_upgrade as record_file;

use crate::actors::access::Install;
use crate::actors::certificates::ForceRenewal;
use crate::actors::components::{Command, ComponentActor, GetSnapshot, Request, Snapshot};
use crate::components::definition::check_kernel_for_iggy;

use crate::core::verify::VerifiedTask;
use crate::core::ExecutionOutcome;

/// First line of a configuration file written by the Warden; the version follows it.
const VERSION_HEADER: &str = "# Written by Warden; do not edit. config_version = ";

/// The component actors by component name.
pub type ComponentHandles = Arc<BTreeMap<&'static str, Addr<ComponentActor>>>;

/// Margin on top of a component's start and stop timeouts before a task gives up waiting.
const COMPONENT_WAIT_MARGIN: Duration = Duration::from_secs(5);

/// Time before a self-upgrade trial's deadline after which the new binary no longer confirms.
const CONFIRM_MARGIN: Duration = Duration::from_secs(2);

/// How often a task polls a component's phase.
const COMPONENT_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// What an upgrade needs besides the component actors: the bus to fetch artifacts through, the
/// node key that signs the fetch requests, and each component's installer.
#[derive(Clone)]
pub struct ReleaseIo {
    /// The node's connection to the broker.
    pub bus: Arc<dyn Bus>,
    /// The node's deployment.
    pub deployment: DeploymentId,
    /// The node.
    pub node: NodeId,
    /// The node key.
    pub node_key: SigningKey,
    /// Wall clock.
    pub clock: SharedClock,
    /// Installers of the components defined on this node.
    pub installers: BTreeMap<Component, Installer>,
}

/// Executes tasks on the local node.
#[derive(Clone)]
pub struct Executor {
    config_path: PathBuf,
    state_dir: PathBuf,
    started: std::time::Instant,
    components: ComponentHandles,
    timeouts: BTreeMap<&'static str, (Duration, Duration)>,
    releases: Option<ReleaseIo>,
    self_upgrade: Option<SelfUpgradeIo>,
    certificates: Option<actix::Recipient<ForceRenewal>>,
    access: Option<actix::Recipient<Install>>,
}

/// Inputs of the Warden's upgrade of itself.
#[derive(Debug, Clone)]
pub struct SelfUpgradeIo {
    /// The release record shared with the launcher.
    pub record_path: PathBuf,
    /// The binary this process runs.
    pub own_binary: PathBuf,
    /// Whether a launcher started this process; without one a switch would end the Warden.
    pub under_launcher: bool,
    /// Heartbeats published since the start, counted by the heartbeat actor.
    pub heartbeats_sent: Arc<AtomicU64>,
}

/// Result of a self-upgrade task in this process.
#[derive(Debug)]
pub enum SelfUpgradeOutcome {
    /// The task is finished with this outcome.
    Finished(ExecutionOutcome),
    /// The new binary is installed and its trial recorded: the process must exit with
    /// [`SWITCH_EXIT_STATUS`](crate::core::self_upgrade::SWITCH_EXIT_STATUS) without
    /// finishing the task, which the new binary finishes.
    Switch,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("config_path", &self.config_path)
            .field("state_dir", &self.state_dir)
            .field("components", &self.components.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Why the configuration version on disk could not be read.
#[derive(Debug, thiserror::Error)]
#[error("failed to read the configuration version from {path}: {reason}")]
pub struct ConfigVersionError {
    path: PathBuf,
    reason: String,
}

impl Executor {
    /// Creates an executor writing the Iggy configuration to `config_path`.
    pub fn new(config_path: PathBuf, state_dir: PathBuf) -> Self {
        Self {
            config_path,
            state_dir,
            started: std::time::Instant::now(),
            components: ComponentHandles::default(),
            timeouts: BTreeMap::new(),
            releases: None,
            self_upgrade: None,
            certificates: None,
            access: None,
        }
    }

    /// Adds the access actor, which carries out `apply_access_rules` tasks.
    pub fn with_access(mut self, access: Option<actix::Recipient<Install>>) -> Self {
        self.access = access;
        self
    }

    /// Adds the certificate actor, which carries out `rotate_certificate` tasks.
    pub fn with_certificates(mut self, certificates: actix::Recipient<ForceRenewal>) -> Self {
        self.certificates = Some(certificates);
        self
    }

    /// Adds what the Warden's upgrade of itself needs.
    pub fn with_self_upgrade(mut self, self_upgrade: SelfUpgradeIo) -> Self {
        self.self_upgrade = Some(self_upgrade);
        self
    }

    /// Adds what upgrades need.
    pub fn with_releases(mut self, releases: ReleaseIo) -> Self {
        self.releases = Some(releases);
        self
    }

    /// Release counter of each component's active installed release. A record that cannot be
    /// read counts as none, and is logged; the release check then refuses nothing it would
    /// otherwise accept, so the error is also reported on the next upgrade of that component.
    pub fn installed_counters(&self) -> BTreeMap<Component, u64> {
        let Some(releases) = &self.releases else {
            return BTreeMap::new();
        };
        releases
            .installers
            .iter()
            .filter_map(|(component, installer)| match installer.releases() {
                Ok(releases) => releases
                    .active
                    .map(|release| (*component, release.release_counter)),
                Err(error) => {
                    tracing::error!(component = %component, error = %error, "cannot read the installed release");
                    None
                }
            })
            .collect()
    }

    /// Adds the component actors, with each component's start and stop timeouts.
    pub fn with_components(
        mut self,
        components: ComponentHandles,
        timeouts: BTreeMap<&'static str, (Duration, Duration)>,
    ) -> Self {
        self.components = components;
        self.timeouts = timeouts;
        self
    }

    /// Version of the configuration file on disk: 0 if there is none or it lacks the header.
    pub fn config_version_on_disk(&self) -> Result<u64, ConfigVersionError> {
        read_config_version(&self.config_path)
    }

    /// Executes a verified task. File I/O runs on the blocking thread pool.
    pub async fn execute(&self, task: &VerifiedTask) -> ExecutionOutcome {
        let action = task.action().clone();
        let component_request = match &action {
            TaskAction::StartComponent(target) => Some((target.component, Request::Start, None)),
            TaskAction::StopComponent(target) => Some((target.component, Request::Stop, None)),
            TaskAction::RestartComponent(target) => {
                Some((target.component, Request::Restart, None))
            }
            TaskAction::ReconfigureComponent(reconfigure) => Some((
                reconfigure.component,
                Request::Restart,
                Some(reconfigure.config_version),
            )),
            _ => None,
        };
        if let Some((component, request, config_version)) = component_request {
            return self.run_component(component, request, config_version).await;
        }
        if let TaskAction::RotateCertificate = &action {
            return self.rotate_certificate().await;
        }
        if let TaskAction::ApplyAccessRules(rules) = action {
            let actor = self
                .access
                .as_ref()
                .ok_or("this node does not manage access rules; add an [access] table to its bootstrap file")?;
            return actor
                .send(Install(rules))
                .await
                .map_err(|error| format!("the access actor is not running: {error}"))?;
        }
        if let TaskAction::UpgradeComponent(_) = &action {
            return match task.release() {
                Some(release) => self.upgrade(release).await,
                None => Err("the upgrade reached execution without a checked release".into()),
            };
        }
        let executor = self.clone();
        tokio::task::spawn_blocking(move || match action {
            TaskAction::ApplyConfig(config) => executor.apply_config(&config),
            TaskAction::CollectDiagnostics => Ok(executor.diagnostics()),
            // The core rejects every other kind as unsupported before it reaches execution.
            other => Err(format!(
                "task kind {} is not supported by this Warden",
                other.kind()
            )),
        })
        .await
        .unwrap_or_else(|error| Err(format!("execution thread failed: {error}")))
    }

    /// Forces a certificate renewal and waits until the new certificate is installed or the
    /// attempt failed.
    async fn rotate_certificate(&self) -> ExecutionOutcome {
        let actor = self
            .certificates
            .as_ref()
            .ok_or("this Warden was started without certificate management")?;
        actor
            .send(ForceRenewal)
            .await
            .map_err(|error| format!("the certificate actor is not running: {error}"))?
    }

    /// Sends the request to the component's actor and waits until it is running (start,
    /// restart) or stopped (stop), or fails with the reason and the last output lines.
    pub async fn run_component(
        &self,
        component: Component,
        request: Request,
        config_version: Option<u64>,
    ) -> ExecutionOutcome {
        let name = component.as_str();
        let Some(actor) = self.components.get(name) else {
            return Err(format!(
                "component {name} is not defined on this node; add [components.{name}] to its bootstrap file"
            ));
        };
        actor
            .send(Command {
                request,
                config_version,
            })
            .await
            .map_err(|error| format!("component {name} supervisor is not running: {error}"))??;

        let (start_timeout, stop_timeout) = self
            .timeouts
            .get(name)
            .copied()
            .unwrap_or((Duration::from_secs(60), Duration::from_secs(30)));
        let wait = match request {
            Request::Stop => stop_timeout,
            Request::Start | Request::Restart => stop_timeout + start_timeout,
        } + COMPONENT_WAIT_MARGIN;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let snapshot = actor
                .send(GetSnapshot)
                .await
                .map_err(|error| format!("component {name} supervisor is not running: {error}"))?;
            let done = match (request, snapshot.phase) {
                (Request::Stop, ComponentPhase::Stopped) => Some(Ok(())),
                (Request::Stop, _) => None,
                (_, ComponentPhase::Running) => Some(Ok(())),
                (
                    _,
                    ComponentPhase::Failed | ComponentPhase::BackingOff | ComponentPhase::Stopped,
                ) => Some(Err(())),
                _ => None,
            };
            let timed_out = tokio::time::Instant::now() >= deadline;
            match done {
                Some(Ok(())) => {
                    let mut output = BTreeMap::from([
                        ("component".to_owned(), name.to_owned()),
                        ("phase".to_owned(), snapshot.phase.to_string()),
                    ]);
                    if let Some(pid) = snapshot.pid {
                        output.insert("pid".to_owned(), pid.to_string());
                    }
                    if let Some(version) = config_version {
                        output.insert("config_version".to_owned(), version.to_string());
                    }
                    return Ok(output);
                }
                Some(Err(())) => return Err(component_failure(name, &snapshot, None)),
                None if timed_out => return Err(component_failure(name, &snapshot, Some(wait))),
                None => tokio::time::sleep(COMPONENT_POLL_INTERVAL).await,
            }
        }
    }

    /// Downloads and verifies the release unless it is installed already, installs it beside
    /// the current one, makes it active and restarts the component with it. If the component
    /// does not pass its health check within its start timeout, the release that ran before
    /// becomes active again, the component returns to the phase it had, and the task fails.
    async fn upgrade(&self, release: &VerifiedRelease) -> ExecutionOutcome {
        let manifest = release.manifest();
        let component = manifest.component;
        let name = component.as_str();
        let undefined = || {
            format!(
                "component {name} is not defined on this node; add [components.{name}] to its bootstrap file"
            )
        };
        let io = self.releases.as_ref().ok_or_else(undefined)?;
        let installer = io.installers.get(&component).ok_or_else(undefined)?.clone();
        let target = Release {
            release_counter: manifest.release_counter,
            sha256: manifest.sha256.clone(),
        };
        let before = installer
            .releases()
            .map_err(|error| format!("cannot read the installed releases of {name}: {error}"))?;
        let was_running = match self.components.get(name) {
            Some(actor) => actor
                .send(GetSnapshot)
                .await
                .map(|snapshot| {
                    !matches!(
                        snapshot.phase,
                        ComponentPhase::Stopped | ComponentPhase::Failed
                    )
                })
                .map_err(|error| format!("component {name} supervisor is not running: {error}"))?,
            None => return Err(undefined()),
        };

        self.fetch_and_install(io, &installer, release, &target)
            .await?;
        installer
            .activate(&target)
            .await
            .map_err(|error| format!("release of {name} was not activated: {error}"))?;

        let started = self.run_component(component, Request::Restart, None).await;
        match started {
            Ok(mut output) => {
                if let Err(error) = installer.prune() {
                    tracing::warn!(component = %name, error = %error, "old releases were not deleted");
                }
                output.insert("version".to_owned(), manifest.version.clone());
                output.insert(
                    "release_counter".to_owned(),
                    manifest.release_counter.to_string(),
                );
                output.insert("sha256".to_owned(), hex::encode(&manifest.sha256));
                Ok(output)
            }
            Err(reason) => Err(self
                .roll_back(
                    component,
                    &installer,
                    &before,
                    was_running,
                    &manifest.version,
                    &reason,
                )
                .await),
        }
    }

    /// Carries out an upgrade of the Warden itself, one step per process. The running binary
    /// installs the release and hands over to the launcher. The new binary confirms once it
    /// has sent a heartbeat. After a failed trial, the previous binary fails the task with
    /// the reason.
    pub async fn self_upgrade(&self, task: &VerifiedTask) -> SelfUpgradeOutcome {
        match self.self_upgrade_step(task).await {
            Ok(outcome) => outcome,
            Err(reason) => SelfUpgradeOutcome::Finished(Err(reason)),
        }
    }

    async fn self_upgrade_step(&self, task: &VerifiedTask) -> Result<SelfUpgradeOutcome, String> {
        let release = task
            .release()
            .ok_or("the upgrade reached execution without a checked release")?;
        let manifest = release.manifest();
        let io = self
            .releases
            .as_ref()
            .ok_or("this Warden was started without release support")?;
        let installer = io
            .installers
            .get(&Component::Warden)
            .ok_or("this Warden has no installer for its own releases")?
            .clone();
        let upgrade = self
            .self_upgrade
            .as_ref()
            .ok_or("this Warden was started without self-upgrade support")?;
        let target = Release {
            release_counter: manifest.release_counter,
            sha256: manifest.sha256.clone(),
        };
        let target_binary = canonical(&installer.binary_path(&target));
        let own_binary = canonical(&upgrade.own_binary);
        let record = record_file::load(&upgrade.record_path)
            .map_err(|error| error.to_string())?
            .unwrap_or_else(|| ReleaseRecord::new(own_binary.clone()));
        let task_id = task.id().as_str();

        match agent_step(&record, task_id, &own_binary, &target_binary) {
            AgentStep::Install => {
                if !upgrade.under_launcher {
                    return Err(format!(
                        "this Warden runs without its launcher, so it cannot switch to release {} of itself; run it as `warden launch --bootstrap FILE`",
                        manifest.version
                    ));
                }
                self.fetch_and_install(io, &installer, release, &target)
                    .await?;
                // Resolved now that the file exists, to compare with the new agent's own path.
                let target_binary = canonical(&installer.binary_path(&target));
                let mut record = record;
                record.trial = Some(Trial {
                    task_id: task_id.to_owned(),
                    binary: target_binary.clone(),
                    version: manifest.version.clone(),
                    state: TrialState::Pending,
                });
                record_file::store(&upgrade.record_path, &record)
                    .map_err(|error| format!("the new release of the Warden was installed, but its trial was not recorded: {error}"))?;
                tracing::info!(task_id = %task_id, version = %manifest.version, binary = %target_binary.display(), "installed the new Warden binary; exiting so the launcher starts it");
                Ok(SelfUpgradeOutcome::Switch)
            }
            AgentStep::Confirm => {
                // Connected with its credentials already (the task came through the broker);
                // one published heartbeat shows the rest of the agent works too.
                while upgrade.heartbeats_sent.load(Ordering::SeqCst) == 0 {
                    tokio::time::sleep(COMPONENT_POLL_INTERVAL).await;
                }
                if let Some(TrialState::Running { deadline }) =
                    record.trial.as_ref().map(|trial| &trial.state)
                {
                    if io.clock.now().saturating_add(CONFIRM_MARGIN) >= *deadline {
                        // Too late to confirm safely: the launcher rolls back and stops this
                        // process, and the previous binary reports the task.
                        tracing::warn!(task_id = %task_id, "the new Warden binary became healthy too close to its deadline; waiting for the rollback");
                        std::future::pending::<()>().await;
                    }
                }
                // NOTE: the launcher reads the deadline on its own clock; if it passes between
                // this check and the confirmation below, the task can still be reported
                // succeeded for a binary the launcher then rolls back.
                installer.activate(&target).await.map_err(|error| {
                    format!("the new Warden binary runs, but its release was not recorded: {error}")
                })?;
                let mut record = record;
                if let Some(trial) = record.trial.as_mut() {
                    trial.state = TrialState::Confirmed;
                }
                record_file::store(&upgrade.record_path, &record)
                    .map_err(|error| format!("the new Warden binary runs, but its confirmation was not recorded: {error}"))?;
                if let Err(error) = installer.prune() {
                    tracing::warn!(component = "warden", error = %error, "old releases were not deleted");
                }
                tracing::info!(task_id = %task_id, version = %crate::version(), "the new Warden binary confirmed it is healthy");
                Ok(SelfUpgradeOutcome::Finished(Ok(self_upgrade_output(
                    release,
                    &target_binary,
                ))))
            }
            AgentStep::AlreadyActive => Ok(SelfUpgradeOutcome::Finished(Ok(self_upgrade_output(
                release,
                &target_binary,
            )))),
            AgentStep::RolledBack { reason } => {
                let mut record = record;
                record.trial = None;
                record_file::store(&upgrade.record_path, &record).map_err(|error| {
                    format!("rolled back: {reason}; clearing the trial failed: {error}")
                })?;
                Ok(SelfUpgradeOutcome::Finished(Err(format!(
                    "rolled back: {reason}; release {} of the Warden was not kept, and {} (version {}) runs again",
                    manifest.version,
                    own_binary.display(),
                    crate::version()
                ))))
            }
        }
    }

    /// Downloads, verifies and installs the release unless it is installed already with the
    /// right digest.
    async fn fetch_and_install(
        &self,
        io: &ReleaseIo,
        installer: &Installer,
        release: &VerifiedRelease,
        target: &Release,
    ) -> Result<(), String> {
        let name = release.manifest().component.as_str();
        if self.installed_intact(installer, target).await {
            return Ok(());
        }
        let requester = Requester {
            deployment: &io.deployment,
            node: &io.node,
            node_key: &io.node_key,
            clock: io.clock.as_ref(),
        };
        let staged = fetch_verified(io.bus.as_ref(), requester, release, &self.state_dir)
            .await
            .map_err(|error| format!("release of {name} was not installed: {error}"))?;
        let staged_path = staged.path().to_path_buf();
        let installing = installer.clone();
        let installing_release = target.clone();
        tokio::task::spawn_blocking(move || {
            let result = installing.install(&staged_path, &installing_release);
            // On success the file has moved; on failure nothing verified may stay behind.
            let _ = std::fs::remove_file(&staged_path);
            result
        })
        .await
        .map_err(|error| format!("installation thread failed: {error}"))?
        .map_err(|error| format!("release of {name} was not installed: {error}"))?;
        Ok(())
    }

    /// Returns to the releases recorded before a failed upgrade and to the phase the component
    /// had; returns the task's failure reason.
    async fn roll_back(
        &self,
        component: Component,
        installer: &Installer,
        before: &ActiveReleases,
        was_running: bool,
        version: &str,
        reason: &str,
    ) -> String {
        let name = component.as_str();
        let previous = before
            .active
            .as_ref()
            .map_or("the bootstrap binary".to_owned(), Release::directory_name);
        tracing::warn!(component = %name, version, reason, previous = %previous, "upgrade failed its health check; rolling back");
        if let Err(error) = installer.restore(before).await {
            return format!(
                "release {version} of {name} did not become healthy ({reason}), and rolling back to {previous} failed: {error}"
            );
        }
        let request = if was_running {
            Request::Restart
        } else {
            Request::Stop
        };
        match self.run_component(component, request, None).await {
            Ok(_) => format!(
                "release {version} of {name} did not become healthy, so it was rolled back to {previous}: {reason}"
            ),
            Err(error) => format!(
                "release {version} of {name} did not become healthy ({reason}); it was rolled back to {previous}, which did not return to its phase either: {error}"
            ),
        }
    }

    /// Tells whether the release is installed already with the right digest, as after an
    /// upgrade that was interrupted, or a return to the previous release.
    async fn installed_intact(&self, installer: &Installer, release: &Release) -> bool {
        let binary = installer.binary_path(release);
        let expected = release.sha256.clone();
        tokio::task::spawn_blocking(move || {
            // Neither the file nor its release directory may be a symbolic link: what runs must
            // live inside the releases directory.
            let real_file = std::fs::symlink_metadata(&binary)
                .is_ok_and(|metadata| metadata.file_type().is_file());
            let real_directory = binary.parent().is_some_and(|directory| {
                std::fs::symlink_metadata(directory)
                    .is_ok_and(|metadata| metadata.file_type().is_dir())
            });
            real_file
                && real_directory
                && sha256_file(&binary).is_ok_and(|actual| actual.as_slice() == expected.as_slice())
        })
        .await
        .unwrap_or(false)
    }

    fn apply_config(&self, config: &ApplyConfig) -> ExecutionOutcome {
        // A resumed task may find its own version already written; writing it again is harmless
        // but reporting it keeps the history clear.
        let on_disk = self
            .config_version_on_disk()
            .map_err(|error| error.to_string())?;
        if on_disk == config.version {
            return Ok(output_for(
                &self.config_path,
                config.version,
                "already applied",
            ));
        }
        let contents = format!("{VERSION_HEADER}{}\n{}", config.version, config.content);
        write_atomically(&self.config_path, contents.as_bytes())
            .map_err(|error| format!("failed to write {}: {error}", self.config_path.display()))?;
        Ok(output_for(&self.config_path, config.version, "written"))
    }

    fn diagnostics(&self) -> BTreeMap<String, String> {
        let mut facts = BTreeMap::new();
        let read = |path: &str| std::fs::read_to_string(path).map(|text| text.trim().to_owned());
        facts.insert(
            "hostname".into(),
            nix::unistd::gethostname()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_else(|error| format!("unavailable: {error}")),
        );
        facts.insert("os".into(), os_name().unwrap_or_else(|| "unknown".into()));
        let kernel = read("/proc/sys/kernel/osrelease")
            .unwrap_or_else(|error| format!("unavailable: {error}"));
        let io_uring = match check_kernel_for_iggy(&kernel) {
            Ok(()) => "supported".to_owned(),
            Err(reason) => format!("unsupported: {reason}"),
        };
        facts.insert("kernel".into(), kernel);
        facts.insert("iggy_io_uring".into(), io_uring);
        facts.insert("warden_version".into(), crate::version());
        facts.insert(
            "warden_uptime_secs".into(),
            self.started.elapsed().as_secs().to_string(),
        );
        if let Ok(uptime) = read("/proc/uptime") {
            let seconds = uptime.split_whitespace().next().unwrap_or_default();
            let whole = seconds.split('.').next().unwrap_or_default();
            facts.insert("system_uptime_secs".into(), whole.to_owned());
        }
        match nix::sys::statvfs::statvfs(&self.state_dir) {
            Ok(stats) => {
                let free = stats
                    .blocks_available()
                    .saturating_mul(stats.fragment_size());
                facts.insert("state_dir_free_bytes".into(), free.to_string());
            }
            Err(error) => {
                facts.insert(
                    "state_dir_free_bytes".into(),
                    format!("unavailable: {error}"),
                );
            }
        }
        facts.insert("state_dir".into(), self.state_dir.display().to_string());
        facts
    }
}

/// Builds the output of a successful self-upgrade.
fn self_upgrade_output(release: &VerifiedRelease, binary: &Path) -> BTreeMap<String, String> {
    let manifest = release.manifest();
    BTreeMap::from([
        ("version".to_owned(), manifest.version.clone()),
        (
            "release_counter".to_owned(),
            manifest.release_counter.to_string(),
        ),
        ("sha256".to_owned(), hex::encode(&manifest.sha256)),
        ("binary".to_owned(), binary.display().to_string()),
        ("warden_version".to_owned(), crate::version()),
    ])
}

/// Resolves symbolic links in `path`, returning it unchanged when that fails.
fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

fn component_failure(name: &str, snapshot: &Snapshot, waited: Option<Duration>) -> String {
    let mut reason = match waited {
        Some(wait) => format!(
            "component {name} is still {} after {} s: {}",
            snapshot.phase,
            wait.as_secs(),
            snapshot.detail
        ),
        None => format!(
            "component {name} is {}: {}",
            snapshot.phase, snapshot.detail
        ),
    };
    if !snapshot.tail.is_empty() {
        reason.push_str("; last output:\n");
        reason.push_str(&snapshot.tail.join("\n"));
    }
    reason
}

fn output_for(path: &Path, version: u64, action: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("config_path".to_owned(), path.display().to_string()),
        ("config_version".to_owned(), version.to_string()),
        ("result".to_owned(), action.to_owned()),
    ])
}

fn os_name() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    let line = text.lines().find(|line| line.starts_with("PRETTY_NAME="))?;
    Some(
        line.trim_start_matches("PRETTY_NAME=")
            .trim_matches('"')
            .to_owned(),
    )
}

/// Reads the version header of a configuration file written by [`Executor`].
pub fn read_config_version(path: &Path) -> Result<u64, ConfigVersionError> {
    let error = |reason: String| ConfigVersionError {
        path: path.to_path_buf(),
        reason,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(io) if io.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(io) => return Err(error(io.to_string())),
    };
    let Some(rest) = text
        .lines()
        .next()
        .and_then(|line| line.strip_prefix(VERSION_HEADER))
    else {
        tracing::warn!(path = %path.display(), "configuration file has no Warden version header; treating it as version 0");
        return Ok(0);
    };
    rest.trim()
        .parse()
        .map_err(|parse| error(format!("version {rest:?} is not a number: {parse}")))
}

/// Replaces `path` with `contents` so that readers see the old file or the new one, never a
/// mix: write a temporary file in the same directory, fsync it, rename it over the target and
/// fsync the directory so the rename itself survives a crash.
pub fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    write_atomically_with_mode(path, contents, 0o666)
}

/// Like [`write_atomically`], but the file is readable by its owner only from the moment it
/// exists, so a secret is never on disk with wider permissions.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    write_atomically_with_mode(path, contents, 0o600)
}

/// Writes through a temporary file created with `mode` (less the umask).
fn write_atomically_with_mode(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let directory = path
        .parent()
        .ok_or_else(|| std::io::Error::other("path has no parent directory"))?;
    std::fs::create_dir_all(directory)?;
    let file_name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("path has no file name"))?;
    let temporary = directory.join(format!(
        ".{}.tmp-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    // A file or link left at the temporary path, by a crash or by someone else, is removed
    // rather than written through: the new file is created fresh with `mode`, and never
    // through a symbolic link.
    match std::fs::remove_file(&temporary) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .mode(mode)
            .open(&temporary)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)?;
        std::fs::File::open(directory)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_header_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("iggy/server.toml");
        assert_eq!(read_config_version(&path).unwrap(), 0);
        write_atomically(&path, format!("{VERSION_HEADER}7\n[system]\n").as_bytes()).unwrap();
        assert_eq!(read_config_version(&path).unwrap(), 7);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("iggy"))
            .unwrap()
            .collect();
        assert_eq!(leftovers.len(), 1, "the temporary file must be gone");
    }

    #[test]
    fn file_without_header_is_version_zero() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.toml");
        std::fs::write(&path, "[system]\n").unwrap();
        assert_eq!(read_config_version(&path).unwrap(), 0);
    }

    #[test]
    fn garbage_version_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.toml");
        std::fs::write(&path, format!("{VERSION_HEADER}seven\n")).unwrap();
        let error = read_config_version(&path).unwrap_err().to_string();
        assert!(error.contains("\"seven\""), "{error}");
    }
}
