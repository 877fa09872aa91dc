//! The node's TLS material and its own TLS listener.
//!
//! - [`NodeTlsKey`] and [`signing_request`]: a fresh ECDSA P-256 key per renewal and its PKCS#10
//!   request, whose common name is the node id and whose subject alternative names are the
//!   node's registered names. The private key stays in the state directory.
//! - [`TlsFiles`]: `node.key` (mode 0600), `node.crt` (node certificate and chain) and
//!   `ca-bundle.pem` under `<state_dir>/tls/`, each written atomically.
//! - [`CertificateSlot`] and [`TlsListener`]: a listener whose certificate is replaced
//!   atomically, so new handshakes get the new certificate while open connections go on.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rcgen::{CertificateParams, DnType, KeyPair, PublicKeyData, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use warden_bus::{NodeId, UnixMillis};

use crate::executor::{write_atomically, write_private};

/// Directory of the TLS files inside the state directory.
pub const TLS_DIR: &str = "tls";
/// File name of the private key.
pub const KEY_FILE: &str = "node.key";
/// File name of the node certificate followed by its chain.
pub const CERTIFICATE_FILE: &str = "node.crt";
/// File name of the trust bundle.
pub const BUNDLE_FILE: &str = "ca-bundle.pem";
/// Maximum size of the listener's request head, in bytes.
pub const REQUEST_HEAD_BYTES_MAX: usize = 8 * 1024;
/// How long a TLS handshake on the listener may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an open connection on the listener may wait for its next request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Maximum number of connections the listener serves at once; it closes any beyond.
pub const CONNECTIONS_MAX: usize = 256;

/// Errors from the node's TLS material or listener.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A registered TLS name is neither an IP address nor a valid DNS name.
    #[error("TLS name {name:?} is invalid: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// The problem and its fix.
        reason: String,
    },
    /// Generating the key or the signing request failed.
    #[error("failed to generate the TLS key or signing request: {0}")]
    Generate(String),
    /// A TLS file could not be read or written.
    #[error("TLS file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The key or certificate PEM is not usable by rustls.
    #[error("the TLS key or certificate is not usable: {0}")]
    Unusable(String),
    /// The listener could not bind or accept.
    #[error("TLS listener on {address}: {reason}")]
    Listener {
        /// The socket address.
        address: SocketAddr,
        /// What failed.
        reason: String,
    },
}

/// A subject alternative name registered for the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsName {
    /// An IP address, as an IP SAN.
    Ip(IpAddr),
    /// A DNS name, as a DNS SAN.
    Dns(String),
}

impl TlsName {
    /// Parses an IP literal as an address and anything else as a DNS name, checking its
    /// syntax: labels of 1 to 63 letters, digits or hyphens, not starting or ending with a
    /// hyphen, at most 253 characters in all, with an optional leading `*.` wildcard label.
    pub fn parse(name: &str) -> Result<Self, TlsError> {
        let invalid = |reason: &str| TlsError::InvalidName {
            name: name.to_owned(),
            reason: reason.to_owned(),
        };
        if let Ok(address) = name.parse::<IpAddr>() {
            return Ok(Self::Ip(address));
        }
        if name.is_empty() || name.len() > 253 {
            return Err(invalid(
                "a DNS name has 1 to 253 characters; give a DNS name or an IP address",
            ));
        }
        let labels = name.strip_prefix("*.").unwrap_or(name);
        for label in labels.split('.') {
            let valid = (1..=63).contains(&label.len())
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-');
            if !valid {
                return Err(invalid(
                    "each DNS label has 1 to 63 letters, digits or hyphens and does not start or end with a hyphen; give a DNS name or an IP address",
                ));
            }
        }
        Ok(Self::Dns(name.to_ascii_lowercase()))
    }
}

/// A freshly generated TLS private key; its `Debug` output omits the key.
pub struct NodeTlsKey {
    pair: KeyPair,
}

impl std::fmt::Debug for NodeTlsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTlsKey").finish_non_exhaustive()
    }
}

