//! The life of a task as the control plane records it.
//!
//! ```text
//! pending ──► delivered ──► succeeded | failed | rejected
//!    │            │
//!    └────────────┴──► expired   (no outcome by expiry + grace)
//! ```
//!
//! Outcomes are final, with two exceptions that let the truth from the node win: an outcome
//! that arrives after the control plane marked the task expired replaces `expired`, and a
//! rejection whose reason is a signature or decoding failure can be forged by whoever can
//! publish on the node's task subject, so a later real outcome replaces it. Reports that do
//! not change the status, such as a replayed copy being rejected, are kept in the history.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use warden_bus::messages::{truncate, REASON_BYTES_MAX};
use warden_bus::{DeploymentId, NodeId, RejectCode, ReportStatus, TaskId, TaskReport, UnixMillis};

/// Maximum number of history entries kept per task; older entries after the first are dropped.
pub const TASK_HISTORY_MAX: usize = 32;

/// Status of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Recorded, waiting for the deployment's approval signature; not sent to the node yet.
    AwaitingApproval,
    /// Recorded and left for the node; no word from the node yet.
    Pending,
    /// The node accepted the task and is executing it.
    Delivered,
    /// The node executed the task and its effect is in place.
    Succeeded,
    /// The node accepted the task but could not make its effect.
    Failed,
    /// The node rejected the task without executing it.
    Rejected,
    /// The task expired before the node reported an outcome.
    Expired,
}

impl TaskStatus {
    /// Whether the status is an outcome.
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            Self::AwaitingApproval | Self::Pending | Self::Delivered
        )
    }

    /// The status as written in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AwaitingApproval => "awaiting_approval",
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Rejected => "rejected",
            Self::Expired => "expired",
        }
    }
}

impl std::str::FromStr for TaskStatus {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        [Self::AwaitingApproval, Self::Pending, Self::Delivered, Self::Succeeded, Self::Failed, Self::Rejected, Self::Expired]
            .into_iter()
            .find(|status| status.as_str() == text)
            .ok_or_else(|| format!("unknown task status {text:?}; use awaiting_approval, pending, delivered, succeeded, failed, rejected or expired"))
    }
}

/// One event in a task's life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// When the control plane recorded it.
    pub at: UnixMillis,
    /// Status reported or reached.
    pub status: TaskStatus,
    /// Rejection code, if a rejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Reason or detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Whether this entry changed the task's status.
    pub applied: bool,
}

/// The control plane's record of one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Task id.
    pub id: TaskId,
    /// Target deployment.
    pub deployment: DeploymentId,
    /// Target node.
    pub node: NodeId,
    /// Action kind.
    pub kind: String,
    /// Short facts about the parameters for listings, such as the configuration version.
    pub summary: BTreeMap<String, String>,
    /// When it was issued.
    pub issued_at: UnixMillis,
    /// When it expires.
    pub expires_at: UnixMillis,
    /// Current status.
    pub status: TaskStatus,
    /// Rejection code, when rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reject_code: Option<String>,
    /// Failure or rejection reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Output of a successful execution.
    #[serde(default)]
    pub output: BTreeMap<String, String>,
    /// Events in order.
    pub history: Vec<HistoryEntry>,
    /// The signed task, base64, kept so any replica can publish it.
    pub signed_task: String,
    /// Stream sequence once the task is stored in the task stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_sequence: Option<u64>,
}

/// Maximum number of output entries kept from a report.
pub const OUTPUT_ENTRIES_MAX: usize = 64;
/// Maximum size of an output key, in bytes.
pub const OUTPUT_KEY_BYTES_MAX: usize = 64;
/// Maximum size of an output value, in bytes.
pub const OUTPUT_VALUE_BYTES_MAX: usize = 1024;

/// Keeps the first entries of a node's output, each cut to size, so a record stays well under
/// the store's size cap whatever a node sends.
fn bounded_output(output: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    output
        .iter()
        .take(OUTPUT_ENTRIES_MAX)
        .map(|(key, value)| {
            (
                truncate(key, OUTPUT_KEY_BYTES_MAX),
                truncate(value, OUTPUT_VALUE_BYTES_MAX),
            )
        })
        .collect()
}

/// Rejection codes that only say the message did not verify; anyone able to publish on the
/// node's task subject can cause them for any task id.
fn is_unverified_rejection(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(code) if code == RejectCode::Malformed.as_str()
            || code == RejectCode::UnknownKey.as_str()
            || code == RejectCode::BadSignature.as_str()
    )
}

