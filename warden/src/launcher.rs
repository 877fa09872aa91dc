//! The launcher: the small process the service manager runs (`warden launch`). It starts the
//! agent (`warden --bootstrap FILE`) as its child, forwards SIGTERM and SIGINT to it, restarts
//! it after a crash with a capped back-off, and carries out the switches of a self-upgrade.
//!
//! It uses no NATS and no sled: it reads the bootstrap file and the release record, starts and
//! waits for processes, and re-executes itself. Its decisions are in
//! [`crate::core::self_upgrade`].

use std::ffi::CString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use warden_bus::time::Clock as _;
use warden_bus::UnixMillis;

use crate::bootstrap::{Bootstrap, BootstrapError};
use crate::core::self_upgrade::{
    on_agent_exit, on_launcher_start, on_poll, AgentExit, LauncherStep, ReleaseRecord, TrialState,
};
use crate::self_upgrade::{self as record_file, RecordFileError, LAUNCHER_PID_ENV};

/// How often the launcher checks its agent, signals and the release record.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// First delay before restarting an agent that ended on its own.
const RESTART_DELAY_MIN: Duration = Duration::from_secs(1);

/// Cap of the restart delay, which doubles after each crash in a row.
const RESTART_DELAY_MAX: Duration = Duration::from_secs(30);

/// An agent that ran this long before it ended resets the restart delay.
const STABLE_RUN: Duration = Duration::from_secs(60);

/// Time a stopped trial agent has between SIGTERM and SIGKILL.
const TRIAL_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// File in the state directory that a running launcher holds locked.
pub const LOCK_FILE: &str = "launcher.lock";

/// Errors that stop the launcher.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The bootstrap file is unusable.
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    /// The release record is unusable.
    #[error(transparent)]
    Record(#[from] RecordFileError),
    /// The release record names a binary the launcher does not run.
    #[error("the release record names {binary}, which the launcher does not run: {reason}; restore the record from the installed releases or delete it to run the launcher's own binary")]
    Refused {
        /// The binary named.
        binary: PathBuf,
        /// Why it is refused.
        reason: String,
    },
    /// Another launcher holds the state directory's lock.
    #[error("another launcher is running on the state directory ({path} is locked); stop it first, or give this node its own state_dir")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// A system call failed.
    #[error("failed to {operation}: {source}")]
    System {
        /// The operation that failed.
        operation: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Refuses to run a binary other than the launcher's own or a regular file (not a symbolic
/// link) inside the Warden's releases directory, which only the installer writes after it has
/// checked the release. Whoever can write the release record must not gain more than that.
pub fn check_runnable(binary: &Path, own: &Path, state_dir: &Path) -> Result<(), LaunchError> {
    if binary == own {
        return Ok(());
    }
    let refuse = |reason: String| {
        Err(LaunchError::Refused {
            binary: binary.to_path_buf(),
            reason,
        })
    };
    match std::fs::symlink_metadata(binary) {
        Ok(metadata) if metadata.file_type().is_file() => {}
        Ok(_) => return refuse("it is not a regular file".into()),
        Err(error) => return refuse(format!("it cannot be read: {error}")),
    }
    let releases = state_dir.join("components").join("warden").join("releases");
    let inside = match (binary.canonicalize(), releases.canonicalize()) {
        (Ok(binary), Ok(releases)) => binary.starts_with(&releases),
        _ => false,
    };
    if !inside {
        return refuse(format!(
            "it is neither the launcher's own binary nor an installed release under {}",
            releases.display()
        ));
    }
    Ok(())
}

/// Options of the launcher.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// The bootstrap file, passed on to the agent.
    pub bootstrap: PathBuf,
    /// Log format, passed on to the agent.
    pub log_format: String,
    /// A running agent to adopt instead of starting one, after a re-execution.
    pub adopt_pid: Option<i32>,
    /// Time the agent has to exit after the launcher forwarded SIGTERM or SIGINT, before
    /// SIGKILL.
    pub stop_timeout: Duration,
}

/// Environment variable that sets [`LaunchOptions::stop_timeout`] in seconds, like the
/// `--stop-timeout-secs` argument; the launcher sets it when it re-executes itself.
pub const STOP_TIMEOUT_VARIABLE: &str = "WARDEN_STOP_TIMEOUT_SECS";

/// Default of [`LaunchOptions::stop_timeout`].
pub const STOP_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);

