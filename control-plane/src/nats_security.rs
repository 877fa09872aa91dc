//! Broker-enforced identity for NATS: nkeys, JWTs, permissions, server configuration and TLS.
//!
//! NATS in operator mode ("decentralized JWT authentication") trusts one operator key. The
//! operator signs account JWTs, each account signs the JWTs of its users, and the server admits
//! a client only if it presents a user JWT that chains to the operator and signs the server's
//! nonce with that user's nkey. The permissions in the user JWT are enforced by the server, so a
//! stolen node credential reaches that node's subjects and nothing else.
//!
//! The pieces, all pure unless noted:
//!
//! - [`BrokerKeys`] and [`generate_nkey`]: Ed25519 nkeys for the operator, the application
//!   account [`APP_ACCOUNT_NAME`], the system account [`SYSTEM_ACCOUNT_NAME`] and users.
//! - [`jwt`]: NATS JWT v2 encoding for operators, accounts and users, and [`jwt::revoke_user`],
//!   which re-signs an account JWT with a user's key in its revocation list.
//! - [`permissions`]: what a node, the control plane and an enrolling node may publish and
//!   subscribe to. The subjects come from `warden_bus::subject`, so they cannot drift from the
//!   subjects the code uses.
//! - [`server_config`]: nats-server configuration text for operator mode with a full resolver,
//!   JetStream, a TLS client port and a TLS WebSocket port.
//! - [`tls`]: a CA and server certificates with rcgen; writing a private key file (I/O).
//! - [`push_account_jwt`]: sends an updated account JWT, such as one with a new revocation, to
//!   the server's resolver over `$SYS.REQ.CLAIMS.UPDATE` (I/O, as a system account user).
//!
//! Times are Unix seconds passed in by the caller, and randomness comes from the caller's
//! generator, so the functions replay exactly under a seed.
//!
//! A typical set-up:
//!
//! 1. `BrokerKeys::generate` once, and keep the seeds secret.
//! 2. Encode the operator JWT and the two account JWTs, and render the server configuration
//!    with the account JWTs preloaded.
//! 3. For each node, encode a user JWT with [`permissions::node_permissions`] for the node's own
//!    user nkey, and let the node connect with the inbox prefix from
//!    `warden_bus::subject::node_inbox_prefix`.
//! 4. To cut a node off, revoke its user key and push the re-signed account JWT.

use std::path::PathBuf;
use std::time::Duration;

use nkeys::{KeyPair, KeyPairType};
use rand::{CryptoRng, RngCore};
use serde::Deserialize;

pub mod jwt;
pub mod permissions;
pub mod server_config;
pub mod tls;

/// Name of the account that contains Warden's streams, buckets and users.
pub const APP_ACCOUNT_NAME: &str = "WARDEN";

/// Name of the system account, whose users may send server requests such as account updates.
pub const SYSTEM_ACCOUNT_NAME: &str = "SYS";

/// Subject on which the server's resolver accepts an updated account JWT from a system account
/// user.
pub const CLAIMS_UPDATE_SUBJECT: &str = "$SYS.REQ.CLAIMS.UPDATE";

