//! Signed releases end to end: `wardenctl release sign` and `release publish` into the real
//! object store, then a node identity checks an upgrade and downloads the artifact through the
//! control plane with `fetch_verified`. Every attack must leave no staged file behind. The
//! cache attacks put a damaged file, a link, a directory or a FIFO at a cache path before a
//! restart, delete the object behind a cache file, and download while the check runs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use rand::{RngCore, SeedableRng};
use support::{Cluster, DEPLOYMENT};
use warden::artifacts::{self, ArtifactError, Requester, StagedArtifact};
use warden::core::release::{check_upgrade, ReleaseContext, ReleaseRejection};
use warden::core::verify::Identity;
use warden_bus::messages::{Component, RejectCode, Upgrade};
use warden_bus::release::{RollbackPermit, SignedManifest, SignedRollbackPermit};
use warden_bus::transport::nats::NatsBus;
use warden_bus::trust::TrustDocument;
use warden_bus::{Clock, DeploymentId, NodeId, SigningKey, SystemClock, UnixMillis};
use warden_control_plane::ctl::offline;
use warden_control_plane::releases::RELEASES_OBJECT_STORE;
use warden_control_plane::views::ReleaseView;
use warden_testkit::wait_until;

const TARGET: &str = "x86_64-unknown-linux-gnu";
const SKEW: Duration = Duration::from_secs(300);
const SKEW_MS: u64 = 300_000;
const DAMAGED: &str = "cached artifact is damaged; filling it again from the object store";
const FILLED: &str = "artifact cached from the object store";

/// A cluster whose trust document lists a release key, with one enrolled node whose
/// credentials the test uses directly.
struct ReleaseSetup {
    cluster: Cluster,
    cache_dir: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
    bus: NatsBus,
    node_key: SigningKey,
    state_dir: PathBuf,
    trust: TrustDocument,
}

