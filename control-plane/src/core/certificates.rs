//! Decisions about node TLS certificates: which signing requests to sign, how often, how a
//! deployment's CA rotates, and which certificate alerts a node has.
//!
//! CA rotation moves through three phases. Every change raises the bundle version, which the
//! control plane hands out with each certificate and nodes report in their heartbeats:
//!
//! ```text
//!                begin                 advance                 advance
//! Stable{old} ─────────► Joining ──────────────► Signing ──────────────► Stable{new}
//!  (old signs,           (old signs,             (new signs,             (new signs,
//!   bundle: old)          bundle: old + new)      bundle: old + new)      bundle: new)
//!       ▲                  │   ▲                   │
//!       └──── roll back ───┘   └──── roll back ────┘
//! ```
//!
//! `advance` waits until every live node reports the current bundle version. Rolling back from
//! `Signing` is always allowed, because both CAs stay trusted. Rolling back from `Joining` drops
//! the new CA, so it waits like `advance`: a node with a certificate from the new CA must
//! first receive one from the old CA.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use warden_bus::messages::CertificateStatus;
use warden_bus::{NodeId, UnixMillis};

/// Default lifetime of a node certificate.
pub const LIFETIME_DEFAULT: Duration = Duration::from_secs(24 * 3600);

/// Default number of certificates one node may receive per rate window.
pub const RATE_MAX_DEFAULT: u32 = 10;

/// Default length of the rate window.
pub const RATE_WINDOW_DEFAULT: Duration = Duration::from_secs(3600);

/// Default remaining validity under which `certificate_expiring` is raised. It is a quarter of
/// the default lifetime, below the 30 % a node has left when it renews at the latest.
pub const EXPIRING_WITHIN_DEFAULT: Duration = Duration::from_secs(6 * 3600);

/// Default number of failed renewals in a row that raises `cert_refresh_failed`.
pub const REFRESH_FAILURES_DEFAULT: u32 = 3;

/// Largest number of names one node may register.
pub const TLS_NAMES_MAX: usize = 16;

/// Largest difference between a request's `sent_at` and the control plane's clock. It bounds
/// the replay of a captured request, and it is wider than the clock error nodes are expected to
/// have, because a node that cannot renew loses its certificate.
pub const REQUEST_AGE_MAX: Duration = Duration::from_secs(900);

/// Resolved alerts kept per node, newest last.
pub const ALERT_HISTORY_MAX: usize = 10;

/// Checks a name a node may have in its certificate: an IP address, or a DNS name of letters,
/// digits and hyphens in dot-separated labels. Wildcards are not allowed. Returns the name in
/// its canonical form (lower case DNS name, or the address as Rust prints it).
pub fn normalize_tls_name(name: &str) -> Result<String, String> {
    if let Ok(address) = name.parse::<IpAddr>() {
        return Ok(address.to_string());
    }
    if name.is_empty() || name.len() > 253 {
        return Err(format!(
            "{name:?} is not an IP address or a DNS name of 1 to 253 characters"
        ));
    }
    let lower = name.to_ascii_lowercase();
    // Some resolvers read names such as 010.0.0.1, 2130706433 or 0x7f.0.0.1 as addresses, so a
    // name whose last label is numeric, or a label that starts with 0x, is not a DNS name here.
    let last_numeric = lower
        .rsplit('.')
        .next()
        .is_some_and(|label| !label.is_empty() && label.bytes().all(|byte| byte.is_ascii_digit()));
    if last_numeric || lower.split('.').any(|label| label.starts_with("0x")) {
        return Err(format!(
            "{name:?} is neither a valid IP address nor a DNS name: a DNS name may not end in a numeric label or have a label starting with 0x"
        ));
    }
    for label in lower.split('.') {
        let valid = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !valid {
            return Err(format!(
                "{name:?} is not an IP address or a DNS name (labels of letters, digits and inner hyphens; no wildcards)"
            ));
        }
    }
    Ok(lower)
}

