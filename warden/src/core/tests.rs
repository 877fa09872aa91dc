use std::time::Duration;

use proptest::prelude::*;
use rand::SeedableRng;
use warden_bus::messages::{
    AccessRule, AccessRules, ApplyConfig, Component, ComponentTarget, Protocol, UpdateTrust,
};
use warden_bus::trust::{KeyGrant, SignedDocument, TrustDocument};
use warden_bus::{
    DeploymentId, Envelope, MessageId, NodeId, PublicKey, RejectCode, ReportStatus, SigningKey,
    Task, TaskAction, TaskId, UnixMillis,
};

use super::record::RecordState;
use super::verify::{Identity, Limits};
use super::*;

const NOW: UnixMillis = UnixMillis(1_796_428_800_000);
const SKEW: Duration = Duration::from_secs(300);
const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;

fn key(seed: u64) -> SigningKey {
    SigningKey::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(seed))
}

fn root() -> SigningKey {
    key(1000)
}

fn task_key() -> SigningKey {
    key(1)
}

fn grant(key: &SigningKey, from: UnixMillis, until: UnixMillis) -> KeyGrant {
    KeyGrant {
        public_key: key.public_key().as_bytes().to_vec(),
        not_before: from,
        not_after: until,
    }
}

fn trust(version: u64, root: &SigningKey, task_keys: Vec<KeyGrant>) -> TrustDocument {
    TrustDocument {
        version,
        issued_at: UnixMillis(NOW.0 - DAY_MS),
        expires_at: UnixMillis(NOW.0 + 365 * DAY_MS),
        root_key: root.public_key().as_bytes().to_vec(),
        task_keys,
        release_keys: Vec::new(),
    }
}

fn default_trust() -> TrustDocument {
    trust(
        1,
        &root(),
        vec![grant(
            &task_key(),
            UnixMillis(NOW.0 - DAY_MS),
            UnixMillis(NOW.0 + 30 * DAY_MS),
        )],
    )
}

fn identity(approval_key: Option<PublicKey>) -> Identity {
    Identity {
        deployment: DeploymentId::new("prod").unwrap(),
        node: NodeId::new("node-1").unwrap(),
        approval_key,
    }
}

fn limits() -> Limits {
    Limits {
        clock_skew: SKEW,
        validity_max: Duration::from_secs(3600),
    }
}

fn persisted(trust: TrustDocument, config_version: u64) -> Persisted {
    Persisted {
        records: Vec::new(),
        config_version,
        trust,
        clock_high_water: UnixMillis(0),
        installed: Default::default(),
        access_version: None,
    }
}

fn core_with(trust: TrustDocument, config_version: u64) -> WardenCore {
    WardenCore::new(identity(None), limits(), persisted(trust, config_version))
}

fn core() -> WardenCore {
    core_with(default_trust(), 0)
}

fn task(id: u8, action: &TaskAction) -> Task {
    Task {
        id: TaskId::from_random([id; 16]),
        deployment: DeploymentId::new("prod").unwrap(),
        node: NodeId::new("node-1").unwrap(),
        issued_at: NOW,
        not_before: NOW,
        expires_at: UnixMillis(NOW.0 + HOUR_MS),
        key_id: task_key().id().clone(),
        kind: action.kind().to_owned(),
        params: action.encode_params().unwrap(),
    }
}

fn apply(version: u64) -> TaskAction {
    TaskAction::ApplyConfig(ApplyConfig {
        version,
        content: "[system]\npath = \"local_data\"\n".into(),
    })
}

fn sign_with(key: &SigningKey, task: &Task) -> Vec<u8> {
    let mut task = task.clone();
    task.key_id = key.id().clone();
    let envelope = Envelope::seal(MessageId::from_random([0; 16]), &task).unwrap();
    key.sign(&envelope).unwrap().encode().unwrap()
}

fn sign(task: &Task) -> Vec<u8> {
    sign_with(&task_key(), task)
}

fn pulled(bytes: &[u8], sequence: u64) -> Pulled<'_> {
    Pulled {
        payload: bytes,
        stream_sequence: sequence,
    }
}

fn rejection_code(effects: &[Effect]) -> Option<RejectCode> {
    effects.iter().find_map(|effect| match effect {
        Effect::Report(report) => match report.status {
            ReportStatus::Rejected { code, .. } => Some(code),
            _ => None,
        },
        _ => None,
    })
}

fn executes(effects: &[Effect]) -> bool {
    effects
        .iter()
        .any(|effect| matches!(effect, Effect::Execute(_)))
}

fn run_to_end(core: &mut WardenCore, bytes: &[u8], sequence: u64, now: UnixMillis) -> Vec<Effect> {
    let mut effects = core.on_pulled(pulled(bytes, sequence), now);
    if executes(&effects) {
        effects.extend(core.on_executed(Ok(Default::default()), now));
    }
    effects
}

