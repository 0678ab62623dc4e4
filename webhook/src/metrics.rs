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

/// All webhook metrics, registered in one registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reviews: Family<ReviewLabels, Counter>,
    latency: Histogram,
    cert_expiry: Gauge<i64, AtomicI64>,
    cert_reloads: Family<ResultLabels, Counter>,
    rbac_ensures: Family<ResultLabels, Counter>,
    native_sidecars: Gauge<i64, AtomicI64>,
    uninjected_listeners: Gauge<i64, AtomicI64>,
    uninjected_reports: Family<ResultLabels, Counter>,
    coverage_watch_errors: Counter,
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
            "Time to handle one admission review, including the bounded RBAC ensure",
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
        let rbac_ensures = Family::<ResultLabels, Counter>::default();
        registry.register(
            "rbac_ensures",
            "Per-listener Role/RoleBinding/Lease ensures, by result (ok, no_owner, foreign, error, timeout)",
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
        Self {
            registry,
            reviews,
            latency,
            cert_expiry,
            cert_reloads,
            rbac_ensures,
            native_sidecars,
            uninjected_listeners,
            uninjected_reports,
            coverage_watch_errors,
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

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}
