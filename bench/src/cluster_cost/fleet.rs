//! The load of `apiserver-cost`: ARC-shaped listener pods created through
//! the API server (and so through the webhook, which injects the watchdog
//! and gives it its Role, RoleBinding and Lease), run by the fake node,
//! each with its listener log served through the API server's kubelet
//! proxy; on them either injected watchdogs (`arc-watchdog run` as the
//! kubelet would start it) or the kubelet-equivalent floor, a pair of
//! `kubectl logs -f` and `kubectl get pod -w` per pod.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use arc_watchdog::detector::{ANNOTATION_HISTORY, History};
use arc_watchdog::names;
use arc_watchdog::parser::{ListenerEvent, classify};
use arc_watchdog_tests::control_plane::{
    ControlPlane, LISTENER_NAMESPACE, OwnedProcess, WatchdogProcess, go_tool,
};
use arc_watchdog_tests::node::FakeNode;
use arc_watchdog_tests::per_listener;
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

/// The listener's container name.
pub const LISTENER: &str = "listener";

/// Pods set up at a time (each is a few API calls and a webhook review).
const SETUP_CONCURRENCY: usize = 4;

/// How long every watchdog or kubectl of a step gets to open its streams.
const OPEN_WITHIN: Duration = Duration::from_secs(120);

/// A line an ARC 0.14.2 listener writes on each long poll of its message
/// queue while it holds its session (numbered: the watchdog counts a
/// repeated line once).
pub fn poll_line(n: u64) -> String {
    format!(
        "{{\"time\":\"{}\",\"level\":\"INFO\",\"msg\":\"Getting next message\",\"component\":\"listener-app.listener\",\"lastMessageID\":{n}}}",
        jiff::Timestamp::now()
    )
}

/// Fails unless the parser takes [`poll_line`] for a held session.
pub fn check_poll_line() -> anyhow::Result<()> {
    let line = poll_line(1);
    if classify(line.as_bytes()) != ListenerEvent::SessionEstablished {
        bail!("the parser does not take {line} for a held session");
    }
    Ok(())
}

/// Creates the listener pods `cost-<i>` for `range` through the API
/// server, waits for their per-listener objects, runs them on `node` and
/// writes the first poll line to each log. Returns the stored pods.
pub async fn create_listeners(
    cp: &ControlPlane,
    node: &FakeNode,
    range: std::ops::Range<usize>,
) -> anyhow::Result<Vec<Pod>> {
    let admin = cp.admin_client().await?;
    futures::stream::iter(range)
        .map(|i| {
            let admin = admin.clone();
            async move {
                let ns = LISTENER_NAMESPACE;
                let pod = cp.create_listener(ns, &format!("cost-{i}")).await?;
                per_listener::wait_for_pod(&admin, &pod).await?;
                let name = pod.metadata.name.clone().context("a pod without a name")?;
                node.run_pod(ns, &name).await?;
                node.log(ns, &name, LISTENER, &poll_line(0));
                anyhow::Ok(pod)
            }
        })
        .buffered(SETUP_CONCURRENCY)
        .try_collect()
        .await
}

/// Starts the watchdog of each pod (binary `bin`), a few at a time.
pub async fn start_watchdogs(
    cp: &ControlPlane,
    pods: &[Pod],
    bin: &Path,
) -> anyhow::Result<Vec<WatchdogProcess>> {
    futures::stream::iter(pods)
        .map(|pod| WatchdogProcess::start_bin(cp, pod, bin, &[]))
        .buffered(SETUP_CONCURRENCY)
        .try_collect()
        .await
}

