//! Two network namespaces joined by a veth pair, for tests of what the firewall lets through.
//!
//! The "node" namespace has 10.77.0.2/24 and fd77::2/64 on its end, the "peer" namespace
//! 10.77.0.1/24 and fd77::1/64 on the other. Code runs inside a namespace on a thread of its
//! own, which [`Namespaces::run_in`] enters with `setns`; processes that thread starts stay in
//! the namespace. Creating namespaces needs root, `ip` (iproute2) and, for firewall tests,
//! `nft` (nftables).

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sched::{setns, CloneFlags};

/// The node end's IPv4 address.
pub const NODE_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// The peer end's IPv4 address.
pub const PEER_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// The node end's IPv6 address.
pub const NODE_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2);
/// The peer end's IPv6 address.
pub const PEER_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1);

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One end of the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The namespace that plays the node.
    Node,
    /// The namespace that plays another host.
    Peer,
}

/// A node and a peer namespace, deleted on drop.
#[derive(Debug)]
pub struct Namespaces {
    node: String,
    peer: String,
}

/// Panics with what to install unless this process can create namespaces and run nft.
pub fn require_tools() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the firewall tests create network namespaces, which needs root; run the tests as root (CI does)"
    );
    for (tool, package) in [("ip", "iproute2"), ("nft", "nftables")] {
        assert!(
            find_tool(tool).is_some(),
            "{tool} is missing; install {package} (`apt-get install {package}`), as .ci/run does"
        );
    }
}

/// Path of a command in /usr/sbin, /sbin or /usr/bin.
pub fn find_tool(name: &str) -> Option<std::path::PathBuf> {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|path| path.exists())
}

fn ip(args: &[&str]) {
    let output = Command::new(find_tool("ip").unwrap_or_else(|| "ip".into()))
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("cannot run ip {args:?}: {error}"));
    assert!(
        output.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Namespaces {
    /// Creates the pair and brings both ends and both loopbacks up.
    pub fn create() -> Self {
        require_tools();
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let id = std::process::id();
        let pair = Self {
            node: format!("wnode-{id}-{n}"),
            peer: format!("wpeer-{id}-{n}"),
        };
        ip(&["netns", "add", &pair.node]);
        ip(&["netns", "add", &pair.peer]);
        ip(&[
            "link", "add", "vnode", "netns", &pair.node, "type", "veth", "peer", "name", "vpeer",
            "netns", &pair.peer,
        ]);
        for (namespace, device, v4, v6) in [
            (&pair.node, "vnode", NODE_V4, NODE_V6),
            (&pair.peer, "vpeer", PEER_V4, PEER_V6),
        ] {
            ip(&["-n", namespace, "link", "set", "lo", "up"]);
            ip(&[
                "-n",
                namespace,
                "addr",
                "add",
                &format!("{v4}/24"),
                "dev",
                device,
            ]);
            ip(&[
                "-n",
                namespace,
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                device,
                "nodad",
            ]);
            ip(&["-n", namespace, "link", "set", device, "up"]);
        }
        pair
    }

    /// Name of one end's namespace.
    pub fn name(&self, end: End) -> &str {
        match end {
            End::Node => &self.node,
            End::Peer => &self.peer,
        }
    }

    /// Runs `work` on a new thread inside one end's namespace and returns its result.
    pub fn run_in<T: Send + 'static>(
        &self,
        end: End,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let path = format!("/run/netns/{}", self.name(end));
        std::thread::spawn(move || {
            enter(&path);
            work()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    /// Moves the calling thread into one end's namespace for good. Threads and processes it
    /// starts afterwards are in the namespace too.
    pub fn enter(&self, end: End) {
        enter(&format!("/run/netns/{}", self.name(end)));
    }

    /// Runs `nft` with `args` inside one end's namespace and returns its standard output.
    pub fn nft(&self, end: End, args: &[&str]) -> String {
        let output = Command::new(find_tool("ip").unwrap_or_else(|| "ip".into()))
            .args(["netns", "exec", self.name(end), "nft"])
            .args(args)
            .output()
            .unwrap_or_else(|error| panic!("cannot run nft {args:?}: {error}"));
        assert!(
            output.status.success(),
            "nft {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

fn enter(path: &str) {
    let file = File::open(path).unwrap_or_else(|error| panic!("cannot open {path}: {error}"));
    setns(file, CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|error| panic!("cannot enter network namespace {path}: {error}"));
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in [&self.node, &self.peer] {
            let _ = Command::new(find_tool("ip").unwrap_or_else(|| "ip".into()))
                .args(["netns", "del", name])
                .output();
        }
    }
}

/// Returns whether a TCP connection from the peer end to `address:port` on the node end succeeds
/// within `timeout`. A dropped SYN shows as a timeout.
pub fn tcp_reaches(
    pair: &Namespaces,
    address: IpAddr,
    port: u16,
    timeout: std::time::Duration,
) -> bool {
    pair.run_in(End::Peer, move || {
        std::net::TcpStream::connect_timeout(&(address, port).into(), timeout).is_ok()
    })
}
