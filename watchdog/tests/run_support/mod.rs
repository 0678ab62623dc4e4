//! An HTTP-level stand-in for the few Kubernetes API endpoints the sidecar
//! uses, on 127.0.0.1. It follows the real protocol where the sidecar
//! depends on it: list+watch of one pod by field selector, `pods/log` with
//! `follow`, `timestamps` and `sinceTime` (lines at or after `sinceTime`,
//! second precision, like the kubelet), Lease get/update with
//! resourceVersion preconditions (409 on a stale one), policy/v1 Eviction
//! (201, or 429 while a budget blocks it), events.k8s.io Events, and Status
//! bodies for errors. The real API server comes with the control-plane
//! tests; this one exists to script faults (drops, 409s, 429s).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_watchdog::detector::{Cause, FailedStart, History};
use arc_watchdog::run::lease::HISTORY_ANNOTATION;
use arc_watchdog::run::metrics::{Metrics, OutcomeLabel};
use arc_watchdog::run::{Started, start};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

pub const NS: &str = "arc-systems";
pub const POD: &str = "demo-6b4f8c7d-listener";
pub const POD_UID: &str = "0b5e1d6c-1111-4c1c-9a34-5d6f1f0c0001";

/// A listener log line meeting a stale session: ARC's 409
/// RunnerScaleSetSessionConflictException, as the listener writes it.
pub const CONFLICT: &str = "2026/03/02 04:10:02 Application returned an error: createSession failed: failed to create session: actions error: StatusCode 409, AcivityId \"3f5c9a2e\": GitHub.Actions.Runtime.WebApi.RunnerScaleSetSessionConflictException, GitHub.Actions.Runtime.WebApi: The actions runner scaleset arc-runner-set already has an active session.";

/// A listener log line of a run that holds its session (the listener
/// polls for the next message).
pub const ESTABLISHED: &str = "2026-03-02T05:00:02Z\tINFO\tlistener-app.listener\tGetting next message\t{\"lastMessageID\": 0}";

/// One request as the stand-in saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Option<Value>,
}

#[derive(Debug, Default)]
pub struct FakeState {
    pub requests: Vec<Seen>,
    /// Every request answers this status (RBAC missing: 403).
    pub fail_all: Option<u16>,
    pub pod: Option<Value>,
    pub pod_rv: u64,
    pub lease: Option<Value>,
    pub lease_rv: u64,
    /// The next N lease updates meet a concurrent writer: the stored
    /// history becomes `concurrent_history` and the update gets 409.
    pub lease_races: u32,
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
    pub evictions: Vec<Value>,
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
}

#[derive(Clone)]
struct Ctx {
    state: Arc<Mutex<FakeState>>,
    changed: watch::Sender<u64>,
}

/// The running stand-in.
pub struct FakeApi {
    pub addr: SocketAddr,
    state: Arc<Mutex<FakeState>>,
    changed: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApi {
    pub async fn start() -> FakeApi {
        let state = Arc::new(Mutex::new(FakeState::default()));
        let (changed, _) = watch::channel(0u64);
        let ctx = Ctx {
            state: state.clone(),
            changed: changed.clone(),
        };
        let app = Router::new().fallback(handle).with_state(ctx);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeApi {
            addr,
            state,
            changed,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client talking to the stand-in.
    pub fn client(&self) -> kube::Client {
        let mut config = kube::Config::new(self.url().parse().unwrap());
        config.default_namespace = NS.to_owned();
        arc_watchdog::run::client_from_config(config).unwrap()
    }

    /// A kubeconfig file pointing at the stand-in (for the binary).
    pub fn kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {NS}\ncurrent-context: fake\nusers:\n- name: fake\n  user:\n    token: not-a-secret\n",
            self.url()
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut FakeState) -> R) -> R {
        let r = f(&mut self.state.lock().unwrap());
        self.changed.send_modify(|v| *v += 1);
        r
    }

    pub fn requests(&self, method: &str, path_suffix: &str) -> Vec<Seen> {
        self.with(|s| {
            s.requests
                .iter()
                .filter(|r| r.method == method && r.path.ends_with(path_suffix))
                .cloned()
                .collect()
        })
    }

    /// Waits until `cond` holds (checked after every change and request).
    pub async fn wait_for(&self, what: &str, mut cond: impl FnMut(&FakeState) -> bool) {
        let mut rx = self.changed.subscribe();
        let fut = async {
            loop {
                if cond(&self.state.lock().unwrap()) {
                    return;
                }
                rx.changed().await.unwrap();
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(20), fut)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
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

    pub fn set_lease(&self, history: Option<&str>) {
        self.with(|s| {
            s.lease_rv += 1;
            let mut lease = json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": format!("arc-watchdog-{POD}"),
                    "namespace": NS,
                    "resourceVersion": s.lease_rv.to_string(),
                    "labels": {"app.kubernetes.io/managed-by": "arc-watchdog"},
                },
                "spec": {},
            });
            if let Some(h) = history {
                lease["metadata"]["annotations"] = json!({"arc-watchdog.dev/history": h});
            }
            s.lease = Some(lease);
        });
    }
}

