//! Properties of the wire format: round trips, tamper detection and hostile input.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;

use proptest::prelude::*;
use rand::SeedableRng;
use warden_bus::messages::{
    ApplyConfig, FetchReply, FetchRequest, RejectCode, ReportStatus, TaskAction,
    DOCUMENT_VERSION_MAX, FETCH_CHUNK_BYTES_MAX, FETCH_REPLY_BYTES_MAX,
};
use warden_bus::release::{ReleaseManifest, RollbackPermit, SignedManifest, SignedRollbackPermit};
use warden_bus::{
    DeploymentId, Envelope, Heartbeat, KeyId, Keyring, Message, MessageId, NodeId, SignedEnvelope,
    SigningKey, Task, TaskId, TaskReport, UnixMillis, WireError, ENVELOPE_BYTES_MAX,
};

fn id_text() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9-]{0,30}"
}

fn deployment() -> impl Strategy<Value = DeploymentId> {
    id_text().prop_map(|text| DeploymentId::new(text).unwrap())
}

fn node() -> impl Strategy<Value = NodeId> {
    id_text().prop_map(|text| NodeId::new(text).unwrap())
}

fn task_id() -> impl Strategy<Value = TaskId> {
    any::<[u8; 16]>().prop_map(TaskId::from_random)
}

fn action() -> impl Strategy<Value = TaskAction> {
    use warden_bus::messages::{
        AccessRule, AccessRules, Component, ComponentTarget, Protocol, Reconfigure, Upgrade,
    };
    let component = prop_oneof![Just(Component::Iggy), Just(Component::Connectors)];
    prop_oneof![
        Just(TaskAction::CollectDiagnostics),
        Just(TaskAction::RotateCertificate),
        component
            .clone()
            .prop_map(|component| TaskAction::StartComponent(ComponentTarget { component })),
        component
            .clone()
            .prop_map(|component| TaskAction::StopComponent(ComponentTarget { component })),
        component
            .clone()
            .prop_map(|component| TaskAction::RestartComponent(ComponentTarget { component })),
        (
            component,
            1u64..=DOCUMENT_VERSION_MAX,
            proptest::option::of(proptest::collection::vec(any::<u8>(), 1..64))
        )
            .prop_map(|(component, config_version, sealed_encryption_key)| {
                TaskAction::ReconfigureComponent(Reconfigure {
                    component,
                    config_version,
                    sealed_encryption_key,
                })
            }),
        (
            "[0-9]{1,3}\\.[0-9]{1,3}",
            any::<[u8; 32]>(),
            any::<u64>(),
            any::<bool>()
        )
            .prop_map(|(version, sha, release_counter, with_permit)| {
                let manifest = ReleaseManifest {
                    component: Component::Warden,
                    version: version.clone(),
                    target: "x86_64-unknown-linux-gnu".into(),
                    sha256: sha.to_vec(),
                    size: 1 + release_counter % 1000,
                    release_counter,
                    issued_at: UnixMillis(1_000),
                };
                let rollback_permit = with_permit.then(|| {
                    let permit = RollbackPermit {
                        deployment: DeploymentId::new("prod").unwrap(),
                        node: None,
                        component: Component::Warden,
                        release_counter_min: release_counter,
                        issued_at: UnixMillis(1_000),
                        expires_at: UnixMillis(2_000),
                    };
                    Box::new(SignedRollbackPermit::sign(&permit, &signing_key(5)).unwrap())
                });
                TaskAction::UpgradeComponent(Upgrade {
                    component: Component::Warden,
                    version,
                    sha256: sha.to_vec(),
                    release_counter,
                    manifest: Box::new(SignedManifest::sign(&manifest, &signing_key(4)).unwrap()),
                    rollback_permit,
                })
            }),
        (
            1u64..=DOCUMENT_VERSION_MAX,
            proptest::collection::vec(
                (
                    any::<[u8; 4]>(),
                    0u8..=32,
                    proptest::option::of(any::<u64>())
                ),
                0..8
            )
        )
            .prop_map(|(version, rules)| {
                let rules = rules
                    .into_iter()
                    .map(|(octets, prefix, expires)| AccessRule {
                        cidr: format!("{}/{prefix}", std::net::Ipv4Addr::from(octets)),
                        protocol: Protocol::Tcp,
                        expires_at: expires.map(UnixMillis),
                    })
                    .collect();
                TaskAction::ApplyAccessRules(AccessRules { version, rules })
            }),
        (1u64..=DOCUMENT_VERSION_MAX, "[ -~\n]{0,200}").prop_map(|(version, content)| {
            TaskAction::ApplyConfig(ApplyConfig { version, content })
        }),
    ]
}

