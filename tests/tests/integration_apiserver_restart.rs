//! The watchdog through API server outages, on the real kube-apiserver
//! and etcd: the API server goes away while the watchdog follows its
//! listener's log through it (pods/log, follow, from the fake node's
//! kubelet endpoint) and comes back on the same address with the same
//! etcd.
//!
//! - A short outage (shorter than `--fail-open-grace`): nothing is evicted,
//!   the watchdog never fails open, and it resumes following: the conflict
//!   line read before the outage, which the kubelet serves again on the
//!   resumed stream, is not counted twice; the one written after the
//!   restart is counted once.
//! - A long outage (longer than the grace): the watchdog fails open (gauge
//!   1, `/startz` 200) and evicts nothing; once the API server is back it
//!   stops failing open, does not count the re-sent conflict again and
//!   counts the next one once.
//!
//! This binary runs its own control plane (the restarts would disturb
//! every other test of a shared one) and runs its tests one at a time.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is the failure report

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_watchdog::detector::History;
use arc_watchdog::names;
use arc_watchdog::run::lease::ANNOTATION_HISTORY;
use arc_watchdog_tests::control_plane::{
    ControlPlane, LISTENER_NAMESPACE, Options, WatchdogProcess, Webhook, eventually, http_get,
    metric_value,
};
use arc_watchdog_tests::node::{FakeNode, LogQuery};
use arc_watchdog_tests::per_listener;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use tokio::sync::OnceCell;

const LISTENER: &str = "listener";
const CONFLICTS: &str = "arc_watchdog_session_conflicts_total";
const FAIL_OPEN: &str = "arc_watchdog_fail_open";
/// Deadline of the awaited conditions while the API server is up.
const WAIT: Duration = Duration::from_secs(30);
/// Deadline for the watchdog to see again once the API server is back: its
/// reconnect backoffs (log follower, pod watch) grow to 30 s in a long
/// outage.
const RECOVER: Duration = Duration::from_secs(60);
/// Deadline for kube-apiserver to become ready again.
const APISERVER_READY: Duration = Duration::from_secs(90);

/// The webhook's thresholds for every injected watchdog here: a backoff
/// that outlasts any test, so that a start gate closed by a loop stays
/// closed unless the watchdog fails open.
const WEBHOOK_ARGS: &[&str] = &["--backoff-initial=5m", "--backoff-max=10m"];

static CP: OnceCell<ControlPlane> = OnceCell::const_new();
static WEBHOOK: OnceCell<Webhook> = OnceCell::const_new();
/// The tests stop the one API server of this binary: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn setup() -> &'static ControlPlane {
    let cp = CP
        .get_or_init(|| async {
            // No kube-controller-manager: nothing here needs it, and it would
            // only add its own reconnects to the outage.
            ControlPlane::start_with(Options {
                controller_manager: false,
            })
            .await
            .unwrap()
        })
        .await;
    // A test that failed during an outage leaves the API server stopped.
    if !cp.apiserver_running() {
        cp.start_apiserver(APISERVER_READY).await.unwrap();
    }
    WEBHOOK
        .get_or_init(|| async { cp.install_arc_watchdog(WEBHOOK_ARGS).await.unwrap() })
        .await;
    cp
}

/// A line of the legacy 0.7 listener, which retries a 409 inside one run
/// (zap text): several session conflicts in one run and one log stream.
fn retry_conflict_line() -> String {
    format!(
        "{}\tINFO\tauto-scaler\tUnable to create message session. Will try again in 30 seconds\t{{\"error\": \"actions error: StatusCode 409, AcivityId \\\"a\\\": GitHub.Actions.Runtime.WebApi.RunnerScaleSetSessionConflictException, GitHub.Actions.Runtime.WebApi: The actions runner scaleset restart already has an active session.\"}}",
        Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ")
    )
}

fn info_line(msg: &str) -> String {
    format!(
        "{}\tINFO\tauto-scaler\t{msg}\t{{}}",
        Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ")
    )
}

/// One observation of the watchdog's endpoints.
#[derive(Debug, Clone)]
struct Sample {
    at: Duration,
    fail_open: Option<f64>,
    startz: Option<u16>,
    readyz: Option<u16>,
    /// `/readyz`'s body when not 200: which API operation fails.
    unready_why: Option<String>,
    evictions: Option<f64>,
}

