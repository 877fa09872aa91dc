//! Release manifests: what a release key vouches for about one artifact.
//!
//! A manifest names the component, version, target triple, SHA-256 and size of an artifact and a
//! monotonic release counter. The release pipeline signs it with a release key that the trust
//! document lists; the control plane never holds that key. A Warden runs an artifact only if
//! the manifest verifies, the control plane's upgrade task names the same digest, and the bytes
//! it downloaded have that size and digest.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::envelope::{decode, encode, WireError};
use crate::ids::{DeploymentId, NodeId};
use crate::messages::Component;
use crate::signed::{KeySignature, SigningKey};
use crate::time::UnixMillis;
use crate::trust::TrustDocument;

/// Maximum size of a released artifact, in bytes.
pub const ARTIFACT_BYTES_MAX: u64 = 512 * 1024 * 1024;

/// Maximum length of a version or target string, in bytes.
pub const RELEASE_TEXT_BYTES_MAX: usize = 64;

/// What a release key vouches for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseManifest {
    /// The component the artifact is.
    pub component: Component,
    /// Release version, such as `0.8.1`.
    pub version: String,
    /// Target triple the artifact runs on, such as `x86_64-unknown-linux-gnu`.
    pub target: String,
    /// SHA-256 of the artifact.
    #[serde(with = "serde_bytes")]
    pub sha256: Vec<u8>,
    /// Size of the artifact, in bytes.
    pub size: u64,
    /// Monotonic counter; a node never installs a lower one without a rollback permit.
    pub release_counter: u64,
    /// When the manifest was signed.
    pub issued_at: UnixMillis,
}

/// A manifest as exact bytes and the release key's signature over them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedManifest {
    /// MessagePack encoding of a [`ReleaseManifest`].
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// The release key's signature over `body`.
    pub signature: KeySignature,
}

/// Error from verifying a release manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The bytes do not decode.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The signing key is not a release key of the trust document.
    #[error("manifest signed by {key_id}, which is not a release key of trust document version {trust_version}")]
    UnknownKey {
        /// The key id the signature names.
        key_id: String,
        /// Version of the trust document consulted.
        trust_version: u64,
    },
    /// The release key is outside its validity window.
    #[error("manifest signed by release key {key_id} outside its validity window {not_before} to {not_after}")]
    KeyOutsideWindow {
        /// The key id.
        key_id: String,
        /// Start of the window.
        not_before: UnixMillis,
        /// End of the window.
        not_after: UnixMillis,
    },
    /// The signature does not verify.
    #[error("manifest signature by {key_id} does not verify")]
    BadSignature {
        /// The key id.
        key_id: String,
    },
    /// A field is invalid.
    #[error("invalid manifest: {reason}")]
    Invalid {
        /// Description of the problem.
        reason: String,
    },
}

impl ReleaseManifest {
    /// Checks the fields: a 32-byte digest, a size within the cap, and short printable version
    /// and target strings.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let invalid = |reason: String| Err(ManifestError::Invalid { reason });
        if self.sha256.len() != 32 {
            return invalid(format!(
                "sha256 has {} bytes; expected 32",
                self.sha256.len()
            ));
        }
        if self.size == 0 || self.size > ARTIFACT_BYTES_MAX {
            return invalid(format!(
                "size {} is outside 1 to {ARTIFACT_BYTES_MAX} bytes",
                self.size
            ));
        }
        for (name, value) in [("version", &self.version), ("target", &self.target)] {
            let printable = value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'));
            if value.is_empty() || value.len() > RELEASE_TEXT_BYTES_MAX || !printable {
                return invalid(format!("{name} {value:?} must be 1 to {RELEASE_TEXT_BYTES_MAX} characters of a-z, 0-9, '.', '-', '_' and '+'"));
            }
        }
        Ok(())
    }
}

impl SignedManifest {
    /// Validates, encodes and signs a manifest with a release key.
    pub fn sign(manifest: &ReleaseManifest, key: &SigningKey) -> Result<Self, ManifestError> {
        manifest.validate()?;
        let body = encode("release manifest", manifest)?;
        let signature = key.key_signature(&body);
        Ok(Self { body, signature })
    }

