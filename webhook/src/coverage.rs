//! Coverage: ARC listener pods that run without the watchdog.
//!
//! The webhook's `failurePolicy` is `Ignore`, so a listener pod created
//! while the webhook is down, unreachable or not yet installed is admitted
//! without the sidecar, and nothing heals it. This module watches the
//! listener pods of `--listener-namespaces` and reports each such pod once:
//! a Warning Event (reason [`REASON`]) on the pod, a log line, and the gauge
//! `arc_watchdog_webhook_uninjected_listeners`. It never deletes or evicts
//! anything: recreating the pod is the operator's call (the Event says how).
//!
//! Which pods need the watchdog is [`crate::mutation::skip_reason`], the
//! admission's own rule. [`classify`], [`Tracker`] and [`event_for`] are
//! pure; [`run`] is the thin watch-and-create loop around them.
//!
//! Deduplication: the Event's name is derived from the pod's UID
//! ([`event_name`]), and creating it again answers AlreadyExists. So a
//! second replica, or this one after a restart, does not add a second
//! Event for the same pod while the first still exists (the API server
//! expires Events after its `--event-ttl`, 1 h by default; a webhook
//! restart after that reports the pod once more). No extra rights needed:
//! no list on Events, no write on pods. Like every object arc-watchdog
//! creates at run time, the Event is labelled managed-by arc-watchdog and
//! owned by the webhook's MutatingWebhookConfiguration (when it can be
//! read), so uninstalling removes it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher;
use tokio_util::sync::CancellationToken;

use arc_watchdog_core::names;
use arc_watchdog_core::reasons::Reason;

use crate::events;
use crate::metrics::Metrics;
use crate::mutation::{self, SkipReason};
use crate::owner::ConfigOwner;

/// Reason of the Warning Event about an uninjected listener pod.
pub const REASON: &str = Reason::ListenerNotInjected.as_str();
/// `action` of that Event.
pub const ACTION: &str = "Report";
/// `reportingController` of every Event the webhook writes.
pub use crate::events::REPORTING_CONTROLLER;
/// Prefix of the Event's name; the pod's UID follows.
pub const EVENT_NAME_PREFIX: &str = "arc-watchdog-uninjected-";
/// How often reports that failed are tried again.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(30);
/// Time budget of one Event create.
pub const CREATE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a pod means for coverage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    /// An ARC listener that should carry the watchdog and does not.
    Uninjected,
    /// Needs nothing: not a listener, opted out, or already injected.
    Fine(SkipReason),
    /// Being deleted or finished (phase Succeeded or Failed): ARC replaces
    /// it, and the replacement is what counts.
    Gone,
}

/// Classifies one pod. Pure.
pub fn classify(pod: &Pod) -> Coverage {
    if let Some(reason) = mutation::skip_reason(pod) {
        return Coverage::Fine(reason);
    }
    let finished = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");
    if finished || pod.metadata.deletion_timestamp.is_some() {
        return Coverage::Gone;
    }
    Coverage::Uninjected
}

/// An uninjected listener pod, as much as the report needs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Uninjected {
    /// Namespace.
    pub namespace: String,
    /// Name (ARC keeps it across generations).
    pub name: String,
    /// UID (new for every generation).
    pub uid: String,
}

impl Uninjected {
    fn of(namespace: &str, pod: &Pod) -> Option<Self> {
        (classify(pod) == Coverage::Uninjected).then(|| Self {
            namespace: pod
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| namespace.to_owned()),
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
        })
    }
}

#[derive(Debug, Default)]
struct Namespace {
    /// Uninjected pods by name.
    pods: BTreeMap<String, Uninjected>,
    /// While a (re)list runs: what it found so far.
    relist: Option<BTreeMap<String, Uninjected>>,
}

/// The uninjected listener pods of every watched namespace, and which of
/// them were reported. Fed with watch events; pure.
#[derive(Debug, Default)]
pub struct Tracker {
    namespaces: BTreeMap<String, Namespace>,
    /// UIDs whose Event exists (created now or before).
    reported: BTreeSet<String>,
    /// UIDs whose report failed since the last retry tick.
    failed: BTreeSet<String>,
}

