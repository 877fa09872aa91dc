//! The broker enforces node identity: each Warden connects with its own short-lived JWT over
//! TLS or WebSocket-TLS, renews it before it expires, loses it when the operator revokes the
//! node, and no secret of the set-up shows in any log.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use support::{count, Cluster, DEPLOYMENT};
use warden_testkit::wait_until;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn wait_enrolled(cluster: &Cluster, node: &str) {
    wait_until(
        &format!("{node} to enroll"),
        Duration::from_secs(15),
        || cluster.warden_log(node).contains("node credential stored"),
    );
}

#[test]
fn warden_works_over_websocket_tls() {
    let mut cluster = Cluster::start();
    let wss = cluster.nats.wss_url();
    cluster.add_node_with("n1", |bootstrap| bootstrap.nats_url = wss.clone());
    cluster.start_warden("n1", &[]);
    let task = &cluster.apply_config(Some("n1"), 1)[0];
    cluster.wait_status(&task.id, "succeeded");
    assert!(
        cluster.warden_log("n1").contains(&wss),
        "the Warden should name the WebSocket URL it connected to:\n{}",
        cluster.warden_log("n1")
    );
}

#[test]
fn plaintext_url_refused_when_bootstrap_has_ca() {
    let mut cluster = Cluster::start();
    let plain = cluster.nats.url();
    cluster.add_node_with("n1", |bootstrap| bootstrap.nats_url = plain.clone());
    cluster.start_warden("n1", &[]);
    let code = cluster.warden("n1").wait_exit(Duration::from_secs(15));
    assert_eq!(code, Some(1), "{}", cluster.warden_log("n1"));
    let log = cluster.warden_log("n1");
    assert!(log.contains(&plain) && log.contains("tls://"), "{log}");
}

#[test]
fn credential_renewed_before_it_expires() {
    // The shortest lifetime the control plane accepts; the Warden renews at 50 to 70 % of it.
    let mut cluster = Cluster::start_with(&["--node-jwt-ttl-secs", "10"]);
    cluster.add_node("n1");
    cluster.start_warden("n1", &[]);
    wait_enrolled(&cluster, "n1");

    // Past two lifetimes of the first JWT the node still takes tasks.
    wait_until("two renewals", Duration::from_secs(30), || {
        count(&cluster.warden_log("n1"), "node credential renewed") >= 2
    });
    let task = &cluster.apply_config(Some("n1"), 1)[0];
    cluster.wait_status(&task.id, "succeeded");
    let log = cluster.warden_log("n1");
    assert_eq!(count(&log, "refused the credentials"), 0, "{log}");
    assert!(cluster.warden("n1").is_running());
}

#[test]
fn revoked_node_disconnected_and_refused() {
    let mut cluster = Cluster::start();
    cluster.add_node("n1");
    cluster.start_warden("n1", &[]);
    let first = &cluster.apply_config(Some("n1"), 1)[0];
    cluster.wait_status(&first.id, "succeeded");

    let (code, stdout, stderr) = cluster.ctl(&["node", "revoke", "n1", "--deployment", DEPLOYMENT]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("revoked"), "{stdout}");

    // The broker closes the live connection and refuses every reconnection.
    wait_until(
        "the broker to refuse the revoked node",
        Duration::from_secs(15),
        || {
            cluster
                .warden_log("n1")
                .to_lowercase()
                .contains("authorization violation")
        },
    );
    // The Warden says why, in its own words, not only in the client library's.
    wait_until(
        "the Warden to log the refusal with its fix",
        Duration::from_secs(15),
        || cluster.warden_log("n1").contains("wardenctl node reenroll"),
    );
    let second = &cluster.apply_config(Some("n1"), 2)[0];
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(cluster.task(&second.id).status, "pending");

    // A restart with the stored credential gets nowhere either.
    cluster.kill_warden("n1");
    cluster.start_warden("n1", &[]);
    wait_until(
        "the restarted Warden to be refused",
        Duration::from_secs(15),
        || count(&cluster.warden_log("n1"), "refused the credentials") >= 1,
    );
    assert_eq!(cluster.task(&second.id).status, "pending");
    assert!(
        cluster.nats.log().contains("authentication error"),
        "{}",
        cluster.nats.log()
    );

    // Revoking twice is harmless; re-enrolling brings the node back.
    let (code, _, stderr) = cluster.ctl(&["node", "revoke", "n1", "--deployment", DEPLOYMENT]);
    assert_eq!(code, Some(0), "{stderr}");
    cluster.kill_warden("n1");
    let out = cluster.path("n1.toml");
    let state = cluster.path("n1-new");
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
    cluster.start_warden("n1", &[]);
    cluster.wait_status(&second.id, "succeeded");
}

