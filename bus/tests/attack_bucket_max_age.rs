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
use warden_bus::transport::{BUCKET_MAX_AGE_MAX, BUCKET_MAX_AGE_MIN};
use warden_bus::{Bus, BusError, ManualClock, UnixMillis};
use warden_testkit::NatsServer;

/// Reads the maximum age and dedup window of the stream behind a bucket.
async fn stream_limits(bus: &NatsBus, bucket: &str) -> (Duration, Duration) {
    let jetstream = async_nats::jetstream::new(bus.client().clone());
    let mut stream = jetstream.get_stream(format!("KV_{bucket}")).await.unwrap();
    let config = stream.info().await.unwrap().config.clone();
    (config.max_age, config.duplicate_window)
}

/// A zero maximum age means "no limit" to NATS, and an age under 100 ms is refused by it.
/// async-nats 0.52 also sends the age as `as_nanos() as i64`, so an age above i64::MAX
/// nanoseconds (about 292 years) would wrap to a fraction of a second and the broker would drop
/// every key at once. Both buses refuse all three before anything reaches the broker, so the
/// memory bus agrees with NATS, and the bucket is not created.
#[tokio::test]
async fn max_age_out_of_range_refused() {
    let server = NatsServer::start();
    let nats = NatsBus::connect(&server.url(), "max-age-range")
        .await
        .unwrap();
    let memory = MemoryBus::new(Arc::new(ManualClock::new(UnixMillis(1_000_000))));
    let buses: [(&str, &dyn Bus); 2] = [("nats", &nats), ("memory", &memory)];
    for max_age in [
        Duration::ZERO,
        Duration::from_millis(99),
        // 2^64 ns is 18_446_744_073.7 s, so this is 2^64 ns plus about 0.29 s.
        Duration::from_secs(18_446_744_074),
        BUCKET_MAX_AGE_MAX + Duration::from_nanos(1),
    ] {
        for (name, bus) in buses {
            let error = bus.ensure_bucket("edge", Some(max_age)).await.unwrap_err();
            assert_eq!(
                error,
                BusError::InvalidMaxAge {
                    bucket: "edge".into(),
                    max_age
                },
                "{name}"
            );
            assert!(
                error.to_string().contains("outside 100 ms to"),
                "{name}: {error}"
            );
            assert!(
                matches!(
                    bus.kv_get("edge", "k").await,
                    Err(BusError::NotFound { .. })
                ),
                "{name}: the bucket was created"
            );
        }
    }
}

/// The ends of the range are taken, and the longest age keeps a key.
#[tokio::test]
async fn max_age_range_ends_accepted() {
    let server = NatsServer::start();
    let bus = NatsBus::connect(&server.url(), "max-age-ends")
        .await
        .unwrap();
    bus.ensure_bucket("short", Some(BUCKET_MAX_AGE_MIN))
        .await
        .unwrap();
    assert_eq!(stream_limits(&bus, "short").await.0, BUCKET_MAX_AGE_MIN);
    bus.ensure_bucket("long", Some(BUCKET_MAX_AGE_MAX))
        .await
        .unwrap();
    assert_eq!(stream_limits(&bus, "long").await.0, BUCKET_MAX_AGE_MAX);
    bus.kv_create("long", "k", Bytes::from_static(b"v"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(bus.kv_get("long", "k").await.unwrap().is_some());
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
