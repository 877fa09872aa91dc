//! Turning an operator's request into tasks: validation and the signed task body.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};
use warden_bus::messages::{
    AccessRule, AccessRules, ApplyConfig, Component, ComponentTarget, Reconfigure, UpdateTrust,
    Upgrade, CONFIG_BYTES_MAX,
};
use warden_bus::release::{SignedManifest, SignedRollbackPermit};
use warden_bus::trust::SignedDocument;
use warden_bus::{DeploymentId, KeyId, NodeId, Task, TaskAction, TaskId, UnixMillis};

/// Default time a task stays valid.
pub const TASK_TTL_DEFAULT: Duration = Duration::from_secs(15 * 60);
/// Shortest allowed validity.
pub const TASK_TTL_MIN: Duration = Duration::from_secs(1);
/// Longest allowed validity: a leaked signed task is useless after this.
pub const TASK_TTL_MAX: Duration = Duration::from_secs(3600);

/// What an operator asks for, as the API receives it. Binary values are hex (digests) or
/// base64 (sealed keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ActionRequest {
    /// Write the Iggy configuration.
    ApplyConfig {
        /// Document version; must be above the node's.
        version: u64,
        /// TOML text.
        content: String,
    },
    /// Start a component.
    StartComponent {
        /// iggy or connectors.
        component: Component,
    },
    /// Stop a component.
    StopComponent {
        /// iggy or connectors.
        component: Component,
    },
    /// Restart a component.
    RestartComponent {
        /// iggy or connectors.
        component: Component,
    },
    /// Restart a component with a configuration version, optionally setting an encryption key.
    ReconfigureComponent {
        /// iggy or connectors.
        component: Component,
        /// Configuration version.
        config_version: u64,
        /// Encryption key sealed to the node's key, base64.
        #[serde(default)]
        sealed_encryption_key: Option<String>,
    },
    /// Install a signed release.
    UpgradeComponent {
        /// iggy, connectors or warden.
        component: Component,
        /// Release version.
        version: String,
        /// SHA-256 of the artifact, hex.
        sha256: String,
        /// Release counter from the manifest.
        release_counter: u64,
        /// The signed manifest, base64 as `wardenctl release sign` writes it.
        manifest: String,
        /// A root-signed rollback permit, base64, if the task goes below the installed counter.
        #[serde(default)]
        rollback_permit: Option<String>,
    },
    /// Replace the access rules.
    ApplyAccessRules {
        /// Rule-set version.
        version: u64,
        /// The rules.
        rules: Vec<AccessRule>,
    },
    /// Renew the TLS certificate now.
    RotateCertificate {},
    /// Send the control plane's current trust document.
    UpdateTrust {},
    /// Report node facts.
    CollectDiagnostics {},
}

/// A request that failed validation, naming the field and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field {field} is invalid: {reason}")]
pub struct FieldError {
    /// The request field.
    pub field: &'static str,
    /// Description of the problem and its fix.
    pub reason: String,
}