impl TaskRecord {
    /// Creates a pending record.
    #[allow(clippy::too_many_arguments)]
    pub fn pending(
        id: TaskId,
        deployment: DeploymentId,
        node: NodeId,
        kind: String,
        summary: BTreeMap<String, String>,
        issued_at: UnixMillis,
        expires_at: UnixMillis,
        signed_task: String,
    ) -> Self {
        Self {
            history: vec![HistoryEntry {
                at: issued_at,
                status: TaskStatus::Pending,
                code: None,
                detail: None,
                applied: true,
            }],
            id,
            deployment,
            node,
            kind,
            summary,
            issued_at,
            expires_at,
            status: TaskStatus::Pending,
            reject_code: None,
            reason: None,
            output: BTreeMap::new(),
            signed_task,
            published_sequence: None,
        }
    }

    /// Applies a node's report. Returns whether the record changed.
    pub fn apply_report(&mut self, report: &TaskReport, received_at: UnixMillis) -> bool {
        let (status, code, detail) = match &report.status {
            ReportStatus::Delivered => (TaskStatus::Delivered, None, None),
            ReportStatus::Succeeded { .. } => (TaskStatus::Succeeded, None, None),
            ReportStatus::Failed { reason } => (
                TaskStatus::Failed,
                None,
                Some(truncate(reason, REASON_BYTES_MAX)),
            ),
            ReportStatus::Rejected { code, detail } => (
                TaskStatus::Rejected,
                Some(code.as_str().to_owned()),
                Some(truncate(detail, REASON_BYTES_MAX)),
            ),
        };

        // A report identical to the last history entry is a duplicate delivery of the report.
        if let Some(last) = self.history.last() {
            if last.status == status && last.code == code && last.detail == detail {
                return false;
            }
        }

        let forged_now = self.status == TaskStatus::Rejected
            && is_unverified_rejection(self.reject_code.as_deref());
        let open = !self.status.is_terminal() || self.status == TaskStatus::Expired || forged_now;
        let applies = match status {
            TaskStatus::Delivered => self.status == TaskStatus::Pending || forged_now,
            // A task not yet sent cannot have an outcome from its node.
            _ if self.status == TaskStatus::AwaitingApproval => false,
            // A rejection that may be forged only lands on a task with no outcome yet.
            TaskStatus::Rejected if is_unverified_rejection(code.as_deref()) => {
                !self.status.is_terminal()
            }
            _ => open,
        };
        // A delivered report after an outcome only means the reports arrived out of order.
        if !applies && status == TaskStatus::Delivered {
            return false;
        }

        self.push_history(HistoryEntry {
            at: received_at,
            status,
            code: code.clone(),
            detail: detail.clone(),
            applied: applies,
        });
        if applies {
            self.status = status;
            self.reject_code = code;
            self.reason = detail;
            if let ReportStatus::Succeeded { output } = &report.status {
                self.output = bounded_output(output);
            }
        }
        true
    }

    /// Marks the task expired if it has no outcome and `now` is past its expiry plus `grace`.
    /// Returns whether the record changed.
    pub fn expire(&mut self, now: UnixMillis, grace: std::time::Duration) -> bool {
        if self.status.is_terminal() || now <= self.expires_at.saturating_add(grace) {
            return false;
        }
        self.status = TaskStatus::Expired;
        self.reason = Some(format!(
            "no outcome from node {} by {} (expiry plus {}s grace)",
            self.node,
            self.expires_at.saturating_add(grace),
            grace.as_secs()
        ));
        self.push_history(HistoryEntry {
            at: now,
            status: TaskStatus::Expired,
            code: None,
            detail: self.reason.clone(),
            applied: true,
        });
        true
    }

