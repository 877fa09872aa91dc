//! Edge cases of a key-value bucket's maximum age: values at the ends of the range, on the
//! in-memory bus and on a real nats-server, which must agree.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use warden_bus::transport::memory::MemoryBus;
use warden_bus::transport::nats::NatsBus;
use warden_bus::{Bus, ManualClock, UnixMillis};
use warden_testkit::NatsServer;

/// Reads the maximum age and dedup window of the stream behind a bucket.
async fn stream_limits(bus: &NatsBus, bucket: &str) -> (Duration, Duration) {
    let jetstream = async_nats::jetstream::new(bus.client().clone());
    let mut stream = jetstream.get_stream(format!("KV_{bucket}")).await.unwrap();
    let config = stream.info().await.unwrap().config.clone();
    (config.max_age, config.duplicate_window)
}

/// Creates a bucket with `max_age`, writes one key, lets `wait` pass and reads the key back.
async fn key_survives(bus: &dyn Bus, max_age: Duration, wait: Duration) -> bool {
    bus.ensure_bucket("edge", Some(max_age)).await.unwrap();
    bus.kv_create("edge", "k", Bytes::from_static(b"v"))
        .await
        .unwrap();
    tokio::time::sleep(wait).await;
    bus.kv_get("edge", "k").await.unwrap().is_some()
}

/// NATS reads a zero maximum age as "no limit". The memory bus must do the same, because
/// otherwise tests on the memory bus see keys vanish that a real broker keeps.
#[tokio::test]
#[ignore = "bug: memory bus drops every key of a bucket with a zero maximum age, NATS keeps them"]
async fn zero_max_age_agrees_across_buses() {
    let server = NatsServer::start();
    let nats = NatsBus::connect(&server.url(), "zero-max-age")
        .await
        .unwrap();
    let memory = MemoryBus::new(Arc::new(ManualClock::new(UnixMillis(1_000_000))));

    let on_nats = key_survives(&nats, Duration::ZERO, Duration::from_millis(200)).await;
    let on_memory = key_survives(&memory, Duration::ZERO, Duration::ZERO).await;

    assert!(on_nats, "NATS dropped a key of a bucket with no limit");
    assert_eq!(on_memory, on_nats, "the memory bus and NATS disagree");
}

/// async-nats 0.52 serializes the maximum age with serde_nanos 0.1.4 as `as_nanos() as i64`,
/// which truncates larger values. About 584.5 years wraps to a fraction of a second, so the
/// broker drops every key at once. `ensure_bucket` must reject such a value or keep it.
#[tokio::test]
#[ignore = "bug: NatsBus::ensure_bucket wraps a max_age above i64::MAX nanoseconds to a tiny one"]
async fn huge_max_age_does_not_wrap_on_nats() {
    let server = NatsServer::start();
    let bus = NatsBus::connect(&server.url(), "huge-max-age")
        .await
        .unwrap();
    // 2^64 ns is 18_446_744_073.7 s, so this is 2^64 ns plus about 0.29 s.
    let max_age = Duration::from_secs(18_446_744_074);

    let result = bus.ensure_bucket("edge", Some(max_age)).await;
    if result.is_err() {
        return;
    }
    let (stored, _) = stream_limits(&bus, "edge").await;
    assert!(
        stored.is_zero() || stored >= Duration::from_secs(366 * 24 * 3600),
        "asked for {max_age:?}, the broker stores {stored:?}"
    );
    bus.kv_create("edge", "k", Bytes::from_static(b"v"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        bus.kv_get("edge", "k").await.unwrap().is_some(),
        "the key went within 2 s under a maximum age of {max_age:?}"
    );
}

/// NATS rejects a maximum age under 100 ms, so the memory bus must reject it too.
#[tokio::test]
#[ignore = "bug: memory bus accepts a bucket max_age under 100 ms, which NATS rejects"]
async fn sub_100ms_max_age_agrees_across_buses() {
    let server = NatsServer::start();
    let nats = NatsBus::connect(&server.url(), "short-max-age")
        .await
        .unwrap();
    let memory = MemoryBus::new(Arc::new(ManualClock::new(UnixMillis(1_000_000))));
    let max_age = Duration::from_millis(50);

    let on_nats = nats.ensure_bucket("edge", Some(max_age)).await;
    let on_memory = memory.ensure_bucket("edge", Some(max_age)).await;

    assert_eq!(
        on_memory.is_ok(),
        on_nats.is_ok(),
        "NATS: {on_nats:?}, memory: {on_memory:?}"
    );
}

/// A bucket made with the default two-minute dedup window takes a maximum age below it: the
/// window shrinks to fit, old keys go, and a later `None` lifts the limit again.
#[tokio::test]
async fn existing_bucket_takes_short_max_age_on_nats() {
    let server = NatsServer::start();
    let bus = NatsBus::connect(&server.url(), "existing-bucket")
        .await
        .unwrap();
    bus.ensure_bucket("edge", None).await.unwrap();
    bus.kv_create("edge", "old", Bytes::from_static(b"o"))
        .await
        .unwrap();
    let (max_age, window) = stream_limits(&bus, "edge").await;
    assert_eq!(max_age, Duration::ZERO);
    assert!(window > Duration::from_secs(1), "{window:?}");

    bus.ensure_bucket("edge", Some(Duration::from_secs(1)))
        .await
        .unwrap();
    let (max_age, window) = stream_limits(&bus, "edge").await;
    assert_eq!(max_age, Duration::from_secs(1));
    assert!(window <= max_age, "dedup window {window:?}");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while bus.kv_get("edge", "old").await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the old key outlived a 1 s maximum age by 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    bus.ensure_bucket("edge", None).await.unwrap();
    let (max_age, _) = stream_limits(&bus, "edge").await;
    assert_eq!(max_age, Duration::ZERO);
    bus.kv_create("edge", "new", Bytes::from_static(b"n"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(bus.kv_get("edge", "new").await.unwrap().is_some());
}

/// Two callers that set different maximum ages on one bucket do not fail, and the last one
/// wins.
#[tokio::test]
async fn last_max_age_wins_on_nats() {
    let server = NatsServer::start();
    let first = NatsBus::connect(&server.url(), "first").await.unwrap();
    let second = NatsBus::connect(&server.url(), "second").await.unwrap();
    let day = Duration::from_secs(86_400);

    first.ensure_bucket("edge", Some(2 * day)).await.unwrap();
    second.ensure_bucket("edge", Some(day)).await.unwrap();
    assert_eq!(stream_limits(&first, "edge").await.0, day);

    first.ensure_bucket("edge", Some(2 * day)).await.unwrap();
    assert_eq!(stream_limits(&second, "edge").await.0, 2 * day);
}
