//! The documents a deployment's nodes should hold, and when a node behind gets one again.
//!
//! An access rule set or an Iggy configuration issued to all nodes of a deployment becomes its
//! desired document of that kind. A node whose heartbeat reports a lower version, because it
//! was added later or missed the task while it was offline longer than the task's validity,
//! gets the desired document again in a new task.
//!
//! A node that existed when the document went to all nodes got a task for it, which may still
//! be on its way, and the node reports the old version until it has applied it. So such a node
//! gets another copy only after the tasks of that request to all nodes have expired. Copies to
//! a node that stays behind are as far apart as a task is valid, so two copies are never valid
//! at once and the node never rejects one as stale. The request time and the node's
//! registration time may come from two replicas' clocks. Skew between them costs at most one
//! early copy or one wait.

use std::time::Duration;

use warden_bus::UnixMillis;

use super::health::NodeRecord;

/// The kinds of documents a deployment keeps its nodes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DesiredKind {
    /// The access rules (`apply_access_rules`).
    AccessRules,
    /// The Iggy server configuration (`apply_config`).
    Config,
}

impl DesiredKind {
    /// Every kind.
    pub const ALL: [Self; 2] = [Self::AccessRules, Self::Config];

    /// Returns the kind's name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AccessRules => "access_rules",
            Self::Config => "config",
        }
    }

    /// Returns the version of this kind that `node` last reported, `None` if it does not manage
    /// it.
    pub fn node_version(self, node: &NodeRecord) -> Option<u64> {
        match self {
            Self::AccessRules => node.access_version,
            Self::Config => Some(node.config_version),
        }
    }

    /// Returns when the control plane last sent `node` the desired document of this kind.
    pub fn resent(self, node: &NodeRecord) -> Resent {
        let (version, at) = match self {
            Self::AccessRules => (node.access_resent_for, node.access_resent_at),
            Self::Config => (node.config_resent_for, node.config_resent_at),
        };
        Resent { version, at }
    }

    /// Records in `node` that the desired document of `version` goes to it at `at`.
    pub fn record_resent(self, node: &mut NodeRecord, version: u64, at: UnixMillis) {
        let (resent_for, resent_at) = match self {
            Self::AccessRules => (&mut node.access_resent_for, &mut node.access_resent_at),
            Self::Config => (&mut node.config_resent_for, &mut node.config_resent_at),
        };
        *resent_for = version;
        *resent_at = Some(at);
    }

    /// Tells whether `node` should get the `desired` document of this kind at `now`; see
    /// [`resend_due`].
    pub fn resend_due_for(
        self,
        node: &NodeRecord,
        desired: Desired,
        now: UnixMillis,
        interval: Duration,
    ) -> bool {
        resend_due(
            self.node_version(node),
            node.registered_at,
            desired,
            self.resent(node),
            now,
            interval,
        )
    }
}

/// Tells whether a document of version `issued`, sent to all nodes, replaces the desired one of
/// version `current`: only a higher version does.
pub fn supersedes(current: Option<u64>, issued: u64) -> bool {
    current.is_none_or(|current| issued > current)
}

/// When a desired document went to all nodes, and until when the tasks of that request are
/// valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IssueWindow {
    /// When the control plane listed the nodes to send it to.
    pub issued_at: UnixMillis,
    /// When the tasks of the request expire.
    pub expires_at: UnixMillis,
}

/// The desired document of one kind: its version and its request to all nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desired {
    /// The document's version.
    pub version: u64,
    /// Its request to all nodes; `None` in records written before this was kept.
    pub issue: Option<IssueWindow>,
}

/// When the control plane last sent a node a desired document.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resent {
    /// The version it sent last.
    pub version: u64,
    /// When it sent it.
    pub at: Option<UnixMillis>,
}

/// Tells whether a node that reports `node_version` should get the `desired` document now. It
/// must be behind. A node registered before the request to all nodes waits until the tasks of
/// that request expire, and another node gets a version new to it at once. After a copy, the
/// next waits `interval`. A node that reports no version does not manage the kind.
pub fn resend_due(
    node_version: Option<u64>,
    registered_at: UnixMillis,
    desired: Desired,
    resent: Resent,
    now: UnixMillis,
    interval: Duration,
) -> bool {
    let Some(node_version) = node_version else {
        return false;
    };
    if node_version >= desired.version {
        return false;
    }
    if resent.version < desired.version {
        return match desired.issue {
            Some(issue) if registered_at < issue.issued_at => now >= issue.expires_at,
            _ => true,
        };
    }
    resent.at.is_none_or(|at| now.since(at) >= interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(900);
    const NOW: UnixMillis = UnixMillis(1_000_000);

    #[test]
    fn higher_version_becomes_desired() {
        assert!(supersedes(None, 2));
        assert!(supersedes(Some(1), 2));
    }

    #[test]
    fn lower_or_equal_version_changes_nothing() {
        assert!(!supersedes(Some(3), 2));
        assert!(!supersedes(Some(3), 3));
    }

    /// Registration before [`ISSUED`].
    const EARLY: UnixMillis = UnixMillis(100);
    const ISSUED: UnixMillis = UnixMillis(500);
    /// Expiry of the request's tasks: 15 minutes after [`ISSUED`].
    const EXPIRES: UnixMillis = UnixMillis(500 + 900_000);
    /// Registration after [`ISSUED`].
    const LATE: UnixMillis = UnixMillis(900);

    fn desired(version: u64) -> Desired {
        Desired {
            version,
            issue: Some(IssueWindow {
                issued_at: ISSUED,
                expires_at: EXPIRES,
            }),
        }
    }

    #[test]
    fn late_node_gets_new_version_at_once() {
        let resent = Resent {
            version: 2,
            at: Some(NOW),
        };
        assert!(resend_due(Some(1), LATE, desired(3), resent, NOW, INTERVAL));
        assert!(resend_due(
            Some(0),
            LATE,
            desired(3),
            Resent::default(),
            NOW,
            INTERVAL
        ));
    }

    #[test]
    fn earlier_node_waits_for_expiry() {
        let never = Resent::default();
        let issued = desired(3);
        let before_expiry = UnixMillis(EXPIRES.0 - 1);
        assert!(!resend_due(
            Some(1),
            EARLY,
            issued,
            never,
            before_expiry,
            INTERVAL
        ));
        assert!(resend_due(Some(1), EARLY, issued, never, EXPIRES, INTERVAL));
    }

    #[test]
    fn record_without_issue_sends_at_once() {
        let old = Desired {
            version: 3,
            issue: None,
        };
        assert!(resend_due(
            Some(1),
            EARLY,
            old,
            Resent::default(),
            NOW,
            INTERVAL
        ));
    }

    #[test]
    fn same_version_waits_for_interval() {
        let resent = Resent {
            version: 3,
            at: Some(NOW),
        };
        assert!(!resend_due(
            Some(1),
            LATE,
            desired(3),
            resent,
            NOW,
            INTERVAL
        ));
        let later = NOW.saturating_add(INTERVAL);
        assert!(resend_due(
            Some(1),
            LATE,
            desired(3),
            resent,
            later,
            INTERVAL
        ));
    }

    #[test]
    fn current_or_unmanaged_node_gets_nothing() {
        let never = Resent::default();
        assert!(!resend_due(Some(3), LATE, desired(3), never, NOW, INTERVAL));
        assert!(!resend_due(Some(4), LATE, desired(3), never, NOW, INTERVAL));
        assert!(!resend_due(None, LATE, desired(3), never, NOW, INTERVAL));
    }
}
