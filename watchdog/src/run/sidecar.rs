//! The sidecar's main loop and the executor of the detector's decisions.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::RunArgs;
use super::backoff::Backoff;
use super::events::{EventSink, Report};
use super::evict::{EvictOutcome, EvictRetry, evict_pod};
use super::gate::{self, Gate};
use super::http::{Shared, serve};
use super::lease::{
    BOOKKEEPING_SAVE_INTERVAL, LeaseLoad, LeaseSave, LeaseStore, needs_prompt_save,
};
use super::logs::{FollowConfig, FollowerMsg, follow_run, read_log_once};
use super::merge::{merge_histories, merge_json};
use super::metrics::{Metrics, ReasonLabel, VersionWarningLabel};
use super::pod::{ListenerState, PodTracker, PodView, Transition};
use crate::detector::{
    Decision, Detector, EvictCause, History, Input, Reason, StartGate, remove_one,
};

/// Longest time the loop sleeps without a reason: the heartbeat behind
/// `/healthz`.
const HEARTBEAT: Duration = Duration::from_secs(30);
/// How long a run's end waits for its log to be read to the end before it
/// is handed to the detector anyway (a conflict line must be counted before
/// the exit, or the run would count as an unexplained failure too).
const END_WAITS_FOR_LOG: Duration = Duration::from_secs(5);
/// How long shutdown spends catching up before the last save: the lines a
/// lagging follow stream had not delivered, and the listener's end. With
/// restartPolicy Never the kubelet stops the sidecar milliseconds after
/// the listener exits, so without this a conflict seen by nobody but the
/// log never reaches the Lease, and no pod generation sees the loop.
pub(crate) const DRAIN_BUDGET: Duration = Duration::from_millis(400);
/// How long shutdown waits for the last (coalesced) Lease save and, at
/// the same time, for the Events still queued (the drain's decisions
/// among them): best effort. Drain and save together stay well under a
/// second (the kubelet's stop), see [`SHUTDOWN_BUDGET`].
pub(crate) const FINAL_SAVE_BUDGET: Duration = Duration::from_millis(500);
/// How long the Events task gets, once told to stop, to count and log what
/// it drops.
const EVENTS_STOP_GRACE: Duration = Duration::from_millis(20);
/// How long `run` waits for the loop to end after SIGTERM.
pub(crate) const SHUTDOWN_BUDGET: Duration = DRAIN_BUDGET
    .saturating_add(FINAL_SAVE_BUDGET)
    .saturating_add(EVENTS_STOP_GRACE)
    .saturating_add(Duration::from_millis(30));
/// `why` of `arc_watchdog_events_dropped_total`: the queue was full.
const DROPPED_QUEUE_FULL: &str = "queue_full";
/// `why`: still queued or in flight when the shutdown bound was reached.
const DROPPED_SHUTDOWN_BOUND: &str = "shutdown_bound";
/// `why`: the Events task had already ended.
const DROPPED_PUBLISHER_STOPPED: &str = "publisher_stopped";
/// The log message of an eviction request being sent (logged once per
/// eviction sent, never for one decided and then found moot or blocked
/// before sending: tools count it).
pub const EVICTING_LOG: &str = "evicting the own pod";
/// How many of the log's last lines the shutdown drain reads at most.
const DRAIN_TAIL_LINES: i64 = 1000;

/// A started sidecar.
#[derive(Debug)]
pub struct Started {
    /// The bound address of the HTTP endpoints.
    pub addr: SocketAddr,
    /// The main loop; ends after `cancel` fires.
    pub task: JoinHandle<()>,
    /// The state behind the endpoints (gate, metrics).
    pub shared: Arc<Shared>,
}

/// Starts the endpoints and the main loop. With `client: Err(why)` the
/// watchdog is blind from the start (no client configuration, incomplete
/// identity, invalid thresholds): it serves the endpoints, reports `why` on
/// `/readyz` and opens the start gate after the fail-open grace.
pub async fn start(
    args: RunArgs,
    client: Result<Client, String>,
    cancel: CancellationToken,
) -> anyhow::Result<Started> {
    let now = Timestamp::now();
    let gate = Gate::new(now, args.fail_open_grace, args.thresholds.dry_run);
    let shared = Arc::new(Shared::new(gate, Metrics::default(), HEARTBEAT * 4));
    let (addr, server) = serve(args.listen, shared.clone(), cancel.clone()).await?;
    let task = match client {
        Ok(client) => {
            let sidecar = Sidecar::new(args, client, shared.clone(), cancel.clone());
            tokio::spawn(async move {
                sidecar.run().await;
                let _ = server.await;
            })
        }
        Err(why) => {
            let shared = shared.clone();
            shared.with_gate(|g| g.record_error(gate::OP_POD_WATCH, why, now));
            shared.metrics.api_error(gate::OP_POD_WATCH);
            tokio::spawn(async move {
                // Keep the heartbeat and gauges going until shutdown.
                loop {
                    shared.beat();
                    shared.refresh_gauges(Timestamp::now());
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep(HEARTBEAT) => {}
                    }
                }
                let _ = server.await;
            })
        }
    };
    Ok(Started { addr, task, shared })
}

