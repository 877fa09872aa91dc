//! Supervision of real processes: the workspace's `fake-component` binary and a real
//! nats-server, driven through the component actor and the executor.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::StreamExt;
use support::components::{
    alive, command, fake, healthy_args, http_health, read_pid_file, require_root, snapshot,
    wait_environ, wait_gone, wait_phase, Node, Orphan,
};
use warden::actors::components::Request;
use warden::components::installer::{sha256_file, Installer, Release};
use warden::components::process::{process_group, LAUNCH_ID_VARIABLE};
use warden::components::state::{ComponentState, DesiredState, LaunchRecord};
use warden::executor::Executor;
use warden::tls::TlsFiles;
use warden_bus::messages::{Component, ComponentLogs, ComponentPhase};
use warden_bus::{Bus, DeploymentId, NodeId, SignedEnvelope, Subject, TelemetryKind};
use warden_testkit::{free_port, nats_server_binary};

#[actix_rt::test]
async fn start_healthy_then_graceful_stop() {
    let node = Node::new();
    let port = free_port();
    let actor = node.start(node.definition(
        Component::Iggy,
        &fake(),
        healthy_args(port),
        http_health(port),
    ));
    command(&actor, Request::Start).await;
    let running = wait_phase(&actor, ComponentPhase::Running, Duration::from_secs(10)).await;
    let pid = running.pid.unwrap();
    assert!(alive(pid));

    // The environment is cleared but for what the definition renders.
    let tail = running.tail.join("\n");
    assert!(
        tail.contains(&format!(
            "env IGGY_SYSTEM_PATH={}",
            node.path("data").display()
        )),
        "{tail}"
    );
    assert!(
        tail.contains(&format!(
            "env IGGY_CONFIG_PATH={}",
            node.path("config.toml").display()
        )),
        "{tail}"
    );
    assert!(
        tail.contains("env IGGY_TCP_ADDRESS=127.0.0.1:8090"),
        "{tail}"
    );
    // Six IGGY_ variables, the launch id, and nothing inherited: no PATH, HOME or RUST_LOG.
    assert!(tail.contains("env WARDEN_LAUNCH_ID is set"), "{tail}");
    assert!(tail.contains("env count 7"), "{tail}");

    let started = Instant::now();
    command(&actor, Request::Stop).await;
    wait_phase(&actor, ComponentPhase::Stopped, Duration::from_secs(10)).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "SIGTERM should end it at once"
    );
    assert!(!alive(pid));
}

#[actix_rt::test]
async fn restart_replaces_process() {
    let node = Node::new();
    let port = free_port();
    let actor = node.start(node.definition(
        Component::Iggy,
        &fake(),
        healthy_args(port),
        http_health(port),
    ));
    command(&actor, Request::Start).await;
    let first = wait_phase(&actor, ComponentPhase::Running, Duration::from_secs(10))
        .await
        .pid
        .unwrap();
    command(&actor, Request::Restart).await;
    assert_ne!(snapshot(&actor).await.phase, ComponentPhase::Running);
    let second = wait_phase(&actor, ComponentPhase::Running, Duration::from_secs(10))
        .await
        .pid
        .unwrap();
    assert_ne!(first, second);
    assert!(!alive(first));
    assert!(alive(second));
    command(&actor, Request::Stop).await;
    wait_phase(&actor, ComponentPhase::Stopped, Duration::from_secs(10)).await;
}

#[actix_rt::test]
async fn sigterm_ignored_gets_sigkill_after_timeout() {
    let node = Node::new();
    let port = free_port();
    let mut args = healthy_args(port);
    args.push("--ignore-sigterm".into());
    let definition = node.definition(Component::Iggy, &fake(), args, |file| {
        http_health(port)(file);
        file.stop_timeout_secs = Some(2);
    });
    let actor = node.start(definition);
    command(&actor, Request::Start).await;
    let pid = wait_phase(&actor, ComponentPhase::Running, Duration::from_secs(10))
        .await
        .pid
        .unwrap();

    let started = Instant::now();
    command(&actor, Request::Stop).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(
        alive(pid),
        "the process ignores SIGTERM, so it must still run before the timeout"
    );
    assert_eq!(snapshot(&actor).await.phase, ComponentPhase::Stopping);
    wait_phase(&actor, ComponentPhase::Stopped, Duration::from_secs(10)).await;
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(!alive(pid));
}

