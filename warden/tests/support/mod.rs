//! Shared test support. This module: a node network namespace with listeners on the ports that
//! access rules guard, and the Warden's firewall over them, for the tests that send real packets
//! from a peer namespace. [`bootstrap`]: a valid bootstrap file. [`components`]: the component
//! actor over a test node directory.

#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

pub mod bootstrap;
pub mod components;

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::process::Command;
use std::time::Duration;

use warden::access::{AccessFile, Firewall};
use warden::core::access::RuleSet;
use warden_bus::messages::AccessRule;
use warden_testkit::free_port;
use warden_testkit::netns::{find_tool, tcp_reaches, End, Namespaces};

/// Time to wait for a TCP handshake or a datagram between two namespaces on one machine.
pub const PROBE: Duration = Duration::from_millis(400);

/// A node namespace whose TCP and HTTP ports have listeners and whose QUIC port has a UDP
/// socket, guarded by a firewall.
pub struct Node {
    pub pair: Namespaces,
    pub firewall: Firewall,
    pub tcp: u16,
    pub quic: u16,
    pub http: u16,
    pub udp: UdpSocket,
    /// The listener on the TCP port, for tests that accept connections.
    pub listener: TcpListener,
    _http_listener: TcpListener,
}

/// Creates a node namespace whose firewall uses the table `table`.
pub fn node_with_table(table: &str) -> Node {
    let pair = Namespaces::create();
    let (tcp, quic, http, websocket) = (free_port(), free_port(), free_port(), free_port());
    let firewall = AccessFile {
        nft: find_tool("nft"),
        table: Some(table.into()),
        tcp_port: Some(tcp),
        quic_port: Some(quic),
        http_port: Some(http),
        websocket_port: Some(websocket),
    }
    .validate(None)
    .unwrap();
    // Sockets keep the namespace they were made in.
    let (listener, http_listener, udp) = pair.run_in(End::Node, move || {
        (
            TcpListener::bind(("::", tcp)).unwrap(),
            TcpListener::bind(("::", http)).unwrap(),
            UdpSocket::bind(("::", quic)).unwrap(),
        )
    });
    udp.set_read_timeout(Some(PROBE)).unwrap();
    Node {
        pair,
        firewall,
        tcp,
        quic,
        http,
        udp,
        listener,
        _http_listener: http_listener,
    }
}

impl Node {
    /// Applies the open rules of `version` with the real nft inside the node namespace.
    pub fn apply(&self, version: u64, open: Vec<AccessRule>) {
        let firewall = self.firewall.clone();
        self.pair
            .run_in(End::Node, move || {
                firewall.apply(&RuleSet { version, open })
            })
            .unwrap();
    }

    /// Returns whether a TCP connection from the peer reaches the TCP port at `address`.
    pub fn reaches(&self, address: IpAddr) -> bool {
        self.reaches_port(address, self.tcp)
    }

    /// Returns whether a TCP connection from the peer reaches `port` at `address`.
    pub fn reaches_port(&self, address: IpAddr, port: u16) -> bool {
        tcp_reaches(&self.pair, address, port, PROBE)
    }

    /// Returns whether a datagram from the peer's address of `address`'s family arrives at the
    /// QUIC port.
    pub fn datagram_arrives(&self, address: IpAddr) -> bool {
        let port = self.quic;
        self.pair.run_in(End::Peer, move || {
            let socket = UdpSocket::bind(("::", 0)).unwrap();
            socket
                .send_to(b"probe", SocketAddr::new(address, port))
                .unwrap();
        });
        self.received_probe()
    }

    /// Returns whether a probe datagram arrives at the QUIC port within [`PROBE`].
    pub fn received_probe(&self) -> bool {
        let mut buffer = [0u8; 16];
        match self.udp.recv_from(&mut buffer) {
            Ok((length, _)) => buffer.get(..length) == Some(b"probe".as_slice()),
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                false
            }
            Err(error) => panic!("receiving the probe failed: {error}"),
        }
    }

    /// Returns the table `table` of the node namespace as nft lists it.
    pub fn listing(&self, table: &str) -> String {
        self.pair.nft(End::Node, &["list", "table", "inet", table])
    }

    /// Sets a kernel setting inside the node namespace.
    pub fn sysctl(&self, setting: &str) {
        let output = Command::new(find_tool("ip").unwrap())
            .args(["netns", "exec", self.pair.name(End::Node), "sysctl", "-w"])
            .arg(setting)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "sysctl -w {setting} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