impl Tracker {
    /// Applies one watch event for `namespace`.
    pub fn apply(&mut self, namespace: &str, event: watcher::Event<Pod>) {
        let ns = self.namespaces.entry(namespace.to_owned()).or_default();
        let name = |pod: &Pod| pod.metadata.name.clone().unwrap_or_default();
        match event {
            watcher::Event::Apply(pod) => match Uninjected::of(namespace, &pod) {
                Some(u) => {
                    ns.pods.insert(name(&pod), u);
                }
                None => {
                    ns.pods.remove(&name(&pod));
                }
            },
            watcher::Event::Delete(pod) => {
                ns.pods.remove(&name(&pod));
                if let Some(uid) = &pod.metadata.uid {
                    self.reported.remove(uid);
                    self.failed.remove(uid);
                }
            }
            watcher::Event::Init => ns.relist = Some(BTreeMap::new()),
            watcher::Event::InitApply(pod) => {
                if let Some(u) = Uninjected::of(namespace, &pod) {
                    ns.relist
                        .get_or_insert_with(BTreeMap::new)
                        .insert(name(&pod), u);
                }
            }
            watcher::Event::InitDone => {
                if let Some(found) = ns.relist.take() {
                    ns.pods = found;
                }
                // Forget pods that went away while the watch was down.
                let live: BTreeSet<&String> = self
                    .namespaces
                    .values()
                    .flat_map(|n| n.pods.values().map(|u| &u.uid))
                    .collect();
                self.reported.retain(|uid| live.contains(uid));
                self.failed.retain(|uid| live.contains(uid));
            }
        }
    }

    /// How many listener pods run without the watchdog now.
    pub fn uninjected(&self) -> usize {
        self.namespaces.values().map(|n| n.pods.len()).sum()
    }

    /// Uninjected pods not reported yet (and not failed since the last
    /// [`Self::retry_failed`]).
    pub fn to_report(&self) -> Vec<Uninjected> {
        self.namespaces
            .values()
            .flat_map(|n| n.pods.values())
            .filter(|u| !self.reported.contains(&u.uid) && !self.failed.contains(&u.uid))
            .cloned()
            .collect()
    }

    /// The pod's Event exists.
    pub fn mark_reported(&mut self, pod: &Uninjected) {
        self.failed.remove(&pod.uid);
        self.reported.insert(pod.uid.clone());
    }

    /// The pod's report failed: try again after the next retry tick.
    pub fn mark_failed(&mut self, pod: &Uninjected) {
        self.failed.insert(pod.uid.clone());
    }

    /// Makes failed reports due again.
    pub fn retry_failed(&mut self) {
        self.failed.clear();
    }
}

/// The name of the Event about pod `uid`: the same for every replica and
/// every restart of the webhook, which is what deduplicates the report.
pub fn event_name(uid: &str) -> String {
    format!("{EVENT_NAME_PREFIX}{uid}")
}

/// The Event's message: what is wrong, why it matters, how to fix it.
pub fn message(pod: &Uninjected) -> String {
    format!(
        "Listener pod {ns}/{name} runs without the {container} sidecar: it was created while the \
         arc-watchdog webhook was down, unreachable or not yet installed (failurePolicy Ignore \
         admits it unchanged), so session-conflict loops and stuck listeners of this scale set are \
         neither detected nor healed. Fix: delete the pod (kubectl -n {ns} delete pod {name}); ARC \
         recreates it at once and the webhook injects the watchdog. To run it without the watchdog \
         on purpose, set the annotation {annotation}: \"false\" in the scale set's listenerTemplate.",
        ns = pod.namespace,
        name = pod.name,
        container = names::CONTAINER_NAME,
        annotation = names::ANNOTATION_INJECT,
    )
}

/// The Warning Event about `pod` (events.k8s.io/v1), reported by `instance`
/// at `now`, owned by `owner` (the webhook's configuration, so that
/// uninstalling removes it with the other run-time objects). Pure.
pub fn event_for(
    pod: &Uninjected,
    instance: &str,
    owner: Option<&OwnerReference>,
    now: Timestamp,
) -> Event {
    events::warning(
        events::Warning {
            name: event_name(&pod.uid),
            namespace: &pod.namespace,
            reason: REASON,
            action: ACTION,
            note: message(pod),
            regarding: events::pod_reference(&pod.namespace, &pod.name, &pod.uid),
        },
        instance,
        owner,
        now,
    )
}

/// How one report ended (the `result` label of the reports metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportResult {
    /// The Event was created now.
    Created,
    /// It existed already (another replica, or before a restart).
    AlreadyReported,
    /// The create failed (retried later).
    Error,
}

impl ReportResult {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::AlreadyReported => "already_reported",
            Self::Error => "error",
        }
    }
}

