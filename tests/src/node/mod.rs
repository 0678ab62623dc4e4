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
//!
//! Where things are, one concern a file; everything public is re-exported
//! here, so callers name `node::X` whatever file `X` lives in:
//! - this file: [`FakeNode`]: the Node object, binding pods to it, and
//!   finishing graceful deletions;
//! - `status.rs`: the pod and container statuses it reports;
//! - `logs.rs`: the container log buffers and how a containerLogs request
//!   reads them (follow, timestamps, since, tail, previous);
//! - `server.rs`: the kubelet's HTTPS endpoint the API server proxies to.

mod logs;
mod server;
mod status;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result};
use futures::StreamExt as _;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher;
use kube::{Client, ResourceExt as _};
use tokio::task::JoinHandle;

pub use logs::{LogKey, LogQuery, Logs};
pub use status::{container_id, running_status};

use crate::control_plane::FIELD_MANAGER;

/// A fake Node and its kubelet HTTPS server.
pub struct FakeNode {
    name: String,
    port: u16,
    logs: Logs,
    server: JoinHandle<()>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    client: Client,
    /// Final DELETEs sent by [`FakeNode::finish_deletions`].
    deletes_sent: Arc<AtomicUsize>,
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
        let logs = Logs::default();
        let (port, server) = server::serve(name, logs.clone()).await?;

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
            deletes_sent: Arc::default(),
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

    /// Does what a kubelet does when a pod on this node is deleted
    /// gracefully: ends its log streams and removes it with grace period 0
    /// (precondition: same uid). Runs in the background until this node is
    /// dropped.
    pub fn finish_deletions(&self) {
        let client = self.client.clone();
        let pods: Api<Pod> = Api::all(client.clone());
        let node = self.name.clone();
        let logs = self.logs.clone();
        let deletes_sent = self.deletes_sent.clone();
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
                    deletes_sent.fetch_add(1, Ordering::Relaxed);
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

    /// How many final DELETEs [`Self::finish_deletions`] has sent (one per
    /// update seen of a pod being deleted: the later ones find it gone),
    /// for callers that count the requests the API server served.
    pub fn deletes_sent(&self) -> usize {
        self.deletes_sent.load(Ordering::Relaxed)
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

/// The kubelet server's address.
pub fn kubelet_addr(node: &FakeNode) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, node.port))
}

/// Marks node `name` NotReady (`Ready` `Unknown`, `NodeStatusUnknown`), as
/// the node lifecycle controller does once a kubelet stops posting its
/// status.
pub async fn mark_not_ready(client: &Client, name: &str) -> Result<()> {
    let now = Timestamp::now().to_string();
    Api::<Node>::all(client.clone())
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Strategic(serde_json::json!({"status": {"conditions": [{
                "type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
                "message": "Kubelet stopped posting node status.",
                "lastHeartbeatTime": now, "lastTransitionTime": now,
            }]}})),
        )
        .await
        .with_context(|| format!("marking node {name} NotReady"))?;
    Ok(())
}
