//! `wardenctl`: the operator command line for the Warden control plane.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;
use warden_control_plane::core::issue::ActionRequest;
use warden_control_plane::ctl::{self, Client, CtlError};
use warden_control_plane::views::{
    AddNode, AddedNode, CreateDeployment, DeploymentView, IssueTasks, IssuedTasks, NodeView,
    TaskView,
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
    /// Issue, list, show and wait for tasks.
    #[command(subcommand)]
    Task(TaskCommand),
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
        /// Where to write the node's bootstrap file (mode 0600).
        #[arg(long)]
        bootstrap_out: PathBuf,
        /// State directory on the node (absolute path).
        #[arg(long, default_value = "/var/lib/warden")]
        state_dir: String,
        /// Heartbeat interval in seconds (1 to 3600); the Warden's default if absent.
        #[arg(long)]
        heartbeat_interval_secs: Option<u64>,
        /// Overwrite an existing bootstrap file.
        #[arg(long)]
        force: bool,
    },
    /// List a deployment's nodes with their health.
    List {
        /// Deployment.
        #[arg(long)]
        deployment: String,
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
    if let Some(key) = &cli.api_key {
        return Ok(Some(key.trim().to_owned()));
    }
    match &cli.api_key_file {
        Some(path) => std::fs::read_to_string(path)
            .map(|text| Some(text.trim().to_owned()))
            .map_err(|error| {
                CtlError::Local(format!(
                    "failed to read the API key file {}: {error}",
                    path.display()
                ))
            }),
        None => Ok(None),
    }
}

fn print_json<T: Serialize>(value: &T) -> Result<(), CtlError> {
    let text =
        serde_json::to_string_pretty(value).map_err(|error| CtlError::Local(error.to_string()))?;
    println!("{text}");
    Ok(())
}

fn run(cli: Cli) -> Result<ExitCode, CtlError> {
    let client = Client::new(&cli.api, api_key(&cli)?)?;
    let json = cli.output == Output::Json;
    match cli.command {
        Command::Deployment(DeploymentCommand::Create { id, description }) => {
            let created: DeploymentView =
                client.post("/v1/deployments", &CreateDeployment { id, description })?;
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
            force,
        }) => {
            if bootstrap_out.exists() && !force {
                return Err(CtlError::Local(format!(
                    "{} already exists; pass --force to overwrite it",
                    bootstrap_out.display()
                )));
            }
            let body = AddNode {
                id: node,
                state_dir,
                heartbeat_interval_secs,
            };
            let added: AddedNode =
                client.post(&format!("/v1/deployments/{deployment}/nodes"), &body)?;
            write_bootstrap(&bootstrap_out, &added)?;
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
        Command::Node(NodeCommand::List { deployment }) => {
            let nodes: Vec<NodeView> =
                client.get(&format!("/v1/deployments/{deployment}/nodes"))?;
            if json {
                print_json(&nodes)?;
            } else {
                print!("{}", ctl::nodes_table(&nodes));
            }
        }
        Command::Task(TaskCommand::Issue(args)) => {
            let action = match args.action {
                ActionCommand::ApplyConfig { version, file } => {
                    let content = std::fs::read_to_string(&file).map_err(|error| {
                        CtlError::Local(format!(
                            "failed to read configuration file {}: {error}",
                            file.display()
                        ))
                    })?;
                    ActionRequest::ApplyConfig { version, content }
                }
                ActionCommand::CollectDiagnostics => ActionRequest::CollectDiagnostics,
            };
            let body = IssueTasks {
                node: args.node,
                all_nodes: args.all_nodes,
                ttl_secs: args.ttl_secs,
                action,
            };
            let issued: IssuedTasks =
                client.post(&format!("/v1/deployments/{}/tasks", args.deployment), &body)?;
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
            let task: TaskView = client.get(&format!("/v1/tasks/{id}"))?;
            if json {
                print_json(&task)?;
            } else {
                print!("{}", ctl::task_detail(&task));
            }
        }
        Command::Task(TaskCommand::Wait { ids, timeout_secs }) => {
            return wait(&client, &ids, timeout_secs, json)
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn write_bootstrap(path: &std::path::Path, added: &AddedNode) -> Result<(), CtlError> {
    let text = toml::to_string(&added.bootstrap).map_err(|error| {
        CtlError::Local(format!("failed to render the bootstrap file: {error}"))
    })?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|error| CtlError::Local(format!("failed to write {}: {error}", path.display())))?;
    file.write_all(text.as_bytes())
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
            tasks.push(client.get::<TaskView>(&format!("/v1/tasks/{id}"))?);
        }
        let done = tasks
            .iter()
            .all(|task| !matches!(task.status.as_str(), "pending" | "delivered"));
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
