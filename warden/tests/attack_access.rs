//! Attacks on the access rules: hostile rule documents and bootstrap values, odd address forms,
//! spoofed and IPv6 traffic, expiries at the edges of the kernel's clock, and a host table that
//! shares the Warden's table name. The kernel checks run the real nft inside network
//! namespaces that each test creates. Needs root, iproute2, nftables and python3 (for the
//! spoofed packet).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use support::{node_with_table, Node, PROBE};
use warden::access::AccessFile;
use warden::core::access::{parse_cidr, render, AccessCore, AccessEffect, AccessRecord, RuleSet};
use warden::store::TaskStore;
use warden_bus::messages::{AccessRule, AccessRules, Protocol, ACCESS_RULES_MAX};
use warden_bus::{TaskAction, UnixMillis};
use warden_testkit::free_port;
use warden_testkit::netns::{find_tool, End, NODE_V4, NODE_V6, PEER_V4, PEER_V6};

const TABLE: &str = "warden_attack";

fn node() -> Node {
    node_with_table(TABLE)
}

fn rule(cidr: &str, protocol: Protocol, expires_at: Option<UnixMillis>) -> AccessRule {
    AccessRule {
        cidr: cidr.into(),
        protocol,
        expires_at,
    }
}

fn peer_v4(protocol: Protocol, expires_at: Option<UnixMillis>) -> AccessRule {
    rule(&format!("{PEER_V4}/32"), protocol, expires_at)
}

fn now() -> UnixMillis {
    warden_actors::clock::system().now()
}

fn seconds_from_now(seconds: i64) -> UnixMillis {
    let now = i64::try_from(now().0).unwrap();
    UnixMillis(u64::try_from(now + seconds * 1000).unwrap())
}

fn node_v4() -> IpAddr {
    IpAddr::V4(NODE_V4)
}

fn node_v6() -> IpAddr {
    IpAddr::V6(NODE_V6)
}

/// Source texts that carry nft syntax or are not plain CIDRs. Every one must be rejected before
/// any text reaches nft.
const HOSTILE_CIDRS: &[&str] = &[
    "10.0.0.0/8 accept",
    "10.0.0.0/8\nflush ruleset",
    "10.0.0.0/8; flush ruleset",
    "10.0.0.0/8 tcp dport 22 accept #",
    "0.0.0.0/0 } ; table inet x { chain c { type filter hook input priority -1; accept; } }",
    "{ 0.0.0.0/0 }",
    "10.0.0.0/8\"",
    "fe80::1%vnode/64",
    "fe80::1%1/128",
    "010.0.0.1/32",
    "10.0.0.1/33",
    "::/129",
    "10.0.0.1/-1",
    "10.0.0.1/ 8",
    "10.0.0.1 /8",
    " 10.0.0.1/8",
    "10.0.0.1/256",
    "10.0.0.1/99999999999999999999",
    "10.0.0.1",
    "10.0.0.1/8/8",
    "10.0.0.1/",
    "/8",
    "",
    "10.0.0.1/８",
    "localhost/32",
    "0x0a000001/32",
    "10.1/16",
    "[::1]/128",
    "::1/128\0",
];

#[test]
fn cidr_with_nft_syntax_rejected() {
    for cidr in HOSTILE_CIDRS {
        assert!(parse_cidr(cidr).is_err(), "parse_cidr took {cidr:?}");
        let action = TaskAction::ApplyAccessRules(AccessRules {
            version: 1,
            rules: vec![rule(cidr, Protocol::Tcp, None)],
        });
        assert!(action.validate().is_err(), "the task check took {cidr:?}");
        let (mut core, _) = AccessCore::start(None, now());
        let document = AccessRules {
            version: 1,
            rules: vec![rule(cidr, Protocol::Tcp, None)],
        };
        assert!(
            core.install(&document, now()).is_err(),
            "the core took {cidr:?}"
        );
        assert_eq!(core.version(), 0, "a rejected document changed the version");
        let set = RuleSet {
            version: 1,
            open: vec![rule(cidr, Protocol::Tcp, None)],
        };
        let ports = AccessFile::default().validate(None).unwrap().ports();
        assert!(render(TABLE, &ports, &set).is_err(), "render took {cidr:?}");
    }
}

