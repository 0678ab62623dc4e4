//! Command-line flags (each with an `ARC_WATCHDOG_*` environment fallback).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use arc_watchdog_core::settings::{Thresholds, parse_duration};
use clap::{ArgAction, Parser};

use crate::mutation::{InjectConfig, Resources, validate_quantity};
use crate::self_tls::{Names, Policy};
use crate::server::{BodyBudget, ServerLimits};
use crate::version::SidecarModeFlag;

pub use arc_watchdog_core::LogOutput;

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

    /// How often the certificate and key files are checked for changes;
    /// with --tls-mode=self-managed, how often the TLS Secret and the
    /// caBundle are checked (renewal, another replica's change, drift).
    #[arg(long, env = "ARC_WATCHDOG_TLS_RELOAD_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub tls_reload_interval: Duration,

    /// Where the serving certificate comes from: `files` (--tls-cert and
    /// --tls-key, e.g. the Secret cert-manager keeps, mounted) or
    /// `self-managed` (the webhook keeps its own CA and serving certificate
    /// in the Secret --tls-secret-name, renews them and fills the caBundle
    /// of --webhook-config-name; needs a kube client).
    #[arg(
        long,
        env = "ARC_WATCHDOG_TLS_MODE",
        value_enum,
        default_value = "files"
    )]
    pub tls_mode: TlsMode,

    /// --tls-mode=self-managed: the Secret holding the CA and the serving
    /// pair, in --tls-secret-namespace.
    #[arg(long, env = "ARC_WATCHDOG_TLS_SECRET_NAME", default_value = "arc-watchdog-webhook-tls", value_parser = object_name)]
    pub tls_secret_name: String,

    /// --tls-mode=self-managed: the webhook's own namespace, where the Secret
    /// is (the manifests set it from the downward API). Unset: the
    /// namespace of the pod's ServiceAccount.
    #[arg(long, env = "ARC_WATCHDOG_TLS_SECRET_NAMESPACE", value_parser = namespace_name)]
    pub tls_secret_namespace: Option<String>,

    /// --tls-mode=self-managed: the webhook's Service; the serving
    /// certificate is for `<service>.<namespace>.svc` and
    /// `<service>.<namespace>.svc.cluster.local`.
    #[arg(long, env = "ARC_WATCHDOG_TLS_SERVICE_NAME", default_value = "arc-watchdog-webhook", value_parser = namespace_name)]
    pub tls_service_name: String,

    /// --tls-mode=self-managed: further names of the serving certificate,
    /// DNS names or IP addresses, comma-separated (a webhook reached by URL).
    #[arg(long, env = "ARC_WATCHDOG_TLS_EXTRA_SANS", value_delimiter = ',')]
    pub tls_extra_sans: Vec<String>,

    /// --tls-mode=self-managed: lifetime of a new CA. It is renewed with
    /// less than a third left and signs from when a sixth is left; the old
    /// one stays in the caBundle until it expires.
    #[arg(long, env = "ARC_WATCHDOG_TLS_CA_VALIDITY", default_value = "43800h", value_parser = parse_duration)]
    pub tls_ca_validity: Duration,

    /// --tls-mode=self-managed: lifetime of a serving certificate, renewed
    /// with less than a third left; at most a third of --tls-ca-validity.
    #[arg(long, env = "ARC_WATCHDOG_TLS_SERVING_VALIDITY", default_value = "2160h", value_parser = parse_duration)]
    pub tls_serving_validity: Duration,

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
    #[arg(long, env = "ARC_WATCHDOG_WATCHDOG_PORT", default_value_t = arc_watchdog_core::names::WATCHDOG_PORT, value_parser = clap::value_parser!(u16).range(1..))]
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

    /// Keep a Role, RoleBinding and Lease for every AutoscalingListener in
    /// --listener-namespaces (a controller in this process; needs a kube
    /// client: in-cluster or KUBECONFIG). Admission itself writes nothing.
    #[arg(long, env = "ARC_WATCHDOG_MANAGE_RBAC", default_value_t = true, action = ArgAction::Set)]
    pub manage_rbac: bool,

    /// Name of this webhook's MutatingWebhookConfiguration, the owner of the
    /// Events about uninjected listeners.
    #[arg(long, env = "ARC_WATCHDOG_WEBHOOK_CONFIG_NAME", default_value = crate::owner::DEFAULT_WEBHOOK_CONFIG_NAME)]
    pub webhook_config_name: String,

    /// Watch the listener pods of --listener-namespaces and report each one
    /// that runs without the watchdog (created while the webhook was down or
    /// not yet installed): a Warning Event `ListenerNotInjected` on the pod,
    /// a log line and the gauge `arc_watchdog_webhook_uninjected_listeners`.
    /// Never deletes anything. Needs a kube client and list/watch on pods.
    #[arg(long, env = "ARC_WATCHDOG_REPORT_UNINJECTED", default_value_t = true, action = ArgAction::Set)]
    pub report_uninjected: bool,

    /// Release listeners held by a watchdog that cannot start: a native
    /// watchdog whose image cannot be pulled, that cannot be created or
    /// keeps crashing, keeps its listener from starting. After
    /// --blocked-after the webhook suspends injection for that listener
    /// (an annotation on its Lease), evicts the pod so ARC recreates it
    /// without the watchdog, and says so (Warning Event
    /// `InjectionSuspended`, metrics). Needs a kube client.
    #[arg(long, env = "ARC_WATCHDOG_RELEASE_BLOCKED_LISTENERS", default_value_t = true, action = ArgAction::Set)]
    pub release_blocked_listeners: bool,

    /// How long a watchdog that cannot start may keep its listener from
    /// starting (counted from when the kubelet took the pod) before the
    /// listener is released. A watchdog that runs and holds its start gate
    /// (a backoff) is never released.
    #[arg(long, env = "ARC_WATCHDOG_BLOCKED_AFTER", default_value = "2m", value_parser = parse_duration)]
    pub blocked_after: Duration,

    /// How long a released listener's pods are admitted without the
    /// watchdog. The next pod ARC creates after that gets it again; a
    /// running listener is never recreated for it.
    #[arg(long, env = "ARC_WATCHDOG_SUSPEND_INJECTION_FOR", default_value = "1h", value_parser = parse_duration)]
    pub suspend_injection_for: Duration,

    /// Report a scale set (AutoscalingRunnerSet) that has had no running
    /// listener for this long: no AutoscalingListener, no listener pod, a
    /// pod Pending or ended, or a pod stuck Terminating on a NotReady node.
    /// A Warning Event `ListenerMissing` on the AutoscalingRunnerSet, a log
    /// line and the gauge `arc_watchdog_webhook_missing_listeners{reason}`.
    /// `0` turns it off. Needs a kube client, list/watch on
    /// AutoscalingRunnerSets (--runner-namespaces) and nodes, and create on
    /// Events where the AutoscalingRunnerSets are.
    #[arg(long, env = "ARC_WATCHDOG_REPORT_MISSING_AFTER", default_value = "5m", value_parser = parse_duration)]
    pub report_missing_after: Duration,

    /// Namespaces of the AutoscalingRunnerSets (the runner namespaces),
    /// comma-separated, for --report-missing-after; empty (the default):
    /// every namespace.
    #[arg(
        long,
        env = "ARC_WATCHDOG_RUNNER_NAMESPACES",
        value_delimiter = ',',
        value_parser = namespace_name
    )]
    pub runner_namespaces: Vec<String>,

    /// Force-delete (grace period 0, only that generation of the pod) a
    /// listener pod stuck Terminating on a NotReady node once its deletion's
    /// grace period ended this long ago and its node has been NotReady this
    /// long, as the node lifecycle controller does not. ARC then creates the
    /// next listener pod. `0` (the default) turns it off. Dry run first: see
    /// --missing-actions-dry-run. Uses the eviction right the webhook holds
    /// in --listener-namespaces already.
    #[arg(long, env = "ARC_WATCHDOG_DELETE_STUCK_TERMINATING_AFTER", default_value = "0s", value_parser = parse_duration)]
    pub delete_stuck_terminating_after: Duration,

    /// Only say what --delete-stuck-terminating-after would delete (a log
    /// line, a counter and a server-side dry run), never delete.
    #[arg(long, env = "ARC_WATCHDOG_MISSING_ACTIONS_DRY_RUN", default_value_t = true, action = ArgAction::Set)]
    pub missing_actions_dry_run: bool,

    /// Most listener pods one webhook replica force-deletes per hour
    /// (--delete-stuck-terminating-after); beyond it, it logs and waits.
    #[arg(
        long,
        env = "ARC_WATCHDOG_DELETE_STUCK_TERMINATING_BUDGET",
        default_value_t = 3
    )]
    pub delete_stuck_terminating_budget: usize,

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

    /// Largest accepted request body; larger ones get HTTP 413. A listener
    /// pod's review is a few KiB; parsing a crafted pod can take some 25
    /// times its body, so this bounds the parse's memory too.
    #[arg(long, env = "ARC_WATCHDOG_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Most request-body bytes buffered at once across all connections (a
    /// quarter of it kept for bodies of 32 KiB or less, as reviews are); a
    /// request that finds no room within 1s gets HTTP 503. With the
    /// connection limits this bounds the memory that clients can make the
    /// webhook hold, under the manifests' 128Mi limit.
    #[arg(long, env = "ARC_WATCHDOG_MAX_BUFFERED_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_buffered_bytes: usize,

    /// Longest time from a review's request head to its answer, body
    /// included; a slower request gets HTTP 408. Keep it at or under the
    /// MutatingWebhookConfiguration's timeoutSeconds (5s).
    #[arg(long, env = "ARC_WATCHDOG_REQUEST_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Longest time to receive an HTTP/1 request head, and so also how long
    /// an HTTP/1 keep-alive connection may stay idle.
    #[arg(long, env = "ARC_WATCHDOG_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// A connection with no request in flight for this long is closed
    /// (HTTP/2 with GOAWAY).
    #[arg(long, env = "ARC_WATCHDOG_IDLE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Most TLS connections open at once on --listen; further ones are
    /// closed on accept until some end.
    #[arg(long, env = "ARC_WATCHDOG_MAX_CONNECTIONS", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub max_connections: u32,

    /// Most concurrent streams (requests) on one HTTP/2 connection.
    #[arg(long, env = "ARC_WATCHDOG_MAX_CONCURRENT_STREAMS", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub max_concurrent_streams: u32,

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
    pub log_format: LogOutput,

    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `arc_watchdog_webhook=debug`.
    #[arg(long, env = "ARC_WATCHDOG_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// Where the serving certificate comes from (`--tls-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsMode {
    /// `--tls-cert` and `--tls-key`, re-read when they change.
    Files,
    /// The webhook's own CA and serving certificate, kept in a Secret.
    SelfManaged,
}

