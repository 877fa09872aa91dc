//! Component definitions from the bootstrap file, and the launch of a component rendered from
//! them.
//!
//! The operator who installs a node writes `[components.iggy]` and `[components.connectors]` in
//! the bootstrap file. The control plane never names a path or a command: its tasks only say
//! which component to start, stop, restart or reconfigure.
//!
//! The Iggy server (0.8) reads its configuration file from `IGGY_CONFIG_PATH`, and any setting as
//! `IGGY_<SECTION>_<KEY>` from the environment, which wins over the file (iggy.apache.org, docs
//! 0.8, "Server configuration"). The connectors runtime reads its file from
//! `IGGY_CONNECTORS_CONFIG_PATH` (docs 0.8, "Connectors runtime").

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use warden_actors::BackoffConfig;
use warden_bus::messages::Component;

use crate::core::component::SupervisionPolicy;

/// Default stop timeout, in seconds: SIGKILL follows SIGTERM after it.
pub const STOP_TIMEOUT_SECS_DEFAULT: u64 = 30;
/// Default time a started component has to pass its health check, in seconds.
pub const START_TIMEOUT_SECS_DEFAULT: u64 = 60;
/// Default number of crashes within the crash window that marks a component failed.
pub const CRASH_LIMIT_DEFAULT: u32 = 5;
/// Default crash window, in seconds.
pub const CRASH_WINDOW_SECS_DEFAULT: u64 = 300;
/// Allowed range of the stop and start timeouts, in seconds.
pub const TIMEOUT_SECS_RANGE: std::ops::RangeInclusive<u64> = 1..=3600;
/// Allowed range of the crash limit.
pub const CRASH_LIMIT_RANGE: std::ops::RangeInclusive<u32> = 1..=100;
/// Time between health probes.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Consecutive failed probes after which a running component is restarted.
pub const UNHEALTHY_PROBES_MAX: u32 = 5;
/// First restart delay after a crash.
pub const RESTART_DELAY_BASE: Duration = Duration::from_millis(500);
/// Maximum restart delay after a crash.
pub const RESTART_DELAY_MAX: Duration = Duration::from_secs(60);
/// Maximum number of extra arguments in a definition.
pub const ARGS_MAX: usize = 64;
/// Maximum size of the root credentials file, in bytes.
pub const ROOT_CREDENTIALS_BYTES_MAX: u64 = 4096;
/// Oldest kernel that has the io_uring features the Iggy server needs (major, minor).
pub const IGGY_KERNEL_MIN: (u32, u32) = (5, 19);

/// The `[components]` table of the bootstrap file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentsFile {
    /// The Iggy server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iggy: Option<ComponentFile>,
    /// The connectors runtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connectors: Option<ComponentFile>,
}

/// One `[components.<name>]` table as written in the bootstrap file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentFile {
    /// Absolute path of the binary the operator installed, run until a release is installed.
    pub binary: PathBuf,
    /// Extra command-line arguments, for binaries that take no configuration from the
    /// environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// The component's data directory (Iggy: `IGGY_SYSTEM_PATH`).
    pub data_dir: PathBuf,
    /// Path of its configuration file (Iggy: default the bootstrap's `iggy_config_path`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_path: Option<PathBuf>,
    /// Iggy TCP listen address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_address: Option<String>,
    /// Iggy QUIC listen address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quic_address: Option<String>,
    /// HTTP listen address; the HTTP health check goes there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_address: Option<String>,
    /// Iggy WebSocket listen address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub websocket_address: Option<String>,
    /// PEM certificate for the listeners' TLS; comes with `tls_key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key for the listeners' TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
    /// File with the Iggy root user name on its first line and password on its second, mode
    /// 0600; used only when the data directory is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_credentials_file: Option<PathBuf>,
    /// Path of an HTTP GET health check on `http_address`, such as `/ping`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_http_path: Option<String>,
    /// Local TCP port whose accepting connections means healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_tcp_port: Option<u16>,
    /// Seconds to wait after SIGTERM before SIGKILL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeout_secs: Option<u64>,
    /// Seconds a started process has to pass its health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timeout_secs: Option<u64>,
    /// Crashes within `crash_window_secs` that mark the component failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crash_limit: Option<u32>,
    /// The crash window, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crash_window_secs: Option<u64>,
    /// User the component runs as, by name or numeric id, with that user's primary group. The
    /// Warden must run as root for this. Default: the Warden's own user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// The check that tells whether a component is healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheck {
    /// An HTTP GET of `path` on `address` returns a 2xx status.
    Http {
        /// The address to connect to.
        address: SocketAddr,
        /// The request path.
        path: String,
    },
    /// A TCP connection to this address is accepted.
    Tcp(SocketAddr),
}