impl ActionRequest {
    /// Validates the request and returns the action. `trust` is the current signed trust
    /// document, sent by `update_trust`.
    pub fn into_action(self, trust: &SignedDocument) -> Result<TaskAction, FieldError> {
        let action = match self {
            Self::CollectDiagnostics {} => TaskAction::CollectDiagnostics,
            Self::RotateCertificate {} => TaskAction::RotateCertificate,
            Self::UpdateTrust {} => TaskAction::UpdateTrust(UpdateTrust {
                document: trust.clone(),
            }),
            Self::StartComponent { component } => {
                TaskAction::StartComponent(ComponentTarget { component })
            }
            Self::StopComponent { component } => {
                TaskAction::StopComponent(ComponentTarget { component })
            }
            Self::RestartComponent { component } => {
                TaskAction::RestartComponent(ComponentTarget { component })
            }
            Self::ReconfigureComponent {
                component,
                config_version,
                sealed_encryption_key,
            } => {
                let sealed_encryption_key = sealed_encryption_key
                    .map(|text| base64::engine::general_purpose::STANDARD.decode(text.trim()))
                    .transpose()
                    .map_err(|error| FieldError {
                        field: "sealed_encryption_key",
                        reason: format!("not base64: {error}"),
                    })?;
                TaskAction::ReconfigureComponent(Reconfigure {
                    component,
                    config_version,
                    sealed_encryption_key,
                })
            }
            Self::UpgradeComponent {
                component,
                version,
                sha256,
                release_counter,
                manifest,
                rollback_permit,
            } => {
                let sha256 = hex::decode(sha256.trim()).map_err(|error| FieldError {
                    field: "sha256",
                    reason: format!("not hex: {error}"),
                })?;
                let manifest = decode_base64("manifest", &manifest).and_then(|bytes| {
                    SignedManifest::decode(&bytes).map_err(|error| FieldError {
                        field: "manifest",
                        reason: error.to_string(),
                    })
                })?;
                check_manifest_agrees(&manifest, component, &version, &sha256, release_counter)?;
                let rollback_permit = rollback_permit
                    .map(|text| {
                        decode_base64("rollback_permit", &text).and_then(|bytes| {
                            SignedRollbackPermit::decode(&bytes).map_err(|error| FieldError {
                                field: "rollback_permit",
                                reason: error.to_string(),
                            })
                        })
                    })
                    .transpose()?;
                TaskAction::UpgradeComponent(Upgrade {
                    component,
                    version,
                    sha256,
                    release_counter,
                    manifest: Box::new(manifest),
                    rollback_permit: rollback_permit.map(Box::new),
                })
            }
            Self::ApplyAccessRules { version, rules } => {
                TaskAction::ApplyAccessRules(AccessRules { version, rules })
            }
            Self::ApplyConfig { version, content } => {
                if version == 0 {
                    return Err(FieldError {
                        field: "version",
                        reason: "must be 1 or higher".into(),
                    });
                }
                if content.len() > CONFIG_BYTES_MAX {
                    return Err(FieldError {
                        field: "content",
                        reason: format!(
                            "{} bytes is over the maximum of {CONFIG_BYTES_MAX}",
                            content.len()
                        ),
                    });
                }
                if let Err(error) = content.parse::<toml::Table>() {
                    return Err(FieldError {
                        field: "content",
                        reason: format!("not valid TOML: {error}"),
                    });
                }
                TaskAction::ApplyConfig(ApplyConfig { version, content })
            }
        };
        action.validate().map_err(|reason| FieldError {
            field: "action",
            reason,
        })?;
        Ok(action)
    }
}

/// Checks that an upgrade request names what its manifest names, so the operator learns of a
/// mismatch now rather than from the node's `manifest_mismatch` rejection. The node still
/// verifies the signature and compares again; this check does not replace that.
fn check_manifest_agrees(
    manifest: &SignedManifest,
    component: Component,
    version: &str,
    sha256: &[u8],
    release_counter: u64,
) -> Result<(), FieldError> {
    let content = manifest.manifest_unverified().map_err(|error| FieldError {
        field: "manifest",
        reason: error.to_string(),
    })?;
    let mismatch = |field: &'static str, requested: String, signed: String| {
        Err(FieldError {
            field,
            reason: format!(
                "{requested} does not match the manifest's {signed}; give the values that `wardenctl release show` prints for the manifest"
            ),
        })
    };
    if content.component != component {
        return mismatch(
            "component",
            format!("{component:?}"),
            format!("{:?}", content.component),
        );
    }
    if content.version != version {
        return mismatch("version", version.to_owned(), content.version);
    }
    if content.sha256 != sha256 {
        return mismatch("sha256", hex::encode(sha256), hex::encode(&content.sha256));
    }
    if content.release_counter != release_counter {
        return mismatch(
            "release_counter",
            release_counter.to_string(),
            content.release_counter.to_string(),
        );
    }
    Ok(())
}

