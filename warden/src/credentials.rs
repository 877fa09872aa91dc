//! The node's broker credentials: enrollment as the one-time enrollment user, the node user's
//! JWT on disk (mode 0600), connections as the node, and renewal.
//!
//! The node's Ed25519 key is also its NATS user key, so the broker, the control plane and the
//! node all name the node by one key, and its seed never leaves the state directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use warden_bus::messages::{CredentialReply, RenewRequest};
use warden_bus::subject::{enrollment_inbox_prefix, node_inbox_prefix, RpcVerb};
use warden_bus::transport::nats::{NatsBus, NatsConnectConfig, NatsCredentials};
use warden_bus::{
    Bus, BusError, DeploymentId, Envelope, MessageId, NodeId, SigningKey, Subject, UnixMillis,
};

use crate::executor::{write_atomically, write_private};

/// File name of the node user's JWT in the state directory.
pub const CREDENTIAL_FILE: &str = "node.jwt";
/// File name of the broker's CA certificate in the state directory.
pub const CA_FILE: &str = "ca.pem";
/// How long a credential request waits for the control plane's reply.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The node user's JWT and when it expires.
#[derive(Clone, Serialize, Deserialize)]
pub struct Credential {
    /// The user JWT.
    pub jwt: String,
    /// When the node obtained it.
    pub obtained_at: UnixMillis,
    /// When it expires.
    pub expires_at: UnixMillis,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("obtained_at", &self.obtained_at)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Errors from getting or using credentials.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// The broker could not be reached or refused the connection.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The control plane refused the request.
    #[error("the control plane refused the credential request: {0}")]
    Refused(String),
    /// The reply does not decode.
    #[error("malformed credential reply: {0}")]
    Malformed(String),
    /// The credential file could not be read or written.
    #[error("credential file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// The node key as an nkey user seed (`SU…`), for signing the broker's nonce.
pub fn nkey_seed(node_key: &SigningKey) -> Result<String, CredentialError> {
    nkeys::KeyPair::new_from_raw(nkeys::KeyPairType::User, node_key.seed())
        .and_then(|pair| pair.seed())
        .map_err(|error| {
            CredentialError::Malformed(format!("the node key does not make an nkey: {error}"))
        })
}

/// Reads the stored credential, if any.
pub fn load(state_dir: &Path) -> Result<Option<Credential>, CredentialError> {
    let path = state_dir.join(CREDENTIAL_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(CredentialError::File {
                path,
                reason: error.to_string(),
            })
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|error| CredentialError::File {
            path,
            reason: format!("does not decode: {error}; delete it and restart to enroll again"),
        })
}

/// Splits the bootstrap file's `nats_url`, which may name several servers separated by commas.
pub fn server_list(urls: &str) -> Vec<String> {
    urls.split(',').map(|url| url.trim().to_owned()).collect()
}

/// Stores the credential atomically with mode 0600.
pub fn store(state_dir: &Path, credential: &Credential) -> Result<(), CredentialError> {
    let path = state_dir.join(CREDENTIAL_FILE);
    let file_error = |reason: String| CredentialError::File {
        path: path.clone(),
        reason,
    };
    let text = serde_json::to_string(credential).map_err(|error| file_error(error.to_string()))?;
    write_private(&path, text.as_bytes()).map_err(|error| file_error(error.to_string()))
}

/// Writes the broker's CA certificate into the state directory and returns its path.
pub fn write_ca(state_dir: &Path, pem: &str) -> Result<PathBuf, CredentialError> {
    let path = state_dir.join(CA_FILE);
    write_atomically(&path, pem.as_bytes()).map_err(|error| CredentialError::File {
        path: path.clone(),
        reason: error.to_string(),
    })?;
    Ok(path)
}

fn decode_reply(bytes: &[u8], now: UnixMillis) -> Result<Credential, CredentialError> {
    let reply: CredentialReply = Envelope::decode(bytes)
        .and_then(|envelope| envelope.open())
        .map_err(|error| CredentialError::Malformed(error.to_string()))?;
    match reply {
        CredentialReply::Granted { jwt, expires_at } => Ok(Credential {
            jwt,
            obtained_at: now,
            expires_at,
        }),
        CredentialReply::Refused { reason } => Err(CredentialError::Refused(reason)),
    }
}

/// Enrolls as the one-time enrollment user: presents the token and the node key, signed by the
/// node key, and returns the node user's JWT.
pub async fn enroll(
    url: &str,
    ca_file: &Path,
    enrollment: &(String, String),
    request: &crate::enroll::Enrollment,
    deployment: &DeploymentId,
    node: &NodeId,
    now: UnixMillis,
) -> Result<Credential, CredentialError> {
    let (jwt, seed) = enrollment;
    let credentials = NatsCredentials::new(jwt.clone(), seed)?;
    let inbox = enrollment_inbox_prefix(&credentials.public_key());
    let config = NatsConnectConfig::new(server_list(url), format!("warden-{node}-enrollment"))
        .with_credentials(credentials)
        .with_ca_file(ca_file)
        .with_inbox_prefix(inbox);
    let bus = NatsBus::connect_with(&config).await?;
    let subject = Subject::rpc(deployment, node, RpcVerb::Enroll);
    let reply = bus
        .request(&subject, request.bytes.clone().into(), REQUEST_TIMEOUT)
        .await?;
    decode_reply(&reply, now)
}

/// Asks for a fresh JWT over an existing node connection, signed by the node key.
pub async fn renew(
    bus: &dyn Bus,
    node_key: &SigningKey,
    deployment: &DeploymentId,
    node: &NodeId,
    now: UnixMillis,
    message_id: [u8; 16],
) -> Result<Credential, CredentialError> {
    let request = RenewRequest {
        deployment: deployment.clone(),
        node: node.clone(),
        sent_at: now,
    };
    let bytes = Envelope::seal(MessageId::from_random(message_id), &request)
        .and_then(|envelope| node_key.sign(&envelope))
        .and_then(|signed| signed.encode())
        .map_err(|error| CredentialError::Malformed(error.to_string()))?;
    let reply = bus
        .request(
            &Subject::rpc(deployment, node, RpcVerb::Renew),
            bytes.into(),
            REQUEST_TIMEOUT,
        )
        .await?;
    decode_reply(&reply, now)
}

/// Connects as the node user with its own inbox prefix.
pub async fn connect_node(
    url: &str,
    ca_file: &Path,
    credential: &Credential,
    node_key: &SigningKey,
    deployment: &DeploymentId,
    node: &NodeId,
) -> Result<NatsBus, CredentialError> {
    let credentials = NatsCredentials::new(credential.jwt.clone(), &nkey_seed(node_key)?)?;
    let config = NatsConnectConfig::new(server_list(url), format!("warden-{node}"))
        .with_credentials(credentials)
        .with_ca_file(ca_file)
        .with_inbox_prefix(node_inbox_prefix(deployment, node));
    Ok(NatsBus::connect_with(&config).await?)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn credential_file_is_private_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        let credential = Credential {
            jwt: "header.claims.signature".into(),
            obtained_at: UnixMillis(1),
            expires_at: UnixMillis(2),
        };
        store(dir.path(), &credential).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(CREDENTIAL_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load(dir.path()).unwrap().unwrap().jwt, credential.jwt);
        assert!(
            !format!("{credential:?}").contains("claims"),
            "Debug must not print the JWT"
        );
    }

    #[test]
    fn node_key_is_a_user_nkey() {
        let key = SigningKey::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(1));
        let seed = nkey_seed(&key).unwrap();
        assert!(seed.starts_with("SU"));
        let pair = nkeys::KeyPair::from_seed(&seed).unwrap();
        assert!(pair.public_key().starts_with('U'));
    }
}
