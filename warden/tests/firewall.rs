//! The rendered access rules against the real kernel: nftables in a network namespace that the
//! test creates, with real packets from a second namespace. Needs root, iproute2 and nftables.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use support::{node_with_table, Node, PROBE};
use warden_bus::messages::{AccessRule, Protocol};
use warden_bus::UnixMillis;
use warden_testkit::netns::{End, NODE_V4, NODE_V6, PEER_V4, PEER_V6};

fn node() -> Node {
    node_with_table("warden_test")
}

fn allow(
    address: IpAddr,
    prefix: u8,
    protocol: Protocol,
    expires_at: Option<UnixMillis>,
) -> AccessRule {
    AccessRule {
        cidr: format!("{address}/{prefix}"),
        protocol,
        expires_at,
    }
}

fn now() -> UnixMillis {
    warden_actors::clock::system().now()
}

#[test]
fn ports_closed_until_a_rule_opens_them() {
    let node = node();
    let v4 = IpAddr::V4(NODE_V4);
    // Without the table the port is open: the probe can tell open from closed.
    assert!(node.reaches(v4));

    node.apply(1, Vec::new());
    assert!(!node.reaches(v4));
    assert!(!node.reaches_port(v4, node.http));
    assert!(!node.datagram_arrives(v4));

    node.apply(2, vec![allow(IpAddr::V4(PEER_V4), 32, Protocol::Tcp, None)]);
    assert!(node.reaches(v4));
    // The rule opens its own protocol's port only.
    assert!(!node.reaches_port(v4, node.http));
    assert!(!node.datagram_arrives(v4));

    node.apply(
        3,
        vec![allow(IpAddr::V4(PEER_V4), 24, Protocol::Quic, None)],
    );
    assert!(node.datagram_arrives(v4));
    assert!(!node.reaches(v4), "replacing the table closes the old rule");
}

#[test]
fn rule_for_another_source_keeps_port_closed() {
    let node = node();
    node.apply(
        1,
        vec![allow("192.0.2.0".parse().unwrap(), 24, Protocol::Tcp, None)],
    );
    assert!(!node.reaches(IpAddr::V4(NODE_V4)));
    // An IPv4 rule does not open the port to the peer's IPv6 address.
    node.apply(2, vec![allow(IpAddr::V4(PEER_V4), 32, Protocol::Tcp, None)]);
    assert!(!node.reaches(IpAddr::V6(NODE_V6)));
    node.apply(
        3,
        vec![allow(IpAddr::V6(PEER_V6), 128, Protocol::Tcp, None)],
    );
    assert!(node.reaches(IpAddr::V6(NODE_V6)));
}

#[test]
fn kernel_closes_expired_rule_alone() {
    let node = node();
    let v4 = IpAddr::V4(NODE_V4);
    // Expiries are rounded down to whole seconds, so the rule lasts between 2 and 3 s.
    let expiry = now().saturating_add(Duration::from_secs(3));
    node.apply(
        1,
        vec![
            allow(IpAddr::V4(PEER_V4), 32, Protocol::Tcp, Some(expiry)),
            allow(IpAddr::V4(PEER_V4), 32, Protocol::Http, None),
        ],
    );
    assert!(node.reaches(v4));
    // Nothing touches the table from here on.
    while now() < expiry {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!node.reaches(v4));
    assert!(node.reaches_port(v4, node.http));
}

#[test]
fn loopback_always_reaches_the_ports() {
    let node = node();
    node.apply(1, Vec::new());
    let port = node.tcp;
    let reached = node.pair.run_in(End::Node, move || {
        std::net::TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), PROBE)
            .is_ok()
    });
    assert!(reached);
}

#[test]
fn table_holds_only_the_rendered_rules() {
    let node = node();
    node.apply(
        7,
        vec![allow("10.1.2.3".parse().unwrap(), 8, Protocol::Http, None)],
    );
    let listing = node
        .pair
        .nft(End::Node, &["list", "table", "inet", "warden_test"]);
    assert!(listing.contains("access rules version 7"), "{listing}");
    assert!(
        listing.contains(&format!(
            "ip saddr 10.0.0.0/8 tcp dport {} accept",
            node.http
        )),
        "{listing}"
    );
    node.apply(8, Vec::new());
    let listing = node
        .pair
        .nft(End::Node, &["list", "table", "inet", "warden_test"]);
    assert!(!listing.contains("10.0.0.0/8"), "{listing}");
    assert!(listing.contains("access rules version 8"), "{listing}");
}