#[actix_rt::test]
async fn crash_loop_fails_and_stays_down() {
    let node = Node::new();
    let definition = node.definition(
        Component::Connectors,
        &fake(),
        vec!["--crash-at-start".into()],
        |file| {
            file.crash_limit = Some(3);
            file.crash_window_secs = Some(60);
        },
    );
    let actor = node.start(definition);
    command(&actor, Request::Start).await;
    // Three crashes with back-off of 0.25 to 0.5 s, 0.5 to 1 s in between.
    let failed = wait_phase(&actor, ComponentPhase::Failed, Duration::from_secs(10)).await;
    assert!(failed.detail.contains("3 crashes"), "{}", failed.detail);
    assert!(failed.detail.contains("exit code 3"), "{}", failed.detail);
    assert!(
        failed
            .tail
            .iter()
            .any(|line| line.contains("crashing at start")),
        "{:?}",
        failed.tail
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = snapshot(&actor).await;
    assert_eq!(
        later.phase,
        ComponentPhase::Failed,
        "a failed component is not restarted"
    );
    assert_eq!(later.pid, None);
    let desired = ComponentState::open(Component::Connectors, &node.db)
        .unwrap()
        .desired()
        .unwrap();
    assert!(
        !desired.running,
        "a failed component stays down after a Warden restart too"
    );
}

#[test]
fn failure_survives_warden_restart() {
    let node = Node::new();
    let definition = node.definition(
        Component::Connectors,
        &fake(),
        vec!["--crash-at-start".into()],
        |file| {
            file.crash_limit = Some(1);
            file.crash_window_secs = Some(60);
        },
    );
    let first = System::new().block_on({
        let definition = definition.clone();
        let node = &node;
        async move {
            let actor = node.start(definition);
            command(&actor, Request::Start).await;
            wait_phase(&actor, ComponentPhase::Failed, Duration::from_secs(10)).await
        }
    });

    // The next Warden run shows the failure it recorded, until a start task.
    System::new().block_on({
        let node = &node;
        async move {
            let actor = node.start(definition);
            let restored = snapshot(&actor).await;
            assert_eq!(restored.phase, ComponentPhase::Failed);
            assert_eq!(restored.detail, first.detail);
            command(&actor, Request::Stop).await;
            let stopped = snapshot(&actor).await;
            assert_eq!(stopped.phase, ComponentPhase::Stopped);
        }
    });
    let state = ComponentState::open(Component::Connectors, &node.db).unwrap();
    assert_eq!(state.failed().unwrap(), None, "a task clears the failure");
}

#[actix_rt::test]
async fn start_task_fails_with_reason_and_output() {
    let node = Node::new();
    let definition = node.definition(
        Component::Iggy,
        &fake(),
        vec!["--crash-at-start".into()],
        |_| {},
    );
    let timeouts = [(
        "iggy",
        (
            definition.policy.start_timeout,
            definition.policy.stop_timeout,
        ),
    )]
    .into();
    let actor = node.start(definition);
    let executor = Executor::new(node.path("config.toml"), node.dir.path().to_path_buf())
        .with_components(Arc::new([("iggy", actor)].into()), timeouts);
    let error = executor
        .run_component(Component::Iggy, Request::Start, None)
        .await
        .unwrap_err();
    assert!(error.contains("component iggy is backing_off"), "{error}");
    assert!(error.contains("exit code 3"), "{error}");
    assert!(
        error.contains("stderr: fatal: crashing at start as asked"),
        "{error}"
    );

    let error = executor
        .run_component(Component::Connectors, Request::Start, None)
        .await
        .unwrap_err();
    assert!(error.contains("add [components.connectors]"), "{error}");
}

#[actix_rt::test]
async fn never_healthy_times_out() {
    let node = Node::new();
    let port = free_port();
    let definition = node.definition(Component::Iggy, &fake(), Vec::new(), |file| {
        http_health(port)(file);
        file.start_timeout_secs = Some(1);
    });
    let actor = node.start(definition);
    command(&actor, Request::Start).await;
    let backing_off = wait_phase(&actor, ComponentPhase::BackingOff, Duration::from_secs(10)).await;
    assert!(
        backing_off.detail.contains("did not pass its health check"),
        "{}",
        backing_off.detail
    );
    command(&actor, Request::Stop).await;
    wait_phase(&actor, ComponentPhase::Stopped, Duration::from_secs(10)).await;
}

#[actix_rt::test]
async fn output_is_bounded_and_forwarded_signed() {
    let node = Node::new();
    let port = free_port();
    let mut args = healthy_args(port);
    args.extend(["--spam".to_owned(), "5000".to_owned()]);
    let subject = Subject::telemetry(
        &DeploymentId::new("prod").unwrap(),
        &NodeId::new("n1").unwrap(),
        TelemetryKind::Logs,
    );
    let mut logs = node.bus.subscribe(&subject, None).await.unwrap();
    let actor = node.start(node.definition(Component::Iggy, &fake(), args, http_health(port)));
    command(&actor, Request::Start).await;
    let running = wait_phase(&actor, ComponentPhase::Running, Duration::from_secs(10)).await;
    assert!(running.tail.len() <= 2 * 10, "{}", running.tail.len());

    let mut lines = 0;
    let mut dropped = 0;
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        let Ok(Some(message)) = tokio::time::timeout(Duration::from_millis(500), logs.next()).await
        else {
            continue;
        };
        let signed = SignedEnvelope::decode(&message.payload).unwrap();
        let envelope = signed
            .verify(&warden_bus::Keyring::new([node.key.public_key()]))
            .unwrap();
        let batch: ComponentLogs = envelope.open().unwrap();
        assert!(batch.lines.len() <= 64, "{}", batch.lines.len());
        assert!(batch.lines.iter().all(|line| line.len() <= 1024 + 3));
        lines += batch.lines.len();
        dropped += batch.dropped;
    }
    // At most one batch of 64 lines goes out per stream and second. The rest waits in a queue
    // of 1024 lines, and what does not fit there is counted as dropped.
    assert!(lines > 0, "no line was forwarded");
    assert!(
        lines <= 64 * 2 * 5,
        "{lines} lines in 5 s is over the rate bound"
    );
    assert!(dropped >= 5000 - 1024 - 16, "{dropped}");
    command(&actor, Request::Stop).await;
    wait_phase(&actor, ComponentPhase::Stopped, Duration::from_secs(10)).await;
}

