//! A fake Node whose "kubelet" is a small HTTPS server of ours on 127.0.0.1.
//!
//! The API server proxies `GET pods/NAME/log` to
//! `https://<node InternalIP>:<daemonEndpoints.kubeletEndpoint.Port>/containerLogs/NS/POD/CONTAINER`;
//! this module registers a Node with address 127.0.0.1 and the port of
//! [`FakeNode`]'s server, which serves container logs from in-memory buffers
//! that the test appends to ([`FakeNode::log`]), honouring `follow`
//! (each line flushed as it is appended; the stream ends when the
//! container is marked terminated with [`FakeNode::end_logs`]),
//! `timestamps`, `sinceTime`, `sinceSeconds`, `tailLines` and `previous`.
//!
//! It also does the other things a kubelet would, on request: bind a pod to
//! the node (`pods/NAME/binding`), write pod status
//! ([`FakeNode::set_pod_status`]), and finish graceful deletions with grace
//! period 0 ([`FakeNode::finish_deletions`]). The e2e tests' process kubelet
//! builds on this.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result, anyhow};
use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher;
use kube::{Client, ResourceExt as _};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::control_plane::FIELD_MANAGER;

/// Which container's log: namespace, pod, container.
pub type LogKey = (String, String, String);

#[derive(Debug)]
struct Buffer {
    /// Current run's lines with their timestamps.
    lines: Vec<(Timestamp, String)>,
    /// The previous run's lines (`previous=true`).
    previous: Vec<(Timestamp, String)>,
    /// The container terminated: followers get EOF after the last line.
    ended: bool,
    /// Bumped on every change; followers wait on it.
    version: watch::Sender<u64>,
}

impl Buffer {
    fn new() -> Self {
        Self {
            lines: Vec::new(),
            previous: Vec::new(),
            ended: false,
            version: watch::Sender::new(0),
        }
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }
}

/// In-memory container logs, shared between the test and the server.
#[derive(Debug, Clone, Default)]
pub struct Logs {
    inner: Arc<Mutex<HashMap<LogKey, Buffer>>>,
    requests: Arc<Mutex<Vec<String>>>,
}

fn key(ns: &str, pod: &str, container: &str) -> LogKey {
    (ns.to_owned(), pod.to_owned(), container.to_owned())
}

impl Logs {
    fn with<R>(&self, k: LogKey, f: impl FnOnce(&mut Buffer) -> R) -> R {
        let mut map = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(map.entry(k).or_insert_with(Buffer::new))
    }

    /// Appends one line (without trailing newline) to a container's current run.
    pub fn append(&self, ns: &str, pod: &str, container: &str, line: &str) {
        self.with(key(ns, pod, container), |b| {
            b.lines.push((Timestamp::now(), line.to_owned()));
            b.bump();
        });
    }

    /// Marks the container's current run terminated: following streams end.
    pub fn end(&self, ns: &str, pod: &str, container: &str) {
        self.with(key(ns, pod, container), |b| {
            b.ended = true;
            b.bump();
        });
    }

    /// Starts a new run of the container (a restart in place, or a new pod
    /// generation with the same name): the current lines become `previous`,
    /// and open follow streams of the old run end.
    pub fn restart(&self, ns: &str, pod: &str, container: &str) {
        self.with(key(ns, pod, container), |b| {
            b.previous = std::mem::take(&mut b.lines);
            b.ended = false;
            // Replace the sender: followers of the old run see it closed.
            let old = std::mem::replace(&mut b.version, watch::Sender::new(0));
            drop(old);
        });
    }

    /// Forgets every container log of pod `ns/pod`: a new pod with the same
    /// name (ARC reuses listener names) has new containers and empty logs.
    /// Open follow streams of the old pod end.
    pub fn forget_pod(&self, ns: &str, pod: &str) {
        let mut map = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.retain(|(n, p, _), _| !(n == ns && p == pod));
    }

