//! Attacks on the JetStream storage size of `wardenctl broker init`, on the artifact cache
//! directory check, and on the enrollment credential of a bootstrap file.
//! Each test tries to get past one check and must fail to.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use support::probe::Probe;
use support::{Cluster, DEPLOYMENT};
use warden_bus::transport::nats::{NatsConnectConfig, NatsCredentials};
use warden_control_plane::broker::Broker;
use warden_control_plane::releases::prepare_cache_dir;
use warden_control_plane::views::{AddNode, AddedNode};
use warden_testkit::{nats_server_binary, workspace_binary};

/// How long a check waits for the server's permission violation.
/// How long a check waits to be sure that a rejected message was not delivered.
const DELIVERY_WAIT: Duration = Duration::from_millis(300);
/// An unprivileged uid: `nobody` on Debian-like systems.
const OTHER_UID: u32 = 65_534;

fn broker_init(broker_dir: &Path, size: &str) -> Output {
    Command::new(workspace_binary("wardenctl"))
        .args(["broker", "init", "--dir"])
        .arg(broker_dir)
        .args(["--host", "127.0.0.1", "--client-port", "4222"])
        .args(["--jetstream-storage", size])
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Sizes that are not a whole number of bytes or binary units are rejected, and the message
/// names the value and shows a valid one.
#[test]
fn odd_storage_sizes_rejected() {
    for size in [
        "0x10",
        "1_000",
        "1e9",
        "+1GiB",
        "1.0GiB",
        "1,5GiB",
        "\u{663}GiB",
        "16GiB GiB",
        "16 G i B",
        "16EiB",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let broker_dir = dir.path().join("broker");
        let output = broker_init(&broker_dir, size);
        let stderr = text(&output.stderr);
        assert!(!output.status.success(), "{size:?} was accepted");
        assert!(stderr.contains(&format!("{size:?}")), "{size:?}: {stderr}");
        assert!(stderr.contains("such as 16GiB"), "{size:?}: {stderr}");
        assert!(!broker_dir.exists(), "{size:?}: a directory was written");
    }
}

/// nats-server 2.15.1 reads `max_file_store` as a signed 64-bit integer and rejects a larger one
/// ("integer … is out of the range"), so `broker init` must reject such a size before it writes
/// a set-up that the broker cannot start with.
#[test]
fn storage_beyond_nats_range_rejected() {
    for size in ["9223372036854775808", "18446744073709551615"] {
        let dir = tempfile::tempdir().unwrap();
        let broker_dir = dir.path().join("broker");
        let output = broker_init(&broker_dir, size);
        if output.status.success() {
            let check = Command::new(nats_server_binary())
                .arg("-t")
                .arg("-c")
                .arg(broker_dir.join("nats.conf"))
                .output()
                .unwrap();
            assert!(
                check.status.success(),
                "{size}: broker init wrote a nats.conf that nats-server rejects: {}{}",
                text(&check.stdout),
                text(&check.stderr)
            );
        }
        let stderr = text(&output.stderr);
        assert!(stderr.contains(size), "{size}: {stderr}");
    }
}

/// The control plane reads the storage record at every start and puts its number into every
/// re-signed account JWT. A number above i64::MAX is clamped to i64::MAX in the JWT, so it no
/// longer matches nats.conf, and loading such a record must fail.
#[test]
fn storage_record_beyond_nats_range_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let broker_dir = dir.path().join("broker");
    let output = broker_init(&broker_dir, "1GiB");
    assert!(output.status.success(), "{}", text(&output.stderr));
    std::fs::write(
        broker_dir.join("jetstream-storage.json"),
        r#"{"file_bytes": 18446744073709551615, "memory_bytes": 268435456}"#,
    )
    .unwrap();
    let error = Broker::load(&broker_dir)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(error.contains("jetstream-storage.json"), "{error}");
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A cache directory whose parent another user owns or may write to is rejected. That user
/// could rename the checked directory away after the check and put a link in its place. The
/// replica would then create, remove and rename its `<sha>.upload-*` and `<sha>.fill-*` files
/// in the directory the link names, because `O_NOFOLLOW` guards only the last component.
#[test]
fn cache_dir_under_writable_parent_rejected() {
    if !is_root() {
        eprintln!("skipped: needs root to give the parent directory to another user");
        return;
    }
    let root = tempfile::tempdir().unwrap();

    let owned_parent = root.path().join("owned-by-other");
    std::fs::create_dir(&owned_parent).unwrap();
    std::os::unix::fs::chown(&owned_parent, Some(OTHER_UID), Some(OTHER_UID)).unwrap();

    let open_parent = root.path().join("mode-777");
    std::fs::create_dir(&open_parent).unwrap();
    std::fs::set_permissions(&open_parent, std::fs::Permissions::from_mode(0o777)).unwrap();

    for parent in [&owned_parent, &open_parent] {
        let cache = parent.join("cache");
        let result = prepare_cache_dir(&cache);
        assert!(
            result.is_err(),
            "{}: accepted, though another user may rename it",
            cache.display()
        );
    }
}

/// A POSIX ACL that lets another user write shows in the group bits of the mode (its mask),
/// so the mode check also catches it.
#[test]
fn cache_dir_with_write_acl_rejected() {
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("cache");
    prepare_cache_dir(&cache).unwrap();

    // system.posix_acl_access, version 2: user::rwx, user:65534:rwx, group::---, mask::rwx,
    // other::---. Entries are (tag u16, permissions u16, id u32), little-endian.
    let script = format!(
        "import os, struct, sys\n\
         u = 0xffffffff\n\
         entries = [(1, 7, u), (2, 7, {OTHER_UID}), (4, 0, u), (0x10, 7, u), (0x20, 0, u)]\n\
         blob = struct.pack('<I', 2) + b''.join(struct.pack('<HHI', *e) for e in entries)\n\
         os.setxattr(sys.argv[1], 'system.posix_acl_access', blob)\n"
    );
    let set = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&cache)
        .output();
    match set {
        Ok(output) if output.status.success() => {}
        other => {
            eprintln!("skipped: cannot set an ACL here ({other:?})");
            return;
        }
    }

    let error = prepare_cache_dir(&cache).unwrap_err().to_string();
    assert!(error.contains("writable by other users"), "{error}");
    assert!(error.contains(&cache.display().to_string()), "{error}");
}

