//! The flags of `arc-watchdog run` and the identity it shares with
//! `doctor`: plain data, read by the sidecar and its helpers.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use crate::names;
use crate::settings::{Thresholds, parse_duration};

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

    /// UID of the AutoscalingListener that owns the pod (the webhook sets
    /// it): the Lease's history is used only when the Lease belongs to that
    /// listener, never one left by an earlier scale set of the same name.
    #[arg(long, env = "ARC_WATCHDOG_LISTENER_UID")]
    pub listener_uid: Option<String>,
}

pub use arc_watchdog_core::LogOutput;

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

    /// Lease holding the history [default: arc-watchdog.$POD_NAME].
    #[arg(long, env = "ARC_WATCHDOG_LEASE_NAME")]
    pub lease_name: Option<String>,

    /// Admitted as a native sidecar but run by the kubelet as a plain init
    /// container (the listener still waits for it this long after the
    /// start gate opened): the watchdog exits 0 so that the listener starts.
    #[arg(long, env = "ARC_WATCHDOG_STEP_ASIDE_AFTER", default_value = "60s", value_parser = parse_duration)]
    pub step_aside_after: Duration,

    /// Longest time a change of mere bookkeeping (the listener's latest
    /// line, which no other pod generation acts on) waits to be written to
    /// the Lease: an idle listener's Lease is written at most once per
    /// interval. Conflicts, failures, evictions and the backoff are written
    /// at once, and a graceful stop writes what waits.
    #[arg(long, env = "ARC_WATCHDOG_BOOKKEEPING_SAVE_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    pub bookkeeping_save_interval: Duration,

    /// Format of the watchdog's own logs (stdout).
    #[arg(
        long,
        env = "ARC_WATCHDOG_LOG_FORMAT",
        value_enum,
        default_value = "json"
    )]
    pub log_format: LogOutput,
}

impl RunArgs {
    /// The Lease name in force.
    pub fn lease_name(&self) -> String {
        self.lease_name
            .clone()
            .unwrap_or_else(|| names::lease_name(&self.identity.pod_name))
    }
}
