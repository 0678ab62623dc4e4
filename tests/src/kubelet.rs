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
//! - starts containers in kubelet order: init containers one by one, a
//!   native sidecar (init container with `restartPolicy: Always`) counted as
//!   started once its startupProbe succeeds, then the regular containers
//!   together;
//! - applies `restartPolicy` (with a crash-loop back-off of 10 s doubling to
//!   5 min) and reports container states, restart counts and the pod phase
//!   through `pods/status`;
//! - feeds each container's output into the node's `containerLogs` buffers;
//! - on deletion sends SIGTERM (regular containers first, then sidecars),
//!   waits up to the grace period, sends SIGKILL, and deletes the pod with
//!   grace period 0.
//!
//! Images are mapped to local binaries ([`ImageBinary`]); no image is pulled.
//! Processes run as root on the host network (pods share 127.0.0.1), which
//! limits a test to one pod using a given port at a time. Liveness and
//! readiness probes are not run.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use futures::StreamExt as _;
use jiff::Timestamp;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvVar, Pod, Probe, Secret, ServiceAccount, Volume,
};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher;
use kube::{Client, ResourceExt as _};
use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::node::{FakeNode, Logs};

/// Maps a container image (and optionally its `command[0]`) to a local binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageBinary {
    /// The image reference exactly as in the pod spec.
    pub image: String,
    /// `command[0]` this entry applies to (e.g. `/ghalistener`); `None`: any,
    /// including no command (the image's entrypoint).
    pub command: Option<String>,
    /// The binary to run.
    pub path: PathBuf,
}

/// Settings of a [`ProcessKubelet`].
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    /// Image to binary mapping.
    pub images: Vec<ImageBinary>,
    /// `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT` given to containers.
    pub api_host: String,
    /// See `api_host`.
    pub api_port: u16,
    /// Where pod directories (volumes, logs) go.
    pub work_dir: PathBuf,
    /// Where `<pod>.<container>.pid` files go while a container runs, so
    /// that a reaper (the control plane's) can end them if the test dies.
    pub pid_dir: Option<PathBuf>,
    /// Time from a pod's volumes being ready to its first container's
    /// process starting: what a real node spends creating the pod sandbox
    /// (network namespace, CNI) and the container with its image present.
    /// See [`DEFAULT_POD_START_LATENCY`].
    pub pod_start_latency: Duration,
}

/// A real node's pod start latency, image already pulled. ARC users see a
/// listener conflict loop turn over about every 3 s (ARC issue 3351:
/// "crash loops every 3 seconds"); on this stack the controller's delete,
/// create and schedule and the fake GitHub's answers add well under a
/// second, so the node's share is about 3 s. Kubernetes' own service level
/// objective for pod startup (image pull excluded) is 5 s at the 99th
/// percentile.
pub const DEFAULT_POD_START_LATENCY: Duration = Duration::from_secs(3);

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

