//! The trust document and key rotation over real processes: what nodes accept is decided by
//! the root key, which the control plane never holds.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::Duration;

use base64::Engine;
use support::{count, Cluster};
use warden_bus::messages::{AccessRule, AccessRules, Protocol, UpdateTrust};
use warden_bus::TaskAction;
use warden_control_plane::core::issue::ActionRequest;
use warden_control_plane::ctl::offline::{self, TrustSignRequest};

fn sign(
    cluster: &Cluster,
    version: u64,
    root: &str,
    new_root: Option<&str>,
    task_keys: Vec<String>,
    out: &str,
) {
    offline::sign_trust(&TrustSignRequest {
        root_key: cluster.path(root),
        new_root_key: new_root.map(|name| cluster.path(name)),
        version,
        expires_in: "365d".into(),
        task_keys,
        release_keys: Vec::new(),
        out: cluster.path(out),
    })
    .unwrap();
}

fn public_hex(cluster: &Cluster, key: &str) -> String {
    offline::read_key(&cluster.path(key))
        .unwrap()
        .public_key()
        .to_hex()
}

fn update_trust_everywhere(cluster: &Cluster, node: &str) {
    let task = &cluster.issue(Some(node), ActionRequest::UpdateTrust {})[0];
    let done = cluster.wait_status(&task.id, "succeeded");
    assert!(
        done.output.contains_key("trust_version"),
        "{:?}",
        done.output
    );
}

/// A cluster whose node tolerates 1 s of clock skew, so key windows end quickly.
fn cluster_with_strict_node() -> Cluster {
    let mut cluster = Cluster::start();
    cluster.add_node_with("n1", |bootstrap| bootstrap.clock_skew_secs = Some(1));
    cluster.start_warden("n1", &[]);
    cluster
}