impl ReleaseSetup {
    fn start() -> Self {
        let cache_dir = tempfile::tempdir().unwrap();
        let cache_arg = cache_dir.path().to_string_lossy().into_owned();
        let mut cluster = Cluster::start_with(&["--artifact-cache-dir", &cache_arg]);

        // Trust document version 2 adds a release key; the control plane never holds its seed.
        let trust = cluster.add_release_key();

        // Enroll n1 with a real Warden, then borrow its key and credential.
        cluster.add_node("n1");
        let state_dir = cluster.path("n1");
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
            state_dir,
            trust,
        }
    }

    /// Writes a random artifact and signs its manifest with `key_file` via wardenctl.
    fn sign(&self, name: &str, size: usize, target: &str, counter: u64, key_file: &str) -> PathBuf {
        let artifact = self.cluster.path(name);
        let mut bytes = vec![0u8; size];
        rand_chacha::ChaCha20Rng::seed_from_u64(counter ^ size as u64).fill_bytes(&mut bytes);
        std::fs::write(&artifact, &bytes).unwrap();
        let manifest = self.cluster.path(&format!("{name}.manifest"));
        ctl_ok(
            &self.cluster,
            &[
                "release",
                "sign",
                "--release-key",
                path_str(&self.cluster.path(key_file)),
                "--artifact",
                path_str(&artifact),
                "--component",
                "iggy",
                "--version",
                &format!("0.8.{counter}"),
                "--target",
                target,
                "--release-counter",
                &counter.to_string(),
                "--out",
                path_str(&manifest),
            ],
        );
        artifact
    }

    fn publish(&self, artifact: &Path) -> ReleaseView {
        let manifest = manifest_path(artifact);
        let (code, stdout, stderr) = self.cluster.ctl(&[
            "-o",
            "json",
            "release",
            "publish",
            "--manifest",
            path_str(&manifest),
            "--artifact",
            path_str(artifact),
        ]);
        assert_eq!(code, Some(0), "publish failed: {stderr}");
        serde_json::from_str(&stdout).unwrap()
    }

    /// Builds the upgrade task the control plane would issue for a signed artifact.
    fn upgrade(&self, artifact: &Path) -> Upgrade {
        let signed = offline::read_manifest(&manifest_path(artifact)).unwrap();
        let manifest = signed.manifest_unverified().unwrap();
        Upgrade {
            component: manifest.component,
            version: manifest.version,
            sha256: manifest.sha256,
            release_counter: manifest.release_counter,
            manifest: Box::new(signed),
            rollback_permit: None,
        }
    }

    /// Signs and publishes a random artifact of `size` bytes. Returns its upgrade task, its
    /// bytes and its hex SHA-256.
    fn publish_random(&self, name: &str, size: usize, counter: u64) -> (Upgrade, Vec<u8>, String) {
        let artifact = self.sign(name, size, TARGET, counter, "release.key");
        self.publish(&artifact);
        let bytes = std::fs::read(&artifact).unwrap();
        (self.upgrade(&artifact), bytes, sha256_of(&artifact))
    }

    /// Checks the upgrade as the node would, then downloads and stages its artifact.
    fn attempt(&self, upgrade: &Upgrade, installed: u64) -> Result<StagedArtifact, Failure> {
        self.attempt_as(upgrade, installed, &self.node_key)
    }

    fn attempt_as(
        &self,
        upgrade: &Upgrade,
        installed: u64,
        signer: &SigningKey,
    ) -> Result<StagedArtifact, Failure> {
        self.attempt_in(upgrade, installed, signer, &self.state_dir)
    }

    /// Like [`ReleaseSetup::attempt`], staging into `state_dir`, so that several downloads of
    /// one artifact do not find each other's file.
    fn attempt_into(&self, upgrade: &Upgrade, state_dir: &Path) -> Result<StagedArtifact, Failure> {
        self.attempt_in(upgrade, 0, &self.node_key, state_dir)
    }

    fn attempt_in(
        &self,
        upgrade: &Upgrade,
        installed: u64,
        signer: &SigningKey,
        state_dir: &Path,
    ) -> Result<StagedArtifact, Failure> {
        let identity = identity();
        let release = check_upgrade(
            upgrade,
            &ReleaseContext {
                trust: &self.trust,
                identity: &identity,
                now: SystemClock.now(),
                skew: SKEW,
                target: TARGET,
                installed_counter: installed,
            },
        )
        .map_err(Failure::Rejected)?;
        let requester = Requester {
            deployment: &identity.deployment,
            node: &identity.node,
            node_key: signer,
            clock: &SystemClock,
        };
        self.runtime
            .block_on(artifacts::fetch_verified(
                &self.bus, requester, &release, state_dir,
            ))
            .map_err(Failure::Download)
    }

    /// Asserts that the staging directory contains no file for `sha256`, and nothing executable.
    fn assert_nothing_staged(&self, sha256: &str, case: &str) {
        for path in [
            artifacts::partial_path(&self.state_dir, sha256),
            artifacts::verified_path(&self.state_dir, sha256),
        ] {
            assert!(!path.exists(), "{case}: {} exists", path.display());
        }
        assert_no_executable(&self.state_dir.join(artifacts::STAGING_DIR), case);
    }

    fn cache_file(&self, sha256: &str) -> PathBuf {
        self.cache_dir.path().join(sha256)
    }

    fn restart(&mut self) {
        self.cluster.kill_control_plane();
        self.cluster.start_control_plane(&[]);
    }

    /// Deletes the artifact from the object store, as someone with the control plane's broker
    /// permissions could, while its manifest stays listed.
    fn delete_object(&self, sha256: &str) {
        self.cluster.block_on(async {
            let objects = self
                .cluster
                .jetstream()
                .get_object_store(RELEASES_OBJECT_STORE)
                .await
                .unwrap();
            objects.delete(sha256).await.unwrap();
        });
    }
}

