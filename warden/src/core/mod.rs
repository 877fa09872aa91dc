//! The Warden's decisions, free of I/O.
//!
//! [`WardenCore`] takes inputs (a pulled message with the current time, the outcome of an
//! execution, a pruning tick) and returns [`Effect`]s in the order they must happen. The caller
//! carries them out one by one and stops at the first failure; the next start rebuilds the core
//! from the persisted state, so a failure at any point leaves a consistent state.
//!
//! For a new valid task the effects are: persist `Started`, report `Delivered`, execute. The
//! execution's outcome then gives: persist `Finished`, report the outcome, acknowledge. The
//! report goes out before the acknowledgement so that a failed report is retried by the
//! broker's redelivery, which republishes the recorded outcome without executing again.

pub mod access;
pub mod certificate;
pub mod component;
pub mod credentials;
pub mod heartbeat;
pub mod record;
pub mod release;
pub mod self_upgrade;
pub mod verify;

use std::collections::BTreeMap;
use std::time::Duration;

use warden_bus::trust::{TrustDocument, TrustError};
use warden_bus::{RejectCode, ReportStatus, Task, TaskAction, TaskId, TaskReport, UnixMillis};

use warden_bus::messages::Component;

use self::record::{RecordState, TaskRecord};
use self::release::{check_upgrade, ReleaseContext, VerifiedRelease, BUILD_TARGET};
use self::verify::{Identity, Limits, Rejection, VerifiedTask};

/// Default tolerance for clock differences between control plane and node.
pub const CLOCK_SKEW_DEFAULT: Duration = Duration::from_secs(300);

/// How long a Warden waits before it looks again at a task it could not judge because its clock
/// went backwards.
pub const CLOCK_REGRESSION_RETRY: Duration = Duration::from_secs(30);

/// Something the caller must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Write the latest time seen and flush it, before anything that depends on it.
    PersistClock(UnixMillis),
    /// Write the record and flush it to disk.
    Persist(TaskRecord),
    /// Delete these records and flush; each is past its expiry plus the clock skew.
    Forget(Vec<TaskId>),
    /// Execute the task and feed the outcome to [`WardenCore::on_executed`].
    Execute(VerifiedTask),
    /// Publish the report and wait until the broker stored it.
    Report(TaskReport),
    /// Acknowledge the delivery being handled.
    Ack,
    /// Leave the delivery unacknowledged and ask for it again after the delay.
    Retry(Duration),
}

/// Outcome of executing a task: output facts, or why it failed.
pub type ExecutionOutcome = Result<BTreeMap<String, String>, String>;

/// A message pulled from this node's task consumer.
#[derive(Debug, Clone, Copy)]
pub struct Pulled<'a> {
    /// Message payload.
    pub payload: &'a [u8],
    /// Stream sequence of the message.
    pub stream_sequence: u64,
}

/// State a Warden has persisted, to rebuild its core from.
#[derive(Debug, Clone)]
pub struct Persisted {
    /// Execution records.
    pub records: Vec<TaskRecord>,
    /// Version of the configuration on disk.
    pub config_version: u64,
    /// The current trust document, already verified when it was stored.
    pub trust: TrustDocument,
    /// The latest wall-clock time the Warden has seen.
    pub clock_high_water: UnixMillis,
    /// Release counter of each component's active installed release; absent if none.
    pub installed: BTreeMap<Component, u64>,
    /// Version of the installed access rules (0 before the first), or `None` if this node
    /// does not manage access rules.
    pub access_version: Option<u64>,
}

/// The Warden's state machine for tasks.
#[derive(Debug, Clone)]
pub struct WardenCore {
    identity: Identity,
    limits: Limits,
    trust: TrustDocument,
    records: BTreeMap<TaskId, TaskRecord>,
    config_version: u64,
    clock_high_water: UnixMillis,
    installed: BTreeMap<Component, u64>,
    access_version: Option<u64>,
    in_flight: Option<InFlight>,
}

#[derive(Debug, Clone)]
struct InFlight {
    task: Task,
    stream_sequence: u64,
    change: Change,
}

/// A versioned document the task in flight replaces when it succeeds.
#[derive(Debug, Clone)]
enum Change {
    None,
    ConfigVersion(u64),
    AccessVersion(u64),
    Trust(Box<TrustDocument>),
    Release(Component, u64),
}