/// A validated component definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentDefinition {
    /// Which component.
    pub component: Component,
    /// The operator-installed binary.
    pub binary: PathBuf,
    /// Extra arguments.
    pub args: Vec<String>,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The configuration file.
    pub config_path: PathBuf,
    /// Listen addresses by protocol (`tcp`, `quic`, `http`, `websocket`).
    pub addresses: BTreeMap<&'static str, SocketAddr>,
    /// TLS certificate and key files.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The root credentials file.
    pub root_credentials_file: Option<PathBuf>,
    /// The health check.
    pub health: HealthCheck,
    /// Timing and limits of supervision.
    pub policy: SupervisionPolicy,
    /// The user it runs as; `None` runs it as the Warden's own user.
    pub user: Option<RunAs>,
}

/// A user a component runs as, resolved when the bootstrap file is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// The user name.
    pub name: String,
    /// Its user id.
    pub uid: u32,
    /// Its primary group id.
    pub gid: u32,
}

/// Why a component definition is invalid: names the field and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[components.{component}] field {field} is invalid: {reason}")]
pub struct DefinitionError {
    /// The component table.
    pub component: &'static str,
    /// The field.
    pub field: &'static str,
    /// The problem and its fix.
    pub reason: String,
}

/// Default listen addresses of the Iggy server 0.8, bound to loopback.
const IGGY_ADDRESSES_DEFAULT: [(&str, &str); 4] = [
    ("tcp", "127.0.0.1:8090"),
    ("quic", "127.0.0.1:8080"),
    ("http", "127.0.0.1:3000"),
    ("websocket", "127.0.0.1:8092"),
];

/// Default HTTP address of the connectors runtime's API.
const CONNECTORS_HTTP_DEFAULT: &str = "127.0.0.1:8081";

impl ComponentsFile {
    /// Tells whether no component is defined.
    pub fn is_empty(&self) -> bool {
        self.iggy.is_none() && self.connectors.is_none()
    }
}