/// Checks the names registered for a node and returns them normalized, without duplicates.
pub fn normalize_tls_names(names: &[String]) -> Result<Vec<String>, String> {
    if names.len() > TLS_NAMES_MAX {
        return Err(format!(
            "{} names given; the maximum is {TLS_NAMES_MAX}",
            names.len()
        ));
    }
    let mut normalized = Vec::with_capacity(names.len());
    for name in names {
        let name = normalize_tls_name(name)?;
        if !normalized.contains(&name) {
            normalized.push(name);
        }
    }
    Ok(normalized)
}

/// Kind of the key in a signing request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    /// ECDSA on P-256 with SHA-256.
    EcdsaP256,
    /// Ed25519.
    Ed25519,
    /// Anything else, named for the refusal.
    Other(String),
}

/// Facts from a signing request whose own signature is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsrFacts {
    /// Common name of the subject, if any.
    pub common_name: Option<String>,
    /// Subject alternative names: DNS names and IP addresses, as text.
    pub names: Vec<String>,
    /// The key.
    pub key: KeyKind,
    /// Whether the request is for a CA certificate.
    pub wants_ca: bool,
}

/// Rejection of a signing request, with a stable code and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Stable code, such as `name_not_registered`.
    pub code: &'static str,
    /// Explanation for the node's log.
    pub reason: String,
}

impl Refusal {
    /// Creates a rejection with `code` and `reason`.
    pub fn new(code: &'static str, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }
}

/// Decides whether a node's signing request may be signed. `registered` contains the node's
/// normalized names. Returns the names the certificate will carry.
pub fn check_request(
    facts: &CsrFacts,
    node: &NodeId,
    registered: &[String],
) -> Result<Vec<String>, Refusal> {
    if facts.common_name.as_deref() != Some(node.as_str()) {
        return Err(Refusal::new(
            "common_name_mismatch",
            format!(
                "the request's common name is {:?}; it must be the node id {node:?}",
                facts.common_name.as_deref().unwrap_or("")
            ),
        ));
    }
    if let KeyKind::Other(name) = &facts.key {
        return Err(Refusal::new(
            "key_type_not_allowed",
            format!("key type {name} is not allowed; use ECDSA P-256 or Ed25519"),
        ));
    }
    if facts.wants_ca {
        return Err(Refusal::new(
            "ca_requested",
            "the request asks for a CA certificate; nodes receive leaf certificates only",
        ));
    }
    let mut names = Vec::with_capacity(facts.names.len());
    let mut foreign = Vec::new();
    for name in &facts.names {
        match normalize_tls_name(name) {
            Ok(name) if registered.contains(&name) => {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            _ => foreign.push(name.clone()),
        }
    }
    if !foreign.is_empty() {
        return Err(Refusal::new(
            "name_not_registered",
            format!(
                "names {foreign:?} are not registered for node {node}; registered: {registered:?}"
            ),
        ));
    }
    Ok(names)
}

/// Checks a request's send time against `now`, so a captured request cannot be replayed later.
pub fn check_request_age(sent_at: UnixMillis, now: UnixMillis) -> Result<(), Refusal> {
    let age = if sent_at > now {
        sent_at.since(now)
    } else {
        now.since(sent_at)
    };
    if age > REQUEST_AGE_MAX {
        return Err(Refusal::new(
            "stale_request",
            format!(
                "the request was sent at {sent_at}, {} s away from the control plane's clock; check the node's clock",
                age.as_secs()
            ),
        ));
    }
    Ok(())
}

/// How many certificates a node may receive in a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Certificates per window.
    pub max: u32,
    /// Length of the window.
    pub window: Duration,
}

/// Admits one issuance at `now` if fewer than `limit.max` happened in the window before it,
/// and records it in `issued`, which keeps only the times inside the window.
pub fn admit_issue(
    issued: &mut Vec<UnixMillis>,
    now: UnixMillis,
    limit: RateLimit,
) -> Result<(), Refusal> {
    issued.retain(|at| *at <= now && now.since(*at) < limit.window);
    if issued.len() >= limit.max as usize {
        let oldest = issued.iter().min().copied().unwrap_or(now);
        let wait = limit.window.saturating_sub(now.since(oldest));
        return Err(Refusal::new(
            "rate_limited",
            format!(
                "{} certificates issued to this node in the last {} s; the limit is {}; retry in {} s",
                issued.len(),
                limit.window.as_secs(),
                limit.max,
                wait.as_secs().max(1)
            ),
        ));
    }
    issued.push(now);
    Ok(())
}

/// A deployment CA's place in a rotation, naming CAs by generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub enum RotationPhase {
    /// One CA signs and is the only one trusted.
    Stable {
        /// The CA.
        active: u32,
    },
    /// The new CA joined the bundles; the old one still signs.
    Joining {
        /// The CA being replaced.
        old: u32,
        /// The CA replacing it.
        new: u32,
    },
    /// The new CA signs; both are trusted.
    Signing {
        /// The CA being replaced.
        old: u32,
        /// The CA replacing it.
        new: u32,
    },
}