#[actix_rt::test]
async fn old_kernel_refuses_iggy_not_connectors() {
    let node = Node::new();
    let kernel = node.path("osrelease");
    std::fs::write(&kernel, "5.15.0-91-generic\n").unwrap();
    let port = free_port();
    let iggy = node.start_with_kernel(
        node.definition(
            Component::Iggy,
            &fake(),
            healthy_args(port),
            http_health(port),
        ),
        &kernel,
    );
    command(&iggy, Request::Start).await;
    let refused = wait_phase(&iggy, ComponentPhase::BackingOff, Duration::from_secs(5)).await;
    assert!(
        refused.detail.contains("kernel 5.15 is older than 5.19"),
        "{}",
        refused.detail
    );
    assert_eq!(refused.pid, None);
    command(&iggy, Request::Stop).await;

    // The connectors runtime does not need io_uring.
    let port = free_port();
    let connectors = node.start_with_kernel(
        node.definition(
            Component::Connectors,
            &fake(),
            healthy_args(port),
            http_health(port),
        ),
        &kernel,
    );
    command(&connectors, Request::Start).await;
    wait_phase(
        &connectors,
        ComponentPhase::Running,
        Duration::from_secs(10),
    )
    .await;
    command(&connectors, Request::Stop).await;
    wait_phase(
        &connectors,
        ComponentPhase::Stopped,
        Duration::from_secs(10),
    )
    .await;
}