fn task() -> impl Strategy<Value = Task> {
    (
        task_id(),
        deployment(),
        node(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        action(),
    )
        .prop_map(
            |(id, deployment, node, issued, not_before, expires, action)| Task {
                id,
                deployment,
                node,
                issued_at: UnixMillis(issued),
                not_before: UnixMillis(not_before),
                expires_at: UnixMillis(expires),
                key_id: KeyId::new("00112233aabbccdd").unwrap(),
                kind: action.kind().to_owned(),
                params: action.encode_params().unwrap(),
            },
        )
}

fn reject_code() -> impl Strategy<Value = RejectCode> {
    prop_oneof![
        Just(RejectCode::Malformed),
        Just(RejectCode::UnknownKey),
        Just(RejectCode::BadSignature),
        Just(RejectCode::WrongDeployment),
        Just(RejectCode::WrongNode),
        Just(RejectCode::Expired),
        Just(RejectCode::NotYetValid),
        Just(RejectCode::Replayed),
        Just(RejectCode::UnknownKind),
        Just(RejectCode::InvalidParams),
        Just(RejectCode::StaleVersion),
        Just(RejectCode::ManifestInvalid),
        Just(RejectCode::ManifestMismatch),
        Just(RejectCode::WrongTarget),
        Just(RejectCode::ReleaseRollback),
        Just(RejectCode::RollbackPermitInvalid),
        Just(RejectCode::ArtifactCorrupt),
    ]
}

fn fetch_request() -> impl Strategy<Value = FetchRequest> {
    (
        deployment(),
        node(),
        any::<[u8; 32]>(),
        any::<u64>(),
        1u32..=FETCH_CHUNK_BYTES_MAX,
        any::<u64>(),
    )
        .prop_map(
            |(deployment, node, sha, offset, length, sent)| FetchRequest {
                deployment,
                node,
                sha256: sha.to_vec(),
                offset,
                length,
                sent_at: UnixMillis(sent),
            },
        )
}

fn fetch_reply() -> impl Strategy<Value = FetchReply> {
    prop_oneof![
        (
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..2048)
        )
            .prop_map(|(offset, size, bytes)| FetchReply::Chunk {
                offset,
                size,
                bytes
            }),
        Just(FetchReply::NotFound),
        any::<u64>().prop_map(|size| FetchReply::OutOfRange { size }),
        ".{0,100}".prop_map(|reason| FetchReply::Refused { reason }),
    ]
}

fn report_status() -> impl Strategy<Value = ReportStatus> {
    prop_oneof![
        Just(ReportStatus::Delivered),
        proptest::collection::btree_map("[a-z_]{1,12}", ".{0,40}", 0..6)
            .prop_map(|output: BTreeMap<String, String>| ReportStatus::Succeeded { output }),
        ".{0,100}".prop_map(|reason| ReportStatus::Failed { reason }),
        (reject_code(), ".{0,100}")
            .prop_map(|(code, detail)| ReportStatus::Rejected { code, detail }),
    ]
}

fn report() -> impl Strategy<Value = TaskReport> {
    (
        task_id(),
        deployment(),
        node(),
        any::<u64>(),
        report_status(),
    )
        .prop_map(|(task_id, deployment, node, at, status)| TaskReport {
            task_id,
            deployment,
            node,
            at: UnixMillis(at),
            status,
        })
}

