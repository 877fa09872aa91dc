//! The subject scheme. This module is the only place that builds subjects, stream, consumer and
//! bucket names, so the permissions a node gets and the subjects code uses cannot drift apart.
//!
//! | subject | direction |
//! | --- | --- |
//! | `ld.<deployment>.<node>.tasks` | control plane to node, stored in [`TASK_STREAM`] |
//! | `ld.<deployment>.<node>.telemetry.heartbeat` | node to control plane, core NATS |
//! | `ld.<deployment>.<node>.telemetry.report` | node to control plane, stored in [`REPORT_STREAM`] |
//! | `ld.<deployment>.<node>.rpc.<verb>` | node to control plane, request and reply on core NATS |
//! | `_INBOX.<deployment>.<node>.…` | replies to one node, under its own inbox prefix |
//! | `_INBOX_ENROLL.<user key>.…` | replies to one enrolling node |
//!
//! The JetStream API subjects at the end of this module are the ones a node's broker
//! permissions name, so they are built here too.

use std::fmt;

use crate::ids::{DeploymentId, NodeId};

/// First token of every Warden subject.
pub const SUBJECT_ROOT: &str = "ld";
/// JetStream stream that stores tasks for every node.
pub const TASK_STREAM: &str = "WARDEN_TASKS";
/// JetStream stream that stores task reports from every node.
pub const REPORT_STREAM: &str = "WARDEN_REPORTS";
/// Durable consumer on [`REPORT_STREAM`] shared by all control-plane replicas.
pub const REPORT_CONSUMER: &str = "control-plane-reports";
/// Queue group in which control-plane replicas share heartbeats.
pub const CONTROL_PLANE_QUEUE: &str = "control-plane";
/// KV bucket of deployment records.
pub const DEPLOYMENTS_BUCKET: &str = "warden_deployments";
/// KV bucket of node records.
pub const NODES_BUCKET: &str = "warden_nodes";
/// KV bucket of task records.
pub const TASKS_BUCKET: &str = "warden_tasks";
/// KV bucket of deployment CAs, with their keys sealed.
pub const CAS_BUCKET: &str = "warden_cas";
/// KV bucket of control-plane settings shared by replicas, such as the admin API key hash.
pub const CONTROL_BUCKET: &str = "warden_control";

/// First token of every reply subject; the default inbox prefix of NATS clients.
pub const INBOX_ROOT: &str = "_INBOX";

/// A NATS subject built by this module. Subjects from the wire are parsed with
/// [`NodeSubject::parse`] instead.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Subject(String);

impl Subject {
    /// The subject as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Subject on which the control plane leaves tasks for one node.
    pub fn tasks(deployment: &DeploymentId, node: &NodeId) -> Self {
        Self(format!("{SUBJECT_ROOT}.{deployment}.{node}.tasks"))
    }

    /// Subject on which a node sends one kind of telemetry.
    pub fn telemetry(deployment: &DeploymentId, node: &NodeId, kind: TelemetryKind) -> Self {
        Self(format!(
            "{SUBJECT_ROOT}.{deployment}.{node}.telemetry.{}",
            kind.token()
        ))
    }

    /// Wildcard matching every kind of telemetry from one node.
    pub fn node_telemetry(deployment: &DeploymentId, node: &NodeId) -> Self {
        Self(format!("{SUBJECT_ROOT}.{deployment}.{node}.telemetry.>"))
    }

    /// Subject on which a node sends one kind of request to the control plane.
    pub fn rpc(deployment: &DeploymentId, node: &NodeId, verb: RpcVerb) -> Self {
        Self(format!(
            "{SUBJECT_ROOT}.{deployment}.{node}.rpc.{}",
            verb.token()
        ))
    }

    /// Wildcard matching every request subject of one node.
    pub fn node_rpc(deployment: &DeploymentId, node: &NodeId) -> Self {
        Self(format!("{SUBJECT_ROOT}.{deployment}.{node}.rpc.>"))
    }

    /// Wildcard matching every request from every node.
    pub fn all_requests() -> Self {
        Self(format!("{SUBJECT_ROOT}.*.*.rpc.*"))
    }

