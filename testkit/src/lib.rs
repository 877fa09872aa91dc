//! Test support shared by the workspace's integration tests.
//!
//! - [`NatsServer`] starts a real `nats-server` (2.10 or newer) with JetStream on a free
//!   loopback port, in its own temporary store directory, and stops it on drop.
//!   [`NatsServer::start_with_config`] starts one from a configuration file instead, with a
//!   client port and a WebSocket port.
//! - [`Process`] runs a workspace binary with its output in a log file and kills it on drop.
//! - [`wait_until`] polls a condition with a deadline.
//! - [`tls`] is a TLS client for the Warden's own listener.
//!
//! This crate panics with instructions when its environment is not usable, because it only
//! runs inside tests.

#![forbid(unsafe_code)]
#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

use std::fs::File;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

pub mod netns;
pub mod tls;

/// Minimum nats-server version: the KV and consumer APIs async-nats uses need 2.10.
const NATS_VERSION_MIN: (u32, u32) = (2, 10);

const INSTALL_HINT: &str = "install a current server with ./deploy/install-nats.sh \
(it places nats-server in .tools/bin), or set NATS_SERVER_BIN to a nats-server 2.10 or newer";

/// Root of the Cargo workspace.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit lives one level below the workspace root")
        .to_path_buf()
}

/// First port [`free_port`] hands out: below Linux's default ephemeral range (32768 to
/// 60999), from which outgoing connections take their local ports.
const FREE_PORT_FIRST: u16 = 12_000;
/// One past the last port [`free_port`] hands out.
const FREE_PORT_END: u16 = 32_768;

static NEXT_FREE_PORT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
///
/// The port comes from below the ephemeral range, so no outgoing connection of another test
/// can take it before the process it is meant for binds it. Each call in a process gets a
/// different port, starting at an offset drawn from the process id.
pub fn free_port() -> u16 {
    let span = u32::from(FREE_PORT_END - FREE_PORT_FIRST);
    let start = std::process::id().wrapping_mul(7919) % span;
    loop {
        let step = NEXT_FREE_PORT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        assert!(
            step < span,
            "free_port ran out of ports below the ephemeral range"
        );
        let offset = u16::try_from((start + step) % span).expect("the span fits in u16");
        let port = FREE_PORT_FIRST + offset;
        // UDP too, because some tests hand the port to a QUIC or UDP listener.
        let tcp = TcpListener::bind(("127.0.0.1", port)).is_ok();
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok();
        if tcp && udp {
            return port;
        }
    }
}

/// Polls `condition` every 50 ms until it returns true, panicking with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// Finds the nats-server binary and checks that it is new enough.
pub fn nats_server_binary() -> PathBuf {
    let candidates = [
        std::env::var_os("NATS_SERVER_BIN").map(PathBuf::from),
        Some(workspace_root().join(".tools/bin/nats-server")),
        Some(PathBuf::from("nats-server")),
    ];
    for candidate in candidates.into_iter().flatten() {
        let Ok(output) = Command::new(&candidate).arg("--version").output() else {
            continue;
        };
        let text = String::from_utf8_lossy(&output.stdout).to_string();
        let version = parse_version(&text).unwrap_or_else(|| {
            panic!("cannot read the version of {candidate:?} from {text:?}; {INSTALL_HINT}")
        });
        if version < NATS_VERSION_MIN {
            panic!(
                "{candidate:?} is nats-server {}.{}, older than the required {}.{}; {INSTALL_HINT}",
                version.0, version.1, NATS_VERSION_MIN.0, NATS_VERSION_MIN.1
            );
        }
        return candidate;
    }
    panic!("nats-server not found; {INSTALL_HINT}");
}

fn parse_version(text: &str) -> Option<(u32, u32)> {
    let start = text.match_indices('v').map(|(at, _)| at + 1).find(|&at| {
        text.get(at..at + 1)
            .is_some_and(|next| next.chars().all(|c| c.is_ascii_digit()))
    })?;
    let mut parts = text.get(start..)?.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// A nats-server with JetStream on a free loopback port. Stopped on drop.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    websocket_port: Option<u16>,
    config_path: Option<PathBuf>,
    store: tempfile::TempDir,
    log_path: PathBuf,
}

/// Ports and directory for a configuration passed to [`NatsServer::start_with_config`]: two free
/// loopback ports and a private directory for the JetStream store, resolver files and
/// certificates.
#[derive(Debug, Clone)]
pub struct ServerSetup {
    /// Port for NATS clients, free on 127.0.0.1 a moment ago.
    pub client_port: u16,
    /// Port for WebSocket clients, free on 127.0.0.1 a moment ago.
    pub websocket_port: u16,
    /// Temporary directory that lives as long as the server.
    pub dir: PathBuf,
}

