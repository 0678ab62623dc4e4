//! The detector: a pure state machine from listener observations to
//! decisions. No I/O, no clock: every [`Input`] carries its time
//! (`jiff::Timestamp`).
//!
//! # API overview
//!
//! - [`Detector::new`]`(Thresholds)` or [`Detector::from_history`]`(Thresholds,
//!   History)`; [`Detector::history`] to store it again ([`History`] is serde
//!   JSON, bounded; `run` keeps it in the Lease annotation
//!   [`HISTORY_ANNOTATION`] so it survives pod generations).
//! - [`Detector::handle`]`(Input) -> Vec<Decision>` with inputs
//!   [`Input::RunStarted`], [`Input::Entry`] (every parsed line, with its
//!   dedupe key), [`Input::RunEnded`] and [`Input::Tick`].
//! - [`Detector::evaluate`]`(now) -> Vec<Decision>` after the history was
//!   merged with another one (`run`'s Lease): starts the loop that the merged
//!   evidence makes, without counting anything again.
//! - [`Detector::start_gate`]`(now)`: what `/startz` answers.
//!   [`Detector::next_wakeup`]: when to send the next [`Input::Tick`] (no
//!   polling needed). [`Detector::status`]: numbers for metrics.
//! - [`Decision`]: [`Decision::Evict`], [`Decision::DelayStart`],
//!   [`Decision::Report`]; every decision has a Kubernetes Event
//!   [`Reason`] ([`Decision::reason`]) and a message.
//! - [`version_warning`]: known gaps of a listener's ARC version.
//!
//! # Rules
//!
//! - A conflict loop is `conflict_threshold` session conflicts within
//!   `conflict_window` with no established session in between; a start-up
//!   crash loop is as many runs in a row within the window that die before
//!   their session, whatever the cause. Both count across runs and pod
//!   generations (through the history).
//! - A loop delays the next start through the gate: `backoff_initial`
//!   while the loop is younger than `backoff_steady_for`, then doubling on
//!   every further failed start that came after the delay was served, capped
//!   at `backoff_max`. A run that gets its session ends the loop.
//! - A listener that restarts in place while the backoff runs is evicted
//!   (the gate only holds a new pod). A listener that terminated while its
//!   pod lives on (classic sidecar, `restartPolicy: Always`, ARC <= 0.9.2) is
//!   evicted at once, or when the backoff ends if one runs.
//! - A conflict loop whose failures persist after `duplicate_after_caps`
//!   failed starts at the capped delay is reported as
//!   `DuplicateScaleSetSuspected`; the capped delay stays, evictions for
//!   in-place restarts stop. (A dead listener whose pod lives on is still
//!   evicted at the capped pace: without it, it would never run again.)
//! - At most `eviction_budget` evictions within `eviction_window`; beyond,
//!   `EvictionBudgetExhausted` is reported instead (a dead listener's
//!   eviction waits until the budget frees).
//! - Opt-in (`hung_after`): a run with no output for that long is evicted.
//! - `dry_run`: the same decisions, reported only: no [`Decision::Evict`],
//!   no [`Decision::DelayStart`], and the gate stays open.
//! - The same line (same [`EntryKey`]) seen twice in a run counts once.

mod history;
mod versions;

use std::fmt::Write as _;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub(crate) use history::remove_one;
pub use history::{
    FailedStart, HISTORY_ANNOTATION, HISTORY_VERSION, History, LoopState, PendingEviction, RunState,
};
pub use versions::{KnownGap, VersionWarning, parse_version, version_warning};

use crate::parser::{EntryKey, FatalKind, ListenerEvent};
use crate::settings::{Thresholds, format_duration};

/// Why a run died before its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// HTTP 409 `RunnerScaleSetSessionConflictException`.
    SessionConflict,
    /// 404 / `RunnerScaleSetNotFoundException`.
    NotFound,
    /// 401, bad or revoked credentials, 403 without rate limit.
    Auth,
    /// 403/429 rate limit.
    RateLimited,
    /// Network errors.
    Network,
    /// Another error the listener reported.
    Other,
    /// The container ended with a non-zero exit code and no error line
    /// (killed, OOM, crash).
    Unknown,
}

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

