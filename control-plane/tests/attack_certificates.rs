//! Attacks on the node-certificate checks: crafted signing requests against the control plane's
//! CSR parsing, name checks and issuing, crafted replies against the Warden's `validate_reply`,
//! and out-of-order CA rotation steps. Each test asserts that the attack fails.

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::process::Command;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, PKCS_ECDSA_P256_SHA256,
    PKCS_ECDSA_P384_SHA384, PKCS_ED25519,
};
use warden::core::certificate::{validate_reply, Issued as NodeIssued, ReplyError};
use warden_bus::{DeploymentId, NodeId, UnixMillis};
use warden_control_plane::ca::{self, CaRecord, SecretsKey};
use warden_control_plane::core::certificates::{
    check_request, normalize_tls_name, KeyKind, Rotation, RotationError, RotationPhase,
    RotationStep,
};
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::{FromDer, X509Certificate};

const NOW: UnixMillis = UnixMillis(1_800_000_000_000);
const LIFETIME: Duration = Duration::from_secs(3600);

fn node() -> NodeId {
    NodeId::new("n1").unwrap()
}

fn deployment() -> DeploymentId {
    DeploymentId::new("test").unwrap()
}

fn registered() -> Vec<String> {
    vec!["n1.example.com".into(), "127.0.0.1".into()]
}

fn csr_params(common_name: &str, sans: Vec<SanType>) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.subject_alt_names = sans;
    params
}

fn dns(name: &str) -> SanType {
    SanType::DnsName(name.try_into().unwrap())
}

fn serialize(params: &CertificateParams, key: &KeyPair) -> String {
    params.serialize_request(key).unwrap().pem().unwrap()
}

/// Runs the control plane's checks on `pem`; returns the rejection code or the approved names.
fn control_plane_checks(pem: &str) -> Result<Vec<String>, &'static str> {
    let parsed = ca::parse_csr(pem).map_err(|refusal| refusal.code)?;
    check_request(&parsed.facts, &node(), &registered()).map_err(|refusal| refusal.code)
}

fn openssl_csr(key_args: &[&str], subject: &str, digest: &str) -> String {
    let output = Command::new("openssl")
        .args(["req", "-new", "-nodes", "-keyout", "/dev/null"])
        .args(key_args)
        .args(["-subj", subject, digest])
        .output()
        .expect("openssl is needed for requests rcgen cannot build");
    assert!(
        output.status.success(),
        "openssl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn pem_block_der(pem: &str) -> Vec<u8> {
    x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .unwrap()
        .1
        .contents
}

fn der_to_pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        base64::engine::general_purpose::STANDARD.encode(der)
    )
}

#[test]
fn csr_name_tricks_rejected() {
    // SANs that look like or normalize near a registered name but are not one.
    let cases: Vec<(&str, Vec<SanType>)> = vec![
        ("trailing dot", vec![dns("n1.example.com.")]),
        ("wildcard", vec![dns("*.example.com")]),
        ("parent domain", vec![dns("example.com")]),
        (
            "IPv4-mapped IPv6",
            vec![SanType::IpAddress("::ffff:127.0.0.1".parse().unwrap())],
        ),
        (
            "other loopback",
            vec![SanType::IpAddress("127.0.0.2".parse().unwrap())],
        ),
        ("leading-zero address as DNS", vec![dns("127.000.000.001")]),
        ("octal address as DNS", vec![dns("0177.0.0.1")]),
        ("punycode look-alike", vec![dns("xn--n1-example-com")]),
        (
            "URI",
            vec![SanType::URI("spiffe://test/n1".try_into().unwrap())],
        ),
        (
            "email",
            vec![SanType::Rfc822Name("n1@example.com".try_into().unwrap())],
        ),
        (
            "very long",
            vec![dns(&format!("{}.example.com", "a".repeat(300)))],
        ),
        (
            "registered plus foreign",
            vec![dns("n1.example.com"), dns("evil.example.com")],
        ),
    ];
    for (case, sans) in cases {
        let pem = serialize(&csr_params("n1", sans), &KeyPair::generate().unwrap());
        let outcome = control_plane_checks(&pem);
        assert!(outcome.is_err(), "{case}: approved {outcome:?}");
    }
}

#[test]
fn csr_case_variant_issued_lowercase() {
    // Upper case names are the same DNS name; the certificate must carry the registered form.
    let pem = serialize(
        &csr_params("n1", vec![dns("N1.Example.COM")]),
        &KeyPair::generate().unwrap(),
    );
    assert_eq!(
        control_plane_checks(&pem).unwrap(),
        vec!["n1.example.com".to_owned()]
    );
}

#[test]
fn csr_common_name_tricks_rejected() {
    let key = KeyPair::generate().unwrap();
    for common_name in ["N1", "n1 ", "n2", "n1\0", ""] {
        let pem = serialize(&csr_params(common_name, Vec::new()), &key);
        assert_eq!(
            control_plane_checks(&pem),
            Err("common_name_mismatch"),
            "common name {common_name:?}"
        );
    }
}