fn system(operation: impl Into<String>) -> impl FnOnce(nix::Error) -> LaunchError {
    let operation = operation.into();
    move |error| LaunchError::System {
        operation,
        source: std::io::Error::from(error),
    }
}

fn now() -> UnixMillis {
    warden_actors::clock::SystemClock.now()
}

/// Runs the launcher until SIGTERM or SIGINT stops it, and returns the process's exit status.
pub fn run(options: &LaunchOptions) -> Result<i32, LaunchError> {
    let bootstrap = Bootstrap::load(&options.bootstrap)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&bootstrap.state_dir)
        .map_err(|source| LaunchError::System {
            operation: format!(
                "create the state directory {}",
                bootstrap.state_dir.display()
            ),
            source,
        })?;
    // Held until the process exits or re-executes itself (the descriptor closes on exec, and the
    // re-executed launcher takes the lock again), so a second launcher on this state directory
    // stops before it reads or writes the release record.
    // NOTE: between the exec and taking the lock again a second launcher could take it, and the
    // re-executed one would then stop. Keeping the descriptor across exec needs unsafe code.
    let _lock = lock_state_dir(&bootstrap.state_dir)?;
    let own_binary = std::env::current_exe().map_err(|source| LaunchError::System {
        operation: "find the launcher's own binary".into(),
        source,
    })?;
    let path = record_file::record_path(&bootstrap.state_dir);
    let mut record = match record_file::load(&path)? {
        Some(record) => record,
        None => ReleaseRecord::new(own_binary.clone()),
    };
    if options.adopt_pid.is_none() {
        let (settled, changed) = on_launcher_start(record);
        record = settled;
        if changed {
            record_file::store(&path, &record)?;
            tracing::warn!(
                node_id = %bootstrap.node,
                "the launcher restarted during a self-upgrade; the trial failed"
            );
        }
    }

    // Signals arrive on a descriptor, so the loop handles them between its other checks.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    mask.thread_block()
        .map_err(system("block SIGTERM and SIGINT"))?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(system("open a signal descriptor"))?;

    let mut launcher = Launcher {
        own_binary,
        options: options.clone(),
        bootstrap,
        path,
        record,
        signals,
        restart_delay: RESTART_DELAY_MIN,
    };
    launcher.run()
}

struct Launcher {
    own_binary: PathBuf,
    options: LaunchOptions,
    bootstrap: Bootstrap,
    path: PathBuf,
    record: ReleaseRecord,
    signals: SignalFd,
    restart_delay: Duration,
}