/// Errors from making keys, JWTs, server configurations and certificates.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NatsSecurityError {
    /// A public key is malformed or of the wrong kind.
    #[error("{role} key {key:?} is not a valid {expected:?} public key; pass the public key of an nkey of that kind")]
    InvalidPublicKey {
        /// The key's role, such as "account" or "revoked user".
        role: &'static str,
        /// The rejected value.
        key: String,
        /// The kind of nkey required.
        expected: KeyPairType,
    },
    /// The signing key is of the wrong kind for the JWT.
    #[error("a {claim} JWT must be signed by a {expected:?} key, but the signing key is a {found:?} key")]
    WrongSigner {
        /// Kind of JWT: operator, account or user.
        claim: &'static str,
        /// The kind of nkey that must sign it.
        expected: KeyPairType,
        /// The kind of the key that was passed.
        found: KeyPairType,
    },
    /// The signing key has no private half.
    #[error("failed to sign the {claim} JWT {name:?}: {reason}")]
    Signing {
        /// Kind of JWT.
        claim: &'static str,
        /// The JWT's name claim.
        name: String,
        /// The nkeys message.
        reason: String,
    },
    /// The expiry is not after the issue time.
    #[error("the JWT {name:?} would expire at {expires_at}, not after its issue time {issued_at} (Unix seconds); pass a later expiry")]
    ExpiryNotAfterIssue {
        /// The JWT's name claim.
        name: String,
        /// Requested expiry.
        expires_at: i64,
        /// Issue time.
        issued_at: i64,
    },
    /// A subject in a permission list is not a valid NATS subject filter.
    #[error("permission subject {subject:?} is invalid: {reason}")]
    InvalidSubject {
        /// The rejected subject.
        subject: String,
        /// The reason.
        reason: &'static str,
    },
    /// JetStream limits that would leave JetStream disabled.
    #[error("the JetStream limits of account {account:?} allow no memory and no disk storage, which disables JetStream; set a storage limit above 0 or pass no JetStream limits")]
    JetStreamDisabled {
        /// The account's name.
        account: String,
    },
    /// A value cannot be written into a nats-server configuration file.
    #[error("{what} {value:?} cannot be written into a nats-server configuration: {reason}")]
    ConfigValue {
        /// Which setting.
        what: &'static str,
        /// The rejected value.
        value: String,
        /// The reason.
        reason: &'static str,
    },
    /// Key generation from the random bytes failed.
    #[error("failed to generate a {kind:?} nkey: {reason}")]
    KeyGeneration {
        /// Kind of key.
        kind: KeyPairType,
        /// The nkeys message.
        reason: String,
    },
    /// Claims could not be encoded as JSON.
    #[error("failed to encode the claims of {name:?} as JSON: {source}")]
    Json {
        /// The JWT's name claim.
        name: String,
        /// The serde_json error.
        source: serde_json::Error,
    },
    /// Certificate validity bounds are unusable.
    #[error(
        "certificate validity from {not_before} to {not_after} (Unix seconds) is invalid: {reason}"
    )]
    Validity {
        /// Start of validity.
        not_before: i64,
        /// End of validity.
        not_after: i64,
        /// The reason.
        reason: String,
    },
    /// rcgen failed to make a key or certificate.
    #[error("failed to generate the {what}: {source}")]
    Certificate {
        /// The item being generated.
        what: &'static str,
        /// The rcgen error.
        source: rcgen::Error,
    },
    /// Writing a private key file failed.
    #[error("failed to write private key file {path}: {source}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The server did not confirm an account update.
    #[error("the server did not accept the JWT of account {account}: {reason}")]
    AccountUpdate {
        /// The account's public key.
        account: String,
        /// The server's or client's message.
        reason: String,
    },
}

/// The operator and account nkeys of one broker. `Debug` shows public keys only.
#[derive(Clone)]
pub struct BrokerKeys {
    /// The operator, which signs account JWTs. The server trusts its JWT.
    pub operator: KeyPair,
    /// The system account, which signs the JWTs of users that may push account updates.
    pub system_account: KeyPair,
    /// The application account [`APP_ACCOUNT_NAME`], which signs node, enrollment and
    /// control-plane user JWTs.
    pub app_account: KeyPair,
}

impl BrokerKeys {
    /// Generates the operator and both account keys from `rng`.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Result<Self, NatsSecurityError> {
        Ok(Self {
            operator: generate_nkey(KeyPairType::Operator, rng)?,
            system_account: generate_nkey(KeyPairType::Account, rng)?,
            app_account: generate_nkey(KeyPairType::Account, rng)?,
        })
    }
}

impl std::fmt::Debug for BrokerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerKeys")
            .field("operator", &self.operator.public_key())
            .field("system_account", &self.system_account.public_key())
            .field("app_account", &self.app_account.public_key())
            .finish()
    }
}