#[test]
fn csr_duplicate_common_name_issues_node_id_only() {
    // Two CN attributes: whichever one the parser keeps, the certificate must name n1 alone.
    for subject in ["/CN=n2/CN=n1", "/CN=n1/CN=n2"] {
        let pem = openssl_csr(
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
            subject,
            "-sha256",
        );
        let Ok(parsed) = ca::parse_csr(&pem) else {
            continue;
        };
        if check_request(&parsed.facts, &node(), &registered()).is_err() {
            continue;
        }
        let leaf = issue_der(&parsed, &[]);
        let (_, certificate) = X509Certificate::from_der(&leaf).unwrap();
        let names: Vec<_> = certificate
            .subject()
            .iter_common_name()
            .map(|name| name.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(names, vec!["n1".to_owned()], "subject {subject}");
    }
}

#[test]
fn csr_key_types_rejected() {
    // RSA and P-384 keys are outside the allowed ECDSA P-256 and Ed25519.
    let rsa = openssl_csr(&["-newkey", "rsa:2048"], "/CN=n1", "-sha256");
    assert_eq!(control_plane_checks(&rsa), Err("key_type_not_allowed"));
    let p384 = serialize(
        &csr_params("n1", Vec::new()),
        &KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap(),
    );
    assert_eq!(control_plane_checks(&p384), Err("key_type_not_allowed"));
    let ed25519 = serialize(
        &csr_params("n1", Vec::new()),
        &KeyPair::generate_for(&PKCS_ED25519).unwrap(),
    );
    assert!(control_plane_checks(&ed25519).is_ok());
}

#[test]
fn csr_p384_key_signed_with_sha256_rejected() {
    // rcgen names the key after the signature algorithm (ecdsa-with-SHA256), so the key type
    // must come from the key itself, or a P-384 key that signs with SHA-256 passes as P-256.
    let pem = openssl_csr(
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
        "/CN=n1",
        "-sha256",
    );
    let outcome = ca::parse_csr(&pem).map(|parsed| parsed.facts.key);
    assert!(
        !matches!(outcome, Ok(KeyKind::EcdsaP256)),
        "a P-384 key was classified as ECDSA P-256"
    );
    assert!(
        control_plane_checks(&pem).is_err(),
        "a P-384 key was approved"
    );
}

#[test]
fn csr_other_curves_signed_with_sha256_rejected() {
    // The same trick with P-521 and secp256k1 keys.
    for curve in ["P-521", "secp256k1"] {
        let pem = openssl_csr(
            &[
                "-newkey",
                "ec",
                "-pkeyopt",
                &format!("ec_paramgen_curve:{curve}"),
            ],
            "/CN=n1",
            "-sha256",
        );
        let outcome = control_plane_checks(&pem);
        assert!(outcome.is_err(), "{curve} key approved: {outcome:?}");
    }
}

#[test]
fn csr_p384_sha256_issued_key_intact() {
    // If the request above is signed, the certificate must carry the request's key as it is.
    // A failure shows the P-384 point under the P-256 curve identifier, a malformed key.
    let pem = openssl_csr(
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
        "/CN=n1",
        "-sha256",
    );
    let request_der = pem_block_der(&pem);
    let (_, request) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&request_der)
            .unwrap();
    let request_spki = request.certification_request_info.subject_pki.raw.to_vec();
    let Ok(parsed) = ca::parse_csr(&pem) else {
        return;
    };
    let Ok(names) = check_request(&parsed.facts, &node(), &registered()) else {
        return;
    };
    let der = issue_der(&parsed, &names);
    let (_, certificate) = X509Certificate::from_der(&der).unwrap();
    assert_eq!(
        certificate.public_key().raw,
        request_spki.as_slice(),
        "the certificate's public key differs from the request's"
    );
}

#[test]
fn csr_swapped_public_key_rejected() {
    // The request carries key B but is signed by key A: the signature check must fail.
    let signer = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let other = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut der = pem_block_der(&serialize(&csr_params("n1", Vec::new()), &signer));
    let from = signer.subject_public_key_info();
    let to = other.subject_public_key_info();
    assert_eq!(from.len(), to.len());
    let at = der
        .windows(from.len())
        .position(|window| window == from.as_slice())
        .unwrap();
    der[at..at + from.len()].copy_from_slice(&to);
    let pem = der_to_pem("CERTIFICATE REQUEST", &der);
    assert_eq!(control_plane_checks(&pem), Err("malformed_csr"));
}

#[test]
fn csr_ca_request_rejected() {
    let mut params = csr_params("n1", Vec::new());
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let pem = serialize(&params, &KeyPair::generate().unwrap());
    assert!(control_plane_checks(&pem).is_err());
}

#[test]
fn csr_extra_extensions_not_copied() {
    // Key usage certSign, EKU codeSigning/any, name constraints and a private extension in the
    // request: the request is either rejected or none of it reaches the certificate.
    let mut params = csr_params("n1", vec![dns("n1.example.com")]);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::CodeSigning,
        ExtendedKeyUsagePurpose::Any,
    ];
    let pem = serialize(&params, &KeyPair::generate().unwrap());
    if let Ok(parsed) = ca::parse_csr(&pem) {
        let names = check_request(&parsed.facts, &node(), &registered()).unwrap();
        assert_issued_is_plain_leaf(&issue_der(&parsed, &names), &names);
    }

    // rcgen cannot put name constraints or private extensions into a request, so openssl does.
    for extension in [
        "nameConstraints=critical,permitted;DNS:example.com",
        "basicConstraints=critical,CA:TRUE",
        "keyUsage=critical,keyCertSign,cRLSign",
        "1.3.6.1.4.1.99999.1=DER:05:00",
    ] {
        let pem = openssl_csr(
            &[
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-addext",
                extension,
            ],
            "/CN=n1",
            "-sha256",
        );
        if let Ok(parsed) = ca::parse_csr(&pem) {
            if let Ok(names) = check_request(&parsed.facts, &node(), &registered()) {
                assert_issued_is_plain_leaf(&issue_der(&parsed, &names), &names);
            }
        }
    }
}

#[test]
fn csr_many_duplicate_sans_issue_once() {
    // Hundreds of copies of one registered name fit the 8 KiB limit; the certificate gets one.
    let sans = (0..200).map(|_| dns("n1.example.com")).collect();
    let pem = serialize(&csr_params("n1", sans), &KeyPair::generate().unwrap());
    let names = control_plane_checks(&pem).unwrap();
    assert_eq!(names, vec!["n1.example.com".to_owned()]);
}

