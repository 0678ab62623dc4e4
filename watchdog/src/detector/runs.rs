//! How each observation of a listener run moves the detector: a run starts,
//! its lines (conflicts, fatal errors, the session), its end, and time
//! passing (a pending eviction's time, a hung run).

use std::time::Duration;

use jiff::Timestamp;

use super::loops::{add, duplicate_report, escalate_loop, loop_report, ms, new_loop};
use super::{
    Cause, Decision, Detector, EvictCause, FailedStart, PendingEviction, Reason, RunState, history,
    messages,
};
use crate::parser::{EntryKey, ListenerEvent};

impl Detector {
    pub(super) fn run_started(
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
            watched_since: None,
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
            let msg = messages::restarted_during_backoff(l.not_before);
            self.evict(at, EvictCause::RestartedDuringBackoff, msg, out);
        }
    }

    /// Output or an end without any `RunStarted` before (a detector without
    /// history that started mid-run) belongs to an implicit run. Lines after
    /// a `RunEnded` belong to the ended run: the log stream often delivers a
    /// run's last lines after the pod watch reported its end.
    pub(super) fn ensure_run(&mut self, at: Timestamp) {
        if self.history.run.is_none() {
            let mut out = Vec::new();
            self.run_started(at, String::new(), false, &mut out);
        }
    }

    pub(super) fn entry(
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
            && !key.first_sighting(&mut run.high_water, &mut run.seen, history::MAX_SEEN)
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
                    message: messages::session_conflict(
                        n,
                        self.thresholds.conflict_threshold,
                        self.thresholds.conflict_window,
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

    pub(super) fn established(&mut self, at: Timestamp, out: &mut Vec<Decision>) {
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
                message: messages::recovered(l.cause, l.since),
            });
        }
    }

    /// A run died (or is dying) before its session.
    pub(super) fn failed(&mut self, at: Timestamp, cause: Cause, out: &mut Vec<Decision>) {
        let Some(run) = &mut self.history.run else {
            return;
        };
        if run.established {
            return;
        }
        match run.failure {
            None => {}
            Some(Cause::Unknown) => {
                // The error line came after the container's end: it names
                // the cause of the failure already counted (an unknown
                // cause names nothing new).
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

    pub(super) fn maybe_start_loop(
        &mut self,
        at: Timestamp,
        cause: Cause,
        out: &mut Vec<Decision>,
    ) {
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
                    message: messages::conflict_loop(conflicts, t.conflict_window),
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
    pub(super) fn escalate(&mut self, at: Timestamp, cause: Cause, out: &mut Vec<Decision>) {
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

    pub(super) fn delay_start(
        &mut self,
        at: Timestamp,
        until: Timestamp,
        delay_ms: u64,
        cause: Cause,
        out: &mut Vec<Decision>,
    ) {
        let message = messages::delay_start(cause, delay_ms, until);
        if self.thresholds.dry_run {
            out.push(Decision::Report {
                at,
                reason: Reason::DryRunStartDelay,
                message: messages::dry_run(&message),
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

    pub(super) fn run_ended(
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
        match self.history.loop_state {
            Some(l) if at < l.not_before => {
                out.push(Decision::Report {
                    at,
                    reason: Reason::ListenerDead,
                    message: messages::dead_until_backoff_ends(exit_code, l.not_before),
                });
                self.history.pending_eviction = Some(PendingEviction {
                    at: l.not_before,
                    cause: EvictCause::ListenerDead,
                });
            }
            _ => {
                let msg = messages::dead_evicted_now(exit_code);
                self.evict(at, EvictCause::ListenerDead, msg, out);
            }
        }
    }

    pub(super) fn tick(&mut self, at: Timestamp, out: &mut Vec<Decision>) {
        if let Some(run) = &self.history.run
            && !run.established
            && run.ended.is_none()
            && run.failure.is_none()
            && run.watched_since.is_some_and(|since| {
                at >= add(since.max(run.started), self.thresholds.established_after)
            })
        {
            // Up and not failing for that long: it has its session, even
            // when its log level hides the line that says so.
            self.established(at, out);
        }
        if let Some(p) = self.history.pending_eviction
            && at >= p.at
        {
            self.history.pending_eviction = None;
            let msg = messages::pending_eviction_due(p.cause);
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
        out.push(Decision::Report {
            at,
            reason: Reason::ListenerHung,
            message: messages::hung_report(after, since),
        });
        let msg = messages::hung_evicted(after, since);
        self.evict(at, EvictCause::Hung, msg, out);
    }
}
