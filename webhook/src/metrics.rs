//! The webhook's Prometheus metrics (`arc_watchdog_webhook_*`).

use std::sync::atomic::AtomicI64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::review::Outcome;

/// Labels of the reviews counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReviewLabels {
    /// `injected`, `skipped` or `error`.
    pub outcome: &'static str,
    /// Mode for `injected`, reason for the others.
    pub reason: &'static str,
}

/// Labels of the reload and RBAC counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// How it ended.
    pub result: &'static str,
}

/// Labels of the self-managed TLS changes counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChangeLabels {
    /// What changed in the TLS Secret (`fresh`, `issue_serving`, ...).
    pub change: &'static str,
}

/// Labels of the missing listeners gauge.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MissingLabels {
    /// Why the listener is missing (`no_autoscaling_listener`, ...).
    pub reason: &'static str,
}

/// Labels of the connection timeouts counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// `handshake`, `header` or `idle`.
    pub phase: &'static str,
}

/// All webhook metrics, registered in one registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reviews: Family<ReviewLabels, Counter>,
    latency: Histogram,
    cert_expiry: Gauge<i64, AtomicI64>,
    cert_reloads: Family<ResultLabels, Counter>,
    self_tls_changes: Family<ChangeLabels, Counter>,
    rbac_ensures: Family<ResultLabels, Counter>,
    native_sidecars: Gauge<i64, AtomicI64>,
    uninjected_listeners: Gauge<i64, AtomicI64>,
    uninjected_reports: Family<ResultLabels, Counter>,
    coverage_watch_errors: Counter,
    blocked_listeners: Gauge<i64, AtomicI64>,
    suspended_listeners: Gauge<i64, AtomicI64>,
    injection_suspensions: Counter,
    blocked_action_errors: Counter,
    missing_listeners: Family<MissingLabels, Gauge<i64, AtomicI64>>,
    missing_reports: Family<ResultLabels, Counter>,
    missing_watch_errors: Counter,
    stuck_pod_deletions: Family<ResultLabels, Counter>,
    open_connections: Gauge<i64, AtomicI64>,
    connections_refused: Counter,
    connection_timeouts: Family<PhaseLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("arc_watchdog_webhook");
        let reviews = Family::<ReviewLabels, Counter>::default();
        registry.register(
            "reviews",
            "Admission reviews handled, by outcome (injected, skipped, error) and reason",
            reviews.clone(),
        );
        let latency = Histogram::new([
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ]);
        registry.register(
            "review_duration_seconds",
            "Time to handle one admission review",
            latency.clone(),
        );
        let cert_expiry = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "notAfter of the serving certificate in use, as a Unix timestamp",
            cert_expiry.clone(),
        );
        let cert_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "certificate_reloads",
            "Serving certificate reloads after the files changed, by result (ok, error)",
            cert_reloads.clone(),
        );
        let self_tls_changes = Family::<ChangeLabels, Counter>::default();
        registry.register(
            "self_managed_tls_changes",
            "Changes this replica wrote to the self-managed TLS Secret, by change (fresh: a new CA; add_next_ca, promote_next_ca, drop_previous_ca: a CA rotation; issue_serving: a renewed serving certificate)",
            self_tls_changes.clone(),
        );
        let rbac_ensures = Family::<ResultLabels, Counter>::default();
        registry.register(
            "rbac_ensures",
            "Reconciles of a listener's Role/RoleBinding/Lease from its AutoscalingListener, by result (ok; foreign: an object of that name is not arc-watchdog's; invalid: the listener's name makes no valid object name; conflict: lost a write race, retried; error)",
            rbac_ensures.clone(),
        );
        let native_sidecars = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "native_sidecars",
            "1 when the webhook injects native sidecars, 0 for classic",
            native_sidecars.clone(),
        );
        let uninjected_listeners = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "uninjected_listeners",
            "ARC listener pods in --listener-namespaces that run without the arc-watchdog \
             sidecar and did not opt out (created while the webhook was down or not installed)",
            uninjected_listeners.clone(),
        );
        let uninjected_reports = Family::<ResultLabels, Counter>::default();
        registry.register(
            "uninjected_reports",
            "Warning Events (reason ListenerNotInjected) about uninjected listener pods, \
             by result (created, already_reported, error)",
            uninjected_reports.clone(),
        );
        let coverage_watch_errors = Counter::default();
        registry.register(
            "coverage_watch_errors",
            "Failed list/watch calls on listener pods (retried with backoff; RBAC missing or API down)",
            coverage_watch_errors.clone(),
        );
        let blocked_listeners = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "blocked_listeners",
            "Listener pods kept from starting for --blocked-after or longer by a native watchdog \
             that cannot start (image not pulled, crashing, not created), not yet released",
            blocked_listeners.clone(),
        );
        let suspended_listeners = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "suspended_listeners",
            "Listener pods that run without the watchdog because injection was suspended for \
             their listener (its watchdog could not start)",
            suspended_listeners.clone(),
        );
        let injection_suspensions = Counter::default();
        registry.register(
            "injection_suspensions",
            "Listener pods held by a watchdog that cannot start that were evicted, with \
             injection suspended for their listener",
            injection_suspensions.clone(),
        );
        let blocked_action_errors = Counter::default();
        registry.register(
            "blocked_action_errors",
            "Failed attempts to suspend injection for, or evict, a listener held by a watchdog \
             that cannot start (retried)",
            blocked_action_errors.clone(),
        );
        let missing_listeners = Family::<MissingLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "missing_listeners",
            "Scale sets (AutoscalingRunnerSets) without a running listener for \
             --report-missing-after or longer, by reason (no_autoscaling_listener, no_pod, \
             pod_pending, terminating_on_not_ready_node, pod_ended)",
            missing_listeners.clone(),
        );
        // Every reason is exported from the start, so that a 0 is a 0 and
        // not an absent series.
        for reason in crate::missing::Missing::ALL {
            missing_listeners
                .get_or_create(&MissingLabels {
                    reason: reason.as_str(),
                })
                .set(0);
        }
        let missing_reports = Family::<ResultLabels, Counter>::default();
        registry.register(
            "missing_reports",
            "Warning Events (reason ListenerMissing) about scale sets without a running \
             listener, by result (created, already_reported, error)",
            missing_reports.clone(),
        );
        let missing_watch_errors = Counter::default();
        registry.register(
            "missing_watch_errors",
            "Failed list/watch calls on AutoscalingRunnerSets, AutoscalingListeners, listener \
             pods or nodes for the missing-listener report (retried with backoff)",
            missing_watch_errors.clone(),
        );
        let stuck_pod_deletions = Family::<ResultLabels, Counter>::default();
        registry.register(
            "stuck_pod_deletions",
            "Force-deletions of listener pods stuck Terminating on a NotReady node \
             (--delete-stuck-terminating-after), by result (deleted, dry_run, gone, \
             budget_exhausted, error)",
            stuck_pod_deletions.clone(),
        );
        let open_connections = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "open_connections",
            "TLS connections open on --listen (at most --max-connections)",
            open_connections.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "connections_refused",
            "TLS connections closed on accept because --max-connections were open",
            connections_refused.clone(),
        );
        let connection_timeouts = Family::<PhaseLabels, Counter>::default();
        registry.register(
            "connection_timeouts",
            "TLS connections closed for taking too long, by phase (handshake; header: \
             an HTTP/1 request head not complete within --header-read-timeout, idle \
             keep-alive included; idle: no request in flight for --idle-timeout)",
            connection_timeouts.clone(),
        );
        Self {
            registry,
            reviews,
            latency,
            cert_expiry,
            cert_reloads,
            self_tls_changes,
            rbac_ensures,
            native_sidecars,
            uninjected_listeners,
            uninjected_reports,
            coverage_watch_errors,
            blocked_listeners,
            suspended_listeners,
            injection_suspensions,
            blocked_action_errors,
            missing_listeners,
            missing_reports,
            missing_watch_errors,
            stuck_pod_deletions,
            open_connections,
            connections_refused,
            connection_timeouts,
        }
    }

    /// Counts one review and its handling time.
    pub fn observe_review(&self, outcome: &Outcome, elapsed: Duration) {
        self.reviews
            .get_or_create(&ReviewLabels {
                outcome: outcome.outcome(),
                reason: outcome.reason(),
            })
            .inc();
        self.latency.observe(elapsed.as_secs_f64());
    }

    /// Sets the expiry of the certificate in use.
    pub fn set_cert_expiry(&self, unix_seconds: i64) {
        self.cert_expiry.set(unix_seconds);
    }

    /// Counts a certificate reload attempt.
    pub fn cert_reload(&self, result: &'static str) {
        self.cert_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Counts a change written to the self-managed TLS Secret.
    pub fn self_tls_change(&self, change: &'static str) {
        self.self_tls_changes
            .get_or_create(&ChangeLabels { change })
            .inc();
    }

    /// Counts an RBAC ensure.
    pub fn rbac_ensure(&self, result: &'static str) {
        self.rbac_ensures
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Records whether native sidecars are in use.
    pub fn set_native(&self, native: bool) {
        self.native_sidecars.set(i64::from(native));
    }

    /// Sets the number of listener pods running without the watchdog.
    pub fn set_uninjected_listeners(&self, count: usize) {
        self.uninjected_listeners
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Counts one attempt to report an uninjected listener pod.
    pub fn uninjected_report(&self, result: &'static str) {
        self.uninjected_reports
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Counts a failed list/watch of listener pods.
    pub fn coverage_watch_error(&self) {
        self.coverage_watch_errors.inc();
    }

    /// Sets the number of listener pods held by a watchdog that cannot start.
    pub fn set_blocked_listeners(&self, count: usize) {
        self.blocked_listeners
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Sets the number of listener pods running with injection suspended.
    pub fn set_suspended_listeners(&self, count: usize) {
        self.suspended_listeners
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Counts one listener pod released (evicted, injection suspended).
    pub fn injection_suspension(&self) {
        self.injection_suspensions.inc();
    }

    /// Counts one failed attempt to release a held listener.
    pub fn blocked_action_error(&self) {
        self.blocked_action_errors.inc();
    }

    /// Sets the number of scale sets missing their listener for `reason`.
    pub fn set_missing_listeners(&self, reason: &'static str, count: usize) {
        self.missing_listeners
            .get_or_create(&MissingLabels { reason })
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Counts one attempt to report a missing listener.
    pub fn missing_report(&self, result: &'static str) {
        self.missing_reports
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Counts a failed list/watch of the missing-listener report.
    pub fn missing_watch_error(&self) {
        self.missing_watch_errors.inc();
    }

    /// Counts one force-deletion of a stuck listener pod, by result.
    pub fn stuck_pod_deletion(&self, result: &'static str) {
        self.stuck_pod_deletions
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Counts a connection taking a slot under `--max-connections`.
    pub fn connection_opened(&self) {
        self.open_connections.inc();
    }

    /// Counts a connection giving its slot back.
    pub fn connection_closed(&self) {
        self.open_connections.dec();
    }

    /// Counts a connection closed on accept (`--max-connections` open).
    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    /// Counts a connection closed for taking too long in `phase`.
    pub fn connection_timeout(&self, phase: &'static str) {
        self.connection_timeouts
            .get_or_create(&PhaseLabels { phase })
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}