fn secrets() -> SecretsKey {
    SecretsKey::from_bytes([9; 32])
}

fn record() -> CaRecord {
    CaRecord::first(&deployment(), &secrets(), NOW, [3; 12]).unwrap()
}

fn issue_der(parsed: &ca::ParsedCsr, names: &[String]) -> Vec<u8> {
    let record = record();
    let issued = ca::issue(
        parsed,
        &deployment(),
        &node(),
        names,
        record.authority(1).unwrap(),
        &secrets(),
        NOW,
        LIFETIME,
        [0xab; 16],
    )
    .unwrap();
    pem_block_der(&issued.chain_pem)
}

fn assert_issued_is_plain_leaf(der: &[u8], names: &[String]) {
    let (_, certificate) = X509Certificate::from_der(der).unwrap();
    assert!(!certificate.is_ca(), "the leaf is a CA");
    let key_usage = certificate.key_usage().unwrap().unwrap().value;
    assert!(key_usage.digital_signature());
    assert!(!key_usage.key_cert_sign(), "the leaf may sign certificates");
    assert!(!key_usage.crl_sign(), "the leaf may sign CRLs");
    let eku = certificate.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth);
    assert!(eku.client_auth);
    assert!(!eku.any);
    assert!(!eku.code_signing);
    assert!(!eku.email_protection);
    assert!(!eku.ocsp_signing);
    assert!(eku.other.is_empty());
    assert!(certificate.name_constraints().unwrap().is_none());
    for extension in certificate.extensions() {
        assert!(
            !matches!(
                extension.parsed_extension(),
                ParsedExtension::UnsupportedExtension { .. }
            ),
            "unexpected extension {}",
            extension.oid
        );
    }
    let lifetime = certificate.validity().not_after.timestamp()
        - certificate.validity().not_before.timestamp();
    assert_eq!(
        lifetime,
        i64::try_from(LIFETIME.as_secs() + ca::BACKDATE.as_secs()).unwrap()
    );
    let sans = certificate
        .subject_alternative_name()
        .unwrap()
        .map(|san| san.value.general_names.len())
        .unwrap_or(0);
    assert_eq!(sans, names.len());
}

#[test]
fn issued_leaf_carries_only_approved_fields() {
    let key = KeyPair::generate().unwrap();
    let pem = serialize(
        &csr_params(
            "n1",
            vec![
                dns("n1.example.com"),
                SanType::IpAddress("127.0.0.1".parse().unwrap()),
            ],
        ),
        &key,
    );
    let parsed = ca::parse_csr(&pem).unwrap();
    let names = check_request(&parsed.facts, &node(), &registered()).unwrap();
    let der = issue_der(&parsed, &names);
    assert_issued_is_plain_leaf(&der, &names);
    let (_, certificate) = X509Certificate::from_der(&der).unwrap();
    assert_eq!(
        certificate.public_key().raw,
        key.subject_public_key_info().as_slice()
    );
}

// The Warden's check of a reply.

struct Authority {
    key: KeyPair,
    pem: String,
}

fn authority(name: &str) -> Authority {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let pem = params.self_signed(&key).unwrap().pem();
    Authority { key, pem }
}

fn leaf_pem(subject_key: &KeyPair, signer: &Authority, from: i64, to: i64, is_ca: bool) -> String {
    let mut params = CertificateParams::new(vec!["n1.example.com".to_owned()]).unwrap();
    params.not_before = time::OffsetDateTime::from_unix_timestamp(from).unwrap();
    params.not_after = time::OffsetDateTime::from_unix_timestamp(to).unwrap();
    if is_ca {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    }
    let issuer = Issuer::from_ca_cert_pem(&signer.pem, &signer.key).unwrap();
    params.signed_by(subject_key, &issuer).unwrap().pem()
}

fn now_secs() -> i64 {
    i64::try_from(NOW.0 / 1000).unwrap()
}

fn reply(chain_pem: String, bundle_pem: String, bundle_version: u64) -> NodeIssued {
    NodeIssued {
        chain_pem,
        bundle_pem,
        bundle_version,
    }
}

#[test]
fn reply_baseline_accepted() {
    let ca = authority("real CA");
    let key = KeyPair::generate().unwrap();
    let leaf = leaf_pem(&key, &ca, now_secs() - 60, now_secs() + 3600, false);
    let issued = reply(format!("{leaf}{}", ca.pem), ca.pem, 2);
    assert!(validate_reply(&issued, &key.subject_public_key_info(), 2, NOW).is_ok());
}

#[test]
fn reply_other_key_rejected() {
    let ca = authority("real CA");
    let requested = KeyPair::generate().unwrap();
    let other = KeyPair::generate().unwrap();
    let leaf = leaf_pem(&other, &ca, now_secs() - 60, now_secs() + 3600, false);
    let issued = reply(format!("{leaf}{}", ca.pem), ca.pem, 1);
    assert_eq!(
        validate_reply(&issued, &requested.subject_public_key_info(), 1, NOW),
        Err(ReplyError::KeyMismatch)
    );
}

#[test]
fn reply_unknown_issuer_rejected() {
    // Signed by a CA that is neither in the chain nor in the bundle.
    let ca = authority("real CA");
    let rogue = authority("rogue CA");
    let key = KeyPair::generate().unwrap();
    let leaf = leaf_pem(&key, &rogue, now_secs() - 60, now_secs() + 3600, false);
    let issued = reply(format!("{leaf}{}", ca.pem), ca.pem, 1);
    assert_eq!(
        validate_reply(&issued, &key.subject_public_key_info(), 1, NOW),
        Err(ReplyError::UnknownIssuer)
    );
}