impl RotationPhase {
    /// Returns the phase's name in the API.
    pub fn name(self) -> &'static str {
        match self {
            Self::Stable { .. } => "stable",
            Self::Joining { .. } => "joining",
            Self::Signing { .. } => "signing",
        }
    }

    /// Returns the generation of the CA that signs in this phase.
    pub fn signer(self) -> u32 {
        match self {
            Self::Stable { active } => active,
            Self::Joining { old, .. } => old,
            Self::Signing { new, .. } => new,
        }
    }

    /// Returns the generations of the CAs in the trust bundle in this phase.
    pub fn trusted(self) -> Vec<u32> {
        match self {
            Self::Stable { active } => vec![active],
            Self::Joining { old, new } | Self::Signing { old, new } => vec![old, new],
        }
    }
}

/// A step an operator asks of a rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationStep {
    /// Start a rotation to a new CA of this generation.
    Begin {
        /// Generation of the new CA.
        new: u32,
    },
    /// Move to the next phase.
    Advance,
    /// Move to the previous phase.
    RollBack,
}

/// Error of a rotation step that cannot be taken now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RotationError {
    /// The step does not exist from this phase.
    #[error("cannot {step} in phase {phase}: {fix}")]
    NotInPhase {
        /// The step.
        step: &'static str,
        /// The current phase.
        phase: &'static str,
        /// The fix.
        fix: &'static str,
    },
    /// Live nodes do not hold the current bundle yet.
    #[error(
        "{} live nodes do not report bundle version {needed} yet: {}; wait for their heartbeats, or revoke nodes that are gone",
        waiting.len(),
        describe_waiting(waiting)
    )]
    Waiting {
        /// The bundle version they must report.
        needed: u64,
        /// The nodes and the version each reports.
        waiting: Vec<(NodeId, u64)>,
    },
}

fn describe_waiting(waiting: &[(NodeId, u64)]) -> String {
    let mut parts: Vec<String> = waiting
        .iter()
        .take(10)
        .map(|(node, version)| format!("{node} (at {version})"))
        .collect();
    if waiting.len() > 10 {
        parts.push(format!("and {} more", waiting.len() - 10));
    }
    parts.join(", ")
}

/// A deployment's rotation state: the phase and the bundle version that goes with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    /// The phase.
    pub phase: RotationPhase,
    /// Version of the trust bundle and signer; every phase change raises it.
    pub bundle_version: u64,
}

impl Rotation {
    /// Creates the state of a deployment with its first CA.
    pub fn first(active: u32) -> Self {
        Self {
            phase: RotationPhase::Stable { active },
            bundle_version: 1,
        }
    }

    /// Returns the nodes that block a step: live nodes that report a bundle version below the
    /// current one. `live` contains each live node with the bundle version of its last heartbeat (0 without a
    /// certificate).
    pub fn waiting(&self, live: &[(NodeId, u64)]) -> Vec<(NodeId, u64)> {
        live.iter()
            .filter(|(_, version)| *version < self.bundle_version)
            .cloned()
            .collect()
    }

