//! `arc-watchdog run`: the sidecar. Thin I/O around the pure parser and
//! detector: it follows the listener's log and its own pod, feeds what it
//! sees to the detector, and carries out the detector's decisions.
//!
//! One task owns the detector ([`sidecar::Sidecar`]); it `select!`s over
//! log lines, pod changes, Lease results, eviction results, the detector's
//! next wake-up and shutdown. Everything that waits on the API server runs
//! in its own task, so the loop never blocks and `/healthz` stays honest.

pub mod backoff;
pub mod doctor;
pub mod events;
pub mod evict;
pub mod gate;
pub mod http;
pub mod lease;
pub mod logs;
pub mod merge;
pub mod metrics;
pub mod pod;
pub mod sidecar;

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::names;
use crate::settings::{Thresholds, parse_duration};

pub use doctor::{DoctorArgs, doctor};
pub use sidecar::{Started, start};

/// Who the sidecar is: its own pod (from the downward API).
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct Identity {
    /// Name of the own pod (the listener pod). Required: without it `run`
    /// only serves its endpoints and fails open.
    #[arg(long, env = names::ENV_POD_NAME, default_value = "")]
    pub pod_name: String,

    /// Namespace of the own pod. Required, like `--pod-name`.
    #[arg(long, env = names::ENV_POD_NAMESPACE, default_value = "")]
    pub pod_namespace: String,

    /// UID of the own pod: evictions carry it as a precondition, so a newer
    /// pod with the same name is never evicted by mistake.
    #[arg(long, env = names::ENV_POD_UID)]
    pub pod_uid: Option<String>,
}

/// Format of the sidecar's own logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (default).
    Json,
    /// Human-readable text.
    Text,
}

/// Flags of `arc-watchdog run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The own pod.
    #[command(flatten)]
    pub identity: Identity,

    /// The detector's thresholds.
    #[command(flatten)]
    pub thresholds: Thresholds,

    /// Address of the HTTP endpoints (/healthz, /readyz, /startz, /metrics).
    #[arg(long, env = "ARC_WATCHDOG_LISTEN", default_value = "0.0.0.0:9102")]
    pub listen: SocketAddr,

    /// Name of the listener container to follow.
    #[arg(long, env = "ARC_WATCHDOG_LISTENER_CONTAINER", default_value = names::LISTENER_CONTAINER)]
    pub listener_container: String,

    /// How long the watchdog may be blind (API server unreachable, RBAC
    /// missing, history not loaded) before it opens the start gate anyway.
    #[arg(long, env = "ARC_WATCHDOG_FAIL_OPEN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub fail_open_grace: Duration,

    /// Lease holding the history [default: arc-watchdog-$POD_NAME].
    #[arg(long, env = "ARC_WATCHDOG_LEASE_NAME")]
    pub lease_name: Option<String>,

    /// Format of the watchdog's own logs (stdout).
    #[arg(
        long,
        env = "ARC_WATCHDOG_LOG_FORMAT",
        value_enum,
        default_value = "json"
    )]
    pub log_format: LogFormat,
}

impl RunArgs {
    /// The Lease name in force.
    pub fn lease_name(&self) -> String {
        self.lease_name
            .clone()
            .unwrap_or_else(|| names::lease_name(&self.identity.pod_name))
    }
}

/// Installs the tracing subscriber (JSON or text on stdout, filter from
/// `RUST_LOG`, default `info`). A second call is a no-op.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// A client for `config` with kube's own retries switched off: the
/// sidecar retries with its own bounded backoff and must see every failure
/// (kube's default retries 429/503/504 up to 15 times, for many minutes,
/// which would hide an unreachable API server and stretch an eviction's
/// PodDisruptionBudget retries without bound).
pub fn client_from_config(mut config: kube::Config) -> Result<kube::Client, kube::Error> {
    config.default_retry = false;
    kube::Client::try_from(config)
}

/// A client from kube's default configuration: `KUBECONFIG` (or
/// `~/.kube/config`), else the in-cluster service account.
pub async fn default_client() -> anyhow::Result<kube::Client> {
    let config = kube::Config::infer().await.map_err(|e| {
        anyhow::anyhow!("no Kubernetes client configuration (in-cluster or KUBECONFIG): {e}")
    })?;
    client_from_config(config).map_err(|e| anyhow::anyhow!("building the Kubernetes client: {e}"))
}

/// `arc-watchdog run`: runs the sidecar until SIGTERM or SIGINT.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
    let cancel = tokio_util::sync::CancellationToken::new();
    // A misconfigured sidecar must not keep its listener from starting
    // (a crashing native sidecar would hold the pod's start forever): it
    // serves its endpoints blind and fails open.
    let client = if let Err(e) = args.thresholds.validate() {
        Err(format!("invalid thresholds: {e}"))
    } else if args.identity.pod_name.is_empty() || args.identity.pod_namespace.is_empty() {
        Err(format!(
            "identity incomplete: set {} and {} (downward API)",
            names::ENV_POD_NAME,
            names::ENV_POD_NAMESPACE
        ))
    } else {
        default_client().await.map_err(|e| format!("{e:#}"))
    };
    if let Err(why) = &client {
        tracing::error!(reason = %why, "the watchdog cannot work; serving its endpoints and failing open");
    }
    let started = start(args, client, cancel.clone()).await?;
    tracing::info!(addr = %started.addr, "listening");
    shutdown_signal().await;
    tracing::info!("shutting down");
    cancel.cancel();
    // Everything watches `cancel`; do not let a slow task hold the exit.
    let _ = tokio::time::timeout(sidecar::SHUTDOWN_BUDGET, started.task).await;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