    fn push_history(&mut self, entry: HistoryEntry) {
        if self.history.len() >= TASK_HISTORY_MAX {
            // Keep the first entry (issue time) and drop the oldest after it.
            self.history.remove(1);
        }
        self.history.push(entry);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn record() -> TaskRecord {
        TaskRecord::pending(
            TaskId::from_random([1; 16]),
            DeploymentId::new("prod").unwrap(),
            NodeId::new("n1").unwrap(),
            "collect_diagnostics".into(),
            BTreeMap::new(),
            UnixMillis(1_000),
            UnixMillis(61_000),
            String::new(),
        )
    }

    fn report(status: ReportStatus) -> TaskReport {
        TaskReport {
            task_id: TaskId::from_random([1; 16]),
            deployment: DeploymentId::new("prod").unwrap(),
            node: NodeId::new("n1").unwrap(),
            at: UnixMillis(2_000),
            status,
        }
    }

    fn succeeded() -> ReportStatus {
        ReportStatus::Succeeded {
            output: BTreeMap::from([("k".into(), "v".into())]),
        }
    }

    #[test]
    fn normal_life() {
        let mut task = record();
        assert!(task.apply_report(&report(ReportStatus::Delivered), UnixMillis(2_000)));
        assert_eq!(task.status, TaskStatus::Delivered);
        assert!(task.apply_report(&report(succeeded()), UnixMillis(3_000)));
        assert_eq!(task.status, TaskStatus::Succeeded);
        assert_eq!(task.output.get("k").map(String::as_str), Some("v"));
        assert_eq!(task.history.len(), 3);
    }

    #[test]
    fn duplicate_report_changes_nothing() {
        let mut task = record();
        task.apply_report(&report(succeeded()), UnixMillis(2_000));
        assert!(!task.apply_report(&report(succeeded()), UnixMillis(2_500)));
        assert_eq!(task.history.len(), 2);
    }

    #[test]
    fn late_delivered_does_not_regress() {
        let mut task = record();
        task.apply_report(&report(succeeded()), UnixMillis(2_000));
        assert!(!task.apply_report(&report(ReportStatus::Delivered), UnixMillis(2_500)));
        assert_eq!(task.status, TaskStatus::Succeeded);
    }

    #[test]
    fn replay_rejection_kept_in_history_only() {
        let mut task = record();
        task.apply_report(&report(succeeded()), UnixMillis(2_000));
        assert!(task.apply_report(
            &report(ReportStatus::rejected(RejectCode::Replayed, "copy")),
            UnixMillis(3_000)
        ));
        assert_eq!(task.status, TaskStatus::Succeeded);
        let last = task.history.last().unwrap();
        assert_eq!(last.code.as_deref(), Some("replayed"));
        assert!(!last.applied);
    }

    #[test]
    fn forged_rejection_replaced_by_real_outcome() {
        let mut task = record();
        task.apply_report(
            &report(ReportStatus::rejected(RejectCode::BadSignature, "forged")),
            UnixMillis(2_000),
        );
        assert_eq!(task.status, TaskStatus::Rejected);
        task.apply_report(&report(succeeded()), UnixMillis(3_000));
        assert_eq!(task.status, TaskStatus::Succeeded);
        assert_eq!(task.reject_code, None);
    }

    #[test]
    fn verified_rejection_is_final() {
        let mut task = record();
        task.apply_report(
            &report(ReportStatus::rejected(RejectCode::Expired, "late")),
            UnixMillis(2_000),
        );
        task.apply_report(&report(succeeded()), UnixMillis(3_000));
        assert_eq!(task.status, TaskStatus::Rejected);
        assert_eq!(task.reject_code.as_deref(), Some("expired"));
    }

    #[test]
    fn expiry_waits_for_grace() {
        let mut task = record();
        let grace = Duration::from_secs(10);
        assert!(!task.expire(UnixMillis(71_000), grace));
        assert!(task.expire(UnixMillis(71_001), grace));
        assert_eq!(task.status, TaskStatus::Expired);
        assert!(
            !task.expire(UnixMillis(99_000), grace),
            "expiring twice changes nothing"
        );
    }

    #[test]
    fn outcome_after_expiry_wins() {
        let mut task = record();
        task.expire(UnixMillis(999_999), Duration::ZERO);
        task.apply_report(&report(succeeded()), UnixMillis(1_000_000));
        assert_eq!(task.status, TaskStatus::Succeeded);
    }

    #[test]
    fn history_is_bounded() {
        let mut task = record();
        task.apply_report(&report(succeeded()), UnixMillis(2_000));
        for i in 0..100u64 {
            task.apply_report(
                &report(ReportStatus::rejected(
                    RejectCode::Replayed,
                    format!("copy {i}"),
                )),
                UnixMillis(3_000 + i),
            );
        }
        assert_eq!(task.history.len(), TASK_HISTORY_MAX);
        assert_eq!(task.history[0].status, TaskStatus::Pending);
    }

    #[test]
    fn huge_report_is_cut_to_size() {
        let mut task = record();
        let output = (0..1000)
            .map(|i| (format!("key-{i:04}{}", "k".repeat(100)), "v".repeat(10_000)))
            .collect();
        task.apply_report(
            &report(ReportStatus::Succeeded { output }),
            UnixMillis(2_000),
        );
        assert_eq!(task.output.len(), OUTPUT_ENTRIES_MAX);
        assert!(task
            .output
            .iter()
            .all(|(k, v)| k.len() <= OUTPUT_KEY_BYTES_MAX && v.len() <= OUTPUT_VALUE_BYTES_MAX));
        for i in 0..100u64 {
            let detail = format!("{i}{}", "\u{1}".repeat(200_000));
            task.apply_report(
                &report(ReportStatus::Rejected {
                    code: RejectCode::Replayed,
                    detail,
                }),
                UnixMillis(3_000 + i),
            );
        }
        assert!(serde_json::to_vec(&task).unwrap().len() < crate::store::RECORD_BYTES_MAX);
    }

    #[test]
    fn status_parses_from_api_names() {
        assert_eq!("expired".parse::<TaskStatus>(), Ok(TaskStatus::Expired));
        assert!("done"
            .parse::<TaskStatus>()
            .unwrap_err()
            .contains("pending, delivered"));
    }
}
