//! Heartbeat scheduling and content.

use std::time::Duration;

use warden_bus::{DeploymentId, Heartbeat, NodeId, UnixMillis};

/// Default time between heartbeats.
pub const HEARTBEAT_INTERVAL_DEFAULT: Duration = Duration::from_secs(10);

/// Fraction of the interval by which each delay may deviate, up or down.
pub const HEARTBEAT_JITTER_FRACTION: f64 = 0.2;

/// Decides when to send the next heartbeat and what it says.
#[derive(Debug, Clone)]
pub struct HeartbeatSchedule {
    deployment: DeploymentId,
    node: NodeId,
    interval: Duration,
    sequence: u64,
    warden_version: String,
}

impl HeartbeatSchedule {
    /// Creates a schedule; the first heartbeat has sequence 1.
    pub fn new(
        deployment: DeploymentId,
        node: NodeId,
        interval: Duration,
        warden_version: String,
    ) -> Self {
        Self {
            deployment,
            node,
            interval,
            sequence: 0,
            warden_version,
        }
    }

    /// Delay before the next heartbeat: the interval moved by up to ±20 %, from `unit` in
    /// `[0, 1)`, so nodes started together drift apart.
    pub fn next_delay(&self, unit: f64) -> Duration {
        let factor = 1.0 - HEARTBEAT_JITTER_FRACTION
            + 2.0 * HEARTBEAT_JITTER_FRACTION * unit.clamp(0.0, 1.0);
        self.interval.mul_f64(factor)
    }

    /// Builds the next heartbeat.
    pub fn beat(&mut self, now: UnixMillis, config_version: u64) -> Heartbeat {
        self.sequence += 1;
        Heartbeat {
            deployment: self.deployment.clone(),
            node: self.node.clone(),
            sequence: self.sequence,
            sent_at: now,
            warden_version: self.warden_version.clone(),
            config_version,
            components: Vec::new(),
            certificate: None,
            access_version: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_stays_within_jitter() {
        let schedule = HeartbeatSchedule::new(
            DeploymentId::new("d").unwrap(),
            NodeId::new("n").unwrap(),
            Duration::from_secs(10),
            "0.1.0".into(),
        );
        assert_eq!(schedule.next_delay(0.0), Duration::from_secs(8));
        assert_eq!(schedule.next_delay(0.5), Duration::from_secs(10));
        assert!(schedule.next_delay(0.999_999) <= Duration::from_secs(12));
    }

    #[test]
    fn sequence_counts_from_one() {
        let mut schedule = HeartbeatSchedule::new(
            DeploymentId::new("d").unwrap(),
            NodeId::new("n").unwrap(),
            Duration::from_secs(10),
            "0.1.0".into(),
        );
        assert_eq!(schedule.beat(UnixMillis(1), 0).sequence, 1);
        let second = schedule.beat(UnixMillis(2), 4);
        assert_eq!(second.sequence, 2);
        assert_eq!(second.config_version, 4);
    }
}