impl FakeApi {
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
            s.requests
                .iter()
                .any(|r| r.path.ends_with("/log") && r.query.contains("follow=true"))
        })
        .await;
    }
}

/// The history a Lease (or a Lease body sent to the stand-in) holds, if
/// its annotation holds a readable one.
pub fn history(lease: &Value) -> Option<History> {
    lease["metadata"]["annotations"][HISTORY_ANNOTATION]
        .as_str()
        .and_then(|h| History::from_json(h).ok())
}

/// The history the stand-in's Lease holds now.
pub fn stored(s: &FakeState) -> Option<History> {
    s.lease.as_ref().and_then(history)
}

/// How many Events with `reason` the stand-in got about the pod (each one
/// has a twin on the AutoscalingListener, not counted here).
pub fn pod_events(s: &FakeState, reason: &str) -> usize {
    s.events
        .iter()
        .filter(|e| e["reason"] == reason && e["regarding"]["kind"] == "Pod")
        .count()
}

/// A history in which two earlier pod generations met a session conflict
/// each, 120 s and 60 s before `now`, each a failed start: one conflict
/// more makes a loop at the default threshold (3).
pub fn two_earlier_conflicts(now: Timestamp) -> History {
    let earlier: Vec<Timestamp> = [120, 60]
        .iter()
        .map(|s| now - SignedDuration::from_secs(*s))
        .collect();
    History {
        conflicts: earlier.clone(),
        failed_starts: earlier
            .iter()
            .map(|at| FailedStart {
                at: *at,
                cause: Cause::SessionConflict,
            })
            .collect(),
        ..History::default()
    }
}

/// Starts `arc-watchdog run` in process against the stand-in, with
/// [`run_args`]`(grace, extra)`; the token stops it.
pub async fn start_watchdog(
    api: &FakeApi,
    grace: &str,
    extra: &[&str],
) -> (Started, CancellationToken) {
    let cancel = CancellationToken::new();
    let started = start(run_args(grace, extra), Ok(api.client()), cancel.clone())
        .await
        .unwrap();
    (started, cancel)
}

/// Stops a watchdog: cancels it and waits (2 s at most) for its main loop
/// to end without a panic.
pub async fn stop(started: Started, cancel: CancellationToken) {
    cancel.cancel();
    tokio::time::timeout(std::time::Duration::from_secs(2), started.task)
        .await
        .unwrap()
        .unwrap();
}

/// Evictions decided but not accepted with `outcome` ("moot", "failed",
/// ...) so far: `arc_watchdog_evictions_not_accepted_total{outcome}`.
pub fn not_accepted(metrics: &Metrics, outcome: &str) -> u64 {
    metrics
        .evictions_not_accepted
        .get_or_create(&OutcomeLabel {
            outcome: outcome.to_owned(),
        })
        .get()
}

