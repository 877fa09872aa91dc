//! The Warden's actor tree: a supervisor over the task pipeline and the heartbeat.
//!
//! ```text
//! Supervisor "warden"
//! ├── tasks: PullBridge (own durable consumer) → TaskRunner (WardenCore, sled, executor)
//! └── heartbeat: Heartbeater (HeartbeatSchedule)
//!
//! ComponentActor per [components.*] table (ComponentSupervisor), outside the supervisor
//! CertificateActor (CertificateCore, the TLS files and listener), outside the supervisor
//! AccessActor (AccessCore, the nftables table), outside the supervisor, if [access] is set
//! ```

pub mod access;
pub mod certificates;
pub mod components;
pub mod heartbeat;
pub mod renewal;
pub mod tasks;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use warden_actors::bridge::{PullBridge, PullSettings};
use warden_actors::clock::SharedClock;
use warden_actors::{entropy, BackoffConfig, Supervisor};
use warden_bus::messages::Component;
use warden_bus::subject::{task_consumer, TASK_STREAM};
use warden_bus::{Bus, SigningKey, Subject, TelemetryKind};

use crate::bootstrap::Bootstrap;
use crate::components::installer::Installer;
use crate::components::state::ComponentState;
use crate::core::heartbeat::HeartbeatSchedule;
use crate::core::verify::{Identity, Limits};
use crate::executor::{Executor, ReleaseIo, SelfUpgradeIo};
use crate::store::TaskStore;
use crate::tls::{CertificateSlot, TlsFiles};

use self::certificates::{CertificateActor, CertificateBoard, CertificateParts};
use self::components::{ComponentActor, ComponentParts, StatusBoard};
use self::heartbeat::{HeartbeatParts, Heartbeater};
use self::tasks::{PulledTask, RunnerParts, TaskRunner};

/// Restart back-off of the Warden's child actors.
pub const RESTART_BACKOFF_BASE: Duration = Duration::from_millis(200);
/// Maximum restart back-off.
pub const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long one pull request waits for a task.
pub const PULL_WAIT: Duration = Duration::from_secs(5);

/// What the actor tree is built from.
pub struct WardenParts {
    /// Validated bootstrap.
    pub bootstrap: Bootstrap,
    /// The broker connection.
    pub bus: Arc<dyn Bus>,
    /// Execution records.
    pub store: TaskStore,
    /// Wall clock.
    pub clock: SharedClock,
    /// Test-only crash point, honoured in debug builds.
    pub failpoint: Option<String>,
    /// The node's own key.
    pub node_key: SigningKey,
    /// Renewal of the broker credentials, when the node runs against a secured broker.
    pub renewal: Option<self::renewal::RenewalParts>,
    /// Whether a launcher (`warden launch`) started this process, which self-upgrade needs.
    pub under_launcher: bool,
    /// The access rules, already applied, if the node manages them.
    pub access: Option<self::access::AccessParts>,
}

