//! Tasks that try to get past a Warden's checks. Each must be rejected without executing, and
//! the control plane must record the rejection with its own code.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use base64::Engine;
use rand::SeedableRng;
use support::{count, Cluster};
use warden_bus::messages::ApplyConfig;
use warden_bus::{DeploymentId, NodeId, SigningKey, TaskAction, UnixMillis};

fn apply(version: u64) -> TaskAction {
    TaskAction::ApplyConfig(ApplyConfig {
        version,
        content: support::CONFIG.into(),
    })
}

fn cluster_with_node() -> Cluster {
    let mut cluster = Cluster::start();
    cluster.add_node("n1");
    cluster.start_warden("n1", &[]);
    cluster
}

fn assert_not_executed(cluster: &Cluster) {
    assert!(
        !cluster.path("n1").join("iggy/server.toml").exists(),
        "a rejected task wrote the configuration"
    );
    assert_eq!(count(&cluster.warden_log("n1"), "executing task"), 0);
}

#[test]
fn unknown_key_rejected() {
    let cluster = cluster_with_node();
    let forger = SigningKey::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(99));
    let id = cluster.inject("n1", &cluster.task_body("n1", &apply(1)), &forger);
    let task = cluster.wait_status(&id, "rejected");
    assert_eq!(task.reject_code.as_deref(), Some("unknown_key"));
    assert!(task.reason.unwrap().contains(forger.id().as_str()));
    assert_not_executed(&cluster);
}

#[test]
fn tampered_task_rejected() {
    let cluster = cluster_with_node();
    let key = cluster.task_key();
    let id = cluster.inject("n1", &cluster.task_body("n1", &apply(1)), &key);
    let honest = cluster.task(&id);
    // The honest copy runs; a copy with one changed byte in the signature must not.
    cluster.wait_status(&id, "succeeded");
    let mut bytes = base64::engine::general_purpose::STANDARD
        .decode(cluster.signed_task(&honest.id))
        .unwrap();
    // The signature's last byte precedes the one-byte empty approvals array.
    let last_signature_byte = bytes.len() - 2;
    bytes[last_signature_byte] ^= 0x40;
    cluster.publish_task_bytes("n1", bytes);
    let task = cluster.wait_history_code(&id, "bad_signature");
    assert_eq!(
        task.status, "succeeded",
        "a forged rejection must not overwrite a real outcome"
    );
    assert_eq!(count(&cluster.warden_log("n1"), "executing task"), 1);
}

#[test]
fn task_for_another_node_rejected() {
    let cluster = cluster_with_node();
    let mut task = cluster.task_body("n1", &apply(1));
    task.node = NodeId::new("n2").unwrap();
    let id = cluster.inject("n1", &task, &cluster.task_key());
    let recorded = cluster.wait_status(&id, "rejected");
    assert_eq!(recorded.reject_code.as_deref(), Some("wrong_node"));
    assert_not_executed(&cluster);
}

#[test]
fn task_for_another_deployment_rejected() {
    let cluster = cluster_with_node();
    let mut task = cluster.task_body("n1", &apply(1));
    task.deployment = DeploymentId::new("other").unwrap();
    let id = cluster.inject("n1", &task, &cluster.task_key());
    let recorded = cluster.wait_status(&id, "rejected");
    assert_eq!(recorded.reject_code.as_deref(), Some("wrong_deployment"));
    assert_not_executed(&cluster);
}

#[test]
fn expired_task_rejected() {
    let cluster = cluster_with_node();
    let mut task = cluster.task_body("n1", &apply(1));
    // Past the expiry by more than the default 300 s clock-skew tolerance.
    let now = task.issued_at;
    task.issued_at = UnixMillis(now.0 - 3_000_000);
    task.not_before = task.issued_at;
    task.expires_at = UnixMillis(now.0 - 301_000);
    let id = cluster.inject("n1", &task, &cluster.task_key());
    let recorded = cluster.wait_status(&id, "rejected");
    assert_eq!(recorded.reject_code.as_deref(), Some("expired"));
    assert_not_executed(&cluster);
}

#[test]
fn unknown_kind_rejected() {
    let cluster = cluster_with_node();
    let mut task = cluster.task_body("n1", &TaskAction::CollectDiagnostics);
    task.kind = "run_shell".into();
    let id = cluster.inject("n1", &task, &cluster.task_key());
    let recorded = cluster.wait_status(&id, "rejected");
    assert_eq!(recorded.reject_code.as_deref(), Some("unknown_kind"));
    assert_not_executed(&cluster);
}

#[test]
fn replayed_task_not_executed_twice() {
    let cluster = cluster_with_node();
    let issued = &cluster.apply_config(Some("n1"), 1)[0];
    cluster.wait_status(&issued.id, "succeeded");

    // Someone stores the same signed bytes again as a new message.
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(cluster.signed_task(&issued.id))
        .unwrap();
    cluster.publish_task_bytes("n1", bytes);
    let task = cluster.wait_history_code(&issued.id, "replayed");
    assert_eq!(task.status, "succeeded");
    assert!(!task.history.last().unwrap().applied);
    assert_eq!(count(&cluster.warden_log("n1"), "executing task"), 1);
}

#[test]
fn replay_rejected_after_warden_restart() {
    let mut cluster = cluster_with_node();
    let issued = &cluster.issue(
        Some("n1"),
        warden_control_plane::core::issue::ActionRequest::CollectDiagnostics {},
    )[0];
    cluster.wait_status(&issued.id, "succeeded");
    cluster.kill_warden("n1");
    cluster.start_warden("n1", &[]);

    let bytes = base64::engine::general_purpose::STANDARD
        .decode(cluster.signed_task(&issued.id))
        .unwrap();
    cluster.publish_task_bytes("n1", bytes);
    cluster.wait_history_code(&issued.id, "replayed");
    assert_eq!(count(&cluster.warden_log("n1"), "executing task"), 1);
}
