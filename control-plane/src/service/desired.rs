//! The deployment's desired documents (access rules and Iggy configuration), and sending them
//! again to nodes that are behind.

use std::sync::Arc;
use std::time::Duration;

use warden_bus::{DeploymentId, TaskAction, UnixMillis};

use super::{ControlPlane, ServiceError, Target};
use crate::core::desired::{supersedes, Desired, DesiredKind, IssueWindow};
use crate::core::health::NodeRecord;
use crate::core::issue::{ActionRequest, TASK_TTL_DEFAULT};
use crate::store::DeploymentRecord;

/// Time between copies of a desired document to a node that stays behind. It equals the
/// validity of the copy's task, so two copies are never valid at once.
pub(super) const DESIRED_RESEND_INTERVAL: Duration = TASK_TTL_DEFAULT;

/// How long a replica reuses a deployment's desired documents before reading them again.
const DESIRED_CACHE: Duration = Duration::from_secs(5);

/// Returns the deployment's desired document of `kind`, if it has one.
fn desired_of(record: &DeploymentRecord, kind: DesiredKind) -> Option<Desired> {
    let (version, issue) = match kind {
        DesiredKind::AccessRules => (
            record.access_rules.as_ref().map(|rules| rules.version),
            record.access_rules_issue,
        ),
        DesiredKind::Config => (
            record.config.as_ref().map(|config| config.version),
            record.config_issue,
        ),
    };
    version.map(|version| Desired { version, issue })
}

/// Builds the task that sends the deployment's desired document of `kind`, if it has one.
fn desired_request(record: &DeploymentRecord, kind: DesiredKind) -> Option<ActionRequest> {
    match kind {
        DesiredKind::AccessRules => {
            record
                .access_rules
                .as_ref()
                .map(|rules| ActionRequest::ApplyAccessRules {
                    version: rules.version,
                    rules: rules.rules.clone(),
                })
        }
        DesiredKind::Config => record
            .config
            .as_ref()
            .map(|config| ActionRequest::ApplyConfig {
                version: config.version,
                content: config.content.clone(),
            }),
    }
}

impl ControlPlane {
    /// Makes the document `action` carries, issued to all nodes in `issue`, the deployment's
    /// desired one of its kind, unless a higher version already is. Other actions change
    /// nothing.
    pub(super) async fn record_desired(
        &self,
        deployment: &DeploymentId,
        action: &TaskAction,
        issue: IssueWindow,
    ) -> Result<(), ServiceError> {
        let (kind, issued) = match action {
            TaskAction::ApplyAccessRules(rules) => (DesiredKind::AccessRules, rules.version),
            TaskAction::ApplyConfig(config) => (DesiredKind::Config, config.version),
            _ => return Ok(()),
        };
        let recorded = self
            .inner
            .store
            .update::<DeploymentRecord>(deployment.as_str(), |record| {
                let current = desired_of(record, kind).map(|desired| desired.version);
                if !supersedes(current, issued) {
                    return false;
                }
                match action {
                    TaskAction::ApplyAccessRules(rules) => {
                        record.access_rules = Some(rules.clone());
                        record.access_rules_issue = Some(issue);
                    }
                    TaskAction::ApplyConfig(config) => {
                        record.config = Some(config.clone());
                        record.config_issue = Some(issue);
                    }
                    _ => return false,
                }
                true
            })
            .await?;
        let desired = recorded
            .and_then(|record| desired_of(&record, kind))
            .map(|desired| desired.version);
        tracing::info!(deployment_id = %deployment, kind = kind.as_str(), issued_version = issued, desired_version = ?desired, "recorded the desired document");
        self.inner.desired.forget(deployment);
        Ok(())
    }

    /// Issues each desired document to a node whose heartbeat reports an older version of it:
    /// once the first copy is due, then at most every [`DESIRED_RESEND_INTERVAL`].
    pub(super) async fn resend_desired_if_behind(
        &self,
        node: &NodeRecord,
    ) -> Result<(), ServiceError> {
        let Some(record) = self.desired(&node.deployment).await? else {
            return Ok(());
        };
        for kind in DesiredKind::ALL {
            let Some(desired) = desired_of(&record, kind) else {
                continue;
            };
            let now = self.now();
            if !kind.resend_due_for(node, desired, now, DESIRED_RESEND_INTERVAL)
                || !self.claim_resend(kind, node, desired, now).await?
            {
                continue;
            }
            let Some(request) = desired_request(&record, kind) else {
                continue;
            };

            tracing::info!(deployment_id = %node.deployment, node_id = %node.node, kind = kind.as_str(), node_version = ?kind.node_version(node), desired_version = desired.version, "node is behind the desired document; sending it again");
            self.issue(
                node.deployment.clone(),
                Target::Node(node.node.clone()),
                request,
                None,
            )
            .await?;
        }
        Ok(())
    }

    /// Records in the node's record that the desired version of `kind` goes to it now, with
    /// compare-and-set, so that of several replicas only one sends it. Returns whether this
    /// replica does.
    async fn claim_resend(
        &self,
        kind: DesiredKind,
        node: &NodeRecord,
        desired: Desired,
        now: UnixMillis,
    ) -> Result<bool, ServiceError> {
        let mut claimed = false;
        let key = warden_bus::subject::node_key(&node.deployment, &node.node);
        self.inner
            .store
            .update::<NodeRecord>(&key, |record| {
                claimed = kind.resend_due_for(record, desired, now, DESIRED_RESEND_INTERVAL);
                if claimed {
                    kind.record_resent(record, desired.version, now);
                }
                claimed
            })
            .await?;
        Ok(claimed)
    }

    /// Returns the deployment's record, which contains its desired documents, read at most every
    /// [`DESIRED_CACHE`].
    async fn desired(
        &self,
        deployment: &DeploymentId,
    ) -> Result<Option<Arc<DeploymentRecord>>, ServiceError> {
        let now = self.now();
        let cache = &self.inner.desired;
        if let Some(desired) = cache.fresh(deployment, now, DESIRED_CACHE) {
            return Ok(desired);
        }
        let desired = self
            .inner
            .store
            .get::<DeploymentRecord>(deployment.as_str())
            .await?
            .map(|(record, _)| Arc::new(record));
        cache.put(deployment, now, desired.clone());
        Ok(desired)
    }
}
