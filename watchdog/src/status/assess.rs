//! The verdict per scale set, from plain objects: no I/O, no clock.
//!
//! ARC keeps a scale set's pieces in two namespaces: the
//! AutoscalingRunnerSet in the runner namespace, its AutoscalingListener,
//! listener pod and arc-watchdog's Lease in the controller namespace. The
//! listener's `spec.autoscalingRunnerSetName`/`Namespace` links them; the
//! pod is owned by its listener and named after it, the Lease is
//! `arc-watchdog.<listener>`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::DynamicObject;

use super::model::{LastDecision, Missing, REPORT_VERSION, Report, Row, State, Watchdog};
use crate::detector::{ANNOTATION_HISTORY, History, Reason};
use crate::names;
use crate::settings::parse_duration;

/// What was read. A list that could not be read is `None` (its lacked
/// right is in `lacked_rights`).
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// AutoscalingRunnerSets in scope.
    pub runner_sets: Option<Vec<DynamicObject>>,
    /// AutoscalingListeners (any namespace; filtered by `scope`).
    pub listeners: Option<Vec<DynamicObject>>,
    /// Listener pods.
    pub pods: Option<Vec<Pod>>,
    /// arc-watchdog's per-listener Leases.
    pub leases: Option<Vec<Lease>>,
    /// Nodes known NotReady (only those of terminating listener pods are
    /// looked up).
    pub not_ready_nodes: BTreeSet<String>,
    /// What could not be read, as `verb resource in namespace`.
    pub lacked_rights: Vec<String>,
}

/// How to judge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Runner namespace in scope; `None`: all.
    pub scope: Option<String>,
    /// Conflicts are counted within this window.
    pub window: Duration,
    /// A pod Pending for longer counts as a missing listener.
    pub pending_after: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            scope: None,
            window: Duration::from_secs(600),
            pending_after: Duration::from_secs(120),
        }
    }
}

/// Evictions are shown for this long back ("in the last hour").
const EVICTIONS_SHOWN_FOR: Duration = Duration::from_secs(3600);

/// The eviction budget of an injected watchdog when its arguments do not
/// say (the documented default).
const DEFAULT_EVICTION_BUDGET: usize = 3;
/// See [`DEFAULT_EVICTION_BUDGET`].
const DEFAULT_EVICTION_WINDOW: Duration = Duration::from_secs(3600);

/// One row per scale set, at `now`.
pub fn assess(inputs: &Inputs, options: &Options, now: Timestamp) -> Report {
    let in_scope = |ns: &str| options.scope.as_deref().is_none_or(|s| s == ns);
    // Scale sets by (namespace, name): from the runner sets, and from the
    // listeners too, so that a caller who may not read the runner sets (or
    // a listener whose runner set is gone) still gets a row.
    let mut sets: BTreeMap<(String, String), Parts<'_>> = BTreeMap::new();
    for ars in inputs.runner_sets.iter().flatten() {
        let key = (ars.namespace().unwrap_or_default(), ars.name_any());
        if in_scope(&key.0) {
            sets.entry(key).or_default().runner_set = Some(ars);
        }
    }
    for al in inputs.listeners.iter().flatten() {
        let Some(key) = runner_set_of(al) else {
            continue;
        };
        if in_scope(&key.0) {
            sets.entry(key).or_default().listener = Some(al);
        }
    }
    let rows = sets
        .into_iter()
        .map(|((namespace, scale_set), parts)| {
            row(inputs, options, now, namespace, scale_set, &parts)
        })
        .collect::<Vec<_>>();
    let healthy = inputs.lacked_rights.is_empty() && rows.iter().all(|r| r.state == State::Healthy);
    Report {
        version: REPORT_VERSION,
        generated_at: now,
        healthy,
        rows,
        lacked_rights: inputs.lacked_rights.clone(),
    }
}

#[derive(Debug, Default)]
struct Parts<'a> {
    runner_set: Option<&'a DynamicObject>,
    listener: Option<&'a DynamicObject>,
}