#[test]
fn odd_cidr_forms_render_canonically() {
    let cases = [
        ("10.0.0.0/+8", "10.0.0.0/8"),
        ("10.0.0.0/0008", "10.0.0.0/8"),
        ("10.77.0.99/24", "10.77.0.0/24"),
        ("255.255.255.255/1", "128.0.0.0/1"),
        ("10.1.2.3/0", "0.0.0.0/0"),
        ("::ffff:10.0.0.1/128", "::ffff:10.0.0.1/128"),
        ("2001:DB8::FFFF/32", "2001:db8::/32"),
        ("fd77::1/0", "::/0"),
    ];
    let ports = AccessFile::default().validate(None).unwrap().ports();
    for (input, canonical) in cases {
        let network = parse_cidr(input).unwrap();
        assert_eq!(network.to_string(), canonical, "{input}");
        let script = render(
            TABLE,
            &ports,
            &RuleSet {
                version: 1,
                open: vec![rule(input, Protocol::Tcp, None)],
            },
        )
        .unwrap();
        assert!(
            script.contains(&format!(" saddr {canonical} tcp dport")),
            "{input}: {script}"
        );
        if input != canonical {
            assert!(!script.contains(input), "{input} reached the script");
        }
    }
}

#[test]
fn host_bits_widen_only_to_the_prefix() {
    let node = node();
    // Another host of the peer's /24, written with host bits: the rule covers the /24.
    node.apply(1, vec![rule("10.77.0.99/24", Protocol::Tcp, None)]);
    assert!(node.reaches(node_v4()));
    // The same address as a /32 does not cover the peer.
    node.apply(2, vec![rule("10.77.0.99/32", Protocol::Tcp, None)]);
    assert!(!node.reaches(node_v4()));
    // A neighbouring /25 that leaves out the peer's address keeps the port closed.
    node.apply(3, vec![rule("10.77.0.128/25", Protocol::Tcp, None)]);
    assert!(!node.reaches(node_v4()));
}

#[test]
fn mapped_ipv6_rule_opens_nothing() {
    let node = node();
    node.apply(
        1,
        vec![
            rule(&format!("::ffff:{PEER_V4}/128"), Protocol::Tcp, None),
            rule(&format!("::ffff:{PEER_V4}/128"), Protocol::Quic, None),
            rule("::ffff:0.0.0.0/96", Protocol::Tcp, None),
        ],
    );
    assert!(!node.reaches(node_v4()), "an IPv4-mapped rule opened IPv4");
    assert!(!node.reaches(node_v6()), "an IPv4-mapped rule opened IPv6");
    assert!(!node.datagram_arrives(node_v4()));
    // The dual-stack listener also takes the node's IPv4 address in mapped form.
    let mapped = IpAddr::V6(NODE_V4.to_ipv6_mapped());
    let port = node.tcp;
    let reached = node.pair.run_in(End::Peer, move || {
        TcpStream::connect_timeout(&SocketAddr::new(mapped, port), PROBE).is_ok()
    });
    assert!(!reached, "the mapped destination got past the firewall");
}

#[test]
fn ipv4_catch_all_leaves_ipv6_closed() {
    let node = node();
    node.apply(
        1,
        vec![
            rule("0.0.0.0/0", Protocol::Tcp, None),
            rule("0.0.0.0/0", Protocol::Quic, None),
        ],
    );
    assert!(node.reaches(node_v4()));
    assert!(node.datagram_arrives(node_v4()));
    assert!(!node.reaches(node_v6()), "TCP over IPv6 got in");
    assert!(!node.datagram_arrives(node_v6()), "UDP over IPv6 got in");

    // The reverse: an IPv6 catch-all leaves IPv4 closed.
    node.apply(
        2,
        vec![
            rule("::/0", Protocol::Tcp, None),
            rule("::/0", Protocol::Quic, None),
        ],
    );
    assert!(node.reaches(node_v6()));
    assert!(node.datagram_arrives(node_v6()));
    assert!(!node.reaches(node_v4()), "TCP over IPv4 got in");
    assert!(!node.datagram_arrives(node_v4()), "UDP over IPv4 got in");
    // A rule for the peer's IPv6 address does not open the peer's IPv4 address either.
    node.apply(
        3,
        vec![rule(&format!("{PEER_V6}/128"), Protocol::Tcp, None)],
    );
    assert!(!node.reaches(node_v4()));
}

