//! The enrollment request a Warden sends at start: its one-time token and its public key,
//! signed with its key. The control plane accepts the first key a token is used with and burns
//! the token; sending the same request again is harmless.

use sha2::{Digest, Sha256};
use warden_bus::messages::EnrollRequest;
use warden_bus::{
    DeploymentId, Envelope, MessageId, NodeId, SigningKey, Subject, TelemetryKind, UnixMillis,
    WireError,
};

/// A signed enrollment request ready to store on the node's report subject.
#[derive(Debug, Clone)]
pub struct Enrollment {
    /// Where to send it.
    pub subject: Subject,
    /// The signed envelope.
    pub bytes: Vec<u8>,
    /// Dedup id: the same token and key always give the same id.
    pub dedup_id: String,
}

/// Builds the signed enrollment request.
pub fn request(
    deployment: &DeploymentId,
    node: &NodeId,
    token: &str,
    key: &SigningKey,
    now: UnixMillis,
) -> Result<Enrollment, WireError> {
    let mut hasher = Sha256::new();
    hasher.update(token.as_bytes());
    hasher.update(key.public_key().as_bytes());
    let digest = hasher.finalize();
    let mut id = [0u8; 16];
    for (slot, byte) in id.iter_mut().zip(digest.iter()) {
        *slot = *byte;
    }
    let message_id = MessageId::from_random(id);
    let body = EnrollRequest {
        deployment: deployment.clone(),
        node: node.clone(),
        token: token.to_owned(),
        public_key: key.public_key().as_bytes().to_vec(),
        sent_at: now,
    };
    let signed = key.sign(&Envelope::seal(message_id.clone(), &body)?)?;
    Ok(Enrollment {
        subject: Subject::telemetry(deployment, node, TelemetryKind::Report),
        bytes: signed.encode()?,
        dedup_id: format!("enroll-{message_id}"),
    })
}
