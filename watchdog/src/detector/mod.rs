//! The detector: a pure state machine from listener observations to
//! decisions. No I/O, no clock: every [`Input`] carries its time
//! (`jiff::Timestamp`).
//!
//! # API overview
//!
//! - [`Detector::new`]`(Thresholds)` or [`Detector::from_history`]`(Thresholds,
//!   History)`; [`Detector::history`] to store it again ([`History`] is serde
//!   JSON, bounded; `run` keeps it in the Lease annotation
//!   [`ANNOTATION_HISTORY`] so it survives pod generations).
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
//! # Layout
//!
//! This file: the [`Detector`] and its public methods. `input`: the
//! vocabulary in and out. `runs`: how each observation moves the state.
//! `loops`: backoff schedule, duplicate suspicion, loops re-derived from a
//! merged history. `budget`: the eviction budget. `messages`: every text
//! of a decision. `history`: what is stored. `versions`: ARC version gaps.
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
//! - The same line (same [`EntryKey`](crate::parser::EntryKey)) seen twice in a run counts once.

mod budget;
mod history;
mod input;
mod loops;
mod messages;
mod runs;
mod versions;

use std::time::Duration;

use jiff::Timestamp;

pub use arc_watchdog_core::reasons::{Cause, EvictCause, Reason};

use history::remove_one;
pub use history::{
    ANNOTATION_HISTORY, FailedStart, HISTORY_VERSION, History, LoopState, PendingEviction, RunState,
};
pub use input::{Decision, Input, StartGate, Status};
pub use loops::duplicate_suspected_after;
use loops::{add, duplicate_report, loop_report, quiet_until, sub};
pub use versions::{KnownGap, VersionWarning, parse_arc_version, version_warning};

use crate::settings::Thresholds;

/// The detector. See the module documentation.
#[derive(Debug, Clone)]
pub struct Detector {
    thresholds: Thresholds,
    history: History,
    /// Latest input time: inputs from the past are treated as now, so a
    /// stale line never rewinds the windows.
    clock: Option<Timestamp>,
    /// Evictions decided (and counted in `history.evictions`, so that two
    /// decisions cannot both pass the budget) that are not settled yet:
    /// kept out of [`Detector::history_to_store`], so that the Lease only
    /// ever holds accepted evictions and a merge never brings back one that
    /// was dropped.
    unsettled: Vec<Timestamp>,
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
            unsettled: Vec::new(),
        }
    }

    /// Continues from the merge of `stored` (another writer's history, or
    /// the Lease read late) and this detector's own, as a detector loaded
    /// from that merge would (its time starts again); the evictions not
    /// settled yet stay unsettled. Call [`Detector::evaluate`] next.
    pub fn merge(&mut self, stored: &History) {
        let merged = History::merge(stored, &self.history);
        let unsettled = std::mem::take(&mut self.unsettled);
        *self = Self::from_history(self.thresholds.clone(), merged);
        self.unsettled = unsettled;
    }

    /// The whole state (bounded, pruned at the latest input), evictions
    /// not settled yet included.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// The history to store: [`Detector::history`] without the evictions
    /// not settled yet.
    pub fn history_to_store(&self) -> History {
        let mut history = self.history.clone();
        for at in &self.unsettled {
            remove_one(&mut history.evictions, *at);
        }
        history
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
        let established = h.run.as_ref().and_then(|run| {
            let since = run.watched_since?;
            (!run.established && run.ended.is_none() && run.failure.is_none())
                .then(|| add(since.max(run.started), self.thresholds.established_after))
        });
        [pending, gate, hung, established]
            .into_iter()
            .flatten()
            .min()
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

    /// Moves the clock to `t`, never back, and returns the time to judge
    /// at: an input from the past (a line read late) is taken as of now.
    fn advance_clock(&mut self, t: Timestamp) -> Timestamp {
        let at = self.clock.map_or(t, |c| c.max(t));
        self.clock = Some(at);
        at
    }

    /// Feeds one observation; returns what to do, in order.
    pub fn handle(&mut self, input: Input) -> Vec<Decision> {
        if let Input::EvictionSettled { at, accepted } = input {
            self.settle(at, accepted);
            return Vec::new();
        }
        let at = self.advance_clock(input.at());
        self.prune(at);
        let mut out = Vec::new();
        let watched = !matches!(input, Input::RunStarted { .. });
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
            Input::Tick { .. } | Input::EvictionSettled { .. } => {}
        }
        // A watchdog looks at the run from its first input after the start
        // (the run an entry implies included): see `RunState::watched_since`.
        if watched
            && let Some(run) = &mut self.history.run
            && run.watched_since.is_none()
        {
            run.watched_since = Some(at);
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
        let at = self.advance_clock(now);
        let mut out = Vec::new();
        // Derived before pruning at `now`: a loop that began earlier was
        // made by evidence that may be out of the window now. (A derived
        // loop is never one the pruning would end: `derive_loop` drops
        // those.)
        let derived = if self.history.loop_state.is_none() {
            loops::derive_loop(&self.history, &self.thresholds, at)
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
            message: messages::found_in_merge(&message, l.since, l.not_before),
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
            let msg = messages::restarted_during_backoff(l.not_before);
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
}
