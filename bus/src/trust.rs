//! The trust document: which keys may sign tasks and releases, signed by the root key.
//!
//! A trust document names its root key, a version, an expiry, and the task-signing and
//! release-signing keys with their validity windows. It travels as a [`SignedDocument`]: the
//! exact MessagePack bytes of the document and one or more Ed25519 signatures over them.
//!
//! A successor document is accepted only if all of the following hold (the rules of TUF's root
//! metadata, with a threshold of one):
//! - the current root key signed it;
//! - if it names a new root key, that key signed it too, proving possession;
//! - its version is above the current one, so an older document can never come back;
//! - it has not expired;
//! - every signature it carries verifies, so no unverifiable bytes ride along.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::envelope::{decode, encode, WireError};
use crate::ids::KeyId;
use crate::signed::{KeySignature, PublicKey, SigningKey};
use crate::time::UnixMillis;

/// Maximum number of keys of each role in one document.
pub const TRUST_KEYS_MAX: usize = 16;
/// Maximum number of signatures on one document.
pub const TRUST_SIGNATURES_MAX: usize = 4;

/// A key allowed to sign, during a window of time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyGrant {
    /// Ed25519 public key, 32 bytes.
    #[serde(with = "serde_bytes")]
    pub public_key: Vec<u8>,
    /// Start of the window.
    pub not_before: UnixMillis,
    /// End of the window.
    pub not_after: UnixMillis,
}

impl KeyGrant {
    /// The key, if the bytes are a valid Ed25519 public key.
    pub fn key(&self) -> Result<PublicKey, TrustError> {
        PublicKey::from_bytes(&self.public_key).map_err(|error| TrustError::Invalid {
            reason: error.to_string(),
        })
    }

    /// Whether `now` is inside the window widened by `skew` on both sides.
    pub fn is_valid_at(&self, now: UnixMillis, skew: Duration) -> bool {
        now.saturating_add(skew) >= self.not_before && now.saturating_sub(skew) <= self.not_after
    }
}

/// The content of a trust document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustDocument {
    /// Monotonic version; a Warden never goes back to a lower one.
    pub version: u64,
    /// When the document was signed.
    pub issued_at: UnixMillis,
    /// After this time the document no longer authorises anything but its own replacement.
    pub expires_at: UnixMillis,
    /// Ed25519 public key of the root that signs this document and its successor.
    #[serde(with = "serde_bytes")]
    pub root_key: Vec<u8>,
    /// Keys that may sign tasks.
    pub task_keys: Vec<KeyGrant>,
    /// Keys that may sign release manifests.
    pub release_keys: Vec<KeyGrant>,
}

/// A trust document as exact bytes plus signatures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedDocument {
    /// MessagePack encoding of a [`TrustDocument`].
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// Signatures over `body`.
    pub signatures: Vec<KeySignature>,
}

/// Error from verifying a trust document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// The bytes do not decode.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The content breaks a structural rule.
    #[error("invalid trust document: {reason}")]
    Invalid {
        /// Description of the problem.
        reason: String,
    },
    /// The current root did not sign it.
    #[error("trust document version {version} is not signed by the current root key {root}; sign it with the root key file")]
    NotSignedByRoot {
        /// Version of the rejected document.
        version: u64,
        /// Id of the root key that must sign.
        root: KeyId,
    },
    /// A new root key did not sign the document that introduces it.
    #[error("trust document version {version} names new root key {new_root} but is not signed by it; sign it with both the old and the new root key")]
    NewRootNotProven {
        /// Version of the rejected document.
        version: u64,
        /// Id of the new root key.
        new_root: KeyId,
    },
    /// A signature does not verify.
    #[error("trust document carries a signature by {key_id} that does not verify")]
    BadSignature {
        /// The key id the signature names.
        key_id: KeyId,
    },
    /// The version is not above the current one.
    #[error("trust document version {offered} is not above the current version {current}")]
    Downgrade {
        /// Version offered.
        offered: u64,
        /// Version held.
        current: u64,
    },
    /// The document has expired.
    #[error("trust document version {version} expired at {expires_at}")]
    Expired {
        /// Version.
        version: u64,
        /// Expiry.
        expires_at: UnixMillis,
    },
}

impl TrustDocument {
    /// Returns the root key.
    pub fn root(&self) -> Result<PublicKey, TrustError> {
        PublicKey::from_bytes(&self.root_key).map_err(|error| TrustError::Invalid {
            reason: format!("root key: {error}"),
        })
    }

