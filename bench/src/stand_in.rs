//! A stand-in for the few Kubernetes API endpoints `arc-watchdog run`
//! uses, on 127.0.0.1, for the `watchdog-rss` figure: its own pod (get,
//! list and watch by field selector), the listener's `pods/log` follow
//! stream (fed by the bench at a set rate), its Lease (get, update with a
//! resourceVersion check), Events (events.k8s.io create and patch) and the
//! Eviction subresource. Anything else is a 404 Status and is counted, so
//! the bench can show what the watchdog asked for.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context as _;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

/// Namespace of the pod.
pub const NS: &str = "arc-systems";
/// Name of the listener pod the watchdog runs in.
pub const POD: &str = "bench-754b578d-listener";
/// UID of the pod.
pub const POD_UID: &str = "6f1c2d3e-0000-4b00-9c00-00000000be0c";
/// Container ID of the listener's running container.
pub const CONTAINER_ID: &str = "containerd://bench-listener-1";

#[derive(Debug, Default)]
struct Shared {
    /// Requests by `METHOD path`.
    requests: BTreeMap<String, u64>,
    lease: Value,
    lease_rv: u64,
    /// The open follow stream of the listener's log, if any.
    log: Option<mpsc::Sender<Bytes>>,
    log_opens: u64,
    /// Watch streams held open until the stand-in stops.
    watches: Vec<mpsc::Sender<Bytes>>,
    /// The pod as it is now.
    pod: Value,
}

#[derive(Clone)]
struct Ctx {
    shared: Arc<Mutex<Shared>>,
    changed: watch::Sender<u64>,
}

impl Ctx {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A poisoned lock only means a handler panicked; the data is fine.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The running stand-in; stops when dropped.
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

/// The listener pod: a 0.14.2 listener owned by its AutoscalingListener,
/// with the watchdog as a native sidecar, the listener running.
fn pod_json(started: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": POD,
            "namespace": NS,
            "uid": POD_UID,
            "resourceVersion": "1",
            "labels": {
                "app.kubernetes.io/component": "runner-scale-set-listener",
                "app.kubernetes.io/part-of": "gha-runner-scale-set",
                "app.kubernetes.io/version": "0.14.2",
                "actions.github.com/scale-set-name": "bench",
            },
            "ownerReferences": [{
                "apiVersion": "actions.github.com/v1alpha1",
                "kind": "AutoscalingListener",
                "name": POD,
                "uid": "6f1c2d3e-0000-4b00-9c00-00000000a11c",
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        },
        "spec": {
            "serviceAccountName": "bench-listener",
            "restartPolicy": "Never",
            "initContainers": [{
                "name": "arc-watchdog",
                "image": "ghcr.io/example/arc-watchdog:bench",
                "restartPolicy": "Always",
                "args": ["run"],
            }],
            "containers": [{
                "name": "listener",
                "image": "ghcr.io/actions/gha-runner-scale-set-controller:0.14.2",
                "command": ["/ghalistener"],
            }],
        },
        "status": {
            "phase": "Running",
            "initContainerStatuses": [{
                "name": "arc-watchdog",
                "image": "ghcr.io/example/arc-watchdog:bench",
                "imageID": "",
                "ready": true,
                "started": true,
                "restartCount": 0,
                "containerID": "containerd://bench-watchdog-1",
                "state": {"running": {"startedAt": started}},
            }],
            "containerStatuses": [{
                "name": "listener",
                "image": "ghcr.io/actions/gha-runner-scale-set-controller:0.14.2",
                "imageID": "",
                "ready": true,
                "started": true,
                "restartCount": 0,
                "containerID": CONTAINER_ID,
                "state": {"running": {"startedAt": started}},
            }],
        },
    })
}

fn lease_json() -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": format!("arc-watchdog-{POD}"),
            "namespace": NS,
            "resourceVersion": "1",
            "labels": {"app.kubernetes.io/managed-by": "arc-watchdog"},
        },
        "spec": {},
    })
}

