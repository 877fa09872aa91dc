//! Access rules: which sources may reach the Iggy ports, decided free of I/O.
//!
//! The control plane sends the whole rule set as one versioned, signed document
//! ([`AccessRules`]). [`AccessCore`] keeps the installed document, decides which of its rules
//! are still open at a given time, and returns [`AccessEffect`]s. The caller renders the open
//! rules with [`render`] and applies them to nftables in one transaction.
//!
//! Guarantees, each checked by the tests below:
//! - every rule set the core returns to apply is the rules of one installed document minus the
//!   rules expired at the node's clock;
//! - a document never replaces one with a higher version;
//! - an expired rule stays closed when the clock steps back, also across a restart, because
//!   the latest time at which rules were closed is persisted;
//! - with no document, every Iggy port is closed to other hosts.
//!
//! The rendered table repeats each expiry as an nftables `meta time` match, so the kernel
//! closes a rule at its expiry by itself, even when the Warden is not running.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use warden_bus::messages::{
    AccessRule, AccessRules, Protocol, ACCESS_RULES_MAX, DOCUMENT_VERSION_MAX,
};
use warden_bus::UnixMillis;

/// The ports that access rules open, by protocol. The bootstrap checks that they match the
/// supervised Iggy server's listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ports {
    /// Iggy's TCP listener.
    pub tcp: u16,
    /// Iggy's QUIC listener (UDP).
    pub quic: u16,
    /// Iggy's HTTP API.
    pub http: u16,
    /// Iggy's WebSocket listener.
    pub websocket: u16,
}

impl Default for Ports {
    /// Returns the Iggy server's default ports.
    fn default() -> Self {
        Self {
            tcp: 8090,
            quic: 8080,
            http: 3000,
            websocket: 8092,
        }
    }
}

impl Ports {
    /// Returns the transport and port a protocol listens on.
    pub fn of(&self, protocol: Protocol) -> (Transport, u16) {
        match protocol {
            Protocol::Tcp => (Transport::Tcp, self.tcp),
            Protocol::Quic => (Transport::Udp, self.quic),
            Protocol::Http => (Transport::Tcp, self.http),
            Protocol::Websocket => (Transport::Tcp, self.websocket),
        }
    }

    /// Lists every protocol with its transport and port.
    pub fn all(&self) -> [(Protocol, Transport, u16); 4] {
        [
            Protocol::Tcp,
            Protocol::Quic,
            Protocol::Http,
            Protocol::Websocket,
        ]
        .map(|protocol| {
            let (transport, port) = self.of(protocol);
            (protocol, transport, port)
        })
    }

    /// Checks that every port is set and that no two protocols on one transport share a port.
    pub fn validate(&self) -> Result<(), String> {
        let all = self.all();
        for (protocol, transport, port) in all {
            if port == 0 {
                return Err(format!(
                    "the {protocol:?} port is 0; set a port from 1 to 65535"
                ));
            }
            let clash = all.iter().find(|(other, other_transport, other_port)| {
                *other != protocol && *other_transport == transport && *other_port == port
            });
            if let Some((other, _, _)) = clash {
                return Err(format!(
                    "the {protocol:?} and {other:?} ports are both {transport:?} {port}; give each its own port"
                ));
            }
        }
        Ok(())
    }
}

/// The transport protocol of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Transport {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Transport {
    fn keyword(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// The installed access document, as persisted in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRecord {
    /// Version of the installed document; 0 before the first one.
    pub version: u64,
    /// The document's rules, as signed, expired ones included.
    pub rules: Vec<AccessRule>,
    /// The latest node time at which rules were closed for expiry. A rule that expired by
    /// then stays closed even if the clock later reads an earlier time.
    pub closed_through: UnixMillis,
}

impl AccessRecord {
    /// Returns the record of a node that has not received a document.
    pub fn empty() -> Self {
        Self {
            version: 0,
            rules: Vec::new(),
            closed_through: UnixMillis(0),
        }
    }
}

/// The rules to put in place: those of one document that are open at a given time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    /// Version of the document they come from.
    pub version: u64,
    /// The open rules, in the document's order.
    pub open: Vec<AccessRule>,
}

/// Something the caller must do, in order. The caller stops at the first failure and rebuilds
/// the core from the store with [`AccessCore::start`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessEffect {
    /// Render the rule set and apply it to the firewall in one transaction.
    Apply(RuleSet),
    /// Write the record and flush it.
    Persist(AccessRecord),
}

