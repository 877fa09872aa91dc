//! Applies access rules to nftables: the settings from the bootstrap file and the one command
//! that replaces the Warden's table.
//!
//! The decisions are in [`crate::core::access`]. This module renders the rule set that the
//! core returns and runs `nft -f -` with it, so the whole table changes in one kernel
//! transaction or not at all. The Warden leaves the table in place when it stops, so a node
//! stays closed, and rules with an expiry close on the kernel's clock without it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use warden_bus::UnixMillis;

use crate::core::access::{
    render, validate_table_name, AccessCore, AccessEffect, Ports, RuleSet, OWNER_MARK,
};
use crate::store::TaskStore;

/// Default path of the nft command.
pub const NFT_DEFAULT: &str = "/usr/sbin/nft";
/// Default name of the nftables table the Warden owns.
pub const TABLE_DEFAULT: &str = "warden";

/// The `[access]` table of the bootstrap file. Its presence makes the Warden manage access
/// rules; every field has a default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessFile {
    /// Absolute path of the nft command; default `/usr/sbin/nft`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nft: Option<PathBuf>,
    /// Name of the nftables table (family `inet`) the Warden replaces; default `warden`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// Iggy's TCP port; default the port of the iggy component's `tcp_address`, or 8090.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_port: Option<u16>,
    /// Iggy's QUIC (UDP) port; default the port of `quic_address`, or 8080.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quic_port: Option<u16>,
    /// Iggy's HTTP port; default the port of `http_address`, or 3000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_port: Option<u16>,
    /// Iggy's WebSocket port; default the port of `websocket_address`, or 8092.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub websocket_port: Option<u16>,
}

impl AccessFile {
    /// Fills in the defaults and checks every value.
    ///
    /// `listeners` are the ports the Warden makes the supervised Iggy server listen on. A port
    /// left out here takes the listener's port, and a port given here must match it: a guard on
    /// another port would leave Iggy's real listener open to every source.
    pub fn validate(&self, listeners: Option<Ports>) -> Result<Firewall, String> {
        let nft = self
            .nft
            .clone()
            .unwrap_or_else(|| PathBuf::from(NFT_DEFAULT));
        if !nft.is_absolute() {
            return Err(format!(
                "nft = {:?} is not an absolute path; give the full path of the nft command, such as {NFT_DEFAULT}",
                nft.display().to_string()
            ));
        }
        let table = self
            .table
            .clone()
            .unwrap_or_else(|| TABLE_DEFAULT.to_owned());
        validate_table_name(&table).map_err(|reason| format!("table: {reason}"))?;
        let defaults = listeners.unwrap_or_default();
        let port = |field: &str, given: Option<u16>, default: u16| {
            match (given, listeners) {
            (Some(port), Some(_)) if port != default => Err(format!(
                "{field} = {port} differs from port {default} that the iggy component listens on; remove {field}, since it defaults to the component's port"
            )),
            _ => Ok(given.unwrap_or(default)),
        }
        };
        let ports = Ports {
            tcp: port("tcp_port", self.tcp_port, defaults.tcp)?,
            quic: port("quic_port", self.quic_port, defaults.quic)?,
            http: port("http_port", self.http_port, defaults.http)?,
            websocket: port("websocket_port", self.websocket_port, defaults.websocket)?,
        };
        ports.validate()?;
        Ok(Firewall { nft, table, ports })
    }
}

/// Error from changing the firewall.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FirewallError {
    /// The rule set could not be rendered.
    #[error("cannot render access rules version {version}: {reason}")]
    Render {
        /// Version of the rule set.
        version: u64,
        /// The reason.
        reason: String,
    },
    /// nft could not be started or fed.
    #[error(
        "cannot run {nft}: {source}; install nftables or set [access] nft in the bootstrap file"
    )]
    Spawn {
        /// The command.
        nft: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A table of that name exists and the Warden did not make it.
    #[error("table inet {table} exists and Warden did not create it, so Warden leaves it alone; set [access] table in the bootstrap file to a name of its own")]
    NotOwned {
        /// The table name.
        table: String,
    },
    /// nft could not list the table.
    #[error("{nft} failed to list table inet {table} (exit status {status}): {stderr}")]
    List {
        /// The command.
        nft: String,
        /// The table name.
        table: String,
        /// Its exit status.
        status: String,
        /// Its standard error output, cut to 2,000 characters.
        stderr: String,
    },
    /// nft rejected the script, so the table is unchanged.
    #[error("{nft} failed to apply access rules version {version} (exit status {status}), so the previous rules stay in place: {stderr}")]
    Refused {
        /// The command.
        nft: String,
        /// Version of the rule set.
        version: u64,
        /// Its exit status.
        status: String,
        /// Its standard error output, cut to 2,000 characters.
        stderr: String,
    },
}

/// The Warden's nftables table: where it is and which ports it guards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firewall {
    nft: PathBuf,
    table: String,
    ports: Ports,
}

impl Firewall {
    /// Returns the nft command.
    pub fn nft(&self) -> &Path {
        &self.nft
    }

    /// Returns the table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Returns the guarded ports.
    pub fn ports(&self) -> Ports {
        self.ports
    }

