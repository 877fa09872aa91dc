//! Feeds arbitrary bytes to the release-manifest decoder and verifier. Nothing may panic, and no
//! manifest not signed by a listed release key may verify.

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use warden_bus::release::SignedManifest;
use warden_bus::trust::{KeyGrant, TrustDocument};
use warden_bus::{SigningKey, UnixMillis};

fuzz_target!(|data: &[u8]| {
    let release = SigningKey::from_seed([4; 32]);
    let grant = KeyGrant { public_key: release.public_key().as_bytes().to_vec(), not_before: UnixMillis(0), not_after: UnixMillis(u64::MAX / 2) };
    let trust = TrustDocument {
        version: 1,
        issued_at: UnixMillis(0),
        expires_at: UnixMillis(u64::MAX / 2),
        root_key: SigningKey::from_seed([1; 32]).public_key().as_bytes().to_vec(),
        task_keys: vec![grant.clone()],
        release_keys: vec![grant],
    };
    if let Ok(signed) = SignedManifest::decode(data) {
        let accepted = signed.verify(&trust, UnixMillis(1_796_428_800_000), Duration::from_secs(300));
        assert!(accepted.is_err(), "random bytes verified as a signed manifest");
    }
});
