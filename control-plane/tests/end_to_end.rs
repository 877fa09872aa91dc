//! Tasks from the control plane to several Wardens over a real nats-server, as separate
//! processes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::process::Command;
use std::time::Duration;

use support::{Cluster, CONFIG, DEPLOYMENT};
use warden_control_plane::core::issue::ActionRequest;
use warden_control_plane::views::DeploymentView;
use warden_testkit::{listening_sockets, wait_until, workspace_binary};

#[test]
fn config_applied_on_three_nodes() {
    let mut cluster = Cluster::start();
    let nodes = ["n1", "n2", "n3"];
    for node in nodes {
        cluster.add_node(node);
        cluster.start_warden(node, &[]);
    }

    let tasks = cluster.apply_config(None, 1);
    assert_eq!(tasks.len(), 3, "one task per node");
    for task in &tasks {
        let done = cluster.wait_status(&task.id, "succeeded");
        assert_eq!(
            done.output.get("config_version").map(String::as_str),
            Some("1")
        );
        let statuses: Vec<&str> = done
            .history
            .iter()
            .map(|entry| entry.status.as_str())
            .collect();
        assert_eq!(statuses, ["pending", "delivered", "succeeded"]);
    }
    for node in nodes {
        let written = std::fs::read_to_string(cluster.path(node).join("iggy/server.toml")).unwrap();
        assert!(
            written.starts_with("# Written by Warden; do not edit. config_version = 1\n"),
            "{written}"
        );
        assert!(written.ends_with(CONFIG), "{written}");
    }

    // The heartbeat reports the applied version.
    wait_until(
        "heartbeats to report config version 1",
        Duration::from_secs(10),
        || {
            cluster
                .nodes()
                .iter()
                .all(|node| node.health == "healthy" && node.config_version == 1)
        },
    );
}

#[test]
fn late_node_gets_desired_config() {
    let mut cluster = Cluster::start();
    cluster.add_node("n1");
    cluster.start_warden("n1", &[]);
    let all = &cluster.apply_config(None, 2)[0];
    cluster.wait_status(&all.id, "succeeded");
    // A configuration for one node does not become the deployment's.
    let single = &cluster.apply_config(Some("n1"), 3)[0];
    cluster.wait_status(&single.id, "succeeded");

    // n2 did not exist when version 2 went to all nodes. Its heartbeat reports version 0, so
    // the control plane sends it version 2.
    cluster.add_node("n2");
    cluster.start_warden("n2", &[]);
    wait_until(
        "n2 to report config version 2",
        Duration::from_secs(30),
        || {
            cluster
                .nodes()
                .iter()
                .any(|node| node.node == "n2" && node.config_version == 2)
        },
    );
    let written = std::fs::read_to_string(cluster.path("n2").join("iggy/server.toml")).unwrap();
    assert!(
        written.starts_with("# Written by Warden; do not edit. config_version = 2\n"),
        "{written}"
    );
    // n1 keeps its own version 3, and nothing was sent to it again.
    wait_until(
        "n1 to report config version 3",
        Duration::from_secs(10),
        || {
            cluster
                .nodes()
                .iter()
                .any(|node| node.node == "n1" && node.config_version == 3)
        },
    );
    assert_eq!(cluster.tasks_of_kind("apply_config"), 3);
    let deployments: Vec<DeploymentView> = cluster.client().get("/v1/deployments").unwrap();
    let deployment = deployments.iter().find(|view| view.id == DEPLOYMENT);
    assert_eq!(
        deployment.and_then(|view| view.desired_config_version),
        Some(2)
    );
    assert_eq!(
        deployment.and_then(|view| view.desired_access_version),
        None
    );
}

#[test]
fn diagnostics_report_node_facts() {
    let mut cluster = Cluster::start();
    cluster.add_node("n1");
    cluster.start_warden("n1", &[]);
    let task = &cluster.issue(Some("n1"), ActionRequest::CollectDiagnostics {})[0];
    let done = cluster.wait_status(&task.id, "succeeded");
    for fact in [
        "hostname",
        "os",
        "kernel",
        "warden_version",
        "warden_uptime_secs",
        "system_uptime_secs",
        "state_dir_free_bytes",
    ] {
        assert!(
            done.output.contains_key(fact),
            "missing {fact} in {:?}",
            done.output
        );
    }
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(done.output["kernel"], kernel.trim());
    let free: u64 = done.output["state_dir_free_bytes"].parse().unwrap();
    assert!(free > 0);
}