impl WardenCore {
    /// Rebuilds the core from what was persisted.
    pub fn new(identity: Identity, limits: Limits, persisted: Persisted) -> Self {
        Self {
            identity,
            limits,
            trust: persisted.trust,
            records: persisted
                .records
                .into_iter()
                .map(|record| (record.task_id.clone(), record))
                .collect(),
            config_version: persisted.config_version,
            clock_high_water: persisted.clock_high_water,
            installed: persisted.installed,
            access_version: persisted.access_version,
            in_flight: None,
        }
    }

    /// Version of the applied Iggy configuration, 0 if none.
    pub fn config_version(&self) -> u64 {
        self.config_version
    }

    /// Version of the installed access rules, or `None` if this node does not manage them.
    pub fn access_version(&self) -> Option<u64> {
        self.access_version
    }

    /// Returns the current trust document.
    pub fn trust(&self) -> &TrustDocument {
        &self.trust
    }

    /// Returns the execution record of a task, if this node accepted it.
    pub fn record(&self, id: &TaskId) -> Option<&TaskRecord> {
        self.records.get(id)
    }

    /// Number of execution records held.
    pub fn record_count(&self) -> usize {
        self.records.len()
    }

    /// Decides what to do with a pulled message.
    pub fn on_pulled(&mut self, pulled: Pulled<'_>, now: UnixMillis) -> Vec<Effect> {
        debug_assert!(self.in_flight.is_none(), "a task is already executing");

        // Expiry and replay decisions need a clock that did not go back past what was seen.
        let mut effects = Vec::new();
        if now.saturating_add(self.limits.clock_skew) < self.clock_high_water {
            tracing::error!(
                node_id = %self.identity.node,
                now = %now,
                latest_seen = %self.clock_high_water,
                "clock went backwards past the latest time seen; not judging tasks until it recovers"
            );
            let detail = format!(
                "the node's clock reads {now}, before the latest time it recorded, {}; fix the clock",
                self.clock_high_water
            );
            let rejection = Rejection::new(
                RejectCode::ClockRegressed,
                detail,
                self.claimed_id(pulled.payload),
            );
            effects.extend(self.report_rejection(&rejection, now));
            effects.push(Effect::Retry(CLOCK_REGRESSION_RETRY));
            return effects;
        }
        if now > self.clock_high_water {
            self.clock_high_water = now;
            effects.push(Effect::PersistClock(now));
        }

        let signed = match verify::verify_signed(pulled.payload, &self.identity, &self.trust) {
            Ok(signed) => signed,
            Err(rejection) => return self.reject(effects, rejection, now),
        };

        // A task with a record was accepted before: from this message it is a redelivery,
        // from another message a replay.
        let task_id = signed.task.id.clone();
        if let Some(record) = self.records.get(&task_id) {
            if record.stream_sequence != pulled.stream_sequence {
                let detail = format!(
                    "task {task_id} was already accepted from stream message {}; this copy is message {}",
                    record.stream_sequence, pulled.stream_sequence
                );
                return self.reject(
                    effects,
                    Rejection::new(RejectCode::Replayed, detail, Some(task_id)),
                    now,
                );
            }
            if let RecordState::Finished(status) = &record.state {
                tracing::info!(
                    node_id = %self.identity.node,
                    task_id = %task_id,
                    stream_sequence = pulled.stream_sequence,
                    "task redelivered; reporting its recorded outcome again without executing"
                );
                let report = self.report(&task_id, status.clone(), now);
                effects.extend([Effect::Report(report), Effect::Ack]);
                return effects;
            }
            // Started but never finished: the Warden stopped mid-execution. Every supported
            // action is idempotent, so it runs again below and recognises its own version.
        }
        let resumed = self.records.contains_key(&task_id);

        // An interrupted task that has meanwhile left its window is settled from what is on
        // disk instead of being run outside its validity.
        let interrupted_task = resumed.then(|| signed.task.clone());
        let verified = match verify::check_window_and_action(
            signed,
            &self.trust,
            &self.identity,
            verify::Now {
                clock: now,
                latest_seen: self.clock_high_water,
            },
            self.limits,
        ) {
            Ok(verified) => verified,
            Err(rejection) => match interrupted_task {
                Some(task) if verify::is_time_check(rejection.code) => {
                    return self.settle_interrupted(
                        effects,
                        &task,
                        pulled.stream_sequence,
                        &rejection,
                        now,
                    )
                }
                _ => return self.reject(effects, rejection, now),
            },
        };
        let (change, release) = match self.decide_change(&verified, now, resumed) {
            Ok(decided) => decided,
            Err(rejection) => return self.reject(effects, rejection, now),
        };
        let verified = match release {
            Some(release) => verified.with_release(release),
            None => verified,
        };

        let record = TaskRecord {
            task_id: verified.id().clone(),
            stream_sequence: pulled.stream_sequence,
            expires_at: verified.task().expires_at,
            state: RecordState::Started,
        };
        self.records.insert(record.task_id.clone(), record.clone());
        self.in_flight = Some(InFlight {
            task: verified.task().clone(),
            stream_sequence: pulled.stream_sequence,
            change,
        });
        let delivered = self.report(verified.id(), ReportStatus::Delivered, now);
        effects.extend([
            Effect::Persist(record),
            Effect::Report(delivered),
            Effect::Execute(verified),
        ]);
        effects
    }

