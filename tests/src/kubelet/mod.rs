//! A process kubelet: runs the pods bound to a [`FakeNode`] as local
//! processes, for end-to-end tests with the real ARC listener and
//! arc-watchdog.
//!
//! What it does, as a kubelet would:
//! - binds unscheduled pods to its node (the scheduler's job);
//! - materialises the volumes the spec refers to (Secret, ConfigMap,
//!   projected: service-account token by TokenRequest bound to the pod,
//!   `kube-root-ca.crt`, downward API; emptyDir) under a per-pod directory;
//! - runs each container as a process in its own mount and UTS namespace
//!   (`unshare --mount --uts`): every volumeMount is bind-mounted at its
//!   `mountPath` (read-only when asked), so the in-cluster paths that
//!   client-go and kube-rs hard-code
//!   (`/var/run/secrets/kubernetes.io/serviceaccount`) and ARC's
//!   `/etc/gha-listener` are real; the hostname is the pod's name (the
//!   listener's session owner); the environment is the container's own
//!   (downward API, Secret/ConfigMap refs) plus `KUBERNETES_SERVICE_HOST/PORT`
//!   pointing at the local API server, and nothing inherited;
//! - takes a real node's time to start a pod
//!   ([`KubeletConfig::pod_start_latency`]: sandbox and container creation),
//!   its containers `Waiting` meanwhile;
//! - starts containers in kubelet order: init containers one by one, then
//!   the regular containers together. The next container starts once the
//!   kubelet's next relist (every second, on the kubelet's own grid) has
//!   seen the one before exited, or, for a native sidecar (init container
//!   with `restartPolicy: Always`), running and past its startupProbe,
//!   probed on a ticker that started with the pod's admission (`probe.rs`);
//! - applies `restartPolicy` (with a crash-loop back-off of 10 s doubling to
//!   5 min) and reports container states, restart counts and the pod phase
//!   through `pods/status`;
//! - feeds each container's output into the node's `containerLogs` buffers;
//! - on deletion sends SIGTERM (regular containers first, then sidecars),
//!   waits up to the grace period, sends SIGKILL, and deletes the pod with
//!   grace period 0;
//! - powered off ([`ProcessKubelet::power_off`]), as a node that loses
//!   power: stops at once, writing nothing more, and SIGKILLs its
//!   processes.
//!
//! Images are mapped to local binaries ([`ImageBinary`]); no image is pulled.
//! Processes run as root on the host network (pods share 127.0.0.1), which
//! limits a test to one pod using a given port at a time. Liveness and
//! readiness probes are not run.
//!
//! Where things are, one concern a file; everything public is re-exported
//! here, so callers name `kubelet::X` whatever file `X` lives in:
//! - this file: [`ProcessKubelet`], what it records ([`KubeletEvent`]), and
//!   the state of one pod's run that the other files work on (`PodRun`);
//! - `config.rs`: [`KubeletConfig`] and the image to binary mapping;
//! - `pod_watch.rs`: the pod watch: binding, and one task per pod on this
//!   node;
//! - `lifecycle.rs`: one pod's state machine: container start order,
//!   restarts and crash-loop back-off;
//! - `probe.rs`: native sidecars' startup probes;
//! - `termination.rs`: graceful termination and the final delete;
//! - `volumes.rs`: Secret, ConfigMap, projected and downward-API volumes;
//! - `env.rs`: a container's environment and downward-API fields;
//! - `container.rs`: a container as a process in its own namespaces, and
//!   its output;
//! - `status.rs`: container states, the pod phase and `pods/status` writes.

mod config;
mod container;
mod env;
mod lifecycle;
mod pod_watch;
mod probe;
mod status;
mod termination;
mod volumes;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result, anyhow};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::{Client, ResourceExt as _};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use config::{DEFAULT_POD_START_LATENCY, ImageBinary, KubeletConfig};
pub use lifecycle::restart_delay;
pub use status::{ContainerRun, ContainerState, pod_phase, pod_status};

use crate::node::FakeNode;
use pod_watch::watch_pods;
use termination::signal_group;

/// One thing the kubelet did, for reports and assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletEvent {
    /// When.
    pub at: Timestamp,
    /// Pod name.
    pub pod: String,
    /// Pod uid.
    pub uid: String,
    /// Container, if any.
    pub container: Option<String>,
    /// `bound`, `started`, `exited <code>`, `restarting`, `probe-ok`,
    /// `killing`, `deleted`, `failed <why>`.
    pub what: String,
}

#[derive(Debug, Default)]
struct Registry {
    pods: HashMap<String, watch::Sender<Option<Pod>>>,
    tasks: Vec<JoinHandle<()>>,
}

/// A running process kubelet; stops (see [`ProcessKubelet::stop`]) when
/// dropped.
#[derive(Debug)]
pub struct ProcessKubelet {
    main: JoinHandle<()>,
    registry: Arc<Mutex<Registry>>,
    events: Arc<Mutex<Vec<KubeletEvent>>>,
    pids: Arc<Mutex<BTreeMap<(String, String), u32>>>,
}

#[derive(Clone)]
struct Ctx {
    client: Client,
    node: Arc<FakeNode>,
    config: Arc<KubeletConfig>,
    events: Arc<Mutex<Vec<KubeletEvent>>>,
    pids: Arc<Mutex<BTreeMap<(String, String), u32>>>,
    /// The kubelet's start: the grid of its relists (see `probe.rs`).
    relist_origin: tokio::time::Instant,
}