/// Polls `cond` every 20 ms until it holds, for what the stand-in does
/// not see (the watchdog's metrics); panics with `what` after 20 s.
pub async fn poll_until(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A listener pod owned by an AutoscalingListener, with the listener
/// container in `state` (a ContainerState JSON) and `container_id`.
pub fn pod_json(container_id: Option<&str>, state: Value, restart_count: i32) -> Value {
    let mut status = json!({
        "name": "listener",
        "image": "ghcr.io/actions/gha-runner-scale-set-controller:0.12.1",
        "imageID": "",
        "ready": false,
        "restartCount": restart_count,
        "state": state,
    });
    if let Some(id) = container_id {
        status["containerID"] = json!(id);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": POD,
            "namespace": NS,
            "uid": POD_UID,
            "labels": {
                "app.kubernetes.io/component": "runner-scale-set-listener",
                "app.kubernetes.io/part-of": "gha-runner-scale-set",
                "app.kubernetes.io/version": "0.12.1",
            },
            "ownerReferences": [{
                "apiVersion": "actions.github.com/v1alpha1",
                "kind": "AutoscalingListener",
                "name": POD,
                "uid": "0b5e1d6c-2222-4c1c-9a34-5d6f1f0c0002",
                "controller": true,
            }],
        },
        "spec": {
            "containers": [{"name": "listener", "image": "ghcr.io/actions/gha-runner-scale-set-controller:0.12.1"}],
            "restartPolicy": "Never",
        },
        "status": {
            "phase": "Running",
            "containerStatuses": [status],
        },
    })
}

/// The pod with run `id` in `state` after `restarts` restarts in place
/// (`restartPolicy: Always`), the previous run `last` terminated now.
pub fn restarted(id: &str, state: Value, restarts: i32, last: &str) -> Value {
    let mut pod = pod_json(Some(id), state, restarts);
    pod["spec"]["restartPolicy"] = json!("Always");
    pod["status"]["containerStatuses"][0]["lastState"] = json!({"terminated": {
        "exitCode": 1, "reason": "Error", "finishedAt": Timestamp::now().to_string(),
        "containerID": last}});
    pod
}

/// The pod (`restartPolicy: Never`) with its first run c1 running since
/// `at`.
pub fn c1_running(at: Timestamp) -> Value {
    pod_json(Some("containerd://c1"), running(&at.to_string()), 0)
}

/// The pod (`restartPolicy: Never`) with its first run c1 exited with 1
/// at `at`.
pub fn c1_exited(at: Timestamp) -> Value {
    pod_json(Some("containerd://c1"), terminated(1, &at.to_string()), 0)
}

pub fn running(started: &str) -> Value {
    json!({"running": {"startedAt": started}})
}

