//! The simulated network between each participant and the broker. Every participant talks to
//! the shared in-memory broker through its own [`FaultyBus`], which loses, delays, duplicates
//! and reorders messages, drops acknowledgements, fails operations, and honours partitions,
//! all drawn from the run's seed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rand::Rng;
use warden_actors::entropy::Entropy;
use warden_bus::transport::memory::MemoryBus;
use warden_bus::transport::{Acknowledge, ConsumerSpec, StreamSpec, Subscription};
use warden_bus::{Bus, BusError, Clock, Delivery, KvEntry, ManualClock, Subject, UnixMillis};

use crate::config::FaultRates;

/// Who is on the other end of a [`FaultyBus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Participant {
    /// A node's Warden.
    Node(usize),
    /// A control-plane replica.
    Replica(usize),
}

/// Which directions a partition cuts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Nothing gets through.
    Both,
    /// The participant cannot send; it still receives.
    Sending,
    /// The participant cannot receive; it still sends.
    Receiving,
}

/// Counts of injected faults, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Count per fault kind.
    pub by_kind: BTreeMap<&'static str, u64>,
}

impl FaultCounts {
    /// Counts one fault.
    pub fn add(&mut self, kind: &'static str) {
        *self.by_kind.entry(kind).or_insert(0) += 1;
    }

    /// Total faults.
    pub fn total(&self) -> u64 {
        self.by_kind.values().sum()
    }
}

/// Shared state of the simulated network.
pub struct Network {
    rng: Entropy,
    rates: FaultRates,
    enabled: bool,
    partitions: BTreeMap<Participant, Cut>,
    delayed: Vec<(UnixMillis, u64, Subject, Bytes)>,
    delayed_sequence: u64,
    /// Injected faults so far.
    pub faults: FaultCounts,
}

impl Network {
    /// A network drawing from `rng` with the given rates.
    pub fn new(rng: Entropy, rates: FaultRates) -> Self {
        Self {
            rng,
            rates,
            enabled: true,
            partitions: BTreeMap::new(),
            delayed: Vec::new(),
            delayed_sequence: 0,
            faults: FaultCounts::default(),
        }
    }

    /// Stops or resumes every fault; stopping also heals all partitions.
    pub fn set_enabled(&mut self, enabled: bool) {
        self.enabled = enabled;
        if !enabled {
            self.partitions.clear();
        }
    }

    /// Cuts a participant off in the given directions.
    pub fn partition(&mut self, who: Participant, cut: Cut) {
        self.partitions.insert(who, cut);
        self.faults.add(match cut {
            Cut::Both => "partition",
            Cut::Sending => "one-way partition (send)",
            Cut::Receiving => "one-way partition (receive)",
        });
    }

    /// Heals a participant's partition.
    pub fn heal(&mut self, who: Participant) {
        self.partitions.remove(&who);
    }

    /// Checks whether a request from `from` reaches `to` and its reply comes back: no partition
    /// in the way and neither message lost. Losses count as faults.
    pub fn round_trip(&mut self, from: Participant, to: Participant) -> Result<(), &'static str> {
        if !(self.can_send(from) && self.can_receive(to)) {
            return Err("a partition cut the request");
        }
        if !(self.can_send(to) && self.can_receive(from)) {
            return Err("a partition cut the reply");
        }
        let loss = self.rates.message_loss;
        if self.roll(loss, "request lost") {
            return Err("the request was lost");
        }
        if self.roll(loss, "reply lost") {
            return Err("the reply was lost");
        }
        Ok(())
    }

    /// Checks whether `who` can both send and receive.
    pub fn connected(&self, who: Participant) -> bool {
        self.can_send(who) && self.can_receive(who)
    }

    fn roll(&mut self, probability: f64, kind: &'static str) -> bool {
        if !self.enabled || probability <= 0.0 || !self.rng.gen_bool(probability.min(1.0)) {
            return false;
        }
        self.faults.add(kind);
        true
    }

    fn can_send(&self, who: Participant) -> bool {
        !matches!(self.partitions.get(&who), Some(Cut::Both | Cut::Sending))
    }

    fn can_receive(&self, who: Participant) -> bool {
        !matches!(self.partitions.get(&who), Some(Cut::Both | Cut::Receiving))
    }

    /// Takes the delayed messages that are due at `now`, in the order they become due.
    fn take_due(&mut self, now: UnixMillis) -> Vec<(Subject, Bytes)> {
        self.delayed
            .sort_by_key(|(due, sequence, _, _)| (*due, *sequence));
        let split = self.delayed.partition_point(|(due, _, _, _)| *due <= now);
        self.delayed
            .drain(..split)
            .map(|(_, _, subject, payload)| (subject, payload))
            .collect()
    }
}