/// Messages from the Lease task.
#[derive(Debug)]
enum LeaseMsg {
    /// First read done: the stored history (if any).
    Loaded(Option<String>),
    /// The Lease cannot be used (missing, forbidden): memory only.
    Unavailable(String),
    /// A save met another writer; this is the merged history now stored.
    Merged(String),
}

/// Result of an eviction task.
#[derive(Debug)]
struct EvictDone {
    /// When the detector decided it (the time it recorded).
    at: Timestamp,
    cause: EvictCause,
    message: String,
    outcome: EvictOutcome,
}

struct Sidecar {
    args: RunArgs,
    client: Client,
    pods: Api<Pod>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    detector: Detector,
    /// Inputs seen before the history is known (replayed then).
    early: Vec<Input>,
    ready: bool,
    tracker: PodTracker,
    view: PodView,
    pod_tx: watch::Sender<PodView>,
    followers: HashMap<String, JoinHandle<()>>,
    follow_tx: mpsc::Sender<FollowerMsg>,
    /// Container ID of the latest run handed to the detector: only its
    /// lines are fed (a line of an earlier run would count for this one).
    current_run: Option<String>,
    /// Run ends waiting for their log to be read to the end.
    pending_ends: BTreeMap<String, (Timestamp, Input)>,
    lease_tx: watch::Sender<Option<String>>,
    /// The history last handed to the Lease task, as JSON and as data.
    last_saved: Option<(String, History)>,
    /// A bookkeeping-only change waits for this time to be saved.
    save_due: Option<tokio::time::Instant>,
    events_tx: mpsc::Sender<(Report, Option<ObjectReference>)>,
    evict_tx: mpsc::Sender<EvictDone>,
    evicting: bool,
    /// Evictions the detector decided (and counted in its history) that
    /// the API server has not accepted yet: kept out of the saved history,
    /// and taken out of the detector's when they are not accepted, so that
    /// only accepted evictions count against the budget.
    unconfirmed_evictions: Vec<Timestamp>,
    version_warned: bool,
    /// Shutting down: run ends wait for the drain's log read.
    draining: bool,
}

impl Sidecar {
    fn new(args: RunArgs, client: Client, shared: Arc<Shared>, cancel: CancellationToken) -> Self {
        let ns = args.identity.pod_namespace.clone();
        let pods = Api::<Pod>::namespaced(client.clone(), &ns);
        let (pod_tx, _) = watch::channel(PodView::default());
        let (follow_tx, _) = mpsc::channel(1);
        let (lease_tx, _) = watch::channel(None);
        let (events_tx, _) = mpsc::channel(1);
        let (evict_tx, _) = mpsc::channel(1);
        let detector = Detector::new(args.thresholds.clone());
        Self {
            args,
            client,
            pods,
            shared,
            cancel,
            detector,
            early: Vec::new(),
            ready: false,
            tracker: PodTracker::default(),
            view: PodView::default(),
            pod_tx,
            followers: HashMap::new(),
            follow_tx,
            current_run: None,
            pending_ends: BTreeMap::new(),
            lease_tx,
            last_saved: None,
            save_due: None,
            events_tx,
            evict_tx,
            evicting: false,
            unconfirmed_evictions: Vec::new(),
            version_warned: false,
            draining: false,
        }
    }

    async fn run(mut self) {
        let id = self.args.identity.clone();
        info!(pod = %id.pod_name, namespace = %id.pod_namespace, lease = %self.args.lease_name(),
            dry_run = self.args.thresholds.dry_run, "watchdog starting");

        // Channels to the helper tasks.
        let (follow_tx, mut follow_rx) = mpsc::channel(256);
        self.follow_tx = follow_tx;
        let (events_tx, events_rx) = mpsc::channel(256);
        self.events_tx = events_tx;
        let (evict_tx, mut evict_rx) = mpsc::channel(4);
        self.evict_tx = evict_tx;
        let (lease_tx, lease_rx) = watch::channel(None);
        self.lease_tx = lease_tx;
        let (lease_msg_tx, mut lease_msg_rx) = mpsc::channel(16);

        let pod_ref = ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("Pod".to_owned()),
            name: Some(id.pod_name.clone()),
            namespace: Some(id.pod_namespace.clone()),
            uid: id.pod_uid.clone(),
            ..ObjectReference::default()
        };
        let sink = EventSink::new(self.client.clone(), &id.pod_name, pod_ref);
        // Not `cancel`: at shutdown the Events task publishes what is
        // queued (it ends when `events_tx` is dropped), within
        // FINAL_SAVE_BUDGET; `events_stop` cuts it off there.
        let events_stop = CancellationToken::new();
        let mut events_task = tokio::spawn(events_loop(
            sink,
            events_rx,
            self.shared.clone(),
            events_stop.clone(),
        ));
        let store = LeaseStore::new(
            Api::<Lease>::namespaced(self.client.clone(), &id.pod_namespace),
            self.args.lease_name(),
            id.pod_name.clone(),
        );
        // Not `cancel`: at shutdown the Lease task gets to finish the last
        // save (it ends when `lease_tx` is dropped), within FINAL_SAVE_BUDGET.
        let lease_stop = CancellationToken::new();
        let mut lease_task = tokio::spawn(lease_loop(
            store,
            lease_rx,
            lease_msg_tx,
            self.shared.clone(),
            lease_stop.clone(),
        ));

