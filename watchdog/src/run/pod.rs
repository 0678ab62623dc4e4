//! What the sidecar sees of its own pod, as plain data, and the listener
//! transitions it derives from successive observations (pure).

use std::collections::BTreeSet;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ContainerStatus, ObjectReference, Pod};

use crate::names;

/// State of the listener container in one observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerState {
    /// No status yet (not created), or waiting (image pull, start gate).
    Waiting(Option<String>),
    /// Running since the given time.
    Running {
        /// When the container started, if the kubelet said.
        started_at: Option<Timestamp>,
    },
    /// Terminated.
    Terminated {
        /// Exit code of the process.
        exit_code: i32,
        /// Reason given by the kubelet (`Error`, `Completed`, `OOMKilled`).
        reason: Option<String>,
        /// When it ended.
        finished_at: Option<Timestamp>,
    },
}

/// The listener container in one observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerView {
    /// Container ID of the current run (empty before the first start).
    pub container_id: Option<String>,
    /// Restarts in place (`restartPolicy: Always`).
    pub restart_count: i32,
    /// Current state.
    pub state: ListenerState,
    /// The previous run, if it ended in place: container ID and state.
    pub last_terminated: Option<(Option<String>, ListenerState)>,
    /// Image of the listener container (spec), for version warnings.
    pub image: Option<String>,
}

/// What the sidecar knows of its own pod after one observation.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PodView {
    /// `metadata.uid`.
    pub uid: Option<String>,
    /// `status.phase`.
    pub phase: Option<String>,
    /// `metadata.deletionTimestamp` is set.
    pub terminating: bool,
    /// `status.reason` (`Evicted`, ...).
    pub reason: Option<String>,
    /// Value of the `app.kubernetes.io/version` label.
    pub version_label: Option<String>,
    /// The AutoscalingListener owning the pod, as an Event reference.
    pub owner: Option<ObjectReference>,
    /// The listener container, if present in the spec or status.
    pub listener: Option<ListenerView>,
    /// The watchdog was admitted as a native sidecar: an init container
    /// with `restartPolicy: Always`.
    pub native_sidecar: bool,
    /// The listener waits for the init containers to finish (`waiting`,
    /// reason `PodInitializing`).
    pub listener_initializing: bool,
}

impl PodView {
    /// Reads the view of `pod`, whose listener container is named
    /// `listener_container`.
    pub fn from_pod(pod: &Pod, listener_container: &str) -> Self {
        let meta = &pod.metadata;
        let status = pod.status.as_ref();
        let owner = meta.owner_references.iter().flatten().find(|o| {
            o.kind == names::AUTOSCALING_LISTENER_KIND
                && o.api_version == names::AUTOSCALING_LISTENER_API_VERSION
        });
        let owner = owner.map(|o| ObjectReference {
            api_version: Some(o.api_version.clone()),
            kind: Some(o.kind.clone()),
            name: Some(o.name.clone()),
            namespace: meta.namespace.clone(),
            uid: Some(o.uid.clone()),
            ..ObjectReference::default()
        });
        let image = pod.spec.as_ref().and_then(|s| {
            s.containers
                .iter()
                .find(|c| c.name == listener_container)
                .and_then(|c| c.image.clone())
        });
        let cs = status
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|all| all.iter().find(|c| c.name == listener_container));
        let listener = match cs {
            Some(cs) => Some(listener_view(cs, image)),
            None if image.is_some() => Some(ListenerView {
                container_id: None,
                restart_count: 0,
                state: ListenerState::Waiting(None),
                last_terminated: None,
                image,
            }),
            None => None,
        };
        let native_sidecar = pod.spec.as_ref().is_some_and(|s| {
            s.init_containers.iter().flatten().any(|c| {
                c.name == names::CONTAINER_NAME && c.restart_policy.as_deref() == Some("Always")
            })
        });
        let listener_initializing = cs
            .and_then(|c| c.state.as_ref())
            .and_then(|s| s.waiting.as_ref())
            .is_some_and(|w| w.reason.as_deref() == Some("PodInitializing"));
        Self {
            native_sidecar,
            listener_initializing,
            uid: meta.uid.clone(),
            phase: status.and_then(|s| s.phase.clone()),
            terminating: meta.deletion_timestamp.is_some(),
            reason: status.and_then(|s| s.reason.clone()),
            version_label: meta
                .labels
                .as_ref()
                .and_then(|l| l.get(names::VERSION_LABEL).cloned()),
            owner,
            listener,
        }
    }

    /// The pod lives on: not being deleted and not in a final phase. A
    /// listener that ended while its pod lives on will not be replaced by
    /// ARC 0.9.2 and older.
    pub fn alive(&self) -> bool {
        !self.terminating
            && !matches!(self.phase.as_deref(), Some("Succeeded") | Some("Failed"))
            && self.reason.as_deref() != Some("Evicted")
    }
}

