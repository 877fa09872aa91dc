//! Attacks on release publishing and on the artifact cache directory: publishes of the same
//! bytes that race with each other, and a control plane that cannot create its cache.
//! Each test tries to get past one check and must fail to.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::{RngCore, SeedableRng};
use support::Cluster;
use warden_control_plane::views::ReleaseView;

const TARGET: &str = "x86_64-unknown-linux-gnu";
/// Publishes started at once in the race tests.
const RACERS: u64 = 6;
/// An unprivileged uid: `nobody` on Debian-like systems.
const OTHER_UID: u32 = 65_534;

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn ctl_ok(cluster: &Cluster, args: &[&str]) -> String {
    let (code, stdout, stderr) = cluster.ctl(args);
    assert_eq!(code, Some(0), "wardenctl {args:?} failed: {stderr}");
    stdout
}

/// Starts a cluster whose trust document version 2 lists a release key in `release.key`.
fn cluster_with_release_key() -> Cluster {
    let cluster = Cluster::start();
    cluster.add_release_key();
    cluster
}

/// Writes a random artifact of `size` bytes.
fn write_artifact(cluster: &Cluster, name: &str, size: usize) -> PathBuf {
    let artifact = cluster.path(name);
    let mut bytes = vec![0u8; size];
    rand_chacha::ChaCha20Rng::seed_from_u64(size as u64).fill_bytes(&mut bytes);
    std::fs::write(&artifact, &bytes).unwrap();
    artifact
}

/// Signs a manifest for `artifact` with release counter `counter` and returns its path.
fn sign(cluster: &Cluster, artifact: &Path, counter: u64) -> PathBuf {
    let manifest = cluster.path(&format!("manifest-{counter}"));
    ctl_ok(
        cluster,
        &[
            "release",
            "sign",
            "--release-key",
            path_str(&cluster.path("release.key")),
            "--artifact",
            path_str(artifact),
            "--component",
            "iggy",
            "--version",
            &format!("0.8.{counter}"),
            "--target",
            TARGET,
            "--release-counter",
            &counter.to_string(),
            "--out",
            path_str(&manifest),
        ],
    );
    manifest
}

/// Runs `wardenctl release publish` for every manifest at once and returns each exit code and
/// stderr, in the order of `manifests`.
fn publish_all_at_once(
    cluster: &Cluster,
    artifact: &Path,
    manifests: &[PathBuf],
) -> Vec<(Option<i32>, String)> {
    let barrier = std::sync::Barrier::new(manifests.len());
    std::thread::scope(|scope| {
        let handles: Vec<_> = manifests
            .iter()
            .map(|manifest| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    let (code, _, stderr) = cluster.ctl(&[
                        "release",
                        "publish",
                        "--manifest",
                        path_str(manifest),
                        "--artifact",
                        path_str(artifact),
                    ]);
                    (code, stderr)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap())
            .collect()
    })
}

fn listed_releases(cluster: &Cluster) -> Vec<ReleaseView> {
    serde_json::from_str(&ctl_ok(cluster, &["-o", "json", "release", "list"])).unwrap()
}

/// Publishes of the same bytes with different manifests started together: exactly one
/// succeeds, every other one reports the conflict, and the stored manifest is the winner's.
#[test]
fn concurrent_publishes_one_winner() {
    let cluster = cluster_with_release_key();
    let artifact = write_artifact(&cluster, "raced", 2 * 1024 * 1024);
    let manifests: Vec<PathBuf> = (1..=RACERS)
        .map(|counter| sign(&cluster, &artifact, counter))
        .collect();

    let results = publish_all_at_once(&cluster, &artifact, &manifests);

    let winners: Vec<u64> = (1..=RACERS)
        .zip(&results)
        .filter(|(_, (code, _))| *code == Some(0))
        .map(|(counter, _)| counter)
        .collect();
    assert_eq!(winners.len(), 1, "winners {winners:?}: {results:?}");
    for (code, stderr) in results.iter().filter(|(code, _)| *code != Some(0)) {
        assert!(
            stderr.contains("already published with another manifest"),
            "exit {code:?}: {stderr}"
        );
    }
    let listed = listed_releases(&cluster);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].version, format!("0.8.{}", winners[0]));
}

/// Publishes of the same manifest started together all succeed, and the release is listed
/// once.
#[test]
fn concurrent_same_manifest_all_succeed() {
    let cluster = cluster_with_release_key();
    let artifact = write_artifact(&cluster, "repeated", 2 * 1024 * 1024 + 1);
    let manifest = sign(&cluster, &artifact, 7);
    let manifests = vec![manifest; usize::try_from(RACERS).unwrap()];

    let results = publish_all_at_once(&cluster, &artifact, &manifests);

    for (code, stderr) in &results {
        assert_eq!(*code, Some(0), "{stderr}");
    }
    let listed = listed_releases(&cluster);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].version, "0.8.7");
}

/// The default cache directory is under /var/cache, which only root may write to. A control
/// plane run as another user that cannot create its cache directory stops with an error that
/// names the directory, the system's reason and the option that chooses another one.
#[test]
fn uncreatable_cache_dir_names_fix() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to run the control plane as another user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    support::offline_setup(dir.path());
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(dir.path().join("task.key"), Some(OTHER_UID), None).unwrap();
    // Owned by root with mode 0755, so the other user cannot create the cache in it.
    let cache = dir.path().join("cache");

    let binary = warden_testkit::workspace_binary_for_others("control-plane");
    let mut command = support::control_plane_command(&binary, dir.path(), "nats://127.0.0.1:1");
    command
        .arg("--artifact-cache-dir")
        .arg(&cache)
        .uid(OTHER_UID)
        .gid(OTHER_UID)
        .env("RUST_BACKTRACE", "0");
    let mut control_plane =
        warden_testkit::Process::spawn("control-plane", command, &dir.path().join("cp.log"));
    let exit = control_plane.wait_exit(Duration::from_secs(30));
    let log = control_plane.log();

    assert_ne!(exit, Some(0), "{log}");
    assert!(exit.is_some(), "the control plane did not stop: {log}");
    assert!(log.contains(path_str(&cache)), "{log}");
    assert!(log.contains("Permission denied"), "{log}");
    assert!(
        log.contains("--artifact-cache-dir"),
        "the error does not say how to choose another directory: {log}"
    );
    assert!(
        !log.contains("cache file"),
        "the error calls the directory a file: {log}"
    );
}
