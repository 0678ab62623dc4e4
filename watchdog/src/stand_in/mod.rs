//! A stand-in for the few Kubernetes API endpoints the sidecar uses, on
//! 127.0.0.1, for the watchdog's own tests and the bench (cargo feature
//! `stand-in`; never part of the sidecar).
//!
//! It follows the real protocol where the sidecar depends on it: list and
//! watch of one pod by field selector, `pods/log` with `follow`,
//! `timestamps` and `sinceTime` (lines at or after `sinceTime`, second
//! precision, like the kubelet), Lease get/update with resourceVersion
//! preconditions (409 on a stale one), policy/v1 Eviction (201, or 429
//! while a budget blocks it), events.k8s.io Events, `dryRun`, and Status
//! bodies for errors. Faults are scripted through [`StandInState`] (drops,
//! 409s, 429s, stalls). The log is served from [`StandInState::log`], or,
//! with [`StandInState::log_feed`], follow streams carry the raw chunks
//! sent with [`StandIn::send_log`] (a listener writing at a set rate).

mod serve;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use jiff::Timestamp;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use crate::detector::History;
use crate::run::lease::ANNOTATION_HISTORY;

/// Namespace of the pod.
pub const NS: &str = "arc-systems";
/// Name of the listener pod the watchdog runs in.
pub const POD: &str = "demo-6b4f8c7d-listener";
/// UID of the pod.
pub const POD_UID: &str = "0b5e1d6c-1111-4c1c-9a34-5d6f1f0c0001";

/// How long [`StandIn::wait_for`] waits.
const WAIT: Duration = Duration::from_secs(20);

/// One request as the stand-in saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// `GET`, `PUT`, ...
    pub method: String,
    /// The path.
    pub path: String,
    /// The query string.
    pub query: String,
    /// The body, if it was JSON.
    pub body: Option<Value>,
}

/// What the stand-in holds and how it misbehaves.
#[derive(Debug, Default)]
pub struct StandInState {
    /// Every request, in order.
    pub requests: Vec<Seen>,
    /// Every request answers this status (RBAC missing: 403).
    pub fail_all: Option<u16>,
    /// The pod, if it exists.
    pub pod: Option<Value>,
    /// Its resourceVersion.
    pub pod_rv: u64,
    /// The Lease, if it exists.
    pub lease: Option<Value>,
    /// Its resourceVersion.
    pub lease_rv: u64,
    /// The next N lease updates meet a concurrent writer: the stored
    /// history becomes `concurrent_history` and the update gets 409.
    pub lease_races: u32,
    /// What the concurrent writer stores.
    pub concurrent_history: Option<String>,
    /// The next N evictions answer 429 (a PodDisruptionBudget).
    pub evict_429: u32,
    /// While set, evictions answer this status (500: the API server
    /// failed; 409: the UID precondition no longer holds) and evict nothing.
    pub evict_fail: Option<u16>,
    /// While set, evictions wait (unanswered) until it is cleared, then
    /// are answered as usual: an eviction on its way.
    pub evict_hold: bool,
    /// While set, only reading the Lease answers this status (503: the
    /// API server cannot serve it); everything else works.
    pub lease_get_fail: Option<u16>,
    /// While set, Event writes never answer (held open until the client
    /// goes): a slow API server.
    pub stall_events: bool,
    /// The evictions accepted (their bodies).
    pub evictions: Vec<Value>,
    /// The Events written (created or patched).
    pub events: Vec<Value>,
    /// The listener's log: (timestamp, line).
    pub log: Vec<(Timestamp, String)>,
    /// For the next log requests: close the stream after N lines.
    pub log_drops: VecDeque<usize>,
    /// The container ended: streams close after the last line.
    pub log_done: bool,
    /// Streams opened from now on serve only lines at or after this time
    /// (a new container run: the kubelet serves the current container's
    /// log, not the earlier run's).
    pub log_floor: Option<Timestamp>,
    /// Follow streams opened from now on stay open and send nothing (a
    /// lagging stream); plain (non-follow) reads are served as usual.
    pub stall_follow: bool,
    /// Follow streams opened from now on carry what [`StandIn::send_log`]
    /// sends, as it is, instead of `log` (the latest stream replaces any
    /// earlier one).
    pub log_feed: bool,
    /// The follow stream `send_log` writes to.
    log_tx: Option<mpsc::Sender<Bytes>>,
    /// This many pod watch requests from now on fail with 500.
    pub pod_watch_fail: u32,
    /// Pod watches opened before this epoch end (see
    /// [`StandIn::cut_pod_watches`]).
    pod_watch_epoch: u64,
}

#[derive(Debug, Clone)]
struct Ctx {
    state: Arc<Mutex<StandInState>>,
    changed: watch::Sender<u64>,
}

impl Ctx {
    fn lock(&self) -> MutexGuard<'_, StandInState> {
        // A poisoned lock only means a handler panicked; the data is fine.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }
}