fn code_for(core: &mut WardenCore, task: &Task) -> Option<RejectCode> {
    rejection_code(&core.on_pulled(pulled(&sign(task), 1), NOW))
}

#[test]
fn valid_task_runs_in_order() {
    let mut core = core();
    let bytes = sign(&task(1, &apply(1)));

    let effects = core.on_pulled(pulled(&bytes, 10), NOW);
    assert_eq!(effects[0], Effect::PersistClock(NOW));
    assert!(matches!(&effects[1], Effect::Persist(record) if record.state == RecordState::Started));
    assert!(
        matches!(&effects[2], Effect::Report(report) if report.status == ReportStatus::Delivered)
    );
    assert!(matches!(&effects[3], Effect::Execute(verified) if verified.action() == &apply(1)));
    assert_eq!(effects.len(), 4);

    let effects = core.on_executed(Ok(Default::default()), NOW);
    assert!(
        matches!(&effects[0], Effect::Persist(record) if matches!(record.state, RecordState::Finished(ReportStatus::Succeeded { .. })))
    );
    assert!(
        matches!(&effects[1], Effect::Report(report) if matches!(report.status, ReportStatus::Succeeded { .. }))
    );
    assert_eq!(effects[2], Effect::Ack);
    assert_eq!(core.config_version(), 1);
}

#[test]
fn unknown_key_rejected() {
    let mut core = core();
    let effects = core.on_pulled(pulled(&sign_with(&key(2), &task(1, &apply(1))), 1), NOW);
    assert_eq!(rejection_code(&effects), Some(RejectCode::UnknownKey));
    assert!(!executes(&effects));
    assert_eq!(effects.last(), Some(&Effect::Ack));
}

#[test]
fn root_key_cannot_sign_tasks() {
    let mut core = core();
    let effects = core.on_pulled(pulled(&sign_with(&root(), &task(1, &apply(1))), 1), NOW);
    assert_eq!(rejection_code(&effects), Some(RejectCode::UnknownKey));
}

#[test]
fn bad_signature_rejected() {
    let mut core = core();
    let mut bytes = sign(&task(1, &apply(1)));
    // The signature's last byte precedes the one-byte empty approvals array.
    let last_signature_byte = bytes.len() - 2;
    bytes[last_signature_byte] ^= 0x01;
    let effects = core.on_pulled(pulled(&bytes, 1), NOW);
    assert_eq!(rejection_code(&effects), Some(RejectCode::BadSignature));
    assert!(!executes(&effects));
}

#[test]
fn key_outside_window_rejected() {
    let old = key(7);
    let document = trust(
        1,
        &root(),
        vec![
            grant(
                &task_key(),
                UnixMillis(NOW.0 - DAY_MS),
                UnixMillis(NOW.0 + DAY_MS),
            ),
            grant(
                &old,
                UnixMillis(NOW.0 - 10 * DAY_MS),
                UnixMillis(NOW.0 - DAY_MS),
            ),
        ],
    );
    let mut core = core_with(document, 0);
    let effects = core.on_pulled(pulled(&sign_with(&old, &task(1, &apply(1))), 1), NOW);
    assert_eq!(rejection_code(&effects), Some(RejectCode::KeyOutsideWindow));
    assert!(!executes(&effects));
}

#[test]
fn old_key_works_until_its_window_ends() {
    let old = key(7);
    let new = task_key();
    let window_end = UnixMillis(NOW.0 + HOUR_MS);
    let document = trust(
        2,
        &root(),
        vec![
            grant(&old, UnixMillis(NOW.0 - DAY_MS), window_end),
            grant(&new, NOW, UnixMillis(NOW.0 + DAY_MS)),
        ],
    );
    let mut core = core_with(document, 0);
    assert!(executes(&run_to_end(
        &mut core,
        &sign_with(&old, &task(1, &TaskAction::CollectDiagnostics)),
        1,
        NOW
    )));
    assert!(executes(&run_to_end(
        &mut core,
        &sign_with(&new, &task(2, &TaskAction::CollectDiagnostics)),
        2,
        NOW
    )));

    // Past the old key's window plus the skew, only the new key works.
    let later = window_end.saturating_add(SKEW + Duration::from_secs(1));
    let mut late_task = task(3, &TaskAction::CollectDiagnostics);
    late_task.issued_at = later;
    late_task.not_before = later;
    late_task.expires_at = later.saturating_add(Duration::from_secs(600));
    let effects = core.on_pulled(pulled(&sign_with(&old, &late_task), 3), later);
    assert_eq!(rejection_code(&effects), Some(RejectCode::KeyOutsideWindow));
    late_task.id = TaskId::from_random([4; 16]);
    assert!(executes(
        &core.on_pulled(pulled(&sign_with(&new, &late_task), 4), later)
    ));
}

