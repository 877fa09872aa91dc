//! A component process for supervision tests. Arguments choose its behaviour:
//!
//! - `--http ADDR`: answer every HTTP request on ADDR with 200 (the health check);
//! - `--crash-at-start`: print a line to stderr and exit with code 3;
//! - `--ignore-sigterm`: block SIGTERM, so only SIGKILL ends it;
//! - `--spam N`: print N lines to stdout (every tenth one 5000 bytes long) at start;
//! - `--pid-file PATH`: write its process id to PATH;
//! - `--child-pid-file PATH`: start a `sleep` child in its process group that ignores SIGTERM,
//!   and write the child's process id to PATH;
//! - `--escaped-child-pid-file PATH`: start a `sleep` child in a new session, outside its
//!   process group, and write the child's process id to PATH;
//! - `--read-file PATH` (repeatable): try to read PATH and print `read PATH: ok` or
//!   `read PATH: denied`;
//! - `--escape-codes`: print a line with terminal escape codes and other control characters;
//! - `--listen-delay-ms N`: wait N milliseconds before opening the `--http` address.
//!
//! It prints the `IGGY_*` variables it was given and whether `WARDEN_LAUNCH_ID` is set, then runs
//! until a signal ends it.

#![forbid(unsafe_code)]
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|arg| arg == flag)
            .and_then(|index| args.get(index + 1))
            .cloned()
    };
    let has = |flag: &str| args.iter().any(|arg| arg == flag);

    if has("--ignore-sigterm") {
        // Blocked in the main thread before any other thread exists, so every thread inherits
        // the mask and SIGTERM stays pending for good.
        let mut set = SigSet::empty();
        set.add(Signal::SIGTERM);
        set.thread_block().expect("block SIGTERM");
    }
    if let Some(path) = value("--pid-file") {
        std::fs::write(path, std::process::id().to_string()).expect("write the pid file");
    }
    if let Some(path) = value("--child-pid-file") {
        // The child blocks SIGTERM like its parent would not: only SIGKILL to the group ends it.
        #[allow(clippy::zombie_processes)] // The child outlives this process by design.
        let child = std::process::Command::new("sh")
            .args(["-c", "trap '' TERM; exec sleep 600"])
            .spawn()
            .expect("start the child");
        std::fs::write(path, child.id().to_string()).expect("write the child pid file");
    }
    if let Some(path) = value("--escaped-child-pid-file") {
        // setsid(1) execs in place, since this process does not lead its group.
        #[allow(clippy::zombie_processes)] // The child outlives this process by design.
        let child = std::process::Command::new("setsid")
            .args(["sleep", "600"])
            .spawn()
            .expect("start the escaped child");
        std::fs::write(path, child.id().to_string()).expect("write the escaped child pid file");
    }
    if has("--escape-codes") {
        println!("before\u{1b}[2J\u{1b}]0;title\u{7}\u{0}after\r");
    }
    let mut variables: Vec<(String, String)> = std::env::vars()
        .filter(|(key, _)| key.starts_with("IGGY_") && key != "IGGY_ROOT_PASSWORD")
        .collect();
    variables.sort();
    for (key, value) in variables {
        println!("env {key}={value}");
    }
    if std::env::var_os("IGGY_ROOT_PASSWORD").is_some() {
        println!("env IGGY_ROOT_PASSWORD is set");
    }
    if std::env::var_os("WARDEN_LAUNCH_ID").is_some() {
        println!("env WARDEN_LAUNCH_ID is set");
    }
    println!("env count {}", std::env::vars().count());
    for pair in args.windows(2) {
        if let [flag, path] = pair {
            if flag == "--read-file" {
                let result = if std::fs::read(path).is_ok() {
                    "ok"
                } else {
                    "denied"
                };
                println!("read {path}: {result}");
            }
        }
    }
    if has("--crash-at-start") {
        eprintln!("fatal: crashing at start as asked");
        std::process::exit(3);
    }
    if let Some(count) = value("--spam") {
        let count: usize = count.parse().expect("--spam takes a number");
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        for index in 0..count {
            if index % 10 == 0 {
                writeln!(out, "long {index} {}", "y".repeat(5000)).unwrap();
            } else {
                writeln!(out, "line {index}").unwrap();
            }
        }
        out.flush().unwrap();
    }
    if let Some(address) = value("--http") {
        if let Some(delay) = value("--listen-delay-ms") {
            let delay: u64 = delay.parse().expect("--listen-delay-ms takes a number");
            std::thread::sleep(Duration::from_millis(delay));
        }
        let listener = TcpListener::bind(&address).expect("bind the HTTP address");
        println!("listening on {address}");
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut buffer = [0u8; 1024];
                let _ = stream.read(&mut buffer);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            }
        });
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
