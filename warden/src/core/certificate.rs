//! The node's TLS certificate lifecycle: when to ask for a certificate, whether an issued one
//! may be installed, and when to retry after a failure.
//!
//! [`CertificateCore`] takes inputs (start, a timer tick, a forced renewal, a reply, the end of
//! an installation, a failure) with the current time and a random unit value, and returns
//! [`CertificateEffect`]s. The caller generates keys, sends requests, writes files and keeps
//! timers. A node renews at a random point between 50 % and 70 % of the lifetime, so nodes
//! that got their certificates together do not renew together. A failed attempt is retried
//! with capped exponential back-off while the node keeps serving the certificate it has.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use warden_bus::messages::CertificateStatus;
use warden_bus::UnixMillis;
use x509_parser::certificate::X509Certificate;
use x509_parser::pem::Pem;

use super::credentials::renewal_time;

/// First retry delay after a failed renewal.
pub const RETRY_BASE: Duration = Duration::from_secs(2);
/// Upper bound on the retry delay; a tenth of the certificate's lifetime lowers it further.
pub const RETRY_MAX: Duration = Duration::from_secs(300);
/// Lower bound on the retry delay, so a certificate of a few seconds is not retried in a loop.
pub const RETRY_MIN: Duration = Duration::from_secs(1);
/// Maximum size of the chain or of the trust bundle in a reply, in bytes.
pub const CERTIFICATE_PEM_BYTES_MAX: usize = 64 * 1024;
/// Maximum number of certificates in the chain or in the trust bundle of a reply.
pub const CERTIFICATES_MAX: usize = 16;
/// How far in the future, by this node's clock, an issued certificate's validity may start.
/// It matches the age the control plane accepts on a request.
pub const NOT_BEFORE_ALLOWANCE: Duration = Duration::from_secs(900);

/// The installed certificate, as persisted in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateRecord {
    /// Start of the certificate's validity, from the certificate itself.
    pub not_before: UnixMillis,
    /// End of the certificate's validity, from the certificate itself.
    pub not_after: UnixMillis,
    /// Version of the trust bundle installed with it.
    pub bundle_version: u64,
    /// When the node requests the next certificate.
    pub renew_at: UnixMillis,
}

impl CertificateRecord {
    fn lifetime(&self) -> Duration {
        self.not_after.since(self.not_before)
    }
}

/// The fields of an issued reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The node certificate followed by the CA certificate that signed it, in PEM.
    pub chain_pem: String,
    /// Every CA certificate the deployment trusts, in PEM.
    pub bundle_pem: String,
    /// Version of that trust bundle.
    pub bundle_version: u64,
}

/// A certificate that passed [`validate_reply`] and may be installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installation {
    /// The record to persist before the files are switched.
    pub record: CertificateRecord,
    /// The node certificate and its chain, for `node.crt`.
    pub chain_pem: String,
    /// The trust bundle, for `ca-bundle.pem`.
    pub bundle_pem: String,
}

/// Something the caller must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateEffect {
    /// Generate a fresh key and signing request, send it, and feed the reply to
    /// [`CertificateCore::on_issued`] or the failure to [`CertificateCore::on_failed`].
    Request,
    /// Persist the record and flush it, write the key, chain and bundle files, reload what
    /// serves the certificate, then call [`CertificateCore::on_installed`] or
    /// [`CertificateCore::on_failed`].
    Install(Box<Installation>),
    /// Call [`CertificateCore::tick`] at this time; replaces any earlier wake-up.
    WakeAt(UnixMillis),
    /// Report this status in heartbeats.
    Status(CertificateStatus),
    /// A new certificate is in use; a forced renewal waiting for one succeeds.
    Installed(CertificateRecord),
    /// An attempt failed; a forced renewal waiting for one fails with the reason.
    Failed {
        /// The error of the attempt.
        reason: String,
        /// Failed attempts in a row.
        failures: u32,
        /// When the next attempt is made.
        retry_at: UnixMillis,
    },
}