#[test]
fn other_node_rejected() {
    let mut other = task(1, &apply(1));
    other.node = NodeId::new("node-2").unwrap();
    assert_eq!(code_for(&mut core(), &other), Some(RejectCode::WrongNode));
}

#[test]
fn other_deployment_rejected() {
    let mut other = task(1, &apply(1));
    other.deployment = DeploymentId::new("staging").unwrap();
    assert_eq!(
        code_for(&mut core(), &other),
        Some(RejectCode::WrongDeployment)
    );
}

#[test]
fn expiry_honours_skew() {
    let mut core = core();
    let mut expired = task(1, &apply(1));
    expired.issued_at = NOW.saturating_sub(Duration::from_secs(1800));
    expired.not_before = expired.issued_at;
    expired.expires_at = NOW.saturating_sub(SKEW + Duration::from_millis(1));
    assert_eq!(code_for(&mut core, &expired), Some(RejectCode::Expired));

    let mut within_skew = expired.clone();
    within_skew.id = TaskId::from_random([2; 16]);
    within_skew.expires_at = NOW.saturating_sub(SKEW);
    assert!(executes(
        &core.on_pulled(pulled(&sign(&within_skew), 2), NOW)
    ));
}

#[test]
fn not_yet_valid_rejected() {
    let mut early = task(1, &apply(1));
    early.not_before = NOW.saturating_add(SKEW + Duration::from_secs(1));
    early.expires_at = early.not_before.saturating_add(Duration::from_secs(60));
    assert_eq!(code_for(&mut core(), &early), Some(RejectCode::NotYetValid));
}

#[test]
fn validity_longer_than_maximum_rejected() {
    let mut long = task(1, &apply(1));
    long.expires_at = NOW.saturating_add(Duration::from_secs(3601));
    assert_eq!(
        code_for(&mut core(), &long),
        Some(RejectCode::ValidityTooLong)
    );
}

#[test]
fn inverted_window_rejected() {
    let mut inverted = task(1, &apply(1));
    inverted.expires_at = inverted.not_before;
    assert_eq!(
        code_for(&mut core(), &inverted),
        Some(RejectCode::Malformed)
    );
}

#[test]
fn body_key_id_must_match_envelope() {
    let mut task = task(1, &apply(1));
    task.key_id = key(9).id().clone();
    let envelope = Envelope::seal(MessageId::from_random([0; 16]), &task).unwrap();
    let bytes = task_key().sign(&envelope).unwrap().encode().unwrap();
    assert_eq!(
        rejection_code(&core().on_pulled(pulled(&bytes, 1), NOW)),
        Some(RejectCode::Malformed)
    );
}

#[test]
fn redelivery_reports_recorded_outcome() {
    let mut core = core();
    let bytes = sign(&task(1, &TaskAction::CollectDiagnostics));
    run_to_end(&mut core, &bytes, 5, NOW);

    let effects = core.on_pulled(pulled(&bytes, 5), NOW);
    assert!(
        !executes(&effects),
        "a redelivered task must not execute again"
    );
    assert!(
        matches!(&effects[0], Effect::Report(report) if matches!(report.status, ReportStatus::Succeeded { .. }))
    );
    assert_eq!(effects[1], Effect::Ack);
}

#[test]
fn redelivery_after_expiry_reports_recorded_outcome() {
    let mut core = core();
    let bytes = sign(&task(1, &TaskAction::CollectDiagnostics));
    run_to_end(&mut core, &bytes, 5, NOW);
    let later = NOW.saturating_add(Duration::from_secs(2 * 3600));
    let effects = core.on_pulled(pulled(&bytes, 5), later);
    assert!(effects.iter().any(|e| matches!(e, Effect::Report(report) if matches!(report.status, ReportStatus::Succeeded { .. }))));
}

#[test]
fn replay_from_another_message_rejected() {
    let mut core = core();
    let bytes = sign(&task(1, &TaskAction::CollectDiagnostics));
    run_to_end(&mut core, &bytes, 5, NOW);
    let effects = core.on_pulled(pulled(&bytes, 6), NOW);
    assert_eq!(rejection_code(&effects), Some(RejectCode::Replayed));
    assert!(!executes(&effects));
}

fn persisted_records(effects: Vec<Effect>) -> Vec<super::record::TaskRecord> {
    effects
        .into_iter()
        .filter_map(|effect| match effect {
            Effect::Persist(record) => Some(record),
            _ => None,
        })
        .collect()
}