/// Locks the network; a poisoned lock only means a panic elsewhere, and the state is plain data.
pub fn lock(network: &Mutex<Network>) -> MutexGuard<'_, Network> {
    network.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Delivers delayed core messages that are due.
pub async fn release_due(network: &Mutex<Network>, broker: &MemoryBus, now: UnixMillis) {
    let due = lock(network).take_due(now);
    for (subject, payload) in due {
        let _ = broker.publish(&subject, payload).await;
    }
}

/// One participant's view of the broker, through the simulated network.
#[derive(Clone)]
pub struct FaultyBus {
    broker: MemoryBus,
    who: Participant,
    network: Arc<Mutex<Network>>,
    clock: ManualClock,
}

impl FaultyBus {
    /// Connects `who` to the broker through the network; `clock` is the broker's true time.
    pub fn new(
        broker: MemoryBus,
        who: Participant,
        network: Arc<Mutex<Network>>,
        clock: ManualClock,
    ) -> Self {
        Self {
            broker,
            who,
            network,
            clock,
        }
    }

    fn unreachable(&self, operation: &str) -> BusError {
        BusError::Timeout {
            operation: format!("{operation} (simulated partition)"),
            timeout: Duration::from_secs(10),
        }
    }

    fn failed(&self, operation: &str) -> BusError {
        BusError::Timeout {
            operation: format!("{operation} (simulated loss)"),
            timeout: Duration::from_secs(10),
        }
    }

    fn check_send(&self, operation: &str) -> Result<(), BusError> {
        if lock(&self.network).can_send(self.who) {
            Ok(())
        } else {
            Err(self.unreachable(operation))
        }
    }

    fn check_both(&self, operation: &str) -> Result<(), BusError> {
        let network = lock(&self.network);
        if network.can_send(self.who) && network.can_receive(self.who) {
            Ok(())
        } else {
            Err(self.unreachable(operation))
        }
    }

    fn kv_fault(&self, operation: &str) -> Result<(), BusError> {
        self.check_both(operation)?;
        let mut network = lock(&self.network);
        let rate = network.rates.kv_failure;
        if network.roll(rate, "key-value failure") {
            return Err(self.failed(operation));
        }
        Ok(())
    }
}

struct FaultyAcker {
    delivery: Delivery,
    who: Participant,
    network: Arc<Mutex<Network>>,
}

#[async_trait]
impl Acknowledge for FaultyAcker {
    async fn ack(&self) -> Result<(), BusError> {
        let (reachable, lost) = {
            let mut network = lock(&self.network);
            let reachable = network.can_send(self.who);
            let rate = network.rates.ack_loss;
            (
                reachable,
                reachable && network.roll(rate, "acknowledgement lost"),
            )
        };
        if !reachable {
            return Err(BusError::Timeout {
                operation: "acknowledging (simulated partition)".into(),
                timeout: Duration::from_secs(10),
            });
        }
        // A lost acknowledgement looks sent to the sender; the broker redelivers after the wait.
        if lost {
            return Ok(());
        }
        self.delivery.ack().await
    }

    async fn nak(&self, delay: Option<Duration>) -> Result<(), BusError> {
        if !lock(&self.network).can_send(self.who) {
            return Err(BusError::Timeout {
                operation: "rejecting (simulated partition)".into(),
                timeout: Duration::from_secs(10),
            });
        }
        self.delivery.nak(delay).await
    }
}

#[async_trait]
impl Bus for FaultyBus {
    async fn publish(&self, subject: &Subject, payload: Bytes) -> Result<(), BusError> {
        // Core NATS gives no delivery guarantee: a partitioned sender's message just vanishes.
        let action = {
            let mut network = lock(&self.network);
            let rates = network.rates;
            if !network.can_send(self.who) || network.roll(rates.message_loss, "message lost") {
                None
            } else if network.roll(rates.message_delay, "message delayed") {
                let delay_ms = network
                    .rng
                    .gen_range(1..=rates.delay_max.as_millis().max(1));
                let due = self
                    .clock
                    .now()
                    .saturating_add(Duration::from_millis(u64::try_from(delay_ms).unwrap_or(1)));
                network.delayed_sequence += 1;
                let sequence = network.delayed_sequence;
                network
                    .delayed
                    .push((due, sequence, subject.clone(), payload.clone()));
                None
            } else if network.roll(rates.duplicate, "message duplicated") {
                Some(2)
            } else {
                Some(1)
            }
        };
        for _ in 0..action.unwrap_or(0) {
            self.broker.publish(subject, payload.clone()).await?;
        }
        Ok(())
    }