    /// Checks the structural rules: valid keys, windows that end after they start, bounded
    /// lists, and an expiry after the issue time.
    pub fn validate(&self) -> Result<(), TrustError> {
        let invalid = |reason: String| TrustError::Invalid { reason };
        self.root()?;
        if self.expires_at <= self.issued_at {
            return Err(invalid(format!(
                "expires_at {} is not after issued_at {}",
                self.expires_at, self.issued_at
            )));
        }
        for (role, grants) in [("task", &self.task_keys), ("release", &self.release_keys)] {
            if grants.len() > TRUST_KEYS_MAX {
                return Err(invalid(format!(
                    "{} {role} keys is over the maximum of {TRUST_KEYS_MAX}",
                    grants.len()
                )));
            }
            let mut seen = BTreeSet::new();
            for grant in grants.iter() {
                let key = grant.key()?;
                if grant.not_after <= grant.not_before {
                    return Err(invalid(format!(
                        "{role} key {} has a window that ends before it starts",
                        key.id()
                    )));
                }
                if !seen.insert(key.id().clone()) {
                    return Err(invalid(format!("{role} key {} is listed twice", key.id())));
                }
            }
        }
        if self.task_keys.is_empty() {
            return Err(invalid(
                "no task key is listed; a node could accept no task".into(),
            ));
        }
        Ok(())
    }

    /// Returns the task key with this id, if listed.
    pub fn task_key(&self, id: &KeyId) -> Option<(&KeyGrant, PublicKey)> {
        find(&self.task_keys, id)
    }

    /// Returns the release key with this id, if listed.
    pub fn release_key(&self, id: &KeyId) -> Option<(&KeyGrant, PublicKey)> {
        find(&self.release_keys, id)
    }
}

fn find<'a>(grants: &'a [KeyGrant], id: &KeyId) -> Option<(&'a KeyGrant, PublicKey)> {
    grants.iter().find_map(|grant| {
        let key = grant.key().ok()?;
        (key.id() == id).then_some((grant, key))
    })
}

impl SignedDocument {
    /// Encodes `document` and signs it with each key in `signers`.
    pub fn sign(document: &TrustDocument, signers: &[&SigningKey]) -> Result<Self, TrustError> {
        document.validate()?;
        let body = encode("trust document", document)?;
        let signatures = signers
            .iter()
            .map(|signer| signer.key_signature(&body))
            .collect();
        Ok(Self { body, signatures })
    }

    /// Encodes the signed document for the wire or a file.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        encode("signed trust document", self)
    }

    /// Decodes a signed document, checking the size cap first.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        decode("signed trust document", bytes)
    }

    /// Decodes the document without checking any signature, to inspect it.
    pub fn document_unverified(&self) -> Result<TrustDocument, TrustError> {
        Ok(decode("trust document", &self.body)?)
    }

    /// Verifies this document as the first one a node trusts, signed by the pinned `root`.
    pub fn verify_initial(
        &self,
        root: &PublicKey,
        now: UnixMillis,
        skew: Duration,
    ) -> Result<TrustDocument, TrustError> {
        self.verify_with(root, 0, now, skew, true)
    }

    /// Verifies this document as the successor of `current`.
    pub fn verify_successor(
        &self,
        current: &TrustDocument,
        now: UnixMillis,
        skew: Duration,
    ) -> Result<TrustDocument, TrustError> {
        self.verify_with(&current.root()?, current.version, now, skew, false)
    }

    fn verify_with(
        &self,
        root: &PublicKey,
        current_version: u64,
        now: UnixMillis,
        skew: Duration,
        initial: bool,
    ) -> Result<TrustDocument, TrustError> {
        if self.signatures.is_empty() || self.signatures.len() > TRUST_SIGNATURES_MAX {
            return Err(TrustError::Invalid {
                reason: format!(
                    "{} signatures; expected 1 to {TRUST_SIGNATURES_MAX}",
                    self.signatures.len()
                ),
            });
        }
        let document: TrustDocument = decode("trust document", &self.body)?;
        let new_root = document.root()?;
        let mut signed_by = BTreeSet::new();

        // Every signature must verify with the current or the new root; nothing unverified rides along.
        for signature in &self.signatures {
            let key = [root, &new_root]
                .into_iter()
                .find(|key| key.id() == &signature.key_id)
                .ok_or(TrustError::NotSignedByRoot {
                    version: document.version,
                    root: root.id().clone(),
                })?;
            if !key.verify(&self.body, &signature.signature) {
                return Err(TrustError::BadSignature {
                    key_id: signature.key_id.clone(),
                });
            }
            signed_by.insert(signature.key_id.clone());
        }
        if !signed_by.contains(root.id()) {
            return Err(TrustError::NotSignedByRoot {
                version: document.version,
                root: root.id().clone(),
            });
        }
        if !signed_by.contains(new_root.id()) {
            return Err(TrustError::NewRootNotProven {
                version: document.version,
                new_root: new_root.id().clone(),
            });
        }

        document.validate()?;
        if !initial && document.version <= current_version {
            return Err(TrustError::Downgrade {
                offered: document.version,
                current: current_version,
            });
        }
        if now.saturating_sub(skew) > document.expires_at {
            return Err(TrustError::Expired {
                version: document.version,
                expires_at: document.expires_at,
            });
        }
        Ok(document)
    }
}