#[test]
fn replay_after_restart_rejected() {
    let mut core = core();
    let bytes = sign(&task(1, &TaskAction::CollectDiagnostics));
    let records = persisted_records(run_to_end(&mut core, &bytes, 5, NOW));

    // A new core built from the persisted records knows the task.
    let persisted = Persisted {
        records,
        config_version: 0,
        trust: default_trust(),
        clock_high_water: NOW,
        installed: Default::default(),
        access_version: None,
    };
    let mut restarted = WardenCore::new(identity(None), limits(), persisted);
    assert_eq!(
        rejection_code(&restarted.on_pulled(pulled(&bytes, 9), NOW)),
        Some(RejectCode::Replayed)
    );
}

#[test]
fn pruned_record_replay_rejected_as_expired() {
    let mut core = core();
    let bytes = sign(&task(1, &TaskAction::CollectDiagnostics));
    run_to_end(&mut core, &bytes, 5, NOW);
    assert!(
        core.prune(NOW).is_empty(),
        "a live task's record must be kept"
    );

    let after_expiry =
        NOW.saturating_add(Duration::from_millis(HOUR_MS) + SKEW + Duration::from_secs(1));
    let effects = core.prune(after_expiry);
    assert!(
        matches!(&effects[..], [Effect::PersistClock(_), Effect::Forget(ids)] if ids.len() == 1)
    );
    assert_eq!(core.record_count(), 0);
    assert_eq!(
        rejection_code(&core.on_pulled(pulled(&bytes, 9), after_expiry)),
        Some(RejectCode::Expired)
    );
}

#[test]
fn interrupted_task_runs_again_once() {
    let bytes = sign(&task(1, &apply(3)));
    let mut core = core();
    let started = persisted_records(core.on_pulled(pulled(&bytes, 5), NOW));

    // The process stopped after writing version 3 to disk but before recording the outcome.
    let persisted = Persisted {
        records: started,
        config_version: 3,
        trust: default_trust(),
        clock_high_water: NOW,
        installed: Default::default(),
        access_version: None,
    };
    let mut restarted = WardenCore::new(identity(None), limits(), persisted);
    let effects = restarted.on_pulled(pulled(&bytes, 5), NOW);
    assert!(executes(&effects), "an interrupted idempotent task resumes");
    restarted.on_executed(Ok(Default::default()), NOW);
    assert!(!executes(&restarted.on_pulled(pulled(&bytes, 5), NOW)));
}

#[test]
fn stale_config_version_rejected() {
    let mut core = core_with(default_trust(), 4);
    for (id, version) in [(1, 3), (2, 4)] {
        let effects = core.on_pulled(
            pulled(&sign(&task(id, &apply(version))), u64::from(id)),
            NOW,
        );
        assert_eq!(
            rejection_code(&effects),
            Some(RejectCode::StaleVersion),
            "version {version}"
        );
    }
    assert!(executes(
        &core.on_pulled(pulled(&sign(&task(3, &apply(5))), 3), NOW)
    ));
}

#[test]
fn unknown_kind_rejected() {
    let mut unknown = task(1, &TaskAction::CollectDiagnostics);
    unknown.kind = "run_shell".into();
    assert_eq!(
        code_for(&mut core(), &unknown),
        Some(RejectCode::UnknownKind)
    );
}

#[test]
fn component_tasks_execute() {
    let actions = [
        TaskAction::StartComponent(ComponentTarget {
            component: Component::Iggy,
        }),
        TaskAction::StopComponent(ComponentTarget {
            component: Component::Connectors,
        }),
        TaskAction::RestartComponent(ComponentTarget {
            component: Component::Iggy,
        }),
        reconfigure(3, None),
    ];
    for (index, action) in actions.iter().enumerate() {
        let mut core = core_with(default_trust(), 3);
        let id = u8::try_from(index).unwrap();
        let bytes = sign_with(&task_key(), &task(id, action));
        let effects = core.on_pulled(pulled(&bytes, 1), NOW);
        assert!(executes(&effects), "{}: {effects:?}", action.kind());
    }
}

fn reconfigure(version: u64, key: Option<Vec<u8>>) -> TaskAction {
    TaskAction::ReconfigureComponent(warden_bus::messages::Reconfigure {
        component: Component::Iggy,
        config_version: version,
        sealed_encryption_key: key,
    })
}

#[test]
fn reconfigure_needs_applied_version() {
    let mut core = core_with(default_trust(), 3);
    assert_eq!(
        code_for(&mut core, &task(1, &reconfigure(2, None))),
        Some(RejectCode::StaleVersion)
    );
    assert_eq!(
        code_for(&mut core, &task(2, &reconfigure(4, None))),
        Some(RejectCode::InvalidParams)
    );
}

#[test]
fn rotate_certificate_executes() {
    let mut core = core();
    let effects = core.on_pulled(
        pulled(&sign(&task(1, &TaskAction::RotateCertificate)), 1),
        NOW,
    );
    assert_eq!(rejection_code(&effects), None, "{effects:?}");
    assert!(
        matches!(effects.last(), Some(Effect::Execute(verified)) if verified.action() == &TaskAction::RotateCertificate),
        "{effects:?}"
    );
}

