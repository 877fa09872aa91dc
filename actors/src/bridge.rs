//! Actors that carry messages from the bus to actix recipients.
//!
//! - [`SubscriptionBridge`] forwards a core subscription. Delivery is best effort, like core
//!   NATS itself: when the recipient's mailbox is full the message is dropped and counted.
//! - [`PullBridge`] pulls from a durable consumer and hands over one delivery at a time,
//!   waiting for the recipient to finish before it pulls again. The recipient acknowledges;
//!   what it does not acknowledge comes back after the consumer's ack wait. A recipient that
//!   returns an error stops the bridge with that error as the reason.
//!
//! Both stop with a reason when the bus fails, so their supervisor restarts them after a
//! back-off.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use warden_bus::transport::Subscription;
use warden_bus::{Bus, BusError, Delivery, Inbound, Subject};

use crate::supervisor::ChildGuard;

/// Log one line for every this many messages dropped on a full mailbox.
const DROPPED_LOG_EVERY: u64 = 100;

/// Forwards each message of a core subscription to a recipient.
pub struct SubscriptionBridge<M>
where
    M: actix::Message<Result = ()> + From<Inbound> + Send + 'static,
{
    bus: Arc<dyn Bus>,
    filter: Subject,
    queue_group: Option<String>,
    recipient: Recipient<M>,
    guard: ChildGuard,
    dropped: u64,
}

impl<M> SubscriptionBridge<M>
where
    M: actix::Message<Result = ()> + From<Inbound> + Send + 'static,
{
    /// Creates a bridge; start it with [`Actor::start`].
    pub fn new(
        bus: Arc<dyn Bus>,
        filter: Subject,
        queue_group: Option<String>,
        recipient: Recipient<M>,
        guard: ChildGuard,
    ) -> Self {
        Self {
            bus,
            filter,
            queue_group,
            recipient,
            guard,
            dropped: 0,
        }
    }
}

impl<M> Actor for SubscriptionBridge<M>
where
    M: actix::Message<Result = ()> + From<Inbound> + Send + 'static,
{
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let bus = self.bus.clone();
        let filter = self.filter.clone();
        let queue_group = self.queue_group.clone();
        let subscribe = async move { bus.subscribe(&filter, queue_group.as_deref()).await };
        ctx.wait(subscribe.into_actor(self).map(
            |result: Result<Subscription, BusError>, bridge, ctx| match result {
                Ok(subscription) => {
                    tracing::info!(subject = %bridge.filter, "subscribed");
                    ctx.add_stream(subscription);
                }
                Err(error) => {
                    bridge
                        .guard
                        .fail(format!("subscribing to {} failed: {error}", bridge.filter));
                    ctx.stop();
                }
            },
        ));
    }
}

impl<M> StreamHandler<Inbound> for SubscriptionBridge<M>
where
    M: actix::Message<Result = ()> + From<Inbound> + Send + 'static,
{
    fn handle(&mut self, message: Inbound, _: &mut Self::Context) {
        if self.recipient.try_send(M::from(message)).is_err() {
            self.dropped += 1;
            if self.dropped % DROPPED_LOG_EVERY == 1 {
                tracing::warn!(subject = %self.filter, dropped = self.dropped, "recipient mailbox full; dropping messages");
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        self.guard
            .fail(format!("subscription to {} ended", self.filter));
        ctx.stop();
    }
}

/// Settings of a [`PullBridge`].
#[derive(Debug, Clone)]
pub struct PullSettings {
    /// Stream of the durable consumer.
    pub stream: String,
    /// Durable consumer name.
    pub consumer: String,
    /// Maximum messages per pull request.
    pub batch: usize,
    /// How long one pull request waits for messages.
    pub wait: Duration,
}

/// Pulls from a durable consumer and hands each delivery to a recipient, one at a time.
pub struct PullBridge<M>
where
    M: actix::Message<Result = Result<(), String>> + From<Delivery> + Send + 'static,
{
    bus: Arc<dyn Bus>,
    settings: PullSettings,
    recipient: Recipient<M>,
    guard: ChildGuard,
}

impl<M> PullBridge<M>
where
    M: actix::Message<Result = Result<(), String>> + From<Delivery> + Send + 'static,
{
    /// Creates a bridge; start it with [`Actor::start`].
    pub fn new(
        bus: Arc<dyn Bus>,
        settings: PullSettings,
        recipient: Recipient<M>,
        guard: ChildGuard,
    ) -> Self {
        Self {
            bus,
            settings,
            recipient,
            guard,
        }
    }
}

impl<M> Actor for PullBridge<M>
where
    M: actix::Message<Result = Result<(), String>> + From<Delivery> + Send + 'static,
{
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let bus = self.bus.clone();
        let settings = self.settings.clone();
        let recipient = self.recipient.clone();
        tracing::info!(consumer = %settings.consumer, stream = %settings.stream, "pulling from durable consumer");
        let pulling = async move {
            loop {
                let deliveries = bus
                    .pull(
                        &settings.stream,
                        &settings.consumer,
                        settings.batch,
                        settings.wait,
                    )
                    .await
                    .map_err(|error| {
                        format!("pulling from {} failed: {error}", settings.consumer)
                    })?;
                for delivery in deliveries {
                    recipient.send(M::from(delivery)).await.map_err(|error| {
                        format!("handing a delivery to its recipient failed: {error}")
                    })??;
                }
            }
        };
        ctx.spawn(
            pulling
                .into_actor(self)
                .map(|result: Result<(), String>, bridge, ctx| {
                    if let Err(reason) = result {
                        bridge.guard.fail(reason);
                    }
                    ctx.stop();
                }),
        );
    }
}
