//! Attacks on components that run as their own user, on launch ids, on the state store's lock
//! and on the access-rule ports that follow Iggy's listeners. The tests need root, because the
//! components run as `nobody`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command as StdCommand;
use std::time::{Duration, Instant};

use actix::prelude::*;
use support::bootstrap::bootstrap_file;
use support::components::{
    alive, command, fake, healthy_args, require_root, wait_environ, wait_phase, Node, Orphan,
};
use warden::actors::components::{Command, GetSnapshot, Request};
use warden::bootstrap::{Bootstrap, BootstrapFile};
use warden::components::definition::{ComponentFile, ComponentsFile};
use warden::components::process::{process_start_ticks, LAUNCH_ID_VARIABLE};
use warden::components::state::{DesiredState, LaunchRecord, ProcessRecord};
use warden::tls::TlsFiles;
use warden_bus::messages::{Component, ComponentPhase};
use warden_testkit::{free_port, wait_until, Process};

const NOBODY: u32 = 65534;

fn as_nobody(port: u16) -> impl FnOnce(&mut ComponentFile) {
    move |file| {
        file.http_address = Some(format!("127.0.0.1:{port}"));
        file.health_http_path = Some("/healthz".into());
        file.user = Some("nobody".into());
    }
}

/// Starts `sleep 60` as the leader of its own process group, with `env` as its whole
/// environment.
fn sleeper(env: &[(&str, &str)]) -> Orphan {
    let mut command = StdCommand::new("/bin/sleep");
    command.arg("60").env_clear().process_group(0);
    for (name, value) in env {
        command.env(name, value);
    }
    Orphan(command.spawn().unwrap())
}

/// Writes an executable shell script (mode 0755) that only root may replace.
fn script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[actix_rt::test]
async fn component_cannot_write_state_dir() {
    require_root();
    let node = Node::new();
    warden::components::ownership::open_state_dir(node.dir.path()).unwrap();
    let tls = TlsFiles::new(node.dir.path());
    warden::executor::write_private(&tls.key, b"tls key").unwrap();
    warden::executor::write_atomically(&tls.certificate, b"certificate").unwrap();
    warden::executor::write_private(&node.path("node.key"), b"node key").unwrap();
    warden::executor::write_atomically(&node.path("config.toml"), b"[system]\n").unwrap();
    std::fs::create_dir_all(node.path("releases")).unwrap();

    // The script tries each write, prints the results on one line (the snapshot's tail is
    // short), then becomes a healthy component. Its environment is empty, so it names programs by absolute path.
    let attacker = node.path("attacker.sh");
    script(
        &attacker,
        r#"state="$1"; shift
results=""
for target in new tls/new releases/new db/new node.key config.toml tls/node.crt tls/node.key; do
    if ( : >> "$state/$target" ) 2>/dev/null; then result=ok; else result=denied; fi
    results="$results write $target: $result;"
done
if /bin/mv "$state/config.toml" "$state/moved" 2>/dev/null; then result=ok; else result=denied; fi
results="$results rename: $result;"
if /bin/ls "$state" >/dev/null 2>&1; then result=ok; else result=denied; fi
echo "$results list: $result;"
exec "$@"
"#,
    );
    let port = free_port();
    let mut args = vec![
        node.dir.path().display().to_string(),
        fake().display().to_string(),
    ];
    args.extend(healthy_args(port));
    let actor = node.start(node.definition(Component::Iggy, &attacker, args, as_nobody(port)));
    command(&actor, Request::Start).await;
    let running = wait_phase(&actor, ComponentPhase::Running, Duration::from_secs(10)).await;
    let tail = running.tail.join("\n");
    command(&actor, Request::Stop).await;
    wait_phase(&actor, ComponentPhase::Stopped, Duration::from_secs(10)).await;

    for name in [
        "new",
        "tls/new",
        "releases/new",
        "db/new",
        "node.key",
        "config.toml",
        "tls/node.crt",
        "tls/node.key",
    ] {
        let line = format!("write {name}: denied;");
        assert!(tail.contains(&line), "expected {line:?} in:\n{tail}");
    }
    assert!(tail.contains("rename: denied;"), "{tail}");
    assert!(tail.contains("list: denied;"), "{tail}");
    assert!(node.path("config.toml").is_file());
    assert_eq!(
        std::fs::read(node.path("node.key")).unwrap(),
        b"node key".to_vec()
    );
}

