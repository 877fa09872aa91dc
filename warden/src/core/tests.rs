use std::time::Duration;

use proptest::prelude::*;
use rand::SeedableRng;
use warden_bus::messages::ApplyConfig;
use warden_bus::{
    DeploymentId, Envelope, Keyring, MessageId, NodeId, RejectCode, ReportStatus, SigningKey, Task,
    TaskAction, TaskId, UnixMillis,
};

use super::record::RecordState;
use super::verify::Audience;
use super::*;

const NOW: UnixMillis = UnixMillis(1_796_428_800_000);
const SKEW: Duration = Duration::from_secs(300);
const HOUR_MS: u64 = 3_600_000;

fn key(seed: u64) -> SigningKey {
    SigningKey::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(seed))
}

fn core_with(key: &SigningKey, config_version: u64) -> WardenCore {
    let audience = Audience {
        deployment: DeploymentId::new("prod").unwrap(),
        node: NodeId::new("node-1").unwrap(),
        keyring: Keyring::new([key.public_key()]),
    };
    WardenCore::new(audience, SKEW, [], config_version)
}

fn task(id: u8, action: &TaskAction) -> Task {
    Task {
        id: TaskId::from_random([id; 16]),
        deployment: DeploymentId::new("prod").unwrap(),
        node: NodeId::new("node-1").unwrap(),
        issued_at: NOW,
        not_before: NOW,
        expires_at: UnixMillis(NOW.0 + HOUR_MS),
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

fn sign(key: &SigningKey, task: &Task) -> Vec<u8> {
    let envelope = Envelope::seal(MessageId::from_random([0; 16]), task).unwrap();
    key.sign(&envelope).unwrap().encode().unwrap()
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

fn run_to_end(core: &mut WardenCore, bytes: &[u8], sequence: u64) -> Vec<Effect> {
    let mut effects = core.on_pulled(pulled(bytes, sequence), NOW);
    if executes(&effects) {
        effects.extend(core.on_executed(Ok(Default::default()), NOW));
    }
    effects
}

#[test]
fn valid_task_runs_in_order() {
    let key = key(1);
    let mut core = core_with(&key, 0);
    let bytes = sign(&key, &task(1, &apply(1)));

    let effects = core.on_pulled(pulled(&bytes, 10), NOW);
    assert!(matches!(&effects[0], Effect::Persist(record) if record.state == RecordState::Started));
    assert!(
        matches!(&effects[1], Effect::Report(report) if report.status == ReportStatus::Delivered)
    );
    assert!(matches!(&effects[2], Effect::Execute(verified) if verified.action() == &apply(1)));
    assert_eq!(effects.len(), 3);

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
    let mut core = core_with(&key(1), 0);
    let effects = core.on_pulled(pulled(&sign(&key(2), &task(1, &apply(1))), 1), NOW);
    assert_eq!(rejection_code(&effects), Some(RejectCode::UnknownKey));
    assert!(!executes(&effects));
    assert_eq!(effects.last(), Some(&Effect::Ack));
}

#[test]
fn bad_signature_rejected() {
    let key = key(1);
    let mut core = core_with(&key, 0);
    let mut bytes = sign(&key, &task(1, &apply(1)));
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    let effects = core.on_pulled(pulled(&bytes, 1), NOW);
    assert_eq!(rejection_code(&effects), Some(RejectCode::BadSignature));
    assert!(!executes(&effects));
}

#[test]
fn other_node_rejected() {
    let key = key(1);
    let mut core = core_with(&key, 0);
    let mut other = task(1, &apply(1));
    other.node = NodeId::new("node-2").unwrap();
    let effects = core.on_pulled(pulled(&sign(&key, &other), 1), NOW);
    assert_eq!(rejection_code(&effects), Some(RejectCode::WrongNode));
    assert!(!executes(&effects));
}

#[test]
fn other_deployment_rejected() {
    let key = key(1);
    let mut core = core_with(&key, 0);
    let mut other = task(1, &apply(1));
    other.deployment = DeploymentId::new("staging").unwrap();
    let effects = core.on_pulled(pulled(&sign(&key, &other), 1), NOW);
    assert_eq!(rejection_code(&effects), Some(RejectCode::WrongDeployment));
}

#[test]
fn expiry_honours_skew() {
    let key = key(1);
    let mut expired = task(1, &apply(1));
    expired.expires_at = NOW.saturating_sub(SKEW + Duration::from_millis(1));
    let mut core = core_with(&key, 0);
    assert_eq!(
        rejection_code(&core.on_pulled(pulled(&sign(&key, &expired), 1), NOW)),
        Some(RejectCode::Expired)
    );

    let mut within_skew = task(2, &apply(1));
    within_skew.expires_at = NOW.saturating_sub(SKEW);
    assert!(executes(
        &core.on_pulled(pulled(&sign(&key, &within_skew), 2), NOW)
    ));
}

#[test]
fn not_yet_valid_rejected() {
    let key = key(1);
    let mut early = task(1, &apply(1));
    early.not_before = NOW.saturating_add(SKEW + Duration::from_secs(1));
    let mut core = core_with(&key, 0);
    assert_eq!(
        rejection_code(&core.on_pulled(pulled(&sign(&key, &early), 1), NOW)),
        Some(RejectCode::NotYetValid)
    );
}

#[test]
fn redelivery_reports_recorded_outcome() {
    let key = key(1);
    let mut core = core_with(&key, 0);
    let bytes = sign(&key, &task(1, &TaskAction::CollectDiagnostics));
    run_to_end(&mut core, &bytes, 5);

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
    let key = key(1);
    let mut core = core_with(&key, 0);
    let bytes = sign(&key, &task(1, &TaskAction::CollectDiagnostics));
    run_to_end(&mut core, &bytes, 5);
    let later = NOW.saturating_add(Duration::from_secs(2 * 3600));
    let effects = core.on_pulled(pulled(&bytes, 5), later);
    assert!(
        matches!(&effects[0], Effect::Report(report) if matches!(report.status, ReportStatus::Succeeded { .. }))
    );
}

#[test]
fn replay_from_another_message_rejected() {
    let key = key(1);
    let mut core = core_with(&key, 0);
    let bytes = sign(&key, &task(1, &TaskAction::CollectDiagnostics));
    run_to_end(&mut core, &bytes, 5);
    let effects = core.on_pulled(pulled(&bytes, 6), NOW);
    assert_eq!(rejection_code(&effects), Some(RejectCode::Replayed));
    assert!(!executes(&effects));
}

#[test]
fn replay_after_restart_rejected() {
    let key = key(1);
    let mut core = core_with(&key, 0);
    let bytes = sign(&key, &task(1, &TaskAction::CollectDiagnostics));
    let records: Vec<_> = run_to_end(&mut core, &bytes, 5)
        .into_iter()
        .filter_map(|effect| match effect {
            Effect::Persist(record) => Some(record),
            _ => None,
        })
        .collect();

    // A new core built from the persisted records knows the task.
    let mut restarted = core_with(&key, 0);
    restarted = WardenCore::new(restarted.audience.clone(), SKEW, records, 0);
    assert_eq!(
        rejection_code(&restarted.on_pulled(pulled(&bytes, 9), NOW)),
        Some(RejectCode::Replayed)
    );
}

#[test]
fn interrupted_task_runs_again_once() {
    let key = key(1);
    let bytes = sign(&key, &task(1, &apply(3)));
    let mut core = core_with(&key, 0);
    let started = match &core.on_pulled(pulled(&bytes, 5), NOW)[0] {
        Effect::Persist(record) => record.clone(),
        other => panic!("expected a persist, got {other:?}"),
    };

    // The process stopped after writing version 3 to disk but before recording the outcome.
    let mut restarted = WardenCore::new(core.audience.clone(), SKEW, [started], 3);
    let effects = restarted.on_pulled(pulled(&bytes, 5), NOW);
    assert!(executes(&effects), "an interrupted idempotent task resumes");
    restarted.on_executed(Ok(Default::default()), NOW);
    assert!(!executes(&restarted.on_pulled(pulled(&bytes, 5), NOW)));
}

#[test]
fn stale_config_version_rejected() {
    let key = key(1);
    let mut core = core_with(&key, 4);
    for (id, version) in [(1, 3), (2, 4)] {
        let effects = core.on_pulled(
            pulled(&sign(&key, &task(id, &apply(version))), u64::from(id)),
            NOW,
        );
        assert_eq!(
            rejection_code(&effects),
            Some(RejectCode::StaleVersion),
            "version {version}"
        );
    }
    assert!(executes(
        &core.on_pulled(pulled(&sign(&key, &task(3, &apply(5))), 3), NOW)
    ));
}

#[test]
fn unknown_kind_rejected() {
    let key = key(1);
    let mut core = core_with(&key, 0);
    let mut unknown = task(1, &TaskAction::CollectDiagnostics);
    unknown.kind = "run_shell".into();
    assert_eq!(
        rejection_code(&core.on_pulled(pulled(&sign(&key, &unknown), 1), NOW)),
        Some(RejectCode::UnknownKind)
    );
}

#[test]
fn invalid_params_rejected() {
    let key = key(1);
    let mut core = core_with(&key, 0);
    let mut broken = task(1, &apply(1));
    broken.params = vec![0xc1];
    assert_eq!(
        rejection_code(&core.on_pulled(pulled(&sign(&key, &broken), 1), NOW)),
        Some(RejectCode::InvalidParams)
    );
}

#[test]
fn malformed_bytes_acked_without_report() {
    let mut core = core_with(&key(1), 0);
    assert_eq!(
        core.on_pulled(pulled(b"not msgpack", 1), NOW),
        vec![Effect::Ack]
    );
}

#[test]
fn failed_execution_recorded() {
    let key = key(1);
    let mut core = core_with(&key, 0);
    core.on_pulled(pulled(&sign(&key, &task(1, &apply(2))), 1), NOW);
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

proptest! {
    #[test]
    fn mutated_task_never_executes(position in any::<usize>(), byte in any::<u8>(), truncate in any::<bool>()) {
        let key = key(1);
        let mut core = core_with(&key, 0);
        let original = sign(&key, &task(1, &apply(1)));
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

#[test]
fn config_that_is_not_toml_rejected() {
    let key = key(1);
    let mut core = core_with(&key, 0);
    let broken = TaskAction::ApplyConfig(ApplyConfig {
        version: 1,
        content: "[system\npath = ".into(),
    });
    let effects = core.on_pulled(pulled(&sign(&key, &task(1, &broken)), 1), NOW);
    assert_eq!(rejection_code(&effects), Some(RejectCode::InvalidParams));
    assert!(!executes(&effects));
}