    /// Encodes the signed manifest for a file or the wire.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        encode("signed release manifest", self)
    }

    /// Decodes a signed manifest, checking the size cap first.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        decode("signed release manifest", bytes)
    }

    /// Decodes the manifest without checking the signature, to inspect it.
    pub fn manifest_unverified(&self) -> Result<ReleaseManifest, ManifestError> {
        Ok(decode("release manifest", &self.body)?)
    }

    /// Verifies the signature with a release key of `trust` that is valid at `now`, then decodes
    /// and validates the manifest.
    pub fn verify(
        &self,
        trust: &TrustDocument,
        now: UnixMillis,
        skew: Duration,
    ) -> Result<ReleaseManifest, ManifestError> {
        let key_id = self.signature.key_id.to_string();
        let Some((grant, key)) = trust.release_key(&self.signature.key_id) else {
            return Err(ManifestError::UnknownKey {
                key_id,
                trust_version: trust.version,
            });
        };
        if !key.verify_signature(&self.body, &self.signature) {
            return Err(ManifestError::BadSignature { key_id });
        }
        if !grant.is_valid_at(now, skew) {
            return Err(ManifestError::KeyOutsideWindow {
                key_id,
                not_before: grant.not_before,
                not_after: grant.not_after,
            });
        }
        let manifest: ReleaseManifest = decode("release manifest", &self.body)?;
        manifest.validate()?;
        Ok(manifest)
    }
}

/// The root key's consent to install a lower release counter than the installed one.
///
/// Without a permit a Warden never goes back to a lower release counter, so an old release with
/// a known flaw cannot be installed again by whoever holds a task key. Only the offline root key
/// signs permits, and each is bounded to one deployment, optionally one node, one component,
/// the lowest counter it allows and an expiry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackPermit {
    /// Deployment the permit applies to.
    pub deployment: DeploymentId,
    /// The one node the permit applies to, or every node of the deployment if `None`.
    pub node: Option<NodeId>,
    /// Component the permit applies to.
    pub component: Component,
    /// Lowest release counter the permit allows installing.
    pub release_counter_min: u64,
    /// When the root key signed the permit.
    pub issued_at: UnixMillis,
    /// After this time the permit allows nothing.
    pub expires_at: UnixMillis,
}

/// A rollback permit as exact bytes and the root key's signature over them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRollbackPermit {
    /// MessagePack encoding of a [`RollbackPermit`].
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// The root key's signature over `body`.
    pub signature: KeySignature,
}

/// Error from verifying a rollback permit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PermitError {
    /// The bytes do not decode.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The root key of the trust document is not a valid key.
    #[error("the trust document's root key is invalid: {reason}")]
    InvalidRoot {
        /// The parser's message.
        reason: String,
    },
    /// Signed by a key other than the root.
    #[error("rollback permit signed by {key_id}, not by the root key {root}; sign it with the root key file")]
    NotRootSigned {
        /// The key id the signature names.
        key_id: String,
        /// Id of the root key of the trust document.
        root: String,
    },
    /// The signature does not verify.
    #[error("rollback permit signature by {key_id} does not verify")]
    BadSignature {
        /// The key id.
        key_id: String,
    },
    /// The permit has expired.
    #[error("rollback permit expired at {expires_at}")]
    Expired {
        /// Expiry of the permit.
        expires_at: UnixMillis,
    },
    /// The permit's expiry is not after its issue time.
    #[error("rollback permit expires at {expires_at}, not after its issue time {issued_at}")]
    Invalid {
        /// Issue time.
        issued_at: UnixMillis,
        /// Expiry.
        expires_at: UnixMillis,
    },
}

impl SignedRollbackPermit {
    /// Encodes and signs a permit with the root key.
    pub fn sign(permit: &RollbackPermit, root: &SigningKey) -> Result<Self, PermitError> {
        let body = encode("rollback permit", permit)?;
        let signature = root.key_signature(&body);
        Ok(Self { body, signature })
    }