/// The runner set an AutoscalingListener serves.
fn runner_set_of(al: &DynamicObject) -> Option<(String, String)> {
    let spec = al.data.get("spec")?;
    let name = spec.get("autoscalingRunnerSetName")?.as_str()?;
    let ns = spec.get("autoscalingRunnerSetNamespace")?.as_str()?;
    Some((ns.to_owned(), name.to_owned()))
}

fn ts(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> Timestamp {
    t.0
}

/// The listener pod of `al` (owned by it), preferring one that is not
/// being deleted, then the newest.
fn pod_of<'a>(pods: &'a [Pod], al: &DynamicObject) -> Option<&'a Pod> {
    let uid = al.uid();
    let ns = al.namespace();
    pods.iter()
        .filter(|p| p.namespace() == ns)
        .filter(|p| {
            p.owner_references().iter().any(|r| {
                r.kind == names::AUTOSCALING_LISTENER_KIND
                    && (Some(&r.uid) == uid.as_ref() || r.name == al.name_any())
            })
        })
        .max_by_key(|p| {
            (
                p.metadata.deletion_timestamp.is_none(),
                p.metadata.creation_timestamp.as_ref().map(ts),
            )
        })
}

/// The listener pod of a scale set whose listeners could not be listed,
/// by ARC's labels on the pod.
fn pod_by_labels<'a>(pods: &'a [Pod], namespace: &str, scale_set: &str) -> Option<&'a Pod> {
    pods.iter()
        .filter(|p| {
            let l = p.labels();
            l.get(names::SCALE_SET_NAME_LABEL).map(String::as_str) == Some(scale_set)
                && l.get("actions.github.com/scale-set-namespace")
                    .map(String::as_str)
                    == Some(namespace)
        })
        .max_by_key(|p| {
            (
                p.metadata.deletion_timestamp.is_none(),
                p.metadata.creation_timestamp.as_ref().map(ts),
            )
        })
}

/// The injected watchdog's arguments, if the pod has one.
fn watchdog_args(pod: &Pod) -> Option<&[String]> {
    let spec = pod.spec.as_ref()?;
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .find(|c| c.name == names::CONTAINER_NAME)
        .map(|c| c.args.as_deref().unwrap_or_default())
}

/// The value of `--flag=value` in `args`.
fn flag<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .find_map(|a| a.strip_prefix(flag)?.strip_prefix('='))
}

fn watchdog_of(pod: &Pod) -> Watchdog {
    let annotations = pod.annotations();
    if annotations.contains_key(names::ANNOTATION_POD_SUSPENDED) {
        return Watchdog::Suspended;
    }
    if let Some(args) = watchdog_args(pod) {
        if args
            .iter()
            .any(|a| a == "--dry-run" || a == "--dry-run=true")
        {
            return Watchdog::DryRun;
        }
        return match annotations
            .get(names::ANNOTATION_INJECTED)
            .map(String::as_str)
        {
            Some("classic") => Watchdog::Classic,
            _ if pod_has_native_watchdog(pod) => Watchdog::Native,
            _ => Watchdog::Classic,
        };
    }
    if annotations
        .get(names::ANNOTATION_INJECT)
        .map(String::as_str)
        == Some("false")
    {
        Watchdog::OptedOut
    } else {
        Watchdog::None
    }
}

fn pod_has_native_watchdog(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.name == names::CONTAINER_NAME))
}

/// How long a watchdog container must have been running before its
/// readiness counts: the kubelet reports it not ready until the first
/// readiness probe (every 10 s) has passed.
const READINESS_SETTLED_AFTER: Duration = Duration::from_secs(30);

/// Whether the injected watchdog runs and reports itself not ready. Its
/// readiness probe asks only "watching" (`/readyz/watching`), so not ready
/// means failing open. A watchdog of a pod admitted without that probe is
/// ready while it runs, so this is never a false alarm for older pods.
fn watchdog_failing_open(pod: &Pod, now: Timestamp) -> bool {
    let Some(status) = pod.status.as_ref() else {
        return false;
    };
    let settled = since(now, READINESS_SETTLED_AFTER);
    status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .filter(|c| c.name == names::CONTAINER_NAME && !c.ready)
        .filter_map(|c| c.state.as_ref()?.running.as_ref()?.started_at.as_ref())
        .any(|started| ts(started) <= settled)
}