    /// Wildcard matching one kind of request from every node.
    pub fn all_rpc(verb: RpcVerb) -> Self {
        Self(format!("{SUBJECT_ROOT}.*.*.rpc.{}", verb.token()))
    }

    /// Wildcard matching every reply subject under one node's inbox prefix.
    pub fn node_inbox(deployment: &DeploymentId, node: &NodeId) -> Self {
        Self(format!("{}.>", node_inbox_prefix(deployment, node)))
    }

    /// Subject on which a client asks a durable pull consumer for its next messages.
    pub fn consumer_next(stream: &str, consumer: &str) -> Self {
        Self(format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"))
    }

    /// Subject on which a client asks for the state of a consumer.
    pub fn consumer_info(stream: &str, consumer: &str) -> Self {
        Self(format!("$JS.API.CONSUMER.INFO.{stream}.{consumer}"))
    }

    /// Wildcard matching the acknowledgement subjects of a consumer's deliveries. The broker
    /// sets such a subject as the reply subject of every delivered message.
    pub fn consumer_acks(stream: &str, consumer: &str) -> Self {
        Self(format!("$JS.ACK.{stream}.{consumer}.>"))
    }

    /// Wildcard matching the task subjects of every node.
    pub fn all_tasks() -> Self {
        Self(format!("{SUBJECT_ROOT}.*.*.tasks"))
    }

    /// Wildcard matching one kind of telemetry from every node.
    pub fn all_telemetry(kind: TelemetryKind) -> Self {
        Self(format!("{SUBJECT_ROOT}.*.*.telemetry.{}", kind.token()))
    }

    /// Tells whether this subject, read as a filter with `*` and `>` wildcards, matches `subject`.
    pub fn matches(&self, subject: &str) -> bool {
        let mut filter = self.0.split('.');
        let mut tokens = subject.split('.');
        loop {
            match (filter.next(), tokens.next()) {
                (Some(">"), Some(_)) => return true,
                (Some("*"), Some(_)) => {}
                (Some(expected), Some(token)) if expected == token => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }
}

impl Subject {
    /// Wraps a subject received from the broker, such as a reply inbox; only the transports use
    /// this, since everything else builds subjects with the helpers above.
    pub(crate) fn from_wire(text: String) -> Self {
        Self(text)
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Subject({:?})", self.0)
    }
}

/// Kinds of telemetry a node sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TelemetryKind {
    /// Liveness beacon on core NATS.
    Heartbeat,
    /// Task progress and outcome, stored in [`REPORT_STREAM`].
    Report,
    /// Output lines of the node's components, on core NATS.
    Logs,
}

impl TelemetryKind {
    fn token(self) -> &'static str {
        match self {
            Self::Heartbeat => "heartbeat",
            Self::Report => "report",
            Self::Logs => "logs",
        }
    }
}

/// Kinds of request a node sends to the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RpcVerb {
    /// Presents the one-time enrollment token and the node's public key.
    Enroll,
    /// Asks for a fresh user JWT before the current one expires.
    Renew,
    /// Asks for one chunk of a released artifact.
    Fetch,
    /// Sends a certificate signing request for the node's TLS key.
    Certificate,
}

impl RpcVerb {
    fn token(self) -> &'static str {
        match self {
            Self::Enroll => "enroll",
            Self::Renew => "renew",
            Self::Fetch => "fetch",
            Self::Certificate => "certificate",
        }
    }
}

/// Inbox prefix of one node's client. Replies to the node's requests arrive under it, and the
/// node's broker permissions allow it to subscribe there only, so no node reads another's
/// replies.
pub fn node_inbox_prefix(deployment: &DeploymentId, node: &NodeId) -> String {
    format!("{INBOX_ROOT}.{deployment}.{node}")
}

/// First token of the reply subjects of enrolling nodes. It differs from [`INBOX_ROOT`], so no
/// enrollment inbox falls under a node's inbox.
pub const ENROLLMENT_INBOX_ROOT: &str = "_INBOX_ENROLL";

