//! A local cluster for end-to-end tests: a real nats-server, the control-plane binary and Warden
//! binaries as separate processes, each test with its own ports and directories.

#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

pub mod access;
pub mod probe;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use warden_bus::transport::nats::NatsBus;
use warden_bus::transport::nats::NatsConnectConfig;
use warden_bus::{
    Bus, DeploymentId, Envelope, MessageId, NodeId, SigningKey, Subject, Task, TaskAction, TaskId,
    UnixMillis,
};
use warden_control_plane::broker::{self, Broker, Listen};
use warden_control_plane::core::issue::ActionRequest;
use warden_control_plane::core::lifecycle::TaskRecord;
use warden_control_plane::ctl::{offline, Client};
use warden_control_plane::store::Store;
use warden_control_plane::views::{
    AddNode, AddedNode, CreateDeployment, DeploymentView, IssueTasks, IssuedTasks, NodeView,
    TaskView,
};
use warden_testkit::{free_port, wait_until, workspace_binary, NatsServer, Process};

pub const DEPLOYMENT: &str = "test";
pub const CONFIG: &str = "[system]\npath = \"local_data\"\n";

pub struct Cluster {
    pub nats: NatsServer,
    pub dir: tempfile::TempDir,
    pub api: String,
    pub api_key: String,
    control_plane: Option<Process>,
    control_plane_runs: u32,
    wardens: BTreeMap<String, Process>,
    warden_runs: BTreeMap<String, u32>,
    runtime: tokio::runtime::Runtime,
    bus: NatsBus,
    control_plane_args: Vec<String>,
}

