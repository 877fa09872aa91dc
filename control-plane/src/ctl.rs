//! The `wardenctl` client: HTTP calls to the operator API and their rendering as tables or
//! JSON.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::views::{DeploymentView, NodeView, Problem, TaskView, TrustView};

pub mod offline;

/// Timeout of one API request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a `wardenctl` command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CtlError {
    /// The API could not be reached.
    #[error("failed to reach the control plane at {url}: {reason}; check --api and that the control plane is running")]
    Connect {
        /// The API URL.
        url: String,
        /// The client's message.
        reason: String,
    },
    /// The API returned a problem document.
    #[error("{}", render_problem(.0))]
    Problem(Box<Problem>),
    /// The API returned something that is not the expected JSON.
    #[error("unexpected response from {url} (HTTP {status}): {reason}")]
    Response {
        /// The request URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// Description of the problem.
        reason: String,
    },
    /// A local file or value is wrong.
    #[error("{0}")]
    Local(String),
}

fn render_problem(problem: &Problem) -> String {
    let mut text = format!(
        "{} (HTTP {}): {}",
        problem.title, problem.status, problem.detail
    );
    if let Some(field) = &problem.field {
        text.push_str(&format!("\n  field: {field}"));
    }
    if let Some(fix) = &problem.fix {
        text.push_str(&format!("\n  fix: {fix}"));
    }
    text
}

/// A client of the operator API.
pub struct Client {
    base: String,
    api_key: Option<String>,
    http: reqwest::blocking::Client,
}

impl Client {
    /// Creates a client for the API at `base` (such as `http://127.0.0.1:8080`).
    pub fn new(base: &str, api_key: Option<String>) -> Result<Self, CtlError> {
        let scheme_ok = base
            .split_once("://")
            .is_some_and(|(scheme, rest)| matches!(scheme, "http" | "https") && !rest.is_empty());
        if !scheme_ok {
            return Err(CtlError::Local(format!(
                "API address {base:?} is not an http:// or https:// URL; pass one such as http://127.0.0.1:8080 with --api or WARDEN_API"
            )));
        }
        let http = reqwest::blocking::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|error| {
                CtlError::Local(format!("failed to create the HTTP client: {error}"))
            })?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            api_key,
            http,
        })
    }

    /// Sends a GET and decodes the JSON response.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CtlError> {
        self.send(self.http.get(self.url(path)), path)
    }

    /// Sends a POST with a JSON body and decodes the JSON response.
    pub fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, CtlError> {
        self.send(self.http.post(self.url(path)).json(body), path)
    }

    /// Sends a PUT with a JSON body and decodes the JSON response.
    pub fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, CtlError> {
        self.send(self.http.put(self.url(path)).json(body), path)
    }

    /// Sends a PUT whose body is the file at `body`, streamed, with one extra header, and
    /// decodes the JSON response. Only connecting has a timeout, because uploading a large
    /// artifact may take longer than any fixed limit.
    pub fn put_file<T: DeserializeOwned>(
        &self,
        path: &str,
        header: (&str, &str),
        body: &std::path::Path,
    ) -> Result<T, CtlError> {
        let file = std::fs::File::open(body).map_err(|error| {
            CtlError::Local(format!("failed to read {}: {error}", body.display()))
        })?;
        let length = file
            .metadata()
            .map_err(|error| {
                CtlError::Local(format!("failed to read {}: {error}", body.display()))
            })?
            .len();
        let http = reqwest::blocking::Client::builder()
            .connect_timeout(REQUEST_TIMEOUT)
            .timeout(None)
            .build()
            .map_err(|error| {
                CtlError::Local(format!("failed to create the HTTP client: {error}"))
            })?;
        let request = http
            .put(self.url(path))
            .header(header.0, header.1)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(reqwest::blocking::Body::sized(file, length));
        self.send(request, path)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn send<T: DeserializeOwned>(
        &self,
        mut request: reqwest::blocking::RequestBuilder,
        path: &str,
    ) -> Result<T, CtlError> {
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let url = self.url(path);
        let response = request.send().map_err(|error| CtlError::Connect {
            url: self.base.clone(),
            reason: error.to_string(),
        })?;
        let status = response.status();
        let body = response.bytes().map_err(|error| CtlError::Response {
            url: url.clone(),
            status: status.as_u16(),
            reason: error.to_string(),
        })?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<Problem>(&body) {
                Ok(problem) => CtlError::Problem(Box::new(problem)),
                Err(_) => CtlError::Response {
                    url,
                    status: status.as_u16(),
                    reason: String::from_utf8_lossy(&body).chars().take(500).collect(),
                },
            });
        }
        serde_json::from_slice(&body).map_err(|error| CtlError::Response {
            url,
            status: status.as_u16(),
            reason: error.to_string(),
        })
    }
}

