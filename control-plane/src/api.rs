//! The operator HTTP API (actix-web). Every error is an RFC 7807 problem document that names the
//! field at fault and the fix. Every route except `/v1/health` needs the admin API key as a
//! bearer token.

use actix_web::dev::Payload;
use actix_web::error::InternalError;
use actix_web::http::StatusCode;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse, ResponseError, Route};
use base64::Engine;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use warden_bus::release::SignedManifest;
use warden_bus::trust::SignedDocument;
use warden_bus::{DeploymentId, IdError, NodeId, TaskId};

use crate::core::lifecycle::TaskStatus;
use crate::service::{CaStep, ControlPlane, NodeOptions, ServiceError, Target, TaskFilter};
use crate::views::{
    AddNode, AddedNode, Approve, CreateDeployment, DeploymentView, IssueTasks, IssuedTasks,
    NodeView, Problem, PublishTrust, Reenroll, ReleaseView, TaskView, TrustView, MANIFEST_HEADER,
};

/// Maximum size of a request body: a 128 KiB configuration plus JSON escaping.
pub const REQUEST_BYTES_MAX: usize = 512 * 1024;

/// Maximum number of tasks one listing returns.
pub const TASK_LIST_LIMIT_MAX: usize = 1000;

/// Shared state of the API handlers.
#[derive(Clone)]
pub struct ApiState {
    /// The control plane.
    pub control_plane: ControlPlane,
    /// SHA-256 of the admin API key.
    pub admin_key_hash: [u8; 32],
}

/// An API error rendered as `application/problem+json`.
#[derive(Debug)]
pub struct ApiError(pub Box<Problem>);

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.0.title, self.0.detail)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code())
            .content_type("application/problem+json")
            .json(&*self.0)
    }
}

fn problem(
    status: StatusCode,
    slug: &str,
    title: &str,
    detail: String,
    field: Option<&str>,
    fix: Option<&str>,
) -> ApiError {
    ApiError(Box::new(Problem {
        problem_type: format!("urn:warden:problem:{slug}"),
        title: title.into(),
        status: status.as_u16(),
        detail,
        field: field.map(str::to_owned),
        fix: fix.map(str::to_owned),
    }))
}

fn invalid_field(field: &str, detail: String, fix: &str) -> ApiError {
    problem(
        StatusCode::BAD_REQUEST,
        "invalid-field",
        "Invalid request field",
        detail,
        Some(field),
        Some(fix),
    )
}

fn invalid_id(field: &str, error: &IdError) -> ApiError {
    invalid_field(
        field,
        error.to_string(),
        "use 1 to 63 characters of a-z, 0-9 and -, starting with a letter or digit",
    )
}

impl From<ServiceError> for ApiError {
    fn from(error: ServiceError) -> Self {
        match error {
            ServiceError::NotFound { what, fix } => problem(
                StatusCode::NOT_FOUND,
                "not-found",
                "Not found",
                format!("{what} not found"),
                None,
                Some(&fix),
            ),
            ServiceError::Conflict { what, fix } => problem(
                StatusCode::CONFLICT,
                "conflict",
                "Conflict",
                what,
                None,
                Some(&fix),
            ),
            ServiceError::Invalid(field_error) => invalid_field(
                field_error.field,
                field_error.to_string(),
                "correct the field and send the request again",
            ),
            ServiceError::Damaged(reason) => {
                tracing::error!(error = %reason, "request failed: a stored record is damaged");
                problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "damaged-record",
                    "Stored record damaged",
                    reason,
                    None,
                    Some("something other than the control plane wrote this record; restore the broker's JetStream data from a backup and find out who could write it"),
                )
            }
            ServiceError::Cache(reason) => {
                tracing::error!(error = %reason, "request failed: the artifact cache failed");
                problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "artifact-cache",
                    "Artifact cache failed",
                    reason,
                    None,
                    Some("check the replica's --artifact-cache-dir: free space, permissions and anything else that writes there"),
                )
            }
            ServiceError::Unavailable(reason) => {
                tracing::error!(error = %reason, "request failed: broker unavailable");
                problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "Message broker unavailable",
                    reason,
                    None,
                    Some("retry shortly; if it persists, check that nats-server is running"),
                )
            }
        }
    }
}