impl ComponentFile {
    /// Validates the table of `component`. `default_config_path` is where the Warden writes
    /// the component's configuration unless the table names another file.
    pub fn validate(
        &self,
        component: Component,
        default_config_path: &Path,
    ) -> Result<ComponentDefinition, DefinitionError> {
        let name = component.as_str();
        let error = |field: &'static str, reason: String| DefinitionError {
            component: name,
            field,
            reason,
        };
        let absolute = |field: &'static str, path: &Path| {
            if !path.is_absolute() {
                return Err(error(field, format!("{path:?} must be an absolute path")));
            }
            if path
                .components()
                .any(|part| part == std::path::Component::ParentDir)
            {
                return Err(error(
                    field,
                    format!("{path:?} must not contain '..'; write the path it leads to"),
                ));
            }
            Ok(())
        };

        absolute("binary", &self.binary)?;
        if let Err(reason) = check_binary_not_writable_by_others(&self.binary) {
            return Err(error("binary", reason));
        }
        if self.data_dir == Path::new("/") {
            return Err(error(
                "data_dir",
                "\"/\" is not a data directory; name one that holds only this component's data"
                    .into(),
            ));
        }
        absolute("data_dir", &self.data_dir)?;
        if let Some(path) = &self.config_path {
            absolute("config_path", path)?;
        }
        if self.args.len() > ARGS_MAX {
            return Err(error(
                "args",
                format!(
                    "{} arguments is over the maximum of {ARGS_MAX}",
                    self.args.len()
                ),
            ));
        }
        if let Some(argument) = self.args.iter().find(|argument| argument.contains('\0')) {
            return Err(error("args", format!("{argument:?} contains a NUL byte")));
        }

        // Listen addresses: Iggy has four protocols, the connectors runtime only its HTTP API.
        let mut addresses = BTreeMap::new();
        let given = [
            ("tcp", "tcp_address", &self.tcp_address),
            ("quic", "quic_address", &self.quic_address),
            ("http", "http_address", &self.http_address),
            ("websocket", "websocket_address", &self.websocket_address),
        ];
        for (protocol, field, value) in given {
            let default = match component {
                Component::Iggy => IGGY_ADDRESSES_DEFAULT
                    .iter()
                    .find(|(name, _)| *name == protocol)
                    .map(|(_, address)| *address),
                _ if protocol == "http" => Some(CONNECTORS_HTTP_DEFAULT),
                _ => None,
            };
            if component != Component::Iggy && value.is_some() && default.is_none() {
                return Err(error(
                    field,
                    format!("only the iggy component has a {protocol} listener; remove it"),
                ));
            }
            let Some(text) = value.as_deref().or(default) else {
                continue;
            };
            let address: SocketAddr = text.parse().map_err(|_| {
                error(
                    field,
                    format!("{text:?} is not an IP address with a port, such as 127.0.0.1:8090"),
                )
            })?;
            addresses.insert(protocol, address);
        }

        let tls = match (&self.tls_cert_file, &self.tls_key_file) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                absolute("tls_cert_file", cert)?;
                absolute("tls_key_file", key)?;
                Some((cert.clone(), key.clone()))
            }
            (Some(_), None) => {
                return Err(error(
                    "tls_key_file",
                    "is missing; tls_cert_file needs its key".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(error(
                    "tls_cert_file",
                    "is missing; tls_key_file needs its certificate".into(),
                ))
            }
        };
        if let Some(path) = &self.root_credentials_file {
            if component != Component::Iggy {
                return Err(error(
                    "root_credentials_file",
                    "only the iggy component has a root user; remove it".into(),
                ));
            }
            absolute("root_credentials_file", path)?;
        }

        let health = match (&self.health_http_path, self.health_tcp_port) {
            (Some(_), Some(_)) => {
                return Err(error(
                    "health_http_path",
                    "and health_tcp_port are both set; keep one".into(),
                ))
            }
            (Some(path), None) => {
                let valid = path.starts_with('/')
                    && path.len() <= 256
                    && path.chars().all(|c| c.is_ascii_graphic());
                if !valid {
                    return Err(error(
                        "health_http_path",
                        format!("{path:?} must start with / and have at most 256 visible ASCII characters"),
                    ));
                }
                let address = addresses.get("http").copied().ok_or_else(|| {
                    error("health_http_path", "needs http_address to be set".into())
                })?;
                HealthCheck::Http {
                    address: loopback_if_unspecified(address),
                    path: path.clone(),
                }
            }
            (None, Some(0)) => {
                return Err(error(
                    "health_tcp_port",
                    "0 is not a port; use 1 to 65535".into(),
                ))
            }
            (None, Some(port)) => HealthCheck::Tcp(SocketAddr::from(([127, 0, 0, 1], port))),
            (None, None) => {
                // Iggy's TCP listener accepting is the default; the runtime has only HTTP.
                let address = addresses
                    .get("tcp")
                    .or_else(|| addresses.get("http"))
                    .copied()
                    .ok_or_else(|| {
                        error("health_tcp_port", "is needed: no listener to check".into())
                    })?;
                HealthCheck::Tcp(loopback_if_unspecified(address))
            }
        };

        let seconds = |field: &'static str, value: Option<u64>, default: u64| match value {
            None => Ok(Duration::from_secs(default)),
            Some(secs) if TIMEOUT_SECS_RANGE.contains(&secs) => Ok(Duration::from_secs(secs)),
            Some(secs) => Err(error(
                field,
                format!("{secs} is outside {TIMEOUT_SECS_RANGE:?}"),
            )),
        };
        let stop_timeout = seconds(
            "stop_timeout_secs",
            self.stop_timeout_secs,
            STOP_TIMEOUT_SECS_DEFAULT,
        )?;
        let start_timeout = seconds(
            "start_timeout_secs",
            self.start_timeout_secs,
            START_TIMEOUT_SECS_DEFAULT,
        )?;
        let crash_window = match self.crash_window_secs {
            None => Duration::from_secs(CRASH_WINDOW_SECS_DEFAULT),
            Some(secs) if (1..=86_400).contains(&secs) => Duration::from_secs(secs),
            Some(secs) => {
                return Err(error(
                    "crash_window_secs",
                    format!("{secs} is outside 1 to 86400"),
                ))
            }
        };
        let crash_limit = match self.crash_limit {
            None => CRASH_LIMIT_DEFAULT,
            Some(limit) if CRASH_LIMIT_RANGE.contains(&limit) => limit,
            Some(limit) => {
                return Err(error(
                    "crash_limit",
                    format!("{limit} is outside {CRASH_LIMIT_RANGE:?}"),
                ))
            }
        };
        let backoff = BackoffConfig::new(RESTART_DELAY_BASE, RESTART_DELAY_MAX)
            .map_err(|backoff| error("crash_limit", backoff.to_string()))?;
        let user = self
            .user
            .as_deref()
            .map(resolve_user)
            .transpose()
            .map_err(|reason| error("user", reason))?;

        Ok(ComponentDefinition {
            component,
            binary: self.binary.clone(),
            args: self.args.clone(),
            data_dir: self.data_dir.clone(),
            config_path: self
                .config_path
                .clone()
                .unwrap_or_else(|| default_config_path.to_path_buf()),
            addresses,
            tls,
            root_credentials_file: self.root_credentials_file.clone(),
            health,
            policy: SupervisionPolicy {
                start_timeout,
                stop_timeout,
                probe_interval: PROBE_INTERVAL,
                unhealthy_probes_max: UNHEALTHY_PROBES_MAX,
                crash_limit,
                crash_window,
                backoff,
            },
            user,
        })
    }
}

