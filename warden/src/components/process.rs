//! Component processes: spawning, output capture, signals and health probes.
//!
//! A component runs in its own process group with a cleared environment (only what
//! [`render_launch`](super::definition::render_launch) put in), no shell, stdin from
//! `/dev/null`, and stdout and stderr piped to the Warden. Output is read line by line; a line
//! longer than [`LOG_LINE_BYTES_MAX`] is cut, and each stream keeps its last
//! [`LOG_RING_LINES`] lines for task failures. Lines waiting to be forwarded are bounded too; the
//! excess is counted as dropped.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use warden_bus::messages::LOG_LINE_BYTES_MAX;

use super::definition::{HealthCheck, LaunchSpec};
use crate::core::component::ExitStatus;

/// Lines kept per stream for task failure reports.
pub const LOG_RING_LINES: usize = 200;
/// Lines waiting to be forwarded, over both streams; more are dropped and counted.
pub const LOG_PENDING_LINES_MAX: usize = 1024;
/// Timeout of one health probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Maximum bytes read of a health check's HTTP response.
const PROBE_RESPONSE_BYTES_MAX: usize = 4096;

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl OutputStream {
    /// Returns `stdout` or `stderr`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// Captured output of one component, shared between the reader tasks and its actor.
#[derive(Debug, Default)]
pub struct CapturedOutput {
    stdout: VecDeque<String>,
    stderr: VecDeque<String>,
    pending: VecDeque<(OutputStream, String)>,
    dropped: u64,
    total_lines: u64,
}

impl CapturedOutput {
    /// Forgets the kept lines of the previous process, so a failure report shows only the
    /// output of the process that failed. Lines still waiting to be forwarded stay.
    pub fn start_process(&mut self) {
        self.stdout.clear();
        self.stderr.clear();
    }

    /// Adds one line, cut to [`LOG_LINE_BYTES_MAX`] bytes on a character boundary.
    pub fn push(&mut self, stream: OutputStream, line: &str) {
        let line = truncate_line(line);
        let ring = match stream {
            OutputStream::Stdout => &mut self.stdout,
            OutputStream::Stderr => &mut self.stderr,
        };
        if ring.len() == LOG_RING_LINES {
            ring.pop_front();
        }
        ring.push_back(line.clone());
        self.total_lines = self.total_lines.saturating_add(1);
        if self.pending.len() == LOG_PENDING_LINES_MAX {
            self.dropped = self.dropped.saturating_add(1);
        } else {
            self.pending.push_back((stream, line));
        }
    }

    /// The last `count` lines of both streams, stderr first, each prefixed with its stream.
    pub fn tail(&self, count: usize) -> Vec<String> {
        let take = |ring: &VecDeque<String>, name: &str| -> Vec<String> {
            ring.iter()
                .skip(ring.len().saturating_sub(count))
                .map(|line| format!("{name}: {line}"))
                .collect()
        };
        let mut lines = take(&self.stderr, "stderr");
        lines.extend(take(&self.stdout, "stdout"));
        lines
    }

    /// Takes up to `max` pending lines of `stream` and the count of lines dropped so far.
    pub fn drain(&mut self, stream: OutputStream, max: usize) -> (Vec<String>, u64) {
        let mut taken = Vec::new();
        let mut kept = VecDeque::with_capacity(self.pending.len());
        while let Some((from, line)) = self.pending.pop_front() {
            if from == stream && taken.len() < max {
                taken.push(line);
            } else {
                kept.push_back((from, line));
            }
        }
        self.pending = kept;
        (taken, std::mem::take(&mut self.dropped))
    }

    /// Lines kept in the ring of `stream`.
    pub fn ring_len(&self, stream: OutputStream) -> usize {
        match stream {
            OutputStream::Stdout => self.stdout.len(),
            OutputStream::Stderr => self.stderr.len(),
        }
    }

    /// Lines seen since the start, kept or not.
    pub fn total_lines(&self) -> u64 {
        self.total_lines
    }

    /// Lines waiting to be forwarded.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

/// Output shared between reader tasks and the actor.
pub type SharedOutput = Arc<Mutex<CapturedOutput>>;

fn truncate_line(line: &str) -> String {
    if line.len() <= LOG_LINE_BYTES_MAX {
        return line.to_owned();
    }
    let mut end = LOG_LINE_BYTES_MAX;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", line.get(..end).unwrap_or_default())
}

/// A started component process.
#[derive(Debug)]
pub struct Spawned {
    /// Its process id, which is also its process group id.
    pub pid: u32,
    /// The child handle to wait on.
    pub child: Child,
}

/// Starts the process described by `spec` in a new process group, with output captured into
/// `output`.
pub fn spawn(spec: &LaunchSpec, output: &SharedOutput) -> std::io::Result<Spawned> {
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .env_clear()
        .envs(&spec.env)
        .process_group(0)
        .current_dir(&spec.working_dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(false);
    if let Some(user) = &spec.user {
        // The standard library also drops the supplementary groups of a root parent here.
        command.uid(user.uid).gid(user.gid);
    }
    let mut child = command.spawn()?;
    let pid = child
        .id()
        .ok_or_else(|| std::io::Error::other("the process exited before its id was read"))?;
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(read_lines(stdout, OutputStream::Stdout, output.clone()));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(read_lines(stderr, OutputStream::Stderr, output.clone()));
    }
    Ok(Spawned { pid, child })
}

/// Reads `reader` until end of file, splitting lines and cutting long ones without buffering
/// more than one line's maximum.
async fn read_lines(
    mut reader: impl AsyncRead + Unpin,
    stream: OutputStream,
    output: SharedOutput,
) {
    let mut buffer = vec![0u8; 8192];
    let mut line: Vec<u8> = Vec::new();
    let mut overflowed = false;
    loop {
        let read = match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        for byte in buffer.iter().take(read) {
            if *byte == b'\n' {
                let mut text = printable(&String::from_utf8_lossy(&line));
                if overflowed {
                    text.push('…');
                }
                push(&output, stream, &text);
                line.clear();
                overflowed = false;
            } else if line.len() < LOG_LINE_BYTES_MAX {
                line.push(*byte);
            } else {
                overflowed = true;
            }
        }
    }
    if !line.is_empty() {
        push(&output, stream, &printable(&String::from_utf8_lossy(&line)));
    }
}

/// Replaces control characters but tab with U+FFFD: the lines end up in task reasons and logs
/// that operators read on terminals, where escape sequences could rewrite the screen.
pub fn printable(line: &str) -> String {
    let line = line.strip_suffix('\r').unwrap_or(line);
    line.chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                '\u{fffd}'
            } else {
                c
            }
        })
        .collect()
}

