//! The control plane's background actors, under one supervisor:
//!
//! ```text
//! Supervisor "control-plane"
//! ├── reports: PullBridge (shared durable consumer) → ReportIngest
//! ├── heartbeats: SubscriptionBridge (queue group) → HeartbeatIngest
//! ├── logs: SubscriptionBridge (queue group) → LogIngest
//! └── sweeper: Sweeper (node health, unpublished tasks, expiry; the lease holder only)
//! ```

use std::time::Duration;

use actix::prelude::*;
use warden_actors::bridge::{PullBridge, PullSettings, SubscriptionBridge};
use warden_actors::{entropy, BackoffConfig, ChildGuard, Supervisor};
use warden_bus::subject::{CONTROL_PLANE_QUEUE, REPORT_CONSUMER, REPORT_STREAM};
use warden_bus::{Delivery, Inbound, Subject, TelemetryKind};

use crate::service::{ControlPlane, Disposition, ServiceError};

/// Restart back-off of the control plane's actors.
pub const RESTART_BACKOFF_BASE: Duration = Duration::from_millis(200);
/// Maximum restart back-off.
pub const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long one pull request for reports waits.
pub const REPORT_PULL_WAIT: Duration = Duration::from_secs(5);
/// Reports pulled per request.
pub const REPORT_PULL_BATCH: usize = 64;

/// A report pulled from the report stream.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct PulledReport(pub Delivery);

impl From<Delivery> for PulledReport {
    fn from(delivery: Delivery) -> Self {
        Self(delivery)
    }
}

/// Records task reports, then acknowledges them.
pub struct ReportIngest {
    control_plane: ControlPlane,
}

impl Actor for ReportIngest {
    type Context = Context<Self>;
}

impl Handler<PulledReport> for ReportIngest {
    type Result = ResponseFuture<Result<(), String>>;

    fn handle(
        &mut self,
        PulledReport(delivery): PulledReport,
        _: &mut Self::Context,
    ) -> Self::Result {
        let control_plane = self.control_plane.clone();
        Box::pin(async move {
            // A broker failure leaves the report unacknowledged, so it is redelivered.
            let disposition = control_plane
                .ingest_report(
                    &delivery.subject,
                    &delivery.payload,
                    delivery.delivered_count,
                )
                .await
                .map_err(|error| format!("recording a report failed: {error}"))?;
            match disposition {
                Disposition::Done => delivery.ack().await,
                Disposition::Retry(delay) => delivery.nak(Some(delay)).await,
            }
            .map_err(|error| format!("settling a report failed: {error}"))
        })
    }
}

/// A heartbeat from a core subscription.
#[derive(Message)]
#[rtype(result = "()")]
pub struct InboundHeartbeat(pub Inbound);

impl From<Inbound> for InboundHeartbeat {
    fn from(inbound: Inbound) -> Self {
        Self(inbound)
    }
}

/// Records heartbeats in node records.
pub struct HeartbeatIngest {
    control_plane: ControlPlane,
}

impl Actor for HeartbeatIngest {
    type Context = Context<Self>;
}

impl Handler<InboundHeartbeat> for HeartbeatIngest {
    type Result = ResponseFuture<()>;

    fn handle(
        &mut self,
        InboundHeartbeat(inbound): InboundHeartbeat,
        _: &mut Self::Context,
    ) -> Self::Result {
        let control_plane = self.control_plane.clone();
        Box::pin(async move {
            if let Err(error) = control_plane
                .ingest_heartbeat(&inbound.subject, &inbound.payload)
                .await
            {
                tracing::warn!(subject = %inbound.subject, error = %error, "failed to record a heartbeat");
            }
        })
    }
}

/// A batch of component output from a core subscription.
#[derive(Message)]
#[rtype(result = "()")]
pub struct InboundLogs(pub Inbound);

impl From<Inbound> for InboundLogs {
    fn from(inbound: Inbound) -> Self {
        Self(inbound)
    }
}

/// Writes nodes' component output to the control plane's log.
pub struct LogIngest {
    control_plane: ControlPlane,
}

impl Actor for LogIngest {
    type Context = Context<Self>;
}

impl Handler<InboundLogs> for LogIngest {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, InboundLogs(inbound): InboundLogs, _: &mut Self::Context) -> Self::Result {
        let control_plane = self.control_plane.clone();
        Box::pin(async move {
            if let Err(error) = control_plane
                .ingest_logs(&inbound.subject, &inbound.payload)
                .await
            {
                tracing::warn!(subject = %inbound.subject, error = %error, "failed to handle a log batch");
            }
        })
    }
}

/// A node's request from a core subscription.
#[derive(Message)]
#[rtype(result = "()")]
pub struct InboundRequest(pub Inbound);

impl From<Inbound> for InboundRequest {
    fn from(inbound: Inbound) -> Self {
        Self(inbound)
    }
}

/// Answers nodes' enrollment and renewal requests.
pub struct RpcResponder {
    control_plane: ControlPlane,
}

impl Actor for RpcResponder {
    type Context = Context<Self>;
}

impl Handler<InboundRequest> for RpcResponder {
    type Result = ResponseFuture<()>;