/// Proof that the request carried the admin API key.
pub struct Admin;

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(authorize(request))
    }
}

fn authorize(request: &HttpRequest) -> Result<Admin, ApiError> {
    let unauthorized = |detail: &str| {
        problem(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            detail.into(),
            Some("Authorization"),
            Some("send `Authorization: Bearer <admin API key>`; the first control plane wrote the key to the file given with --admin-key-out, or printed it once at its first start"),
        )
    };
    let Some(state) = request.app_data::<web::Data<ApiState>>() else {
        return Err(unauthorized("the API is not configured"));
    };
    let header = request
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("the Authorization header is missing"))?;
    let token = header
        .to_str()
        .ok()
        .and_then(|value| {
            // The scheme name is case-insensitive (RFC 9110, section 11.1).
            let (scheme, token) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(token)
        })
        .ok_or_else(|| unauthorized("the Authorization header is not a bearer token"))?;
    let presented: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
    if bool::from(presented.ct_eq(&state.admin_key_hash)) {
        Ok(Admin)
    } else {
        tracing::warn!(peer = ?request.peer_addr(), "rejected request with a wrong API key");
        Err(unauthorized("the API key is not valid"))
    }
}

/// Registers the routes and the JSON and query error handlers.
pub fn configure(config: &mut web::ServiceConfig) {
    let json = web::JsonConfig::default()
        .limit(REQUEST_BYTES_MAX)
        .content_type_required(false)
        .error_handler(|error, _| {
            let message = error.to_string();
            let field = named_field(&message);
            let api_error = invalid_field(
                field.as_deref().unwrap_or("body"),
                format!("invalid JSON body: {message}"),
                "send a JSON body with the documented fields",
            );
            InternalError::from_response(error, api_error.error_response()).into()
        });
    let query = web::QueryConfig::default().error_handler(|error, _| {
        let message = error.to_string();
        let api_error = invalid_field(
            named_field(&message).as_deref().unwrap_or("query"),
            format!("invalid query string: {message}"),
            "check the query parameters",
        );
        InternalError::from_response(error, api_error.error_response()).into()
    });
    config.app_data(json).app_data(query);
    let routes: Vec<(&str, Vec<(&str, Route)>)> = vec![
        ("/v1/health", vec![("GET", web::get().to(health))]),
        (
            "/v1/trust",
            vec![
                ("GET", web::get().to(trust)),
                ("PUT", web::put().to(publish_trust)),
            ],
        ),
        (
            "/v1/deployments",
            vec![
                ("GET", web::get().to(list_deployments)),
                ("POST", web::post().to(create_deployment)),
            ],
        ),
        (
            "/v1/deployments/{deployment}/nodes",
            vec![
                ("GET", web::get().to(list_nodes)),
                ("POST", web::post().to(add_node)),
            ],
        ),
        (
            "/v1/deployments/{deployment}/nodes/{node}/reenroll",
            vec![("POST", web::post().to(reenroll))],
        ),
        (
            "/v1/deployments/{deployment}/nodes/{node}/revoke",
            vec![("POST", web::post().to(revoke))],
        ),
        (
            "/v1/deployments/{deployment}/ca",
            vec![("GET", web::get().to(ca_status))],
        ),
        (
            "/v1/deployments/{deployment}/ca/{step}",
            vec![("POST", web::post().to(ca_step))],
        ),
        ("/v1/alerts", vec![("GET", web::get().to(list_alerts))]),
        (
            "/v1/deployments/{deployment}/tasks",
            vec![("POST", web::post().to(issue_tasks))],
        ),
        (
            "/v1/releases",
            vec![
                ("GET", web::get().to(list_releases)),
                ("PUT", web::put().to(publish_release)),
            ],
        ),
        (
            "/v1/releases/{sha256}",
            vec![("GET", web::get().to(get_release))],
        ),
        ("/v1/tasks", vec![("GET", web::get().to(list_tasks))]),
        ("/v1/tasks/{task}", vec![("GET", web::get().to(get_task))]),
        (
            "/v1/tasks/{task}/approval",
            vec![("POST", web::post().to(approve))],
        ),
    ];
    for (path, methods) in routes {
        let allow: Vec<&str> = methods.iter().map(|(method, _)| *method).collect();
        let allow = allow.join(", ");
        let mut resource = web::resource(path);
        for (_, route) in methods {
            resource = resource.route(route);
        }
        let resource = resource.default_service(web::to(move |request: HttpRequest| {
            let allow = allow.clone();
            async move { method_not_allowed(&request, &allow) }
        }));
        config.service(resource);
    }
    config.default_service(web::to(not_found));
}