/// Returns three damaged copies of an artifact of more than 600,000 bytes, each with its name.
fn damaged_copies(original: &[u8]) -> [(&'static str, Vec<u8>); 3] {
    let mut flipped = original.to_vec();
    flipped[600_000] ^= 0x01;
    let mut truncated = original.to_vec();
    truncated.truncate(original.len() - 1);
    let mut appended = original.to_vec();
    appended.extend_from_slice(b"tail");
    [
        ("one flipped byte", flipped),
        ("truncated", truncated),
        ("appended", appended),
    ]
}

#[derive(Debug)]
enum Failure {
    Rejected(ReleaseRejection),
    Download(ArtifactError),
}

impl Failure {
    fn code(&self) -> Option<RejectCode> {
        match self {
            Self::Rejected(rejection) => Some(rejection.code),
            Self::Download(_) => None,
        }
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

fn manifest_path(artifact: &Path) -> PathBuf {
    PathBuf::from(format!("{}.manifest", artifact.display()))
}

fn ctl_ok(cluster: &Cluster, args: &[&str]) -> String {
    let (code, stdout, stderr) = cluster.ctl(args);
    assert_eq!(code, Some(0), "wardenctl {args:?} failed: {stderr}");
    stdout
}

fn assert_no_executable(dir: &Path, case: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let entry = entry.unwrap();
        let mode = entry.metadata().unwrap().permissions().mode();
        assert_eq!(
            mode & 0o111,
            0,
            "{case}: {} has mode {mode:o}",
            entry.path().display()
        );
    }
}

fn sha256_of(artifact: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(artifact).unwrap()))
}

fn permit(counter_min: u64, expires_at: UnixMillis, key: &SigningKey) -> SignedRollbackPermit {
    let now = SystemClock.now();
    SignedRollbackPermit::sign(
        &RollbackPermit {
            deployment: DeploymentId::new(DEPLOYMENT).unwrap(),
            node: Some(NodeId::new("n1").unwrap()),
            component: Component::Iggy,
            release_counter_min: counter_min,
            issued_at: UnixMillis(expires_at.0.min(now.0) - 60_000),
            expires_at,
        },
        key,
    )
    .unwrap()
}

#[test]
fn published_release_downloads_and_verifies() {
    let setup = ReleaseSetup::start();
    let size = 3 * 512 * 1024 + 1234;
    let artifact = setup.sign("iggy-5", size, TARGET, 5, "release.key");
    let published = setup.publish(&artifact);
    let sha256 = sha256_of(&artifact);
    assert_eq!(published.sha256, sha256);
    assert_eq!(published.size, size as u64);

    // The listing shows it, as JSON and as a table.
    let listed: Vec<ReleaseView> =
        serde_json::from_str(&ctl_ok(&setup.cluster, &["-o", "json", "release", "list"])).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].sha256, sha256);
    assert!(ctl_ok(&setup.cluster, &["release", "list"]).contains(&sha256));

    // Publishing the same manifest again is accepted.
    setup.publish(&artifact);

    let staged = setup.attempt(&setup.upgrade(&artifact), 4).unwrap();
    assert_eq!(
        staged.path(),
        artifacts::verified_path(&setup.state_dir, &sha256)
    );
    assert_eq!(
        std::fs::read(staged.path()).unwrap(),
        std::fs::read(&artifact).unwrap()
    );
    let mode = std::fs::metadata(staged.path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "staged mode {mode:o}");
    assert!(!artifacts::partial_path(&setup.state_dir, &sha256).exists());
    assert!(
        setup.cache_file(&sha256).exists(),
        "the control plane caches what it serves"
    );
}

#[test]
fn tampered_cache_never_staged() {
    let setup = ReleaseSetup::start();
    let artifact = setup.sign("iggy-5", 2 * 512 * 1024 + 77, TARGET, 5, "release.key");
    setup.publish(&artifact);
    let sha256 = sha256_of(&artifact);
    let upgrade = setup.upgrade(&artifact);
    let original = std::fs::read(&artifact).unwrap();
    let cache = setup.cache_file(&sha256);
    wait_until("the cache file", Duration::from_secs(5), || cache.exists());

    let cases = damaged_copies(&original);
    for (case, bytes) in cases {
        std::fs::write(&cache, &bytes).unwrap();
        let failure = setup.attempt(&upgrade, 0).unwrap_err();
        assert!(
            matches!(failure, Failure::Download(ArtifactError::Corrupt { .. })),
            "{case}: {failure:?}"
        );
        setup.assert_nothing_staged(&sha256, case);
    }

    // Restoring the cache shows the attacks failed for the bytes alone.
    std::fs::write(&cache, &original).unwrap();
    setup.attempt(&upgrade, 0).unwrap();
}

