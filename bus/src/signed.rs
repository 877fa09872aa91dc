//! Ed25519-signed envelopes and the keys that sign and verify them.
//!
//! A [`SignedEnvelope`] carries the exact bytes of an encoded [`Envelope`], the id of the key
//! that signed them and the signature over those bytes. Verification happens before the inner
//! envelope is decoded, so an unsigned body never reaches the message decoders.

use std::collections::BTreeMap;
use std::fmt;

use ed25519_dalek::{Signature, Signer, SIGNATURE_LENGTH};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::envelope::{decode, encode, Envelope, WireError, FORMAT_VERSION};
use crate::ids::KeyId;

/// Length of an Ed25519 public key or seed, in bytes.
pub const KEY_BYTES: usize = 32;

/// Error from verifying a signed envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The outer structure could not be decoded.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The key id is not in the keyring.
    #[error("signed by unknown key {key_id}; add its public key to the trusted keys if it is legitimate")]
    UnknownKey {
        /// The key id the envelope names.
        key_id: KeyId,
    },
    /// The signature does not verify with the named key.
    #[error("signature does not verify with key {key_id}")]
    BadSignature {
        /// The key id the envelope names.
        key_id: KeyId,
    },
}

/// An encoded envelope with the key id and Ed25519 signature over its exact bytes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedEnvelope {
    /// Format version, [`FORMAT_VERSION`] when written by this build.
    pub version: u8,
    /// Id of the key that made the signature.
    pub key_id: KeyId,
    /// The exact bytes of the encoded [`Envelope`] that were signed.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// Ed25519 signature over `body`.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
    /// Further signatures over `body`, such as a customer's approval of a sensitive task.
    #[serde(default)]
    pub approvals: Vec<KeySignature>,
}

/// A signature over some bytes by the key with the given id.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySignature {
    /// Id of the signing key.
    pub key_id: KeyId,
    /// Ed25519 signature.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl fmt::Debug for KeySignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeySignature({})", self.key_id)
    }
}

impl fmt::Debug for SignedEnvelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedEnvelope")
            .field("version", &self.version)
            .field("key_id", &self.key_id)
            .field("body_bytes", &self.body.len())
            .field("approvals", &self.approvals)
            .finish_non_exhaustive()
    }
}

impl SignedEnvelope {
    /// Encodes the signed envelope for the wire.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        encode("signed envelope", self)
    }

    /// Decodes the outer structure, checking the size cap first. The body stays unverified.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let signed: Self = decode("signed envelope", bytes)?;
        if signed.version != FORMAT_VERSION {
            return Err(WireError::UnsupportedVersion {
                found: signed.version,
            });
        }
        Ok(signed)
    }

    /// Verifies the signature with the keyring and only then decodes the inner envelope.
    pub fn verify(&self, keyring: &Keyring) -> Result<Envelope, SignatureError> {
        let key = keyring
            .get(&self.key_id)
            .ok_or_else(|| SignatureError::UnknownKey {
                key_id: self.key_id.clone(),
            })?;
        self.verify_with(key)
    }

    /// Verifies the signature with `key`, which must be the key named by `key_id`, and only
    /// then decodes the inner envelope.
    pub fn verify_with(&self, key: &PublicKey) -> Result<Envelope, SignatureError> {
        if key.id() != &self.key_id || !key.verify(&self.body, &self.signature) {
            return Err(SignatureError::BadSignature {
                key_id: self.key_id.clone(),
            });
        }
        Ok(Envelope::decode(&self.body)?)
    }

    /// Decodes the inner envelope without checking the signature.
    ///
    /// Only for reporting: a Warden names the task it rejected, and that name may be forged.
    pub fn decode_unverified(&self) -> Result<Envelope, WireError> {
        Envelope::decode(&self.body)
    }
}

/// An Ed25519 signing key with its key id. `Debug` never prints the secret.
#[derive(Clone)]
pub struct SigningKey {
    key: ed25519_dalek::SigningKey,
    id: KeyId,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Generates a new key from a cryptographic random source.
    pub fn generate<R: rand::CryptoRng + rand::RngCore>(rng: &mut R) -> Self {
        Self::from_seed(ed25519_dalek::SigningKey::generate(rng).to_bytes())
    }

    /// Rebuilds a key from its 32-byte seed.
    pub fn from_seed(seed: [u8; KEY_BYTES]) -> Self {
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        let id = key_id(&key.verifying_key());
        Self { key, id }
    }

    /// Returns the 32-byte seed, for storing the key in a file with mode 0600.
    pub fn seed(&self) -> [u8; KEY_BYTES] {
        self.key.to_bytes()
    }

