//! The component actor over a test node directory, and helpers to drive it with the
//! workspace's `fake-component` binary.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use warden::actors::components::{
    Command, ComponentActor, ComponentParts, GetSnapshot, Request, Snapshot, StatusBoard,
    KERNEL_RELEASE_FILE,
};
use warden::components::definition::{ComponentDefinition, ComponentFile};
use warden::components::installer::Installer;
use warden::components::process::process_start_ticks;
use warden::components::state::ComponentState;
use warden::tls::TlsFiles;
use warden_bus::messages::{Component, ComponentPhase};
use warden_bus::transport::memory::MemoryBus;
use warden_bus::{DeploymentId, NodeId, SigningKey};
use warden_testkit::workspace_binary_for_others;

/// A node directory that stands for the Warden's state directory, with a sled database, a
/// memory bus and a node key.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub db: sled::Db,
    pub bus: Arc<MemoryBus>,
    pub key: SigningKey,
}

impl Node {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path().join("db")).unwrap();
        let clock = warden_actors::clock::system();
        Self {
            dir,
            db,
            bus: Arc::new(MemoryBus::new(clock)),
            key: SigningKey::generate(&mut rand::rngs::OsRng),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Opens the persisted supervision state of `component`.
    pub fn state(&self, component: Component) -> ComponentState {
        ComponentState::open(component, &self.db).unwrap()
    }

    /// Returns a definition of `component` that runs `binary` with `args`, after `edit` changed
    /// its table.
    pub fn definition(
        &self,
        component: Component,
        binary: &Path,
        args: Vec<String>,
        edit: impl FnOnce(&mut ComponentFile),
    ) -> ComponentDefinition {
        let mut file = ComponentFile {
            binary: binary.to_path_buf(),
            args,
            data_dir: self.path("data"),
            config_path: Some(self.path("config.toml")),
            stop_timeout_secs: Some(5),
            start_timeout_secs: Some(10),
            ..ComponentFile::default()
        };
        edit(&mut file);
        file.validate(component, &self.path("unused.toml")).unwrap()
    }

    pub fn start(&self, definition: ComponentDefinition) -> Addr<ComponentActor> {
        self.start_with_kernel(definition, Path::new(KERNEL_RELEASE_FILE))
    }

    pub fn start_with_kernel(
        &self,
        definition: ComponentDefinition,
        kernel_release_file: &Path,
    ) -> Addr<ComponentActor> {
        let component = definition.component;
        ComponentActor::new(ComponentParts {
            definition,
            state: ComponentState::open(component, &self.db).unwrap(),
            installer: Installer::new(component, self.dir.path(), &self.db).unwrap(),
            board: StatusBoard::default(),
            clock: warden_actors::clock::system(),
            bus: self.bus.clone(),
            deployment: DeploymentId::new("prod").unwrap(),
            node: NodeId::new("n1").unwrap(),
            node_key: self.key.clone(),
            kernel_release_file: kernel_release_file.to_path_buf(),
            tls_files: TlsFiles::new(self.dir.path()),
        })
        .start()
    }
}

/// Kills whatever process a failed test left behind.
impl Drop for Node {
    fn drop(&mut self) {
        for component in [Component::Iggy, Component::Connectors] {
            let state = ComponentState::open(component, &self.db).unwrap();
            if let Ok(Some(record)) = state.process() {
                let _ = warden::components::process::signal_group(
                    record.pid,
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Returns the path of the fake component, at a place that `nobody` can run too.
pub fn fake() -> PathBuf {
    workspace_binary_for_others("fake-component")
}

pub fn healthy_args(port: u16) -> Vec<String> {
    vec!["--http".into(), format!("127.0.0.1:{port}")]
}

pub fn http_health(port: u16) -> impl FnOnce(&mut ComponentFile) {
    move |file| {
        file.http_address = Some(format!("127.0.0.1:{port}"));
        file.health_http_path = Some("/healthz".into());
    }
}

pub async fn command(actor: &Addr<ComponentActor>, request: Request) {
    actor
        .send(Command {
            request,
            config_version: None,
        })
        .await
        .unwrap()
        .unwrap();
}

pub async fn snapshot(actor: &Addr<ComponentActor>) -> Snapshot {
    actor.send(GetSnapshot).await.unwrap()
}

pub async fn wait_phase(
    actor: &Addr<ComponentActor>,
    phase: ComponentPhase,
    within: Duration,
) -> Snapshot {
    let deadline = Instant::now() + within;
    loop {
        let snapshot = snapshot(actor).await;
        if snapshot.phase == phase {
            return snapshot;
        }
        assert!(
            Instant::now() < deadline,
            "component did not become {phase} within {within:?}; last: {snapshot:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Tells whether `pid` is a live process (not a zombie).
pub fn alive(pid: u32) -> bool {
    process_start_ticks(pid).is_some()
}

/// Waits until `path` contains a process id and returns it.
pub async fn read_pid_file(path: &Path) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(pid) = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| text.trim().parse().ok())
        {
            return pid;
        }
        assert!(Instant::now() < deadline, "no pid in {}", path.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn wait_gone(pid: u32, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        assert!(
            Instant::now() < deadline,
            "{what} (pid {pid}) is still running"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A process the test started itself, killed if the test fails before the Warden stops it.
pub struct Orphan(pub std::process::Child);

impl Drop for Orphan {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until the environment of `pid` shows `name=value`. A process's environment is readable
/// only once its program is loaded, a moment after spawn returns.
pub fn wait_environ(pid: u32, name: &str, value: &str) {
    let needle = format!("{name}={value}");
    warden_testkit::wait_until("the process environment", Duration::from_secs(5), || {
        std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
            environ
                .split(|byte| *byte == 0)
                .any(|entry| entry == needle.as_bytes())
        })
    });
}

/// Fails the test unless it runs as root, which running a component as another user needs.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "running a component as another user needs root; run the tests as root (.ci/run does)"
    );
}
