//! Two replicas, one sweeper: the holder of the sweep lease sweeps, the other replica takes the
//! lease over when the holder stops, and a damaged lease is replaced. The attacks write leases
//! with the control plane's broker permissions (far-future end, huge or odd holder, deleted
//! key), start three replicas together, and pause the holder with SIGSTOP.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::Duration;

use support::{Cluster, DEPLOYMENT};
use warden_bus::subject::CONTROL_BUCKET;
use warden_bus::UnixMillis;
use warden_control_plane::core::lease::SweepLease;
use warden_control_plane::ctl::Client;
use warden_control_plane::service::SWEEP_LEASE_KEY;
use warden_control_plane::views::NodeView;
use warden_testkit::wait_until;

/// Returns the JSON log events of a replica whose message is `message`.
fn events(log: &str, message: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| event["fields"]["message"] == message)
        .collect()
}

/// Returns the replica id a replica logged when it became ready.
fn replica_id(log: &str) -> String {
    let ready = events(log, "control plane ready");
    assert_eq!(ready.len(), 1, "{log}");
    ready[0]["fields"]["replica_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Counts the health changes to unreachable in a log; only a sweep makes them.
fn unreachable_changes(log: &str) -> usize {
    events(log, "node health changed")
        .iter()
        .filter(|event| event["fields"]["to"] == "unreachable")
        .count()
}

fn health(client: &Client) -> String {
    let nodes: Vec<NodeView> = client
        .get(&format!("/v1/deployments/{DEPLOYMENT}/nodes"))
        .unwrap();
    nodes[0].health.clone()
}

fn stored_lease(cluster: &Cluster) -> Option<SweepLease> {
    let bytes = cluster.kv_get(CONTROL_BUCKET, SWEEP_LEASE_KEY)?;
    serde_json::from_slice(&bytes).ok()
}

#[test]
fn one_replica_sweeps_and_another_takes_over() {
    let mut cluster = Cluster::start_with(&["--log-format", "json"]);
    let (mut second, second_api) = cluster.start_replica("replica-2", &["--log-format", "json"]);
    let second_client = Client::new(&second_api, Some(cluster.api_key.clone())).unwrap();
    let first_id = replica_id(&cluster.control_plane_log());
    let second_id = replica_id(&second.log());
    assert_ne!(first_id, second_id);

    // The first replica started first and holds the lease, and the second one reads that.
    wait_until(
        "the second replica to see the holder",
        Duration::from_secs(10),
        || {
            events(
                &second.log(),
                "another replica holds the sweep lease; this one does not sweep",
            )
            .iter()
            .any(|event| event["fields"]["holder"] == first_id.as_str())
        },
    );
    assert_eq!(stored_lease(&cluster).unwrap().holder, first_id);

    // A silent node is marked unreachable by the holder alone.
    cluster.add_node("n1");
    cluster.start_warden("n1", &[]);
    wait_until("the node to be healthy", Duration::from_secs(10), || {
        health(&second_client) == "healthy"
    });
    cluster.kill_warden("n1");
    wait_until(
        "the node to be unreachable",
        Duration::from_secs(15),
        || health(&second_client) == "unreachable",
    );
    assert_eq!(unreachable_changes(&cluster.control_plane_log()), 1);
    assert_eq!(unreachable_changes(&second.log()), 0, "{}", second.log());

    // When the holder stops, the other replica takes the expired lease and sweeps.
    cluster.kill_control_plane();
    wait_until(
        "the second replica to take the lease",
        Duration::from_secs(10),
        || {
            events(&second.log(), "took over the expired sweep lease")
                .iter()
                .any(|event| event["fields"]["previous_holder"] == first_id.as_str())
        },
    );
    assert_eq!(stored_lease(&cluster).unwrap().holder, second_id);
    cluster.start_warden("n1", &[]);
    wait_until(
        "the node to be healthy again",
        Duration::from_secs(10),
        || health(&second_client) == "healthy",
    );
    cluster.kill_warden("n1");
    wait_until(
        "the node to be unreachable again",
        Duration::from_secs(15),
        || health(&second_client) == "unreachable",
    );
    assert_eq!(unreachable_changes(&second.log()), 1, "{}", second.log());
    second.kill();
}

/// A lease that does not decode, written by anyone with the control plane's broker permissions,
/// does not stop sweeping: the replica replaces it with its own and goes on.
#[test]
fn damaged_lease_is_replaced() {
    let cluster = Cluster::start_with(&["--log-format", "json"]);
    let id = replica_id(&cluster.control_plane_log());
    wait_until(
        "the replica to hold the lease",
        Duration::from_secs(10),
        || stored_lease(&cluster).is_some_and(|lease| lease.holder == id),
    );
    for damaged in [&b"not json"[..], b"{\"holder\":\"x\"}", b""] {
        cluster.kv_overwrite(CONTROL_BUCKET, SWEEP_LEASE_KEY, damaged);
        wait_until("the lease to be replaced", Duration::from_secs(10), || {
            stored_lease(&cluster).is_some_and(|lease| lease.holder == id)
        });
    }
    let log = cluster.control_plane_log();
    assert!(
        events(
            &log,
            "the stored sweep lease (warden_control/sweep_lease) does not decode; replacing it"
        )
        .len()
            >= 3,
        "{log}"
    );

    // A live lease of a replica that does not exist is honoured until it expires, then taken.
    write_lease(&cluster, "gone", now_millis() + 2_000);
    wait_until(
        "the expired lease of a missing replica to be taken",
        Duration::from_secs(10),
        || {
            events(
                &cluster.control_plane_log(),
                "took over the expired sweep lease",
            )
            .iter()
            .any(|event| event["fields"]["previous_holder"] == "gone")
        },
    );
    assert_eq!(stored_lease(&cluster).unwrap().holder, id);
}

fn now_millis() -> u64 {
    warden_bus::Clock::now(&warden_bus::SystemClock).0
}

fn write_lease(cluster: &Cluster, holder: &str, expires_at: u64) {
    let lease = SweepLease {
        holder: holder.to_owned(),
        expires_at: UnixMillis(expires_at),
    };
    cluster.kv_overwrite(
        CONTROL_BUCKET,
        SWEEP_LEASE_KEY,
        &serde_json::to_vec(&lease).unwrap(),
    );
}

fn wait_for_holder(cluster: &Cluster, holder: &str, timeout: Duration) {
    wait_until("the replica to hold the lease", timeout, || {
        stored_lease(cluster).is_some_and(|lease| lease.holder == holder)
    });
}

/// Returns whether `holder` holds the lease within `timeout`.
fn holds_within(cluster: &Cluster, holder: &str, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if stored_lease(cluster).is_some_and(|lease| lease.holder == holder) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Sends SIGSTOP or SIGCONT to a process.
fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
    nix::sys::signal::kill(pid, signal).unwrap();
}

/// A lease that someone with the control plane's broker permissions writes with an expiry years
/// ahead stops every replica from sweeping until that time. A replica with a correct clock never
/// writes an expiry more than one lease duration (three sweep intervals) ahead, so a replica
/// should treat an expiry further ahead than that plus clock skew as invalid, or at least warn.
#[test]
fn far_future_lease_taken_back() {
    let cluster = Cluster::start_with(&["--log-format", "json"]);
    let id = replica_id(&cluster.control_plane_log());
    wait_for_holder(&cluster, &id, Duration::from_secs(10));

    let ten_years = 10 * 365 * 24 * 3_600 * 1_000;
    write_lease(&cluster, "intruder", now_millis() + ten_years);

    // The replica sweeps every 200 ms and a lease lasts 600 ms, so 10 s is generous.
    let taken_back = holds_within(&cluster, &id, Duration::from_secs(10));
    let log = cluster.control_plane_log();
    let warned = log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .any(|event| event["level"] == "WARN" && event.to_string().contains("intruder"));
    assert!(
        taken_back || warned,
        "the replica neither took the lease back nor warned about it; its log:\n{log}"
    );
    assert!(taken_back, "the replica did not take the lease back");
}

/// The recovery an operator has for a stuck lease: delete the key. The replica then creates a
/// new lease and sweeps again.
#[test]
fn deleted_lease_recreated() {
    let cluster = Cluster::start_with(&["--log-format", "json"]);
    let id = replica_id(&cluster.control_plane_log());
    wait_for_holder(&cluster, &id, Duration::from_secs(10));

    // Within the clock skew a replica allows, so it waits for this lease to end.
    let later = now_millis() + 50_000;
    write_lease(&cluster, "intruder", later);
    wait_for_holder(&cluster, "intruder", Duration::from_secs(5));

    cluster.block_on(async {
        let store = cluster
            .jetstream()
            .get_key_value(CONTROL_BUCKET)
            .await
            .unwrap();
        store.delete(SWEEP_LEASE_KEY).await.unwrap();
    });
    wait_for_holder(&cluster, &id, Duration::from_secs(10));

    // The replica recovers the same way from a purge, which also drops the key's history.
    write_lease(&cluster, "intruder", now_millis() + 50_000);
    wait_for_holder(&cluster, "intruder", Duration::from_secs(5));
    cluster.block_on(async {
        let store = cluster
            .jetstream()
            .get_key_value(CONTROL_BUCKET)
            .await
            .unwrap();
        store.purge(SWEEP_LEASE_KEY).await.unwrap();
    });
    wait_for_holder(&cluster, &id, Duration::from_secs(10));
}

/// A huge holder name in an expired lease is replaced like any other expired lease.
#[test]
fn huge_holder_replaced() {
    let cluster = Cluster::start_with(&["--log-format", "json"]);
    let id = replica_id(&cluster.control_plane_log());
    wait_for_holder(&cluster, &id, Duration::from_secs(10));

    let huge = "h".repeat(512 * 1024);
    write_lease(&cluster, &huge, now_millis() + 1_000);
    wait_for_holder(&cluster, &id, Duration::from_secs(10));
    let log = cluster.control_plane_log();
    assert_eq!(
        events(&log, "took over the expired sweep lease").len(),
        1,
        "the take-over is logged once"
    );
}

/// A holder name with a line break must not forge a log line in the text log format.
#[test]
fn odd_holder_not_forging_log_lines() {
    let cluster = Cluster::start();
    let forged = "FORGED 2026-01-01T00:00:00Z ERROR control plane compromised";
    write_lease(&cluster, &format!("gone\n{forged}"), now_millis() + 1_000);
    wait_until(
        "the expired lease to be taken",
        Duration::from_secs(10),
        || {
            support::count(
                &cluster.control_plane_log(),
                "took over the expired sweep lease",
            ) == 1
        },
    );
    let log = cluster.control_plane_log();
    assert!(
        !log.lines().any(|line| line.starts_with("FORGED")),
        "a holder name started its own log line:\n{log}"
    );
}

/// Three replicas that start together settle on one holder, and the lease does not move while
/// they all run.
#[test]
fn three_replicas_settle_on_one_holder() {
    let cluster = Cluster::start_with(&["--log-format", "json"]);
    let ((second, _), (third, _)) = std::thread::scope(|scope| {
        let second = scope.spawn(|| cluster.start_replica("replica-2", &["--log-format", "json"]));
        let third = scope.spawn(|| cluster.start_replica("replica-3", &["--log-format", "json"]));
        (second.join().unwrap(), third.join().unwrap())
    });
    let logs = || [cluster.control_plane_log(), second.log(), third.log()];
    let ids: Vec<String> = logs().iter().map(|log| replica_id(log)).collect();

    // Five seconds is 25 sweep intervals and 8 lease durations.
    std::thread::sleep(Duration::from_secs(5));
    let holder = stored_lease(&cluster).unwrap().holder;
    assert!(ids.contains(&holder), "holder {holder} is not a replica");
    for log in logs() {
        assert!(
            events(&log, "took over the expired sweep lease").is_empty(),
            "a replica took over from a live holder:\n{log}"
        );
    }
    let sweepers: usize = logs()
        .iter()
        .map(|log| events(log, "this replica holds the sweep lease and sweeps").len())
        .sum();
    assert_eq!(sweepers, 1, "exactly one replica ever held the lease");
}

/// A holder paused with SIGSTOP loses the lease to another replica, and after SIGCONT it leaves
/// the new holder alone instead of taking the lease back.
#[test]
fn paused_holder_yields_after_resume() {
    let mut cluster = Cluster::start_with(&["--log-format", "json"]);
    let first_id = replica_id(&cluster.control_plane_log());
    wait_for_holder(&cluster, &first_id, Duration::from_secs(10));
    let (mut second, _) = cluster.start_replica("replica-2", &["--log-format", "json"]);
    let second_id = replica_id(&second.log());

    let first_pid = cluster.control_plane().id().unwrap();
    signal(first_pid, nix::sys::signal::Signal::SIGSTOP);
    wait_for_holder(&cluster, &second_id, Duration::from_secs(10));
    // The pause lasts far longer than a lease, as a suspended VM or a stalled host would.
    std::thread::sleep(Duration::from_secs(3));
    signal(first_pid, nix::sys::signal::Signal::SIGCONT);

    wait_until(
        "the resumed replica to see the new holder",
        Duration::from_secs(10),
        || {
            events(
                &cluster.control_plane_log(),
                "another replica holds the sweep lease; this one does not sweep",
            )
            .iter()
            .any(|event| event["fields"]["holder"] == second_id.as_str())
        },
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(stored_lease(&cluster).unwrap().holder, second_id);
    assert!(
        events(
            &cluster.control_plane_log(),
            "took over the expired sweep lease"
        )
        .is_empty(),
        "the resumed replica took the lease back"
    );
    second.kill();
}
