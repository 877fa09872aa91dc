//! Download-and-verify throughput of a released artifact, next to `sha256sum` of the same file.
//!
//! A real nats-server in operator mode with TLS, the release control-plane binary, and one
//! enrolled node identity that downloads the artifact with `fetch_verified`: node-signed chunk
//! requests of 512 KiB, four in flight, written to a 0600 staging file, hashed while written,
//! fsynced and renamed. Build the binaries first, then run:
//!
//! ```text
//! cargo build --release --bins
//! cargo bench -p warden-control-plane --bench artifact_download -- [--megabytes 100] [--runs 3]
//! ```
//!
//! The first download also fills the control plane's cache from the object store; it is
//! reported on its own line. `sha256sum` runs on the same file as a separate process.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_precision_loss,
    missing_docs
)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use support::{Cluster, DEPLOYMENT};
use warden::artifacts::{self, Requester};
use warden::core::release::{check_upgrade, ReleaseContext, BUILD_TARGET};
use warden::core::verify::Identity;
use warden_bus::messages::Upgrade;
use warden_bus::{Clock, DeploymentId, NodeId, SystemClock};
use warden_control_plane::ctl::offline;
use warden_testkit::wait_until;

struct Options {
    megabytes: usize,
    runs: usize,
}

fn options() -> Options {
    let mut options = Options {
        megabytes: 100,
        runs: 3,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--megabytes" => options.megabytes = args.next().unwrap().parse().unwrap(),
            "--runs" => options.runs = args.next().unwrap().parse().unwrap(),
            "--bench" => {}
            other => panic!("unknown argument {other}; use --megabytes or --runs"),
        }
    }
    options
}

fn ctl_ok(cluster: &Cluster, args: &[&str]) {
    let (code, _, stderr) = cluster.ctl(args);
    assert_eq!(code, Some(0), "wardenctl {args:?} failed: {stderr}");
}

fn megabytes_per_second(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64()
}

fn sha256sum(path: &Path) -> Duration {
    let started = Instant::now();
    let output = Command::new("sha256sum").arg(path).output().unwrap();
    let elapsed = started.elapsed();
    assert!(output.status.success(), "sha256sum failed");
    elapsed
}

fn main() {
    let options = options();
    let size = options.megabytes * 1_000_000;
    let cache_dir = tempfile::tempdir().unwrap();
    let cache_arg = cache_dir.path().to_string_lossy().into_owned();
    let mut cluster = Cluster::start_with(&["--artifact-cache-dir", &cache_arg]);

    // A trust document with a release key, an artifact of random bytes, signed and published.
    let release_key = offline::create_key(&cluster.path("release.key")).unwrap();
    let task_key = cluster.task_key();
    let trust_file = cluster.path("trust-2.b64");
    offline::sign_trust(&offline::TrustSignRequest {
        root_key: cluster.path("root.key"),
        new_root_key: None,
        version: 2,
        expires_in: "30d".into(),
        task_keys: vec![format!("{},from=-1h", task_key.public_key().to_hex())],
        release_keys: vec![format!("{},from=-1h", release_key.public_key().to_hex())],
        out: trust_file.clone(),
    })
    .unwrap();
    ctl_ok(
        &cluster,
        &["trust", "publish", trust_file.to_str().unwrap()],
    );
    let trust = offline::read_trust(&trust_file)
        .unwrap()
        .document_unverified()
        .unwrap();
    let artifact = cluster.path("artifact.bin");
    let mut bytes = vec![0u8; size];
    rand_chacha::ChaCha20Rng::seed_from_u64(1).fill_bytes(&mut bytes);
    std::fs::write(&artifact, &bytes).unwrap();
    drop(bytes);
    let manifest_file = cluster.path("artifact.manifest");
    offline::sign_release(&offline::ReleaseSignRequest {
        release_key: cluster.path("release.key"),
        artifact: artifact.clone(),
        component: warden_bus::messages::Component::Iggy,
        version: "0.8.1".into(),
        target: BUILD_TARGET.into(),
        release_counter: 1,
        out: manifest_file.clone(),
    })
    .unwrap();
    let started = Instant::now();
    ctl_ok(
        &cluster,
        &[
            "release",
            "publish",
            "--manifest",
            manifest_file.to_str().unwrap(),
            "--artifact",
            artifact.to_str().unwrap(),
        ],
    );
    let publish = started.elapsed();

    // One enrolled node identity; the Warden process is stopped and its credential reused.
    cluster.add_node("n1");
    cluster.start_warden("n1", &[]);
    let state_dir = cluster.path("n1");
    wait_until("n1 to enroll", Duration::from_secs(30), || {
        warden::credentials::load(&state_dir)
            .ok()
            .flatten()
            .is_some()
    });
    cluster.kill_warden("n1");
    let (node_key, _) =
        warden::identity::load_or_create(&state_dir, &mut rand::rngs::OsRng).unwrap();
    let credential = warden::credentials::load(&state_dir).unwrap().unwrap();
    let identity = Identity {
        deployment: DeploymentId::new(DEPLOYMENT).unwrap(),
        node: NodeId::new("n1").unwrap(),
        approval_key: None,
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let bus = runtime
        .block_on(warden::credentials::connect_node(
            &cluster.nats_url(),
            &state_dir.join(warden::credentials::CA_FILE),
            &credential,
            &node_key,
            &identity.deployment,
            &identity.node,
        ))
        .unwrap();
    let signed = offline::read_manifest(&manifest_file).unwrap();
    let manifest = signed.manifest_unverified().unwrap();
    let upgrade = Upgrade {
        component: manifest.component,
        version: manifest.version.clone(),
        sha256: manifest.sha256.clone(),
        release_counter: manifest.release_counter,
        manifest: Box::new(signed),
        rollback_permit: None,
    };
    let release = check_upgrade(
        &upgrade,
        &ReleaseContext {
            trust: &trust,
            identity: &identity,
            now: SystemClock.now(),
            skew: Duration::from_secs(300),
            target: BUILD_TARGET,
            installed_counter: 0,
        },
    )
    .unwrap();

    println!(
        "artifact of {} MB; host: {} cores",
        options.megabytes,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "publish (wardenctl upload, check, object store): {:.2}s, {:.0} MB/s",
        publish.as_secs_f64(),
        megabytes_per_second(size, publish)
    );
    // Publishing left the artifact in the cache; drop it so the first download fills it.
    std::fs::remove_file(cache_dir.path().join(hex::encode(&manifest.sha256))).unwrap();
    for run in 0..=options.runs {
        let requester = Requester {
            deployment: &identity.deployment,
            node: &identity.node,
            node_key: &node_key,
            clock: &SystemClock,
        };
        let started = Instant::now();
        let staged = runtime
            .block_on(artifacts::fetch_verified(
                &bus, requester, &release, &state_dir,
            ))
            .unwrap();
        let elapsed = started.elapsed();
        let label = if run == 0 {
            "fetch_verified, cache filled from object store".to_owned()
        } else {
            format!("fetch_verified, run {run}")
        };
        println!(
            "{label}: {:.2}s, {:.0} MB/s",
            elapsed.as_secs_f64(),
            megabytes_per_second(size, elapsed)
        );
        std::fs::remove_file(staged.path()).unwrap();
    }
    for run in 1..=options.runs {
        let elapsed = sha256sum(&artifact);
        println!(
            "sha256sum, run {run}: {:.2}s, {:.0} MB/s",
            elapsed.as_secs_f64(),
            megabytes_per_second(size, elapsed)
        );
    }
}