/// Inbox prefix of an enrolling node's client, built from the public key of its enrollment
/// user. Each enrollment user gets its own prefix, so no enrolling node reads another's
/// replies.
pub fn enrollment_inbox_prefix(user_public_key: &str) -> String {
    format!("{ENROLLMENT_INBOX_ROOT}.{user_public_key}")
}

/// Maximum length of a reply subject the control plane publishes replies to.
pub const REPLY_SUBJECT_BYTES_MAX: usize = 256;

/// Tells whether the control plane may answer a request received on `request_subject` by
/// publishing to `reply`.
///
/// The control plane may publish anywhere in the account, so the reply subject, which the
/// sender chooses, must not be able to aim it elsewhere: at the JetStream API, a key-value
/// bucket, a task subject or another node's inbox. A node's request may only be answered in
/// its own inbox `_INBOX.<deployment>.<node>.…`; an enrollment request in an enrollment inbox
/// `_INBOX_ENROLL.<user>.…`, whose user the enrollment token, not the subject, ties to a node.
/// The reply must be a literal subject: no wildcards, no empty tokens, no whitespace.
pub fn reply_allowed(request_subject: &str, reply: &str) -> bool {
    let Some(origin) = NodeSubject::parse(request_subject) else {
        return false;
    };
    let literal = !reply.is_empty()
        && reply.len() <= REPLY_SUBJECT_BYTES_MAX
        && reply.split('.').all(|token| {
            !token.is_empty()
                && token != "*"
                && token != ">"
                && token.bytes().all(|b| b.is_ascii_graphic())
        });
    if !literal {
        return false;
    }
    let enroll = request_subject.rsplit('.').next() == Some(RpcVerb::Enroll.token());
    let prefix = if enroll {
        ENROLLMENT_INBOX_ROOT.to_owned()
    } else {
        node_inbox_prefix(&origin.deployment, &origin.node)
    };
    // At least one token after the prefix, and for enrollment one more: the user's key, then
    // the request's own token.
    let Some(rest) = reply
        .strip_prefix(&prefix)
        .and_then(|rest| rest.strip_prefix('.'))
    else {
        return false;
    };
    !enroll || rest.split('.').count() >= 2
}

/// Name of the durable pull consumer through which one node receives its tasks.
///
/// Identifiers never contain `_`, so the name maps back to exactly one node.
pub fn task_consumer(deployment: &DeploymentId, node: &NodeId) -> String {
    format!("node_{deployment}_{node}")
}

/// KV key of a node record in [`NODES_BUCKET`].
pub fn node_key(deployment: &DeploymentId, node: &NodeId) -> String {
    format!("{deployment}.{node}")
}

/// The deployment and node named by a per-node subject received from the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSubject {
    /// Deployment token of the subject.
    pub deployment: DeploymentId,
    /// Node token of the subject.
    pub node: NodeId,
}

