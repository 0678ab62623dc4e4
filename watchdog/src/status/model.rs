//! What `arc-watchdog status` reports: one [`Row`] per scale set, inside a
//! [`Report`]. The serde names are the documented JSON (`-o json`, README
//! "`arc-watchdog status`"): renaming a field or a variant breaks users'
//! scripts, so [`REPORT_VERSION`] changes with any such change.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::detector::Cause;

/// Current [`Report::version`].
pub const REPORT_VERSION: u32 = 1;

/// The whole answer: every row, and what could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Format version ([`REPORT_VERSION`]).
    pub version: u32,
    /// When the objects were read.
    pub generated_at: Timestamp,
    /// Every row is [`State::Healthy`] and nothing was left unread.
    pub healthy: bool,
    /// One row per scale set, sorted by namespace and name.
    pub rows: Vec<Row>,
    /// What the caller's identity was not allowed to read, e.g.
    /// `list leases in arc-systems`; the rows it would have informed say
    /// [`State::Unknown`] where it matters.
    pub lacked_rights: Vec<String>,
}

/// One scale set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    /// The AutoscalingRunnerSet's name.
    pub scale_set: String,
    /// Its namespace (the runner namespace).
    pub namespace: String,
    /// ARC's version label (`app.kubernetes.io/version`) on the scale set,
    /// else on its listener pod.
    pub arc_version: Option<String>,
    /// The AutoscalingListener and listener pod's name (ARC gives both the
    /// same name), when there is one.
    pub listener: Option<String>,
    /// Their namespace (ARC's controller namespace).
    pub listener_namespace: Option<String>,
    /// The pod's phase, or `Terminating` while it is being deleted; `None`
    /// without a pod.
    pub pod_phase: Option<String>,
    /// How the watchdog runs in the listener pod.
    pub watchdog: Watchdog,
    /// The verdict.
    pub state: State,
    /// Cause of the latest failed start, for loops.
    pub cause: Option<Cause>,
    /// Why the listener counts as missing ([`State::ListenerMissing`]).
    pub missing: Option<Missing>,
    /// When the state began (loop detected, pod started, pod created...).
    pub since: Option<Timestamp>,
    /// The start gate stays closed until then ([`State::StartDelayed`]).
    pub delayed_until: Option<Timestamp>,
    /// Session conflicts in the window (`--window`); `None` when the history
    /// is not known.
    pub conflicts_in_window: Option<usize>,
    /// Evictions in the last hour; `None` when the history is not known.
    pub evictions_last_hour: Option<usize>,
    /// The latest decision the history shows.
    pub last_decision: Option<LastDecision>,
    /// One line on what the state means and what to do.
    pub detail: String,
}

/// How the watchdog runs in a listener pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Watchdog {
    /// Injected as a native sidecar (init container, start gate).
    Native,
    /// Injected as a classic sidecar (regular container).
    Classic,
    /// No watchdog: the pod was admitted without it.
    None,
    /// The pod opted out (`arc-watchdog.dev/inject: "false"`).
    OptedOut,
    /// Injected with `--dry-run`: it reports, never delays or evicts.
    DryRun,
    /// Not injected because injection is suspended for this listener: its
    /// watchdog could not start (the webhook released the listener).
    Suspended,
    /// No pod to tell.
    Unknown,
}

impl Watchdog {
    /// The JSON spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Watchdog::Native => "native",
            Watchdog::Classic => "classic",
            Watchdog::None => "none",
            Watchdog::OptedOut => "opted_out",
            Watchdog::DryRun => "dry_run",
            Watchdog::Suspended => "suspended",
            Watchdog::Unknown => "unknown",
        }
    }
}

/// The verdict on one scale set. Everything but [`State::Healthy`] makes
/// `status` exit non-zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// The listener pod runs and no loop is active.
    Healthy,
    /// The pod was created recently and is not running yet.
    Starting,
    /// A session-conflict loop is active.
    ConflictLoop,
    /// A start-up crash loop (another cause, see `cause`) is active.
    CrashLoop,
    /// The start gate holds the next start until `delayed_until`.
    StartDelayed,
    /// The conflict persists at the capped backoff: probably the scale set
    /// is registered twice.
    DuplicateSuspected,
    /// A loop wants evictions but the eviction budget is spent.
    BudgetExhausted,
    /// The listener runs, but its watchdog fails open: blind to its
    /// listener for longer than its grace (usually missing RBAC or a lost
    /// API server), so loops go unhandled. Read from the watchdog
    /// container's readiness.
    FailingOpen,
    /// No running listener (see `missing`).
    ListenerMissing,
    /// Not enough could be read to tell (see `lacked_rights`).
    Unknown,
}

impl State {
    /// The JSON spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            State::Healthy => "healthy",
            State::Starting => "starting",
            State::ConflictLoop => "conflict_loop",
            State::CrashLoop => "crash_loop",
            State::StartDelayed => "start_delayed",
            State::DuplicateSuspected => "duplicate_suspected",
            State::BudgetExhausted => "budget_exhausted",
            State::FailingOpen => "failing_open",
            State::ListenerMissing => "listener_missing",
            State::Unknown => "unknown",
        }
    }
}

pub use arc_watchdog_core::reasons::Missing;

/// The latest decision the history shows, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastDecision {
    /// The Event reason of the decision (`ListenerEvicted`,
    /// `ConflictLoopDetected`, ...).
    pub reason: String,
    /// When.
    pub at: Timestamp,
}
