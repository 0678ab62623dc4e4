//! Command-line flags (each with an `ARC_WATCHDOG_*` environment fallback).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use arc_watchdog::settings::{Thresholds, parse_duration};
use clap::{ArgAction, Parser, ValueEnum};

use crate::mutation::{InjectConfig, Resources, validate_quantity};
use crate::version::SidecarModeFlag;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

/// Mutating admission webhook that injects the arc-watchdog sidecar into
/// ARC scale-set listener pods.
#[derive(Debug, Clone, Parser)]
#[command(name = "arc-watchdog-webhook", version)]
pub struct Cli {
    /// Address of the HTTPS listener serving `POST /mutate`.
    #[arg(long, env = "ARC_WATCHDOG_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,

    /// Address of the plain-HTTP admin listener (`/healthz`, `/readyz`, `/metrics`).
    #[arg(
        long,
        env = "ARC_WATCHDOG_ADMIN_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    pub admin_listen: SocketAddr,

    /// PEM serving certificate (chain), re-read when it changes.
    #[arg(
        long,
        env = "ARC_WATCHDOG_TLS_CERT",
        default_value = "/etc/arc-watchdog/tls/tls.crt"
    )]
    pub tls_cert: PathBuf,

    /// PEM private key of the serving certificate, re-read when it changes.
    #[arg(
        long,
        env = "ARC_WATCHDOG_TLS_KEY",
        default_value = "/etc/arc-watchdog/tls/tls.key"
    )]
    pub tls_key: PathBuf,

    /// How often the certificate and key files are checked for changes.
    #[arg(long, env = "ARC_WATCHDOG_TLS_RELOAD_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub tls_reload_interval: Duration,

    /// Image of the injected watchdog container.
    #[arg(long, env = "ARC_WATCHDOG_WATCHDOG_IMAGE")]
    pub watchdog_image: String,

    /// How the watchdog is injected: `native` (first init container with
    /// restartPolicy Always and a start gate; Kubernetes 1.29+), `classic`
    /// (a regular container, no start gate), or `auto` (native when the API
    /// server reports 1.29 or newer, classic otherwise or when unknown).
    #[arg(
        long,
        env = "ARC_WATCHDOG_SIDECAR_MODE",
        value_enum,
        default_value = "auto"
    )]
    pub sidecar_mode: SidecarModeFlag,

    /// Port of the injected watchdog's `/healthz`, `/startz`, `/readyz` and
    /// `/metrics` server (the container port named `watchdog`, which the
    /// probes and the PodMonitor use). Change it when the listener template
    /// already uses the port, or for `hostNetwork` listeners.
    #[arg(long, env = "ARC_WATCHDOG_WATCHDOG_PORT", default_value_t = arc_watchdog::names::WATCHDOG_PORT, value_parser = clap::value_parser!(u16).range(1..))]
    pub watchdog_port: u16,

    /// CPU request of the injected container.
    #[arg(long, env = "ARC_WATCHDOG_WATCHDOG_CPU_REQUEST", default_value = "10m", value_parser = quantity)]
    pub watchdog_cpu_request: String,

    /// Memory request of the injected container.
    #[arg(long, env = "ARC_WATCHDOG_WATCHDOG_MEMORY_REQUEST", default_value = "16Mi", value_parser = quantity)]
    pub watchdog_memory_request: String,

    /// CPU limit of the injected container (none unless set).
    #[arg(long, env = "ARC_WATCHDOG_WATCHDOG_CPU_LIMIT", value_parser = quantity)]
    pub watchdog_cpu_limit: Option<String>,

    /// Memory limit of the injected container.
    #[arg(long, env = "ARC_WATCHDOG_WATCHDOG_MEMORY_LIMIT", default_value = "64Mi", value_parser = quantity)]
    pub watchdog_memory_limit: String,

    /// The watchdog's fail-open grace (its `--fail-open-grace`, default
    /// 20s); only used to size the start-gate probe so that it never trips.
    #[arg(long, env = "ARC_WATCHDOG_WATCHDOG_FAIL_OPEN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub watchdog_fail_open_grace: Duration,

    /// Thresholds passed to every injected watchdog.
    #[command(flatten)]
    pub thresholds: Thresholds,

    /// Create and repair the per-listener Role, RoleBinding and Lease while
    /// admitting a listener pod (needs a kube client: in-cluster or KUBECONFIG).
    #[arg(long, env = "ARC_WATCHDOG_MANAGE_RBAC", default_value_t = true, action = ArgAction::Set)]
    pub manage_rbac: bool,

    /// Name of this webhook's MutatingWebhookConfiguration, the owner of the
    /// per-listener objects.
    #[arg(long, env = "ARC_WATCHDOG_WEBHOOK_CONFIG_NAME", default_value = crate::rbac::DEFAULT_WEBHOOK_CONFIG_NAME)]
    pub webhook_config_name: String,

    /// Time budget of the per-listener RBAC ensure inside one admission.
    #[arg(long, env = "ARC_WATCHDOG_RBAC_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub rbac_timeout: Duration,

    /// Watch the listener pods of --listener-namespaces and report each one
    /// that runs without the watchdog (created while the webhook was down or
    /// not yet installed): a Warning Event `ListenerNotInjected` on the pod,
    /// a log line and the gauge `arc_watchdog_webhook_uninjected_listeners`.
    /// Never deletes anything. Needs a kube client and list/watch on pods.
    #[arg(long, env = "ARC_WATCHDOG_REPORT_UNINJECTED", default_value_t = true, action = ArgAction::Set)]
    pub report_uninjected: bool,

    /// Namespaces in which ARC creates listener pods (the ARC controller's),
    /// comma-separated; watched by --report-uninjected.
    #[arg(
        long,
        env = "ARC_WATCHDOG_LISTENER_NAMESPACES",
        value_delimiter = ',',
        default_value = "arc-systems",
        value_parser = namespace_name
    )]
    pub listener_namespaces: Vec<String>,

    /// Largest accepted request body; larger ones get HTTP 413.
    #[arg(long, env = "ARC_WATCHDOG_MAX_BODY_BYTES", default_value_t = 3 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// How long in-flight requests may take to finish after SIGTERM.
    #[arg(long, env = "ARC_WATCHDOG_SHUTDOWN_GRACE", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Log format.
    #[arg(
        long,
        env = "ARC_WATCHDOG_LOG_FORMAT",
        value_enum,
        default_value = "json"
    )]
    pub log_format: LogFormat,

    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `arc_watchdog_webhook=debug`.
    #[arg(long, env = "ARC_WATCHDOG_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// A namespace name: a DNS-1123 label (blanks around it are ignored).
