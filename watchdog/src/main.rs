//! `arc-watchdog`: the sidecar (`run`), the offline `analyze`, `doctor` and
//! `status` (also as the kubectl plugin `kubectl arc-watchdog`).

use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _, Subcommand};

use arc_watchdog::{analyze, run, status};

/// Follows an ARC scale-set listener, recognises session-conflict loops and
/// other stuck states, and heals them.
#[derive(Debug, clap::Parser)]
#[command(name = "arc-watchdog", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The sidecar: follow the listener, decide, act (injected by the webhook).
    // Boxed: the largest arguments by far, parsed once.
    Run(Box<run::RunArgs>),
    /// Replay saved listener logs (one file per container run, oldest first)
    /// and print what `run` would have seen and done, as JSON.
    Analyze(analyze::AnalyzeArgs),
    /// Check what the sidecar needs (identity, API access, RBAC) and report.
    Doctor(run::DoctorArgs),
    /// One row per scale set: is its listener running, and if not, why.
    /// Exit 0 healthy, 1 not healthy, 2 error, 3 unknown (rights lacked).
    Status(status::StatusArgs),
}

fn main() -> ExitCode {
    // Called as `kubectl arc-watchdog` (a link or copy named
    // `kubectl-arc_watchdog` on PATH), usage texts say so.
    let plugin = std::env::args_os()
        .next()
        .is_some_and(|argv0| status::invoked_as_kubectl_plugin(&argv0));
    let mut command = Cli::command();
    if plugin {
        command = command.bin_name("kubectl arc-watchdog");
    }
    let cli = match Cli::from_arg_matches(&command.get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match cli.command {
        Command::Analyze(args) => match analyze::command(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("arc-watchdog analyze: {e}");
                ExitCode::from(2)
            }
        },
        Command::Run(args) => block_on("run", run::run(*args)),
        Command::Doctor(args) => block_on("doctor", run::doctor(args)),
        Command::Status(args) => status::command(args),
    }
}

/// Runs an async subcommand on a multi-threaded runtime (the sidecar's I/O
/// is concurrent: log follow, pod watch, HTTP server).
fn block_on(name: &str, fut: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("arc-watchdog {name}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("arc-watchdog {name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}