/// Waits until each of `pods`' watchdogs has saved its run with the
/// session held in its Lease: start-up done (its first Lease writes are
/// behind it), so that a window measured next sees it idle.
pub async fn await_settled(cp: &ControlPlane, pods: &[Pod]) -> anyhow::Result<()> {
    let leases: Api<Lease> = Api::namespaced(cp.admin_client().await?, LISTENER_NAMESPACE);
    let wanted: Vec<String> = pods
        .iter()
        .filter_map(|p| p.metadata.name.as_deref().map(names::lease_name))
        .collect();
    let deadline = Instant::now() + OPEN_WITHIN;
    loop {
        let list = leases.list(&ListParams::default()).await?;
        let settled: Vec<&str> = list
            .items
            .iter()
            .filter(|l| established(l))
            .filter_map(|l| l.metadata.name.as_deref())
            .collect();
        let missing = wanted
            .iter()
            .filter(|w| !settled.contains(&w.as_str()))
            .count();
        if missing == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{missing} of {} watchdogs did not save a held session within {OPEN_WITHIN:?}",
                wanted.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn established(lease: &Lease) -> bool {
    lease
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_HISTORY))
        .and_then(|json| History::from_json(json).ok())
        .and_then(|h| h.run)
        .is_some_and(|r| r.established)
}

/// `resourceVersion` of every Lease in the listeners' namespace, by name:
/// two of these tell which Leases were written in between.
pub async fn lease_versions(
    cp: &ControlPlane,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let leases: Api<Lease> = Api::namespaced(cp.admin_client().await?, LISTENER_NAMESPACE);
    Ok(leases
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|l| Some((l.metadata.name?, l.metadata.resource_version?)))
        .collect())
}

/// Writes a poll line to every listener's log every `every` until dropped:
/// listeners that hold their session and say so, as a real one does on
/// each long poll.
pub struct Poller {
    task: tokio::task::JoinHandle<()>,
}

impl Poller {
    /// Starts writing to the logs of `pods` on `node`.
    pub fn start(node: &FakeNode, pods: &[Pod], every: Duration) -> Self {
        let logs = node.logs().clone();
        let names: Vec<String> = pods
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            let mut n = 1;
            loop {
                tick.tick().await;
                for name in &names {
                    logs.append(LISTENER_NAMESPACE, name, LISTENER, &poll_line(n));
                }
                n += 1;
            }
        });
        Self { task }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `kubectl logs -f` and `kubectl get pod -w` on one listener pod: what
/// the kubelet holds through the API server for a pod (its pod watch) and
/// what one follower of its log costs, as the floor a watchdog is
/// compared with.
pub struct KubectlPair {
    logs: OwnedProcess,
    watch: OwnedProcess,
}

impl KubectlPair {
    /// Starts both on pod `name` as the admin.
    pub fn start(cp: &ControlPlane, name: &str) -> anyhow::Result<Self> {
        let kubectl = go_tool("kubectl")?;
        let command = |args: &[&str]| {
            let mut cmd = std::process::Command::new(&kubectl);
            cmd.env("KUBECONFIG", cp.kubeconfig())
                .env_remove("KUBERNETES_SERVICE_HOST")
                .args(["--namespace", LISTENER_NAMESPACE])
                .args(args);
            cmd
        };
        let logs = cp.start_process(
            &format!("kubectl-logs-{name}"),
            command(&["logs", "--follow", "--timestamps", name, "-c", LISTENER]),
        )?;
        let watch = cp.start_process(
            &format!("kubectl-watch-{name}"),
            command(&["get", "pod", name, "--watch", "--output=name"]),
        )?;
        Ok(Self { logs, watch })
    }

    /// Process ids of both.
    pub fn pids(&self) -> [u32; 2] {
        [self.logs.pid(), self.watch.pid()]
    }

    /// Whether one of them has exited (it should hold its stream).
    pub fn exited(&self) -> bool {
        self.logs.exited() || self.watch.exited()
    }

    /// Ends both (by pid).
    pub fn stop(&self) {
        self.logs.stop();
        self.watch.stop();
    }
}

/// Ends every pair, all at once and off the runtime (each stop blocks
/// until its process is gone).
pub async fn stop_pairs(pairs: Vec<KubectlPair>) {
    let stops = pairs
        .into_iter()
        .map(|pair| tokio::task::spawn_blocking(move || pair.stop()));
    futures::future::join_all(stops).await;
}

/// Ends every watchdog (SIGTERM, as the kubelet), all at once and off the
/// runtime: each takes up to a second for its final Lease save.
pub async fn stop_watchdogs(watchdogs: Vec<WatchdogProcess>) {
    let stops = watchdogs
        .into_iter()
        .map(|wd| tokio::task::spawn_blocking(move || wd.stop()));
    futures::future::join_all(stops).await;
}
