//! Missing listeners: scale sets that have had no running listener for
//! longer than `--report-missing-after`.
//!
//! ARC keeps a scale set's pieces in two namespaces: the
//! AutoscalingRunnerSet in the runner namespace, its AutoscalingListener and
//! listener pod in the controller (listener) namespace. The listener's
//! `spec.autoscalingRunnerSetName`/`Namespace` links them; the pod is owned
//! by its listener and named after it. When ARC's controller fails to make
//! the next piece (it is down, it dropped the scale set after a patch, or a
//! node went away under the pod), nothing else notices: no pod crashes, no
//! Event is written, runners simply stop being scaled.
//!
//! [`classify`] judges each scale set from plain data, with the vocabulary
//! and rules of `arc-watchdog status` ([`Missing`] spells the same
//! `missing` values). [`Tracker`] turns the judgements into reports: each
//! (scale set, reason) once, after the bound, counted from when the scale
//! set was first seen without a running listener (never earlier than the
//! objects say), and forgotten once the listener runs again.
//! [`stuck_pods`] picks the pods the opt-in action may force-delete, and
//! [`Budget`] caps how many. All of this is pure; [`watch::run`] is the I/O.
//!
//! Deduplication: the Event's name is derived from the reason and the UID
//! of the object that shows it ([`event_name`]), so a second replica, or
//! this one after a restart, finds it there (AlreadyExists) instead of
//! adding another while the API server keeps it (`--event-ttl`, 1 h by
//! default).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt as _;
use kube::api::DynamicObject;

use arc_watchdog_core::names;
use arc_watchdog_core::reasons::Reason;

use crate::blocked::{self, Held};
use crate::events;

pub mod watch;

pub use watch::{Settings, run};

/// Reason of the Warning Event about a missing listener.
pub const REASON: &str = Reason::ListenerMissing.as_str();
/// `action` of that Event.
pub const ACTION: &str = "Report";
/// Prefix of the Event's name; the reason and a UID follow.
pub const EVENT_NAME_PREFIX: &str = "arc-watchdog-missing-";
/// API group of ARC's objects.
pub const ARC_GROUP: &str = "actions.github.com";
/// API version of ARC's objects.
pub const ARC_VERSION: &str = "v1alpha1";
/// Kind of ARC's scale set object.
pub const RUNNER_SET_KIND: &str = "AutoscalingRunnerSet";
/// Its plural (resource name).
pub const RUNNER_SET_PLURAL: &str = "autoscalingrunnersets";

pub use arc_watchdog_core::reasons::Missing;

/// The spelling of a [`Missing`] inside object names (no underscores there).
fn kebab(m: Missing) -> String {
    m.as_str().replace('_', "-")
}

/// An AutoscalingRunnerSet, as much as the judgement needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerSet {
    /// Namespace (the runner namespace).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
    /// When it was created.
    pub created: Option<Timestamp>,
}

impl RunnerSet {
    /// From ARC's object; `None` without a UID (not stored yet).
    pub fn of(object: &DynamicObject) -> Option<Self> {
        Some(Self {
            namespace: object.namespace()?,
            name: object.name_any(),
            uid: object.uid()?,
            created: object.creation_timestamp().map(|t| t.0),
        })
    }
}

/// An AutoscalingListener, as much as the judgement needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Namespace (the listener namespace).
    pub namespace: String,
    /// Name (its pod's too).
    pub name: String,
    /// UID.
    pub uid: String,
    /// The scale set it serves: namespace and name.
    pub runner_set: (String, String),
    /// When it was created.
    pub created: Option<Timestamp>,
}

impl Listener {
    /// From ARC's object; `None` without a UID or without the scale set it
    /// serves.
    pub fn of(object: &DynamicObject) -> Option<Self> {
        let spec = object.data.get("spec")?;
        let name = spec.get("autoscalingRunnerSetName")?.as_str()?;
        let ns = spec.get("autoscalingRunnerSetNamespace")?.as_str()?;
        Some(Self {
            namespace: object.namespace()?,
            name: object.name_any(),
            uid: object.uid()?,
            runner_set: (ns.to_owned(), name.to_owned()),
            created: object.creation_timestamp().map(|t| t.0),
        })
    }
}

