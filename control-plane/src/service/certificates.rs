//! Node certificates: the `certificate` request, each deployment's CA and its rotation, and
//! certificate alerts.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use warden_bus::messages::{truncate, CertificateReply, CertificateRequest, REASON_BYTES_MAX};
use warden_bus::{DeploymentId, Envelope, MessageId, NodeId, NodeSubject, SignedEnvelope};

use super::{ControlPlane, ServiceError, Target};
use crate::ca::{self, CaError, CaRecord};
use crate::core::certificates::{self as certs, AlertChange, Refusal, RotationError, RotationStep};
use crate::core::health::{NodeHealth, NodeRecord};
use crate::core::issue::ActionRequest;
use crate::store::StoreError;

/// Shortest time between two requests to one node to fetch the same trust bundle version; a
/// new version is asked for at once.
pub const NUDGE_INTERVAL: Duration = Duration::from_secs(300);

/// How long a replica reuses a deployment's bundle version before reading it again.
pub const BUNDLE_VERSION_CACHE: Duration = Duration::from_secs(5);

/// A step of a CA rotation, as the API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaStep {
    /// Create a new CA and add it to the bundles.
    Begin,
    /// Move to the next phase.
    Advance,
    /// Move to the previous phase.
    Rollback,
}

/// One CA of a deployment, as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthorityView {
    /// Generation.
    pub generation: u32,
    /// SHA-256 of the certificate's DER, hex.
    pub fingerprint: String,
    /// When it was created, RFC 3339.
    pub created_at: String,
    /// When it expires, RFC 3339.
    pub not_after: String,
}

/// A deployment's CA state, as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaView {
    /// Deployment id.
    pub deployment: String,
    /// stable, joining or signing.
    pub phase: String,
    /// Generation of the CA that signs.
    pub signer: u32,
    /// Version of the trust bundle.
    pub bundle_version: u64,
    /// The CAs in use.
    pub authorities: Vec<AuthorityView>,
    /// The CA certificates nodes trust now, PEM; give it to clients of the nodes.
    pub bundle_pem: String,
    /// When the rotation state last changed, RFC 3339.
    pub changed_at: String,
    /// Live nodes that do not report the current bundle version yet; the next step waits for
    /// them.
    pub waiting: Vec<WaitingNode>,
}

/// A live node behind the current bundle version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WaitingNode {
    /// Node id.
    pub node: String,
    /// The bundle version its last heartbeat reported; 0 without a certificate.
    pub bundle_version: u64,
}

/// An alert on a node, as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlertView {
    /// Deployment id.
    pub deployment: String,
    /// Node id.
    pub node: String,
    /// certificate_expiring or cert_refresh_failed.
    pub kind: String,
    /// When it was raised, RFC 3339.
    pub raised_at: String,
    /// When it was resolved, RFC 3339; absent while active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<String>,
    /// Details from when it was raised.
    pub detail: String,
}

impl From<CaError> for Refusal {
    fn from(error: CaError) -> Self {
        tracing::error!(error = %error, "certificate authority failure");
        Refusal::new("ca_unavailable", error.to_string())
    }
}

impl From<CaError> for ServiceError {
    fn from(error: CaError) -> Self {
        ServiceError::Unavailable(error.to_string())
    }
}

impl From<RotationError> for ServiceError {
    fn from(error: RotationError) -> Self {
        ServiceError::Conflict {
            what: error.to_string(),
            fix: "see `wardenctl ca show` for the phase and the nodes it waits for".into(),
        }
    }
}

impl ControlPlane {
    fn secrets(&self) -> Result<&ca::SecretsKey, Refusal> {
        self.inner.secrets.as_ref().ok_or_else(|| {
            Refusal::new(
                "ca_unavailable",
                "this control plane runs without --secrets-key, so it holds no CA",
            )
        })
    }

