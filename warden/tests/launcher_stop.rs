//! The launcher's stop: an agent that does not exit after the forwarded SIGTERM is killed once
//! the launcher's stop timeout has passed. One test in its own binary, since it copies an
//! executable and then runs it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use support::bootstrap::bootstrap_file;
use warden::core::self_upgrade::ReleaseRecord;
use warden_testkit::{free_port, wait_until, workspace_binary, Process};

#[test]
fn agent_ignoring_sigterm_killed_after_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let file = bootstrap_file(dir.path(), &format!("nats://127.0.0.1:{}", free_port()));
    let path = dir.path().join("bootstrap.toml");
    std::fs::write(&path, toml::to_string(&file).unwrap()).unwrap();

    // The active release is `fake-component`, which ignores the agent's arguments and runs
    // until a signal ends it. It inherits the launcher's blocked SIGTERM and, unlike the
    // Warden agent, never unblocks it, so the forwarded SIGTERM stays pending.
    let releases = file.state_dir.join("components/warden/releases/1-test");
    std::fs::create_dir_all(&releases).unwrap();
    let agent = releases.join("warden");
    std::fs::copy(workspace_binary("fake-component"), &agent).unwrap();
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
    warden::self_upgrade::store(
        &warden::self_upgrade::record_path(&file.state_dir),
        &ReleaseRecord::new(agent),
    )
    .unwrap();

    let mut command = Command::new(env!("CARGO_BIN_EXE_warden"));
    command
        .args(["launch", "--stop-timeout-secs", "2", "--bootstrap"])
        .arg(&path);
    let mut launcher = Process::spawn("launcher", command, &dir.path().join("launcher.log"));
    wait_until("the agent to start", Duration::from_secs(20), || {
        launcher.log().contains("agent started")
    });

    let pid = nix::unistd::Pid::from_raw(i32::try_from(launcher.id().unwrap()).unwrap());
    let sent = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    launcher.wait_exit(Duration::from_secs(20));
    let took = sent.elapsed();
    let log = launcher.log();
    assert!(
        log.contains("did not stop in time; sending SIGKILL"),
        "{log}"
    );
    assert!(
        took >= Duration::from_secs(2),
        "stopped after {took:?}:\n{log}"
    );
}