/// Pulls a field name out of a serde message such as "missing field `id`".
fn named_field(message: &str) -> Option<String> {
    // Backticks also quote values and variant names; only these messages quote a field name.
    if !(message.contains("missing field") || message.contains("unknown field")) {
        return None;
    }
    let start = message.find('`')? + 1;
    let end = start + message.get(start..)?.find('`')?;
    message.get(start..end).map(str::to_owned)
}

fn method_not_allowed(request: &HttpRequest, allow: &str) -> HttpResponse {
    let mut response = problem(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        format!("{} is not allowed on {}", request.method(), request.path()),
        None,
        Some(&format!("use {allow}")),
    )
    .error_response();
    if let Ok(value) = actix_web::http::header::HeaderValue::from_str(allow) {
        response
            .headers_mut()
            .insert(actix_web::http::header::ALLOW, value);
    }
    response
}

async fn not_found(request: HttpRequest) -> HttpResponse {
    problem(
        StatusCode::NOT_FOUND,
        "not-found",
        "Not found",
        format!("no route for {} {}", request.method(), request.path()),
        None,
        Some("see the README for the API routes"),
    )
    .error_response()
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

async fn trust(_: Admin, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let signed = state.control_plane.current_trust().await?;
    let view = TrustView::new(&signed).map_err(|reason| {
        ServiceError::Unavailable(format!("the stored trust document is damaged: {reason}"))
    })?;
    Ok(HttpResponse::Ok().json(view))
}

async fn publish_trust(
    _: Admin,
    state: web::Data<ApiState>,
    body: web::Json<PublishTrust>,
) -> Result<HttpResponse, ApiError> {
    let invalid = |reason: String| {
        invalid_field(
            "document",
            reason,
            "give the base64 text that `wardenctl trust sign` wrote",
        )
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(body.document.trim())
        .map_err(|error| invalid(format!("not base64: {error}")))?;
    let signed = SignedDocument::decode(&bytes).map_err(|error| invalid(error.to_string()))?;
    state.control_plane.publish_trust(&signed).await?;
    let view = TrustView::new(&signed).map_err(invalid)?;
    Ok(HttpResponse::Ok().json(view))
}

async fn publish_release(
    _: Admin,
    state: web::Data<ApiState>,
    request: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let invalid = |reason: String| {
        invalid_field(
            MANIFEST_HEADER,
            reason,
            "send the base64 text that `wardenctl release sign` wrote in the X-Warden-Manifest header",
        )
    };
    let header = request
        .headers()
        .get(MANIFEST_HEADER)
        .ok_or_else(|| invalid("the X-Warden-Manifest header is missing".into()))?;
    let text = header
        .to_str()
        .map_err(|_| invalid("the X-Warden-Manifest header is not ASCII".into()))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|error| invalid(format!("not base64: {error}")))?;
    let signed = SignedManifest::decode(&bytes).map_err(|error| invalid(error.to_string()))?;
    let release = state.control_plane.publish_release(signed, body).await?;
    Ok(HttpResponse::Created().json(ReleaseView::from(release)))
}

async fn list_releases(_: Admin, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let releases = state.control_plane.list_releases().await?;
    Ok(HttpResponse::Ok().json(
        releases
            .into_iter()
            .map(ReleaseView::from)
            .collect::<Vec<_>>(),
    ))
}

async fn get_release(
    _: Admin,
    state: web::Data<ApiState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let sha256 = path.into_inner().to_ascii_lowercase();
    let valid = sha256.len() == 64 && sha256.bytes().all(|byte| byte.is_ascii_hexdigit());
    if !valid {
        return Err(invalid_field(
            "sha256",
            format!(
                "{:?} is not a SHA-256 digest",
                warden_bus::messages::truncate(&sha256, 80)
            ),
            "give the 64 hex characters shown by `wardenctl release list`",
        ));
    }
    let release = state.control_plane.get_release(&sha256).await?;
    Ok(HttpResponse::Ok().json(ReleaseView::from(release)))
}

async fn approve(
    _: Admin,
    state: web::Data<ApiState>,
    path: web::Path<String>,
    body: web::Json<Approve>,
) -> Result<HttpResponse, ApiError> {
    let id = TaskId::new(path.into_inner()).map_err(|error| invalid_id("task", &error))?;
    let body = body.into_inner();
    let key_id =
        warden_bus::KeyId::new(body.key_id).map_err(|error| invalid_id("key_id", &error))?;
    let signature = base64::engine::general_purpose::STANDARD
        .decode(body.signature.trim())
        .map_err(|error| {
            invalid_field(
                "signature",
                format!("not base64: {error}"),
                "send the signature as base64",
            )
        })?;
    let task = state
        .control_plane
        .approve(&id, warden_bus::KeySignature { key_id, signature })
        .await?;
    Ok(HttpResponse::Ok().json(TaskView::from(task)))
}

fn deployment_id(text: &str) -> Result<DeploymentId, ApiError> {
    DeploymentId::new(text).map_err(|error| invalid_id("deployment", &error))
}

async fn create_deployment(
    _: Admin,
    state: web::Data<ApiState>,
    body: web::Json<CreateDeployment>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let id = DeploymentId::new(body.id).map_err(|error| invalid_id("id", &error))?;
    let record = state
        .control_plane
        .create_deployment(id, body.description, body.approval_key)
        .await?;
    Ok(HttpResponse::Created().json(DeploymentView::from(record)))
}

async fn list_deployments(_: Admin, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let deployments = state.control_plane.list_deployments().await?;
    Ok(HttpResponse::Ok().json(
        deployments
            .into_iter()
            .map(DeploymentView::from)
            .collect::<Vec<_>>(),
    ))
}

async fn add_node(
    _: Admin,
    state: web::Data<ApiState>,
    path: web::Path<String>,
    body: web::Json<AddNode>,
) -> Result<HttpResponse, ApiError> {
    let deployment = deployment_id(&path)?;
    let body = body.into_inner();
    let node = NodeId::new(body.id).map_err(|error| invalid_id("id", &error))?;
    let options = NodeOptions {
        state_dir: body.state_dir.into(),
        heartbeat_interval_secs: body.heartbeat_interval_secs,
        tls_names: body.tls_names,
    };
    let (record, bootstrap) = state
        .control_plane
        .add_node(deployment, node, options)
        .await?;
    Ok(HttpResponse::Created().json(AddedNode {
        node: NodeView::from(record),
        bootstrap,
    }))
}

async fn reenroll(
    _: Admin,
    state: web::Data<ApiState>,
    path: web::Path<(String, String)>,
    body: web::Json<Reenroll>,
) -> Result<HttpResponse, ApiError> {
    let (deployment, node) = path.into_inner();
    let deployment = deployment_id(&deployment)?;
    let node = NodeId::new(node).map_err(|error| invalid_id("node", &error))?;
    let body = body.into_inner();
    let options = NodeOptions {
        state_dir: body.state_dir.into(),
        heartbeat_interval_secs: body.heartbeat_interval_secs,
        tls_names: Vec::new(),
    };
    let (record, bootstrap) = state
        .control_plane
        .reenroll(deployment, node, options)
        .await?;
    Ok(HttpResponse::Ok().json(AddedNode {
        node: NodeView::from(record),
        bootstrap,
    }))
}

async fn revoke(
    _: Admin,
    state: web::Data<ApiState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (deployment, node) = path.into_inner();
    let deployment = deployment_id(&deployment)?;
    let node = NodeId::new(node).map_err(|error| invalid_id("node", &error))?;
    let record = state.control_plane.revoke(deployment, node).await?;
    Ok(HttpResponse::Ok().json(NodeView::from(record)))
}

async fn list_nodes(
    _: Admin,
    state: web::Data<ApiState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let deployment = deployment_id(&path)?;
    let nodes = state.control_plane.list_nodes(&deployment).await?;
    Ok(HttpResponse::Ok().json(nodes.into_iter().map(NodeView::from).collect::<Vec<_>>()))
}

async fn issue_tasks(
    _: Admin,
    state: web::Data<ApiState>,
    path: web::Path<String>,
    body: web::Json<IssueTasks>,
) -> Result<HttpResponse, ApiError> {
    let deployment = deployment_id(&path)?;
    let body = body.into_inner();
    let target = match (body.node, body.all_nodes) {
        (Some(node), false) => {
            Target::Node(NodeId::new(node).map_err(|error| invalid_id("node", &error))?)
        }
        (None, true) => Target::AllNodes,
        (Some(_), true) => {
            return Err(invalid_field(
                "all_nodes",
                "both node and all_nodes are set".into(),
                "set either node or all_nodes, not both",
            ))
        }
        (None, false) => {
            return Err(invalid_field(
                "node",
                "no target: node is missing and all_nodes is false".into(),
                "set node to a node id, or all_nodes to true",
            ))
        }
    };
    let tasks = state
        .control_plane
        .issue(deployment, target, body.action, body.ttl_secs)
        .await?;
    Ok(HttpResponse::Created().json(IssuedTasks {
        tasks: tasks.into_iter().map(TaskView::from).collect(),
    }))
}

async fn ca_status(
    _: Admin,
    state: web::Data<ApiState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let deployment = deployment_id(&path)?;
    Ok(HttpResponse::Ok().json(state.control_plane.ca_status(&deployment).await?))
}

async fn ca_step(
    _: Admin,
    state: web::Data<ApiState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (deployment, step) = path.into_inner();
    let deployment = deployment_id(&deployment)?;
    let step = match step.as_str() {
        "begin" => CaStep::Begin,
        "advance" => CaStep::Advance,
        "rollback" => CaStep::Rollback,
        other => {
            return Err(invalid_field(
                "step",
                format!("{other:?} is not a CA rotation step"),
                "use begin, advance or rollback",
            ))
        }
    };
    Ok(HttpResponse::Ok().json(state.control_plane.ca_step(&deployment, step).await?))
}

/// Query of `GET /v1/alerts`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertQuery {
    deployment: Option<String>,
    #[serde(default)]
    all: bool,
}

