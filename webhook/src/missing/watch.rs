//! The I/O around [`super::classify`]: watches the AutoscalingRunnerSets,
//! the AutoscalingListeners and listener pods of the listener namespaces
//! and the Nodes, reports missing listeners (Warning Event, log line,
//! gauge) and, when asked to, force-deletes listener pods stuck
//! Terminating on a NotReady node.
//!
//! Every replica runs this; every write is idempotent: the Event is named
//! after the reason and an object's UID, and the deletion is conditional on
//! the pod's UID, so two replicas never do anything twice that matters.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher;
use tokio_util::sync::CancellationToken;

use arc_watchdog_core::names;

use super::{
    ARC_GROUP, ARC_VERSION, Budget, Due, Listener, ListenerPod, PodRef, REASON, RUNNER_SET_KIND,
    RUNNER_SET_PLURAL, RunnerSet, Tracker, View, classify, event_for, not_ready_since, stuck_pods,
};
use crate::coverage::ReportResult;
use crate::metrics::Metrics;
use crate::owner::ConfigOwner;

/// Time budget of one API call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often failed reports and actions are tried again.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(30);
/// The window of `--delete-stuck-terminating-budget`.
pub const BUDGET_WINDOW: Duration = Duration::from_secs(3600);

/// The settings of [`run`].
#[derive(Debug, Clone)]
pub struct Settings {
    /// Report a scale set without a running listener for this long.
    pub report_after: Duration,
    /// Namespaces of the AutoscalingRunnerSets; empty: all.
    pub runner_namespaces: Vec<String>,
    /// Namespaces of the AutoscalingListeners and listener pods.
    pub listener_namespaces: Vec<String>,
    /// Force-delete a listener pod stuck Terminating on a NotReady node for
    /// this long; `None`: never.
    pub delete_stuck_after: Option<Duration>,
    /// Only say what would be deleted (a server-side dry run).
    pub dry_run: bool,
    /// Most deletions per [`BUDGET_WINDOW`] by this process.
    pub budget: usize,
    /// This replica's name (the Events' `reportingInstance`).
    pub instance: String,
}

impl Settings {
    /// How often the objects are judged again without a watch event: the
    /// objects may not change, yet the time passes.
    pub fn tick(&self) -> Duration {
        let shortest = self
            .delete_stuck_after
            .map_or(self.report_after, |d| d.min(self.report_after));
        (shortest / 4).clamp(Duration::from_secs(1), Duration::from_secs(15))
    }
}

/// The ARC resource of `kind`/`plural`.
pub fn arc_resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(ARC_GROUP, ARC_VERSION, kind), plural)
}

/// One watched list, as plain data, with kube's relist protocol.
#[derive(Debug)]
struct Table<T> {
    live: BTreeMap<String, T>,
    relist: Option<BTreeMap<String, T>>,
    /// The first list is complete: until then the table may lack objects
    /// that exist, and a judgement on it would find missing listeners
    /// where there are none.
    ready: bool,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Self {
            live: BTreeMap::new(),
            relist: None,
            ready: false,
        }
    }
}

impl<T> Table<T> {
    fn apply<K: kube::Resource>(
        &mut self,
        event: watcher::Event<K>,
        convert: impl Fn(&K) -> Option<T>,
    ) {
        let key = |k: &K| {
            format!(
                "{}/{}",
                k.meta().namespace.as_deref().unwrap_or_default(),
                k.meta().name.as_deref().unwrap_or_default()
            )
        };
        match event {
            watcher::Event::Apply(k) => match convert(&k) {
                Some(t) => {
                    self.live.insert(key(&k), t);
                }
                None => {
                    self.live.remove(&key(&k));
                }
            },
            watcher::Event::Delete(k) => {
                self.live.remove(&key(&k));
            }
            watcher::Event::Init => self.relist = Some(BTreeMap::new()),
            watcher::Event::InitApply(k) => {
                if let Some(t) = convert(&k) {
                    self.relist
                        .get_or_insert_with(BTreeMap::new)
                        .insert(key(&k), t);
                }
            }
            watcher::Event::InitDone => {
                if let Some(found) = self.relist.take() {
                    self.live = found;
                }
                self.ready = true;
            }
        }
    }
}