    /// Records the outcome of a task that was interrupted mid-execution and is now outside its
    /// window, without running it again: a versioned document whose version is on disk was
    /// applied; anything else is reported as failed.
    fn settle_interrupted(
        &mut self,
        mut effects: Vec<Effect>,
        task: &Task,
        stream_sequence: u64,
        rejection: &Rejection,
        now: UnixMillis,
    ) -> Vec<Effect> {
        let applied = match task.action() {
            Ok(TaskAction::ApplyConfig(config)) => config.version == self.config_version,
            Ok(TaskAction::ApplyAccessRules(rules)) => Some(rules.version) == self.access_version,
            Ok(TaskAction::UpdateTrust(update)) => update
                .document
                .document_unverified()
                .is_ok_and(|document| document.version == self.trust.version),
            _ => false,
        };
        let status = if applied {
            ReportStatus::Succeeded {
                output: [(
                    "result".to_owned(),
                    "applied before the Warden was interrupted".to_owned(),
                )]
                .into(),
            }
        } else {
            ReportStatus::failed(format!(
                "the Warden was interrupted while running task {} and it cannot be run again: {}",
                task.id, rejection.detail
            ))
        };
        tracing::warn!(node_id = %self.identity.node, task_id = %task.id, applied, "settled an interrupted task outside its window without running it again");
        let record = TaskRecord {
            task_id: task.id.clone(),
            stream_sequence,
            expires_at: task.expires_at,
            state: RecordState::Finished(status.clone()),
        };
        self.records.insert(record.task_id.clone(), record.clone());
        let report = self.report(&task.id, status, now);
        effects.extend([Effect::Persist(record), Effect::Report(report), Effect::Ack]);
        effects
    }

    /// Checks what the action would change against the documents in place.
    fn decide_change(
        &self,
        verified: &VerifiedTask,
        now: UnixMillis,
        resumed: bool,
    ) -> Result<(Change, Option<VerifiedRelease>), Rejection> {
        let id = Some(verified.id().clone());
        if let TaskAction::UpgradeComponent(upgrade) = verified.action() {
            let context = ReleaseContext {
                trust: &self.trust,
                identity: &self.identity,
                now,
                skew: self.limits.clock_skew,
                target: BUILD_TARGET,
                installed_counter: self.installed_counter(upgrade.component),
            };
            return match check_upgrade(upgrade, &context) {
                Ok(release) => Ok((
                    Change::Release(upgrade.component, upgrade.release_counter),
                    Some(release),
                )),
                Err(rejection) => Err(Rejection::new(rejection.code, rejection.detail, id)),
            };
        }
        self.decide_document_change(verified, now, resumed)
            .map(|change| (change, None))
    }

    /// Release counter of the component's active installed release, 0 if none.
    pub fn installed_counter(&self, component: Component) -> u64 {
        self.installed.get(&component).copied().unwrap_or(0)
    }