impl Launcher {
    fn run(&mut self) -> Result<i32, LaunchError> {
        let mut agent = match self.options.adopt_pid {
            Some(pid) => {
                let pid = Pid::from_raw(pid);
                tracing::info!(node_id = %self.bootstrap.node, agent_pid = pid.as_raw(), binary = %self.record.active.display(), version = %crate::version(), "launcher re-executed; adopting the running agent");
                pid
            }
            None => self.start_active()?,
        };
        let mut started_at = Instant::now();
        // When the first stop signal was forwarded, and whether the agent was killed since.
        let mut stopping: Option<(Instant, bool)> = None;
        loop {
            if let Some(signal) = self.pending_signal()? {
                tracing::info!(node_id = %self.bootstrap.node, signal = %signal, agent_pid = agent.as_raw(), "forwarding the signal to the agent");
                let _ = kill(agent, signal);
                stopping.get_or_insert((Instant::now(), false));
            }
            if let Some((since, false)) = stopping {
                if since.elapsed() >= self.options.stop_timeout {
                    tracing::warn!(node_id = %self.bootstrap.node, agent_pid = agent.as_raw(), timeout_secs = self.options.stop_timeout.as_secs(), "the agent did not stop in time; sending SIGKILL");
                    let _ = kill(agent, Signal::SIGKILL);
                    stopping = Some((since, true));
                }
            }
            match waitpid(agent, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {}
                Ok(WaitStatus::Exited(_, status)) => {
                    if stopping.is_some() {
                        tracing::info!(node_id = %self.bootstrap.node, status, "agent stopped; launcher stopping");
                        return Ok(status);
                    }
                    agent = self.after_exit(AgentExit::Exited(status), started_at)?;
                    started_at = Instant::now();
                    continue;
                }
                Ok(WaitStatus::Signaled(_, signal, _)) => {
                    if stopping.is_some() {
                        tracing::info!(node_id = %self.bootstrap.node, signal = %signal, "agent stopped; launcher stopping");
                        return Ok(0);
                    }
                    agent = self.after_exit(AgentExit::Signaled(signal as i32), started_at)?;
                    started_at = Instant::now();
                    continue;
                }
                Ok(_) => {}
                Err(error) => return Err(system("wait for the agent")(error)),
            }
            if stopping.is_none() {
                agent = self.check_trial(agent)?;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    fn pending_signal(&mut self) -> Result<Option<Signal>, LaunchError> {
        let info = self
            .signals
            .read_signal()
            .map_err(system("read the signal descriptor"))?;
        Ok(info
            .and_then(|info| i32::try_from(info.ssi_signo).ok())
            .and_then(|number| Signal::try_from(number).ok()))
    }

    /// Reads the record while a trial runs, and promotes or rolls back when it is time.
    fn check_trial(&mut self, agent: Pid) -> Result<Pid, LaunchError> {
        let running = matches!(
            self.record.trial.as_ref().map(|trial| &trial.state),
            Some(TrialState::Running { .. })
        );
        if !running {
            return Ok(agent);
        }
        if let Some(record) = record_file::load(&self.path)? {
            self.record = record;
        }
        match on_poll(self.record.clone(), now()) {
            LauncherStep::Promote { record } => {
                record_file::store(&self.path, &record)?;
                self.record = record;
                tracing::info!(node_id = %self.bootstrap.node, binary = %self.record.active.display(), agent_pid = agent.as_raw(), "the new Warden binary confirmed it is healthy; re-executing the launcher from it");
                let error = self.reexecute(agent);
                // The agent runs the new binary already; only the launcher stays old.
                tracing::error!(node_id = %self.bootstrap.node, error = %error, "re-executing the launcher failed; it keeps running its old binary");
                Ok(agent)
            }
            LauncherStep::RollBack { record } => {
                tracing::warn!(node_id = %self.bootstrap.node, agent_pid = agent.as_raw(), "the new Warden binary missed its health deadline; stopping it and rolling back");
                stop(agent);
                record_file::store(&self.path, &record)?;
                self.record = record;
                self.start_active()
            }
            LauncherStep::Wait | LauncherStep::Start { .. } => Ok(agent),
        }
    }

    /// Decides after the agent ended and starts the next one.
    fn after_exit(&mut self, exit: AgentExit, started_at: Instant) -> Result<Pid, LaunchError> {
        if let Some(record) = record_file::load(&self.path)? {
            self.record = record;
        }
        let step = on_agent_exit(
            self.record.clone(),
            exit,
            now(),
            self.bootstrap.self_upgrade_health_timeout,
        );
        let LauncherStep::Start {
            record,
            binary,
            after_crash,
        } = step
        else {
            unreachable!("on_agent_exit always starts an agent");
        };
        record_file::store(&self.path, &record)?;
        self.record = record;
        if after_crash {
            if started_at.elapsed() >= STABLE_RUN {
                self.restart_delay = RESTART_DELAY_MIN;
            }
            tracing::warn!(node_id = %self.bootstrap.node, exit = %exit, restart_in_ms = u64::try_from(self.restart_delay.as_millis()).unwrap_or(u64::MAX), "the agent ended; restarting it");
            let deadline = Instant::now() + self.restart_delay;
            while Instant::now() < deadline {
                if let Some(signal) = self.pending_signal()? {
                    tracing::info!(node_id = %self.bootstrap.node, signal = %signal, "launcher stopping before the restart");
                    std::process::exit(0);
                }
                std::thread::sleep(POLL_INTERVAL);
            }
            self.restart_delay = (self.restart_delay * 2).min(RESTART_DELAY_MAX);
        } else {
            tracing::info!(node_id = %self.bootstrap.node, exit = %exit, binary = %binary.display(), "starting the next Warden binary");
        }
        match self.spawn(&binary) {
            Ok(pid) => Ok(pid),
            Err(error) if binary != self.record.active => {
                // The trial binary does not start at all: that fails the trial too.
                tracing::error!(node_id = %self.bootstrap.node, error = %error, binary = %binary.display(), "the new Warden binary failed to start");
                self.after_exit(AgentExit::Exited(127), Instant::now())
            }
            Err(error) => Err(error),
        }
    }

    fn start_active(&mut self) -> Result<Pid, LaunchError> {
        let binary = self.record.active.clone();
        self.spawn(&binary)
    }

    fn spawn(&self, binary: &Path) -> Result<Pid, LaunchError> {
        check_runnable(binary, &self.own_binary, &self.bootstrap.state_dir)?;
        let child = std::process::Command::new(binary)
            .arg("--bootstrap")
            .arg(&self.options.bootstrap)
            .arg("--log-format")
            .arg(&self.options.log_format)
            .env(LAUNCHER_PID_ENV, std::process::id().to_string())
            .spawn()
            .map_err(|source| LaunchError::System {
                operation: format!("start the agent {}", binary.display()),
                source,
            })?;
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
        tracing::info!(node_id = %self.bootstrap.node, agent_pid = pid.as_raw(), binary = %binary.display(), "agent started");
        // The child is waited for by its pid, which also works after a re-execution.
        drop(child);
        Ok(pid)
    }

    /// Replaces this process with the active binary in launcher mode, adopting `agent`.
    /// Returns only on failure.
    fn reexecute(&self, agent: Pid) -> LaunchError {
        let binary = &self.record.active;
        if let Err(error) = check_runnable(binary, &self.own_binary, &self.bootstrap.state_dir) {
            return error;
        }
        let to_c = |bytes: &[u8]| CString::new(bytes).unwrap_or_default();
        let argv = [
            to_c(binary.as_os_str().as_bytes()),
            to_c(b"launch"),
            to_c(b"--bootstrap"),
            to_c(self.options.bootstrap.as_os_str().as_bytes()),
            to_c(b"--log-format"),
            to_c(self.options.log_format.as_bytes()),
            to_c(b"--adopt-pid"),
            to_c(agent.as_raw().to_string().as_bytes()),
        ];
        // The stop timeout goes in the environment, not as an argument: a rollback re-executes
        // an older binary, which would reject an argument it does not know.
        let mut environment: Vec<CString> = std::env::vars_os()
            .filter(|(name, _)| name != STOP_TIMEOUT_VARIABLE)
            .map(|(name, value)| {
                let mut entry = name.into_vec();
                entry.push(b'=');
                entry.extend(value.into_vec());
                to_c(&entry)
            })
            .collect();
        environment.push(to_c(
            format!(
                "{STOP_TIMEOUT_VARIABLE}={}",
                self.options.stop_timeout.as_secs()
            )
            .as_bytes(),
        ));
        let Err(error) =
            nix::unistd::execve(&to_c(binary.as_os_str().as_bytes()), &argv, &environment);
        system(format!("re-execute the launcher from {}", binary.display()))(error)
    }
}

/// Takes the launcher's lock on `state_dir`, failing at once if another launcher holds it.
fn lock_state_dir(state_dir: &Path) -> Result<Flock<std::fs::File>, LaunchError> {
    let path = state_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|source| LaunchError::System {
            operation: format!("open the lock file {}", path.display()),
            source,
        })?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| match errno {
        nix::errno::Errno::EWOULDBLOCK => LaunchError::Locked { path: path.clone() },
        errno => system(format!("lock {}", path.display()))(errno),
    })
}

/// Stops an agent: SIGTERM, then SIGKILL after [`TRIAL_STOP_TIMEOUT`]; waits for it.
fn stop(agent: Pid) {
    let _ = kill(agent, Signal::SIGTERM);
    let deadline = Instant::now() + TRIAL_STOP_TIMEOUT;
    while Instant::now() < deadline {
        if !matches!(
            waitpid(agent, Some(WaitPidFlag::WNOHANG)),
            Ok(WaitStatus::StillAlive)
        ) {
            return;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    let _ = kill(agent, Signal::SIGKILL);
    let _ = waitpid(agent, None);
}