/// Generates an Ed25519 nkey of `kind` from 32 bytes of `rng`.
pub fn generate_nkey(
    kind: KeyPairType,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<KeyPair, NatsSecurityError> {
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    KeyPair::new_from_raw(kind.clone(), seed).map_err(|error| NatsSecurityError::KeyGeneration {
        kind,
        reason: error.to_string(),
    })
}

/// Checks that `key` is a public nkey of the `expected` kind.
pub(crate) fn check_public_key(
    role: &'static str,
    key: &str,
    expected: KeyPairType,
) -> Result<(), NatsSecurityError> {
    let invalid = || NatsSecurityError::InvalidPublicKey {
        role,
        key: key.to_owned(),
        expected: expected.clone(),
    };
    let parsed = KeyPair::from_public_key(key).map_err(|_| invalid())?;
    if parsed.key_pair_type() != expected {
        return Err(invalid());
    }
    Ok(())
}

/// How long [`push_account_jwt`] waits for the server's response.
pub const ACCOUNT_UPDATE_TIMEOUT: Duration = Duration::from_secs(5);

/// The server's response to an account update.
#[derive(Debug, Deserialize)]
struct ClaimsUpdateResponse {
    data: Option<ClaimsUpdateData>,
    error: Option<ClaimsUpdateFailure>,
}

#[derive(Debug, Deserialize)]
struct ClaimsUpdateData {
    code: u16,
    #[serde(default)]
    message: String,
}

#[derive(Debug, Deserialize)]
struct ClaimsUpdateFailure {
    code: u16,
    #[serde(default)]
    description: String,
}

/// Sends `account_jwt` to the server's full resolver and waits for its confirmation (I/O).
///
/// `client` must be connected as a user of the system account; the server ignores updates
/// from other accounts. The resolver stores the JWT in its directory and applies it at once,
/// which closes the connections of users the JWT revokes.
///
/// NOTE: with several servers, every full resolver responds, but this waits for the first
/// response only. The resolvers spread the update among themselves.
pub async fn push_account_jwt(
    client: &async_nats::Client,
    account: &str,
    account_jwt: &str,
) -> Result<(), NatsSecurityError> {
    let failed = |reason: String| NatsSecurityError::AccountUpdate {
        account: account.to_owned(),
        reason,
    };
    let request = client.request(CLAIMS_UPDATE_SUBJECT, account_jwt.to_owned().into());
    let reply = tokio::time::timeout(ACCOUNT_UPDATE_TIMEOUT, request)
        .await
        .map_err(|_| {
            failed(format!(
                "no response within {ACCOUNT_UPDATE_TIMEOUT:?}; check that the client is a system account user and the server uses a full resolver"
            ))
        })?
        .map_err(|error| failed(format!("request on {CLAIMS_UPDATE_SUBJECT} failed: {error}")))?;
    let response: ClaimsUpdateResponse =
        serde_json::from_slice(&reply.payload).map_err(|error| {
            failed(format!(
                "the response is not the expected JSON ({error}): {}",
                String::from_utf8_lossy(&reply.payload)
            ))
        })?;
    match (response.data, response.error) {
        (_, Some(failure)) => Err(failed(format!(
            "code {}: {}",
            failure.code, failure.description
        ))),
        (Some(data), None) if data.code == 200 => Ok(()),
        (Some(data), None) => Err(failed(format!("code {}: {}", data.code, data.message))),
        (None, None) => Err(failed(format!(
            "the response has neither data nor error: {}",
            String::from_utf8_lossy(&reply.payload)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn generated_keys_have_their_kinds() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let keys = BrokerKeys::generate(&mut rng).unwrap();
        assert!(keys.operator.public_key().starts_with('O'));
        assert!(keys.system_account.public_key().starts_with('A'));
        assert!(keys.app_account.public_key().starts_with('A'));
        assert_ne!(
            keys.system_account.public_key(),
            keys.app_account.public_key()
        );
        let user = generate_nkey(KeyPairType::User, &mut rng).unwrap();
        assert!(user.public_key().starts_with('U'));
        assert!(user.seed().unwrap().starts_with("SU"));
    }

    #[test]
    fn same_seed_same_keys() {
        let first = BrokerKeys::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(5)).unwrap();
        let second = BrokerKeys::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(5)).unwrap();
        assert_eq!(first.operator.public_key(), second.operator.public_key());
    }

    #[test]
    fn broker_keys_debug_hides_seeds() {
        let keys = BrokerKeys::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(2)).unwrap();
        let text = format!("{keys:?}");
        for key in [&keys.operator, &keys.system_account, &keys.app_account] {
            assert!(!text.contains(&key.seed().unwrap()), "{text}");
            assert!(text.contains(&key.public_key()), "{text}");
        }
    }

    #[test]
    fn public_key_check_rejects_wrong_kind() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        let user = generate_nkey(KeyPairType::User, &mut rng).unwrap();
        assert!(check_public_key("user", &user.public_key(), KeyPairType::User).is_ok());
        assert!(check_public_key("account", &user.public_key(), KeyPairType::Account).is_err());
        assert!(check_public_key("user", "UNOTAKEY", KeyPairType::User).is_err());
    }
}
