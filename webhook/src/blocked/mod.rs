//! Listeners held by a watchdog that cannot start, and their release.
//!
//! A native sidecar is an init container: until it has started, the
//! listener does not start. A watchdog image that cannot be pulled, a
//! watchdog that crashes at start or cannot be created would so keep its
//! listener down for good. This module finds such pods ([`classify`],
//! [`blocked`]: pure) and releases them ([`run`]): it suspends injection
//! for the listener (an annotation on its Lease, see [`crate::suspension`]),
//! and once its own view of the Leases shows the suspension it evicts the
//! pod; ARC recreates it, and admission, seeing the suspension, lets it in
//! without the watchdog. A Warning Event `InjectionSuspended` on the pod,
//! a log line and the gauges `arc_watchdog_webhook_blocked_listeners` /
//! `arc_watchdog_webhook_suspended_listeners` say so.
//!
//! A watchdog that runs and holds its start gate on purpose (a backoff:
//! running, not yet `started`) is left alone: that is its job, bounded by
//! `--backoff-max` and by the kubelet's startup probe.
//!
//! Every replica runs this; every write is idempotent (the Lease is
//! replaced at the version read, the eviction is conditional on the pod's
//! UID, the Event is named after it), so two replicas never do anything
//! twice that matters.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use tokio_util::sync::CancellationToken;

use arc_watchdog_core::names;
use arc_watchdog_core::reasons::Reason;

use crate::events;
use crate::leases::LeaseView;
use crate::metrics::Metrics;
use crate::mutation;
use crate::owner::ConfigOwner;
use crate::rbac::desired::{self, Listener};
use crate::suspension::Suspension;

/// Reason of the Warning Event about a released listener.
pub const REASON: &str = Reason::InjectionSuspended.as_str();
/// `action` of that Event.
pub const ACTION: &str = "Evict";
/// Prefix of the Event's name; the pod's UID follows.
pub const EVENT_NAME_PREFIX: &str = "arc-watchdog-suspended-";
/// Waiting reasons of the watchdog container that will not go away by
/// themselves soon: the image cannot be pulled or named, the container
/// cannot be created or run, or it keeps crashing.
pub const STUCK_REASONS: [&str; 8] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
    "CrashLoopBackOff",
];
/// Restarts after which a watchdog that keeps exiting counts as crashing
/// rather than restarted once (the kubelet's backoff makes three take
/// over a minute).
pub const CRASH_RESTARTS: i32 = 3;
/// Time budget of one API call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Delay before an action that failed is tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);

/// How a listener pod stands with its watchdog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// Not held by its watchdog: not a native-injected listener, its
    /// listener has started, it is finished or being deleted, or its
    /// watchdog has started (or has not been reported on yet).
    No,
    /// The watchdog runs and holds the start gate (a backoff): on purpose.
    Gated,
    /// The watchdog cannot start, and so neither can the listener, since
    /// `since` (when the kubelet took the pod).
    Failing {
        /// Since when the listener has been kept from starting.
        since: Timestamp,
        /// What keeps the watchdog from starting, for the Event and logs.
        cause: String,
    },
}

/// A pod whose watchdog has kept its listener from starting for at least
/// `--blocked-after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// Namespace.
    pub namespace: String,
    /// Name (the listener's).
    pub name: String,
    /// UID of this generation.
    pub uid: String,
    /// Since when the listener has been kept from starting.
    pub since: Timestamp,
    /// What keeps the watchdog from starting.
    pub cause: String,
}

fn status<'a>(pod: &'a Pod, container: &str, init: bool) -> Option<&'a ContainerStatus> {
    let status = pod.status.as_ref()?;
    let list = if init {
        status.init_container_statuses.as_ref()
    } else {
        status.container_statuses.as_ref()
    };
    list?.iter().find(|c| c.name == container)
}

/// Whether the container has started (or even ended) at least once.
fn has_started(c: &ContainerStatus) -> bool {
    c.started == Some(true)
        || c.state
            .as_ref()
            .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
        || c.last_state
            .as_ref()
            .is_some_and(|s| s.terminated.is_some() || s.running.is_some())
}

/// How `pod` stands with its watchdog. Pure.
pub fn classify(pod: &Pod) -> Held {
    let native = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(names::ANNOTATION_INJECTED))
        .is_some_and(|v| v == mutation::SidecarMode::Native.as_str());
    let finished = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");
    if !native
        || !mutation::is_listener(pod)
        || pod.metadata.deletion_timestamp.is_some()
        || finished
    {
        return Held::No;
    }
    if status(pod, names::LISTENER_CONTAINER, false).is_some_and(has_started) {
        return Held::No;
    }
    let Some(watchdog) = status(pod, names::CONTAINER_NAME, true) else {
        return Held::No;
    };
    if watchdog.started == Some(true) {
        return Held::No;
    }
    let state = watchdog.state.as_ref();
    if state.is_some_and(|s| s.running.is_some()) {
        return Held::Gated;
    }
    let restarts = watchdog.restart_count;
    let cause = if let Some(waiting) = state.and_then(|s| s.waiting.as_ref()) {
        let reason = waiting.reason.as_deref().unwrap_or_default();
        if !STUCK_REASONS.contains(&reason) {
            // ContainerCreating, PodInitializing: the pod's own start-up
            // (volumes, the listener's Secret), not the watchdog's.
            return Held::No;
        }
        if reason == "CrashLoopBackOff" && restarts < CRASH_RESTARTS {
            return Held::No;
        }
        match waiting.message.as_deref().map(str::trim) {
            Some(m) if !m.is_empty() => format!("{reason}: {m}"),
            _ => reason.to_owned(),
        }
    } else if let Some(terminated) = state.and_then(|s| s.terminated.as_ref()) {
        if restarts < CRASH_RESTARTS {
            return Held::No;
        }
        format!(
            "exited with code {} ({}) after {restarts} restarts",
            terminated.exit_code,
            terminated.reason.as_deref().unwrap_or("no reason")
        )
    } else {
        return Held::No;
    };
    let since = pod
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .or(pod.metadata.creation_timestamp.as_ref())
        .map(|t| t.0);
    match since {
        Some(since) => Held::Failing { since, cause },
        None => Held::No,
    }
}

