//! The Warden upgrades itself end to end, with two more real builds of the `warden` binary.
//! Build B (another version tag) is published as a release and replaces the running Warden
//! under the same launcher process. Build C exits at start, so it is rolled back to B.
//!
//! The builds go to `target/self-upgrade-builds`, one extra target directory that is kept
//! between runs; its first build compiles every dependency once.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{Cluster, DEPLOYMENT};
use warden_control_plane::ctl::offline;
use warden_testkit::{wait_until, workspace_root};

const TARGET: &str = "x86_64-unknown-linux-gnu";

fn ctl_ok(cluster: &Cluster, args: &[&str]) -> String {
    let (code, stdout, stderr) = cluster.ctl(args);
    assert_eq!(code, Some(0), "wardenctl {args:?} failed: {stdout}{stderr}");
    stdout
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Builds the `warden` binary with compile-time switches and copies it to `name`, since the
/// next build with other switches overwrites the output.
fn build_warden(name: &str, env: &[(&str, &str)]) -> PathBuf {
    let target_dir = workspace_root().join("target/self-upgrade-builds");
    let mut command = Command::new(env!("CARGO"));
    command
        .current_dir(workspace_root())
        .args(["build", "--offline", "-p", "warden", "--bin", "warden"])
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("WARDEN_BUILD_TAG")
        .env_remove("WARDEN_BUILD_BROKEN");
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "building warden {name} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let copy = target_dir.join(name);
    std::fs::copy(target_dir.join("debug/warden"), &copy).unwrap();
    copy
}

/// Signs `binary` as release `counter` of the Warden and publishes it; returns the manifest
/// and the SHA-256 in hex.
fn release(cluster: &Cluster, binary: &Path, counter: u64, version: &str) -> (PathBuf, String) {
    let manifest = cluster.path(&format!("warden-{counter}.manifest"));
    ctl_ok(
        cluster,
        &[
            "release",
            "sign",
            "--release-key",
            path_str(&cluster.path("release.key")),
            "--artifact",
            path_str(binary),
            "--component",
            "warden",
            "--version",
            version,
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
            path_str(binary),
        ],
    );
    let signed = offline::read_manifest(&manifest).unwrap();
    let sha256 = hex::encode(signed.manifest_unverified().unwrap().sha256);
    (manifest, sha256)
}

fn issue_upgrade(
    cluster: &Cluster,
    manifest: &Path,
    sha256: &str,
    counter: u64,
    version: &str,
) -> String {
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
            "warden",
            "--version",
            version,
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

/// The node's row from `wardenctl node list`: health and Warden version.
fn node_row(cluster: &Cluster) -> (String, String) {
    let stdout = ctl_ok(
        cluster,
        &["-o", "json", "node", "list", "--deployment", DEPLOYMENT],
    );
    let nodes: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let node = &nodes[0];
    (
        node["health"].as_str().unwrap_or_default().to_owned(),
        node["warden_version"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

fn exe_of(pid: u32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).unwrap()
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

#[test]
fn warden_upgrades_itself_and_rolls_back() {
    let build_b = build_warden("warden-b", &[("WARDEN_BUILD_TAG", "b")]);
    let build_c = build_warden(
        "warden-c",
        &[
            ("WARDEN_BUILD_TAG", "c"),
            ("WARDEN_BUILD_BROKEN", "test build that must be rolled back"),
        ],
    );

    let cache = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start_with(&["--artifact-cache-dir", path_str(cache.path())]);
    cluster.add_release_key();

    cluster.add_node_with("n1", |bootstrap| {
        bootstrap.self_upgrade_health_timeout_secs = Some(30);
    });
    cluster.start_warden_launcher("n1");
    let launcher = cluster.warden("n1").id().unwrap();
    let version_a = env!("CARGO_PKG_VERSION").to_owned();
    wait_until(
        "the node to report build A",
        Duration::from_secs(30),
        || node_row(&cluster) == ("healthy".to_owned(), version_a.clone()),
    );

    // Build B replaces the Warden: the task succeeds from the new binary, and the launcher
    // process the service manager watches is the same process, now running B as well.
    let version_b = format!("{version_a}+b");
    let (manifest, sha256) = release(&cluster, &build_b, 1, &version_b);
    let id = issue_upgrade(&cluster, &manifest, &sha256, 1, &version_b);
    let done = cluster.wait_status(&id, "succeeded");
    assert_eq!(
        done.output.get("warden_version"),
        Some(&version_b),
        "the new binary reports the task: {done:?}"
    );
    let releases_dir = std::fs::canonicalize(cluster.path("n1"))
        .unwrap()
        .join("components/warden/releases");
    let installed_b = PathBuf::from(done.output.get("binary").unwrap());
    assert!(installed_b.starts_with(&releases_dir), "{installed_b:?}");
    wait_until(
        "the node list to show build B",
        Duration::from_secs(30),
        || node_row(&cluster) == ("healthy".to_owned(), version_b.clone()),
    );
    wait_until(
        "the launcher to re-execute from build B",
        Duration::from_secs(15),
        || exe_of(launcher) == installed_b,
    );
    assert_eq!(cluster.warden("n1").id(), Some(launcher));
    let agents = children_of(launcher);
    assert_eq!(agents.len(), 1, "one agent under the launcher: {agents:?}");
    assert_eq!(exe_of(agents[0]), installed_b);

    // Build C exits at start: the launcher starts B again, which fails the task.
    let version_c = format!("{version_a}+c");
    let (manifest, sha256) = release(&cluster, &build_c, 2, &version_c);
    let id = issue_upgrade(&cluster, &manifest, &sha256, 2, &version_c);
    let failed = cluster.wait_status(&id, "failed");
    let reason = failed.reason.unwrap_or_default();
    assert!(reason.starts_with("rolled back: "), "{reason}");
    assert!(reason.contains("exited with status 1"), "{reason}");

    let heartbeat_at = |cluster: &Cluster| {
        let stdout = ctl_ok(
            cluster,
            &["-o", "json", "node", "list", "--deployment", DEPLOYMENT],
        );
        let nodes: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        nodes[0]["last_heartbeat_at"].as_str().map(str::to_owned)
    };
    let at_failure = heartbeat_at(&cluster);
    wait_until(
        "a heartbeat from build B after the rollback",
        Duration::from_secs(30),
        || {
            heartbeat_at(&cluster) != at_failure
                && node_row(&cluster) == ("healthy".to_owned(), version_b.clone())
        },
    );
    assert_eq!(exe_of(launcher), installed_b);
    let agents = children_of(launcher);
    assert_eq!(agents.len(), 1, "one agent under the launcher: {agents:?}");
    assert_eq!(exe_of(agents[0]), installed_b);
    let log = cluster.warden_log("n1");
    assert!(
        log.contains("this Warden build was made to fail at start"),
        "build C should have run and failed: {log}"
    );
}