impl NodeTlsKey {
    /// Generates an ECDSA P-256 key from the operating system's randomness.
    pub fn generate() -> Result<Self, TlsError> {
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map(|pair| Self { pair })
            .map_err(|error| TlsError::Generate(error.to_string()))
    }

    /// Returns the DER SubjectPublicKeyInfo of the public key.
    pub fn public_key_info(&self) -> Vec<u8> {
        self.pair.subject_public_key_info()
    }

    /// Returns the private key as PKCS#8 PEM, for the key file and rustls only.
    fn private_pem(&self) -> String {
        self.pair.serialize_pem()
    }
}

/// Builds the PEM certificate signing request for `key`: common name `node`, and a subject
/// alternative name per entry of `names` (IP addresses as IP SANs, others as DNS SANs).
pub fn signing_request(
    node: &NodeId,
    names: &[TlsName],
    key: &NodeTlsKey,
) -> Result<String, TlsError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, node.to_string());
    for name in names {
        let san = match name {
            TlsName::Ip(address) => SanType::IpAddress(*address),
            TlsName::Dns(dns) => SanType::DnsName(
                dns.clone()
                    .try_into()
                    .map_err(|error: rcgen::Error| TlsError::Generate(error.to_string()))?,
            ),
        };
        params.subject_alt_names.push(san);
    }
    params
        .serialize_request(&key.pair)
        .and_then(|request| request.pem())
        .map_err(|error| TlsError::Generate(error.to_string()))
}

/// The TLS files of a node, under `<state_dir>/tls/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The private key, mode 0600.
    pub key: PathBuf,
    /// The node certificate followed by its chain.
    pub certificate: PathBuf,
    /// The trust bundle.
    pub bundle: PathBuf,
}

/// The key and certificate chain read back from [`TlsFiles`].
pub struct InstalledPem {
    /// The private key in PEM.
    pub key_pem: String,
    /// The node certificate and chain in PEM.
    pub chain_pem: String,
}

impl std::fmt::Debug for InstalledPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstalledPem")
            .field("chain_pem", &self.chain_pem)
            .finish_non_exhaustive()
    }
}

impl TlsFiles {
    /// Returns the paths under `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        let dir = state_dir.join(TLS_DIR);
        Self {
            key: dir.join(KEY_FILE),
            certificate: dir.join(CERTIFICATE_FILE),
            bundle: dir.join(BUNDLE_FILE),
        }
    }

    /// Writes the bundle, the key (mode 0600 from creation) and the chain, each through a
    /// temporary file that is synced and renamed, with the directory synced after. The chain
    /// goes last, so a crash in between leaves a key that does not match `node.crt`, which the
    /// next start detects.
    pub fn install(
        &self,
        key: &NodeTlsKey,
        chain_pem: &str,
        bundle_pem: &str,
    ) -> Result<(), TlsError> {
        let file_error = |path: &Path, error: std::io::Error| TlsError::File {
            path: path.to_path_buf(),
            reason: error.to_string(),
        };
        write_atomically(&self.bundle, bundle_pem.as_bytes())
            .map_err(|error| file_error(&self.bundle, error))?;
        write_private(&self.key, key.private_pem().as_bytes())
            .map_err(|error| file_error(&self.key, error))?;
        write_atomically(&self.certificate, chain_pem.as_bytes())
            .map_err(|error| file_error(&self.certificate, error))
    }

    /// Reads the key and chain, or returns `None` if either file is missing.
    pub fn read(&self) -> Result<Option<InstalledPem>, TlsError> {
        let read = |path: &Path| match std::fs::read_to_string(path) {
            Ok(text) => Ok(Some(text)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(TlsError::File {
                path: path.to_path_buf(),
                reason: error.to_string(),
            }),
        };
        let (Some(key_pem), Some(chain_pem)) = (read(&self.key)?, read(&self.certificate)?) else {
            return Ok(None);
        };
        Ok(Some(InstalledPem { key_pem, chain_pem }))
    }
}

/// Returns the DER SubjectPublicKeyInfo of a PEM private key.
pub fn public_key_info_of(key_pem: &str) -> Result<Vec<u8>, TlsError> {
    KeyPair::from_pem(key_pem)
        .map(|pair| pair.subject_public_key_info())
        .map_err(|error| TlsError::Unusable(format!("the private key does not parse: {error}")))
}