/// Error from installing a document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    /// Its version is below the installed one, or equal with other rules.
    #[error("access rules version {offered} is not above the installed version {installed}; issue a higher version")]
    Stale {
        /// The offered version.
        offered: u64,
        /// The installed version.
        installed: u64,
    },
    /// It breaks a limit of the wire format.
    #[error("access rules are invalid: {0}")]
    Invalid(String),
}

/// The access-rule state machine of one node.
#[derive(Debug, Clone)]
pub struct AccessCore {
    record: AccessRecord,
    /// The rule set last returned to apply; `None` until the first application.
    applied: Option<RuleSet>,
}

impl AccessCore {
    /// Rebuilds the core from the stored record, or from nothing on a new node, and returns
    /// the effects that put the open rules in place. The firewall's content after a restart
    /// is unknown, so the rule set is always applied.
    pub fn start(stored: Option<AccessRecord>, now: UnixMillis) -> (Self, Vec<AccessEffect>) {
        let mut core = Self {
            record: stored.unwrap_or_else(AccessRecord::empty),
            applied: None,
        };
        let effects = core.reconcile(now, false);
        (core, effects)
    }

    /// Returns the version of the installed document, 0 if none.
    pub fn version(&self) -> u64 {
        self.record.version
    }

    /// Returns the installed record.
    pub fn record(&self) -> &AccessRecord {
        &self.record
    }

    /// Returns the rule set last returned to apply.
    pub fn applied(&self) -> Option<&RuleSet> {
        self.applied.as_ref()
    }

    /// Returns the earliest expiry of an open rule, if any: the next time a tick changes
    /// something unless the clock steps.
    pub fn next_expiry(&self) -> Option<UnixMillis> {
        self.applied
            .as_ref()?
            .open
            .iter()
            .filter_map(|rule| rule.expires_at)
            .min()
    }

    /// Installs a document that the task core accepted. A version equal to the installed one
    /// is taken only with the same rules, as an interrupted task running again.
    pub fn install(
        &mut self,
        document: &AccessRules,
        now: UnixMillis,
    ) -> Result<Vec<AccessEffect>, AccessError> {
        validate(document)?;
        let installed = self.record.version;
        let same = document.version == installed && document.rules == self.record.rules;
        if document.version < installed || (document.version == installed && !same) {
            return Err(AccessError::Stale {
                offered: document.version,
                installed,
            });
        }
        if !same {
            // Expiry is judged afresh for a new document: the operator chose its expiries
            // knowing what time it is.
            self.record = AccessRecord {
                version: document.version,
                rules: document.rules.clone(),
                closed_through: UnixMillis(0),
            };
        }
        // The firewall must match the document even where the open rules look alike.
        self.applied = None;
        Ok(self.reconcile(now, true))
    }

    /// Forgets what was applied, so the next [`tick`](Self::tick) applies the open rules again.
    /// A caller whose application failed calls it, since the firewall's content is unknown.
    pub fn forget_applied(&mut self) {
        self.applied = None;
    }

    /// Closes the rules that expired by `now`; returns nothing when nothing changed.
    pub fn tick(&mut self, now: UnixMillis) -> Vec<AccessEffect> {
        self.reconcile(now, false)
    }

    /// Computes the open rules at `now` and returns the effects that put them in place, if they
    /// differ from what was applied. The record is persisted first when it changed or when
    /// `persist` is set, so that a restart never applies an older document or reopens a closed
    /// rule.
    fn reconcile(&mut self, now: UnixMillis, persist: bool) -> Vec<AccessEffect> {
        let through = now.max(self.record.closed_through);
        let expected = RuleSet {
            version: self.record.version,
            open: open_rules(&self.record.rules, through),
        };
        if self.applied.as_ref() == Some(&expected) {
            return Vec::new();
        }
        let mut effects = Vec::with_capacity(2);
        let expired_some = expected.open.len() < self.record.rules.len();
        if expired_some && through > self.record.closed_through {
            self.record.closed_through = through;
            effects.push(AccessEffect::Persist(self.record.clone()));
        } else if persist {
            effects.push(AccessEffect::Persist(self.record.clone()));
        }
        effects.push(AccessEffect::Apply(expected.clone()));
        self.applied = Some(expected);
        effects
    }
}

/// Returns the rules still open at `now`: those without an expiry or expiring after it.
pub fn open_rules(rules: &[AccessRule], now: UnixMillis) -> Vec<AccessRule> {
    rules
        .iter()
        .filter(|rule| rule.expires_at.is_none_or(|expiry| expiry > now))
        .cloned()
        .collect()
}

