//! The I/O around the node's TLS certificate: the certificate request to the control plane,
//! the installation (record, files, listener certificate) and reading back what is installed.
//! The decisions are in [`crate::core::certificate`]; the actor that runs them is
//! [`crate::actors::certificates`].

use std::time::Duration;

use warden_bus::messages::{CertificateReply, CertificateRequest};
use warden_bus::subject::RpcVerb;
use warden_bus::{
    Bus, BusError, DeploymentId, Envelope, MessageId, NodeId, SigningKey, Subject, UnixMillis,
};

use crate::core::certificate::{installed_matches, CertificateRecord, Installation};
use crate::store::{StoreError, TaskStore};
use crate::tls::{
    public_key_info_of, CertificateSlot, NodeTlsKey, ServedCertificate, TlsError, TlsFiles,
};

/// How long a certificate request waits for the control plane's reply.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors from requesting or installing a certificate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertificateError {
    /// The broker could not be reached or the request timed out.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The request could not be encoded or the reply does not decode.
    #[error("malformed certificate message: {0}")]
    Malformed(String),
    /// The record could not be stored or read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A key, certificate or TLS file failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Sends the signing request, signed with the node key, on the node's `certificate` rpc
/// subject and returns the control plane's reply.
pub async fn request(
    bus: &dyn Bus,
    node_key: &SigningKey,
    deployment: &DeploymentId,
    node: &NodeId,
    csr_pem: String,
    now: UnixMillis,
    message_id: [u8; 16],
) -> Result<CertificateReply, CertificateError> {
    let request = CertificateRequest {
        deployment: deployment.clone(),
        node: node.clone(),
        csr_pem,
        sent_at: now,
    };
    request.validate().map_err(CertificateError::Malformed)?;
    let bytes = Envelope::seal(MessageId::from_random(message_id), &request)
        .and_then(|envelope| node_key.sign(&envelope))
        .and_then(|signed| signed.encode())
        .map_err(|error| CertificateError::Malformed(error.to_string()))?;
    let reply = bus
        .request(
            &Subject::rpc(deployment, node, RpcVerb::Certificate),
            bytes.into(),
            REQUEST_TIMEOUT,
        )
        .await?;
    Envelope::decode(&reply)
        .and_then(|envelope| envelope.open())
        .map_err(|error| CertificateError::Malformed(error.to_string()))
}

/// Installs a validated certificate: stores its record and waits for the flush, writes the
/// key, chain and bundle files, then makes the listener present it. rustls loads the key and
/// chain before any of that, so an unusable pair changes nothing. Returns the certificate now
/// presented.
pub async fn install(
    store: &TaskStore,
    files: &TlsFiles,
    slot: &CertificateSlot,
    key: NodeTlsKey,
    installation: &Installation,
) -> Result<ServedCertificate, CertificateError> {
    let served =
        ServedCertificate::from_key(&key, &installation.chain_pem, installation.record.not_after)?;
    store.persist_certificate(&installation.record).await?;

    let files = files.clone();
    let chain_pem = installation.chain_pem.clone();
    let bundle_pem = installation.bundle_pem.clone();
    tokio::task::spawn_blocking(move || files.install(&key, &chain_pem, &bundle_pem))
        .await
        .map_err(|error| {
            CertificateError::Malformed(format!("the file writing thread failed: {error}"))
        })??;

    slot.replace(served.clone());
    Ok(served)
}

/// The certificate state found at start.
#[derive(Debug)]
pub struct Installed {
    /// The stored record, if any.
    pub record: Option<CertificateRecord>,
    /// The certificate to present, when the files match the record.
    pub served: Option<ServedCertificate>,
}

/// Reads the stored record and the files, and loads the certificate if the files contain the
/// certificate that the record describes and a key that matches it. Damaged or mismatched
/// files count as no certificate, so the caller requests a new one.
pub fn load_installed(store: &TaskStore, files: &TlsFiles) -> Result<Installed, CertificateError> {
    let record = store.load_certificate()?;
    let Some(stored) = record else {
        return Ok(Installed {
            record,
            served: None,
        });
    };
    let served = match files.read() {
        Ok(Some(pem)) => {
            let matches = public_key_info_of(&pem.key_pem)
                .is_ok_and(|spki| installed_matches(&stored, &pem.chain_pem, &spki));
            if matches {
                ServedCertificate::from_pem(&pem.key_pem, &pem.chain_pem, stored.not_after).ok()
            } else {
                tracing::warn!(certificate = %files.certificate.display(), "the TLS key and certificate on disk do not match the stored record; requesting a new certificate");
                None
            }
        }
        Ok(None) => None,
        Err(error) => {
            tracing::warn!(error = %error, "cannot read the TLS files; requesting a new certificate");
            None
        }
    };
    Ok(Installed { record, served })
}