/// A watch event, by source (boxed: the objects are large and differ in
/// size).
enum Change {
    RunnerSets(usize, Box<watcher::Event<DynamicObject>>),
    Listeners(usize, Box<watcher::Event<DynamicObject>>),
    Pods(usize, Box<watcher::Event<Pod>>),
    Nodes(Box<watcher::Event<Node>>),
}

/// What the watches show.
#[derive(Debug, Default)]
struct Tables {
    runner_sets: Vec<Table<RunnerSet>>,
    listeners: Vec<Table<Listener>>,
    pods: Vec<Table<ListenerPod>>,
    /// Nodes: since when NotReady (`None`: Ready).
    nodes: Table<Option<Timestamp>>,
}

impl Tables {
    fn new(runner_streams: usize, listener_namespaces: usize) -> Self {
        fn tables<T>(n: usize) -> Vec<Table<T>> {
            (0..n).map(|_| Table::default()).collect()
        }
        Self {
            runner_sets: tables(runner_streams),
            listeners: tables(listener_namespaces),
            pods: tables(listener_namespaces),
            nodes: Table::default(),
        }
    }

    fn apply(&mut self, change: Change) {
        match change {
            Change::RunnerSets(i, e) => {
                if let Some(t) = self.runner_sets.get_mut(i) {
                    t.apply(*e, RunnerSet::of);
                }
            }
            Change::Listeners(i, e) => {
                if let Some(t) = self.listeners.get_mut(i) {
                    t.apply(*e, Listener::of);
                }
            }
            Change::Pods(i, e) => {
                if let Some(t) = self.pods.get_mut(i) {
                    t.apply(*e, ListenerPod::of);
                }
            }
            Change::Nodes(e) => self.nodes.apply(*e, |n: &Node| Some(not_ready_since(n))),
        }
    }

    fn ready(&self) -> bool {
        self.nodes.ready
            && self.runner_sets.iter().all(|t| t.ready)
            && self.listeners.iter().all(|t| t.ready)
            && self.pods.iter().all(|t| t.ready)
    }

    fn view(&self) -> View {
        View {
            runner_sets: self
                .runner_sets
                .iter()
                .flat_map(|t| t.live.values().cloned())
                .collect(),
            listeners: self
                .listeners
                .iter()
                .flat_map(|t| t.live.values().cloned())
                .collect(),
            pods: self
                .pods
                .iter()
                .flat_map(|t| t.live.values().cloned())
                .collect(),
            not_ready: self
                .nodes
                .live
                .iter()
                .filter_map(|(key, since)| {
                    Some((key.trim_start_matches('/').to_owned(), (*since)?))
                })
                .collect(),
        }
    }
}

/// How one force-deletion ended (the `result` label of its counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionResult {
    /// The pod was removed.
    Deleted,
    /// Dry run: the API server accepted the deletion as a dry run.
    DryRun,
    /// Gone already, or replaced by a new generation.
    Gone,
    /// The budget is spent: not sent (logged once per pod).
    BudgetExhausted,
    /// The API server refused or did not answer (retried later).
    Error,
}

impl ActionResult {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deleted => "deleted",
            Self::DryRun => "dry_run",
            Self::Gone => "gone",
            Self::BudgetExhausted => "budget_exhausted",
            Self::Error => "error",
        }
    }
}

struct Reporter {
    client: kube::Client,
    owner: Arc<ConfigOwner>,
    settings: Settings,
}

