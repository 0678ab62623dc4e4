//! The start gate and the fail-open rule, as plain data (time passed in).
//!
//! `/startz` is the native sidecar's startupProbe: while it answers 503 the
//! kubelet holds the listener's start. The gate is closed only while a
//! backoff decided from observed data is pending; when the watchdog cannot
//! see (history not loaded, API unreachable, RBAC missing) it opens after
//! the fail-open grace, because the watchdog must never be the reason a
//! listener does not run.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;

/// Operations whose failure leaves the watchdog blind to its listener.
const BLIND_OPS: [&str; 2] = [OP_POD_WATCH, OP_LOG];

/// API operation: watching the own pod.
pub const OP_POD_WATCH: &str = "pod_watch";
/// API operation: reading one's own pod (`doctor`, pre-eviction check).
pub const OP_POD_GET: &str = "pod_get";
/// API operation: following the listener's log.
pub const OP_LOG: &str = "log";
/// API operation: reading the Lease.
pub const OP_LEASE_GET: &str = "lease_get";
/// API operation: updating the Lease.
pub const OP_LEASE_UPDATE: &str = "lease_update";
/// API operation: evicting the own pod.
pub const OP_EVICT: &str = "evict";
/// API operation: publishing an Event.
pub const OP_EVENT: &str = "event";

/// Answer of the start gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateAnswer {
    /// The listener may start (HTTP 200); the text says why.
    Open(String),
    /// The listener must wait (HTTP 503).
    Closed {
        /// Time left until the gate opens at the latest (the backoff, or
        /// the fail-open grace).
        remaining: Duration,
        /// Why the gate is closed.
        why: String,
    },
}

impl GateAnswer {
    /// Whether the listener may start.
    pub fn is_open(&self) -> bool {
        matches!(self, GateAnswer::Open(_))
    }
}

/// Failure state of one API operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpFailure {
    /// When the operation started failing (first failure after a success).
    pub since: Timestamp,
    /// The last error, for `/readyz` and logs.
    pub last_error: String,
}

/// What the gate and the readiness endpoint know.
#[derive(Debug, Clone)]
pub struct Gate {
    started: Timestamp,
    grace: Duration,
    dry_run: bool,
    history_loaded: bool,
    delay_until: Option<Timestamp>,
    pod_seen: bool,
    failures: BTreeMap<String, OpFailure>,
}

impl Gate {
    /// A gate for a watchdog that started at `started`.
    pub fn new(started: Timestamp, grace: Duration, dry_run: bool) -> Self {
        Self {
            started,
            grace,
            dry_run,
            history_loaded: false,
            delay_until: None,
            pod_seen: false,
            failures: BTreeMap::new(),
        }
    }

    /// The history is known (loaded from the Lease, or the Lease is missing
    /// or forbidden and the watchdog keeps its history in memory).
    pub fn set_history_loaded(&mut self) {
        self.history_loaded = true;
    }

    /// The detector's verdict: the listener must not start before `until`.
    pub fn set_delay_until(&mut self, until: Option<Timestamp>) {
        self.delay_until = until;
    }

    /// The pod watch delivered the own pod at least once.
    pub fn set_pod_seen(&mut self) {
        self.pod_seen = true;
    }

    /// Records a successful call of `op`: it is no longer failing.
    pub fn record_ok(&mut self, op: &str) {
        self.failures.remove(op);
    }

    /// Records a failed call of `op` at `now`.
    pub fn record_error(&mut self, op: &str, error: String, now: Timestamp) {
        self.failures
            .entry(op.to_owned())
            .and_modify(|f| f.last_error.clone_from(&error))
            .or_insert(OpFailure {
                since: now,
                last_error: error,
            });
    }

    /// Operations failing now, with their state.
    pub fn failures(&self) -> &BTreeMap<String, OpFailure> {
        &self.failures
    }