/// A running process kubelet; stops its pods' processes when dropped.
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

    /// Stops everything: kills every container process.
    pub fn stop(&self) {
        self.main.abort();
        let mut reg = lock(&self.registry);
        reg.pods.clear();
        for t in reg.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for ProcessKubelet {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn signal_group(pid: u32, signal: &str) -> Result<()> {
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

async fn watch_pods(ctx: Ctx, registry: Arc<Mutex<Registry>>) {
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let mut stream = watcher::watcher(pods, watcher::Config::default()).boxed();
    while let Some(ev) = stream.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(error = %e, "kubelet: pod watch error (retrying)");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        match ev {
            watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                on_pod(&ctx, &registry, p).await
            }
            watcher::Event::Delete(p) => {
                let uid = p.uid().unwrap_or_default();
                if let Some(tx) = lock(&registry).pods.remove(&uid) {
                    let _ = tx.send(None);
                }
            }
            watcher::Event::Init | watcher::Event::InitDone => {}
        }
    }
}

async fn on_pod(ctx: &Ctx, registry: &Arc<Mutex<Registry>>, pod: Pod) {
    let spec = pod.spec.clone().unwrap_or_default();
    let uid = pod.uid().unwrap_or_default();
    let node_name = spec.node_name.clone().unwrap_or_default();
    if node_name.is_empty() {
        let default_scheduler = spec
            .scheduler_name
            .as_deref()
            .is_none_or(|s| s == "default-scheduler");
        if pod.metadata.deletion_timestamp.is_none() && default_scheduler {
            let ns = pod.namespace().unwrap_or_default();
            match ctx.node.bind(&ns, &pod.name_any()).await {
                Ok(()) => ctx.event(&pod, None, "bound".into()),
                Err(e) => tracing::debug!(error = %e, "kubelet: bind failed"),
            }
        }
        return;
    }
    if node_name != ctx.node.name() {
        return;
    }
    let mut reg = lock(registry);
    if let Some(tx) = reg.pods.get(&uid) {
        let _ = tx.send(Some(pod));
        return;
    }
    if pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed")
        && pod.metadata.deletion_timestamp.is_none()
    {
        // A finished pod from before this kubelet started: nothing to run.
        return;
    }
    let (tx, rx) = watch::channel(Some(pod));
    reg.pods.insert(uid, tx);
    let ctx = ctx.clone();
    let task = tokio::spawn(async move {
        let pod0 = rx.borrow().clone();
        if let Err(e) = run_pod(ctx.clone(), rx).await
            && let Some(p) = pod0
        {
            ctx.event(&p, None, format!("failed {e:#}"));
        }
    });
    reg.tasks.retain(|t| !t.is_finished());
    reg.tasks.push(task);
}

/// Runtime state of one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    /// Not started (yet).
    Waiting(String),
    /// Running since.
    Running(Timestamp),
    /// Exited.
    Terminated {
        /// Exit code (128 + signal when killed).
        exit_code: i32,
        /// Started at.
        started: Timestamp,
        /// Finished at.
        finished: Timestamp,
    },
}

/// What the kubelet reports about one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRun {
    /// Container name.
    pub name: String,
    /// Image.
    pub image: String,
    /// An init container (native sidecar or not).
    pub init: bool,
    /// A native sidecar (init container with `restartPolicy: Always`).
    pub sidecar: bool,
    /// Current state.
    pub state: ContainerState,
    /// The previous run's termination, if it restarted.
    pub last: Option<ContainerState>,
    /// Restarts so far.
    pub restart_count: i32,
    /// Startup probe passed (or none).
    pub started: bool,
}

/// The pod phase a kubelet reports for these container runs.
pub fn pod_phase(runs: &[ContainerRun], restart_policy: &str) -> &'static str {
    let inits_done = runs
        .iter()
        .filter(|r| r.init && !r.sidecar)
        .all(|r| matches!(r.state, ContainerState::Terminated { exit_code: 0, .. }));
    let init_failed = runs.iter().any(|r| {
        r.init
            && !r.sidecar
            && matches!(r.state, ContainerState::Terminated { exit_code, .. } if exit_code != 0)
    });
    if init_failed && restart_policy == "Never" {
        return "Failed";
    }
    let regular: Vec<&ContainerRun> = runs.iter().filter(|r| !r.init).collect();
    if !inits_done
        || regular
            .iter()
            .all(|r| matches!(r.state, ContainerState::Waiting(_)) && r.restart_count == 0)
    {
        return "Pending";
    }
    let all_done = regular
        .iter()
        .all(|r| matches!(r.state, ContainerState::Terminated { .. }));
    if !all_done {
        return "Running";
    }
    let all_ok = regular
        .iter()
        .all(|r| matches!(r.state, ContainerState::Terminated { exit_code: 0, .. }));
    match restart_policy {
        "Always" => "Running",
        "OnFailure" if !all_ok => "Running",
        _ if all_ok => "Succeeded",
        _ => "Failed",
    }
}