impl NatsServer {
    /// Starts a server and waits until it accepts connections.
    pub fn start() -> Self {
        let store = tempfile::tempdir().expect("create a JetStream store directory");
        let log_path = store.path().join("nats-server.log");
        let mut server = Self {
            child: None,
            port: free_port(),
            websocket_port: None,
            config_path: None,
            store,
            log_path,
        };
        server.spawn();
        server
    }

    /// Starts a server from the configuration text that `configure` returns, and waits until
    /// both ports of the [`ServerSetup`] accept TCP connections.
    ///
    /// `configure` may write files (certificates, keys) into the setup's directory. The
    /// configuration must listen on 127.0.0.1 at both ports; this function panics with the
    /// server's log if the server exits instead.
    pub fn start_with_config(configure: impl FnOnce(&ServerSetup) -> String) -> Self {
        let store = tempfile::tempdir().expect("create a nats-server directory");
        let setup = ServerSetup {
            client_port: free_port(),
            websocket_port: free_port(),
            dir: store.path().to_path_buf(),
        };
        let config_path = store.path().join("nats-server.conf");
        std::fs::write(&config_path, configure(&setup)).expect("write the nats-server config");
        let log_path = store.path().join("nats-server.log");
        let mut server = Self {
            child: None,
            port: setup.client_port,
            websocket_port: Some(setup.websocket_port),
            config_path: Some(config_path),
            store,
            log_path,
        };
        server.spawn();
        server
    }

    /// Returns the client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Returns the client URL with the `tls` scheme, for a configuration that puts TLS on the
    /// client port.
    pub fn tls_url(&self) -> String {
        format!("tls://127.0.0.1:{}", self.port)
    }

    /// Returns the WebSocket URL with the `wss` scheme, for a server started with
    /// [`NatsServer::start_with_config`] whose configuration puts TLS on the WebSocket port.
    pub fn wss_url(&self) -> String {
        let port = self
            .websocket_port
            .expect("only a server started with start_with_config has a WebSocket port");
        format!("wss://127.0.0.1:{port}")
    }

    /// Returns the client port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server, keeping its store.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same store.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Reads the server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let binary = nats_server_binary();
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open the nats-server log file");
        let mut command = Command::new(binary);
        match &self.config_path {
            Some(path) => {
                command.arg("-c").arg(path);
            }
            None => {
                command
                    .args([
                        "-a",
                        "127.0.0.1",
                        "-p",
                        &self.port.to_string(),
                        "-js",
                        "-sd",
                    ])
                    .arg(self.store.path().join("jetstream"));
            }
        }
        let child = command
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let ports: Vec<u16> = std::iter::once(self.port)
            .chain(self.websocket_port)
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        for port in ports {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                if let Some(status) = self
                    .child
                    .as_mut()
                    .and_then(|child| child.try_wait().ok().flatten())
                {
                    panic!("nats-server exited with {status}; log:\n{}", self.log());
                }
                if Instant::now() > deadline {
                    panic!(
                        "nats-server did not accept connections on port {port} within 10 s; log:\n{}",
                        self.log()
                    );
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Finds a binary of this workspace in the target directory of the running test.
///
/// `cargo test --workspace` builds every binary of the workspace before it runs tests.
pub fn workspace_binary(name: &str) -> PathBuf {
    let test_executable = std::env::current_exe().expect("locate the test executable");
    // Test executables live in target/<profile>/deps; binaries in target/<profile>.
    let profile_dir = test_executable
        .parent()
        .and_then(Path::parent)
        .expect("test executable is inside target/<profile>/deps");
    let path = profile_dir.join(name);
    if !path.exists() {
        panic!("{path:?} not found; build the workspace binaries first with `cargo build --workspace --bins`");
    }
    path
}

/// Returns a path from which other users can run the workspace binary `name`: the binary
/// itself when every directory above it lets others through, otherwise a copy.
///
/// Tests that start a process as another user (`nobody`) need this, since the checkout may sit
/// under a directory only its owner may enter, such as `/root`. Copies go to
/// `warden-test-bins-<uid>` in the temporary directory, named by size and modification time, so
/// each build is copied once.
pub fn workspace_binary_for_others(name: &str) -> PathBuf {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};

    let path = workspace_binary(name);
    let passable = path
        .ancestors()
        .skip(1)
        .all(|dir| std::fs::metadata(dir).is_ok_and(|metadata| metadata.mode() & 0o001 != 0));
    if passable {
        return path;
    }
    let me = nix::unistd::geteuid().as_raw();
    let dir = std::env::temp_dir().join(format!("warden-test-bins-{me}"));
    match std::fs::DirBuilder::new().mode(0o755).create(&dir) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(error) => panic!("create {}: {error}", dir.display()),
    }
    // Binaries copied here run as root in some tests, so no other user may plant one here.
    let metadata = std::fs::symlink_metadata(&dir).expect("read the copy directory");
    assert!(
        metadata.is_dir() && metadata.uid() == me && metadata.mode() & 0o022 == 0,
        "{} must be a directory of uid {me} that no one else can write to; remove it",
        dir.display()
    );
    let source = std::fs::metadata(&path).expect("read the binary's metadata");
    let copy = dir.join(format!(
        "{name}-{}-{}.{}",
        source.size(),
        source.mtime(),
        source.mtime_nsec()
    ));
    if !copy.exists() {
        let partial = dir.join(format!("{name}.partial-{}", std::process::id()));
        std::fs::copy(&path, &partial).expect("copy the binary");
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755))
            .expect("make the copy executable");
        std::fs::rename(&partial, &copy).expect("move the copy into place");
    }
    copy
}