#[test]
fn invalid_params_rejected() {
    let mut broken = task(1, &apply(1));
    broken.params = vec![0xc1];
    assert_eq!(
        code_for(&mut core(), &broken),
        Some(RejectCode::InvalidParams)
    );
    let warden_start = task(
        2,
        &TaskAction::StartComponent(ComponentTarget {
            component: Component::Warden,
        }),
    );
    assert_eq!(
        code_for(&mut core(), &warden_start),
        Some(RejectCode::InvalidParams)
    );
}

#[test]
fn config_that_is_not_toml_rejected() {
    let broken = TaskAction::ApplyConfig(ApplyConfig {
        version: 1,
        content: "[system\npath = ".into(),
    });
    assert_eq!(
        code_for(&mut core(), &task(1, &broken)),
        Some(RejectCode::InvalidParams)
    );
}

#[test]
fn malformed_and_oversized_have_own_codes() {
    let mut core = core();
    let effects = core.on_pulled(pulled(b"not msgpack", 1), NOW);
    assert!(rejection_code(&effects).is_none(), "no task id to report");
    assert_eq!(effects.last(), Some(&Effect::Ack));
    let oversized = vec![0u8; warden_bus::ENVELOPE_BYTES_MAX + 1];
    assert_eq!(
        verify::verify_signed(&oversized, &identity(None), &default_trust())
            .unwrap_err()
            .code,
        RejectCode::Oversized
    );
    let truncated = sign(&task(1, &apply(1)));
    let code = verify::verify_signed(
        &truncated[..truncated.len() / 2],
        &identity(None),
        &default_trust(),
    )
    .unwrap_err()
    .code;
    assert_eq!(code, RejectCode::Malformed);
}

#[test]
fn failed_execution_recorded() {
    let mut core = core();
    core.on_pulled(pulled(&sign(&task(1, &apply(2))), 1), NOW);
    let effects = core.on_executed(Err("disk full".into()), NOW);
    assert!(
        matches!(&effects[1], Effect::Report(report) if report.status == ReportStatus::Failed { reason: "disk full".into() })
    );
    assert_eq!(
        core.config_version(),
        0,
        "a failed apply must not move the version"
    );
}

fn update_trust(document: &TrustDocument, signers: &[&SigningKey]) -> TaskAction {
    TaskAction::UpdateTrust(UpdateTrust {
        document: SignedDocument::sign(document, signers).unwrap(),
    })
}

#[test]
fn trust_update_replaces_keys() {
    let mut core = core();
    let new_key = key(50);
    let next = trust(
        2,
        &root(),
        vec![grant(
            &new_key,
            UnixMillis(NOW.0 - DAY_MS),
            UnixMillis(NOW.0 + DAY_MS),
        )],
    );
    let effects = run_to_end(
        &mut core,
        &sign(&task(1, &update_trust(&next, &[&root()]))),
        1,
        NOW,
    );
    assert!(executes(&effects));
    assert_eq!(core.trust().version, 2);

    // The old task key is no longer listed; the new one works.
    assert_eq!(
        code_for(&mut core, &task(2, &TaskAction::CollectDiagnostics)),
        Some(RejectCode::UnknownKey)
    );
    let bytes = sign_with(&new_key, &task(3, &TaskAction::CollectDiagnostics));
    assert!(executes(&core.on_pulled(pulled(&bytes, 3), NOW)));
}

#[test]
fn trust_downgrade_rejected() {
    let mut core = core_with(trust(5, &root(), default_trust().task_keys), 0);
    for (id, version) in [(1, 5), (2, 4)] {
        let older = trust(version, &root(), default_trust().task_keys);
        let code = code_for(&mut core, &task(id, &update_trust(&older, &[&root()])));
        assert_eq!(code, Some(RejectCode::TrustDowngrade), "version {version}");
    }
    assert_eq!(core.trust().version, 5);
}

#[test]
fn trust_signed_by_task_key_rejected() {
    let mut core = core();
    let mut forged = trust(2, &root(), default_trust().task_keys);
    forged
        .task_keys
        .push(grant(&key(66), NOW, UnixMillis(NOW.0 + DAY_MS)));
    let code = code_for(&mut core, &task(1, &update_trust(&forged, &[&task_key()])));
    assert_eq!(code, Some(RejectCode::TrustNotRootSigned));
    assert_eq!(core.trust().version, 1);
}

