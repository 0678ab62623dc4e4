//! One pod's run, as a state machine: init containers one by one (a native
//! sidecar counts once its startup probe passes), then the regular
//! containers together; exits, `restartPolicy` and the crash-loop back-off;
//! and what a change of the pod (an update, a deletion) means for the run.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::ResourceExt as _;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::probe::next_relist;
use super::status::STATUS_RETRY;
use anyhow::Result;

use super::{ContainerRun, ContainerState, Ctx, Exit, PodRun, lock};

pub(super) async fn run_pod(ctx: Ctx, mut rx: watch::Receiver<Option<Pod>>) -> Result<()> {
    let Some(pod) = rx.borrow_and_update().clone() else {
        return Ok(());
    };
    let spec = pod.spec.clone().unwrap_or_default();
    let uid = pod.uid().unwrap_or_default();
    let dir = ctx.config.work_dir.join(format!("pod-{uid}"));
    let mut specs = Vec::new();
    let mut runs = Vec::new();
    for c in spec.init_containers.iter().flatten() {
        let sidecar = ctx.config.native_sidecars && c.restart_policy.as_deref() == Some("Always");
        runs.push(new_run(c, true, sidecar, "PodInitializing"));
        specs.push(c.clone());
    }
    // As a kubelet reports them: regular containers wait for the init
    // containers with reason PodInitializing.
    let waiting = if spec.init_containers.iter().flatten().next().is_some() {
        "PodInitializing"
    } else {
        "ContainerCreating"
    };
    for c in &spec.containers {
        runs.push(new_run(c, false, false, waiting));
        specs.push(c.clone());
    }
    let (exits_tx, mut exits) = mpsc::unbounded_channel();
    let mut pr = PodRun {
        ns: pod.namespace().unwrap_or_default(),
        name: pod.name_any(),
        uid,
        ctx,
        pod,
        dir,
        specs,
        runs,
        procs: HashMap::new(),
        generation: 0,
        exits_tx,
        start: Timestamp::now(),
        admitted: Instant::now(),
        restart_policy: spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into()),
        last_status: None,
        status_pending: false,
    };
    let result = pr.drive(&mut rx, &mut exits).await;
    // Whatever happened, no process of this pod outlives it.
    pr.kill_all("KILL").await;
    let _ = tokio::fs::remove_dir_all(&pr.dir).await;
    result
}

fn new_run(c: &Container, init: bool, sidecar: bool, waiting: &str) -> ContainerRun {
    ContainerRun {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        init,
        sidecar,
        state: ContainerState::Waiting(waiting.into()),
        last: None,
        restart_count: 0,
        started: false,
    }
}

/// Crash-loop back-off after the `restarts`-th restart: none for the first,
/// then 10 s doubling, capped at 5 min.
pub fn restart_delay(restarts: i32) -> Duration {
    if restarts <= 0 {
        return Duration::ZERO;
    }
    let exp = u32::try_from(restarts - 1).unwrap_or(0).min(5);
    Duration::from_secs(10 * 2u64.pow(exp)).min(Duration::from_secs(300))
}

enum Wake {
    Pod(Result<(), watch::error::RecvError>),
    Exit(Exit),
    Timer,
}

/// What a change seen on the pod's watch means for its run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PodChange {
    /// The pod is gone (or the watch ended).
    Gone,
    /// The pod is being deleted: terminate its containers.
    Deleting,
    /// Anything else: keep running with the new pod.
    Updated,
}

pub(super) enum Step {
    Done,
    Retry,
    Deleted,
    Failed,
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => futures::future::pending().await,
    }
}

impl PodRun {
    /// Takes the pod after `rx.changed()` answered `r`, and says what the
    /// change means.
    pub(super) fn take_pod(
        &mut self,
        r: Result<(), watch::error::RecvError>,
        rx: &mut watch::Receiver<Option<Pod>>,
    ) -> PodChange {
        let p = if r.is_ok() {
            rx.borrow_and_update().clone()
        } else {
            None
        };
        match p {
            None => PodChange::Gone,
            Some(p) => {
                let deleting = p.metadata.deletion_timestamp.is_some();
                self.pod = p;
                if deleting {
                    PodChange::Deleting
                } else {
                    PodChange::Updated
                }
            }
        }
    }

