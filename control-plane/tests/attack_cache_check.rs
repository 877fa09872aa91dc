//! Attacks on the artifact cache check: the first time a replica process serves a cache file it
//! did not write, it reads it whole and checks it, and fills a damaged one again from the object
//! store. These tests put a symbolic link, a directory or a FIFO at the cache path before a
//! restart, damage a file whose object is gone, and send chunk requests while the check runs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use support::{Cluster, DEPLOYMENT};
use warden::artifacts::{self, ArtifactError, Requester, StagedArtifact};
use warden::core::release::{check_upgrade, ReleaseContext};
use warden::core::verify::Identity;
use warden_bus::messages::Upgrade;
use warden_bus::transport::nats::{NatsBus, NatsConnectConfig};
use warden_bus::{Clock, DeploymentId, NodeId, SigningKey, SystemClock};
use warden_control_plane::broker::Broker;
use warden_control_plane::ctl::offline;
use warden_control_plane::releases::RELEASES_OBJECT_STORE;
use warden_testkit::wait_until;

const TARGET: &str = "x86_64-unknown-linux-gnu";
const DAMAGED: &str = "cached artifact is damaged; filling it again from the object store";
const FILLED: &str = "artifact cached from the object store";

/// A cluster with a release key and one enrolled node whose credentials the test uses directly.
struct Setup {
    cluster: Cluster,
    cache_dir: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
    bus: NatsBus,
    node_key: SigningKey,
    trust: warden_bus::trust::TrustDocument,
}

impl Setup {
    fn start() -> Self {
        let cache_dir = tempfile::tempdir().unwrap();
        let cache_arg = cache_dir.path().to_string_lossy().into_owned();
        let mut cluster = Cluster::start_with(&["--artifact-cache-dir", &cache_arg]);
        let trust = cluster.add_release_key();
        cluster.add_node("n1");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (bus, node_key) = cluster.enroll_and_connect("n1", &runtime);
        Self {
            cluster,
            cache_dir,
            runtime,
            bus,
            node_key,
            trust,
        }
    }