impl Reporter {
    async fn report(&self, due: &Due) -> ReportResult {
        let owner = self.owner.reference_within(CALL_TIMEOUT).await;
        let f = &due.finding;
        let event = event_for(
            due,
            &self.settings.instance,
            owner.as_ref(),
            Timestamp::now(),
        );
        let events: Api<Event> = Api::namespaced(self.client.clone(), &f.runner_set.namespace);
        let created =
            tokio::time::timeout(CALL_TIMEOUT, events.create(&PostParams::default(), &event)).await;
        let (ns, name, reason) = (
            &f.runner_set.namespace,
            &f.runner_set.name,
            f.reason.as_str(),
        );
        match created {
            Ok(Ok(_)) => {
                tracing::warn!(
                    namespace = %ns,
                    scale_set = %name,
                    missing = reason,
                    since = %due.since,
                    listener = ?f.listener,
                    pod = ?f.pod.as_ref().map(|p| &p.name),
                    event_reason = REASON,
                    "scale set has no running listener; see its ListenerMissing Event for what to do"
                );
                ReportResult::Created
            }
            Ok(Err(kube::Error::Api(s))) if s.code == 409 => {
                tracing::debug!(namespace = %ns, scale_set = %name, missing = reason, "missing listener already reported");
                ReportResult::AlreadyReported
            }
            Ok(Err(err)) => {
                tracing::warn!(
                    namespace = %ns,
                    scale_set = %name,
                    missing = reason,
                    error = %err,
                    "scale set has no running listener; could not create its Warning Event (retrying)"
                );
                ReportResult::Error
            }
            Err(_) => {
                tracing::warn!(
                    namespace = %ns,
                    scale_set = %name,
                    missing = reason,
                    "scale set has no running listener; creating its Warning Event timed out (retrying)"
                );
                ReportResult::Error
            }
        }
    }

    /// Force-deletes `pod` (grace period 0, only this generation) through
    /// the Eviction API, which the webhook may already use in the listener
    /// namespaces: a pod being deleted is exempt from PodDisruptionBudgets
    /// there, and a grace period of 0 removes it without its kubelet, as
    /// `kubectl delete pod --force --grace-period=0` does.
    async fn force_delete(&self, pod: &PodRef) -> ActionResult {
        let sent = crate::evict::evict_pod(
            self.client.clone(),
            &pod.namespace,
            &pod.name,
            &pod.uid,
            Some(0),
            self.settings.dry_run,
        );
        let node = pod.node.as_deref().unwrap_or_default();
        match tokio::time::timeout(CALL_TIMEOUT, sent).await {
            Ok(Ok(_)) if self.settings.dry_run => {
                tracing::warn!(
                    namespace = %pod.namespace,
                    pod = %pod.name,
                    uid = %pod.uid,
                    node,
                    "dry run: would force-delete this listener pod stuck Terminating on a NotReady \
                     node (the API server accepted it as a dry run); set \
                     --missing-actions-dry-run=false to do it"
                );
                ActionResult::DryRun
            }
            Ok(Ok(_)) => {
                tracing::warn!(
                    namespace = %pod.namespace,
                    pod = %pod.name,
                    uid = %pod.uid,
                    node,
                    "force-deleted a listener pod stuck Terminating on a NotReady node; ARC \
                     creates the next one"
                );
                ActionResult::Deleted
            }
            Ok(Err(kube::Error::Api(s))) if s.code == 404 || s.code == 409 => ActionResult::Gone,
            Ok(Err(err)) => {
                tracing::warn!(
                    namespace = %pod.namespace,
                    pod = %pod.name,
                    node,
                    error = %err,
                    "could not force-delete a listener pod stuck Terminating on a NotReady node (retrying)"
                );
                ActionResult::Error
            }
            Err(_) => {
                tracing::warn!(
                    namespace = %pod.namespace,
                    pod = %pod.name,
                    node,
                    "force-deleting a listener pod stuck Terminating on a NotReady node timed out (retrying)"
                );
                ActionResult::Error
            }
        }
    }
}