fn namespace_name(s: &str) -> Result<String, String> {
    let s = s.trim();
    let valid = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if valid {
        Ok(s.to_owned())
    } else {
        Err(format!("{s:?} is not a namespace name (DNS-1123 label)"))
    }
}

fn quantity(s: &str) -> Result<String, String> {
    validate_quantity(s).map(|()| s.to_owned())
}

impl Cli {
    /// Checks what clap cannot check field by field.
    pub fn validate(&self) -> Result<(), String> {
        self.thresholds.validate()?;
        let image = self.watchdog_image.trim();
        if image.is_empty() || image.chars().any(char::is_whitespace) {
            return Err(format!(
                "invalid --watchdog-image {:?}",
                self.watchdog_image
            ));
        }
        if self.max_body_bytes == 0 {
            return Err("--max-body-bytes must be at least 1".to_owned());
        }
        if self.report_uninjected && self.listener_namespaces.is_empty() {
            return Err("--report-uninjected needs at least one --listener-namespaces".to_owned());
        }
        if self.tls_reload_interval.is_zero() {
            return Err("--tls-reload-interval must be greater than zero".to_owned());
        }
        Ok(())
    }

    /// The mutation's configuration.
    pub fn inject_config(&self) -> InjectConfig {
        InjectConfig {
            image: self.watchdog_image.trim().to_owned(),
            resources: Resources {
                cpu_request: self.watchdog_cpu_request.clone(),
                memory_request: self.watchdog_memory_request.clone(),
                cpu_limit: self.watchdog_cpu_limit.clone(),
                memory_limit: Some(self.watchdog_memory_limit.clone()),
            },
            thresholds: self.thresholds.clone(),
            fail_open_grace: self.watchdog_fail_open_grace,
            port: self.watchdog_port,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let cli = Cli::try_parse_from(["x", "--watchdog-image", "img:1"]).unwrap();
        assert_eq!(cli.listen.to_string(), "0.0.0.0:8443");
        assert_eq!(cli.admin_listen.to_string(), "0.0.0.0:8080");
        assert_eq!(cli.sidecar_mode, SidecarModeFlag::Auto);
        assert!(cli.manage_rbac);
        assert_eq!(cli.webhook_config_name, "arc-watchdog");
        assert_eq!(cli.max_body_bytes, 3 * 1024 * 1024);
        assert!(cli.report_uninjected);
        assert_eq!(cli.listener_namespaces, vec!["arc-systems".to_owned()]);
        assert_eq!(cli.inject_config(), InjectConfig::new("img:1"));
        cli.validate().unwrap();
    }

    #[test]
    fn image_is_required_and_flags_parse() {
        assert!(Cli::try_parse_from(["x"]).is_err());
        let cli = Cli::try_parse_from([
            "x",
            "--watchdog-image=img",
            "--manage-rbac=false",
            "--sidecar-mode=native",
            "--watchdog-cpu-limit=100m",
            "--backoff-max=20m",
        ])
        .unwrap();
        assert!(!cli.manage_rbac);
        assert_eq!(cli.sidecar_mode, SidecarModeFlag::Native);
        assert_eq!(
            cli.inject_config().resources.cpu_limit.as_deref(),
            Some("100m")
        );
        assert_eq!(cli.thresholds.backoff_max, Duration::from_secs(1200));
        assert!(
            Cli::try_parse_from(["x", "--watchdog-image=i", "--watchdog-memory-limit=lots"])
                .is_err()
        );
        let bad = Cli::try_parse_from(["x", "--watchdog-image=a b"]).unwrap();
        assert!(bad.validate().is_err());
    }

    #[test]
    fn uninjected_report_flags() {
        let cli = Cli::try_parse_from([
            "x",
            "--watchdog-image=img",
            "--report-uninjected=false",
            "--listener-namespaces=arc-systems, arc-two",
        ])
        .unwrap();
        assert!(!cli.report_uninjected);
        assert_eq!(cli.listener_namespaces, vec!["arc-systems", "arc-two"]);
        cli.validate().unwrap();
        for bad in ["Arc", "a_b", "-a", "", "a,,b"] {
            assert!(
                Cli::try_parse_from([
                    "x",
                    "--watchdog-image=img",
                    &format!("--listener-namespaces={bad}")
                ])
                .is_err(),
                "{bad:?}"
            );
        }
    }
}
