//! Attacks on the desired configuration: a node that stays behind, or floods heartbeats that
//! report an old `config_version`, gets the deployment's configuration again at most once per
//! desired version and then every 15 minutes (a task's validity). A node that was in the issue
//! waits until its task expired. A configuration issued to one node never goes to another.
//!
//! The same enrolled-node harness floods the control plane with valid log batches, which must
//! not write more than its bound of lines per node.

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::Duration;

use support::{Cluster, DEPLOYMENT};
use warden_bus::messages::{Component, ComponentLogs};
use warden_bus::transport::nats::NatsBus;
use warden_bus::{
    Bus, Clock, DeploymentId, Envelope, Heartbeat, MessageId, NodeId, SigningKey, Subject,
    SystemClock, TelemetryKind, UnixMillis,
};
use warden_control_plane::core::desired::{resend_due, Desired, IssueWindow, Resent};
use warden_control_plane::service::{COMPONENT_LINES_PER_WINDOW, COMPONENT_LINES_WINDOW};
use warden_control_plane::views::TaskView;
use warden_testkit::wait_until;

/// The resend interval, equal to a task's default validity.
const INTERVAL: Duration = Duration::from_secs(900);
/// [`INTERVAL`] in heartbeat steps of 100 ms.
const INTERVAL_STEPS: u64 = 9_000;

/// A desired document of version 2 issued at `issued_at`, its tasks valid for [`INTERVAL`].
fn issued(issued_at: UnixMillis) -> Desired {
    Desired {
        version: 2,
        issue: Some(IssueWindow {
            issued_at,
            expires_at: issued_at.saturating_add(INTERVAL),
        }),
    }
}

/// Replays `steps` heartbeats, step `i` at `clock(i)`, from a node that never catches up, as
/// one replica handles them. Returns the steps at which a copy was sent.
fn replay(
    registered_at: UnixMillis,
    desired: Desired,
    clock: impl Fn(u64) -> UnixMillis,
    steps: u64,
) -> Vec<u64> {
    let mut resent = Resent::default();
    let mut sent = Vec::new();
    for step in 0..steps {
        let now = clock(step);
        if resend_due(Some(0), registered_at, desired, resent, now, INTERVAL) {
            resent = Resent {
                version: desired.version,
                at: Some(now),
            };
            sent.push(step);
        }
    }
    sent
}

#[test]
fn heartbeat_flood_bounded_by_interval() {
    let issued_at = UnixMillis(10_000_000);
    let desired = issued(issued_at);
    // One heartbeat every 100 ms for two hours.
    let steps = 72_000;
    let clock = |step: u64| UnixMillis(issued_at.0 + step * 100);

    // A node added after the issue gets the first copy at once, then one every 15 minutes.
    let late = replay(UnixMillis(issued_at.0 + 1), desired, clock, steps);
    assert_eq!(late.first(), Some(&0));
    for pair in late.windows(2) {
        assert!(pair[1] - pair[0] >= INTERVAL_STEPS, "{late:?}");
    }
    assert_eq!(late.len(), 8, "{late:?}");

    // A node that was in the issue got that task, so its first copy waits until the task
    // expired.
    let member = replay(UnixMillis(issued_at.0 - 1), desired, clock, steps);
    assert_eq!(member.first(), Some(&INTERVAL_STEPS), "{member:?}");
    for pair in member.windows(2) {
        assert!(pair[1] - pair[0] >= INTERVAL_STEPS, "{member:?}");
    }
}

#[test]
fn clock_step_back_sends_no_extra_copy() {
    let issued_at = UnixMillis(10_000_000);
    let desired = issued(issued_at);
    // The replica's clock steps back by an hour after 10 minutes, at step 6_000.
    let clock = |step: u64| {
        let forward = issued_at.0 + step * 100;
        if step < 6_000 {
            UnixMillis(forward)
        } else {
            UnixMillis(forward - 3_600_000)
        }
    };
    let sent = replay(UnixMillis(issued_at.0 + 1), desired, clock, 72_000);
    for pair in sent.windows(2) {
        assert!(pair[1] - pair[0] >= INTERVAL_STEPS, "{sent:?}");
    }
}