async fn list_alerts(
    _: Admin,
    state: web::Data<ApiState>,
    query: web::Query<AlertQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let deployment = query.deployment.as_deref().map(deployment_id).transpose()?;
    let alerts = state
        .control_plane
        .list_alerts(deployment.as_ref(), query.all)
        .await?;
    Ok(HttpResponse::Ok().json(alerts))
}

/// Query of `GET /v1/tasks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskQuery {
    deployment: Option<String>,
    node: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
}

async fn list_tasks(
    _: Admin,
    state: web::Data<ApiState>,
    query: web::Query<TaskQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let filter = TaskFilter {
        deployment: query.deployment.as_deref().map(deployment_id).transpose()?,
        node: query
            .node
            .map(NodeId::new)
            .transpose()
            .map_err(|error| invalid_id("node", &error))?,
        status: query
            .status
            .map(|text| text.parse::<TaskStatus>())
            .transpose()
            .map_err(|reason| invalid_field("status", reason, "use one of the listed statuses"))?,
        limit: Some(
            query
                .limit
                .unwrap_or(TASK_LIST_LIMIT_MAX)
                .min(TASK_LIST_LIMIT_MAX),
        ),
    };
    let tasks = state.control_plane.list_tasks(&filter).await?;
    Ok(HttpResponse::Ok().json(tasks.into_iter().map(TaskView::from).collect::<Vec<_>>()))
}

async fn get_task(
    _: Admin,
    state: web::Data<ApiState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = TaskId::new(path.into_inner()).map_err(|error| invalid_id("task", &error))?;
    let task = state.control_plane.get_task(&id).await?;
    Ok(HttpResponse::Ok().json(TaskView::from(task)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_named_in_serde_message() {
        assert_eq!(
            named_field("Json deserialize error: missing field `id` at line 1").as_deref(),
            Some("id")
        );
        assert_eq!(
            named_field("unknown field `surprise`, expected one of `id`").as_deref(),
            Some("surprise")
        );
        assert_eq!(
            named_field("invalid type: integer `5`, expected a string"),
            None
        );
        assert_eq!(named_field("no backticks"), None);
    }
}