#[actix_rt::test]
async fn component_loses_supplementary_groups() {
    require_root();
    let node = Node::new();
    warden::components::ownership::open_state_dir(node.dir.path()).unwrap();
    // glibc applies setgroups to every thread of the test process.
    let extra = [
        nix::unistd::Gid::from_raw(4242),
        nix::unistd::Gid::from_raw(0),
    ];
    nix::unistd::setgroups(&extra).unwrap();
    let own = std::fs::read_to_string("/proc/self/status").unwrap();
    assert!(own.contains("\nGroups:\t0 4242"), "{own}");

    let port = free_port();
    let actor = node.start(node.definition(
        Component::Iggy,
        &fake(),
        healthy_args(port),
        as_nobody(port),
    ));
    command(&actor, Request::Start).await;
    let running = wait_phase(&actor, ComponentPhase::Running, Duration::from_secs(10)).await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", running.pid.unwrap())).unwrap();
    command(&actor, Request::Stop).await;
    wait_phase(&actor, ComponentPhase::Stopped, Duration::from_secs(10)).await;
    nix::unistd::setgroups(&[]).unwrap();

    let groups = status
        .lines()
        .find(|line| line.starts_with("Groups:"))
        .unwrap();
    assert_eq!(groups.trim_end(), "Groups:", "{status}");
    assert!(
        status.contains(&format!("\nGid:\t{NOBODY}\t{NOBODY}\t{NOBODY}\t{NOBODY}\n")),
        "{status}"
    );
}

#[actix_rt::test]
async fn link_to_root_dir_as_data_dir_rejected() {
    require_root();
    let node = Node::new();
    warden::components::ownership::open_state_dir(node.dir.path()).unwrap();
    let target = node.path("root-owned");
    std::fs::create_dir(&target).unwrap();
    std::os::unix::fs::symlink(&target, node.path("data")).unwrap();

    let port = free_port();
    let actor = node.start(node.definition(
        Component::Iggy,
        &fake(),
        healthy_args(port),
        as_nobody(port),
    ));
    let result = actor
        .send(Command {
            request: Request::Start,
            config_version: None,
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let snapshot = actor.send(GetSnapshot).await.unwrap();

    assert_ne!(snapshot.phase, ComponentPhase::Running, "{result:?}");
    let metadata = std::fs::metadata(&target).unwrap();
    assert_eq!(metadata.uid(), 0);
    assert_eq!(metadata.permissions().mode() & 0o777, 0o755);
    let link = std::fs::symlink_metadata(node.path("data")).unwrap();
    assert!(link.file_type().is_symlink());
}

#[actix_rt::test]
async fn data_dir_owned_by_nobody_elsewhere_kept() {
    require_root();
    let node = Node::new();
    warden::components::ownership::open_state_dir(node.dir.path()).unwrap();
    // A user-writable directory outside the state directory, reached through a link, keeps its
    // owner and mode, because the Warden changes no owner or mode of an existing data directory.
    let target = node.path("elsewhere");
    std::fs::create_dir(&target).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o751)).unwrap();
    nix::unistd::chown(&target, Some(nix::unistd::Uid::from_raw(NOBODY)), None).unwrap();
    std::os::unix::fs::symlink(&target, node.path("data")).unwrap();

    let port = free_port();
    let actor = node.start(node.definition(
        Component::Iggy,
        &fake(),
        healthy_args(port),
        as_nobody(port),
    ));
    command(&actor, Request::Start).await;
    wait_phase(&actor, ComponentPhase::Running, Duration::from_secs(10)).await;
    command(&actor, Request::Stop).await;
    wait_phase(&actor, ComponentPhase::Stopped, Duration::from_secs(10)).await;

    let metadata = std::fs::metadata(&target).unwrap();
    assert_eq!(metadata.uid(), NOBODY);
    assert_eq!(metadata.gid(), 0);
    assert_eq!(metadata.permissions().mode() & 0o777, 0o751);
}

