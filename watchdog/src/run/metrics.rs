//! Prometheus metrics of `arc-watchdog run`, prefixed `arc_watchdog_`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Label set naming a reason (an Event reason or an eviction reason).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// The reason, as in the Kubernetes Event.
    pub reason: String,
}

/// Label set naming an API operation (`pod_get`, `pod_watch`, `log`,
/// `lease_get`, `lease_update`, `evict`, `event`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    /// The API operation that failed.
    pub op: String,
}

/// Label set naming why Kubernetes Events were dropped.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabel {
    /// `queue_full` (the publisher fell behind), `shutdown_bound` (still
    /// queued or in flight when the shutdown bound was reached),
    /// `publisher_stopped` (the publisher had ended).
    pub why: String,
}

/// Label set naming what became of an eviction that was not accepted.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `not_sent` (dry run, failing open, another one under way), `moot`
    /// (the pod is terminating or replaced, or its listener runs again),
    /// `blocked` (a PodDisruptionBudget), `failed` (an API or RBAC error),
    /// `cancelled` (shutdown).
    pub outcome: String,
}

/// Label set of a version warning.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionWarningLabel {
    /// The ARC version seen on the pod (label or image tag).
    pub version: String,
    /// Short name of the known gap (`no_session_delete_on_exit`,
    /// `dead_listener_not_noticed`).
    pub warning: String,
}

/// Every metric the sidecar exports. Cheap to clone (shared handles).
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// `arc_watchdog_session_conflicts_total`: session conflicts seen in the
    /// listener's output.
    pub session_conflicts: Counter,
    /// `arc_watchdog_evictions_total{reason}`: evictions the API accepted
    /// (dry-run evictions are not counted).
    pub evictions: Family<ReasonLabel, Counter>,
    /// `arc_watchdog_evictions_not_accepted_total{outcome}`: evictions the
    /// detector decided that the API server did not accept; they do not
    /// count against the eviction budget.
    pub evictions_not_accepted: Family<OutcomeLabel, Counter>,
    /// `arc_watchdog_decisions_total{reason}`: every decision reported as an
    /// Event, by Event reason.
    pub decisions: Family<ReasonLabel, Counter>,
    /// `arc_watchdog_events_dropped_total{why}`: Kubernetes Events decided
    /// but never published (the decision is still in the log).
    pub events_dropped: Family<DropLabel, Counter>,
    /// `arc_watchdog_loop_active`: 1 while a conflict or crash loop is active.
    pub loop_active: Gauge,
    /// `arc_watchdog_start_delay_seconds`: remaining delay of the listener's
    /// next start (0 when the start gate is open).
    pub start_delay_seconds: Gauge<f64, AtomicU64>,
    /// `arc_watchdog_listener_restarts_total`: listener container runs that
    /// ended while this watchdog watched.
    pub listener_restarts: Counter,
    /// `arc_watchdog_api_errors_total{op}`: failed Kubernetes API calls.
    pub api_errors: Family<OpLabel, Counter>,
    /// `arc_watchdog_fail_open`: 1 while the watchdog cannot see (API
    /// unreachable, RBAC missing) and has opened the start gate.
    pub fail_open: Gauge,
    /// `arc_watchdog_version_warning{version,warning}`: 1 for each known gap
    /// of the listener's ARC version.
    pub version_warning: Family<VersionWarningLabel, Gauge>,
}

impl Metrics {
    /// Registers every metric under the `arc_watchdog` prefix.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "session_conflicts",
            "Session conflicts seen in the listener's output",
            self.session_conflicts.clone(),
        );
        registry.register(
            "evictions",
            "Evictions of the listener pod accepted by the API server, by reason",
            self.evictions.clone(),
        );
        registry.register(
            "evictions_not_accepted",
            "Evictions decided but not accepted by the API server (not counted against the budget), by outcome",
            self.evictions_not_accepted.clone(),
        );
        registry.register(
            "decisions",
            "Decisions reported as Kubernetes Events, by reason",
            self.decisions.clone(),
        );
        registry.register(
            "events_dropped",
            "Kubernetes Events decided but never published, by why",
            self.events_dropped.clone(),
        );
        registry.register(
            "loop_active",
            "1 while a session-conflict or start-up crash loop is active",
            self.loop_active.clone(),
        );
        registry.register(
            "start_delay_seconds",
            "Remaining delay of the listener's next start (0: start gate open)",
            self.start_delay_seconds.clone(),
        );
        registry.register(
            "listener_restarts",
            "Listener container runs that ended while the watchdog watched",
            self.listener_restarts.clone(),
        );
        registry.register(
            "api_errors",
            "Failed Kubernetes API calls, by operation",
            self.api_errors.clone(),
        );
        registry.register(
            "fail_open",
            "1 while the watchdog cannot see its listener and fails open",
            self.fail_open.clone(),
        );
        registry.register(
            "version_warning",
            "1 for each known gap of the listener's ARC version",
            self.version_warning.clone(),
        );
    }

    /// A fresh registry (prefix `arc_watchdog`) holding these metrics.
    pub fn registry(&self) -> Registry {
        let mut registry = Registry::with_prefix("arc_watchdog");
        self.register(&mut registry);
        registry
    }

    /// Counts one decided eviction that was not accepted, by `outcome`.
    pub fn eviction_not_accepted(&self, outcome: &str) {
        self.evictions_not_accepted
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Counts `n` Kubernetes Events dropped for `why`.
    pub fn drop_events(&self, why: &str, n: u64) {
        self.events_dropped
            .get_or_create(&DropLabel {
                why: why.to_owned(),
            })
            .inc_by(n);
    }

    /// Counts one failed API call of operation `op`.
    pub fn api_error(&self, op: &str) {
        self.api_errors
            .get_or_create(&OpLabel { op: op.to_owned() })
            .inc();
    }
}
