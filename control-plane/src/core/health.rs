//! Node health from heartbeats.
//!
//! ```text
//! pending ──first heartbeat──► healthy ──no heartbeat for the threshold──► unreachable
//!                                 ▲                                           │
//!                                 └────────────── heartbeat ──────────────────┘
//! ```
//!
//! Liveness is judged by when the control plane received heartbeats, not by the node's clock,
//! so a node with a wrong clock is still judged correctly.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use warden_bus::messages::{
    truncate, CertificateStatus, ComponentStatus, COMPONENT_DETAIL_BYTES_MAX,
};
use warden_bus::{DeploymentId, Heartbeat, NodeId, UnixMillis};

use crate::core::certificates::Alert;
use crate::core::enrollment::Enrollment;

/// Default time without heartbeats after which a node is unreachable.
pub const UNREACHABLE_AFTER_DEFAULT: Duration = Duration::from_secs(120);

/// Maximum size of the Warden version kept from a heartbeat, in bytes.
pub const WARDEN_VERSION_BYTES_MAX: usize = 64;

/// Maximum number of health transitions kept per node.
pub const TRANSITIONS_MAX: usize = 20;

/// Health of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeHealth {
    /// Registered; no heartbeat received yet.
    Pending,
    /// Heartbeats arrive.
    Healthy,
    /// No heartbeat for longer than the threshold.
    Unreachable,
}

impl NodeHealth {
    /// The health as written in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Healthy => "healthy",
            Self::Unreachable => "unreachable",
        }
    }
}

/// A change of health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthTransition {
    /// When the control plane saw it.
    pub at: UnixMillis,
    /// Health before.
    pub from: NodeHealth,
    /// Health after.
    pub to: NodeHealth,
    /// Why.
    pub reason: String,
}

/// Maximum number of component states kept per node; a node supervises at most two.
pub const COMPONENTS_MAX: usize = 4;

/// The control plane's record of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Deployment.
    pub deployment: DeploymentId,
    /// Node.
    pub node: NodeId,
    /// When the node was added.
    pub registered_at: UnixMillis,
    /// Current health.
    pub health: NodeHealth,
    /// When the last heartbeat was received, by the control plane's clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_at: Option<UnixMillis>,
    /// Sequence of the last heartbeat.
    #[serde(default)]
    pub last_sequence: u64,
    /// Warden version from the last heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warden_version: Option<String>,
    /// Applied configuration version from the last heartbeat.
    #[serde(default)]
    pub config_version: u64,
    /// Component phases from the last heartbeat, at most [`COMPONENTS_MAX`].
    #[serde(default)]
    pub components: Vec<ComponentStatus>,
    /// Recent health transitions, oldest first.
    #[serde(default)]
    pub transitions: Vec<HealthTransition>,
    /// The node's enrolled key and its enrollment token.
    #[serde(default)]
    pub enrollment: Enrollment,
    /// DNS names and IP addresses registered for the node, normalized; its certificates name
    /// these and no others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_names: Vec<String>,
    /// The node's certificate as its last heartbeat described it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateStatus>,
    /// When the node received its recent certificates, for the rate limit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates_issued: Vec<UnixMillis>,
    /// When the control plane last asked the node to fetch the current trust bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_nudged_at: Option<UnixMillis>,
    /// The bundle version the control plane last asked the node to fetch.
    #[serde(default)]
    pub bundle_nudged_for: u64,
    /// Active alerts and recently resolved ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<Alert>,
    /// Version of the node's installed access rules, from the last heartbeat that reported one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_version: Option<u64>,
    /// The desired access rules version the control plane last sent the node again.
    #[serde(default)]
    pub access_resent_for: u64,
    /// When it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_resent_at: Option<UnixMillis>,
    /// The desired configuration version the control plane last sent the node again.
    #[serde(default)]
    pub config_resent_for: u64,
    /// When it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_resent_at: Option<UnixMillis>,
}

impl NodeRecord {
    /// A node just added.
    pub fn new(deployment: DeploymentId, node: NodeId, now: UnixMillis) -> Self {
        Self {
            deployment,
            node,
            registered_at: now,
            health: NodeHealth::Pending,
            last_heartbeat_at: None,
            last_sequence: 0,
            warden_version: None,
            config_version: 0,
            components: Vec::new(),
            transitions: Vec::new(),
            enrollment: Enrollment::default(),
            tls_names: Vec::new(),
            certificate: None,
            certificates_issued: Vec::new(),
            bundle_nudged_at: None,
            bundle_nudged_for: 0,
            alerts: Vec::new(),
            access_version: None,
            access_resent_for: 0,
            access_resent_at: None,
            config_resent_for: 0,
            config_resent_at: None,
        }
    }

