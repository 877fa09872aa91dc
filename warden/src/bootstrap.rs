//! The bootstrap file: what a Warden needs to know before its first connection.
//!
//! `wardenctl node add` writes it. Example:
//!
//! ```toml
//! deployment = "prod"
//! node = "node-1"
//! nats_url = "nats://127.0.0.1:4222"
//! state_dir = "/var/lib/warden"
//! root_key = "<64 hex characters: the pinned root public key>"
//! trust_document = "<base64: the root-signed trust document>"
//! ```
//!
//! Optional: `approval_key` (hex public key of the customer approval key, which makes access
//! rules and encryption keys need a second signature), `iggy_config_path` (default
//! `<state_dir>/iggy/server.toml`), `heartbeat_interval_secs` (default 10),
//! `clock_skew_secs` (default 300), `task_validity_max_secs` (default 3600) and
//! `self_upgrade_health_timeout_secs` (default 60). `tls_names` lists the DNS names and IP
//! addresses of the node's TLS certificate. `tls_listen` is the socket address of the Warden's
//! own TLS listener, such as `0.0.0.0:8443`, which serves once the first certificate is
//! installed. An `[access]` table makes the Warden guard the Iggy ports with nftables; see
//! [`crate::access::AccessFile`] for its fields.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};
use warden_bus::messages::Component;
use warden_bus::trust::SignedDocument;
use warden_bus::{DeploymentId, NodeId, PublicKey};

use crate::access::{AccessFile, Firewall};
use crate::components::definition::{ComponentDefinition, ComponentsFile};
use crate::core::access::Ports;
use crate::core::heartbeat::HEARTBEAT_INTERVAL_DEFAULT;
use crate::core::verify::TASK_VALIDITY_MAX_DEFAULT;
use crate::core::CLOCK_SKEW_DEFAULT;
use crate::tls::{TlsFiles, TlsName};

/// Maximum size of a bootstrap file, in bytes.
pub const BOOTSTRAP_BYTES_MAX: u64 = 64 * 1024;

/// Bounds on the heartbeat interval, in seconds.
pub const HEARTBEAT_INTERVAL_SECS_RANGE: std::ops::RangeInclusive<u64> = 1..=3600;

/// Maximum clock skew tolerance, in seconds.
pub const CLOCK_SKEW_SECS_MAX: u64 = 3600;

/// Default time a new Warden binary has to become healthy after a self-upgrade.
pub const SELF_UPGRADE_HEALTH_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);

/// Accepted values of `self_upgrade_health_timeout_secs`.
pub const SELF_UPGRADE_HEALTH_TIMEOUT_SECS_RANGE: std::ops::RangeInclusive<u64> = 5..=3600;

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
    /// The pinned root public key, hex.
    pub root_key: String,
    /// The root-signed trust document, base64 of its MessagePack encoding.
    pub trust_document: String,
    /// The deployment's customer approval public key, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_key: Option<String>,
    /// One-time token with which the node enrolls its key. Without it the control plane
    /// ignores the node's reports and heartbeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_token: Option<String>,
    /// PEM of the CA that signs the broker's certificate; with it every connection uses TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificate: Option<String>,
    /// JWT of the one-time enrollment user, which may only send the enrollment request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_jwt: Option<String>,
    /// Nkey seed of the enrollment user (`SU…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_seed: Option<String>,
    /// Where to write the Iggy server configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iggy_config_path: Option<PathBuf>,
    /// Seconds between heartbeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_secs: Option<u64>,
    /// Tolerated clock difference, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_skew_secs: Option<u64>,
    /// Maximum validity of a task, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_validity_max_secs: Option<u64>,
    /// Seconds a new Warden binary has to connect and send a heartbeat after a self-upgrade
    /// before the launcher rolls back to the previous binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_upgrade_health_timeout_secs: Option<u64>,
    /// The components this node supervises, written by the operator who installs the node.
    #[serde(default, skip_serializing_if = "ComponentsFile::is_empty")]
    pub components: ComponentsFile,
    /// DNS names and IP addresses registered for the node; its TLS certificate names these and
    /// no others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_names: Vec<String>,
    /// Socket address of the Warden's own TLS listener, such as `0.0.0.0:8443`; without it
    /// the Warden opens no listening socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_listen: Option<String>,
    /// Access rules: with this table the Warden guards the Iggy ports with nftables and
    /// applies `apply_access_rules` tasks; without it, it refuses them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<AccessFile>,
}