/// Watches the watchdog's endpoints every 100 ms for the whole outage, so
/// that "never" is checked over time and not at one instant.
struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start(addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let t0 = Instant::now();
        let task = tokio::spawn({
            let stop = stop.clone();
            let samples = samples.clone();
            async move {
                while !stop.load(Ordering::SeqCst) {
                    let metrics = http_get(addr, names::PATH_METRICS).await.ok();
                    let metric = |name: &str| {
                        metrics
                            .as_ref()
                            .map(|(_, m)| metric_value(m, name, &[]).unwrap_or(0.0))
                    };
                    let code = |r: anyhow::Result<(u16, String)>| r.ok().map(|(s, _)| s);
                    let ready = http_get(addr, names::PATH_READYZ).await.ok();
                    let s = Sample {
                        at: t0.elapsed(),
                        fail_open: metric(FAIL_OPEN),
                        evictions: metric("arc_watchdog_evictions_total"),
                        startz: code(http_get(addr, names::PATH_STARTZ).await),
                        readyz: ready.as_ref().map(|(s, _)| *s),
                        unready_why: ready.filter(|(s, _)| *s != 200).map(|(_, b)| b),
                    };
                    samples.lock().unwrap().push(s);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        Self {
            stop,
            samples,
            task,
        }
    }

    async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        self.samples.lock().unwrap().clone()
    }
}

/// A listener pod created through the webhook, running on a fake node, and
/// its injected watchdog as a process.
struct Listener {
    node: FakeNode,
    pods: Api<Pod>,
    name: String,
    uid: String,
    wd: WatchdogProcess,
}

impl Listener {
    async fn start(cp: &ControlPlane, scale_set: &str, fail_open_grace: &str) -> Self {
        let client = cp.admin_client().await.unwrap();
        let node = FakeNode::start(client.clone(), &format!("{scale_set}-node"))
            .await
            .unwrap();
        let pod = cp
            .create_listener(LISTENER_NAMESPACE, scale_set)
            .await
            .unwrap();
        per_listener::wait_for_pod(&client, &pod).await.unwrap();
        let name = pod.metadata.name.clone().unwrap();
        let uid = pod.metadata.uid.clone().unwrap();
        node.run_pod(LISTENER_NAMESPACE, &name).await.unwrap();
        // What the watchdog has read is seen in its Lease's high water: a
        // line of mere bookkeeping is saved within a second here, not the
        // default 10 minutes.
        let wd = WatchdogProcess::start(
            cp,
            &pod,
            &[
                ("ARC_WATCHDOG_FAIL_OPEN_GRACE", fail_open_grace),
                ("ARC_WATCHDOG_BOOKKEEPING_SAVE_INTERVAL", "1s"),
            ],
        )
        .await
        .unwrap();
        Self {
            node,
            pods: Api::namespaced(client, LISTENER_NAMESPACE),
            name,
            uid,
            wd,
        }
    }

    /// Appends a line to the listener's log; returns the timestamp the
    /// kubelet serves it with.
    fn log(&self, line: &str) -> Timestamp {
        self.node
            .log(LISTENER_NAMESPACE, &self.name, LISTENER, line);
        let lines = self
            .node
            .logs()
            .stamped_lines(LISTENER_NAMESPACE, &self.name, LISTENER);
        lines.last().map(|(ts, _)| *ts).unwrap()
    }

    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let m = self.wd.metrics().await.ok()?;
        Some(metric_value(&m, name, labels).unwrap_or(0.0))
    }

    async fn status(&self, path: &str) -> u16 {
        self.wd.get(path).await.map(|(s, _)| s).unwrap_or(0)
    }

    /// `/startz`: status and why.
    async fn startz(&self) -> (u16, String) {
        self.wd.get(names::PATH_STARTZ).await.unwrap_or_default()
    }

    /// Awaits `cond`, failing with `what` and the watchdog's log.
    async fn until<F, Fut>(&self, timeout: Duration, what: &str, cond: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<()>>,
    {
        eventually(timeout, what, cond)
            .await
            .unwrap_or_else(|e| panic!("{e}\nwatchdog log:\n{}", self.wd.log_text()));
    }

    async fn until_conflicts(&self, n: f64) {
        self.until(WAIT, &format!("{n} session conflicts counted"), || async {
            (self.metric(CONFLICTS, &[]).await? >= n).then_some(())
        })
        .await;
        assert_eq!(
            self.metric(CONFLICTS, &[]).await,
            Some(n),
            "each conflict counted exactly once\nwatchdog log:\n{}",
            self.wd.log_text()
        );
    }

    /// Awaits the watchdog's Lease holding a history of this run that has
    /// read through the line the kubelet stamped `at` (the run's high-water
    /// mark): that line and every line the same stream served before it
    /// went through the detector, and their counts are final. A line of
    /// bookkeeping only is saved within the coalescing interval (10 s), a
    /// conflict at once.
    async fn until_read(&self, at: Timestamp, what: &str) {
        let leases: Api<Lease> =
            Api::namespaced(self.pods.clone().into_client(), LISTENER_NAMESPACE);
        let lease = names::lease_name(&self.name);
        self.until(WAIT, &format!("{what} read (in the Lease)"), || async {
            let stored = leases.get(&lease).await.ok()?;
            let json = stored.metadata.annotations?.remove(ANNOTATION_HISTORY)?;
            let high_water = History::from_json(&json).ok()?.run?.high_water?;
            (high_water >= at).then_some(())
        })
        .await;
    }

    /// The conflict count is `n` now (not "at least").
    async fn assert_conflicts(&self, n: f64, why: &str) {
        assert_eq!(
            self.metric(CONFLICTS, &[]).await,
            Some(n),
            "{why}\nwatchdog log:\n{}",
            self.wd.log_text()
        );
    }

    /// After an outage: the watchdog's resumed stream (the first follow
    /// request after `requests_before` kubelet requests) re-sends the
    /// conflict stamped `conflict_at`, counted once already. It is not
    /// counted again; a conflict written afterwards is counted once.
    async fn assert_resent_conflict_counted_once(
        &self,
        requests_before: usize,
        conflict_at: Timestamp,
    ) {
        let resumed = eventually(RECOVER, "the watchdog's resumed log stream", || async {
            self.resumed_query(requests_before)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\nwatchdog log:\n{}", self.wd.log_text()));
        assert!(
            resumed.since_time.is_none_or(|s| s <= conflict_at),
            "the resumed stream ({resumed:?}) re-sends the conflict at {conflict_at}"
        );
        // A line after the re-sent conflict on the same stream: once it is
        // read, so is the re-sent conflict.
        let marker_at = self.log(&info_line("still retrying"));
        self.until_read(marker_at, "the line after the re-sent conflict")
            .await;
        self.assert_conflicts(1.0, "the re-sent conflict was counted again")
            .await;
        let new_at = self.log(&retry_conflict_line());
        self.until_read(new_at, "the new conflict").await;
        self.assert_conflicts(2.0, "the new conflict counted exactly once")
            .await;
    }

    /// Following, ready, not failing open, start gate open.
    async fn until_healthy(&self, timeout: Duration) {
        self.until(
            timeout,
            "the watchdog ready, not failing open, start gate open",
            || async {
                (self.status(names::PATH_READYZ).await == 200
                    && self.status(names::PATH_STARTZ).await == 200
                    && self.metric(FAIL_OPEN, &[]).await? == 0.0)
                    .then_some(())
            },
        )
        .await;
    }

    /// The first follow request the kubelet got after `from` requests: the
    /// watchdog's resumed stream, through the restarted API server.
    fn resumed_query(&self, from: usize) -> Option<LogQuery> {
        let path = format!(
            "/containerLogs/{LISTENER_NAMESPACE}/{}/{LISTENER}",
            self.name
        );
        self.node.logs().requests()[from..].iter().find_map(|r| {
            let (p, q) = r.split_once('?')?;
            let q = LogQuery::parse(q).ok()?;
            (p == path && q.follow).then_some(q)
        })
    }

    /// Nothing was evicted: the same pod, not deleting, no eviction counted
    /// or even attempted.
    async fn assert_not_evicted(&self) {
        let pod = self.pods.get(&self.name).await.unwrap();
        assert_eq!(pod.metadata.uid.as_deref(), Some(self.uid.as_str()));
        assert!(
            pod.metadata.deletion_timestamp.is_none(),
            "the listener pod is not being deleted"
        );
        let m = self.wd.metrics().await.unwrap();
        for metric in [
            "arc_watchdog_evictions_total",
            "arc_watchdog_evictions_not_accepted_total",
        ] {
            assert_eq!(metric_value(&m, metric, &[]), None, "{metric}:\n{m}");
        }
    }
}

/// The API server is stopped for a few seconds, well within the grace
/// (60 s here, longer than a slow restart of the API server on a busy
/// machine: the restart's own duration is part of the outage).
#[tokio::test]
async fn a_short_api_server_outage_neither_evicts_nor_fails_open_nor_counts_a_line_twice() {
    const GRACE: Duration = Duration::from_secs(60);
    let _serial = SERIAL.lock().await;
    let cp = setup().await;
    let l = Listener::start(cp, "restart-short", "60s").await;
    l.log(&info_line("listener starting"));
    // The last line before the outage is a conflict: a resumed stream starts
    // at its second (the API's precision), so the kubelet sends it again.
    let conflict_at = l.log(&retry_conflict_line());
    l.until_conflicts(1.0).await;
    l.until_healthy(WAIT).await;

    let sampler = Sampler::start(l.wd.addr);
    let requests_before = l.node.logs().requests().len();
    let t_stop = Instant::now();
    let stop_took = cp.stop_apiserver().await.unwrap();
    l.until(
        WAIT,
        "the watchdog to notice the outage (/readyz 503)",
        || async { (l.status(names::PATH_READYZ).await == 503).then_some(()) },
    )
    .await;
    // What is tested is an outage of a length: hold it for a few seconds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let start_took = cp.start_apiserver(APISERVER_READY).await.unwrap();
    let outage = t_stop.elapsed();
    eprintln!("short outage: {outage:.1?} (stop {stop_took:.1?}, start to ready {start_took:.1?})");
    assert!(
        outage < GRACE,
        "the outage ({outage:?}) must be shorter than the grace ({GRACE:?}) for this test to mean anything"
    );

    // The watchdog resumes through the restarted API server, from the last
    // line it saw: the kubelet serves the pre-outage conflict again.
    l.assert_resent_conflict_counted_once(requests_before, conflict_at)
        .await;
    l.until_healthy(WAIT).await;

    let samples = sampler.finish().await;
    let failing_open: Vec<_> = samples
        .iter()
        .filter(|s| s.fail_open != Some(0.0) || s.startz != Some(200))
        .collect();
    assert!(
        failing_open.is_empty(),
        "never failing open, start gate always open: {failing_open:?}"
    );
    let unready: Vec<Duration> = samples
        .iter()
        .filter(|s| s.readyz == Some(503))
        .map(|s| s.at)
        .collect();
    assert!(
        !unready.is_empty(),
        "the outage was seen (/readyz 503) while sampled: {samples:?}"
    );
    let first_why = samples.iter().find_map(|s| s.unready_why.clone());
    eprintln!(
        "short outage: the watchdog was unready from {:.1?} to {:.1?} of {} samples (first: {})",
        unready[0],
        unready[unready.len() - 1],
        samples.len(),
        first_why.unwrap_or_default().trim()
    );
    assert!(samples.iter().all(|s| s.evictions == Some(0.0)));
    assert!(
        l.metric("arc_watchdog_api_errors_total", &[("op", "log")])
            .await
            .unwrap()
            >= 1.0,
        "the log follower met the outage"
    );
    l.assert_not_evicted().await;
}

/// The API server stays away for longer than the grace (3 s here): the
/// watchdog fails open, evicts nothing, and recovers when it is back.
#[tokio::test]
async fn a_long_api_server_outage_fails_open_without_evicting_and_recovers() {
    const GRACE: Duration = Duration::from_secs(3);
    let _serial = SERIAL.lock().await;
    let cp = setup().await;
    let l = Listener::start(cp, "restart-long", "3s").await;
    l.log(&info_line("listener starting"));
    // The last line before the outage is a conflict, sent again after it.
    let conflict_at = l.log(&retry_conflict_line());
    l.until_conflicts(1.0).await;
    l.until_healthy(WAIT).await;

    let sampler = Sampler::start(l.wd.addr);
    let requests_before = l.node.logs().requests().len();
    let t_stop = Instant::now();
    cp.stop_apiserver().await.unwrap();
    // The outage lasts until the watchdog has failed open.
    l.until(
        WAIT + GRACE,
        "the watchdog to fail open (gauge 1, /startz 200)",
        || async {
            (l.metric(FAIL_OPEN, &[]).await? == 1.0 && l.status(names::PATH_STARTZ).await == 200)
                .then_some(())
        },
    )
    .await;
    let failed_open_after = t_stop.elapsed();
    assert!(
        failed_open_after >= GRACE,
        "failed open after {failed_open_after:?}, not before the grace"
    );
    assert_eq!(
        l.status(names::PATH_READYZ).await,
        503,
        "not ready while blind"
    );
    let (_, why) = l.startz().await;
    assert!(why.contains("failing open"), "/startz: {why}");
    cp.start_apiserver(APISERVER_READY).await.unwrap();
    eprintln!(
        "long outage: {:.1?} (failed open after {failed_open_after:.1?})",
        t_stop.elapsed()
    );

    // Back: it sees again, stops failing open, and works.
    l.until_healthy(RECOVER).await;
    l.assert_resent_conflict_counted_once(requests_before, conflict_at)
        .await;

    let samples = sampler.finish().await;
    assert!(
        samples.iter().any(|s| s.fail_open == Some(1.0)),
        "failing open was sampled: {samples:?}"
    );
    let gate_closed_while_failing_open: Vec<_> = samples
        .iter()
        .filter(|s| s.fail_open == Some(1.0) && s.startz != Some(200))
        .collect();
    assert!(
        gate_closed_while_failing_open.is_empty(),
        "the start gate is open while failing open: {gate_closed_while_failing_open:?}"
    );
    assert!(samples.iter().all(|s| s.evictions == Some(0.0)));
    assert_eq!(l.metric(FAIL_OPEN, &[]).await, Some(0.0));
    l.assert_not_evicted().await;
}

/// A conflict loop has closed the start gate (a backoff of 5 m pending)
/// when the API server goes away for longer than the grace (3 s): failing
/// open opens the gate although the backoff is still pending, nothing is
/// evicted; once the API server is back the gate is closed again for the
/// rest of the backoff.
#[tokio::test]
async fn failing_open_opens_a_start_gate_a_loop_had_closed_and_recovery_closes_it_again() {
    const GRACE: Duration = Duration::from_secs(3);
    let _serial = SERIAL.lock().await;
    let cp = setup().await;
    let l = Listener::start(cp, "restart-loop", "3s").await;
    l.log(&info_line("listener starting"));
    for _ in 0..3 {
        l.log(&retry_conflict_line());
    }
    l.until_conflicts(3.0).await;
    l.until(WAIT, "the loop to close the start gate", || async {
        let (status, why) = l.startz().await;
        (status == 503 && why.contains("backoff pending")).then_some(())
    })
    .await;
    assert_eq!(l.metric("arc_watchdog_loop_active", &[]).await, Some(1.0));
    l.until(WAIT, "the watchdog ready", || async {
        (l.status(names::PATH_READYZ).await == 200).then_some(())
    })
    .await;

    let sampler = Sampler::start(l.wd.addr);
    let t_stop = Instant::now();
    cp.stop_apiserver().await.unwrap();
    // The outage lasts until the watchdog has failed open.
    l.until(
        WAIT + GRACE,
        "failing open to open the closed start gate",
        || async {
            let (status, why) = l.startz().await;
            (status == 200
                && why.contains("failing open")
                && l.metric(FAIL_OPEN, &[]).await? == 1.0)
                .then_some(())
        },
    )
    .await;
    let failed_open_after = t_stop.elapsed();
    cp.start_apiserver(APISERVER_READY).await.unwrap();
    eprintln!(
        "loop outage: {:.1?} (the closed gate opened after {failed_open_after:.1?})",
        t_stop.elapsed()
    );

    // Back: the backoff (5 m) still runs, so the gate closes again.
    l.until(
        RECOVER,
        "the gate closed again by the pending backoff, not failing open, ready",
        || async {
            let (status, why) = l.startz().await;
            (status == 503
                && why.contains("backoff pending")
                && l.metric(FAIL_OPEN, &[]).await? == 0.0
                && l.status(names::PATH_READYZ).await == 200)
                .then_some(())
        },
    )
    .await;

    let samples = sampler.finish().await;
    assert!(
        samples
            .iter()
            .any(|s| s.fail_open == Some(1.0) && s.startz == Some(200)),
        "the open gate was sampled: {samples:?}"
    );
    assert!(samples.iter().all(|s| s.evictions == Some(0.0)));
    assert_eq!(l.metric(CONFLICTS, &[]).await, Some(3.0));
    l.assert_not_evicted().await;
}