/// Watches the scale sets, their listeners, listener pods and nodes, and
/// reports (and, if asked, acts on) missing listeners until `cancel`.
/// Never returns an error: a failed list or watch (RBAC missing, API
/// server down) is logged, counted and retried with kube's default
/// exponential backoff, and nothing is judged until every list has been
/// read once.
pub async fn run(
    client: kube::Client,
    owner: Arc<ConfigOwner>,
    metrics: Arc<Metrics>,
    settings: Settings,
    cancel: CancellationToken,
) {
    let ars = arc_resource(RUNNER_SET_KIND, RUNNER_SET_PLURAL);
    let al = arc_resource(names::AUTOSCALING_LISTENER_KIND, "autoscalinglisteners");
    let selector = format!(
        "{}={}",
        names::LISTENER_COMPONENT_LABEL,
        names::LISTENER_COMPONENT_VALUE
    );
    let runner_apis: Vec<Api<DynamicObject>> = if settings.runner_namespaces.is_empty() {
        vec![Api::all_with(client.clone(), &ars)]
    } else {
        settings
            .runner_namespaces
            .iter()
            .map(|ns| Api::namespaced_with(client.clone(), ns, &ars))
            .collect()
    };
    let mut streams = Vec::new();
    for (i, api) in runner_apis.into_iter().enumerate() {
        streams.push(
            watcher(api, watcher::Config::default())
                .default_backoff()
                .map_ok(move |e| Change::RunnerSets(i, Box::new(e)))
                .map_err(|e| ("AutoscalingRunnerSets", e))
                .boxed(),
        );
    }
    for (i, ns) in settings.listener_namespaces.iter().enumerate() {
        let listeners: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &al);
        streams.push(
            watcher(listeners, watcher::Config::default())
                .default_backoff()
                .map_ok(move |e| Change::Listeners(i, Box::new(e)))
                .map_err(|e| ("AutoscalingListeners", e))
                .boxed(),
        );
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        streams.push(
            watcher(pods, watcher::Config::default().labels(&selector))
                .default_backoff()
                .map_ok(move |e| Change::Pods(i, Box::new(e)))
                .map_err(|e| ("listener pods", e))
                .boxed(),
        );
    }
    let nodes: Api<Node> = Api::all(client.clone());
    streams.push(
        watcher(nodes, watcher::Config::default())
            .default_backoff()
            .map_ok(|e| Change::Nodes(Box::new(e)))
            .map_err(|e| ("nodes", e))
            .boxed(),
    );
    let mut merged = futures::stream::select_all(streams);
    let mut tables = Tables::new(
        settings.runner_namespaces.len().max(1),
        settings.listener_namespaces.len(),
    );
    let mut tracker = Tracker::new(settings.report_after);
    let mut budget = Budget::new(settings.budget, BUDGET_WINDOW);
    // Pods acted on (deleted, dry run, gone), failed since the last retry
    // tick, and told about an exhausted budget: each said once.
    let mut acted: BTreeSet<String> = BTreeSet::new();
    let mut action_failed: BTreeSet<String> = BTreeSet::new();
    let mut budget_told: BTreeSet<String> = BTreeSet::new();
    let mut tick = tokio::time::interval(settings.tick());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retry = tokio::time::interval(RETRY_INTERVAL);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(
        report_after = ?settings.report_after,
        runner_namespaces = ?settings.runner_namespaces,
        listener_namespaces = ?settings.listener_namespaces,
        delete_stuck_terminating_after = ?settings.delete_stuck_after,
        dry_run = settings.dry_run,
        "watching scale sets for missing listeners"
    );
    let reporter = Reporter {
        client,
        owner,
        settings: settings.clone(),
    };
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            item = merged.next() => match item {
                Some(Ok(change)) => tables.apply(change),
                Some(Err((what, err))) => {
                    metrics.missing_watch_error();
                    tracing::warn!(
                        error = %err,
                        watched = what,
                        "cannot list or watch {what} (retrying with backoff); missing listeners \
                         are not judged until every list has been read"
                    );
                }
                // The node watch is endless; nothing ends here in practice.
                None => return,
            },
            _ = tick.tick() => {}
            _ = retry.tick() => {
                tracker.retry_failed();
                action_failed.clear();
            }
        }
        if !tables.ready() {
            continue;
        }
        let now = Timestamp::now();
        let findings = classify(&tables.view());
        tracker.update(&findings, now);
        for (reason, count) in tracker.counts(&findings, now) {
            metrics.set_missing_listeners(reason.as_str(), count);
        }
        for due in tracker.to_report(&findings, now) {
            let result = tokio::select! {
                () = cancel.cancelled() => return,
                r = reporter.report(&due) => r,
            };
            metrics.missing_report(result.as_str());
            match result {
                ReportResult::Created | ReportResult::AlreadyReported => {
                    tracker.mark_reported(&due.finding);
                }
                ReportResult::Error => tracker.mark_failed(&due.finding),
            }
        }

        let Some(after) = settings.delete_stuck_after else {
            continue;
        };
        let stuck = stuck_pods(&findings, now, after);
        let present: BTreeSet<&String> = stuck.iter().map(|p| &p.uid).collect();
        acted.retain(|uid| present.contains(uid));
        budget_told.retain(|uid| present.contains(uid));
        for pod in &stuck {
            if acted.contains(&pod.uid) || action_failed.contains(&pod.uid) {
                continue;
            }
            // A dry run spends no budget: it shows every pod that would go.
            if !settings.dry_run && !budget.try_spend(now) {
                if budget_told.insert(pod.uid.clone()) {
                    metrics.stuck_pod_deletion(ActionResult::BudgetExhausted.as_str());
                    tracing::warn!(
                        namespace = %pod.namespace,
                        pod = %pod.name,
                        budget = settings.budget,
                        "a listener pod is stuck Terminating on a NotReady node, but this replica \
                         has force-deleted --delete-stuck-terminating-budget pods in the last hour: \
                         not deleting it now"
                    );
                }
                continue;
            }
            let result = tokio::select! {
                () = cancel.cancelled() => return,
                r = reporter.force_delete(pod) => r,
            };
            metrics.stuck_pod_deletion(result.as_str());
            if result == ActionResult::Error {
                action_failed.insert(pod.uid.clone());
            } else {
                acted.insert(pod.uid.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(report: u64, delete: Option<u64>) -> Settings {
        Settings {
            report_after: Duration::from_secs(report),
            runner_namespaces: vec![],
            listener_namespaces: vec!["arc-systems".into()],
            delete_stuck_after: delete.map(Duration::from_secs),
            dry_run: true,
            budget: 3,
            instance: String::new(),
        }
    }

    #[test]
    fn tick_follows_the_shortest_bound_within_limits() {
        assert_eq!(settings(300, None).tick(), Duration::from_secs(15));
        assert_eq!(settings(20, None).tick(), Duration::from_secs(5));
        assert_eq!(settings(300, Some(8)).tick(), Duration::from_secs(2));
        assert_eq!(settings(2, None).tick(), Duration::from_secs(1));
    }

    #[test]
    fn tables_judge_nothing_until_every_list_is_read() {
        let mut t = Tables::new(1, 1);
        assert!(!t.ready());
        t.apply(Change::RunnerSets(0, Box::new(watcher::Event::InitDone)));
        t.apply(Change::Listeners(0, Box::new(watcher::Event::InitDone)));
        t.apply(Change::Pods(0, Box::new(watcher::Event::InitDone)));
        assert!(!t.ready(), "nodes not listed yet");
        t.apply(Change::Nodes(Box::new(watcher::Event::Init)));
        t.apply(Change::Nodes(Box::new(watcher::Event::InitApply(Node {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some("n1".into()),
                ..Default::default()
            },
            ..Node::default()
        }))));
        t.apply(Change::Nodes(Box::new(watcher::Event::InitDone)));
        assert!(t.ready());
        // A node without a Ready condition counts as NotReady, by its name.
        assert_eq!(
            t.view().not_ready.keys().collect::<Vec<_>>(),
            vec![&"n1".to_owned()]
        );
    }

    #[test]
    fn action_results_are_metric_labels() {
        for (r, s) in [
            (ActionResult::Deleted, "deleted"),
            (ActionResult::DryRun, "dry_run"),
            (ActionResult::Gone, "gone"),
            (ActionResult::BudgetExhausted, "budget_exhausted"),
            (ActionResult::Error, "error"),
        ] {
            assert_eq!(r.as_str(), s);
        }
    }
}