/// What a node needs to reach a broker in operator mode with TLS.
#[derive(Clone)]
pub struct SecureBroker {
    /// PEM of the CA that signs the broker's certificate.
    pub ca_certificate: String,
    /// JWT and nkey seed of the enrollment user.
    pub enrollment: Option<(String, String)>,
}

impl std::fmt::Debug for SecureBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureBroker")
            .field("has_enrollment_user", &self.enrollment.is_some())
            .finish_non_exhaustive()
    }
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
    /// The pinned root key.
    pub root_key: PublicKey,
    /// The trust document from the file, not yet verified.
    pub trust_document: SignedDocument,
    /// The customer approval key, if the deployment pins one.
    pub approval_key: Option<PublicKey>,
    /// One-time enrollment token.
    pub enrollment_token: Option<String>,
    /// Broker security, when the bootstrap file carries a CA certificate.
    pub secure: Option<SecureBroker>,
    /// Path of the Iggy configuration file.
    pub iggy_config_path: PathBuf,
    /// Time between heartbeats.
    pub heartbeat_interval: Duration,
    /// Tolerated clock difference.
    pub clock_skew: Duration,
    /// Maximum validity of a task.
    pub task_validity_max: Duration,
    /// Time a new Warden binary has to prove itself healthy after a self-upgrade.
    pub self_upgrade_health_timeout: Duration,
    /// The components this node supervises.
    pub components: Vec<ComponentDefinition>,
    /// Subject alternative names of the node's TLS certificate.
    pub tls_names: Vec<TlsName>,
    /// Socket address of the Warden's own TLS listener.
    pub tls_listen: Option<SocketAddr>,
    /// The nftables table that guards the Iggy ports, if the node manages access rules.
    pub access: Option<Firewall>,
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
        /// Description of the problem and its fix.
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
        // The length from metadata is 0 for devices and pipes, so the read itself is capped too.
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut std::io::Read::take(
                std::fs::File::open(path).map_err(read_error)?,
                BOOTSTRAP_BYTES_MAX + 1,
            ),
            &mut text,
        )
        .map_err(read_error)?;
        if text.len() as u64 > BOOTSTRAP_BYTES_MAX {
            return Err(BootstrapError::TooLarge {
                path: path.to_path_buf(),
                len: text.len() as u64,
            });
        }
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
        let urls = crate::credentials::server_list(&file.nats_url);
        if let Some(url) = urls.iter().find(|url| {
            !["nats://", "tls://", "wss://"]
                .iter()
                .any(|scheme| url.starts_with(scheme) && url.len() > scheme.len())
        }) {
            return Err(field(
                "nats_url",
                format!(
                    "{url:?} must be a server URL starting with tls:// or wss:// (or nats:// without a broker set-up); separate several with commas"
                ),
            ));
        }
        if !file.state_dir.is_absolute() {
            return Err(field(
                "state_dir",
                format!("{:?} must be an absolute path", file.state_dir),
            ));
        }
        let root_key = PublicKey::from_hex(&file.root_key)
            .map_err(|error| field("root_key", error.to_string()))?;
        let document_bytes = base64::engine::general_purpose::STANDARD
            .decode(file.trust_document.trim())
            .map_err(|error| field("trust_document", format!("not base64: {error}")))?;
        let trust_document = SignedDocument::decode(&document_bytes).map_err(|error| {
            field(
                "trust_document",
                format!("{error}; copy it again from `wardenctl node add`"),
            )
        })?;
        if let Some(token) = &file.enrollment_token {
            let valid = (16..=128).contains(&token.len())
                && token
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid {
                return Err(field(
                    "enrollment_token",
                    "must be 16 to 128 characters of base64url; copy it again from `wardenctl node add`".into(),
                ));
            }
        }
        let secure = match (&file.ca_certificate, &file.enrollment_jwt, &file.enrollment_seed) {
            (None, None, None) => None,
            (Some(ca), jwt, seed) => {
                if !ca.contains("BEGIN CERTIFICATE") {
                    return Err(field("ca_certificate", "is not a PEM certificate; copy it again from `wardenctl node add`".into()));
                }
                let enrollment = match (jwt, seed) {
                    (Some(jwt), Some(seed)) => Some((jwt.clone(), seed.clone())),
                    (None, None) => None,
                    _ => {
                        return Err(field(
                            "enrollment_jwt",
                            "enrollment_jwt and enrollment_seed come together; copy both from `wardenctl node add`".into(),
                        ))
                    }
                };
                Some(SecureBroker { ca_certificate: ca.clone(), enrollment })
            }
            (None, _, _) => {
                return Err(field("ca_certificate", "is missing but enrollment credentials are given; copy the whole file from `wardenctl node add`".into()))
            }
        };
        if let Some(url) = urls.iter().find(|url| {
            secure.is_some() && !(url.starts_with("tls://") || url.starts_with("wss://"))
        }) {
            return Err(field(
                "nats_url",
                format!("{url:?} must start with tls:// or wss:// when a CA certificate is given"),
            ));
        }
        let approval_key = file
            .approval_key
            .as_deref()
            .map(PublicKey::from_hex)
            .transpose()
            .map_err(|error| field("approval_key", error.to_string()))?;
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
        let self_upgrade_health_timeout = match file.self_upgrade_health_timeout_secs {
            None => SELF_UPGRADE_HEALTH_TIMEOUT_DEFAULT,
            Some(secs) if SELF_UPGRADE_HEALTH_TIMEOUT_SECS_RANGE.contains(&secs) => {
                Duration::from_secs(secs)
            }
            Some(secs) => {
                return Err(field(
                    "self_upgrade_health_timeout_secs",
                    format!("{secs} is outside {SELF_UPGRADE_HEALTH_TIMEOUT_SECS_RANGE:?}"),
                ))
            }
        };
        let task_validity_max = match file.task_validity_max_secs {
            None => TASK_VALIDITY_MAX_DEFAULT,
            Some(secs) if (1..=TASK_VALIDITY_MAX_DEFAULT.as_secs()).contains(&secs) => {
                Duration::from_secs(secs)
            }
            Some(secs) => {
                return Err(field(
                    "task_validity_max_secs",
                    format!(
                        "{secs} is outside 1 to {}",
                        TASK_VALIDITY_MAX_DEFAULT.as_secs()
                    ),
                ))
            }
        };
        if let Some(path) = &file.iggy_config_path {
            if !path.is_absolute() {
                return Err(field(
                    "iggy_config_path",
                    format!("{path:?} must be an absolute path"),
                ));
            }
        }
        let iggy_config_path = file
            .iggy_config_path
            .unwrap_or_else(|| file.state_dir.join("iggy").join("server.toml"));
        let mut components = Vec::new();
        let tables = [
            (
                Component::Iggy,
                &file.components.iggy,
                iggy_config_path.clone(),
            ),
            (
                Component::Connectors,
                &file.components.connectors,
                file.state_dir.join("connectors").join("config.toml"),
            ),
        ];
        for (component, table, default_config_path) in tables {
            let Some(table) = table else { continue };
            let definition = table
                .validate(component, &default_config_path)
                .map_err(|error| field("components", error.to_string()))?;
            check_managed_tls(&definition, &file.state_dir)
                .map_err(|reason| field("components", reason))?;
            check_data_dir_apart(&definition, &file.state_dir)
                .map_err(|reason| field("components", reason))?;
            components.push(definition);
        }
        check_shared_key_group(&components, &file.state_dir)
            .map_err(|reason| field("components", reason))?;
        let tls_names = file
            .tls_names
            .iter()
            .map(|name| TlsName::parse(name))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| field("tls_names", error.to_string()))?;
        let tls_listen = file
            .tls_listen
            .as_deref()
            .map(|text| {
                text.parse::<SocketAddr>().map_err(|_| {
                    field(
                        "tls_listen",
                        format!("{text:?} is not an IP address with a port, such as 0.0.0.0:8443"),
                    )
                })
            })
            .transpose()?;
        let listeners = components
            .iter()
            .find(|definition| definition.component == Component::Iggy)
            .map(iggy_listener_ports);
        let access = file
            .access
            .as_ref()
            .map(|access| access.validate(listeners))
            .transpose()
            .map_err(|reason| field("access", reason))?;
        Ok(Self {
            deployment,
            node,
            nats_url: file.nats_url,
            state_dir: file.state_dir,
            root_key,
            trust_document,
            approval_key,
            enrollment_token: file.enrollment_token,
            secure,
            iggy_config_path,
            heartbeat_interval,
            self_upgrade_health_timeout,
            clock_skew,
            task_validity_max,
            components,
            tls_names,
            tls_listen,
            access,
        })
    }
}