    /// Whether the watchdog fails open at `now`: it has been blind for
    /// longer than the grace, or could not learn its history within it.
    pub fn fail_open(&self, now: Timestamp) -> bool {
        let blind_too_long = BLIND_OPS.iter().any(|op| {
            self.failures
                .get(*op)
                .is_some_and(|f| elapsed(f.since, now) >= self.grace)
        });
        let not_loaded_in_time = !self.history_loaded && elapsed(self.started, now) >= self.grace;
        blind_too_long || not_loaded_in_time
    }

    /// The start gate's answer at `now`.
    pub fn answer(&self, now: Timestamp) -> GateAnswer {
        if self.dry_run {
            return GateAnswer::Open("dry run: starts are never delayed".to_owned());
        }
        if self.fail_open(now) {
            return GateAnswer::Open(
                "failing open: the watchdog cannot see its listener".to_owned(),
            );
        }
        if !self.history_loaded {
            let remaining = self.grace.saturating_sub(elapsed(self.started, now));
            return GateAnswer::Closed {
                remaining,
                why: "loading history".to_owned(),
            };
        }
        match self.delay_until {
            Some(until) if until > now => GateAnswer::Closed {
                remaining: elapsed(now, until),
                why: "backoff pending".to_owned(),
            },
            _ => GateAnswer::Open("no backoff pending".to_owned()),
        }
    }

    /// Remaining start delay at `now` (zero when the gate is open).
    pub fn start_delay(&self, now: Timestamp) -> Duration {
        match self.answer(now) {
            GateAnswer::Open(_) => Duration::ZERO,
            GateAnswer::Closed { remaining, .. } => remaining,
        }
    }

    /// Readiness: the pod has been seen and no API operation is failing.
    /// `Err` carries the reason for `/readyz`.
    pub fn ready(&self) -> Result<(), String> {
        if let Some((op, f)) = self.failures.iter().next() {
            return Err(format!("API operation {op} failing: {}", f.last_error));
        }
        if !self.pod_seen {
            return Err("own pod not seen yet".to_owned());
        }
        Ok(())
    }
}

/// Time from `from` to `to`, zero if `to` is earlier.
pub fn elapsed(from: Timestamp, to: Timestamp) -> Duration {
    Duration::try_from(to.duration_since(from)).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    #[test]
    fn closed_while_loading_then_open_after_grace() {
        let g = Gate::new(t(0), Duration::from_secs(20), false);
        assert_eq!(
            g.answer(t(5)),
            GateAnswer::Closed {
                remaining: Duration::from_secs(15),
                why: "loading history".into()
            }
        );
        assert!(g.answer(t(20)).is_open());
        assert!(g.fail_open(t(20)));
    }

    #[test]
    fn backoff_closes_until_deadline() {
        let mut g = Gate::new(t(0), Duration::from_secs(20), false);
        g.set_history_loaded();
        g.set_delay_until(Some(t(60)));
        assert_eq!(g.start_delay(t(30)), Duration::from_secs(30));
        assert!(g.answer(t(60)).is_open());
    }

    #[test]
    fn blind_longer_than_grace_opens_a_pending_backoff() {
        let mut g = Gate::new(t(0), Duration::from_secs(20), false);
        g.set_history_loaded();
        g.set_delay_until(Some(t(600)));
        g.record_error(OP_POD_WATCH, "connection refused".into(), t(10));
        assert!(!g.answer(t(29)).is_open());
        assert!(g.answer(t(30)).is_open());
        g.record_ok(OP_POD_WATCH);
        assert!(!g.answer(t(31)).is_open());
    }

    #[test]
    fn lease_errors_do_not_fail_open_but_unready() {
        let mut g = Gate::new(t(0), Duration::from_secs(20), false);
        g.set_history_loaded();
        g.set_pod_seen();
        assert!(g.ready().is_ok());
        g.record_error(OP_LEASE_UPDATE, "403".into(), t(1));
        assert!(!g.fail_open(t(100)));
        assert!(g.ready().unwrap_err().contains("lease_update"));
    }

    #[test]
    fn dry_run_never_delays() {
        let mut g = Gate::new(t(0), Duration::from_secs(20), true);
        g.set_history_loaded();
        g.set_delay_until(Some(t(600)));
        assert!(g.answer(t(1)).is_open());
    }
}