#[test]
fn reply_issuer_outside_bundle_rejected() {
    // Signed by a CA carried in the chain but absent from the trust bundle. Clients that trust
    // only the bundle would reject such a certificate, so the node should not install it.
    let ca = authority("real CA");
    let rogue = authority("rogue CA");
    let key = KeyPair::generate().unwrap();
    let leaf = leaf_pem(&key, &rogue, now_secs() - 60, now_secs() + 3600, false);
    let issued = reply(format!("{leaf}{}", rogue.pem), ca.pem, 1);
    assert!(
        validate_reply(&issued, &key.subject_public_key_info(), 1, NOW).is_err(),
        "a leaf whose issuer is outside the bundle was accepted"
    );
}

#[test]
fn reply_expired_rejected() {
    let ca = authority("real CA");
    let key = KeyPair::generate().unwrap();
    let leaf = leaf_pem(&key, &ca, now_secs() - 7200, now_secs() - 1, false);
    let issued = reply(format!("{leaf}{}", ca.pem), ca.pem, 1);
    assert!(matches!(
        validate_reply(&issued, &key.subject_public_key_info(), 1, NOW),
        Err(ReplyError::Expired { .. })
    ));
}

#[test]
fn reply_lower_bundle_version_rejected() {
    let ca = authority("real CA");
    let key = KeyPair::generate().unwrap();
    let leaf = leaf_pem(&key, &ca, now_secs() - 60, now_secs() + 3600, false);
    let issued = reply(format!("{leaf}{}", ca.pem), ca.pem, 4);
    assert!(matches!(
        validate_reply(&issued, &key.subject_public_key_info(), 5, NOW),
        Err(ReplyError::BundleRollback { .. })
    ));
}

#[test]
fn reply_huge_chain_rejected() {
    let ca = authority("real CA");
    let key = KeyPair::generate().unwrap();
    let leaf = leaf_pem(&key, &ca, now_secs() - 60, now_secs() + 3600, false);
    let many = ca.pem.repeat(17);
    let issued = reply(format!("{leaf}{many}"), ca.pem.clone(), 1);
    assert!(matches!(
        validate_reply(&issued, &key.subject_public_key_info(), 1, NOW),
        Err(ReplyError::Chain(_))
    ));
    let padded = reply(
        format!("{leaf}{}", " ".repeat(70 * 1024)),
        ca.pem.clone(),
        1,
    );
    assert!(matches!(
        validate_reply(&padded, &key.subject_public_key_info(), 1, NOW),
        Err(ReplyError::Chain(_))
    ));
    let private = reply(format!("{leaf}{}", key.serialize_pem()), ca.pem, 1);
    assert!(matches!(
        validate_reply(&private, &key.subject_public_key_info(), 1, NOW),
        Err(ReplyError::Chain(_))
    ));
}

#[test]
fn reply_ca_leaf_rejected() {
    // The control plane never issues a CA certificate to a node; a reply with one is forged.
    let ca = authority("real CA");
    let key = KeyPair::generate().unwrap();
    let leaf = leaf_pem(&key, &ca, now_secs() - 60, now_secs() + 3600, true);
    let issued = reply(format!("{leaf}{}", ca.pem), ca.pem, 1);
    assert!(
        validate_reply(&issued, &key.subject_public_key_info(), 1, NOW).is_err(),
        "a CA certificate was accepted as the node certificate"
    );
}

#[test]
fn reply_not_yet_valid_rejected() {
    // A certificate valid only from next year would leave the node without a usable one.
    let ca = authority("real CA");
    let key = KeyPair::generate().unwrap();
    let start = now_secs() + 365 * 86_400;
    let leaf = leaf_pem(&key, &ca, start, start + 3600, false);
    let issued = reply(format!("{leaf}{}", ca.pem), ca.pem, 1);
    assert!(
        validate_reply(&issued, &key.subject_public_key_info(), 1, NOW).is_err(),
        "a certificate that is not valid yet was accepted"
    );
}

// Rotation steps out of order.

#[test]
fn rotation_out_of_order_steps_rejected() {
    let stable = Rotation::first(1);
    let live: Vec<(NodeId, u64)> = vec![(node(), 1)];
    assert!(matches!(
        stable.step(RotationStep::RollBack, &live),
        Err(RotationError::NotInPhase { .. })
    ));
    assert!(matches!(
        stable.step(RotationStep::Advance, &live),
        Err(RotationError::NotInPhase { .. })
    ));
    assert!(stable.step(RotationStep::Begin { new: 1 }, &live).is_err());

    let joining = stable.step(RotationStep::Begin { new: 2 }, &live).unwrap();
    assert!(matches!(
        joining.step(RotationStep::Begin { new: 3 }, &live),
        Err(RotationError::NotInPhase { .. })
    ));
    // A live node still on the old bundle blocks advancing and rolling back.
    assert!(matches!(
        joining.step(RotationStep::Advance, &live),
        Err(RotationError::Waiting { .. })
    ));
    assert!(matches!(
        joining.step(RotationStep::RollBack, &live),
        Err(RotationError::Waiting { .. })
    ));

    let caught_up = vec![(node(), joining.bundle_version)];
    let signing = joining.step(RotationStep::Advance, &caught_up).unwrap();
    let behind = vec![(node(), joining.bundle_version)];
    assert!(matches!(
        signing.step(RotationStep::Advance, &behind),
        Err(RotationError::Waiting { .. })
    ));
    let done = signing
        .step(RotationStep::Advance, &[(node(), signing.bundle_version)])
        .unwrap();
    assert_eq!(done.phase, RotationPhase::Stable { active: 2 });
    assert!(done.step(RotationStep::RollBack, &[]).is_err());
}

