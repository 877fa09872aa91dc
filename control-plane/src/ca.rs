//! Each deployment's certificate authority: creating it, keeping its key sealed at rest,
//! reading node signing requests and signing node certificates.
//!
//! The CA key is stored in the `warden_cas` bucket only sealed with ChaCha20-Poly1305 under the
//! replicas' secrets key (`--secrets-key`). The additional data names the deployment and the
//! CA generation, so a sealed key copied into another record does not open.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use warden_bus::subject::CAS_BUCKET;
use warden_bus::{DeploymentId, NodeId, UnixMillis};

use crate::core::certificates::{CsrFacts, KeyKind, Refusal, Rotation};
use crate::store::Record;

/// Lifetime of a deployment CA.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);

/// How far before the request a certificate's validity starts, for nodes whose clocks lag; at
/// most a tenth of the certificate's lifetime.
pub const BACKDATE: Duration = Duration::from_secs(60);

/// Size of the secrets key, in bytes.
pub const SECRETS_KEY_BYTES: usize = 32;

/// Error of a CA operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// The secrets key file cannot be used.
    #[error("secrets key file {path}: {reason}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// The problem and its fix.
        reason: String,
    },
    /// A sealed CA key does not open with this replica's secrets key.
    #[error("the CA key of deployment {deployment} (generation {generation}) does not open: {reason}; every replica needs the same --secrets-key file")]
    Unseal {
        /// The deployment.
        deployment: DeploymentId,
        /// The CA generation.
        generation: u32,
        /// Description of the problem.
        reason: String,
    },
    /// rcgen failed.
    #[error("certificate operation failed: {0}")]
    Certificate(String),
    /// The CA record is inconsistent.
    #[error("the CA record of deployment {deployment} is damaged: {reason}")]
    Damaged {
        /// The deployment.
        deployment: DeploymentId,
        /// Description of the problem.
        reason: String,
    },
}

fn certificate_error(error: impl std::fmt::Display) -> CaError {
    CaError::Certificate(error.to_string())
}

/// The key that seals CA keys at rest. Replicas share it.
pub struct SecretsKey {
    key: LessSafeKey,
}

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretsKey(..)")
    }
}

impl SecretsKey {
    /// Creates a key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; SECRETS_KEY_BYTES]) -> Self {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &bytes)
            .unwrap_or_else(|_| unreachable!("ChaCha20-Poly1305 takes a 32-byte key"));
        Self {
            key: LessSafeKey::new(unbound),
        }
    }

    /// Loads the key from a file with 64 hex characters and mode 0600, as written by
    /// `wardenctl key create`.
    pub fn load(path: &Path) -> Result<Self, CaError> {
        let fail = |reason: String| CaError::KeyFile {
            path: path.to_path_buf(),
            reason,
        };
        let metadata = std::fs::metadata(path).map_err(|error| {
            fail(format!(
                "{error}; create one with `wardenctl key create --out FILE` and give every replica the same file"
            ))
        })?;
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(fail(format!(
                "mode {mode:o} lets other users read it; run chmod 600 on it"
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|error| fail(error.to_string()))?;
        let bytes = hex::decode(text.trim())
            .map_err(|error| fail(format!("it is not 64 hex characters: {error}")))?;
        let bytes: [u8; SECRETS_KEY_BYTES] = bytes.try_into().map_err(|bytes: Vec<u8>| {
            fail(format!(
                "it holds {} bytes instead of {SECRETS_KEY_BYTES}",
                bytes.len()
            ))
        })?;
        Ok(Self::from_bytes(bytes))
    }

    fn seal(&self, aad: &str, nonce: [u8; NONCE_LEN], plain: &[u8]) -> String {
        let mut buffer = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut buffer,
            )
            .unwrap_or_else(|_| unreachable!("a CA key is far below the ChaCha20 length limit"));
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&buffer);
        base64::engine::general_purpose::STANDARD.encode(sealed)
    }

    fn open(&self, aad: &str, sealed: &str) -> Result<Vec<u8>, String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|error| format!("not base64: {error}"))?;
        if bytes.len() < NONCE_LEN {
            return Err("too short".into());
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| "bad nonce".to_owned())?;
        let mut buffer = ciphertext.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut buffer)
            .map_err(|_| "authentication failed".to_owned())?;
        Ok(plain.to_vec())
    }
}

fn seal_label(deployment: &DeploymentId, generation: u32) -> String {
    format!("warden ca key v1 {deployment} {generation}")
}