/// Whether the kubelet runs the watchdog as a plain init container: it was
/// admitted as a native sidecar, its start gate has been open for `bound`,
/// and the listener still waits for the init containers. A kubelet that
/// runs native sidecars starts the listener within seconds of the gate
/// opening; one that does not (older than 1.29, or 1.28 without the
/// `SidecarContainers` gate) waits for the watchdog to exit, forever.
pub fn run_as_plain_init(
    view: &PodView,
    gate_open_since: Option<Timestamp>,
    now: Timestamp,
    bound: std::time::Duration,
) -> bool {
    view.native_sidecar
        && view.listener_initializing
        && view.alive()
        && gate_open_since.is_some_and(|since| super::gate::elapsed(since, now) >= bound)
}

fn state_of(s: Option<&k8s_openapi::api::core::v1::ContainerState>) -> ListenerState {
    let Some(s) = s else {
        return ListenerState::Waiting(None);
    };
    if let Some(t) = &s.terminated {
        return ListenerState::Terminated {
            exit_code: t.exit_code,
            reason: t.reason.clone(),
            finished_at: t.finished_at.as_ref().map(|t| t.0),
        };
    }
    if let Some(r) = &s.running {
        return ListenerState::Running {
            started_at: r.started_at.as_ref().map(|t| t.0),
        };
    }
    ListenerState::Waiting(s.waiting.as_ref().and_then(|w| w.reason.clone()))
}

fn listener_view(cs: &ContainerStatus, image: Option<String>) -> ListenerView {
    let last_terminated = cs
        .last_state
        .as_ref()
        .filter(|s| s.terminated.is_some())
        .map(|s| {
            let id = s.terminated.as_ref().and_then(|t| t.container_id.clone());
            (id, state_of(Some(s)))
        });
    ListenerView {
        container_id: cs.container_id.clone().filter(|id| !id.is_empty()),
        restart_count: cs.restart_count,
        state: state_of(cs.state.as_ref()),
        last_terminated,
        image: image.or_else(|| Some(cs.image.clone()).filter(|i| !i.is_empty())),
    }
}

/// A change of the listener derived from observations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// A listener run started (a new container ID is running).
    RunStarted {
        /// Container ID of the run.
        container_id: String,
        /// When it started.
        at: Option<Timestamp>,
    },
    /// A listener run ended.
    RunEnded {
        /// Container ID of the run.
        container_id: String,
        /// Exit code.
        exit_code: i32,
        /// Kubelet's reason.
        reason: Option<String>,
        /// When it ended.
        at: Option<Timestamp>,
        /// The pod lives on after the run ended (see [`PodView::alive`]).
        pod_alive: bool,
    },
    /// The pod started terminating (deleted or evicted).
    PodTerminating,
}

/// Remembers which runs were already reported, so that every start and
/// every end is reported exactly once however often the pod is observed.
#[derive(Debug, Clone, Default)]
pub struct PodTracker {
    started: BTreeSet<String>,
    ended: BTreeSet<String>,
    terminating: bool,
}

impl PodTracker {
    /// Transitions since the previous observation, oldest first.
    pub fn observe(&mut self, view: &PodView) -> Vec<Transition> {
        let mut out = Vec::new();
        if let Some(l) = &view.listener {
            // A run that ended in place is reported before the new run.
            if let Some((Some(id), state)) = &l.last_terminated {
                self.ended_run(id, state, view.alive(), &mut out);
            }
            if let Some(id) = &l.container_id {
                match &l.state {
                    ListenerState::Running { started_at } => {
                        self.started_run(id, *started_at, &mut out);
                    }
                    ListenerState::Terminated { .. } => {
                        self.started_run(id, None, &mut out);
                        self.ended_run(id, &l.state, view.alive(), &mut out);
                    }
                    ListenerState::Waiting(_) => {}
                }
            }
        }
        if view.terminating && !self.terminating {
            self.terminating = true;
            out.push(Transition::PodTerminating);
        }
        out
    }

    fn started_run(&mut self, id: &str, at: Option<Timestamp>, out: &mut Vec<Transition>) {
        if self.started.insert(id.to_owned()) {
            out.push(Transition::RunStarted {
                container_id: id.to_owned(),
                at,
            });
        }
    }

    fn ended_run(
        &mut self,
        id: &str,
        state: &ListenerState,
        alive: bool,
        out: &mut Vec<Transition>,
    ) {
        let ListenerState::Terminated {
            exit_code,
            reason,
            finished_at,
        } = state
        else {
            return;
        };
        if self.ended.contains(id) {
            return;
        }
        self.started_run(id, None, out);
        self.ended.insert(id.to_owned());
        out.push(Transition::RunEnded {
            container_id: id.to_owned(),
            exit_code: *exit_code,
            reason: reason.clone(),
            at: *finished_at,
            pod_alive: alive,
        });
    }
}