/// Checks that the Warden creates a missing data directory with mode 0700, and its missing
/// parents with the default mode, so a component with its own user reaches its directory.
#[actix_rt::test]
async fn data_dir_with_missing_parent_starts() {
    require_root();
    let node = Node::new();
    warden::components::ownership::open_state_dir(node.dir.path()).unwrap();

    let port = free_port();
    let actor = node.start(
        node.definition(Component::Iggy, &fake(), healthy_args(port), |file| {
            as_nobody(port)(file);
            file.data_dir = node.path("parent/data");
        }),
    );
    command(&actor, Request::Start).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let snapshot = loop {
        let snapshot = actor.send(GetSnapshot).await.unwrap();
        let settled = matches!(
            snapshot.phase,
            ComponentPhase::Running | ComponentPhase::Failed
        );
        if settled || Instant::now() > deadline {
            break snapshot;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    command(&actor, Request::Stop).await;

    let parent = std::fs::metadata(node.path("parent")).unwrap();
    assert_ne!(
        parent.permissions().mode() & 0o001,
        0,
        "parent mode {:o}, owner {}",
        parent.permissions().mode() & 0o777,
        parent.uid()
    );
    assert_eq!(snapshot.phase, ComponentPhase::Running, "{snapshot:?}");
}

/// A data directory inside the state directory would be created and given to the component's
/// user. There it would own a directory the Warden later fills: under `components/` the Warden
/// installs its own releases, which the root launcher runs. The bootstrap file is rejected.
#[test]
fn data_dir_inside_state_dir_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    for data_dir in [
        state.join("components"),
        state.clone(),
        dir.path().to_path_buf(),
    ] {
        let mut components = iggy_as_nobody(dir.path());
        if let Some(iggy) = components.iggy.as_mut() {
            iggy.data_dir = data_dir.clone();
        }
        let file = bootstrap(dir.path(), components);
        let path = dir.path().join("bootstrap.toml");
        std::fs::write(&path, toml::to_string(&file).unwrap()).unwrap();
        let error = Bootstrap::load(&path).unwrap_err().to_string();
        assert!(
            error.contains("contain one another"),
            "{}: {error}",
            data_dir.display()
        );
    }
    assert!(!state.join("components").exists());
}

/// A process record names a dead leader whose pid (and so process group id) a later, unrelated
/// process reuses as leader of its own group. A restarted Warden must not kill that group.
#[test]
fn reused_group_of_leftover_record_survives() {
    let node = Node::new();
    let unrelated = sleeper(&[]);
    let pid = unrelated.0.id();
    let ticks = process_start_ticks(pid).unwrap();
    // The recorded process started earlier and is gone, and this one reuses its pid.
    node.state(Component::Iggy)
        .set_process(Some(ProcessRecord {
            pid,
            start_ticks: ticks.saturating_sub(1),
        }))
        .unwrap();
    let port = free_port();
    let definition = node.definition(Component::Iggy, &fake(), healthy_args(port), |file| {
        file.http_address = Some(format!("127.0.0.1:{port}"));
        file.health_http_path = Some("/healthz".into());
    });

    System::new().block_on({
        let node = &node;
        async move {
            let actor = node.start(definition);
            // The actor handles no message before it dealt with the leftover record.
            actor.send(GetSnapshot).await.unwrap();
        }
    });

    assert!(
        alive(pid),
        "the unrelated process {pid} was killed by the leftover record"
    );
}

#[test]
fn leftover_launch_spares_other_launch_ids() {
    let node = Node::new();
    let leftover = LaunchRecord::generate(&mut rand::rngs::OsRng);
    let other = LaunchRecord::generate(&mut rand::rngs::OsRng);
    node.state(Component::Iggy)
        .set_launch(Some(&leftover))
        .unwrap();
    node.state(Component::Iggy)
        .set_desired(DesiredState {
            running: false,
            config_version: 0,
        })
        .unwrap();
    let with_other_id = sleeper(&[(LAUNCH_ID_VARIABLE, &other.id)]);
    // A prefix of the id, or the id under another name, is not the id.
    let with_prefix = sleeper(&[(LAUNCH_ID_VARIABLE, &leftover.id[..16])]);
    let other_name = sleeper(&[("NOT_WARDEN_LAUNCH_ID", &leftover.id)]);
    let without = sleeper(&[]);
    let carrier = sleeper(&[(LAUNCH_ID_VARIABLE, &leftover.id)]);
    // The Warden looks once at start, so the carrier must be fully started before.
    wait_environ(carrier.0.id(), LAUNCH_ID_VARIABLE, &leftover.id);
    let port = free_port();
    let definition = node.definition(Component::Iggy, &fake(), healthy_args(port), |_| {});

    System::new().block_on({
        let node = &node;
        async move {
            let actor = node.start(definition);
            actor.send(GetSnapshot).await.unwrap();
        }
    });

    for orphan in [&with_other_id, &with_prefix, &other_name, &without] {
        assert!(alive(orphan.0.id()), "pid {} was killed", orphan.0.id());
    }
    wait_until(
        "the process with the leftover id to stop",
        Duration::from_secs(10),
        || !alive(carrier.0.id()),
    );
}

/// Starts a component as `nobody` whose child leaves its process group but keeps the launch
/// id. The Warden kills that child when the component stops, and no process of another user.
#[actix_rt::test]
async fn launch_id_kills_only_component_processes() {
    require_root();
    let node = Node::new();
    warden::components::ownership::open_state_dir(node.dir.path()).unwrap();
    let escaped = node.path("data/escaped.pid");
    let port = free_port();
    let mut args = healthy_args(port);
    args.extend([
        "--escaped-child-pid-file".into(),
        escaped.display().to_string(),
    ]);
    let bystander = sleeper(&[]);
    let actor = node.start(node.definition(Component::Iggy, &fake(), args, as_nobody(port)));
    command(&actor, Request::Start).await;
    wait_phase(&actor, ComponentPhase::Running, Duration::from_secs(10)).await;
    wait_until(
        "the escaped child's pid file",
        Duration::from_secs(5),
        || std::fs::read_to_string(&escaped).is_ok_and(|text| !text.trim().is_empty()),
    );
    let child: u32 = std::fs::read_to_string(&escaped)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let status = std::fs::read_to_string(format!("/proc/{child}/status")).unwrap();
    assert!(status.contains(&format!("\nUid:\t{NOBODY}\t")), "{status}");

    command(&actor, Request::Stop).await;
    wait_phase(&actor, ComponentPhase::Stopped, Duration::from_secs(10)).await;

    wait_until("the escaped child to stop", Duration::from_secs(10), || {
        !alive(child)
    });
    assert!(alive(bystander.0.id()));
    assert!(alive(std::process::id()));
}

fn bootstrap(dir: &Path, components: ComponentsFile) -> BootstrapFile {
    let mut file = bootstrap_file(dir, &format!("nats://127.0.0.1:{}", free_port()));
    file.components = components;
    file
}

fn iggy_as_nobody(dir: &Path) -> ComponentsFile {
    ComponentsFile {
        iggy: Some(ComponentFile {
            binary: fake(),
            data_dir: dir.join("iggy-data"),
            user: Some("nobody".into()),
            ..ComponentFile::default()
        }),
        connectors: None,
    }
}

/// Starts a Warden on `path` that keeps retrying its unreachable broker, after it opened its
/// state.
fn start_warden(dir: &Path, path: &Path, log: &str) -> Process {
    let mut command = StdCommand::new(env!("CARGO_BIN_EXE_warden"));
    command.arg("--bootstrap").arg(path);
    let mut warden = Process::spawn("warden", command, &dir.join(log));
    wait_until(
        "the Warden to try the broker",
        Duration::from_secs(20),
        || warden.log().contains("failed to connect to NATS; retrying"),
    );
    assert!(warden.is_running());
    warden
}

#[test]
fn second_warden_on_state_dir_rejected() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let file = bootstrap(dir.path(), iggy_as_nobody(dir.path()));
    let path = dir.path().join("bootstrap.toml");
    std::fs::write(&path, toml::to_string(&file).unwrap()).unwrap();
    let mut first = start_warden(dir.path(), &path, "first.log");
    let key = file.state_dir.join("node.key");
    let key_before = std::fs::read(&key).unwrap();

    let started = Instant::now();
    let output = StdCommand::new(env!("CARGO_BIN_EXE_warden"))
        .arg("--bootstrap")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("locked by another process"), "{stderr}");
    assert!(
        started.elapsed() >= warden::store::LOCK_WAIT,
        "the second Warden gave up before the lock wait"
    );
    assert!(first.is_running(), "{}", first.log());
    assert_eq!(std::fs::read(&key).unwrap(), key_before);
    first.kill();

    // The first Warden's state opens again once it is gone.
    let mut again = start_warden(dir.path(), &path, "again.log");
    assert_eq!(std::fs::read(&key).unwrap(), key_before);
    again.kill();
}