/// The running stand-in; stops when dropped.
#[derive(Debug)]
pub struct StandIn {
    /// Where it listens.
    pub addr: SocketAddr,
    ctx: Ctx,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StandIn {
    /// Starts the stand-in on a free port of 127.0.0.1, with no pod and no
    /// Lease.
    pub async fn start() -> std::io::Result<StandIn> {
        let ctx = Ctx {
            state: Arc::new(Mutex::new(StandInState::default())),
            changed: watch::channel(0u64).0,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(serve::serve(listener, ctx.clone()));
        Ok(StandIn { addr, ctx, task })
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client talking to the stand-in, as the sidecar builds it.
    pub fn client(&self) -> Result<kube::Client, kube::Error> {
        let uri = self
            .url()
            .parse()
            .map_err(|e: http::uri::InvalidUri| kube::Error::Service(e.into()))?;
        let mut config = kube::Config::new(uri);
        config.default_namespace = NS.to_owned();
        crate::run::client_from_config(config)
    }

    /// A kubeconfig file pointing at the stand-in, written to `dir`.
    pub fn kubeconfig(&self, dir: &Path) -> std::io::Result<PathBuf> {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: stand-in\n  cluster:\n    server: {}\ncontexts:\n- name: stand-in\n  context:\n    cluster: stand-in\n    user: stand-in\n    namespace: {NS}\ncurrent-context: stand-in\nusers:\n- name: stand-in\n  user:\n    token: not-a-secret\n",
            self.url()
        );
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// Reads or changes the state (waiters see the change).
    pub fn with<R>(&self, f: impl FnOnce(&mut StandInState) -> R) -> R {
        let r = f(&mut self.ctx.lock());
        self.ctx.bump();
        r
    }

    /// The requests with `method` whose path ends with `path_suffix`.
    pub fn requests(&self, method: &str, path_suffix: &str) -> Vec<Seen> {
        self.with(|s| {
            s.requests
                .iter()
                .filter(|r| r.method == method && r.path.ends_with(path_suffix))
                .cloned()
                .collect()
        })
    }

    /// How many requests came, by `METHOD path`.
    pub fn request_counts(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for r in &self.ctx.lock().requests {
            *counts
                .entry(format!("{} {}", r.method, r.path))
                .or_default() += 1;
        }
        counts
    }

    /// Waits until `cond` holds (checked after every change and request),
    /// at most `timeout`; whether it does.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut cond: impl FnMut(&StandInState) -> bool,
    ) -> bool {
        let mut rx = self.ctx.changed.subscribe();
        let fut = async {
            loop {
                if cond(&self.ctx.lock()) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(timeout, fut).await.is_ok()
    }

    /// Waits until `cond` holds, for tests.
    ///
    /// # Panics
    ///
    /// When it does not within 20 s, naming `what`.
    pub async fn wait_for(&self, what: &str, cond: impl FnMut(&StandInState) -> bool) {
        assert!(
            self.wait_until(WAIT, cond).await,
            "timed out waiting for {what}"
        );
    }

    /// Sets the pod and bumps its resourceVersion (watchers get MODIFIED).
    pub fn set_pod(&self, pod: Value) {
        self.with(|s| {
            s.pod_rv += 1;
            let mut pod = pod;
            pod["metadata"]["resourceVersion"] = json!(s.pod_rv.to_string());
            s.pod = Some(pod);
        });
    }

    /// Ends every open pod watch, as an API server restart does; the pod
    /// itself stays as it is.
    pub fn cut_pod_watches(&self) {
        self.with(|s| s.pod_watch_epoch += 1);
        self.ctx.bump();
    }

    /// Creates (or replaces) the pod's Lease, holding `history` if given.
    pub fn set_lease(&self, history: Option<&str>) {
        self.with(|s| {
            s.lease_rv += 1;
            let mut lease = json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": format!("arc-watchdog.{POD}"),
                    "namespace": NS,
                    "resourceVersion": s.lease_rv.to_string(),
                    "labels": {"app.kubernetes.io/managed-by": "arc-watchdog"},
                },
                "spec": {},
            });
            if let Some(h) = history {
                lease["metadata"]["annotations"] = json!({ ANNOTATION_HISTORY: h });
            }
            s.lease = Some(lease);
        });
    }

    /// Waits until the history in the Lease holds run `id` (a container ID).
    pub async fn wait_for_run(&self, id: &str) {
        self.wait_for(&format!("run {id} in the Lease"), |s| {
            stored(s).is_some_and(|h| h.run.is_some_and(|r| r.id == id))
        })
        .await;
    }

    /// Waits until a follow stream of the listener's log was opened.
    pub async fn wait_for_follow(&self) {
        self.wait_for("the follow stream to be opened", |s| {
            s.requests.iter().any(is_follow)
        })
        .await;
    }

    /// How many follow streams of the listener's log were opened.
    pub fn log_opens(&self) -> usize {
        self.ctx
            .lock()
            .requests
            .iter()
            .filter(|r| is_follow(r))
            .count()
    }

    /// Waits until a fed follow stream is open (see
    /// [`StandInState::log_feed`]), at most `timeout`; whether one is.
    pub async fn wait_log_open(&self, timeout: Duration) -> bool {
        self.wait_until(timeout, |s| s.log_tx.is_some()).await
    }

    /// Sends `chunk` on the open fed follow stream (waits while the reader
    /// is not reading). `false` when none is open.
    pub async fn send_log(&self, chunk: Bytes) -> bool {
        let tx = self.ctx.lock().log_tx.clone();
        match tx {
            Some(tx) => tx.send(chunk).await.is_ok(),
            None => false,
        }
    }
}

fn is_follow(r: &Seen) -> bool {
    r.path.ends_with("/log") && r.query.contains("follow=true")
}

/// The history a Lease (or a Lease body sent to the stand-in) holds, if
/// its annotation holds a readable one.
pub fn history(lease: &Value) -> Option<History> {
    lease["metadata"]["annotations"][ANNOTATION_HISTORY]
        .as_str()
        .and_then(|h| History::from_json(h).ok())
}

/// The history the stand-in's Lease holds now.
pub fn stored(s: &StandInState) -> Option<History> {
    s.lease.as_ref().and_then(history)
}

/// How many Events with `reason` the stand-in got about the pod (each one
/// has a twin on the AutoscalingListener, not counted here).
pub fn pod_events(s: &StandInState, reason: &str) -> usize {
    s.events
        .iter()
        .filter(|e| e["reason"] == reason && e["regarding"]["kind"] == "Pod")
        .count()
}