    /// Every containerLogs request served so far (`path?query`), oldest
    /// first: what the API server asked on behalf of its clients.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The current run's lines with the timestamps they are served with
    /// (what a resumed stream's `sinceTime` is compared with).
    pub fn stamped_lines(&self, ns: &str, pod: &str, container: &str) -> Vec<(Timestamp, String)> {
        self.with(key(ns, pod, container), |b| b.lines.clone())
    }

    /// The current run's lines (without timestamps).
    pub fn lines(&self, ns: &str, pod: &str, container: &str) -> Vec<String> {
        self.with(key(ns, pod, container), |b| {
            b.lines.iter().map(|(_, l)| l.clone()).collect()
        })
    }
}

/// What the API server asked for (the kubelet's containerLogs query).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LogQuery {
    /// `follow=true`.
    pub follow: bool,
    /// `timestamps=true`: each line prefixed by an RFC 3339 timestamp and a space.
    pub timestamps: bool,
    /// `previous=true`.
    pub previous: bool,
    /// `sinceTime=` (RFC 3339): lines at or after it.
    pub since_time: Option<Timestamp>,
    /// `sinceSeconds=`.
    pub since_seconds: Option<i64>,
    /// `tailLines=`.
    pub tail_lines: Option<usize>,
}

impl LogQuery {
    /// Parses the query string of a containerLogs request.
    pub fn parse(query: &str) -> Result<Self> {
        let mut q = Self::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            let flag = v == "true" || v == "1";
            match k {
                "follow" => q.follow = flag,
                "timestamps" => q.timestamps = flag,
                "previous" => q.previous = flag,
                "sinceTime" => {
                    q.since_time = Some(v.parse().with_context(|| format!("sinceTime {v:?}"))?)
                }
                "sinceSeconds" => {
                    q.since_seconds =
                        Some(v.parse().with_context(|| format!("sinceSeconds {v:?}"))?)
                }
                "tailLines" => {
                    q.tail_lines = Some(v.parse().with_context(|| format!("tailLines {v:?}"))?)
                }
                _ => {}
            }
        }
        Ok(q)
    }

    fn since(&self, now: Timestamp) -> Option<Timestamp> {
        let by_seconds = self
            .since_seconds
            .and_then(|s| now.checked_sub(jiff::SignedDuration::from_secs(s)).ok());
        match (self.since_time, by_seconds) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// Renders one line as the kubelet does.
    pub fn render(&self, ts: Timestamp, line: &str) -> String {
        if self.timestamps {
            // RFC 3339 with nanoseconds, as the kubelet's CRI log lines.
            format!("{} {line}\n", ts.strftime("%Y-%m-%dT%H:%M:%S%.9fZ"))
        } else {
            format!("{line}\n")
        }
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    out.push(b);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

type Body = BoxBody<Bytes, Infallible>;

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_owned())).boxed());
    *r.status_mut() = status;
    r
}