/// Sends one UDP datagram "probe" from the peer namespace with a forged IPv4 source through a
/// raw socket.
fn send_spoofed_datagram(node: &Node, source: Ipv4Addr, destination: Ipv4Addr, port: u16) {
    let script = r#"
import socket, struct, sys
source, destination, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
payload = b"probe"
udp = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload
header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     socket.inet_aton(source), socket.inet_aton(destination))
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
raw.sendto(header + udp, (destination, 0))
"#;
    let output = Command::new(find_tool("ip").unwrap())
        .args(["netns", "exec", node.pair.name(End::Peer), "python3", "-c"])
        .arg(script)
        .args([
            source.to_string(),
            destination.to_string(),
            port.to_string(),
        ])
        .output()
        .expect("python3 is needed to forge a packet");
    assert!(
        output.status.success(),
        "forging a datagram failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn spoofed_loopback_source_dropped() {
    let node = node();
    // Make the node's kernel deliver packets with a loopback source that arrive on the veth, as
    // a host with route_localnet set would. The firewall alone must then stop them.
    for setting in [
        "net.ipv4.conf.all.route_localnet=1",
        "net.ipv4.conf.vnode.route_localnet=1",
        "net.ipv4.conf.all.accept_local=1",
        "net.ipv4.conf.vnode.accept_local=1",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.vnode.rp_filter=0",
    ] {
        node.sysctl(setting);
    }
    let loopback = Ipv4Addr::LOCALHOST;
    // A genuine datagram first, so the peer has the node's MAC address: the peer would ask
    // for it with the forged loopback source, and the node ignores such an ARP request.
    assert!(node.datagram_arrives(node_v4()));
    // Without the table the forged datagram arrives: the probe can tell.
    send_spoofed_datagram(&node, loopback, NODE_V4, node.quic);
    assert!(
        node.received_probe(),
        "the kernel dropped the forged datagram by itself, so this test shows nothing"
    );

    node.apply(1, vec![peer_v4(Protocol::Tcp, None)]);
    send_spoofed_datagram(&node, loopback, NODE_V4, node.quic);
    assert!(
        !node.received_probe(),
        "a datagram with a loopback source from the veth passed the loopback rule"
    );
    // Forging the node's own address passes neither.
    send_spoofed_datagram(&node, NODE_V4, NODE_V4, node.quic);
    assert!(
        !node.received_probe(),
        "a datagram with the node's own source got in"
    );
}

/// Applies a rule set straight to the kernel, bypassing the core, so the kernel's own
/// `meta time` match decides.
fn kernel_keeps_open(node: &Node, version: u64, expires_at: UnixMillis) -> bool {
    node.apply(version, vec![peer_v4(Protocol::Tcp, Some(expires_at))]);
    node.reaches(node_v4())
}

#[test]
fn kernel_expiry_holds_across_byte_patterns() {
    let node = node();
    // Offsets that change the low, middle and high bytes of the nanosecond time, to catch a
    // comparison in the wrong byte order.
    let offsets = [1_i64 << 8, 1 << 16, 1 << 24, 1 << 28];
    let mut version = 0;
    for offset in offsets {
        version += 1;
        assert!(
            !kernel_keeps_open(&node, version, seconds_from_now(-offset)),
            "a rule that expired {offset} s ago is open"
        );
        version += 1;
        assert!(
            kernel_keeps_open(&node, version, seconds_from_now(offset)),
            "a rule expiring in {offset} s is closed"
        );
    }
    version += 1;
    assert!(
        !kernel_keeps_open(&node, version, seconds_from_now(-1)),
        "a rule that expired 1 s ago is open"
    );
    version += 1;
    assert!(
        !kernel_keeps_open(&node, version, UnixMillis(0)),
        "a rule that expired at the epoch is open"
    );
}

#[test]
fn far_future_expiry_keeps_rule_open() {
    let node = node();
    // 2600-01-01, past the last second that nftables' 64-bit nanosecond time can hold
    // (2554-07-21). The core counts such a rule open, so the kernel must too.
    let year_2600 = UnixMillis(19_880_899_200_000);
    let (mut core, _) = AccessCore::start(None, now());
    let effects = core
        .install(
            &AccessRules {
                version: 1,
                rules: vec![peer_v4(Protocol::Tcp, Some(year_2600))],
            },
            now(),
        )
        .unwrap();
    let open = effects
        .iter()
        .find_map(|effect| match effect {
            AccessEffect::Apply(set) => Some(set.open.clone()),
            AccessEffect::Persist(_) => None,
        })
        .unwrap();
    assert_eq!(open.len(), 1, "the core closed the rule");
    node.apply(1, open);
    assert!(
        node.reaches(node_v4()),
        "the kernel closed a rule that expires in 2600: {}",
        node.listing(TABLE)
    );
    assert!(kernel_keeps_open(&node, 2, UnixMillis(u64::MAX)));
}