/// Creates the Events; knows who reports and who owns them.
struct Reporter {
    client: kube::Client,
    instance: String,
    owner: Arc<ConfigOwner>,
}

impl Reporter {
    async fn report(&self, pod: &Uninjected) -> ReportResult {
        let owner = self.owner.reference_within(CREATE_TIMEOUT).await;
        report(&self.client, pod, &self.instance, owner.as_ref()).await
    }
}

async fn report(
    client: &kube::Client,
    pod: &Uninjected,
    instance: &str,
    owner: Option<&OwnerReference>,
) -> ReportResult {
    let events: Api<Event> = Api::namespaced(client.clone(), &pod.namespace);
    let event = event_for(pod, instance, owner, Timestamp::now());
    let created = tokio::time::timeout(
        CREATE_TIMEOUT,
        events.create(&PostParams::default(), &event),
    )
    .await;
    match created {
        Ok(Ok(_)) => {
            tracing::warn!(
                namespace = %pod.namespace,
                pod = %pod.name,
                uid = %pod.uid,
                reason = REASON,
                "ARC listener pod runs without the arc-watchdog sidecar (created while the webhook \
                 was away); delete the pod so ARC recreates it and the webhook injects it"
            );
            ReportResult::Created
        }
        Ok(Err(kube::Error::Api(status))) if status.code == 409 => {
            tracing::debug!(
                namespace = %pod.namespace,
                pod = %pod.name,
                "uninjected listener pod already reported"
            );
            ReportResult::AlreadyReported
        }
        Ok(Err(err)) => {
            tracing::warn!(
                namespace = %pod.namespace,
                pod = %pod.name,
                error = %err,
                "ARC listener pod runs without the arc-watchdog sidecar; could not create its \
                 Warning Event (retrying)"
            );
            ReportResult::Error
        }
        Err(_) => {
            tracing::warn!(
                namespace = %pod.namespace,
                pod = %pod.name,
                "ARC listener pod runs without the arc-watchdog sidecar; creating its Warning \
                 Event timed out (retrying)"
            );
            ReportResult::Error
        }
    }
}

/// One namespace's listener pod watch: its events, each with the namespace.
pub(crate) type NamespacedPodEvents =
    futures::stream::BoxStream<'static, Result<(String, watcher::Event<Pod>), watcher::Error>>;

/// The events of a watch of the listener pods in each of `namespaces`,
/// merged, each with its namespace (retried with kube's backoff).
pub(crate) fn listener_pod_events(
    client: &kube::Client,
    namespaces: &[String],
) -> futures::stream::SelectAll<NamespacedPodEvents> {
    let selector = format!(
        "{}={}",
        names::LISTENER_COMPONENT_LABEL,
        names::LISTENER_COMPONENT_VALUE
    );
    futures::stream::select_all(namespaces.iter().map(|ns| {
        let api: Api<Pod> = Api::namespaced(client.clone(), ns);
        let ns = ns.clone();
        watcher(api, watcher::Config::default().labels(&selector))
            .default_backoff()
            .map_ok(move |event| (ns.clone(), event))
            .boxed()
    }))
}

