//! `simulation`: runs the deterministic simulator from the command line.
//!
//! ```text
//! simulation run --seed 7 --nodes 20 --duration 600s --mode liveness
//! simulation sweep --seeds 100 --nodes 10 --duration 300s
//! ```

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use warden_simulation::{Mode, Outcome, RunConfig, World};

/// Deterministic simulation of the Warden control plane and nodes under faults.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one seed and print a summary.
    Run {
        /// Seed of every random choice.
        #[arg(long)]
        seed: u64,
        /// Number of nodes.
        #[arg(long, default_value_t = 10)]
        nodes: usize,
        /// Simulated time with faults, such as 600s or 10m.
        #[arg(long, default_value = "600s", value_parser = parse_duration)]
        duration: Duration,
        /// safety: invariants only; liveness: then heal and require convergence.
        #[arg(long, default_value = "safety")]
        mode: Mode,
        /// Run without injecting faults.
        #[arg(long)]
        no_faults: bool,
    },
    /// Run many seeds in both modes and list the failing ones.
    Sweep {
        /// Number of seeds.
        #[arg(long, default_value_t = 20)]
        seeds: u64,
        /// First seed.
        #[arg(long, default_value_t = 0)]
        first_seed: u64,
        /// Number of nodes per run.
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        /// Simulated time with faults per run.
        #[arg(long, default_value = "300s", value_parser = parse_duration)]
        duration: Duration,
    },
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid =
        || format!("duration {text:?} must be a number with s, m or h, such as 600s or 10m");
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(invalid)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let seconds = match unit {
        "s" => number,
        "m" => number.checked_mul(60).ok_or_else(invalid)?,
        "h" => number.checked_mul(3600).ok_or_else(invalid)?,
        _ => return Err(invalid()),
    };
    Ok(Duration::from_secs(seconds))
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run {
            seed,
            nodes,
            duration,
            mode,
            no_faults,
        } => {
            if nodes == 0 {
                eprintln!("error: --nodes must be at least 1");
                return ExitCode::FAILURE;
            }
            let outcome = World::new(RunConfig {
                seed,
                nodes,
                duration,
                mode,
                faults: !no_faults,
            })
            .run();
            print_summary(&outcome);
            if outcome.violation.is_some() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::Sweep {
            seeds,
            first_seed,
            nodes,
            duration,
        } => {
            let mut failures = Vec::new();
            for seed in first_seed..first_seed.saturating_add(seeds) {
                for mode in [Mode::Safety, Mode::Liveness] {
                    let outcome = World::new(RunConfig {
                        seed,
                        nodes,
                        duration,
                        mode,
                        faults: true,
                    })
                    .run();
                    let verdict = if outcome.violation.is_some() {
                        "FAILED"
                    } else {
                        "ok"
                    };
                    println!(
                        "seed {seed:>6} {:<8} {verdict:<6} events {:>8} faults {:>6} tasks {:>5} trace {}",
                        mode.as_str(),
                        outcome.stats.events,
                        outcome.stats.faults.total(),
                        outcome.stats.tasks,
                        &outcome.trace.hash()[..16]
                    );
                    if outcome.violation.is_some() {
                        print_summary(&outcome);
                        failures.push(outcome.config);
                    }
                }
            }
            println!("{} runs, {} failed", seeds * 2, failures.len());
            for config in &failures {
                println!("replay: {}", config.replay_command());
            }
            if failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn print_summary(outcome: &Outcome) {
    let stats = &outcome.stats;
    println!(
        "seed {} mode {} nodes {}",
        outcome.config.seed,
        outcome.config.mode.as_str(),
        outcome.config.nodes
    );
    println!(
        "events {} in {:.1}s simulated, {:.2}s wall ({:.0} events/s, {:.0}x real time)",
        stats.events,
        stats.simulated.as_secs_f64(),
        stats.wall.as_secs_f64(),
        stats.events as f64 / stats.wall.as_secs_f64().max(1e-9),
        stats.simulated.as_secs_f64() / stats.wall.as_secs_f64().max(1e-9)
    );
    println!("faults injected {}:", stats.faults.total());
    for (kind, count) in &stats.faults.by_kind {
        println!("  {kind:<40} {count}");
    }
    println!(
        "tasks issued {}; final statuses {:?}",
        stats.tasks, outcome.statuses
    );
    println!("certificates installed {}", stats.certificates);
    println!("access rule sets applied {}", stats.access_applied);
    println!("component restarts {}", stats.component_restarts);
    println!("invariant checks {}", stats.checks);
    println!(
        "trace {} events, hash {}",
        outcome.trace.len(),
        outcome.trace.hash()
    );
    if let Some(violation) = &outcome.violation {
        println!(
            "VIOLATION at {}: {}: {}",
            violation.at, violation.invariant, violation.detail
        );
        println!("last events:");
        for line in outcome.trace.tail() {
            println!("  {line}");
        }
        println!("replay: {}", outcome.config.replay_command());
    }
}