/// Returns the ports of the Iggy server's four listeners, which a validated definition always
/// has (given or defaulted).
fn iggy_listener_ports(definition: &ComponentDefinition) -> Ports {
    let defaults = Ports::default();
    let port = |protocol: &str, default: u16| {
        definition
            .addresses
            .get(protocol)
            .map_or(default, SocketAddr::port)
    };
    Ports {
        tcp: port("tcp", defaults.tcp),
        quic: port("quic", defaults.quic),
        http: port("http", defaults.http),
        websocket: port("websocket", defaults.websocket),
    }
}

/// Checks that a component using the Warden's managed certificate also uses its managed key,
/// because each renewal replaces both with a new pair.
fn check_managed_tls(definition: &ComponentDefinition, state_dir: &Path) -> Result<(), String> {
    let Some((certificate, key)) = &definition.tls else {
        return Ok(());
    };
    let managed = TlsFiles::new(state_dir);
    let uses_certificate = *certificate == managed.certificate;
    let uses_key = *key == managed.key;
    if uses_certificate == uses_key {
        return Ok(());
    }
    Err(format!(
        "[components.{}] uses only one of the Warden's managed TLS files; set tls_cert_file = {:?} and tls_key_file = {:?} together, or neither",
        definition.component,
        managed.certificate,
        managed.key
    ))
}

