//! Sends heartbeats on an interval with jitter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use rand::RngCore;
use warden_actors::clock::SharedClock;
use warden_actors::entropy::{self, Entropy};
use warden_actors::ChildGuard;
use warden_bus::{Bus, Envelope, MessageId, SigningKey, Subject};

use super::certificates::CertificateBoard;
use super::components::StatusBoard;
use crate::core::heartbeat::HeartbeatSchedule;

/// Log one line for every this many failed heartbeats in a row.
const FAILURE_LOG_EVERY: u64 = 10;

/// What a [`Heartbeater`] is built from.
pub struct HeartbeatParts {
    /// The broker.
    pub bus: Arc<dyn Bus>,
    /// When to beat and what to say.
    pub schedule: HeartbeatSchedule,
    /// This node's heartbeat subject.
    pub subject: Subject,
    /// Wall clock.
    pub clock: SharedClock,
    /// Jitter and message ids.
    pub rng: Entropy,
    /// Applied configuration version, kept current by the task runner.
    pub config_version: Arc<AtomicU64>,
    /// Heartbeats the broker accepted since the start; a self-upgrade waits for the first.
    pub sent: Arc<AtomicU64>,
    /// The node's key, which signs each heartbeat.
    pub node_key: SigningKey,
    /// Phases of the supervised components.
    pub components: StatusBoard,
    /// The node's TLS certificate, once one is installed.
    pub certificate: CertificateBoard,
    /// Version of the installed access rules, if the node manages them.
    pub access_version: Option<Arc<AtomicU64>>,
}

/// Publishes heartbeats; a failed publish is logged and the schedule goes on.
pub struct Heartbeater {
    parts: HeartbeatParts,
    failures_in_a_row: u64,
    _guard: ChildGuard,
}

impl Heartbeater {
    /// Creates the actor; the first heartbeat goes out as soon as it starts.
    pub fn new(parts: HeartbeatParts, guard: ChildGuard) -> Self {
        Self {
            parts,
            failures_in_a_row: 0,
            _guard: guard,
        }
    }

    fn beat(&mut self, ctx: &mut Context<Self>) {
        let mut heartbeat = self.parts.schedule.beat(
            self.parts.clock.now(),
            self.parts.config_version.load(Ordering::SeqCst),
        );
        heartbeat.components = self
            .parts
            .components
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        heartbeat.certificate = *self
            .parts
            .certificate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        heartbeat.access_version = self
            .parts
            .access_version
            .as_ref()
            .map(|version| version.load(Ordering::SeqCst));
        let mut id = [0u8; 16];
        self.parts.rng.fill_bytes(&mut id);
        let bytes = match Envelope::seal(MessageId::from_random(id), &heartbeat)
            .and_then(|envelope| self.parts.node_key.sign(&envelope))
            .and_then(|signed| signed.encode())
        {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::error!(error = %error, "failed to encode a heartbeat");
                return;
            }
        };
        let bus = self.parts.bus.clone();
        let subject = self.parts.subject.clone();
        let sequence = heartbeat.sequence;
        let publish = async move { bus.publish(&subject, bytes.into()).await };
        ctx.spawn(publish.into_actor(self).map(move |result, actor, _| match result {
            Ok(()) => {
                if actor.failures_in_a_row > 0 {
                    tracing::info!(failed = actor.failures_in_a_row, "heartbeats are going out again");
                }
                actor.failures_in_a_row = 0;
                actor.parts.sent.fetch_add(1, Ordering::SeqCst);
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
            .parts
            .schedule
            .next_delay(entropy::unit_interval(&mut self.parts.rng));
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