/// How far a listener pod got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodPhase {
    /// Not started (phase Pending, or no phase yet).
    Pending,
    /// Held on purpose by its watchdog's start gate (a backoff): the
    /// watchdog reports that itself, so it is not a missing listener.
    Gated,
    /// Phase Running (or Unknown: the node stopped reporting; whether it
    /// runs is the node's Ready condition's to tell).
    Running,
    /// Phase Succeeded or Failed.
    Ended,
}

/// A listener pod, as much as the judgement needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerPod {
    /// Namespace.
    pub namespace: String,
    /// Name (its listener's).
    pub name: String,
    /// UID of this generation.
    pub uid: String,
    /// The owning AutoscalingListener's UID and name.
    pub owner: Option<(String, String)>,
    /// When it was created.
    pub created: Option<Timestamp>,
    /// Its `deletionTimestamp`, while it is being deleted.
    pub deleting: Option<Timestamp>,
    /// The node it is bound to.
    pub node: Option<String>,
    /// How far it got.
    pub phase: PodPhase,
}

impl ListenerPod {
    /// From the pod; `None` without a UID.
    pub fn of(pod: &Pod) -> Option<Self> {
        let owner = pod
            .owner_references()
            .iter()
            .find(|r| r.kind == names::AUTOSCALING_LISTENER_KIND)
            .map(|r| (r.uid.clone(), r.name.clone()));
        let phase = match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
            Some("Succeeded" | "Failed") => PodPhase::Ended,
            Some("Running" | "Unknown") => PodPhase::Running,
            _ if blocked::classify(pod) == Held::Gated => PodPhase::Gated,
            _ => PodPhase::Pending,
        };
        Some(Self {
            namespace: pod.namespace()?,
            name: pod.name_any(),
            uid: pod.uid()?,
            owner,
            created: pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
            deleting: pod.metadata.deletion_timestamp.as_ref().map(|t| t.0),
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            phase,
        })
    }
}

/// Since when `node` has been NotReady (its Ready condition not `True`,
/// the rule of `arc-watchdog status`): the condition's last transition, or
/// the epoch when it has none. `None` for a Ready node.
pub fn not_ready_since(node: &Node) -> Option<Timestamp> {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
    match ready {
        Some(c) if c.status == "True" => None,
        Some(c) => Some(
            c.last_transition_time
                .as_ref()
                .map_or(Timestamp::UNIX_EPOCH, |t| t.0),
        ),
        None => Some(Timestamp::UNIX_EPOCH),
    }
}

/// Everything the judgement reads, from the watches.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// AutoscalingRunnerSets in scope.
    pub runner_sets: Vec<RunnerSet>,
    /// AutoscalingListeners of the listener namespaces.
    pub listeners: Vec<Listener>,
    /// Listener pods of the listener namespaces.
    pub pods: Vec<ListenerPod>,
    /// NotReady nodes, and since when.
    pub not_ready: BTreeMap<String, Timestamp>,
}

/// A listener pod, named for a report or an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID of this generation.
    pub uid: String,
    /// Its node.
    pub node: Option<String>,
    /// Its `deletionTimestamp`.
    pub deleting: Option<Timestamp>,
}

/// Why one scale set has no running listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The scale set.
    pub runner_set: RunnerSet,
    /// Why.
    pub reason: Missing,
    /// Since when, as far as the objects tell (creation of the scale set,
    /// listener or pod; the pod's deletion timestamp).
    pub since: Timestamp,
    /// UID of the object that shows the reason (the scale set for
    /// [`Missing::NoAutoscalingListener`], the listener for
    /// [`Missing::NoPod`], else the pod): part of the Event's name.
    pub object_uid: String,
    /// The listener's namespace and name, if there is one.
    pub listener: Option<(String, String)>,
    /// The pod, if there is one.
    pub pod: Option<PodRef>,
    /// For [`Missing::TerminatingOnNotReadyNode`]: since when its
    /// node has been NotReady.
    pub node_not_ready_since: Option<Timestamp>,
}

/// The listener pod of `al` (owned by it), preferring one that is not
/// being deleted, then the newest: the rule of `arc-watchdog status`.
fn pod_of<'a>(pods: &'a [ListenerPod], al: &Listener) -> Option<&'a ListenerPod> {
    pods.iter()
        .filter(|p| p.namespace == al.namespace)
        .filter(|p| {
            p.owner
                .as_ref()
                .is_some_and(|(uid, name)| *uid == al.uid || *name == al.name)
        })
        .max_by_key(|p| (p.deleting.is_none(), p.created))
}