#[test]
fn root_rotation_through_tasks() {
    let mut core = core();
    let new_root = key(2000);
    let rotation = trust(2, &new_root, default_trust().task_keys);
    let only_old = code_for(&mut core, &task(1, &update_trust(&rotation, &[&root()])));
    assert_eq!(only_old, Some(RejectCode::TrustNotRootSigned));
    let both = sign(&task(2, &update_trust(&rotation, &[&root(), &new_root])));
    assert!(executes(&run_to_end(&mut core, &both, 2, NOW)));
    assert_eq!(
        core.trust().root().unwrap().id(),
        new_root.public_key().id()
    );

    // The old root alone can no longer sign.
    let next = trust(3, &new_root, default_trust().task_keys);
    assert_eq!(
        code_for(&mut core, &task(3, &update_trust(&next, &[&root()]))),
        Some(RejectCode::TrustNotRootSigned)
    );
}

#[test]
fn expired_trust_accepts_only_trust_update() {
    let mut old = default_trust();
    old.issued_at = UnixMillis(NOW.0 - 10 * DAY_MS);
    old.expires_at = UnixMillis(NOW.0 - DAY_MS);
    let mut core = core_with(old, 0);
    assert_eq!(
        code_for(&mut core, &task(1, &TaskAction::CollectDiagnostics)),
        Some(RejectCode::TrustExpired)
    );
    let fresh = trust(2, &root(), default_trust().task_keys);
    assert!(executes(&run_to_end(
        &mut core,
        &sign(&task(2, &update_trust(&fresh, &[&root()]))),
        2,
        NOW
    )));
    assert!(executes(&core.on_pulled(
        pulled(&sign(&task(3, &TaskAction::CollectDiagnostics)), 3),
        NOW
    )));
}

fn access_rules() -> TaskAction {
    TaskAction::ApplyAccessRules(AccessRules {
        version: 1,
        rules: vec![AccessRule {
            cidr: "10.0.0.0/8".into(),
            protocol: Protocol::Tcp,
            expires_at: None,
        }],
    })
}

fn approved(task: &Task, approver: &SigningKey) -> Vec<u8> {
    let envelope = Envelope::seal(MessageId::from_random([0; 16]), task).unwrap();
    let mut signed = task_key().sign(&envelope).unwrap();
    signed.approvals.push(approver.key_signature(&signed.body));
    signed.encode().unwrap()
}

#[test]
fn approval_missing_rejected() {
    let approver = key(77);
    let persisted = Persisted {
        records: Vec::new(),
        config_version: 0,
        trust: default_trust(),
        clock_high_water: UnixMillis(0),
        installed: Default::default(),
        access_version: None,
    };
    let mut core = WardenCore::new(identity(Some(approver.public_key())), limits(), persisted);
    assert_eq!(
        code_for(&mut core, &task(1, &access_rules())),
        Some(RejectCode::ApprovalMissing)
    );

    // With the approval the task passes every check; this node does not manage access rules.
    let effects = core.on_pulled(
        pulled(&approved(&task(2, &access_rules()), &approver), 2),
        NOW,
    );
    assert_eq!(rejection_code(&effects), Some(RejectCode::Unsupported));
}

#[test]
fn approval_by_wrong_key_rejected() {
    let approver = key(77);
    let persisted = Persisted {
        records: Vec::new(),
        config_version: 0,
        trust: default_trust(),
        clock_high_water: UnixMillis(0),
        installed: Default::default(),
        access_version: None,
    };
    let mut core = WardenCore::new(identity(Some(approver.public_key())), limits(), persisted);
    let effects = core.on_pulled(
        pulled(&approved(&task(1, &access_rules()), &task_key()), 1),
        NOW,
    );
    assert_eq!(rejection_code(&effects), Some(RejectCode::ApprovalInvalid));
}

#[test]
fn clock_regression_blocks_decisions() {
    let mut core = core();
    run_to_end(
        &mut core,
        &sign(&task(1, &TaskAction::CollectDiagnostics)),
        1,
        NOW,
    );
    let back = NOW.saturating_sub(SKEW + Duration::from_secs(60));
    let mut early = task(2, &TaskAction::CollectDiagnostics);
    early.issued_at = back;
    early.not_before = back;
    let effects = core.on_pulled(pulled(&sign(&early), 2), back);
    assert_eq!(rejection_code(&effects), Some(RejectCode::ClockRegressed));
    assert_eq!(effects.last(), Some(&Effect::Retry(CLOCK_REGRESSION_RETRY)));
    assert!(!executes(&effects));
    assert!(
        core.prune(back).is_empty(),
        "no pruning on a clock that went backwards"
    );
}