/// Starts the supervised actor tree. Must be called inside an actix system.
pub fn start(parts: WardenParts) -> Addr<Supervisor> {
    let bootstrap = parts.bootstrap;
    let config_version = Arc::new(AtomicU64::new(0));

    // Component actors run outside the restarting supervisor: they own child processes, and
    // a restart of theirs would orphan them.
    let board = StatusBoard::default();
    let mut handles = BTreeMap::new();
    let mut timeouts = BTreeMap::new();
    let mut installers = BTreeMap::new();
    let tls_files = TlsFiles::new(&bootstrap.state_dir);
    let mut restart_on_install = Vec::new();
    for definition in &bootstrap.components {
        let component = definition.component;
        let opened = Installer::new(component, &bootstrap.state_dir, parts.store.db())
            .map_err(|error| error.to_string())
            .and_then(|installer| {
                ComponentState::open(component, parts.store.db())
                    .map(|state| (installer, state))
                    .map_err(|error| error.to_string())
            });
        let (installer, state) = match opened {
            Ok(opened) => opened,
            Err(reason) => {
                tracing::error!(component = %component, reason = %reason, "cannot open the component state; not supervising it");
                continue;
            }
        };
        installers.insert(component, installer.clone());
        let actor = ComponentActor::new(ComponentParts {
            definition: definition.clone(),
            state,
            installer,
            board: board.clone(),
            clock: parts.clock.clone(),
            bus: parts.bus.clone(),
            deployment: bootstrap.deployment.clone(),
            node: bootstrap.node.clone(),
            node_key: parts.node_key.clone(),
            kernel_release_file: self::components::KERNEL_RELEASE_FILE.into(),
            tls_files: tls_files.clone(),
        })
        .start();
        if definition
            .tls
            .as_ref()
            .is_some_and(|(certificate, _)| *certificate == tls_files.certificate)
        {
            restart_on_install.push((component.as_str(), actor.clone()));
        }
        handles.insert(component.as_str(), actor);
        timeouts.insert(
            component.as_str(),
            (
                definition.policy.start_timeout,
                definition.policy.stop_timeout,
            ),
        );
    }

    // The Warden's own releases: no component actor, but an installer, so the release check
    // sees its installed counter and an upgrade can install beside the running binary.
    match Installer::new(Component::Warden, &bootstrap.state_dir, parts.store.db()) {
        Ok(installer) => {
            installers.insert(Component::Warden, installer);
        }
        Err(error) => {
            tracing::error!(component = "warden", error = %error, "cannot open the Warden's release record; it cannot upgrade itself");
        }
    }
    // The certificate actor also runs outside the supervisor: the executor keeps its address
    // for rotate_certificate tasks, and its listener must not stop on an unrelated restart.
    let certificate_board = CertificateBoard::default();
    let certificate_actor = CertificateActor::new(CertificateParts {
        bus: parts.bus.clone(),
        node_key: parts.node_key.clone(),
        deployment: bootstrap.deployment.clone(),
        node: bootstrap.node.clone(),
        names: bootstrap.tls_names.clone(),
        store: parts.store.clone(),
        files: tls_files,
        slot: Arc::new(CertificateSlot::default()),
        listen: bootstrap.tls_listen,
        restart_on_install,
        board: certificate_board.clone(),
        clock: parts.clock.clone(),
    })
    .start();

    let access_managed = parts.access.is_some();
    let access_version = parts.access.as_ref().map(|access| access.version.clone());
    let access_actor = parts
        .access
        .map(|access| self::access::AccessActor::new(access).start());

    let heartbeats_sent = Arc::new(AtomicU64::new(0));
    let own_binary = std::env::current_exe().unwrap_or_else(|error| {
        tracing::warn!(error = %error, "cannot find this process's binary; self-upgrade compares against an empty path");
        std::path::PathBuf::new()
    });
    let self_upgrade = SelfUpgradeIo {
        record_path: crate::self_upgrade::record_path(&bootstrap.state_dir),
        own_binary,
        under_launcher: parts.under_launcher,
        heartbeats_sent: heartbeats_sent.clone(),
    };

    let runner_parts = RunnerParts {
        identity: Identity {
            deployment: bootstrap.deployment.clone(),
            node: bootstrap.node.clone(),
            approval_key: bootstrap.approval_key.clone(),
        },
        limits: Limits {
            clock_skew: bootstrap.clock_skew,
            validity_max: bootstrap.task_validity_max,
        },
        store: parts.store,
        executor: Executor::new(
            bootstrap.iggy_config_path.clone(),
            bootstrap.state_dir.clone(),
        )
        .with_components(Arc::new(handles), timeouts)
        .with_releases(ReleaseIo {
            bus: parts.bus.clone(),
            deployment: bootstrap.deployment.clone(),
            node: bootstrap.node.clone(),
            node_key: parts.node_key.clone(),
            clock: parts.clock.clone(),
            installers,
        })
        .with_self_upgrade(self_upgrade)
        .with_certificates(certificate_actor.recipient())
        .with_access(access_actor.map(Addr::recipient)),
        bus: parts.bus.clone(),
        clock: parts.clock.clone(),
        config_version: config_version.clone(),
        failpoint: parts.failpoint,
        node_key: parts.node_key.clone(),
        access_managed,
    };
    let pull_settings = PullSettings {
        stream: TASK_STREAM.to_owned(),
        consumer: task_consumer(&bootstrap.deployment, &bootstrap.node),
        batch: 1,
        wait: PULL_WAIT,
    };
    let heartbeat_subject = Subject::telemetry(
        &bootstrap.deployment,
        &bootstrap.node,
        TelemetryKind::Heartbeat,
    );
    let schedule = HeartbeatSchedule::new(
        bootstrap.deployment.clone(),
        bootstrap.node.clone(),
        bootstrap.heartbeat_interval,
        crate::version(),
    );
    let backoff = BackoffConfig::new(RESTART_BACKOFF_BASE, RESTART_BACKOFF_MAX)
        .unwrap_or_else(|_| unreachable!("the constants satisfy base > 0 and max >= base"));

    let bus = parts.bus;
    let clock = parts.clock;
    let node_key = parts.node_key;
    let renewal = parts.renewal;
    let tasks_bus = bus.clone();
    Supervisor::new("warden", backoff, entropy::from_os())
        .child("tasks", move |mut guard| {
            let runner = match TaskRunner::load(runner_parts.clone()) {
                Ok(runner) => runner.start(),
                Err(reason) => {
                    guard.fail(format!("loading the task state failed: {reason}"));
                    return;
                }
            };
            PullBridge::<PulledTask>::new(
                tasks_bus.clone(),
                pull_settings.clone(),
                runner.recipient(),
                guard,
            )
            .start();
        })
        .child("heartbeat", move |guard| {
            let parts = HeartbeatParts {
                bus: bus.clone(),
                schedule: schedule.clone(),
                subject: heartbeat_subject.clone(),
                clock: clock.clone(),
                rng: entropy::from_os(),
                config_version: config_version.clone(),
                node_key: node_key.clone(),
                components: board.clone(),
                certificate: certificate_board.clone(),
                access_version: access_version.clone(),
                sent: heartbeats_sent.clone(),
            };
            Heartbeater::new(parts, guard).start();
        })
        .child("credentials", move |mut guard| {
            let Some(parts) = renewal.clone() else {
                // Without a secured broker there is nothing to renew.
                guard.disarm();
                return;
            };
            match self::renewal::Renewer::load(parts, guard) {
                Ok(renewer) => {
                    renewer.start();
                }
                Err(reason) => tracing::error!(reason = %reason, "cannot renew node credentials"),
            }
        })
        .start()
}
