//! Native sidecars' startup: a sidecar counts as started (and the next
//! container may start) once the kubelet has seen it running and, when it
//! has an `httpGet` startupProbe, once that answers; it is restarted when it
//! exits or the probe keeps failing.
//!
//! Timing as the kubelet has it. It sees a container running (or exited)
//! only at its next relist of the runtime, once every [`RELIST_PERIOD`] on
//! a grid of its own (`pkg/kubelet/pleg/generic.go`); a sidecar without a
//! probe is started from then. The prober worker (`pkg/kubelet/prober/
//! worker.go`) starts with the pod's admission: one probe at once, then one
//! every `periodSeconds` on a fixed-rate ticker (ticks missed while a probe
//! ran: the first runs at once, the others are dropped, as with Go's
//! `time.Ticker`), each given `timeoutSeconds`. A tick before the container
//! was seen running, or before `initialDelaySeconds` have passed since it
//! started, probes nothing. Kubernetes' defaults where the spec has none.

use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::lifecycle::{Step, Waited};
use super::termination::signal_group;
use super::{Exit, PodRun};

/// How often the kubelet relists the container runtime (the generic
/// PLEG's `relistPeriod`): a container's start or exit is seen, and acted
/// on, at the next relist.
pub(super) const RELIST_PERIOD: Duration = Duration::from_secs(1);

/// The first relist at or after `now`, on the grid that started at
/// `origin` (the kubelet's start).
pub(super) fn next_relist(origin: Instant, now: Instant) -> Instant {
    let since = now.saturating_duration_since(origin);
    let period = RELIST_PERIOD.as_nanos();
    let relists = since.as_nanos().div_ceil(period);
    let offset = u64::try_from(relists * period).unwrap_or(u64::MAX);
    origin + Duration::from_nanos(offset)
}

impl PodRun {
    /// Waits until a just started native sidecar counts as started: the
    /// next relist, then (with a startupProbe) the first probe that
    /// succeeds. Restarts the container when it exits or the probe's
    /// failure threshold is reached.
    pub(super) async fn await_startup(
        &mut self,
        i: usize,
        rx: &mut watch::Receiver<Option<Pod>>,
        exits: &mut mpsc::UnboundedReceiver<Exit>,
    ) -> Result<Step> {
        let spec = self.specs[i].clone();
        let started = Instant::now();
        let seen = next_relist(self.ctx.relist_origin, started);
        let Some(probe) = spec.startup_probe.clone() else {
            // Started once seen running (its status says so from its start).
            return Ok(match self.wait_on(i, Some(seen), rx, exits).await {
                Waited::Gone => Step::Deleted,
                Waited::Exited(_) => Step::Retry,
                Waited::Due => Step::Done,
            });
        };
        let timing = ProbeTiming::of(&probe);
        let mut failures = 0;
        // `tick`: the ticker's tick the next probe belongs to; `next`:
        // when that probe runs (later than its tick when it was missed).
        let mut tick = timing.first_tick(self.admitted, seen.max(started + timing.initial_delay));
        let mut next = tick;
        loop {
            match self.wait_on(i, Some(next), rx, exits).await {
                Waited::Gone => return Ok(Step::Deleted),
                Waited::Exited(_) => return Ok(Step::Retry),
                Waited::Due => {}
            }
            let ok = tokio::time::timeout(timing.timeout, http_probe(&probe, &spec))
                .await
                .unwrap_or(false);
            if ok {
                self.runs[i].started = true;
                self.ctx
                    .event(&self.pod, Some(&spec.name), "probe-ok".into());
                self.write_status().await;
                return Ok(Step::Done);
            }
            failures += 1;
            if failures >= timing.failure_threshold {
                self.ctx.event(
                    &self.pod,
                    Some(&spec.name),
                    "startup probe failed: killing".into(),
                );
                if let Some(p) = self.procs.get(&i) {
                    let _ = signal_group(p.pid, "KILL").await;
                }
                failures = 0;
            }
            (next, tick) = timing.next_probe(tick, Instant::now());
        }
    }
}

/// When and how a probe runs, from its spec with Kubernetes' defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProbeTiming {
    /// `initialDelaySeconds` (default 0).
    initial_delay: Duration,
    /// `periodSeconds` (default 10, at least 1).
    period: Duration,
    /// `timeoutSeconds` (default 1, at least 1).
    timeout: Duration,
    /// `failureThreshold` (default 3, at least 1).
    failure_threshold: i32,
}

impl ProbeTiming {
    fn of(probe: &Probe) -> Self {
        let secs = |v: Option<i32>, default: u64, least: u64| {
            Duration::from_secs(
                v.map_or(default, |v| u64::try_from(v).unwrap_or(0))
                    .max(least),
            )
        };
        Self {
            initial_delay: secs(probe.initial_delay_seconds, 0, 0),
            period: secs(probe.period_seconds, 10, 1),
            timeout: secs(probe.timeout_seconds, 1, 1),
            failure_threshold: probe.failure_threshold.unwrap_or(3).max(1),
        }
    }