    async fn drive(
        &mut self,
        rx: &mut watch::Receiver<Option<Pod>>,
        exits: &mut mpsc::UnboundedReceiver<Exit>,
    ) -> Result<()> {
        if self.pod.metadata.deletion_timestamp.is_some() {
            return self.terminate(rx, exits).await;
        }
        self.materialize().await?;
        self.write_status().await;
        let latency = self.ctx.config.pod_start_latency;
        if !latency.is_zero() && self.sleep_or_delete(latency, rx).await? {
            return self.terminate(rx, exits).await;
        }
        // Init containers, in order.
        let n_init = self.runs.iter().filter(|r| r.init).count();
        for i in 0..n_init {
            loop {
                if let Err(e) = self.spawn(i).await {
                    // An init container that cannot start (no binary for
                    // its image: ErrImagePull) holds the pod, as on a real
                    // node, until the pod is deleted.
                    let name = self.runs[i].name.clone();
                    self.ctx
                        .event(&self.pod, Some(&name), format!("failed {e:#}"));
                    return self.wait_deleted(rx, exits).await;
                }
                self.write_status().await;
                let ok = if self.runs[i].sidecar {
                    self.await_startup(i, rx, exits).await?
                } else {
                    self.await_exit_ok(i, rx, exits).await?
                };
                match ok {
                    // A plain init container's exit is acted on at the next
                    // relist (a sidecar's start was, in `await_startup`).
                    Step::Done if !self.runs[i].sidecar => {
                        let seen = next_relist(self.ctx.relist_origin, Instant::now());
                        if self.sleep_or_delete(seen - Instant::now(), rx).await? {
                            return self.terminate(rx, exits).await;
                        }
                        break;
                    }
                    Step::Done => break,
                    Step::Retry => {
                        let delay = restart_delay(self.runs[i].restart_count);
                        self.runs[i].restart_count += 1;
                        self.ctx.event(
                            &self.pod,
                            Some(&self.runs[i].name.clone()),
                            "restarting".into(),
                        );
                        if self.sleep_or_delete(delay, rx).await? {
                            return self.terminate(rx, exits).await;
                        }
                    }
                    Step::Deleted => return self.terminate(rx, exits).await,
                    Step::Failed => {
                        self.write_status().await;
                        return self.wait_deleted(rx, exits).await;
                    }
                }
            }
        }
        // Regular containers, together.
        for i in n_init..self.runs.len() {
            // One container that cannot start (no binary for its image) stays
            // Waiting; the others run, as on a real node.
            if let Err(e) = self.spawn(i).await {
                let name = self.runs[i].name.clone();
                self.ctx
                    .event(&self.pod, Some(&name), format!("failed {e:#}"));
            }
        }
        self.write_status().await;
        let mut restarts: BTreeMap<usize, Instant> = BTreeMap::new();
        loop {
            let next = restarts.values().min().copied();
            let wake = tokio::select! {
                r = rx.changed() => Wake::Pod(r),
                Some(e) = exits.recv() => Wake::Exit(e),
                () = sleep_until_opt(next) => Wake::Timer,
                () = tokio::time::sleep(STATUS_RETRY), if self.status_pending => Wake::Timer,
            };
            match wake {
                Wake::Pod(r) => match self.take_pod(r, rx) {
                    PodChange::Gone => return Ok(()),
                    PodChange::Deleting => return self.terminate(rx, exits).await,
                    PodChange::Updated => {}
                },
                Wake::Exit(e) => {
                    if !self.on_exit(&e) {
                        continue;
                    }
                    let r = &self.runs[e.index];
                    let restart = if r.sidecar {
                        true
                    } else if r.init {
                        false
                    } else {
                        match self.restart_policy.as_str() {
                            "Always" => true,
                            "OnFailure" => e.code != 0,
                            _ => false,
                        }
                    };
                    let regular_alive = self
                        .runs
                        .iter()
                        .any(|r| !r.init && !matches!(r.state, ContainerState::Terminated { .. }));
                    if restart && (regular_alive || !r.sidecar) {
                        let delay = restart_delay(r.restart_count);
                        restarts.insert(e.index, Instant::now() + delay);
                        let name = r.name.clone();
                        self.ctx
                            .event(&self.pod, Some(&name), format!("restarting in {delay:?}"));
                    }
                    if !regular_alive && !restarts.keys().any(|i| !self.runs[*i].init) {
                        // The pod is done: stop its sidecars, as the kubelet does.
                        self.stop_sidecars(rx, exits).await;
                        self.write_status().await;
                        return self.wait_deleted(rx, exits).await;
                    }
                    self.write_status().await;
                }
                Wake::Timer => {
                    let now = Instant::now();
                    let due: Vec<usize> = restarts
                        .iter()
                        .filter(|(_, t)| **t <= now)
                        .map(|(i, _)| *i)
                        .collect();
                    for i in due {
                        restarts.remove(&i);
                        self.runs[i].restart_count += 1;
                        self.spawn(i).await?;
                        if self.runs[i].sidecar {
                            // Probed again in the background of the main loop:
                            // mark started at once (the gate only matters at pod start).
                            self.runs[i].started = true;
                        }
                    }
                    self.write_status().await;
                }
            }
        }
    }