    /// Records a heartbeat received at `now`. Returns the health transition it caused, if any.
    pub fn on_heartbeat(
        &mut self,
        heartbeat: &Heartbeat,
        now: UnixMillis,
    ) -> Option<HealthTransition> {
        self.last_heartbeat_at = Some(self.last_heartbeat_at.map_or(now, |last| last.max(now)));
        self.last_sequence = heartbeat.sequence;
        self.warden_version = Some(truncate(
            &heartbeat.warden_version,
            WARDEN_VERSION_BYTES_MAX,
        ));
        self.config_version = heartbeat.config_version;
        self.components = heartbeat
            .components
            .iter()
            .take(COMPONENTS_MAX)
            .map(|status| ComponentStatus {
                detail: truncate(&status.detail, COMPONENT_DETAIL_BYTES_MAX),
                ..status.clone()
            })
            .collect();
        if heartbeat.certificate.is_some() {
            self.certificate = heartbeat.certificate;
        }
        if heartbeat.access_version.is_some() {
            self.access_version = heartbeat.access_version;
        }
        match self.health {
            NodeHealth::Healthy => None,
            NodeHealth::Pending => {
                self.transition(now, NodeHealth::Healthy, "first heartbeat received".into())
            }
            NodeHealth::Unreachable => {
                self.transition(now, NodeHealth::Healthy, "heartbeats resumed".into())
            }
        }
    }

    /// Checks the time since the last heartbeat. Returns the transition, if any.
    pub fn on_tick(
        &mut self,
        now: UnixMillis,
        unreachable_after: Duration,
    ) -> Option<HealthTransition> {
        let last = self.last_heartbeat_at?;
        if self.health != NodeHealth::Healthy || now.since(last) < unreachable_after {
            return None;
        }
        let reason = format!(
            "no heartbeat for {}s (threshold {}s)",
            now.since(last).as_secs(),
            unreachable_after.as_secs()
        );
        self.transition(now, NodeHealth::Unreachable, reason)
    }

    fn transition(
        &mut self,
        now: UnixMillis,
        to: NodeHealth,
        reason: String,
    ) -> Option<HealthTransition> {
        let transition = HealthTransition {
            at: now,
            from: self.health,
            to,
            reason,
        };
        self.health = to;
        if self.transitions.len() >= TRANSITIONS_MAX {
            self.transitions.remove(0);
        }
        self.transitions.push(transition.clone());
        Some(transition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat(sequence: u64) -> Heartbeat {
        Heartbeat {
            deployment: DeploymentId::new("d").unwrap(),
            node: NodeId::new("n").unwrap(),
            sequence,
            sent_at: UnixMillis(0),
            warden_version: "0.1.0".into(),
            config_version: 2,
            components: Vec::new(),
            certificate: None,
            access_version: None,
        }
    }

    fn node() -> NodeRecord {
        NodeRecord::new(
            DeploymentId::new("d").unwrap(),
            NodeId::new("n").unwrap(),
            UnixMillis(0),
        )
    }

    #[test]
    fn healthy_unreachable_healthy() {
        let threshold = Duration::from_secs(120);
        let mut node = node();
        assert_eq!(
            node.on_heartbeat(&heartbeat(1), UnixMillis(1_000))
                .unwrap()
                .to,
            NodeHealth::Healthy
        );
        assert_eq!(node.on_tick(UnixMillis(120_999), threshold), None);
        let down = node.on_tick(UnixMillis(121_000), threshold).unwrap();
        assert_eq!(
            (down.from, down.to),
            (NodeHealth::Healthy, NodeHealth::Unreachable)
        );
        assert!(down.reason.contains("120s"), "{}", down.reason);
        assert_eq!(
            node.on_tick(UnixMillis(500_000), threshold),
            None,
            "only one transition"
        );
        let up = node
            .on_heartbeat(&heartbeat(2), UnixMillis(600_000))
            .unwrap();
        assert_eq!(
            (up.from, up.to),
            (NodeHealth::Unreachable, NodeHealth::Healthy)
        );
        assert_eq!(node.transitions.len(), 3);
        assert_eq!(node.config_version, 2);
    }

    #[test]
    fn heartbeat_component_phases_bounded() {
        use warden_bus::messages::{Component, ComponentPhase};
        let mut node = node();
        let mut beat = heartbeat(1);
        beat.components = (0..10)
            .map(|index| ComponentStatus {
                component: Component::Iggy,
                phase: ComponentPhase::Running,
                pid: Some(index),
                detail: "x".repeat(10_000),
            })
            .collect();
        node.on_heartbeat(&beat, UnixMillis(1));
        assert_eq!(node.components.len(), COMPONENTS_MAX);
        assert!(node
            .components
            .iter()
            .all(|status| status.detail.len() <= COMPONENT_DETAIL_BYTES_MAX));

        // A heartbeat without components clears them.
        node.on_heartbeat(&heartbeat(2), UnixMillis(2));
        assert!(node.components.is_empty());
    }

    #[test]
    fn pending_node_stays_pending_without_heartbeats() {
        let mut node = node();
        assert_eq!(
            node.on_tick(UnixMillis(10_000_000), Duration::from_secs(1)),
            None
        );
        assert_eq!(node.health, NodeHealth::Pending);
    }

    #[test]
    fn transitions_are_bounded() {
        let mut node = node();
        for i in 0..100u64 {
            node.on_heartbeat(&heartbeat(i), UnixMillis(i * 1_000_000));
            node.on_tick(UnixMillis(i * 1_000_000 + 500_000), Duration::from_secs(1));
        }
        assert_eq!(node.transitions.len(), TRANSITIONS_MAX);
    }
}