        let cfg = watcher::Config::default().fields(&format!("metadata.name={}", id.pod_name));
        let mut pod_events = watcher(self.pods.clone(), cfg).default_backoff().boxed();

        // The history must be known within the grace; after it the
        // detector works from what it sees (fail open).
        let ready_deadline = tokio::time::Instant::now() + self.args.fail_open_grace;

        loop {
            self.shared.beat();
            let now = Timestamp::now();
            self.shared.refresh_gauges(now);
            let sleep_for = self.next_sleep(now);
            let ready_timer = async {
                if self.ready {
                    futures::future::pending::<()>().await;
                } else {
                    tokio::time::sleep_until(ready_deadline).await;
                }
            };
            tokio::select! {
                () = self.cancel.cancelled() => break,
                ev = pod_events.next() => match ev {
                    Some(Ok(ev)) => {
                        // Lines already delivered belong to the run the
                        // detector has now: they go before a new run starts.
                        while let Ok(msg) = follow_rx.try_recv() {
                            self.on_follower(msg);
                        }
                        self.on_pod_event(ev);
                    }
                    Some(Err(e)) => {
                        let now = Timestamp::now();
                        warn!(error = %e, "watching the own pod failed; retrying with backoff");
                        self.shared.metrics.api_error(gate::OP_POD_WATCH);
                        self.shared.with_gate(|g| g.record_error(gate::OP_POD_WATCH, e.to_string(), now));
                    }
                    None => {
                        error!("the pod watch ended");
                        break;
                    }
                },
                Some(msg) = follow_rx.recv() => self.on_follower(msg),
                Some(msg) = lease_msg_rx.recv() => self.on_lease(msg),
                Some(done) = evict_rx.recv() => self.on_evicted(done),
                () = ready_timer => {
                    warn!(grace = ?self.args.fail_open_grace, "history not loaded within the fail-open grace; deciding from what is seen");
                    self.become_ready(None);
                }
                () = tokio::time::sleep(sleep_for) => self.on_tick(),
            }
        }
        // Shutdown: everything else watches `cancel` too. Lines already
        // delivered go first.
        while let Ok(msg) = follow_rx.try_recv() {
            self.on_follower(msg);
        }
        for (_, f) in self.followers.drain() {
            f.abort();
        }
        let catch_up = async {
            self.drain().await;
            // An eviction on its way (the kubelet's SIGTERM may well be its
            // effect) is answered: whether it counts goes into the last save.
            if self.evicting
                && let Some(done) = evict_rx.recv().await
            {
                self.on_evicted(done);
            }
        };
        if tokio::time::timeout(DRAIN_BUDGET, catch_up).await.is_err() {
            warn!(budget = ?DRAIN_BUDGET, "catching up with the listener's log and an eviction's answer did not finish in time; saving what is known");
        }
        while let Ok(done) = evict_rx.try_recv() {
            self.on_evicted(done);
        }
        // A coalesced change is saved now (best effort, bounded).
        if self.ready && self.save_due.is_some() {
            self.publish_history();
        }
        // Closing both queues lets each task finish what it holds: the last
        // Lease save, and the Events decided so far (the drain's too).
        drop(std::mem::replace(
            &mut self.lease_tx,
            watch::channel(None).0,
        ));
        drop(std::mem::replace(&mut self.events_tx, mpsc::channel(1).0));
        let deadline = tokio::time::Instant::now() + FINAL_SAVE_BUDGET;
        if tokio::time::timeout_at(deadline, &mut lease_task)
            .await
            .is_err()
        {
            warn!(budget = ?FINAL_SAVE_BUDGET, "the last Lease save did not finish in time");
        }
        lease_stop.cancel();
        lease_task.abort();
        if tokio::time::timeout_at(deadline, &mut events_task)
            .await
            .is_err()
        {
            // Told to stop, the task counts and logs what it drops.
            events_stop.cancel();
            if tokio::time::timeout(EVENTS_STOP_GRACE, &mut events_task)
                .await
                .is_err()
            {
                events_task.abort();
            }
        }
        info!("watchdog stopped");
    }

    /// On shutdown: reads the listener's log once (what the follow stream
    /// had not delivered yet) and its end (from the last pod status, or one
    /// fresh look), so that the run's conflict and failed start reach the
    /// last save. Any failure ends the drain: the exit is never held.
    async fn drain(&mut self) {
        self.draining = true;
        let ended = |v: &PodView| {
            v.listener
                .as_ref()
                .is_some_and(|l| matches!(l.state, ListenerState::Terminated { .. }))
        };
        if !ended(&self.view) {
            match self.pods.get(&self.args.identity.pod_name).await {
                Ok(pod) => self.on_pod(&pod),
                Err(e) => {
                    self.shared.metrics.api_error(gate::OP_POD_GET);
                    warn!(error = %super::logs::error_text(&e), "shutdown: re-reading the pod failed; saving what is known");
                    return;
                }
            }
        }
        let Some(container_id) = self
            .view
            .listener
            .as_ref()
            .and_then(|l| l.container_id.clone())
        else {
            return;
        };
        let since = self
            .detector
            .history()
            .run
            .as_ref()
            .filter(|r| r.id == container_id)
            .and_then(|r| r.high_water);
        let lines = match read_log_once(
            &self.pods,
            &self.args.identity.pod_name,
            &self.args.listener_container,
            &container_id,
            since,
            DRAIN_TAIL_LINES,
        )
        .await
        {
            Ok(lines) => lines,
            Err(e) => {
                warn!(error = %e, "shutdown: reading the listener's log failed; saving what is known");
                return;
            }
        };
        for line in lines {
            self.on_follower(FollowerMsg::Line(line));
        }
        // The log is read to its end now: the run's end follows its lines.
        let ids: Vec<String> = self.pending_ends.keys().cloned().collect();
        for id in ids {
            self.flush_end(&id);
        }
    }

    /// Time until the next thing due: the detector's wake-up, a pending
    /// run end, or the heartbeat.
    fn next_sleep(&self, now: Timestamp) -> Duration {
        let mut next = HEARTBEAT;
        if self.ready
            && let Some(at) = self.detector.next_wakeup()
        {
            next = next.min(gate::elapsed(now, at));
        }
        for (deadline, _) in self.pending_ends.values() {
            next = next.min(gate::elapsed(now, *deadline));
        }
        if let Some(due) = self.save_due {
            next = next.min(due.saturating_duration_since(tokio::time::Instant::now()));
        }
        // Never a zero sleep in a loop: wake-ups in the past are handled by
        // the tick right away, then the detector moves on.
        next.max(Duration::from_millis(10))
    }

    fn feed(&mut self, input: Input) {
        if !self.ready {
            self.early.push(input);
            return;
        }
        let decisions = self.detector.handle(input);
        self.execute(decisions);
    }

    fn become_ready(&mut self, stored: Option<History>) {
        let merged = stored.is_some();
        if let Some(stored) = stored {
            let ours = self.detector.history().clone();
            let merged = merge_histories(&stored, &ours);
            self.detector = Detector::from_history(self.args.thresholds.clone(), merged);
        }
        if !self.ready {
            self.ready = true;
            let early = std::mem::take(&mut self.early);
            for input in early {
                self.feed(input);
            }
        }
        if merged {
            // What was stored and what was seen meanwhile may together make
            // a loop that no single input completed (the Lease read after
            // the grace, or another writer): start it now, not at the next
            // conflict.
            let decisions = self.detector.evaluate(Timestamp::now());
            self.execute(decisions);
        }
        self.after_change();
    }

    fn on_tick(&mut self) {
        let now = Timestamp::now();
        let due: Vec<String> = self
            .pending_ends
            .iter()
            .filter(|(_, (deadline, _))| *deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            warn!(container_id = %id, "the run's log did not end in time; handing its end to the detector");
            self.flush_end(&id);
        }
        if self.ready {
            self.feed(Input::Tick { at: now });
        }
    }

    fn on_pod_event(&mut self, ev: watcher::Event<Pod>) {
        match ev {
            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => self.on_pod(&pod),
            watcher::Event::Delete(_) => {
                info!("the own pod was deleted");
            }
            watcher::Event::Init | watcher::Event::InitDone => {}
        }
    }

    fn on_pod(&mut self, pod: &Pod) {
        let now = Timestamp::now();
        self.shared.with_gate(|g| {
            g.record_ok(gate::OP_POD_WATCH);
            g.set_pod_seen();
        });
        let view = PodView::from_pod(pod, &self.args.listener_container);
        if view.listener.is_none() {
            warn!(container = %self.args.listener_container, "the own pod has no such listener container");
        }
        self.view = view.clone();
        self.pod_tx.send_replace(view.clone());
        self.version_warning(&view);

        for t in self.tracker.observe(&view) {
            match t {
                Transition::RunStarted { container_id, at } => {
                    // An earlier run's end goes first.
                    let ids: Vec<String> = self.pending_ends.keys().cloned().collect();
                    for id in ids {
                        self.flush_end(&id);
                    }
                    // The earlier runs' followers stop: the log the API
                    // serves now is the new run's, and what they still
                    // deliver would be counted for the new run.
                    let old: Vec<String> = self
                        .followers
                        .keys()
                        .filter(|id| **id != container_id)
                        .cloned()
                        .collect();
                    for id in old {
                        if let Some(task) = self.followers.remove(&id) {
                            task.abort();
                            info!(container_id = %id, "a new listener run started: stopped following the earlier run's log");
                        }
                    }
                    self.current_run = Some(container_id.clone());
                    let in_place = view.listener.as_ref().is_some_and(|l| l.restart_count > 0);
                    info!(container_id = %container_id, in_place, "listener run started");
                    self.feed(Input::RunStarted {
                        at: at.unwrap_or(now),
                        run_id: container_id.clone(),
                        in_place,
                    });
                    self.start_follower(container_id);
                }
                Transition::RunEnded {
                    container_id,
                    exit_code,
                    reason,
                    at,
                    pod_alive,
                } => {
                    self.shared.metrics.listener_restarts.inc();
                    info!(container_id = %container_id, exit_code, reason = reason.as_deref().unwrap_or(""),
                        pod_alive, "listener run ended");
                    let input = Input::RunEnded {
                        at: at.unwrap_or(now),
                        exit_code: Some(exit_code),
                        pod_lives_on: pod_alive,
                    };
                    if self.followers.contains_key(&container_id) || self.draining {
                        let deadline = now.saturating_add(END_WAITS_FOR_LOG).unwrap_or(now);
                        self.pending_ends.insert(container_id, (deadline, input));
                    } else {
                        self.feed(input);
                    }
                }
                Transition::PodTerminating => info!("the own pod is terminating"),
            }
        }
    }

    fn flush_end(&mut self, container_id: &str) {
        if let Some((_, input)) = self.pending_ends.remove(container_id) {
            self.feed(input);
        }
    }

    fn start_follower(&mut self, container_id: String) {
        if self.followers.contains_key(&container_id) || self.cancel.is_cancelled() {
            return;
        }
        let cfg = FollowConfig {
            pod: self.args.identity.pod_name.clone(),
            container: self.args.listener_container.clone(),
            container_id: container_id.clone(),
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        };
        let task = tokio::spawn(follow_run(
            self.pods.clone(),
            cfg,
            self.pod_tx.subscribe(),
            self.follow_tx.clone(),
            self.cancel.child_token(),
        ));
        self.followers.insert(container_id, task);
    }

    fn on_follower(&mut self, msg: FollowerMsg) {
        match msg {
            FollowerMsg::Line(line) => {
                if self
                    .current_run
                    .as_ref()
                    .is_some_and(|cur| *cur != line.container_id)
                {
                    // Delivered after a new run started (its follower was
                    // stopped then): not the current run's line.
                    debug!(container_id = %line.container_id, event = ?line.event,
                        "a line of an earlier listener run came after a new run started; not counted");
                    return;
                }
                let at = line.ts.unwrap_or_else(Timestamp::now);
                if line.event.is_conflict() || line.event.is_fatal() {
                    info!(container_id = %line.container_id, event = ?line.event,
                        line = %String::from_utf8_lossy(&line.text), "listener line");
                }
                self.feed(Input::Entry {
                    at,
                    event: line.event,
                    key: line.key,
                });
            }
            FollowerMsg::Connected => self.shared.with_gate(|g| g.record_ok(gate::OP_LOG)),
            FollowerMsg::Error(e) => {
                // 400: the container is not running yet (or any more): not
                // an API failure.
                if e.starts_with("400 ") {
                    return;
                }
                warn!(error = %e, "following the listener's log failed; retrying with backoff");
                self.shared.metrics.api_error(gate::OP_LOG);
                let now = Timestamp::now();
                self.shared
                    .with_gate(|g| g.record_error(gate::OP_LOG, e, now));
            }
            FollowerMsg::Ended { container_id } => {
                if let Some(task) = self.followers.remove(&container_id) {
                    task.abort();
                }
                self.flush_end(&container_id);
            }
        }
    }

    fn on_lease(&mut self, msg: LeaseMsg) {
        match msg {
            LeaseMsg::Loaded(stored) => {
                self.shared.with_gate(Gate::set_history_loaded);
                let stored = match stored.as_deref().map(History::from_json) {
                    Some(Ok(h)) => Some(h),
                    Some(Err(e)) => {
                        warn!(error = %e, "the history stored in the Lease is unreadable; starting afresh");
                        None
                    }
                    None => None,
                };
                info!(found = stored.is_some(), "history loaded from the Lease");
                // A history published before this load was dropped by the
                // Lease task: compare with what is stored, not with what
                // was published, and save the difference at once.
                self.last_saved = stored.as_ref().map(|h| (h.to_json(), h.clone()));
                self.become_ready(Some(stored.unwrap_or_default()));
                if self.ready {
                    self.publish_history();
                }
            }
            LeaseMsg::Unavailable(why) => {
                warn!(reason = %why, "the Lease cannot be used; keeping the history in memory only");
                self.shared.with_gate(Gate::set_history_loaded);
                self.become_ready(None);
            }
            LeaseMsg::Merged(stored) => {
                if let Ok(h) = History::from_json(&stored) {
                    self.become_ready(Some(h));
                }
            }
        }
    }

    /// After the detector changed: gate, gauges, Lease.
    fn after_change(&mut self) {
        let now = Timestamp::now();
        let until = match self.detector.start_gate(now) {
            StartGate::Closed { until } => Some(until),
            StartGate::Open => None,
        };
        self.shared.with_gate(|g| g.set_delay_until(until));
        let status = self.detector.status();
        self.shared
            .metrics
            .loop_active
            .set(i64::from(status.loop_active));
        self.shared.refresh_gauges(now);
        self.save_if_due();
    }

    /// Hands the history to the Lease task when it matters for another pod
    /// generation at once, a bookkeeping-only change at most every
    /// [`BOOKKEEPING_SAVE_INTERVAL`]. The Lease task saves only the latest
    /// history, one save at a time; the latest contains every earlier
    /// change, so coalescing never loses one.
    fn save_if_due(&mut self) {
        let history = self.history_to_save();
        let prompt = match &self.last_saved {
            None => true,
            Some((_, saved)) if *saved == history => {
                self.save_due = None;
                return;
            }
            Some((_, saved)) => needs_prompt_save(saved, &history),
        };
        let now = tokio::time::Instant::now();
        if prompt || self.save_due.is_some_and(|due| due <= now) {
            self.publish_history();
        } else if self.save_due.is_none() {
            self.save_due = Some(now + BOOKKEEPING_SAVE_INTERVAL);
        }
    }

    /// The detector's history without the evictions the API server has not
    /// accepted (yet): the Lease only ever holds accepted evictions, so a
    /// decided eviction that is then dropped never counts for another pod
    /// generation, and a merge never brings it back.
    fn history_to_save(&self) -> History {
        let mut history = self.detector.history().clone();
        for at in &self.unconfirmed_evictions {
            history.remove_eviction(*at);
        }
        history
    }

    /// The API server did not accept the eviction decided at `at`: it no
    /// longer counts against the budget.
    fn retract_eviction(&mut self, at: Timestamp) {
        remove_one(&mut self.unconfirmed_evictions, at);
        self.detector.withdraw_eviction(at);
    }

    fn publish_history(&mut self) {
        let history = self.history_to_save();
        let json = history.to_json();
        self.save_due = None;
        if self.last_saved.as_ref().map(|(j, _)| j.as_str()) != Some(json.as_str()) {
            self.lease_tx.send_replace(Some(json.clone()));
        }
        self.last_saved = Some((json, history));
    }

    fn execute(&mut self, decisions: Vec<Decision>) {
        for d in decisions {
            let reason = d.reason();
            let message = d.message().to_owned();
            match &d {
                Decision::Evict { cause, at, .. } => self.evict(*cause, *at, message),
                Decision::DelayStart { .. } => {
                    info!(reason = reason.as_str(), detail = %message, "decision");
                    self.report(reason, message, "DelayStart");
                }
                Decision::Report { .. } => {
                    if reason == Reason::SessionConflict {
                        self.shared.metrics.session_conflicts.inc();
                    }
                    if reason.is_warning() {
                        warn!(reason = reason.as_str(), detail = %message, "decision");
                    } else {
                        info!(reason = reason.as_str(), detail = %message, "decision");
                    }
                    self.report(reason, message, "Observe");
                }
            }
        }
        self.after_change();
    }

    fn report(&self, reason: Reason, message: String, action: &str) {
        self.report_str(reason.as_str(), reason.is_warning(), message, action);
    }

    fn report_str(&self, reason: &str, warning: bool, message: String, action: &str) {
        self.shared
            .metrics
            .decisions
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
        let report = Report {
            reason: reason.to_owned(),
            message,
            warning,
            action: action.to_owned(),
        };
        match self.events_tx.try_send((report, self.view.owner.clone())) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.shared.metrics.drop_events(DROPPED_QUEUE_FULL, 1);
                warn!(
                    reason,
                    "the Event queue is full (publishing lags behind); this Event is dropped (the log has the decision)"
                );
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.shared
                    .metrics
                    .drop_events(DROPPED_PUBLISHER_STOPPED, 1);
                warn!(
                    reason,
                    "Events are no longer published (shutting down); this Event is dropped (the log has the decision)"
                );
            }
        }
    }

    fn evict(&mut self, cause: EvictCause, at: Timestamp, message: String) {
        let now = Timestamp::now();
        let blocked = |why: String| {
            warn!(cause = cause.as_str(), reason = %why, "not evicting");
            why
        };
        let why_not = if self.args.thresholds.dry_run {
            Some("dry run".to_owned())
        } else if self.shared.with_gate(|g| g.fail_open(now)) {
            Some("the watchdog cannot see its listener (failing open); an eviction needs fresh observations".to_owned())
        } else if self.evicting {
            Some("an eviction is already under way".to_owned())
        } else {
            None
        };
        if let Some(why) = why_not {
            let why = blocked(why);
            self.retract_eviction(at);
            self.shared.metrics.eviction_not_accepted("not_sent");
            self.report_str(
                Reason::EvictionBlocked.as_str(),
                true,
                format!(
                    "not evicting ({}): {why}; the decision was: \"{message}\"",
                    cause.as_str()
                ),
                "Evict",
            );
            return;
        }
        self.evicting = true;
        self.unconfirmed_evictions.push(at);
        // Not yet an eviction: the fresh look below may find it moot (with
        // restartPolicy Always, the kubelet has usually restarted the
        // listener by then). The eviction is logged when it is sent.
        info!(cause = cause.as_str(), decision = %message, "eviction decided; re-reading the pod before sending it");
        let client = self.client.clone();
        let pods = self.pods.clone();
        let args = self.args.clone();
        let listener_container = self.args.listener_container.clone();
        let tx = self.evict_tx.clone();
        let cancel = self.cancel.child_token();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let outcome = fresh_check(&pods, &args, &listener_container, cause, &shared).await;
            let outcome = match outcome {
                Err(Fresh::Moot(why)) => EvictOutcome::Gone(why),
                Err(Fresh::Unknown(why)) => EvictOutcome::Failed(why),
                Ok(()) => {
                    // Tools count this line as an eviction: only here.
                    warn!(cause = cause.as_str(), decision = %message, "{EVICTING_LOG}");
                    evict_pod(
                        &client,
                        &args.identity.pod_namespace,
                        &args.identity.pod_name,
                        args.identity.pod_uid.as_deref(),
                        false,
                        &EvictRetry::default(),
                        &cancel,
                    )
                    .await
                }
            };
            let _ = tx
                .send(EvictDone {
                    at,
                    cause,
                    message,
                    outcome,
                })
                .await;
        });
    }

    fn on_evicted(&mut self, done: EvictDone) {
        self.evicting = false;
        let not_accepted = match &done.outcome {
            EvictOutcome::Evicted { .. } => None,
            EvictOutcome::Gone(_) => Some("moot"),
            EvictOutcome::Blocked { .. } => Some("blocked"),
            EvictOutcome::Forbidden(_) | EvictOutcome::Failed(_) => Some("failed"),
            EvictOutcome::Cancelled => Some("cancelled"),
            // The sidecar never sends a dry-run eviction (dry run decides
            // no evictions); nothing was evicted.
            EvictOutcome::DryRunAccepted => Some("not_sent"),
        };
        match not_accepted {
            // Accepted: it counts, and the next save carries it.
            None => {
                remove_one(&mut self.unconfirmed_evictions, done.at);
            }
            Some(outcome) => {
                self.retract_eviction(done.at);
                self.shared.metrics.eviction_not_accepted(outcome);
            }
        }
        self.report_eviction(done);
        self.after_change();
    }

    fn report_eviction(&mut self, done: EvictDone) {
        let cause = done.cause.as_str();
        match done.outcome {
            EvictOutcome::Evicted { attempts } => {
                info!(cause, attempts, "the API server accepted the eviction");
                self.shared
                    .metrics
                    .evictions
                    .get_or_create(&ReasonLabel {
                        reason: cause.to_owned(),
                    })
                    .inc();
                self.report(Reason::ListenerEvicted, done.message, "Evict");
            }
            EvictOutcome::DryRunAccepted | EvictOutcome::Cancelled => {}
            EvictOutcome::Gone(why) => {
                info!(cause, reason = %why, "eviction moot, nothing evicted: the pod is gone or replaced, or the listener runs again")
            }
            EvictOutcome::Blocked { attempts, last } => {
                warn!(cause, attempts, last = %last, "eviction blocked by a PodDisruptionBudget");
                self.report_str(
                    Reason::EvictionBlocked.as_str(),
                    true,
                    format!("eviction ({cause}) refused {attempts} times (PodDisruptionBudget?): {last}; the decision was: \"{}\"", done.message),
                    "Evict",
                );
            }
            EvictOutcome::Forbidden(why) | EvictOutcome::Failed(why) => {
                warn!(cause, error = %why, "eviction failed");
                self.shared.metrics.api_error(gate::OP_EVICT);
                self.report_str(
                    Reason::EvictionBlocked.as_str(),
                    true,
                    format!(
                        "eviction ({cause}) failed: {why}; the decision was: \"{}\"",
                        done.message
                    ),
                    "Evict",
                );
            }
        }
    }

    fn version_warning(&mut self, view: &PodView) {
        if self.version_warned {
            return;
        }
        let image = view.listener.as_ref().and_then(|l| l.image.clone());
        let source = view
            .version_label
            .clone()
            .filter(|v| crate::detector::parse_version(v).is_some())
            .or(image);
        let Some(source) = source else { return };
        self.version_warned = true;
        let Some(w) = crate::detector::version_warning(&source) else {
            return;
        };
        for gap in &w.gaps {
            self.shared
                .metrics
                .version_warning
                .get_or_create(&VersionWarningLabel {
                    version: w.version.clone(),
                    warning: gap.as_str().to_owned(),
                })
                .set(1);
        }
        warn!(version = %w.version, detail = %w.message, "the listener's ARC version has known gaps");
        self.report(
            Reason::ListenerVersionWarning,
            format!("ARC {}: {}", w.version, w.message),
            "Observe",
        );
    }
}