fn serve_logs(logs: &Logs, path: &str, query: &str) -> Response<Body> {
    if let Ok(mut r) = logs.requests.lock() {
        r.push(format!("{path}?{query}"));
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let [_, ns, pod, container] = parts.as_slice() else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    let q = match LogQuery::parse(query) {
        Ok(q) => q,
        Err(e) => return text(StatusCode::BAD_REQUEST, &format!("{e:#}\n")),
    };
    let k = key(ns, pod, container);
    let since = q.since(Timestamp::now());
    let keep = move |ts: &Timestamp| since.is_none_or(|s| *ts >= s);
    let (initial, mut rx, ended, start_index) = logs.with(k.clone(), |b| {
        let source = if q.previous { &b.previous } else { &b.lines };
        let mut selected: Vec<(Timestamp, String)> =
            source.iter().filter(|(ts, _)| keep(ts)).cloned().collect();
        if let Some(n) = q.tail_lines {
            selected = selected.split_off(selected.len().saturating_sub(n));
        }
        (
            selected,
            b.version.subscribe(),
            b.ended || q.previous,
            source.len(),
        )
    });
    let mut head = String::new();
    for (ts, l) in &initial {
        head.push_str(&q.render(*ts, l));
    }
    if !q.follow || ended {
        return Response::new(Full::new(Bytes::from(head)).boxed());
    }
    // Follow: first what exists, then every new line as its own chunk (so it
    // is flushed at once), until the run ends.
    let logs = logs.clone();
    let first = futures::stream::iter([Ok::<_, Infallible>(Frame::data(Bytes::from(head)))]);
    rx.mark_unchanged();
    let rest = futures::stream::unfold(
        (start_index, rx, false),
        move |(mut index, mut rx, done)| {
            let logs = logs.clone();
            let k = k.clone();
            let q = q.clone();
            async move {
                if done {
                    return None;
                }
                loop {
                    let (chunk, ended) = logs.with(k.clone(), |b| {
                        let mut chunk = String::new();
                        for (ts, l) in b.lines.iter().skip(index) {
                            chunk.push_str(&q.render(*ts, l));
                        }
                        index = b.lines.len().max(index);
                        (chunk, b.ended)
                    });
                    if !chunk.is_empty() {
                        return Some((Ok(Frame::data(Bytes::from(chunk))), (index, rx, ended)));
                    }
                    // A closed sender means a new run started: this one is over.
                    if ended || rx.changed().await.is_err() {
                        return None;
                    }
                }
            }
        },
    );
    Response::new(BodyExt::boxed(StreamBody::new(first.chain(rest))))
}

/// A fake Node and its kubelet HTTPS server.
pub struct FakeNode {
    name: String,
    port: u16,
    logs: Logs,
    server: JoinHandle<()>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    client: Client,
}

impl std::fmt::Debug for FakeNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeNode")
            .field("name", &self.name)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl FakeNode {
    /// Starts the kubelet server on 127.0.0.1 (a self-signed certificate:
    /// the API server does not verify kubelets without
    /// `--kubelet-certificate-authority`), registers the Node `name` with
    /// InternalIP 127.0.0.1 and that port, and marks it Ready.
    pub async fn start(client: Client, name: &str) -> Result<Self> {
        let bundle = arc_watchdog_certs::generate(&arc_watchdog_certs::Options {
            dns: vec![name.to_owned()],
            ips: vec![std::net::IpAddr::V4(Ipv4Addr::LOCALHOST)],
            days: 7,
        })?;
        let certs = rustls_pemfile::certs(&mut bundle.serving.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()?;
        let key = rustls_pemfile::private_key(&mut bundle.serving.key_pem.as_bytes())?
            .ok_or_else(|| anyhow!("no private key in generated PEM"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let port = listener.local_addr()?.port();
        let logs = Logs::default();
        let server = tokio::spawn(accept_loop(listener, acceptor, logs.clone()));

        let nodes: Api<Node> = Api::all(client.clone());
        let node = serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/os": "linux", "kubernetes.io/hostname": name}},
        });
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        nodes
            .patch(name, &pp, &Patch::Apply(&node))
            .await
            .with_context(|| format!("creating node {name}"))?;
        let now = Timestamp::now().to_string();
        let status = serde_json::json!({
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "status": {
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "fake kubelet of arc-watchdog tests", "lastHeartbeatTime": now, "lastTransitionTime": now}],
                "capacity": {"cpu": "8", "memory": "16Gi", "pods": "110"},
                "allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"},
                "nodeInfo": {"kubeletVersion": crate::control_plane::KUBE_VERSION, "operatingSystem": "linux", "architecture": "amd64",
                    "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "", "osImage": "", "containerRuntimeVersion": "fake://0", "kubeProxyVersion": ""},
            }
        });
        nodes
            .patch_status(name, &pp, &Patch::Apply(&status))
            .await
            .with_context(|| format!("writing status of node {name}"))?;
        Ok(Self {
            name: name.to_owned(),
            port,
            logs,
            server,
            tasks: Mutex::new(Vec::new()),
            client,
        })
    }

    /// The Node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The kubelet server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The log buffers this node serves.
    pub fn logs(&self) -> &Logs {
        &self.logs
    }

    /// Appends a line to a container's log (see [`Logs::append`]).
    pub fn log(&self, ns: &str, pod: &str, container: &str, line: &str) {
        self.logs.append(ns, pod, container, line);
    }

    /// Ends a container's current log run (see [`Logs::end`]).
    pub fn end_logs(&self, ns: &str, pod: &str, container: &str) {
        self.logs.end(ns, pod, container);
    }

    /// Binds a pod to this node (what the scheduler does). The node starts
    /// with empty logs for it (see [`Logs::forget_pod`]).
    pub async fn bind(&self, ns: &str, pod: &str) -> Result<()> {
        self.logs.forget_pod(ns, pod);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let binding = serde_json::json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": pod, "namespace": ns},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.name},
        });
        let _: serde_json::Value = pods
            .create_subresource("binding", pod, &PostParams::default(), &binding)
            .await
            .with_context(|| format!("binding {ns}/{pod} to {}", self.name))?;
        Ok(())
    }

    /// Writes a pod's status (what a kubelet reports) by a merge patch of
    /// `status`, e.g. from [`running_status`].
    pub async fn set_pod_status(
        &self,
        ns: &str,
        pod: &str,
        status: serde_json::Value,
    ) -> Result<Pod> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        pods.patch_status(
            pod,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": status})),
        )
        .await
        .with_context(|| format!("writing status of {ns}/{pod}"))
    }

    /// Marks every container of the pod running and ready, phase Running.
    pub async fn set_running(&self, ns: &str, pod: &str) -> Result<Pod> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let p = pods
            .get(pod)
            .await
            .with_context(|| format!("reading {ns}/{pod}"))?;
        self.set_pod_status(ns, pod, running_status(&p)).await
    }

    /// Binds the pod to this node and reports it running and ready (the
    /// scheduler's and the kubelet's part of starting a pod, without running
    /// anything). Returns the pod with that status.
    pub async fn run_pod(&self, ns: &str, pod: &str) -> Result<Pod> {
        self.bind(ns, pod).await?;
        self.set_running(ns, pod).await
    }

    /// Reports a container's current run as terminated with `exit_code`
    /// (what the kubelet reports when the process exits) and ends its log
    /// stream. `phase`, when given, is written too (e.g. `Failed` when the
    /// only regular container of a `restartPolicy: Never` pod failed).
    pub async fn terminate_container(
        &self,
        ns: &str,
        pod: &str,
        container: &str,
        exit_code: i32,
        phase: Option<&str>,
    ) -> Result<Pod> {
        self.logs.end(ns, pod, container);
        let now = Timestamp::now().to_string();
        self.edit_container_status(ns, pod, container, phase, |st| {
            let started = st["state"]["running"]["startedAt"].clone();
            st["state"] = serde_json::json!({"terminated": {
                "exitCode": exit_code, "reason": if exit_code == 0 { "Completed" } else { "Error" },
                "startedAt": started, "finishedAt": now, "containerID": st["containerID"].clone(),
            }});
            st["ready"] = false.into();
            st["started"] = false.into();
        })
        .await
    }

    /// Reports that a container restarted in place (new container ID,
    /// restartCount + 1, the old run as `lastState`); its log starts afresh
    /// (the old one becomes `previous`).
    pub async fn restart_container(&self, ns: &str, pod: &str, container: &str) -> Result<Pod> {
        self.logs.restart(ns, pod, container);
        let now = Timestamp::now().to_string();
        let p: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let uid = p.get(pod).await?.metadata.uid.unwrap_or_default();
        self.edit_container_status(ns, pod, container, None, |st| {
            let count = st["restartCount"].as_i64().unwrap_or(0) + 1;
            let last = st["state"].clone();
            st["lastState"] = last;
            st["restartCount"] = count.into();
            st["containerID"] =
                container_id(&uid, container, i32::try_from(count).unwrap_or(i32::MAX)).into();
            st["state"] = serde_json::json!({"running": {"startedAt": now}});
            st["ready"] = true.into();
            st["started"] = true.into();
        })
        .await
    }

    async fn edit_container_status(
        &self,
        ns: &str,
        pod: &str,
        container: &str,
        phase: Option<&str>,
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> Result<Pod> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let current = api
            .get(pod)
            .await
            .with_context(|| format!("reading {ns}/{pod}"))?;
        let mut status = serde_json::to_value(current.status.unwrap_or_default())?;
        let mut edit = Some(edit);
        for list in ["containerStatuses", "initContainerStatuses"] {
            if let Some(items) = status[list].as_array_mut() {
                for st in items.iter_mut().filter(|st| st["name"] == container) {
                    if let Some(f) = edit.take() {
                        f(st);
                    }
                }
            }
        }
        anyhow::ensure!(
            edit.is_none(),
            "{ns}/{pod} has no status for container {container}"
        );
        if let Some(phase) = phase {
            status["phase"] = phase.into();
        }
        // A merge patch replaces lists whole: send both complete lists.
        let patch = serde_json::json!({"status": {
            "phase": status["phase"].clone(),
            "containerStatuses": status["containerStatuses"].clone(),
            "initContainerStatuses": status["initContainerStatuses"].clone(),
        }});
        api.patch_status(pod, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .with_context(|| format!("writing status of {ns}/{pod}"))
    }

    /// Does what a kubelet does when a pod on this node is deleted
    /// gracefully: ends its log streams and removes it with grace period 0
    /// (precondition: same uid). Runs in the background until this node is
    /// dropped.
    pub fn finish_deletions(&self) {
        let client = self.client.clone();
        let pods: Api<Pod> = Api::all(client.clone());
        let node = self.name.clone();
        let logs = self.logs.clone();
        let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let task = tokio::spawn(async move {
            let mut stream = watcher::watcher(pods.clone(), cfg).boxed();
            while let Some(ev) = stream.next().await {
                let pods_seen: Vec<Pod> = match ev {
                    Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => vec![p],
                    _ => continue,
                };
                for p in pods_seen {
                    if p.metadata.deletion_timestamp.is_none() {
                        continue;
                    }
                    let ns = p.namespace().unwrap_or_default();
                    let name = p.name_any();
                    for c in p.spec.iter().flat_map(|s| {
                        s.containers
                            .iter()
                            .chain(s.init_containers.iter().flatten())
                    }) {
                        logs.end(&ns, &name, &c.name);
                    }
                    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
                    let dp = DeleteParams {
                        grace_period_seconds: Some(0),
                        preconditions: Some(Preconditions {
                            uid: p.uid(),
                            resource_version: None,
                        }),
                        ..DeleteParams::default()
                    };
                    if let Err(e) = api.delete(&name, &dp).await {
                        tracing::debug!(error = %e, pod = %name, "fake kubelet: final delete failed");
                    }
                }
            }
        });
        self.tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(task);
    }

    /// Removes the Node object and stops the server.
    pub async fn delete(self) -> Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        nodes.delete(&self.name, &DeleteParams::default()).await?;
        Ok(())
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.server.abort();
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain(..)
        {
            t.abort();
        }
    }
}

