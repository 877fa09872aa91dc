//! `upgrade_component` end to end: a release signed offline, published through the real
//! control plane into the object store, downloaded by a Warden process, installed beside the
//! running version and started; a release that never becomes healthy is rolled back to the
//! version that ran before.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{Cluster, DEPLOYMENT};
use warden::components::definition::{ComponentFile, ComponentsFile};
use warden_control_plane::ctl::offline;
use warden_testkit::{free_port, nats_server_binary, wait_until, workspace_binary};

const TARGET: &str = "x86_64-unknown-linux-gnu";

fn ctl_ok(cluster: &Cluster, args: &[&str]) -> String {
    let (code, stdout, stderr) = cluster.ctl(args);
    assert_eq!(code, Some(0), "wardenctl {args:?} failed: {stdout}{stderr}");
    stdout
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Signs `binary` as release `counter` of iggy and publishes it; returns the manifest file and
/// the artifact's SHA-256 in hex.
fn release(cluster: &Cluster, binary: &Path, counter: u64) -> (PathBuf, String) {
    let artifact = cluster.path(&format!("iggy-{counter}.bin"));
    std::fs::copy(binary, &artifact).unwrap();
    let manifest = cluster.path(&format!("iggy-{counter}.manifest"));
    let version = format!("0.8.{counter}");
    ctl_ok(
        cluster,
        &[
            "release",
            "sign",
            "--release-key",
            path_str(&cluster.path("release.key")),
            "--artifact",
            path_str(&artifact),
            "--component",
            "iggy",
            "--version",
            &version,
            "--target",
            TARGET,
            "--release-counter",
            &counter.to_string(),
            "--out",
            path_str(&manifest),
        ],
    );
    ctl_ok(
        cluster,
        &[
            "release",
            "publish",
            "--manifest",
            path_str(&manifest),
            "--artifact",
            path_str(&artifact),
        ],
    );
    let signed = offline::read_manifest(&manifest).unwrap();
    let sha256 = hex::encode(signed.manifest_unverified().unwrap().sha256);
    (manifest, sha256)
}

/// Issues the upgrade with wardenctl and returns the task id.
fn issue_upgrade(cluster: &Cluster, manifest: &Path, sha256: &str, counter: u64) -> String {
    let stdout = ctl_ok(
        cluster,
        &[
            "-o",
            "json",
            "task",
            "issue",
            "--deployment",
            DEPLOYMENT,
            "--node",
            "n1",
            "upgrade-component",
            "--component",
            "iggy",
            "--version",
            &format!("0.8.{counter}"),
            "--sha256",
            sha256,
            "--release-counter",
            &counter.to_string(),
            "--manifest",
            path_str(manifest),
        ],
    );
    let issued: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    issued["tasks"][0]["id"].as_str().unwrap().to_owned()
}

/// The executable a process runs.
fn exe_of(pid: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).unwrap()
}

fn healthz(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /healthz HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200")
}

#[test]
fn upgrade_installs_starts_and_rolls_back() {
    let cache = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start_with(&["--artifact-cache-dir", path_str(cache.path())]);

    // Trust document version 2 adds a release key, which only this offline step holds.
    cluster.add_release_key();

    // The node runs a real nats-server from its bootstrap file as its iggy component.
    let client_port = free_port();
    let monitor_port = free_port();
    cluster.add_node_with("n1", |bootstrap| {
        bootstrap.components = ComponentsFile {
            iggy: Some(ComponentFile {
                binary: nats_server_binary(),
                args: vec![
                    "-a".into(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    client_port.to_string(),
                    "-m".into(),
                    monitor_port.to_string(),
                ],
                data_dir: bootstrap.state_dir.join("iggy-data"),
                http_address: Some(format!("127.0.0.1:{monitor_port}")),
                health_http_path: Some("/healthz".into()),
                stop_timeout_secs: Some(5),
                start_timeout_secs: Some(8),
                ..ComponentFile::default()
            }),
            connectors: None,
        };
    });
    cluster.start_warden("n1", &[]);
    let id = ctl_ok(
        &cluster,
        &[
            "-o",
            "json",
            "task",
            "issue",
            "--deployment",
            DEPLOYMENT,
            "--node",
            "n1",
            "start-component",
            "--component",
            "iggy",
        ],
    );
    let id: serde_json::Value = serde_json::from_str(&id).unwrap();
    cluster.wait_status(id["tasks"][0]["id"].as_str().unwrap(), "succeeded");

    // Release 1, the same server as a signed artifact: downloaded, installed executable beside
    // the bootstrap binary, and running.
    let releases_dir = cluster.path("n1").join("components/iggy/releases");
    let (manifest, sha256) = release(&cluster, &nats_server_binary(), 1);
    let id = issue_upgrade(&cluster, &manifest, &sha256, 1);
    let done = cluster.wait_status(&id, "succeeded");
    assert_eq!(
        done.output.get("release_counter").map(String::as_str),
        Some("1")
    );
    assert_eq!(done.output.get("sha256"), Some(&sha256));
    let first_pid = done.output.get("pid").unwrap().clone();
    let first_exe = exe_of(&first_pid);
    assert!(
        first_exe.starts_with(&releases_dir),
        "iggy should run release 1, not {}",
        first_exe.display()
    );
    assert_eq!(
        std::fs::metadata(&first_exe).unwrap().permissions().mode() & 0o777,
        0o755
    );
    assert!(healthz(monitor_port));
    let staging = cluster.path("n1").join("artifacts/staging");
    assert_eq!(
        std::fs::read_dir(&staging)
            .map(Iterator::count)
            .unwrap_or(0),
        0,
        "the staged file should have moved into the release directory"
    );

    // Release 2 is a real binary that never answers the health check: the Warden gives it the
    // start timeout, then puts release 1 back and fails the task with the reason.
    let (manifest, sha256) = release(&cluster, &workspace_binary("fake-component"), 2);
    let id = issue_upgrade(&cluster, &manifest, &sha256, 2);
    let failed = cluster.wait_status(&id, "failed");
    let reason = failed.reason.unwrap_or_default();
    assert!(
        reason.contains("rolled back to 1-"),
        "the failure should say it rolled back to release 1: {reason}"
    );
    wait_until(
        "release 1 to be healthy again",
        Duration::from_secs(20),
        || healthz(monitor_port),
    );
    let pid = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .find(|pid| {
            pid.parse::<u32>().is_ok()
                && std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == first_exe)
        })
        .expect("release 1 runs again");
    assert_ne!(pid, first_pid, "release 1 was restarted by the rollback");

    // The node remembers release 1 as installed: a task naming a lower counter than that
    // is refused before anything is downloaded.
    let lower = cluster.path("lower.bin");
    std::fs::write(&lower, b"an older build that must never be fetched").unwrap();
    let (manifest, sha256) = release(&cluster, &lower, 0);
    let id = issue_upgrade(&cluster, &manifest, &sha256, 0);
    let rejected = cluster.wait_status(&id, "rejected");
    assert_eq!(
        rejected.reject_code.as_deref(),
        Some("release_rollback"),
        "{rejected:?}"
    );

    cluster.kill_warden("n1");
    // The Warden's component keeps running after SIGKILL; stop it so nothing outlives the test.
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status();
}