fn state_json(s: &ContainerState) -> serde_json::Value {
    match s {
        ContainerState::Waiting(reason) => json!({"waiting": {"reason": reason}}),
        ContainerState::Running(at) => json!({"running": {"startedAt": at.to_string()}}),
        ContainerState::Terminated {
            exit_code,
            started,
            finished,
        } => json!({"terminated": {
            "exitCode": exit_code,
            "reason": if *exit_code == 0 { "Completed" } else { "Error" },
            "startedAt": started.to_string(),
            "finishedAt": finished.to_string(),
        }}),
    }
}

/// The `status` a kubelet writes for these runs of the pod `pod_uid`.
pub fn pod_status(
    pod_uid: &str,
    runs: &[ContainerRun],
    restart_policy: &str,
    start: Timestamp,
) -> serde_json::Value {
    let phase = pod_phase(runs, restart_policy);
    let status_of = |r: &ContainerRun| {
        let running = matches!(r.state, ContainerState::Running(_));
        let mut v = json!({
            "name": r.name, "image": r.image, "imageID": "",
            // Unique per pod and run, as a container runtime's ids are: the
            // watchdog tells a new run (and a new pod generation) by it.
            "containerID": format!("process://{pod_uid}/{}/{}", r.name, r.restart_count),
            "ready": running && r.started,
            "started": running && r.started,
            "restartCount": r.restart_count,
            "state": state_json(&r.state),
        });
        if let Some(last) = &r.last {
            v["lastState"] = state_json(last);
        }
        v
    };
    let regular: Vec<_> = runs.iter().filter(|r| !r.init).map(status_of).collect();
    let inits: Vec<_> = runs.iter().filter(|r| r.init).map(status_of).collect();
    let all_ready = runs
        .iter()
        .filter(|r| !r.init || r.sidecar)
        .all(|r| matches!(r.state, ContainerState::Running(_)) && r.started);
    let inits_done = runs
        .iter()
        .filter(|r| r.init && !r.sidecar)
        .all(|r| matches!(r.state, ContainerState::Terminated { exit_code: 0, .. }));
    let b = |x: bool| if x { "True" } else { "False" };
    let now = Timestamp::now().to_string();
    json!({
        "phase": phase,
        "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
        "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
        "startTime": start.to_string(),
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": b(inits_done), "lastTransitionTime": now},
            {"type": "ContainersReady", "status": b(all_ready && phase == "Running"), "lastTransitionTime": now},
            {"type": "Ready", "status": b(all_ready && phase == "Running"), "lastTransitionTime": now},
        ],
        "containerStatuses": regular,
        "initContainerStatuses": inits,
    })
}

struct Exit {
    index: usize,
    generation: u64,
    code: i32,
}

struct Proc {
    pid: u32,
    generation: u64,
}

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
    restart_policy: String,
    last_status: Option<serde_json::Value>,
    /// The last status write failed: it is written again after [`STATUS_RETRY`].
    status_pending: bool,
}

/// How soon a failed status write is tried again.
const STATUS_RETRY: Duration = Duration::from_secs(1);