#[test]
fn key_write_ignores_planted_temporary() {
    // The key goes through `.node.key.tmp-<pid>`. A file already at that name (left over, or
    // planted by someone who can write the directory) must not keep its own mode and owner,
    // and a symbolic link there must not be followed.
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("node.key");
    let temporary = dir
        .path()
        .join(format!(".node.key.tmp-{}", std::process::id()));
    std::fs::write(&temporary, b"").unwrap();
    std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o644)).unwrap();
    warden::executor::write_private(&key, b"-----BEGIN PRIVATE KEY-----").unwrap();
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the key file has mode {mode:o}");
}

#[test]
fn key_write_ignores_planted_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("node.key");
    let temporary = dir
        .path()
        .join(format!(".node.key.tmp-{}", std::process::id()));
    let elsewhere = dir.path().join("elsewhere");
    std::os::unix::fs::symlink(&elsewhere, &temporary).unwrap();
    let _ = warden::executor::write_private(&key, b"-----BEGIN PRIVATE KEY-----");
    assert!(
        !elsewhere.exists(),
        "the key was written through a symbolic link"
    );
}

#[test]
fn request_age_window_is_fifteen_minutes() {
    use warden_control_plane::core::certificates::check_request_age;
    let minute = 60_000;
    assert!(check_request_age(UnixMillis(NOW.0 - 14 * minute), NOW).is_ok());
    assert!(check_request_age(UnixMillis(NOW.0 - 16 * minute), NOW).is_err());
    assert!(check_request_age(UnixMillis(NOW.0 + 16 * minute), NOW).is_err());
    assert!(check_request_age(UnixMillis(0), NOW).is_err());
    assert!(check_request_age(UnixMillis(u64::MAX), NOW).is_err());
}

#[test]
fn tls_name_numeric_dns_rejected() {
    // Names made only of digits and dots are not IP addresses to Rust but are to inet_aton
    // (`010.0.0.1` is 8.0.0.1, `1.2.3` is 1.2.0.3), so a certificate naming them confuses
    // clients.
    for name in ["010.0.0.1", "1.2.3", "0x7f.0.0.1", "2130706433"] {
        assert!(
            normalize_tls_name(name).is_err(),
            "{name:?} was accepted as a DNS name"
        );
    }
}

// Attacks through a real broker and control plane.

/// A Warden that enrolled, then was stopped; its NATS connection and key send requests by hand.
struct EnrolledNode {
    cluster: support::Cluster,
    runtime: tokio::runtime::Runtime,
    bus: warden_bus::transport::nats::NatsBus,
    key: warden_bus::SigningKey,
}

impl EnrolledNode {
    fn start() -> Self {
        let mut cluster = support::Cluster::start();
        cluster.add_node("n1");
        cluster.add_node("n2");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (bus, key) = cluster.enroll_and_connect("n1", &runtime);
        Self {
            cluster,
            runtime,
            bus,
            key,
        }
    }

    fn payload(&self, body_node: &str, csr_pem: &str) -> Vec<u8> {
        use warden_bus::Clock;
        let request = warden_bus::messages::CertificateRequest {
            deployment: deployment(),
            node: NodeId::new(body_node).unwrap(),
            csr_pem: csr_pem.to_owned(),
            sent_at: warden_bus::SystemClock.now(),
        };
        let envelope = warden_bus::Envelope::seal(
            warden_bus::MessageId::from_random(rand::random()),
            &request,
        )
        .unwrap();
        self.key.sign(&envelope).unwrap().encode().unwrap()
    }

    /// Sends `payload` on the certificate rpc subject of `subject_node`.
    fn send(
        &self,
        subject_node: &str,
        payload: Vec<u8>,
    ) -> Result<warden_bus::messages::CertificateReply, String> {
        use warden_bus::Bus;
        let subject = warden_bus::Subject::rpc(
            &deployment(),
            &NodeId::new(subject_node).unwrap(),
            warden_bus::RpcVerb::Certificate,
        );
        let reply = self
            .runtime
            .block_on(
                self.bus
                    .request(&subject, payload.into(), Duration::from_secs(5)),
            )
            .map_err(|error| error.to_string())?;
        Ok(warden_bus::Envelope::decode(&reply)
            .unwrap()
            .open::<warden_bus::messages::CertificateReply>()
            .unwrap())
    }
}

fn refusal(reply: &warden_bus::messages::CertificateReply) -> Option<&str> {
    match reply {
        warden_bus::messages::CertificateReply::Refused { code, .. } => Some(code),
        warden_bus::messages::CertificateReply::Issued { .. } => None,
    }
}