/// Why a fresh look forbids an eviction.
enum Fresh {
    /// The reason is gone (the pod is terminating or replaced, the
    /// listener runs again): nothing to do.
    Moot(String),
    /// The pod could not be read: no eviction on a guess.
    Unknown(String),
}

/// Re-reads the own pod right before an eviction: an eviction needs a
/// fresh observation, never a guess. Ok when the pod is still this
/// generation, not terminating, and (for a dead listener) still dead.
async fn fresh_check(
    pods: &Api<Pod>,
    args: &RunArgs,
    listener_container: &str,
    cause: EvictCause,
    shared: &Shared,
) -> Result<(), Fresh> {
    let pod = match pods.get(&args.identity.pod_name).await {
        Ok(p) => p,
        Err(e) => {
            shared.metrics.api_error(gate::OP_POD_GET);
            return Err(Fresh::Unknown(format!(
                "re-reading the pod before evicting: {}",
                super::logs::error_text(&e)
            )));
        }
    };
    let view = PodView::from_pod(&pod, listener_container);
    if args.identity.pod_uid.is_some() && view.uid != args.identity.pod_uid {
        return Err(Fresh::Moot("the pod is another generation".to_owned()));
    }
    if view.terminating {
        return Err(Fresh::Moot("the pod is already terminating".to_owned()));
    }
    if cause == EvictCause::ListenerDead {
        let dead = view
            .listener
            .as_ref()
            .is_some_and(|l| matches!(l.state, ListenerState::Terminated { .. }));
        if !dead || !view.alive() {
            return Err(Fresh::Moot(
                "the listener is no longer dead in a living pod".to_owned(),
            ));
        }
    }
    Ok(())
}

