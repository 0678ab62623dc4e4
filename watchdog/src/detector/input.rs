//! The detector's vocabulary: what goes in ([`Input`]), what comes out
//! ([`Decision`]), and what it answers ([`StartGate`], [`Status`]).

use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;

#[cfg(doc)]
use super::Detector;
use super::{Cause, EvictCause, Reason};
use crate::parser::{EntryKey, FatalKind, ListenerEvent};

impl From<FatalKind> for Cause {
    fn from(kind: FatalKind) -> Self {
        match kind {
            FatalKind::NotFound => Cause::NotFound,
            FatalKind::Auth => Cause::Auth,
            FatalKind::RateLimited => Cause::RateLimited,
            FatalKind::Network => Cause::Network,
            FatalKind::Other => Cause::Other,
        }
    }
}

/// What the listener did, with its time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A listener container run started (seen running, or its first line).
    RunStarted {
        /// When.
        at: Timestamp,
        /// Identity of the run (the container ID). The same id again (the
        /// watchdog restarted, the stream reconnected) resumes the run.
        run_id: String,
        /// A restart in place inside the same pod (`restartCount` grew),
        /// as opposed to the first run of a new pod.
        in_place: bool,
    },
    /// One parsed line of the run's output (pass every line, `Other` too:
    /// output resets the hung timer). Send the run's `RunStarted` before its
    /// lines; lines after `RunEnded` (late delivery) count for the ended run.
    Entry {
        /// The line's time (its kubectl timestamp, else its own time, else now).
        at: Timestamp,
        /// What it means.
        event: ListenerEvent,
        /// Dedupe key ([`crate::parser::Entry::key`]); `None` disables
        /// dedupe for this line.
        key: Option<EntryKey>,
    },
    /// The run's container terminated.
    RunEnded {
        /// When.
        at: Timestamp,
        /// Exit code, if known.
        exit_code: Option<i32>,
        /// Nothing but an eviction will replace the pod: it stays running
        /// after the listener terminated (classic sidecar with ARC <= 0.9.2,
        /// or `restartPolicy: Always`) and is not being deleted.
        pod_lives_on: bool,
    },
    /// Time passes (at [`Detector::next_wakeup`], or periodically).
    Tick {
        /// Now.
        at: Timestamp,
    },
    /// What became of a [`Decision::Evict`]: the API server accepted it,
    /// or it was not sent, refused, found moot or failed. Until then it
    /// counts against the eviction budget but is not part of the history
    /// to store; one not accepted no longer counts. Decides nothing and
    /// does not move the detector's time.
    EvictionSettled {
        /// When the eviction was decided (the decision's `at`): which one.
        at: Timestamp,
        /// The API server accepted it.
        accepted: bool,
    },
}

impl Input {
    /// The input's time.
    pub fn at(&self) -> Timestamp {
        match self {
            Input::RunStarted { at, .. }
            | Input::Entry { at, .. }
            | Input::RunEnded { at, .. }
            | Input::Tick { at }
            | Input::EvictionSettled { at, .. } => *at,
        }
    }
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Decision {
    /// Evict the listener pod now (policy/v1 Eviction). The detector counts
    /// it against the eviction budget at once and until it is settled
    /// ([`Input::EvictionSettled`]); it is stored with the history once
    /// accepted, and forgotten if not. Never decided in dry run (would-be
    /// evictions are reported, and counted, instead).
    Evict {
        /// When decided.
        at: Timestamp,
        /// Why.
        cause: EvictCause,
        /// Human explanation (for the Event and the log).
        message: String,
    },
    /// Keep the start gate closed until `until` (see [`Detector::start_gate`]).
    DelayStart {
        /// When decided.
        at: Timestamp,
        /// The gate opens then.
        until: Timestamp,
        /// The delay, in milliseconds.
        delay_ms: u64,
        /// Human explanation.
        message: String,
    },
    /// Report only: publish an Event with this reason, log it.
    Report {
        /// When decided.
        at: Timestamp,
        /// Event reason.
        reason: Reason,
        /// Human explanation.
        message: String,
    },
}

impl Decision {
    /// The Kubernetes Event reason of this decision.
    pub fn reason(&self) -> Reason {
        match self {
            Decision::Evict { .. } => Reason::ListenerEvicted,
            Decision::DelayStart { .. } => Reason::ListenerStartDelayed,
            Decision::Report { reason, .. } => *reason,
        }
    }

    /// The human explanation.
    pub fn message(&self) -> &str {
        match self {
            Decision::Evict { message, .. }
            | Decision::DelayStart { message, .. }
            | Decision::Report { message, .. } => message,
        }
    }

    /// When it was decided.
    pub fn at(&self) -> Timestamp {
        match self {
            Decision::Evict { at, .. }
            | Decision::DelayStart { at, .. }
            | Decision::Report { at, .. } => *at,
        }
    }
}

/// What the start gate answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartGate {
    /// The listener may start.
    Open,
    /// The listener must wait until then.
    Closed {
        /// The gate opens then.
        until: Timestamp,
    },
}

/// Numbers for metrics and `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// A conflict or crash loop is active.
    pub loop_active: bool,
    /// Its cause.
    pub loop_cause: Option<Cause>,
    /// The current start delay (the gate may already be open).
    pub current_delay: Option<Duration>,
    /// Session conflicts of the current streak within the window.
    pub conflicts_in_window: usize,
    /// Failed starts of the current streak within the window.
    pub failed_starts_in_window: usize,
    /// Evictions within the eviction window.
    pub evictions_in_window: usize,
    /// `DuplicateScaleSetSuspected` is in force.
    pub duplicate_suspected: bool,
}
