//! `wardenctl`: the operator command line for the Warden control plane.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use base64::Engine;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;
use warden_bus::messages::{AccessRule, Component, Protocol};
use warden_control_plane::core::issue::ActionRequest;
use warden_control_plane::ctl::{self, offline, Client, CtlError};
use warden_control_plane::service::{AlertView, CaView};
use warden_control_plane::views::{
    AddNode, AddedNode, Approve, CreateDeployment, DeploymentView, IssueTasks, IssuedTasks,
    NodeView, PublishTrust, Reenroll, ReleaseView, TaskView, TrustView, MANIFEST_HEADER,
};

/// Operator command line for the Warden control plane.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Base URL of the control plane's API.
    #[arg(
        long,
        env = "WARDEN_API",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    api: String,
    /// Admin API key.
    #[arg(long, env = "WARDEN_API_KEY", hide_env_values = true, global = true)]
    api_key: Option<String>,
    /// File holding the admin API key, used when --api-key is not given.
    #[arg(long, env = "WARDEN_API_KEY_FILE", global = true)]
    api_key_file: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create and list deployments.
    #[command(subcommand)]
    Deployment(DeploymentCommand),
    /// Add and list nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Issue, list, show, approve and wait for tasks.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Show a deployment's CA and rotate it.
    #[command(subcommand)]
    Ca(CaCommand),
    /// List certificate alerts.
    #[command(subcommand)]
    Alert(AlertCommand),
    /// Create Ed25519 key files (offline).
    #[command(subcommand)]
    Key(KeyCommand),
    /// Sign, inspect and publish trust documents.
    #[command(subcommand)]
    Trust(TrustCommand),
    /// Sign and inspect release manifests (offline).
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// Set up the broker: keys, certificates and nats-server configuration (offline).
    #[command(subcommand)]
    Broker(BrokerCommand),
}

#[derive(Debug, Subcommand)]
enum BrokerCommand {
    /// Write a new broker directory: operator and account keys, a CA, a server certificate for
    /// the hosts, and nats.conf for operator mode with TLS on both listeners.
    Init {
        /// Directory to create; it must not hold a set-up yet.
        #[arg(long)]
        dir: PathBuf,
        /// Host name or address the server certificate covers; the first is the bind address.
        #[arg(long = "host", default_values_t = ["127.0.0.1".to_owned(), "localhost".to_owned()])]
        hosts: Vec<String>,
        /// TLS NATS client port.
        #[arg(long, default_value_t = 4222)]
        client_port: u16,
        /// TLS WebSocket port; 443 lets nodes through firewalls that allow only HTTPS out.
        #[arg(long, default_value_t = 443)]
        websocket_port: u16,
        /// JetStream file storage to reserve for tasks, reports and release artifacts, such as
        /// 16GiB or 512MiB; nats.conf sets max_file_store to it.
        #[arg(long, default_value = "16GiB", value_parser = parse_storage_size)]
        jetstream_storage: u64,
    },
}

fn parse_storage_size(text: &str) -> Result<u64, String> {
    warden_control_plane::broker::parse_size(text).map_err(|error| error.to_string())
}