    async fn request(
        &self,
        subject: &Subject,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, BusError> {
        self.check_both("sending a request")?;
        self.broker.request(subject, payload, timeout).await
    }

    async fn reply(&self, reply_subject: &str, payload: Bytes) -> Result<(), BusError> {
        self.check_send("replying")?;
        self.broker.reply(reply_subject, payload).await
    }

    async fn subscribe(
        &self,
        filter: &Subject,
        queue_group: Option<&str>,
    ) -> Result<Subscription, BusError> {
        self.broker.subscribe(filter, queue_group).await
    }

    async fn ensure_stream(&self, spec: &StreamSpec) -> Result<(), BusError> {
        self.broker.ensure_stream(spec).await
    }

    async fn ensure_consumer(&self, spec: &ConsumerSpec) -> Result<(), BusError> {
        self.kv_fault("creating a consumer")?;
        self.broker.ensure_consumer(spec).await
    }

    async fn persist(
        &self,
        subject: &Subject,
        payload: Bytes,
        dedup_id: Option<&str>,
    ) -> Result<u64, BusError> {
        self.check_send("storing a message")?;
        let (lost, ambiguous, duplicate) = {
            let mut network = lock(&self.network);
            let rates = network.rates;
            let lost = network.roll(rates.store_loss, "store failed");
            let ambiguous = !lost && network.roll(rates.store_ambiguous, "store reply lost");
            let duplicate = !lost
                && dedup_id.is_none()
                && network.roll(rates.duplicate, "message stored twice");
            (lost, ambiguous, duplicate)
        };
        if lost {
            return Err(self.failed("storing a message"));
        }
        let sequence = self
            .broker
            .persist(subject, payload.clone(), dedup_id)
            .await?;
        if duplicate {
            self.broker.persist(subject, payload, dedup_id).await?;
        }
        if ambiguous || !lock(&self.network).can_receive(self.who) {
            return Err(self.failed("waiting for the store acknowledgement"));
        }
        Ok(sequence)
    }

    async fn pull(
        &self,
        stream: &str,
        consumer: &str,
        batch: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, BusError> {
        self.check_both("pulling")?;
        {
            let mut network = lock(&self.network);
            let rate = network.rates.pull_empty;
            if network.roll(rate, "pull returned nothing") {
                return Ok(Vec::new());
            }
        }
        let deliveries = self.broker.pull(stream, consumer, batch, wait).await?;
        Ok(deliveries
            .into_iter()
            .map(|delivery| {
                let (subject, payload, sequence, count) = (
                    delivery.subject.clone(),
                    delivery.payload.clone(),
                    delivery.stream_sequence,
                    delivery.delivered_count,
                );
                let acker = FaultyAcker {
                    delivery,
                    who: self.who,
                    network: self.network.clone(),
                };
                Delivery::new(subject, payload, sequence, count, Box::new(acker))
            })
            .collect())
    }

    async fn ensure_bucket(&self, bucket: &str, max_age: Option<Duration>) -> Result<(), BusError> {
        self.broker.ensure_bucket(bucket, max_age).await
    }

    async fn kv_get(&self, bucket: &str, key: &str) -> Result<Option<KvEntry>, BusError> {
        self.kv_fault("reading a key")?;
        self.broker.kv_get(bucket, key).await
    }

    async fn kv_create(&self, bucket: &str, key: &str, value: Bytes) -> Result<u64, BusError> {
        self.kv_fault("creating a key")?;
        self.broker.kv_create(bucket, key, value).await
    }

    async fn kv_update(
        &self,
        bucket: &str,
        key: &str,
        value: Bytes,
        revision: u64,
    ) -> Result<u64, BusError> {
        self.kv_fault("updating a key")?;
        self.broker.kv_update(bucket, key, value, revision).await
    }

    async fn kv_keys(&self, bucket: &str) -> Result<Vec<String>, BusError> {
        self.kv_fault("listing keys")?;
        self.broker.kv_keys(bucket).await
    }
}
