//! Node identity: a node enrolls the key it generated with a one-time token, and the control
//! plane believes only reports and heartbeats signed by that key.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::Duration;

use rand::SeedableRng;
use support::{Cluster, DEPLOYMENT};
use warden_bus::{
    DeploymentId, Envelope, MessageId, NodeId, ReportStatus, SigningKey, Subject, TaskId,
    TaskReport, TelemetryKind, UnixMillis,
};
use warden_control_plane::core::issue::ActionRequest;
use warden_testkit::wait_until;

fn node_key_id(cluster: &Cluster, node: &str) -> Option<String> {
    cluster
        .nodes()
        .into_iter()
        .find(|view| view.node == node)
        .and_then(|view| view.node_key_id)
}

fn forged_report(
    task_id: &str,
    node: &str,
    status: ReportStatus,
    key: Option<&SigningKey>,
) -> Vec<u8> {
    let report = TaskReport {
        task_id: TaskId::new(task_id).unwrap(),
        deployment: DeploymentId::new(DEPLOYMENT).unwrap(),
        node: NodeId::new(node).unwrap(),
        at: UnixMillis(1),
        status,
    };
    let envelope = Envelope::seal(MessageId::from_random([9; 16]), &report).unwrap();
    match key {
        Some(key) => key.sign(&envelope).unwrap().encode().unwrap(),
        None => envelope.encode().unwrap(),
    }
}

fn publish_report(cluster: &Cluster, node: &str, bytes: Vec<u8>) {
    let subject = Subject::telemetry(
        &DeploymentId::new(DEPLOYMENT).unwrap(),
        &NodeId::new(node).unwrap(),
        TelemetryKind::Report,
    );
    cluster.publish_raw(&subject, bytes);
}

#[test]
fn forged_reports_are_ignored() {
    let mut cluster = Cluster::start();
    cluster.add_node("n1");
    cluster.start_warden("n1", &[]);
    wait_until("n1 to enroll", Duration::from_secs(10), || {
        node_key_id(&cluster, "n1").is_some()
    });
    cluster.kill_warden("n1");
    let task = &cluster.issue(Some("n1"), ActionRequest::CollectDiagnostics {})[0];

    // Someone with publish rights claims outcomes: unsigned, and signed by a key of their own.
    let stranger = SigningKey::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(4));
    let succeeded = ReportStatus::Succeeded {
        output: Default::default(),
    };
    publish_report(
        &cluster,
        "n1",
        forged_report(&task.id, "n1", succeeded.clone(), None),
    );
    publish_report(
        &cluster,
        "n1",
        forged_report(&task.id, "n1", succeeded, Some(&stranger)),
    );
    let expired = ReportStatus::rejected(warden_bus::RejectCode::Expired, "forged");
    publish_report(
        &cluster,
        "n1",
        forged_report(&task.id, "n1", expired, Some(&stranger)),
    );
    wait_until(
        "the forgeries to be dropped",
        Duration::from_secs(10),
        || {
            cluster
                .control_plane_log()
                .matches("dropping report not signed by the node's enrolled key")
                .count()
                >= 2
        },
    );
    assert_eq!(cluster.task(&task.id).status, "pending");

    // The real node's outcome is what counts.
    cluster.start_warden("n1", &[]);
    cluster.wait_status(&task.id, "succeeded");
}

#[test]
fn reused_token_cannot_enroll_another_key() {
    let mut cluster = Cluster::start();
    let bootstrap = cluster.add_node("n1");
    cluster.start_warden("n1", &[]);
    wait_until("n1 to enroll", Duration::from_secs(10), || {
        node_key_id(&cluster, "n1").is_some()
    });
    let first = node_key_id(&cluster, "n1");

    // A copy of the bootstrap file on another machine: same token, a new key.
    let mut copy: warden::bootstrap::BootstrapFile =
        toml::from_str(&std::fs::read_to_string(&bootstrap).unwrap()).unwrap();
    copy.state_dir = cluster.path("thief");
    std::fs::write(cluster.path("thief.toml"), toml::to_string(&copy).unwrap()).unwrap();
    cluster.start_warden("thief", &[]);
    wait_until(
        "the second enrollment to be refused",
        Duration::from_secs(10),
        || {
            cluster
                .control_plane_log()
                .contains("already used by another key")
        },
    );
    assert_eq!(
        node_key_id(&cluster, "n1"),
        first,
        "the first key must stay enrolled"
    );
    wait_until(
        "the thief to log the refusal",
        Duration::from_secs(10),
        || {
            cluster
                .warden_log("thief")
                .contains("already used by another key")
        },
    );
    assert!(
        !cluster
            .path("thief")
            .join(warden::credentials::CREDENTIAL_FILE)
            .exists(),
        "the thief must get no broker credential"
    );

    // Across a control-plane restart the token stays burned, for yet another key too.
    cluster.kill_control_plane();
    cluster.start_control_plane(&[]);
    cluster.kill_warden("thief");
    copy.state_dir = cluster.path("thief-2");
    std::fs::write(
        cluster.path("thief-2.toml"),
        toml::to_string(&copy).unwrap(),
    )
    .unwrap();
    cluster.start_warden("thief-2", &[]);
    wait_until("the refusal after restart", Duration::from_secs(10), || {
        cluster
            .control_plane_log()
            .matches("already used by another key")
            .count()
            >= 2
    });
    assert_eq!(node_key_id(&cluster, "n1"), first);
}

#[test]
fn expired_token_refused() {
    let mut cluster = Cluster::start_with(&["--enrollment-ttl-secs", "1"]);
    cluster.add_node("n1");
    std::thread::sleep(Duration::from_secs(2));
    cluster.start_warden("n1", &[]);
    // The enrollment user's JWT expires with the token, so the broker refuses the connection.
    wait_until(
        "the expired enrollment to be refused",
        Duration::from_secs(15),
        || cluster.warden_log("n1").contains("enrollment failed"),
    );
    let log = cluster.warden_log("n1");
    assert!(log.contains("refused the credentials"), "{log}");
    assert_eq!(node_key_id(&cluster, "n1"), None);
    assert_eq!(
        cluster.nodes()[0].health,
        "pending",
        "heartbeats of an unenrolled node count for nothing"
    );
}

#[test]
fn reenroll_revokes_old_identity() {
    let mut cluster = Cluster::start();
    cluster.add_node("n1");
    cluster.start_warden("n1", &[]);
    wait_until("n1 to enroll", Duration::from_secs(10), || {
        node_key_id(&cluster, "n1").is_some()
    });
    let old_key = node_key_id(&cluster, "n1");

    // The node lost its disk: the operator re-enrolls it with a new state directory.
    let state = cluster.path("n1-new");
    let out = cluster.path("n1-new.toml");
    let (code, _, stderr) = cluster.ctl(&[
        "node",
        "reenroll",
        "n1",
        "--deployment",
        DEPLOYMENT,
        "--bootstrap-out",
        out.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--heartbeat-interval-secs",
        "1",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        node_key_id(&cluster, "n1"),
        None,
        "the old key is revoked at once"
    );

    // The old process's reports no longer count; the new one enrolls and works.
    let task = &cluster.issue(Some("n1"), ActionRequest::CollectDiagnostics {})[0];
    cluster.kill_warden("n1");
    std::fs::copy(&out, cluster.path("n1.toml")).unwrap();
    cluster.start_warden("n1", &[]);
    wait_until("the new key to enroll", Duration::from_secs(10), || {
        node_key_id(&cluster, "n1").is_some()
    });
    assert_ne!(node_key_id(&cluster, "n1"), old_key);
    cluster.wait_status(&task.id, "succeeded");
}