/// A cache file damaged while no replica ran heals. The first time a replica serves a cache file
/// it did not write, it reads it whole, finds the damage and fills it again from the object
/// store. So the nodes get the artifact instead of failing every download.
#[test]
fn damaged_cache_refilled_after_restart() {
    let mut setup = ReleaseSetup::start();
    let artifact = setup.sign("iggy-5", 2 * 512 * 1024 + 77, TARGET, 5, "release.key");
    setup.publish(&artifact);
    let sha256 = sha256_of(&artifact);
    let upgrade = setup.upgrade(&artifact);
    let original = std::fs::read(&artifact).unwrap();
    let cache = setup.cache_file(&sha256);
    wait_until("the cache file", Duration::from_secs(5), || cache.exists());

    let cases = damaged_copies(&original);
    for (case, bytes) in &cases {
        std::fs::write(&cache, bytes).unwrap();
        setup.cluster.kill_control_plane();
        setup.cluster.start_control_plane(&[]);
        let staged = setup
            .attempt(&upgrade, 4)
            .unwrap_or_else(|failure| panic!("{case}: {failure:?}"));
        assert_eq!(std::fs::read(staged.path()).unwrap(), original, "{case}");
        assert_eq!(std::fs::read(&cache).unwrap(), original, "{case}");
        // The next case downloads again instead of finding this one staged.
        std::fs::remove_file(staged.path()).unwrap();
    }
    let log = setup.cluster.control_plane_log();
    assert_eq!(
        support::count(
            &log,
            "cached artifact is damaged; filling it again from the object store"
        ),
        cases.len(),
        "{log}"
    );
}

#[test]
fn bad_manifests_and_tasks_rejected_before_download() {
    let setup = ReleaseSetup::start();
    let good = setup.sign("iggy-5", 100_000, TARGET, 5, "release.key");
    setup.publish(&good);
    let sha256 = sha256_of(&good);

    // A manifest for another target, published and signed correctly.
    let arm = setup.sign(
        "iggy-arm",
        90_000,
        "aarch64-unknown-linux-gnu",
        6,
        "release.key",
    );
    setup.publish(&arm);
    let failure = setup.attempt(&setup.upgrade(&arm), 0).unwrap_err();
    assert_eq!(failure.code(), Some(RejectCode::WrongTarget), "{failure:?}");
    setup.assert_nothing_staged(&sha256_of(&arm), "other target");

    // Manifests signed by the task key and by a random key.
    let stranger = SigningKey::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(77));
    for (case, key) in [
        ("task key", setup.cluster.task_key()),
        ("random key", stranger),
    ] {
        let mut upgrade = setup.upgrade(&good);
        let manifest = upgrade.manifest.manifest_unverified().unwrap();
        *upgrade.manifest = SignedManifest::sign(&manifest, &key).unwrap();
        let failure = setup.attempt(&upgrade, 0).unwrap_err();
        assert_eq!(
            failure.code(),
            Some(RejectCode::ManifestInvalid),
            "{case}: {failure:?}"
        );
        setup.assert_nothing_staged(&sha256, case);
    }

    // The control plane's task names another digest than the release key signed.
    let mut upgrade = setup.upgrade(&good);
    upgrade.sha256 = hex::decode(sha256_of(&arm)).unwrap();
    let failure = setup.attempt(&upgrade, 0).unwrap_err();
    assert_eq!(
        failure.code(),
        Some(RejectCode::ManifestMismatch),
        "{failure:?}"
    );
    setup.assert_nothing_staged(&sha256, "task digest differs");
    setup.assert_nothing_staged(&sha256_of(&arm), "task digest differs");
}

