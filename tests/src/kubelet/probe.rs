//! Native sidecars' startup probes: a sidecar counts as started (and the
//! next container may start) once its `httpGet` startupProbe answers; it
//! is restarted when it exits or the probe keeps failing.

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
        let period = Duration::from_secs(
            u64::try_from(probe.period_seconds.unwrap_or(10).max(1)).unwrap_or(10),
        );
        let initial = Duration::from_secs(
            u64::try_from(probe.initial_delay_seconds.unwrap_or(0).max(0)).unwrap_or(0),
        );
        let threshold = probe.failure_threshold.unwrap_or(3).max(1);
        let mut failures = 0;
        let mut next = Instant::now() + initial;
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
                    if http_probe(&probe, &spec).await {
                        self.runs[i].started = true;
                        self.ctx.event(&self.pod, Some(&spec.name), "probe-ok".into());
                        self.write_status().await;
                        return Ok(Step::Done);
                    }
                    failures += 1;
                    if failures >= threshold {
                        self.ctx.event(&self.pod, Some(&spec.name), "startup probe failed: killing".into());
                        if let Some(p) = self.procs.get(&i) {
                            let _ = signal_group(p.pid, "KILL").await;
                        }
                        failures = 0;
                    }
                    next = Instant::now() + period;
                }
            }
        }
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