#[test]
fn task_key_rotation_with_overlap() {
    let mut cluster = cluster_with_strict_node();
    offline::create_key(&cluster.path("task-2.key")).unwrap();
    let old = public_hex(&cluster, "task.key");
    let new = public_hex(&cluster, "task-2.key");

    // Version 2 keeps the old key for 6 more seconds and adds the new one.
    sign(
        &cluster,
        2,
        "root.key",
        None,
        vec![
            format!("{old},from=-1h,until=6s"),
            format!("{new},from=-1h"),
        ],
        "trust-2.b64",
    );
    let (code, stdout, stderr) = cluster.ctl(&[
        "trust",
        "publish",
        cluster.path("trust-2.b64").to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    update_trust_everywhere(&cluster, "n1");

    // During the overlap both keys work.
    let old_signed = cluster.inject(
        "n1",
        &cluster.task_body("n1", &TaskAction::CollectDiagnostics),
        &cluster.task_key(),
    );
    cluster.wait_status(&old_signed, "succeeded");
    cluster.restart_control_plane_with_key("task-2.key");
    let new_signed = &cluster.issue(Some("n1"), ActionRequest::CollectDiagnostics {})[0];
    cluster.wait_status(&new_signed.id, "succeeded");
}

#[test]
fn retired_key_refused_after_window() {
    let cluster = cluster_with_strict_node();
    let original = cluster.task_key();
    offline::create_key(&cluster.path("task-2.key")).unwrap();
    let old = original.public_key().to_hex();
    let new = public_hex(&cluster, "task-2.key");
    sign(
        &cluster,
        2,
        "root.key",
        None,
        vec![
            format!("{old},from=-1h,until=4s"),
            format!("{new},from=-1h"),
        ],
        "trust-2.b64",
    );
    cluster.ctl(&[
        "trust",
        "publish",
        cluster.path("trust-2.b64").to_str().unwrap(),
    ]);
    update_trust_everywhere(&cluster, "n1");

    std::thread::sleep(Duration::from_secs(6));
    let late = cluster.inject(
        "n1",
        &cluster.task_body("n1", &TaskAction::CollectDiagnostics),
        &original,
    );
    let task = cluster.wait_status(&late, "rejected");
    assert_eq!(task.reject_code.as_deref(), Some("key_outside_window"));
}

#[test]
fn control_plane_refuses_trust_not_signed_by_root() {
    let cluster = Cluster::start();
    offline::create_key(&cluster.path("impostor.key")).unwrap();
    let task_hex = public_hex(&cluster, "task.key");
    // The task key, or any key but the root, cannot sign the trust document.
    std::fs::copy(cluster.path("task.key"), cluster.path("task-as-root.key")).unwrap();
    for signer in ["impostor.key", "task-as-root.key"] {
        sign(
            &cluster,
            2,
            signer,
            None,
            vec![task_hex.clone()],
            "forged.b64",
        );
        let (code, _, stderr) = cluster.ctl(&[
            "trust",
            "publish",
            cluster.path("forged.b64").to_str().unwrap(),
        ]);
        assert_eq!(code, Some(1));
        assert!(
            stderr.contains("not signed by the current root key"),
            "{stderr}"
        );
    }
    // An older version is refused too.
    sign(&cluster, 1, "root.key", None, vec![task_hex], "same.b64");
    let (code, _, stderr) = cluster.ctl(&[
        "trust",
        "publish",
        cluster.path("same.b64").to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("not above the current version 1"),
        "{stderr}"
    );
}

#[test]
fn node_rejects_trust_downgrade_and_forgery() {
    let cluster = cluster_with_strict_node();
    let task_hex = format!("{},from=-1h", public_hex(&cluster, "task.key"));
    sign(
        &cluster,
        3,
        "root.key",
        None,
        vec![task_hex.clone()],
        "trust-3.b64",
    );
    cluster.ctl(&[
        "trust",
        "publish",
        cluster.path("trust-3.b64").to_str().unwrap(),
    ]);
    update_trust_everywhere(&cluster, "n1");

    // A compromised control plane sends an older document, signed by the real root.
    sign(
        &cluster,
        2,
        "root.key",
        None,
        vec![task_hex.clone()],
        "trust-2.b64",
    );
    let older = offline::read_trust(&cluster.path("trust-2.b64")).unwrap();
    let downgrade = TaskAction::UpdateTrust(UpdateTrust { document: older });
    let id = cluster.inject(
        "n1",
        &cluster.task_body("n1", &downgrade),
        &cluster.task_key(),
    );
    assert_eq!(
        cluster.wait_status(&id, "rejected").reject_code.as_deref(),
        Some("trust_downgrade")
    );

    // ... or a newer one it signed itself with the task key.
    std::fs::copy(cluster.path("task.key"), cluster.path("task-as-root.key")).unwrap();
    sign(
        &cluster,
        9,
        "task-as-root.key",
        None,
        vec![task_hex],
        "forged.b64",
    );
    let forged = offline::read_trust(&cluster.path("forged.b64")).unwrap();
    let forgery = TaskAction::UpdateTrust(UpdateTrust { document: forged });
    let id = cluster.inject(
        "n1",
        &cluster.task_body("n1", &forgery),
        &cluster.task_key(),
    );
    assert_eq!(
        cluster.wait_status(&id, "rejected").reject_code.as_deref(),
        Some("trust_not_root_signed")
    );
}

#[test]
fn root_rotation_reaches_nodes() {
    let mut cluster = cluster_with_strict_node();
    offline::create_key(&cluster.path("root-2.key")).unwrap();
    let task_hex = format!("{},from=-1h", public_hex(&cluster, "task.key"));

    sign(
        &cluster,
        2,
        "root.key",
        Some("root-2.key"),
        vec![task_hex.clone()],
        "rotation.b64",
    );
    // Without the new root's own signature the rotation is refused.
    let mut half = offline::read_trust(&cluster.path("rotation.b64")).unwrap();
    let new_root_id = offline::read_key(&cluster.path("root-2.key"))
        .unwrap()
        .id()
        .clone();
    half.signatures
        .retain(|signature| signature.key_id != new_root_id);
    let text = base64::engine::general_purpose::STANDARD.encode(half.encode().unwrap());
    std::fs::write(cluster.path("half.b64"), text).unwrap();
    let (code, _, stderr) = cluster.ctl(&[
        "trust",
        "publish",
        cluster.path("half.b64").to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("sign it with both the old and the new root key"),
        "{stderr}"
    );

    let (code, stdout, stderr) = cluster.ctl(&[
        "trust",
        "publish",
        cluster.path("rotation.b64").to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    update_trust_everywhere(&cluster, "n1");

    // After the rotation the old root is powerless and the new one signs alone.
    sign(
        &cluster,
        3,
        "root.key",
        None,
        vec![task_hex.clone()],
        "old-root.b64",
    );
    let (code, _, stderr) = cluster.ctl(&[
        "trust",
        "publish",
        cluster.path("old-root.b64").to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    sign(
        &cluster,
        3,
        "root-2.key",
        None,
        vec![task_hex],
        "trust-3.b64",
    );
    let (code, _, stderr) = cluster.ctl(&[
        "trust",
        "publish",
        cluster.path("trust-3.b64").to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    update_trust_everywhere(&cluster, "n1");

    // The Warden keeps the rotated trust across a restart, whatever its bootstrap file says.
    cluster.kill_warden("n1");
    cluster.start_warden("n1", &[]);
    let task = &cluster.issue(Some("n1"), ActionRequest::UpdateTrust {})[0];
    let done = cluster.wait_status(&task.id, "rejected");
    assert_eq!(
        done.reject_code.as_deref(),
        Some("trust_downgrade"),
        "version 3 is already in place"
    );
}

#[test]
fn replay_rejected_after_dedup_window() {
    let cluster = {
        let mut cluster = Cluster::start_with(&["--duplicate-window-secs", "1"]);
        cluster.add_node("n1");
        cluster.start_warden("n1", &[]);
        cluster
    };
    let task = &cluster.issue(Some("n1"), ActionRequest::CollectDiagnostics {})[0];
    cluster.wait_status(&task.id, "succeeded");
    std::thread::sleep(Duration::from_secs(2));

    // Stored again with the same message id, after the broker forgot it.
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(cluster.signed_task(&task.id))
        .unwrap();
    cluster.publish_task_bytes_with_id("n1", bytes, &task.id);
    let recorded = cluster.wait_history_code(&task.id, "replayed");
    assert_eq!(recorded.status, "succeeded");
    assert_eq!(count(&cluster.warden_log("n1"), "executing task"), 1);
}

#[test]
fn unsupported_kind_rejected_by_node() {
    let mut cluster = Cluster::start();
    cluster.add_node("n1");
    cluster.start_warden("n1", &[]);
    // Access rules are in the vocabulary, but this Warden cannot apply them yet.
    let task = &cluster.issue(
        Some("n1"),
        ActionRequest::ApplyAccessRules {
            version: 1,
            rules: Vec::new(),
        },
    )[0];
    let done = cluster.wait_status(&task.id, "rejected");
    assert_eq!(done.reject_code.as_deref(), Some("unsupported"));

    // A component task is supported, but fails on a node that does not define the component.
    let task = &cluster.issue(
        Some("n1"),
        ActionRequest::StartComponent {
            component: warden_bus::messages::Component::Iggy,
        },
    )[0];
    let done = cluster.wait_status(&task.id, "failed");
    let reason = done.reason.unwrap_or_default();
    assert!(reason.contains("add [components.iggy]"), "{reason}");
}

#[test]
fn approval_required_for_access_rules() {
    let mut cluster = Cluster::start();
    let approver = offline::create_key(&cluster.path("approval.key")).unwrap();
    let (code, _, stderr) = cluster.ctl(&[
        "deployment",
        "create",
        "guarded",
        "--approval-key",
        &approver.public_key().to_hex(),
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let bootstrap = cluster.path("g1.toml");
    let state = cluster.path("g1");
    let (code, _, stderr) = cluster.ctl(&[
        "node",
        "add",
        "g1",
        "--deployment",
        "guarded",
        "--bootstrap-out",
        bootstrap.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--expect-root-key",
        &cluster.root_key().public_key().to_hex(),
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    cluster.start_warden("g1", &[]);

    // The control plane holds the task until the customer approves it.
    let (code, stdout, stderr) = cluster.ctl(&[
        "-o",
        "json",
        "task",
        "issue",
        "--deployment",
        "guarded",
        "--node",
        "g1",
        "apply-access-rules",
        "--version",
        "1",
        "--rule",
        "10.0.0.0/8=tcp",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let issued: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let id = issued["tasks"][0]["id"].as_str().unwrap().to_owned();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(cluster.task(&id).status, "awaiting_approval");
    assert_eq!(
        count(&cluster.warden_log("g1"), &id),
        0,
        "an unapproved task must not reach the node"
    );

    // A signature by another key is refused; the approval key's is accepted and the node then
    // checks the task, which passes every check but needs a capability not built yet.
    let (code, _, stderr) = cluster.ctl(&[
        "task",
        "approve",
        &id,
        "--approval-key",
        cluster.path("task.key").to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("approval key"), "{stderr}");
    let (code, _, stderr) = cluster.ctl(&[
        "task",
        "approve",
        &id,
        "--approval-key",
        cluster.path("approval.key").to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let done = cluster.wait_status(&id, "rejected");
    assert_eq!(done.reject_code.as_deref(), Some("unsupported"));

    // The same task without approval, put on the wire by a compromised control plane.
    let rules = TaskAction::ApplyAccessRules(AccessRules {
        version: 2,
        rules: vec![AccessRule {
            cidr: "0.0.0.0/0".into(),
            protocol: Protocol::Tcp,
            expires_at: None,
        }],
    });
    let mut body = cluster.task_body("g1", &rules);
    body.deployment = warden_bus::DeploymentId::new("guarded").unwrap();
    let id = cluster.inject_for("guarded", "g1", &body, &cluster.task_key());
    assert_eq!(
        cluster.wait_status(&id, "rejected").reject_code.as_deref(),
        Some("approval_missing")
    );
}