    /// Handles a node's certificate signing request and returns the encoded reply: a
    /// certificate or a rejection.
    pub(super) async fn certificate_rpc(
        &self,
        origin: &NodeSubject,
        payload: &[u8],
    ) -> Result<Vec<u8>, ServiceError> {
        let reply = match self.answer_certificate(origin, payload).await? {
            Ok(reply) => reply,
            Err(refusal) => {
                if let Some(suppressed) = self.may_log(origin) {
                    tracing::warn!(deployment_id = %origin.deployment, node_id = %origin.node, code = refusal.code, reason = %refusal.reason, suppressed, "certificate request rejected");
                }
                CertificateReply::Refused {
                    code: refusal.code.to_owned(),
                    reason: truncate(&refusal.reason, REASON_BYTES_MAX),
                }
            }
        };
        Ok(
            Envelope::seal(MessageId::from_random(self.random_bytes()), &reply)
                .and_then(|envelope| envelope.encode())
                .unwrap_or_default(),
        )
    }

    async fn answer_certificate(
        &self,
        origin: &NodeSubject,
        payload: &[u8],
    ) -> Result<Result<CertificateReply, Refusal>, ServiceError> {
        let signed = match SignedEnvelope::decode(payload) {
            Ok(signed) => signed,
            Err(error) => {
                return Ok(Err(Refusal::new(
                    "malformed_request",
                    format!("the request does not decode: {error}"),
                )))
            }
        };
        let key = warden_bus::subject::node_key(&origin.deployment, &origin.node);
        let Some((node, _)) = self.inner.store.get::<NodeRecord>(&key).await? else {
            return Ok(Err(Refusal::new(
                "unknown_node",
                "no such node is registered",
            )));
        };
        if node.enrollment.node_key.is_none() {
            return Ok(Err(Refusal::new(
                "node_revoked",
                "the node has no enrolled key: it was revoked or never enrolled; re-enroll it with `wardenctl node reenroll`",
            )));
        }
        // The record read above serves both the revocation check and the signature check.
        let request = match super::open_signed_by_node::<CertificateRequest>(
            &node,
            origin,
            &signed,
            |request| (&request.deployment, &request.node),
        ) {
            Ok((_, request)) => request,
            Err(reason) => return Ok(Err(Refusal::new("identity_mismatch", reason))),
        };
        Ok(self.sign_request(origin, &node, &request).await)
    }

    async fn sign_request(
        &self,
        origin: &NodeSubject,
        node: &NodeRecord,
        request: &CertificateRequest,
    ) -> Result<CertificateReply, Refusal> {
        let now = self.now();
        request
            .validate()
            .map_err(|reason| Refusal::new("malformed_csr", reason))?;
        certs::check_request_age(request.sent_at, now)?;
        let secrets = self.secrets()?;
        let parsed = ca::parse_csr(&request.csr_pem)?;
        let names = certs::check_request(&parsed.facts, &origin.node, &node.tls_names)?;

        let settings = self.inner.settings.certificates;
        let key = warden_bus::subject::node_key(&origin.deployment, &origin.node);
        let mut admitted = Ok(());
        let updated = self
            .inner
            .store
            .update::<NodeRecord>(&key, |record| {
                admitted = certs::admit_issue(&mut record.certificates_issued, now, settings.rate);
                admitted.is_ok()
            })
            .await
            .map_err(unavailable)?;
        if updated.is_none() {
            return Err(Refusal::new("unknown_node", "no such node is registered"));
        }
        admitted?;

        let record = self
            .ca_record(&origin.deployment)
            .await
            .map_err(|error| Refusal::new("ca_unavailable", error.to_string()))?;
        let authority = record.authority(record.rotation.phase.signer())?;
        let issued = ca::issue(
            &parsed,
            &origin.deployment,
            &origin.node,
            &names,
            authority,
            secrets,
            now,
            settings.lifetime,
            self.random_bytes(),
        )?;
        tracing::info!(deployment_id = %origin.deployment, node_id = %origin.node, serial = %issued.serial, ca_generation = authority.generation, bundle_version = record.rotation.bundle_version, not_after = %issued.not_after, "issued a node certificate");
        Ok(CertificateReply::Issued {
            chain_pem: issued.chain_pem,
            bundle_pem: record.bundle_pem()?,
            bundle_version: record.rotation.bundle_version,
            not_before: issued.not_before,
            not_after: issued.not_after,
        })
    }