/// The scale sets of `view` that have no running listener, by the scale
/// set's UID. Pure.
pub fn classify(view: &View) -> BTreeMap<String, Finding> {
    let mut out = BTreeMap::new();
    for ars in &view.runner_sets {
        let key = (ars.namespace.clone(), ars.name.clone());
        // Several listeners for one scale set happen only while ARC replaces
        // one: the newest is the one that counts.
        let al = view
            .listeners
            .iter()
            .filter(|l| l.runner_set == key)
            .max_by_key(|l| l.created);
        let finding = |reason, since: Option<Timestamp>, object_uid: &str| Finding {
            runner_set: ars.clone(),
            reason,
            since: since.unwrap_or(Timestamp::UNIX_EPOCH),
            object_uid: object_uid.to_owned(),
            listener: al.map(|l| (l.namespace.clone(), l.name.clone())),
            pod: None,
            node_not_ready_since: None,
        };
        let Some(al) = al else {
            out.insert(
                ars.uid.clone(),
                finding(Missing::NoAutoscalingListener, ars.created, &ars.uid),
            );
            continue;
        };
        let Some(pod) = pod_of(&view.pods, al) else {
            out.insert(
                ars.uid.clone(),
                finding(Missing::NoPod, al.created, &al.uid),
            );
            continue;
        };
        let pod_ref = PodRef {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            uid: pod.uid.clone(),
            node: pod.node.clone(),
            deleting: pod.deleting,
        };
        let node_not_ready = pod.node.as_ref().and_then(|n| view.not_ready.get(n));
        let judged = match (pod.deleting, node_not_ready) {
            (Some(deleting), Some(since)) => Some((
                Missing::TerminatingOnNotReadyNode,
                Some(deleting),
                Some(*since),
            )),
            // A pod being deleted on a Ready node: its kubelet ends it and
            // ARC makes the next one; until then it counts as it runs.
            _ => match pod.phase {
                PodPhase::Running | PodPhase::Gated => None,
                PodPhase::Pending => Some((Missing::PodPending, pod.created, None)),
                PodPhase::Ended => Some((Missing::PodEnded, pod.created, None)),
            },
        };
        if let Some((reason, since, node_since)) = judged {
            let mut f = finding(reason, since, &pod.uid);
            f.pod = Some(pod_ref);
            f.node_not_ready_since = node_since;
            out.insert(ars.uid.clone(), f);
        }
    }
    out
}

/// A finding due for its report, with the time the bound counted from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// What was found.
    pub finding: Finding,
    /// Since when the scale set has had no running listener, as this
    /// process knows it.
    pub since: Timestamp,
}

#[derive(Debug, Clone)]
struct Episode {
    /// When this process first saw the scale set without a running
    /// listener (for any reason).
    first_seen: Timestamp,
    /// Reasons whose Event exists.
    reported: BTreeSet<Missing>,
    /// Reasons whose report failed since the last retry tick.
    failed: BTreeSet<Missing>,
}

/// Scale sets without a running listener, and which were reported. Pure.
///
/// The bound counts from the later of what the objects say (see
/// [`Finding::since`]) and when this process first saw the scale set so:
/// a listener pod that ARC replaces in a second after an eviction shows
/// `no_pod` for that second although its listener is old, and must not be
/// reported; after a restart of the webhook the bound counts again, so a
/// report may come late by at most the bound, never early.
#[derive(Debug, Clone)]
pub struct Tracker {
    after: Duration,
    episodes: BTreeMap<String, Episode>,
}

impl Tracker {
    /// Reports after `after` without a running listener.
    pub fn new(after: Duration) -> Self {
        Self {
            after,
            episodes: BTreeMap::new(),
        }
    }

    /// Follows the findings at `now`: starts an episode for each new one,
    /// ends those of scale sets that are healthy again or gone.
    pub fn update(&mut self, findings: &BTreeMap<String, Finding>, now: Timestamp) {
        self.episodes.retain(|uid, _| findings.contains_key(uid));
        for uid in findings.keys() {
            self.episodes.entry(uid.clone()).or_insert_with(|| Episode {
                first_seen: now,
                reported: BTreeSet::new(),
                failed: BTreeSet::new(),
            });
        }
    }