/// Errors that keep an issued certificate from being installed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyError {
    /// The chain is over the size or count limit, or is not PEM X.509 certificates.
    #[error("the issued certificate chain is invalid: {0}")]
    Chain(String),
    /// The trust bundle is over the size or count limit, or is not PEM X.509 certificates.
    #[error("the issued trust bundle is invalid: {0}")]
    Bundle(String),
    /// The certificate names another public key than the one this node generated.
    #[error(
        "the issued certificate is for another public key than the one in this node's request"
    )]
    KeyMismatch,
    /// The certificate's validity has ended or is empty.
    #[error("the issued certificate is valid from {not_before} to {not_after}, which does not include a time after now ({now})")]
    Expired {
        /// Start of its validity.
        not_before: UnixMillis,
        /// End of its validity.
        not_after: UnixMillis,
        /// This node's time.
        now: UnixMillis,
    },
    /// The trust bundle is older than the one installed.
    #[error("the reply carries trust bundle version {offered}, below the installed version {held}; a bundle is never rolled back")]
    BundleRollback {
        /// Version in the reply.
        offered: u64,
        /// Version installed.
        held: u64,
    },
    /// No CA of the trust bundle signed the node certificate.
    #[error("the issued certificate is not signed by any CA in the trust bundle")]
    UnknownIssuer,
    /// The node certificate may act as a CA.
    #[error("the issued certificate is a CA certificate or may sign certificates; a node needs a leaf certificate")]
    CaCertificate,
    /// The certificate's validity starts further ahead than the allowed clock difference.
    #[error("the issued certificate is valid only from {not_before}, more than {} s after now ({now}); check this node's clock", NOT_BEFORE_ALLOWANCE.as_secs())]
    NotYetValid {
        /// Start of its validity.
        not_before: UnixMillis,
        /// This node's time.
        now: UnixMillis,
    },
    /// A reply arrived while no request was outstanding.
    #[error("a certificate reply arrived while no request was outstanding")]
    Unexpected,
}

/// The step the core is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing; the next attempt waits for its time.
    Idle,
    /// A request is outstanding.
    Requesting,
    /// A validated certificate is being installed.
    Installing(CertificateRecord),
}

/// The certificate lifecycle of one node.
#[derive(Debug, Clone)]
pub struct CertificateCore {
    installed: Option<CertificateRecord>,
    bundle_version: u64,
    failures: u32,
    retry_at: Option<UnixMillis>,
    phase: Phase,
}

impl CertificateCore {
    /// Starts from the persisted record. `files_intact` is whether the files on disk contain
    /// the certificate that the record describes and a key that matches it. Without them the
    /// node requests a certificate at once but keeps the record's bundle version as its floor.
    pub fn start(
        record: Option<CertificateRecord>,
        files_intact: bool,
        now: UnixMillis,
    ) -> (Self, Vec<CertificateEffect>) {
        let mut core = Self {
            installed: record.filter(|_| files_intact),
            bundle_version: record.map_or(0, |record| record.bundle_version),
            failures: 0,
            retry_at: None,
            phase: Phase::Idle,
        };
        let mut effects: Vec<CertificateEffect> = core
            .status()
            .map(CertificateEffect::Status)
            .into_iter()
            .collect();
        effects.extend(core.tick(now));
        (core, effects)
    }

    /// Returns the certificate in use, if any.
    pub fn installed(&self) -> Option<&CertificateRecord> {
        self.installed.as_ref()
    }

    /// Status for heartbeats, once a certificate is installed.
    pub fn status(&self) -> Option<CertificateStatus> {
        self.installed.map(|record| CertificateStatus {
            not_after: record.not_after,
            bundle_version: record.bundle_version,
            refresh_failures: self.failures,
        })
    }

    /// Requests a certificate if one is due, or returns when to look again.
    pub fn tick(&mut self, now: UnixMillis) -> Vec<CertificateEffect> {
        if self.phase != Phase::Idle {
            return Vec::new();
        }
        let due = match (self.retry_at, self.installed) {
            (Some(retry_at), _) => retry_at,
            (None, Some(record)) => record.renew_at,
            (None, None) => now,
        };
        if now < due {
            return vec![CertificateEffect::WakeAt(due)];
        }
        self.phase = Phase::Requesting;
        vec![CertificateEffect::Request]
    }

    /// Requests a certificate now, unless an attempt is under way already. The outcome of
    /// that attempt then completes the forced renewal too.
    pub fn force(&mut self) -> Vec<CertificateEffect> {
        if self.phase != Phase::Idle {
            return Vec::new();
        }
        self.phase = Phase::Requesting;
        vec![CertificateEffect::Request]
    }

