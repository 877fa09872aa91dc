//! The fake component behaves as its flags say. Being an integration test of this package, it
//! also makes `cargo test --workspace` build the `fake-component` binary, which the warden and
//! control-plane supervision tests start.

#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn crash_at_start_exits_with_code_3() {
    let output = Command::new(env!("CARGO_BIN_EXE_fake-component"))
        .arg("--crash-at-start")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("crashing at start"), "{stderr}");
}