fn heartbeat() -> impl Strategy<Value = Heartbeat> {
    (
        deployment(),
        node(),
        any::<u64>(),
        any::<u64>(),
        "[0-9.]{1,10}",
        any::<u64>(),
    )
        .prop_map(
            |(deployment, node, sequence, sent, version, config_version)| Heartbeat {
                deployment,
                node,
                sequence,
                sent_at: UnixMillis(sent),
                warden_version: version,
                config_version,
                components: Vec::new(),
                certificate: None,
                access_version: None,
            },
        )
}

fn round_trip<T: Message + PartialEq + std::fmt::Debug>(body: &T) {
    let envelope = Envelope::seal(MessageId::from_random([7; 16]), body).unwrap();
    let bytes = envelope.encode().unwrap();
    let decoded = Envelope::decode(&bytes).unwrap();
    assert_eq!(decoded, envelope);
    assert_eq!(&decoded.open::<T>().unwrap(), body);
}

fn signing_key(seed: u64) -> SigningKey {
    SigningKey::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(seed))
}

fn signed_task_bytes(key: &SigningKey, task: &Task) -> Vec<u8> {
    let envelope = Envelope::seal(MessageId::from_random([1; 16]), task).unwrap();
    key.sign(&envelope).unwrap().encode().unwrap()
}

/// Decodes, verifies and opens a signed task the way a Warden does.
fn accept(bytes: &[u8], keyring: &Keyring) -> Option<Task> {
    let signed = SignedEnvelope::decode(bytes).ok()?;
    let envelope = signed.verify(keyring).ok()?;
    envelope.open::<Task>().ok()
}

proptest! {
    #[test]
    fn task_round_trips(task in task()) {
        round_trip(&task);
        prop_assert_eq!(task.action().unwrap().kind(), task.kind.as_str());
    }

    #[test]
    fn report_round_trips(report in report()) {
        round_trip(&report);
    }

    #[test]
    fn heartbeat_round_trips(heartbeat in heartbeat()) {
        round_trip(&heartbeat);
    }

    #[test]
    fn fetch_request_round_trips(request in fetch_request()) {
        round_trip(&request);
        prop_assert_eq!(request.validate(), Ok(()));
    }

    #[test]
    fn fetch_reply_round_trips(reply in fetch_reply()) {
        let bytes = reply.encode().unwrap();
        prop_assert_eq!(FetchReply::decode(&bytes).unwrap(), reply);
    }

    #[test]
    fn fetch_reply_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = FetchReply::decode(&bytes);
    }

    #[test]
    fn permit_arbitrary_bytes_never_verify(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let root = signing_key(1);
        let trust = warden_bus::trust::TrustDocument {
            version: 1,
            issued_at: UnixMillis(0),
            expires_at: UnixMillis(u64::MAX / 2),
            root_key: root.public_key().as_bytes().to_vec(),
            task_keys: Vec::new(),
            release_keys: Vec::new(),
        };
        if let Ok(permit) = SignedRollbackPermit::decode(&bytes) {
            let verified = permit.verify(&trust, UnixMillis(1_000), std::time::Duration::from_secs(300));
            prop_assert!(verified.is_err(), "arbitrary bytes verified as a rollback permit");
        }
    }

    #[test]
    fn action_round_trips(action in action()) {
        let params = action.encode_params().unwrap();
        prop_assert_eq!(TaskAction::from_parts(action.kind(), &params).unwrap(), action);
    }

    #[test]
    fn signed_task_verifies(task in task(), seed in any::<u64>()) {
        let key = signing_key(seed);
        let keyring = Keyring::new([key.public_key()]);
        prop_assert_eq!(accept(&signed_task_bytes(&key, &task), &keyring), Some(task));
    }

    #[test]
    fn any_flipped_bit_is_rejected(task in task(), seed in any::<u64>(), position in any::<usize>(), bit in 0u8..8) {
        let key = signing_key(seed);
        let keyring = Keyring::new([key.public_key()]);
        let mut bytes = signed_task_bytes(&key, &task);
        let index = position % bytes.len();
        bytes[index] ^= 1 << bit;
        prop_assert_eq!(accept(&bytes, &keyring), None, "flipping bit {} of byte {} was accepted", bit, index);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let keyring = Keyring::new([signing_key(1).public_key()]);
        let _ = accept(&bytes, &keyring);
        if let Ok(envelope) = Envelope::decode(&bytes) {
            let _ = envelope.open::<Task>();
            let _ = envelope.open::<TaskReport>();
            let _ = envelope.open::<Heartbeat>();
        }
        let _ = TaskAction::from_parts("apply_config", &bytes);
    }
}