pub fn terminated(exit_code: i32, finished: &str) -> Value {
    json!({"terminated": {"exitCode": exit_code, "reason": "Error", "finishedAt": finished, "containerID": "x"}})
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": if code < 300 { "Success" } else { "Failure" },
        "message": message, "reason": reason, "code": code,
    });
    (
        StatusCode::from_u16(code).unwrap(),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn json_response(code: u16, v: &Value) -> Response {
    (
        StatusCode::from_u16(code).unwrap(),
        [("content-type", "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

fn stream_body(rx: mpsc::Receiver<Bytes>) -> Body {
    let s = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    Body::from_stream(s)
}

async fn handle(State(ctx): State<Ctx>, method: Method, uri: Uri, body: Bytes) -> Response {
    let path = uri.path().to_owned();
    let query = uri.query().unwrap_or("").to_owned();
    let body_json: Option<Value> = serde_json::from_slice(&body).ok();
    let pods = format!("/api/v1/namespaces/{NS}/pods");
    let pod_path = format!("{pods}/{POD}");
    let lease_path =
        format!("/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/arc-watchdog-{POD}");
    let events_path = format!("/apis/events.k8s.io/v1/namespaces/{NS}/events");

    let fail = {
        let mut s = ctx.state.lock().unwrap();
        s.requests.push(Seen {
            method: method.to_string(),
            path: path.clone(),
            query: query.clone(),
            body: body_json.clone(),
        });
        s.fail_all
    };
    ctx.changed.send_modify(|v| *v += 1);
    if let Some(code) = fail {
        return status(code, "Forbidden", "stand-in: every request fails");
    }

    match (method.as_str(), path.as_str()) {
        ("GET", p) if p == pods => {
            if query_param(&query, "watch").as_deref() == Some("true") {
                watch_pod(ctx).await
            } else {
                let s = ctx.state.lock().unwrap();
                let items: Vec<Value> = s.pod.iter().cloned().collect();
                json_response(
                    200,
                    &json!({"apiVersion": "v1", "kind": "PodList",
                        "metadata": {"resourceVersion": s.pod_rv.to_string()}, "items": items}),
                )
            }
        }
        ("GET", p) if p == pod_path => match ctx.state.lock().unwrap().pod.clone() {
            Some(pod) => json_response(200, &pod),
            None => status(404, "NotFound", "pods not found"),
        },
        ("GET", p) if p == format!("{pod_path}/log") => log_stream(ctx, &query),
        ("POST", p) if p == format!("{pod_path}/eviction") => {
            let mut changed = ctx.changed.subscribe();
            while ctx.state.lock().unwrap().evict_hold {
                if changed.changed().await.is_err() {
                    return status(503, "ServiceUnavailable", "stand-in stopped");
                }
            }
            let mut s = ctx.state.lock().unwrap();
            if let Some(code) = s.evict_fail {
                return status(code, "InternalError", "stand-in: the eviction fails");
            }
            if s.evict_429 > 0 {
                s.evict_429 -= 1;
                return status(
                    429,
                    "TooManyRequests",
                    "Cannot evict pod as it would violate the pod's disruption budget.",
                );
            }
            let dry = query_param(&query, "dryRun").is_some();
            if !dry {
                s.evictions.push(body_json.unwrap_or(Value::Null));
            }
            status(201, "", "")
        }
        ("GET", p) if p == lease_path => {
            let s = ctx.state.lock().unwrap();
            if let Some(code) = s.lease_get_fail {
                return status(
                    code,
                    "ServiceUnavailable",
                    "stand-in: reading the Lease fails",
                );
            }
            match s.lease.clone() {
                Some(l) => json_response(200, &l),
                None => status(404, "NotFound", "leases not found"),
            }
        }
        ("PUT", p) if p == lease_path => {
            let mut s = ctx.state.lock().unwrap();
            let Some(current) = s.lease.clone() else {
                return status(404, "NotFound", "leases not found");
            };
            if s.lease_races > 0 {
                s.lease_races -= 1;
                s.lease_rv += 1;
                let mut l = current;
                l["metadata"]["resourceVersion"] = json!(s.lease_rv.to_string());
                if let Some(h) = s.concurrent_history.clone() {
                    l["metadata"]["annotations"]["arc-watchdog.dev/history"] = json!(h);
                }
                s.lease = Some(l);
                return status(409, "Conflict", "the object has been modified");
            }
            let Some(mut new) = body_json else {
                return status(400, "BadRequest", "no body");
            };
            if new["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
                return status(409, "Conflict", "the object has been modified");
            }
            if query_param(&query, "dryRun").is_some() {
                return json_response(200, &new);
            }
            s.lease_rv += 1;
            new["metadata"]["resourceVersion"] = json!(s.lease_rv.to_string());
            s.lease = Some(new.clone());
            json_response(200, &new)
        }
        ("POST" | "PATCH", p)
            if p.starts_with(&events_path) && ctx.state.lock().unwrap().stall_events =>
        {
            // Answer nothing until the client gives up.
            futures::future::pending::<Response>().await
        }
        ("POST", p) if p == events_path => {
            let v = body_json.unwrap_or(Value::Null);
            if query_param(&query, "dryRun").is_some() {
                return json_response(201, &v);
            }
            ctx.state.lock().unwrap().events.push(v.clone());
            json_response(201, &v)
        }
        ("PATCH", p) if p.starts_with(&events_path) => {
            let v = body_json.unwrap_or(Value::Null);
            ctx.state.lock().unwrap().events.push(v.clone());
            json_response(200, &v)
        }
        _ => status(
            404,
            "NotFound",
            &format!("stand-in does not serve {method} {path}"),
        ),
    }
}

async fn watch_pod(ctx: Ctx) -> Response {
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let mut changed = ctx.changed.subscribe();
    let mut last_rv = ctx.state.lock().unwrap().pod_rv;
    tokio::spawn(async move {
        loop {
            if changed.changed().await.is_err() {
                return;
            }
            let (rv, pod) = {
                let s = ctx.state.lock().unwrap();
                (s.pod_rv, s.pod.clone())
            };
            if rv != last_rv {
                last_rv = rv;
                if let Some(pod) = pod {
                    let line = json!({"type": "MODIFIED", "object": pod}).to_string() + "\n";
                    if tx.send(Bytes::from(line)).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        stream_body(rx),
    )
        .into_response()
}

fn log_stream(ctx: Ctx, query: &str) -> Response {
    let since: Option<Timestamp> = query_param(query, "sinceTime").map(|s| s.parse().unwrap());
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    // Without `follow` the kubelet sends what is there and closes.
    let follow = query_param(query, "follow").as_deref() == Some("true");
    let (limit, floor, stall) = {
        let mut s = ctx.state.lock().unwrap();
        (
            s.log_drops.pop_front(),
            s.log_floor,
            s.stall_follow && follow,
        )
    };
    let mut changed = ctx.changed.subscribe();
    tokio::spawn(async move {
        if stall {
            // Hold the stream open without a byte until the client goes.
            tx.closed().await;
            return;
        }
        let mut next = 0usize;
        let mut sent = 0usize;
        loop {
            let (batch, done) = {
                let s = ctx.state.lock().unwrap();
                let batch: Vec<String> = s.log[next..]
                    .iter()
                    .filter(|(ts, _)| since.is_none_or(|since| *ts >= since))
                    .filter(|(ts, _)| floor.is_none_or(|floor| *ts >= floor))
                    .map(|(ts, l)| format!("{} {l}\n", ts.strftime("%Y-%m-%dT%H:%M:%S%.9fZ")))
                    .collect();
                next = s.log.len();
                (batch, s.log_done)
            };
            for line in batch {
                if limit.is_some_and(|l| sent >= l) {
                    return; // dropped stream
                }
                if tx.send(Bytes::from(line)).await.is_err() {
                    return;
                }
                sent += 1;
            }
            if limit.is_some_and(|l| sent >= l) || done || !follow {
                return;
            }
            if changed.changed().await.is_err() {
                return;
            }
        }
    });
    (
        StatusCode::OK,
        [("content-type", "text/plain")],
        stream_body(rx),
    )
        .into_response()
}

/// A plain HTTP/1.1 GET (Connection: close): status code and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// `arc-watchdog run` arguments for tests: identity of the stand-in's pod,
/// endpoints on an ephemeral port, the given grace and extra flags.
pub fn run_args(grace: &str, extra: &[&str]) -> arc_watchdog::run::RunArgs {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: arc_watchdog::run::RunArgs,
    }
    let mut argv = vec![
        "arc-watchdog".to_owned(),
        format!("--pod-name={POD}"),
        format!("--pod-namespace={NS}"),
        format!("--pod-uid={POD_UID}"),
        "--listen=127.0.0.1:0".to_owned(),
        format!("--fail-open-grace={grace}"),
    ];
    argv.extend(extra.iter().map(|s| (*s).to_owned()));
    Cli::try_parse_from(argv).unwrap().args
}
