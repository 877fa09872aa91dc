//! Component tasks through the real control plane, `wardenctl` and a Warden process that
//! supervises a real nats-server as its `iggy` component.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::Duration;

use support::{Cluster, DEPLOYMENT};
use warden::components::definition::{ComponentFile, ComponentsFile};
use warden_testkit::{free_port, nats_server_binary, wait_until, workspace_binary};

/// Issues a component task with wardenctl and returns its id.
fn issue(cluster: &Cluster, args: &[&str]) -> String {
    let mut full = vec![
        "-o",
        "json",
        "task",
        "issue",
        "--deployment",
        DEPLOYMENT,
        "--node",
        "n1",
    ];
    full.extend_from_slice(args);
    let (code, stdout, stderr) = cluster.ctl(&full);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let issued: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    issued["tasks"][0]["id"].as_str().unwrap().to_owned()
}

fn pid_alive(pid: &str) -> bool {
    warden::components::process::process_start_ticks(pid.parse().unwrap()).is_some()
}

/// Waits until the node list shows `phase` for iggy.
fn wait_component_phase(cluster: &Cluster, phase: &str) {
    wait_until(
        &format!("iggy to be {phase} in the node list"),
        Duration::from_secs(20),
        || {
            let (_, stdout, _) = cluster.ctl(&["node", "list", "--deployment", DEPLOYMENT]);
            stdout.contains(&format!("iggy={phase}"))
        },
    );
}

#[test]
fn component_tasks_through_control_plane() {
    let mut cluster = Cluster::start();
    let client_port = free_port();
    let monitor_port = free_port();
    cluster.add_node_with("n1", |bootstrap| {
        bootstrap.components = ComponentsFile {
            iggy: Some(ComponentFile {
                binary: nats_server_binary(),
                args: vec![
                    "-a".into(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    client_port.to_string(),
                    "-m".into(),
                    monitor_port.to_string(),
                ],
                data_dir: bootstrap.state_dir.join("iggy-data"),
                http_address: Some(format!("127.0.0.1:{monitor_port}")),
                health_http_path: Some("/healthz".into()),
                stop_timeout_secs: Some(5),
                start_timeout_secs: Some(15),
                ..ComponentFile::default()
            }),
            connectors: Some(ComponentFile {
                binary: workspace_binary("fake-component"),
                args: vec!["--crash-at-start".into()],
                data_dir: bootstrap.state_dir.join("connectors-data"),
                crash_limit: Some(2),
                start_timeout_secs: Some(5),
                ..ComponentFile::default()
            }),
        };
    });
    cluster.start_warden("n1", &[]);

    // Start: succeeds once nats-server answers /healthz.
    let id = issue(&cluster, &["start-component", "--component", "iggy"]);
    let done = cluster.wait_status(&id, "succeeded");
    assert_eq!(
        done.output.get("phase").map(String::as_str),
        Some("running")
    );
    let first_pid = done.output.get("pid").unwrap().clone();
    assert!(pid_alive(&first_pid));
    assert!(std::net::TcpStream::connect(("127.0.0.1", client_port)).is_ok());
    wait_component_phase(&cluster, "running");

    // Restart: a new process replaces the old one.
    let id = issue(&cluster, &["restart-component", "--component", "iggy"]);
    let done = cluster.wait_status(&id, "succeeded");
    let second_pid = done.output.get("pid").unwrap().clone();
    assert_ne!(first_pid, second_pid);
    assert!(!pid_alive(&first_pid));

    // A Warden killed with SIGKILL leaves the component running; the next run stops that
    // process and restores the desired state with one new process.
    cluster.kill_warden("n1");
    assert!(
        pid_alive(&second_pid),
        "the component outlives a crashed Warden"
    );
    cluster.start_warden("n1", &[]);
    wait_until(
        "the leftover process to be stopped",
        Duration::from_secs(20),
        || !pid_alive(&second_pid),
    );
    wait_component_phase(&cluster, "running");
    let log = cluster.warden_log("n1");
    assert!(
        log.contains("from an earlier Warden run is still running"),
        "{log}"
    );

    // A component that crashes at start fails the task with its reason and output.
    let id = issue(&cluster, &["start-component", "--component", "connectors"]);
    let failed = cluster.wait_status(&id, "failed");
    let reason = failed.reason.unwrap_or_default();
    assert!(reason.contains("exit code 3"), "{reason}");
    assert!(reason.contains("crashing at start as asked"), "{reason}");

    // Reconfigure names the applied configuration version; version 5 is not applied.
    let id = issue(
        &cluster,
        &[
            "reconfigure-component",
            "--component",
            "iggy",
            "--config-version",
            "5",
        ],
    );
    let rejected = cluster.wait_status(&id, "rejected");
    assert_eq!(rejected.reject_code.as_deref(), Some("invalid_params"));

    // Stop: graceful, and the node list shows it.
    let id = issue(&cluster, &["stop-component", "--component", "iggy"]);
    cluster.wait_status(&id, "succeeded");
    wait_component_phase(&cluster, "stopped");
    assert!(std::net::TcpStream::connect(("127.0.0.1", client_port)).is_err());

    // nats-server's output reached the control plane's log with the node and component.
    wait_until(
        "component output in the control plane log",
        Duration::from_secs(10),
        || {
            let log = cluster.control_plane_log();
            log.contains("component_logs") && log.contains("Server is ready")
        },
    );
}

/// A start that takes longer than the broker's ack wait succeeds once, and the task queued
/// behind it runs after it. The node pulls one message at a time, so the broker has no pending
/// pull to redeliver on while the start runs. The Warden's in-progress acks restart the ack
/// wait all the same.
#[test]
fn slow_start_outlasts_ack_wait() {
    // The test cluster sets the ack wait to 2 s.
    let mut cluster = Cluster::start();
    let port = free_port();
    cluster.add_node_with("n1", |bootstrap| {
        bootstrap.components = ComponentsFile {
            iggy: Some(ComponentFile {
                binary: workspace_binary("fake-component"),
                args: vec![
                    "--http".into(),
                    format!("127.0.0.1:{port}"),
                    "--listen-delay-ms".into(),
                    "7000".into(),
                ],
                data_dir: bootstrap.state_dir.join("iggy-data"),
                http_address: Some(format!("127.0.0.1:{port}")),
                health_http_path: Some("/healthz".into()),
                start_timeout_secs: Some(20),
                ..ComponentFile::default()
            }),
            connectors: None,
        };
    });
    cluster.start_warden("n1", &[]);

    let id = issue(&cluster, &["start-component", "--component", "iggy"]);
    // A task queued behind the slow one.
    let queued = issue(&cluster, &["collect-diagnostics"]);
    let done = cluster.wait_status(&id, "succeeded");
    cluster.wait_status(&queued, "succeeded");
    let pid = done.output.get("pid").unwrap().clone();
    let log = cluster.warden_log("n1");
    assert!(!log.contains("redelivered"), "{log}");
    assert!(!log.contains("task handling failed"), "{log}");
    let delivered = done
        .history
        .iter()
        .filter(|entry| entry.status == "delivered")
        .count();
    assert_eq!(delivered, 1, "{:#?}", done.history);

    let id = issue(&cluster, &["stop-component", "--component", "iggy"]);
    cluster.wait_status(&id, "succeeded");
    assert!(!pid_alive(&pid));
}