    /// The first tick, at or after `earliest`, of the ticker that started
    /// with the pod's admission at `admitted` (its first tick).
    fn first_tick(&self, admitted: Instant, earliest: Instant) -> Instant {
        let since = earliest.saturating_duration_since(admitted);
        let period = self.period.as_nanos();
        let ticks = since.as_nanos().div_ceil(period);
        admitted + Duration::from_nanos(u64::try_from(ticks * period).unwrap_or(u64::MAX))
    }

    /// After the probe of tick `tick` ended at `now`: when the next probe
    /// runs, and the tick it belongs to. Ticks come at a fixed rate; as with
    /// Go's `time.Ticker` (a channel of one), the first tick missed while
    /// the probe ran is delivered at once and the others are dropped.
    fn next_probe(&self, tick: Instant, now: Instant) -> (Instant, Instant) {
        let following = tick + self.period;
        if following > now {
            return (following, following);
        }
        let mut last = following;
        while last + self.period <= now {
            last += self.period;
        }
        (now, last)
    }
}

async fn http_probe(probe: &Probe, c: &Container) -> bool {
    let Some(get) = &probe.http_get else {
        // Only httpGet probes are run; anything else counts as passing.
        return true;
    };
    let port = match &get.port {
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p) => u16::try_from(*p).ok(),
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    };
    let Some(port) = port else { return false };
    let path = get.path.clone().unwrap_or_else(|| "/".into());
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    matches!(crate::control_plane::http_get(addr, &path).await, Ok((s, _)) if (200..400).contains(&s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_defaults_apply_where_the_spec_is_silent() {
        let t = ProbeTiming::of(&Probe::default());
        assert_eq!(t.initial_delay, Duration::ZERO);
        assert_eq!(t.period, Duration::from_secs(10));
        assert_eq!(t.timeout, Duration::from_secs(1));
        assert_eq!(t.failure_threshold, 3);
        let t = ProbeTiming::of(&Probe {
            initial_delay_seconds: Some(2),
            period_seconds: Some(1),
            timeout_seconds: Some(0),
            failure_threshold: Some(680),
            ..Probe::default()
        });
        assert_eq!(t.initial_delay, Duration::from_secs(2));
        assert_eq!(t.period, Duration::from_secs(1));
        assert_eq!(t.timeout, Duration::from_secs(1));
        assert_eq!(t.failure_threshold, 680);
    }

    #[test]
    fn the_kubelet_sees_a_container_at_its_next_relist() {
        let origin = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(next_relist(origin, origin), origin);
        assert_eq!(next_relist(origin, origin + ms(1)), origin + ms(1000));
        assert_eq!(next_relist(origin, origin + ms(999)), origin + ms(1000));
        assert_eq!(next_relist(origin, origin + ms(1000)), origin + ms(1000));
        assert_eq!(next_relist(origin, origin + ms(3001)), origin + ms(4000));
    }

    #[test]
    fn the_first_probe_is_on_the_ticker_of_the_pods_admission() {
        let t = ProbeTiming::of(&Probe {
            period_seconds: Some(2),
            ..Probe::default()
        });
        let admitted = Instant::now();
        let ms = Duration::from_millis;
        // The worker probes at once on admission, then every period: the
        // first tick that can see the container is the one at or after it
        // was seen running.
        assert_eq!(t.first_tick(admitted, admitted), admitted);
        assert_eq!(
            t.first_tick(admitted, admitted + ms(3100)),
            admitted + ms(4000)
        );
        assert_eq!(
            t.first_tick(admitted, admitted + ms(4000)),
            admitted + ms(4000)
        );
        assert_eq!(
            t.first_tick(admitted, admitted + ms(1)),
            admitted + ms(2000)
        );
    }

    #[test]
    fn probes_tick_at_a_fixed_rate_and_drop_missed_ticks() {
        let t = ProbeTiming::of(&Probe {
            period_seconds: Some(1),
            ..Probe::default()
        });
        let start = Instant::now();
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        // A quick probe: the next one is a period after its tick, not a
        // period after it ended.
        assert_eq!(
            t.next_probe(start, start + ms(30)),
            (start + s(1), start + s(1))
        );
        // A probe that ran past two ticks: the first runs at once, the
        // second is dropped, and the rate goes on from the last tick.
        let late = start + ms(2500);
        assert_eq!(t.next_probe(start, late), (late, start + s(2)));
        assert_eq!(
            t.next_probe(start + s(2), late + ms(30)),
            (start + s(3), start + s(3))
        );
        // Ending exactly on a tick: that tick is delivered at once.
        assert_eq!(
            t.next_probe(start, start + s(1)),
            (start + s(1), start + s(1))
        );
    }
}
