//! Turning an operator's request into tasks: validation and the signed task body.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use warden_bus::messages::{ApplyConfig, CONFIG_BYTES_MAX};
use warden_bus::{DeploymentId, NodeId, Task, TaskAction, TaskId, UnixMillis};

/// Default time a task stays valid.
pub const TASK_TTL_DEFAULT: Duration = Duration::from_secs(15 * 60);
/// Shortest allowed validity.
pub const TASK_TTL_MIN: Duration = Duration::from_secs(1);
/// Longest allowed validity: a leaked signed task is useless after this.
pub const TASK_TTL_MAX: Duration = Duration::from_secs(3600);

/// What an operator asks for, as the API receives it.
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
    /// Report node facts.
    CollectDiagnostics,
}

/// A request that failed validation, naming the field and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field {field} is invalid: {reason}")]
pub struct FieldError {
    /// The request field.
    pub field: &'static str,
    /// What is wrong and how to fix it.
    pub reason: String,
}

impl ActionRequest {
    /// Validates the request and returns the action.
    pub fn into_action(self) -> Result<TaskAction, FieldError> {
        match self {
            Self::CollectDiagnostics => Ok(TaskAction::CollectDiagnostics),
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
                let config = ApplyConfig { version, content };
                config.validate().map_err(|reason| FieldError {
                    field: "content",
                    reason,
                })?;
                Ok(TaskAction::ApplyConfig(config))
            }
        }
    }
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

/// Builds the task body for one node.
pub fn build_task(
    id_bytes: [u8; 16],
    deployment: &DeploymentId,
    node: &NodeId,
    action: &TaskAction,
    now: UnixMillis,
    ttl: Duration,
) -> Result<Task, warden_bus::WireError> {
    Ok(Task {
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
        TaskAction::CollectDiagnostics => BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_config_checks_fields() {
        let zero = ActionRequest::ApplyConfig {
            version: 0,
            content: String::new(),
        };
        assert_eq!(zero.into_action().unwrap_err().field, "version");
        let broken = ActionRequest::ApplyConfig {
            version: 1,
            content: "[x".into(),
        };
        let error = broken.into_action().unwrap_err();
        assert_eq!(error.field, "content");
        assert!(error.reason.contains("TOML"), "{}", error.reason);
        let fine = ActionRequest::ApplyConfig {
            version: 1,
            content: "[system]\n".into(),
        };
        assert!(fine.into_action().is_ok());
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