#[test]
fn starting_trust_prefers_stored_unless_newer_chain() {
    let root = root();
    let first = SignedDocument::sign(&default_trust(), &[&root]).unwrap();
    let (document, persist) = starting_trust(&root.public_key(), &first, None, NOW, SKEW).unwrap();
    assert_eq!(document.version, 1);
    assert!(persist.is_some());

    let second =
        SignedDocument::sign(&trust(2, &root, default_trust().task_keys), &[&root]).unwrap();
    // A stale bootstrap file does not roll the stored document back.
    let (document, persist) =
        starting_trust(&root.public_key(), &first, Some(&second), NOW, SKEW).unwrap();
    assert_eq!(document.version, 2);
    assert!(persist.is_none());
    // A newer, properly chained bootstrap document replaces the stored one.
    let (document, persist) =
        starting_trust(&root.public_key(), &second, Some(&first), NOW, SKEW).unwrap();
    assert_eq!(document.version, 2);
    assert!(persist.is_some());
    // A bootstrap document from another root is refused outright.
    assert!(starting_trust(&key(5).public_key(), &first, None, NOW, SKEW).is_err());
}

proptest! {
    #[test]
    fn mutated_task_never_executes(position in any::<usize>(), byte in any::<u8>(), truncate in any::<bool>()) {
        let mut core = core();
        let original = sign(&task(1, &apply(1)));
        let mut mutated = original.clone();
        let index = position % mutated.len();
        if truncate {
            mutated.truncate(index);
        } else {
            mutated[index] = byte;
        }
        prop_assume!(mutated != original);
        let effects = core.on_pulled(pulled(&mutated, 1), NOW);
        prop_assert!(!executes(&effects));
    }
}

fn settled_after_expiry(config_on_disk: u64) -> Vec<Effect> {
    let bytes = sign(&task(1, &apply(3)));
    let mut core = core();
    let started = persisted_records(core.on_pulled(pulled(&bytes, 5), NOW));
    let late = NOW.saturating_add(Duration::from_millis(HOUR_MS) + SKEW + Duration::from_secs(1));
    let persisted = Persisted {
        records: started,
        config_version: config_on_disk,
        trust: default_trust(),
        clock_high_water: NOW,
        installed: Default::default(),
        access_version: None,
    };
    let mut restarted = WardenCore::new(identity(None), limits(), persisted);
    restarted.on_pulled(pulled(&bytes, 5), late)
}

#[test]
fn interrupted_task_past_expiry_is_settled_not_run() {
    // Version 3 reached the disk before the interruption: the task succeeded.
    let effects = settled_after_expiry(3);
    assert!(
        !executes(&effects),
        "an expired task must not run, even resumed"
    );
    assert!(
        matches!(&effects[..], [Effect::PersistClock(_), Effect::Persist(record), Effect::Report(report), Effect::Ack]
        if matches!(record.state, RecordState::Finished(ReportStatus::Succeeded { .. }))
        && matches!(report.status, ReportStatus::Succeeded { .. }))
    );

    // It did not: the task failed and is not run again.
    let effects = settled_after_expiry(2);
    assert!(!executes(&effects));
    assert!(effects.iter().any(|effect| matches!(effect, Effect::Report(report) if matches!(report.status, ReportStatus::Failed { .. }))));
}

#[test]
fn huge_config_version_rejected() {
    let huge = TaskAction::ApplyConfig(ApplyConfig {
        version: u64::MAX,
        content: "[system]\n".into(),
    });
    assert_eq!(
        code_for(&mut core(), &task(1, &huge)),
        Some(RejectCode::InvalidParams)
    );
}

fn release_key() -> SigningKey {
    key(7)
}

fn trust_with_release_key() -> TrustDocument {
    let mut document = default_trust();
    document.release_keys = vec![grant(
        &release_key(),
        UnixMillis(NOW.0 - DAY_MS),
        UnixMillis(NOW.0 + 30 * DAY_MS),
    )];
    document
}

fn upgrade(component: Component, counter: u64) -> TaskAction {
    let manifest = warden_bus::release::ReleaseManifest {
        component,
        version: format!("0.8.{counter}"),
        target: super::release::BUILD_TARGET.to_owned(),
        sha256: vec![u8::try_from(counter).unwrap(); 32],
        size: 1024,
        release_counter: counter,
        issued_at: NOW,
    };
    let signed = warden_bus::release::SignedManifest::sign(&manifest, &release_key()).unwrap();
    TaskAction::UpgradeComponent(warden_bus::messages::Upgrade {
        component,
        version: manifest.version.clone(),
        sha256: manifest.sha256,
        release_counter: counter,
        manifest: Box::new(signed),
        rollback_permit: None,
    })
}

