//! The [`Bus`] trait and its two transports: NATS with JetStream, and an in-memory broker with
//! the same semantics for deterministic tests and the simulator.
//!
//! The trait covers what Warden uses of NATS: core publish and subscribe, streams with durable
//! pull consumers and explicit acknowledgement, and key-value buckets with compare-and-set.

use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::subject::Subject;

pub mod memory;
pub mod nats;
pub mod swappable;

/// A message received on a core NATS subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// Subject the message was published on.
    pub subject: String,
    /// Message payload.
    pub payload: Bytes,
    /// Where the sender waits for a reply, for a request.
    pub reply: Option<String>,
}

/// A live subscription. Dropping it unsubscribes.
pub type Subscription = Pin<Box<dyn futures::Stream<Item = Inbound> + Send>>;

/// Settles a delivery with the broker.
#[async_trait]
pub trait Acknowledge: Send + Sync {
    /// Acknowledges the delivery and waits until the broker confirms it.
    async fn ack(&self) -> Result<(), BusError>;
    /// Asks for redelivery, after `delay` if given.
    async fn nak(&self, delay: Option<Duration>) -> Result<(), BusError>;
    /// Tells the broker the delivery is still being worked on, which restarts its ack wait.
    /// Transports without an ack wait do nothing.
    async fn in_progress(&self) -> Result<(), BusError> {
        Ok(())
    }
}

/// A message pulled from a durable consumer. It is redelivered until acknowledged.
pub struct Delivery {
    /// Subject the message was stored under.
    pub subject: String,
    /// Message payload.
    pub payload: Bytes,
    /// Position of the message in its stream; redeliveries keep it, a republished copy does not.
    pub stream_sequence: u64,
    /// How many times the broker has delivered this message, starting at 1.
    pub delivered_count: u64,
    acker: Box<dyn Acknowledge>,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("subject", &self.subject)
            .field("payload_bytes", &self.payload.len())
            .field("stream_sequence", &self.stream_sequence)
            .field("delivered_count", &self.delivered_count)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// Builds a delivery; transports call this.
    pub fn new(
        subject: String,
        payload: Bytes,
        stream_sequence: u64,
        delivered_count: u64,
        acker: Box<dyn Acknowledge>,
    ) -> Self {
        Self {
            subject,
            payload,
            stream_sequence,
            delivered_count,
            acker,
        }
    }

    /// Acknowledges the delivery and waits for the broker's confirmation.
    pub async fn ack(&self) -> Result<(), BusError> {
        self.acker.ack().await
    }

    /// Asks for redelivery, after `delay` if given.
    pub async fn nak(&self, delay: Option<Duration>) -> Result<(), BusError> {
        self.acker.nak(delay).await
    }

    /// Restarts the broker's ack wait while a long task runs.
    pub async fn in_progress(&self) -> Result<(), BusError> {
        self.acker.in_progress().await
    }
}

/// A stream to create if it does not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    /// Stream name.
    pub name: String,
    /// Subjects the stream captures.
    pub subjects: Vec<Subject>,
    /// How long messages are kept.
    pub max_age: Duration,
    /// Window in which a repeated dedup id is dropped.
    pub duplicate_window: Duration,
    /// Largest message the stream stores, in bytes; `None` for the broker's limit.
    pub max_message_bytes: Option<usize>,
    /// Messages kept per subject; when a subject is full its oldest message is dropped. `None`
    /// for no limit. Since every node publishes on its own subjects, this bounds what one node
    /// can store.
    pub max_messages_per_subject: Option<u64>,
}

/// A durable pull consumer to create if it does not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSpec {
    /// Stream the consumer reads.
    pub stream: String,
    /// Durable name.
    pub name: String,
    /// Only messages on subjects matching this filter are delivered.
    pub filter: Subject,
    /// Time after which an unacknowledged delivery is redelivered.
    pub ack_wait: Duration,
}

/// A value in a key-value bucket with its revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    /// The stored bytes.
    pub value: Bytes,
    /// Revision to pass to [`Bus::kv_update`] for compare-and-set.
    pub revision: u64,
}