async fn run_pod(ctx: Ctx, mut rx: watch::Receiver<Option<Pod>>) -> Result<()> {
    let Some(pod) = rx.borrow_and_update().clone() else {
        return Ok(());
    };
    let spec = pod.spec.clone().unwrap_or_default();
    let uid = pod.uid().unwrap_or_default();
    let dir = ctx.config.work_dir.join(format!("pod-{uid}"));
    let mut specs = Vec::new();
    let mut runs = Vec::new();
    for c in spec.init_containers.iter().flatten() {
        let sidecar = c.restart_policy.as_deref() == Some("Always");
        runs.push(new_run(c, true, sidecar));
        specs.push(c.clone());
    }
    for c in &spec.containers {
        runs.push(new_run(c, false, false));
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

fn new_run(c: &Container, init: bool, sidecar: bool) -> ContainerRun {
    ContainerRun {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        init,
        sidecar,
        state: ContainerState::Waiting(
            if init {
                "PodInitializing"
            } else {
                "ContainerCreating"
            }
            .into(),
        ),
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
enum PodChange {
    /// The pod is gone (or the watch ended).
    Gone,
    /// The pod is being deleted: terminate its containers.
    Deleting,
    /// Anything else: keep running with the new pod.
    Updated,
}

impl PodRun {
    /// Takes the pod after `rx.changed()` answered `r`, and says what the
    /// change means.
    fn take_pod(
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
                self.spawn(i).await?;
                self.write_status().await;
                let ok = if self.runs[i].sidecar {
                    self.await_startup(i, rx, exits).await?
                } else {
                    self.await_exit_ok(i, rx, exits).await?
                };
                match ok {
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
    fn on_exit(&mut self, e: &Exit) -> bool {
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
        loop {
            tokio::select! {
                r = rx.changed() => {
                    if self.take_pod(r, rx) != PodChange::Updated {
                        return Ok(Step::Deleted);
                    }
                }
                Some(e) = exits.recv() => {
                    if e.index == i && self.on_exit(&e) {
                        return Ok(if e.code == 0 { Step::Done } else if self.restart_policy == "Never" { Step::Failed } else { Step::Retry });
                    }
                }
            }
        }
    }

    /// Polls a native sidecar's startupProbe until it succeeds; restarts the
    /// container when it exits or the probe's failure threshold is reached.
    async fn await_startup(
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

    async fn stop_sidecars(
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
    async fn terminate(
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

    async fn wait_deleted(
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

    async fn kill_all(&mut self, signal: &str) {
        for p in self.procs.values() {
            let _ = signal_group(p.pid, signal).await;
        }
        let mut pids = lock(&self.ctx.pids);
        pids.retain(|(pod, _), _| pod != &self.name);
    }

    async fn write_status(&mut self) {
        let status = pod_status(&self.uid, &self.runs, &self.restart_policy, self.start);
        if self
            .last_status
            .as_ref()
            .is_some_and(|s| strip_times(s) == strip_times(&status))
        {
            return;
        }
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        // The uid makes the patch fail on a newer pod of the same name.
        let patch = json!({"metadata": {"uid": self.uid}, "status": status});
        match api
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                self.last_status = Some(status);
                self.status_pending = false;
            }
            Err(e) => {
                // Retried until it lands, as the kubelet's status manager
                // does: the API server may be away for a while.
                self.status_pending = true;
                tracing::debug!(error = %e, pod = %self.name, "kubelet: status write failed");
            }
        }
    }

    async fn materialize(&mut self) -> Result<()> {
        let spec = self.pod.spec.clone().unwrap_or_default();
        for v in spec.volumes.iter().flatten() {
            let dir = self.dir.join("volumes").join(&v.name);
            tokio::fs::create_dir_all(&dir).await?;
            self.materialize_volume(v, &dir)
                .await
                .with_context(|| format!("volume {} of {}/{}", v.name, self.ns, self.name))?;
        }
        Ok(())
    }

    async fn materialize_volume(&self, v: &Volume, dir: &Path) -> Result<()> {
        let client = self.ctx.client.clone();
        if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            let api: Api<Secret> = Api::namespaced(client.clone(), &self.ns);
            match api.get_opt(&name).await? {
                Some(sec) => {
                    let data: BTreeMap<String, Vec<u8>> = sec
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0))
                        .collect();
                    write_items(
                        dir,
                        &data,
                        s.items
                            .as_deref()
                            .map(|i| i.iter().map(|k| (k.key.clone(), k.path.clone())).collect()),
                    )
                    .await?;
                }
                None if s.optional == Some(true) => {}
                None => bail!("secret {name} not found"),
            }
        }
        if let Some(c) = &v.config_map {
            let data = self.config_map_data(&c.name).await?;
            match data {
                Some(d) => {
                    write_items(
                        dir,
                        &d,
                        c.items
                            .as_deref()
                            .map(|i| i.iter().map(|k| (k.key.clone(), k.path.clone())).collect()),
                    )
                    .await?
                }
                None if c.optional == Some(true) => {}
                None => bail!("configmap {} not found", c.name),
            }
        }
        if let Some(p) = &v.projected {
            for src in p.sources.iter().flatten() {
                if let Some(t) = &src.service_account_token {
                    let token = self.token(t.expiration_seconds, t.audience.clone()).await?;
                    write_file(&dir.join(&t.path), token.as_bytes()).await?;
                }
                if let Some(c) = &src.config_map {
                    match self.config_map_data(&c.name).await? {
                        Some(d) => {
                            write_items(
                                dir,
                                &d,
                                c.items.as_deref().map(|i| {
                                    i.iter().map(|k| (k.key.clone(), k.path.clone())).collect()
                                }),
                            )
                            .await?
                        }
                        None if c.optional == Some(true) => {}
                        None => bail!("configmap {} not found", c.name),
                    }
                }
                if let Some(s) = &src.secret {
                    let api: Api<Secret> = Api::namespaced(client.clone(), &self.ns);
                    if let Some(sec) = api.get_opt(&s.name).await? {
                        let data: BTreeMap<String, Vec<u8>> = sec
                            .data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.0))
                            .collect();
                        write_items(
                            dir,
                            &data,
                            s.items.as_deref().map(|i| {
                                i.iter().map(|k| (k.key.clone(), k.path.clone())).collect()
                            }),
                        )
                        .await?;
                    }
                }
                if let Some(d) = &src.downward_api {
                    for item in d.items.iter().flatten() {
                        if let Some(f) = &item.field_ref {
                            let value = self.field(&f.field_path);
                            write_file(&dir.join(&item.path), value.as_bytes()).await?;
                        }
                    }
                }
            }
        }
        if let Some(d) = &v.downward_api {
            for item in d.items.iter().flatten() {
                if let Some(f) = &item.field_ref {
                    write_file(&dir.join(&item.path), self.field(&f.field_path).as_bytes()).await?;
                }
            }
        }
        Ok(())
    }

    async fn config_map_data(&self, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>> {
        let api: Api<ConfigMap> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        Ok(api.get_opt(name).await?.map(|cm| {
            let mut d: BTreeMap<String, Vec<u8>> = cm
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            d.extend(
                cm.binary_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0)),
            );
            d
        }))
    }

    async fn token(&self, expiration: Option<i64>, audience: Option<String>) -> Result<String> {
        let sa = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let api: Api<ServiceAccount> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let tr = TokenRequest {
            spec: TokenRequestSpec {
                audiences: audience.into_iter().collect(),
                expiration_seconds: Some(expiration.unwrap_or(3607).max(600)),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(self.name.clone()),
                    uid: Some(self.uid.clone()),
                }),
            },
            ..Default::default()
        };
        let out = api
            .create_token_request(&sa, &PostParams::default(), &tr)
            .await
            .with_context(|| format!("TokenRequest for {}/{sa}", self.ns))?;
        out.status
            .map(|s| s.token)
            .ok_or_else(|| anyhow!("TokenRequest for {}/{sa} returned no token", self.ns))
    }

    fn field(&self, path: &str) -> String {
        let spec = self.pod.spec.clone().unwrap_or_default();
        match path {
            "metadata.name" => self.name.clone(),
            "metadata.namespace" => self.ns.clone(),
            "metadata.uid" => self.uid.clone(),
            "spec.nodeName" => spec.node_name.unwrap_or_default(),
            "spec.serviceAccountName" => spec.service_account_name.unwrap_or_default(),
            "status.podIP" | "status.hostIP" => "127.0.0.1".into(),
            p => {
                if let Some(k) = p
                    .strip_prefix("metadata.labels['")
                    .and_then(|k| k.strip_suffix("']"))
                {
                    return self.pod.labels().get(k).cloned().unwrap_or_default();
                }
                if let Some(k) = p
                    .strip_prefix("metadata.annotations['")
                    .and_then(|k| k.strip_suffix("']"))
                {
                    return self.pod.annotations().get(k).cloned().unwrap_or_default();
                }
                String::new()
            }
        }
    }

    async fn env(&self, c: &Container) -> Result<Vec<(String, String)>> {
        let mut env = vec![
            (
                "PATH".to_owned(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
            ),
            ("HOSTNAME".to_owned(), self.hostname()),
            (
                "KUBERNETES_SERVICE_HOST".to_owned(),
                self.ctx.config.api_host.clone(),
            ),
            (
                "KUBERNETES_SERVICE_PORT".to_owned(),
                self.ctx.config.api_port.to_string(),
            ),
            (
                "KUBERNETES_SERVICE_PORT_HTTPS".to_owned(),
                self.ctx.config.api_port.to_string(),
            ),
        ];
        for e in c.env.iter().flatten() {
            env.push((e.name.clone(), self.env_value(e).await?));
        }
        Ok(env)
    }

    async fn env_value(&self, e: &EnvVar) -> Result<String> {
        if let Some(v) = &e.value {
            return Ok(v.clone());
        }
        let Some(from) = &e.value_from else {
            return Ok(String::new());
        };
        if let Some(f) = &from.field_ref {
            return Ok(self.field(&f.field_path));
        }
        if let Some(s) = &from.secret_key_ref {
            let api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &self.ns);
            let sec = api.get_opt(&s.name).await?;
            let v = sec.and_then(|x| x.data).and_then(|d| {
                d.get(&s.key)
                    .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            });
            return match v {
                Some(v) => Ok(v),
                None if s.optional == Some(true) => Ok(String::new()),
                None => bail!("env {}: secret {}/{} missing", e.name, s.name, s.key),
            };
        }
        if let Some(c) = &from.config_map_key_ref {
            let v = self.config_map_data(&c.name).await?.and_then(|d| {
                d.get(&c.key)
                    .map(|b| String::from_utf8_lossy(b).into_owned())
            });
            return match v {
                Some(v) => Ok(v),
                None if c.optional == Some(true) => Ok(String::new()),
                None => bail!("env {}: configmap {}/{} missing", e.name, c.name, c.key),
            };
        }
        Ok(String::new())
    }

    fn hostname(&self) -> String {
        let h = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.hostname.clone())
            .unwrap_or_else(|| self.name.clone());
        h.chars().take(63).collect()
    }

    fn binary(&self, c: &Container) -> Result<(PathBuf, Vec<String>)> {
        let image = c.image.clone().unwrap_or_default();
        let cmd0 = c.command.as_ref().and_then(|c| c.first().cloned());
        let entry = self
            .ctx
            .config
            .images
            .iter()
            .find(|m| m.image == image && (m.command.is_none() || m.command == cmd0))
            .ok_or_else(|| anyhow!("no local binary for image {image:?} command {cmd0:?}"))?;
        let mut args: Vec<String> = c.command.iter().flatten().skip(1).cloned().collect();
        args.extend(c.args.iter().flatten().cloned());
        Ok((entry.path.clone(), args))
    }

    async fn spawn(&mut self, i: usize) -> Result<()> {
        let c = self.specs[i].clone();
        let (bin, args) = match self.binary(&c) {
            Ok(x) => x,
            Err(e) => {
                self.runs[i].state = ContainerState::Waiting("ErrImagePull".into());
                self.write_status().await;
                return Err(e);
            }
        };
        let env = self.env(&c).await?;
        // Mounts and hostname are set up inside the new namespaces, then the
        // container's binary replaces the shell.
        let mut script = String::from("set -e\n");
        for m in c.volume_mounts.iter().flatten() {
            let mut src = self.dir.join("volumes").join(&m.name);
            if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                src = src.join(sub);
            }
            let target = &m.mount_path;
            if src.is_dir() {
                script.push_str(&format!("mkdir -p {}\n", sh_quote(target)));
            } else {
                script.push_str(&format!(
                    "mkdir -p \"$(dirname {t})\"; [ -e {t} ] || : > {t}\n",
                    t = sh_quote(target)
                ));
            }
            script.push_str(&format!(
                "mount --bind {} {}\n",
                sh_quote(&src.display().to_string()),
                sh_quote(target)
            ));
            if m.read_only == Some(true) {
                script.push_str(&format!("mount -o remount,bind,ro {}\n", sh_quote(target)));
            }
        }
        script.push_str(&format!("hostname {}\n", sh_quote(&self.hostname())));
        if let Some(wd) = &c.working_dir {
            script.push_str(&format!("cd {}\n", sh_quote(wd)));
        }
        script.push_str("exec \"$@\"\n");
        let mut cmd = tokio::process::Command::new("unshare");
        cmd.args([
            "--mount",
            "--uts",
            "--fork",
            "--kill-child",
            "--",
            "/bin/sh",
            "-c",
            &script,
            &c.name,
        ])
        .arg(&bin)
        .args(&args)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {} for {}/{}", bin.display(), self.name, c.name))?;
        let pid = child.id().ok_or_else(|| anyhow!("no pid"))?;
        self.generation += 1;
        let generation = self.generation;
        self.procs.insert(i, Proc { pid, generation });
        lock(&self.ctx.pids).insert((self.name.clone(), c.name.clone()), pid);
        if let Some(d) = &self.ctx.config.pid_dir {
            let _ = std::fs::write(
                d.join(format!("kubelet-{}.{}.pid", self.name, c.name)),
                pid.to_string(),
            );
        }
        // A new run: the previous one's lines become `previous`.
        self.ctx.node.logs().restart(&self.ns, &self.name, &c.name);
        // Kept after the pod is gone (the pod directory is not), one file per
        // pod generation and container, all runs appended.
        let log_dir = self.ctx.config.work_dir.join("logs");
        let _ = tokio::fs::create_dir_all(&log_dir).await;
        let uid8: String = self.uid.chars().take(8).collect();
        let log_file = log_dir.join(format!("{}-{uid8}-{}.log", self.name, c.name));
        let logs = self.ctx.node.logs().clone();
        let (ns, pod, cname) = (self.ns.clone(), self.name.clone(), c.name.clone());
        let mut pumps = Vec::new();
        if let Some(out) = child.stdout.take() {
            pumps.push(tokio::spawn(pump(
                out,
                logs.clone(),
                ns.clone(),
                pod.clone(),
                cname.clone(),
                log_file.clone(),
            )));
        }
        if let Some(err) = child.stderr.take() {
            pumps.push(tokio::spawn(pump(
                err,
                logs.clone(),
                ns.clone(),
                pod.clone(),
                cname.clone(),
                log_file.clone(),
            )));
        }
        let tx = self.exits_tx.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            // The output is complete before the exit is reported.
            for p in pumps {
                let _ = p.await;
            }
            let code = match status {
                Ok(s) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(9)),
                Err(_) => 128 + 9,
            };
            let _ = tx.send(Exit {
                index: i,
                generation,
                code,
            });
        });
        self.runs[i].state = ContainerState::Running(Timestamp::now());
        self.runs[i].started = !self.runs[i].sidecar || self.specs[i].startup_probe.is_none();
        self.ctx.event(
            &self.pod,
            Some(&c.name),
            format!("started {}", bin.display()),
        );
        Ok(())
    }
}