/// A certificate ready for the listener, with what its status response reports.
#[derive(Debug, Clone)]
pub struct ServedCertificate {
    key: Arc<CertifiedKey>,
    not_after: UnixMillis,
    sha256: String,
}

impl ServedCertificate {
    /// Loads a PEM key and chain, checking that the key belongs to the first certificate.
    pub fn from_pem(
        key_pem: &str,
        chain_pem: &str,
        not_after: UnixMillis,
    ) -> Result<Self, TlsError> {
        let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| TlsError::Unusable(format!("the chain is not PEM: {error}")))?;
        let Some(leaf) = chain.first() else {
            return Err(TlsError::Unusable("the chain is empty".to_owned()));
        };
        let sha256 = hex::encode(Sha256::digest(leaf.as_ref()));
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|error| TlsError::Unusable(format!("the key is not PEM: {error}")))?;
        let provider = rustls::crypto::ring::default_provider();
        let certified = CertifiedKey::from_der(chain, key, &provider)
            .map_err(|error| TlsError::Unusable(error.to_string()))?;
        Ok(Self {
            key: Arc::new(certified),
            not_after,
            sha256,
        })
    }

    /// Loads a freshly generated key with its issued chain.
    pub fn from_key(
        key: &NodeTlsKey,
        chain_pem: &str,
        not_after: UnixMillis,
    ) -> Result<Self, TlsError> {
        Self::from_pem(&key.private_pem(), chain_pem, not_after)
    }

    /// Returns the SHA-256 of the node certificate's DER, in hex.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Returns the end of the certificate's validity.
    pub fn not_after(&self) -> UnixMillis {
        self.not_after
    }
}

/// The certificate the listener presents; [`CertificateSlot::replace`] swaps it for every
/// handshake that starts afterwards.
#[derive(Debug, Default)]
pub struct CertificateSlot {
    current: RwLock<Option<ServedCertificate>>,
}

impl CertificateSlot {
    /// Makes `certificate` the one presented from now on.
    pub fn replace(&self, certificate: ServedCertificate) {
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(certificate);
    }

    /// Returns the certificate presented now.
    pub fn current(&self) -> Option<ServedCertificate> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl ResolvesServerCert for CertificateSlot {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current().map(|certificate| certificate.key)
    }
}

/// The Warden's own TLS listener. It responds to `GET` and `HEAD` with a small JSON status (node
/// id, the current certificate's `not_after` and SHA-256) and keeps connections open between
/// requests.
pub struct TlsListener {
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    slot: Arc<CertificateSlot>,
    node: NodeId,
    address: SocketAddr,
    connections: Arc<tokio::sync::Semaphore>,
}

impl TlsListener {
    /// Binds `address`. Each handshake uses the certificate that `slot` contains when it starts.
    pub async fn bind(
        address: SocketAddr,
        slot: Arc<CertificateSlot>,
        node: NodeId,
    ) -> Result<Self, TlsError> {
        let listener_error = |reason: String| TlsError::Listener { address, reason };
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|error| listener_error(error.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(slot.clone());
        // A resumed session skips the certificate, so a client would keep relying on the one
        // it saw first. Without resumption every handshake presents the current certificate.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        let listener = TcpListener::bind(address)
            .await
            .map_err(|error| listener_error(error.to_string()))?;
        let address = listener
            .local_addr()
            .map_err(|error| listener_error(error.to_string()))?;
        Ok(Self {
            listener,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            slot,
            node,
            address,
            connections: Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX)),
        })
    }

    /// Returns the bound address, with the port the system chose if it was 0.
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Accepts connections until the task is dropped, serving each on its own task.
    pub async fn serve(self) {
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Typically a lack of file descriptors, so wait before accepting again.
                    tracing::warn!(node_id = %self.node, address = %self.address, error = %error, "failed to accept a connection on the TLS listener");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                tracing::debug!(node_id = %self.node, peer = %peer, connections_max = CONNECTIONS_MAX, "closing a connection to the TLS listener over the maximum");
                drop(stream);
                continue;
            };
            let acceptor = self.acceptor.clone();
            let slot = self.slot.clone();
            let node = self.node.clone();
            tokio::spawn(async move {
                if let Err(reason) = serve_connection(stream, acceptor, &slot, &node).await {
                    tracing::debug!(node_id = %node, peer = %peer, reason = %reason, "TLS listener connection ended");
                }
                drop(permit);
            });
        }
    }
}