/// Why a bus operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The connection to the broker failed.
    #[error("failed to connect to NATS at {url}: {reason}; check that nats-server is running and the URL is right")]
    Connect {
        /// The server URL.
        url: String,
        /// The client's message.
        reason: String,
    },
    /// The broker refused the credentials: the JWT expired, was revoked or never belonged to it.
    #[error("NATS at {url} refused the credentials: {reason}; if the credential expired or was revoked, re-enroll the node with `wardenctl node reenroll`")]
    Refused {
        /// The server URL.
        url: String,
        /// The server's message.
        reason: String,
    },
    /// The connection settings cannot work; the message says which one and how to fix it.
    #[error("invalid NATS connection settings: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// The operation did not finish in time.
    #[error("{operation} timed out after {timeout:?}")]
    Timeout {
        /// Operation that failed.
        operation: String,
        /// The deadline that passed.
        timeout: Duration,
    },
    /// A compare-and-set create found the key already present.
    #[error("key {key} already exists in bucket {bucket}")]
    KeyExists {
        /// Bucket name.
        bucket: String,
        /// Key.
        key: String,
    },
    /// A compare-and-set update found another revision than expected.
    #[error("key {key} in bucket {bucket} changed since revision {expected}")]
    RevisionMismatch {
        /// Bucket name.
        bucket: String,
        /// Key.
        key: String,
        /// The revision the caller read.
        expected: u64,
    },
    /// A bucket's maximum age outside [`BUCKET_MAX_AGE_MIN`] to [`BUCKET_MAX_AGE_MAX`].
    #[error(
        "maximum age {max_age:?} of bucket {bucket} is outside 100 ms to {} s; pass no maximum \
         age to keep keys until they are overwritten",
        BUCKET_MAX_AGE_MAX.as_secs()
    )]
    InvalidMaxAge {
        /// Bucket name.
        bucket: String,
        /// The maximum age asked for.
        max_age: Duration,
    },
    /// A stream, consumer or bucket does not exist.
    #[error("{what} not found")]
    NotFound {
        /// Name of the missing item.
        what: String,
    },
    /// Any other failure reported by the broker or client.
    #[error("{operation} failed: {reason}")]
    Failed {
        /// Operation that failed.
        operation: String,
        /// The broker's or client's message.
        reason: String,
    },
}

/// Lower bound of a bucket's maximum age. The broker rejects shorter ones.
pub const BUCKET_MAX_AGE_MIN: Duration = Duration::from_millis(100);
/// Upper bound of a bucket's maximum age. The broker counts it in signed 64-bit nanoseconds,
/// about 292 years.
pub const BUCKET_MAX_AGE_MAX: Duration = Duration::from_nanos(i64::MAX.unsigned_abs());

/// Checks a bucket's maximum age before a transport passes it on. Every transport takes the
/// same range, so the memory bus refuses what the broker would.
pub(crate) fn check_bucket_max_age(
    bucket: &str,
    max_age: Option<Duration>,
) -> Result<(), BusError> {
    match max_age {
        Some(max_age) if !(BUCKET_MAX_AGE_MIN..=BUCKET_MAX_AGE_MAX).contains(&max_age) => {
            Err(BusError::InvalidMaxAge {
                bucket: bucket.to_owned(),
                max_age,
            })
        }
        _ => Ok(()),
    }
}

impl BusError {
    pub(crate) fn failed(operation: impl Into<String>, reason: impl fmt::Display) -> Self {
        Self::Failed {
            operation: operation.into(),
            reason: reason.to_string(),
        }
    }
}

/// What Warden needs of a message broker.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes on a core subject and waits until the message is flushed to the broker.
    async fn publish(&self, subject: &Subject, payload: Bytes) -> Result<(), BusError>;

    /// Sends a request and waits up to `timeout` for the reply.
    async fn request(
        &self,
        subject: &Subject,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, BusError>;

    /// Publishes a reply on the reply subject of a received request.
    async fn reply(&self, reply_subject: &str, payload: Bytes) -> Result<(), BusError>;

    /// Subscribes to a subject filter, sharing messages within `queue_group` if given.
    async fn subscribe(
        &self,
        filter: &Subject,
        queue_group: Option<&str>,
    ) -> Result<Subscription, BusError>;

    /// Creates a stream unless one of that name exists.
    async fn ensure_stream(&self, spec: &StreamSpec) -> Result<(), BusError>;

    /// Creates a durable pull consumer unless one of that name exists on the stream.
    async fn ensure_consumer(&self, spec: &ConsumerSpec) -> Result<(), BusError>;

    /// Stores a message in the stream that captures `subject` and returns its stream sequence.
    /// A repeated `dedup_id` within the stream's duplicate window stores nothing and returns
    /// the first copy's sequence.
    async fn persist(
        &self,
        subject: &Subject,
        payload: Bytes,
        dedup_id: Option<&str>,
    ) -> Result<u64, BusError>;

    /// Pulls up to `batch` messages from a durable consumer, waiting at most `wait` for the
    /// first one.
    async fn pull(
        &self,
        stream: &str,
        consumer: &str,
        batch: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, BusError>;

    /// Creates a key-value bucket unless it exists. A key is dropped `max_age` after its last
    /// write; `None` keeps keys until they are overwritten. An existing bucket takes the new
    /// `max_age`. A `max_age` outside [`BUCKET_MAX_AGE_MIN`] to [`BUCKET_MAX_AGE_MAX`] is
    /// [`BusError::InvalidMaxAge`].
    async fn ensure_bucket(&self, bucket: &str, max_age: Option<Duration>) -> Result<(), BusError>;

    /// Reads a key, or `None` if absent or deleted.
    async fn kv_get(&self, bucket: &str, key: &str) -> Result<Option<KvEntry>, BusError>;

    /// Writes a key only if it does not exist; returns the new revision.
    async fn kv_create(&self, bucket: &str, key: &str, value: Bytes) -> Result<u64, BusError>;

    /// Writes a key only if its revision is still `revision`; returns the new revision.
    async fn kv_update(
        &self,
        bucket: &str,
        key: &str,
        value: Bytes,
        revision: u64,
    ) -> Result<u64, BusError>;

    /// Lists the keys of a bucket.
    async fn kv_keys(&self, bucket: &str) -> Result<Vec<String>, BusError>;
}