/// Replaces an unspecified address such as `0.0.0.0:3000` with `127.0.0.1:3000`, because a
/// probe cannot connect to the wildcard.
fn loopback_if_unspecified(address: SocketAddr) -> SocketAddr {
    if address.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], address.port()))
    } else {
        address
    }
}

/// The Iggy root user for the first start.
#[derive(Clone, PartialEq, Eq)]
pub struct RootCredentials {
    /// User name.
    pub username: String,
    /// Password; never logged.
    pub password: String,
}

impl fmt::Debug for RootCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootCredentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl RootCredentials {
    /// Parses the file's text: the user name on the first line, the password on the second.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut lines = text.lines();
        let username = lines.next().unwrap_or_default().trim().to_owned();
        let password = lines
            .next()
            .unwrap_or_default()
            .trim_end_matches('\r')
            .to_owned();
        if username.is_empty() || password.is_empty() {
            return Err(
                "must hold the user name on its first line and the password on its second".into(),
            );
        }
        if lines.any(|line| !line.trim().is_empty()) {
            return Err("has more than two lines; keep the user name and the password only".into());
        }
        Ok(Self { username, password })
    }
}

/// How to start a component process: program, arguments and the whole environment.
#[derive(Clone, PartialEq, Eq)]
pub struct LaunchSpec {
    /// The binary to run.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its whole environment; nothing else is inherited.
    pub env: BTreeMap<String, String>,
    /// Directory it starts in: the component's data directory, so relative paths in its
    /// configuration stay there.
    pub working_dir: PathBuf,
    /// The user it runs as; `None` for the Warden's own.
    pub user: Option<RunAs>,
}

/// Names of variables whose value is a secret and never logged.
pub const SECRET_VARIABLES: [&str; 1] = ["IGGY_ROOT_PASSWORD"];

impl fmt::Debug for LaunchSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let env: BTreeMap<&str, &str> = self
            .env
            .iter()
            .map(|(key, value)| {
                let shown = if SECRET_VARIABLES.contains(&key.as_str()) {
                    "<redacted>"
                } else {
                    value.as_str()
                };
                (key.as_str(), shown)
            })
            .collect();
        f.debug_struct("LaunchSpec")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("env", &env)
            .field("working_dir", &self.working_dir)
            .field("user", &self.user)
            .finish()
    }
}

/// Refuses a binary that someone other than its owner could replace: the file, or the
/// directory holding it, writable by group or others. A binary that does not exist yet passes;
/// starting it fails later with the reason.
fn check_binary_not_writable_by_others(binary: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(metadata) = std::fs::metadata(binary) else {
        return Ok(());
    };
    if !metadata.is_file() {
        return Err(format!("{binary:?} is not a regular file"));
    }
    if metadata.permissions().mode() & 0o022 != 0 {
        return Err(format!(
            "{binary:?} is writable by group or others, who could replace what the Warden runs; chmod go-w it"
        ));
    }
    if let Some(parent) = binary.parent() {
        if let Ok(directory) = std::fs::metadata(parent) {
            let mode = directory.permissions().mode();
            // The sticky bit (as on /tmp) keeps others from replacing a file they do not own.
            if mode & 0o022 != 0 && mode & 0o1000 == 0 {
                return Err(format!(
                    "the directory {parent:?} of the binary is writable by group or others, who could replace it; chmod go-w it"
                ));
            }
        }
    }
    Ok(())
}

