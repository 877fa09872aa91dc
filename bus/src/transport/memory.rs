//! An in-memory broker with the semantics Warden relies on: core subscriptions with queue
//! groups, streams with dedup windows, durable pull consumers that redeliver after the
//! acknowledgement deadline, and key-value buckets with compare-and-set.
//!
//! It is deterministic: iteration order is fixed, time comes from an injected [`Clock`], and
//! [`Bus::pull`] never waits, so a test or the simulator decides when time passes.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::{
    Acknowledge, Bus, BusError, ConsumerSpec, Delivery, Inbound, KvEntry, StreamSpec, Subscription,
};
use crate::subject::Subject;
use crate::time::{Clock, UnixMillis};

/// An in-memory broker. Clones share the same state.
#[derive(Clone)]
pub struct MemoryBus {
    state: Arc<Mutex<State>>,
    clock: Arc<dyn Clock>,
}

#[derive(Default)]
struct State {
    subscribers: Vec<Subscriber>,
    queue_turn: u64,
    inbox_counter: u64,
    streams: BTreeMap<String, StreamState>,
    buckets: BTreeMap<String, BucketState>,
    bucket_revisions: BTreeMap<String, u64>,
}

#[derive(Default)]
struct BucketState {
    /// How long a key lives after its last write; `None` keeps it forever.
    max_age: Option<Duration>,
    /// Entries with the time of their last write.
    entries: BTreeMap<String, (KvEntry, UnixMillis)>,
    /// No entry was written before this time, so nothing expires until it is `max_age` old.
    /// Rewrites leave it lower than needed, which costs one scan that finds nothing.
    oldest_write: Option<UnixMillis>,
}

impl BucketState {
    /// Drops the keys whose last write is older than the bucket's maximum age, as the broker
    /// drops the messages behind them. The entries are scanned only when the oldest write may
    /// have expired, since every key-value operation calls this.
    fn expire(&mut self, now: UnixMillis) {
        let Some(max_age) = self.max_age else {
            return;
        };
        if self
            .oldest_write
            .is_none_or(|oldest| now.since(oldest) < max_age)
        {
            return;
        }
        self.entries
            .retain(|_, (_, written_at)| now.since(*written_at) < max_age);
        self.oldest_write = self
            .entries
            .values()
            .map(|(_, written_at)| *written_at)
            .min();
    }

    /// Stores `entry` under `key` as written at `now`.
    fn write(&mut self, key: &str, entry: KvEntry, now: UnixMillis) {
        self.entries.insert(key.to_owned(), (entry, now));
        self.oldest_write.get_or_insert(now);
    }
}

struct Subscriber {
    filter: Subject,
    queue_group: Option<String>,
    sender: mpsc::UnboundedSender<Inbound>,
}

struct StreamState {
    spec: StreamSpec,
    messages: BTreeMap<u64, Stored>,
    /// Sequences by subject, so a consumer with a literal filter does not scan the stream.
    by_subject: HashMap<String, BTreeSet<u64>>,
    last_sequence: u64,
    dedup: HashMap<String, (u64, UnixMillis)>,
    /// Dedup ids in the order they were stored, to expire them from the front.
    dedup_order: VecDeque<(UnixMillis, String)>,
    consumers: BTreeMap<String, ConsumerState>,
}

struct Stored {
    subject: String,
    payload: Bytes,
    stored_at: UnixMillis,
}

struct ConsumerState {
    spec: ConsumerSpec,
    /// Next stream sequence this consumer has not delivered yet.
    next_sequence: u64,
    /// Delivered but unacknowledged messages: sequence to (delivery count, redelivery time).
    pending: BTreeMap<u64, (u64, UnixMillis)>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock leaves plain data behind; later calls can still read it.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MemoryBus {
    /// Creates an empty broker that reads time from `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            state: Arc::default(),
            clock,
        }
    }

    /// Number of messages a consumer has delivered and not had acknowledged.
    pub fn pending_count(&self, stream: &str, consumer: &str) -> usize {
        lock(&self.state)
            .streams
            .get(stream)
            .and_then(|stream| stream.consumers.get(consumer))
            .map_or(0, |consumer| consumer.pending.len())
    }

    /// Drops messages past the stream's maximum age and dedup ids past the window. Both are
    /// stored in time order, so only the oldest entries are looked at.
    fn expire(stream: &mut StreamState, now: UnixMillis) {
        let max_age = stream.spec.max_age;
        while let Some((&sequence, stored)) = stream.messages.first_key_value() {
            if max_age.is_zero() || now.since(stored.stored_at) < max_age {
                break;
            }
            if let Some(sequences) = stream.by_subject.get_mut(&stored.subject) {
                sequences.remove(&sequence);
            }
            stream.messages.remove(&sequence);
        }
        let window = stream.spec.duplicate_window;
        while let Some((at, id)) = stream.dedup_order.front() {
            if now.since(*at) < window {
                break;
            }
            stream.dedup.remove(id);
            stream.dedup_order.pop_front();
        }
    }
}

