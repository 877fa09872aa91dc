//! One contract, two transports: the in-memory broker must behave like NATS with JetStream for
//! everything Warden relies on.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use warden_bus::transport::memory::MemoryBus;
use warden_bus::transport::nats::NatsBus;
use warden_bus::transport::{ConsumerSpec, StreamSpec};
use warden_bus::{
    Bus, BusError, DeploymentId, ManualClock, NodeId, Subject, TelemetryKind, UnixMillis,
};
use warden_testkit::NatsServer;

const ACK_WAIT: Duration = Duration::from_secs(1);

/// Lets time pass: the manual clock for the memory broker, real time for NATS.
enum Time {
    Manual(ManualClock),
    Real,
}

impl Time {
    async fn pass(&self, duration: Duration) {
        match self {
            Self::Manual(clock) => clock.advance(duration),
            Self::Real => tokio::time::sleep(duration).await,
        }
    }
}

fn ids(node: &str) -> (DeploymentId, NodeId) {
    (
        DeploymentId::new("dep").unwrap(),
        NodeId::new(node).unwrap(),
    )
}

async fn pull_payloads(bus: &dyn Bus, consumer: &str) -> Vec<(Bytes, u64, u64)> {
    let deliveries = bus
        .pull("TEST", consumer, 10, Duration::from_millis(300))
        .await
        .unwrap();
    deliveries
        .iter()
        .map(|delivery| {
            (
                delivery.payload.clone(),
                delivery.stream_sequence,
                delivery.delivered_count,
            )
        })
        .collect()
}

