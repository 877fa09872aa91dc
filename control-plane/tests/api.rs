//! The operator API: authentication and RFC 7807 errors that name the field and the fix.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use support::{Cluster, DEPLOYMENT};

struct Response {
    status: u16,
    content_type: String,
    body: serde_json::Value,
}

fn send(
    cluster: &Cluster,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> Response {
    let client = reqwest::blocking::Client::new();
    let url = format!("{}{path}", cluster.api);
    let mut request = match method {
        "GET" => client.get(&url),
        "POST" => client.post(&url),
        "DELETE" => client.delete(&url),
        other => panic!("unsupported method {other}"),
    };
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_owned());
    }
    let response = request.send().unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.json().unwrap_or(serde_json::Value::Null);
    Response {
        status,
        content_type,
        body,
    }
}

fn assert_problem(response: &Response, status: u16, field: Option<&str>) {
    assert_eq!(response.status, status, "{:#}", response.body);
    assert_eq!(response.content_type, "application/problem+json");
    for member in ["type", "title", "status", "detail", "fix"] {
        assert!(
            response.body.get(member).is_some(),
            "problem lacks {member}: {:#}",
            response.body
        );
    }
    assert_eq!(response.body["status"], status);
    if let Some(field) = field {
        assert_eq!(response.body["field"], field, "{:#}", response.body);
    }
}