/// Renders how to start `definition`'s component.
///
/// `program` is the active installed release or the bootstrap's binary. `first_start` means the
/// data directory is empty, the only case in which `root` is passed on.
pub fn render_launch(
    definition: &ComponentDefinition,
    program: &Path,
    first_start: bool,
    root: Option<&RootCredentials>,
) -> LaunchSpec {
    let mut env = BTreeMap::new();
    let path = |path: &Path| path.display().to_string();
    match definition.component {
        Component::Iggy => {
            env.insert("IGGY_CONFIG_PATH".to_owned(), path(&definition.config_path));
            env.insert("IGGY_SYSTEM_PATH".to_owned(), path(&definition.data_dir));
            for (protocol, address) in &definition.addresses {
                env.insert(
                    format!("IGGY_{}_ADDRESS", protocol.to_ascii_uppercase()),
                    address.to_string(),
                );
            }
            // Setting names from the server's config.toml: [tcp.tls], [http.tls],
            // [websocket.tls] and [quic.certificate].
            if let Some((cert, key)) = &definition.tls {
                for section in ["TCP_TLS", "HTTP_TLS", "WEBSOCKET_TLS"] {
                    env.insert(format!("IGGY_{section}_ENABLED"), "true".to_owned());
                    env.insert(format!("IGGY_{section}_CERT_FILE"), path(cert));
                    env.insert(format!("IGGY_{section}_KEY_FILE"), path(key));
                }
                env.insert("IGGY_TCP_TLS_SELF_SIGNED".to_owned(), "false".to_owned());
                env.insert(
                    "IGGY_WEBSOCKET_TLS_SELF_SIGNED".to_owned(),
                    "false".to_owned(),
                );
                env.insert(
                    "IGGY_QUIC_CERTIFICATE_SELF_SIGNED".to_owned(),
                    "false".to_owned(),
                );
                env.insert("IGGY_QUIC_CERTIFICATE_CERT_FILE".to_owned(), path(cert));
                env.insert("IGGY_QUIC_CERTIFICATE_KEY_FILE".to_owned(), path(key));
            }
            if let (true, Some(root)) = (first_start, root) {
                env.insert("IGGY_ROOT_USERNAME".to_owned(), root.username.clone());
                env.insert("IGGY_ROOT_PASSWORD".to_owned(), root.password.clone());
            }
        }
        Component::Connectors | Component::Warden => {
            env.insert(
                "IGGY_CONNECTORS_CONFIG_PATH".to_owned(),
                path(&definition.config_path),
            );
            // NOTE: the runtime's state directory and HTTP address are settings of its file
            // ([state] path, [http] address); the variable names follow the IGGY_CONNECTORS_
            // prefix of its configuration path and are not confirmed by its documentation.
            env.insert(
                "IGGY_CONNECTORS_STATE_PATH".to_owned(),
                path(&definition.data_dir),
            );
            if let Some(address) = definition.addresses.get("http") {
                env.insert(
                    "IGGY_CONNECTORS_HTTP_ADDRESS".to_owned(),
                    address.to_string(),
                );
            }
        }
    }
    LaunchSpec {
        program: program.to_path_buf(),
        args: definition.args.clone(),
        env,
        working_dir: definition.data_dir.clone(),
        user: definition.user.clone(),
    }
}

/// Looks up `user`, a name or a numeric id, in the system's user database.
fn resolve_user(user: &str) -> Result<RunAs, String> {
    let found = match user.parse::<u32>() {
        Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
        Err(_) => nix::unistd::User::from_name(user),
    }
    .map_err(|errno| format!("looking up user {user:?} failed: {errno}"))?
    .ok_or_else(|| {
        format!("no user {user:?} exists; create it (useradd --system {user}) or remove the field")
    })?;
    if found.uid.is_root() {
        return Err(format!(
            "{user:?} is root; remove the field to run the component as the Warden's own user"
        ));
    }
    Ok(RunAs {
        name: found.name,
        uid: found.uid.as_raw(),
        gid: found.gid.as_raw(),
    })
}

/// Reads the kernel release (`/proc/sys/kernel/osrelease` text, such as `6.1.0-18-amd64`) and
/// returns its major and minor version.
pub fn parse_kernel_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor_text: String = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let minor = minor_text.parse().ok()?;
    Some((major, minor))
}