    /// Checks what an action other than an upgrade would change.
    fn decide_document_change(
        &self,
        verified: &VerifiedTask,
        now: UnixMillis,
        resumed: bool,
    ) -> Result<Change, Rejection> {
        let id = Some(verified.id().clone());
        match verified.action() {
            TaskAction::ApplyConfig(config) => {
                if let Err(error) = config.content.parse::<toml::Table>() {
                    let detail = format!(
                        "configuration of task {} is not valid TOML: {error}",
                        verified.id()
                    );
                    return Err(Rejection::new(RejectCode::InvalidParams, detail, id));
                }
                let applied = self.config_version;
                if config.version < applied || (config.version == applied && !resumed) {
                    let detail = format!(
                        "configuration version {} is not above the applied version {applied}; issue a higher version",
                        config.version
                    );
                    return Err(Rejection::new(RejectCode::StaleVersion, detail, id));
                }
                Ok(Change::ConfigVersion(config.version))
            }
            TaskAction::ApplyAccessRules(rules) => {
                let Some(installed) = self.access_version else {
                    let detail = format!(
                        "task {} sets access rules, but this node does not manage them; add an [access] table to its bootstrap file",
                        verified.id()
                    );
                    return Err(Rejection::new(RejectCode::Unsupported, detail, id));
                };
                if rules.version < installed || (rules.version == installed && !resumed) {
                    let detail = format!(
                        "access rules version {} is not above the installed version {installed}; issue a higher version",
                        rules.version
                    );
                    return Err(Rejection::new(RejectCode::StaleVersion, detail, id));
                }
                Ok(Change::AccessVersion(rules.version))
            }
            TaskAction::UpdateTrust(update) => {
                // A resumed update may find its own document already in place.
                if resumed
                    && update.document.document_unverified().ok().as_ref() == Some(&self.trust)
                {
                    return Ok(Change::Trust(Box::new(self.trust.clone())));
                }
                match update
                    .document
                    .verify_successor(&self.trust, now, self.limits.clock_skew)
                {
                    Ok(document) => Ok(Change::Trust(Box::new(document))),
                    Err(error) => {
                        let code = match error {
                            TrustError::Downgrade { .. } => RejectCode::TrustDowngrade,
                            TrustError::NotSignedByRoot { .. }
                            | TrustError::NewRootNotProven { .. }
                            | TrustError::BadSignature { .. } => RejectCode::TrustNotRootSigned,
                            TrustError::Expired { .. } => RejectCode::Expired,
                            _ => RejectCode::InvalidParams,
                        };
                        Err(Rejection::new(code, error.to_string(), id))
                    }
                }
            }
            TaskAction::CollectDiagnostics
            | TaskAction::RotateCertificate
            | TaskAction::StartComponent(_)
            | TaskAction::StopComponent(_)
            | TaskAction::RestartComponent(_) => Ok(Change::None),
            TaskAction::ReconfigureComponent(reconfigure) => {
                if reconfigure.sealed_encryption_key.is_some() {
                    let detail = format!(
                        "task {} sets a data encryption key, which this Warden {} cannot install yet",
                        verified.id(),
                        env!("CARGO_PKG_VERSION")
                    );
                    return Err(Rejection::new(RejectCode::Unsupported, detail, id));
                }
                // The component runs with the configuration on disk, so a reconfiguration can
                // only name the applied version.
                let applied = self.config_version;
                let wanted = reconfigure.config_version;
                if wanted != applied {
                    let (code, fix) = if wanted < applied {
                        (RejectCode::StaleVersion, "name the applied version")
                    } else {
                        (
                            RejectCode::InvalidParams,
                            "apply that version with apply_config first",
                        )
                    };
                    let detail = format!(
                        "configuration version {wanted} is not the applied version {applied}; {fix}"
                    );
                    return Err(Rejection::new(code, detail, id));
                }
                Ok(Change::None)
            }
            unsupported => {
                let detail = format!(
                    "task kind {} is in the vocabulary but this Warden {} cannot carry it out yet",
                    unsupported.kind(),
                    env!("CARGO_PKG_VERSION")
                );
                Err(Rejection::new(RejectCode::Unsupported, detail, id))
            }
        }
    }

    /// Records the outcome of the task in flight.
    pub fn on_executed(&mut self, outcome: ExecutionOutcome, now: UnixMillis) -> Vec<Effect> {
        let Some(in_flight) = self.in_flight.take() else {
            debug_assert!(false, "an execution finished but no task was in flight");
            return Vec::new();
        };
        let status = match outcome {
            Ok(output) => {
                match in_flight.change {
                    Change::None => {}
                    Change::ConfigVersion(version) => {
                        self.config_version = self.config_version.max(version)
                    }
                    Change::AccessVersion(version) => {
                        self.access_version = Some(self.access_version.unwrap_or(0).max(version));
                    }
                    Change::Release(component, counter) => {
                        // A permitted rollback lowers the counter, so this is not a maximum.
                        self.installed.insert(component, counter);
                    }
                    Change::Trust(document) => {
                        tracing::info!(
                            node_id = %self.identity.node,
                            from_version = self.trust.version,
                            to_version = document.version,
                            "trust document replaced"
                        );
                        self.trust = *document;
                    }
                }
                ReportStatus::Succeeded { output }
            }
            Err(reason) => ReportStatus::failed(reason),
        };
        let record = TaskRecord {
            task_id: in_flight.task.id.clone(),
            stream_sequence: in_flight.stream_sequence,
            expires_at: in_flight.task.expires_at,
            state: RecordState::Finished(status.clone()),
        };
        self.records.insert(record.task_id.clone(), record.clone());
        let report = self.report(&in_flight.task.id, status, now);
        vec![Effect::Persist(record), Effect::Report(report), Effect::Ack]
    }