/// Serves one connection: the handshake, then requests until the peer closes, requests a close,
/// sends something other than a `GET` or `HEAD`, or stays idle for [`IDLE_TIMEOUT`].
async fn serve_connection(
    stream: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    slot: &CertificateSlot,
    node: &NodeId,
) -> Result<(), String> {
    let mut stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
        .await
        .map_err(|_| "the handshake timed out".to_owned())?
        .map_err(|error| format!("the handshake failed: {error}"))?;
    let mut buffer = Vec::with_capacity(1024);
    loop {
        let head =
            match tokio::time::timeout(IDLE_TIMEOUT, read_head(&mut stream, &mut buffer)).await {
                Err(_) => return Err("the connection was idle too long".to_owned()),
                Ok(Ok(Some(head))) => head,
                Ok(Ok(None)) => return Ok(()),
                Ok(Err(reason)) => return Err(reason),
            };
        let request_line = head.lines().next().unwrap_or_default();
        let method = request_line.split(' ').next().unwrap_or_default();
        let close = head.lines().any(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("connection:")
                .is_some_and(|value| value.trim() == "close")
        });
        let (status, body) = match method {
            "GET" | "HEAD" => ("200 OK", status_body(slot, node)),
            _ => ("405 Method Not Allowed", String::new()),
        };
        let keep_open = status == "200 OK" && !close;
        let mut response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: {}\r\n\r\n",
            body.len(),
            if keep_open { "keep-alive" } else { "close" }
        );
        if method != "HEAD" {
            response.push_str(&body);
        }
        stream
            .write_all(response.as_bytes())
            .await
            .map_err(|error| format!("failed to write a response: {error}"))?;
        stream
            .flush()
            .await
            .map_err(|error| format!("failed to write a response: {error}"))?;
        if !keep_open {
            // A failed close_notify changes nothing for a connection that ends anyway.
            let _ = stream.shutdown().await;
            return Ok(());
        }
    }
}

/// Reads one request head (up to the blank line) into text, leaving any bytes after it in
/// `buffer`. Returns `None` when the peer closes between requests.
async fn read_head<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    buffer: &mut Vec<u8>,
) -> Result<Option<String>, String> {
    loop {
        if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            let head: Vec<u8> = buffer.drain(..end + 4).collect();
            return Ok(Some(String::from_utf8_lossy(&head).into_owned()));
        }
        if buffer.len() > REQUEST_HEAD_BYTES_MAX {
            return Err(format!(
                "the request head is over {REQUEST_HEAD_BYTES_MAX} bytes"
            ));
        }
        let mut chunk = [0u8; 1024];
        let read = stream
            .read(&mut chunk)
            .await
            .map_err(|error| format!("failed to read a request: {error}"))?;
        if read == 0 {
            return if buffer.is_empty() {
                Ok(None)
            } else {
                Err("the peer closed the connection inside a request".to_owned())
            };
        }
        buffer.extend_from_slice(chunk.get(..read).unwrap_or_default());
    }
}