/// Where the ServiceAccount token volume says which namespace the pod is in.
const SERVICE_ACCOUNT_NAMESPACE_FILE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// An object name: a DNS-1123 subdomain.
fn object_name(s: &str) -> Result<String, String> {
    let s = s.trim();
    let valid =
        !s.is_empty() && s.len() <= 253 && s.split('.').all(|label| namespace_name(label).is_ok());
    if valid {
        Ok(s.to_owned())
    } else {
        Err(format!("{s:?} is not an object name (DNS-1123 subdomain)"))
    }
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
        if self.manage_rbac && self.listener_namespaces.is_empty() {
            return Err("--manage-rbac needs at least one --listener-namespaces".to_owned());
        }
        if BodyBudget::new(self.max_buffered_bytes).largest_body() < self.max_body_bytes {
            return Err(format!(
                "--max-buffered-bytes ({}) must be at least 4/3 of --max-body-bytes ({}): \
                 a quarter of it is kept for small bodies",
                self.max_buffered_bytes, self.max_body_bytes
            ));
        }
        for (flag, value) in [
            ("--request-timeout", self.request_timeout),
            ("--header-read-timeout", self.header_read_timeout),
            ("--idle-timeout", self.idle_timeout),
        ] {
            if value.is_zero() {
                return Err(format!("{flag} must be greater than zero"));
            }
        }
        if self.report_uninjected && self.listener_namespaces.is_empty() {
            return Err("--report-uninjected needs at least one --listener-namespaces".to_owned());
        }
        if self.release_blocked_listeners && self.listener_namespaces.is_empty() {
            return Err(
                "--release-blocked-listeners needs at least one --listener-namespaces".to_owned(),
            );
        }
        for (flag, value) in [
            ("--blocked-after", self.blocked_after),
            ("--suspend-injection-for", self.suspend_injection_for),
        ] {
            if value.is_zero() {
                return Err(format!("{flag} must be greater than zero"));
            }
        }
        if !self.report_missing_after.is_zero() && self.listener_namespaces.is_empty() {
            return Err(
                "--report-missing-after needs at least one --listener-namespaces".to_owned(),
            );
        }
        if !self.delete_stuck_terminating_after.is_zero() {
            if self.report_missing_after.is_zero() {
                return Err(
                    "--delete-stuck-terminating-after needs --report-missing-after (it acts on \
                     what that watch finds)"
                        .to_owned(),
                );
            }
            if self.delete_stuck_terminating_budget == 0 {
                return Err("--delete-stuck-terminating-budget must be at least 1 when \
                     --delete-stuck-terminating-after is set"
                    .to_owned());
            }
        }
        if self.tls_reload_interval.is_zero() {
            return Err("--tls-reload-interval must be greater than zero".to_owned());
        }
        if self.tls_mode == TlsMode::SelfManaged {
            for san in &self.tls_extra_sans {
                if san.trim().parse::<std::net::IpAddr>().is_err() && object_name(san).is_err() {
                    return Err(format!(
                        "--tls-extra-sans: {san:?} is neither an IP address nor a DNS name"
                    ));
                }
            }
            if self.tls_serving_validity < Duration::from_secs(3) {
                return Err("--tls-serving-validity must be at least 3s".to_owned());
            }
            if self.tls_serving_validity.saturating_mul(3) > self.tls_ca_validity {
                return Err(format!(
                    "--tls-serving-validity ({}) must be at most a third of --tls-ca-validity ({}), \
                     so that a serving certificate never outlives the CA that signed it",
                    arc_watchdog_core::settings::format_duration(self.tls_serving_validity),
                    arc_watchdog_core::settings::format_duration(self.tls_ca_validity)
                ));
            }
        }
        Ok(())
    }

    /// --tls-mode=self-managed: the Secret's namespace, from
    /// --tls-secret-namespace or else the pod's ServiceAccount.
    pub fn tls_namespace(&self) -> Result<String, String> {
        if let Some(ns) = &self.tls_secret_namespace {
            return Ok(ns.clone());
        }
        std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE_FILE)
            .ok()
            .and_then(|ns| namespace_name(&ns).ok())
            .ok_or_else(|| {
                format!(
                    "--tls-mode=self-managed needs --tls-secret-namespace \
                     (ARC_WATCHDOG_TLS_SECRET_NAMESPACE) outside a pod: \
                     {SERVICE_ACCOUNT_NAMESPACE_FILE} is not readable"
                )
            })
    }

    /// --tls-mode=self-managed: what certificates to make, for a webhook in
    /// `namespace`.
    pub fn tls_policy(&self, namespace: &str) -> Policy {
        Policy {
            names: Names::for_service(&self.tls_service_name, namespace, &self.tls_extra_sans),
            ca_validity: self.tls_ca_validity,
            serving_validity: self.tls_serving_validity,
        }
    }

    /// The HTTPS server's limits.
    pub fn server_limits(&self) -> ServerLimits {
        ServerLimits {
            max_connections: self.max_connections,
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            max_concurrent_streams: self.max_concurrent_streams,
            shutdown_grace: self.shutdown_grace,
        }
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
        assert_eq!(cli.max_body_bytes, 1024 * 1024);
        assert_eq!(cli.max_buffered_bytes, 16 * 1024 * 1024);
        assert_eq!(cli.request_timeout, Duration::from_secs(5));
        let limits = cli.server_limits();
        let default = ServerLimits::default();
        assert_eq!(limits.max_connections, default.max_connections);
        assert_eq!(limits.header_read_timeout, default.header_read_timeout);
        assert_eq!(limits.idle_timeout, default.idle_timeout);
        assert_eq!(
            limits.max_concurrent_streams,
            default.max_concurrent_streams
        );
        assert_eq!(limits.shutdown_grace, default.shutdown_grace);
        assert!(cli.report_uninjected);
        assert!(cli.release_blocked_listeners);
        assert_eq!(cli.blocked_after, Duration::from_secs(120));
        assert_eq!(cli.suspend_injection_for, Duration::from_secs(3600));
        assert_eq!(cli.listener_namespaces, vec!["arc-systems".to_owned()]);
        assert_eq!(cli.report_missing_after, Duration::from_secs(300));
        assert!(cli.runner_namespaces.is_empty(), "every namespace");
        assert_eq!(cli.delete_stuck_terminating_after, Duration::ZERO, "off");
        assert!(cli.missing_actions_dry_run);
        assert_eq!(cli.delete_stuck_terminating_budget, 3);
        assert_eq!(cli.inject_config(), InjectConfig::new("img:1"));
        assert_eq!(cli.tls_mode, TlsMode::Files, "cert-manager's mounted files");
        assert_eq!(cli.tls_secret_name, "arc-watchdog-webhook-tls");
        assert_eq!(cli.tls_secret_namespace, None);
        assert_eq!(cli.tls_service_name, "arc-watchdog-webhook");
        assert_eq!(cli.tls_ca_validity, Duration::from_secs(43800 * 3600));
        assert_eq!(cli.tls_serving_validity, Duration::from_secs(2160 * 3600));
        cli.validate().unwrap();
    }

    #[test]
    fn self_managed_tls_flags() {
        let cli = Cli::try_parse_from([
            "x",
            "--watchdog-image=img",
            "--tls-mode=self-managed",
            "--tls-secret-namespace=arc-watchdog",
            "--tls-extra-sans=127.0.0.1,webhook.example.com",
            "--tls-ca-validity=90s",
            "--tls-serving-validity=30s",
        ])
        .unwrap();
        cli.validate().unwrap();
        assert_eq!(cli.tls_mode, TlsMode::SelfManaged);
        assert_eq!(cli.tls_namespace().unwrap(), "arc-watchdog");
        let policy = cli.tls_policy("arc-watchdog");
        assert_eq!(
            policy.names.dns,
            vec![
                "arc-watchdog-webhook.arc-watchdog.svc",
                "arc-watchdog-webhook.arc-watchdog.svc.cluster.local",
                "webhook.example.com",
            ]
        );
        assert_eq!(
            policy.names.ips,
            vec![std::net::IpAddr::from([127, 0, 0, 1])]
        );
        assert_eq!(policy.ca_validity, Duration::from_secs(90));
        for bad in [
            vec!["--tls-serving-validity=31s", "--tls-ca-validity=90s"],
            vec!["--tls-serving-validity=2s"],
            vec!["--tls-extra-sans=not a name"],
        ] {
            let mut args = vec!["x", "--watchdog-image=img", "--tls-mode=self-managed"];
            args.extend(bad.iter().copied());
            let cli = Cli::try_parse_from(&args).unwrap();
            assert!(cli.validate().is_err(), "{bad:?}");
        }
        // The files mode ignores the self-managed validities.
        let files = Cli::try_parse_from(["x", "--watchdog-image=img", "--tls-serving-validity=2s"])
            .unwrap();
        files.validate().unwrap();
        assert!(
            Cli::try_parse_from(["x", "--watchdog-image=img", "--tls-secret-name=Bad_Name"])
                .is_err()
        );
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
    fn server_limit_flags() {
        let cli = Cli::try_parse_from([
            "x",
            "--watchdog-image=img",
            "--max-connections=64",
            "--max-concurrent-streams=8",
            "--request-timeout=2s",
            "--header-read-timeout=3s",
            "--idle-timeout=1m",
            "--max-buffered-bytes=8388608",
        ])
        .unwrap();
        cli.validate().unwrap();
        let limits = cli.server_limits();
        assert_eq!(limits.max_connections, 64);
        assert_eq!(limits.max_concurrent_streams, 8);
        assert_eq!(limits.header_read_timeout, Duration::from_secs(3));
        assert_eq!(limits.idle_timeout, Duration::from_secs(60));
        assert_eq!(cli.request_timeout, Duration::from_secs(2));
        for bad in ["--max-connections=0", "--max-concurrent-streams=0"] {
            assert!(
                Cli::try_parse_from(["x", "--watchdog-image=img", bad]).is_err(),
                "{bad}"
            );
        }
        for bad in [
            "--max-buffered-bytes=1024",
            "--request-timeout=0s",
            "--idle-timeout=0s",
        ] {
            let cli = Cli::try_parse_from(["x", "--watchdog-image=img", bad]).unwrap();
            assert!(cli.validate().is_err(), "{bad}");
        }
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

    #[test]
    fn missing_listener_flags() {
        let cli = Cli::try_parse_from([
            "x",
            "--watchdog-image=img",
            "--report-missing-after=2m",
            "--runner-namespaces=arc-runners,team-b",
            "--delete-stuck-terminating-after=10m",
            "--missing-actions-dry-run=false",
            "--delete-stuck-terminating-budget=1",
        ])
        .unwrap();
        cli.validate().unwrap();
        assert_eq!(cli.report_missing_after, Duration::from_secs(120));
        assert_eq!(cli.runner_namespaces, vec!["arc-runners", "team-b"]);
        assert_eq!(cli.delete_stuck_terminating_after, Duration::from_secs(600));
        assert!(!cli.missing_actions_dry_run);
        assert_eq!(cli.delete_stuck_terminating_budget, 1);
        for bad in [
            vec![
                "--report-missing-after=0s",
                "--delete-stuck-terminating-after=1m",
            ],
            vec![
                "--delete-stuck-terminating-after=1m",
                "--delete-stuck-terminating-budget=0",
            ],
        ] {
            let mut args = vec!["x", "--watchdog-image=img"];
            args.extend(bad.iter().copied());
            let cli = Cli::try_parse_from(&args).unwrap();
            assert!(cli.validate().is_err(), "{bad:?}");
        }
        // Off by default, and off is valid without a budget.
        let off = Cli::try_parse_from([
            "x",
            "--watchdog-image=img",
            "--report-missing-after=0s",
            "--delete-stuck-terminating-budget=0",
        ])
        .unwrap();
        off.validate().unwrap();
    }
}
