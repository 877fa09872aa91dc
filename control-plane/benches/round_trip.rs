//! Task round trip: from the control plane issuing a task to the control plane recording its
//! outcome, over a real nats-server, with the release control-plane and Warden binaries as
//! separate processes.
//!
//! Build the binaries first, then run:
//!
//! ```text
//! cargo build --release --bins
//! cargo bench -p warden-control-plane --bench round_trip -- [--nodes 1,100] [--rounds-one 300] [--rounds-many 20] [--sync-always]
//! ```
//!
//! `--sync-always` makes nats-server sync JetStream writes to disk before it acknowledges them
//! (`sync_interval: always`, as `wardenctl broker init` configures it), instead of every two
//! minutes.
//!
//! The round trip of a task is the time of its `succeeded` history entry minus its issue
//! time, both read from the control plane's clock with millisecond resolution. Each task is an
//! ApplyConfig, so it includes the Warden's two flushed sled writes and the fsynced
//! configuration file.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use warden_bus::transport::nats::NatsBus;
use warden_control_plane::core::issue::ActionRequest;
use warden_control_plane::core::lifecycle::{TaskRecord, TaskStatus};
use warden_control_plane::ctl::{offline, Client};
use warden_control_plane::store::Store;
use warden_control_plane::views::{
    AddNode, AddedNode, CreateDeployment, DeploymentView, IssueTasks, IssuedTasks, NodeView,
    TaskView,
};
use warden_testkit::{free_port, wait_until, workspace_binary, NatsServer, Process};

struct Options {
    nodes: Vec<usize>,
    rounds_one: usize,
    rounds_many: usize,
    sync_always: bool,
}

fn options() -> Options {
    let mut options = Options {
        nodes: vec![1, 100],
        rounds_one: 300,
        rounds_many: 20,
        sync_always: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--nodes" => {
                options.nodes = args
                    .next()
                    .unwrap()
                    .split(',')
                    .map(|n| n.parse().unwrap())
                    .collect()
            }
            "--rounds-one" => options.rounds_one = args.next().unwrap().parse().unwrap(),
            "--rounds-many" => options.rounds_many = args.next().unwrap().parse().unwrap(),
            "--sync-always" => options.sync_always = true,
            "--bench" => {}
            other => panic!(
                "unknown argument {other}; use --nodes, --rounds-one, --rounds-many or --sync-always"
            ),
        }
    }
    options
}

/// Nearest-rank percentile of sorted samples, `percent` in 0 to 100.
fn percentile(sorted: &[u64], percent: usize) -> u64 {
    let index = (sorted.len() - 1) * percent / 100;
    sorted[index]
}

