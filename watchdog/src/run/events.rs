//! Kubernetes Events for every decision, on the own pod and on the
//! AutoscalingListener that owns it (events.k8s.io/v1, through kube's
//! Recorder, which also folds repeats into a series).

use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::gate;
use super::http::Shared;
use super::metrics::ReasonLabel;
use super::sidecar::FINAL_SAVE_BUDGET;

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

/// `why` of `arc_watchdog_events_dropped_total`: the queue was full.
const DROPPED_QUEUE_FULL: &str = "queue_full";
/// `why`: still queued or in flight when the shutdown bound was reached.
const DROPPED_SHUTDOWN_BOUND: &str = "shutdown_bound";
/// `why`: the Events task had already ended.
const DROPPED_PUBLISHER_STOPPED: &str = "publisher_stopped";

/// The queue of Events between the main loop and the Events task: the
/// main loop never waits for the API server; what does not fit is dropped,
/// counted and logged (the log has every decision).
#[derive(Debug)]
pub(crate) struct EventQueue {
    tx: mpsc::Sender<EventItem>,
    shared: Arc<Shared>,
}

impl EventQueue {
    /// A queue of `capacity` and the receiving end for [`events_loop`].
    pub(crate) fn new(capacity: usize, shared: Arc<Shared>) -> (Self, mpsc::Receiver<EventItem>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Self { tx, shared }, rx)
    }

    /// Counts the decision and queues its Event about the pod (and `owner`).
    pub(crate) fn push(
        &self,
        reason: &str,
        warning: bool,
        message: String,
        action: &str,
        owner: Option<ObjectReference>,
    ) {
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
        match self.tx.try_send((report, owner)) {
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

    /// Closes the queue: the Events task publishes what it holds, then ends.
    pub(crate) fn close(&mut self) {
        drop(std::mem::replace(&mut self.tx, mpsc::channel(1).0));
    }
}

/// An Event to publish and the owner it goes to as well.
pub(crate) type EventItem = (Report, Option<ObjectReference>);

/// Publishes the queued Events in order until the queue is closed and
/// empty (the end of the shutdown), or until `stop` fires (the shutdown
/// bound is reached): what is then still queued or in flight is dropped,
/// counted and logged.
pub(crate) async fn events_loop(
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