#[test]
fn rollback_needs_valid_root_permit() {
    let setup = ReleaseSetup::start();
    let old = setup.sign("iggy-3", 70_000, TARGET, 3, "release.key");
    setup.publish(&old);
    let sha256 = sha256_of(&old);
    let now = SystemClock.now();
    let in_an_hour = UnixMillis(now.0 + 3_600_000);

    let failure = setup.attempt(&setup.upgrade(&old), 5).unwrap_err();
    assert_eq!(
        failure.code(),
        Some(RejectCode::ReleaseRollback),
        "{failure:?}"
    );
    setup.assert_nothing_staged(&sha256, "no permit");

    let expired = UnixMillis(now.0 - SKEW_MS - 60_000);
    let cases = [
        (
            "signed by the task key",
            permit(3, in_an_hour, &setup.cluster.task_key()),
        ),
        (
            "signed by the release key",
            permit(
                3,
                in_an_hour,
                &offline::read_key(&setup.cluster.path("release.key")).unwrap(),
            ),
        ),
        ("expired", permit(3, expired, &setup.cluster.root_key())),
    ];
    for (case, permit) in cases {
        let mut upgrade = setup.upgrade(&old);
        upgrade.rollback_permit = Some(Box::new(permit));
        let failure = setup.attempt(&upgrade, 5).unwrap_err();
        assert_eq!(
            failure.code(),
            Some(RejectCode::RollbackPermitInvalid),
            "{case}: {failure:?}"
        );
        setup.assert_nothing_staged(&sha256, case);
    }

    // A permit signed offline with `wardenctl release permit` and the root key.
    let permit_file = setup.cluster.path("permit.b64");
    ctl_ok(
        &setup.cluster,
        &[
            "release",
            "permit",
            "--root-key",
            path_str(&setup.cluster.path("root.key")),
            "--deployment",
            DEPLOYMENT,
            "--node",
            "n1",
            "--component",
            "iggy",
            "--release-counter-min",
            "3",
            "--expires-in",
            "1h",
            "--out",
            path_str(&permit_file),
        ],
    );
    let text = std::fs::read_to_string(&permit_file).unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .unwrap();
    let mut upgrade = setup.upgrade(&old);
    upgrade.rollback_permit = Some(Box::new(SignedRollbackPermit::decode(&bytes).unwrap()));
    let staged = setup.attempt(&upgrade, 5).unwrap();
    assert!(staged.path().exists());
}

#[test]
fn fetch_signed_by_another_key_refused() {
    let mut setup = ReleaseSetup::start();
    let artifact = setup.sign("iggy-5", 50_000, TARGET, 5, "release.key");
    setup.publish(&artifact);
    let sha256 = sha256_of(&artifact);

    // n2 enrolls its own key; its key then signs requests on n1's subject over n1's connection.
    setup.cluster.add_node("n2");
    setup.cluster.start_warden("n2", &[]);
    let n2_dir = setup.cluster.path("n2");
    wait_until("n2 to enroll", Duration::from_secs(15), || {
        warden::credentials::load(&n2_dir).ok().flatten().is_some()
    });
    setup.cluster.kill_warden("n2");
    let (n2_key, _) = warden::identity::load_or_create(&n2_dir, &mut rand::rngs::OsRng).unwrap();
    let stranger = SigningKey::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(78));
    for (case, key) in [("n2's key", n2_key), ("a random key", stranger)] {
        let failure = setup
            .attempt_as(&setup.upgrade(&artifact), 0, &key)
            .unwrap_err();
        assert!(
            matches!(failure, Failure::Download(ArtifactError::Refused { .. })),
            "{case}: {failure:?}"
        );
        setup.assert_nothing_staged(&sha256, case);
    }
    assert!(
        setup
            .cluster
            .control_plane_log()
            .contains("artifact fetch refused"),
        "the control plane logs each refusal"
    );

    // n1's own key still works.
    setup.attempt(&setup.upgrade(&artifact), 0).unwrap();
}