#[test]
fn every_bit_of_one_signed_task_is_covered() {
    let key = signing_key(42);
    let keyring = Keyring::new([key.public_key()]);
    let task = Task {
        id: TaskId::from_random([9; 16]),
        deployment: DeploymentId::new("prod").unwrap(),
        node: NodeId::new("node-1").unwrap(),
        issued_at: UnixMillis(1_000),
        not_before: UnixMillis(1_000),
        expires_at: UnixMillis(60_000),
        key_id: key.id().clone(),
        kind: "apply_config".into(),
        params: TaskAction::ApplyConfig(ApplyConfig {
            version: 3,
            content: "[system]\n".into(),
        })
        .encode_params()
        .unwrap(),
    };
    let bytes = signed_task_bytes(&key, &task);
    assert_eq!(accept(&bytes, &keyring), Some(task));
    for index in 0..bytes.len() {
        for bit in 0..8 {
            let mut flipped = bytes.clone();
            flipped[index] ^= 1 << bit;
            assert_eq!(
                accept(&flipped, &keyring),
                None,
                "bit {bit} of byte {index} flipped was accepted"
            );
        }
    }
}

#[test]
fn full_chunk_fits_fetch_reply() {
    let reply = FetchReply::Chunk {
        offset: u64::MAX,
        size: u64::MAX,
        bytes: vec![0xff; FETCH_CHUNK_BYTES_MAX as usize],
    };
    let bytes = reply.encode().unwrap();
    assert!(
        bytes.len() <= FETCH_REPLY_BYTES_MAX,
        "{} bytes",
        bytes.len()
    );
    assert_eq!(FetchReply::decode(&bytes).unwrap(), reply);
    assert!(matches!(
        FetchReply::decode(&vec![0u8; FETCH_REPLY_BYTES_MAX + 1]),
        Err(WireError::TooLarge { .. })
    ));
}

#[test]
fn reject_codes_keep_wire_names() {
    for (code, name) in [
        (RejectCode::ManifestInvalid, "manifest_invalid"),
        (RejectCode::ManifestMismatch, "manifest_mismatch"),
        (RejectCode::WrongTarget, "wrong_target"),
        (RejectCode::ReleaseRollback, "release_rollback"),
        (RejectCode::RollbackPermitInvalid, "rollback_permit_invalid"),
        (RejectCode::ArtifactCorrupt, "artifact_corrupt"),
    ] {
        assert_eq!(code.as_str(), name);
        let encoded = rmp_serde::to_vec(&code).unwrap();
        assert_eq!(rmp_serde::from_slice::<RejectCode>(&encoded).unwrap(), code);
        assert_eq!(
            rmp_serde::from_slice::<String>(&encoded).unwrap(),
            name,
            "serde name of {code:?}"
        );
    }
}

#[test]
fn oversized_input_rejected_before_decoding() {
    let bytes = vec![0u8; ENVELOPE_BYTES_MAX + 1];
    assert!(matches!(
        SignedEnvelope::decode(&bytes),
        Err(WireError::TooLarge { .. })
    ));
    assert!(matches!(
        Envelope::decode(&bytes),
        Err(WireError::TooLarge { .. })
    ));
}