/// The container ID the fake kubelet reports: unique per pod, container
/// and run (the watchdog tells runs apart by it).
pub fn container_id(pod_uid: &str, container: &str, restart_count: i32) -> String {
    format!("fake://{pod_uid}/{container}/{restart_count}")
}

/// A `status` for [`FakeNode::set_pod_status`]: phase Running, Ready, every
/// container (and restartable init container) running and ready.
pub fn running_status(pod: &Pod) -> serde_json::Value {
    let now = Timestamp::now().to_string();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let state = |name: &str, image: &str| {
        serde_json::json!({
            "name": name, "image": image, "imageID": "", "ready": true, "started": true, "restartCount": 0,
            "containerID": container_id(&uid, name, 0),
            "state": {"running": {"startedAt": now}},
        })
    };
    let containers: Vec<_> = spec
        .containers
        .iter()
        .map(|c| state(&c.name, c.image.as_deref().unwrap_or("")))
        .collect();
    let inits: Vec<_> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| state(&c.name, c.image.as_deref().unwrap_or("")))
        .collect();
    serde_json::json!({
        "phase": "Running",
        "hostIP": "127.0.0.1", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
        "startTime": now,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
            {"type": "Ready", "status": "True", "lastTransitionTime": now},
        ],
        "containerStatuses": containers,
        "initContainerStatuses": inits,
    })
}

