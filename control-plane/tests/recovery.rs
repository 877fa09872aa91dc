//! Crashes and restarts: nothing acknowledged is lost and nothing runs twice.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::Duration;

use support::{count, Cluster};
use warden_control_plane::core::issue::ActionRequest;
use warden_testkit::wait_until;

#[test]
fn warden_killed_before_ack_executes_once() {
    let mut cluster = Cluster::start();
    cluster.add_node("n1");
    cluster.start_warden("n1", &[("WARDEN_FAILPOINT", "crash-before-ack")]);
    let task = &cluster.apply_config(Some("n1"), 1)[0];

    // The Warden executes, records the outcome, reports it, and dies before acknowledging.
    let code = cluster.warden("n1").wait_exit(Duration::from_secs(30));
    assert_ne!(code, Some(0), "the failpoint must abort the process");
    assert_eq!(count(&cluster.warden_log("n1"), "executing task"), 1);

    // After the restart the broker redelivers; the Warden reports the recorded outcome again.
    cluster.start_warden("n1", &[]);
    wait_until(
        "the redelivered task to be recognised",
        Duration::from_secs(30),
        || {
            count(
                &cluster.warden_log("n1"),
                "reporting its recorded outcome again",
            ) >= 1
        },
    );
    assert_eq!(
        count(&cluster.warden_log("n1"), "executing task"),
        1,
        "the task ran twice"
    );
    cluster.wait_status(&task.id, "succeeded");

    // The delivery was acknowledged this time: a later task runs, and the first never returns.
    let next = &cluster.apply_config(Some("n1"), 2)[0];
    cluster.wait_status(&next.id, "succeeded");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        count(
            &cluster.warden_log("n1"),
            "reporting its recorded outcome again"
        ),
        1
    );
}

#[test]
fn restarted_control_plane_delivers_pending_tasks() {
    let mut cluster = Cluster::start();
    cluster.add_node("n1");
    // Enrollment asks the control plane, so the node enrolls first and then goes down.
    cluster.start_warden("n1", &[]);
    wait_until("n1 to enroll", Duration::from_secs(10), || {
        cluster.warden_log("n1").contains("node credential stored")
    });
    cluster.kill_warden("n1");
    let task = &cluster.apply_config(Some("n1"), 1)[0];
    assert_eq!(task.status, "pending");

    // The control plane dies with the task pending; the Warden comes back while it is down.
    cluster.kill_control_plane();
    cluster.start_warden("n1", &[]);
    wait_until(
        "the Warden to execute the task",
        Duration::from_secs(30),
        || count(&cluster.warden_log("n1"), "task succeeded") == 1,
    );

    // The report waited in the report stream for the restarted control plane.
    cluster.start_control_plane(&[]);
    cluster.wait_status(&task.id, "succeeded");
}

#[test]
fn task_recorded_but_not_published_is_published_after_restart() {
    let mut cluster = Cluster::start();
    cluster.add_node("n1");
    cluster.start_warden("n1", &[]);
    cluster.kill_control_plane();
    cluster.start_control_plane(&[("WARDEN_FAILPOINT", "crash-after-task-record")]);

    // The control plane records the task and dies before publishing it, so the request fails.
    let body = warden_control_plane::views::IssueTasks {
        node: Some("n1".into()),
        all_nodes: false,
        ttl_secs: None,
        action: ActionRequest::CollectDiagnostics {},
    };
    let result: Result<warden_control_plane::views::IssuedTasks, _> = cluster.client().post(
        &format!("/v1/deployments/{}/tasks", support::DEPLOYMENT),
        &body,
    );
    assert!(
        result.is_err(),
        "the failpoint must stop the control plane mid-request"
    );
    cluster.control_plane().wait_exit(Duration::from_secs(10));

    cluster.start_control_plane(&[]);
    let tasks: Vec<warden_control_plane::views::TaskView> =
        cluster.client().get("/v1/tasks").unwrap();
    assert_eq!(tasks.len(), 1);
    cluster.wait_status(&tasks[0].id, "succeeded");
}

#[test]
fn node_health_follows_heartbeats() {
    let mut cluster = Cluster::start();
    cluster.add_node("n1");
    assert_eq!(cluster.nodes()[0].health, "pending");
    cluster.start_warden("n1", &[]);
    wait_until("the node to be healthy", Duration::from_secs(10), || {
        cluster.nodes()[0].health == "healthy"
    });

    // The control plane runs with a 3 s threshold.
    cluster.kill_warden("n1");
    wait_until(
        "the node to be unreachable",
        Duration::from_secs(15),
        || cluster.nodes()[0].health == "unreachable",
    );
    cluster.start_warden("n1", &[]);
    wait_until(
        "the node to be healthy again",
        Duration::from_secs(10),
        || cluster.nodes()[0].health == "healthy",
    );

    let transitions: Vec<(String, String)> = cluster.nodes()[0]
        .transitions
        .iter()
        .map(|t| (t.from.clone(), t.to.clone()))
        .collect();
    assert_eq!(
        transitions,
        [
            ("pending".to_owned(), "healthy".to_owned()),
            ("healthy".to_owned(), "unreachable".to_owned()),
            ("unreachable".to_owned(), "healthy".to_owned()),
        ]
    );
    let log = cluster.control_plane_log();
    assert_eq!(count(&log, "node health changed"), 3, "{log}");
}

#[test]
fn warden_survives_broker_restart() {
    let mut cluster = Cluster::start();
    cluster.add_node("n1");
    cluster.start_warden("n1", &[]);
    let first = &cluster.apply_config(Some("n1"), 1)[0];
    cluster.wait_status(&first.id, "succeeded");

    cluster.nats.restart();
    // Both processes reconnect by themselves; their actors restart after back-off.
    let mut second = None;
    wait_until(
        "the control plane to accept a task again",
        Duration::from_secs(30),
        || {
            let body = warden_control_plane::views::IssueTasks {
                node: Some("n1".into()),
                all_nodes: false,
                ttl_secs: None,
                action: ActionRequest::CollectDiagnostics {},
            };
            let result: Result<warden_control_plane::views::IssuedTasks, _> =
                cluster.client().post(
                    &format!("/v1/deployments/{}/tasks", support::DEPLOYMENT),
                    &body,
                );
            second = result.ok().map(|issued| issued.tasks[0].id.clone());
            second.is_some()
        },
    );
    cluster.wait_status(&second.unwrap(), "succeeded");
    assert!(cluster.warden("n1").is_running());
}