/// A child process whose stdout and stderr go to a log file. Killed on drop.
pub struct Process {
    name: String,
    child: Option<Child>,
    log_path: PathBuf,
}

impl Process {
    /// Starts `command` with its output in `log_path`.
    pub fn spawn(name: &str, mut command: Command, log_path: &Path) -> Self {
        let log = File::options()
            .create(true)
            .append(true)
            .open(log_path)
            .unwrap_or_else(|error| panic!("open log file {log_path:?}: {error}"));
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("start {name}: {error}"));
        Self {
            name: name.to_owned(),
            child: Some(child),
            log_path: log_path.to_path_buf(),
        }
    }

    /// Process id, if still running.
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The output so far.
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = File::open(&self.log_path) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    /// Kills the process with SIGKILL and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the process to exit on its own, returning its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.code();
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{} did not exit within {timeout:?}; log:\n{}",
            self.name,
            self.log()
        );
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Lists the listening sockets a process owns: TCP and UDP sockets bound for incoming traffic
/// (IPv4 and IPv6) and listening Unix sockets, one description per socket.
///
/// Reads the socket inodes from `/proc/<pid>/fd` and matches them against the kernel's socket
/// tables, which list every socket of the network namespace.
pub fn listening_sockets(pid: u32) -> Vec<String> {
    let mut inodes = std::collections::BTreeSet::new();
    let fd_dir = format!("/proc/{pid}/fd");
    for entry in std::fs::read_dir(&fd_dir)
        .unwrap_or_else(|error| panic!("read {fd_dir}: {error}"))
        .flatten()
    {
        if let Ok(target) = std::fs::read_link(entry.path()) {
            let text = target.to_string_lossy().to_string();
            if let Some(inode) = text
                .strip_prefix("socket:[")
                .and_then(|rest| rest.strip_suffix(']'))
            {
                inodes.insert(inode.to_owned());
            }
        }
    }
    let mut found = Vec::new();
    // TCP state 0A is LISTEN; a UDP socket with no remote address (state 07) receives from anyone.
    for (table, listening_state) in [("tcp", "0A"), ("tcp6", "0A"), ("udp", "07"), ("udp6", "07")] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            if *state == listening_state && inodes.contains(*inode) {
                found.push(format!("{table} {local} inode {inode}"));
            }
        }
    }
    // In /proc/net/unix, flag 00010000 (__SO_ACCEPTCON) marks a listening socket.
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/unix")).unwrap_or_default();
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(flags), Some(inode)) = (fields.get(3), fields.get(6)) else {
            continue;
        };
        if *flags == "00010000" && inodes.contains(*inode) {
            found.push(format!(
                "unix {} inode {inode}",
                fields.get(7).unwrap_or(&"(unnamed)")
            ));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_differ_and_avoid_the_ephemeral_range() {
        let first = free_port();
        let second = free_port();
        assert_ne!(first, second);
        for port in [first, second] {
            assert!((FREE_PORT_FIRST..FREE_PORT_END).contains(&port), "{port}");
        }
    }

    #[test]
    fn finds_a_listening_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let sockets = listening_sockets(std::process::id());
        let expected = format!(":{port:04X}");
        assert!(
            sockets.iter().any(|socket| socket.contains(&expected)),
            "{sockets:?} lacks port {port}"
        );
        drop(listener);
    }

    #[test]
    fn reads_nats_version() {
        assert_eq!(parse_version("nats-server: v2.15.1\n"), Some((2, 15)));
        assert_eq!(parse_version("nats-server: v2.9.10"), Some((2, 9)));
        assert_eq!(parse_version("garbage"), None);
    }
}