#[test]
fn publish_rejects_unsigned_or_mismatched() {
    let setup = ReleaseSetup::start();

    // Signed by the task key, which is not a release key.
    std::fs::copy(
        setup.cluster.path("task.key"),
        setup.cluster.path("not-release.key"),
    )
    .unwrap();
    let forged = setup.sign("forged", 10_000, TARGET, 9, "not-release.key");
    let (code, _, stderr) = setup.cluster.ctl(&[
        "release",
        "publish",
        "--manifest",
        path_str(&manifest_path(&forged)),
        "--artifact",
        path_str(&forged),
    ]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("field: manifest"), "{stderr}");
    assert!(stderr.contains("not a release key"), "{stderr}");

    // A correctly signed manifest with other bytes: one flipped byte, and one more byte.
    let good = setup.sign("good", 10_000, TARGET, 9, "release.key");
    let original = std::fs::read(&good).unwrap();
    let mut flipped = original.clone();
    flipped[5] ^= 0x80;
    let mut longer = original;
    longer.push(0);
    for (case, bytes, detail) in [("flipped", flipped, "sha256"), ("longer", longer, "size")] {
        let upload = setup.cluster.path(&format!("upload-{case}"));
        std::fs::write(&upload, bytes).unwrap();
        let (code, _, stderr) = setup.cluster.ctl(&[
            "release",
            "publish",
            "--manifest",
            path_str(&manifest_path(&good)),
            "--artifact",
            path_str(&upload),
        ]);
        assert_ne!(code, Some(0), "{case}");
        assert!(stderr.contains("field: artifact"), "{case}: {stderr}");
        assert!(
            stderr.contains(&format!("artifact {detail} mismatch")),
            "{case}: {stderr}"
        );
    }
    let listed: Vec<ReleaseView> =
        serde_json::from_str(&ctl_ok(&setup.cluster, &["-o", "json", "release", "list"])).unwrap();
    assert!(listed.is_empty(), "{listed:?}");
}

/// An upload body that pauses halfway. Once the first half is sent, the control plane has
/// passed its check for an existing manifest, so it signals the test and waits for a go.
struct PausedUpload {
    bytes: Vec<u8>,
    sent: usize,
    started: Option<std::sync::mpsc::Sender<()>>,
    go: std::sync::mpsc::Receiver<()>,
}

impl std::io::Read for PausedUpload {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let half = self.bytes.len() / 2;
        if self.sent == half {
            if let Some(started) = self.started.take() {
                started.send(()).unwrap();
                self.go.recv().unwrap();
            }
        }
        let end = if self.sent < half {
            half
        } else {
            self.bytes.len()
        };
        let count = buffer.len().min(end - self.sent);
        buffer[..count].copy_from_slice(&self.bytes[self.sent..self.sent + count]);
        self.sent += count;
        Ok(count)
    }
}