#[test]
fn secrets_stay_private_and_out_of_logs() {
    let mut cluster = Cluster::start_with(&["--node-jwt-ttl-secs", "10"]);
    let bootstrap_path = cluster.add_node("n1");
    let bootstrap_text = std::fs::read_to_string(&bootstrap_path).unwrap();
    let bootstrap: warden::bootstrap::BootstrapFile = toml::from_str(&bootstrap_text).unwrap();
    cluster.start_warden("n1", &[]);
    let task = &cluster.apply_config(Some("n1"), 1)[0];
    cluster.wait_status(&task.id, "succeeded");
    wait_until("a renewal", Duration::from_secs(30), || {
        cluster.warden_log("n1").contains("node credential renewed")
    });
    let (code, _, stderr) = cluster.ctl(&["node", "revoke", "n1", "--deployment", DEPLOYMENT]);
    assert_eq!(code, Some(0), "{stderr}");
    wait_until("the refusal", Duration::from_secs(15), || {
        cluster
            .warden_log("n1")
            .to_lowercase()
            .contains("authorization violation")
    });

    // Files that hold secrets are readable by their owner only.
    let state = cluster.path("n1");
    let broker = cluster.path("broker");
    assert_eq!(mode(&state) & 0o077, 0, "state directory");
    assert_eq!(mode(&broker) & 0o077, 0, "broker directory");
    let mut secret_files = vec![
        state.join(warden::identity::NODE_KEY_FILE),
        state.join(warden::credentials::CREDENTIAL_FILE),
        cluster.path("admin-key"),
    ];
    for entry in std::fs::read_dir(&broker).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".seed") || name.ends_with("-key.pem") {
            secret_files.push(path);
        }
    }
    assert!(secret_files.len() >= 8, "{secret_files:?}");
    for path in &secret_files {
        assert_eq!(mode(path), 0o600, "{}", path.display());
    }

    // No secret, and no JWT that proves an identity, appears in any log.
    let (node_key, _) = warden::identity::load_or_create(&state, &mut rand::rngs::OsRng).unwrap();
    let credential = warden::credentials::load(&state).unwrap().unwrap();
    let mut secrets = vec![
        ("node key", hex::encode(node_key.seed())),
        (
            "node nkey seed",
            warden::credentials::nkey_seed(&node_key).unwrap(),
        ),
        ("node JWT", credential.jwt),
        (
            "enrollment token",
            bootstrap.enrollment_token.clone().unwrap(),
        ),
        (
            "enrollment seed",
            bootstrap.enrollment_seed.clone().unwrap(),
        ),
        ("enrollment JWT", bootstrap.enrollment_jwt.unwrap()),
        ("admin key", cluster.api_key.clone()),
    ];
    for path in &secret_files {
        let text = std::fs::read_to_string(path).unwrap();
        if path
            .extension()
            .is_some_and(|extension| extension == "seed")
        {
            secrets.push(("account or operator seed", text.trim().to_owned()));
        } else if path.extension().is_some_and(|extension| extension == "pem") {
            // The first line of the base64 body holds the private key bytes.
            let body = text.lines().nth(1).unwrap().to_owned();
            secrets.push(("CA or server private key", body));
        }
    }
    let logs = [
        ("control plane", cluster.control_plane_log()),
        ("warden", cluster.warden_log("n1")),
        ("nats-server", cluster.nats.log()),
    ];
    for (source, log) in &logs {
        assert!(!log.is_empty(), "the {source} log is empty");
        for (what, secret) in &secrets {
            assert!(secret.len() >= 20, "{what} is too short to search for");
            // A JWT is searched by its signature, the part nobody else can produce.
            let needle = secret.rsplit('.').next().unwrap();
            assert!(
                !log.contains(needle),
                "the {source} log contains the {what}"
            );
        }
    }
}