/// One CA of a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authority {
    /// Generation: 1 for the first CA, one more for each rotation.
    pub generation: u32,
    /// The self-signed CA certificate, PEM.
    pub certificate_pem: String,
    /// The CA's PKCS#8 key sealed under the secrets key: base64 of nonce and ciphertext.
    pub sealed_key: String,
    /// SHA-256 of the certificate's DER, hex.
    pub fingerprint: String,
    /// When it was created.
    pub created_at: UnixMillis,
    /// When it expires.
    pub not_after: UnixMillis,
}

/// A deployment's CAs and the state of their rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRecord {
    /// The deployment.
    pub deployment: DeploymentId,
    /// The CAs in use: one, or two during a rotation.
    pub authorities: Vec<Authority>,
    /// The rotation state.
    pub rotation: Rotation,
    /// When the rotation state last changed.
    pub changed_at: UnixMillis,
    /// Highest generation ever created, so a CA dropped by a rollback never shares its
    /// generation with a later one.
    #[serde(default)]
    pub last_generation: u32,
}

impl Record for CaRecord {
    const BUCKET: &'static str = CAS_BUCKET;
    const SCHEMA: u32 = 1;
    const NAME: &'static str = "deployment CA";
    fn key(&self) -> String {
        self.deployment.to_string()
    }
}

impl CaRecord {
    /// Creates a record with one new CA.
    pub fn first(
        deployment: &DeploymentId,
        secrets: &SecretsKey,
        now: UnixMillis,
        entropy: [u8; NONCE_LEN],
    ) -> Result<Self, CaError> {
        let authority = create_authority(deployment, 1, secrets, now, entropy)?;
        Ok(Self {
            deployment: deployment.clone(),
            authorities: vec![authority],
            rotation: Rotation::first(1),
            changed_at: now,
            last_generation: 1,
        })
    }

    /// Returns the CA of `generation`.
    pub fn authority(&self, generation: u32) -> Result<&Authority, CaError> {
        self.authorities
            .iter()
            .find(|authority| authority.generation == generation)
            .ok_or_else(|| CaError::Damaged {
                deployment: self.deployment.clone(),
                reason: format!("it names CA generation {generation} but does not hold it"),
            })
    }

    /// Returns the CA certificates nodes trust in the current phase, PEM, oldest first.
    pub fn bundle_pem(&self) -> Result<String, CaError> {
        let mut bundle = String::new();
        for generation in self.rotation.phase.trusted() {
            bundle.push_str(&self.authority(generation)?.certificate_pem);
        }
        Ok(bundle)
    }

    /// Drops CAs the current phase no longer trusts.
    pub fn prune(&mut self) {
        let trusted = self.rotation.phase.trusted();
        self.authorities
            .retain(|authority| trusted.contains(&authority.generation));
    }

    /// Returns the next unused generation.
    pub fn next_generation(&self) -> u32 {
        self.authorities
            .iter()
            .map(|authority| authority.generation)
            .max()
            .unwrap_or(0)
            .max(self.last_generation)
            + 1
    }
}

fn offset(at: UnixMillis) -> Result<time::OffsetDateTime, CaError> {
    let nanos = i128::from(at.0) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos).map_err(certificate_error)
}

/// Creates a CA of `generation` for `deployment`, with its key sealed under `secrets`.
pub fn create_authority(
    deployment: &DeploymentId,
    generation: u32,
    secrets: &SecretsKey,
    now: UnixMillis,
    nonce: [u8; NONCE_LEN],
) -> Result<Authority, CaError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(certificate_error)?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(
        DnType::CommonName,
        format!("Warden deployment {deployment} CA {generation}"),
    );
    name.push(DnType::OrganizationName, "Warden");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let not_after = now.saturating_add(CA_LIFETIME);
    params.not_before = offset(now.saturating_sub(BACKDATE))?;
    params.not_after = offset(not_after)?;
    let certificate = params.self_signed(&key).map_err(certificate_error)?;
    let sealed_key = secrets.seal(
        &seal_label(deployment, generation),
        nonce,
        &key.serialize_der(),
    );
    Ok(Authority {
        generation,
        certificate_pem: certificate.pem(),
        sealed_key,
        fingerprint: hex::encode(Sha256::digest(certificate.der())),
        created_at: now,
        not_after,
    })
}

/// A node's signing request whose own signature checked out.
pub struct ParsedCsr {
    /// Facts the checks look at.
    pub facts: CsrFacts,
    params: CertificateSigningRequestParams,
}