    /// Encodes the signed permit for a file or the wire.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        encode("signed rollback permit", self)
    }

    /// Decodes a signed permit, checking the size cap first.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        decode("signed rollback permit", bytes)
    }

    /// Decodes the permit without checking the signature, to inspect it.
    pub fn permit_unverified(&self) -> Result<RollbackPermit, PermitError> {
        Ok(decode("rollback permit", &self.body)?)
    }

    /// Verifies the signature with the root key of `trust` and that the permit has not expired
    /// at `now` minus `skew`. Whether the permit covers a given node, component and counter is
    /// the caller's check.
    pub fn verify(
        &self,
        trust: &TrustDocument,
        now: UnixMillis,
        skew: Duration,
    ) -> Result<RollbackPermit, PermitError> {
        let root = trust.root().map_err(|error| PermitError::InvalidRoot {
            reason: error.to_string(),
        })?;
        let key_id = self.signature.key_id.to_string();
        if &self.signature.key_id != root.id() {
            return Err(PermitError::NotRootSigned {
                key_id,
                root: root.id().to_string(),
            });
        }
        if !root.verify_signature(&self.body, &self.signature) {
            return Err(PermitError::BadSignature { key_id });
        }
        let permit: RollbackPermit = decode("rollback permit", &self.body)?;
        if permit.expires_at <= permit.issued_at {
            return Err(PermitError::Invalid {
                issued_at: permit.issued_at,
                expires_at: permit.expires_at,
            });
        }
        if now.saturating_sub(skew) > permit.expires_at {
            return Err(PermitError::Expired {
                expires_at: permit.expires_at,
            });
        }
        Ok(permit)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;
    use crate::trust::KeyGrant;

    const NOW: UnixMillis = UnixMillis(1_796_428_800_000);
    const SKEW: Duration = Duration::from_secs(300);
    const SKEW_MS: u64 = 300_000;

    fn key(seed: u64) -> SigningKey {
        SigningKey::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(seed))
    }

    fn trust(release: &SigningKey, until: UnixMillis) -> TrustDocument {
        let grant = |key: &SigningKey| KeyGrant {
            public_key: key.public_key().as_bytes().to_vec(),
            not_before: UnixMillis(0),
            not_after: until,
        };
        TrustDocument {
            version: 4,
            issued_at: UnixMillis(0),
            expires_at: UnixMillis(u64::MAX / 2),
            root_key: key(1).public_key().as_bytes().to_vec(),
            task_keys: vec![grant(&key(2))],
            release_keys: vec![grant(release)],
        }
    }

    fn manifest() -> ReleaseManifest {
        ReleaseManifest {
            component: Component::Iggy,
            version: "0.8.1".into(),
            target: "x86_64-unknown-linux-gnu".into(),
            sha256: vec![7; 32],
            size: 1024,
            release_counter: 12,
            issued_at: NOW,
        }
    }

    #[test]
    fn signed_by_release_key_verifies() {
        let release = key(3);
        let signed = SignedManifest::sign(&manifest(), &release).unwrap();
        let decoded = SignedManifest::decode(&signed.encode().unwrap()).unwrap();
        assert_eq!(
            decoded
                .verify(&trust(&release, UnixMillis(u64::MAX / 2)), NOW, SKEW)
                .unwrap(),
            manifest()
        );
    }

    #[test]
    fn task_key_cannot_sign_releases() {
        let release = key(3);
        let signed = SignedManifest::sign(&manifest(), &key(2)).unwrap();
        let error = signed
            .verify(&trust(&release, UnixMillis(u64::MAX / 2)), NOW, SKEW)
            .unwrap_err();
        assert!(matches!(error, ManifestError::UnknownKey { .. }), "{error}");
    }

    #[test]
    fn expired_release_key_rejected() {
        let release = key(3);
        let signed = SignedManifest::sign(&manifest(), &release).unwrap();
        let error = signed
            .verify(&trust(&release, UnixMillis(NOW.0 - 3_600_000)), NOW, SKEW)
            .unwrap_err();
        assert!(
            matches!(error, ManifestError::KeyOutsideWindow { .. }),
            "{error}"
        );
    }

    #[test]
    fn any_flipped_bit_rejected() {
        let release = key(3);
        let trust = trust(&release, UnixMillis(u64::MAX / 2));
        let bytes = SignedManifest::sign(&manifest(), &release)
            .unwrap()
            .encode()
            .unwrap();
        for index in 0..bytes.len() {
            for bit in 0..8 {
                let mut flipped = bytes.clone();
                flipped[index] ^= 1 << bit;
                let accepted = SignedManifest::decode(&flipped)
                    .ok()
                    .and_then(|signed| signed.verify(&trust, NOW, SKEW).ok());
                assert_eq!(
                    accepted, None,
                    "bit {bit} of byte {index} flipped was accepted"
                );
            }
        }
    }

    #[test]
    fn invalid_fields_rejected() {
        let release = key(3);
        for edit in [
            (|m: &mut ReleaseManifest| m.sha256 = vec![1; 31]) as fn(&mut ReleaseManifest),
            |m| m.size = 0,
            |m| m.size = ARTIFACT_BYTES_MAX + 1,
            |m| m.version = "../../bin".into(),
            |m| m.target = String::new(),
        ] {
            let mut bad = manifest();
            edit(&mut bad);
            assert!(SignedManifest::sign(&bad, &release).is_err(), "{bad:?}");
        }
    }

    fn permit(expires_at: UnixMillis) -> RollbackPermit {
        RollbackPermit {
            deployment: DeploymentId::new("prod").unwrap(),
            node: None,
            component: Component::Iggy,
            release_counter_min: 3,
            issued_at: UnixMillis(NOW.0 - 1000),
            expires_at,
        }
    }

    #[test]
    fn root_signed_permit_verifies() {
        let trust = trust(&key(3), UnixMillis(u64::MAX / 2));
        let signed =
            SignedRollbackPermit::sign(&permit(UnixMillis(NOW.0 + 60_000)), &key(1)).unwrap();
        let decoded = SignedRollbackPermit::decode(&signed.encode().unwrap()).unwrap();
        assert_eq!(
            decoded.verify(&trust, NOW, SKEW).unwrap(),
            permit(UnixMillis(NOW.0 + 60_000))
        );
    }

    #[test]
    fn permit_not_signed_by_root_rejected() {
        let trust = trust(&key(3), UnixMillis(u64::MAX / 2));
        for signer in [key(2), key(3), key(9)] {
            let signed =
                SignedRollbackPermit::sign(&permit(UnixMillis(NOW.0 + 60_000)), &signer).unwrap();
            let error = signed.verify(&trust, NOW, SKEW).unwrap_err();
            assert!(
                matches!(error, PermitError::NotRootSigned { .. }),
                "{error}"
            );
        }
    }

    #[test]
    fn expired_permit_rejected() {
        let trust = trust(&key(3), UnixMillis(u64::MAX / 2));
        let expires_at = UnixMillis(NOW.0 - SKEW_MS - 1);
        let mut expired = permit(expires_at);
        expired.issued_at = UnixMillis(expires_at.0 - 1000);
        let signed = SignedRollbackPermit::sign(&expired, &key(1)).unwrap();
        let error = signed.verify(&trust, NOW, SKEW).unwrap_err();
        assert!(matches!(error, PermitError::Expired { .. }), "{error}");
    }

    #[test]
    fn permit_flipped_bit_rejected() {
        let trust = trust(&key(3), UnixMillis(u64::MAX / 2));
        let bytes = SignedRollbackPermit::sign(&permit(UnixMillis(NOW.0 + 60_000)), &key(1))
            .unwrap()
            .encode()
            .unwrap();
        for index in 0..bytes.len() {
            for bit in 0..8 {
                let mut flipped = bytes.clone();
                flipped[index] ^= 1 << bit;
                let accepted = SignedRollbackPermit::decode(&flipped)
                    .ok()
                    .and_then(|signed| signed.verify(&trust, NOW, SKEW).ok());
                assert_eq!(
                    accepted, None,
                    "bit {bit} of byte {index} flipped was accepted"
                );
            }
        }
    }
}
