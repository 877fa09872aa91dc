//! Two replicas, one sweeper: the holder of the sweep lease sweeps, the other replica takes the
//! lease over when the holder stops, and a damaged lease is replaced.

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

    // The first replica started first and holds the lease; the second one sees it.
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
    let foreign = SweepLease {
        holder: "gone".into(),
        expires_at: warden_bus::UnixMillis(u64::try_from(support::now_secs() + 2).unwrap() * 1000),
    };
    cluster.kv_overwrite(
        CONTROL_BUCKET,
        SWEEP_LEASE_KEY,
        &serde_json::to_vec(&foreign).unwrap(),
    );
    wait_until(
        "the expired foreign lease to be taken",
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