/// Checks a document against the wire format's limits, as the task check does, so the core
/// does not rely on its caller for them.
fn validate(document: &AccessRules) -> Result<(), AccessError> {
    if document.version == 0 || document.version > DOCUMENT_VERSION_MAX {
        return Err(AccessError::Invalid(format!(
            "version {} is outside 1 to {DOCUMENT_VERSION_MAX}",
            document.version
        )));
    }
    if document.rules.len() > ACCESS_RULES_MAX {
        return Err(AccessError::Invalid(format!(
            "{} rules is over the maximum of {ACCESS_RULES_MAX}",
            document.rules.len()
        )));
    }
    for rule in &document.rules {
        parse_cidr(&rule.cidr).map_err(AccessError::Invalid)?;
    }
    Ok(())
}

/// A source network, with the host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    /// The network address.
    pub address: IpAddr,
    /// The prefix length.
    pub prefix: u8,
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

/// Parses a CIDR such as `10.0.0.0/8` or `2001:db8::/32` and clears the host bits, so the
/// rendered rule never carries text from the document.
pub fn parse_cidr(cidr: &str) -> Result<Network, String> {
    warden_bus::messages::validate_cidr(cidr)?;
    let (address, prefix) = cidr
        .split_once('/')
        .ok_or_else(|| format!("{cidr:?} has no prefix length"))?;
    let address: IpAddr = address
        .parse()
        .map_err(|_| format!("{cidr:?} has no valid address"))?;
    let prefix: u8 = prefix
        .parse()
        .map_err(|_| format!("{cidr:?} has no valid prefix length"))?;
    let address = match address {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    };
    Ok(Network { address, prefix })
}

/// The last second that nftables' `meta time` can hold: it counts nanoseconds since the epoch
/// in 64 bits, up to 2554-07-21. nft 1.0.6 wraps a later time around to an earlier one, which
/// would close the rule at once, so later expiries are lowered to this one.
const META_TIME_SECONDS_MAX: u64 = u64::MAX / 1_000_000_000;

/// Words in the comment of every table the Warden renders, by which it recognises its own table.
pub const OWNER_MARK: &str = "managed by Warden";

/// Renders the rule set as one nftables script that replaces the table `table` of the `inet`
/// family in one transaction.
///
/// The input chain accepts loopback, accepts each open rule's source on its protocol's port
/// (until its expiry, by the kernel's clock, when it has one), and drops every other packet to
/// the Iggy ports. Other ports are left alone. Expiries are rounded down to whole seconds, so a
/// rule never stays open past its expiry.
pub fn render(table: &str, ports: &Ports, rules: &RuleSet) -> Result<String, String> {
    let mut lines = Vec::new();
    for rule in &rules.open {
        let network = parse_cidr(&rule.cidr)?;
        let family = match network.address {
            IpAddr::V4(_) => "ip",
            IpAddr::V6(_) => "ip6",
        };
        let (transport, port) = ports.of(rule.protocol);
        let expiry = rule
            .expires_at
            .map(|expiry| {
                let seconds = (expiry.0 / 1000).min(META_TIME_SECONDS_MAX);
                format!(" meta time < {seconds}")
            })
            .unwrap_or_default();
        lines.push(format!(
            "    {family} saddr {network} {} dport {port}{expiry} accept",
            transport.keyword()
        ));
    }
    for transport in [Transport::Tcp, Transport::Udp] {
        let mut closed: Vec<u16> = ports
            .all()
            .iter()
            .filter(|(_, other, _)| *other == transport)
            .map(|(_, _, port)| *port)
            .collect();
        closed.sort_unstable();
        closed.dedup();
        let list: Vec<String> = closed.iter().map(u16::to_string).collect();
        lines.push(format!(
            "    {} dport {{ {} }} drop",
            transport.keyword(),
            list.join(", ")
        ));
    }
    // Declaring the table first makes the delete succeed when it does not exist yet; nft runs
    // the whole script as one transaction.
    Ok(format!(
        "table inet {table} {{}}\ndelete table inet {table}\ntable inet {table} {{\n  comment \"access rules version {version}, {OWNER_MARK}\"\n  chain input {{\n    type filter hook input priority filter; policy accept;\n    iif \"lo\" accept\n{body}\n  }}\n}}\n",
        version = rules.version,
        body = lines.join("\n"),
    ))
}

/// Checks an nftables table name: 1 to 32 lowercase letters, digits and underscores, starting
/// with a letter.
pub fn validate_table_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 32
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a table name; use 1 to 32 lowercase letters, digits and underscores, starting with a letter"
        ))
    }
}

#[cfg(test)]
mod tests;
