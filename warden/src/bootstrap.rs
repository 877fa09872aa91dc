//! The bootstrap file: what a Warden needs to know before its first connection.
//!
//! `wardenctl node add` writes it. Example:
//!
//! ```toml
//! deployment = "prod"
//! node = "node-1"
//! nats_url = "nats://127.0.0.1:4222"
//! state_dir = "/var/lib/warden"
//!
//! [[trusted_task_keys]]
//! key_id = "3f09c2a1d4e5b6f7"
//! public_key = "<64 hex characters>"
//! ```
//!
//! Optional: `iggy_config_path` (default `<state_dir>/iggy/server.toml`),
//! `heartbeat_interval_secs` (default 10) and `clock_skew_secs` (default 300).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use warden_bus::{DeploymentId, Keyring, NodeId, PublicKey};

use crate::core::heartbeat::HEARTBEAT_INTERVAL_DEFAULT;
use crate::core::CLOCK_SKEW_DEFAULT;

/// Maximum size of a bootstrap file, in bytes.
pub const BOOTSTRAP_BYTES_MAX: u64 = 64 * 1024;

/// Bounds on the heartbeat interval, in seconds.
pub const HEARTBEAT_INTERVAL_SECS_RANGE: std::ops::RangeInclusive<u64> = 1..=3600;

/// Maximum clock skew tolerance, in seconds.
pub const CLOCK_SKEW_SECS_MAX: u64 = 3600;

/// A trusted task-signing key as written in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedKey {
    /// Key id; must match the public key.
    pub key_id: String,
    /// Ed25519 public key, 64 hex characters.
    pub public_key: String,
}

/// The bootstrap file as written on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapFile {
    /// Deployment id.
    pub deployment: String,
    /// Node id.
    pub node: String,
    /// NATS server URL.
    pub nats_url: String,
    /// Directory for the Warden's database and files.
    pub state_dir: PathBuf,
    /// Where to write the Iggy server configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iggy_config_path: Option<PathBuf>,
    /// Seconds between heartbeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_secs: Option<u64>,
    /// Tolerated clock difference, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_skew_secs: Option<u64>,
    /// Keys whose task signatures the Warden accepts. Last, because TOML writes tables after
    /// plain values.
    pub trusted_task_keys: Vec<TrustedKey>,
}

/// A validated bootstrap.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// Deployment id.
    pub deployment: DeploymentId,
    /// Node id.
    pub node: NodeId,
    /// NATS server URL.
    pub nats_url: String,
    /// State directory.
    pub state_dir: PathBuf,
    /// Trusted task keys.
    pub keyring: Keyring,
    /// Path of the Iggy configuration file.
    pub iggy_config_path: PathBuf,
    /// Time between heartbeats.
    pub heartbeat_interval: Duration,
    /// Tolerated clock difference.
    pub clock_skew: Duration,
}

/// Why a bootstrap file is not usable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BootstrapError {
    /// The file could not be read.
    #[error(
        "failed to read bootstrap file {path}: {source}; check the path given with --bootstrap"
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is over the size cap.
    #[error("bootstrap file {path} is {len} bytes, over the maximum of {BOOTSTRAP_BYTES_MAX}; is it the right file?")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("bootstrap file {path} is invalid: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// A field has an invalid value.
    #[error("bootstrap file {path}: field {field} is invalid: {reason}")]
    Field {
        /// The file.
        path: PathBuf,
        /// The field name.
        field: &'static str,
        /// What is wrong and how to fix it.
        reason: String,
    },
}