/// Lists every file and directory under the state directory of a Warden with a component
/// user, and checks that none belongs to `nobody` or is writable by others.
#[test]
fn state_dir_files_closed_to_component_user() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let file = bootstrap(dir.path(), iggy_as_nobody(dir.path()));
    let path = dir.path().join("bootstrap.toml");
    std::fs::write(&path, toml::to_string(&file).unwrap()).unwrap();
    let mut warden = start_warden(dir.path(), &path, "warden.log");
    warden.kill();

    let state = &file.state_dir;
    let mode = |path: &Path| std::fs::symlink_metadata(path).unwrap().mode() & 0o7777;
    assert_eq!(mode(state), 0o711);
    assert_eq!(mode(&state.join("db")), 0o700);
    let mut listed = Vec::new();
    let mut pending = vec![state.clone()];
    while let Some(directory) = pending.pop() {
        for entry in std::fs::read_dir(&directory).unwrap() {
            let entry = entry.unwrap();
            let metadata = entry.path().symlink_metadata().unwrap();
            listed.push(format!(
                "{} {:o} {}",
                entry.path().strip_prefix(state).unwrap().display(),
                metadata.mode() & 0o7777,
                metadata.uid()
            ));
            assert_ne!(metadata.uid(), NOBODY, "{}", entry.path().display());
            assert_eq!(
                metadata.mode() & 0o002,
                0,
                "{} is writable by others",
                entry.path().display()
            );
            if metadata.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    assert!(!listed.is_empty());
    eprintln!("state directory:\n{}", listed.join("\n"));
    assert_eq!(
        mode(&state.join("node.key")),
        0o600,
        "{}",
        listed.join("\n")
    );
}

fn load(dir: &Path, iggy: ComponentFile, access: &str) -> Result<Bootstrap, String> {
    let mut file = bootstrap(
        dir,
        ComponentsFile {
            iggy: Some(iggy),
            connectors: None,
        },
    );
    file.access = Some(toml::from_str(access).unwrap());
    let path = dir.join("bootstrap.toml");
    std::fs::write(&path, toml::to_string(&file).unwrap()).unwrap();
    Bootstrap::load(&path).map_err(|error| error.to_string())
}

fn iggy(dir: &Path, edit: impl FnOnce(&mut ComponentFile)) -> ComponentFile {
    let mut file = ComponentFile {
        binary: fake(),
        data_dir: dir.join("iggy-data"),
        ..ComponentFile::default()
    };
    edit(&mut file);
    file
}

#[test]
fn access_port_other_than_listener_rejected() {
    let dir = tempfile::tempdir().unwrap();
    for (field, address, access) in [
        ("tcp_port", "127.0.0.1:9090", "tcp_port = 8090"),
        ("quic_port", "[::1]:9080", "quic_port = 8080"),
        ("http_port", "0.0.0.0:3001", "http_port = 3000"),
        ("websocket_port", "127.0.0.1:9092", "websocket_port = 8092"),
    ] {
        let protocol = field.trim_end_matches("_port");
        let file = iggy(dir.path(), |file| {
            let address = Some(address.to_owned());
            match protocol {
                "tcp" => file.tcp_address = address,
                "quic" => file.quic_address = address,
                "http" => file.http_address = address,
                _ => file.websocket_address = address,
            }
        });
        let error = load(dir.path(), file, access).unwrap_err();
        assert!(error.contains(field), "{error}");
        assert!(error.contains("differs"), "{error}");
    }
}

#[test]
fn access_guard_follows_moved_listeners() {
    let dir = tempfile::tempdir().unwrap();
    let file = iggy(dir.path(), |file| {
        file.tcp_address = Some("[::]:19090".into());
        file.quic_address = Some("0.0.0.0:19080".into());
        file.http_address = Some("127.0.0.1:13000".into());
        file.websocket_address = Some("127.0.0.1:19092".into());
    });
    let bootstrap = load(dir.path(), file, "tcp_port = 19090").unwrap();
    let ports = bootstrap.access.unwrap().ports();
    assert_eq!(ports.tcp, 19090);
    assert_eq!(ports.quic, 19080);
    assert_eq!(ports.http, 13000);
    assert_eq!(ports.websocket, 19092);
}

type EditComponent = fn(&mut ComponentFile);

#[test]
fn access_with_unguardable_listener_rejected() {
    let dir = tempfile::tempdir().unwrap();
    // Port 0 makes Iggy pick a port no rule guards. Two TCP listeners on one port cannot both
    // be Iggy's, and a host name is no address to take a port from.
    let cases: [(&str, EditComponent); 3] = [
        ("port 0", |file| {
            file.tcp_address = Some("127.0.0.1:0".into())
        }),
        ("shared TCP port", |file| {
            file.tcp_address = Some("127.0.0.1:9000".into());
            file.http_address = Some("127.0.0.1:9000".into());
        }),
        ("host name", |file| {
            file.tcp_address = Some("localhost:9090".into());
        }),
    ];
    for (case, edit) in cases {
        let result = load(dir.path(), iggy(dir.path(), edit), "");
        assert!(result.is_err(), "{case}: accepted");
    }
}