    /// Takes `step` if the phase and the nodes allow it.
    pub fn step(&self, step: RotationStep, live: &[(NodeId, u64)]) -> Result<Self, RotationError> {
        let phase = self.phase;
        let not_in_phase = |step: &'static str, fix: &'static str| RotationError::NotInPhase {
            step,
            phase: phase.name(),
            fix,
        };
        let wait_for_nodes = || {
            let waiting = self.waiting(live);
            if waiting.is_empty() {
                Ok(())
            } else {
                Err(RotationError::Waiting {
                    needed: self.bundle_version,
                    waiting,
                })
            }
        };
        let next = match (phase, step) {
            (RotationPhase::Stable { active }, RotationStep::Begin { new }) => {
                if new == active {
                    return Err(not_in_phase(
                        "begin",
                        "the new CA needs a generation other than the active one",
                    ));
                }
                RotationPhase::Joining { old: active, new }
            }
            (_, RotationStep::Begin { .. }) => {
                return Err(not_in_phase(
                    "begin",
                    "finish or roll back the rotation in progress first",
                ))
            }
            (RotationPhase::Joining { old, new }, RotationStep::Advance) => {
                wait_for_nodes()?;
                RotationPhase::Signing { old, new }
            }
            (RotationPhase::Signing { new, .. }, RotationStep::Advance) => {
                wait_for_nodes()?;
                RotationPhase::Stable { active: new }
            }
            (RotationPhase::Stable { .. }, RotationStep::Advance) => {
                return Err(not_in_phase(
                    "advance",
                    "no rotation is in progress; begin one first",
                ))
            }
            (RotationPhase::Signing { old, new }, RotationStep::RollBack) => {
                RotationPhase::Joining { old, new }
            }
            (RotationPhase::Joining { old, .. }, RotationStep::RollBack) => {
                wait_for_nodes()?;
                RotationPhase::Stable { active: old }
            }
            (RotationPhase::Stable { .. }, RotationStep::RollBack) => {
                return Err(not_in_phase(
                    "roll back",
                    "the old CA already left the bundles; begin a new rotation instead",
                ))
            }
        };
        Ok(Self {
            phase: next,
            bundle_version: self.bundle_version + 1,
        })
    }
}

/// Kinds of certificate alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// The node's certificate expires within the threshold.
    CertificateExpiring,
    /// The node failed to renew its certificate several times in a row.
    CertRefreshFailed,
}

impl AlertKind {
    /// Returns the alert's name in the API and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CertificateExpiring => "certificate_expiring",
            Self::CertRefreshFailed => "cert_refresh_failed",
        }
    }
}

/// An alert on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// Alert kind.
    pub kind: AlertKind,
    /// When it was raised.
    pub raised_at: UnixMillis,
    /// When it was resolved; `None` while active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<UnixMillis>,
    /// Details at the time it was raised.
    pub detail: String,
}

/// Thresholds of the certificate alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertPolicy {
    /// Remaining validity under which `certificate_expiring` is raised.
    pub expiring_within: Duration,
    /// Failed renewals in a row that raise `cert_refresh_failed`.
    pub refresh_failures: u32,
}

/// Returns the alerts a node's certificate status calls for at `now`, with details.
pub fn wanted_alerts(
    status: Option<&CertificateStatus>,
    now: UnixMillis,
    policy: AlertPolicy,
) -> Vec<(AlertKind, String)> {
    let Some(status) = status else {
        return Vec::new();
    };
    let mut wanted = Vec::new();
    if status.not_after <= now.saturating_add(policy.expiring_within) {
        let detail = if status.not_after <= now {
            format!("the certificate expired at {}", status.not_after)
        } else {
            format!(
                "the certificate expires at {}, in {} s",
                status.not_after,
                status.not_after.since(now).as_secs()
            )
        };
        wanted.push((AlertKind::CertificateExpiring, detail));
    }
    if status.refresh_failures >= policy.refresh_failures {
        wanted.push((
            AlertKind::CertRefreshFailed,
            format!(
                "{} renewals failed in a row; see the Warden's log",
                status.refresh_failures
            ),
        ));
    }
    wanted
}