#[test]
fn node_not_behind_gets_nothing() {
    let desired = issued(UnixMillis(1_000));
    let now = UnixMillis(100_000_000);
    for version in [2, 3, u64::MAX] {
        let due = resend_due(
            Some(version),
            UnixMillis(0),
            desired,
            Resent::default(),
            now,
            INTERVAL,
        );
        assert!(!due, "version {version}");
    }
    let unmanaged = resend_due(
        None,
        UnixMillis(0),
        desired,
        Resent::default(),
        now,
        INTERVAL,
    );
    assert!(!unmanaged);
}

/// A node that enrolled through its real Warden and now sends heartbeats by hand.
struct FakeNode {
    name: String,
    bus: NatsBus,
    key: SigningKey,
    sequence: u64,
}

impl FakeNode {
    fn enroll(cluster: &mut Cluster, runtime: &tokio::runtime::Runtime, name: &str) -> Self {
        cluster.add_node(name);
        let (bus, key) = cluster.enroll_and_connect(name, runtime);
        Self {
            name: name.to_owned(),
            bus,
            key,
            sequence: 0,
        }
    }

    fn heartbeat(&mut self, runtime: &tokio::runtime::Runtime, config_version: u64) {
        self.sequence += 1;
        let deployment = DeploymentId::new(DEPLOYMENT).unwrap();
        let node = NodeId::new(&self.name).unwrap();
        let heartbeat = Heartbeat {
            deployment: deployment.clone(),
            node: node.clone(),
            sequence: self.sequence,
            sent_at: SystemClock.now(),
            warden_version: "test".into(),
            config_version,
            components: Vec::new(),
            certificate: None,
            access_version: None,
        };
        let envelope = Envelope::seal(MessageId::from_random(rand::random()), &heartbeat).unwrap();
        let payload = self.key.sign(&envelope).unwrap().encode().unwrap();
        let subject = Subject::telemetry(&deployment, &node, TelemetryKind::Heartbeat);
        runtime
            .block_on(self.bus.publish(&subject, payload.into()))
            .unwrap();
    }

    /// Sends one batch of component output lines, signed like a real Warden's.
    fn logs(&mut self, runtime: &tokio::runtime::Runtime, lines: Vec<String>) {
        let deployment = DeploymentId::new(DEPLOYMENT).unwrap();
        let node = NodeId::new(&self.name).unwrap();
        let batch = ComponentLogs {
            deployment: deployment.clone(),
            node: node.clone(),
            component: Component::Iggy,
            stream: "stdout".into(),
            lines,
            dropped: 0,
            sent_at: SystemClock.now(),
        };
        let envelope = Envelope::seal(MessageId::from_random(rand::random()), &batch).unwrap();
        let payload = self.key.sign(&envelope).unwrap().encode().unwrap();
        let subject = Subject::telemetry(&deployment, &node, TelemetryKind::Logs);
        runtime
            .block_on(self.bus.publish(&subject, payload.into()))
            .unwrap();
    }