async fn contract(bus: &dyn Bus, time: &Time) {
    let (deployment, node_a) = ids("a");
    let (_, node_b) = ids("b");

    // Streams and consumers are idempotent to create.
    let stream = StreamSpec {
        name: "TEST".into(),
        subjects: vec![Subject::all_tasks()],
        max_age: Duration::from_secs(3600),
        duplicate_window: Duration::from_secs(120),
        max_message_bytes: None,
        max_messages_per_subject: None,
    };
    bus.ensure_stream(&stream).await.unwrap();
    bus.ensure_stream(&stream).await.unwrap();
    for node in [&node_a, &node_b] {
        let consumer = ConsumerSpec {
            stream: "TEST".into(),
            name: format!("c-{node}"),
            filter: Subject::tasks(&deployment, node),
            ack_wait: ACK_WAIT,
        };
        bus.ensure_consumer(&consumer).await.unwrap();
        bus.ensure_consumer(&consumer).await.unwrap();
    }

    // A consumer sees only its own subject; a dedup id stores one copy.
    let first = bus
        .persist(
            &Subject::tasks(&deployment, &node_a),
            Bytes::from_static(b"one"),
            Some("m1"),
        )
        .await
        .unwrap();
    let again = bus
        .persist(
            &Subject::tasks(&deployment, &node_a),
            Bytes::from_static(b"one"),
            Some("m1"),
        )
        .await
        .unwrap();
    assert_eq!(
        first, again,
        "a repeated dedup id must not store a second copy"
    );
    bus.persist(
        &Subject::tasks(&deployment, &node_b),
        Bytes::from_static(b"for-b"),
        None,
    )
    .await
    .unwrap();
    let pulled = pull_payloads(bus, "c-a").await;
    assert_eq!(pulled, vec![(Bytes::from_static(b"one"), first, 1)]);

    // Unacknowledged deliveries come back after the ack wait with the same sequence.
    time.pass(ACK_WAIT + Duration::from_millis(500)).await;
    let redelivered = bus
        .pull("TEST", "c-a", 10, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(redelivered.len(), 1);
    assert_eq!(redelivered[0].stream_sequence, first);
    assert_eq!(redelivered[0].delivered_count, 2);
    redelivered[0].ack().await.unwrap();
    time.pass(ACK_WAIT + Duration::from_millis(500)).await;
    assert!(
        pull_payloads(bus, "c-a").await.is_empty(),
        "an acknowledged message came back"
    );

    let for_b = pull_payloads(bus, "c-b").await;
    assert_eq!(for_b.len(), 1);
    assert_eq!(for_b[0].0, Bytes::from_static(b"for-b"));

    // Stream limits: an oversized message is refused, and a full subject drops its oldest
    // message without touching other subjects.
    let reports = Subject::all_telemetry(TelemetryKind::Report);
    bus.ensure_stream(&StreamSpec {
        name: "LIMITED".into(),
        subjects: vec![reports.clone()],
        max_age: Duration::from_secs(3600),
        duplicate_window: Duration::from_secs(120),
        max_message_bytes: Some(16),
        max_messages_per_subject: Some(2),
    })
    .await
    .unwrap();
    bus.ensure_consumer(&ConsumerSpec {
        stream: "LIMITED".into(),
        name: "all-reports".into(),
        filter: reports,
        ack_wait: ACK_WAIT,
    })
    .await
    .unwrap();
    let report_a = Subject::telemetry(&deployment, &node_a, TelemetryKind::Report);
    let report_b = Subject::telemetry(&deployment, &node_b, TelemetryKind::Report);
    assert!(
        bus.persist(&report_a, Bytes::from(vec![0u8; 17]), None)
            .await
            .is_err(),
        "a message over the stream's size limit was stored"
    );
    bus.persist(&report_b, Bytes::from_static(b"b1"), None)
        .await
        .unwrap();
    for payload in [&b"a1"[..], b"a2", b"a3"] {
        bus.persist(&report_a, Bytes::copy_from_slice(payload), None)
            .await
            .unwrap();
    }
    let mut kept: Vec<Bytes> = bus
        .pull("LIMITED", "all-reports", 10, Duration::from_millis(300))
        .await
        .unwrap()
        .iter()
        .map(|delivery| delivery.payload.clone())
        .collect();
    kept.sort();
    assert_eq!(
        kept,
        vec![
            Bytes::from_static(b"a2"),
            Bytes::from_static(b"a3"),
            Bytes::from_static(b"b1")
        ]
    );

    // Key-value compare-and-set.
    bus.ensure_bucket("test_bucket", None).await.unwrap();
    bus.ensure_bucket("test_bucket", None).await.unwrap();
    assert_eq!(bus.kv_get("test_bucket", "k").await.unwrap(), None);
    let revision = bus
        .kv_create("test_bucket", "k", Bytes::from_static(b"v1"))
        .await
        .unwrap();
    assert!(matches!(
        bus.kv_create("test_bucket", "k", Bytes::from_static(b"v0"))
            .await,
        Err(BusError::KeyExists { .. })
    ));
    let updated = bus
        .kv_update("test_bucket", "k", Bytes::from_static(b"v2"), revision)
        .await
        .unwrap();
    assert!(updated > revision);
    assert!(matches!(
        bus.kv_update("test_bucket", "k", Bytes::from_static(b"stale"), revision)
            .await,
        Err(BusError::RevisionMismatch { .. })
    ));
    let entry = bus.kv_get("test_bucket", "k").await.unwrap().unwrap();
    assert_eq!(entry.value, Bytes::from_static(b"v2"));
    assert_eq!(entry.revision, updated);
    assert_eq!(
        bus.kv_keys("test_bucket").await.unwrap(),
        vec!["k".to_owned()]
    );

    // A bucket's maximum age drops a key that long after its last write. The bucket exists
    // before it gets one, as a bucket from an older version would.
    bus.ensure_bucket("aged", None).await.unwrap();
    bus.kv_create("aged", "old", Bytes::from_static(b"o"))
        .await
        .unwrap();
    let written = bus
        .kv_create("aged", "rewritten", Bytes::from_static(b"r1"))
        .await
        .unwrap();
    bus.ensure_bucket("aged", Some(Duration::from_secs(3)))
        .await
        .unwrap();
    time.pass(Duration::from_secs(2)).await;
    bus.kv_update("aged", "rewritten", Bytes::from_static(b"r2"), written)
        .await
        .unwrap();
    time.pass(Duration::from_secs(2)).await;
    assert_eq!(bus.kv_get("aged", "old").await.unwrap(), None);
    assert_eq!(
        bus.kv_get("aged", "rewritten")
            .await
            .unwrap()
            .unwrap()
            .value,
        Bytes::from_static(b"r2")
    );
    assert_eq!(
        bus.kv_keys("aged").await.unwrap(),
        vec!["rewritten".to_owned()]
    );
    bus.kv_create("aged", "old", Bytes::from_static(b"again"))
        .await
        .expect("a key that went can be created again");

    // Core subscriptions: plain subscribers all get a copy, a queue group gets one.
    let heartbeat = Subject::all_telemetry(warden_bus::TelemetryKind::Heartbeat);
    let mut plain = bus.subscribe(&heartbeat, None).await.unwrap();
    let mut queue_one = bus.subscribe(&heartbeat, Some("q")).await.unwrap();
    let mut queue_two = bus.subscribe(&heartbeat, Some("q")).await.unwrap();
    let subject = Subject::telemetry(&deployment, &node_a, warden_bus::TelemetryKind::Heartbeat);
    for _ in 0..4 {
        bus.publish(&subject, Bytes::from_static(b"beat"))
            .await
            .unwrap();
    }
    for _ in 0..4 {
        let message = tokio::time::timeout(Duration::from_secs(5), plain.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(message.subject, subject.as_str());
    }
    let mut queued = 0;
    for subscription in [&mut queue_one, &mut queue_two] {
        while let Ok(Some(_)) =
            tokio::time::timeout(Duration::from_millis(300), subscription.next()).await
        {
            queued += 1;
        }
    }
    assert_eq!(queued, 4, "each message goes to exactly one queue member");
}

#[tokio::test]
async fn memory_bus_meets_contract() {
    let clock = ManualClock::new(UnixMillis(1_000_000));
    let bus = MemoryBus::new(Arc::new(clock.clone()));
    contract(&bus, &Time::Manual(clock)).await;
}

#[tokio::test]
async fn nats_bus_meets_contract() {
    let server = NatsServer::start();
    let bus = NatsBus::connect(&server.url(), "contract-test")
        .await
        .unwrap();
    contract(&bus, &Time::Real).await;
}

#[tokio::test]
async fn nats_connect_error_names_url() {
    let port = warden_testkit::free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let error = NatsBus::connect(&url, "test").await.err().unwrap();
    assert!(error.to_string().contains(&url), "{error}");
}

#[tokio::test]
async fn memory_bus_expires_messages_and_dedup_ids() {
    let clock = ManualClock::new(UnixMillis(1_000_000));
    let bus = MemoryBus::new(Arc::new(clock.clone()));
    let (deployment, node) = ids("a");
    bus.ensure_stream(&StreamSpec {
        name: "TEST".into(),
        subjects: vec![Subject::all_tasks()],
        max_age: Duration::from_secs(60),
        duplicate_window: Duration::from_secs(10),
        max_message_bytes: None,
        max_messages_per_subject: None,
    })
    .await
    .unwrap();
    bus.ensure_consumer(&ConsumerSpec {
        stream: "TEST".into(),
        name: "c".into(),
        filter: Subject::tasks(&deployment, &node),
        ack_wait: ACK_WAIT,
    })
    .await
    .unwrap();
    let subject = Subject::tasks(&deployment, &node);
    let first = bus
        .persist(&subject, Bytes::from_static(b"old"), Some("id"))
        .await
        .unwrap();

    // Past the dedup window the same id stores a new copy.
    clock.advance(Duration::from_secs(11));
    let second = bus
        .persist(&subject, Bytes::from_static(b"new"), Some("id"))
        .await
        .unwrap();
    assert_ne!(first, second);

    // Past the maximum age the first message is gone before anyone pulled it.
    clock.advance(Duration::from_secs(50));
    let pulled = pull_payloads(&bus, "c").await;
    assert_eq!(pulled, vec![(Bytes::from_static(b"new"), second, 1)]);
}