/// Reads a PEM signing request and checks its signature.
pub fn parse_csr(pem: &str) -> Result<ParsedCsr, Refusal> {
    let params = CertificateSigningRequestParams::from_pem(pem).map_err(|error| {
        Refusal::new(
            "malformed_csr",
            format!("the certificate request does not parse or its signature is wrong: {error}"),
        )
    })?;
    let common_name = params
        .params
        .distinguished_name
        .get(&DnType::CommonName)
        .map(|value| match value {
            DnValue::Utf8String(text) => text.clone(),
            DnValue::PrintableString(text) => text.as_str().to_owned(),
            DnValue::Ia5String(text) => text.as_str().to_owned(),
            other => format!("{other:?}"),
        });
    let mut names = Vec::new();
    for name in &params.params.subject_alt_names {
        match name {
            SanType::DnsName(dns) => names.push(dns.as_str().to_owned()),
            SanType::IpAddress(address) => names.push(address.to_string()),
            other => {
                return Err(Refusal::new(
                    "name_not_registered",
                    format!(
                    "subject alternative name {other:?} is neither a DNS name nor an IP address"
                ),
                ))
            }
        }
    }
    let key = key_kind(pem)?;
    let wants_ca = !matches!(params.params.is_ca, IsCa::NoCa | IsCa::ExplicitNoCa);
    Ok(ParsedCsr {
        facts: CsrFacts {
            common_name,
            names,
            key,
            wants_ca,
        },
        params,
    })
}

/// Reads the kind of the key in a PEM signing request from its SubjectPublicKeyInfo. rcgen names
/// the algorithm after the request's signature, which a P-384 key can make with SHA-256, so
/// the curve is read from the key itself.
fn key_kind(pem: &str) -> Result<KeyKind, Refusal> {
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ED25519};
    use x509_parser::prelude::FromDer;

    let malformed = |reason: String| Refusal::new("malformed_csr", reason);
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|error| malformed(format!("the certificate request is not PEM: {error}")))?;
    let (_, request) = X509CertificationRequest::from_der(&block.contents)
        .map_err(|error| malformed(format!("the certificate request does not parse: {error}")))?;
    let key_info = &request.certification_request_info.subject_pki;
    let algorithm = &key_info.algorithm.algorithm;
    let key_bytes = key_info.subject_public_key.data.len();
    if *algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = key_info
            .algorithm
            .parameters
            .as_ref()
            .and_then(|parameters| x509_parser::der_parser::oid::Oid::try_from(parameters).ok());
        // An uncompressed P-256 point is 65 bytes.
        if curve.as_ref() == Some(&OID_EC_P256) && key_bytes == 65 {
            return Ok(KeyKind::EcdsaP256);
        }
        let curve = curve.map_or_else(|| "an unnamed curve".to_owned(), |oid| oid.to_id_string());
        return Ok(KeyKind::Other(format!(
            "ECDSA on curve {curve} with a {key_bytes}-byte key"
        )));
    }
    if *algorithm == OID_SIG_ED25519 && key_bytes == 32 {
        return Ok(KeyKind::Ed25519);
    }
    Ok(KeyKind::Other(algorithm.to_id_string()))
}

/// A signed node certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The node certificate followed by the signing CA's certificate, PEM.
    pub chain_pem: String,
    /// Start of validity.
    pub not_before: UnixMillis,
    /// End of validity.
    pub not_after: UnixMillis,
    /// Serial number, hex.
    pub serial: String,
}

