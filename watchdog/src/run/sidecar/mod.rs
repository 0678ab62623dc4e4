//! The sidecar's actor: one task that owns the detector, `select!`s over
//! what its helper tasks report and keeps the start gate, the metrics and
//! the Lease in step with the detector. What it observes is in `observe`,
//! how it carries out decisions in `act`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

mod act;
mod observe;

use act::EvictDone;

use super::args::RunArgs;
use super::backoff::Backoff;
use super::events::{EventQueue, EventSink, events_loop};
use super::gate::{self, Gate};
use super::http::{Shared, serve};
use super::lease::{LeaseMsg, LeaseStore, SaveSchedule, lease_loop};
use super::logs::FollowerMsg;
use super::metrics::Metrics;
use super::pod::{PodTracker, PodView, run_as_plain_init};
use crate::detector::{Detector, History, Input, Reason, StartGate};

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
    saves: SaveSchedule,
    events: EventQueue,
    evict_tx: mpsc::Sender<EvictDone>,
    evicting: bool,
    version_warned: bool,
    /// Shutting down: run ends wait for the drain's log read.
    draining: bool,
    /// Since when the start gate has been open (without a break).
    gate_open_since: Option<Timestamp>,
    /// Found running as a plain init container: stepping aside.
    stepped_aside: bool,
}

impl Sidecar {
    fn new(args: RunArgs, client: Client, shared: Arc<Shared>, cancel: CancellationToken) -> Self {
        let ns = args.identity.pod_namespace.clone();
        let pods = Api::<Pod>::namespaced(client.clone(), &ns);
        let (pod_tx, _) = watch::channel(PodView::default());
        let (follow_tx, _) = mpsc::channel(1);
        let saves = SaveSchedule::new(watch::channel(None).0, args.bookkeeping_save_interval);
        let (events, _) = EventQueue::new(1, shared.clone());
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
            gate_open_since: None,
            stepped_aside: false,
            current_run: None,
            pending_ends: BTreeMap::new(),
            saves,
            events,
            evict_tx,
            evicting: false,
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
        let (events, events_rx) = EventQueue::new(256, self.shared.clone());
        self.events = events;
        let (evict_tx, mut evict_rx) = mpsc::channel(4);
        self.evict_tx = evict_tx;
        let (lease_tx, lease_rx) = watch::channel(None);
        self.saves = SaveSchedule::new(lease_tx, self.args.bookkeeping_save_interval);
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
        // queued (it ends when the queue is closed), within
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
        )
        .for_listener(id.listener_uid.clone());
        // Not `cancel`: at shutdown the Lease task gets to finish the last
        // save (it ends when the save schedule is closed), within FINAL_SAVE_BUDGET.
        let lease_stop = CancellationToken::new();
        let mut lease_task = tokio::spawn(lease_loop(
            store,
            lease_rx,
            lease_msg_tx,
            self.shared.clone(),
            lease_stop.clone(),
        ));

