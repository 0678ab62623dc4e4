//! `arc-watchdog status` (also `kubectl arc-watchdog status`): one row per
//! scale set saying whether its listener runs and, if not, why.
//!
//! [`assess`](assess::assess) judges plain objects (pure, unit-tested);
//! [`fetch`](fetch::fetch) reads them with whatever read-only rights the
//! caller has; [`render`](render::render) prints them. The exit status
//! gates deployments and cron checks: see [`ExitStatus`].

pub mod assess;
pub mod fetch;
pub mod model;
pub mod render;

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result};
use jiff::Timestamp;
use kube::Client;
use kube::config::{Config, KubeConfigOptions, Kubeconfig};

use crate::settings::parse_duration;
pub use assess::{Inputs, Options, assess};
pub use model::{LastDecision, Missing, Report, Row, State, Watchdog};
pub use render::Output;

/// File name under which kubectl finds a plugin for `kubectl arc-watchdog`.
pub const KUBECTL_PLUGIN_NAME: &str = "kubectl-arc_watchdog";

/// Whether the binary was started as the kubectl plugin (a copy or link
/// named [`KUBECTL_PLUGIN_NAME`]), judging by `argv[0]`.
pub fn invoked_as_kubectl_plugin(argv0: &std::ffi::OsStr) -> bool {
    std::path::Path::new(argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.strip_suffix(".exe").unwrap_or(n) == KUBECTL_PLUGIN_NAME)
}

/// Flags of `status`, as kubectl users expect them.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Runner namespace of the scale sets (default: the kubeconfig
    /// context's namespace).
    #[arg(short = 'n', long, env = "ARC_WATCHDOG_NAMESPACE")]
    pub namespace: Option<String>,
    /// Scale sets in every namespace.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,
    /// ARC's controller namespace, where listeners, their pods and
    /// arc-watchdog's Leases are (default: wherever the listeners are; needs
    /// `list autoscalinglisteners` in all namespaces).
    #[arg(long, env = "ARC_WATCHDOG_LISTENER_NAMESPACE")]
    pub listener_namespace: Option<String>,
    /// The kubeconfig context to use.
    #[arg(long)]
    pub context: Option<String>,
    /// Path of the kubeconfig file (default: `KUBECONFIG`, `~/.kube/config`,
    /// or the in-cluster ServiceAccount).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Output,
    /// Print again whenever the answer changes (checked every `--interval`)
    /// until interrupted.
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// How often `--watch` reads again.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Session conflicts are counted within this window.
    #[arg(long, env = "ARC_WATCHDOG_STATUS_WINDOW", default_value = "10m", value_parser = parse_duration)]
    pub window: Duration,
    /// A listener pod Pending for longer counts as a missing listener.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    pub pending_after: Duration,
}

/// What the exit status of `status` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// 0: every scale set is healthy and everything could be read.
    Healthy = 0,
    /// 1: at least one scale set is known not to be healthy.
    Unhealthy = 1,
    /// 2: the command failed (bad flags, API server unreachable).
    Error = 2,
    /// 3: nothing known unhealthy, but some state is unknown (rights lacked).
    Incomplete = 3,
}

impl ExitStatus {
    /// The exit status for `report`.
    pub fn of(report: &Report) -> Self {
        let known_bad = report
            .rows
            .iter()
            .any(|r| !matches!(r.state, State::Healthy | State::Unknown));
        if known_bad {
            ExitStatus::Unhealthy
        } else if report.healthy {
            ExitStatus::Healthy
        } else {
            ExitStatus::Incomplete
        }
    }
}

async fn client(args: &StatusArgs) -> Result<(Client, String)> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match (&args.kubeconfig, &args.context) {
        (Some(path), _) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        (None, Some(context)) => Config::from_kubeconfig(&options)
            .await
            .with_context(|| format!("using kubeconfig context {context}"))?,
        (None, None) => Config::infer()
            .await
            .context("finding a kubeconfig (KUBECONFIG, ~/.kube/config or in-cluster)")?,
    };
    let namespace = config.default_namespace.clone();
    Ok((
        Client::try_from(config).context("building the Kubernetes client")?,
        namespace,
    ))
}

/// Reads and judges once.
async fn report_once(client: &Client, scope: &fetch::Scope, options: &Options) -> Result<Report> {
    let inputs = fetch::fetch(client, scope).await?;
    Ok(assess(&inputs, options, Timestamp::now()))
}

async fn run(args: StatusArgs) -> Result<ExitStatus> {
    let (client, default_ns) = client(&args).await?;
    let namespace = match (args.all_namespaces, &args.namespace) {
        (true, _) => None,
        (false, Some(ns)) => Some(ns.clone()),
        (false, None) => Some(default_ns),
    };
    let scope = fetch::Scope {
        namespace: namespace.clone(),
        listener_namespace: args.listener_namespace.clone(),
    };
    let options = Options {
        scope: namespace,
        window: args.window,
        pending_after: args.pending_after,
    };
    let tty = std::io::stdout().is_terminal();
    let colour = tty && std::env::var_os("NO_COLOR").is_none();
    let mut stdout = std::io::stdout();
    let mut last_text = String::new();
    loop {
        let report = report_once(&client, &scope, &options).await?;
        let text = render::render(&report, args.output, colour, report.generated_at);
        if !args.watch {
            stdout
                .write_all(text.as_bytes())
                .context("writing to stdout")?;
            return Ok(ExitStatus::of(&report));
        }
        if text != last_text {
            if tty {
                // Clear the screen so the table stays in place, as `watch` does.
                stdout
                    .write_all(b"\x1b[2J\x1b[H")
                    .context("writing to stdout")?;
            }
            stdout
                .write_all(text.as_bytes())
                .context("writing to stdout")?;
            stdout.flush().context("writing to stdout")?;
            last_text = text;
        }
        tokio::select! {
            r = tokio::signal::ctrl_c() => {
                r.context("waiting for Ctrl-C")?;
                return Ok(ExitStatus::of(&report));
            }
            () = tokio::time::sleep(args.interval) => {}
        }
    }
}

/// Runs `status` to its exit status (see [`ExitStatus`]).
pub fn command(args: StatusArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("arc-watchdog status: cannot start the async runtime: {e}");
            return ExitCode::from(ExitStatus::Error as u8);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(status) => ExitCode::from(status as u8),
        Err(e) => {
            eprintln!("arc-watchdog status: {e:#}");
            ExitCode::from(ExitStatus::Error as u8)
        }
    }
}

#[cfg(test)]
mod tests;