async fn accept_loop(listener: TcpListener, acceptor: tokio_rustls::TlsAcceptor, logs: Logs) {
    loop {
        let Ok((tcp, _peer)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let logs = logs.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let logs = logs.clone();
                async move { Ok::<_, Infallible>(route(&logs, &req)) }
            });
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
        });
    }
}

fn route<B>(logs: &Logs, req: &Request<B>) -> Response<Body> {
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or("");
    if req.method() == hyper::Method::GET && path.starts_with("/containerLogs/") {
        serve_logs(logs, path, query)
    } else if path == "/healthz" {
        text(StatusCode::OK, "ok")
    } else {
        text(
            StatusCode::NOT_FOUND,
            "the fake kubelet of arc-watchdog's tests serves only /containerLogs\n",
        )
    }
}

/// The kubelet server's address.
pub fn kubelet_addr(node: &FakeNode) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, node.port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsed() {
        let q = LogQuery::parse(
            "follow=true&timestamps=true&sinceTime=2026-01-02T03%3A04%3A05Z&tailLines=5",
        )
        .unwrap();
        assert!(q.follow && q.timestamps && !q.previous);
        assert_eq!(q.since_time, Some("2026-01-02T03:04:05Z".parse().unwrap()));
        assert_eq!(q.tail_lines, Some(5));
        assert!(LogQuery::parse("sinceTime=yesterday").is_err());
    }

    #[test]
    fn lines_rendered_like_the_kubelet() {
        let ts: Timestamp = "2026-01-02T03:04:05.5Z".parse().unwrap();
        let q = LogQuery {
            timestamps: true,
            ..LogQuery::default()
        };
        assert_eq!(
            q.render(ts, "hello"),
            "2026-01-02T03:04:05.500000000Z hello\n"
        );
        assert_eq!(LogQuery::default().render(ts, "hello"), "hello\n");
    }

    #[test]
    fn since_time_and_tail_filter() {
        let logs = Logs::default();
        logs.append("n", "p", "c", "one");
        logs.append("n", "p", "c", "two");
        logs.append("n", "p", "c", "three");
        let resp = serve_logs(&logs, "/containerLogs/n/p/c", "tailLines=2");
        assert_eq!(resp.status(), StatusCode::OK);
        let body = futures::executor::block_on(resp.into_body().collect())
            .unwrap()
            .to_bytes();
        assert_eq!(body, Bytes::from("two\nthree\n"));
        let resp = serve_logs(
            &logs,
            "/containerLogs/n/p/c",
            "sinceTime=2999-01-01T00:00:00Z",
        );
        let body = futures::executor::block_on(resp.into_body().collect())
            .unwrap()
            .to_bytes();
        assert!(body.is_empty());
    }

    #[tokio::test]
    async fn follow_streams_new_lines_and_ends_with_the_run() {
        let logs = Logs::default();
        logs.append("n", "p", "c", "first");
        let resp = serve_logs(&logs, "/containerLogs/n/p/c", "follow=true");
        let mut body = resp.into_body();
        let f = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(f, Bytes::from("first\n"));
        logs.append("n", "p", "c", "second");
        let f = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(f, Bytes::from("second\n"));
        logs.end("n", "p", "c");
        assert!(body.frame().await.is_none());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%3Ab+c"), "a:b c");
        assert_eq!(percent_decode("100%"), "100%");
    }
}