    /// Returns the table as nft lists it, or `None` if it does not exist. Blocks until nft
    /// exits.
    pub fn list(&self) -> Result<Option<String>, FirewallError> {
        let nft = self.nft.display().to_string();
        let output = Command::new(&self.nft)
            .args(["list", "table", "inet", &self.table])
            .stdin(Stdio::null())
            .output()
            .map_err(|source| FirewallError::Spawn {
                nft: nft.clone(),
                source,
            })?;
        if output.status.success() {
            return Ok(Some(String::from_utf8_lossy(&output.stdout).into_owned()));
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("No such file or directory") {
            return Ok(None);
        }
        Err(FirewallError::List {
            nft,
            table: self.table.clone(),
            status: output.status.to_string(),
            stderr: cut(&stderr),
        })
    }

    /// Replaces the table with the rule set in one transaction and returns the new table as
    /// nft lists it. It rejects a table of the same name that it did not create.
    /// Blocks until nft exits.
    pub fn apply(&self, rules: &RuleSet) -> Result<Option<String>, FirewallError> {
        if let Some(existing) = self.list()? {
            if !existing.contains(OWNER_MARK) {
                return Err(FirewallError::NotOwned {
                    table: self.table.clone(),
                });
            }
        }
        let script =
            render(&self.table, &self.ports, rules).map_err(|reason| FirewallError::Render {
                version: rules.version,
                reason,
            })?;
        let nft = self.nft.display().to_string();
        let spawn_error = |source| FirewallError::Spawn {
            nft: nft.clone(),
            source,
        };
        let mut child = Command::new(&self.nft)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_error)?;
        if let Some(mut stdin) = child.stdin.take() {
            match stdin.write_all(script.as_bytes()) {
                // nft exited before it read the script, and its exit status gives the reason.
                Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {}
                other => other.map_err(spawn_error)?,
            }
        }
        let output = child.wait_with_output().map_err(spawn_error)?;
        if output.status.success() {
            return self.list();
        }
        Err(FirewallError::Refused {
            nft,
            version: rules.version,
            status: output.status.to_string(),
            stderr: cut(&String::from_utf8_lossy(&output.stderr)),
        })
    }
}

/// Returns the first 2,000 characters of a command's error output, trimmed.
fn cut(stderr: &str) -> String {
    stderr
        .chars()
        .take(2000)
        .collect::<String>()
        .trim()
        .to_owned()
}

/// Carries out an access core's effects in order and stops at the first failure. Returns the
/// table as nft listed it after the last application, if there was one.
pub async fn carry_out(
    effects: Vec<AccessEffect>,
    store: &TaskStore,
    firewall: &Firewall,
) -> Result<Option<String>, String> {
    let mut listing = None;
    for effect in effects {
        match effect {
            AccessEffect::Persist(record) => store
                .persist_access(&record)
                .await
                .map_err(|error| error.to_string())?,
            AccessEffect::Apply(rules) => {
                let firewall = firewall.clone();
                listing = tokio::task::spawn_blocking(move || firewall.apply(&rules))
                    .await
                    .map_err(|error| format!("the nft thread failed: {error}"))?
                    .map_err(|error| error.to_string())?;
            }
        }
    }
    Ok(listing)
}

/// Puts the stored access rules, or none on a new node, in place before anything else runs,
/// so the Iggy ports are closed to every source no rule allows from the Warden's start on.
/// Returns the core and the table as nft listed it.
pub async fn start(
    store: &TaskStore,
    firewall: &Firewall,
    now: UnixMillis,
) -> Result<(AccessCore, Option<String>), String> {
    let stored = store.load_access().map_err(|error| error.to_string())?;
    let (core, effects) = AccessCore::start(stored, now);
    let listing = carry_out(effects, store, firewall).await?;
    Ok((core, listing))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_iggy_ports_and_the_warden_table() {
        let firewall = AccessFile::default().validate(None).unwrap();
        assert_eq!(firewall.nft(), Path::new(NFT_DEFAULT));
        assert_eq!(firewall.table(), TABLE_DEFAULT);
        assert_eq!(firewall.ports(), Ports::default());
    }

    #[test]
    fn relative_nft_path_refused() {
        let file = AccessFile {
            nft: Some("nft".into()),
            ..AccessFile::default()
        };
        assert!(file.validate(None).unwrap_err().contains("absolute"));
    }

    #[test]
    fn table_name_with_script_refused() {
        let file = AccessFile {
            table: Some("warden { }\nflush ruleset".into()),
            ..AccessFile::default()
        };
        assert!(file.validate(None).unwrap_err().contains("table"));
    }

    #[test]
    fn clashing_ports_refused() {
        let file = AccessFile {
            http_port: Some(8090),
            ..AccessFile::default()
        };
        assert!(file.validate(None).unwrap_err().contains("8090"));
    }

    #[test]
    fn ports_follow_the_iggy_listeners() {
        let listeners = Ports {
            tcp: 18090,
            quic: 18080,
            http: 13000,
            websocket: 18092,
        };
        let firewall = AccessFile::default().validate(Some(listeners)).unwrap();
        assert_eq!(firewall.ports(), listeners);

        let same = AccessFile {
            tcp_port: Some(18090),
            ..AccessFile::default()
        };
        assert_eq!(same.validate(Some(listeners)).unwrap().ports(), listeners);
    }

    #[test]
    fn port_other_than_listener_refused() {
        let file = AccessFile {
            quic_port: Some(8080),
            ..AccessFile::default()
        };
        let listeners = Ports {
            quic: 18080,
            ..Ports::default()
        };
        let error = file.validate(Some(listeners)).unwrap_err();
        assert!(error.contains("quic_port = 8080"), "{error}");
        assert!(error.contains("18080"), "{error}");
    }

    #[test]
    fn missing_nft_names_the_command() {
        let file = AccessFile {
            nft: Some("/nonexistent/nft".into()),
            ..AccessFile::default()
        };
        let firewall = file.validate(None).unwrap();
        let rules = RuleSet {
            version: 1,
            open: Vec::new(),
        };
        let error = firewall.apply(&rules).unwrap_err().to_string();
        assert!(error.contains("/nonexistent/nft"), "{error}");
    }
}