fn decode_base64(field: &'static str, text: &str) -> Result<Vec<u8>, FieldError> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|error| FieldError {
            field,
            reason: format!("not base64: {error}"),
        })
}

/// Validates a requested validity period.
pub fn validate_ttl(ttl: Option<u64>) -> Result<Duration, FieldError> {
    let Some(seconds) = ttl else {
        return Ok(TASK_TTL_DEFAULT);
    };
    let ttl = Duration::from_secs(seconds);
    if !(TASK_TTL_MIN..=TASK_TTL_MAX).contains(&ttl) {
        return Err(FieldError {
            field: "ttl_secs",
            reason: format!(
                "{seconds} is outside {} to {} seconds",
                TASK_TTL_MIN.as_secs(),
                TASK_TTL_MAX.as_secs()
            ),
        });
    }
    Ok(ttl)
}

/// Builds the task body for one node, to be signed by the key `key_id`.
pub fn build_task(
    id_bytes: [u8; 16],
    deployment: &DeploymentId,
    node: &NodeId,
    action: &TaskAction,
    now: UnixMillis,
    ttl: Duration,
    key_id: &KeyId,
) -> Result<Task, warden_bus::WireError> {
    Ok(Task {
        key_id: key_id.clone(),
        id: TaskId::from_random(id_bytes),
        deployment: deployment.clone(),
        node: node.clone(),
        issued_at: now,
        not_before: now,
        expires_at: now.saturating_add(ttl),
        kind: action.kind().to_owned(),
        params: action.encode_params()?,
    })
}