    fn handle(
        &mut self,
        InboundRequest(inbound): InboundRequest,
        _: &mut Self::Context,
    ) -> Self::Result {
        let control_plane = self.control_plane.clone();
        Box::pin(async move {
            let Some(reply_subject) = inbound.reply.as_deref() else {
                tracing::warn!(subject = %inbound.subject, "dropping a request without a reply subject");
                return;
            };
            // The sender picks the reply subject, and this process may publish anywhere in the
            // account: answer only in the requesting node's own inbox.
            if !warden_bus::subject::reply_allowed(&inbound.subject, reply_subject) {
                let admitted = warden_bus::NodeSubject::parse(&inbound.subject)
                    .map_or(Some(0), |origin| control_plane.may_log(&origin));
                if let Some(suppressed) = admitted {
                    tracing::warn!(
                        subject = %inbound.subject,
                        reply = %truncate_for_log(reply_subject),
                        suppressed,
                        "dropping a request whose reply subject is not the sender's inbox"
                    );
                }
                return;
            }
            let reply = match control_plane
                .handle_rpc(&inbound.subject, &inbound.payload)
                .await
            {
                Ok(Some(reply)) => reply,
                Ok(None) => return,
                Err(error) => {
                    // No reply: the node retries after its timeout.
                    tracing::warn!(subject = %inbound.subject, error = %error, "failed to answer a request");
                    return;
                }
            };
            if let Err(error) = control_plane.bus().reply(reply_subject, reply.into()).await {
                tracing::warn!(subject = %inbound.subject, error = %error, "failed to send a reply");
            }
        })
    }
}

/// At most 80 characters of an untrusted string, for a log line.
fn truncate_for_log(text: &str) -> String {
    text.chars().take(80).collect()
}

/// Runs [`ControlPlane::sweep`] on an interval.
pub struct Sweeper {
    control_plane: ControlPlane,
    interval: Duration,
    running: bool,
    _guard: ChildGuard,
}

impl Actor for Sweeper {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.interval, |sweeper, ctx| {
            // Skip a tick while the previous sweep still runs instead of piling them up.
            if sweeper.running {
                return;
            }
            sweeper.running = true;
            let control_plane = sweeper.control_plane.clone();
            let sweep = async move { control_plane.sweep().await };
            ctx.spawn(sweep.into_actor(sweeper).map(|result: Result<(), ServiceError>, sweeper, _| {
                sweeper.running = false;
                if let Err(error) = result {
                    tracing::warn!(error = %error, "sweep failed; retrying at the next interval");
                }
            }));
        });
    }
}

/// Starts the supervised background actors. Must be called inside an actix system.
pub fn start(control_plane: ControlPlane) -> Addr<Supervisor> {
    let sweep_interval = control_plane.settings().sweep_interval;
    let backoff = BackoffConfig::new(RESTART_BACKOFF_BASE, RESTART_BACKOFF_MAX)
        .unwrap_or_else(|_| unreachable!("the constants satisfy base > 0 and max >= base"));
    let reports = control_plane.clone();
    let heartbeats = control_plane.clone();
    let logs = control_plane.clone();
    let requests = control_plane.clone();
    let sweeper = control_plane;
    Supervisor::new("control-plane", backoff, entropy::from_os())
        .child("reports", move |guard| {
            let ingest = ReportIngest {
                control_plane: reports.clone(),
            }
            .start();
            let settings = PullSettings {
                stream: REPORT_STREAM.into(),
                consumer: REPORT_CONSUMER.into(),
                batch: REPORT_PULL_BATCH,
                wait: REPORT_PULL_WAIT,
            };
            PullBridge::<PulledReport>::new(
                reports.bus().clone(),
                settings,
                ingest.recipient(),
                guard,
            )
            .start();
        })
        .child("heartbeats", move |guard| {
            let ingest = HeartbeatIngest {
                control_plane: heartbeats.clone(),
            }
            .start();
            SubscriptionBridge::<InboundHeartbeat>::new(
                heartbeats.bus().clone(),
                Subject::all_telemetry(TelemetryKind::Heartbeat),
                Some(CONTROL_PLANE_QUEUE.into()),
                ingest.recipient(),
                guard,
            )
            .start();
        })
        .child("logs", move |guard| {
            let ingest = LogIngest {
                control_plane: logs.clone(),
            }
            .start();
            SubscriptionBridge::<InboundLogs>::new(
                logs.bus().clone(),
                Subject::all_telemetry(TelemetryKind::Logs),
                Some(CONTROL_PLANE_QUEUE.into()),
                ingest.recipient(),
                guard,
            )
            .start();
        })
        .child("requests", move |guard| {
            let responder = RpcResponder {
                control_plane: requests.clone(),
            }
            .start();
            SubscriptionBridge::<InboundRequest>::new(
                requests.bus().clone(),
                Subject::all_requests(),
                Some(CONTROL_PLANE_QUEUE.into()),
                responder.recipient(),
                guard,
            )
            .start();
        })
        .child("sweeper", move |guard| {
            Sweeper {
                control_plane: sweeper.clone(),
                interval: sweep_interval,
                running: false,
                _guard: guard,
            }
            .start();
        })
        .start()
}