/// Connects with the enrollment credential of one bootstrap file.
async fn enrollment_probe(
    cluster: &Cluster,
    bootstrap: &warden::bootstrap::BootstrapFile,
) -> Probe {
    let credentials = NatsCredentials::new(
        bootstrap.enrollment_jwt.clone().unwrap(),
        bootstrap.enrollment_seed.as_deref().unwrap(),
    )
    .unwrap();
    let ca_file = cluster.path("enrollment-ca.pem");
    std::fs::write(&ca_file, bootstrap.ca_certificate.as_deref().unwrap()).unwrap();
    let config = NatsConnectConfig::new(vec![cluster.nats_url()], "enrollment-probe")
        .with_credentials(credentials)
        .with_ca_file(ca_file);
    Probe::connect(&config).await
}

/// Subscribes the observer to `filter` and waits until the server has registered it.
async fn observe(observer: &async_nats::Client, filter: &str) -> async_nats::Subscriber {
    let subscription = observer.subscribe(filter.to_owned()).await.unwrap();
    let sync_subject = observer.new_inbox();
    let mut sync = observer.subscribe(sync_subject.clone()).await.unwrap();
    observer
        .publish(sync_subject, Bytes::from_static(b"sync"))
        .await
        .unwrap();
    observer.flush().await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), sync.next()).await;
    assert!(
        matches!(echoed, Ok(Some(_))),
        "the server did not confirm the observer's subscription to {filter}"
    );
    subscription
}

/// The enrollment credential of node n1, taken from a real bootstrap file, may send requests
/// on n1's enroll subject only: not on a longer subject, another verb, another node or another
/// deployment, nor on the JetStream and key-value API. It may subscribe to its own inbox only.
#[test]
fn enrollment_credential_rejected_elsewhere() {
    let cluster = Cluster::start();
    let text = std::fs::read_to_string(cluster.add_node("n1")).unwrap();
    let bootstrap: warden::bootstrap::BootstrapFile = toml::from_str(&text).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    runtime.block_on(async {
        let broker = Broker::load(&cluster.path("broker")).unwrap();
        let user = broker
            .mint_control_plane(support::now_secs(), &mut rand::rngs::OsRng)
            .unwrap();
        let observer_config = NatsConnectConfig::new(vec![cluster.nats_url()], "observer")
            .with_credentials(user.credentials().unwrap())
            .with_ca_file(broker.ca_file());
        let observer = observer_config
            .connect_options()
            .unwrap()
            .connect(observer_config.servers.as_slice())
            .await
            .unwrap();
        let mut probe = enrollment_probe(&cluster, &bootstrap).await;

        for subject in [
            format!("ld.{DEPLOYMENT}.n1.rpc.enroll.extra"),
            format!("ld.{DEPLOYMENT}.n1.rpc.renew"),
            format!("ld.{DEPLOYMENT}.n1.rpc.fetch"),
            format!("ld.{DEPLOYMENT}.n1.telemetry.report"),
            format!("ld.{DEPLOYMENT}.n1.tasks"),
            format!("ld.{DEPLOYMENT}.n2.rpc.enroll"),
            "ld.other.n1.rpc.enroll".to_owned(),
            "$JS.API.INFO".to_owned(),
            "$KV.warden_nodes.x".to_owned(),
            "_INBOX_ENROLL.UOTHER.x".to_owned(),
        ] {
            let mut watch = observe(&observer, &subject).await;
            probe
                .client
                .publish(subject.clone(), Bytes::from_static(b"attack"))
                .await
                .unwrap();
            probe.client.flush().await.unwrap();
            probe.expect_violation("publish on", &subject).await;
            let received = tokio::time::timeout(DELIVERY_WAIT, watch.next()).await;
            assert!(
                !matches!(received, Ok(Some(_))),
                "publish on {subject}: the message was delivered"
            );
        }

        for filter in [">", "ld.>", "_INBOX_ENROLL.>", "_INBOX.>"] {
            let _subscription = probe.client.subscribe(filter.to_owned()).await.unwrap();
            probe.client.flush().await.unwrap();
            probe.expect_violation("subscribe to", filter).await;
        }
    });
}

/// Node ids go into subjects and permissions, so the API must reject NATS wildcards and token
/// separators in them.
#[test]
fn node_id_with_subject_characters_rejected() {
    let cluster = Cluster::start();
    for id in ["n*", "n.x", ">", "n>", "*"] {
        let body = AddNode {
            id: id.into(),
            state_dir: cluster.path("wild").to_string_lossy().into_owned(),
            heartbeat_interval_secs: Some(1),
            tls_names: Vec::new(),
        };
        let result: Result<AddedNode, _> = cluster
            .client()
            .post(&format!("/v1/deployments/{DEPLOYMENT}/nodes"), &body);
        let error = result.map(|_| ()).unwrap_err().to_string();
        assert!(error.contains(&format!("{id:?}")), "{id}: {error}");
    }
}