fn push(output: &SharedOutput, stream: OutputStream, line: &str) {
    // A poisoned lock means a reader panicked while pushing; the data is still usable.
    let mut captured = output
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    captured.push(stream, line);
}

/// Converts the operating system's exit status.
pub fn exit_status(status: std::process::ExitStatus) -> ExitStatus {
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitStatus::Code(code),
        (None, Some(signal)) => ExitStatus::Signal(signal),
        (None, None) => ExitStatus::Code(-1),
    }
}

/// Sends `signal` to the process group `pid`. A group that no longer exists is not an error.
pub fn signal_group(pid: u32, signal: Signal) -> Result<(), String> {
    let Ok(raw) = i32::try_from(pid) else {
        return Err(format!("process id {pid} is out of range"));
    };
    match killpg(Pid::from_raw(raw), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(errno) => Err(format!(
            "sending {signal} to process group {pid} failed: {errno}"
        )),
    }
}

/// Tells whether any live process belongs to process group `pgid`.
///
/// Linux does not hand out a process id while a process group of that id has members, so a
/// group found here is still the one its leader started, even after the leader is gone.
pub fn group_has_members(pgid: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.filter_map(Result::ok).any(|entry| {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|name| name.parse::<u32>().ok()) else {
            return false;
        };
        process_group(pid) == Some(pgid)
    })
}