impl Cluster {
    /// Starts nats-server and the control plane, and creates the test deployment.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Like [`Cluster::start`], with extra control-plane arguments.
    pub fn start_with(control_plane_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let broker_dir = dir.path().join("broker");

        // The broker runs in operator mode with TLS, from a set-up like `wardenctl broker init`.
        let nats = NatsServer::start_with_config(|setup| {
            let listen = Listen {
                hosts: vec!["127.0.0.1".into(), "localhost".into()],
                client_port: setup.client_port,
                websocket_port: setup.websocket_port,
            };
            // A fixed reservation, so the tests do not depend on the free disk space.
            let storage = broker::Storage {
                file_bytes: 1 << 30,
                ..Default::default()
            };
            broker::init(
                &broker_dir,
                &listen,
                &storage,
                now_secs(),
                &mut rand::rngs::OsRng,
            )
            .unwrap();
            std::fs::read_to_string(broker_dir.join(broker::SERVER_CONFIG)).unwrap()
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        // The test's own connection has the control plane's permissions, to play an attacker
        // who has them.
        let broker = Broker::load(&broker_dir).unwrap();
        let user = broker
            .mint_control_plane(now_secs(), &mut rand::rngs::OsRng)
            .unwrap();
        let config = NatsConnectConfig::new(vec![nats.tls_url()], "e2e-test")
            .with_credentials(user.credentials().unwrap())
            .with_ca_file(broker.ca_file());
        let bus = runtime.block_on(NatsBus::connect_with(&config)).unwrap();
        let api = format!("http://127.0.0.1:{}", free_port());

        offline_setup(dir.path());
        let mut cluster = Self {
            nats,
            dir,
            api,
            api_key: String::new(),
            control_plane: None,
            control_plane_runs: 0,
            wardens: BTreeMap::new(),
            warden_runs: BTreeMap::new(),
            runtime,
            bus,
            control_plane_args: control_plane_args
                .iter()
                .map(|arg| (*arg).to_owned())
                .collect(),
        };
        cluster.start_control_plane(&[]);
        let _: DeploymentView = cluster
            .client()
            .post(
                "/v1/deployments",
                &CreateDeployment {
                    id: DEPLOYMENT.into(),
                    description: String::new(),
                    approval_key: None,
                },
            )
            .unwrap();
        cluster
    }

    /// The broker's TLS URL, which the control plane advertises to nodes.
    pub fn nats_url(&self) -> String {
        self.nats.tls_url()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn client(&self) -> Client {
        Client::new(&self.api, Some(self.api_key.clone())).unwrap()
    }

    /// Builds the command of a control-plane replica of this cluster with its API on `port` and
    /// the extra arguments `args`.
    fn replica_command<S: AsRef<std::ffi::OsStr>>(
        &self,
        port: &str,
        artifact_cache: &std::path::Path,
        args: &[S],
    ) -> Command {
        let mut command = Command::new(workspace_binary("control-plane"));
        command
            .args([
                "--nats-url",
                &self.nats_url(),
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .arg("--broker-dir")
            .arg(self.path("broker"))
            .arg("--task-key")
            .arg(self.path("task.key"))
            .arg("--trust-document")
            .arg(self.path("trust.b64"))
            .arg("--secrets-key")
            .arg(self.path("secrets.key"))
            .arg("--admin-key-out")
            .arg(self.path("admin-key"))
            .args([
                "--unreachable-after-secs",
                "3",
                "--sweep-interval-ms",
                "200",
                "--task-ack-wait-secs",
                "2",
            ])
            .args(args)
            .env("RUST_LOG", "info");
        // Each replica has its own artifact cache unless the test chose one.
        if !args
            .iter()
            .any(|arg| arg.as_ref() == "--artifact-cache-dir")
        {
            command.arg("--artifact-cache-dir").arg(artifact_cache);
        }
        command
    }

    /// Starts another control-plane replica beside the cluster's own, with its API on a free
    /// port, its own artifact cache and the extra arguments `args` instead of the cluster's,
    /// and waits until its API responds. Returns the process and the API's base URL.
    pub fn start_replica(&self, name: &str, args: &[&str]) -> (Process, String) {
        let port = free_port().to_string();
        let command =
            self.replica_command(&port, &self.path(&format!("{name}-artifact-cache")), args);
        let mut process = Process::spawn(name, command, &self.path(&format!("{name}.log")));
        let api = format!("http://127.0.0.1:{port}");
        let client = Client::new(&api, Some(self.api_key.clone())).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while client
            .get::<Vec<DeploymentView>>("/v1/deployments")
            .is_err()
        {
            let running = process.is_running();
            assert!(
                running && std::time::Instant::now() < deadline,
                "replica {name} did not answer within 20 s (process running: {running}); its log:\n{}",
                process.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        (process, api)
    }

    /// Starts (or restarts) the control plane with optional environment variables.
    pub fn start_control_plane(&mut self, env: &[(&str, &str)]) {
        self.control_plane_runs += 1;
        let port = self.api.rsplit(':').next().unwrap().to_owned();
        let mut command = self.replica_command(
            &port,
            &self.path("artifact-cache"),
            &self.control_plane_args,
        );
        for (name, value) in env {
            command.env(name, value);
        }
        let log = self.path(&format!("control-plane-{}.log", self.control_plane_runs));
        self.control_plane = Some(Process::spawn("control-plane", command, &log));
        // The control plane creates the file before it writes the key, so wait for content.
        let key_path = self.path("admin-key");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let key = std::fs::read_to_string(&key_path).unwrap_or_default();
            if !key.trim().is_empty() {
                self.api_key = key.trim().to_owned();
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the control plane wrote no admin API key within 20 s; its log:\n{}",
                self.control_plane_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let client = self.client();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while client
            .get::<Vec<DeploymentView>>("/v1/deployments")
            .is_err()
        {
            let running = self.control_plane().is_running();
            assert!(
                running && std::time::Instant::now() < deadline,
                "the control plane API did not answer within 20 s (process running: {running}); its log:\n{}",
                self.control_plane_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill_control_plane(&mut self) {
        if let Some(mut process) = self.control_plane.take() {
            process.kill();
        }
    }

    pub fn control_plane(&mut self) -> &mut Process {
        self.control_plane.as_mut().expect("control plane started")
    }

    pub fn control_plane_log(&self) -> String {
        (1..=self.control_plane_runs)
            .map(|run| {
                std::fs::read_to_string(self.path(&format!("control-plane-{run}.log")))
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Registers a node and returns its bootstrap file path.
    pub fn add_node(&self, node: &str) -> PathBuf {
        self.add_node_with(node, |_| {})
    }

    /// Registers a node, lets `edit` change its bootstrap file, and returns the file's path.
    pub fn add_node_with(
        &self,
        node: &str,
        edit: impl FnOnce(&mut warden::bootstrap::BootstrapFile),
    ) -> PathBuf {
        let body = AddNode {
            id: node.into(),
            state_dir: self.path(node).to_string_lossy().into_owned(),
            heartbeat_interval_secs: Some(1),
            tls_names: vec!["localhost".into(), "127.0.0.1".into()],
        };
        let added: AddedNode = self
            .client()
            .post(&format!("/v1/deployments/{DEPLOYMENT}/nodes"), &body)
            .unwrap();
        let path = self.path(&format!("{node}.toml"));
        let mut bootstrap = added.bootstrap;
        edit(&mut bootstrap);
        std::fs::write(&path, toml::to_string(&bootstrap).unwrap()).unwrap();
        path
    }

    /// Starts (or restarts) a node's Warden with optional environment variables.
    pub fn start_warden(&mut self, node: &str, env: &[(&str, &str)]) {
        self.spawn_warden(node, &[], env);
    }

    /// Starts a node's Warden under its launcher (`warden launch`), as a service manager would.
    pub fn start_warden_launcher(&mut self, node: &str) {
        self.spawn_warden(node, &["launch"], &[]);
    }

    fn spawn_warden(&mut self, node: &str, args: &[&str], env: &[(&str, &str)]) {
        let run = self.warden_runs.entry(node.to_owned()).or_insert(0);
        *run += 1;
        let log = self.dir.path().join(format!("{node}-{run}.log"));
        let mut command = Command::new(workspace_binary("warden"));
        command
            .args(args)
            .arg("--bootstrap")
            .arg(self.path(&format!("{node}.toml")))
            .env("RUST_LOG", "info");
        for (name, value) in env {
            command.env(name, value);
        }
        self.wardens
            .insert(node.to_owned(), Process::spawn(node, command, &log));
    }

    pub fn warden(&mut self, node: &str) -> &mut Process {
        self.wardens.get_mut(node).expect("warden started")
    }

    pub fn kill_warden(&mut self, node: &str) {
        if let Some(mut process) = self.wardens.remove(node) {
            process.kill();
        }
    }

    /// Every log of a node's Warden runs, concatenated.
    pub fn warden_log(&self, node: &str) -> String {
        let runs = self.warden_runs.get(node).copied().unwrap_or(0);
        (1..=runs)
            .map(|run| {
                std::fs::read_to_string(self.path(&format!("{node}-{run}.log"))).unwrap_or_default()
            })
            .collect()
    }

    pub fn issue(&self, node: Option<&str>, action: ActionRequest) -> Vec<TaskView> {
        let body = IssueTasks {
            node: node.map(str::to_owned),
            all_nodes: node.is_none(),
            ttl_secs: None,
            action,
        };
        let issued: IssuedTasks = self
            .client()
            .post(&format!("/v1/deployments/{DEPLOYMENT}/tasks"), &body)
            .unwrap();
        issued.tasks
    }

    pub fn apply_config(&self, node: Option<&str>, version: u64) -> Vec<TaskView> {
        self.issue(
            node,
            ActionRequest::ApplyConfig {
                version,
                content: CONFIG.into(),
            },
        )
    }

    pub fn task(&self, id: &str) -> TaskView {
        self.client().get(&format!("/v1/tasks/{id}")).unwrap()
    }

    pub fn nodes(&self) -> Vec<NodeView> {
        self.client()
            .get(&format!("/v1/deployments/{DEPLOYMENT}/nodes"))
            .unwrap()
    }

    /// Sends a request with the control plane's broker permissions, receiving the reply under
    /// `inbox_prefix`: a stand-in for a node whose broker access survived, to test the control
    /// plane's own checks.
    pub fn request_with_inbox(
        &self,
        inbox_prefix: &str,
        subject: &Subject,
        payload: Vec<u8>,
    ) -> Vec<u8> {
        let broker = Broker::load(&self.path("broker")).unwrap();
        let user = broker
            .mint_control_plane(now_secs(), &mut rand::rngs::OsRng)
            .unwrap();
        let config = NatsConnectConfig::new(vec![self.nats.tls_url()], "e2e-test-inbox")
            .with_credentials(user.credentials().unwrap())
            .with_ca_file(broker.ca_file())
            .with_inbox_prefix(inbox_prefix.to_owned());
        self.runtime.block_on(async {
            let bus = NatsBus::connect_with(&config).await.unwrap();
            bus.request(subject, payload.into(), Duration::from_secs(10))
                .await
                .unwrap()
                .to_vec()
        })
    }

    /// Lets the registered node's real Warden enroll, stops that Warden, and connects to the
    /// broker on `runtime` with the node's credentials. Returns the connection and the node
    /// key, so a test can send hand-made requests as the node.
    pub fn enroll_and_connect(
        &mut self,
        node: &str,
        runtime: &tokio::runtime::Runtime,
    ) -> (NatsBus, SigningKey) {
        self.start_warden(node, &[]);
        let state_dir = self.path(node);
        wait_until(
            &format!("{node} to enroll"),
            Duration::from_secs(20),
            || {
                warden::credentials::load(&state_dir)
                    .ok()
                    .flatten()
                    .is_some()
            },
        );
        self.kill_warden(node);
        let (key, generated) =
            warden::identity::load_or_create(&state_dir, &mut rand::rngs::OsRng).unwrap();
        assert!(!generated, "the node key must be the enrolled one");
        let credential = warden::credentials::load(&state_dir).unwrap().unwrap();
        let bus = runtime
            .block_on(warden::credentials::connect_node(
                &self.nats_url(),
                &state_dir.join(warden::credentials::CA_FILE),
                &credential,
                &key,
                &DeploymentId::new(DEPLOYMENT).unwrap(),
                &NodeId::new(node).unwrap(),
            ))
            .unwrap();
        (bus, key)
    }

    /// Number of tasks of `kind` the control plane recorded.
    pub fn tasks_of_kind(&self, kind: &str) -> usize {
        self.client()
            .get::<Vec<TaskView>>("/v1/tasks")
            .unwrap()
            .iter()
            .filter(|task| task.kind == kind)
            .count()
    }

    /// Reads a key-value entry directly from the broker, as someone with the control plane's
    /// broker permissions could.
    pub fn kv_get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        self.runtime
            .block_on(self.bus.kv_get(bucket, key))
            .unwrap()
            .map(|entry| entry.value.to_vec())
    }

    /// Runs `future` to completion on the test's own runtime.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// Returns the test's own broker connection, which has the control plane's permissions.
    pub fn bus(&self) -> &NatsBus {
        &self.bus
    }

    /// Returns a JetStream context on the test's own broker connection.
    pub fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.bus.client().clone())
    }

    /// Replaces the value of `key` in `bucket`, as someone with the control plane's broker
    /// permissions could.
    pub fn kv_overwrite(&self, bucket: &str, key: &str, value: &[u8]) {
        self.runtime.block_on(async {
            let value = bytes::Bytes::copy_from_slice(value);
            match self.bus.kv_get(bucket, key).await.unwrap() {
                Some(entry) => self
                    .bus
                    .kv_update(bucket, key, value, entry.revision)
                    .await
                    .unwrap(),
                None => self.bus.kv_create(bucket, key, value).await.unwrap(),
            };
        });
    }

    /// Waits until the task has `status`, then returns it.
    pub fn wait_status(&self, id: &str, status: &str) -> TaskView {
        let mut last = None;
        let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_until(
                &format!("task {id} to be {status}"),
                Duration::from_secs(30),
                || {
                    let task = self.task(id);
                    let done = task.status == status;
                    last = Some(task);
                    done
                },
            )
        }));
        if found.is_err() {
            panic!(
                "task {id} did not become {status}; last seen: {last:#?}\ncontrol plane log:\n{}",
                self.control_plane_log()
            );
        }
        self.task(id)
    }

    /// Waits until the task's history has an entry with this rejection code.
    pub fn wait_history_code(&self, id: &str, code: &str) -> TaskView {
        wait_until(
            &format!("task {id} history to show {code}"),
            Duration::from_secs(30),
            || {
                self.task(id)
                    .history
                    .iter()
                    .any(|entry| entry.code.as_deref() == Some(code))
            },
        );
        self.task(id)
    }

    /// The control plane's task-signing key, read from its key file.
    pub fn task_key(&self) -> SigningKey {
        offline::read_key(&self.path("task.key")).unwrap()
    }

    /// Creates a release key in `release.key`, and signs and publishes trust document version 2,
    /// which lists it beside the task key. Returns the document.
    pub fn add_release_key(&self) -> warden_bus::trust::TrustDocument {
        let release_key = offline::create_key(&self.path("release.key")).unwrap();
        let trust_file = self.path("trust-2.b64");
        let path = |path: &std::path::Path| path.to_str().unwrap().to_owned();
        let run = |args: &[&str]| {
            let (code, _, stderr) = self.ctl(args);
            assert_eq!(code, Some(0), "wardenctl {args:?} failed: {stderr}");
        };
        run(&[
            "trust",
            "sign",
            "--root-key",
            &path(&self.path("root.key")),
            "--version",
            "2",
            "--expires-in",
            "30d",
            "--task-key",
            &format!("{},from=-1h", self.task_key().public_key().to_hex()),
            "--release-key",
            &format!("{},from=-1h", release_key.public_key().to_hex()),
            "--out",
            &path(&trust_file),
        ]);
        run(&["trust", "publish", &path(&trust_file)]);
        offline::read_trust(&trust_file)
            .unwrap()
            .document_unverified()
            .unwrap()
    }

    /// The operator's root key.
    pub fn root_key(&self) -> SigningKey {
        offline::read_key(&self.path("root.key")).unwrap()
    }

    /// A task body for `node` of the test deployment, valid for an hour from now.
    pub fn task_body(&self, node: &str, action: &TaskAction) -> Task {
        let now = warden_bus::Clock::now(&warden_bus::SystemClock);
        let mut id = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut id);
        Task {
            id: TaskId::from_random(id),
            deployment: DeploymentId::new(DEPLOYMENT).unwrap(),
            node: NodeId::new(node).unwrap(),
            issued_at: now,
            not_before: now,
            expires_at: UnixMillis(now.0 + 3_600_000),
            key_id: self.task_key().id().clone(),
            kind: action.kind().to_owned(),
            params: action.encode_params().unwrap(),
        }
    }

    /// Runs wardenctl against this cluster and returns its exit code, stdout and stderr.
    pub fn ctl(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let output = Command::new(workspace_binary("wardenctl"))
            .args(["--api", &self.api, "--api-key", &self.api_key])
            .args(args)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Restarts the control plane with another task key file.
    pub fn restart_control_plane_with_key(&mut self, key_file: &str) {
        self.kill_control_plane();
        std::fs::copy(self.path(key_file), self.path("task.key")).unwrap();
        self.start_control_plane(&[]);
    }

    /// Signs `task` with `key`, records it for `record_node` as the control plane would, and
    /// leaves it on `record_node`'s task subject. Models a forged or tampered task on the wire.
    pub fn inject(&self, record_node: &str, task: &Task, key: &SigningKey) -> String {
        self.inject_for(DEPLOYMENT, record_node, task, key)
    }

    /// Like [`Cluster::inject`], for a node of another deployment.
    pub fn inject_for(
        &self,
        deployment: &str,
        record_node: &str,
        task: &Task,
        key: &SigningKey,
    ) -> String {
        let mut task = task.clone();
        task.key_id = key.id().clone();
        let envelope = Envelope::seal(MessageId::from_random([5; 16]), &task).unwrap();
        let bytes = key.sign(&envelope).unwrap().encode().unwrap();
        let record = TaskRecord::pending(
            task.id.clone(),
            DeploymentId::new(deployment).unwrap(),
            NodeId::new(record_node).unwrap(),
            task.kind.clone(),
            BTreeMap::new(),
            task.issued_at,
            task.expires_at,
            base64::engine::general_purpose::STANDARD.encode(&bytes),
        );
        let store = Store::new(Arc::new(self.bus.clone()));
        self.runtime.block_on(store.create(&record)).unwrap();
        let subject = Subject::tasks(
            &DeploymentId::new(deployment).unwrap(),
            &NodeId::new(record_node).unwrap(),
        );
        self.runtime
            .block_on(self.bus.persist(&subject, bytes.into(), None))
            .unwrap();
        task.id.to_string()
    }

    /// The signed task bytes (base64) kept in a task's record.
    pub fn signed_task(&self, id: &str) -> String {
        let store = Store::new(Arc::new(self.bus.clone()));
        let (record, _) = self
            .runtime
            .block_on(store.get::<TaskRecord>(id))
            .unwrap()
            .expect("task record exists");
        record.signed_task
    }

    /// Stores raw bytes on a node's task subject with a dedup id, as the control plane does.
    pub fn publish_task_bytes_with_id(&self, node: &str, bytes: Vec<u8>, id: &str) {
        let subject = Subject::tasks(
            &DeploymentId::new(DEPLOYMENT).unwrap(),
            &NodeId::new(node).unwrap(),
        );
        self.runtime
            .block_on(self.bus.persist(&subject, bytes.into(), Some(id)))
            .unwrap();
    }

    /// Stores raw bytes on any subject that a stream captures.
    pub fn publish_raw(&self, subject: &Subject, bytes: Vec<u8>) {
        self.runtime
            .block_on(self.bus.persist(subject, bytes.into(), None))
            .unwrap();
    }

    /// Stores raw bytes on a node's task subject, as anyone with publish rights could.
    pub fn publish_task_bytes(&self, node: &str, bytes: Vec<u8>) {
        let subject = Subject::tasks(
            &DeploymentId::new(DEPLOYMENT).unwrap(),
            &NodeId::new(node).unwrap(),
        );
        self.runtime
            .block_on(self.bus.persist(&subject, bytes.into(), None))
            .unwrap();
    }
}

/// Builds a command that runs `binary` (the control plane) with the task key and trust document
/// of [`offline_setup`] in `dir`, on `nats_url`, and its API on a free port.
pub fn control_plane_command(
    binary: &std::path::Path,
    dir: &std::path::Path,
    nats_url: &str,
) -> Command {
    let mut command = Command::new(binary);
    command
        .args([
            "--nats-url",
            nats_url,
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .arg("--task-key")
        .arg(dir.join("task.key"))
        .arg("--trust-document")
        .arg(dir.join("trust.b64"));
    command
}

/// Does the operator's offline steps in `dir`: root.key, task.key and secrets.key, and trust.b64
/// signed by the root and listing the task key.
pub fn offline_setup(dir: &std::path::Path) {
    offline::create_key(&dir.join("root.key")).unwrap();
    // The same file format seals the deployment CA keys.
    offline::create_key(&dir.join("secrets.key")).unwrap();
    let task_key = offline::create_key(&dir.join("task.key")).unwrap();
    offline::sign_trust(&offline::TrustSignRequest {
        root_key: dir.join("root.key"),
        new_root_key: None,
        version: 1,
        expires_in: "365d".into(),
        task_keys: vec![format!("{},from=-1h", task_key.public_key().to_hex())],
        release_keys: Vec::new(),
        out: dir.join("trust.b64"),
    })
    .unwrap();
}

/// The current Unix time in seconds.
pub fn now_secs() -> i64 {
    i64::try_from(warden_bus::Clock::now(&warden_bus::SystemClock).0 / 1000).unwrap()
}

/// Counts the lines of `log` that contain `needle`.
pub fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|line| line.contains(needle)).count()
}