impl StandIn {
    /// Starts the stand-in on a free port of 127.0.0.1.
    pub async fn start(started: &str) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the stand-in API server")?;
        let addr = listener.local_addr()?;
        let ctx = Ctx {
            shared: Arc::new(Mutex::new(Shared {
                lease: lease_json(),
                lease_rv: 1,
                pod: pod_json(started),
                ..Shared::default()
            })),
            changed: watch::channel(0).0,
        };
        let app = Router::new().fallback(handle).with_state(ctx.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, ctx, task })
    }

    /// A kubeconfig for the watchdog, written to `dir`.
    pub fn kubeconfig(&self, dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: stand-in\n  cluster:\n    server: http://{}\ncontexts:\n- name: stand-in\n  context:\n    cluster: stand-in\n    user: bench\n    namespace: {NS}\ncurrent-context: stand-in\nusers:\n- name: bench\n  user:\n    token: bench-token-not-a-secret\n",
            self.addr
        );
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// How many follow streams of the listener's log were opened.
    pub fn log_opens(&self) -> u64 {
        self.ctx.lock().log_opens
    }

    /// Waits until a follow stream is open, at most `timeout`.
    pub async fn wait_log_open(&self, timeout: std::time::Duration) -> anyhow::Result<()> {
        let mut changed = self.ctx.changed.subscribe();
        tokio::time::timeout(timeout, async {
            while self.ctx.lock().log.is_none() {
                if changed.changed().await.is_err() {
                    break;
                }
            }
        })
        .await
        .with_context(|| {
            format!(
                "the watchdog did not open the listener's log within {timeout:?}; requests seen: {:?}",
                self.requests()
            )
        })
    }

    /// Sends `chunk` on the open follow stream (waits while the watchdog
    /// is not reading). `false` when no stream is open.
    pub async fn send_log(&self, chunk: Bytes) -> bool {
        let tx = self.ctx.lock().log.clone();
        match tx {
            Some(tx) => tx.send(chunk).await.is_ok(),
            None => false,
        }
    }

    /// Requests seen, by `METHOD path`.
    pub fn requests(&self) -> BTreeMap<String, u64> {
        self.ctx.lock().requests.clone()
    }
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": if code < 300 { "Success" } else { "Failure" },
        "message": message, "reason": reason, "code": code,
    });
    json_response(code, &body)
}

fn json_response(code: u16, v: &Value) -> Response {
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [("content-type", "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn has_param(query: &str, key: &str, value: &str) -> bool {
    query
        .split('&')
        .any(|kv| kv.split_once('=') == Some((key, value)))
}

fn stream_body(rx: mpsc::Receiver<Bytes>) -> Body {
    let s = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    Body::from_stream(s)
}

async fn handle(State(ctx): State<Ctx>, method: Method, uri: Uri, body: Bytes) -> Response {
    let path = uri.path();
    let query = uri.query().unwrap_or("");
    let pods = format!("/api/v1/namespaces/{NS}/pods");
    let pod_path = format!("{pods}/{POD}");
    let lease_path =
        format!("/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/arc-watchdog-{POD}");
    let events_path = format!("/apis/events.k8s.io/v1/namespaces/{NS}/events");
    *ctx.lock()
        .requests
        .entry(format!("{method} {path}"))
        .or_default() += 1;

    let response = match (method.as_str(), path) {
        ("GET", p) if p == pods && has_param(query, "watch", "true") => {
            // Nothing changes: the watch stays open and quiet.
            let (tx, rx) = mpsc::channel(4);
            ctx.lock().watches.push(tx);
            (
                StatusCode::OK,
                [("content-type", "application/json")],
                stream_body(rx),
            )
                .into_response()
        }
        ("GET", p) if p == pods => json_response(
            200,
            &json!({"apiVersion": "v1", "kind": "PodList",
                "metadata": {"resourceVersion": ctx.lock().pod["metadata"]["resourceVersion"]},
                "items": [ctx.lock().pod.clone()]}),
        ),
        ("GET", p) if p == pod_path => json_response(200, &ctx.lock().pod),
        ("GET", p) if p == format!("{pod_path}/log") => {
            let (tx, rx) = mpsc::channel(64);
            {
                let mut s = ctx.lock();
                // A reconnect replaces the previous stream.
                s.log = Some(tx);
                s.log_opens += 1;
            }
            (
                StatusCode::OK,
                [("content-type", "text/plain")],
                stream_body(rx),
            )
                .into_response()
        }
        ("POST", p) if p == format!("{pod_path}/eviction") => status(201, "", ""),
        ("GET", p) if p == lease_path => json_response(200, &ctx.lock().lease),
        ("PUT", p) if p == lease_path => {
            let Ok(mut new) = serde_json::from_slice::<Value>(&body) else {
                return status(400, "BadRequest", "the body is not JSON");
            };
            let mut s = ctx.lock();
            if new["metadata"]["resourceVersion"] != s.lease["metadata"]["resourceVersion"] {
                status(409, "Conflict", "the object has been modified")
            } else {
                s.lease_rv += 1;
                new["metadata"]["resourceVersion"] = json!(s.lease_rv.to_string());
                s.lease = new.clone();
                json_response(200, &new)
            }
        }
        ("POST", p) if p == events_path => {
            let v = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
            json_response(201, &v)
        }
        ("PATCH", p) if p.starts_with(&events_path) => {
            let v = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
            json_response(200, &v)
        }
        _ => status(
            404,
            "NotFound",
            &format!("the stand-in does not serve {method} {path}"),
        ),
    };
    ctx.changed.send_modify(|v| *v += 1);
    response
}