#[test]
fn cluster_certificate_attacks_fail() {
    let node = EnrolledNode::start();
    let plain_csr = serialize(
        &csr_params("n1", vec![dns("localhost")]),
        &KeyPair::generate().unwrap(),
    );

    // Baseline: the node's own valid request is signed.
    let baseline = node.send("n1", node.payload("n1", &plain_csr)).unwrap();
    assert_eq!(refusal(&baseline), None, "{baseline:?}");

    // n1's broker credentials on n2's rpc subject: the broker must not deliver it.
    let foreign_subject = node.send(
        "n2",
        node.payload(
            "n2",
            &serialize(&csr_params("n2", Vec::new()), &KeyPair::generate().unwrap()),
        ),
    );
    eprintln!("foreign subject: {foreign_subject:?}");
    assert!(
        foreign_subject
            .as_ref()
            .map_or(true, |reply| refusal(reply).is_some()),
        "n1 received a certificate for n2: {foreign_subject:?}"
    );

    // n1's subject and key, but the body names n2.
    let reply = node.send("n1", node.payload("n2", &plain_csr)).unwrap();
    assert_eq!(refusal(&reply), Some("identity_mismatch"), "{reply:?}");

    // A captured request replayed within the age window: each copy costs the node a certificate
    // from its rate limit but names the same key, so it grants the replayer nothing.
    let captured = node.payload("n1", &plain_csr);
    let first = node.send("n1", captured.clone()).unwrap();
    let second = node.send("n1", captured).unwrap();
    for reply in [&first, &second] {
        if let warden_bus::messages::CertificateReply::Issued { chain_pem, .. } = reply {
            let leaf_der = pem_block_der(chain_pem);
            let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
            let request_der = pem_block_der(&plain_csr);
            let (_, request) =
                x509_parser::certification_request::X509CertificationRequest::from_der(
                    &request_der,
                )
                .unwrap();
            assert_eq!(
                leaf.public_key().raw,
                request.certification_request_info.subject_pki.raw
            );
        }
    }
    eprintln!(
        "replay: first {:?}, second {:?}",
        refusal(&first),
        refusal(&second)
    );

    // A request older than the 15-minute window.
    {
        use warden_bus::Clock;
        let request = warden_bus::messages::CertificateRequest {
            deployment: deployment(),
            node: NodeId::new("n1").unwrap(),
            csr_pem: plain_csr.clone(),
            sent_at: UnixMillis(warden_bus::SystemClock.now().0 - 16 * 60 * 1000),
        };
        let envelope = warden_bus::Envelope::seal(
            warden_bus::MessageId::from_random(rand::random()),
            &request,
        )
        .unwrap();
        let payload = node.key.sign(&envelope).unwrap().encode().unwrap();
        let reply = node.send("n1", payload).unwrap();
        assert_eq!(refusal(&reply), Some("stale_request"), "{reply:?}");
    }

    // n1's subject and key, but the body names another deployment.
    {
        use warden_bus::Clock;
        let request = warden_bus::messages::CertificateRequest {
            deployment: DeploymentId::new("other").unwrap(),
            node: NodeId::new("n1").unwrap(),
            csr_pem: plain_csr.clone(),
            sent_at: warden_bus::SystemClock.now(),
        };
        let envelope = warden_bus::Envelope::seal(
            warden_bus::MessageId::from_random(rand::random()),
            &request,
        )
        .unwrap();
        let payload = node.key.sign(&envelope).unwrap().encode().unwrap();
        let reply = node.send("n1", payload).unwrap();
        assert_eq!(refusal(&reply), Some("identity_mismatch"), "{reply:?}");
    }

    // An oversized request and a request signed by another key.
    let big = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        "A".repeat(20 * 1024)
    );
    let reply = node.send("n1", node.payload("n1", &big)).unwrap();
    assert_eq!(refusal(&reply), Some("malformed_csr"), "{reply:?}");
    let stranger = warden_bus::SigningKey::generate(&mut rand::rngs::OsRng);
    {
        use warden_bus::Clock;
        let request = warden_bus::messages::CertificateRequest {
            deployment: deployment(),
            node: NodeId::new("n1").unwrap(),
            csr_pem: plain_csr.clone(),
            sent_at: warden_bus::SystemClock.now(),
        };
        let envelope = warden_bus::Envelope::seal(
            warden_bus::MessageId::from_random(rand::random()),
            &request,
        )
        .unwrap();
        let payload = stranger.sign(&envelope).unwrap().encode().unwrap();
        let reply = node.send("n1", payload).unwrap();
        assert_eq!(refusal(&reply), Some("identity_mismatch"), "{reply:?}");
    }

    // A flood of rejected requests must not use up the rate limit or flood the log. What each
    // costs is a matter for a benchmark, not for this test.
    for _ in 0..200 {
        let reply = node
            .send(
                "n1",
                node.payload(
                    "n1",
                    &serialize(
                        &csr_params("n1", vec![dns("evil.example.com")]),
                        &KeyPair::generate().unwrap(),
                    ),
                ),
            )
            .unwrap();
        assert_eq!(refusal(&reply), Some("name_not_registered"));
    }
    let reply = node.send("n1", node.payload("n1", &plain_csr)).unwrap();
    assert_eq!(
        refusal(&reply),
        None,
        "a valid request after the flood: {reply:?}"
    );
    let rejected = support::count(
        &node.cluster.control_plane_log(),
        "certificate request rejected",
    );
    eprintln!("rejections logged: {rejected}");
    assert!(
        rejected < 100,
        "{rejected} rejection lines logged for 200 requests"
    );

    // A P-384 key signing with SHA-256 must not pass as P-256 (see
    // csr_p384_key_signed_with_sha256_rejected).
    let p384 = openssl_csr(
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
        "/CN=n1",
        "-sha256",
    );
    let reply = node.send("n1", node.payload("n1", &p384)).unwrap();
    assert_eq!(
        refusal(&reply),
        Some("key_type_not_allowed"),
        "the control plane signed a P-384 key: {reply:?}"
    );
}