#[derive(Debug, Subcommand)]
enum ReleaseCommand {
    /// Hash an artifact and sign its manifest with a release key file.
    Sign {
        /// Release key file (seed written by `key create`), listed as a release key in the trust
        /// document.
        #[arg(long)]
        release_key: PathBuf,
        /// The artifact to release.
        #[arg(long)]
        artifact: PathBuf,
        /// iggy, connectors or warden.
        #[arg(long, value_enum)]
        component: ComponentArg,
        /// Release version, such as 0.8.1.
        #[arg(long)]
        version: String,
        /// Target triple, such as x86_64-unknown-linux-gnu.
        #[arg(long)]
        target: String,
        /// Monotonic release counter; nodes refuse a lower one than installed.
        #[arg(long)]
        release_counter: u64,
        /// Output file for the signed manifest (base64 text).
        #[arg(long)]
        out: PathBuf,
    },
    /// Show a signed manifest file.
    Show {
        /// File written by `release sign`.
        file: PathBuf,
    },
    /// Sign a rollback permit with the root key file (offline): it lets nodes install a release
    /// counter below their installed one, down to --release-counter-min.
    Permit {
        /// Root key file of the trust document.
        #[arg(long)]
        root_key: PathBuf,
        /// Deployment the permit applies to.
        #[arg(long)]
        deployment: String,
        /// The one node it applies to; without it, every node of the deployment.
        #[arg(long)]
        node: Option<String>,
        /// iggy, connectors or warden.
        #[arg(long, value_enum)]
        component: ComponentArg,
        /// Lowest release counter the permit allows.
        #[arg(long)]
        release_counter_min: u64,
        /// Validity, such as 2h; at most 7d.
        #[arg(long, default_value = "1h")]
        expires_in: String,
        /// Output file for the signed permit (base64 text), for `upgrade-component
        /// --rollback-permit`.
        #[arg(long)]
        out: PathBuf,
    },
    /// Upload a signed manifest and its artifact to the control plane's release store.
    Publish {
        /// Signed manifest file written by `release sign`.
        #[arg(long)]
        manifest: PathBuf,
        /// The artifact the manifest was signed for.
        #[arg(long)]
        artifact: PathBuf,
    },
    /// List the published releases.
    List,
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Generate a key: the seed goes to FILE (mode 0600), the public key to FILE.pub.
    Create {
        /// Output file for the key seed.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum TrustCommand {
    /// Sign a trust document with the root key file (offline; the control plane never needs the
    /// root key).
    Sign(TrustSignArgs),
    /// Show a trust document file, or the control plane's current one if no file is given.
    Show {
        /// File written by `trust sign`.
        file: Option<PathBuf>,
    },
    /// Make a signed trust document the control plane's current one; send it to nodes with
    /// `task issue ... update-trust`.
    Publish {
        /// File written by `trust sign`.
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
struct TrustSignArgs {
    /// Root key file that signs the document (the current root).
    #[arg(long)]
    root_key: PathBuf,
    /// New root key file, to rotate the root: the document names it and both roots sign.
    #[arg(long)]
    new_root_key: Option<PathBuf>,
    /// Document version; must be above the version nodes have.
    #[arg(long)]
    version: u64,
    /// Validity of the document, such as 365d.
    #[arg(long, default_value = "365d")]
    expires_in: String,
    /// A task-signing public key (hex), optionally with a window relative to now:
    /// HEX[,from=-1h][,until=30d]. Repeat for several keys.
    #[arg(long = "task-key", required = true)]
    task_keys: Vec<String>,
    /// A release-signing public key (hex), same form as --task-key.
    #[arg(long = "release-key")]
    release_keys: Vec<String>,
    /// Output file for the signed document (base64 text).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, Subcommand)]
enum DeploymentCommand {
    /// Create a deployment.
    Create {
        /// Deployment id: a-z, 0-9 and -, up to 63 characters.
        id: String,
        /// Free text.
        #[arg(long, default_value = "")]
        description: String,
        /// Customer approval public key (hex); access rules and encryption keys then need its
        /// signature, given with `task approve`.
        #[arg(long)]
        approval_key: Option<String>,
    },
    /// List deployments.
    List,
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// Register a node and write its bootstrap file.
    Add {
        /// Node id: a-z, 0-9 and -, up to 63 characters.
        node: String,
        /// Deployment the node belongs to.
        #[arg(long)]
        deployment: String,
        /// Output file for the node's bootstrap file (mode 0600).
        #[arg(long)]
        bootstrap_out: PathBuf,
        /// State directory on the node (absolute path).
        #[arg(long, default_value = "/var/lib/warden")]
        state_dir: String,
        /// Heartbeat interval in seconds (1 to 3600); the Warden's default if absent.
        #[arg(long)]
        heartbeat_interval_secs: Option<u64>,
        /// DNS name or IP address the node's TLS certificates may carry; repeat for more.
        #[arg(long = "tls-name")]
        tls_names: Vec<String>,
        /// Overwrite an existing bootstrap file.
        #[arg(long)]
        force: bool,
        /// The root public key (hex) you expect; the command fails if the control plane's trust
        /// document names another root.
        #[arg(long)]
        expect_root_key: Option<String>,
    },
    /// Revoke a node's identity and write a bootstrap file with a new enrollment token, for a
    /// node that lost its state.
    Reenroll {
        /// Node id.
        node: String,
        /// Deployment the node belongs to.
        #[arg(long)]
        deployment: String,
        /// Output file for the node's new bootstrap file (mode 0600).
        #[arg(long)]
        bootstrap_out: PathBuf,
        /// State directory on the node (absolute path).
        #[arg(long, default_value = "/var/lib/warden")]
        state_dir: String,
        /// Heartbeat interval in seconds (1 to 3600); the Warden's default if absent.
        #[arg(long)]
        heartbeat_interval_secs: Option<u64>,
    },
    /// Revoke a node's identity: its reports stop counting and the broker disconnects it.
    Revoke {
        /// Node id.
        node: String,
        /// Deployment the node belongs to.
        #[arg(long)]
        deployment: String,
    },
    /// List a deployment's nodes with their health.
    List {
        /// Deployment.
        #[arg(long)]
        deployment: String,
    },
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Show the CA phase, bundle version and the nodes the next step waits for.
    Show {
        /// Deployment.
        #[arg(long)]
        deployment: String,
        /// Write the trust bundle (PEM) to this file as well.
        #[arg(long)]
        bundle_out: Option<PathBuf>,
    },
    /// Start a rotation: a new CA joins every trust bundle; the old CA still signs.
    Begin {
        /// Deployment.
        #[arg(long)]
        deployment: String,
    },
    /// Move to the next phase once every live node has the current bundle.
    Advance {
        /// Deployment.
        #[arg(long)]
        deployment: String,
    },
    /// Move back one phase, before the old CA has left the bundles.
    Rollback {
        /// Deployment.
        #[arg(long)]
        deployment: String,
    },
}

#[derive(Debug, Subcommand)]
enum AlertCommand {
    /// List active alerts.
    List {
        /// Only this deployment.
        #[arg(long)]
        deployment: Option<String>,
        /// Include resolved alerts.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Subcommand)]
enum TaskCommand {
    /// Issue a task to one node or to every node of a deployment.
    Issue(IssueArgs),
    /// List tasks, newest first.
    List {
        /// Only this deployment.
        #[arg(long)]
        deployment: Option<String>,
        /// Only this node.
        #[arg(long)]
        node: Option<String>,
        /// Only this status: pending, delivered, succeeded, failed, rejected or expired.
        #[arg(long)]
        status: Option<String>,
        /// At most this many.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Show one task with its history and output.
    Show {
        /// Task id.
        id: String,
    },
    /// Approve a task awaiting approval with the deployment's approval key file.
    Approve {
        /// Task id.
        id: String,
        /// Approval key file (seed written by `key create`).
        #[arg(long)]
        approval_key: PathBuf,
    },
    /// Wait until tasks reach an outcome; exits 0 only if all succeeded.
    Wait {
        /// Task ids.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
    },
}

#[derive(Debug, Args)]
struct IssueArgs {
    /// Deployment.
    #[arg(long)]
    deployment: String,
    /// Target node.
    #[arg(
        long,
        conflicts_with = "all_nodes",
        required_unless_present = "all_nodes"
    )]
    node: Option<String>,
    /// Target every node of the deployment.
    #[arg(long)]
    all_nodes: bool,
    /// Validity in seconds (1 to 3600, default 900).
    #[arg(long)]
    ttl_secs: Option<u64>,
    #[command(subcommand)]
    action: ActionCommand,
}

#[derive(Debug, Subcommand)]
enum ActionCommand {
    /// Write the Iggy server configuration on the node.
    ApplyConfig {
        /// Configuration version; must be above the node's current one.
        #[arg(long)]
        version: u64,
        /// TOML file with the configuration.
        #[arg(long)]
        file: PathBuf,
    },
    /// Report node facts: hostname, OS, kernel, versions, uptime, free disk.
    CollectDiagnostics,
    /// Send the control plane's current trust document to the node.
    UpdateTrust,
    /// Start a component.
    StartComponent {
        /// iggy or connectors.
        #[arg(long, value_enum)]
        component: ComponentArg,
    },
    /// Stop a component.
    StopComponent {
        /// iggy or connectors.
        #[arg(long, value_enum)]
        component: ComponentArg,
    },
    /// Restart a component.
    RestartComponent {
        /// iggy or connectors.
        #[arg(long, value_enum)]
        component: ComponentArg,
    },
    /// Restart a component with a configuration version.
    ReconfigureComponent {
        /// iggy or connectors.
        #[arg(long, value_enum)]
        component: ComponentArg,
        /// Configuration version.
        #[arg(long)]
        config_version: u64,
        /// Encryption key sealed to the node's key, base64.
        #[arg(long)]
        sealed_encryption_key: Option<String>,
    },
    /// Install a signed release.
    UpgradeComponent {
        /// iggy, connectors or warden.
        #[arg(long, value_enum)]
        component: ComponentArg,
        /// Release version.
        #[arg(long)]
        version: String,
        /// SHA-256 of the artifact, hex.
        #[arg(long)]
        sha256: String,
        /// Release counter from the manifest.
        #[arg(long)]
        release_counter: u64,
        /// Signed manifest file written by `release sign`.
        #[arg(long)]
        manifest: PathBuf,
        /// Root-signed rollback permit file (base64), to go below the installed counter.
        #[arg(long)]
        rollback_permit: Option<PathBuf>,
    },
    /// Replace the access rules.
    ApplyAccessRules {
        /// Rule-set version.
        #[arg(long)]
        version: u64,
        /// A rule as CIDR=PROTOCOL[@LIFETIME], such as 10.0.0.0/8=tcp or 203.0.113.7/32=http@2h
        /// (tcp, quic, http, websocket; lifetime in s, m, h or d from now, after which the
        /// node closes the rule by itself).
        #[arg(long = "rule")]
        rules: Vec<String>,
    },
    /// Renew the node's TLS certificate now.
    RotateCertificate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ComponentArg {
    Iggy,
    Connectors,
    Warden,
}

impl From<ComponentArg> for Component {
    fn from(component: ComponentArg) -> Self {
        match component {
            ComponentArg::Iggy => Component::Iggy,
            ComponentArg::Connectors => Component::Connectors,
            ComponentArg::Warden => Component::Warden,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn api_key(cli: &Cli) -> Result<Option<String>, CtlError> {
    if let Some(key) = cli
        .api_key
        .as_deref()
        .map(str::trim)
        .filter(|key| !key.is_empty())
    {
        return Ok(Some(key.to_owned()));
    }
    match &cli.api_key_file {
        Some(path) => {
            let key = read_capped(path, API_KEY_FILE_BYTES_MAX, "API key file")?
                .trim()
                .to_owned();
            if key.is_empty() {
                return Err(CtlError::Local(format!(
                    "the API key file {} is empty",
                    path.display()
                )));
            }
            Ok(Some(key))
        }
        None => Err(CtlError::Local(
            "no admin API key given; pass --api-key, or set WARDEN_API_KEY or WARDEN_API_KEY_FILE"
                .into(),
        )),
    }
}

/// Maximum size of a configuration file read by `apply-config` or a trust document file, in
/// bytes; the API rejects configurations over 128 KiB with a clear message.
const CONFIG_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// Maximum size of an API key file, in bytes.
const API_KEY_FILE_BYTES_MAX: u64 = 4096;

/// Reads a text file of at most `max` bytes, also from devices and pipes whose size is unknown.
fn read_capped(path: &std::path::Path, max: u64, what: &str) -> Result<String, CtlError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|error| {
        CtlError::Local(format!(
            "failed to read the {what} {}: {error}",
            path.display()
        ))
    })?;
    let mut text = String::new();
    file.take(max + 1)
        .read_to_string(&mut text)
        .map_err(|error| {
            CtlError::Local(format!(
                "failed to read the {what} {}: {error}",
                path.display()
            ))
        })?;
    if text.len() as u64 > max {
        return Err(CtlError::Local(format!(
            "the {what} {} is over the maximum of {max} bytes",
            path.display()
        )));
    }
    Ok(text)
}

/// Checks an id argument before it becomes part of a URL.
fn checked_id(kind: &str, value: &str) -> Result<String, CtlError> {
    warden_bus::NodeId::new(value)
        .map(|_| value.to_owned())
        .map_err(|_| CtlError::Local(format!("{kind} {value:?} is invalid; use 1 to 63 characters of a-z, 0-9 and -, starting with a letter or digit")))
}

fn print_json<T: Serialize>(value: &T) -> Result<(), CtlError> {
    let text =
        serde_json::to_string_pretty(value).map_err(|error| CtlError::Local(error.to_string()))?;
    println!("{text}");
    Ok(())
}

fn run(cli: Cli) -> Result<ExitCode, CtlError> {
    // Offline commands never reach the API, so they need no API key.
    let offline_command = matches!(
        cli.command,
        Command::Key(_)
            | Command::Release(
                ReleaseCommand::Sign { .. }
                    | ReleaseCommand::Show { .. }
                    | ReleaseCommand::Permit { .. }
            )
            | Command::Broker(_)
            | Command::Trust(TrustCommand::Sign(_))
            | Command::Trust(TrustCommand::Show { file: Some(_) })
    );
    let key = if offline_command {
        None
    } else {
        api_key(&cli)?
    };
    let client = Client::new(&cli.api, key)?;
    let json = cli.output == Output::Json;
    match cli.command {
        Command::Deployment(DeploymentCommand::Create {
            id,
            description,
            approval_key,
        }) => {
            let body = CreateDeployment {
                id,
                description,
                approval_key,
            };
            let created: DeploymentView = client.post("/v1/deployments", &body)?;
            if json {
                print_json(&created)?;
            } else {
                println!("deployment {} created", created.id);
            }
        }
        Command::Deployment(DeploymentCommand::List) => {
            let deployments: Vec<DeploymentView> = client.get("/v1/deployments")?;
            if json {
                print_json(&deployments)?;
            } else {
                print!("{}", ctl::deployments_table(&deployments));
            }
        }
        Command::Node(NodeCommand::Add {
            node,
            deployment,
            bootstrap_out,
            state_dir,
            heartbeat_interval_secs,
            tls_names,
            force,
            expect_root_key,
        }) => {
            // Open the output first: a node registered without its bootstrap file is stuck.
            let file = open_bootstrap(&bootstrap_out, force)?;
            let body = AddNode {
                id: node,
                state_dir,
                heartbeat_interval_secs,
                tls_names,
            };
            let path = format!(
                "/v1/deployments/{}/nodes",
                checked_id("deployment", &deployment)?
            );
            let added: AddedNode = match client.post(&path, &body) {
                Ok(added) => added,
                Err(error) => {
                    discard_bootstrap(&bootstrap_out, force);
                    return Err(error);
                }
            };
            if let Some(expected) = expect_root_key {
                if !added
                    .bootstrap
                    .root_key
                    .eq_ignore_ascii_case(expected.trim())
                {
                    discard_bootstrap(&bootstrap_out, force);
                    return Err(CtlError::Local(format!(
                        "the control plane's trust document names root key {} but you expect {}; the bootstrap file was not written",
                        added.bootstrap.root_key,
                        expected.trim()
                    )));
                }
            }
            write_bootstrap(file, &bootstrap_out, &added)?;
            if json {
                print_json(&added)?;
            } else {
                println!(
                    "node {} added to deployment {}; bootstrap file written to {}",
                    added.node.node,
                    added.node.deployment,
                    bootstrap_out.display()
                );
            }
        }
        Command::Node(NodeCommand::Reenroll {
            node,
            deployment,
            bootstrap_out,
            state_dir,
            heartbeat_interval_secs,
        }) => {
            let file = open_bootstrap(&bootstrap_out, true)?;
            let body = Reenroll {
                state_dir,
                heartbeat_interval_secs,
            };
            let added: AddedNode = client.post(
                &format!(
                    "/v1/deployments/{}/nodes/{}/reenroll",
                    checked_id("deployment", &deployment)?,
                    checked_id("node", &node)?
                ),
                &body,
            )?;
            write_bootstrap(file, &bootstrap_out, &added)?;
            if json {
                print_json(&added)?;
            } else {
                println!(
                    "node {} re-enrolled: its old key is revoked; new bootstrap file written to {}",
                    added.node.node,
                    bootstrap_out.display()
                );
            }
        }
        Command::Ca(command) => {
            let (deployment, step, bundle_out) = match command {
                CaCommand::Show {
                    deployment,
                    bundle_out,
                } => (deployment, None, bundle_out),
                CaCommand::Begin { deployment } => (deployment, Some("begin"), None),
                CaCommand::Advance { deployment } => (deployment, Some("advance"), None),
                CaCommand::Rollback { deployment } => (deployment, Some("rollback"), None),
            };
            let base = format!(
                "/v1/deployments/{}/ca",
                checked_id("deployment", &deployment)?
            );
            let view: CaView = match step {
                Some(step) => client.post(&format!("{base}/{step}"), &serde_json::json!({}))?,
                None => client.get(&base)?,
            };
            if let Some(path) = bundle_out {
                std::fs::write(&path, &view.bundle_pem).map_err(|error| {
                    CtlError::Local(format!("failed to write {}: {error}", path.display()))
                })?;
            }
            if json {
                print_json(&view)?;
            } else {
                print!("{}", ctl::ca_table(&view));
            }
        }
        Command::Alert(AlertCommand::List { deployment, all }) => {
            let mut path = "/v1/alerts".to_owned();
            let mut query = Vec::new();
            if let Some(deployment) = deployment {
                query.push(format!(
                    "deployment={}",
                    checked_id("deployment", &deployment)?
                ));
            }
            if all {
                query.push("all=true".to_owned());
            }
            if !query.is_empty() {
                path = format!("{path}?{}", query.join("&"));
            }
            let alerts: Vec<AlertView> = client.get(&path)?;
            if json {
                print_json(&alerts)?;
            } else {
                print!("{}", ctl::alerts_table(&alerts));
            }
        }
        Command::Node(NodeCommand::Revoke { node, deployment }) => {
            let path = format!(
                "/v1/deployments/{}/nodes/{}/revoke",
                checked_id("deployment", &deployment)?,
                checked_id("node", &node)?
            );
            let revoked: NodeView = client.post(&path, &serde_json::json!({}))?;
            if json {
                print_json(&revoked)?;
            } else {
                println!(
                    "node {} revoked; re-enroll it with `wardenctl node reenroll`",
                    revoked.node
                );
            }
        }
        Command::Node(NodeCommand::List { deployment }) => {
            let nodes: Vec<NodeView> = client.get(&format!(
                "/v1/deployments/{}/nodes",
                checked_id("deployment", &deployment)?
            ))?;
            if json {
                print_json(&nodes)?;
            } else {
                print!("{}", ctl::nodes_table(&nodes));
            }
        }
        Command::Task(TaskCommand::Issue(args)) => {
            let action = match args.action {
                ActionCommand::ApplyConfig { version, file } => {
                    let content = read_capped(&file, CONFIG_FILE_BYTES_MAX, "configuration file")?;
                    ActionRequest::ApplyConfig { version, content }
                }
                ActionCommand::CollectDiagnostics => ActionRequest::CollectDiagnostics {},
                ActionCommand::UpdateTrust => ActionRequest::UpdateTrust {},
                ActionCommand::RotateCertificate => ActionRequest::RotateCertificate {},
                ActionCommand::StartComponent { component } => ActionRequest::StartComponent {
                    component: component.into(),
                },
                ActionCommand::StopComponent { component } => ActionRequest::StopComponent {
                    component: component.into(),
                },
                ActionCommand::RestartComponent { component } => ActionRequest::RestartComponent {
                    component: component.into(),
                },
                ActionCommand::ReconfigureComponent {
                    component,
                    config_version,
                    sealed_encryption_key,
                } => ActionRequest::ReconfigureComponent {
                    component: component.into(),
                    config_version,
                    sealed_encryption_key,
                },
                ActionCommand::UpgradeComponent {
                    component,
                    version,
                    sha256,
                    release_counter,
                    manifest,
                    rollback_permit,
                } => ActionRequest::UpgradeComponent {
                    component: component.into(),
                    version,
                    sha256,
                    release_counter,
                    manifest: read_capped(&manifest, CONFIG_FILE_BYTES_MAX, "manifest file")?
                        .trim()
                        .to_owned(),
                    rollback_permit: rollback_permit
                        .map(|path| {
                            read_capped(&path, CONFIG_FILE_BYTES_MAX, "rollback permit file")
                                .map(|text| text.trim().to_owned())
                        })
                        .transpose()?,
                },
                ActionCommand::ApplyAccessRules { version, rules } => {
                    let now = warden_bus::Clock::now(&warden_bus::SystemClock);
                    let rules = rules
                        .iter()
                        .map(|rule| parse_rule(rule, now))
                        .collect::<Result<_, _>>()?;
                    ActionRequest::ApplyAccessRules { version, rules }
                }
            };
            let body = IssueTasks {
                node: args.node,
                all_nodes: args.all_nodes,
                ttl_secs: args.ttl_secs,
                action,
            };
            let issued: IssuedTasks = client.post(
                &format!(
                    "/v1/deployments/{}/tasks",
                    checked_id("deployment", &args.deployment)?
                ),
                &body,
            )?;
            if json {
                print_json(&issued)?;
            } else {
                print!("{}", ctl::tasks_table(&issued.tasks));
            }
        }
        Command::Task(TaskCommand::List {
            deployment,
            node,
            status,
            limit,
        }) => {
            let mut query = Vec::new();
            for (name, value) in [
                ("deployment", deployment),
                ("node", node),
                ("status", status),
                ("limit", limit.map(|l| l.to_string())),
            ] {
                if let Some(value) = value {
                    // Every value is an id, a status name or a number, so none needs escaping.
                    let value = match name {
                        "status" => value
                            .parse::<warden_control_plane::core::lifecycle::TaskStatus>()
                            .map(|status| status.as_str().to_owned())
                            .map_err(CtlError::Local)?,
                        "limit" => value,
                        _ => checked_id(name, &value)?,
                    };
                    query.push(format!("{name}={value}"));
                }
            }
            let path = if query.is_empty() {
                "/v1/tasks".to_owned()
            } else {
                format!("/v1/tasks?{}", query.join("&"))
            };
            let tasks: Vec<TaskView> = client.get(&path)?;
            if json {
                print_json(&tasks)?;
            } else {
                print!("{}", ctl::tasks_table(&tasks));
            }
        }
        Command::Task(TaskCommand::Show { id }) => {
            let task: TaskView = client.get(&format!("/v1/tasks/{}", checked_id("task", &id)?))?;
            if json {
                print_json(&task)?;
            } else {
                print!("{}", ctl::task_detail(&task));
            }
        }
        Command::Task(TaskCommand::Wait { ids, timeout_secs }) => {
            return wait(&client, &ids, timeout_secs, json)
        }
        Command::Task(TaskCommand::Approve { id, approval_key }) => {
            let key = offline::read_key(&approval_key)?;
            let task: TaskView = client.get(&format!("/v1/tasks/{}", checked_id("task", &id)?))?;
            let body = task.signed_body.ok_or_else(|| {
                CtlError::Local(format!(
                    "task {id} is {}, not awaiting approval",
                    task.status
                ))
            })?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(body)
                .map_err(|error| {
                    CtlError::Local(format!("the task's signed_body is not base64: {error}"))
                })?;
            let signature = key.key_signature(&bytes);
            let approval = Approve {
                key_id: signature.key_id.to_string(),
                signature: base64::engine::general_purpose::STANDARD.encode(&signature.signature),
            };
            let approved: TaskView = client.post(
                &format!("/v1/tasks/{}/approval", checked_id("task", &id)?),
                &approval,
            )?;
            if json {
                print_json(&approved)?;
            } else {
                println!("task {} approved; status {}", approved.id, approved.status);
            }
        }
        Command::Broker(BrokerCommand::Init {
            dir,
            hosts,
            client_port,
            websocket_port,
            jetstream_storage,
        }) => {
            let now = i64::try_from(warden_bus::Clock::now(&warden_bus::SystemClock).0 / 1000)
                .unwrap_or(i64::MAX);
            let listen = warden_control_plane::broker::Listen {
                hosts,
                client_port,
                websocket_port,
            };
            let storage = warden_control_plane::broker::Storage {
                file_bytes: jetstream_storage,
                ..Default::default()
            };
            warden_control_plane::broker::init(
                &dir,
                &listen,
                &storage,
                now,
                &mut rand::rngs::OsRng,
            )
            .map_err(|error| CtlError::Local(error.to_string()))?;
            println!(
                "broker set-up written to {}; start nats-server -c {}",
                dir.display(),
                dir.join(warden_control_plane::broker::SERVER_CONFIG)
                    .display()
            );
        }
        Command::Key(KeyCommand::Create { out }) => {
            let key = offline::create_key(&out)?;
            if json {
                print_json(
                    &serde_json::json!({ "key_id": key.id().to_string(), "public_key": key.public_key().to_hex() }),
                )?;
            } else {
                println!(
                    "key {} written to {} (public key in {}.pub)",
                    key.id(),
                    out.display(),
                    out.display()
                );
                println!("public key: {}", key.public_key().to_hex());
            }
        }
        Command::Release(ReleaseCommand::Sign {
            release_key,
            artifact,
            component,
            version,
            target,
            release_counter,
            out,
        }) => {
            let request = offline::ReleaseSignRequest {
                release_key,
                artifact,
                component: component.into(),
                version,
                target,
                release_counter,
                out,
            };
            let manifest = offline::sign_release(&request)?;
            if json {
                print_json(&manifest_json(&manifest))?;
            } else {
                println!("manifest written to {}", request.out.display());
                print!("{}", manifest_text(&manifest));
            }
        }
        Command::Release(ReleaseCommand::Show { file }) => {
            let signed = offline::read_manifest(&file)?;
            let manifest = signed
                .manifest_unverified()
                .map_err(|error| CtlError::Local(error.to_string()))?;
            if json {
                let mut value = manifest_json(&manifest);
                if let Some(object) = value.as_object_mut() {
                    object.insert(
                        "signed_by".into(),
                        signed.signature.key_id.to_string().into(),
                    );
                }
                print_json(&value)?;
            } else {
                print!("{}", manifest_text(&manifest));
                println!("signed by   {}", signed.signature.key_id);
            }
        }
        Command::Release(ReleaseCommand::Permit {
            root_key,
            deployment,
            node,
            component,
            release_counter_min,
            expires_in,
            out,
        }) => {
            let deployment = warden_bus::DeploymentId::new(&deployment)
                .map_err(|error| CtlError::Local(format!("--deployment: {error}")))?;
            let node = node
                .map(|node| warden_bus::NodeId::new(&node))
                .transpose()
                .map_err(|error| CtlError::Local(format!("--node: {error}")))?;
            let request = offline::PermitSignRequest {
                root_key,
                deployment,
                node,
                component: component.into(),
                release_counter_min,
                expires_in,
                out,
            };
            let permit = offline::sign_permit(&request)?;
            if json {
                print_json(&serde_json::json!({
                    "deployment": permit.deployment.to_string(),
                    "node": permit.node.as_ref().map(ToString::to_string),
                    "component": format!("{:?}", permit.component).to_lowercase(),
                    "release_counter_min": permit.release_counter_min,
                    "expires_at": permit.expires_at.to_string(),
                }))?;
            } else {
                println!(
                    "rollback permit written to {}; valid until {}",
                    request.out.display(),
                    permit.expires_at
                );
            }
        }
        Command::Release(ReleaseCommand::Publish { manifest, artifact }) => {
            let text = read_capped(&manifest, CONFIG_FILE_BYTES_MAX, "manifest file")?;
            let release: ReleaseView =
                client.put_file("/v1/releases", (MANIFEST_HEADER, text.trim()), &artifact)?;
            if json {
                print_json(&release)?;
            } else {
                println!(
                    "published {} {} ({} bytes, sha256 {})",
                    release.component, release.version, release.size, release.sha256
                );
            }
        }
        Command::Release(ReleaseCommand::List) => {
            let releases: Vec<ReleaseView> = client.get("/v1/releases")?;
            if json {
                print_json(&releases)?;
            } else {
                print!("{}", ctl::releases_table(&releases));
            }
        }
        Command::Trust(TrustCommand::Sign(args)) => {
            let view = offline::sign_trust(&args.into_request())?;
            if json {
                print_json(&view)?;
            } else {
                print!("{}", ctl::trust_detail(&view));
            }
        }
        Command::Trust(TrustCommand::Show { file }) => {
            let view = match file {
                Some(path) => {
                    let signed = offline::read_trust(&path)?;
                    TrustView::new(&signed).map_err(CtlError::Local)?
                }
                None => client.get("/v1/trust")?,
            };
            if json {
                print_json(&view)?;
            } else {
                print!("{}", ctl::trust_detail(&view));
            }
        }
        Command::Trust(TrustCommand::Publish { file }) => {
            let document = read_capped(&file, CONFIG_FILE_BYTES_MAX, "trust document file")?;
            let view: TrustView = client.put(
                "/v1/trust",
                &PublishTrust {
                    document: document.trim().to_owned(),
                },
            )?;
            if json {
                print_json(&view)?;
            } else {
                println!("trust document version {} is now current", view.version);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

impl TrustSignArgs {
    fn into_request(self) -> offline::TrustSignRequest {
        offline::TrustSignRequest {
            root_key: self.root_key,
            new_root_key: self.new_root_key,
            version: self.version,
            expires_in: self.expires_in,
            task_keys: self.task_keys,
            release_keys: self.release_keys,
            out: self.out,
        }
    }
}

fn manifest_json(manifest: &warden_bus::release::ReleaseManifest) -> serde_json::Value {
    serde_json::json!({
        "component": format!("{:?}", manifest.component).to_lowercase(),
        "version": manifest.version,
        "target": manifest.target,
        "sha256": hex::encode(&manifest.sha256),
        "size": manifest.size,
        "release_counter": manifest.release_counter,
        "issued_at": manifest.issued_at.to_string(),
    })
}

fn manifest_text(manifest: &warden_bus::release::ReleaseManifest) -> String {
    format!(
        "component   {}\nversion     {}\ntarget      {}\nsha256      {}\nsize        {}\ncounter     {}\n",
        format!("{:?}", manifest.component).to_lowercase(),
        manifest.version,
        manifest.target,
        hex::encode(&manifest.sha256),
        manifest.size,
        manifest.release_counter
    )
}

/// Parses CIDR=PROTOCOL[@LIFETIME]; the lifetime counts from `now`.
fn parse_rule(text: &str, now: warden_bus::UnixMillis) -> Result<AccessRule, CtlError> {
    let invalid = |why: &str| {
        CtlError::Local(format!(
            "--rule {text:?} {why}; write CIDR=PROTOCOL[@LIFETIME], such as 10.0.0.0/8=tcp or 203.0.113.7/32=http@2h"
        ))
    };
    let (cidr, rest) = text.split_once('=').ok_or_else(|| invalid("has no ="))?;
    let (protocol, lifetime) = match rest.split_once('@') {
        Some((protocol, lifetime)) => (protocol, Some(lifetime)),
        None => (rest, None),
    };
    let protocol = match protocol {
        "tcp" => Protocol::Tcp,
        "quic" => Protocol::Quic,
        "http" => Protocol::Http,
        "websocket" => Protocol::Websocket,
        _ => return Err(invalid("names no protocol of tcp, quic, http, websocket")),
    };
    let expires_at = lifetime
        .map(|lifetime| {
            parse_lifetime(lifetime)
                .map(|duration| now.saturating_add(duration))
                .ok_or_else(|| {
                    invalid(
                        "has a lifetime that is not a number with s, m, h or d, from 1 s to 365 d",
                    )
                })
        })
        .transpose()?;
    Ok(AccessRule {
        cidr: cidr.to_owned(),
        protocol,
        expires_at,
    })
}

/// Parses a lifetime such as 90s, 30m, 2h or 7d, from 1 s to 365 days.
fn parse_lifetime(text: &str) -> Option<Duration> {
    let unit = text.chars().last()?;
    let count: u64 = text.get(..text.len() - unit.len_utf8())?.parse().ok()?;
    let seconds = match unit {
        's' => count,
        'm' => count.checked_mul(60)?,
        'h' => count.checked_mul(3600)?,
        'd' => count.checked_mul(86_400)?,
        _ => return None,
    };
    (1..=365 * 86_400)
        .contains(&seconds)
        .then(|| Duration::from_secs(seconds))
}

/// Opens the bootstrap output with mode 0600; without `force` the file must not exist yet.
fn open_bootstrap(path: &std::path::Path, force: bool) -> Result<std::fs::File, CtlError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(0o600);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    options.open(path).map_err(|error| match error.kind() {
        std::io::ErrorKind::AlreadyExists => CtlError::Local(format!(
            "{} already exists; pass --force to overwrite it",
            path.display()
        )),
        _ => CtlError::Local(format!(
            "failed to open {} for writing: {error}",
            path.display()
        )),
    })
}

/// Removes a bootstrap output this command created, after a failure.
fn discard_bootstrap(path: &std::path::Path, force: bool) {
    if !force {
        let _ = std::fs::remove_file(path);
    }
}

fn write_bootstrap(
    mut file: std::fs::File,
    path: &std::path::Path,
    added: &AddedNode,
) -> Result<(), CtlError> {
    let text = toml::to_string(&added.bootstrap).map_err(|error| {
        CtlError::Local(format!("failed to render the bootstrap file: {error}"))
    })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|error| CtlError::Local(format!("failed to write {}: {error}", path.display())))
}

fn wait(
    client: &Client,
    ids: &[String],
    timeout_secs: u64,
    json: bool,
) -> Result<ExitCode, CtlError> {
    let deadline = Instant::now() + Duration::from_secs(timeout_secs);
    loop {
        let mut tasks = Vec::with_capacity(ids.len());
        for id in ids {
            tasks.push(client.get::<TaskView>(&format!("/v1/tasks/{}", checked_id("task", id)?))?);
        }
        // A rejection for a signature or decoding failure may be a forged copy of the task;
        // the real task's outcome replaces it, so keep waiting on those too.
        let done = tasks.iter().all(|task| {
            let open = matches!(
                task.status.as_str(),
                "awaiting_approval" | "pending" | "delivered"
            );
            let replaceable = task.status == "rejected"
                && matches!(
                    task.reject_code.as_deref(),
                    Some("malformed" | "unknown_key" | "bad_signature")
                );
            !open && !replaceable
        });
        if done || Instant::now() >= deadline {
            if json {
                print_json(&tasks)?;
            } else {
                print!("{}", ctl::tasks_table(&tasks));
            }
            if !done {
                eprintln!(
                    "error: timed out after {timeout_secs}s with tasks still pending or delivered"
                );
                return Ok(ExitCode::FAILURE);
            }
            let all_succeeded = tasks.iter().all(|task| task.status == "succeeded");
            return Ok(if all_succeeded {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: warden_bus::UnixMillis = warden_bus::UnixMillis(1_000_000);

    #[test]
    fn rule_without_lifetime_never_expires() {
        let rule = parse_rule("10.0.0.0/8=tcp", NOW).unwrap();
        assert_eq!(rule.protocol, Protocol::Tcp);
        assert_eq!(rule.expires_at, None);
    }

    #[test]
    fn rule_lifetime_counts_from_now() {
        let rule = parse_rule("2001:db8::/32=quic@2h", NOW).unwrap();
        assert_eq!(rule.cidr, "2001:db8::/32");
        assert_eq!(
            rule.expires_at,
            Some(NOW.saturating_add(Duration::from_secs(7200)))
        );
    }

    #[test]
    fn rule_errors_say_what_to_write() {
        for bad in [
            "10.0.0.0/8",
            "10.0.0.0/8=ssh",
            "10.0.0.0/8=tcp@2w",
            "10.0.0.0/8=tcp@0s",
            "10.0.0.0/8=tcp@366d",
            "10.0.0.0/8=tcp@h",
        ] {
            let error = parse_rule(bad, NOW).unwrap_err().to_string();
            assert!(error.contains("CIDR=PROTOCOL[@LIFETIME]"), "{bad}: {error}");
        }
    }
}