/// The pod, if its watchdog has kept its listener from starting for at
/// least `blocked_after` at `now`. Pure.
pub fn blocked(pod: &Pod, now: Timestamp, blocked_after: Duration) -> Option<Blocked> {
    let Held::Failing { since, cause } = classify(pod) else {
        return None;
    };
    let due = since.checked_add(blocked_after).unwrap_or(Timestamp::MAX);
    (now >= due).then(|| Blocked {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        since,
        cause,
    })
}

/// What [`classify`], [`blocked`], [`runs_suspended`] and the release read
/// of `pod`, and nothing else: names, UID, labels, the two annotations of
/// injection and suspension, owners, timestamps, the names of its
/// containers, and the phase, start time and statuses of the listener and
/// watchdog containers. The release keeps every listener pod of the
/// listener namespaces; a whole pod (its spec with the injected sidecar,
/// managed fields, conditions) is many times that. Pure.
pub fn slim(pod: Pod) -> Pod {
    let Pod {
        metadata,
        spec,
        status,
        ..
    } = pod;
    let annotations = metadata.annotations.map(|mut a| {
        a.retain(|k, _| k == names::ANNOTATION_INJECTED || k == names::ANNOTATION_POD_SUSPENDED);
        a
    });
    let containers = spec
        .map(|s| {
            s.containers
                .into_iter()
                .map(|c| k8s_openapi::api::core::v1::Container {
                    name: c.name,
                    ..Default::default()
                })
                .collect()
        })
        .unwrap_or_default();
    let read = |list: Option<Vec<ContainerStatus>>| {
        list.map(|l| {
            l.into_iter()
                .filter(|c| c.name == names::LISTENER_CONTAINER || c.name == names::CONTAINER_NAME)
                .collect::<Vec<_>>()
        })
    };
    Pod {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: metadata.name,
            namespace: metadata.namespace,
            uid: metadata.uid,
            labels: metadata.labels,
            annotations,
            owner_references: metadata.owner_references,
            creation_timestamp: metadata.creation_timestamp,
            deletion_timestamp: metadata.deletion_timestamp,
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::core::v1::PodSpec {
            containers,
            ..Default::default()
        }),
        status: status.map(|s| k8s_openapi::api::core::v1::PodStatus {
            phase: s.phase,
            start_time: s.start_time,
            container_statuses: read(s.container_statuses),
            init_container_statuses: read(s.init_container_statuses),
            ..Default::default()
        }),
    }
}

/// A live listener pod (not finished, not being deleted) that was admitted
/// without the watchdog because injection was suspended.
pub fn runs_suspended(pod: &Pod) -> bool {
    let finished = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");
    mutation::is_suspended(pod) && !finished && pod.metadata.deletion_timestamp.is_none()
}

/// The name of the Event about pod `uid`: the same for every replica.
pub fn event_name(uid: &str) -> String {
    format!("{EVENT_NAME_PREFIX}{uid}")
}

/// The Event's message.
pub fn message(pod: &Blocked, until: Timestamp, held_for: Duration) -> String {
    format!(
        "Listener pod {ns}/{name} was kept from starting for {secs}s by its {container} sidecar, \
         which cannot start ({cause}). The pod was evicted and injection is suspended for this \
         listener until {until}: ARC recreates the pod and it runs without the watchdog. Fix the \
         watchdog (image, pull secret, its log), then delete the listener pod after {until} to get \
         it back; to lift the suspension now, remove the annotation {annotation} from the Lease \
         {lease}.",
        ns = pod.namespace,
        name = pod.name,
        secs = held_for.as_secs(),
        container = names::CONTAINER_NAME,
        cause = pod.cause,
        annotation = names::ANNOTATION_SUSPENDED_UNTIL,
        lease = names::lease_name(&pod.name),
    )
}

/// The Warning Event about `pod` (events.k8s.io/v1). Pure.
pub fn event_for(
    pod: &Blocked,
    until: Timestamp,
    instance: &str,
    owner: Option<&OwnerReference>,
    now: Timestamp,
) -> Event {
    let held_for = now.duration_since(pod.since).unsigned_abs();
    events::warning(
        events::Warning {
            name: event_name(&pod.uid),
            namespace: &pod.namespace,
            reason: REASON,
            action: ACTION,
            note: message(pod, until, held_for),
            regarding: events::pod_reference(&pod.namespace, &pod.name, &pod.uid),
        },
        instance,
        owner,
        now,
    )
}

mod release;

pub use release::{Settings, run};

#[cfg(test)]
mod tests;