#[test]
fn upgrade_carries_checked_release_and_raises_installed_counter() {
    let mut core = core_with(trust_with_release_key(), 0);
    let bytes = sign(&task(1, &upgrade(Component::Iggy, 3)));
    let effects = core.on_pulled(pulled(&bytes, 1), NOW);
    let release = effects
        .iter()
        .find_map(|effect| match effect {
            Effect::Execute(verified) => verified.release().cloned(),
            _ => None,
        })
        .expect("an accepted upgrade executes with its checked release");
    assert_eq!(release.manifest().release_counter, 3);
    assert_eq!(core.installed_counter(Component::Iggy), 0);

    // A failed upgrade leaves the counter where it was; a successful one raises it.
    core.on_executed(Err("did not become healthy".into()), NOW);
    assert_eq!(core.installed_counter(Component::Iggy), 0);
    let bytes = sign(&task(2, &upgrade(Component::Iggy, 3)));
    core.on_pulled(pulled(&bytes, 2), NOW);
    core.on_executed(Ok(Default::default()), NOW);
    assert_eq!(core.installed_counter(Component::Iggy), 3);
    assert_eq!(core.installed_counter(Component::Connectors), 0);

    // Below the installed counter, without a rollback permit: refused before any download.
    let bytes = sign(&task(3, &upgrade(Component::Iggy, 2)));
    let effects = core.on_pulled(pulled(&bytes, 3), NOW);
    assert_eq!(rejection_code(&effects), Some(RejectCode::ReleaseRollback));
    assert!(!effects
        .iter()
        .any(|effect| matches!(effect, Effect::Execute(_))));
}

#[test]
fn upgrade_of_the_warden_itself_checked_like_others() {
    let persisted = Persisted {
        records: Vec::new(),
        config_version: 0,
        trust: trust_with_release_key(),
        clock_high_water: UnixMillis(0),
        installed: [(Component::Warden, 5)].into(),
        access_version: None,
    };
    let mut core = WardenCore::new(identity(None), limits(), persisted);
    let bytes = sign(&task(1, &upgrade(Component::Warden, 4)));
    let effects = core.on_pulled(pulled(&bytes, 1), NOW);
    assert_eq!(rejection_code(&effects), Some(RejectCode::ReleaseRollback));

    let bytes = sign(&task(2, &upgrade(Component::Warden, 6)));
    let effects = core.on_pulled(pulled(&bytes, 2), NOW);
    let release = effects.iter().find_map(|effect| match effect {
        Effect::Execute(verified) => verified.release().cloned(),
        _ => None,
    });
    assert_eq!(
        release.map(|release| release.manifest().release_counter),
        Some(6)
    );
}

#[test]
fn upgrade_counter_restored_from_persisted_state() {
    let persisted = Persisted {
        records: Vec::new(),
        config_version: 0,
        trust: trust_with_release_key(),
        clock_high_water: UnixMillis(0),
        installed: [(Component::Iggy, 5)].into(),
        access_version: None,
    };
    let mut core = WardenCore::new(identity(None), limits(), persisted);
    let bytes = sign(&task(1, &upgrade(Component::Iggy, 4)));
    let effects = core.on_pulled(pulled(&bytes, 1), NOW);
    assert_eq!(rejection_code(&effects), Some(RejectCode::ReleaseRollback));
}

fn core_with_access(version: u64) -> WardenCore {
    let persisted = Persisted {
        access_version: Some(version),
        ..persisted(default_trust(), 0)
    };
    WardenCore::new(identity(None), limits(), persisted)
}

#[test]
fn access_rules_run_where_access_is_managed() {
    let mut core = core_with_access(0);
    let effects = core.on_pulled(pulled(&sign(&task(1, &access_rules())), 1), NOW);
    assert!(executes(&effects), "{effects:?}");
    core.on_executed(Ok(Default::default()), NOW);
    assert_eq!(core.access_version(), Some(1));
}

#[test]
fn access_rules_version_not_above_installed_rejected() {
    let mut core = core_with_access(1);
    assert_eq!(
        code_for(&mut core, &task(1, &access_rules())),
        Some(RejectCode::StaleVersion)
    );
}

#[test]
fn access_rules_unmanaged_node_rejects_them() {
    let mut core = core();
    let effects = core.on_pulled(pulled(&sign(&task(1, &access_rules())), 1), NOW);
    assert_eq!(rejection_code(&effects), Some(RejectCode::Unsupported));
}

#[test]
fn pruned_task_copy_rejected_after_clock_steps_back() {
    let mut core = core();
    let task = task(1, &TaskAction::CollectDiagnostics);
    let bytes = sign(&task);
    run_to_end(&mut core, &bytes, 1, NOW);

    // The clock runs ahead, and the record goes once the task expired by that clock.
    let ahead = task
        .expires_at
        .saturating_add(SKEW + Duration::from_secs(1));
    let effects = core.prune(ahead);
    assert!(matches!(effects.first(), Some(Effect::PersistClock(time)) if *time == ahead));
    assert!(core.record(&task.id).is_none());

    // The clock is set back to a time at which the task would still be inside its window.
    let back = task.expires_at.saturating_add(SKEW / 2);
    let effects = core.on_pulled(pulled(&bytes, 2), back);
    assert_eq!(rejection_code(&effects), Some(RejectCode::Expired));
    assert!(!executes(&effects));
}