    /// Forgets records whose task expired more than the clock skew ago: a copy of such a task
    /// is rejected as expired, so its record is no longer needed to reject it as a replay.
    pub fn prune(&mut self, now: UnixMillis) -> Vec<Effect> {
        if self.in_flight.is_some()
            || now.saturating_add(self.limits.clock_skew) < self.clock_high_water
        {
            return Vec::new();
        }
        let horizon = now.saturating_sub(self.limits.clock_skew);
        // Expiry is judged against the latest time seen, so the time that justifies forgetting
        // a record is recorded first: a copy that arrives after the clock stepped back is then
        // still refused as expired.
        let mut effects = Vec::new();
        if now > self.clock_high_water {
            self.clock_high_water = now;
            effects.push(Effect::PersistClock(now));
        }
        let expired: Vec<TaskId> = self
            .records
            .values()
            .filter(|record| record.expires_at < horizon)
            .map(|record| record.task_id.clone())
            .collect();
        if expired.is_empty() {
            return effects;
        }
        for id in &expired {
            self.records.remove(id);
        }
        effects.push(Effect::Forget(expired));
        effects
    }

    fn claimed_id(&self, payload: &[u8]) -> Option<TaskId> {
        let signed = warden_bus::SignedEnvelope::decode(payload).ok()?;
        signed
            .decode_unverified()
            .ok()?
            .open::<Task>()
            .ok()
            .map(|task| task.id)
    }

    fn reject(
        &self,
        mut effects: Vec<Effect>,
        rejection: Rejection,
        now: UnixMillis,
    ) -> Vec<Effect> {
        effects.extend(self.report_rejection(&rejection, now));
        effects.push(Effect::Ack);
        effects
    }

    fn report_rejection(&self, rejection: &Rejection, now: UnixMillis) -> Option<Effect> {
        tracing::warn!(
            node_id = %self.identity.node,
            deployment_id = %self.identity.deployment,
            task_id = rejection.claimed_id.as_ref().map(TaskId::as_str).unwrap_or("unknown"),
            code = %rejection.code,
            detail = %rejection.detail,
            "rejected task"
        );
        let id = rejection.claimed_id.as_ref()?;
        let status = ReportStatus::rejected(rejection.code, &rejection.detail);
        Some(Effect::Report(self.report(id, status, now)))
    }

    fn report(&self, task_id: &TaskId, status: ReportStatus, now: UnixMillis) -> TaskReport {
        TaskReport {
            task_id: task_id.clone(),
            deployment: self.identity.deployment.clone(),
            node: self.identity.node.clone(),
            at: now,
            status,
        }
    }
}

/// Chooses the trust document a Warden starts with, and returns the signed document to persist
/// if it changed.
///
/// With nothing stored, the bootstrap document must verify against the pinned root. With a
/// stored document, a newer bootstrap document must verify as its successor; an older or
/// unverifiable one is ignored with a warning, so a stale bootstrap file cannot roll trust back.
pub fn starting_trust(
    pinned_root: &warden_bus::PublicKey,
    from_bootstrap: &warden_bus::trust::SignedDocument,
    stored: Option<&warden_bus::trust::SignedDocument>,
    now: UnixMillis,
    skew: Duration,
) -> Result<(TrustDocument, Option<warden_bus::trust::SignedDocument>), TrustError> {
    let Some(stored) = stored else {
        let document = from_bootstrap.verify_initial(pinned_root, now, skew)?;
        return Ok((document, Some(from_bootstrap.clone())));
    };
    let current = stored.document_unverified()?;
    current.validate()?;
    let offered = from_bootstrap.document_unverified()?;
    if offered.version <= current.version {
        return Ok((current, None));
    }
    match from_bootstrap.verify_successor(&current, now, skew) {
        Ok(document) => Ok((document, Some(from_bootstrap.clone()))),
        Err(error) => {
            tracing::warn!(
                stored_version = current.version,
                bootstrap_version = offered.version,
                error = %error,
                "ignoring the bootstrap file's trust document; keeping the stored one"
            );
            Ok((current, None))
        }
    }
}

#[cfg(test)]
mod tests;
