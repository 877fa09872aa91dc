//! A bus whose connection can be replaced while actors keep using it, as when a node's
//! credentials are renewed and it reconnects with the new ones.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{Bus, BusError, ConsumerSpec, Delivery, KvEntry, StreamSpec, Subscription};
use crate::subject::Subject;

/// Delegates to the current connection; [`SwappableBus::swap`] replaces it for every later call.
/// Deliveries pulled before a swap are acknowledged over the connection that pulled them.
pub struct SwappableBus {
    current: RwLock<Arc<dyn Bus>>,
}

impl SwappableBus {
    /// Starts with `bus`.
    pub fn new(bus: Arc<dyn Bus>) -> Self {
        Self {
            current: RwLock::new(bus),
        }
    }

    /// Replaces the connection; the old one closes when its last user drops it.
    pub fn swap(&self, bus: Arc<dyn Bus>) {
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = bus;
    }

    fn current(&self) -> Arc<dyn Bus> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

#[async_trait]
impl Bus for SwappableBus {
    async fn publish(&self, subject: &Subject, payload: Bytes) -> Result<(), BusError> {
        self.current().publish(subject, payload).await
    }

    async fn request(
        &self,
        subject: &Subject,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, BusError> {
        self.current().request(subject, payload, timeout).await
    }

    async fn reply(&self, reply_subject: &str, payload: Bytes) -> Result<(), BusError> {
        self.current().reply(reply_subject, payload).await
    }

    async fn subscribe(
        &self,
        filter: &Subject,
        queue_group: Option<&str>,
    ) -> Result<Subscription, BusError> {
        self.current().subscribe(filter, queue_group).await
    }

    async fn ensure_stream(&self, spec: &StreamSpec) -> Result<(), BusError> {
        self.current().ensure_stream(spec).await
    }

    async fn ensure_consumer(&self, spec: &ConsumerSpec) -> Result<(), BusError> {
        self.current().ensure_consumer(spec).await
    }

    async fn persist(
        &self,
        subject: &Subject,
        payload: Bytes,
        dedup_id: Option<&str>,
    ) -> Result<u64, BusError> {
        self.current().persist(subject, payload, dedup_id).await
    }

    async fn pull(
        &self,
        stream: &str,
        consumer: &str,
        batch: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, BusError> {
        self.current().pull(stream, consumer, batch, wait).await
    }

    async fn ensure_bucket(&self, bucket: &str, max_age: Option<Duration>) -> Result<(), BusError> {
        self.current().ensure_bucket(bucket, max_age).await
    }

    async fn kv_get(&self, bucket: &str, key: &str) -> Result<Option<KvEntry>, BusError> {
        self.current().kv_get(bucket, key).await
    }

    async fn kv_create(&self, bucket: &str, key: &str, value: Bytes) -> Result<u64, BusError> {
        self.current().kv_create(bucket, key, value).await
    }

    async fn kv_update(
        &self,
        bucket: &str,
        key: &str,
        value: Bytes,
        revision: u64,
    ) -> Result<u64, BusError> {
        self.current().kv_update(bucket, key, value, revision).await
    }

    async fn kv_keys(&self, bucket: &str) -> Result<Vec<String>, BusError> {
        self.current().kv_keys(bucket).await
    }
}