/// Two publishes of the same bytes with different manifests race: the second finishes while
/// the first is still uploading. The first must not report success, since its manifest is
/// not the one stored.
#[test]
fn publish_racing_another_manifest_conflicts() {
    let setup = ReleaseSetup::start();
    let artifact = setup.sign("raced", 256 * 1024, TARGET, 3, "release.key");
    let other_manifest = setup.cluster.path("raced-other.manifest");
    ctl_ok(
        &setup.cluster,
        &[
            "release",
            "sign",
            "--release-key",
            path_str(&setup.cluster.path("release.key")),
            "--artifact",
            path_str(&artifact),
            "--component",
            "iggy",
            "--version",
            "0.8.33",
            "--target",
            TARGET,
            "--release-counter",
            "33",
            "--out",
            path_str(&other_manifest),
        ],
    );

    let (started_tx, started) = std::sync::mpsc::channel();
    let (go, go_rx) = std::sync::mpsc::channel();
    let upload = PausedUpload {
        bytes: std::fs::read(&artifact).unwrap(),
        sent: 0,
        started: Some(started_tx),
        go: go_rx,
    };
    let length = upload.bytes.len() as u64;
    let url = format!("{}/v1/releases", setup.cluster.api);
    let key = setup.cluster.api_key.clone();
    let manifest_text = std::fs::read_to_string(manifest_path(&artifact)).unwrap();
    let first = std::thread::spawn(move || {
        reqwest::blocking::Client::new()
            .put(url)
            .bearer_auth(key)
            .header("x-warden-manifest", manifest_text.trim())
            .body(reqwest::blocking::Body::sized(upload, length))
            .timeout(Duration::from_secs(60))
            .send()
            .map(|response| {
                (
                    response.status().as_u16(),
                    response.text().unwrap_or_default(),
                )
            })
    });
    started.recv_timeout(Duration::from_secs(30)).unwrap();

    let (code, _, stderr) = setup.cluster.ctl(&[
        "release",
        "publish",
        "--manifest",
        path_str(&other_manifest),
        "--artifact",
        path_str(&artifact),
    ]);
    assert_eq!(code, Some(0), "the second publish failed: {stderr}");
    go.send(()).unwrap();
    let (status, body) = first.join().unwrap().unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(
        body.contains("already published with another manifest"),
        "{body}"
    );

    let listed: Vec<ReleaseView> =
        serde_json::from_str(&ctl_ok(&setup.cluster, &["-o", "json", "release", "list"])).unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].version, "0.8.33");
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
    let mut setup = ReleaseSetup::start();
    let (upgrade, original, sha256) = setup.publish_random("iggy-1", 300_000, 1);
    let cache = setup.cache_file(&sha256);
    let elsewhere = setup.cluster.path("elsewhere");
    let damaged = flip_byte(&original);
    std::fs::write(&elsewhere, &damaged).unwrap();

    setup.cluster.kill_control_plane();
    std::fs::remove_file(&cache).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &cache).unwrap();
    setup.cluster.start_control_plane(&[]);

    let state = tempfile::tempdir().unwrap();
    let staged = setup.attempt_into(&upgrade, state.path()).unwrap();
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
    let mut setup = ReleaseSetup::start();
    let (upgrade, original, sha256) = setup.publish_random("iggy-2", 100_000, 2);
    let cache = setup.cache_file(&sha256);

    setup.cluster.kill_control_plane();
    std::fs::remove_file(&cache).unwrap();
    std::os::unix::fs::symlink(setup.cluster.path("missing"), &cache).unwrap();
    setup.cluster.start_control_plane(&[]);

    let state = tempfile::tempdir().unwrap();
    let staged = setup.attempt_into(&upgrade, state.path()).unwrap();
    assert_eq!(std::fs::read(staged.path()).unwrap(), original);
    assert!(std::fs::symlink_metadata(&cache).unwrap().is_file());
    assert!(!setup.cluster.path("missing").exists(), "no write through");
}

/// A link to a device that never ends is read only to one byte past the manifest's size, then
/// replaced by a filled file.
#[test]
fn link_to_endless_device_replaced() {
    let mut setup = ReleaseSetup::start();
    let (upgrade, original, sha256) = setup.publish_random("iggy-9", 100_000, 9);
    let cache = setup.cache_file(&sha256);

    setup.cluster.kill_control_plane();
    std::fs::remove_file(&cache).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &cache).unwrap();
    setup.cluster.start_control_plane(&[]);

    let state = tempfile::tempdir().unwrap();
    let staged = setup.attempt_into(&upgrade, state.path()).unwrap();
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
    let mut setup = ReleaseSetup::start();
    let (upgrade, _, sha256) = setup.publish_random("iggy-10", 100_000, 10);
    let cache = setup.cache_file(&sha256);

    setup.cluster.kill_control_plane();
    std::fs::remove_file(&cache).unwrap();
    setup.cluster.start_control_plane(&[]);
    let pid = setup.cluster.control_plane().id().unwrap();
    let partial = cache.with_file_name(format!("{sha256}.fill-{pid}"));
    std::fs::create_dir(&partial).unwrap();
    std::fs::write(partial.join("keep"), b"x").unwrap();

    let state = tempfile::tempdir().unwrap();
    assert!(setup.attempt_into(&upgrade, state.path()).is_err());
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
    let mut setup = ReleaseSetup::start();
    let (upgrade, original, sha256) = setup.publish_random("iggy-3", 100_000, 3);
    let cache = setup.cache_file(&sha256);

    setup.cluster.kill_control_plane();
    std::fs::remove_file(&cache).unwrap();
    std::fs::create_dir(&cache).unwrap();
    setup.cluster.start_control_plane(&[]);

    let state = tempfile::tempdir().unwrap();
    let result = setup.attempt_into(&upgrade, state.path());
    let log = setup.cluster.control_plane_log();
    let staged = result.unwrap_or_else(|error| {
        panic!("the download failed: {error:?}; control plane log:\n{log}")
    });
    assert_eq!(std::fs::read(staged.path()).unwrap(), original);
}