impl MemoryBus {
    /// Hands a message to every plain subscriber and one member of each queue group.
    fn deliver(&self, subject: &str, payload: Bytes, reply: Option<String>) {
        let mut state = lock(&self.state);
        state
            .subscribers
            .retain(|subscriber| !subscriber.sender.is_closed());
        let message = Inbound {
            subject: subject.to_owned(),
            payload,
            reply,
        };

        // Plain subscribers each get a copy; each queue group gets one copy, taking turns.
        let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (index, subscriber) in state.subscribers.iter().enumerate() {
            if !subscriber.filter.matches(subject) {
                continue;
            }
            match &subscriber.queue_group {
                Some(group) => groups.entry(group.clone()).or_default().push(index),
                None => {
                    let _ = subscriber.sender.send(message.clone());
                }
            }
        }
        let turn = state.queue_turn;
        state.queue_turn = turn.wrapping_add(1);
        for members in groups.values() {
            let choice = usize::try_from(turn % members.len() as u64).unwrap_or(0);
            if let Some(subscriber) = members.get(choice).and_then(|i| state.subscribers.get(*i)) {
                let _ = subscriber.sender.send(message.clone());
            }
        }
    }
}

struct MemoryAcker {
    state: Weak<Mutex<State>>,
    clock: Arc<dyn Clock>,
    stream: String,
    consumer: String,
    sequence: u64,
}