    /// Records an exit; false when it belongs to an older generation.
    pub(super) fn on_exit(&mut self, e: &Exit) -> bool {
        match self.procs.get(&e.index) {
            Some(p) if p.generation == e.generation => {}
            _ => return false,
        }
        self.procs.remove(&e.index);
        let r = &mut self.runs[e.index];
        let started = match r.state {
            ContainerState::Running(t) => t,
            _ => Timestamp::now(),
        };
        r.state = ContainerState::Terminated {
            exit_code: e.code,
            started,
            finished: Timestamp::now(),
        };
        r.last = Some(r.state.clone());
        r.started = false;
        let name = r.name.clone();
        lock(&self.ctx.pids).remove(&(self.name.clone(), name.clone()));
        if let Some(d) = &self.ctx.config.pid_dir {
            let _ = std::fs::remove_file(d.join(format!("kubelet-{}.{name}.pid", self.name)));
        }
        self.ctx.node.end_logs(&self.ns, &self.name, &name);
        self.ctx
            .event(&self.pod, Some(&name), format!("exited {}", e.code));
        true
    }

    async fn sleep_or_delete(
        &mut self,
        d: Duration,
        rx: &mut watch::Receiver<Option<Pod>>,
    ) -> Result<bool> {
        let deadline = Instant::now() + d;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return Ok(false),
                r = rx.changed() => {
                    if self.take_pod(r, rx) != PodChange::Updated {
                        return Ok(true);
                    }
                }
            }
        }
    }

    async fn await_exit_ok(
        &mut self,
        i: usize,
        rx: &mut watch::Receiver<Option<Pod>>,
        exits: &mut mpsc::UnboundedReceiver<Exit>,
    ) -> Result<Step> {
        Ok(match self.wait_on(i, None, rx, exits).await {
            Waited::Gone | Waited::Due => Step::Deleted,
            Waited::Exited(0) => Step::Done,
            Waited::Exited(_) if self.restart_policy == "Never" => Step::Failed,
            Waited::Exited(_) => Step::Retry,
        })
    }

    /// Waits, while container `i` starts up, for whichever comes first:
    /// the pod going (deleted), the container's exit, or `until`.
    pub(super) async fn wait_on(
        &mut self,
        i: usize,
        until: Option<Instant>,
        rx: &mut watch::Receiver<Option<Pod>>,
        exits: &mut mpsc::UnboundedReceiver<Exit>,
    ) -> Waited {
        loop {
            tokio::select! {
                r = rx.changed() => {
                    if self.take_pod(r, rx) != PodChange::Updated {
                        return Waited::Gone;
                    }
                }
                Some(e) = exits.recv() => {
                    if e.index == i && self.on_exit(&e) {
                        return Waited::Exited(e.code);
                    }
                }
                () = sleep_until_opt(until) => return Waited::Due,
            }
        }
    }
}

/// What ended a [`PodRun::wait_on`].
pub(super) enum Waited {
    /// The pod was deleted or is being deleted.
    Gone,
    /// The container exited with this code.
    Exited(i32),
    /// The time waited for came.
    Due,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_loop_back_off() {
        assert_eq!(restart_delay(0), Duration::ZERO);
        assert_eq!(restart_delay(1), Duration::from_secs(10));
        assert_eq!(restart_delay(2), Duration::from_secs(20));
        assert_eq!(restart_delay(30), Duration::from_secs(300));
    }
}