#[test]
fn core_closes_rule_expiring_now() {
    let at = UnixMillis(1_800_000_000_000);
    let (mut core, _) = AccessCore::start(None, at);
    let document = AccessRules {
        version: 1,
        rules: vec![
            peer_v4(Protocol::Tcp, Some(UnixMillis(at.0 - 1))),
            peer_v4(Protocol::Http, Some(at)),
            peer_v4(Protocol::Quic, Some(UnixMillis(at.0 + 1))),
        ],
    };
    core.install(&document, at).unwrap();
    let open = &core.applied().unwrap().open;
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open.first().unwrap().protocol, Protocol::Quic);
    // Replaying the same document after the clock went back does not reopen the closed rules.
    core.tick(UnixMillis(at.0 + 5));
    core.install(&document, UnixMillis(at.0 - 60_000)).unwrap();
    assert!(core.applied().unwrap().open.is_empty());
}

#[test]
fn rule_count_over_limit_rejected() {
    let many = |count: usize| AccessRules {
        version: 1,
        rules: (0..count)
            .map(|i| {
                rule(
                    &format!("10.{}.{}.0/24", i / 256, i % 256),
                    Protocol::Tcp,
                    None,
                )
            })
            .collect(),
    };
    let over = many(ACCESS_RULES_MAX + 1);
    assert!(TaskAction::ApplyAccessRules(over.clone())
        .validate()
        .is_err());
    let (mut core, _) = AccessCore::start(None, now());
    assert!(
        core.install(&over, now()).is_err(),
        "the core took {} rules",
        over.rules.len()
    );
    assert!(TaskAction::ApplyAccessRules(many(ACCESS_RULES_MAX))
        .validate()
        .is_ok());
}

#[test]
fn duplicate_rules_at_limit_apply() {
    let node = node();
    let rules = vec![peer_v4(Protocol::Tcp, None); ACCESS_RULES_MAX];
    assert!(TaskAction::ApplyAccessRules(AccessRules {
        version: 1,
        rules: rules.clone(),
    })
    .validate()
    .is_ok());
    node.apply(1, rules);
    assert!(node.reaches(node_v4()));
    assert!(!node.datagram_arrives(node_v4()));
    let listing = node.listing(TABLE);
    assert_eq!(
        listing.matches(" saddr ").count(),
        ACCESS_RULES_MAX,
        "{listing}"
    );
}

#[test]
fn hostile_table_names_and_ports_rejected() {
    let names = [
        "",
        "Warden",
        "warden table",
        "warden{}",
        "warden\n",
        "warden;flush ruleset",
        "warden-x",
        "wärden",
        "1warden",
        "_warden",
        "a23456789012345678901234567890123",
    ];
    for name in names {
        let file = AccessFile {
            table: Some(name.into()),
            ..AccessFile::default()
        };
        assert!(file.validate(None).is_err(), "table {name:?} was taken");
    }

    let zero = [
        AccessFile {
            tcp_port: Some(0),
            ..AccessFile::default()
        },
        AccessFile {
            quic_port: Some(0),
            ..AccessFile::default()
        },
        AccessFile {
            http_port: Some(0),
            ..AccessFile::default()
        },
        AccessFile {
            websocket_port: Some(0),
            ..AccessFile::default()
        },
    ];
    for file in zero {
        assert!(file.validate(None).is_err(), "{file:?} was taken");
    }

    let clashes = [
        (Some(3000), None, None),
        (None, Some(8092), None),
        (Some(9000), Some(9000), None),
        (None, None, Some(8090)),
    ];
    for (tcp, http, websocket) in clashes {
        let file = AccessFile {
            tcp_port: tcp,
            http_port: http,
            websocket_port: websocket,
            ..AccessFile::default()
        };
        assert!(file.validate(None).is_err(), "{file:?} was taken");
    }

    // TCP and UDP ports live apart, so QUIC may share the TCP port's number.
    let shared = AccessFile {
        quic_port: Some(8090),
        ..AccessFile::default()
    };
    assert!(shared.validate(None).is_ok());

    // A mistyped key is an error, not a silently ignored setting.
    assert!(toml::from_str::<AccessFile>("tabel = \"filter\"\n").is_err());
    assert!(toml::from_str::<AccessFile>("tcp_port = 70000\n").is_err());
    assert!(toml::from_str::<AccessFile>("tcp_port = -1\n").is_err());
}