/// Watches the listener pods of `namespaces` and reports uninjected ones
/// until `cancel`. Never returns an error: a failed list or watch (RBAC
/// missing, API server down) is logged, counted and retried with kube's
/// default exponential backoff (up to 30 s between tries).
pub async fn run(
    client: kube::Client,
    namespaces: Vec<String>,
    instance: String,
    owner: Arc<ConfigOwner>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut merged = listener_pod_events(&client, &namespaces);
    let reporter = Reporter {
        client: client.clone(),
        instance,
        owner,
    };
    let mut tracker = Tracker::default();
    let mut retry = tokio::time::interval(RETRY_INTERVAL);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(namespaces = ?namespaces, "watching listener pods for missing sidecars");
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            item = merged.next() => match item {
                Some(Ok((ns, event))) => tracker.apply(&ns, event),
                Some(Err(err)) => {
                    metrics.coverage_watch_error();
                    tracing::warn!(
                        error = %err,
                        "cannot list or watch listener pods (retrying with backoff); \
                         uninjected listeners are not reported meanwhile"
                    );
                }
                // Each watcher stream is endless; only an empty namespace list ends here.
                None => return,
            },
            _ = retry.tick() => tracker.retry_failed(),
        }
        metrics.set_uninjected_listeners(tracker.uninjected());
        for pod in tracker.to_report() {
            let result = tokio::select! {
                () = cancel.cancelled() => return,
                r = reporter.report(&pod) => r,
            };
            metrics.uninjected_report(result.as_str());
            match result {
                ReportResult::Created | ReportResult::AlreadyReported => {
                    tracker.mark_reported(&pod);
                }
                ReportResult::Error => tracker.mark_failed(&pod),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn listener(name: &str, uid: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some("arc-systems".to_owned()),
                uid: Some(uid.to_owned()),
                labels: Some(
                    [(
                        names::LISTENER_COMPONENT_LABEL.to_owned(),
                        names::LISTENER_COMPONENT_VALUE.to_owned(),
                    )]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: names::LISTENER_CONTAINER.to_owned(),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".to_owned()),
                ..PodStatus::default()
            }),
        }
    }

    fn with_watchdog(mut pod: Pod, native: bool) -> Pod {
        let c = Container {
            name: names::CONTAINER_NAME.to_owned(),
            ..Container::default()
        };
        let spec = pod.spec.get_or_insert_with(PodSpec::default);
        if native {
            spec.init_containers = Some(vec![c]);
        } else {
            spec.containers.push(c);
        }
        pod
    }

    #[test]
    fn classify_finds_only_listeners_that_lack_the_watchdog() {
        assert_eq!(classify(&listener("a", "1")), Coverage::Uninjected);
        // Pending (no status yet) counts too: it will run without it.
        let mut pending = listener("a", "1");
        pending.status = None;
        assert_eq!(classify(&pending), Coverage::Uninjected);

        for native in [true, false] {
            assert_eq!(
                classify(&with_watchdog(listener("a", "1"), native)),
                Coverage::Fine(SkipReason::AlreadyInjected)
            );
        }
        let mut opted = listener("a", "1");
        opted.metadata.annotations =
            Some([(names::ANNOTATION_INJECT.to_owned(), " False ".to_owned())].into());
        assert_eq!(classify(&opted), Coverage::Fine(SkipReason::OptedOut));
        // Label without a `listener` container, or the container without
        // the label: not ARC's listener.
        let mut unlabelled = listener("a", "1");
        unlabelled.metadata.labels = None;
        assert_eq!(
            classify(&unlabelled),
            Coverage::Fine(SkipReason::NotListener)
        );
        let mut other = listener("a", "1");
        if let Some(spec) = other.spec.as_mut() {
            spec.containers[0].name = "controller".to_owned();
        }
        assert_eq!(classify(&other), Coverage::Fine(SkipReason::NotListener));
    }

    #[test]
    fn finished_or_terminating_listeners_are_not_counted() {
        for phase in ["Succeeded", "Failed"] {
            let mut pod = listener("a", "1");
            pod.status = Some(PodStatus {
                phase: Some(phase.to_owned()),
                ..PodStatus::default()
            });
            assert_eq!(classify(&pod), Coverage::Gone, "{phase}");
        }
        let mut deleting = listener("a", "1");
        deleting.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        assert_eq!(classify(&deleting), Coverage::Gone);
    }

    #[test]
    fn tracker_reports_each_pod_once_and_follows_generations() {
        let mut t = Tracker::default();
        t.apply("arc-systems", watcher::Event::Init);
        t.apply("arc-systems", watcher::Event::InitApply(listener("a", "1")));
        t.apply(
            "arc-systems",
            watcher::Event::InitApply(with_watchdog(listener("b", "2"), true)),
        );
        assert_eq!(
            t.uninjected(),
            0,
            "nothing counts before the list is complete"
        );
        t.apply("arc-systems", watcher::Event::InitDone);
        assert_eq!(t.uninjected(), 1);
        let due = t.to_report();
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].name.as_str(), due[0].uid.as_str()), ("a", "1"));

        t.mark_reported(&due[0]);
        assert!(t.to_report().is_empty(), "reported once");
        // Status updates of the same pod do not report again.
        t.apply("arc-systems", watcher::Event::Apply(listener("a", "1")));
        assert!(t.to_report().is_empty());
        assert_eq!(t.uninjected(), 1);

        // ARC deletes the pod and recreates it under the same name: the new
        // generation (new UID) is injected this time.
        t.apply("arc-systems", watcher::Event::Delete(listener("a", "1")));
        assert_eq!(t.uninjected(), 0);
        t.apply(
            "arc-systems",
            watcher::Event::Apply(with_watchdog(listener("a", "3"), true)),
        );
        assert_eq!(t.uninjected(), 0);
        assert!(t.to_report().is_empty());

        // A finished uninjected pod stops counting.
        t.apply("other", watcher::Event::Apply(listener("c", "4")));
        assert_eq!(t.uninjected(), 1);
        let mut done = listener("c", "4");
        done.status = Some(PodStatus {
            phase: Some("Failed".to_owned()),
            ..PodStatus::default()
        });
        t.apply("other", watcher::Event::Apply(done));
        assert_eq!(t.uninjected(), 0);
    }

    #[test]
    fn tracker_retries_failed_reports_only_after_the_tick() {
        let mut t = Tracker::default();
        t.apply("ns", watcher::Event::Apply(listener("a", "1")));
        let due = t.to_report();
        t.mark_failed(&due[0]);
        assert!(
            t.to_report().is_empty(),
            "no retry storm on every watch event"
        );
        t.retry_failed();
        assert_eq!(t.to_report(), due);
    }

    #[test]
    fn relist_replaces_the_state_and_forgets_vanished_pods() {
        let mut t = Tracker::default();
        t.apply("ns", watcher::Event::Apply(listener("a", "1")));
        t.apply("ns", watcher::Event::Apply(listener("b", "2")));
        for u in t.to_report() {
            t.mark_reported(&u);
        }
        // The watch broke; meanwhile `a` went away and `b` stayed.
        t.apply("ns", watcher::Event::Init);
        t.apply("ns", watcher::Event::InitApply(listener("b", "2")));
        assert_eq!(
            t.uninjected(),
            2,
            "the old state stands until the relist is done"
        );
        t.apply("ns", watcher::Event::InitDone);
        assert_eq!(t.uninjected(), 1);
        assert!(t.to_report().is_empty(), "b was reported already");
        // `a` comes back as the same object (same UID): reported again,
        // since its record was dropped with it.
        t.apply("ns", watcher::Event::Apply(listener("a", "1")));
        assert_eq!(t.to_report().len(), 1);
    }

    #[test]
    fn event_is_a_named_warning_on_the_pod_that_says_how_to_fix_it() {
        let pod = Uninjected {
            namespace: "arc-systems".into(),
            name: "set-abc-listener".into(),
            uid: "0b6e-uid".into(),
        };
        let owner = crate::owner::owner_reference("arc-watchdog", "cfg-uid");
        let e = event_for(
            &pod,
            "arc-watchdog-webhook-7d9-x",
            Some(&owner),
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(e.metadata.owner_references, Some(vec![owner]));
        assert_eq!(
            e.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(names::MANAGED_BY_LABEL))
                .map(String::as_str),
            Some(names::MANAGED_BY_VALUE)
        );
        assert_eq!(
            e.metadata.name.as_deref(),
            Some("arc-watchdog-uninjected-0b6e-uid")
        );
        assert_eq!(e.metadata.namespace.as_deref(), Some("arc-systems"));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.reason.as_deref(), Some(REASON));
        let regarding = e.regarding.unwrap();
        assert_eq!(regarding.kind.as_deref(), Some("Pod"));
        assert_eq!(regarding.name.as_deref(), Some("set-abc-listener"));
        assert_eq!(regarding.uid.as_deref(), Some("0b6e-uid"));
        let note = e.note.unwrap();
        assert!(
            note.contains("kubectl -n arc-systems delete pod set-abc-listener"),
            "{note}"
        );
        assert!(note.contains("arc-watchdog.dev/inject"), "{note}");
        assert!(note.len() <= 1024, "the API server keeps at most 1 kB");
        assert_eq!(
            e.reporting_controller.as_deref(),
            Some(REPORTING_CONTROLLER)
        );
        assert_eq!(
            e.reporting_instance.as_deref(),
            Some("arc-watchdog-webhook-7d9-x")
        );
        // Same pod, another replica or a restart: same name, so the API
        // server refuses a duplicate.
        let again = event_for(&pod, "other-replica", None, Timestamp::now());
        assert_eq!(again.metadata.name, Some(event_name("0b6e-uid")));
        let blank = event_for(&pod, " ", None, Timestamp::UNIX_EPOCH);
        assert_eq!(
            blank.reporting_instance.as_deref(),
            Some("arc-watchdog-webhook")
        );
        let long = event_for(&pod, &"x".repeat(300), None, Timestamp::UNIX_EPOCH);
        assert_eq!(long.reporting_instance.map(|i| i.len()), Some(128));
    }
}