/// Short facts about an action for listings.
pub fn summarize(action: &TaskAction) -> BTreeMap<String, String> {
    match action {
        TaskAction::ApplyConfig(config) => BTreeMap::from([
            ("config_version".to_owned(), config.version.to_string()),
            ("content_bytes".to_owned(), config.content.len().to_string()),
        ]),
        TaskAction::ReconfigureComponent(reconfigure) => BTreeMap::from([
            (
                "component".to_owned(),
                format!("{:?}", reconfigure.component).to_lowercase(),
            ),
            (
                "config_version".to_owned(),
                reconfigure.config_version.to_string(),
            ),
        ]),
        TaskAction::UpgradeComponent(upgrade) => BTreeMap::from([
            (
                "component".to_owned(),
                format!("{:?}", upgrade.component).to_lowercase(),
            ),
            ("version".to_owned(), upgrade.version.clone()),
        ]),
        TaskAction::StartComponent(target)
        | TaskAction::StopComponent(target)
        | TaskAction::RestartComponent(target) => BTreeMap::from([(
            "component".to_owned(),
            format!("{:?}", target.component).to_lowercase(),
        )]),
        TaskAction::ApplyAccessRules(rules) => BTreeMap::from([
            ("rules_version".to_owned(), rules.version.to_string()),
            ("rules".to_owned(), rules.rules.len().to_string()),
        ]),
        TaskAction::UpdateTrust(update) => BTreeMap::from([(
            "trust_version".to_owned(),
            update
                .document
                .document_unverified()
                .map(|doc| doc.version.to_string())
                .unwrap_or_default(),
        )]),
        TaskAction::RotateCertificate | TaskAction::CollectDiagnostics => BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_must_match_its_manifest() {
        use warden_bus::release::ReleaseManifest;
        let trust = SignedDocument {
            body: Vec::new(),
            signatures: Vec::new(),
        };
        let key = warden_bus::SigningKey::from_seed([3; 32]);
        let manifest = ReleaseManifest {
            component: Component::Iggy,
            version: "0.8.1".into(),
            target: "x86_64-unknown-linux-gnu".into(),
            sha256: vec![7; 32],
            size: 10,
            release_counter: 4,
            issued_at: UnixMillis(0),
        };
        let encoded = base64::engine::general_purpose::STANDARD.encode(
            SignedManifest::sign(&manifest, &key)
                .unwrap()
                .encode()
                .unwrap(),
        );
        let request = |component, version: &str, sha256: &str, release_counter| {
            ActionRequest::UpgradeComponent {
                component,
                version: version.into(),
                sha256: sha256.into(),
                release_counter,
                manifest: encoded.clone(),
                rollback_permit: None,
            }
        };
        let sha = hex::encode([7; 32]);
        let other_sha = hex::encode([8; 32]);
        assert!(request(Component::Iggy, "0.8.1", &sha, 4)
            .into_action(&trust)
            .is_ok());
        let cases = [
            (
                "component",
                request(Component::Connectors, "0.8.1", &sha, 4),
            ),
            ("version", request(Component::Iggy, "0.8.2", &sha, 4)),
            ("sha256", request(Component::Iggy, "0.8.1", &other_sha, 4)),
            (
                "release_counter",
                request(Component::Iggy, "0.8.1", &sha, 5),
            ),
        ];
        for (field, request) in cases {
            assert_eq!(request.into_action(&trust).unwrap_err().field, field);
        }
    }

    #[test]
    fn apply_config_checks_fields() {
        let trust = SignedDocument {
            body: Vec::new(),
            signatures: Vec::new(),
        };
        let zero = ActionRequest::ApplyConfig {
            version: 0,
            content: String::new(),
        };
        assert_eq!(zero.into_action(&trust).unwrap_err().field, "version");
        let broken = ActionRequest::ApplyConfig {
            version: 1,
            content: "[x".into(),
        };
        let error = broken.into_action(&trust).unwrap_err();
        assert_eq!(error.field, "content");
        assert!(error.reason.contains("TOML"), "{}", error.reason);
        let fine = ActionRequest::ApplyConfig {
            version: 1,
            content: "[system]\n".into(),
        };
        assert!(fine.into_action(&trust).is_ok());
        let warden = ActionRequest::StartComponent {
            component: Component::Warden,
        };
        assert_eq!(warden.into_action(&trust).unwrap_err().field, "action");
        let bad_cidr = ActionRequest::ApplyAccessRules {
            version: 1,
            rules: vec![AccessRule {
                cidr: "10.0.0.0/33".into(),
                protocol: warden_bus::messages::Protocol::Tcp,
                expires_at: None,
            }],
        };
        assert!(bad_cidr
            .into_action(&trust)
            .unwrap_err()
            .reason
            .contains("/33"));
    }

    #[test]
    fn unknown_fields_rejected_for_every_kind() {
        for body in [
            r#"{"kind":"collect_diagnostics","extra":1}"#,
            r#"{"kind":"update_trust","document":"x"}"#,
            r#"{"kind":"rotate_certificate","force":true}"#,
            r#"{"kind":"start_component","component":"iggy","extra":1}"#,
        ] {
            let error = serde_json::from_str::<ActionRequest>(body)
                .unwrap_err()
                .to_string();
            assert!(error.contains("unknown field"), "{body}: {error}");
        }
        assert!(serde_json::from_str::<ActionRequest>(r#"{"kind":"collect_diagnostics"}"#).is_ok());
    }

    #[test]
    fn ttl_bounds() {
        assert_eq!(validate_ttl(None).unwrap(), TASK_TTL_DEFAULT);
        assert_eq!(validate_ttl(Some(0)).unwrap_err().field, "ttl_secs");
        assert!(validate_ttl(Some(3601)).is_err());
        assert_eq!(validate_ttl(Some(60)).unwrap(), Duration::from_secs(60));
    }

    #[test]
    fn request_json_shape() {
        let request: ActionRequest =
            serde_json::from_str(r#"{"kind":"apply_config","version":3,"content":"a = 1"}"#)
                .unwrap();
        assert_eq!(
            request,
            ActionRequest::ApplyConfig {
                version: 3,
                content: "a = 1".into()
            }
        );
        assert!(
            serde_json::from_str::<ActionRequest>(r#"{"kind":"run_shell","command":"rm"}"#)
                .is_err()
        );
    }
}