    /// Since when the scale set of `finding` counts as missing.
    fn since(&self, finding: &Finding) -> Option<Timestamp> {
        let episode = self.episodes.get(&finding.runner_set.uid)?;
        Some(episode.first_seen.max(finding.since))
    }

    fn is_due(&self, finding: &Finding, now: Timestamp) -> bool {
        self.since(finding).is_some_and(|since| {
            SignedDuration::try_from(self.after)
                .ok()
                .and_then(|after| since.checked_add(after).ok())
                .is_some_and(|due| now >= due)
        })
    }

    /// The findings missing for the bound or longer and not reported yet
    /// (nor failed since the last [`Self::retry_failed`]).
    pub fn to_report(&self, findings: &BTreeMap<String, Finding>, now: Timestamp) -> Vec<Due> {
        findings
            .iter()
            .filter(|(uid, f)| {
                self.episodes.get(*uid).is_some_and(|e| {
                    !e.reported.contains(&f.reason) && !e.failed.contains(&f.reason)
                }) && self.is_due(f, now)
            })
            .filter_map(|(_, f)| {
                Some(Due {
                    finding: f.clone(),
                    since: self.since(f)?,
                })
            })
            .collect()
    }

    /// How many scale sets have been missing for the bound or longer, per
    /// reason (every reason present).
    pub fn counts(
        &self,
        findings: &BTreeMap<String, Finding>,
        now: Timestamp,
    ) -> BTreeMap<Missing, usize> {
        let mut counts: BTreeMap<Missing, usize> = Missing::ALL.iter().map(|r| (*r, 0)).collect();
        for f in findings.values().filter(|f| self.is_due(f, now)) {
            *counts.entry(f.reason).or_default() += 1;
        }
        counts
    }

    /// The Event of `finding` exists.
    pub fn mark_reported(&mut self, finding: &Finding) {
        if let Some(e) = self.episodes.get_mut(&finding.runner_set.uid) {
            e.failed.remove(&finding.reason);
            e.reported.insert(finding.reason);
        }
    }

    /// The report of `finding` failed: try again after the next retry tick.
    pub fn mark_failed(&mut self, finding: &Finding) {
        if let Some(e) = self.episodes.get_mut(&finding.runner_set.uid) {
            e.failed.insert(finding.reason);
        }
    }

    /// Makes failed reports due again.
    pub fn retry_failed(&mut self) {
        for e in self.episodes.values_mut() {
            e.failed.clear();
        }
    }
}

