//! Checking an upgrade task's release before anything is downloaded.
//!
//! [`check_upgrade`] decides whether the Warden may fetch the artifact an `upgrade_component`
//! task names. It passes only if a release key of the trust document signed the manifest, the
//! manifest and the task agree on component, version, digest and counter (two signers must
//! agree), the manifest is for this node's target triple, and the counter is not below the
//! installed one unless a root-signed rollback permit covers this node, component and counter.
//! The downloaded bytes are checked against the returned [`VerifiedRelease`] afterwards.

use std::time::Duration;

use warden_bus::messages::{RejectCode, Upgrade};
use warden_bus::release::ReleaseManifest;
use warden_bus::trust::TrustDocument;
use warden_bus::UnixMillis;

use super::verify::Identity;

/// Target triple of this build, which a manifest must name.
pub const BUILD_TARGET: &str = build_target();

const fn build_target() -> &'static str {
    if cfg!(all(
        target_arch = "x86_64",
        target_os = "linux",
        target_env = "gnu"
    )) {
        "x86_64-unknown-linux-gnu"
    } else if cfg!(all(
        target_arch = "x86_64",
        target_os = "linux",
        target_env = "musl"
    )) {
        "x86_64-unknown-linux-musl"
    } else if cfg!(all(
        target_arch = "aarch64",
        target_os = "linux",
        target_env = "gnu"
    )) {
        "aarch64-unknown-linux-gnu"
    } else if cfg!(all(
        target_arch = "aarch64",
        target_os = "linux",
        target_env = "musl"
    )) {
        "aarch64-unknown-linux-musl"
    } else {
        // NOTE: other platforms get a name no manifest uses, so they accept no release.
        "unsupported"
    }
}

/// Inputs besides the task that a node needs to judge an upgrade.
#[derive(Debug, Clone, Copy)]
pub struct ReleaseContext<'a> {
    /// The node's current trust document.
    pub trust: &'a TrustDocument,
    /// The node's identity, which a rollback permit must cover.
    pub identity: &'a Identity,
    /// The node's clock.
    pub now: UnixMillis,
    /// Tolerated clock difference for key windows and permit expiry.
    pub skew: Duration,
    /// The node's target triple, [`BUILD_TARGET`] outside tests.
    pub target: &'a str,
    /// Release counter of the installed version of the task's component, 0 if none.
    pub installed_counter: u64,
}

/// A release whose manifest verified and matches the task. Only [`check_upgrade`] builds it,
/// so the downloader can only be given a checked manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedRelease {
    manifest: ReleaseManifest,
    rollback: bool,
}

impl VerifiedRelease {
    /// The verified manifest: the size and SHA-256 the downloaded bytes must have.
    pub fn manifest(&self) -> &ReleaseManifest {
        &self.manifest
    }

    /// Returns whether the release goes below the installed counter under a rollback permit.
    pub fn is_rollback(&self) -> bool {
        self.rollback
    }
}

/// Why an upgrade's release was rejected: the code to report and details for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct ReleaseRejection {
    /// The failed check.
    pub code: RejectCode,
    /// Description of the failed check.
    pub detail: String,
}

fn reject<T>(code: RejectCode, detail: String) -> Result<T, ReleaseRejection> {
    Err(ReleaseRejection { code, detail })
}

/// Checks an upgrade task's manifest, its agreement with the task, the target and the release
/// counter. Returns the verified release or the first failed check.
pub fn check_upgrade(
    upgrade: &Upgrade,
    context: &ReleaseContext<'_>,
) -> Result<VerifiedRelease, ReleaseRejection> {
    // A release key of the trust document must have signed the manifest.
    let manifest = match upgrade
        .manifest
        .verify(context.trust, context.now, context.skew)
    {
        Ok(manifest) => manifest,
        Err(error) => return reject(RejectCode::ManifestInvalid, error.to_string()),
    };

    // The task key and the release key must name the same artifact.
    let differences: Vec<String> = [
        (
            "component",
            format!("{:?}", upgrade.component),
            format!("{:?}", manifest.component),
        ),
        ("version", upgrade.version.clone(), manifest.version.clone()),
        (
            "sha256",
            hex::encode(&upgrade.sha256),
            hex::encode(&manifest.sha256),
        ),
        (
            "release_counter",
            upgrade.release_counter.to_string(),
            manifest.release_counter.to_string(),
        ),
    ]
    .into_iter()
    .filter(|(_, task, signed)| task != signed)
    .map(|(field, task, signed)| {
        format!("{field} is {task} in the task but {signed} in the manifest")
    })
    .collect();
    if !differences.is_empty() {
        return reject(RejectCode::ManifestMismatch, differences.join("; "));
    }

    if manifest.target != context.target {
        return reject(
            RejectCode::WrongTarget,
            format!(
                "manifest is for target {}; this node runs {}",
                manifest.target, context.target
            ),
        );
    }

    // Going below the installed counter needs the root key's permit for exactly this case.
    let rollback = manifest.release_counter < context.installed_counter;
    if rollback {
        check_permit(upgrade, &manifest, context)?;
    }
    Ok(VerifiedRelease { manifest, rollback })
}