type EventItem = (Report, Option<ObjectReference>);

/// Publishes the queued Events in order until the queue is closed and
/// empty (the end of the shutdown), or until `stop` fires (the shutdown
/// bound is reached): what is then still queued or in flight is dropped,
/// counted and logged.
async fn events_loop(
    sink: EventSink,
    mut rx: mpsc::Receiver<EventItem>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    loop {
        let item = tokio::select! {
            biased;
            () = stop.cancelled() => None,
            item = rx.recv() => item,
        };
        let Some((report, owner)) = item else { break };
        let errors = tokio::select! {
            biased;
            () = stop.cancelled() => {
                drop_unpublished(&mut rx, Some(report), &shared);
                return;
            }
            errors = sink.publish(&report, owner.as_ref()) => errors,
        };
        for e in errors {
            warn!(reason = %report.reason, error = %e, "publishing an Event failed");
            shared.metrics.api_error(gate::OP_EVENT);
        }
    }
    drop_unpublished(&mut rx, None, &shared);
}

/// At the shutdown bound: counts and logs the Events not published.
fn drop_unpublished(
    rx: &mut mpsc::Receiver<EventItem>,
    in_flight: Option<Report>,
    shared: &Shared,
) {
    rx.close();
    let mut reasons: Vec<String> = in_flight.map(|r| r.reason).into_iter().collect();
    while let Ok((report, _)) = rx.try_recv() {
        reasons.push(report.reason);
    }
    if reasons.is_empty() {
        return;
    }
    let n = u64::try_from(reasons.len()).unwrap_or(u64::MAX);
    shared.metrics.drop_events(DROPPED_SHUTDOWN_BOUND, n);
    warn!(dropped = n, reasons = %reasons.join(","), budget = ?FINAL_SAVE_BUDGET,
        "shutdown: Events not published within the shutdown bound are dropped (the log has the decisions)");
}

