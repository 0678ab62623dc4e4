//! Ending a pod's containers as the kubelet does: SIGTERM to each process
//! group, up to the grace period, then SIGKILL; regular containers before
//! sidecars; and, on deletion, the final delete with grace period 0.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Preconditions};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::lifecycle::PodChange;
use super::status::STATUS_RETRY;
use super::{Exit, PodRun, lock};

impl PodRun {
    pub(super) async fn stop_sidecars(
        &mut self,
        rx: &mut watch::Receiver<Option<Pod>>,
        exits: &mut mpsc::UnboundedReceiver<Exit>,
    ) {
        let grace = self.grace();
        let sidecars: Vec<usize> = (0..self.runs.len())
            .filter(|i| self.runs[*i].sidecar)
            .rev()
            .collect();
        self.stop_group(&sidecars, grace, rx, exits).await;
    }

    fn grace(&self) -> Duration {
        let secs = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| {
                self.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(30)
            .max(0);
        Duration::from_secs(u64::try_from(secs).unwrap_or(30))
    }

    /// SIGTERM to `which`, wait up to `grace` for them to exit, then SIGKILL.
    async fn stop_group(
        &mut self,
        which: &[usize],
        grace: Duration,
        _rx: &mut watch::Receiver<Option<Pod>>,
        exits: &mut mpsc::UnboundedReceiver<Exit>,
    ) {
        for i in which {
            if let Some(p) = self.procs.get(i) {
                let _ = signal_group(p.pid, "TERM").await;
            }
        }
        let deadline = Instant::now() + grace;
        while which.iter().any(|i| self.procs.contains_key(i)) {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                Some(e) = exits.recv() => { self.on_exit(&e); }
            }
        }
        for i in which {
            if let Some(p) = self.procs.get(i) {
                let _ = signal_group(p.pid, "KILL").await;
            }
        }
        while which.iter().any(|i| self.procs.contains_key(i)) {
            match tokio::time::timeout(Duration::from_secs(5), exits.recv()).await {
                Ok(Some(e)) => {
                    self.on_exit(&e);
                }
                _ => break,
            }
        }
    }

    /// Graceful termination on deletion, then the final delete.
    pub(super) async fn terminate(
        &mut self,
        rx: &mut watch::Receiver<Option<Pod>>,
        exits: &mut mpsc::UnboundedReceiver<Exit>,
    ) -> Result<()> {
        let grace = self.grace();
        self.ctx
            .event(&self.pod, None, format!("killing (grace {grace:?})"));
        let t0 = Instant::now();
        let regular: Vec<usize> = (0..self.runs.len())
            .filter(|i| !self.runs[*i].init)
            .collect();
        self.stop_group(&regular, grace, rx, exits).await;
        let rest = grace
            .saturating_sub(t0.elapsed())
            .max(Duration::from_secs(2));
        let inits: Vec<usize> = (0..self.runs.len())
            .filter(|i| self.runs[*i].init)
            .rev()
            .collect();
        self.stop_group(&inits, rest, rx, exits).await;
        self.write_status().await;
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&self.name, &dp).await {
            Ok(_) => self.ctx.event(&self.pod, None, "deleted".into()),
            Err(e) => tracing::debug!(error = %e, pod = %self.name, "kubelet: final delete"),
        }
        Ok(())
    }

    pub(super) async fn wait_deleted(
        &mut self,
        rx: &mut watch::Receiver<Option<Pod>>,
        exits: &mut mpsc::UnboundedReceiver<Exit>,
    ) -> Result<()> {
        loop {
            let r = tokio::select! {
                r = rx.changed() => r,
                () = tokio::time::sleep(STATUS_RETRY), if self.status_pending => {
                    self.write_status().await;
                    continue;
                }
            };
            match self.take_pod(r, rx) {
                PodChange::Gone => return Ok(()),
                PodChange::Deleting => return self.terminate(rx, exits).await,
                PodChange::Updated => {}
            }
        }
    }

    pub(super) async fn kill_all(&mut self, signal: &str) {
        for p in self.procs.values() {
            let _ = signal_group(p.pid, signal).await;
        }
        let mut pids = lock(&self.ctx.pids);
        pids.retain(|(pod, _), _| pod != &self.name);
    }
}

pub(super) async fn signal_group(pid: u32, signal: &str) -> Result<()> {
    let status = tokio::process::Command::new("kill")
        .args([format!("-{signal}"), "--".to_owned(), format!("-{pid}")])
        .stderr(Stdio::null())
        .status()
        .await
        .context("running kill")?;
    if !status.success() {
        bail!("kill -{signal} -{pid} failed ({status})");
    }
    Ok(())
}