/// Tells whether the group `pgid` has members while no process has the id `pgid`: the members
/// are left from the group whose leader had that id.
///
/// A live process with the id means the id was reused. Linux reuses it only after the old group
/// emptied, so members of group `pgid` then belong to the new process's group.
pub fn orphaned_group(pgid: u32) -> bool {
    process_start_ticks(pgid).is_none() && group_has_members(pgid)
}

/// Environment variable that carries a launch's id into the component and everything it starts.
///
/// A process can leave its process group with `setsid`, and a Warden can crash after starting a
/// process but before recording its id. Either way the process still inherited this variable, so
/// [`launched_processes`] finds it.
pub const LAUNCH_ID_VARIABLE: &str = "WARDEN_LAUNCH_ID";

/// Returns the live processes whose initial environment contains
/// `LAUNCH_ID_VARIABLE=launch_id`.
///
/// Reads `/proc/<pid>/environ`, which the Warden can read for processes of its own user, and for
/// all when it runs as root. Processes it may not read are skipped: with a Warden that is not
/// root, that includes a component's descendant that runs a set-user-id program.
pub fn launched_processes(launch_id: &str) -> Vec<u32> {
    let expected = format!("{LAUNCH_ID_VARIABLE}={launch_id}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<u32> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
                environ
                    .split(|byte| *byte == 0)
                    .any(|entry| entry == expected.as_bytes())
            })
        })
        .filter(|pid| process_start_ticks(*pid).is_some())
        .collect();
    found.sort_unstable();
    found
}

/// Sends `signal` to each process in `pids`. Processes gone meanwhile are not an error.
pub fn signal_each(pids: &[u32], signal: Signal) {
    for pid in pids {
        if let Ok(raw) = i32::try_from(*pid) {
            let _ = nix::sys::signal::kill(Pid::from_raw(raw), signal);
        }
    }
}

/// Returns the process group of the live process `pid` (field 5 of `/proc/<pid>/stat`), `None`
/// if there is no such process or it is a zombie.
pub fn process_group(pid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = text.rsplit_once(')')?.1.split_whitespace();
    if fields.next()? == "Z" {
        return None;
    }
    fields.nth(1)?.parse().ok()
}

