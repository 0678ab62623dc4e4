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

#[cfg(test)]
mod tests {
    use super::*;

    /// Small numbers so that every boundary is a few seconds away:
    /// 10 s steady for the first 60 s, doubling up to 40 s, suspicion after
    /// two starts at the cap (10 + 20 + 40 + 40 = 110 s waited).
    fn th() -> Thresholds {
        Thresholds {
            backoff_initial: Duration::from_secs(10),
            backoff_steady_for: Duration::from_secs(60),
            backoff_max: Duration::from_secs(40),
            duplicate_after_caps: 2,
            ..Thresholds::default()
        }
    }

    const SUSPECT_MS: u64 = 110_000;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn before(at: Timestamp, ms: u64) -> Timestamp {
        sub(at, Duration::from_millis(ms))
    }

    /// A loop detected at `t(0)` whose current delay is `delay_ms` and was
    /// due to end at `t(10)`; failures at `t(10)` or later were served.
    fn looping(conflict_loop: bool, delay_ms: u64) -> LoopState {
        LoopState {
            since: t(0),
            cause: Cause::SessionConflict,
            conflict_loop,
            crash_loop: !conflict_loop,
            delay_ms,
            not_before: t(10),
            last_failure: t(0),
            times_at_cap: 0,
            waited_ms: 0,
            duplicate_suspected: false,
        }
    }

    #[test]
    fn the_thresholds_suspect_after_110_seconds() {
        assert_eq!(ms(duplicate_suspected_after(&th())), SUSPECT_MS);
    }

    #[test]
    fn a_failure_counts_as_served_from_one_second_before_the_delay_ends() {
        // Just outside the slack: not served, nothing but the failure moves.
        let mut l = looping(false, 10_000);
        let at = before(t(9), 1);
        assert!(escalate_loop(&mut l, at, Cause::Network, &th()).is_none());
        assert_eq!(l.cause, Cause::Network);
        assert_eq!(l.last_failure, at);
        assert_eq!((l.delay_ms, l.waited_ms, l.not_before), (10_000, 0, t(10)));

        // At the slack's edge, at the delay's end and well after: served.
        for at in [t(9), t(10), t(30)] {
            let mut l = looping(false, 10_000);
            assert!(escalate_loop(&mut l, at, Cause::Network, &th()).is_some());
            assert_eq!(l.waited_ms, 10_000);
            assert_eq!(l.last_failure, at);
            assert_eq!(l.not_before, add(at, Duration::from_millis(l.delay_ms)));
        }
    }

    #[test]
    fn the_delay_stays_steady_until_backoff_steady_for_then_doubles() {
        let mut l = looping(false, 20_000);
        let at = before(t(60), 1);
        escalate_loop(&mut l, at, Cause::Network, &th()).unwrap();
        assert_eq!(l.delay_ms, 10_000);
        assert_eq!(l.not_before, add(at, Duration::from_secs(10)));

        let mut l = looping(false, 20_000);
        escalate_loop(&mut l, t(60), Cause::Network, &th()).unwrap();
        assert_eq!(l.delay_ms, 40_000);
        assert_eq!(l.not_before, t(100));
    }

    #[test]
    fn only_a_delay_at_the_cap_counts_as_a_start_at_the_cap() {
        for (delay_ms, at_cap) in [(39_999, 0), (40_000, 1), (40_001, 1)] {
            let mut l = looping(false, delay_ms);
            escalate_loop(&mut l, t(100), Cause::Network, &th()).unwrap();
            assert_eq!(l.times_at_cap, at_cap, "delay {delay_ms} ms");
            assert_eq!(l.delay_ms, 40_000);
        }
        let mut l = looping(false, 40_000);
        l.times_at_cap = 1;
        escalate_loop(&mut l, t(100), Cause::Network, &th()).unwrap();
        assert_eq!(l.times_at_cap, 2);
    }

    #[test]
    fn a_conflict_loop_shortens_the_delay_to_the_start_that_can_raise_the_suspicion() {
        // 80 s waited, 20 s served now: the next start comes after the
        // 10 s that are left, not after the doubled 40 s.
        let mut l = looping(true, 20_000);
        l.waited_ms = 80_000;
        let e = escalate_loop(&mut l, t(100), Cause::SessionConflict, &th()).unwrap();
        assert!(!e.duplicate && !e.newly);
        assert_eq!((l.waited_ms, l.delay_ms), (100_000, 10_000));
        assert_eq!(l.not_before, t(110));

        // Not a conflict loop: no suspicion to wait for.
        let mut l = looping(false, 20_000);
        l.waited_ms = 80_000;
        escalate_loop(&mut l, t(100), Cause::SessionConflict, &th()).unwrap();
        assert_eq!(l.delay_ms, 40_000);

        // Already suspected (and not re-raised by this crash): nothing to
        // wait for either.
        let mut l = looping(true, 20_000);
        l.waited_ms = 80_000;
        l.duplicate_suspected = true;
        escalate_loop(&mut l, t(100), Cause::Network, &th()).unwrap();
        assert_eq!(l.delay_ms, 40_000);

        // Nothing left to wait: the doubled delay, never zero.
        let mut l = looping(true, 20_000);
        l.waited_ms = 90_000;
        let e = escalate_loop(&mut l, t(100), Cause::Network, &th()).unwrap();
        assert!(!e.duplicate);
        assert_eq!((l.waited_ms, l.delay_ms), (SUSPECT_MS, 40_000));
    }