    /// Sends `count` heartbeats reporting `config_version`, below the control plane's rate
    /// bound of 20 per 10 s, then one reporting `marker` and waits until the control plane
    /// shows it, so the earlier ones were handled.
    fn flood(
        &mut self,
        cluster: &Cluster,
        runtime: &tokio::runtime::Runtime,
        config_version: u64,
        count: usize,
        marker: u64,
    ) {
        for _ in 0..count {
            self.heartbeat(runtime, config_version);
            std::thread::sleep(Duration::from_millis(550));
        }
        self.heartbeat(runtime, marker);
        wait_until(
            &format!("{} to report config version {marker}", self.name),
            Duration::from_secs(20),
            || {
                cluster
                    .nodes()
                    .iter()
                    .any(|node| node.node == self.name && node.config_version == marker)
            },
        );
        // The resend check runs after the heartbeat is stored, so give it a moment.
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn config_tasks(cluster: &Cluster, node: &str) -> Vec<TaskView> {
    cluster
        .client()
        .get::<Vec<TaskView>>("/v1/tasks")
        .unwrap()
        .into_iter()
        .filter(|task| task.kind == "apply_config" && task.node == node)
        .collect()
}

#[test]
fn heartbeat_flood_draws_one_copy() {
    let mut cluster = Cluster::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut n1 = FakeNode::enroll(&mut cluster, &runtime, "n1");
    cluster.apply_config(None, 5);
    assert_eq!(config_tasks(&cluster, "n1").len(), 1);

    // n1 was in the issue, so its task counts as the copy and reporting version 0 again and
    // again draws nothing while that task is valid.
    n1.flood(&cluster, &runtime, 0, 15, 1);
    assert_eq!(
        config_tasks(&cluster, "n1").len(),
        1,
        "{:?}",
        config_tasks(&cluster, "n1")
    );

    // n2 came after the issue, so it gets one copy, at its real Warden's first heartbeat or at
    // the first forged one, and no more for the flood.
    let mut n2 = FakeNode::enroll(&mut cluster, &runtime, "n2");
    n2.flood(&cluster, &runtime, 0, 15, 1);
    let n2_tasks = config_tasks(&cluster, "n2");
    assert_eq!(n2_tasks.len(), 1, "{n2_tasks:?}");

    // A configuration for n1 alone, with a higher version, is not n2's to get.
    cluster.apply_config(Some("n1"), 9);
    n2.flood(&cluster, &runtime, 0, 5, 2);
    let n2_tasks = config_tasks(&cluster, "n2");
    assert_eq!(n2_tasks.len(), 1, "{n2_tasks:?}");
    assert_eq!(config_tasks(&cluster, "n1").len(), 2);
}

/// A node's credentials flood valid, signed log batches: 12,800 lines at once. The control plane
/// writes at most its bound per 10 s window and counts the rest, and the count reaches its log.
#[test]
fn log_flood_bounded_per_window() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut cluster = Cluster::start();
    let mut n1 = FakeNode::enroll(&mut cluster, &runtime, "n1");
    let batches = 200;
    let started = std::time::Instant::now();
    for batch in 0..batches {
        let lines = (0..64)
            .map(|line| format!("flood-{batch}-{line}"))
            .collect();
        n1.logs(&runtime, lines);
    }
    // The next window begins 10 s after the first admitted line. A marker sent after that
    // carries the count held back, and it arrives after every flood batch.
    std::thread::sleep(
        COMPONENT_LINES_WINDOW.saturating_sub(started.elapsed()) + Duration::from_secs(1),
    );
    n1.logs(&runtime, vec!["marker-line".into()]);
    wait_until("the marker line", Duration::from_secs(30), || {
        cluster.control_plane_log().contains("marker-line")
    });

    let log = cluster.control_plane_log();
    let written = log.lines().filter(|line| line.contains("flood-")).count();
    let held_back: usize = log
        .lines()
        .filter(|line| line.contains("held back output lines of this node"))
        .map(|line| {
            let line = without_colours(line);
            let field = line.split("held_back=").nth(1).unwrap();
            let digits: String = field.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<usize>().unwrap()
        })
        .sum();
    let sent = batches * 64;
    assert!(written < sent, "all {sent} flood lines were written");
    assert!(
        written <= 2 * COMPONENT_LINES_PER_WINDOW as usize,
        "{written} flood lines written"
    );
    assert_eq!(
        written + held_back,
        sent,
        "written {written}, held back {held_back}"
    );
}

/// Removes the terminal colour sequences (`ESC [ ... m`) that the log writer adds.
fn without_colours(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}