fn status_body(slot: &CertificateSlot, node: &NodeId) -> String {
    let certificate = slot.current();
    let body = serde_json::json!({
        "node_id": node.to_string(),
        "not_after": certificate.as_ref().map(|certificate| certificate.not_after.0),
        "certificate_sha256": certificate.as_ref().map(|certificate| certificate.sha256.clone()),
    });
    format!("{body}\n")
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use x509_parser::prelude::FromDer;

    use super::*;

    #[test]
    fn names_parse_as_ip_or_dns() {
        assert_eq!(
            TlsName::parse("10.0.0.7").unwrap(),
            TlsName::Ip("10.0.0.7".parse().unwrap())
        );
        assert_eq!(
            TlsName::parse("::1").unwrap(),
            TlsName::Ip("::1".parse().unwrap())
        );
        assert_eq!(
            TlsName::parse("Node-1.Example.com").unwrap(),
            TlsName::Dns("node-1.example.com".into())
        );
        assert!(TlsName::parse("*.nodes.example").is_ok());
        for bad in [
            "",
            "a..b",
            "-a.example",
            "a_b.example",
            "a b",
            "x.",
            "10.0.0.300:1",
        ] {
            let error = TlsName::parse(bad).unwrap_err().to_string();
            assert!(error.contains(&format!("{bad:?}")), "{error}");
        }
    }

    #[test]
    fn signing_request_names_node_and_sans() {
        let key = NodeTlsKey::generate().unwrap();
        let names = [
            TlsName::parse("node-1.example").unwrap(),
            TlsName::parse("10.0.0.7").unwrap(),
        ];
        let pem = signing_request(&NodeId::new("node-1").unwrap(), &names, &key).unwrap();
        assert!(pem.contains("BEGIN CERTIFICATE REQUEST"), "{pem}");
        let der = rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
            .unwrap();
        let (_, request) =
            x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
                .unwrap();
        let info = &request.certification_request_info;
        let common_name = info
            .subject
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap();
        assert_eq!(common_name, "node-1");
        assert_eq!(info.subject_pki.raw, key.public_key_info().as_slice());
        let extensions = request.requested_extensions().unwrap();
        let sans: Vec<String> = extensions
            .filter_map(|extension| match extension {
                x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) => Some(
                    san.general_names
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(sans.len(), 2, "{sans:?}");
        assert!(
            sans.iter().any(|san| san.contains("node-1.example")),
            "{sans:?}"
        );
        assert!(
            sans.iter().any(|san| san.contains("0a:00:00:07")),
            "{sans:?}"
        );
    }

    #[tokio::test]
    async fn request_heads_read_one_at_a_time() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client
            .write_all(b"GET / HTTP/1.1\r\n\r\nHEAD / HTTP/1.1\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        drop(client);
        let mut buffer = Vec::new();
        let first = read_head(&mut server, &mut buffer).await.unwrap().unwrap();
        assert_eq!(first, "GET / HTTP/1.1\r\n\r\n");
        let second = read_head(&mut server, &mut buffer).await.unwrap().unwrap();
        assert!(second.starts_with("HEAD / HTTP/1.1"), "{second}");
        assert_eq!(read_head(&mut server, &mut buffer).await.unwrap(), None);
    }

    #[tokio::test]
    async fn oversized_request_head_rejected() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client
            .write_all(&vec![b'a'; REQUEST_HEAD_BYTES_MAX + 2048])
            .await
            .unwrap();
        let mut buffer = Vec::new();
        let error = read_head(&mut server, &mut buffer).await.unwrap_err();
        assert!(error.contains("over 8192 bytes"), "{error}");
        assert!(buffer.len() <= REQUEST_HEAD_BYTES_MAX + 1024);
    }

    #[tokio::test]
    async fn peer_closing_inside_request_is_error() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        drop(client);
        let mut buffer = Vec::new();
        let error = read_head(&mut server, &mut buffer).await.unwrap_err();
        assert!(error.contains("inside a request"), "{error}");
    }

    #[test]
    fn key_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles::new(dir.path());
        assert!(files.read().unwrap().is_none());
        let key = NodeTlsKey::generate().unwrap();
        files.install(&key, "chain", "bundle").unwrap();

        let mode = std::fs::metadata(&files.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(files.key, dir.path().join("tls/node.key"));
        assert_eq!(files.certificate, dir.path().join("tls/node.crt"));
        assert_eq!(files.bundle, dir.path().join("tls/ca-bundle.pem"));
        let installed = files.read().unwrap().unwrap();
        assert_eq!(installed.chain_pem, "chain");
        assert_eq!(
            public_key_info_of(&installed.key_pem).unwrap(),
            key.public_key_info()
        );
        assert!(!format!("{installed:?}").contains("PRIVATE"));
        assert!(!format!("{key:?}").contains("PRIVATE"));
    }
}