#[actix_rt::test]
async fn active_release_runs_instead_of_bootstrap_binary() {
    let node = Node::new();
    let staged = node.path("staged");
    std::fs::copy(fake(), &staged).unwrap();
    let release = Release {
        release_counter: 7,
        sha256: sha256_file(&staged).unwrap().to_vec(),
    };
    let installer = Installer::new(Component::Iggy, node.dir.path(), &node.db).unwrap();
    let installed = installer.install(&staged, &release).unwrap();
    installer.activate(&release).await.unwrap();

    // The bootstrap names a binary that does not exist: only the release can run.
    let port = free_port();
    let definition = node.definition(
        Component::Iggy,
        Path::new("/nonexistent/iggy-server"),
        healthy_args(port),
        http_health(port),
    );
    let actor = node.start(definition);
    command(&actor, Request::Start).await;
    let running = wait_phase(&actor, ComponentPhase::Running, Duration::from_secs(10)).await;
    let exe = std::fs::read_link(format!("/proc/{}/exe", running.pid.unwrap())).unwrap();
    assert_eq!(exe, installed);
    command(&actor, Request::Stop).await;
    wait_phase(&actor, ComponentPhase::Stopped, Duration::from_secs(10)).await;
}

#[test]
fn warden_restart_stops_leftover_before_starting() {
    let node = Node::new();
    let port = free_port();
    let definition = node.definition(
        Component::Iggy,
        &fake(),
        healthy_args(port),
        http_health(port),
    );

    // The first Warden run starts the component, then its actor system goes away without
    // stopping it, as after a crash.
    let first = System::new().block_on({
        let definition = definition.clone();
        let node = &node;
        async move {
            let actor = node.start(definition);
            command(&actor, Request::Start).await;
            wait_phase(&actor, ComponentPhase::Running, Duration::from_secs(10))
                .await
                .pid
                .unwrap()
        }
    });
    assert!(alive(first), "the leftover process must still run");

    // The next run finds the record, stops the leftover, and starts one process.
    let second = System::new().block_on({
        let node = &node;
        async move {
            let actor = node.start(definition);
            let running =
                wait_phase(&actor, ComponentPhase::Running, Duration::from_secs(15)).await;
            let second = running.pid.unwrap();
            command(&actor, Request::Stop).await;
            wait_phase(&actor, ComponentPhase::Stopped, Duration::from_secs(10)).await;
            second
        }
    });
    assert_ne!(first, second);
    assert!(!alive(first), "the leftover process must be stopped");
    assert!(!alive(second));
}

#[actix_rt::test]
async fn nats_server_supervised_as_iggy() {
    let node = Node::new();
    let client_port = free_port();
    let monitor_port = free_port();
    let args = vec![
        "-a".into(),
        "127.0.0.1".into(),
        "-p".into(),
        client_port.to_string(),
        "-m".into(),
        monitor_port.to_string(),
    ];
    let actor = node.start(node.definition(
        Component::Iggy,
        &nats_server_binary(),
        args,
        http_health(monitor_port),
    ));
    command(&actor, Request::Start).await;
    let running = wait_phase(&actor, ComponentPhase::Running, Duration::from_secs(15)).await;
    assert!(alive(running.pid.unwrap()));
    assert!(std::net::TcpStream::connect(("127.0.0.1", client_port)).is_ok());
    command(&actor, Request::Restart).await;
    let restarted = wait_phase(&actor, ComponentPhase::Running, Duration::from_secs(15)).await;
    assert_ne!(running.pid, restarted.pid);
    command(&actor, Request::Stop).await;
    wait_phase(&actor, ComponentPhase::Stopped, Duration::from_secs(15)).await;
    assert!(!alive(restarted.pid.unwrap()));
}