impl Bootstrap {
    /// Reads and validates a bootstrap file.
    pub fn load(path: &Path) -> Result<Self, BootstrapError> {
        let read_error = |source| BootstrapError::Read {
            path: path.to_path_buf(),
            source,
        };
        let len = std::fs::metadata(path).map_err(read_error)?.len();
        if len > BOOTSTRAP_BYTES_MAX {
            return Err(BootstrapError::TooLarge {
                path: path.to_path_buf(),
                len,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_error)?;
        let file: BootstrapFile = toml::from_str(&text).map_err(|error| BootstrapError::Parse {
            path: path.to_path_buf(),
            reason: error.to_string(),
        })?;
        Self::from_file(file, path)
    }

    /// Validates a parsed bootstrap file; `path` is only used in error messages.
    pub fn from_file(file: BootstrapFile, path: &Path) -> Result<Self, BootstrapError> {
        let field = |field: &'static str, reason: String| BootstrapError::Field {
            path: path.to_path_buf(),
            field,
            reason,
        };
        let deployment = DeploymentId::new(file.deployment)
            .map_err(|error| field("deployment", error.to_string()))?;
        let node = NodeId::new(file.node).map_err(|error| field("node", error.to_string()))?;
        if !(file.nats_url.starts_with("nats://") || file.nats_url.starts_with("tls://")) {
            return Err(field(
                "nats_url",
                format!("{:?} must start with nats:// or tls://", file.nats_url),
            ));
        }
        if !file.state_dir.is_absolute() {
            return Err(field(
                "state_dir",
                format!("{:?} must be an absolute path", file.state_dir),
            ));
        }
        if file.trusted_task_keys.is_empty() {
            return Err(field(
                "trusted_task_keys",
                "no key listed; add the control plane's task key from `wardenctl node add`".into(),
            ));
        }
        let mut keys = Vec::new();
        for entry in &file.trusted_task_keys {
            let key = PublicKey::from_hex(&entry.public_key)
                .map_err(|error| field("trusted_task_keys.public_key", error.to_string()))?;
            if key.id().as_str() != entry.key_id {
                return Err(field(
                    "trusted_task_keys.key_id",
                    format!(
                        "key_id {:?} does not match its public key, whose id is {}; copy both from the same source",
                        entry.key_id,
                        key.id()
                    ),
                ));
            }
            keys.push(key);
        }
        let heartbeat_interval = match file.heartbeat_interval_secs {
            None => HEARTBEAT_INTERVAL_DEFAULT,
            Some(secs) if HEARTBEAT_INTERVAL_SECS_RANGE.contains(&secs) => {
                Duration::from_secs(secs)
            }
            Some(secs) => {
                return Err(field(
                    "heartbeat_interval_secs",
                    format!("{secs} is outside {HEARTBEAT_INTERVAL_SECS_RANGE:?}"),
                ))
            }
        };
        let clock_skew = match file.clock_skew_secs {
            None => CLOCK_SKEW_DEFAULT,
            Some(secs) if secs <= CLOCK_SKEW_SECS_MAX => Duration::from_secs(secs),
            Some(secs) => {
                return Err(field(
                    "clock_skew_secs",
                    format!("{secs} is over the maximum of {CLOCK_SKEW_SECS_MAX}"),
                ))
            }
        };
        let iggy_config_path = file
            .iggy_config_path
            .unwrap_or_else(|| file.state_dir.join("iggy").join("server.toml"));
        Ok(Self {
            deployment,
            node,
            nats_url: file.nats_url,
            state_dir: file.state_dir,
            keyring: Keyring::new(keys),
            iggy_config_path,
            heartbeat_interval,
            clock_skew,
        })
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use warden_bus::SigningKey;

    use super::*;

    fn valid() -> BootstrapFile {
        let key =
            SigningKey::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(1)).public_key();
        BootstrapFile {
            deployment: "prod".into(),
            node: "node-1".into(),
            nats_url: "nats://127.0.0.1:4222".into(),
            state_dir: "/var/lib/warden".into(),
            trusted_task_keys: vec![TrustedKey {
                key_id: key.id().to_string(),
                public_key: key.to_hex(),
            }],
            iggy_config_path: None,
            heartbeat_interval_secs: None,
            clock_skew_secs: None,
        }
    }

    fn error_for(edit: impl FnOnce(&mut BootstrapFile)) -> String {
        let mut file = valid();
        edit(&mut file);
        Bootstrap::from_file(file, Path::new("b.toml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn valid_file_loads_with_defaults() {
        let bootstrap = Bootstrap::from_file(valid(), Path::new("b.toml")).unwrap();
        assert_eq!(
            bootstrap.iggy_config_path,
            PathBuf::from("/var/lib/warden/iggy/server.toml")
        );
        assert_eq!(bootstrap.heartbeat_interval, HEARTBEAT_INTERVAL_DEFAULT);
        assert_eq!(bootstrap.keyring.len(), 1);
    }

    #[test]
    fn errors_name_the_field() {
        assert!(error_for(|f| f.node = "Node_1".into()).contains("field node"));
        assert!(error_for(|f| f.nats_url = "http://x".into()).contains("nats_url"));
        assert!(error_for(|f| f.state_dir = "relative".into()).contains("absolute"));
        assert!(error_for(|f| f.trusted_task_keys.clear()).contains("wardenctl node add"));
        assert!(
            error_for(|f| f.trusted_task_keys[0].key_id = "0000000000000000".into())
                .contains("does not match")
        );
        assert!(
            error_for(|f| f.trusted_task_keys[0].public_key = "zz".into()).contains("public_key")
        );
        assert!(
            error_for(|f| f.heartbeat_interval_secs = Some(0)).contains("heartbeat_interval_secs")
        );
        assert!(error_for(|f| f.clock_skew_secs = Some(100_000)).contains("clock_skew_secs"));
    }

    #[test]
    fn unknown_fields_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.toml");
        let mut text = toml::to_string(&valid()).unwrap();
        text.push_str("surprise = 1\n");
        std::fs::write(&path, text).unwrap();
        let error = Bootstrap::load(&path).unwrap_err().to_string();
        assert!(error.contains("surprise"), "{error}");
    }
}
