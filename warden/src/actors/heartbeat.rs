//! Sends heartbeats on an interval with jitter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use rand::RngCore;
use warden_actors::clock::SharedClock;
use warden_actors::entropy::{self, Entropy};
use warden_actors::ChildGuard;
use warden_bus::{Bus, Envelope, MessageId, Subject};

use crate::core::heartbeat::HeartbeatSchedule;

/// Log one line for every this many failed heartbeats in a row.
const FAILURE_LOG_EVERY: u64 = 10;

/// Publishes heartbeats; a failed publish is logged and the schedule goes on.
pub struct Heartbeater {
    bus: Arc<dyn Bus>,
    schedule: HeartbeatSchedule,
    subject: Subject,
    clock: SharedClock,
    rng: Entropy,
    config_version: Arc<AtomicU64>,
    failures_in_a_row: u64,
    _guard: ChildGuard,
}

impl Heartbeater {
    /// Creates the actor; the first heartbeat goes out as soon as it starts.
    pub fn new(
        bus: Arc<dyn Bus>,
        schedule: HeartbeatSchedule,
        subject: Subject,
        clock: SharedClock,
        rng: Entropy,
        config_version: Arc<AtomicU64>,
        guard: ChildGuard,
    ) -> Self {
        Self {
            bus,
            schedule,
            subject,
            clock,
            rng,
            config_version,
            failures_in_a_row: 0,
            _guard: guard,
        }
    }

    fn beat(&mut self, ctx: &mut Context<Self>) {
        let heartbeat = self
            .schedule
            .beat(self.clock.now(), self.config_version.load(Ordering::SeqCst));
        let mut id = [0u8; 16];
        self.rng.fill_bytes(&mut id);
        let bytes =
            match Envelope::seal(MessageId::from_random(id), &heartbeat).and_then(|e| e.encode()) {
                Ok(bytes) => bytes,
                Err(error) => {
                    tracing::error!(error = %error, "failed to encode a heartbeat");
                    return;
                }
            };
        let bus = self.bus.clone();
        let subject = self.subject.clone();
        let sequence = heartbeat.sequence;
        let publish = async move { bus.publish(&subject, bytes.into()).await };
        ctx.spawn(publish.into_actor(self).map(move |result, actor, _| match result {
            Ok(()) => {
                if actor.failures_in_a_row > 0 {
                    tracing::info!(failed = actor.failures_in_a_row, "heartbeats are going out again");
                }
                actor.failures_in_a_row = 0;
                tracing::debug!(sequence, "heartbeat sent");
            }
            Err(error) => {
                actor.failures_in_a_row += 1;
                if actor.failures_in_a_row % FAILURE_LOG_EVERY == 1 {
                    tracing::warn!(error = %error, failures_in_a_row = actor.failures_in_a_row, "failed to send heartbeat");
                }
            }
        }));
    }

    fn schedule_next(&mut self, ctx: &mut Context<Self>) {
        let delay = self
            .schedule
            .next_delay(entropy::unit_interval(&mut self.rng));
        ctx.run_later(delay, |actor, ctx| {
            actor.beat(ctx);
            actor.schedule_next(ctx);
        });
    }
}

impl Actor for Heartbeater {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.beat(ctx);
        self.schedule_next(ctx);
    }
}
