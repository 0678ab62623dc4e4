//! `arc-watchdog run`: the sidecar. Thin I/O around the pure parser and
//! detector: it follows the listener's log and its own pod, feeds what it
//! sees to the detector, and carries out the detector's decisions.
//!
//! One task owns the detector ([`sidecar::Sidecar`]); it `select!`s over
//! log lines, pod changes, Lease results, eviction results, the detector's
//! next wake-up and shutdown. Everything that waits on the API server runs
//! in its own task, so the loop never blocks and `/healthz` stays honest.

mod args;
pub mod backoff;
pub mod doctor;
pub mod events;
pub mod evict;
pub mod gate;
pub mod http;
pub mod lease;
pub mod logs;
pub mod metrics;
pub mod pod;
pub mod sidecar;

use crate::names;

pub use args::{Identity, LogOutput, RunArgs};
pub use doctor::{DoctorArgs, doctor};
pub use sidecar::{Started, start};

/// Installs the tracing subscriber (JSON or text on stdout, filter from
/// `RUST_LOG`, default `info`). A second call is a no-op.
pub fn init_logging(format: LogOutput) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogOutput::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogOutput::Text => builder.try_init(),
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
    tokio::select! {
        () = shutdown_signal() => tracing::info!("shutting down"),
        // The sidecar ends itself only to step aside (see
        // `pod::run_as_plain_init`): exit 0, so that the listener starts.
        () = cancel.cancelled() => tracing::info!("stepping aside"),
    }
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