    /// Reads the deployment's CA record, creating it with a first CA if it has none.
    async fn ca_record(&self, deployment: &DeploymentId) -> Result<CaRecord, ServiceError> {
        if let Some((record, _)) = self
            .inner
            .store
            .get::<CaRecord>(deployment.as_str())
            .await?
        {
            return Ok(record);
        }
        let secrets = self
            .secrets()
            .map_err(|refusal| ServiceError::Unavailable(refusal.reason))?;
        let record = CaRecord::first(deployment, secrets, self.now(), self.nonce())?;
        match self.inner.store.create(&record).await {
            Ok(_) => {
                let fingerprint = record
                    .authorities
                    .first()
                    .map(|authority| authority.fingerprint.as_str())
                    .unwrap_or_default();
                tracing::info!(deployment_id = %deployment, fingerprint, "created the deployment CA");
                Ok(record)
            }
            // Another replica created it first; use theirs.
            Err(StoreError::Exists { .. }) => self
                .inner
                .store
                .get::<CaRecord>(deployment.as_str())
                .await?
                .map(|(record, _)| record)
                .ok_or_else(|| {
                    ServiceError::Unavailable(format!(
                        "the CA of deployment {deployment} vanished while it was created; retry"
                    ))
                }),
            Err(error) => Err(error.into()),
        }
    }

