//! The warden binary's start-up: bad input gets a clear error, a missing broker a retry.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::process::Command;
use std::time::Duration;

use rand::SeedableRng;
use support::bootstrap::bootstrap_file;
use warden_bus::SigningKey;
use warden_testkit::{free_port, listening_sockets, wait_until, Process};

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
    let mut file = bootstrap_file(dir.path(), "nats://127.0.0.1:1");
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
    let file = bootstrap_file(dir.path(), "nats://127.0.0.1:1");
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
fn failing_firewall_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut file = bootstrap_file(dir.path(), "nats://127.0.0.1:1");
    // A stand-in for nft that refuses every script, as nft does without the privilege. A
    // script written here could fail with "text file busy" while other tests fork.
    file.access = Some(warden::access::AccessFile {
        nft: Some("/bin/false".into()),
        ..Default::default()
    });
    let path = dir.path().join("bootstrap.toml");
    std::fs::write(&path, toml::to_string(&file).unwrap()).unwrap();
    let (code, stderr) = run_to_exit(&path);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("cannot put the access rules in place"),
        "{stderr}"
    );
    assert!(stderr.contains("/bin/false failed"), "{stderr}");
}

#[test]
fn unreachable_broker_retried_without_listening() {
    let dir = tempfile::tempdir().unwrap();
    let file = bootstrap_file(dir.path(), &format!("nats://127.0.0.1:{}", free_port()));
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

#[test]
fn bootstrap_trust_from_another_root_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut file = bootstrap_file(dir.path(), "nats://127.0.0.1:1");
    // Pin a root that did not sign the document.
    file.root_key = SigningKey::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(9))
        .public_key()
        .to_hex();
    let path = dir.path().join("bootstrap.toml");
    std::fs::write(&path, toml::to_string(&file).unwrap()).unwrap();
    let (code, stderr) = run_to_exit(&path);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("trust document"), "{stderr}");
    assert!(
        stderr.contains("not signed by the current root key"),
        "{stderr}"
    );
}

/// Lists the children of `parent` from /proc.
fn children_of(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                // After the command name in brackets come the state and the parent pid.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    .and_then(|ppid| ppid.parse::<u32>().ok())
                    == Some(parent)
            })
        })
        .collect()
}

fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        signal,
    )
    .unwrap();
}

fn start_launcher(dir: &std::path::Path, log: &str) -> (Process, u32) {
    let file = bootstrap_file(dir, &format!("nats://127.0.0.1:{}", free_port()));
    let path = dir.join("bootstrap.toml");
    std::fs::write(&path, toml::to_string(&file).unwrap()).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_warden"));
    command.arg("launch").arg("--bootstrap").arg(&path);
    let launcher = Process::spawn("launcher", command, &dir.join(log));
    let pid = launcher.id().unwrap();
    wait_until(
        "the launcher to start its agent",
        Duration::from_secs(10),
        || children_of(pid).len() == 1,
    );
    (launcher, pid)
}

#[test]
fn launcher_restarts_crashed_agent() {
    let dir = tempfile::tempdir().unwrap();
    let (mut launcher, pid) = start_launcher(dir.path(), "launcher.log");
    let first = children_of(pid)[0];
    assert_eq!(
        std::fs::read_link(format!("/proc/{first}/exe")).unwrap(),
        std::path::PathBuf::from(env!("CARGO_BIN_EXE_warden"))
    );

    signal(first, nix::sys::signal::Signal::SIGKILL);
    wait_until(
        "a new agent after the crash",
        Duration::from_secs(10),
        || {
            children_of(pid)
                .iter()
                .any(|child| *child != first && is_alive(*child))
        },
    );
    assert!(launcher.log().contains("the agent ended; restarting it"));

    // SIGTERM reaches the agent through the launcher; both stop.
    let second = children_of(pid)[0];
    signal(pid, nix::sys::signal::Signal::SIGTERM);
    let code = launcher.wait_exit(Duration::from_secs(15));
    assert_eq!(code, Some(0), "{}", launcher.log());
    assert!(!is_alive(second), "the agent outlived the launcher");
}

#[test]
fn agent_stops_when_launcher_killed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut launcher, pid) = start_launcher(dir.path(), "launcher.log");
    let agent = children_of(pid)[0];
    launcher.kill();
    wait_until(
        "the agent to stop without its launcher",
        Duration::from_secs(10),
        || !is_alive(agent),
    );
}