impl MemoryAcker {
    fn settle(&self, redeliver_at: Option<UnixMillis>) -> Result<(), BusError> {
        let state = self
            .state
            .upgrade()
            .ok_or_else(|| BusError::failed("acknowledging", "broker is gone"))?;
        let mut state = lock(&state);
        let consumer = state
            .streams
            .get_mut(&self.stream)
            .and_then(|stream| stream.consumers.get_mut(&self.consumer))
            .ok_or_else(|| BusError::NotFound {
                what: format!("consumer {}", self.consumer),
            })?;
        match redeliver_at {
            None => {
                consumer.pending.remove(&self.sequence);
            }
            Some(at) => {
                if let Some(entry) = consumer.pending.get_mut(&self.sequence) {
                    entry.1 = at;
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Acknowledge for MemoryAcker {
    async fn ack(&self) -> Result<(), BusError> {
        self.settle(None)
    }

    async fn nak(&self, delay: Option<Duration>) -> Result<(), BusError> {
        let at = self.clock.now().saturating_add(delay.unwrap_or_default());
        self.settle(Some(at))
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, subject: &Subject, payload: Bytes) -> Result<(), BusError> {
        self.deliver(subject.as_str(), payload, None);
        Ok(())
    }

    async fn request(
        &self,
        subject: &Subject,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, BusError> {
        let inbox = {
            let mut state = lock(&self.state);
            state.inbox_counter += 1;
            format!("_INBOX.memory.{}", state.inbox_counter)
        };
        let mut replies = self
            .subscribe(&Subject::from_wire(inbox.clone()), None)
            .await?;
        self.deliver(subject.as_str(), payload, Some(inbox));
        // NOTE: this waits in real time on the Tokio timer, so a request needs a Tokio runtime
        // and a responder running on another task.
        match tokio::time::timeout(timeout, replies.next()).await {
            Ok(Some(reply)) => Ok(reply.payload),
            Ok(None) => Err(BusError::failed(
                "waiting for a reply",
                "subscription closed",
            )),
            Err(_) => Err(BusError::Timeout {
                operation: format!("request on {subject}"),
                timeout,
            }),
        }
    }

    async fn reply(&self, reply_subject: &str, payload: Bytes) -> Result<(), BusError> {
        self.deliver(reply_subject, payload, None);
        Ok(())
    }

    async fn subscribe(
        &self,
        filter: &Subject,
        queue_group: Option<&str>,
    ) -> Result<Subscription, BusError> {
        let (sender, receiver) = mpsc::unbounded_channel();
        lock(&self.state).subscribers.push(Subscriber {
            filter: filter.clone(),
            queue_group: queue_group.map(str::to_owned),
            sender,
        });
        let stream = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|message| (message, receiver))
        });
        Ok(stream.boxed())
    }

    async fn ensure_stream(&self, spec: &StreamSpec) -> Result<(), BusError> {
        lock(&self.state)
            .streams
            .entry(spec.name.clone())
            .or_insert_with(|| StreamState {
                spec: spec.clone(),
                messages: BTreeMap::new(),
                by_subject: HashMap::new(),
                last_sequence: 0,
                dedup: HashMap::new(),
                dedup_order: VecDeque::new(),
                consumers: BTreeMap::new(),
            });
        Ok(())
    }

    async fn ensure_consumer(&self, spec: &ConsumerSpec) -> Result<(), BusError> {
        let mut state = lock(&self.state);
        let stream = state
            .streams
            .get_mut(&spec.stream)
            .ok_or_else(|| BusError::NotFound {
                what: format!("stream {}", spec.stream),
            })?;
        stream
            .consumers
            .entry(spec.name.clone())
            .or_insert_with(|| ConsumerState {
                spec: spec.clone(),
                next_sequence: 1,
                pending: BTreeMap::new(),
            });
        Ok(())
    }

    async fn persist(
        &self,
        subject: &Subject,
        payload: Bytes,
        dedup_id: Option<&str>,
    ) -> Result<u64, BusError> {
        let now = self.clock.now();
        let mut state = lock(&self.state);
        let stream = state
            .streams
            .values_mut()
            .find(|stream| {
                stream
                    .spec
                    .subjects
                    .iter()
                    .any(|filter| filter.matches(subject.as_str()))
            })
            .ok_or_else(|| BusError::NotFound {
                what: format!("stream capturing {subject}"),
            })?;
        Self::expire(stream, now);
        if let Some(max) = stream.spec.max_message_bytes {
            if payload.len() > max {
                return Err(BusError::failed(
                    format!("publishing to {subject}"),
                    format!(
                        "message of {} bytes is over the stream's maximum of {max}",
                        payload.len()
                    ),
                ));
            }
        }
        if let Some((sequence, _)) = dedup_id.and_then(|id| stream.dedup.get(id)) {
            return Ok(*sequence);
        }
        stream.last_sequence += 1;
        let sequence = stream.last_sequence;
        stream.messages.insert(
            sequence,
            Stored {
                subject: subject.as_str().to_owned(),
                payload,
                stored_at: now,
            },
        );
        stream
            .by_subject
            .entry(subject.as_str().to_owned())
            .or_default()
            .insert(sequence);
        if let Some(max) = stream.spec.max_messages_per_subject {
            let sequences = stream
                .by_subject
                .entry(subject.as_str().to_owned())
                .or_default();
            while sequences.len() as u64 > max {
                let Some(oldest) = sequences.pop_first() else {
                    break;
                };
                stream.messages.remove(&oldest);
            }
        }
        if let Some(id) = dedup_id {
            stream.dedup.insert(id.to_owned(), (sequence, now));
            stream.dedup_order.push_back((now, id.to_owned()));
        }
        Ok(sequence)
    }

    async fn pull(
        &self,
        stream_name: &str,
        consumer_name: &str,
        batch: usize,
        _wait: Duration,
    ) -> Result<Vec<Delivery>, BusError> {
        let now = self.clock.now();
        let mut state = lock(&self.state);
        let stream = state
            .streams
            .get_mut(stream_name)
            .ok_or_else(|| BusError::NotFound {
                what: format!("stream {stream_name}"),
            })?;
        Self::expire(stream, now);
        let StreamState {
            messages,
            consumers,
            last_sequence,
            by_subject,
            ..
        } = stream;
        let consumer = consumers
            .get_mut(consumer_name)
            .ok_or_else(|| BusError::NotFound {
                what: format!("consumer {consumer_name} on stream {stream_name}"),
            })?;
        let ack_wait = consumer.spec.ack_wait;
        let mut picked: Vec<(u64, u64)> = Vec::new();

        // Redeliveries first, oldest first, then messages never delivered.
        consumer
            .pending
            .retain(|sequence, _| messages.contains_key(sequence));
        for (sequence, (count, due)) in consumer.pending.iter_mut() {
            if picked.len() >= batch {
                break;
            }
            if *due <= now {
                *count += 1;
                *due = now.saturating_add(ack_wait);
                picked.push((*sequence, *count));
            }
        }
        let literal = !consumer.spec.filter.as_str().contains(['*', '>']);
        if literal {
            let fresh: Vec<u64> = by_subject
                .get(consumer.spec.filter.as_str())
                .map(|sequences| {
                    sequences
                        .range(consumer.next_sequence..)
                        .take(batch - picked.len())
                        .copied()
                        .collect()
                })
                .unwrap_or_default();
            for sequence in fresh {
                consumer.next_sequence = sequence + 1;
                consumer
                    .pending
                    .insert(sequence, (1, now.saturating_add(ack_wait)));
                picked.push((sequence, 1));
            }
            if picked.len() < batch {
                consumer.next_sequence = *last_sequence + 1;
            }
        }
        while !literal && picked.len() < batch && consumer.next_sequence <= *last_sequence {
            let sequence = consumer.next_sequence;
            consumer.next_sequence += 1;
            let Some(stored) = messages.get(&sequence) else {
                continue;
            };
            if !consumer.spec.filter.matches(&stored.subject) {
                continue;
            }
            consumer
                .pending
                .insert(sequence, (1, now.saturating_add(ack_wait)));
            picked.push((sequence, 1));
        }

        let deliveries = picked
            .into_iter()
            .filter_map(|(sequence, count)| {
                let stored = messages.get(&sequence)?;
                Some(Delivery::new(
                    stored.subject.clone(),
                    stored.payload.clone(),
                    sequence,
                    count,
                    Box::new(MemoryAcker {
                        state: Arc::downgrade(&self.state),
                        clock: self.clock.clone(),
                        stream: stream_name.to_owned(),
                        consumer: consumer_name.to_owned(),
                        sequence,
                    }),
                ))
            })
            .collect();
        Ok(deliveries)
    }

    async fn ensure_bucket(&self, bucket: &str, max_age: Option<Duration>) -> Result<(), BusError> {
        super::check_bucket_max_age(bucket, max_age)?;
        let now = self.clock.now();
        let mut state = lock(&self.state);
        let bucket = state.buckets.entry(bucket.to_owned()).or_default();
        bucket.max_age = max_age;
        bucket.expire(now);
        Ok(())
    }

    async fn kv_get(&self, bucket: &str, key: &str) -> Result<Option<KvEntry>, BusError> {
        let now = self.clock.now();
        let mut state = lock(&self.state);
        let found = live_bucket(&mut state, bucket, now)?;
        Ok(found.entries.get(key).map(|(entry, _)| entry.clone()))
    }

    async fn kv_create(&self, bucket: &str, key: &str, value: Bytes) -> Result<u64, BusError> {
        let now = self.clock.now();
        let mut state = lock(&self.state);
        let revision = next_revision(&mut state, bucket);
        let found = live_bucket(&mut state, bucket, now)?;
        if found.entries.contains_key(key) {
            return Err(BusError::KeyExists {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
            });
        }
        found.write(key, KvEntry { value, revision }, now);
        Ok(revision)
    }

    async fn kv_update(
        &self,
        bucket: &str,
        key: &str,
        value: Bytes,
        revision: u64,
    ) -> Result<u64, BusError> {
        let now = self.clock.now();
        let mut state = lock(&self.state);
        let next = next_revision(&mut state, bucket);
        let found = live_bucket(&mut state, bucket, now)?;
        let stored = found.entries.get(key).map(|(entry, _)| entry.revision);
        if stored != Some(revision) {
            return Err(BusError::RevisionMismatch {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                expected: revision,
            });
        }
        let entry = KvEntry {
            value,
            revision: next,
        };
        found.write(key, entry, now);
        Ok(next)
    }

    async fn kv_keys(&self, bucket: &str) -> Result<Vec<String>, BusError> {
        let now = self.clock.now();
        let mut state = lock(&self.state);
        let found = live_bucket(&mut state, bucket, now)?;
        Ok(found.entries.keys().cloned().collect())
    }
}

/// Drops the expired entries of a bucket and returns the bucket.
fn live_bucket<'a>(
    state: &'a mut State,
    bucket: &str,
    now: UnixMillis,
) -> Result<&'a mut BucketState, BusError> {
    let found = state
        .buckets
        .get_mut(bucket)
        .ok_or_else(|| BusError::NotFound {
            what: format!("bucket {bucket}"),
        })?;
    found.expire(now);
    Ok(found)
}

/// Revisions count per bucket, like the sequence of the stream behind a NATS bucket.
fn next_revision(state: &mut State, bucket: &str) -> u64 {
    let counter = state.bucket_revisions.entry(bucket.to_owned()).or_insert(0);
    *counter += 1;
    *counter
}