/// Runs only when `IGGY_SERVER_BIN` names an Iggy server binary; it cannot be installed here.
#[actix_rt::test]
async fn real_iggy_server_when_available() {
    let Some(binary) = std::env::var_os("IGGY_SERVER_BIN") else {
        println!("SKIPPED real_iggy_server_when_available: set IGGY_SERVER_BIN to an Iggy server 0.8 binary to run it");
        return;
    };
    let node = Node::new();
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let credentials = node.path("root");
    std::fs::write(&credentials, "iggy\nwarden-test-password\n").unwrap();
    std::fs::set_permissions(
        &credentials,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let definition = node.definition(Component::Iggy, Path::new(&binary), Vec::new(), |file| {
        file.tcp_address = Some(format!("127.0.0.1:{}", ports[0]));
        file.quic_address = Some(format!("127.0.0.1:{}", ports[1]));
        file.http_address = Some(format!("127.0.0.1:{}", ports[2]));
        file.websocket_address = Some(format!("127.0.0.1:{}", ports[3]));
        file.root_credentials_file = Some(credentials.clone());
        file.start_timeout_secs = Some(60);
    });
    let actor = node.start(definition);
    command(&actor, Request::Start).await;
    wait_phase(&actor, ComponentPhase::Running, Duration::from_secs(60)).await;
    command(&actor, Request::Stop).await;
    wait_phase(&actor, ComponentPhase::Stopped, Duration::from_secs(60)).await;
}

#[actix_rt::test]
async fn group_members_end_with_their_leader() {
    let node = Node::new();
    let port = free_port();
    let child_file = node.path("child.pid");
    let mut args = healthy_args(port);
    args.extend([
        "--child-pid-file".to_owned(),
        child_file.display().to_string(),
        "--escape-codes".to_owned(),
    ]);
    let actor = node.start(node.definition(Component::Iggy, &fake(), args, http_health(port)));

    // Stop: the leader exits on SIGTERM, and its child, which ignores SIGTERM, goes with it.
    command(&actor, Request::Start).await;
    let running = wait_phase(&actor, ComponentPhase::Running, Duration::from_secs(10)).await;
    let child = read_pid_file(&child_file).await;
    assert!(alive(child));
    let escaped = running
        .tail
        .iter()
        .find(|line| line.contains("before"))
        .expect("the line with control characters is captured");
    assert!(
        !escaped.chars().any(|c| c.is_control()),
        "control characters reach the output: {escaped:?}"
    );
    assert!(escaped.contains("before\u{fffd}[2J"), "{escaped:?}");
    command(&actor, Request::Stop).await;
    wait_phase(&actor, ComponentPhase::Stopped, Duration::from_secs(15)).await;
    wait_gone(child, "the child of a stopped component").await;

    // Crash: when the leader dies alone, the rest of its group is killed before the restart.
    std::fs::remove_file(&child_file).unwrap();
    command(&actor, Request::Start).await;
    let running = wait_phase(&actor, ComponentPhase::Running, Duration::from_secs(10)).await;
    let child = read_pid_file(&child_file).await;
    let leader = running.pid.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(leader).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_gone(child, "the child of a crashed component").await;
    command(&actor, Request::Stop).await;
    wait_phase(&actor, ComponentPhase::Stopped, Duration::from_secs(15)).await;
}

#[actix_rt::test]
async fn escaped_child_stops_with_component() {
    let node = Node::new();
    let port = free_port();
    let escaped_file = node.path("escaped.pid");
    let mut args = healthy_args(port);
    args.extend([
        "--escaped-child-pid-file".to_owned(),
        escaped_file.display().to_string(),
    ]);
    let actor = node.start(node.definition(Component::Iggy, &fake(), args, http_health(port)));

    command(&actor, Request::Start).await;
    let running = wait_phase(&actor, ComponentPhase::Running, Duration::from_secs(10)).await;
    let escaped = read_pid_file(&escaped_file).await;
    assert!(alive(escaped));
    assert_ne!(
        process_group(escaped),
        running.pid,
        "the child must have left the component's group"
    );
    command(&actor, Request::Stop).await;
    wait_phase(&actor, ComponentPhase::Stopped, Duration::from_secs(15)).await;
    wait_gone(
        escaped,
        "a child that left the group of a stopped component",
    )
    .await;
}

/// The Warden crashed after it started a process but before it recorded its id: only the
/// launch record names it. The next run stops it before it starts its own.
#[test]
fn unrecorded_launch_stopped_at_start() {
    let node = Node::new();
    let port = free_port();
    let definition = node.definition(
        Component::Iggy,
        &fake(),
        healthy_args(port),
        http_health(port),
    );
    let state = ComponentState::open(Component::Iggy, &node.db).unwrap();
    let launch = LaunchRecord::generate(&mut rand::rngs::OsRng);
    state.set_launch(Some(&launch)).unwrap();
    state
        .set_desired(DesiredState {
            running: true,
            config_version: 0,
        })
        .unwrap();
    let mut orphan = Orphan(
        std::process::Command::new(fake())
            .args(healthy_args(port))
            .env_clear()
            .env(LAUNCH_ID_VARIABLE, &launch.id)
            .process_group(0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let orphan_pid = orphan.0.id();
    // The Warden looks once at start, so the orphan must be fully started before.
    wait_environ(orphan_pid, LAUNCH_ID_VARIABLE, &launch.id);
    assert_eq!(state.process().unwrap(), None);

    let started = System::new().block_on({
        let node = &node;
        async move {
            let actor = node.start(definition);
            let running =
                wait_phase(&actor, ComponentPhase::Running, Duration::from_secs(15)).await;
            let pid = running.pid.unwrap();
            command(&actor, Request::Stop).await;
            wait_phase(&actor, ComponentPhase::Stopped, Duration::from_secs(10)).await;
            pid
        }
    });
    // The orphan is this test's child, so its exit status is here to read.
    let status = orphan.0.wait().unwrap();
    assert!(
        !status.success(),
        "the orphan must have been stopped: {status}"
    );
    assert_ne!(started, orphan_pid);
    let latest = state.launch().unwrap().expect("the new launch is recorded");
    assert_ne!(latest.id, launch.id);
}

#[actix_rt::test]
async fn component_runs_as_its_user() {
    require_root();
    let node = Node::new();
    // The node directory stands for the state directory.
    warden::components::ownership::open_state_dir(node.dir.path()).unwrap();
    let secret = node.path("node.key");
    warden::executor::write_private(&secret, b"node key").unwrap();
    let tls = TlsFiles::new(node.dir.path());
    warden::executor::write_private(&tls.key, b"tls key").unwrap();
    warden::executor::write_atomically(&tls.certificate, b"certificate").unwrap();

    let port = free_port();
    let mut args = healthy_args(port);
    let database = node.path("db/conf");
    assert!(
        database.is_file(),
        "sled keeps its configuration in {}",
        database.display()
    );
    for path in [&tls.key, &secret, &database] {
        args.extend(["--read-file".to_owned(), path.display().to_string()]);
    }
    let actor = node.start(node.definition(Component::Iggy, &fake(), args, |file| {
        http_health(port)(file);
        file.user = Some("nobody".into());
        file.tls_cert_file = Some(tls.certificate.clone());
        file.tls_key_file = Some(tls.key.clone());
    }));
    command(&actor, Request::Start).await;
    let running = wait_phase(&actor, ComponentPhase::Running, Duration::from_secs(10)).await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", running.pid.unwrap())).unwrap();
    assert!(
        status.contains("\nUid:\t65534\t65534\t65534\t65534\n"),
        "{status}"
    );
    assert!(
        status.contains("\nGid:\t65534\t65534\t65534\t65534\n"),
        "{status}"
    );

    let data = std::fs::metadata(node.path("data")).unwrap();
    assert_eq!(data.uid(), 65534);
    let tail = running.tail.join("\n");
    assert!(
        tail.contains(&format!("read {}: ok", tls.key.display())),
        "{tail}"
    );
    assert!(
        tail.contains(&format!("read {}: denied", secret.display())),
        "{tail}"
    );
    assert!(
        tail.contains(&format!("read {}: denied", database.display())),
        "{tail}"
    );

    command(&actor, Request::Stop).await;
    wait_phase(&actor, ComponentPhase::Stopped, Duration::from_secs(10)).await;
}