/// Start time of the live process `pid` in clock ticks since boot (field 22 of
/// `/proc/<pid>/stat`), to tell a recorded process from a later one that reuses its id. `None`
/// if there is no such process or it has exited and only waits to be reaped (a zombie).
pub fn process_start_ticks(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in brackets may hold spaces; fields after it are plain.
    let mut fields = text.rsplit_once(')')?.1.split_whitespace();
    if fields.next()? == "Z" {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// Runs one health probe.
pub async fn probe(check: &HealthCheck) -> Result<(), String> {
    match tokio::time::timeout(PROBE_TIMEOUT, probe_inner(check)).await {
        Ok(result) => result,
        Err(_) => Err(format!("health check timed out after {PROBE_TIMEOUT:?}")),
    }
}

async fn probe_inner(check: &HealthCheck) -> Result<(), String> {
    match check {
        HealthCheck::Tcp(address) => connect(*address).await.map(drop),
        HealthCheck::Http { address, path } => {
            let mut stream = connect(*address).await?;
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nUser-Agent: warden\r\n\r\n"
            );
            stream
                .write_all(request.as_bytes())
                .await
                .map_err(|error| format!("sending GET {path} to {address} failed: {error}"))?;
            let mut response = Vec::new();
            let mut chunk = [0u8; 512];
            while response.len() < PROBE_RESPONSE_BYTES_MAX && !response.contains(&b'\n') {
                let read = stream
                    .read(&mut chunk)
                    .await
                    .map_err(|error| format!("reading from {address} failed: {error}"))?;
                if read == 0 {
                    break;
                }
                response.extend_from_slice(chunk.get(..read).unwrap_or_default());
            }
            let text = String::from_utf8_lossy(&response);
            let status_line = text.lines().next().unwrap_or_default();
            let status = status_line.split_whitespace().nth(1).unwrap_or_default();
            if status.starts_with('2') && status.len() == 3 {
                Ok(())
            } else {
                Err(format!(
                    "GET http://{address}{path} answered {:?}, expected a 2xx status",
                    status_line.chars().take(80).collect::<String>()
                ))
            }
        }
    }
}

async fn connect(address: SocketAddr) -> Result<tokio::net::TcpStream, String> {
    tokio::net::TcpStream::connect(address)
        .await
        .map_err(|error| format!("connecting to {address} failed: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_and_pending_are_bounded() {
        let mut output = CapturedOutput::default();
        for index in 0..5_000 {
            output.push(OutputStream::Stdout, &format!("line {index}"));
        }
        assert_eq!(output.ring_len(OutputStream::Stdout), LOG_RING_LINES);
        assert_eq!(output.pending_len(), LOG_PENDING_LINES_MAX);
        assert_eq!(output.total_lines(), 5_000);
        let (lines, dropped) = output.drain(OutputStream::Stdout, 10);
        assert_eq!(lines.len(), 10);
        assert_eq!(lines[0], "line 0");
        assert_eq!(dropped, 5_000 - LOG_PENDING_LINES_MAX as u64);
        assert_eq!(
            output.drain(OutputStream::Stdout, 0).1,
            0,
            "dropped is reset"
        );
        assert_eq!(
            output.tail(2),
            vec!["stdout: line 4998", "stdout: line 4999"]
        );
    }

    #[test]
    fn long_lines_are_cut_on_char_boundary() {
        let mut output = CapturedOutput::default();
        output.push(OutputStream::Stderr, &"é".repeat(LOG_LINE_BYTES_MAX));
        let (lines, _) = output.drain(OutputStream::Stderr, 1);
        assert!(lines[0].len() <= LOG_LINE_BYTES_MAX + '…'.len_utf8());
        assert!(lines[0].ends_with('…'));
    }

    #[tokio::test]
    async fn reader_splits_and_bounds_lines() {
        let output = SharedOutput::default();
        let long = "x".repeat(LOG_LINE_BYTES_MAX * 3);
        let input = format!("first\n{long}\nlast without newline");
        read_lines(input.as_bytes(), OutputStream::Stdout, output.clone()).await;
        let (lines, _) = output.lock().unwrap().drain(OutputStream::Stdout, 10);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], "first");
        assert_eq!(lines[1].len(), LOG_LINE_BYTES_MAX + '…'.len_utf8());
        assert_eq!(lines[2], "last without newline");
    }

    #[test]
    fn own_start_time_is_readable() {
        let ticks = process_start_ticks(std::process::id());
        assert!(ticks.is_some());
        assert_eq!(ticks, process_start_ticks(std::process::id()));
    }

    #[tokio::test]
    async fn probes_report_refused_and_http_status() {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp_address = tcp.local_addr().unwrap();
        assert!(probe(&HealthCheck::Tcp(tcp_address)).await.is_ok());
        drop(tcp);
        let refused = probe(&HealthCheck::Tcp(tcp_address)).await.unwrap_err();
        assert!(refused.contains("connecting to"), "{refused}");

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for status in ["200 OK", "503 Service Unavailable"] {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut buffer = [0u8; 1024];
                let _ = socket.read(&mut buffer).await.unwrap();
                let response = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
                socket.write_all(response.as_bytes()).await.unwrap();
            }
        });
        let check = HealthCheck::Http {
            address,
            path: "/healthz".into(),
        };
        assert_eq!(probe(&check).await, Ok(()));
        let error = probe(&check).await.unwrap_err();
        assert!(error.contains("503"), "{error}");
        server.await.unwrap();
    }
}
