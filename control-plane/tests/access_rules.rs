//! Access rules end to end: the control plane issues them, a real Warden applies them to
//! nftables, and real packets from another host either reach the Iggy port or do not.
//!
//! The broker, the control plane, the Warden and the port's listener all run in a "node"
//! network namespace that the test creates. A "peer" namespace plays a client host. The tests
//! need root, iproute2 and nftables.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use rand::SeedableRng;
use support::access::{in_node_namespace, peer, real_nft, table, Guarded};
use support::count;
use warden_bus::messages::{AccessRule, Protocol};
use warden_bus::{SigningKey, TaskAction, UnixMillis};
use warden_control_plane::core::issue::ActionRequest;
use warden_testkit::netns::{End, PEER_V4};
use warden_testkit::wait_until;

fn now() -> UnixMillis {
    warden_bus::Clock::now(&warden_bus::SystemClock)
}

#[test]
fn rule_expires_without_control_plane() {
    in_node_namespace(|pair| {
        let mut guarded = Guarded::start(&real_nft());
        // Before the Warden runs the port is open: the probe can tell open from closed.
        assert!(guarded.reaches(pair));
        guarded.start_warden(pair);

        let id = guarded.apply(1, vec![peer(Protocol::Tcp, None)]);
        let task = guarded.cluster.wait_status(&id, "succeeded");
        assert_eq!(task.output.get("rules_open").map(String::as_str), Some("1"));
        assert!(guarded.reaches(pair));
        wait_until(
            "the heartbeat to report version 1",
            Duration::from_secs(20),
            || {
                guarded
                    .cluster
                    .nodes()
                    .first()
                    .and_then(|node| node.access_version)
                    == Some(1)
            },
        );

        let expiry = now().saturating_add(Duration::from_secs(5));
        let other = AccessRule {
            cidr: "192.0.2.0/24".into(),
            protocol: Protocol::Tcp,
            expires_at: None,
        };
        let id = guarded.apply(2, vec![peer(Protocol::Tcp, Some(expiry)), other]);
        guarded.cluster.wait_status(&id, "succeeded");
        assert!(guarded.reaches(pair));

        // Neither the Warden nor the control plane runs when the rule expires.
        guarded.cluster.kill_warden("n1");
        guarded.cluster.kill_control_plane();
        while now() < expiry {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            !guarded.reaches(pair),
            "the expired rule still lets the peer in"
        );

        // The Warden starts without a control plane and puts the stored rules back, minus the
        // expired one, before it connects.
        guarded.cluster.start_warden("n1", &[]);
        wait_until(
            "the Warden to apply its rules",
            Duration::from_secs(20),
            || count(&guarded.cluster.warden_log("n1"), "access rules in place") >= 2,
        );
        let listing = pair.nft(End::Node, &["list", "table", "inet", &table("n1")]);
        assert!(listing.contains("access rules version 2"), "{listing}");
        assert!(listing.contains("192.0.2.0/24"), "{listing}");
        assert!(!listing.contains(&PEER_V4.to_string()), "{listing}");
        assert!(!guarded.reaches(pair));
    });
}

#[test]
fn lower_version_and_forged_rules_leave_port_closed() {
    in_node_namespace(|pair| {
        let mut guarded = Guarded::start(&real_nft());
        guarded.start_warden(pair);
        let id = guarded.apply(5, Vec::new());
        guarded.cluster.wait_status(&id, "succeeded");
        assert!(!guarded.reaches(pair));

        // An older document that would open the port is refused.
        let id = guarded.apply(4, vec![peer(Protocol::Tcp, None)]);
        let task = guarded.cluster.wait_status(&id, "rejected");
        assert_eq!(task.reject_code.as_deref(), Some("stale_version"));
        assert!(!guarded.reaches(pair));

        // A document opening everything, signed by a key the trust document does not list.
        let forger = SigningKey::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(7));
        let action = TaskAction::ApplyAccessRules(warden_bus::messages::AccessRules {
            version: 100,
            rules: vec![AccessRule {
                cidr: "0.0.0.0/0".into(),
                protocol: Protocol::Tcp,
                expires_at: None,
            }],
        });
        let body = guarded.cluster.task_body("n1", &action);
        let id = guarded.cluster.inject("n1", &body, &forger);
        let task = guarded.cluster.wait_status(&id, "rejected");
        assert_eq!(task.reject_code.as_deref(), Some("unknown_key"));
        assert!(!guarded.reaches(pair));

        // The same document, genuinely signed, opens the port: the refusals above were the
        // checks, not a broken path.
        let body = guarded.cluster.task_body("n1", &action);
        let id = guarded
            .cluster
            .inject("n1", &body, &guarded.cluster.task_key());
        guarded.cluster.wait_status(&id, "succeeded");
        assert!(guarded.reaches(pair));
        guarded.cluster.kill_warden("n1");
    });
}

#[test]
fn late_node_gets_desired_rules() {
    in_node_namespace(|pair| {
        let mut guarded = Guarded::start(&real_nft());
        guarded.start_warden(pair);
        let issued = guarded.cluster.issue(
            None,
            ActionRequest::ApplyAccessRules {
                version: 3,
                rules: vec![peer(Protocol::Tcp, None)],
            },
        );
        guarded
            .cluster
            .wait_status(&issued.first().unwrap().id, "succeeded");
        assert!(guarded.reaches(pair));

        // n2 did not exist when the rule set went out. Its heartbeat reports version 0, so the
        // control plane sends it the rule set of all nodes.
        guarded.add_node("n2", &real_nft());
        guarded.start_node(pair, "n2");
        wait_until(
            "n2 to get the rules of all nodes",
            Duration::from_secs(30),
            || guarded.node_reaches(pair, "n2"),
        );
        let n2 = guarded
            .cluster
            .nodes()
            .into_iter()
            .find(|node| node.node == "n2")
            .unwrap();
        wait_until("n2 to report version 3", Duration::from_secs(20), || {
            guarded
                .cluster
                .nodes()
                .iter()
                .any(|node| node.node == "n2" && node.access_version == Some(3))
        });
        assert_eq!(n2.deployment, support::DEPLOYMENT);
        assert_eq!(guarded.cluster.tasks_of_kind("apply_access_rules"), 2);
        guarded.cluster.kill_warden("n2");
        guarded.cluster.kill_warden("n1");
    });
}
