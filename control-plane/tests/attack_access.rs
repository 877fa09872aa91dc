//! Attacks on access rules through a real Warden: the table deleted by hand, nft failing after
//! it applied a script, stale and replayed documents, and a Warden stopping.
//!
//! The broker, the control plane, the Warden and the guarded listener run in a "node" network
//! namespace that the test creates; a "peer" namespace plays a client host. Needs root,
//! iproute2 and nftables.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Command;
use std::time::Duration;

use base64::Engine;
use support::access::{in_node_namespace, peer, real_nft, table, Guarded};
use support::count;
use warden_bus::messages::Protocol;
use warden_testkit::netns::End;
use warden_testkit::wait_until;

#[test]
fn hand_deleted_table_restored() {
    in_node_namespace(|pair| {
        let mut guarded = Guarded::start(&real_nft());
        guarded.start_warden(pair);
        let id = guarded.apply(1, Vec::new());
        guarded.cluster.wait_status(&id, "succeeded");

        // Someone with root on the node removes the Warden's table by hand.
        pair.nft(End::Node, &["delete", "table", "inet", &table("n1")]);
        assert!(guarded.reaches(pair), "the probe cannot see the deletion");
        let restored = (0..10).any(|_| {
            std::thread::sleep(Duration::from_millis(500));
            !guarded.reaches(pair)
        });
        guarded.cluster.kill_warden("n1");
        assert!(
            restored,
            "the Warden left the Iggy port open for 5 s after its table was deleted"
        );
    });
}

#[test]
fn nft_failing_after_apply_restores_rules() {
    in_node_namespace(|pair| {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("fail");
        // An nft that applies the script and then reports failure, as a crash right after the
        // kernel commit would look to the Warden.
        let wrapper = dir.path().join("nft");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\n{} \"$@\" || exit $?\nif [ -e {} ]; then exit 1; fi\n",
                real_nft().display(),
                marker.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(
            &wrapper,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();

        let mut guarded = Guarded::start(&wrapper);
        guarded.start_warden(pair);
        let id = guarded.apply(1, Vec::new());
        guarded.cluster.wait_status(&id, "succeeded");

        std::fs::write(&marker, b"").unwrap();
        let id = guarded.apply(2, vec![peer(Protocol::Tcp, None)]);
        guarded.cluster.wait_status(&id, "failed");
        // The failed version went into the kernel; the Warden must take it out again.
        wait_until(
            "the Warden to put version 1 back",
            Duration::from_secs(10),
            || {
                pair.nft(End::Node, &["list", "table", "inet", &table("n1")])
                    .contains("access rules version 1")
            },
        );
        assert!(
            !guarded.reaches(pair),
            "the failed document left the port open"
        );

        // The failed task changed nothing on disk: version 2 is still free to use.
        std::fs::remove_file(&marker).unwrap();
        let id = guarded.apply(2, vec![peer(Protocol::Tcp, None)]);
        guarded.cluster.wait_status(&id, "succeeded");
        assert!(guarded.reaches(pair));
        guarded.cluster.kill_warden("n1");
    });
}

#[test]
fn stale_and_replayed_documents_keep_port_closed() {
    in_node_namespace(|pair| {
        let mut guarded = Guarded::start(&real_nft());
        guarded.start_warden(pair);
        let opened = guarded.apply(2, vec![peer(Protocol::Tcp, None)]);
        guarded.cluster.wait_status(&opened, "succeeded");
        assert!(guarded.reaches(pair));
        let id = guarded.apply(3, Vec::new());
        guarded.cluster.wait_status(&id, "succeeded");
        assert!(!guarded.reaches(pair));

        // The same version with other rules.
        let id = guarded.apply(3, vec![peer(Protocol::Tcp, None)]);
        let task = guarded.cluster.wait_status(&id, "rejected");
        assert_eq!(task.reject_code.as_deref(), Some("stale_version"));
        // The same version with the same rules, as a new task.
        let id = guarded.apply(3, Vec::new());
        let task = guarded.cluster.wait_status(&id, "rejected");
        assert_eq!(task.reject_code.as_deref(), Some("stale_version"));
        assert!(!guarded.reaches(pair));

        // The signed task that opened the port, stored again as a new message.
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(guarded.cluster.signed_task(&opened))
            .unwrap();
        guarded.cluster.publish_task_bytes("n1", bytes);
        guarded.cluster.wait_history_code(&opened, "replayed");
        assert!(!guarded.reaches(pair), "the replayed task opened the port");
        let listing = pair.nft(End::Node, &["list", "table", "inet", &table("n1")]);
        assert!(listing.contains("access rules version 3"), "{listing}");
        guarded.cluster.kill_warden("n1");
    });
}

#[test]
fn table_survives_graceful_stop() {
    in_node_namespace(|pair| {
        let mut guarded = Guarded::start(&real_nft());
        guarded.start_warden(pair);
        let id = guarded.apply(1, vec![peer(Protocol::Http, None)]);
        guarded.cluster.wait_status(&id, "succeeded");

        let pid = guarded.cluster.warden("n1").id().unwrap();
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        wait_until("the Warden to stop", Duration::from_secs(10), || {
            count(&guarded.cluster.warden_log("n1"), "warden stopping") >= 1
        });
        std::thread::sleep(Duration::from_millis(500));
        assert!(!guarded.reaches(pair), "a stopped Warden opened the port");
        let listing = pair.nft(End::Node, &["list", "table", "inet", &table("n1")]);
        assert!(listing.contains("access rules version 1"), "{listing}");
        guarded.cluster.kill_warden("n1");
    });
}
