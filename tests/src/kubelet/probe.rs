//! Native sidecars' startup probes: a sidecar counts as started (and the
//! next container may start) once its `httpGet` startupProbe answers; it
//! is restarted when it exits or the probe keeps failing.
//!
//! Timing as the kubelet's prober worker has it (`pkg/kubelet/prober/
//! worker.go`): no probe before `initialDelaySeconds` have passed since the
//! container started, then one every `periodSeconds` on a fixed-rate ticker
//! (ticks missed while a probe ran: the first runs at once, the others are
//! dropped, as with Go's `time.Ticker`), each given
//! `timeoutSeconds`; Kubernetes' defaults where the spec has none. What the
//! real kubelet adds on top is not modelled: it sees a container running
//! only after its next relist of the runtime (up to a second), and its
//! ticker's phase is that of the pod's admission.

use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::lifecycle::{PodChange, Step};
use super::termination::signal_group;
use super::{Exit, PodRun};

impl PodRun {
    /// Polls a native sidecar's startupProbe until it succeeds; restarts the
    /// container when it exits or the probe's failure threshold is reached.
    pub(super) async fn await_startup(
        &mut self,
        i: usize,
        rx: &mut watch::Receiver<Option<Pod>>,
        exits: &mut mpsc::UnboundedReceiver<Exit>,
    ) -> Result<Step> {
        let spec = self.specs[i].clone();
        let Some(probe) = spec.startup_probe.clone() else {
            self.runs[i].started = true;
            return Ok(Step::Done);
        };
        let timing = ProbeTiming::of(&probe);
        let mut failures = 0;
        // `tick`: the ticker's tick the next probe belongs to; `next`:
        // when that probe runs (later than its tick when it was missed).
        let mut tick = Instant::now() + timing.initial_delay;
        let mut next = tick;
        loop {
            tokio::select! {
                r = rx.changed() => {
                    if self.take_pod(r, rx) != PodChange::Updated {
                        return Ok(Step::Deleted);
                    }
                }
                Some(e) = exits.recv() => {
                    if e.index == i && self.on_exit(&e) {
                        return Ok(Step::Retry);
                    }
                }
                () = tokio::time::sleep_until(next) => {
                    let ok = tokio::time::timeout(timing.timeout, http_probe(&probe, &spec))
                        .await
                        .unwrap_or(false);
                    if ok {
                        self.runs[i].started = true;
                        self.ctx.event(&self.pod, Some(&spec.name), "probe-ok".into());
                        self.write_status().await;
                        return Ok(Step::Done);
                    }
                    failures += 1;
                    if failures >= timing.failure_threshold {
                        self.ctx.event(&self.pod, Some(&spec.name), "startup probe failed: killing".into());
                        if let Some(p) = self.procs.get(&i) {
                            let _ = signal_group(p.pid, "KILL").await;
                        }
                        failures = 0;
                    }
                    (next, tick) = timing.next_probe(tick, Instant::now());
                }
            }
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