/// A change to a node's alerts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlertChange {
    /// A new alert.
    Raised(AlertKind, String),
    /// An alert that no longer applies.
    Resolved(AlertKind),
}

/// Makes `alerts` match `wanted`: raises missing alerts and resolves the ones no longer wanted,
/// keeping at most [`ALERT_HISTORY_MAX`] resolved alerts. Returns what changed.
pub fn reconcile_alerts(
    alerts: &mut Vec<Alert>,
    wanted: Vec<(AlertKind, String)>,
    now: UnixMillis,
) -> Vec<AlertChange> {
    let wanted_kinds: BTreeSet<AlertKind> = wanted.iter().map(|(kind, _)| *kind).collect();
    let mut changes = Vec::new();
    for alert in alerts.iter_mut() {
        if alert.resolved_at.is_none() && !wanted_kinds.contains(&alert.kind) {
            alert.resolved_at = Some(now);
            changes.push(AlertChange::Resolved(alert.kind));
        }
    }
    for (kind, detail) in wanted {
        let active = alerts
            .iter()
            .any(|alert| alert.kind == kind && alert.resolved_at.is_none());
        if !active {
            alerts.push(Alert {
                kind,
                raised_at: now,
                resolved_at: None,
                detail: detail.clone(),
            });
            changes.push(AlertChange::Raised(kind, detail));
        }
    }
    let resolved = alerts
        .iter()
        .filter(|alert| alert.resolved_at.is_some())
        .count();
    let mut excess = resolved.saturating_sub(ALERT_HISTORY_MAX);
    alerts.retain(|alert| {
        if excess > 0 && alert.resolved_at.is_some() {
            excess -= 1;
            return false;
        }
        true
    });
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> NodeId {
        NodeId::new(name).unwrap()
    }

    fn facts(common_name: &str, names: &[&str]) -> CsrFacts {
        CsrFacts {
            common_name: Some(common_name.to_owned()),
            names: names.iter().map(|name| (*name).to_owned()).collect(),
            key: KeyKind::EcdsaP256,
            wants_ca: false,
        }
    }

    fn registered() -> Vec<String> {
        normalize_tls_names(&["n1.example.com".into(), "10.0.0.1".into()]).unwrap()
    }

    #[test]
    fn names_normalize_and_reject_wildcards() {
        assert_eq!(
            normalize_tls_name("N1.Example.COM").unwrap(),
            "n1.example.com"
        );
        assert_eq!(normalize_tls_name("::1").unwrap(), "::1");
        for bad in [
            "*.example.com",
            "",
            "a..b",
            "-a.b",
            "a b",
            "a_b.c",
            "010.0.0.1",
            "1.2.3",
            "2130706433",
            "0x7f.0.0.1",
        ] {
            assert!(normalize_tls_name(bad).is_err(), "{bad:?} was accepted");
        }
        let many: Vec<String> = (0..=TLS_NAMES_MAX).map(|i| format!("n{i}.x")).collect();
        assert!(normalize_tls_names(&many).is_err());
    }

    #[test]
    fn registered_names_pass() {
        let names = check_request(
            &facts("n1", &["N1.example.com", "10.0.0.1"]),
            &node("n1"),
            &registered(),
        )
        .unwrap();
        assert_eq!(names, vec!["n1.example.com", "10.0.0.1"]);
    }

    #[test]
    fn foreign_name_refused() {
        let refusal = check_request(
            &facts("n1", &["n1.example.com", "bank.example.com"]),
            &node("n1"),
            &registered(),
        )
        .unwrap_err();
        assert_eq!(refusal.code, "name_not_registered");
        assert!(
            refusal.reason.contains("bank.example.com"),
            "{}",
            refusal.reason
        );
    }

    #[test]
    fn foreign_address_refused() {
        let refusal =
            check_request(&facts("n1", &["10.0.0.2"]), &node("n1"), &registered()).unwrap_err();
        assert_eq!(refusal.code, "name_not_registered");
    }

    #[test]
    fn other_common_name_refused() {
        let refusal = check_request(&facts("n2", &[]), &node("n1"), &registered()).unwrap_err();
        assert_eq!(refusal.code, "common_name_mismatch");
    }

    #[test]
    fn other_key_type_and_ca_refused() {
        let mut rsa = facts("n1", &[]);
        rsa.key = KeyKind::Other("RSA".into());
        assert_eq!(
            check_request(&rsa, &node("n1"), &registered())
                .unwrap_err()
                .code,
            "key_type_not_allowed"
        );
        let mut ca = facts("n1", &[]);
        ca.wants_ca = true;
        assert_eq!(
            check_request(&ca, &node("n1"), &registered())
                .unwrap_err()
                .code,
            "ca_requested"
        );
    }

    #[test]
    fn old_and_future_requests_refused() {
        let now = UnixMillis(10_000_000);
        assert!(check_request_age(UnixMillis(10_000_000 - 1000), now).is_ok());
        let old = now.saturating_sub(REQUEST_AGE_MAX + Duration::from_millis(1));
        assert_eq!(
            check_request_age(old, now).unwrap_err().code,
            "stale_request"
        );
        let future = now.saturating_add(REQUEST_AGE_MAX + Duration::from_millis(1));
        assert_eq!(
            check_request_age(future, now).unwrap_err().code,
            "stale_request"
        );
    }

    #[test]
    fn rate_limit_counts_within_window() {
        let limit = RateLimit {
            max: 2,
            window: Duration::from_secs(10),
        };
        let mut issued = Vec::new();
        assert!(admit_issue(&mut issued, UnixMillis(1_000), limit).is_ok());
        assert!(admit_issue(&mut issued, UnixMillis(2_000), limit).is_ok());
        let refusal = admit_issue(&mut issued, UnixMillis(3_000), limit).unwrap_err();
        assert_eq!(refusal.code, "rate_limited");
        assert_eq!(issued.len(), 2);
        assert!(admit_issue(&mut issued, UnixMillis(11_500), limit).is_ok());
        assert_eq!(issued, vec![UnixMillis(2_000), UnixMillis(11_500)]);
    }

    fn live(versions: &[(&str, u64)]) -> Vec<(NodeId, u64)> {
        versions
            .iter()
            .map(|(name, version)| (node(name), *version))
            .collect()
    }

    #[test]
    fn rotation_runs_to_the_end_when_nodes_follow() {
        let start = Rotation::first(1);
        assert_eq!(start.phase.trusted(), vec![1]);
        let joining = start.step(RotationStep::Begin { new: 2 }, &[]).unwrap();
        assert_eq!(joining.phase, RotationPhase::Joining { old: 1, new: 2 });
        assert_eq!((joining.phase.signer(), joining.bundle_version), (1, 2));
        assert_eq!(joining.phase.trusted(), vec![1, 2]);

        let behind = live(&[("a", 2), ("b", 1)]);
        match joining.step(RotationStep::Advance, &behind).unwrap_err() {
            RotationError::Waiting { needed, waiting } => {
                assert_eq!(needed, 2);
                assert_eq!(waiting, live(&[("b", 1)]));
            }
            other => panic!("unexpected {other:?}"),
        }
        let signing = joining
            .step(RotationStep::Advance, &live(&[("a", 2), ("b", 2)]))
            .unwrap();
        assert_eq!((signing.phase.signer(), signing.bundle_version), (2, 3));
        assert!(signing
            .step(RotationStep::Advance, &live(&[("a", 3), ("b", 2)]))
            .is_err());
        let done = signing
            .step(RotationStep::Advance, &live(&[("a", 3), ("b", 4)]))
            .unwrap();
        assert_eq!(done.phase, RotationPhase::Stable { active: 2 });
        assert_eq!(done.phase.trusted(), vec![2]);
        assert_eq!(done.bundle_version, 4);
        assert!(done.step(RotationStep::RollBack, &[]).is_err());
    }

    #[test]
    fn rollback_waits_only_from_joining() {
        let joining = Rotation::first(1)
            .step(RotationStep::Begin { new: 2 }, &[])
            .unwrap();
        let signing = joining.step(RotationStep::Advance, &[]).unwrap();
        let behind = live(&[("a", 2)]);
        let back = signing.step(RotationStep::RollBack, &behind).unwrap();
        assert_eq!(back.phase, RotationPhase::Joining { old: 1, new: 2 });
        assert_eq!(back.phase.signer(), 1);
        assert!(matches!(
            back.step(RotationStep::RollBack, &behind),
            Err(RotationError::Waiting { .. })
        ));
        let stable = back
            .step(RotationStep::RollBack, &live(&[("a", 4)]))
            .unwrap();
        assert_eq!(stable.phase, RotationPhase::Stable { active: 1 });
        assert_eq!(stable.bundle_version, 5);
    }

    #[test]
    fn begin_only_from_stable() {
        let joining = Rotation::first(1)
            .step(RotationStep::Begin { new: 2 }, &[])
            .unwrap();
        assert!(joining.step(RotationStep::Begin { new: 3 }, &[]).is_err());
        assert!(Rotation::first(1)
            .step(RotationStep::Begin { new: 1 }, &[])
            .is_err());
        assert!(Rotation::first(1).step(RotationStep::Advance, &[]).is_err());
    }

    fn status(not_after: u64, failures: u32) -> CertificateStatus {
        CertificateStatus {
            not_after: UnixMillis(not_after),
            bundle_version: 1,
            refresh_failures: failures,
        }
    }

    const POLICY: AlertPolicy = AlertPolicy {
        expiring_within: Duration::from_secs(60),
        refresh_failures: 3,
    };

    #[test]
    fn alerts_raise_and_resolve() {
        let now = UnixMillis(1_000_000);
        let mut alerts = Vec::new();
        assert!(wanted_alerts(None, now, POLICY).is_empty());

        let fresh = status(now.0 + 3_600_000, 0);
        assert!(
            reconcile_alerts(&mut alerts, wanted_alerts(Some(&fresh), now, POLICY), now).is_empty()
        );

        let failing = status(now.0 + 30_000, 3);
        let changes =
            reconcile_alerts(&mut alerts, wanted_alerts(Some(&failing), now, POLICY), now);
        let raised: Vec<AlertKind> = changes
            .iter()
            .filter_map(|change| match change {
                AlertChange::Raised(kind, _) => Some(*kind),
                AlertChange::Resolved(_) => None,
            })
            .collect();
        assert_eq!(
            raised,
            vec![AlertKind::CertificateExpiring, AlertKind::CertRefreshFailed]
        );
        // The same status again changes nothing.
        assert!(
            reconcile_alerts(&mut alerts, wanted_alerts(Some(&failing), now, POLICY), now)
                .is_empty()
        );

        let later = UnixMillis(now.0 + 5_000);
        let renewed = status(later.0 + 3_600_000, 0);
        let changes = reconcile_alerts(
            &mut alerts,
            wanted_alerts(Some(&renewed), later, POLICY),
            later,
        );
        assert_eq!(
            changes,
            vec![
                AlertChange::Resolved(AlertKind::CertificateExpiring),
                AlertChange::Resolved(AlertKind::CertRefreshFailed)
            ]
        );
        assert!(alerts.iter().all(|alert| alert.resolved_at == Some(later)));
    }

    #[test]
    fn expired_certificate_is_expiring() {
        let now = UnixMillis(1_000_000);
        let wanted = wanted_alerts(Some(&status(now.0 - 1, 0)), now, POLICY);
        assert_eq!(wanted.len(), 1);
        assert!(wanted[0].1.contains("expired"), "{}", wanted[0].1);
    }

    #[test]
    fn alert_history_is_bounded() {
        let mut alerts = Vec::new();
        for step in 0..(ALERT_HISTORY_MAX as u64 + 5) {
            let at = UnixMillis(step * 2);
            reconcile_alerts(
                &mut alerts,
                vec![(AlertKind::CertRefreshFailed, "x".into())],
                at,
            );
            reconcile_alerts(&mut alerts, Vec::new(), UnixMillis(step * 2 + 1));
        }
        assert_eq!(alerts.len(), ALERT_HISTORY_MAX);
    }
}