/// A FIFO at the cache path must not hang the check: opening it for reading blocks until a
/// writer comes, while the check holds the lock that every other unchecked artifact waits for.
#[test]
fn fifo_at_cache_path_not_hanging() {
    let mut setup = ReleaseSetup::start();
    let (fifo_upgrade, fifo_original, fifo_sha256) = setup.publish_random("iggy-4", 100_000, 4);
    let (other_upgrade, other_original, _) = setup.publish_random("iggy-5", 100_000, 5);
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
            let result = setup.attempt_into(&fifo_upgrade, fifo_state.path());
            fifo_done.store(true, Ordering::SeqCst);
            result
        });
        std::thread::sleep(Duration::from_secs(1));
        let other = scope.spawn(|| {
            let result = setup.attempt_into(&other_upgrade, other_state.path());
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
/// instead of hanging or serving the damaged bytes, and the replica logs an error. Publishing
/// the release again heals it.
#[test]
fn damaged_without_object_until_republished() {
    let mut setup = ReleaseSetup::start();
    let (upgrade, original, sha256) = setup.publish_random("iggy-6", 200_000, 6);
    let cache = setup.cache_file(&sha256);

    setup.delete_object(&sha256);
    setup.cluster.kill_control_plane();
    std::fs::write(&cache, flip_byte(&original)).unwrap();
    setup.cluster.start_control_plane(&[]);

    let state = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let result = setup.attempt_into(&upgrade, state.path());
    assert!(result.is_err(), "a download with no good copy succeeded");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the failure took {:?}",
        started.elapsed()
    );
    let log = setup.cluster.control_plane_log();
    assert_eq!(support::count(&log, DAMAGED), 1, "{log}");
    assert!(!cache.exists(), "the damaged file was removed");
    // The node gets only "not found", so the replica logs an error that names the artifact.
    let errors: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("ERROR") && line.contains(&sha256))
        .collect();
    assert!(!errors.is_empty(), "no error names {sha256}:\n{log}");

    // A second request fails the same way instead of serving anything.
    assert!(setup.attempt_into(&upgrade, state.path()).is_err());

    // The operator's fix: publish the same release again.
    setup.publish(&setup.cluster.path("iggy-6"));
    let staged = setup.attempt_into(&upgrade, state.path()).unwrap();
    assert_eq!(std::fs::read(staged.path()).unwrap(), original);

    // A restart reads the republished file and finds it good.
    std::fs::remove_file(staged.path()).unwrap();
    setup.restart();
    let staged = setup.attempt_into(&upgrade, state.path()).unwrap();
    assert_eq!(std::fs::read(staged.path()).unwrap(), original);
    let log = setup.cluster.control_plane_log();
    assert_eq!(support::count(&log, DAMAGED), 1, "{log}");
}

/// Four downloads at once after a restart, first of a good cache file and then of a damaged
/// one: the file is checked once, a damaged one is filled once, and every node gets the right
/// bytes.
#[test]
fn concurrent_downloads_during_check() {
    let mut setup = ReleaseSetup::start();
    let size = 6 * 1024 * 1024 + 3;
    let (upgrade, original, sha256) = setup.publish_random("iggy-7", size, 7);
    let cache = setup.cache_file(&sha256);

    for case in ["good", "damaged"] {
        setup.cluster.kill_control_plane();
        if case == "damaged" {
            std::fs::write(&cache, flip_byte(&original)).unwrap();
        }
        setup.cluster.start_control_plane(&[]);
        let filled_before = support::count(&setup.cluster.control_plane_log(), FILLED);

        let results: Vec<Result<StagedArtifact, Failure>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        let state = tempfile::tempdir().unwrap();
                        let result = setup.attempt_into(&upgrade, state.path());
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