#[test]
fn cluster_ca_api_attacks_fail() {
    let node = EnrolledNode::start();
    let reply = node
        .send(
            "n1",
            node.payload(
                "n1",
                &serialize(&csr_params("n1", Vec::new()), &KeyPair::generate().unwrap()),
            ),
        )
        .unwrap();
    assert_eq!(refusal(&reply), None, "{reply:?}");
    let cluster = &node.cluster;
    let path = "/v1/deployments/test/ca";

    // Rotation steps without the admin key or with a wrong one.
    for key in [None, Some("wrong".to_owned()), Some(String::new())] {
        let client = warden_control_plane::ctl::Client::new(&cluster.api, key.clone()).unwrap();
        let outcome = client.post::<_, serde_json::Value>(&format!("{path}/begin"), &());
        assert!(outcome.is_err(), "begin with key {key:?} succeeded");
        let outcome = client.get::<serde_json::Value>(path);
        assert!(outcome.is_err(), "CA status with key {key:?} returned");
    }

    // Unknown step names and a rollback in the stable phase.
    let client = cluster.client();
    for step in ["destroy", "Begin", "begin%00", "../ca", "rollback"] {
        let outcome = client.post::<_, serde_json::Value>(&format!("{path}/{step}"), &());
        assert!(outcome.is_err(), "step {step:?} was taken: {outcome:?}");
    }

    // The CA status shows certificates, not keys.
    let status: serde_json::Value = client.get(path).unwrap();
    let text = status.to_string();
    assert!(!text.contains("PRIVATE"), "{text}");
    assert!(!text.contains("sealed"), "{text}");
    let stored = cluster
        .kv_get(warden_bus::subject::CAS_BUCKET, "test")
        .unwrap();
    let record: serde_json::Value = serde_json::from_slice(&stored).unwrap_or_default();
    let sealed = record.to_string();
    let sealed_key = sealed
        .split("\"sealed_key\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_default()
        .to_owned();
    assert!(
        !sealed_key.is_empty(),
        "no sealed_key in the stored record: {sealed}"
    );
    {
        assert!(!text.contains(&sealed_key));
        assert!(!cluster.control_plane_log().contains(&sealed_key));
    }
    let log = cluster.control_plane_log();
    assert!(
        !log.contains("PRIVATE KEY"),
        "the control plane logged a private key"
    );
}

#[test]
fn warden_tls_key_private_and_unlogged() {
    // A real Warden with a TLS listener: its key file must be 0600 in a directory others cannot
    // write, and neither the key nor the CA key may reach the logs.
    use std::os::unix::fs::PermissionsExt;
    let mut cluster = support::Cluster::start();
    let listen = format!("127.0.0.1:{}", warden_testkit::free_port());
    cluster.add_node_with("n1", |bootstrap| {
        bootstrap.tls_listen = Some(listen.clone());
    });
    cluster.start_warden("n1", &[]);
    let files = warden::tls::TlsFiles::new(&cluster.path("n1"));
    warden_testkit::wait_until(
        "n1 to install a certificate",
        Duration::from_secs(30),
        || files.certificate.exists(),
    );
    let key_mode = std::fs::metadata(&files.key).unwrap().permissions().mode() & 0o777;
    assert_eq!(key_mode, 0o600, "node.key has mode {key_mode:o}");
    let dir_mode = std::fs::metadata(files.key.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(
        dir_mode & 0o022,
        0,
        "the TLS directory has mode {dir_mode:o}"
    );
    let state_mode = std::fs::metadata(cluster.path("n1"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    eprintln!("modes: key {key_mode:o}, tls dir {dir_mode:o}, state dir {state_mode:o}");

    let key_pem = std::fs::read_to_string(&files.key).unwrap();
    let key_body: String = key_pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    let warden_log = cluster.warden_log("n1");
    let control_plane_log = cluster.control_plane_log();
    for (name, log) in [
        ("warden", &warden_log),
        ("control plane", &control_plane_log),
    ] {
        assert!(
            !log.contains("PRIVATE KEY"),
            "the {name} log has a private key"
        );
        assert!(
            !log.contains(&key_body[..40]),
            "the {name} log has the node TLS key"
        );
    }
}

#[test]
fn reply_subject_redirect_dropped() {
    // n1 sends its own valid request but names another node's inbox, or a non-inbox subject, as
    // the reply subject. The control plane may publish anywhere, so it must drop the request
    // instead of publishing the certificate there.
    use futures::StreamExt;
    // The last target is n1's own inbox, which must get the reply; it shows the probe works.
    const TARGETS: [&str; 5] = [
        "_INBOX.test.n2.stolen",
        "ld.test.n2.stolen",
        "_INBOX.test.n1x.stolen",
        "_INBOX.test.n1",
        "_INBOX.test.n1.control",
    ];
    let node = EnrolledNode::start();
    let broker = warden_control_plane::broker::Broker::load(&node.cluster.path("broker")).unwrap();
    let user = broker
        .mint_control_plane(support::now_secs(), &mut rand::rngs::OsRng)
        .unwrap();
    let config = warden_bus::transport::nats::NatsConnectConfig::new(
        vec![node.cluster.nats_url()],
        "attack-listener",
    )
    .with_credentials(user.credentials().unwrap())
    .with_ca_file(broker.ca_file());
    let subject = warden_bus::Subject::rpc(
        &deployment(),
        &NodeId::new("n1").unwrap(),
        warden_bus::RpcVerb::Certificate,
    );
    let csr = serialize(&csr_params("n1", Vec::new()), &KeyPair::generate().unwrap());
    let received = node.runtime.block_on(async {
        let listener = warden_bus::transport::nats::NatsBus::connect_with(&config)
            .await
            .unwrap();
        let mut watched = Vec::new();
        for target in TARGETS {
            watched.push(
                listener
                    .client()
                    .subscribe(target.to_owned())
                    .await
                    .unwrap(),
            );
        }
        listener.client().flush().await.unwrap();
        for target in TARGETS {
            node.bus
                .client()
                .publish_with_reply(
                    subject.to_string(),
                    target.to_owned(),
                    node.payload("n1", &csr).into(),
                )
                .await
                .unwrap();
        }
        node.bus.client().flush().await.unwrap();
        let mut received = Vec::new();
        for mut subscription in watched {
            if let Ok(Some(message)) =
                tokio::time::timeout(Duration::from_secs(3), subscription.next()).await
            {
                received.push(message.subject.to_string());
            }
        }
        received
    });
    assert_eq!(
        received,
        vec!["_INBOX.test.n1.control".to_owned()],
        "replies were published on {received:?}"
    );
}

#[test]
fn ca_concurrent_begin_single_winner() {
    // Two operators begin a rotation at the same moment, several rounds in a row: exactly one
    // begin may win each round, and the record must hold exactly the two CAs of that rotation.
    let cluster = support::Cluster::start();
    let path = "/v1/deployments/test/ca";
    let _: serde_json::Value = cluster.client().get(path).unwrap();
    let mut fingerprints = Vec::new();
    for round in 0..5 {
        let outcomes: Vec<bool> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let client = cluster.client();
                    scope.spawn(move || {
                        client
                            .post::<_, serde_json::Value>(&format!("{path}/begin"), &())
                            .is_ok()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|handle| handle.join().unwrap())
                .collect()
        });
        let winners = outcomes.iter().filter(|won| **won).count();
        assert_eq!(winners, 1, "round {round}: {winners} begins succeeded");
        let status: serde_json::Value = cluster.client().get(path).unwrap();
        assert_eq!(status["phase"], "joining", "round {round}: {status}");
        let authorities = status["authorities"].as_array().unwrap();
        assert_eq!(authorities.len(), 2, "round {round}: {status}");
        fingerprints.push(authorities[1]["fingerprint"].as_str().unwrap().to_owned());
        eprintln!(
            "round {round}: new generation {} bundle version {}",
            authorities[1]["generation"], status["bundle_version"]
        );
        let _: serde_json::Value = cluster
            .client()
            .post(&format!("{path}/rollback"), &())
            .unwrap();
    }
    eprintln!("new CA fingerprints per round: {fingerprints:?}");
}

/// Enrolls `name` through a real Warden, stops it, and connects with its broker credentials.
fn connect_enrolled(
    cluster: &mut support::Cluster,
    runtime: &tokio::runtime::Runtime,
    name: &str,
) -> warden_bus::transport::nats::NatsBus {
    cluster.add_node(name);
    cluster.enroll_and_connect(name, runtime).0
}

#[test]
fn forged_reply_from_other_node_blocked() {
    // The certificate reply is not signed; only the broker keeps other publishers off a node's
    // inbox. n2 publishes into n1's inbox and must not reach it.
    use futures::StreamExt;
    let mut cluster = support::Cluster::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let n1 = connect_enrolled(&mut cluster, &runtime, "n1");
    let n2 = connect_enrolled(&mut cluster, &runtime, "n2");
    let broker = warden_control_plane::broker::Broker::load(&cluster.path("broker")).unwrap();
    let user = broker
        .mint_control_plane(support::now_secs(), &mut rand::rngs::OsRng)
        .unwrap();
    let config = warden_bus::transport::nats::NatsConnectConfig::new(
        vec![cluster.nats_url()],
        "attack-control",
    )
    .with_credentials(user.credentials().unwrap())
    .with_ca_file(broker.ca_file());
    let delivered = runtime.block_on(async {
        let control_plane = warden_bus::transport::nats::NatsBus::connect_with(&config)
            .await
            .unwrap();
        let mut inbox = n1
            .client()
            .subscribe("_INBOX.test.n1.>".to_owned())
            .await
            .unwrap();
        n1.client().flush().await.unwrap();
        // The control plane's own publishes show that the subscription works: wait for the
        // first one before the attack, and read up to a second one after it.
        let mut ready = false;
        for _ in 0..20 {
            control_plane
                .client()
                .publish("_INBOX.test.n1.ready".to_owned(), "ready".into())
                .await
                .unwrap();
            control_plane.client().flush().await.unwrap();
            if let Ok(Some(_)) =
                tokio::time::timeout(Duration::from_millis(500), inbox.next()).await
            {
                ready = true;
                break;
            }
        }
        assert!(
            ready,
            "n1's inbox subscription never received the control plane's message"
        );
        for target in ["_INBOX.test.n1.forged", "_INBOX.test.n1.a.b"] {
            let _ = n2
                .client()
                .publish(target.to_owned(), "forged certificate reply".into())
                .await;
        }
        let _ = n2.client().flush().await;
        control_plane
            .client()
            .publish("_INBOX.test.n1.control".to_owned(), "control".into())
            .await
            .unwrap();
        control_plane.client().flush().await.unwrap();
        let mut delivered = Vec::new();
        while let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_secs(5), inbox.next()).await
        {
            let subject = message.subject.to_string();
            let done = subject == "_INBOX.test.n1.control";
            if subject != "_INBOX.test.n1.ready" {
                delivered.push(subject);
            }
            if done {
                break;
            }
        }
        delivered
    });
    assert_eq!(
        delivered,
        vec!["_INBOX.test.n1.control".to_owned()],
        "n2 delivered messages into n1's inbox: {delivered:?}"
    );
}

#[test]
fn revoked_node_gets_no_certificate() {
    // After revocation the node's open connection and key must not yield a new certificate.
    let node = EnrolledNode::start();
    let csr = serialize(&csr_params("n1", Vec::new()), &KeyPair::generate().unwrap());
    let before = node.send("n1", node.payload("n1", &csr)).unwrap();
    assert_eq!(refusal(&before), None, "{before:?}");
    let _: serde_json::Value = node
        .cluster
        .client()
        .post("/v1/deployments/test/nodes/n1/revoke", &())
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let after = node.send("n1", node.payload("n1", &csr));
    eprintln!("after revocation: {:?}", after.as_ref().map(refusal));
    assert!(
        after
            .as_ref()
            .map_or(true, |reply| refusal(reply).is_some()),
        "a revoked node received a certificate: {after:?}"
    );
}