/// Signs a certificate for the key in `csr`, naming `node` and `names` only, valid for
/// `lifetime` from `now`, with the CA `authority` of `deployment`.
#[allow(clippy::too_many_arguments)]
pub fn issue(
    csr: &ParsedCsr,
    deployment: &DeploymentId,
    node: &NodeId,
    names: &[String],
    authority: &Authority,
    secrets: &SecretsKey,
    now: UnixMillis,
    lifetime: Duration,
    serial: [u8; 16],
) -> Result<Issued, CaError> {
    let key_der = secrets
        .open(
            &seal_label(deployment, authority.generation),
            &authority.sealed_key,
        )
        .map_err(|reason| CaError::Unseal {
            deployment: deployment.clone(),
            generation: authority.generation,
            reason,
        })?;
    let key = KeyPair::try_from(key_der.as_slice()).map_err(certificate_error)?;
    let issuer =
        Issuer::from_ca_cert_pem(&authority.certificate_pem, key).map_err(certificate_error)?;

    // Only what the checks approved goes into the certificate; nothing else from the request.
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, node.as_str());
    name.push(DnType::OrganizationalUnitName, deployment.as_str());
    params.distinguished_name = name;
    for name in names {
        let san = match name.parse::<std::net::IpAddr>() {
            Ok(address) => SanType::IpAddress(address),
            Err(_) => SanType::DnsName(name.as_str().try_into().map_err(certificate_error)?),
        };
        params.subject_alt_names.push(san);
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let mut serial = serial;
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    let not_before = now.saturating_sub(BACKDATE.min(lifetime / 10));
    let not_after = now.saturating_add(lifetime).min(authority.not_after);
    params.not_before = offset(not_before)?;
    params.not_after = offset(not_after)?;
    let certificate = params
        .signed_by(&csr.params.public_key, &issuer)
        .map_err(certificate_error)?;
    // X.509 keeps whole seconds, so report the times as the certificate stores them.
    let seconds = |at: UnixMillis| UnixMillis(at.0 / 1000 * 1000);
    Ok(Issued {
        chain_pem: format!("{}{}", certificate.pem(), authority.certificate_pem),
        not_before: seconds(not_before),
        not_after: seconds(not_after),
        serial: hex::encode(serial),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(byte: u8) -> SecretsKey {
        SecretsKey::from_bytes([byte; 32])
    }

    fn csr(common_name: &str, names: &[&str]) -> String {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(
            names
                .iter()
                .map(|name| (*name).to_owned())
                .collect::<Vec<_>>(),
        )
        .unwrap();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    fn deployment() -> DeploymentId {
        DeploymentId::new("prod").unwrap()
    }

    #[test]
    fn issues_a_certificate_that_chains_to_the_ca() {
        let now = UnixMillis(1_800_000_000_000);
        let record = CaRecord::first(&deployment(), &secrets(1), now, [0; 12]).unwrap();
        let parsed = parse_csr(&csr("n1", &["n1.example.com", "10.0.0.1"])).unwrap();
        assert_eq!(parsed.facts.common_name.as_deref(), Some("n1"));
        assert_eq!(parsed.facts.names, vec!["n1.example.com", "10.0.0.1"]);
        assert_eq!(parsed.facts.key, KeyKind::EcdsaP256);
        assert!(!parsed.facts.wants_ca);
        let issued = issue(
            &parsed,
            &deployment(),
            &NodeId::new("n1").unwrap(),
            &parsed.facts.names,
            record.authority(1).unwrap(),
            &secrets(1),
            now,
            Duration::from_secs(60),
            [0xff; 16],
        )
        .unwrap();
        assert_eq!(issued.not_after, UnixMillis(now.0 + 60_000));
        assert_eq!(issued.chain_pem.matches("BEGIN CERTIFICATE").count(), 2);

        let (_, leaf) = x509_parser::pem::parse_x509_pem(issued.chain_pem.as_bytes()).unwrap();
        let leaf = leaf.parse_x509().unwrap();
        let (_, ca) =
            x509_parser::pem::parse_x509_pem(record.authorities[0].certificate_pem.as_bytes())
                .unwrap();
        let ca = ca.parse_x509().unwrap();
        leaf.verify_signature(Some(ca.public_key())).unwrap();
        assert!(!leaf.is_ca());
    }

    #[test]
    fn sealed_key_bound_to_key_and_deployment() {
        let now = UnixMillis(1_800_000_000_000);
        let record = CaRecord::first(&deployment(), &secrets(1), now, [0; 12]).unwrap();
        let parsed = parse_csr(&csr("n1", &[])).unwrap();
        let node = NodeId::new("n1").unwrap();
        let attempt = |secrets: &SecretsKey, deployment: &DeploymentId| {
            issue(
                &parsed,
                deployment,
                &node,
                &[],
                record.authority(1).unwrap(),
                secrets,
                now,
                Duration::from_secs(60),
                [1; 16],
            )
        };
        assert!(matches!(
            attempt(&secrets(2), &deployment()),
            Err(CaError::Unseal { .. })
        ));
        assert!(matches!(
            attempt(&secrets(1), &DeploymentId::new("other").unwrap()),
            Err(CaError::Unseal { .. })
        ));
        assert!(!record.authorities[0].sealed_key.contains("PRIVATE"));
    }

    #[test]
    fn garbage_and_tampered_requests_are_malformed() {
        assert_eq!(parse_csr("hello").err().unwrap().code, "malformed_csr");
        let good = csr("n1", &["a.example.com"]);
        let (_, block) = x509_parser::pem::parse_x509_pem(good.as_bytes()).unwrap();
        let mut der = block.contents;
        let middle = der.len() / 2;
        der[middle] ^= 0x01;
        let tampered = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            base64::engine::general_purpose::STANDARD.encode(der)
        );
        assert_eq!(parse_csr(&tampered).err().unwrap().code, "malformed_csr");
    }

    #[test]
    fn secrets_key_file_must_be_private_and_hex() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        std::fs::write(&path, hex::encode([7u8; 32])).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = SecretsKey::load(&path).unwrap_err().to_string();
        assert!(error.contains("chmod 600"), "{error}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(SecretsKey::load(&path).is_ok());
        std::fs::write(&path, "zz").unwrap();
        let error = SecretsKey::load(&path).unwrap_err().to_string();
        assert!(error.contains("hex"), "{error}");
    }
}
