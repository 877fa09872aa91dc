//! Feeds arbitrary bytes to the Warden's task decoder and verifier, as a message on its task
//! subject. Nothing may panic, and nothing unsigned may reach execution.

#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use warden::core::verify::{Identity, Limits};
use warden::core::{Effect, Persisted, Pulled, WardenCore};
use warden_bus::trust::{KeyGrant, TrustDocument};
use warden_bus::{DeploymentId, NodeId, SigningKey, UnixMillis};

const NOW: UnixMillis = UnixMillis(1_796_428_800_000);

fn core() -> &'static WardenCore {
    static CORE: OnceLock<WardenCore> = OnceLock::new();
    CORE.get_or_init(|| {
        let root = SigningKey::from_seed([1; 32]);
        let task = SigningKey::from_seed([2; 32]);
        let trust = TrustDocument {
            version: 1,
            issued_at: UnixMillis(0),
            expires_at: UnixMillis(u64::MAX / 2),
            root_key: root.public_key().as_bytes().to_vec(),
            task_keys: vec![KeyGrant {
                public_key: task.public_key().as_bytes().to_vec(),
                not_before: UnixMillis(0),
                not_after: UnixMillis(u64::MAX / 2),
            }],
            release_keys: Vec::new(),
        };
        let identity = Identity {
            deployment: DeploymentId::new("fuzz").unwrap(),
            node: NodeId::new("node").unwrap(),
            approval_key: Some(SigningKey::from_seed([3; 32]).public_key()),
        };
        let limits = Limits { clock_skew: Duration::from_secs(300), validity_max: Duration::from_secs(3600) };
        let persisted = Persisted { records: Vec::new(), config_version: 0, trust, clock_high_water: UnixMillis(0) };
        WardenCore::new(identity, limits, persisted)
    })
}

fuzz_target!(|data: &[u8]| {
    let mut core = core().clone();
    let effects = core.on_pulled(Pulled { payload: data, stream_sequence: 1 }, NOW);
    // Random bytes cannot carry a valid signature by the task key.
    assert!(!effects.iter().any(|effect| matches!(effect, Effect::Execute(_))));
});