    /// Writes a random artifact of `size` bytes, signs and publishes it. Returns its upgrade
    /// task, its bytes and its hex SHA-256.
    fn publish(&self, name: &str, size: usize, counter: u64) -> (Upgrade, Vec<u8>, String) {
        let artifact = self.cluster.path(name);
        let mut bytes = vec![0u8; size];
        rand_chacha::ChaCha20Rng::seed_from_u64(counter).fill_bytes(&mut bytes);
        std::fs::write(&artifact, &bytes).unwrap();

        let manifest = self.cluster.path(&format!("{name}.manifest"));
        ctl_ok(
            &self.cluster,
            &[
                "release",
                "sign",
                "--release-key",
                path_str(&self.cluster.path("release.key")),
                "--artifact",
                path_str(&artifact),
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
        self.publish_signed(name);

        let signed = offline::read_manifest(&manifest).unwrap();
        let content = signed.manifest_unverified().unwrap();
        let sha256 = hex::encode(&content.sha256);
        let upgrade = Upgrade {
            component: content.component,
            version: content.version,
            sha256: content.sha256,
            release_counter: content.release_counter,
            manifest: Box::new(signed),
            rollback_permit: None,
        };
        (upgrade, bytes, sha256)
    }

    /// Publishes the artifact `name` with the manifest that [`Setup::publish`] signed. The
    /// control plane accepts the same pair again, which puts the object back in the store.
    fn publish_signed(&self, name: &str) {
        let artifact = self.cluster.path(name);
        let manifest = self.cluster.path(&format!("{name}.manifest"));
        ctl_ok(
            &self.cluster,
            &[
                "release",
                "publish",
                "--manifest",
                path_str(&manifest),
                "--artifact",
                path_str(&artifact),
            ],
        );
    }

    /// Checks the upgrade as the node would, then downloads it into `state_dir`.
    fn attempt(
        &self,
        upgrade: &Upgrade,
        state_dir: &Path,
    ) -> Result<StagedArtifact, ArtifactError> {
        let identity = identity();
        let release = check_upgrade(
            upgrade,
            &ReleaseContext {
                trust: &self.trust,
                identity: &identity,
                now: SystemClock.now(),
                skew: Duration::from_secs(300),
                target: TARGET,
                installed_counter: 0,
            },
        )
        .unwrap();
        let requester = Requester {
            deployment: &identity.deployment,
            node: &identity.node,
            node_key: &self.node_key,
            clock: &SystemClock,
        };
        self.runtime.block_on(artifacts::fetch_verified(
            &self.bus, requester, &release, state_dir,
        ))
    }

    fn cache_file(&self, sha256: &str) -> PathBuf {
        self.cache_dir.path().join(sha256)
    }

    fn restart(&mut self) {
        self.cluster.kill_control_plane();
        self.cluster.start_control_plane(&[]);
    }

    /// Connects with the control plane's broker permissions.
    fn attacker_bus(&self) -> NatsBus {
        let broker = Broker::load(&self.cluster.path("broker")).unwrap();
        let user = broker
            .mint_control_plane(support::now_secs(), &mut rand::rngs::OsRng)
            .unwrap();
        let config = NatsConnectConfig::new(vec![self.cluster.nats_url()], "cache-attack")
            .with_credentials(user.credentials().unwrap())
            .with_ca_file(broker.ca_file());
        self.runtime
            .block_on(NatsBus::connect_with(&config))
            .unwrap()
    }
}

impl Setup {
    /// Deletes the artifact from the object store, as someone with the control plane's broker
    /// permissions could, while its manifest stays listed.
    fn delete_object(&self, sha256: &str) {
        let attacker = self.attacker_bus();
        self.runtime.block_on(async {
            let jetstream = async_nats::jetstream::new(attacker.client().clone());
            let objects = jetstream
                .get_object_store(RELEASES_OBJECT_STORE)
                .await
                .unwrap();
            objects.delete(sha256).await.unwrap();
        });
    }
}

fn identity() -> Identity {
    Identity {
        deployment: DeploymentId::new(DEPLOYMENT).unwrap(),
        node: NodeId::new("n1").unwrap(),
        approval_key: None,
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn ctl_ok(cluster: &Cluster, args: &[&str]) -> String {
    let (code, stdout, stderr) = cluster.ctl(args);
    assert_eq!(code, Some(0), "wardenctl {args:?} failed: {stderr}");
    stdout
}

fn flip_byte(bytes: &[u8]) -> Vec<u8> {
    let mut flipped = bytes.to_vec();
    flipped[bytes.len() / 2] ^= 0x01;
    flipped
}

/// A symbolic link at the cache path to a damaged file is removed and the artifact filled
/// again, and the file the link pointed to is left as it was.
#[test]
fn link_to_damaged_file_replaced() {
    let mut setup = Setup::start();
    let (upgrade, original, sha256) = setup.publish("iggy-1", 300_000, 1);
    let cache = setup.cache_file(&sha256);
    let elsewhere = setup.cluster.path("elsewhere");
    let damaged = flip_byte(&original);
    std::fs::write(&elsewhere, &damaged).unwrap();

    setup.cluster.kill_control_plane();
    std::fs::remove_file(&cache).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &cache).unwrap();
    setup.cluster.start_control_plane(&[]);

    let state = tempfile::tempdir().unwrap();
    let staged = setup.attempt(&upgrade, state.path()).unwrap();
    assert_eq!(std::fs::read(staged.path()).unwrap(), original);
    let metadata = std::fs::symlink_metadata(&cache).unwrap();
    assert!(metadata.file_type().is_file(), "the link was replaced");
    assert_eq!(std::fs::read(&cache).unwrap(), original);
    assert_eq!(
        std::fs::read(&elsewhere).unwrap(),
        damaged,
        "target left alone"
    );
    let log = setup.cluster.control_plane_log();
    assert_eq!(support::count(&log, DAMAGED), 1, "{log}");
}

/// A link whose target is missing counts as a missing cache file.
#[test]
fn dangling_link_replaced() {
    let mut setup = Setup::start();
    let (upgrade, original, sha256) = setup.publish("iggy-2", 100_000, 2);
    let cache = setup.cache_file(&sha256);

    setup.cluster.kill_control_plane();
    std::fs::remove_file(&cache).unwrap();
    std::os::unix::fs::symlink(setup.cluster.path("missing"), &cache).unwrap();
    setup.cluster.start_control_plane(&[]);

    let state = tempfile::tempdir().unwrap();
    let staged = setup.attempt(&upgrade, state.path()).unwrap();
    assert_eq!(std::fs::read(staged.path()).unwrap(), original);
    assert!(std::fs::symlink_metadata(&cache).unwrap().is_file());
    assert!(!setup.cluster.path("missing").exists(), "no write through");
}

/// A link to a device that never ends is read only to one byte past the manifest's size, then
/// replaced by a filled file.
#[test]
fn link_to_endless_device_replaced() {
    let mut setup = Setup::start();
    let (upgrade, original, sha256) = setup.publish("iggy-9", 100_000, 9);
    let cache = setup.cache_file(&sha256);

    setup.cluster.kill_control_plane();
    std::fs::remove_file(&cache).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &cache).unwrap();
    setup.cluster.start_control_plane(&[]);

    let state = tempfile::tempdir().unwrap();
    let staged = setup.attempt(&upgrade, state.path()).unwrap();
    assert_eq!(std::fs::read(staged.path()).unwrap(), original);
    assert!(std::fs::symlink_metadata(&cache).unwrap().is_file());
    let log = setup.cluster.control_plane_log();
    assert_eq!(support::count(&log, DAMAGED), 1, "{log}");
}

/// An error of the local cache must be logged as a cache error. Calling it the broker being
/// unavailable sends an operator to the wrong component. A directory where the fill writes its
/// partial file makes the fill fail on the local disk.
#[test]
fn cache_error_not_blamed_on_broker() {
    let mut setup = Setup::start();
    let (upgrade, _, sha256) = setup.publish("iggy-10", 100_000, 10);
    let cache = setup.cache_file(&sha256);

    setup.cluster.kill_control_plane();
    std::fs::remove_file(&cache).unwrap();
    setup.cluster.start_control_plane(&[]);
    let pid = setup.cluster.control_plane().id().unwrap();
    let partial = cache.with_file_name(format!("{sha256}.fill-{pid}"));
    std::fs::create_dir(&partial).unwrap();
    std::fs::write(partial.join("keep"), b"x").unwrap();

    let state = tempfile::tempdir().unwrap();
    assert!(setup.attempt(&upgrade, state.path()).is_err());
    let log = setup.cluster.control_plane_log();
    let cache_errors: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("cache file"))
        .collect();
    assert!(!cache_errors.is_empty(), "no cache error logged:\n{log}");
    for line in cache_errors {
        assert!(
            !line.contains("message broker is unavailable"),
            "a cache error blames the broker: {line}"
        );
    }
}

/// A directory at the cache path is not a cache file, so the replica should remove it and fill
/// the artifact again, as it does for a damaged file.
#[test]
fn directory_at_cache_path_refilled() {
    let mut setup = Setup::start();
    let (upgrade, original, sha256) = setup.publish("iggy-3", 100_000, 3);
    let cache = setup.cache_file(&sha256);

    setup.cluster.kill_control_plane();
    std::fs::remove_file(&cache).unwrap();
    std::fs::create_dir(&cache).unwrap();
    setup.cluster.start_control_plane(&[]);

    let state = tempfile::tempdir().unwrap();
    let result = setup.attempt(&upgrade, state.path());
    let log = setup.cluster.control_plane_log();
    let staged = result
        .unwrap_or_else(|error| panic!("the download failed: {error}; control plane log:\n{log}"));
    assert_eq!(std::fs::read(staged.path()).unwrap(), original);
}

/// A FIFO at the cache path must not hang the check: opening it for reading blocks until a
/// writer comes, while the check holds the lock that every other unchecked artifact waits for.
#[test]
fn fifo_at_cache_path_not_hanging() {
    let mut setup = Setup::start();
    let (fifo_upgrade, fifo_original, fifo_sha256) = setup.publish("iggy-4", 100_000, 4);
    let (other_upgrade, other_original, _) = setup.publish("iggy-5", 100_000, 5);
    let cache = setup.cache_file(&fifo_sha256);

    setup.cluster.kill_control_plane();
    std::fs::remove_file(&cache).unwrap();
    nix::unistd::mkfifo(&cache, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    setup.cluster.start_control_plane(&[]);

    let fifo_done = AtomicBool::new(false);
    let other_done = AtomicBool::new(false);
    let fifo_state = tempfile::tempdir().unwrap();
    let other_state = tempfile::tempdir().unwrap();
    let (fifo_in_time, other_in_time, fifo_result, other_result) = std::thread::scope(|scope| {
        let fifo = scope.spawn(|| {
            let result = setup.attempt(&fifo_upgrade, fifo_state.path());
            fifo_done.store(true, Ordering::SeqCst);
            result
        });
        std::thread::sleep(Duration::from_secs(1));
        let other = scope.spawn(|| {
            let result = setup.attempt(&other_upgrade, other_state.path());
            other_done.store(true, Ordering::SeqCst);
            result
        });

        // Both downloads are 100 kB over loopback, so 5 s is generous.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline
            && !(fifo_done.load(Ordering::SeqCst) && other_done.load(Ordering::SeqCst))
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        let fifo_in_time = fifo_done.load(Ordering::SeqCst);
        let other_in_time = other_done.load(Ordering::SeqCst);

        // Opens the FIFO as a writer, so a check blocked on it goes on and the threads finish.
        while !fifo_done.load(Ordering::SeqCst) {
            let opened = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(nix::libc::O_NONBLOCK)
                .open(&cache);
            if let Ok(mut writer) = opened {
                let _ = std::io::Write::write_all(&mut writer, b"unblock");
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        (
            fifo_in_time,
            other_in_time,
            fifo.join().unwrap(),
            other.join().unwrap(),
        )
    });
    let log = setup.cluster.control_plane_log();
    assert!(
        other_in_time,
        "the download of another artifact waited for the FIFO; control plane log:\n{log}"
    );
    assert!(
        fifo_in_time,
        "the download of the artifact at the FIFO hung; control plane log:\n{log}"
    );
    assert_eq!(
        std::fs::read(other_result.unwrap().path()).unwrap(),
        other_original
    );
    assert_eq!(
        std::fs::read(fifo_result.unwrap().path()).unwrap(),
        fifo_original
    );
}

/// A damaged cache file whose object is gone from the object store fails the download at once
/// instead of hanging or serving the damaged bytes. Publishing the release again heals it.
#[test]
fn damaged_without_object_until_republished() {
    let mut setup = Setup::start();
    let (upgrade, original, sha256) = setup.publish("iggy-6", 200_000, 6);
    let cache = setup.cache_file(&sha256);

    setup.delete_object(&sha256);
    setup.cluster.kill_control_plane();
    std::fs::write(&cache, flip_byte(&original)).unwrap();
    setup.cluster.start_control_plane(&[]);

    let state = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let result = setup.attempt(&upgrade, state.path());
    assert!(result.is_err(), "a download with no good copy succeeded");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the failure took {:?}",
        started.elapsed()
    );
    let log = setup.cluster.control_plane_log();
    assert_eq!(support::count(&log, DAMAGED), 1, "{log}");
    assert!(!cache.exists(), "the damaged file was removed");

    // A second request fails the same way instead of serving anything.
    assert!(setup.attempt(&upgrade, state.path()).is_err());

    // The operator's fix: publish the same release again.
    setup.publish_signed("iggy-6");
    let staged = setup.attempt(&upgrade, state.path()).unwrap();
    assert_eq!(std::fs::read(staged.path()).unwrap(), original);

    // A restart reads the republished file and finds it good.
    std::fs::remove_file(staged.path()).unwrap();
    setup.restart();
    let staged = setup.attempt(&upgrade, state.path()).unwrap();
    assert_eq!(std::fs::read(staged.path()).unwrap(), original);
    let log = setup.cluster.control_plane_log();
    assert_eq!(support::count(&log, DAMAGED), 1, "{log}");
}

/// A listed release whose object is gone cannot be served to any node. The node gets only
/// "not found", so the control plane should log an error that names the artifact and the fix
/// (publish it again), beside its warning that it is filling the damaged file.
#[test]
fn missing_object_logged_as_error() {
    let mut setup = Setup::start();
    let (upgrade, original, sha256) = setup.publish("iggy-8", 100_000, 8);
    setup.delete_object(&sha256);
    setup.cluster.kill_control_plane();
    std::fs::write(setup.cache_file(&sha256), flip_byte(&original)).unwrap();
    setup.cluster.start_control_plane(&[]);

    let state = tempfile::tempdir().unwrap();
    assert!(setup.attempt(&upgrade, state.path()).is_err());
    let log = setup.cluster.control_plane_log();
    let errors: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("ERROR") && line.contains(&sha256))
        .collect();
    assert!(!errors.is_empty(), "no error names {sha256}:\n{log}");
}

/// Four downloads at once after a restart, first of a good cache file and then of a damaged
/// one: the file is checked once, a damaged one is filled once, and every node gets the right
/// bytes.
#[test]
fn concurrent_downloads_during_check() {
    let mut setup = Setup::start();
    let size = 6 * 1024 * 1024 + 3;
    let (upgrade, original, sha256) = setup.publish("iggy-7", size, 7);
    let cache = setup.cache_file(&sha256);

    for case in ["good", "damaged"] {
        setup.cluster.kill_control_plane();
        if case == "damaged" {
            std::fs::write(&cache, flip_byte(&original)).unwrap();
        }
        setup.cluster.start_control_plane(&[]);
        let filled_before = support::count(&setup.cluster.control_plane_log(), FILLED);

        let results: Vec<Result<StagedArtifact, ArtifactError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        let state = tempfile::tempdir().unwrap();
                        let result = setup.attempt(&upgrade, state.path());
                        if let Ok(staged) = &result {
                            assert_eq!(std::fs::read(staged.path()).unwrap(), original, "{case}");
                        }
                        result
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|handle| handle.join().unwrap())
                .collect()
        });
        let log = setup.cluster.control_plane_log();
        for result in &results {
            assert!(result.is_ok(), "{case}: {result:?}\n{log}");
        }
        let expected_fills = usize::from(case == "damaged");
        assert_eq!(
            support::count(&log, FILLED) - filled_before,
            expected_fills,
            "{case}: {log}"
        );
        assert_eq!(
            support::count(&log, DAMAGED),
            expected_fills,
            "{case}: {log}"
        );
        wait_until("the cache file to be whole", Duration::from_secs(5), || {
            std::fs::read(&cache).unwrap() == original
        });
    }
}