    /// Returns the id of this key.
    pub fn id(&self) -> &KeyId {
        &self.id
    }

    /// Returns the public half of this key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            key: self.key.verifying_key(),
            id: self.id.clone(),
        }
    }

    /// Encodes `envelope` and signs the resulting bytes.
    pub fn sign(&self, envelope: &Envelope) -> Result<SignedEnvelope, WireError> {
        let body = envelope.encode()?;
        let signature = self.sign_bytes(&body).to_vec();
        Ok(SignedEnvelope {
            version: FORMAT_VERSION,
            key_id: self.id.clone(),
            body,
            signature,
            approvals: Vec::new(),
        })
    }

    /// Signs raw bytes.
    pub fn sign_bytes(&self, bytes: &[u8]) -> [u8; SIGNATURE_LENGTH] {
        self.key.sign(bytes).to_bytes()
    }

    /// Signs raw bytes and names this key, as carried in documents and approvals.
    pub fn key_signature(&self, bytes: &[u8]) -> KeySignature {
        KeySignature {
            key_id: self.id.clone(),
            signature: self.sign_bytes(bytes).to_vec(),
        }
    }
}

/// An Ed25519 public key with its key id.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: ed25519_dalek::VerifyingKey,
    id: KeyId,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id)
    }
}

/// Error from parsing a public key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Ed25519 public key {value:?}: {reason}")]
pub struct PublicKeyError {
    value: String,
    reason: String,
}

impl PublicKey {
    /// Parses a public key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PublicKeyError> {
        let error = |reason: &str| PublicKeyError {
            value: hex::encode(bytes),
            reason: reason.into(),
        };
        let array: [u8; KEY_BYTES] = bytes
            .try_into()
            .map_err(|_| error(&format!("expected {KEY_BYTES} bytes, got {}", bytes.len())))?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&array)
            .map_err(|_| error("not a point on the Ed25519 curve"))?;
        if key.is_weak() {
            return Err(error("weak key of small order"));
        }
        Ok(Self {
            id: key_id(&key),
            key,
        })
    }

    /// Parses a public key from 64 hex characters.
    pub fn from_hex(text: &str) -> Result<Self, PublicKeyError> {
        let bytes = hex::decode(text.trim()).map_err(|error| PublicKeyError {
            value: text.to_owned(),
            reason: format!("not hex: {error}; expected 64 hex characters"),
        })?;
        Self::from_bytes(&bytes)
    }

    /// Verifies an Ed25519 signature over `bytes` with the strict rules (no small-order keys,
    /// canonical encodings only).
    pub fn verify(&self, bytes: &[u8], signature: &[u8]) -> bool {
        let Ok(signature) = <[u8; SIGNATURE_LENGTH]>::try_from(signature) else {
            return false;
        };
        self.key
            .verify_strict(bytes, &Signature::from_bytes(&signature))
            .is_ok()
    }

    /// Verifies a [`KeySignature`], which must name this key.
    pub fn verify_signature(&self, bytes: &[u8], signature: &KeySignature) -> bool {
        &signature.key_id == self.id() && self.verify(bytes, &signature.signature)
    }

    /// Returns the key as 64 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.key.as_bytes())
    }

    /// Returns the raw 32 bytes of the key.
    pub fn as_bytes(&self) -> &[u8; KEY_BYTES] {
        self.key.as_bytes()
    }

    /// Returns the id of this key.
    pub fn id(&self) -> &KeyId {
        &self.id
    }
}

/// Derives a key id: the first 8 bytes of SHA-256 over the public key, as hex.
fn key_id(key: &ed25519_dalek::VerifyingKey) -> KeyId {
    let digest = Sha256::digest(key.as_bytes());
    let prefix: Vec<u8> = digest.iter().take(8).copied().collect();
    // The id is 16 lowercase hex characters, which always satisfies the identifier rules.
    KeyId::new(hex::encode(prefix)).unwrap_or_else(|_| unreachable!("hex is a valid identifier"))
}

/// The set of public keys a verifier trusts, by key id.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    keys: BTreeMap<KeyId, PublicKey>,
}

impl Keyring {
    /// Builds a keyring from public keys.
    pub fn new(keys: impl IntoIterator<Item = PublicKey>) -> Self {
        Self {
            keys: keys.into_iter().map(|key| (key.id.clone(), key)).collect(),
        }
    }

    /// Looks up a key by id.
    pub fn get(&self, id: &KeyId) -> Option<&PublicKey> {
        self.keys.get(id)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Returns whether the keyring has no keys.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}