/// Writes an executable shell script.
fn script(path: &std::path::Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Runs the launcher with shell scripts as agents: the active one asks for the switch to a
/// trial binary once, and the trial binary runs `trial_body`. Waits until the active script
/// runs again, then returns the failed trial's reason.
fn run_failing_trial(trial_body: &str) -> String {
    use warden::core::self_upgrade::{ReleaseRecord, Trial, TrialState, SWITCH_EXIT_STATUS};

    let dir = tempfile::tempdir().unwrap();
    let mut file = bootstrap_file(dir.path(), &format!("nats://127.0.0.1:{}", free_port()));
    file.self_upgrade_health_timeout_secs = Some(5);
    let path = dir.path().join("bootstrap.toml");
    std::fs::write(&path, toml::to_string(&file).unwrap()).unwrap();
    let state = file.state_dir;
    std::fs::create_dir_all(&state).unwrap();

    // The launcher runs only what lies in the Warden's releases directory.
    let releases = state.join("components/warden/releases");
    std::fs::create_dir_all(releases.join("1-active")).unwrap();
    std::fs::create_dir_all(releases.join("2-trial")).unwrap();
    let active = releases.join("1-active/active.sh");
    let trial = releases.join("2-trial/trial.sh");
    let record_path = warden::self_upgrade::record_path(&state);
    let mut pending = ReleaseRecord::new(active.clone());
    pending.trial = Some(Trial {
        task_id: "t1".into(),
        binary: trial.clone(),
        version: "2".into(),
        state: TrialState::Pending,
    });
    std::fs::write(
        dir.path().join("pending.json"),
        serde_json::to_vec(&pending).unwrap(),
    )
    .unwrap();
    // First run: record the pending trial and ask for the switch. Later runs: keep running.
    script(
        &active,
        &format!(
            "d={dir}\nif [ -e $d/active-ran ]; then touch $d/active-again; exec sleep 60; fi\ntouch $d/active-ran\ncp $d/pending.json {record}\nexit {SWITCH_EXIT_STATUS}",
            dir = dir.path().display(),
            record = record_path.display(),
        ),
    );
    script(&trial, trial_body);
    warden::self_upgrade::store(&record_path, &ReleaseRecord::new(active.clone())).unwrap();

    let mut command = Command::new(env!("CARGO_BIN_EXE_warden"));
    command.arg("launch").arg("--bootstrap").arg(&path);
    let mut launcher = Process::spawn("launcher", command, &dir.path().join("launcher.log"));
    let pid = launcher.id().unwrap();
    wait_until(
        "the active binary to run again after the trial",
        Duration::from_secs(20),
        || dir.path().join("active-again").exists(),
    );
    let record = warden::self_upgrade::load(&record_path).unwrap().unwrap();
    assert_eq!(record.active, active, "{}", launcher.log());
    let children = children_of(pid);
    assert_eq!(children.len(), 1, "one agent: {children:?}");

    signal(pid, nix::sys::signal::Signal::SIGTERM);
    assert_eq!(launcher.wait_exit(Duration::from_secs(10)), Some(0));
    match record.trial.map(|trial| trial.state) {
        Some(TrialState::Failed { reason }) => reason,
        other => panic!(
            "the trial should have failed, not {other:?}: {}",
            launcher.log()
        ),
    }
}

#[test]
fn launcher_refuses_binary_outside_releases() {
    use std::os::unix::fs::PermissionsExt;
    use warden::core::self_upgrade::ReleaseRecord;

    let dir = tempfile::tempdir().unwrap();
    let file = bootstrap_file(dir.path(), &format!("nats://127.0.0.1:{}", free_port()));
    let path = dir.path().join("bootstrap.toml");
    std::fs::write(&path, toml::to_string(&file).unwrap()).unwrap();
    let state = file.state_dir;
    std::fs::create_dir_all(&state).unwrap();
    let evil = dir.path().join("evil.sh");
    script(&evil, &format!("touch {}/evil-ran", dir.path().display()));
    let record_path = warden::self_upgrade::record_path(&state);

    // A binary outside the releases directory, and a symbolic link inside it to one outside.
    let link_dir = state.join("components/warden/releases/1-link");
    std::fs::create_dir_all(&link_dir).unwrap();
    std::os::unix::fs::symlink(&evil, link_dir.join("warden")).unwrap();
    let launch = |log: &str| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_warden"));
        command.arg("launch").arg("--bootstrap").arg(&path);
        let mut launcher = Process::spawn("launcher", command, &dir.path().join(log));
        let code = launcher.wait_exit(Duration::from_secs(10));
        (code, launcher.log())
    };
    for (index, named) in [evil.clone(), link_dir.join("warden")].iter().enumerate() {
        warden::self_upgrade::store(&record_path, &ReleaseRecord::new(named.clone())).unwrap();
        let (code, log) = launch(&format!("refused-{index}.log"));
        assert_eq!(code, Some(1), "{named:?}: {log}");
        assert!(log.contains("which the launcher does not run"), "{log}");
        assert!(!dir.path().join("evil-ran").exists(), "{named:?} ran");
    }

    // A record that others may write is refused before anything runs.
    warden::self_upgrade::store(&record_path, &ReleaseRecord::new(evil)).unwrap();
    std::fs::set_permissions(&record_path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (code, log) = launch("writable.log");
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("chmod 600"), "{log}");
    assert!(
        !dir.path().join("evil-ran").exists(),
        "the record's binary ran"
    );
}

#[test]
fn trial_exit_rolls_back() {
    let reason = run_failing_trial("exit 3");
    assert!(reason.contains("exited with status 3"), "{reason}");
}

#[test]
fn trial_past_deadline_rolls_back() {
    let started = std::time::Instant::now();
    let reason = run_failing_trial("exec sleep 60");
    assert!(reason.contains("deadline"), "{reason}");
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "rolled back before the deadline"
    );
}