/// A node's credentials may publish on its own rpc subjects, and the control plane, which may
/// publish anywhere in the account, answers there. The reply subject is the sender's choice, so
/// a node could aim the answer at the JetStream API or the buckets to purge or overwrite them.
/// The control plane must answer only in the sender's own inbox.
#[test]
fn reply_subject_cannot_aim_the_control_plane() {
    let mut cluster = Cluster::start();
    for node in ["n1", "n2"] {
        cluster.add_node(node);
        cluster.start_warden(node, &[]);
    }
    let tasks = cluster.apply_config(None, 1);
    for task in &tasks {
        cluster.wait_status(&task.id, "succeeded");
    }

    let state = cluster.path("n1");
    let credential = warden::credentials::load(&state).unwrap().unwrap();
    let mut rng = rand::rngs::OsRng;
    let (node_key, generated) = warden::identity::load_or_create(&state, &mut rng).unwrap();
    assert!(!generated, "n1 should have its key already");
    let deployment = warden_bus::DeploymentId::new(DEPLOYMENT).unwrap();
    let n1 = warden_bus::NodeId::new("n1").unwrap();
    let aimed_at = [
        "$JS.API.STREAM.PURGE.KV_warden_nodes".to_owned(),
        "$JS.API.STREAM.PURGE.KV_warden_tasks".to_owned(),
        "$JS.API.STREAM.PURGE.WARDEN_TASKS".to_owned(),
        "$KV.warden_control.revocations".to_owned(),
        "$KV.warden_control.admin_api_key_sha256".to_owned(),
        format!("$KV.warden_nodes.{DEPLOYMENT}.n2"),
        format!("ld.{DEPLOYMENT}.n2.tasks"),
        format!("_INBOX.{DEPLOYMENT}.n2.stolen"),
        "_INBOX_ENROLL.UFAKE.stolen".to_owned(),
    ];
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let bus = warden::credentials::connect_node(
            &cluster.nats_url(),
            &state.join("ca.pem"),
            &credential,
            &node_key,
            &deployment,
            &n1,
        )
        .await
        .unwrap();
        let client = bus.client();
        for reply in &aimed_at {
            for verb in ["renew", "enroll"] {
                client
                    .publish_with_reply(
                        format!("ld.{DEPLOYMENT}.n1.rpc.{verb}"),
                        reply.clone(),
                        bytes::Bytes::from_static(b"not a request"),
                    )
                    .await
                    .unwrap();
            }
        }
        client.flush().await.unwrap();
    });
    let dropped = |cluster: &Cluster| {
        count(
            &cluster.control_plane_log(),
            "reply subject is not the sender's inbox",
        )
    };
    // Every pair is dropped but one: an enrollment request may be answered in an enrollment
    // inbox, where only a client waiting for that exact reply subject would read it. The
    // control plane writes only the first few warnings about one node's messages.
    let expected = (2 * aimed_at.len() - 1).min(
        usize::try_from(warden_control_plane::core::log_limit::LINES_PER_WINDOW_DEFAULT).unwrap(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while dropped(&cluster) < expected && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }

    // Nothing was purged or overwritten: both nodes, their tasks and the revocation list are
    // intact, n2 still takes tasks, and a restarted control plane finds its admin key.
    let nodes = cluster.nodes();
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    for task in &tasks {
        assert_eq!(cluster.task(&task.id).status, "succeeded");
    }
    let second = &cluster.apply_config(Some("n2"), 2)[0];
    cluster.wait_status(&second.id, "succeeded");
    assert_eq!(
        dropped(&cluster),
        expected,
        "{}",
        cluster.control_plane_log()
    );
    cluster.kill_control_plane();
    cluster.start_control_plane(&[]);
    let third = &cluster.apply_config(Some("n1"), 3)[0];
    cluster.wait_status(&third.id, "succeeded");
    assert_eq!(
        count(&cluster.warden_log("n1"), "malformed")
            + count(&cluster.warden_log("n2"), "malformed"),
        0,
        "an aimed reply reached a node's task subject"
    );
}

/// The enrollment credential in a bootstrap file may ask to enroll its own node only, so a
/// leaked file cannot send enrollment requests for the other nodes of the account. The broker
/// enforcing such a permission is tested in `broker_permissions.rs`.
#[test]
fn enrollment_credential_names_only_its_node() {
    use base64::Engine;

    let mut cluster = Cluster::start();
    for node in ["n1", "n2"] {
        let text = std::fs::read_to_string(cluster.add_node(node)).unwrap();
        let bootstrap: warden::bootstrap::BootstrapFile = toml::from_str(&text).unwrap();
        let jwt = bootstrap.enrollment_jwt.unwrap();
        let claims = jwt.split('.').nth(1).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(claims)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            claims["nats"]["pub"]["allow"],
            serde_json::json!([format!("ld.{DEPLOYMENT}.{node}.rpc.enroll")]),
            "{claims}"
        );
    }
    // The restricted credential is still enough to enroll.
    cluster.start_warden("n2", &[]);
    wait_enrolled(&cluster, "n2");
}