impl Cause {
    /// Stable snake_case name (JSON, metric labels).
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::SessionConflict => "session_conflict",
            Cause::NotFound => "not_found",
            Cause::Auth => "auth",
            Cause::RateLimited => "rate_limited",
            Cause::Network => "network",
            Cause::Other => "other",
            Cause::Unknown => "unknown",
        }
    }

    /// What the cause means, and what will and will not help.
    pub fn advice(self) -> &'static str {
        match self {
            Cause::SessionConflict => {
                "another message session for this scale set is alive on GitHub (left by a listener that died \
                 without deleting it, or held by a second installation using the same scale set name); \
                 restarting at once does not help, waiting lets a stale session expire"
            }
            Cause::NotFound => {
                "the runner scale set no longer exists on GitHub; restarting never heals this: \
                 re-register the scale set (reinstall it)"
            }
            Cause::Auth => {
                "GitHub rejected the credentials (revoked or wrong token or app key, or a missing permission); \
                 restarting never heals this: fix the credentials secret"
            }
            Cause::RateLimited => {
                "GitHub rate-limits this installation; restarting at once makes it worse, backing off helps"
            }
            Cause::Network => {
                "GitHub or the API server was unreachable (connection, DNS, timeout); usually transient, \
                 backing off avoids hammering"
            }
            Cause::Other => "the listener exited with an error; see its log",
            Cause::Unknown => {
                "the listener died without an error line (killed, out of memory, crashed); see the pod's events"
            }
        }
    }
}

/// Why the detector evicts the listener pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvictCause {
    /// The listener terminated while its pod lives on: nothing else will
    /// ever replace it.
    ListenerDead,
    /// The listener restarted in place while a backoff runs: the start gate
    /// only holds a new pod.
    RestartedDuringBackoff,
    /// No output for `hung_after`.
    Hung,
}

impl EvictCause {
    /// Stable snake_case name (metric label `reason`).
    pub fn as_str(self) -> &'static str {
        match self {
            EvictCause::ListenerDead => "listener_dead",
            EvictCause::RestartedDuringBackoff => "restarted_during_backoff",
            EvictCause::Hung => "hung",
        }
    }
}

/// Kubernetes Event reasons of the watchdog's decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Reason {
    /// A session conflict was seen (counted).
    SessionConflict,
    /// A session-conflict loop was detected.
    ConflictLoopDetected,
    /// A start-up crash loop (other cause) was detected.
    CrashLoopDetected,
    /// The listener's next start is delayed by the start gate.
    ListenerStartDelayed,
    /// The listener pod was evicted (`run` publishes it after the API
    /// accepted the eviction of a [`Decision::Evict`]).
    ListenerEvicted,
    /// An eviction was wanted but the budget is spent.
    EvictionBudgetExhausted,
    /// The API refused the eviction (a PodDisruptionBudget); `run` only.
    EvictionBlocked,
    /// The conflict persists at the capped backoff.
    DuplicateScaleSetSuspected,
    /// No output for `hung_after`.
    ListenerHung,
    /// The listener terminated while its pod lives on.
    ListenerDead,
    /// A run got its session after a loop: the backoff is reset.
    ListenerRecovered,
    /// The listener's ARC version has known gaps.
    ListenerVersionWarning,
    /// Dry run: an eviction that would have happened.
    DryRunEviction,
    /// Dry run: a start delay that would have happened.
    DryRunStartDelay,
}

impl Reason {
    /// The Event reason string (CamelCase, as Kubernetes Events use).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::SessionConflict => "SessionConflict",
            Reason::ConflictLoopDetected => "ConflictLoopDetected",
            Reason::CrashLoopDetected => "CrashLoopDetected",
            Reason::ListenerStartDelayed => "ListenerStartDelayed",
            Reason::ListenerEvicted => "ListenerEvicted",
            Reason::EvictionBudgetExhausted => "EvictionBudgetExhausted",
            Reason::EvictionBlocked => "EvictionBlocked",
            Reason::DuplicateScaleSetSuspected => "DuplicateScaleSetSuspected",
            Reason::ListenerHung => "ListenerHung",
            Reason::ListenerDead => "ListenerDead",
            Reason::ListenerRecovered => "ListenerRecovered",
            Reason::ListenerVersionWarning => "ListenerVersionWarning",
            Reason::DryRunEviction => "DryRunEviction",
            Reason::DryRunStartDelay => "DryRunStartDelay",
        }
    }

    /// Whether the Event is of type `Warning` (else `Normal`).
    pub fn is_warning(self) -> bool {
        !matches!(
            self,
            Reason::ListenerRecovered | Reason::ListenerStartDelayed | Reason::DryRunStartDelay
        )
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
}

