//! Every text the detector puts in a decision (the Kubernetes Event's
//! message and the log's `detail`), each written once.

use std::fmt::Write as _;
use std::time::Duration;

use jiff::Timestamp;

use super::{Cause, EvictCause, FailedStart};
use crate::settings::format_duration;

fn fmt_ms(ms: u64) -> String {
    format_duration(Duration::from_millis(ms))
}

/// `SessionConflict`: one more conflict of the current streak.
pub(super) fn session_conflict(n: usize, threshold: u32, window: Duration) -> String {
    format!(
        "session conflict: {n} of {threshold} within {} with no session in between",
        format_duration(window)
    )
}

/// `ConflictLoopDetected`.
pub(super) fn conflict_loop(conflicts: usize, window: Duration) -> String {
    format!(
        "session-conflict loop: {conflicts} session conflicts within {} with no session in between; {}",
        format_duration(window),
        Cause::SessionConflict.advice()
    )
}

/// `CrashLoopDetected`: `fails` died before their session, the latest of `cause`.
pub(super) fn crash_loop(fails: &[FailedStart], cause: Cause, window: Duration) -> String {
    let mut causes = String::new();
    for (i, f) in fails.iter().enumerate() {
        let _ = write!(
            causes,
            "{}{}",
            if i > 0 { ", " } else { "" },
            f.cause.as_str()
        );
    }
    format!(
        "start-up crash loop ({}): {} runs within {} died before getting a session (causes: {causes}); {}",
        cause.as_str(),
        fails.len(),
        format_duration(window),
        cause.advice()
    )
}

/// A loop's Event when it was found in a merged history.
pub(super) fn found_in_merge(message: &str, since: Timestamp, until: Timestamp) -> String {
    format!(
        "{message} (found in the merged history: the loop began at {since}, its delay runs until {until})"
    )
}

/// `DuplicateScaleSetSuspected`.
pub(super) fn duplicate_suspected(waited_ms: u64, max_ms: u64, newly: bool) -> String {
    format!(
        "the session conflict persisted through {} of delayed starts (up to {} apart){}: \
         likely the same scale set name is registered by a second installation (another \
         cluster or namespace in the same runner group), or GitHub has an incident; \
         restarting cannot fix either, so the watchdog keeps the capped delay and stops evicting",
        fmt_ms(waited_ms),
        fmt_ms(max_ms),
        if newly { "" } else { " (still)" }
    )
}

/// `ListenerRecovered`.
pub(super) fn recovered(cause: Cause, since: Timestamp) -> String {
    format!(
        "the listener got its message session; the {} loop (since {since}) is over and the backoff is reset",
        cause.as_str()
    )
}

/// `ListenerStartDelayed`.
pub(super) fn delay_start(cause: Cause, delay_ms: u64, until: Timestamp) -> String {
    format!(
        "{} loop: delaying the listener's next start by {} (until {until})",
        cause.as_str(),
        fmt_ms(delay_ms)
    )
}

/// `DryRunStartDelay`, `DryRunEviction`: what would have been done.
pub(super) fn dry_run(message: &str) -> String {
    format!("dry run, not acting: {message}")
}

/// The eviction of a listener that restarted in place during the backoff.
pub(super) fn restarted_during_backoff(not_before: Timestamp) -> String {
    format!(
        "the listener restarted in place during the backoff (next start was due at {not_before}): \
         evicting so that a new pod waits at the start gate"
    )
}

fn exit_code(code: Option<i32>) -> String {
    code.map_or_else(|| "unknown".to_owned(), |c| c.to_string())
}

/// `ListenerDead`: evicted when the backoff ends at `at`, if still dead.
pub(super) fn dead_until_backoff_ends(code: Option<i32>, at: Timestamp) -> String {
    format!(
        "the listener terminated (exit code {}) while its pod lives on; \
         the pod is to be evicted when the backoff ends at {at}, if the listener is still dead then",
        exit_code(code)
    )
}

/// The eviction of a dead listener whose pod lives on.
pub(super) fn dead_evicted_now(code: Option<i32>) -> String {
    format!(
        "the listener terminated (exit code {}) while its pod lives on \
         (nothing else would replace it): evicting the pod",
        exit_code(code)
    )
}

/// An eviction decided earlier whose time has come.
pub(super) fn pending_eviction_due(cause: EvictCause) -> String {
    match cause {
        EvictCause::ListenerDead => {
            "the listener terminated earlier while its pod lives on; the wait is over: evicting the pod"
                .to_owned()
        }
        other => format!("evicting the pod ({})", other.as_str()),
    }
}

fn hung(after: Duration, since: Timestamp) -> String {
    format!(
        "the listener wrote nothing for {} (since {since}): hung",
        format_duration(after)
    )
}

/// `ListenerHung`. Published at once: it must not claim an eviction that
/// may still be refused, found moot or over budget (only the accepted
/// eviction's `ListenerEvicted` says it happened).
pub(super) fn hung_report(after: Duration, since: Timestamp) -> String {
    format!("{}; the pod is to be evicted", hung(after, since))
}