#[test]
fn host_table_with_same_name_kept() {
    // The host's own firewall uses the common name `inet filter`, as Debian's
    // /etc/nftables.conf does, and an operator gives the Warden that name too.
    let node = node_with_table("filter");
    let host_table = "table inet filter {\n  chain input {\n    type filter hook input priority 0; policy accept;\n    tcp dport 22 drop\n  }\n}\n";
    let nft = find_tool("nft").unwrap();
    let name = node.pair.name(End::Node).to_owned();
    let mut child = Command::new(find_tool("ip").unwrap())
        .args(["netns", "exec", &name])
        .arg(&nft)
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(host_table.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());

    let firewall = node.firewall.clone();
    let result = node.pair.run_in(End::Node, move || {
        firewall.apply(&RuleSet {
            version: 1,
            open: Vec::new(),
        })
    });
    let listing = node.listing("filter");
    assert!(
        listing.contains("tcp dport 22 drop"),
        "the Warden replaced a table it does not own ({result:?}): {listing}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn stored_rules_applied_after_crash() {
    // A crash right after the record was flushed and before nft ran: the next start applies
    // the stored record, not what the table last held.
    let node = node();
    node.apply(1, Vec::new());
    let dir = tempfile::tempdir().unwrap();
    let store = TaskStore::open(dir.path()).unwrap();
    store
        .persist_access(&AccessRecord {
            version: 2,
            rules: vec![peer_v4(Protocol::Tcp, None)],
            closed_through: UnixMillis(0),
        })
        .await
        .unwrap();
    drop(store);

    let path = dir.path().to_owned();
    let firewall = node.firewall.clone();
    let version = node.pair.run_in(End::Node, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let store = TaskStore::open(&path).unwrap();
            warden::access::start(&store, &firewall, now())
                .await
                .unwrap()
                .0
                .version()
        })
    });
    assert_eq!(version, 2);
    assert!(node.listing(TABLE).contains("access rules version 2"));
    assert!(node.reaches(node_v4()));
}

#[test]
fn failing_nft_leaves_table_unchanged() {
    let node = node();
    node.apply(1, Vec::new());
    let broken = AccessFile {
        nft: Some("/bin/false".into()),
        table: Some(TABLE.into()),
        tcp_port: Some(node.tcp),
        quic_port: Some(node.quic),
        http_port: Some(free_port()),
        websocket_port: Some(free_port()),
    }
    .validate(None)
    .unwrap();
    let result = node.pair.run_in(End::Node, move || {
        broken.apply(&RuleSet {
            version: 2,
            open: vec![rule("0.0.0.0/0", Protocol::Tcp, None)],
        })
    });
    assert!(result.is_err());
    assert!(node.listing(TABLE).contains("access rules version 1"));
    assert!(!node.reaches(node_v4()));
}

/// Connects from the peer to the node's TCP port and returns both ends.
fn connect(node: &Node) -> (TcpStream, TcpStream) {
    let port = node.tcp;
    let client = node.pair.run_in(End::Peer, move || {
        TcpStream::connect_timeout(&SocketAddr::new(IpAddr::V4(NODE_V4), port), PROBE).unwrap()
    });
    let (server, _) = node.listener.accept().unwrap();
    server.set_read_timeout(Some(PROBE * 2)).unwrap();
    (client, server)
}

fn delivered(client: &mut TcpStream, server: &mut TcpStream) -> bool {
    client.write_all(b"x").unwrap();
    let mut byte = [0u8; 1];
    match server.read(&mut byte) {
        Ok(1) => true,
        Ok(_) => false,
        Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Err(error) => panic!("reading from the connection failed: {error}"),
    }
}

#[test]
fn expiry_cuts_established_connection() {
    let node = node();
    let expiry = seconds_from_now(2);
    node.apply(1, vec![peer_v4(Protocol::Tcp, Some(expiry))]);
    let (mut client, mut server) = connect(&node);
    assert!(delivered(&mut client, &mut server));

    // Replacing the table with the rule still in it keeps the connection.
    node.apply(2, vec![peer_v4(Protocol::Tcp, Some(expiry))]);
    assert!(delivered(&mut client, &mut server));

    while now() < expiry {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !delivered(&mut client, &mut server),
        "data still flows on a connection whose rule expired"
    );
}