/// Renders rows as a table with a header and columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|title| title.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count().min(CELL_CHARS_MAX));
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = String>| {
        let padded: Vec<String> = cells
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(padded.join("  ").trim_end());
        out.push('\n');
    };
    line(&mut header.iter().map(|title| (*title).to_owned()));
    for row in rows {
        line(&mut row.iter().map(|cell| cut_cell(cell)));
    }
    out
}

/// Maximum characters of a table cell; longer cells end in an ellipsis. `-o json` shows all.
pub const CELL_CHARS_MAX: usize = 80;

fn cut_cell(cell: &str) -> String {
    if cell.chars().count() <= CELL_CHARS_MAX {
        return cell.to_owned();
    }
    let mut cut: String = cell.chars().take(CELL_CHARS_MAX - 1).collect();
    cut.push('…');
    cut
}

/// Table of deployments.
pub fn deployments_table(deployments: &[DeploymentView]) -> String {
    let rows: Vec<Vec<String>> = deployments
        .iter()
        .map(|d| {
            let version = |version: Option<u64>| version.map_or("-".to_owned(), |v| v.to_string());
            vec![
                d.id.clone(),
                d.created_at.clone(),
                version(d.desired_config_version),
                version(d.desired_access_version),
                d.description.clone(),
            ]
        })
        .collect();
    table(
        &["DEPLOYMENT", "CREATED", "CONFIG", "RULES", "DESCRIPTION"],
        &rows,
    )
}

/// Formats the CA state of a deployment as lines and a table of its CAs.
pub fn ca_table(view: &crate::service::CaView) -> String {
    let mut out = format!(
        "deployment {}: phase {}, signer CA {}, bundle version {}, changed {}\n",
        view.deployment, view.phase, view.signer, view.bundle_version, view.changed_at
    );
    let rows: Vec<Vec<String>> = view
        .authorities
        .iter()
        .map(|a| {
            vec![
                a.generation.to_string(),
                a.fingerprint.clone(),
                a.created_at.clone(),
                a.not_after.clone(),
            ]
        })
        .collect();
    out.push_str(&table(&["CA", "SHA256", "CREATED", "EXPIRES"], &rows));
    if view.waiting.is_empty() {
        out.push_str("every live node holds the current bundle\n");
    } else {
        for node in &view.waiting {
            out.push_str(&format!(
                "waiting for node {} (bundle version {})\n",
                node.node, node.bundle_version
            ));
        }
    }
    out
}

/// Table of alerts.
pub fn alerts_table(alerts: &[crate::service::AlertView]) -> String {
    let rows: Vec<Vec<String>> = alerts
        .iter()
        .map(|a| {
            vec![
                a.deployment.clone(),
                a.node.clone(),
                a.kind.clone(),
                a.raised_at.clone(),
                a.resolved_at.clone().unwrap_or_else(|| "-".into()),
                a.detail.clone(),
            ]
        })
        .collect();
    table(
        &[
            "DEPLOYMENT",
            "NODE",
            "ALERT",
            "RAISED",
            "RESOLVED",
            "DETAIL",
        ],
        &rows,
    )
}

/// Table of published releases.
pub fn releases_table(releases: &[crate::views::ReleaseView]) -> String {
    let rows: Vec<Vec<String>> = releases
        .iter()
        .map(|r| {
            vec![
                r.component.clone(),
                r.version.clone(),
                r.target.clone(),
                r.release_counter.to_string(),
                r.size.to_string(),
                r.sha256.clone(),
                r.signed_by.clone(),
            ]
        })
        .collect();
    table(
        &[
            "COMPONENT",
            "VERSION",
            "TARGET",
            "COUNTER",
            "SIZE",
            "SHA256",
            "SIGNED BY",
        ],
        &rows,
    )
}

/// Table of nodes.
pub fn nodes_table(nodes: &[NodeView]) -> String {
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            vec![
                n.node.clone(),
                n.health.clone(),
                n.last_heartbeat_at
                    .clone()
                    .unwrap_or_else(|| "never".into()),
                n.config_version.to_string(),
                n.warden_version.clone().unwrap_or_else(|| "-".into()),
                n.node_key_id
                    .clone()
                    .unwrap_or_else(|| "not enrolled".into()),
                if n.components.is_empty() {
                    "-".into()
                } else {
                    n.components
                        .iter()
                        .map(|c| format!("{}={}", c.component, c.phase))
                        .collect::<Vec<_>>()
                        .join(",")
                },
                n.certificate
                    .as_ref()
                    .map_or_else(|| "-".into(), |c| c.not_after.clone()),
                n.access_version
                    .map_or_else(|| "-".into(), |version| version.to_string()),
                if n.alerts.is_empty() {
                    "-".into()
                } else {
                    n.alerts.join(",")
                },
            ]
        })
        .collect();
    table(
        &[
            "NODE",
            "HEALTH",
            "LAST HEARTBEAT",
            "CONFIG",
            "WARDEN",
            "NODE KEY",
            "COMPONENTS",
            "CERT EXPIRES",
            "RULES",
            "ALERTS",
        ],
        &rows,
    )
}