#[test]
fn requests_without_the_key_rejected() {
    let cluster = Cluster::start();
    assert_problem(
        &send(&cluster, "GET", "/v1/deployments", None, None),
        401,
        Some("Authorization"),
    );
    assert_problem(
        &send(&cluster, "GET", "/v1/deployments", Some("wdn_wrong"), None),
        401,
        Some("Authorization"),
    );
    let almost = format!("{}x", cluster.api_key);
    assert_problem(
        &send(&cluster, "GET", "/v1/tasks", Some(&almost), None),
        401,
        None,
    );
    assert_problem(
        &send(
            &cluster,
            "POST",
            &format!("/v1/deployments/{DEPLOYMENT}/tasks"),
            None,
            Some(r#"{"all_nodes":true,"action":{"kind":"collect_diagnostics"}}"#),
        ),
        401,
        None,
    );
    assert_eq!(
        send(
            &cluster,
            "GET",
            "/v1/deployments",
            Some(&cluster.api_key),
            None
        )
        .status,
        200
    );
    assert_eq!(send(&cluster, "GET", "/v1/health", None, None).status, 200);
}

#[test]
fn invalid_fields_named_in_problems() {
    let cluster = Cluster::start();
    cluster.add_node("n1");
    let key = Some(cluster.api_key.as_str());
    let tasks = format!("/v1/deployments/{DEPLOYMENT}/tasks");
    let cases: &[(&str, &str, u16, &str)] = &[
        ("POST", r#"{"id":"Bad.Id"}"#, 400, "id"),
        ("POST", r#"{"description":"no id"}"#, 400, "id"),
        ("POST", r#"{"id":"ok","surprise":1}"#, 400, "surprise"),
        ("POST", "not json", 400, "body"),
    ];
    for (method, body, status, field) in cases {
        assert_problem(
            &send(&cluster, method, "/v1/deployments", key, Some(body)),
            *status,
            Some(field),
        );
    }
    let task_cases: &[(&str, &str)] = &[
        (
            r#"{"node":"n1","action":{"kind":"apply_config","version":0,"content":""}}"#,
            "version",
        ),
        (
            r#"{"node":"n1","action":{"kind":"apply_config","version":1,"content":"[broken"}}"#,
            "content",
        ),
        (
            r#"{"node":"n1","ttl_secs":7200,"action":{"kind":"collect_diagnostics"}}"#,
            "ttl_secs",
        ),
        (r#"{"action":{"kind":"collect_diagnostics"}}"#, "node"),
        (
            r#"{"node":"n1","all_nodes":true,"action":{"kind":"collect_diagnostics"}}"#,
            "all_nodes",
        ),
        (
            r#"{"node":"N1","action":{"kind":"collect_diagnostics"}}"#,
            "node",
        ),
    ];
    for (body, field) in task_cases {
        assert_problem(
            &send(&cluster, "POST", &tasks, key, Some(body)),
            400,
            Some(field),
        );
    }
    // A kind outside the vocabulary never reaches a node.
    let shell = send(
        &cluster,
        "POST",
        &tasks,
        key,
        Some(r#"{"node":"n1","action":{"kind":"run_shell","command":"id"}}"#),
    );
    assert_problem(&shell, 400, None);
    let listed: Vec<serde_json::Value> = cluster.client().get("/v1/tasks").unwrap();
    assert!(listed.is_empty(), "no invalid request may create a task");

    assert_problem(
        &send(&cluster, "GET", "/v1/tasks?status=done", key, None),
        400,
        Some("status"),
    );
    assert_problem(
        &send(&cluster, "GET", "/v1/tasks?bogus=1", key, None),
        400,
        None,
    );
}

#[test]
fn missing_and_conflicting_resources() {
    let cluster = Cluster::start();
    let key = Some(cluster.api_key.as_str());
    let missing_deployment = send(
        &cluster,
        "POST",
        "/v1/deployments/nope/nodes",
        key,
        Some(r#"{"id":"n1","state_dir":"/var/lib/warden"}"#),
    );
    assert_problem(&missing_deployment, 404, None);
    assert!(missing_deployment.body["fix"]
        .as_str()
        .unwrap()
        .contains("wardenctl deployment create"));

    assert_problem(
        &send(
            &cluster,
            "POST",
            "/v1/deployments",
            key,
            Some(&format!(r#"{{"id":"{DEPLOYMENT}"}}"#)),
        ),
        409,
        None,
    );
    cluster.add_node("n1");
    let again = send(
        &cluster,
        "POST",
        &format!("/v1/deployments/{DEPLOYMENT}/nodes"),
        key,
        Some(r#"{"id":"n1","state_dir":"/var/lib/warden"}"#),
    );
    assert_problem(&again, 409, None);
    let relative = send(
        &cluster,
        "POST",
        &format!("/v1/deployments/{DEPLOYMENT}/nodes"),
        key,
        Some(r#"{"id":"n2","state_dir":"relative"}"#),
    );
    assert_problem(&relative, 400, Some("state_dir"));

    let unknown_node = send(
        &cluster,
        "POST",
        &format!("/v1/deployments/{DEPLOYMENT}/tasks"),
        key,
        Some(r#"{"node":"ghost","action":{"kind":"collect_diagnostics"}}"#),
    );
    assert_problem(&unknown_node, 404, None);
    assert_problem(
        &send(&cluster, "GET", "/v1/tasks/0123", key, None),
        404,
        None,
    );
    assert_problem(
        &send(&cluster, "GET", "/v1/no-such-route", key, None),
        404,
        None,
    );
}

#[test]
fn admin_key_created_once_and_kept_across_restarts() {
    let mut cluster = Cluster::start();
    let first_log = cluster.control_plane_log();
    assert!(
        !first_log.contains(&cluster.api_key),
        "the key must not appear in the log"
    );
    let key = cluster.api_key.clone();
    std::fs::remove_file(cluster.path("admin-key")).unwrap();
    cluster.kill_control_plane();

    // A restarted replica finds the stored hash and does not create or print another key.
    std::fs::write(cluster.path("admin-key"), &key).unwrap();
    cluster.start_control_plane(&[]);
    assert_eq!(cluster.api_key, key);
    assert_eq!(
        send(&cluster, "GET", "/v1/deployments", Some(&key), None).status,
        200
    );
    let second_log = std::fs::read_to_string(cluster.path("control-plane-2.log")).unwrap();
    assert!(
        !second_log.contains("admin API key created"),
        "{second_log}"
    );
    assert!(
        !second_log.contains(&key),
        "the key must never be printed again"
    );
    assert!(second_log.contains("it is not shown again"), "{second_log}");
    assert!(first_log.contains("admin API key created"), "{first_log}");
}

#[test]
fn unwritable_key_file_loses_no_key() {
    let nats = warden_testkit::NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    support::offline_setup(dir.path());
    let start = |key_out: &std::path::Path, run: u32| {
        let binary = warden_testkit::workspace_binary("control-plane");
        let mut command = support::control_plane_command(&binary, dir.path(), &nats.url());
        command
            .arg("--admin-key-out")
            .arg(key_out)
            .arg("--artifact-cache-dir")
            .arg(dir.path().join("artifact-cache"));
        warden_testkit::Process::spawn(
            "control-plane",
            command,
            &dir.path().join(format!("cp-{run}.log")),
        )
    };

    let mut first = start(std::path::Path::new("/nonexistent/dir/admin-key"), 1);
    assert_ne!(first.wait_exit(std::time::Duration::from_secs(30)), Some(0));
    assert!(
        first
            .log()
            .contains("failed to open /nonexistent/dir/admin-key"),
        "{}",
        first.log()
    );

    // The failed start created no key, so the next start with a good path still gets one.
    let good = dir.path().join("admin-key");
    let _second = start(&good, 2);
    warden_testkit::wait_until(
        "the admin key file",
        std::time::Duration::from_secs(30),
        || std::fs::read_to_string(&good).is_ok_and(|text| text.starts_with("wdn_")),
    );
}

/// A cache directory that another user can write to would let that user plant a link where the
/// control plane writes artifacts. So the control plane rejects it at start, before it
/// connects to NATS (none runs here).
#[test]
fn shared_artifact_cache_dir_refused_at_start() {
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().unwrap();
    support::offline_setup(dir.path());
    let cache = dir.path().join("shared-cache");
    std::fs::create_dir(&cache).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let binary = warden_testkit::workspace_binary("control-plane");
    let mut command = support::control_plane_command(&binary, dir.path(), "nats://127.0.0.1:1");
    command.arg("--artifact-cache-dir").arg(&cache);
    let mut control_plane =
        warden_testkit::Process::spawn("control-plane", command, &dir.path().join("cp.log"));
    assert_ne!(
        control_plane.wait_exit(std::time::Duration::from_secs(30)),
        Some(0)
    );
    let log = control_plane.log();
    assert!(
        log.contains("has mode 1777, writable by other users; remove it"),
        "{log}"
    );
    assert!(!log.contains("connected to NATS"), "{log}");
}

#[test]
fn protocol_details_follow_http() {
    let cluster = Cluster::start();
    let client = reqwest::blocking::Client::new();

    // A known path with the wrong method is 405 with an Allow header, not 404.
    let response = client
        .delete(format!("{}/v1/deployments", cluster.api))
        .bearer_auth(&cluster.api_key)
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(
        response.headers().get("allow").unwrap().to_str().unwrap(),
        "GET, POST"
    );

    // The bearer scheme is case-insensitive, and a JSON body needs no content type.
    let response = client
        .post(format!("{}/v1/deployments", cluster.api))
        .header("authorization", format!("bearer {}", cluster.api_key))
        .body(r#"{"id":"lower"}"#)
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);

    // A description over the cap is the caller's error, named as such.
    let body = format!(r#"{{"id":"big","description":"{}"}}"#, "x".repeat(2000));
    let response = send(
        &cluster,
        "POST",
        "/v1/deployments",
        Some(&cluster.api_key),
        Some(&body),
    );
    assert_problem(&response, 400, Some("description"));

    // A value of the wrong type names the body, not the value.
    let response = send(
        &cluster,
        "POST",
        "/v1/deployments",
        Some(&cluster.api_key),
        Some(r#"{"id":5}"#),
    );
    assert_problem(&response, 400, Some("body"));
}