    /// Checks an issued reply for the key in the outstanding request (its DER
    /// SubjectPublicKeyInfo) and, if it is valid, returns the installation. `unit` in
    /// `[0, 1)` picks the renewal point of the new certificate, or jitters the retry.
    pub fn on_issued(
        &mut self,
        issued: Issued,
        requested_key: &[u8],
        now: UnixMillis,
        unit: f64,
    ) -> Vec<CertificateEffect> {
        if self.phase != Phase::Requesting {
            let reason = ReplyError::Unexpected.to_string();
            tracing::warn!(reason = %reason, "ignoring a certificate reply");
            return Vec::new();
        }
        let validity = match validate_reply(&issued, requested_key, self.bundle_version, now) {
            Ok(validity) => validity,
            Err(error) => return self.on_failed(&error.to_string(), now, unit),
        };
        // The renewal point is measured from now on the node's own clock, so a node whose clock
        // runs behind the control plane's still renews at 50 to 70 % of the lifetime. The share
        // is of the remaining validity when that is shorter, as it is by the backdated start
        // and on a node whose clock runs ahead.
        let lifetime = validity
            .not_after
            .since(validity.not_before)
            .min(validity.not_after.since(now));
        let record = CertificateRecord {
            not_before: validity.not_before,
            not_after: validity.not_after,
            bundle_version: issued.bundle_version,
            renew_at: renewal_time(now, now.saturating_add(lifetime), unit),
        };
        self.phase = Phase::Installing(record);
        vec![CertificateEffect::Install(Box::new(Installation {
            record,
            chain_pem: issued.chain_pem,
            bundle_pem: issued.bundle_pem,
        }))]
    }

    /// Makes the certificate being installed the one in use.
    pub fn on_installed(&mut self) -> Vec<CertificateEffect> {
        let Phase::Installing(record) = self.phase else {
            debug_assert!(false, "an installation finished but none was under way");
            return Vec::new();
        };
        self.installed = Some(record);
        self.bundle_version = self.bundle_version.max(record.bundle_version);
        self.failures = 0;
        self.retry_at = None;
        self.phase = Phase::Idle;
        let mut effects = vec![CertificateEffect::Installed(record)];
        effects.extend(self.status().map(CertificateEffect::Status));
        effects.push(CertificateEffect::WakeAt(record.renew_at));
        effects
    }

    /// Counts a failed request or installation and schedules the retry; the certificate in
    /// use, if any, stays in use.
    pub fn on_failed(
        &mut self,
        reason: &str,
        now: UnixMillis,
        unit: f64,
    ) -> Vec<CertificateEffect> {
        self.phase = Phase::Idle;
        self.failures = self.failures.saturating_add(1);
        let lifetime = self.installed.map(|record| record.lifetime());
        let retry_at = now.saturating_add(retry_delay(self.failures, lifetime, unit));
        self.retry_at = Some(retry_at);
        let mut effects = vec![CertificateEffect::Failed {
            reason: reason.to_owned(),
            failures: self.failures,
            retry_at,
        }];
        effects.extend(self.status().map(CertificateEffect::Status));
        effects.push(CertificateEffect::WakeAt(retry_at));
        effects
    }
}

/// Delay before retry number `failures` (counting from 1): [`RETRY_BASE`] doubled per earlier
/// failure, capped at [`RETRY_MAX`] and at a tenth of `lifetime` but never below
/// [`RETRY_MIN`], then scaled by a factor between 0.5 and 1 from `unit` in `[0, 1)`.
pub fn retry_delay(failures: u32, lifetime: Option<Duration>, unit: f64) -> Duration {
    let cap = lifetime
        .map_or(RETRY_MAX, |lifetime| RETRY_MAX.min(lifetime / 10))
        .max(RETRY_MIN);
    let doublings = failures.saturating_sub(1).min(16);
    let delay = RETRY_BASE.saturating_mul(1 << doublings).min(cap);
    delay
        .mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
        .max(RETRY_MIN)
}

/// Validity of a certificate, from the certificate itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Start of the validity.
    pub not_before: UnixMillis,
    /// End of the validity.
    pub not_after: UnixMillis,
}

