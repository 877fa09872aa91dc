//! The subjects each kind of user may publish and subscribe to in the application account.
//!
//! None of these users gets the "allow responses" permission. It lets a user publish to the
//! reply subject of any message it received, and is meant for services that reply to requests.
//! A node and an enrolling node only send requests: the replies arrive on their own inbox,
//! which their subscribe permission covers, and a node acknowledges deliveries by publishing to
//! its consumer's `$JS.ACK` subjects, which its publish permission names. The control plane
//! answers requests, but it may already publish on every subject of the account.

use warden_bus::subject::{self, RpcVerb, Subject, TASK_STREAM};
use warden_bus::{DeploymentId, NodeId};

use super::jwt::{Permissions, SubjectRule, UserSpec};

/// Builds the permissions of one node, which allow this and nothing else:
///
/// - publish: pull from and read the state of its own task consumer, acknowledge that
///   consumer's deliveries, send its own telemetry, and send requests on its own rpc subjects;
/// - subscribe: its own inbox `_INBOX.<deployment>.<node>.>`. The node's client must use
///   [`subject::node_inbox_prefix`] as its inbox prefix, or it receives no replies.
pub fn node_permissions(deployment: &DeploymentId, node: &NodeId) -> Permissions {
    let consumer = subject::task_consumer(deployment, node);
    let publish = [
        Subject::consumer_next(TASK_STREAM, &consumer),
        Subject::consumer_info(TASK_STREAM, &consumer),
        Subject::consumer_acks(TASK_STREAM, &consumer),
        Subject::node_telemetry(deployment, node),
        Subject::node_rpc(deployment, node),
    ];
    Permissions {
        publish: SubjectRule::Only(publish.iter().map(|s| s.as_str().to_owned()).collect()),
        subscribe: SubjectRule::Only(vec![Subject::node_inbox(deployment, node)
            .as_str()
            .to_owned()]),
        allow_responses: None,
    }
}

/// Builds the permissions of the control plane: everything within the application account.
/// The account boundary still keeps it out of the system account.
pub fn control_plane_permissions() -> Permissions {
    Permissions {
        publish: SubjectRule::Any,
        subscribe: SubjectRule::Any,
        allow_responses: None,
    }
}

/// Builds the permissions of an enrolling node: send enrollment requests on the enroll subject
/// of this one node, and receive the replies under `inbox_prefix`.
///
/// Issue one enrollment user per bootstrap file with its own inbox prefix, from
/// [`subject::enrollment_inbox_prefix`], so that no two enrolling nodes share an inbox. The
/// broker keeps a leaked bootstrap file from sending requests for other nodes; the enrollment
/// token then decides whether the request for this node is accepted.
pub fn enrollment_permissions(
    deployment: &DeploymentId,
    node: &NodeId,
    inbox_prefix: &str,
) -> Permissions {
    Permissions {
        publish: SubjectRule::Only(vec![Subject::rpc(deployment, node, RpcVerb::Enroll)
            .as_str()
            .to_owned()]),
        subscribe: SubjectRule::Only(vec![format!("{inbox_prefix}.>")]),
        allow_responses: None,
    }
}

/// Builds the user JWT content for one node's nkey, valid until `expires_at` (Unix seconds).
pub fn node_user(
    deployment: &DeploymentId,
    node: &NodeId,
    user_public_key: &str,
    expires_at: i64,
) -> UserSpec {
    UserSpec {
        name: format!("node {deployment}/{node}"),
        public_key: user_public_key.to_owned(),
        permissions: node_permissions(deployment, node),
        expires_at: Some(expires_at),
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
    fn node_permissions_name_only_its_subjects() {
        let (deployment, node) = ids();
        let permissions = node_permissions(&deployment, &node);
        assert_eq!(
            permissions.publish,
            SubjectRule::Only(vec![
                "$JS.API.CONSUMER.MSG.NEXT.WARDEN_TASKS.node_prod_n1".to_owned(),
                "$JS.API.CONSUMER.INFO.WARDEN_TASKS.node_prod_n1".to_owned(),
                "$JS.ACK.WARDEN_TASKS.node_prod_n1.>".to_owned(),
                "ld.prod.n1.telemetry.>".to_owned(),
                "ld.prod.n1.rpc.>".to_owned(),
            ])
        );
        assert_eq!(
            permissions.subscribe,
            SubjectRule::Only(vec!["_INBOX.prod.n1.>".to_owned()])
        );
        assert_eq!(permissions.allow_responses, None);
    }

    #[test]
    fn node_may_request_its_own_fetches_only() {
        let (deployment, node) = ids();
        let SubjectRule::Only(publish) = node_permissions(&deployment, &node).publish else {
            panic!("node permissions must list their subjects");
        };
        // NATS subject matching: `*` is one token, `>` the rest.
        let matches = |filter: &str, subject: &str| {
            let mut tokens = subject.split('.');
            for expected in filter.split('.') {
                match (expected, tokens.next()) {
                    (">", Some(_)) => return true,
                    ("*", Some(_)) => {}
                    (expected, Some(token)) if expected == token => {}
                    _ => return false,
                }
            }
            tokens.next().is_none()
        };
        let allowed =
            |subject: &Subject| publish.iter().any(|rule| matches(rule, subject.as_str()));
        assert!(allowed(&Subject::rpc(&deployment, &node, RpcVerb::Fetch)));
        let other = NodeId::new("n2").unwrap();
        assert!(!allowed(&Subject::rpc(&deployment, &other, RpcVerb::Fetch)));
    }

    #[test]
    fn enrollment_permissions_allow_enroll_only() {
        let (deployment, node) = ids();
        let prefix = subject::enrollment_inbox_prefix("UABC");
        let permissions = enrollment_permissions(&deployment, &node, &prefix);
        assert_eq!(
            permissions.publish,
            SubjectRule::Only(vec!["ld.prod.n1.rpc.enroll".to_owned()])
        );
        assert_eq!(
            permissions.subscribe,
            SubjectRule::Only(vec!["_INBOX_ENROLL.UABC.>".to_owned()])
        );
    }
}