/// Table of tasks.
pub fn tasks_table(tasks: &[TaskView]) -> String {
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.node.clone(),
                t.kind.clone(),
                t.status.clone(),
                t.reject_code
                    .clone()
                    .or_else(|| t.reason.clone())
                    .unwrap_or_default(),
                t.issued_at.clone(),
            ]
        })
        .collect();
    table(
        &["TASK", "NODE", "KIND", "STATUS", "REASON", "ISSUED"],
        &rows,
    )
}

/// Detailed view of one task.
pub fn task_detail(task: &TaskView) -> String {
    let mut out = String::new();
    let mut field = |name: &str, value: &str| out.push_str(&format!("{name:<12} {value}\n"));
    field("task", &task.id);
    field("deployment", &task.deployment);
    field("node", &task.node);
    field("kind", &task.kind);
    field("status", &task.status);
    if let Some(code) = &task.reject_code {
        field("reject code", code);
    }
    if let Some(reason) = &task.reason {
        field("reason", reason);
    }
    field("issued", &task.issued_at);
    field("expires", &task.expires_at);
    for (key, value) in &task.summary {
        field(key, value);
    }
    if !task.output.is_empty() {
        out.push_str("output:\n");
        for (key, value) in &task.output {
            out.push_str(&format!("  {key:<24} {value}\n"));
        }
    }
    out.push_str("history:\n");
    for entry in &task.history {
        let mut line = format!("  {}  {}", entry.at, entry.status);
        if let Some(code) = &entry.code {
            line.push_str(&format!(" ({code})"));
        }
        if !entry.applied {
            line.push_str(" [not applied]");
        }
        if let Some(detail) = &entry.detail {
            line.push_str(&format!(": {detail}"));
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Detailed view of a trust document.
pub fn trust_detail(trust: &TrustView) -> String {
    let mut out = format!(
        "trust document version {}\nexpires     {}\nroot key    {}\n",
        trust.version, trust.expires_at, trust.root_key_id
    );
    for (role, grants) in [("task", &trust.task_keys), ("release", &trust.release_keys)] {
        for grant in grants {
            out.push_str(&format!(
                "{role:<8} key {}  valid {} to {}\n",
                grant.key_id, grant.not_before, grant.not_after
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_pads_columns() {
        let text = table(
            &["A", "BB"],
            &[
                vec!["long-value".into(), "x".into()],
                vec!["s".into(), "yyy".into()],
            ],
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "A           BB");
        assert_eq!(lines[1], "long-value  x");
        assert_eq!(lines[2], "s           yyy");
    }

    #[test]
    fn deployments_show_desired_versions() {
        let view = |id: &str, config: Option<u64>, rules: Option<u64>| DeploymentView {
            id: id.into(),
            description: "d".into(),
            created_at: "2026-12-05T00:00:00Z".into(),
            approval_key: None,
            desired_config_version: config,
            desired_access_version: rules,
        };
        let text = deployments_table(&[view("prod", Some(7), None), view("test", None, Some(3))]);
        let rows: Vec<Vec<&str>> = text
            .lines()
            .map(|line| line.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows[0],
            ["DEPLOYMENT", "CREATED", "CONFIG", "RULES", "DESCRIPTION"]
        );
        assert_eq!(rows[1], ["prod", "2026-12-05T00:00:00Z", "7", "-", "d"]);
        assert_eq!(rows[2], ["test", "2026-12-05T00:00:00Z", "-", "3", "d"]);
    }

    #[test]
    fn long_cells_are_cut() {
        let long = "x".repeat(70_000);
        let text = table(&["A"], &[vec![long]]);
        let row = text.lines().nth(1).unwrap();
        assert_eq!(row.chars().count(), CELL_CHARS_MAX);
        assert!(row.ends_with('…'));
    }

    #[test]
    fn problem_rendering_names_field_and_fix() {
        let text = render_problem(&Problem {
            problem_type: "urn:warden:problem:invalid-field".into(),
            title: "Invalid request field".into(),
            status: 400,
            detail: "field version is invalid".into(),
            field: Some("version".into()),
            fix: Some("use 1 or higher".into()),
        });
        assert!(text.contains("HTTP 400"));
        assert!(text.contains("field: version"));
        assert!(text.contains("fix: use 1 or higher"));
    }

    #[test]
    fn api_address_needs_http_scheme() {
        assert!(Client::new("http://127.0.0.1:8080", None).is_ok());
        assert!(Client::new("https://warden.example.com/", None).is_ok());
        for bad in ["ftp://x", "127.0.0.1:8080", "http://", ""] {
            let error = Client::new(bad, None).err().unwrap().to_string();
            assert!(error.contains("http:// or https://"), "{bad:?}: {error}");
            assert!(error.contains("--api"), "{bad:?}: {error}");
        }
    }
}
