//! The broker set-up reserves JetStream storage from its own configuration, so the control
//! plane starts on a disk with little free space.
//!
//! nats-server offers JetStream 75 % of the free disk space of its store directory unless
//! `max_file_store` is set, and it enables JetStream for an account only if it can give the
//! account's whole reservation. A CI machine with less free disk than the reservation once
//! stopped every control-plane test with "jetstream unavailable".
//!
//! Each test mounts a 32 MiB tmpfs on the JetStream directory in a mount namespace of its own
//! (so it needs root and `unshare`), and reserves 1 GiB.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use warden_bus::transport::nats::{NatsBus, NatsConnectConfig};
use warden_control_plane::broker::{self, Broker, Listen, Storage};
use warden_control_plane::releases::{prepare_cache_dir, ReleaseStore};
use warden_testkit::{free_port, nats_server_binary, wait_until, Process};

fn now_secs() -> i64 {
    i64::try_from(warden_bus::Clock::now(&warden_bus::SystemClock).0 / 1000).unwrap()
}

/// Writes a broker set-up reserving 1 GiB, starts nats-server with its JetStream directory on
/// a 32 MiB tmpfs, and opens the release object store as the control plane does at start.
fn open_release_store_on_small_disk(edit_config: impl FnOnce(String) -> String) -> String {
    let dir = tempfile::tempdir().unwrap();
    let broker_dir = dir.path().join("broker");
    let listen = Listen {
        hosts: vec!["127.0.0.1".into()],
        client_port: free_port(),
        websocket_port: free_port(),
    };
    let storage = Storage {
        file_bytes: 1 << 30,
        ..Storage::default()
    };
    broker::init(
        &broker_dir,
        &listen,
        &storage,
        now_secs(),
        &mut rand::rngs::OsRng,
    )
    .unwrap();
    let config_path = broker_dir.join(broker::SERVER_CONFIG);
    let config = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(&config_path, edit_config(config)).unwrap();
    let jetstream_dir = broker_dir.join("jetstream");
    std::fs::create_dir_all(&jetstream_dir).unwrap();

    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o size=32m warden-test "$1" && exec "$2" -c "$3""#)
        .arg("sh")
        .arg(&jetstream_dir)
        .arg(nats_server_binary())
        .arg(&config_path);
    let log = dir.path().join("nats-server.log");
    let mut server = Process::spawn("nats-server", command, &log);
    let port = listen.client_port;
    wait_until("nats-server to listen", Duration::from_secs(10), || {
        assert!(
            server.is_running(),
            "nats-server exited; this test needs root and unshare to mount a tmpfs. Its log:\n{}",
            server.log()
        );
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(
        server.log().contains("Max Storage"),
        "nats-server did not start JetStream:\n{}",
        server.log()
    );

    let result = open_release_store(&broker_dir, port, &dir.path().join("cache"));
    drop(server);
    result
}

fn open_release_store(broker_dir: &Path, port: u16, cache: &Path) -> String {
    let broker = Broker::load(broker_dir).unwrap();
    let user = broker
        .mint_control_plane(now_secs(), &mut rand::rngs::OsRng)
        .unwrap();
    let config = NatsConnectConfig::new(vec![format!("tls://127.0.0.1:{port}")], "storage-test")
        .with_credentials(user.credentials().unwrap())
        .with_ca_file(broker.ca_file());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let bus = NatsBus::connect_with(&config).await.unwrap();
        let cache = prepare_cache_dir(cache).unwrap();
        match ReleaseStore::open(bus.client().clone(), cache).await {
            Ok(_) => "opened".to_owned(),
            Err(error) => error.to_string(),
        }
    })
}

#[test]
fn reservation_above_free_disk_still_starts_jetstream() {
    let outcome = open_release_store_on_small_disk(|config| {
        assert!(config.contains("max_file_store: 1073741824"), "{config}");
        config
    });
    assert_eq!(outcome, "opened");
}

/// The control: without `max_file_store` the same reservation fails on the same disk, so the
/// test above would catch a set-up that stopped writing it.
#[test]
fn without_max_file_store_small_disk_refuses_reservation() {
    let outcome = open_release_store_on_small_disk(|config| {
        let other_lines: Vec<&str> = config
            .lines()
            .filter(|line| !line.trim_start().starts_with("max_file_store"))
            .collect();
        other_lines.join("\n")
    });
    assert!(outcome.contains("jetstream unavailable"), "{outcome}");
}