/// Checks that a component with its own user has a data directory apart from the state
/// directory. The user owns its data directory: inside the state directory it would own a
/// directory the Warden fills (its own releases, which the launcher runs as root), and around
/// it the user could move the state directory.
fn check_data_dir_apart(definition: &ComponentDefinition, state_dir: &Path) -> Result<(), String> {
    if definition.user.is_none() {
        return Ok(());
    }
    // NOTE: the paths are compared as text, so a symbolic link between them goes unnoticed.
    let data_dir = lexical(&definition.data_dir);
    let state = lexical(state_dir);
    if !data_dir.starts_with(&state) && !state.starts_with(&data_dir) {
        return Ok(());
    }
    Err(format!(
        "[components.{}] data_dir {} and the state directory {} contain one another, and the component runs as its own user; give it a data directory elsewhere",
        definition.component,
        data_dir.display(),
        state_dir.display()
    ))
}

/// Returns `path` with `.` dropped and each `..` taking away the part before it, without
/// looking at the file system (symbolic links are not followed).
fn lexical(path: &Path) -> PathBuf {
    let mut normal = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                normal.pop();
            }
            other => normal.push(other),
        }
    }
    normal
}

/// Checks that components sharing the managed TLS key with their own users share one group,
/// because the key file can belong to one group only.
fn check_shared_key_group(
    components: &[ComponentDefinition],
    state_dir: &Path,
) -> Result<(), String> {
    let managed = TlsFiles::new(state_dir);
    let groups: Vec<(Component, u32)> = components
        .iter()
        .filter(|definition| {
            definition
                .tls
                .as_ref()
                .is_some_and(|(_, key)| *key == managed.key)
        })
        .filter_map(|definition| {
            let user = definition.user.as_ref()?;
            Some((definition.component, user.gid))
        })
        .collect();
    match groups.as_slice() {
        [(first, first_gid), (second, second_gid), ..] if first_gid != second_gid => Err(format!(
            "[components.{first}] and [components.{second}] use the managed TLS key with users of different groups ({first_gid} and {second_gid}); the key file can belong to one group, so give both users the same primary group"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use warden_bus::trust::{KeyGrant, TrustDocument};
    use warden_bus::{SigningKey, UnixMillis};

    use super::*;

    fn valid() -> BootstrapFile {
        let root = SigningKey::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(1));
        let task = SigningKey::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(2));
        let document = TrustDocument {
            version: 1,
            issued_at: UnixMillis(0),
            expires_at: UnixMillis(u64::MAX / 2),
            root_key: root.public_key().as_bytes().to_vec(),
            task_keys: vec![KeyGrant {
                public_key: task.public_key().as_bytes().to_vec(),
                not_before: UnixMillis(0),
                not_after: UnixMillis(u64::MAX / 2),
            }],
            release_keys: Vec::new(),
        };
        let signed = SignedDocument::sign(&document, &[&root]).unwrap();
        BootstrapFile {
            deployment: "prod".into(),
            node: "node-1".into(),
            nats_url: "nats://127.0.0.1:4222".into(),
            state_dir: "/var/lib/warden".into(),
            root_key: root.public_key().to_hex(),
            trust_document: base64::engine::general_purpose::STANDARD
                .encode(signed.encode().unwrap()),
            approval_key: None,
            enrollment_token: None,
            ca_certificate: None,
            enrollment_jwt: None,
            enrollment_seed: None,
            iggy_config_path: None,
            heartbeat_interval_secs: None,
            clock_skew_secs: None,
            task_validity_max_secs: None,
            self_upgrade_health_timeout_secs: None,
            components: ComponentsFile::default(),
            tls_names: Vec::new(),
            tls_listen: None,
            access: None,
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
        assert_eq!(bootstrap.task_validity_max, TASK_VALIDITY_MAX_DEFAULT);
        assert!(bootstrap.approval_key.is_none());
    }

    #[test]
    fn errors_name_the_field() {
        assert!(error_for(|f| f.node = "Node_1".into()).contains("field node"));
        assert!(error_for(|f| f.nats_url = "http://x".into()).contains("nats_url"));
        assert!(error_for(|f| f.state_dir = "relative".into()).contains("absolute"));
        assert!(error_for(|f| f.root_key = "zz".into()).contains("root_key"));
        assert!(error_for(|f| f.trust_document = "!!".into()).contains("trust_document"));
        assert!(error_for(|f| f.trust_document = "AAAA".into()).contains("wardenctl node add"));
        assert!(error_for(|f| f.approval_key = Some("00".into())).contains("approval_key"));
        assert!(
            error_for(|f| f.heartbeat_interval_secs = Some(0)).contains("heartbeat_interval_secs")
        );
        assert!(error_for(|f| f.clock_skew_secs = Some(100_000)).contains("clock_skew_secs"));
        assert!(
            error_for(|f| f.task_validity_max_secs = Some(7200)).contains("task_validity_max_secs")
        );
    }

    #[test]
    fn access_table_parsed_and_checked() {
        let text = toml::to_string(&valid()).unwrap() + "\n[access]\ntcp_port = 18090\n";
        let file: BootstrapFile = toml::from_str(&text).unwrap();
        let bootstrap = Bootstrap::from_file(file, Path::new("b.toml")).unwrap();
        let firewall = bootstrap.access.unwrap();
        assert_eq!(firewall.ports().tcp, 18090);
        assert_eq!(firewall.table(), crate::access::TABLE_DEFAULT);

        let error = error_for(|f| {
            f.access = Some(AccessFile {
                table: Some("x; flush ruleset".into()),
                ..AccessFile::default()
            })
        });
        assert!(error.contains("field access"), "{error}");
        let unknown = toml::to_string(&valid()).unwrap() + "\n[access]\nports = 1\n";
        assert!(toml::from_str::<BootstrapFile>(&unknown).is_err());
    }

    #[test]
    fn access_ports_follow_iggy_listeners() {
        let iggy = "[components.iggy]\nbinary = \"/opt/iggy-server\"\ndata_dir = \"/var/lib/iggy\"\ntcp_address = \"0.0.0.0:9090\"\nhttp_address = \"0.0.0.0:3300\"\n";
        let text = toml::to_string(&valid()).unwrap() + "\n[access]\n\n" + iggy;
        let file: BootstrapFile = toml::from_str(&text).unwrap();
        let bootstrap = Bootstrap::from_file(file, Path::new("b.toml")).unwrap();
        let ports = bootstrap.access.unwrap().ports();
        assert_eq!(ports.tcp, 9090);
        assert_eq!(ports.http, 3300);
        assert_eq!(ports.quic, Ports::default().quic);

        // A guard on the default port would leave the real listener on 9090 open.
        let text = toml::to_string(&valid()).unwrap() + "\n[access]\ntcp_port = 8090\n\n" + iggy;
        let file: BootstrapFile = toml::from_str(&text).unwrap();
        let error = Bootstrap::from_file(file, Path::new("b.toml"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("field access"), "{error}");
        assert!(error.contains("tcp_port = 8090"), "{error}");
        assert!(error.contains("9090"), "{error}");
    }

    #[test]
    fn tls_fields_validated() {
        let mut file = valid();
        file.tls_names = vec!["node-1.example".into(), "10.0.0.7".into()];
        file.tls_listen = Some("127.0.0.1:8443".into());
        let bootstrap = Bootstrap::from_file(file, Path::new("b.toml")).unwrap();
        assert_eq!(
            bootstrap.tls_names,
            vec![
                TlsName::Dns("node-1.example".into()),
                TlsName::Ip("10.0.0.7".parse().unwrap())
            ]
        );
        assert_eq!(
            bootstrap.tls_listen,
            Some("127.0.0.1:8443".parse().unwrap())
        );

        let error = error_for(|f| f.tls_names = vec!["ok.example".into(), "bad_name".into()]);
        assert!(error.contains("field tls_names"), "{error}");
        assert!(error.contains("\"bad_name\""), "{error}");
        let error = error_for(|f| f.tls_listen = Some("localhost".into()));
        assert!(error.contains("field tls_listen"), "{error}");
        assert!(error.contains("\"localhost\""), "{error}");
    }

    #[test]
    fn managed_certificate_needs_managed_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.toml");
        let table = |certificate: &str, key: &str| {
            let mut text = toml::to_string(&valid()).unwrap();
            text.push_str(&format!(
                "[components.iggy]\nbinary = \"/opt/iggy-server\"\ndata_dir = \"/var/lib/iggy\"\ntls_cert_file = \"{certificate}\"\ntls_key_file = \"{key}\"\n"
            ));
            std::fs::write(&path, text).unwrap();
            Bootstrap::load(&path)
        };
        let managed_certificate = "/var/lib/warden/tls/node.crt";
        let managed_key = "/var/lib/warden/tls/node.key";
        assert!(table(managed_certificate, managed_key).is_ok());
        assert!(table("/etc/iggy/cert.pem", "/etc/iggy/key.pem").is_ok());
        let error = table(managed_certificate, "/etc/iggy/key.pem")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("tls_key_file = \"/var/lib/warden/tls/node.key\""),
            "{error}"
        );
        let error = table("/etc/iggy/cert.pem", managed_key)
            .unwrap_err()
            .to_string();
        assert!(error.contains("[components.iggy]"), "{error}");
    }

    #[test]
    fn managed_key_users_share_a_group() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.toml");
        let load = |iggy_user: &str, connectors_user: &str| {
            let mut text = toml::to_string(&valid()).unwrap();
            let tls = "tls_cert_file = \"/var/lib/warden/tls/node.crt\"\ntls_key_file = \"/var/lib/warden/tls/node.key\"";
            text.push_str(&format!(
                "[components.iggy]\nbinary = \"/opt/iggy-server\"\ndata_dir = \"/var/lib/iggy\"\nuser = \"{iggy_user}\"\n{tls}\n\n[components.connectors]\nbinary = \"/opt/iggy-connectors\"\ndata_dir = \"/var/lib/connectors\"\nuser = \"{connectors_user}\"\n{tls}\n"
            ));
            std::fs::write(&path, text).unwrap();
            Bootstrap::load(&path)
        };
        assert!(load("nobody", "nobody").is_ok());
        let error = load("nobody", "daemon").unwrap_err().to_string();
        assert!(error.contains("different groups"), "{error}");
        assert!(error.contains("[components.iggy]"), "{error}");
    }

    #[test]
    fn paths_compared_without_dots() {
        assert_eq!(
            lexical(Path::new("/var/lib/x/../warden/./data")),
            PathBuf::from("/var/lib/warden/data")
        );
        assert!(lexical(Path::new("/var/lib/x/../warden/data"))
            .starts_with(lexical(Path::new("/var/lib/warden"))));
    }

    #[test]
    fn server_lists_checked_url_by_url() {
        let mut file = valid();
        file.nats_url = "nats://a:4222, nats://b:4222".into();
        assert!(Bootstrap::from_file(file, Path::new("b.toml")).is_ok());
        let error = error_for(|f| f.nats_url = "nats://a:4222,".into());
        assert!(error.contains("separate several with commas"), "{error}");
        let error = error_for(|f| {
            f.nats_url = "tls://a:4222,nats://b:4222".into();
            f.ca_certificate = Some("-----BEGIN CERTIFICATE-----".into());
        });
        assert!(error.contains("\"nats://b:4222\""), "{error}");
    }

    #[test]
    fn component_tables_validated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.toml");
        let mut text = toml::to_string(&valid()).unwrap();
        text.push_str(
            "[components.iggy]\nbinary = \"/opt/iggy-server\"\ndata_dir = \"/var/lib/iggy\"\n",
        );
        std::fs::write(&path, &text).unwrap();
        let bootstrap = Bootstrap::load(&path).unwrap();
        assert_eq!(bootstrap.components.len(), 1);
        assert_eq!(
            bootstrap.components[0].config_path,
            bootstrap.iggy_config_path
        );

        text.push_str("stop_timeout_secs = 0\n");
        std::fs::write(&path, &text).unwrap();
        let error = Bootstrap::load(&path).unwrap_err().to_string();
        assert!(
            error.contains("[components.iggy] field stop_timeout_secs"),
            "{error}"
        );

        let mut text = toml::to_string(&valid()).unwrap();
        text.push_str("[components.kafka]\nbinary = \"/x\"\ndata_dir = \"/y\"\n");
        std::fs::write(&path, &text).unwrap();
        let error = Bootstrap::load(&path).unwrap_err().to_string();
        assert!(error.contains("kafka"), "{error}");
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