/// Phase, with `Terminating` for a pod being deleted (as kubectl shows it).
fn phase_of(pod: &Pod) -> String {
    if pod.metadata.deletion_timestamp.is_some() {
        return "Terminating".to_owned();
    }
    pod.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "Pending".to_owned())
}

/// When the listener container started running, if it runs.
fn listener_running_since(pod: &Pod) -> Option<Timestamp> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    statuses
        .iter()
        .filter(|c| {
            c.name == names::LISTENER_CONTAINER || c.name == names::LEGACY_LISTENER_CONTAINER
        })
        .find_map(|c| c.state.as_ref()?.running.as_ref())
        .map(|r| r.started_at.as_ref().map_or(Timestamp::UNIX_EPOCH, ts))
}

/// What the Lease of `listener` holds: `Ok(None)` no Lease or no history
/// yet, `Err(text)` unreadable.
fn history_of(
    leases: &[Lease],
    namespace: &str,
    listener: &str,
) -> Result<Option<History>, String> {
    let name = names::lease_name(listener);
    let Some(lease) = leases
        .iter()
        .find(|l| l.name_any() == name && l.namespace().as_deref() == Some(namespace))
    else {
        return Ok(None);
    };
    match lease.annotations().get(ANNOTATION_HISTORY) {
        None => Ok(None),
        Some(json) => History::from_json(json)
            .map(Some)
            .map_err(|e| format!("Lease {namespace}/{name} holds an unreadable history: {e}")),
    }
}