impl Ctx {
    fn event(&self, pod: &Pod, container: Option<&str>, what: String) {
        tracing::info!(pod = %pod.name_any(), container = ?container, %what, "kubelet");
        lock(&self.events).push(KubeletEvent {
            at: Timestamp::now(),
            pod: pod.name_any(),
            uid: pod.uid().unwrap_or_default(),
            container: container.map(str::to_owned),
            what,
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ProcessKubelet {
    /// Starts watching pods: binds unscheduled ones to `node` and runs the
    /// pods bound to it.
    pub fn start(client: Client, node: Arc<FakeNode>, config: KubeletConfig) -> Result<Self> {
        std::fs::create_dir_all(&config.work_dir)
            .with_context(|| format!("creating {}", config.work_dir.display()))?;
        let registry = Arc::new(Mutex::new(Registry::default()));
        let events = Arc::new(Mutex::new(Vec::new()));
        let pids = Arc::new(Mutex::new(BTreeMap::new()));
        let ctx = Ctx {
            client,
            node,
            config: Arc::new(config),
            events: events.clone(),
            pids: pids.clone(),
            relist_origin: tokio::time::Instant::now(),
        };
        let main = tokio::spawn(watch_pods(ctx, registry.clone()));
        Ok(Self {
            main,
            registry,
            events,
            pids,
        })
    }

    /// Everything the kubelet did so far.
    pub fn events(&self) -> Vec<KubeletEvent> {
        lock(&self.events).clone()
    }

    /// The pid of a running container process (of the `unshare` wrapper,
    /// whose process group holds the container's process).
    pub fn pid(&self, pod: &str, container: &str) -> Option<u32> {
        lock(&self.pids)
            .get(&(pod.to_owned(), container.to_owned()))
            .copied()
    }

    /// Sends a signal (`TERM`, `KILL`, ...) to a running container's process
    /// group, as if the process had crashed or been killed by the OOM killer.
    pub async fn signal(&self, pod: &str, container: &str, signal: &str) -> Result<()> {
        let pid = self
            .pid(pod, container)
            .ok_or_else(|| anyhow!("no running process for {pod}/{container}"))?;
        signal_group(pid, signal).await
    }

    /// Powers the node off, as far as the API server and its pods can tell:
    /// the kubelet stops first, so that nothing more is written (no binding,
    /// no container state, no pod phase, no final delete of a pod being
    /// deleted), then every container process it started is killed with
    /// SIGKILL and no SIGTERM before (a machine that loses power runs no
    /// shutdown). The Node object is left as it is: marking it NotReady is
    /// the node lifecycle controller's job. Returns the process groups
    /// killed (see [`process_group_alive`]).
    pub async fn power_off(&self) -> Vec<u32> {
        self.stop();
        let pids: Vec<u32> = std::mem::take(&mut *lock(&self.pids))
            .into_values()
            .collect();
        for pid in &pids {
            if let Err(e) = signal_group(*pid, "KILL").await {
                tracing::debug!(error = %e, pid, "kubelet: power off");
            }
        }
        pids
    }

    /// Stops the kubelet: it binds, runs and reports nothing more. The
    /// container processes it started are not signalled here; the control
    /// plane's reaper ends them by their pid files (`pid_dir`).
    pub fn stop(&self) {
        self.main.abort();
        let mut reg = lock(&self.registry);
        reg.pods.clear();
        for t in reg.tasks.drain(..) {
            t.abort();
        }
    }
}

/// Whether a process of process group `pgid` still runs (a zombie, dead and
/// not yet reaped, does not count), from `/proc/<pid>/stat`.
pub fn process_group_alive(pgid: u32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.filter_map(Result::ok).any(|e| {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            return false;
        };
        // `pid (comm) state ppid pgrp ...`: comm may hold spaces and
        // parentheses, so the fields are read after its last `)`.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return false;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let pgrp = fields.nth(1).and_then(|f| f.parse::<u32>().ok());
        pgrp == Some(pgid) && state.is_some_and(|s| s != "Z" && s != "X")
    })
}

impl Drop for ProcessKubelet {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A container process's exit, reported to its pod's run. `generation`
/// tells the exit of an earlier run of the same container from the current
/// one's.
struct Exit {
    index: usize,
    generation: u64,
    code: i32,
}

/// A running container process: the pid of the `unshare` wrapper (its
/// process group's leader) and the run it belongs to.
struct Proc {
    pid: u32,
    generation: u64,
}

/// One pod's run on this kubelet: its containers' specs and states, their
/// processes and the status last written. `lifecycle.rs` drives it; the
/// other files add what it does to volumes, environments, processes,
/// probes, termination and status.
struct PodRun {
    ctx: Ctx,
    pod: Pod,
    ns: String,
    name: String,
    uid: String,
    dir: PathBuf,
    specs: Vec<Container>,
    runs: Vec<ContainerRun>,
    procs: HashMap<usize, Proc>,
    generation: u64,
    exits_tx: mpsc::UnboundedSender<Exit>,
    start: Timestamp,
    /// When the kubelet took the pod: its probe workers tick from here.
    admitted: tokio::time::Instant,
    restart_policy: String,
    last_status: Option<serde_json::Value>,
    /// The last status write failed: it is written again after
    /// [`status::STATUS_RETRY`].
    status_pending: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_killed_process_group_is_no_longer_alive() {
        let mut child = tokio::process::Command::new("sleep")
            .arg("60")
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pid = child.id().unwrap();
        assert!(process_group_alive(pid));
        signal_group(pid, "KILL").await.unwrap();
        let _ = child.wait().await;
        assert!(!process_group_alive(pid));
    }
}