fn main() {
    let options = options();
    let dir = tempfile::tempdir().unwrap();
    let nats = if options.sync_always {
        NatsServer::start_with_config(|setup| {
            format!(
                "host: 127.0.0.1\nport: {}\nwebsocket {{\n  host: 127.0.0.1\n  port: {}\n  no_tls: true\n}}\njetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n}}\n",
                setup.client_port,
                setup.websocket_port,
                setup.dir.join("jetstream").display()
            )
        })
    } else {
        NatsServer::start()
    };
    println!(
        "JetStream sync: {}",
        if options.sync_always {
            "always"
        } else {
            "every 2 minutes (default)"
        }
    );
    offline::create_key(&dir.path().join("root.key")).unwrap();
    let task_key = offline::create_key(&dir.path().join("task.key")).unwrap();
    offline::sign_trust(&offline::TrustSignRequest {
        root_key: dir.path().join("root.key"),
        new_root_key: None,
        version: 1,
        expires_in: "30d".into(),
        task_keys: vec![format!("{},from=-1h", task_key.public_key().to_hex())],
        release_keys: Vec::new(),
        out: dir.path().join("trust.b64"),
    })
    .unwrap();
    let api = format!("http://127.0.0.1:{}", free_port());
    let mut command = Command::new(workspace_binary("control-plane"));
    command
        .args([
            "--nats-url",
            &nats.url(),
            "--listen",
            api.trim_start_matches("http://"),
        ])
        .arg("--task-key")
        .arg(dir.path().join("task.key"))
        .arg("--trust-document")
        .arg(dir.path().join("trust.b64"))
        .arg("--admin-key-out")
        .arg(dir.path().join("admin-key"))
        .arg("--artifact-cache-dir")
        .arg(dir.path().join("artifact-cache"))
        .env("RUST_LOG", "warn");
    let _control_plane = Process::spawn("control-plane", command, &dir.path().join("cp.log"));
    let key_path = dir.path().join("admin-key");
    // The control plane creates the file before it writes the key, so wait for content.
    wait_until("the admin key", Duration::from_secs(30), || {
        std::fs::read_to_string(&key_path).is_ok_and(|key| !key.trim().is_empty())
    });
    let client = Client::new(
        &api,
        Some(
            std::fs::read_to_string(&key_path)
                .unwrap()
                .trim()
                .to_owned(),
        ),
    )
    .unwrap();
    wait_until("the API", Duration::from_secs(30), || {
        client.get::<Vec<DeploymentView>>("/v1/deployments").is_ok()
    });

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store = Store::new(Arc::new(
        runtime
            .block_on(NatsBus::connect(&nats.url(), "bench"))
            .unwrap(),
    ));

    println!(
        "task round trip, issue to outcome recorded (ms); host: {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for &count in &options.nodes {
        let deployment = format!("bench-{count}");
        let _: DeploymentView = client
            .post(
                "/v1/deployments",
                &CreateDeployment {
                    id: deployment.clone(),
                    description: String::new(),
                    approval_key: None,
                },
            )
            .unwrap();
        let mut wardens = Vec::new();
        for index in 0..count {
            let node = format!("n{index}");
            let body = AddNode {
                id: node.clone(),
                state_dir: dir
                    .path()
                    .join(&deployment)
                    .join(&node)
                    .to_string_lossy()
                    .into_owned(),
                heartbeat_interval_secs: None,
                tls_names: Vec::new(),
            };
            let added: AddedNode = client
                .post(&format!("/v1/deployments/{deployment}/nodes"), &body)
                .unwrap();
            let path = dir.path().join(format!("{deployment}-{node}.toml"));
            std::fs::write(&path, toml::to_string(&added.bootstrap).unwrap()).unwrap();
            let mut command = Command::new(workspace_binary("warden"));
            command
                .arg("--bootstrap")
                .arg(&path)
                .env("RUST_LOG", "warn");
            wardens.push(Process::spawn(
                &node,
                command,
                &dir.path().join(format!("{deployment}-{node}.log")),
            ));
        }
        wait_until("every node healthy", Duration::from_secs(120), || {
            client
                .get::<Vec<NodeView>>(&format!("/v1/deployments/{deployment}/nodes"))
                .unwrap()
                .iter()
                .all(|n| n.health == "healthy")
        });

        let rounds = if count == 1 {
            options.rounds_one
        } else {
            options.rounds_many
        };
        let mut ids = Vec::new();
        let started = Instant::now();
        for round in 0..rounds {
            let body = IssueTasks {
                node: None,
                all_nodes: true,
                ttl_secs: None,
                action: ActionRequest::ApplyConfig {
                    version: round as u64 + 1,
                    content: "[system]\npath = \"local_data\"\n".into(),
                },
            };
            let issued: IssuedTasks = client
                .post(&format!("/v1/deployments/{deployment}/tasks"), &body)
                .unwrap();
            let round_ids: Vec<String> = issued.tasks.iter().map(|task| task.id.clone()).collect();
            wait_until("the round's outcomes", Duration::from_secs(120), || {
                round_ids.iter().all(|id| {
                    client
                        .get::<TaskView>(&format!("/v1/tasks/{id}"))
                        .unwrap()
                        .status
                        != "pending"
                        && client
                            .get::<TaskView>(&format!("/v1/tasks/{id}"))
                            .unwrap()
                            .status
                            != "delivered"
                })
            });
            ids.extend(round_ids);
        }
        let elapsed = started.elapsed();

        let mut samples = Vec::new();
        for id in &ids {
            let (record, _) = runtime
                .block_on(store.get::<TaskRecord>(id))
                .unwrap()
                .unwrap();
            assert_eq!(
                record.status,
                TaskStatus::Succeeded,
                "task {id} did not succeed: {record:?}"
            );
            let done = record
                .history
                .iter()
                .find(|entry| entry.status == TaskStatus::Succeeded)
                .unwrap();
            samples.push(done.at.0 - record.issued_at.0);
        }
        samples.sort_unstable();
        println!(
            "nodes={count:<4} tasks={:<5} p50={:<4} p90={:<4} p99={:<4} max={:<4} wall={:.1}s",
            samples.len(),
            percentile(&samples, 50),
            percentile(&samples, 90),
            percentile(&samples, 99),
            samples.last().unwrap(),
            elapsed.as_secs_f64()
        );
        drop(wardens);
    }
}