impl Input {
    /// The input's time.
    pub fn at(&self) -> Timestamp {
        match self {
            Input::RunStarted { at, .. }
            | Input::Entry { at, .. }
            | Input::RunEnded { at, .. }
            | Input::Tick { at } => *at,
        }
    }
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Decision {
    /// Evict the listener pod now (policy/v1 Eviction). The detector counts
    /// it against the eviction budget at once; `run` withdraws it from the
    /// history again when the API server does not accept it (dry-run keeps
    /// would-be evictions counted).
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

/// The detector. See the module documentation.
#[derive(Debug, Clone)]
pub struct Detector {
    thresholds: Thresholds,
    history: History,
    /// Latest input time: inputs from the past are treated as now, so a
    /// stale line never rewinds the windows.
    clock: Option<Timestamp>,
}

/// The precision of the timestamps the detector is fed (see `escalate`).
const TIMESTAMP_SLACK: Duration = Duration::from_secs(1);

fn add(at: Timestamp, d: Duration) -> Timestamp {
    at.saturating_add(d).unwrap_or(Timestamp::MAX)
}

fn sub(at: Timestamp, d: Duration) -> Timestamp {
    at.saturating_sub(d).unwrap_or(Timestamp::MIN)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn fmt_ms(delay_ms: u64) -> String {
    format_duration(Duration::from_millis(delay_ms))
}

/// A loop detected at `at`: the first delay, from `at`.
fn new_loop(
    at: Timestamp,
    cause: Cause,
    conflict_loop: bool,
    crash_loop: bool,
    t: &Thresholds,
) -> LoopState {
    let delay = t.backoff_initial.min(t.backoff_max);
    LoopState {
        since: at,
        cause,
        conflict_loop,
        crash_loop,
        delay_ms: ms(delay),
        not_before: add(at, delay),
        last_failure: at,
        times_at_cap: 0,
        waited_ms: 0,
        duplicate_suspected: false,
    }
}

/// The Event of a newly detected loop.
fn loop_report(
    t: &Thresholds,
    conflicts: usize,
    fails: &[FailedStart],
    cause: Cause,
    conflict_loop: bool,
) -> (Reason, String) {
    let window = format_duration(t.conflict_window);
    if conflict_loop {
        return (
            Reason::ConflictLoopDetected,
            format!(
                "session-conflict loop: {conflicts} session conflicts within {window} with no session in between; {}",
                Cause::SessionConflict.advice()
            ),
        );
    }
    let mut causes = String::new();
    for (i, f) in fails.iter().enumerate() {
        let _ = write!(
            causes,
            "{}{}",
            if i > 0 { ", " } else { "" },
            f.cause.as_str()
        );
    }
    (
        Reason::CrashLoopDetected,
        format!(
            "start-up crash loop ({}): {} runs within {window} died before getting a session (causes: {causes}); {}",
            cause.as_str(),
            fails.len(),
            cause.advice()
        ),
    )
}

/// A failed start at `at` escalated the loop's backoff.
#[derive(Debug, Clone, Copy)]
struct Escalated {
    /// `DuplicateScaleSetSuspected` is in force after it.
    duplicate: bool,
    /// ... for the first time.
    newly: bool,
}

/// A failed start at `at` during the active loop `l`: the next delay when
/// the previous one was served (steady while the loop is young, doubled
/// after); `None` when it was not.
fn escalate_loop(
    l: &mut LoopState,
    at: Timestamp,
    cause: Cause,
    t: &Thresholds,
) -> Option<Escalated> {
    l.cause = cause;
    // Container start times and log lines carry whole seconds (Go's log
    // and Kubernetes' timestamps): a failure stamped up to a second
    // before the end of the delay may well have come after a start that
    // waited for it, so only an earlier one counts as not served.
    if add(at, TIMESTAMP_SLACK) < l.not_before {
        // The delay was not served (classic mode, dry-run, fail-open):
        // this failure says nothing about whether waiting helps.
        l.last_failure = at;
        return None;
    }
    let max = ms(t.backoff_max);
    if l.delay_ms >= max {
        l.times_at_cap += 1;
    }
    l.waited_ms = l.waited_ms.saturating_add(l.delay_ms);
    l.delay_ms = if at < add(l.since, t.backoff_steady_for) {
        ms(t.backoff_initial).min(max)
    } else {
        l.delay_ms.saturating_mul(2).min(max)
    }
    .max(1);
    // The start that can raise the duplicate suspicion comes once the loop
    // has waited exactly that long, whatever the shape of the delays before.
    let suspect_after_ms = ms(duplicate_suspected_after(t));
    let rest = suspect_after_ms.saturating_sub(l.waited_ms);
    if l.conflict_loop && !l.duplicate_suspected && rest > 0 {
        l.delay_ms = l.delay_ms.min(rest);
    }
    l.not_before = add(at, Duration::from_millis(l.delay_ms));
    l.last_failure = at;
    let duplicate = cause == Cause::SessionConflict
        && l.conflict_loop
        && (l.times_at_cap >= t.duplicate_after_caps || l.waited_ms >= suspect_after_ms);
    let newly = duplicate && !l.duplicate_suspected;
    if duplicate {
        l.duplicate_suspected = true;
        // A conflict that outlasted this much waiting is not a stale
        // session about to end: the capped delay from now on.
        l.delay_ms = max.max(1);
        l.not_before = add(at, Duration::from_millis(l.delay_ms));
    }
    Some(Escalated { duplicate, newly })
}

/// How long a conflict loop has waited out its delays when it is suspected
/// to be permanent: what a loop that doubled its delay from
/// `backoff_initial` on every start has waited when it fails
/// `duplicate_after_caps` starts at `backoff_max`. Tied to the time waited
/// rather than to the starts at the cap, so that the steady phase of a
/// young loop does not postpone the suspicion.
pub fn duplicate_suspected_after(t: &Thresholds) -> Duration {
    let max = t.backoff_max.max(Duration::from_millis(1));
    let mut delay = t.backoff_initial.clamp(Duration::from_millis(1), max);
    let mut age = Duration::ZERO;
    let mut caps = 0;
    loop {
        age = age.saturating_add(delay);
        if delay >= max {
            caps += 1;
            if caps >= t.duplicate_after_caps.max(1) {
                return age;
            }
        }
        delay = delay.saturating_mul(2).min(max);
    }
}

/// The `DuplicateScaleSetSuspected` Event of loop `l`.
fn duplicate_report(at: Timestamp, l: &LoopState, t: &Thresholds, newly: bool) -> Decision {
    Decision::Report {
        at,
        reason: Reason::DuplicateScaleSetSuspected,
        message: format!(
            "the session conflict persisted through {} of delayed starts (up to {} apart){}: \
             likely the same scale set name is registered by a second installation (another \
             cluster or namespace in the same runner group), or GitHub has an incident; \
             restarting cannot fix either, so the watchdog keeps the capped delay and stops evicting",
            fmt_ms(l.waited_ms),
            fmt_ms(ms(t.backoff_max)),
            if newly { "" } else { " (still)" }
        ),
    }
}

/// After this time a loop is over unless a listener run is under way:
/// quiet for the window after its delay was served.
fn quiet_until(l: &LoopState, t: &Thresholds) -> Timestamp {
    add(
        add(l.last_failure, Duration::from_millis(l.delay_ms)),
        t.conflict_window,
    )
}

impl Detector {
    /// A detector with an empty history.
    pub fn new(thresholds: Thresholds) -> Self {
        Self::from_history(thresholds, History::default())
    }

    /// A detector that continues a stored history.
    pub fn from_history(thresholds: Thresholds, mut history: History) -> Self {
        history.bound();
        history.version = HISTORY_VERSION;
        Self {
            thresholds,
            history,
            clock: None,
        }
    }

    /// Takes back the eviction decided at `at` (`run`: the API server did
    /// not accept it), so that it no longer counts against the eviction
    /// budget. Whether one was recorded at `at`.
    pub fn withdraw_eviction(&mut self, at: Timestamp) -> bool {
        self.history.remove_eviction(at)
    }

    /// The history to store (bounded, pruned at the latest input).
    pub fn history(&self) -> &History {
        &self.history
    }

    /// The thresholds in force.
    pub fn thresholds(&self) -> &Thresholds {
        &self.thresholds
    }

    /// What the start gate answers at `now`: closed while a backoff runs
    /// (never in dry-run).
    pub fn start_gate(&self, now: Timestamp) -> StartGate {
        if self.thresholds.dry_run {
            return StartGate::Open;
        }
        match &self.history.loop_state {
            Some(l) if now < l.not_before => StartGate::Closed {
                until: l.not_before,
            },
            _ => StartGate::Open,
        }
    }

    /// When the next [`Input::Tick`] is due: a pending eviction, the end of
    /// the backoff, or the hung deadline. `None`: nothing is time-driven.
    pub fn next_wakeup(&self) -> Option<Timestamp> {
        let h = &self.history;
        let pending = h.pending_eviction.map(|p| p.at);
        // The end of the backoff matters only while it is ahead.
        let gate = h
            .loop_state
            .map(|l| l.not_before)
            .filter(|t| self.clock.is_none_or(|c| *t > c));
        let hung = self.thresholds.hung_after.and_then(|after| {
            let run = h.run.as_ref()?;
            if run.ended.is_some() || run.hung {
                return None;
            }
            Some(add(run.last_output.unwrap_or(run.started), after))
        });
        [pending, gate, hung].into_iter().flatten().min()
    }

    /// Numbers for metrics, at the latest input's time.
    pub fn status(&self) -> Status {
        let h = &self.history;
        Status {
            loop_active: h.loop_state.is_some(),
            loop_cause: h.loop_state.map(|l| l.cause),
            current_delay: h.loop_state.map(|l| Duration::from_millis(l.delay_ms)),
            conflicts_in_window: h.conflicts.len(),
            failed_starts_in_window: h.failed_starts.len(),
            evictions_in_window: h.evictions.len(),
            duplicate_suspected: h.loop_state.is_some_and(|l| l.duplicate_suspected),
        }
    }

    /// Feeds one observation; returns what to do, in order.
    pub fn handle(&mut self, input: Input) -> Vec<Decision> {
        let at = match self.clock {
            Some(c) if input.at() < c => c,
            _ => input.at(),
        };
        self.clock = Some(at);
        self.prune(at);
        let mut out = Vec::new();
        match input {
            Input::RunStarted {
                run_id, in_place, ..
            } => self.run_started(at, run_id, in_place, &mut out),
            Input::Entry { event, key, .. } => self.entry(at, event, key, &mut out),
            Input::RunEnded {
                exit_code,
                pod_lives_on,
                ..
            } => self.run_ended(at, exit_code, pod_lives_on, &mut out),
            Input::Tick { .. } => {}
        }
        self.tick(at, &mut out);
        // Again after the input, so that the state depends on the inputs
        // and the latest time only, not on how many inputs came at that time.
        self.prune(at);
        self.history.bound();
        out
    }

    /// Re-derives the loop from the evidence in the history at `now`, for a
    /// history that was merged with another one (`run`: the Lease was read
    /// after the fail-open grace, or a second writer met this one). The
    /// merged conflicts and failed starts may reach the threshold without
    /// any single input having completed it; the loop then starts here, as
    /// if the evidence had been seen in order: detected at the failure that
    /// reached the threshold, its backoff from then, escalated by the later
    /// failures. (Run start times are not kept, so a loop that went quiet
    /// during a run counts as ended at the next failure.)
    ///
    /// Nothing is counted again: no [`Reason::SessionConflict`] repeats,
    /// and an active loop is kept as it is (calling this again decides
    /// nothing new). Decides the loop's Event, the start delay if it is
    /// still ahead at `now`, `DuplicateScaleSetSuspected` if in force, and
    /// the eviction of a listener that restarted in place during the
    /// derived backoff and still runs (within the eviction budget).
    pub fn evaluate(&mut self, now: Timestamp) -> Vec<Decision> {
        let at = match self.clock {
            Some(c) if now < c => c,
            _ => now,
        };
        self.clock = Some(at);
        let mut out = Vec::new();
        // Derived before pruning at `now`: a loop that began earlier was
        // made by evidence that may be out of the window now. (A derived
        // loop is never one the pruning would end: `derive_loop` drops
        // those.)
        let derived = if self.history.loop_state.is_none() {
            self.derive_loop(at)
        } else {
            None
        };
        self.prune(at);
        if let Some(l) = derived {
            self.start_derived_loop(at, l, &mut out);
        }
        self.history.bound();
        out
    }

    /// The loop that the history's evidence makes, replayed in time order
    /// as `entry` and `failed` would have; `None` if none, or if it would be
    /// over (quiet) at `now`.
    fn derive_loop(&self, now: Timestamp) -> Option<LoopState> {
        let t = &self.thresholds;
        let h = &self.history;
        let n = t.conflict_threshold as usize;
        if h.conflicts.len() < n && h.failed_starts.len() < n {
            return None;
        }
        let mut times: Vec<Timestamp> = h
            .conflicts
            .iter()
            .copied()
            .chain(h.failed_starts.iter().map(|f| f.at))
            .collect();
        times.sort();
        times.dedup();
        let mut derived: Option<LoopState> = None;
        for at in times {
            if derived.is_some_and(|l| at > quiet_until(&l, t)) {
                derived = None;
            }
            let from = sub(at, t.conflict_window);
            let conflicts = h
                .conflicts
                .iter()
                .filter(|c| **c > from && **c <= at)
                .count();
            let fails = h
                .failed_starts
                .iter()
                .filter(|f| f.at > from && f.at <= at)
                .count();
            let here: Vec<Cause> = h
                .failed_starts
                .iter()
                .filter(|f| f.at == at)
                .map(|f| f.cause)
                .collect();
            match &mut derived {
                None => {
                    if conflicts < n && fails < n {
                        continue;
                    }
                    let (first, rest) = match here.split_first() {
                        Some((first, rest)) => (*first, rest),
                        None => (Cause::SessionConflict, &[][..]),
                    };
                    let mut l = new_loop(at, first, conflicts >= n, fails >= n, t);
                    for cause in rest {
                        escalate_loop(&mut l, at, *cause, t);
                    }
                    derived = Some(l);
                }
                Some(l) => {
                    for cause in &here {
                        escalate_loop(l, at, *cause, t);
                    }
                    if conflicts >= n && !l.conflict_loop && h.conflicts.contains(&at) {
                        l.conflict_loop = true;
                        l.cause = Cause::SessionConflict;
                    }
                }
            }
        }
        let l = derived?;
        let running = h.run.as_ref().is_some_and(|r| r.ended.is_none());
        if now > quiet_until(&l, t) && !running {
            return None;
        }
        Some(l)
    }

    fn start_derived_loop(&mut self, now: Timestamp, l: LoopState, out: &mut Vec<Decision>) {
        let t = self.thresholds.clone();
        let h = &mut self.history;
        let (reason, message) = loop_report(
            &t,
            h.conflicts.len(),
            &h.failed_starts,
            l.cause,
            l.conflict_loop,
        );
        h.loop_state = Some(l);
        out.push(Decision::Report {
            at: now,
            reason,
            message: format!(
                "{message} (found in the merged history: the loop began at {}, its delay runs until {})",
                l.since, l.not_before
            ),
        });
        if l.duplicate_suspected {
            out.push(duplicate_report(now, &l, &t, true));
        }
        if now >= l.not_before {
            // The delay is served already: the next failure escalates.
            return;
        }
        self.delay_start(now, l.not_before, l.delay_ms, l.cause, out);
        let restarted = self.history.run.as_ref().is_some_and(|r| {
            r.in_place
                && r.ended.is_none()
                && r.failure.is_none()
                && !r.established
                && r.started >= l.since
                && r.started < l.not_before
        });
        if restarted && !l.duplicate_suspected {
            let msg = format!(
                "the listener restarted in place during the backoff (next start was due at {}): \
                 evicting so that a new pod waits at the start gate",
                l.not_before
            );
            self.evict(now, EvictCause::RestartedDuringBackoff, msg, out);
        }
    }

    /// Drops what fell out of its window; ends a loop after a quiet period.
    fn prune(&mut self, now: Timestamp) {
        let t = &self.thresholds;
        let h = &mut self.history;
        let window_start = sub(now, t.conflict_window);
        h.conflicts.retain(|c| *c > window_start);
        h.failed_starts.retain(|f| f.at > window_start);
        let eviction_start = sub(now, t.eviction_window);
        h.evictions.retain(|e| *e > eviction_start);
        if let Some(l) = h.loop_state {
            // Quiet for the window after the delay was served: whatever
            // kept the listener from starting is gone.
            let running = h.run.as_ref().is_some_and(|r| r.ended.is_none());
            if now > quiet_until(&l, t) && !running {
                h.loop_state = None;
            }
        }
    }

    fn run_started(
        &mut self,
        at: Timestamp,
        run_id: String,
        in_place: bool,
        out: &mut Vec<Decision>,
    ) {
        if let Some(run) = &self.history.run
            && run.id == run_id
        {
            // The same run again (the watchdog restarted, the stream
            // reconnected): resumed, never counted twice, even if it ended.
            return;
        }
        self.history.run = Some(RunState {
            id: run_id,
            started: at,
            in_place,
            ended: None,
            established: false,
            failure: None,
            last_output: None,
            hung: false,
            high_water: None,
            seen: Vec::new(),
        });
        // The listener runs again: a dead-listener eviction is moot, and a
        // restart during the backoff is handled below.
        self.history.pending_eviction = None;
        if in_place
            && let Some(l) = self.history.loop_state
            && at < l.not_before
        {
            if l.duplicate_suspected {
                return;
            }
            let msg = format!(
                "the listener restarted in place during the backoff (next start was due at {}): \
                 evicting so that a new pod waits at the start gate",
                l.not_before
            );
            self.evict(at, EvictCause::RestartedDuringBackoff, msg, out);
        }
    }

    /// Output or an end without any `RunStarted` before (a detector without
    /// history that started mid-run) belongs to an implicit run. Lines after
    /// a `RunEnded` belong to the ended run: the log stream often delivers a
    /// run's last lines after the pod watch reported its end.
    fn ensure_run(&mut self, at: Timestamp) {
        if self.history.run.is_none() {
            let mut out = Vec::new();
            self.run_started(at, String::new(), false, &mut out);
        }
    }

    /// Whether a line with `key` was seen in this run; records it if not.
    fn seen_before(run: &mut RunState, key: EntryKey) -> bool {
        match run.high_water {
            Some(hw) if key.at < hw => true,
            Some(hw) if key.at == hw => {
                if run.seen.contains(&key.hash) {
                    true
                } else {
                    run.seen.push(key.hash);
                    if run.seen.len() > history::MAX_SEEN {
                        run.seen.remove(0);
                    }
                    false
                }
            }
            _ => {
                run.high_water = Some(key.at);
                run.seen.clear();
                run.seen.push(key.hash);
                false
            }
        }
    }

    fn entry(
        &mut self,
        at: Timestamp,
        event: ListenerEvent,
        key: Option<EntryKey>,
        out: &mut Vec<Decision>,
    ) {
        self.ensure_run(at);
        let Some(run) = self.history.run.as_mut() else {
            return;
        };
        if let Some(key) = key
            && Self::seen_before(run, key)
        {
            return;
        }
        run.last_output = Some(at);
        match event {
            ListenerEvent::Other => {}
            ListenerEvent::SessionEstablished => self.established(at, out),
            ListenerEvent::SessionConflict { fatal } => {
                if self.history.run.as_ref().is_some_and(|r| r.established) {
                    // A conflict after the session was established is not
                    // about creating it: not counted.
                    return;
                }
                self.history.conflicts.push(at);
                let n = self.history.conflicts.len();
                out.push(Decision::Report {
                    at,
                    reason: Reason::SessionConflict,
                    message: format!(
                        "session conflict: {n} of {} within {} with no session in between",
                        self.thresholds.conflict_threshold,
                        format_duration(self.thresholds.conflict_window)
                    ),
                });
                if fatal {
                    self.failed(at, Cause::SessionConflict, out);
                }
                // A no-op if `failed` started or escalated a loop already.
                self.maybe_start_loop(at, Cause::SessionConflict, out);
            }
            ListenerEvent::Fatal(kind) => self.failed(at, kind.into(), out),
        }
    }

    fn established(&mut self, at: Timestamp, out: &mut Vec<Decision>) {
        let h = &mut self.history;
        let Some(run) = &mut h.run else { return };
        if run.established {
            return;
        }
        run.established = true;
        h.last_established = Some(at);
        h.conflicts.clear();
        h.failed_starts.clear();
        h.pending_eviction = None;
        if let Some(l) = h.loop_state.take() {
            out.push(Decision::Report {
                at,
                reason: Reason::ListenerRecovered,
                message: format!(
                    "the listener got its message session; the {} loop (since {}) is over and the backoff is reset",
                    l.cause.as_str(),
                    l.since
                ),
            });
        }
    }

    /// A run died (or is dying) before its session.
    fn failed(&mut self, at: Timestamp, cause: Cause, out: &mut Vec<Decision>) {
        let Some(run) = &mut self.history.run else {
            return;
        };
        if run.established {
            return;
        }
        match run.failure {
            None => {}
            Some(Cause::Unknown) if cause != Cause::Unknown => {
                // The error line came after the container's end: it names
                // the cause of the failure already counted.
                run.failure = Some(cause);
                let h = &mut self.history;
                if let Some(f) = h.failed_starts.last_mut()
                    && f.cause == Cause::Unknown
                {
                    f.cause = cause;
                }
                if let Some(l) = &mut h.loop_state
                    && l.cause == Cause::Unknown
                {
                    l.cause = cause;
                }
                return;
            }
            Some(_) => return,
        }
        run.failure = Some(cause);
        self.history.failed_starts.push(FailedStart { at, cause });
        match self.history.loop_state {
            Some(_) => self.escalate(at, cause, out),
            None => self.maybe_start_loop(at, cause, out),
        }
    }

    fn maybe_start_loop(&mut self, at: Timestamp, cause: Cause, out: &mut Vec<Decision>) {
        let t = &self.thresholds;
        let n = t.conflict_threshold as usize;
        let conflicts = self.history.conflicts.len();
        if let Some(l) = &mut self.history.loop_state {
            // A crash loop first seen without its cause (the container's end
            // came before its last lines) turns out to be a conflict loop.
            if conflicts >= n && !l.conflict_loop {
                l.conflict_loop = true;
                l.cause = Cause::SessionConflict;
                out.push(Decision::Report {
                    at,
                    reason: Reason::ConflictLoopDetected,
                    message: format!(
                        "session-conflict loop: {conflicts} session conflicts within {} with no session in between; {}",
                        format_duration(t.conflict_window),
                        Cause::SessionConflict.advice()
                    ),
                });
            }
            return;
        }
        let fails = &self.history.failed_starts;
        let conflict_loop = conflicts >= n;
        let crash_loop = fails.len() >= n;
        if !conflict_loop && !crash_loop {
            return;
        }
        let l = new_loop(at, cause, conflict_loop, crash_loop, t);
        let (reason, message) = loop_report(t, conflicts, fails, cause, conflict_loop);
        self.history.loop_state = Some(l);
        out.push(Decision::Report {
            at,
            reason,
            message,
        });
        self.delay_start(at, l.not_before, l.delay_ms, cause, out);
    }

    /// A failed start during an active loop.
    fn escalate(&mut self, at: Timestamp, cause: Cause, out: &mut Vec<Decision>) {
        let t = self.thresholds.clone();
        let Some(l) = &mut self.history.loop_state else {
            return;
        };
        let Some(step) = escalate_loop(l, at, cause, &t) else {
            return;
        };
        // The wait until the gate opens: the loop's delay, or less where
        // the duplicate suspicion is due sooner.
        let until = l.not_before;
        let delay_ms = Duration::try_from(until.duration_since(at))
            .map_or(l.delay_ms, |d| ms(d).min(l.delay_ms));
        if step.duplicate {
            out.push(duplicate_report(at, l, &t, step.newly));
        }
        self.delay_start(at, until, delay_ms, cause, out);
    }

    fn delay_start(
        &mut self,
        at: Timestamp,
        until: Timestamp,
        delay_ms: u64,
        cause: Cause,
        out: &mut Vec<Decision>,
    ) {
        let message = format!(
            "{} loop: delaying the listener's next start by {} (until {until})",
            cause.as_str(),
            fmt_ms(delay_ms)
        );
        if self.thresholds.dry_run {
            out.push(Decision::Report {
                at,
                reason: Reason::DryRunStartDelay,
                message: format!("dry run, not acting: {message}"),
            });
        } else {
            out.push(Decision::DelayStart {
                at,
                until,
                delay_ms,
                message,
            });
        }
    }

    fn run_ended(
        &mut self,
        at: Timestamp,
        exit_code: Option<i32>,
        pod_lives_on: bool,
        out: &mut Vec<Decision>,
    ) {
        self.ensure_run(at);
        let Some(run) = self.history.run.as_mut() else {
            return;
        };
        if run.ended.is_some() {
            return;
        }
        run.ended = Some(at);
        let unexplained =
            !run.established && run.failure.is_none() && exit_code.is_some_and(|c| c != 0);
        if unexplained {
            self.failed(at, Cause::Unknown, out);
        }
        if !pod_lives_on {
            return;
        }
        let code = exit_code.map_or_else(|| "unknown".to_owned(), |c| c.to_string());
        match self.history.loop_state {
            Some(l) if at < l.not_before => {
                out.push(Decision::Report {
                    at,
                    reason: Reason::ListenerDead,
                    message: format!(
                        "the listener terminated (exit code {code}) while its pod lives on; \
                         the pod is to be evicted when the backoff ends at {}, if the listener is still dead then",
                        l.not_before
                    ),
                });
                self.history.pending_eviction = Some(PendingEviction {
                    at: l.not_before,
                    cause: EvictCause::ListenerDead,
                });
            }
            _ => {
                let msg = format!(
                    "the listener terminated (exit code {code}) while its pod lives on \
                     (nothing else would replace it): evicting the pod"
                );
                self.evict(at, EvictCause::ListenerDead, msg, out);
            }
        }
    }

    fn tick(&mut self, at: Timestamp, out: &mut Vec<Decision>) {
        if let Some(p) = self.history.pending_eviction
            && at >= p.at
        {
            self.history.pending_eviction = None;
            let msg = match p.cause {
                EvictCause::ListenerDead => {
                    "the listener terminated earlier while its pod lives on; the wait is over: evicting the pod"
                        .to_owned()
                }
                other => format!("evicting the pod ({})", other.as_str()),
            };
            self.evict(at, p.cause, msg, out);
        }
        let Some(after) = self.thresholds.hung_after else {
            return;
        };
        let Some(run) = &mut self.history.run else {
            return;
        };
        if run.ended.is_some() || run.hung {
            return;
        }
        let since = run.last_output.unwrap_or(run.started);
        if at < add(since, after) {
            return;
        }
        run.hung = true;
        let hung = format!(
            "the listener wrote nothing for {} (since {since}): hung",
            format_duration(after)
        );
        // The Report is published at once: it must not claim an eviction
        // that may still be refused, found moot or over budget (only the
        // accepted eviction's `ListenerEvicted` says it happened).
        out.push(Decision::Report {
            at,
            reason: Reason::ListenerHung,
            message: format!("{hung}; the pod is to be evicted"),
        });
        self.evict(
            at,
            EvictCause::Hung,
            format!("{hung}, evicting the pod"),
            out,
        );
    }

    fn evict(
        &mut self,
        at: Timestamp,
        cause: EvictCause,
        message: String,
        out: &mut Vec<Decision>,
    ) {
        let t = &self.thresholds;
        let h = &mut self.history;
        let budget = t.eviction_budget as usize;
        if h.evictions.len() >= budget {
            let free_at = h
                .evictions
                .first()
                .map_or(at, |oldest| add(*oldest, t.eviction_window));
            let next = if budget == 0 {
                "evictions are disabled (budget 0)".to_owned()
            } else {
                format!("next possible at {free_at}")
            };
            out.push(Decision::Report {
                at,
                reason: Reason::EvictionBudgetExhausted,
                message: format!(
                    "not evicting ({}): {} evictions within {} already (budget {budget}); {next}",
                    cause.as_str(),
                    h.evictions.len(),
                    format_duration(t.eviction_window)
                ),
            });
            if cause == EvictCause::ListenerDead && budget > 0 {
                // Nothing else will ever replace this pod: try again then.
                h.pending_eviction = Some(PendingEviction { at: free_at, cause });
            }
            return;
        }
        h.evictions.push(at);
        if t.dry_run {
            out.push(Decision::Report {
                at,
                reason: Reason::DryRunEviction,
                message: format!("dry run, not acting: {message}"),
            });
        } else {
            out.push(Decision::Evict { at, cause, message });
        }
    }
}
