//! Feeds arbitrary bytes to the trust-document decoder and verifier. Nothing may panic, and no
//! document not signed by the pinned root may be accepted.

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use warden_bus::trust::SignedDocument;
use warden_bus::{SigningKey, UnixMillis};

fuzz_target!(|data: &[u8]| {
    let root = SigningKey::from_seed([1; 32]).public_key();
    if let Ok(document) = SignedDocument::decode(data) {
        let accepted = document.verify_initial(&root, UnixMillis(1_796_428_800_000), Duration::from_secs(300));
        assert!(accepted.is_err(), "random bytes verified as a root-signed document");
    }
});