    #[test]
    fn the_suspicion_needs_a_conflict_in_a_conflict_loop_after_enough_caps_or_waiting() {
        // The second start at the cap, nothing else near its limit.
        let at_second_cap = |conflict_loop: bool, cause: Cause| {
            let mut l = looping(conflict_loop, 40_000);
            l.times_at_cap = 1;
            let e = escalate_loop(&mut l, t(100), cause, &th()).unwrap();
            assert_eq!(l.waited_ms, 40_000);
            (e.duplicate, e.newly, l.duplicate_suspected)
        };
        assert_eq!(
            at_second_cap(true, Cause::SessionConflict),
            (true, true, true)
        );
        assert_eq!(at_second_cap(true, Cause::Network), (false, false, false));
        assert_eq!(
            at_second_cap(false, Cause::SessionConflict),
            (false, false, false)
        );

        // One start at the cap only.
        let mut l = looping(true, 40_000);
        let e = escalate_loop(&mut l, t(100), Cause::SessionConflict, &th()).unwrap();
        assert_eq!((l.times_at_cap, e.duplicate), (1, false));

        // No start at the cap, but exactly as long a wait: suspected, the
        // capped delay from now on.
        let mut l = looping(true, 20_000);
        l.waited_ms = SUSPECT_MS - 20_000;
        let e = escalate_loop(&mut l, t(100), Cause::SessionConflict, &th()).unwrap();
        assert_eq!((l.times_at_cap, l.waited_ms), (0, SUSPECT_MS));
        assert!(e.duplicate && e.newly && l.duplicate_suspected);
        assert_eq!((l.delay_ms, l.not_before), (40_000, t(140)));

        // A millisecond short of it: not yet, and the next start comes
        // after that last millisecond.
        let mut l = looping(true, 20_000);
        l.waited_ms = SUSPECT_MS - 20_000 - 1;
        let e = escalate_loop(&mut l, t(100), Cause::SessionConflict, &th()).unwrap();
        assert!(!e.duplicate && !l.duplicate_suspected);
        assert_eq!(l.delay_ms, 1);

        // Raised before: still in force, but not new.
        let mut l = looping(true, 40_000);
        l.times_at_cap = 2;
        l.duplicate_suspected = true;
        let e = escalate_loop(&mut l, t(100), Cause::SessionConflict, &th()).unwrap();
        assert!(e.duplicate && !e.newly && l.duplicate_suspected);
    }
    #[test]
    fn a_conflict_exactly_a_window_old_is_outside_the_window() {
        // Three conflicts within 600 s make a loop; with the first exactly
        // 600 s before the last, only two are in the window.
        let at_edge = History {
            conflicts: vec![t(0), t(300), t(600)],
            ..History::default()
        };
        assert!(derive_loop(&at_edge, &th(), t(600)).is_none());
        let inside = History {
            conflicts: vec![t(1), t(300), t(600)],
            ..History::default()
        };
        assert!(derive_loop(&inside, &th(), t(600)).is_some());
    }

    #[test]
    fn a_derived_loop_lasts_up_to_its_quiet_time_inclusive() {
        let h = History {
            conflicts: vec![t(0), t(1), t(2)],
            ..History::default()
        };
        let l = derive_loop(&h, &th(), t(2)).unwrap();
        let quiet = quiet_until(&l, &th());
        assert_eq!(derive_loop(&h, &th(), quiet), Some(l));
        assert_eq!(
            derive_loop(&h, &th(), add(quiet, Duration::from_millis(1))),
            None
        );
    }
    #[test]
    fn a_conflict_at_a_loops_quiet_time_continues_it() {
        let mut h = History {
            conflicts: vec![t(0), t(1), t(2)],
            ..History::default()
        };
        let first = derive_loop(&h, &th(), t(2)).unwrap();
        let quiet = quiet_until(&first, &th());
        h.conflicts.push(quiet);
        let l = derive_loop(&h, &th(), quiet).unwrap();
        assert_eq!(l.since, first.since);
    }

    #[test]
    fn a_loop_gone_quiet_is_over_and_later_conflicts_start_a_new_one() {
        let h = History {
            conflicts: vec![t(0), t(1), t(2), t(5000), t(5001), t(5002)],
            ..History::default()
        };
        let l = derive_loop(&h, &th(), t(5002)).unwrap();
        assert_eq!(l.since, t(5002));
    }
}
