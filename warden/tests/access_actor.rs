//! The access actor with a stand-in for nft that records every script and fails on request.
//! It checks the actor's own steps without root: installation, restoring the previous document
//! when nft fails, and the timer that takes expired rules out of the table.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use warden::access::AccessFile;
use warden::actors::access::{AccessActor, AccessParts, Install};
use warden::store::TaskStore;
use warden_bus::messages::{AccessRule, AccessRules, Protocol};
use warden_bus::{NodeId, UnixMillis};

/// Writes a stand-in for nft into `dir`: it saves each script as `script-<n>` and fails while
/// `dir/fail` exists. For `list`, it prints the last script, or reports a missing table before
/// the first.
fn fake_nft(dir: &Path) -> PathBuf {
    let path = dir.join("nft");
    let body = format!(
        "#!/bin/sh\nn=$(ls {dir}/script-* 2>/dev/null | wc -l)\nif [ \"$1\" = list ]; then\n  if [ \"$n\" = 0 ]; then echo 'Error: No such file or directory' >&2; exit 1; fi\n  cat {dir}/script-$((n - 1)); exit 0\nfi\ncat > {dir}/script-$n\nif [ -e {dir}/fail ]; then echo 'Error: simulated failure' >&2; exit 1; fi\n",
        dir = dir.display()
    );
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Returns the scripts nft was given, oldest first.
fn scripts(dir: &Path) -> Vec<String> {
    let mut numbered: Vec<(u32, String)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|entry| {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            let number = name.strip_prefix("script-")?.parse().ok()?;
            Some((number, std::fs::read_to_string(entry.path()).unwrap()))
        })
        .collect();
    numbered.sort();
    numbered.into_iter().map(|(_, script)| script).collect()
}

fn rule(cidr: &str, expires_at: Option<UnixMillis>) -> AccessRule {
    AccessRule {
        cidr: cidr.into(),
        protocol: Protocol::Tcp,
        expires_at,
    }
}

// One test per file: the stand-in script is written before any thread forks, so no child can
// hold it open for writing when it runs ("text file busy").
#[test]
fn installs_restores_on_failure_and_closes_expired_rules() {
    let dir = tempfile::tempdir().unwrap();
    let nft = fake_nft(dir.path());
    actix::System::new().block_on(async move {
        let dir = nft.parent().unwrap().to_path_buf();
        let firewall = AccessFile {
            nft: Some(nft.clone()),
            ..AccessFile::default()
        }
        .validate(None)
        .unwrap();
        let store = TaskStore::open(&dir.join("db")).unwrap();
        let clock = warden_actors::clock::system();
        let (core, listing) = warden::access::start(&store, &firewall, clock.now())
            .await
            .unwrap();
        assert_eq!(
            scripts(&dir).len(),
            1,
            "the start applies the empty rule set"
        );
        let version = Arc::new(AtomicU64::new(0));
        let actor = AccessActor::new(AccessParts {
            core,
            listing,
            firewall,
            store: store.clone(),
            clock: clock.clone(),
            node: NodeId::new("n1").unwrap(),
            version: version.clone(),
        })
        .start();

        let first = AccessRules {
            version: 1,
            rules: vec![rule("10.0.0.0/8", None)],
        };
        let output = actor.send(Install(first)).await.unwrap().unwrap();
        assert_eq!(output.get("rules_open").map(String::as_str), Some("1"));
        assert_eq!(version.load(Ordering::SeqCst), 1);
        assert!(scripts(&dir).last().unwrap().contains("10.0.0.0/8"));

        // nft fails: the task fails and the stored document is the previous one.
        std::fs::write(dir.join("fail"), "").unwrap();
        let second = AccessRules {
            version: 2,
            rules: vec![rule("192.0.2.0/24", None)],
        };
        let error = actor
            .send(Install(second.clone()))
            .await
            .unwrap()
            .unwrap_err();
        assert!(error.contains("simulated failure"), "{error}");
        assert_eq!(store.load_access().unwrap().unwrap().version, 1);
        assert_eq!(version.load(Ordering::SeqCst), 1);

        // Once nft works again the same version installs.
        std::fs::remove_file(dir.join("fail")).unwrap();
        actor.send(Install(second)).await.unwrap().unwrap();
        assert_eq!(store.load_access().unwrap().unwrap().version, 2);

        // A rule that expires is taken out of the table by the timer, with no task.
        let expiry = clock.now().saturating_add(Duration::from_millis(1500));
        let third = AccessRules {
            version: 3,
            rules: vec![
                rule("10.0.0.0/8", None),
                rule("203.0.113.7/32", Some(expiry)),
            ],
        };
        actor.send(Install(third)).await.unwrap().unwrap();
        assert!(scripts(&dir).last().unwrap().contains("203.0.113.7/32"));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while scripts(&dir).last().unwrap().contains("203.0.113.7/32") {
            assert!(
                std::time::Instant::now() < deadline,
                "the expired rule is still in the last script"
            );
            actix_rt::time::sleep(Duration::from_millis(100)).await;
        }
        let last = scripts(&dir).pop().unwrap();
        assert!(last.contains("10.0.0.0/8"), "{last}");
        let stored = store.load_access().unwrap().unwrap();
        assert!(stored.closed_through >= expiry);
    });
}
