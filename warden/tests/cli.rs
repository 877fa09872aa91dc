//! The warden binary's start-up: bad input gets a clear error, a missing broker a retry.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::Command;
use std::time::Duration;

use rand::SeedableRng;
use warden::bootstrap::{BootstrapFile, TrustedKey};
use warden_bus::SigningKey;
use warden_testkit::{free_port, listening_sockets, wait_until, Process};

fn bootstrap(dir: &std::path::Path, nats_url: &str) -> BootstrapFile {
    let key = SigningKey::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(1)).public_key();
    BootstrapFile {
        deployment: "prod".into(),
        node: "n1".into(),
        nats_url: nats_url.into(),
        state_dir: dir.join("state"),
        iggy_config_path: None,
        heartbeat_interval_secs: None,
        clock_skew_secs: None,
        trusted_task_keys: vec![TrustedKey {
            key_id: key.id().to_string(),
            public_key: key.to_hex(),
        }],
    }
}

fn run_to_exit(path: &std::path::Path) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_warden"))
        .arg("--bootstrap")
        .arg(path)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn missing_bootstrap_file_named() {
    let (code, stderr) = run_to_exit(std::path::Path::new("/nonexistent/bootstrap.toml"));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("/nonexistent/bootstrap.toml"), "{stderr}");
    assert!(stderr.contains("--bootstrap"), "{stderr}");
}

#[test]
fn invalid_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut file = bootstrap(dir.path(), "nats://127.0.0.1:1");
    file.node = "Node.1".into();
    let path = dir.path().join("bootstrap.toml");
    std::fs::write(&path, toml::to_string(&file).unwrap()).unwrap();
    let (code, stderr) = run_to_exit(&path);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("field node is invalid"), "{stderr}");
    assert!(stderr.contains("\"Node.1\""), "{stderr}");
}

#[test]
fn damaged_store_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = bootstrap(dir.path(), "nats://127.0.0.1:1");
    let path = dir.path().join("bootstrap.toml");
    std::fs::write(&path, toml::to_string(&file).unwrap()).unwrap();
    {
        let db = sled::open(file.state_dir.join("db")).unwrap();
        db.open_tree("tasks")
            .unwrap()
            .insert(b"broken", b"\x01not a record".to_vec())
            .unwrap();
        db.flush().unwrap();
    }
    let (code, stderr) = run_to_exit(&path);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("record broken"), "{stderr}");
}

#[test]
fn unreachable_broker_retried_without_listening() {
    let dir = tempfile::tempdir().unwrap();
    let file = bootstrap(dir.path(), &format!("nats://127.0.0.1:{}", free_port()));
    let path = dir.path().join("bootstrap.toml");
    std::fs::write(&path, toml::to_string(&file).unwrap()).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_warden"));
    command.arg("--bootstrap").arg(&path);
    let mut warden = Process::spawn("warden", command, &dir.path().join("warden.log"));
    wait_until("two connection retries", Duration::from_secs(20), || {
        warden
            .log()
            .matches("failed to connect to NATS; retrying")
            .count()
            >= 2
    });
    assert!(warden.is_running());
    assert_eq!(
        listening_sockets(warden.id().unwrap()),
        Vec::<String>::new()
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file.state_dir)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700, "the state directory must be private");
}