/// The eviction of a hung listener.
pub(super) fn hung_evicted(after: Duration, since: Timestamp) -> String {
    format!("{}, evicting the pod", hung(after, since))
}

/// `EvictionBudgetExhausted`.
pub(super) fn budget_exhausted(
    cause: EvictCause,
    evictions: usize,
    budget: usize,
    window: Duration,
    free_at: Timestamp,
) -> String {
    let next = if budget == 0 {
        "evictions are disabled (budget 0)".to_owned()
    } else {
        format!("next possible at {free_at}")
    };
    format!(
        "not evicting ({}): {evictions} evictions within {} already (budget {budget}); {next}",
        cause.as_str(),
        format_duration(window)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_read_as_durations() {
        assert_eq!(fmt_ms(1_500), "1s 500ms");
        assert_eq!(fmt_ms(600_000), "10m");
        let until: Timestamp = "2026-03-02T04:00:30Z".parse().unwrap();
        assert_eq!(
            delay_start(Cause::SessionConflict, 30_000, until),
            "session_conflict loop: delaying the listener's next start by 30s \
             (until 2026-03-02T04:00:30Z)"
        );
        let m = duplicate_suspected(2_730_000, 600_000, false);
        assert!(
            m.starts_with("the session conflict persisted through 45m 30s of delayed starts (up to 10m apart) (still): "),
            "{m}"
        );
    }

    /// Every text, word for word: Events are read by people and matched by
    /// alerts, so a changed word is a change to review.
    #[test]
    fn every_message_reads_as_written() {
        let at: Timestamp = "2026-03-02T04:00:30Z".parse().unwrap();
        let since: Timestamp = "2026-03-02T04:00:00Z".parse().unwrap();
        let window = Duration::from_secs(600);
        let other = Cause::Other.advice();
        assert_eq!(
            session_conflict(2, 3, window),
            "session conflict: 2 of 3 within 10m with no session in between"
        );
        assert_eq!(
            conflict_loop(3, window),
            format!(
                "session-conflict loop: 3 session conflicts within 10m with no session in between; {}",
                Cause::SessionConflict.advice()
            )
        );
        let fails = [
            FailedStart {
                at: since,
                cause: Cause::Auth,
            },
            FailedStart {
                at,
                cause: Cause::Other,
            },
        ];
        assert_eq!(
            crash_loop(&fails, Cause::Other, window),
            format!(
                "start-up crash loop (other): 2 runs within 10m died before getting a session \
                 (causes: auth, other); {other}"
            )
        );
        assert_eq!(
            found_in_merge("m", since, at),
            "m (found in the merged history: the loop began at 2026-03-02T04:00:00Z, its delay \
             runs until 2026-03-02T04:00:30Z)"
        );
        assert!(duplicate_suspected(60_000, 60_000, true).starts_with(
            "the session conflict persisted through 1m of delayed starts (up to 1m apart): likely"
        ));
        assert_eq!(
            recovered(Cause::SessionConflict, since),
            "the listener got its message session; the session_conflict loop (since \
             2026-03-02T04:00:00Z) is over and the backoff is reset"
        );
        assert_eq!(dry_run("m"), "dry run, not acting: m");
        assert_eq!(
            restarted_during_backoff(at),
            "the listener restarted in place during the backoff (next start was due at \
             2026-03-02T04:00:30Z): evicting so that a new pod waits at the start gate"
        );
        assert_eq!(
            dead_until_backoff_ends(Some(2), at),
            "the listener terminated (exit code 2) while its pod lives on; the pod is to be \
             evicted when the backoff ends at 2026-03-02T04:00:30Z, if the listener is still dead then"
        );
        assert_eq!(
            dead_evicted_now(None),
            "the listener terminated (exit code unknown) while its pod lives on (nothing else \
             would replace it): evicting the pod"
        );
        assert_eq!(
            pending_eviction_due(EvictCause::ListenerDead),
            "the listener terminated earlier while its pod lives on; the wait is over: evicting the pod"
        );
        assert_eq!(
            pending_eviction_due(EvictCause::Hung),
            "evicting the pod (hung)"
        );
        let quiet = Duration::from_secs(1800);
        assert_eq!(
            hung_report(quiet, since),
            "the listener wrote nothing for 30m (since 2026-03-02T04:00:00Z): hung; the pod is to be evicted"
        );
        assert_eq!(
            hung_evicted(quiet, since),
            "the listener wrote nothing for 30m (since 2026-03-02T04:00:00Z): hung, evicting the pod"
        );
        assert_eq!(
            budget_exhausted(EvictCause::Hung, 3, 3, window, at),
            "not evicting (hung): 3 evictions within 10m already (budget 3); next possible at \
             2026-03-02T04:00:30Z"
        );
        assert_eq!(
            budget_exhausted(EvictCause::ListenerDead, 0, 0, window, at),
            "not evicting (listener_dead): 0 evictions within 10m already (budget 0); evictions \
             are disabled (budget 0)"
        );
    }
}