async fn lease_loop(
    mut store: LeaseStore,
    mut rx: watch::Receiver<Option<String>>,
    tx: mpsc::Sender<LeaseMsg>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    // First read, retried until it answers.
    loop {
        let res = tokio::select! {
            () = cancel.cancelled() => return,
            r = store.load() => r,
        };
        match res {
            Ok(load) => {
                shared.with_gate(|g| g.record_ok(gate::OP_LEASE_GET));
                // Whatever was published before the load is merged by the
                // main loop and published again.
                rx.borrow_and_update();
                let msg = match load {
                    LeaseLoad::Found(h) => LeaseMsg::Loaded(h),
                    LeaseLoad::Missing => {
                        LeaseMsg::Unavailable(format!("Lease {} not found", store.name()))
                    }
                    LeaseLoad::Forbidden(why) => {
                        shared.metrics.api_error(gate::OP_LEASE_GET);
                        LeaseMsg::Unavailable(format!("Lease {} forbidden: {why}", store.name()))
                    }
                };
                if tx.send(msg).await.is_err() {
                    return;
                }
                break;
            }
            Err(e) => {
                warn!(error = %e, "reading the Lease failed; retrying with backoff");
                shared.metrics.api_error(e.op());
                let now = Timestamp::now();
                shared.with_gate(|g| g.record_error(e.op(), e.to_string(), now));
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }
    backoff.reset();
    let mut retry_pending = false;
    loop {
        if !retry_pending {
            tokio::select! {
                () = cancel.cancelled() => return,
                changed = rx.changed() => if changed.is_err() { return },
            }
        }
        let Some(history) = rx.borrow_and_update().clone() else {
            retry_pending = false;
            continue;
        };
        let now = Timestamp::now();
        let res = tokio::select! {
            () = cancel.cancelled() => return,
            r = store.save(&history, &merge_json, now) => r,
        };
        retry_pending = false;
        match res {
            Ok(LeaseSave::Saved { stored, conflicts }) => {
                backoff.reset();
                shared.with_gate(|g| g.record_ok(gate::OP_LEASE_UPDATE));
                if conflicts > 0 {
                    info!(
                        conflicts,
                        "Lease update conflicted; merged with the stored history"
                    );
                    if tx.send(LeaseMsg::Merged(stored)).await.is_err() {
                        return;
                    }
                }
            }
            Ok(LeaseSave::Missing) => {
                warn!(
                    lease = store.name(),
                    "the Lease is gone; the history stays in memory"
                );
            }
            Ok(LeaseSave::Forbidden(why)) => {
                warn!(lease = store.name(), reason = %why, "updating the Lease is forbidden; the history stays in memory");
                shared.metrics.api_error(gate::OP_LEASE_UPDATE);
                shared.with_gate(|g| g.record_error(gate::OP_LEASE_UPDATE, why, now));
            }
            Err(e) => {
                warn!(error = %e, "saving the history failed; retrying with backoff");
                shared.metrics.api_error(e.op());
                shared.with_gate(|g| g.record_error(e.op(), e.to_string(), now));
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                }
                retry_pending = true;
            }
        }
    }
}