enum Step {
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

async fn pump<R: tokio::io::AsyncRead + Unpin>(
    r: R,
    logs: Logs,
    ns: String,
    pod: String,
    container: String,
    file: PathBuf,
) {
    let mut lines = BufReader::new(r).lines();
    let mut f = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)
        .await
        .ok();
    while let Ok(Some(line)) = lines.next_line().await {
        logs.append(&ns, &pod, &container, &line);
        if let Some(f) = f.as_mut() {
            let _ = f.write_all(format!("{line}\n").as_bytes()).await;
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

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

async fn write_file(path: &Path, data: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await?;
    }
    tokio::fs::write(path, data)
        .await
        .with_context(|| format!("writing {}", path.display()))
}

async fn write_items(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<Vec<(String, String)>>,
) -> Result<()> {
    match items {
        Some(items) => {
            for (key, path) in items {
                if let Some(v) = data.get(&key) {
                    write_file(&dir.join(path), v).await?;
                }
            }
        }
        None => {
            for (k, v) in data {
                write_file(&dir.join(k), v).await?;
            }
        }
    }
    Ok(())
}

fn strip_times(v: &serde_json::Value) -> serde_json::Value {
    let mut v = v.clone();
    if let Some(conds) = v.get_mut("conditions").and_then(|c| c.as_array_mut()) {
        for c in conds {
            if let Some(o) = c.as_object_mut() {
                o.remove("lastTransitionTime");
            }
        }
    }
    v
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn run(name: &str, init: bool, sidecar: bool, state: ContainerState) -> ContainerRun {
        ContainerRun {
            name: name.into(),
            image: "i".into(),
            init,
            sidecar,
            state,
            last: None,
            restart_count: 0,
            started: true,
        }
    }

    fn term(code: i32) -> ContainerState {
        ContainerState::Terminated {
            exit_code: code,
            started: Timestamp::UNIX_EPOCH,
            finished: Timestamp::UNIX_EPOCH,
        }
    }

    #[test]
    fn phase_follows_regular_containers_not_native_sidecars() {
        let running = ContainerState::Running(Timestamp::UNIX_EPOCH);
        // Listener died, native sidecar still running, restartPolicy Never: Failed.
        let runs = [
            run("arc-watchdog", true, true, running.clone()),
            run("listener", false, false, term(1)),
        ];
        assert_eq!(pod_phase(&runs, "Never"), "Failed");
        // Same with a classic sidecar: the pod keeps Running (ARC 0.9.2 never notices).
        let runs = [
            run("listener", false, false, term(1)),
            run("arc-watchdog", false, false, running.clone()),
        ];
        assert_eq!(pod_phase(&runs, "Never"), "Running");
        // restartPolicy Always: Running even with the only container exited.
        let runs = [run("listener", false, false, term(1))];
        assert_eq!(pod_phase(&runs, "Always"), "Running");
        let runs = [run("listener", false, false, term(0))];
        assert_eq!(pod_phase(&runs, "Never"), "Succeeded");
        // Not started yet.
        let runs = [
            run("arc-watchdog", true, true, running),
            run(
                "listener",
                false,
                false,
                ContainerState::Waiting("PodInitializing".into()),
            ),
        ];
        assert_eq!(pod_phase(&runs, "Never"), "Pending");
    }

    #[test]
    fn status_reports_states_and_readiness() {
        let runs = [
            run(
                "arc-watchdog",
                true,
                true,
                ContainerState::Running(Timestamp::UNIX_EPOCH),
            ),
            run("listener", false, false, term(1)),
        ];
        let s = pod_status("uid-1", &runs, "Never", Timestamp::UNIX_EPOCH);
        assert_eq!(s["phase"], "Failed");
        assert_eq!(
            s["containerStatuses"][0]["state"]["terminated"]["exitCode"],
            1
        );
        assert_eq!(
            s["containerStatuses"][0]["state"]["terminated"]["reason"],
            "Error"
        );
        assert_eq!(s["initContainerStatuses"][0]["ready"], true);
        assert_eq!(s["conditions"][3]["status"], "False");
        // Runtime ids differ per pod and per run, as a real runtime's do.
        assert_eq!(
            s["containerStatuses"][0]["containerID"],
            "process://uid-1/listener/0"
        );
        let other = pod_status("uid-2", &runs, "Never", Timestamp::UNIX_EPOCH);
        assert_ne!(
            other["containerStatuses"][0]["containerID"],
            s["containerStatuses"][0]["containerID"]
        );
    }

    #[test]
    fn crash_loop_back_off() {
        assert_eq!(restart_delay(0), Duration::ZERO);
        assert_eq!(restart_delay(1), Duration::from_secs(10));
        assert_eq!(restart_delay(2), Duration::from_secs(20));
        assert_eq!(restart_delay(30), Duration::from_secs(300));
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(sh_quote("/etc/a b"), "'/etc/a b'");
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
    }
}