impl NodeSubject {
    /// Parses `ld.<deployment>.<node>.…`, returning `None` for anything else.
    pub fn parse(subject: &str) -> Option<Self> {
        let mut tokens = subject.split('.');
        if tokens.next()? != SUBJECT_ROOT {
            return None;
        }
        let deployment = DeploymentId::new(tokens.next()?).ok()?;
        let node = NodeId::new(tokens.next()?).ok()?;
        tokens.next()?;
        Some(Self { deployment, node })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (DeploymentId, NodeId) {
        (
            DeploymentId::new("prod").unwrap(),
            NodeId::new("n1").unwrap(),
        )
    }

    #[test]
    fn builds_per_node_subjects() {
        let (deployment, node) = ids();
        assert_eq!(
            Subject::tasks(&deployment, &node).as_str(),
            "ld.prod.n1.tasks"
        );
        assert_eq!(
            Subject::telemetry(&deployment, &node, TelemetryKind::Heartbeat).as_str(),
            "ld.prod.n1.telemetry.heartbeat"
        );
        assert_eq!(task_consumer(&deployment, &node), "node_prod_n1");
    }

    #[test]
    fn builds_node_permission_subjects() {
        let (deployment, node) = ids();

        assert_eq!(
            Subject::node_telemetry(&deployment, &node).as_str(),
            "ld.prod.n1.telemetry.>"
        );
        assert_eq!(
            Subject::rpc(&deployment, &node, RpcVerb::Enroll).as_str(),
            "ld.prod.n1.rpc.enroll"
        );
        assert_eq!(
            Subject::node_rpc(&deployment, &node).as_str(),
            "ld.prod.n1.rpc.>"
        );
        assert_eq!(
            Subject::all_rpc(RpcVerb::Enroll).as_str(),
            "ld.*.*.rpc.enroll"
        );

        assert_eq!(node_inbox_prefix(&deployment, &node), "_INBOX.prod.n1");
        assert_eq!(enrollment_inbox_prefix("UKEY"), "_INBOX_ENROLL.UKEY");
        assert_eq!(
            Subject::node_inbox(&deployment, &node).as_str(),
            "_INBOX.prod.n1.>"
        );

        let consumer = task_consumer(&deployment, &node);
        assert_eq!(
            Subject::consumer_next(TASK_STREAM, &consumer).as_str(),
            "$JS.API.CONSUMER.MSG.NEXT.WARDEN_TASKS.node_prod_n1"
        );
        assert_eq!(
            Subject::consumer_info(TASK_STREAM, &consumer).as_str(),
            "$JS.API.CONSUMER.INFO.WARDEN_TASKS.node_prod_n1"
        );
        assert_eq!(
            Subject::consumer_acks(TASK_STREAM, &consumer).as_str(),
            "$JS.ACK.WARDEN_TASKS.node_prod_n1.>"
        );
    }

    #[test]
    fn wildcards_match_like_nats() {
        assert!(Subject::all_tasks().matches("ld.prod.n1.tasks"));
        assert!(!Subject::all_tasks().matches("ld.prod.n1.tasks.extra"));
        assert!(!Subject::all_tasks().matches("ld.prod.tasks"));
        let tail = Subject("ld.>".to_owned());
        assert!(tail.matches("ld.a.b.c"));
        assert!(!tail.matches("ld"));
    }

    #[test]
    fn reply_only_to_own_inbox() {
        let renew = "ld.prod.n1.rpc.renew";
        let enroll = "ld.prod.n1.rpc.enroll";
        assert!(reply_allowed(renew, "_INBOX.prod.n1.abc.1"));
        assert!(reply_allowed(enroll, "_INBOX_ENROLL.UABC.xyz"));
        for reply in [
            "$JS.API.STREAM.PURGE.KV_warden_nodes",
            "$KV.warden_control.revocations",
            "ld.prod.n1.tasks",
            "_INBOX.prod.n2.abc",
            "_INBOX.prod.n1",
            "_INBOX.prod.n10.abc",
            "_INBOX.prod.n1.*",
            "_INBOX.prod.n1.>",
            "_INBOX.prod.n1..x",
            "_INBOX.prod.n1.a b",
            "_INBOX_ENROLL.UABC.xyz",
            "",
        ] {
            assert!(
                !reply_allowed(renew, reply),
                "renew reply {reply:?} allowed"
            );
        }
        for reply in [
            "_INBOX.prod.n1.abc",
            "_INBOX_ENROLL.UABC",
            "_INBOX_ENROLLX.UABC.xyz",
            "$KV.warden_nodes.prod.n1",
        ] {
            assert!(
                !reply_allowed(enroll, reply),
                "enroll reply {reply:?} allowed"
            );
        }
        let long = format!("_INBOX.prod.n1.{}", "a".repeat(REPLY_SUBJECT_BYTES_MAX));
        assert!(!reply_allowed(renew, &long));
        assert!(!reply_allowed("xx.prod.n1.rpc.renew", "_INBOX.prod.n1.a"));
    }

    #[test]
    fn parses_node_subject() {
        let parsed = NodeSubject::parse("ld.prod.n1.telemetry.report").unwrap();
        assert_eq!(parsed.deployment.as_str(), "prod");
        assert_eq!(parsed.node.as_str(), "n1");
        assert!(NodeSubject::parse("ld.prod.n1").is_none());
        assert!(NodeSubject::parse("xx.prod.n1.tasks").is_none());
        assert!(NodeSubject::parse("ld.PROD.n1.tasks").is_none());
    }
}