/// Checks that the kernel release supports the io_uring features the Iggy server needs.
pub fn check_kernel_for_iggy(release: &str) -> Result<(), String> {
    match parse_kernel_release(release) {
        Some(version) if version >= IGGY_KERNEL_MIN => Ok(()),
        Some((major, minor)) => Err(format!(
            "kernel {major}.{minor} is older than {}.{}, which the Iggy server needs for io_uring; upgrade the node's kernel",
            IGGY_KERNEL_MIN.0, IGGY_KERNEL_MIN.1
        )),
        None => Err(format!(
            "cannot read the kernel version from {:?}; the Iggy server needs {}.{} or newer",
            release.trim(),
            IGGY_KERNEL_MIN.0,
            IGGY_KERNEL_MIN.1
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iggy_file() -> ComponentFile {
        ComponentFile {
            binary: "/opt/iggy/iggy-server".into(),
            data_dir: "/var/lib/iggy".into(),
            ..ComponentFile::default()
        }
    }

    fn validate(
        file: &ComponentFile,
        component: Component,
    ) -> Result<ComponentDefinition, DefinitionError> {
        file.validate(component, Path::new("/var/lib/warden/iggy/server.toml"))
    }

    fn error_for(component: Component, edit: impl FnOnce(&mut ComponentFile)) -> String {
        let mut file = iggy_file();
        edit(&mut file);
        validate(&file, component).unwrap_err().to_string()
    }

    #[test]
    fn iggy_defaults() {
        let definition = validate(&iggy_file(), Component::Iggy).unwrap();
        let ports: Vec<u16> = definition
            .addresses
            .values()
            .map(SocketAddr::port)
            .collect();
        // Ordered by protocol name: http, quic, tcp, websocket.
        assert_eq!(ports, vec![3000, 8080, 8090, 8092]);
        assert_eq!(
            definition.health,
            HealthCheck::Tcp("127.0.0.1:8090".parse().unwrap())
        );
        assert_eq!(
            definition.policy.stop_timeout,
            Duration::from_secs(STOP_TIMEOUT_SECS_DEFAULT)
        );
        assert_eq!(definition.policy.crash_limit, CRASH_LIMIT_DEFAULT);
        assert_eq!(
            definition.config_path,
            PathBuf::from("/var/lib/warden/iggy/server.toml")
        );
    }

    #[test]
    fn user_resolved_by_name_or_id() {
        for user in ["nobody", "65534"] {
            let file = ComponentFile {
                user: Some(user.into()),
                ..iggy_file()
            };
            let definition = validate(&file, Component::Iggy).unwrap();
            let run_as = definition.user.unwrap();
            assert_eq!(run_as.name, "nobody");
            assert_eq!(run_as.uid, 65534);
        }
    }

    #[test]
    fn unknown_or_root_user_rejected() {
        for (user, expected) in [
            ("no-such-user-here", "useradd --system no-such-user-here"),
            ("root", "is root"),
            ("0", "is root"),
        ] {
            let file = ComponentFile {
                user: Some(user.into()),
                ..iggy_file()
            };
            let error = validate(&file, Component::Iggy).unwrap_err().to_string();
            assert!(error.contains("field user"), "{error}");
            assert!(error.contains(expected), "{error}");
        }
    }

    #[test]
    fn binary_others_could_replace_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("iggy-server");
        std::fs::write(&binary, b"#!/bin/true\n").unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let file = |binary: &Path| ComponentFile {
            binary: binary.to_path_buf(),
            ..iggy_file()
        };

        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(validate(&file(&binary), Component::Iggy).is_ok());

        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o777)).unwrap();
        let error = validate(&file(&binary), Component::Iggy)
            .unwrap_err()
            .to_string();
        assert!(error.contains("writable by group or others"), "{error}");

        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let error = validate(&file(&binary), Component::Iggy)
            .unwrap_err()
            .to_string();
        assert!(error.contains("directory"), "{error}");

        let error = validate(&file(dir.path()), Component::Iggy)
            .unwrap_err()
            .to_string();
        assert!(error.contains("not a regular file"), "{error}");
    }

    #[test]
    fn connectors_defaults() {
        let definition = validate(&iggy_file(), Component::Connectors).unwrap();
        assert_eq!(definition.addresses.len(), 1);
        assert_eq!(
            definition.health,
            HealthCheck::Tcp("127.0.0.1:8081".parse().unwrap())
        );
    }

    #[test]
    fn errors_name_field_and_fix() {
        type Edit = Box<dyn FnOnce(&mut ComponentFile)>;
        let cases: Vec<(Component, Edit, &str)> = vec![
            (
                Component::Iggy,
                Box::new(|f| f.binary = "iggy-server".into()),
                "field binary",
            ),
            (
                Component::Iggy,
                Box::new(|f| f.data_dir = "data".into()),
                "field data_dir",
            ),
            (
                Component::Iggy,
                Box::new(|f| f.binary = "/opt/iggy/../../tmp/iggy-server".into()),
                "must not contain '..'",
            ),
            (
                Component::Iggy,
                Box::new(|f| f.data_dir = "/".into()),
                "field data_dir",
            ),
            (
                Component::Iggy,
                Box::new(|f| f.config_path = Some("x.toml".into())),
                "field config_path",
            ),
            (
                Component::Iggy,
                Box::new(|f| f.tcp_address = Some("localhost".into())),
                "field tcp_address",
            ),
            (
                Component::Connectors,
                Box::new(|f| f.quic_address = Some("127.0.0.1:1".into())),
                "field quic_address",
            ),
            (
                Component::Iggy,
                Box::new(|f| f.tls_cert_file = Some("/c.pem".into())),
                "field tls_key_file",
            ),
            (
                Component::Iggy,
                Box::new(|f| f.tls_key_file = Some("/k.pem".into())),
                "field tls_cert_file",
            ),
            (
                Component::Connectors,
                Box::new(|f| f.root_credentials_file = Some("/r".into())),
                "field root_credentials_file",
            ),
            (
                Component::Iggy,
                Box::new(|f| f.health_http_path = Some("ping".into())),
                "field health_http_path",
            ),
            (
                Component::Iggy,
                Box::new(|f| {
                    f.health_http_path = Some("/p".into());
                    f.health_tcp_port = Some(1);
                }),
                "keep one",
            ),
            (
                Component::Iggy,
                Box::new(|f| f.health_tcp_port = Some(0)),
                "field health_tcp_port",
            ),
            (
                Component::Iggy,
                Box::new(|f| f.stop_timeout_secs = Some(0)),
                "field stop_timeout_secs",
            ),
            (
                Component::Iggy,
                Box::new(|f| f.start_timeout_secs = Some(7200)),
                "field start_timeout_secs",
            ),
            (
                Component::Iggy,
                Box::new(|f| f.crash_limit = Some(0)),
                "field crash_limit",
            ),
            (
                Component::Iggy,
                Box::new(|f| f.crash_window_secs = Some(0)),
                "field crash_window_secs",
            ),
            (
                Component::Iggy,
                Box::new(|f| f.args = vec!["a\0b".into()]),
                "field args",
            ),
        ];
        for (component, edit, expected) in cases {
            let error = error_for(component, edit);
            assert!(error.contains(expected), "{error:?} lacks {expected:?}");
        }
    }

    #[test]
    fn http_health_probes_loopback_for_wildcard() {
        let mut file = iggy_file();
        file.http_address = Some("0.0.0.0:3000".into());
        file.health_http_path = Some("/ping".into());
        let definition = validate(&file, Component::Iggy).unwrap();
        assert_eq!(
            definition.health,
            HealthCheck::Http {
                address: "127.0.0.1:3000".parse().unwrap(),
                path: "/ping".into()
            }
        );
    }

    #[test]
    fn iggy_launch_environment() {
        let mut file = iggy_file();
        file.tls_cert_file = Some("/etc/iggy/cert.pem".into());
        file.tls_key_file = Some("/etc/iggy/key.pem".into());
        file.tcp_address = Some("0.0.0.0:9090".into());
        let definition = validate(&file, Component::Iggy).unwrap();
        let root = RootCredentials {
            username: "admin".into(),
            password: "s3cret".into(),
        };
        let spec = render_launch(&definition, Path::new("/bin/iggy"), true, Some(&root));
        let get = |key: &str| spec.env.get(key).map(String::as_str);
        assert_eq!(
            get("IGGY_CONFIG_PATH"),
            Some("/var/lib/warden/iggy/server.toml")
        );
        assert_eq!(get("IGGY_SYSTEM_PATH"), Some("/var/lib/iggy"));
        assert_eq!(get("IGGY_TCP_ADDRESS"), Some("0.0.0.0:9090"));
        assert_eq!(get("IGGY_QUIC_ADDRESS"), Some("127.0.0.1:8080"));
        assert_eq!(get("IGGY_HTTP_ADDRESS"), Some("127.0.0.1:3000"));
        assert_eq!(get("IGGY_WEBSOCKET_ADDRESS"), Some("127.0.0.1:8092"));
        assert_eq!(get("IGGY_TCP_TLS_ENABLED"), Some("true"));
        assert_eq!(get("IGGY_HTTP_TLS_CERT_FILE"), Some("/etc/iggy/cert.pem"));
        assert_eq!(
            get("IGGY_QUIC_CERTIFICATE_KEY_FILE"),
            Some("/etc/iggy/key.pem")
        );
        assert_eq!(get("IGGY_ROOT_USERNAME"), Some("admin"));
        assert_eq!(get("IGGY_ROOT_PASSWORD"), Some("s3cret"));
        assert_eq!(spec.program, PathBuf::from("/bin/iggy"));
        let shown = format!("{spec:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("admin"), "{shown}");
    }

    #[test]
    fn root_credentials_only_on_first_start() {
        let definition = validate(&iggy_file(), Component::Iggy).unwrap();
        let root = RootCredentials {
            username: "admin".into(),
            password: "pw".into(),
        };
        let spec = render_launch(&definition, Path::new("/bin/iggy"), false, Some(&root));
        assert!(!spec.env.contains_key("IGGY_ROOT_USERNAME"));
        assert!(!spec.env.contains_key("IGGY_ROOT_PASSWORD"));
        assert!(!spec.env.keys().any(|key| key.contains("TLS")));
    }

    #[test]
    fn connectors_launch_environment() {
        let definition = validate(&iggy_file(), Component::Connectors).unwrap();
        let spec = render_launch(&definition, Path::new("/bin/conn"), true, None);
        assert_eq!(
            spec.env
                .get("IGGY_CONNECTORS_CONFIG_PATH")
                .map(String::as_str),
            Some("/var/lib/warden/iggy/server.toml")
        );
        assert!(!spec.env.keys().any(|key| key.starts_with("IGGY_ROOT")));
    }

    #[test]
    fn root_credentials_file_format() {
        let root = RootCredentials::parse("admin\nsecret\n").unwrap();
        assert_eq!(root.username, "admin");
        assert_eq!(root.password, "secret");
        assert!(RootCredentials::parse("admin\n").is_err());
        assert!(RootCredentials::parse("admin\npw\nextra\n").is_err());
        assert!(!format!("{root:?}").contains("secret"));
    }

    proptest::proptest! {
        #[test]
        fn launch_never_shows_password_or_foreign_variables(
            secret in "[a-zA-Z0-9]{1,40}",
            first_start in proptest::bool::ANY,
            tls in proptest::bool::ANY,
        ) {
            let mut file = iggy_file();
            if tls {
                file.tls_cert_file = Some("/c.pem".into());
                file.tls_key_file = Some("/k.pem".into());
            }
            let definition = validate(&file, Component::Iggy).unwrap();
            let root = RootCredentials { username: "admin".into(), password: format!("pw-{secret}") };
            let spec = render_launch(&definition, Path::new("/bin/iggy"), first_start, Some(&root));
            let shown = format!("{spec:?}");
            proptest::prop_assert!(!shown.contains("pw-"), "the password is shown");
            proptest::prop_assert!(spec.env.keys().all(|key| key.starts_with("IGGY_")));
            proptest::prop_assert_eq!(spec.env.contains_key("IGGY_ROOT_PASSWORD"), first_start);
        }
    }

    #[test]
    fn kernel_version_check() {
        assert_eq!(parse_kernel_release("6.1.0-18-amd64\n"), Some((6, 1)));
        assert_eq!(parse_kernel_release("5.19.0"), Some((5, 19)));
        assert_eq!(parse_kernel_release("5.4.0-150-generic"), Some((5, 4)));
        assert_eq!(parse_kernel_release("4.19rc1"), Some((4, 19)));
        assert_eq!(parse_kernel_release("garbage"), None);
        assert!(check_kernel_for_iggy("5.19.0").is_ok());
        assert!(check_kernel_for_iggy("6.18.44-fc-v1252").is_ok());
        let error = check_kernel_for_iggy("5.15.0-91-generic").unwrap_err();
        assert!(error.contains("5.15") && error.contains("5.19"), "{error}");
        assert!(check_kernel_for_iggy("garbage").is_err());
    }
}