fn check_permit(
    upgrade: &Upgrade,
    manifest: &ReleaseManifest,
    context: &ReleaseContext<'_>,
) -> Result<(), ReleaseRejection> {
    let Some(signed) = &upgrade.rollback_permit else {
        return reject(
            RejectCode::ReleaseRollback,
            format!(
                "release counter {} is below the installed {}; a rollback needs a permit signed by the root key",
                manifest.release_counter, context.installed_counter
            ),
        );
    };
    let permit = match signed.verify(context.trust, context.now, context.skew) {
        Ok(permit) => permit,
        Err(error) => return reject(RejectCode::RollbackPermitInvalid, error.to_string()),
    };
    let identity = context.identity;
    let node_covered = permit
        .node
        .as_ref()
        .is_none_or(|node| node == &identity.node);
    if permit.deployment != identity.deployment || !node_covered {
        return reject(
            RejectCode::RollbackPermitInvalid,
            format!(
                "rollback permit is for deployment {} node {}; this is {}/{}",
                permit.deployment,
                permit
                    .node
                    .as_ref()
                    .map_or_else(|| "(all)".to_owned(), ToString::to_string),
                identity.deployment,
                identity.node
            ),
        );
    }
    if permit.component != manifest.component {
        return reject(
            RejectCode::RollbackPermitInvalid,
            format!(
                "rollback permit is for component {:?}, the release is {:?}",
                permit.component, manifest.component
            ),
        );
    }
    if manifest.release_counter < permit.release_counter_min {
        return reject(
            RejectCode::RollbackPermitInvalid,
            format!(
                "rollback permit allows release counters down to {}, the release has {}",
                permit.release_counter_min, manifest.release_counter
            ),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use warden_bus::messages::Component;
    use warden_bus::release::{RollbackPermit, SignedManifest, SignedRollbackPermit};
    use warden_bus::trust::KeyGrant;
    use warden_bus::{DeploymentId, NodeId, SigningKey};

    use super::*;

    const NOW: UnixMillis = UnixMillis(1_796_428_800_000);
    const SKEW: Duration = Duration::from_secs(300);
    const SKEW_MS: u64 = 300_000;
    const TARGET: &str = "x86_64-unknown-linux-gnu";

    fn key(seed: u64) -> SigningKey {
        SigningKey::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(seed))
    }

    fn root() -> SigningKey {
        key(1)
    }

    fn task_key() -> SigningKey {
        key(2)
    }

    fn release_key() -> SigningKey {
        key(3)
    }

    fn trust() -> TrustDocument {
        let grant = |key: &SigningKey| KeyGrant {
            public_key: key.public_key().as_bytes().to_vec(),
            not_before: UnixMillis(0),
            not_after: UnixMillis(u64::MAX / 2),
        };
        TrustDocument {
            version: 1,
            issued_at: UnixMillis(0),
            expires_at: UnixMillis(u64::MAX / 2),
            root_key: root().public_key().as_bytes().to_vec(),
            task_keys: vec![grant(&task_key())],
            release_keys: vec![grant(&release_key())],
        }
    }

    fn identity() -> Identity {
        Identity {
            deployment: DeploymentId::new("prod").unwrap(),
            node: NodeId::new("n1").unwrap(),
            approval_key: None,
        }
    }

    fn manifest(counter: u64) -> ReleaseManifest {
        ReleaseManifest {
            component: Component::Iggy,
            version: "0.8.1".into(),
            target: TARGET.into(),
            sha256: vec![7; 32],
            size: 4096,
            release_counter: counter,
            issued_at: NOW,
        }
    }

    fn upgrade(manifest: &ReleaseManifest, signer: &SigningKey) -> Upgrade {
        Upgrade {
            component: manifest.component,
            version: manifest.version.clone(),
            sha256: manifest.sha256.clone(),
            release_counter: manifest.release_counter,
            manifest: Box::new(SignedManifest::sign(manifest, signer).unwrap()),
            rollback_permit: None,
        }
    }

    fn permit(min: u64) -> RollbackPermit {
        RollbackPermit {
            deployment: DeploymentId::new("prod").unwrap(),
            node: Some(NodeId::new("n1").unwrap()),
            component: Component::Iggy,
            release_counter_min: min,
            issued_at: NOW,
            expires_at: UnixMillis(NOW.0 + 3_600_000),
        }
    }

    fn check(upgrade: &Upgrade, installed: u64) -> Result<VerifiedRelease, ReleaseRejection> {
        let trust = trust();
        let identity = identity();
        check_upgrade(
            upgrade,
            &ReleaseContext {
                trust: &trust,
                identity: &identity,
                now: NOW,
                skew: SKEW,
                target: TARGET,
                installed_counter: installed,
            },
        )
    }

    fn code(result: Result<VerifiedRelease, ReleaseRejection>) -> RejectCode {
        result.unwrap_err().code
    }

    #[test]
    fn matching_release_passes() {
        let verified = check(&upgrade(&manifest(5), &release_key()), 4).unwrap();
        assert_eq!(verified.manifest(), &manifest(5));
        assert!(!verified.is_rollback());
        assert!(check(&upgrade(&manifest(5), &release_key()), 5).is_ok());
    }

    #[test]
    fn manifest_not_signed_by_release_key_rejected() {
        for signer in [task_key(), root(), key(9)] {
            let result = check(&upgrade(&manifest(5), &signer), 0);
            assert_eq!(code(result), RejectCode::ManifestInvalid);
        }
    }

    #[test]
    fn task_disagreeing_with_manifest_rejected() {
        let edits: [fn(&mut Upgrade); 4] = [
            |u| u.sha256 = vec![8; 32],
            |u| u.version = "0.8.2".into(),
            |u| u.component = Component::Connectors,
            |u| u.release_counter += 1,
        ];
        for edit in edits {
            let mut task = upgrade(&manifest(5), &release_key());
            edit(&mut task);
            let rejection = check(&task, 0).unwrap_err();
            assert_eq!(rejection.code, RejectCode::ManifestMismatch, "{rejection}");
        }
    }

    #[test]
    fn other_target_rejected() {
        let mut other = manifest(5);
        other.target = "aarch64-unknown-linux-gnu".into();
        assert_eq!(
            code(check(&upgrade(&other, &release_key()), 0)),
            RejectCode::WrongTarget
        );
    }

    #[test]
    fn lower_counter_without_permit_rejected() {
        assert_eq!(
            code(check(&upgrade(&manifest(3), &release_key()), 4)),
            RejectCode::ReleaseRollback
        );
    }

    #[test]
    fn lower_counter_with_root_permit_passes() {
        let mut task = upgrade(&manifest(3), &release_key());
        task.rollback_permit = Some(Box::new(
            SignedRollbackPermit::sign(&permit(3), &root()).unwrap(),
        ));
        let verified = check(&task, 4).unwrap();
        assert!(verified.is_rollback());
    }

    #[test]
    fn bad_permits_rejected() {
        let mut expired = permit(3);
        expired.issued_at = UnixMillis(NOW.0 - 7_200_000);
        expired.expires_at = UnixMillis(NOW.0 - SKEW_MS - 1);
        let mut other_node = permit(3);
        other_node.node = Some(NodeId::new("n2").unwrap());
        let mut other_deployment = permit(3);
        other_deployment.deployment = DeploymentId::new("staging").unwrap();
        let mut other_component = permit(3);
        other_component.component = Component::Connectors;
        let cases = [
            ("signed by task key", permit(3), task_key()),
            ("signed by release key", permit(3), release_key()),
            ("expired", expired, root()),
            ("other node", other_node, root()),
            ("other deployment", other_deployment, root()),
            ("other component", other_component, root()),
            ("counter below permit", permit(4), root()),
        ];
        for (case, permit, signer) in cases {
            let mut task = upgrade(&manifest(3), &release_key());
            task.rollback_permit = Some(Box::new(
                SignedRollbackPermit::sign(&permit, &signer).unwrap(),
            ));
            let rejection = check(&task, 5).unwrap_err();
            assert_eq!(
                rejection.code,
                RejectCode::RollbackPermitInvalid,
                "{case}: {rejection}"
            );
        }
    }

    #[test]
    fn permit_for_all_nodes_covers_this_node() {
        let mut all = permit(3);
        all.node = None;
        let mut task = upgrade(&manifest(3), &release_key());
        task.rollback_permit = Some(Box::new(SignedRollbackPermit::sign(&all, &root()).unwrap()));
        assert!(check(&task, 5).is_ok());
    }
}
