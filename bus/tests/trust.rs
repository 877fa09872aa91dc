//! Trust documents: who may sign them, in what order, and what never comes back.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use proptest::prelude::*;
use rand::SeedableRng;
use warden_bus::trust::{KeyGrant, SignedDocument, TrustDocument, TrustError};
use warden_bus::{SigningKey, UnixMillis};

const NOW: UnixMillis = UnixMillis(1_796_428_800_000);
const DAY_MS: u64 = 86_400_000;
const SKEW: Duration = Duration::from_secs(300);

fn key(seed: u64) -> SigningKey {
    SigningKey::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(seed))
}

fn grant(key: &SigningKey) -> KeyGrant {
    KeyGrant {
        public_key: key.public_key().as_bytes().to_vec(),
        not_before: UnixMillis(NOW.0 - DAY_MS),
        not_after: UnixMillis(NOW.0 + 30 * DAY_MS),
    }
}

fn document(version: u64, root: &SigningKey) -> TrustDocument {
    TrustDocument {
        version,
        issued_at: NOW,
        expires_at: UnixMillis(NOW.0 + 365 * DAY_MS),
        root_key: root.public_key().as_bytes().to_vec(),
        task_keys: vec![grant(&key(100))],
        release_keys: vec![grant(&key(200))],
    }
}

fn signed(document: &TrustDocument, signers: &[&SigningKey]) -> SignedDocument {
    SignedDocument::sign(document, signers).unwrap()
}

#[test]
fn initial_document_needs_pinned_root() {
    let root = key(1);
    let first = signed(&document(1, &root), &[&root]);
    assert_eq!(
        first
            .verify_initial(&root.public_key(), NOW, SKEW)
            .unwrap()
            .version,
        1
    );
    let other = key(2);
    assert!(matches!(
        first.verify_initial(&other.public_key(), NOW, SKEW),
        Err(TrustError::NotSignedByRoot { .. })
    ));
}

#[test]
fn successor_must_be_newer() {
    let root = key(1);
    let current = document(5, &root);
    assert!(signed(&document(6, &root), &[&root])
        .verify_successor(&current, NOW, SKEW)
        .is_ok());
    for version in [5, 4, 1] {
        let result =
            signed(&document(version, &root), &[&root]).verify_successor(&current, NOW, SKEW);
        assert!(
            matches!(result, Err(TrustError::Downgrade { offered, current: 5 }) if offered == version),
            "{result:?}"
        );
    }
}

#[test]
fn non_root_signature_rejected() {
    let root = key(1);
    let current = document(1, &root);
    let task_key = key(100);
    // A task key, a release key or any stranger cannot sign the trust document.
    for signer in [&task_key, &key(200), &key(3)] {
        let mut forged = document(2, &root);
        forged.task_keys.push(grant(&key(4)));
        let result = signed(&forged, &[signer]).verify_successor(&current, NOW, SKEW);
        assert!(
            matches!(result, Err(TrustError::NotSignedByRoot { .. })),
            "{result:?}"
        );
    }
}

#[test]
fn extra_unverifiable_signature_rejected() {
    let root = key(1);
    let current = document(1, &root);
    let mut next = signed(&document(2, &root), &[&root]);
    let mut bogus = next.signatures[0].clone();
    bogus.signature[0] ^= 1;
    next.signatures.push(bogus);
    assert!(matches!(
        next.verify_successor(&current, NOW, SKEW),
        Err(TrustError::BadSignature { .. })
    ));
}

#[test]
fn root_rotation_needs_both_roots() {
    let old_root = key(1);
    let new_root = key(2);
    let current = document(1, &old_root);
    let rotation = document(2, &new_root);

    let only_old = signed(&rotation, &[&old_root]).verify_successor(&current, NOW, SKEW);
    assert!(
        matches!(only_old, Err(TrustError::NewRootNotProven { .. })),
        "{only_old:?}"
    );
    let only_new = signed(&rotation, &[&new_root]).verify_successor(&current, NOW, SKEW);
    assert!(
        matches!(only_new, Err(TrustError::NotSignedByRoot { .. })),
        "{only_new:?}"
    );
    let rotated = signed(&rotation, &[&old_root, &new_root])
        .verify_successor(&current, NOW, SKEW)
        .unwrap();

    // After the rotation only the new root signs.
    let by_new =
        signed(&document(3, &new_root), &[&new_root]).verify_successor(&rotated, NOW, SKEW);
    assert!(by_new.is_ok());
    let by_old =
        signed(&document(3, &new_root), &[&old_root]).verify_successor(&rotated, NOW, SKEW);
    assert!(matches!(by_old, Err(TrustError::NotSignedByRoot { .. })));
}

#[test]
fn expired_document_rejected() {
    let root = key(1);
    let mut old = document(2, &root);
    old.issued_at = UnixMillis(NOW.0 - 10 * DAY_MS);
    old.expires_at = UnixMillis(NOW.0 - DAY_MS);
    let result = signed(&old, &[&root]).verify_successor(&document(1, &root), NOW, SKEW);
    assert!(
        matches!(result, Err(TrustError::Expired { .. })),
        "{result:?}"
    );
}

#[test]
fn structure_is_validated() {
    let root = key(1);
    let mut no_task_keys = document(1, &root);
    no_task_keys.task_keys.clear();
    assert!(no_task_keys
        .validate()
        .unwrap_err()
        .to_string()
        .contains("no task key"));

    let mut backwards = document(1, &root);
    backwards.task_keys[0].not_after = backwards.task_keys[0].not_before;
    assert!(backwards
        .validate()
        .unwrap_err()
        .to_string()
        .contains("ends before it starts"));

    let mut twice = document(1, &root);
    twice.task_keys.push(twice.task_keys[0].clone());
    assert!(twice
        .validate()
        .unwrap_err()
        .to_string()
        .contains("listed twice"));

    let mut bad_key = document(1, &root);
    bad_key.task_keys[0].public_key = vec![1, 2, 3];
    assert!(bad_key.validate().is_err());
}

#[test]
fn key_window_honours_skew() {
    let grant = grant(&key(100));
    assert!(grant.is_valid_at(NOW, SKEW));
    assert!(grant.is_valid_at(UnixMillis(grant.not_after.0 + 300_000), SKEW));
    assert!(!grant.is_valid_at(UnixMillis(grant.not_after.0 + 300_001), SKEW));
    assert!(!grant.is_valid_at(UnixMillis(grant.not_before.0 - 300_001), SKEW));
}

proptest! {
    #[test]
    fn flipped_bit_never_verifies(position in any::<usize>(), bit in 0u8..8) {
        let root = key(1);
        let current = document(1, &root);
        let mut bytes = signed(&document(2, &root), &[&root]).encode().unwrap();
        let index = position % bytes.len();
        bytes[index] ^= 1 << bit;
        let accepted = SignedDocument::decode(&bytes).ok().and_then(|doc| doc.verify_successor(&current, NOW, SKEW).ok());
        prop_assert!(accepted.is_none(), "bit {} of byte {} flipped was accepted", bit, index);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let root = key(1);
        if let Ok(document) = SignedDocument::decode(&bytes) {
            let _ = document.verify_initial(&root.public_key(), NOW, SKEW);
        }
    }
}