        let cfg = watcher::Config::default().fields(&format!("metadata.name={}", id.pod_name));
        // After an error the pod watch starts over with a list, not from
        // the last resourceVersion (kube's watcher resumes from it silently):
        // only a delivered pod proves the watch works again, and an
        // unchanged pod would never be delivered by a resumed watch, leaving
        // the watchdog unready and failing open after the grace.
        let pods = self.pods.clone();
        let new_watch = move || watcher(pods.clone(), cfg.clone()).boxed();
        let mut pod_events = Some(new_watch());
        let mut rewatch_backoff = Backoff::new(REWATCH_INITIAL, REWATCH_MAX);
        let mut rewatch_at: Option<tokio::time::Instant> = None;

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
                ev = next_or_pending(pod_events.as_mut()) => match ev {
                    Some(Ok(ev)) => {
                        if matches!(ev, watcher::Event::InitDone) {
                            rewatch_backoff.reset();
                        }
                        // Lines already delivered belong to the run the
                        // detector has now: they go before a new run starts.
                        while let Ok(msg) = follow_rx.try_recv() {
                            self.on_follower(msg);
                        }
                        self.on_pod_event(ev);
                    }
                    Some(Err(e)) => {
                        let now = Timestamp::now();
                        let delay = rewatch_backoff.next_delay();
                        warn!(error = %e, retry_in = ?delay, "watching the own pod failed; watching again after a backoff");
                        self.shared.metrics.api_error(gate::OP_POD_WATCH);
                        self.shared.with_gate(|g| g.record_error(gate::OP_POD_WATCH, e.to_string(), now));
                        pod_events = None;
                        rewatch_at = Some(tokio::time::Instant::now() + delay);
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
                () = sleep_until_some(rewatch_at) => {
                    rewatch_at = None;
                    pod_events = Some(new_watch());
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
        if self.ready && self.saves.due().is_some() {
            self.saves.publish(self.detector.history_to_store());
        }
        // Closing both queues lets each task finish what it holds: the last
        // Lease save, and the Events decided so far (the drain's too).
        self.saves.close();
        self.events.close();
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

    /// Time until the next thing due: the detector's wake-up, a pending
    /// run end, or the heartbeat.
    fn next_sleep(&self, now: Timestamp) -> Duration {
        let mut next = HEARTBEAT;
        if self.view.native_sidecar
            && self.view.listener_initializing
            && let Some(since) = self.gate_open_since
        {
            let due = gate::elapsed(since, now);
            next = next.min(self.args.step_aside_after.saturating_sub(due));
        }
        if self.ready
            && let Some(at) = self.detector.next_wakeup()
        {
            next = next.min(gate::elapsed(now, at));
        }
        for (deadline, _) in self.pending_ends.values() {
            next = next.min(gate::elapsed(now, *deadline));
        }
        if let Some(due) = self.saves.due() {
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
        if let Some(mut stored) = stored {
            let max = self.detector.thresholds().backoff_max;
            if stored.clamp_deadlines(Timestamp::now(), max) {
                warn!(
                    backoff_max = %crate::settings::format_duration(max),
                    "the stored history held a deadline further away than --backoff-max from now \
                     (another node's clock, an older setting, or an edited Lease); clamped"
                );
            }
            self.detector.merge(&stored);
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
        self.check_plain_init(now);
    }

    /// Steps aside (exits 0, so that the kubelet starts the listener) when
    /// the kubelet runs the watchdog as a plain init container: see
    /// [`run_as_plain_init`].
    fn check_plain_init(&mut self, now: Timestamp) {
        let open = self.shared.with_gate(|g| g.answer(now).is_open());
        self.gate_open_since = match (open, self.gate_open_since) {
            (false, _) => None,
            (true, None) => Some(now),
            (true, since) => since,
        };
        if self.stepped_aside
            || !run_as_plain_init(
                &self.view,
                self.gate_open_since,
                now,
                self.args.step_aside_after,
            )
        {
            return;
        }
        self.stepped_aside = true;
        let message = format!(
            "the kubelet runs the watchdog as a plain init container (it does not support native \
             sidecars: older than 1.29, or 1.28 without the SidecarContainers gate): the listener \
             has waited for it {} with the start gate open; the watchdog exits so that the listener \
             starts, and this listener pod runs without it",
            crate::settings::format_duration(self.args.step_aside_after)
        );
        error!("{message}");
        // The Event counts in arc_watchdog_decisions_total{reason}.
        self.report(Reason::WatchdogSteppedAside, message, "StepAside");
        self.cancel.cancel();
    }

    fn on_lease(&mut self, msg: LeaseMsg) {
        match msg {
            LeaseMsg::Loaded(stored) => {
                self.shared.with_gate(Gate::set_history_loaded);
                let stored = match stored {
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
                self.saves.loaded(stored.clone());
                self.become_ready(Some(stored.unwrap_or_default()));
                if self.ready {
                    self.saves.publish(self.detector.history_to_store());
                }
            }
            LeaseMsg::Unavailable(why) => {
                warn!(reason = %why, "the Lease cannot be used yet; keeping the history in memory and reading it again later");
                self.shared.with_gate(Gate::set_history_loaded);
                self.become_ready(None);
            }
            LeaseMsg::Merged(stored) => self.become_ready(Some(stored)),
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
        self.saves.offer(self.detector.history_to_store());
        self.check_plain_init(now);
    }
}

/// First wait before the pod watch starts over after an error.
const REWATCH_INITIAL: Duration = Duration::from_millis(800);
/// Longest wait before the pod watch starts over.
const REWATCH_MAX: Duration = Duration::from_secs(30);

/// The next item of `stream`, or never while there is none.
async fn next_or_pending<S: futures::Stream + Unpin>(stream: Option<&mut S>) -> Option<S::Item> {
    match stream {
        Some(s) => s.next().await,
        None => futures::future::pending().await,
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => futures::future::pending().await,
    }
}
