//! A cluster whose nodes guard listening TCP ports with access rules, for the access-rule
//! tests. The broker, the control plane, the Wardens and the listeners all run in the "node"
//! namespace of a pair. The "peer" namespace plays a client.

use std::collections::BTreeMap;
use std::net::{IpAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use warden::access::AccessFile;
use warden_bus::messages::{AccessRule, Protocol};
use warden_bus::UnixMillis;
use warden_control_plane::core::issue::ActionRequest;
use warden_testkit::netns::{find_tool, tcp_reaches, End, Namespaces, NODE_V4, PEER_V4};
use warden_testkit::{free_port, wait_until};

use super::Cluster;

/// Time to wait for a TCP handshake between two namespaces on one machine.
pub const PROBE: Duration = Duration::from_millis(400);

/// Runs `scenario` on a thread inside the node namespace of a fresh pair. Processes and
/// threads it starts stay in that namespace.
pub fn in_node_namespace(scenario: impl FnOnce(&Namespaces) + Send + 'static) {
    let pair = Arc::new(Namespaces::create());
    let inside = Arc::clone(&pair);
    std::thread::spawn(move || {
        inside.enter(End::Node);
        scenario(&inside);
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
}

/// Returns the nft table of a node's Warden.
pub fn table(node: &str) -> String {
    format!("warden_{node}")
}

/// Returns the path of the real nft command.
pub fn real_nft() -> std::path::PathBuf {
    find_tool("nft").expect("nft is installed")
}

/// Returns a rule for the peer's address.
pub fn peer(protocol: Protocol, expires_at: Option<UnixMillis>) -> AccessRule {
    AccessRule {
        cidr: format!("{PEER_V4}/32"),
        protocol,
        expires_at,
    }
}

/// A cluster whose nodes each guard a TCP port of their own.
pub struct Guarded {
    pub cluster: Cluster,
    ports: BTreeMap<String, (u16, TcpListener)>,
}

impl Guarded {
    /// Starts a cluster with node n1, whose Warden guards a listening TCP port with `nft`.
    pub fn start(nft: &Path) -> Self {
        let mut guarded = Self {
            cluster: Cluster::start(),
            ports: BTreeMap::new(),
        };
        guarded.add_node("n1", nft);
        guarded
    }

    /// Registers `node` with an `[access]` table of its own and a listener on its TCP port.
    pub fn add_node(&mut self, node: &str, nft: &Path) {
        let port = free_port();
        let listener = TcpListener::bind(("0.0.0.0", port)).unwrap();
        let nft = nft.to_owned();
        let name = table(node);
        self.cluster.add_node_with(node, move |bootstrap| {
            bootstrap.access = Some(AccessFile {
                nft: Some(nft),
                table: Some(name),
                tcp_port: Some(port),
                quic_port: Some(free_port()),
                http_port: Some(free_port()),
                websocket_port: Some(free_port()),
            });
        });
        self.ports.insert(node.to_owned(), (port, listener));
    }

    /// Returns whether the peer reaches n1's port.
    pub fn reaches(&self, pair: &Namespaces) -> bool {
        self.node_reaches(pair, "n1")
    }

    /// Returns whether the peer reaches `node`'s port.
    pub fn node_reaches(&self, pair: &Namespaces, node: &str) -> bool {
        let (port, _) = self.ports.get(node).expect("node added");
        tcp_reaches(pair, IpAddr::V4(NODE_V4), *port, PROBE)
    }

    /// Issues a rule set to n1 and returns the task id.
    pub fn apply(&self, version: u64, rules: Vec<AccessRule>) -> String {
        let issued = self.cluster.issue(
            Some("n1"),
            ActionRequest::ApplyAccessRules { version, rules },
        );
        issued.first().unwrap().id.clone()
    }

    /// Starts n1's Warden and waits until its first rule set closes the port.
    pub fn start_warden(&mut self, pair: &Namespaces) {
        self.start_node(pair, "n1");
    }

    /// Starts `node`'s Warden and waits until its first rule set closes the port.
    pub fn start_node(&mut self, pair: &Namespaces, node: &str) {
        self.cluster.start_warden(node, &[]);
        wait_until(
            &format!("the Warden of {node} to close its port"),
            Duration::from_secs(20),
            || !self.node_reaches(pair, node),
        );
    }
}
