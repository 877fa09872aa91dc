//! A valid bootstrap file for tests that start a Warden or load its configuration.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use rand::SeedableRng;
use warden::bootstrap::BootstrapFile;
use warden_bus::trust::{KeyGrant, SignedDocument, TrustDocument};
use warden_bus::SigningKey;

/// Returns a bootstrap file for node `n1` of deployment `prod` with its state in
/// `<dir>/state`, a trust document valid for a year, an enrollment token, and the broker at
/// `nats_url`. It names no components and no access table.
pub fn bootstrap_file(dir: &Path, nats_url: &str) -> BootstrapFile {
    let root = SigningKey::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(1));
    let task = SigningKey::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(2));
    let now = warden_bus::Clock::now(&warden_bus::SystemClock);
    let year = Duration::from_secs(365 * 86_400);
    let document = TrustDocument {
        version: 1,
        issued_at: now,
        expires_at: now.saturating_add(year),
        root_key: root.public_key().as_bytes().to_vec(),
        task_keys: vec![KeyGrant {
            public_key: task.public_key().as_bytes().to_vec(),
            not_before: now,
            not_after: now.saturating_add(year),
        }],
        release_keys: Vec::new(),
    };
    let signed = SignedDocument::sign(&document, &[&root]).unwrap();
    BootstrapFile {
        deployment: "prod".into(),
        node: "n1".into(),
        nats_url: nats_url.into(),
        state_dir: dir.join("state"),
        root_key: root.public_key().to_hex(),
        trust_document: base64::engine::general_purpose::STANDARD.encode(signed.encode().unwrap()),
        approval_key: None,
        enrollment_token: Some("test-token-0123456789".into()),
        ca_certificate: None,
        enrollment_jwt: None,
        enrollment_seed: None,
        iggy_config_path: None,
        heartbeat_interval_secs: None,
        clock_skew_secs: None,
        task_validity_max_secs: None,
        self_upgrade_health_timeout_secs: None,
        components: Default::default(),
        tls_names: Vec::new(),
        tls_listen: None,
        access: None,
    }
}
