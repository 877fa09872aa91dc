//! A certificate authority for the broker's TLS listeners, made with rcgen.
//!
//! Keys are ECDSA P-256 (rcgen's default) and generated from the operating system's random
//! source by ring. Certificates and keys come out as PEM; keys are PKCS#8.
//!
//! NOTE: a CA lives only as long as its [`CertificateAuthority`] value. Loading a stored CA back
//! from its PEM files is not built yet.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::OffsetDateTime;

use super::NatsSecurityError;

/// Mode of private key files: read and write for the owner only.
pub const PRIVATE_KEY_MODE: u32 = 0o600;

/// A CA that signs server certificates. `Debug` omits the private key.
pub struct CertificateAuthority {
    certificate_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// A certificate and its private key. `Debug` omits the private key.
#[derive(Clone)]
pub struct IssuedCertificate {
    /// The certificate in PEM.
    pub certificate_pem: String,
    private_key_pem: String,
}

impl IssuedCertificate {
    /// Returns the private key in PEM (PKCS#8). Write it with [`write_private_key`].
    pub fn private_key_pem(&self) -> &str {
        &self.private_key_pem
    }
}

impl std::fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("certificate_pem", &self.certificate_pem)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Generates a CA key and a self-signed CA certificate named `common_name`, valid from
    /// `not_before` to `not_after` (Unix seconds). The CA may sign end-entity certificates only
    /// (path length 0).
    pub fn generate(
        common_name: &str,
        not_before: i64,
        not_after: i64,
    ) -> Result<Self, NatsSecurityError> {
        let mut params = CertificateParams::default();
        set_validity(&mut params, not_before, not_after)?;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];

        let key = KeyPair::generate().map_err(|source| NatsSecurityError::Certificate {
            what: "CA key",
            source,
        })?;
        let certificate =
            params
                .self_signed(&key)
                .map_err(|source| NatsSecurityError::Certificate {
                    what: "CA certificate",
                    source,
                })?;
        Ok(Self {
            certificate_pem: certificate.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Returns the CA certificate in PEM, for clients to trust.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// Returns the CA's private key in PEM (PKCS#8). Write it with [`write_private_key`].
    pub fn private_key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Generates a key and a server certificate for `names` (DNS names or IP addresses, such
    /// as `localhost` and `127.0.0.1`), signed by this CA and valid from `not_before` to
    /// `not_after` (Unix seconds).
    pub fn issue_server_certificate(
        &self,
        names: &[&str],
        not_before: i64,
        not_after: i64,
    ) -> Result<IssuedCertificate, NatsSecurityError> {
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).map_err(|source| {
            NatsSecurityError::Certificate {
                what: "server certificate",
                source,
            }
        })?;

        set_validity(&mut params, not_before, not_after)?;
        params.distinguished_name = DistinguishedName::new();
        if let Some(first) = names.first() {
            params
                .distinguished_name
                .push(DnType::CommonName, first.as_str());
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;

        let key = KeyPair::generate().map_err(|source| NatsSecurityError::Certificate {
            what: "server key",
            source,
        })?;

        let certificate = params.signed_by(&key, &self.issuer).map_err(|source| {
            NatsSecurityError::Certificate {
                what: "server certificate",
                source,
            }
        })?;
        Ok(IssuedCertificate {
            certificate_pem: certificate.pem(),
            private_key_pem: key.serialize_pem(),
        })
    }
}

fn set_validity(
    params: &mut CertificateParams,
    not_before: i64,
    not_after: i64,
) -> Result<(), NatsSecurityError> {
    let invalid = |reason: String| NatsSecurityError::Validity {
        not_before,
        not_after,
        reason,
    };
    if not_after <= not_before {
        return Err(invalid("the end is not after the start".to_owned()));
    }
    params.not_before = OffsetDateTime::from_unix_timestamp(not_before)
        .map_err(|error| invalid(error.to_string()))?;
    params.not_after = OffsetDateTime::from_unix_timestamp(not_after)
        .map_err(|error| invalid(error.to_string()))?;
    Ok(())
}

/// Writes a private key to `path` with mode 0600, replacing the file if it exists (I/O).
///
/// A new file is created with mode 0600. An existing file is truncated and its mode is set to
/// 0600 before the key is written, so the key is never readable by other users.
pub fn write_private_key(path: &Path, pem: &str) -> Result<(), NatsSecurityError> {
    let failed = |source| NatsSecurityError::KeyFile {
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(PRIVATE_KEY_MODE)
        .open(path)
        .map_err(failed)?;
    file.set_permissions(std::fs::Permissions::from_mode(PRIVATE_KEY_MODE))
        .map_err(failed)?;
    file.write_all(pem.as_bytes()).map_err(failed)?;
    file.sync_all().map_err(failed)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;

    #[test]
    fn issues_server_certificate_in_pem() {
        let ca = CertificateAuthority::generate("Warden test CA", NOW - 60, NOW + 3600).unwrap();
        assert!(ca
            .certificate_pem()
            .starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(ca
            .private_key_pem()
            .starts_with("-----BEGIN PRIVATE KEY-----"));
        let server = ca
            .issue_server_certificate(&["localhost", "127.0.0.1"], NOW - 60, NOW + 3600)
            .unwrap();
        assert!(server
            .certificate_pem
            .starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(server
            .private_key_pem()
            .starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_ne!(server.certificate_pem, ca.certificate_pem());
    }

    #[test]
    fn debug_omits_private_keys() {
        let ca = CertificateAuthority::generate("Warden test CA", NOW, NOW + 60).unwrap();
        let server = ca
            .issue_server_certificate(&["localhost"], NOW, NOW + 60)
            .unwrap();
        let key_body = |pem: &str| pem.lines().nth(1).unwrap().to_owned();
        assert!(!format!("{ca:?}").contains(&key_body(&ca.private_key_pem())));
        assert!(!format!("{server:?}").contains(&key_body(server.private_key_pem())));
    }

    #[test]
    fn inverted_validity_rejected() {
        let error = CertificateAuthority::generate("CA", NOW, NOW).unwrap_err();
        assert!(
            matches!(error, NatsSecurityError::Validity { .. }),
            "{error}"
        );
    }

    #[test]
    fn private_key_file_has_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.key");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private_key(&path, "-----BEGIN PRIVATE KEY-----\n").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "-----BEGIN PRIVATE KEY-----\n"
        );
        let fresh = dir.path().join("fresh.key");
        write_private_key(&fresh, "key").unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