    fn nonce(&self) -> [u8; 12] {
        let bytes = self.random_bytes();
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&bytes[..12]);
        nonce
    }

    /// Live nodes of a deployment with the bundle version each last reported.
    async fn live_bundle_versions(
        &self,
        deployment: &DeploymentId,
    ) -> Result<Vec<(NodeId, u64)>, ServiceError> {
        Ok(self
            .list_nodes(deployment)
            .await?
            .into_iter()
            .filter(|node| node.health == NodeHealth::Healthy && node.enrollment.node_key.is_some())
            .map(|node| {
                let version = node.certificate.map_or(0, |status| status.bundle_version);
                (node.node, version)
            })
            .collect())
    }

    /// Returns the deployment's CA state, creating its first CA if it has none.
    pub async fn ca_status(&self, deployment: &DeploymentId) -> Result<CaView, ServiceError> {
        self.require_deployment(deployment).await?;
        let record = self.ca_record(deployment).await?;
        let live = self.live_bundle_versions(deployment).await?;
        ca_view(&record, &live)
    }

    /// Takes one step of the deployment's CA rotation.
    pub async fn ca_step(
        &self,
        deployment: &DeploymentId,
        step: CaStep,
    ) -> Result<CaView, ServiceError> {
        self.require_deployment(deployment).await?;
        let current = self.ca_record(deployment).await?;
        let live = self.live_bundle_versions(deployment).await?;
        let now = self.now();
        let new_authority = match step {
            CaStep::Begin => {
                let secrets = self
                    .secrets()
                    .map_err(|refusal| ServiceError::Unavailable(refusal.reason))?;
                Some(ca::create_authority(
                    deployment,
                    current.next_generation(),
                    secrets,
                    now,
                    self.nonce(),
                )?)
            }
            CaStep::Advance | CaStep::Rollback => None,
        };
        let mut outcome: Result<(), ServiceError> = Ok(());
        let updated = self
            .inner
            .store
            .update::<CaRecord>(deployment.as_str(), |record| {
                let rotation_step = match (&new_authority, step) {
                    (Some(authority), _) => {
                        if record.next_generation() != authority.generation {
                            outcome = Err(ServiceError::Conflict {
                                what: "another replica changed the CA at the same time".into(),
                                fix: "check `wardenctl ca show` and retry".into(),
                            });
                            return false;
                        }
                        RotationStep::Begin {
                            new: authority.generation,
                        }
                    }
                    (None, CaStep::Rollback) => RotationStep::RollBack,
                    (None, _) => RotationStep::Advance,
                };
                match record.rotation.step(rotation_step, &live) {
                    Ok(next) => {
                        if let Some(authority) = &new_authority {
                            record.last_generation = authority.generation;
                            record.authorities.push(authority.clone());
                        }
                        record.rotation = next;
                        record.changed_at = now;
                        record.prune();
                        outcome = Ok(());
                        true
                    }
                    Err(error) => {
                        outcome = Err(error.into());
                        false
                    }
                }
            })
            .await?;
        outcome?;
        let record = updated.ok_or_else(|| ServiceError::NotFound {
            what: format!("the CA of deployment {deployment}"),
            fix: "retry; the control plane creates it on first use".into(),
        })?;
        self.inner
            .bundle_versions
            .put(deployment, now, record.rotation.bundle_version);
        tracing::info!(deployment_id = %deployment, phase = record.rotation.phase.name(), signer = record.rotation.phase.signer(), bundle_version = record.rotation.bundle_version, "CA rotation step taken");
        let live = self.live_bundle_versions(deployment).await?;
        ca_view(&record, &live)
    }

    /// Issues a `rotate_certificate` task to a node whose heartbeat shows an older trust bundle
    /// than its deployment's, since the renewal brings the current bundle. It does so once per
    /// bundle version and at most every [`NUDGE_INTERVAL`] after that.
    pub(super) async fn nudge_if_behind(&self, node: &NodeRecord) -> Result<(), ServiceError> {
        let Some(status) = node.certificate else {
            return Ok(());
        };
        if self.inner.secrets.is_none() {
            return Ok(());
        }
        let Some(current) = self.bundle_version(&node.deployment).await? else {
            return Ok(());
        };
        let now = self.now();
        let due = |record: &NodeRecord| {
            let behind = record
                .certificate
                .is_some_and(|status| status.bundle_version < current);
            let new_version = record.bundle_nudged_for < current;
            let quiet = record
                .bundle_nudged_at
                .is_none_or(|at| now.since(at) >= NUDGE_INTERVAL);
            behind && (new_version || quiet)
        };
        if status.bundle_version >= current || !due(node) {
            return Ok(());
        }
        let mut claimed = false;
        self.inner
            .store
            .update::<NodeRecord>(&node_key(node), |record| {
                claimed = due(record);
                if claimed {
                    record.bundle_nudged_at = Some(now);
                    record.bundle_nudged_for = current;
                }
                claimed
            })
            .await?;
        if !claimed {
            return Ok(());
        }
        tracing::info!(deployment_id = %node.deployment, node_id = %node.node, node_bundle_version = status.bundle_version, bundle_version = current, "node trust bundle is behind; asking it to renew its certificate");
        self.issue(
            node.deployment.clone(),
            Target::Node(node.node.clone()),
            ActionRequest::RotateCertificate {},
            None,
        )
        .await?;
        Ok(())
    }

    /// Returns the deployment's current bundle version, read at most every
    /// [`BUNDLE_VERSION_CACHE`], or `None` if the deployment has no CA yet.
    async fn bundle_version(&self, deployment: &DeploymentId) -> Result<Option<u64>, ServiceError> {
        let now = self.now();
        let cache = &self.inner.bundle_versions;
        if let Some(version) = cache.fresh(deployment, now, BUNDLE_VERSION_CACHE) {
            return Ok(Some(version));
        }
        let Some((record, _)) = self
            .inner
            .store
            .get::<CaRecord>(deployment.as_str())
            .await?
        else {
            return Ok(None);
        };
        let version = record.rotation.bundle_version;
        cache.put(deployment, now, version);
        Ok(Some(version))
    }

    /// Alerts of every node, or of one deployment; resolved ones only with `include_resolved`.
    pub async fn list_alerts(
        &self,
        deployment: Option<&DeploymentId>,
        include_resolved: bool,
    ) -> Result<Vec<AlertView>, ServiceError> {
        let mut views = Vec::new();
        for node in self.inner.store.list::<NodeRecord>().await? {
            if deployment.is_some_and(|deployment| deployment != &node.deployment) {
                continue;
            }
            for alert in &node.alerts {
                if alert.resolved_at.is_some() && !include_resolved {
                    continue;
                }
                views.push(AlertView {
                    deployment: node.deployment.to_string(),
                    node: node.node.to_string(),
                    kind: alert.kind.as_str().to_owned(),
                    raised_at: alert.raised_at.to_string(),
                    resolved_at: alert.resolved_at.map(|at| at.to_string()),
                    detail: alert.detail.clone(),
                });
            }
        }
        views.sort_by(|a, b| {
            (&a.deployment, &a.node, &a.raised_at).cmp(&(&b.deployment, &b.node, &b.raised_at))
        });
        Ok(views)
    }
}

