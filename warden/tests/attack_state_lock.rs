//! A second `warden launch` on a state directory that a running Warden holds. It stops on the
//! launcher's lock before it starts an agent, and nothing of the first Warden's state changes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::bootstrap::bootstrap_file;
use warden_testkit::{free_port, wait_until, Process};

fn launch(dir: &Path, path: &Path, log: &str) -> Process {
    let mut command = Command::new(env!("CARGO_BIN_EXE_warden"));
    command.arg("launch").arg("--bootstrap").arg(path);
    Process::spawn("launcher", command, &dir.join(log))
}

/// The release record names the binary the launcher runs and carries a self-upgrade trial. A
/// second launcher on the same state directory must stop before it touches the record: after
/// each exit of its agent it would rewrite it, and `on_agent_exit` fails a running trial.
#[test]
fn second_launcher_leaves_state_alone() {
    let dir = tempfile::tempdir().unwrap();
    let file = bootstrap_file(dir.path(), &format!("nats://127.0.0.1:{}", free_port()));
    let path = dir.path().join("bootstrap.toml");
    std::fs::write(&path, toml::to_string(&file).unwrap()).unwrap();
    let mut first = launch(dir.path(), &path, "first.log");
    wait_until(
        "the first Warden to try the broker",
        Duration::from_secs(20),
        || first.log().contains("failed to connect to NATS; retrying"),
    );
    let record = warden::self_upgrade::record_path(&file.state_dir);
    let record_before = std::fs::read(&record).ok();

    let mut second = launch(dir.path(), &path, "second.log");
    wait_until(
        "the second launcher to stop on the lock",
        Duration::from_secs(20),
        || !second.is_running(),
    );
    assert!(
        second.log().contains("another launcher is running"),
        "{}",
        second.log()
    );
    let record_after = std::fs::read(&record).ok();
    let second_log = second.log();
    let second_running = second.is_running();
    second.kill();
    eprintln!("second launcher log:\n{second_log}");

    assert!(first.is_running(), "{}", first.log());
    assert_eq!(
        record_after.as_deref().map(String::from_utf8_lossy),
        record_before.as_deref().map(String::from_utf8_lossy),
        "the second launcher changed {}",
        record.display()
    );
    assert!(
        !second_running,
        "the second launcher keeps restarting its agent:\n{second_log}"
    );
    first.kill();
}