/// `t + d`, or the end of time.
fn plus(t: Timestamp, d: Duration) -> Timestamp {
    SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

/// The pods the opt-in action may force-delete at `now`: the listener pod of
/// a scale set found [`Missing::TerminatingOnNotReadyNode`], whose
/// deletion's grace period ended `after` ago or longer and whose node has
/// been NotReady for `after` or longer (what the node lifecycle controller
/// would wait for before it gave up on the node). Pure.
pub fn stuck_pods(
    findings: &BTreeMap<String, Finding>,
    now: Timestamp,
    after: Duration,
) -> Vec<PodRef> {
    findings
        .values()
        .filter(|f| f.reason == Missing::TerminatingOnNotReadyNode)
        .filter(|f| {
            f.node_not_ready_since
                .is_some_and(|since| now >= plus(since, after))
        })
        .filter_map(|f| f.pod.clone())
        .filter(|p| p.deleting.is_some_and(|d| now >= plus(d, after)))
        .collect()
}

/// At most `max` actions in any `window`, per process.
#[derive(Debug, Clone)]
pub struct Budget {
    max: usize,
    window: Duration,
    spent: VecDeque<Timestamp>,
}

impl Budget {
    /// `max` actions per `window`.
    pub fn new(max: usize, window: Duration) -> Self {
        Self {
            max,
            window,
            spent: VecDeque::new(),
        }
    }

    /// Takes one action from the budget at `now`, if any is left.
    pub fn try_spend(&mut self, now: Timestamp) -> bool {
        while self
            .spent
            .front()
            .is_some_and(|t| now >= plus(*t, self.window))
        {
            self.spent.pop_front();
        }
        if self.spent.len() >= self.max {
            return false;
        }
        self.spent.push_back(now);
        true
    }
}

/// The name of the Event about `finding`: the same for every replica and
/// every restart of the webhook, which is what deduplicates the report.
pub fn event_name(reason: Missing, object_uid: &str) -> String {
    format!("{EVENT_NAME_PREFIX}{}-{object_uid}", kebab(reason))
}

/// What to do, per reason.
fn advice(f: &Finding) -> String {
    let listener = f
        .listener
        .as_ref()
        .map(|(ns, name)| format!("{ns}/{name}"))
        .unwrap_or_default();
    let pod = f.pod.as_ref();
    let (pod_ns, pod_name) = pod.map_or((String::new(), String::new()), |p| {
        (p.namespace.clone(), p.name.clone())
    });
    match f.reason {
        Missing::NoAutoscalingListener => "ARC's controller has not created an \
            AutoscalingListener for it. Check that ARC's controller runs and what its log says \
            about this scale set; restarting the controller makes it reconcile the scale set again."
            .to_owned(),
        Missing::NoPod => format!(
            "Its AutoscalingListener {listener} has no pod and ARC's controller did not create \
             one. Check ARC's controller log; deleting the AutoscalingListener (kubectl -n {ns} \
             delete autoscalinglistener {name}) makes ARC recreate it with a pod.",
            ns = f.listener.as_ref().map_or("", |l| l.0.as_str()),
            name = f.listener.as_ref().map_or("", |l| l.1.as_str()),
        ),
        Missing::PodPending => format!(
            "Its listener pod {pod_ns}/{pod_name} has not started. See why in its events \
             (kubectl -n {pod_ns} describe pod {pod_name}): scheduling (node selector, taints, \
             resources), image pull, volumes."
        ),
        Missing::PodEnded => format!(
            "Its listener pod {pod_ns}/{pod_name} ended and ARC's controller did not replace it. \
             Delete the pod (kubectl -n {pod_ns} delete pod {pod_name}) so ARC recreates it, and \
             check ARC's controller log."
        ),
        Missing::TerminatingOnNotReadyNode => format!(
            "Its listener pod {pod_ns}/{pod_name} is being deleted on node {node}, which is \
             NotReady: the pod stays Terminating until that node's kubelet confirms, and ARC makes \
             no new one meanwhile. If the node is gone, force-delete the pod (kubectl -n {pod_ns} \
             delete pod {pod_name} --grace-period=0 --force) or delete the Node; the webhook does \
             it itself with --delete-stuck-terminating-after.",
            node = pod.and_then(|p| p.node.as_deref()).unwrap_or("?"),
        ),
    }
}

/// The Event's message: what is wrong, since when, what to do.
pub fn message(due: &Due) -> String {
    let f = &due.finding;
    format!(
        "Scale set {ns}/{name} has had no running listener since {since} ({reason}). {advice}",
        ns = f.runner_set.namespace,
        name = f.runner_set.name,
        since = due.since.strftime("%Y-%m-%dT%H:%M:%SZ"),
        reason = f.reason.as_str(),
        advice = advice(f),
    )
}

/// The Warning Event about `due` (events.k8s.io/v1), on the
/// AutoscalingRunnerSet and in its namespace (where the API server wants
/// an Event about it), reported by `instance` at `now`, owned by `owner`
/// (the webhook's configuration, so that uninstalling removes it). Pure.
pub fn event_for(
    due: &Due,
    instance: &str,
    owner: Option<&OwnerReference>,
    now: Timestamp,
) -> Event {
    let f = &due.finding;
    let mut event = events::warning(
        events::Warning {
            name: event_name(f.reason, &f.object_uid),
            namespace: &f.runner_set.namespace,
            reason: REASON,
            action: ACTION,
            note: message(due),
            regarding: ObjectReference {
                api_version: Some(format!("{ARC_GROUP}/{ARC_VERSION}")),
                kind: Some(RUNNER_SET_KIND.to_owned()),
                namespace: Some(f.runner_set.namespace.clone()),
                name: Some(f.runner_set.name.clone()),
                uid: Some(f.runner_set.uid.clone()),
                ..ObjectReference::default()
            },
        },
        instance,
        owner,
        now,
    );
    event.related = f
        .pod
        .as_ref()
        .map(|p| events::pod_reference(&p.namespace, &p.name, &p.uid));
    event
}

#[cfg(test)]
mod tests;
