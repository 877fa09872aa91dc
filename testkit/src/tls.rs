//! A TLS client for tests of the Warden's own listener: trust set-up and HTTP/1.1 responses.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Builds a client configuration that trusts every certificate in `bundle_pem`.
///
/// # Panics
/// If the bundle contains no PEM certificate, or one that rustls rejects as a root.
pub fn client_config(bundle_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(bundle_pem.as_bytes()) {
        let certificate = certificate.expect("the trust bundle is PEM certificates");
        roots
            .add(certificate)
            .expect("rustls accepts the trust bundle's certificates as roots");
    }
    assert!(
        !roots.is_empty(),
        "the trust bundle contains no certificate"
    );
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    Arc::new(config)
}

/// Reads one HTTP/1.1 response that has a `content-length` header, and returns its status line
/// and body.
pub async fn read_response<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> std::io::Result<(String, String)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 {
            return Err(std::io::Error::other("the server closed the connection"));
        }
        head.extend_from_slice(&byte);
    }
    let head = String::from_utf8(head).map_err(std::io::Error::other)?;
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().to_owned())
        })
        .ok_or_else(|| std::io::Error::other("the response has no content-length"))?
        .parse()
        .map_err(std::io::Error::other)?;
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await?;
    let status = head.lines().next().unwrap_or_default().to_owned();
    let body = String::from_utf8(body).map_err(std::io::Error::other)?;
    Ok((status, body))
}