fn node_key(node: &NodeRecord) -> String {
    warden_bus::subject::node_key(&node.deployment, &node.node)
}

fn unavailable(error: StoreError) -> Refusal {
    Refusal::new(
        "unavailable",
        format!("the control plane's store failed: {error}; retry"),
    )
}

/// Updates a node's certificate alerts for `now` and returns what changed.
pub(super) fn evaluate_alerts(
    record: &mut NodeRecord,
    now: warden_bus::UnixMillis,
    policy: certs::AlertPolicy,
) -> Vec<AlertChange> {
    let wanted = wanted_alerts_of(record, now, policy);
    certs::reconcile_alerts(&mut record.alerts, wanted, now)
}

/// Checks whether [`evaluate_alerts`] would change a node's alerts, without copying the record.
pub(super) fn alerts_would_change(
    record: &NodeRecord,
    now: warden_bus::UnixMillis,
    policy: certs::AlertPolicy,
) -> bool {
    let mut alerts = record.alerts.clone();
    let wanted = wanted_alerts_of(record, now, policy);
    !certs::reconcile_alerts(&mut alerts, wanted, now).is_empty()
}

/// A revoked node gets no alerts: its certificate no longer matters.
fn wanted_alerts_of(
    record: &NodeRecord,
    now: warden_bus::UnixMillis,
    policy: certs::AlertPolicy,
) -> Vec<(certs::AlertKind, String)> {
    if record.enrollment.node_key.is_some() {
        certs::wanted_alerts(record.certificate.as_ref(), now, policy)
    } else {
        Vec::new()
    }
}

/// Writes alert changes to the log.
pub(super) fn log_alert_changes(deployment: &DeploymentId, node: &NodeId, changes: &[AlertChange]) {
    for change in changes {
        match change {
            AlertChange::Raised(kind, detail) => {
                tracing::warn!(deployment_id = %deployment, node_id = %node, alert = kind.as_str(), detail = %detail, "alert raised");
            }
            AlertChange::Resolved(kind) => {
                tracing::info!(deployment_id = %deployment, node_id = %node, alert = kind.as_str(), "alert resolved");
            }
        }
    }
}

fn ca_view(record: &CaRecord, live: &[(NodeId, u64)]) -> Result<CaView, ServiceError> {
    Ok(CaView {
        deployment: record.deployment.to_string(),
        phase: record.rotation.phase.name().to_owned(),
        signer: record.rotation.phase.signer(),
        bundle_version: record.rotation.bundle_version,
        authorities: record
            .authorities
            .iter()
            .map(|authority| AuthorityView {
                generation: authority.generation,
                fingerprint: authority.fingerprint.clone(),
                created_at: authority.created_at.to_string(),
                not_after: authority.not_after.to_string(),
            })
            .collect(),
        bundle_pem: record.bundle_pem()?,
        changed_at: record.changed_at.to_string(),
        waiting: record
            .rotation
            .waiting(live)
            .into_iter()
            .map(|(node, bundle_version)| WaitingNode {
                node: node.to_string(),
                bundle_version,
            })
            .collect(),
    })
}
