//! The arithmetic of a loop: its detection, the backoff schedule (steady,
//! doubling, capped), the duplicate suspicion, when a quiet loop is over,
//! and re-deriving a loop from merged evidence. Pure functions over
//! [`LoopState`] and [`History`].

use std::time::Duration;

use jiff::Timestamp;

use super::messages;
use super::{Cause, Decision, FailedStart, History, LoopState, Reason};
use crate::settings::Thresholds;

/// The precision of the timestamps the detector is fed (see `escalate`).
const TIMESTAMP_SLACK: Duration = Duration::from_secs(1);

pub(super) fn add(at: Timestamp, d: Duration) -> Timestamp {
    at.saturating_add(d).unwrap_or(Timestamp::MAX)
}

pub(super) fn sub(at: Timestamp, d: Duration) -> Timestamp {
    at.saturating_sub(d).unwrap_or(Timestamp::MIN)
}

pub(super) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A loop detected at `at`: the first delay, from `at`.
pub(super) fn new_loop(
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
pub(super) fn loop_report(
    t: &Thresholds,
    conflicts: usize,
    fails: &[FailedStart],
    cause: Cause,
    conflict_loop: bool,
) -> (Reason, String) {
    if conflict_loop {
        return (
            Reason::ConflictLoopDetected,
            messages::conflict_loop(conflicts, t.conflict_window),
        );
    }
    (
        Reason::CrashLoopDetected,
        messages::crash_loop(fails, cause, t.conflict_window),
    )
}

/// A failed start at `at` escalated the loop's backoff.
#[derive(Debug, Clone, Copy)]
pub(super) struct Escalated {
    /// `DuplicateScaleSetSuspected` is in force after it.
    pub(super) duplicate: bool,
    /// ... for the first time.
    pub(super) newly: bool,
}

/// A failed start at `at` during the active loop `l`: the next delay when
/// the previous one was served (steady while the loop is young, doubled
/// after); `None` when it was not.
pub(super) fn escalate_loop(
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
pub(super) fn duplicate_report(
    at: Timestamp,
    l: &LoopState,
    t: &Thresholds,
    newly: bool,
) -> Decision {
    Decision::Report {
        at,
        reason: Reason::DuplicateScaleSetSuspected,
        message: messages::duplicate_suspected(l.waited_ms, ms(t.backoff_max), newly),
    }
}

/// After this time a loop is over unless a listener run is under way:
/// quiet for the window after its delay was served.
pub(super) fn quiet_until(l: &LoopState, t: &Thresholds) -> Timestamp {
    add(
        add(l.last_failure, Duration::from_millis(l.delay_ms)),
        t.conflict_window,
    )
}

/// The loop that the history's evidence makes, replayed in time order
/// as the detector's `entry` and `failed` would have; `None` if none, or if it would be
/// over (quiet) at `now`.
pub(super) fn derive_loop(h: &History, t: &Thresholds, now: Timestamp) -> Option<LoopState> {
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