/// Checks an issued reply. The chain and the bundle must be PEM X.509 certificates within the
/// limits. The node certificate (the first of the chain) must be for `requested_key` (DER
/// SubjectPublicKeyInfo), valid after `now`, and signed by a certificate of its chain or the
/// bundle. The bundle version must not be below `held_bundle_version`.
///
/// The validity comes from the certificate, not from the reply's `not_before` and
/// `not_after` fields, so the two cannot disagree about when it expires.
pub fn validate_reply(
    issued: &Issued,
    requested_key: &[u8],
    held_bundle_version: u64,
    now: UnixMillis,
) -> Result<Validity, ReplyError> {
    let chain = parse_pem_certificates(&issued.chain_pem).map_err(ReplyError::Chain)?;
    let bundle = parse_pem_certificates(&issued.bundle_pem).map_err(ReplyError::Bundle)?;
    let Some((leaf_der, issuers_der)) = chain.split_first() else {
        return Err(ReplyError::Chain("it contains no certificate".to_owned()));
    };
    let leaf = parse_der(leaf_der).map_err(ReplyError::Chain)?;

    if leaf.public_key().raw != requested_key {
        return Err(ReplyError::KeyMismatch);
    }
    let is_ca = leaf
        .basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|bc| bc.value.ca)
        || leaf
            .key_usage()
            .ok()
            .flatten()
            .is_some_and(|usage| usage.value.key_cert_sign());
    if is_ca {
        return Err(ReplyError::CaCertificate);
    }
    let validity = validity_of(&leaf);
    if validity.not_before > now.saturating_add(NOT_BEFORE_ALLOWANCE) {
        return Err(ReplyError::NotYetValid {
            not_before: validity.not_before,
            now,
        });
    }
    if validity.not_after <= now || validity.not_before >= validity.not_after {
        return Err(ReplyError::Expired {
            not_before: validity.not_before,
            not_after: validity.not_after,
            now,
        });
    }
    if issued.bundle_version < held_bundle_version {
        return Err(ReplyError::BundleRollback {
            offered: issued.bundle_version,
            held: held_bundle_version,
        });
    }

    // The chain's own CA certificates must parse too, and a CA of the bundle must have signed
    // the node certificate: the bundle is what the node's peers trust.
    for der in issuers_der {
        parse_der(der).map_err(ReplyError::Chain)?;
    }
    let mut signed = false;
    for der in &bundle {
        let candidate = parse_der(der).map_err(ReplyError::Bundle)?;
        if leaf.verify_signature(Some(candidate.public_key())).is_ok() {
            signed = true;
        }
    }
    if !signed {
        return Err(ReplyError::UnknownIssuer);
    }
    Ok(validity)
}

/// Checks that `chain_pem` (the contents of an installed `node.crt`) is the certificate that
/// `record` describes and that its key is `key_spki` (DER SubjectPublicKeyInfo of the stored
/// private key).
pub fn installed_matches(record: &CertificateRecord, chain_pem: &str, key_spki: &[u8]) -> bool {
    let Ok(chain) = parse_pem_certificates(chain_pem) else {
        return false;
    };
    let Some(Ok(leaf)) = chain.first().map(|der| parse_der(der)) else {
        return false;
    };
    let validity = validity_of(&leaf);
    leaf.public_key().raw == key_spki
        && validity.not_before == record.not_before
        && validity.not_after == record.not_after
}

/// Splits PEM text into the DER of its certificates, within the size and count limits.
pub fn parse_pem_certificates(pem: &str) -> Result<Vec<Vec<u8>>, String> {
    if pem.len() > CERTIFICATE_PEM_BYTES_MAX {
        return Err(format!(
            "it has {} bytes; the maximum is {CERTIFICATE_PEM_BYTES_MAX}",
            pem.len()
        ));
    }
    let mut certificates = Vec::new();
    for block in Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|error| format!("it is not valid PEM: {error}"))?;
        if block.label != "CERTIFICATE" {
            return Err(format!(
                "it contains a {} block where only CERTIFICATE blocks belong",
                block.label
            ));
        }
        if certificates.len() == CERTIFICATES_MAX {
            return Err(format!(
                "it contains more than {CERTIFICATES_MAX} certificates"
            ));
        }
        parse_der(&block.contents)?;
        certificates.push(block.contents);
    }
    if certificates.is_empty() {
        return Err("it contains no certificate".to_owned());
    }
    Ok(certificates)
}

fn parse_der(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    match x509_parser::parse_x509_certificate(der) {
        Ok((rest, _)) if !rest.is_empty() => {
            Err(format!("a certificate has {} trailing bytes", rest.len()))
        }
        Ok((_, certificate)) => Ok(certificate),
        Err(error) => Err(format!("a certificate does not parse as X.509: {error}")),
    }
}

fn validity_of(certificate: &X509Certificate<'_>) -> Validity {
    let millis = |time: &x509_parser::time::ASN1Time| {
        // Times before 1970 count as the epoch; X.509 times carry whole seconds.
        let seconds = u64::try_from(time.timestamp()).unwrap_or(0);
        UnixMillis(seconds.saturating_mul(1000))
    };
    Validity {
        not_before: millis(&certificate.validity().not_before),
        not_after: millis(&certificate.validity().not_after),
    }
}

#[cfg(test)]
mod tests;