#[test]
fn older_config_version_rejected() {
    let mut cluster = Cluster::start();
    cluster.add_node("n1");
    cluster.start_warden("n1", &[]);
    let first = &cluster.apply_config(Some("n1"), 5)[0];
    cluster.wait_status(&first.id, "succeeded");
    for version in [5, 4] {
        let stale = &cluster.apply_config(Some("n1"), version)[0];
        let done = cluster.wait_status(&stale.id, "rejected");
        assert_eq!(done.reject_code.as_deref(), Some("stale_version"));
    }
    let written = std::fs::read_to_string(cluster.path("n1").join("iggy/server.toml")).unwrap();
    assert!(written.contains("config_version = 5"));
}

#[test]
fn warden_has_no_listening_socket() {
    let mut cluster = Cluster::start();
    cluster.add_node("n1");
    cluster.start_warden("n1", &[]);
    let task = &cluster.apply_config(Some("n1"), 1)[0];
    cluster.wait_status(&task.id, "succeeded");
    let pid = cluster.warden("n1").id().unwrap();
    let sockets = listening_sockets(pid);
    assert!(sockets.is_empty(), "the Warden listens on {sockets:?}");
    // The check can fail: the control plane, in the same kind of process, does listen.
    let control_plane_pid = cluster.control_plane().id().unwrap();
    assert!(!listening_sockets(control_plane_pid).is_empty());
}

#[test]
fn wardenctl_drives_the_whole_flow() {
    let mut cluster = Cluster::start();
    let (api, api_key) = (cluster.api.clone(), cluster.api_key.clone());
    let ctl = |args: &[&str]| {
        let output = Command::new(workspace_binary("wardenctl"))
            .args(["--api", &api, "--api-key", &api_key])
            .args(args)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };

    let bootstrap = cluster.path("cli-node.toml");
    let state_dir = cluster.path("cli-node");
    let (code, stdout, stderr) = ctl(&[
        "node",
        "add",
        "cli-node",
        "--deployment",
        DEPLOYMENT,
        "--bootstrap-out",
        bootstrap.to_str().unwrap(),
        "--state-dir",
        state_dir.to_str().unwrap(),
        "--heartbeat-interval-secs",
        "1",
    ]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&bootstrap).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Writing over an existing bootstrap file needs --force.
    let (code, _, stderr) = ctl(&[
        "node",
        "add",
        "other",
        "--deployment",
        DEPLOYMENT,
        "--bootstrap-out",
        bootstrap.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("--force"), "{stderr}");

    cluster.start_warden("cli-node", &[]);
    let config = cluster.path("config.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let (code, stdout, stderr) = ctl(&[
        "-o",
        "json",
        "task",
        "issue",
        "--deployment",
        DEPLOYMENT,
        "--node",
        "cli-node",
        "apply-config",
        "--version",
        "2",
        "--file",
        config.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let issued: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let id = issued["tasks"][0]["id"].as_str().unwrap().to_owned();

    let (code, stdout, stderr) = ctl(&["task", "wait", &id, "--timeout-secs", "30"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("succeeded"), "{stdout}");

    let (code, stdout, _) = ctl(&["task", "show", &id]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("status       succeeded"), "{stdout}");
    assert!(stdout.contains("config_version"), "{stdout}");

    let (code, stdout, _) = ctl(&["task", "list", "--node", "cli-node"]);
    assert_eq!(code, Some(0));
    assert!(stdout.starts_with("TASK"), "{stdout}");
    assert!(stdout.contains(&id));

    wait_until("the node to be healthy", Duration::from_secs(10), || {
        let (_, stdout, _) = ctl(&["node", "list", "--deployment", DEPLOYMENT]);
        stdout
            .lines()
            .any(|line| line.starts_with("cli-node") && line.contains("healthy"))
    });
    let (code, stdout, _) = ctl(&["-o", "json", "node", "list", "--deployment", DEPLOYMENT]);
    assert_eq!(code, Some(0));
    let nodes: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(nodes[0]["health"], "healthy");

    // Errors say what failed and what to do.
    let (code, _, stderr) = ctl(&[
        "task",
        "issue",
        "--deployment",
        "missing",
        "--all-nodes",
        "collect-diagnostics",
    ]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("deployment missing not found"), "{stderr}");
    assert!(stderr.contains("wardenctl deployment create"), "{stderr}");
    let (code, _, stderr) = ctl(&["task", "show", "no-such-task"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("wardenctl task list"), "{stderr}");
}