fn since(now: Timestamp, d: Duration) -> Timestamp {
    jiff::SignedDuration::try_from(d)
        .ok()
        .and_then(|d| now.checked_sub(d).ok())
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

/// The latest decision the history shows.
fn last_decision(h: &History) -> Option<LastDecision> {
    let mut found: Vec<(Timestamp, Reason)> = Vec::new();
    if let Some(at) = h.evictions.last() {
        found.push((*at, Reason::ListenerEvicted));
    }
    if let Some(l) = &h.loop_state {
        let detected = if l.conflict_loop {
            Reason::ConflictLoopDetected
        } else {
            Reason::CrashLoopDetected
        };
        found.push((l.since, detected));
        if l.last_failure > l.since {
            found.push((l.last_failure, Reason::ListenerStartDelayed));
        }
    }
    found
        .into_iter()
        .max_by_key(|(at, _)| *at)
        .map(|(at, reason)| LastDecision {
            reason: reason.as_str().to_owned(),
            at,
        })
}

/// Conflicts in the window, evictions in the last hour, the last decision.
fn fill_counts(row: &mut Row, h: &History, options: &Options, now: Timestamp) {
    let window_start = since(now, options.window);
    row.conflicts_in_window = Some(h.conflicts.iter().filter(|c| **c > window_start).count());
    let hour = since(now, EVICTIONS_SHOWN_FOR);
    row.evictions_last_hour = Some(h.evictions.iter().filter(|e| **e > hour).count());
    row.last_decision = last_decision(h);
}

fn row(
    inputs: &Inputs,
    options: &Options,
    now: Timestamp,
    namespace: String,
    scale_set: String,
    parts: &Parts<'_>,
) -> Row {
    let mut row = Row {
        arc_version: parts
            .runner_set
            .and_then(|a| a.labels().get(names::VERSION_LABEL).cloned()),
        scale_set,
        namespace,
        listener: parts.listener.map(ResourceExt::name_any),
        listener_namespace: parts.listener.and_then(ResourceExt::namespace),
        pod_phase: None,
        watchdog: Watchdog::Unknown,
        state: State::Unknown,
        cause: None,
        missing: None,
        since: None,
        delayed_until: None,
        conflicts_in_window: None,
        evictions_last_hour: None,
        last_decision: None,
        detail: String::new(),
    };
    let pods = inputs.pods.as_deref();
    let pod = match (parts.listener, pods) {
        (Some(al), Some(pods)) => pod_of(pods, al),
        (None, Some(pods)) if inputs.listeners.is_none() => {
            pod_by_labels(pods, &row.namespace, &row.scale_set)
        }
        _ => None,
    };
    if let Some(pod) = pod {
        row.listener.get_or_insert_with(|| pod.name_any());
        if row.listener_namespace.is_none() {
            row.listener_namespace = pod.namespace();
        }
        if row.arc_version.is_none() {
            row.arc_version = pod.labels().get(names::VERSION_LABEL).cloned();
        }
        row.pod_phase = Some(phase_of(pod));
        row.watchdog = watchdog_of(pod);
    }

    // Without the listener or its pod, there is nothing else to judge.
    let Some(pod) = pod else {
        let (state, missing, detail) = match (parts.listener, inputs.listeners.is_some(), pods) {
            (None, true, _) => (
                State::ListenerMissing,
                Some(Missing::NoAutoscalingListener),
                "no AutoscalingListener for this scale set: check ARC's controller (running? its log about this scale set?)",
            ),
            (None, false, _) => (
                State::Unknown,
                None,
                "AutoscalingListeners could not be read",
            ),
            (Some(_), _, Some(_)) => (
                State::ListenerMissing,
                Some(Missing::NoPod),
                "the AutoscalingListener has no pod: check ARC's controller and the listener's events",
            ),
            (Some(_), _, None) => (State::Unknown, None, "listener pods could not be read"),
        };
        // The history outlives pod generations: show it between them too.
        if let (Some(al), Some(leases)) = (parts.listener, inputs.leases.as_deref())
            && let Ok(Some(h)) =
                history_of(leases, &al.namespace().unwrap_or_default(), &al.name_any())
        {
            fill_counts(&mut row, &h, options, now);
        }
        row.state = state;
        row.missing = missing;
        row.since = match missing {
            Some(Missing::NoAutoscalingListener) => parts
                .runner_set
                .and_then(|a| a.creation_timestamp())
                .map(|t| t.0),
            Some(_) => parts
                .listener
                .and_then(|a| a.creation_timestamp())
                .map(|t| t.0),
            None => None,
        };
        detail.clone_into(&mut row.detail);
        return row;
    };

    let listener = pod.name_any();
    let pod_ns = pod.namespace().unwrap_or_default();
    let watched = matches!(
        row.watchdog,
        Watchdog::Native | Watchdog::Classic | Watchdog::DryRun
    );
    let history = match inputs.leases.as_deref() {
        Some(leases) => history_of(leases, &pod_ns, &listener).map(Option::unwrap_or_default),
        None if watched => Err("arc-watchdog's Leases could not be read".to_owned()),
        None => Ok(History::default()),
    };
    if let Ok(h) = &history {
        fill_counts(&mut row, h, options, now);
    }
    let created = pod.metadata.creation_timestamp.as_ref().map(ts);

    // A pod stuck Terminating on a lost node: ARC makes no new one.
    if let Some(deleted) = &pod.metadata.deletion_timestamp {
        let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
        if node.is_some_and(|n| inputs.not_ready_nodes.contains(n)) {
            row.state = State::ListenerMissing;
            row.missing = Some(Missing::TerminatingOnNotReadyNode);
            row.since = Some(deleted.0);
            row.detail = format!(
                "the pod is being deleted on NotReady node {}: it stays Terminating until the node returns; \
                 force-delete it (kubectl delete pod --force) if the node is gone",
                node.unwrap_or_default()
            );
            return row;
        }
    }

    if watched && watchdog_failing_open(pod, now) {
        row.state = State::FailingOpen;
        row.since = listener_running_since(pod).or(created);
        row.detail = "its watchdog fails open: it cannot see its listener (see its /readyz and \
                      log; usually missing RBAC or no API server): loops go unhandled"
            .to_owned();
        return row;
    }

    let h = match history {
        Ok(h) => h,
        Err(why) => {
            row.state = State::Unknown;
            row.detail = why;
            return row;
        }
    };
    let dry_run = row.watchdog == Watchdog::DryRun;
    if let Some(l) = h.loop_state {
        row.cause = Some(l.cause);
        row.since = Some(l.since);
        let budget = watchdog_args(pod)
            .and_then(|a| flag(a, "--eviction-budget"))
            .and_then(|b| b.parse().ok())
            .unwrap_or(DEFAULT_EVICTION_BUDGET);
        let eviction_window = watchdog_args(pod)
            .and_then(|a| flag(a, "--eviction-window"))
            .and_then(|w| parse_duration(w).ok())
            .unwrap_or(DEFAULT_EVICTION_WINDOW);
        let evictions_start = since(now, eviction_window);
        let spent = h.evictions.iter().filter(|e| **e > evictions_start).count();
        let loop_name = if l.conflict_loop {
            "session-conflict loop"
        } else {
            "start-up crash loop"
        };
        if l.duplicate_suspected {
            row.state = State::DuplicateSuspected;
            row.detail = format!(
                "the {loop_name} persists at the capped backoff: is this scale set registered twice \
                 (another installation with the same name)? evictions for it have stopped"
            );
        } else if !dry_run && now < l.not_before {
            row.state = State::StartDelayed;
            row.delayed_until = Some(l.not_before);
            row.detail = format!(
                "{loop_name} ({}): the next start waits for a stale session to expire",
                l.cause.as_str()
            );
        } else if spent >= budget
            && (h.pending_eviction.is_some()
                || h.run
                    .as_ref()
                    .is_some_and(|r| r.ended.is_none() && r.in_place))
        {
            row.state = State::BudgetExhausted;
            row.detail = format!(
                "{spent} evictions in {} spent the budget of {budget}: the watchdog waits; see its Events",
                crate::settings::format_duration(eviction_window)
            );
        } else if l.conflict_loop {
            row.state = State::ConflictLoop;
            row.detail = format!("{loop_name}: {}", l.cause.advice());
        } else {
            row.state = State::CrashLoop;
            row.detail = format!("{loop_name} ({}): {}", l.cause.as_str(), l.cause.advice());
        }
        return row;
    }

    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Running") if listener_running_since(pod).is_some() => {
            row.state = State::Healthy;
            row.since = listener_running_since(pod);
            row.detail = match row.watchdog {
                Watchdog::None => {
                    "the listener runs without the watchdog: recreate its pod with the webhook up"
                        .to_owned()
                }
                Watchdog::OptedOut => {
                    "the listener runs; its pod opted out of the watchdog".to_owned()
                }
                Watchdog::DryRun => {
                    "the listener runs; the watchdog is in dry-run (reports only)".to_owned()
                }
                Watchdog::Suspended => format!(
                    "the listener runs without the watchdog: its watchdog could not start, and \
                     injection is suspended for this listener until {} (see its InjectionSuspended Event)",
                    pod.annotations()
                        .get(names::ANNOTATION_POD_SUSPENDED)
                        .map_or("unknown", String::as_str)
                ),
                _ => "the listener runs".to_owned(),
            };
        }
        Some("Succeeded" | "Failed") => {
            row.state = State::ListenerMissing;
            row.missing = Some(Missing::PodEnded);
            row.since = created;
            row.detail = "the listener pod ended and was not replaced yet: check ARC's controller"
                .to_owned();
        }
        _ => {
            let pending_for = created.map(|c| now.duration_since(c));
            let long = pending_for.is_some_and(|d| {
                jiff::SignedDuration::try_from(options.pending_after).is_ok_and(|bound| d > bound)
            });
            row.since = created;
            if long {
                row.state = State::ListenerMissing;
                row.missing = Some(Missing::PodPending);
                row.detail = "the listener pod has been Pending too long: see its events (scheduling, image pull)".to_owned();
            } else {
                row.state = State::Starting;
                row.detail = "the listener pod is starting".to_owned();
            }
        }
    }
    row
}
