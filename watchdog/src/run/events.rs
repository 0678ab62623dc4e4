//! Kubernetes Events for every decision, on the own pod and on the
//! AutoscalingListener that owns it (events.k8s.io/v1, through kube's
//! Recorder, which also folds repeats into a series).

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

/// `reportingController` of every Event the sidecar writes.
pub const REPORTING_CONTROLLER: &str = "arc-watchdog.dev/watchdog";

/// One decision to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// PascalCase reason (`SessionConflict`, `ListenerEvicted`, ...).
    pub reason: String,
    /// Human-readable message (at most 1 kB is kept).
    pub message: String,
    /// Warning (something is wrong) or Normal.
    pub warning: bool,
    /// Short action name (`Observe`, `Evict`, `DelayStart`).
    pub action: String,
}

/// Publishes Events on the pod and, when known, on its AutoscalingListener.
#[derive(Clone)]
pub struct EventSink {
    recorder: Recorder,
    pod: ObjectReference,
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSink").field("pod", &self.pod).finish()
    }
}

/// Truncates `s` to at most `max` bytes on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl EventSink {
    /// A sink reporting as `instance` (the pod name) about `pod`.
    pub fn new(client: Client, instance: &str, pod: ObjectReference) -> Self {
        let reporter = Reporter {
            controller: REPORTING_CONTROLLER.to_owned(),
            instance: Some(instance.to_owned()),
        };
        Self {
            recorder: Recorder::new(client, reporter),
            pod,
        }
    }

    /// Publishes `report` on the pod and on `owner` (the
    /// AutoscalingListener), each related to the other. Returns the errors
    /// (the caller counts them; a lost Event never stops the watchdog).
    pub async fn publish(
        &self,
        report: &Report,
        owner: Option<&ObjectReference>,
    ) -> Vec<kube::Error> {
        let mut errors = Vec::new();
        let make = |secondary: Option<ObjectReference>| Event {
            type_: if report.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: truncate(&report.reason, 128).to_owned(),
            note: Some(truncate(&report.message, 1024).to_owned()),
            action: truncate(&report.action, 128).to_owned(),
            secondary,
        };
        if let Err(e) = self
            .recorder
            .publish(&make(owner.cloned()), &self.pod)
            .await
        {
            errors.push(e);
        }
        if let Some(owner) = owner
            && let Err(e) = self
                .recorder
                .publish(&make(Some(self.pod.clone())), owner)
                .await
        {
            errors.push(e);
        }
        errors
    }
}