#[test]
fn truncated_signed_task_is_malformed() {
    let key = signing_key(3);
    let task_bytes = signed_task_bytes(
        &key,
        &Task {
            id: TaskId::from_random([2; 16]),
            deployment: DeploymentId::new("d").unwrap(),
            node: NodeId::new("n").unwrap(),
            issued_at: UnixMillis(0),
            not_before: UnixMillis(0),
            expires_at: UnixMillis(1),
            key_id: key.id().clone(),
            kind: "collect_diagnostics".into(),
            params: TaskAction::CollectDiagnostics.encode_params().unwrap(),
        },
    );
    for length in 0..task_bytes.len() {
        assert!(
            SignedEnvelope::decode(&task_bytes[..length]).is_err(),
            "prefix of {length} bytes decoded"
        );
    }
}

#[test]
fn unknown_key_and_wrong_type_are_distinct_errors() {
    let key = signing_key(5);
    let other = signing_key(6);
    let heartbeat = Heartbeat {
        deployment: DeploymentId::new("d").unwrap(),
        node: NodeId::new("n").unwrap(),
        sequence: 1,
        sent_at: UnixMillis(1),
        warden_version: "0.1.0".into(),
        config_version: 0,
        components: Vec::new(),
        certificate: None,
        access_version: None,
    };
    let envelope = Envelope::seal(MessageId::from_random([3; 16]), &heartbeat).unwrap();
    let signed = key.sign(&envelope).unwrap();

    let unknown = signed
        .verify(&Keyring::new([other.public_key()]))
        .unwrap_err();
    assert!(unknown.to_string().contains("unknown key"), "{unknown}");

    let opened = signed.verify(&Keyring::new([key.public_key()])).unwrap();
    assert!(matches!(
        opened.open::<Task>(),
        Err(WireError::WrongType { .. })
    ));
}

#[test]
fn unknown_reject_code_decodes_as_unrecognized() {
    let bytes = rmp_serde::to_vec(&"some_future_check").unwrap();
    let code: RejectCode = rmp_serde::from_slice(&bytes).unwrap();
    assert_eq!(code, RejectCode::Unrecognized);
}

#[test]
fn unknown_kind_is_reported_by_name() {
    let error = TaskAction::from_parts("run_shell", &[0xc0]).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("unknown task kind \"run_shell\""),
        "{error}"
    );
}

/// A heartbeat from a Warden built before component states existed still decodes.
#[test]
fn heartbeat_without_components_decodes() {
    #[derive(serde::Serialize)]
    struct OldHeartbeat {
        deployment: DeploymentId,
        node: NodeId,
        sequence: u64,
        sent_at: UnixMillis,
        warden_version: String,
        config_version: u64,
    }
    let old = OldHeartbeat {
        deployment: DeploymentId::new("d").unwrap(),
        node: NodeId::new("n").unwrap(),
        sequence: 4,
        sent_at: UnixMillis(9),
        warden_version: "0.1.0".into(),
        config_version: 3,
    };
    let bytes = rmp_serde::to_vec(&old).unwrap();
    let decoded: Heartbeat = rmp_serde::from_slice(&bytes).unwrap();
    assert_eq!(decoded.sequence, 4);
    assert!(decoded.components.is_empty());
}

/// A log batch survives sealing, signing and opening unchanged.
#[test]
fn component_logs_round_trip() {
    use warden_bus::messages::{Component, ComponentLogs};
    let key = signing_key(9);
    let batch = ComponentLogs {
        deployment: DeploymentId::new("d").unwrap(),
        node: NodeId::new("n").unwrap(),
        component: Component::Connectors,
        stream: "stderr".into(),
        lines: vec!["first".into(), "é second".into()],
        dropped: 3,
        sent_at: UnixMillis(5),
    };
    let envelope = Envelope::seal(MessageId::from_random([4; 16]), &batch).unwrap();
    let bytes = key.sign(&envelope).unwrap().encode().unwrap();
    let opened: ComponentLogs = SignedEnvelope::decode(&bytes)
        .unwrap()
        .verify(&Keyring::new([key.public_key()]))
        .unwrap()
        .open()
        .unwrap();
    assert_eq!(opened, batch);
}
