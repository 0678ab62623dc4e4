//! What the detector remembers across pod generations, stored by `run` as
//! JSON in the per-listener Lease (annotation [`ANNOTATION_HISTORY`]).
//! Bounded: every list is pruned to its window and capped.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::{Cause, EvictCause};

/// Annotation on the per-listener Lease holding the [`History`] as JSON.
pub use arc_watchdog_core::names::ANNOTATION_HISTORY;

/// Current [`History::version`].
pub const HISTORY_VERSION: u32 = 1;

/// Most timestamps kept in one list (conflicts, failed starts).
pub(crate) const MAX_EVENTS: usize = 64;
/// Most content hashes kept at the dedupe high-water mark.
pub(crate) const MAX_SEEN: usize = 64;
/// Most eviction times kept (the budget is checked against these).
pub(crate) const MAX_EVICTIONS: usize = 1024;

/// A listener run that died before getting its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedStart {
    /// When it failed (the fatal line, or the container's end).
    pub at: Timestamp,
    /// Why.
    pub cause: Cause,
}

/// An active conflict loop or start-up crash loop and its backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoopState {
    /// When the loop was detected.
    pub since: Timestamp,
    /// Cause of the latest failed start.
    pub cause: Cause,
    /// Detected as a session-conflict loop (`conflict_threshold` conflicts).
    pub conflict_loop: bool,
    /// Detected as (also) a start-up crash loop (`conflict_threshold` runs
    /// in a row died before their session).
    #[serde(default)]
    pub crash_loop: bool,
    /// Current delay of the next start, in milliseconds.
    pub delay_ms: u64,
    /// The start gate stays closed until then.
    pub not_before: Timestamp,
    /// The latest failed start.
    pub last_failure: Timestamp,
    /// Failed starts that came after a delay already at the cap.
    pub times_at_cap: u32,
    /// The delays this loop has served, in milliseconds, added up.
    #[serde(default)]
    pub waited_ms: u64,
    /// The conflict persisted through `duplicate_after_caps` starts at the
    /// capped backoff, or as long a wait: probably the scale set registered
    /// twice, or a GitHub-side incident. Evictions to cure the loop stop.
    pub duplicate_suspected: bool,
}

/// The current (or last) listener container run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunState {
    /// Identity given by `run` (container ID); a `RunStarted` with the same
    /// id resumes this run instead of starting a new one.
    pub id: String,
    /// When it started.
    pub started: Timestamp,
    /// Whether it was a restart in place (same pod).
    pub in_place: bool,
    /// When it ended, if it did.
    pub ended: Option<Timestamp>,
    /// It got its session.
    pub established: bool,
    /// It was counted as a failed start, with this cause.
    pub failure: Option<Cause>,
    /// Its latest output.
    pub last_output: Option<Timestamp>,
    /// It was already found hung (one hung eviction per run).
    pub hung: bool,
    /// Dedupe high-water mark: the newest line timestamp seen in this run.
    pub high_water: Option<Timestamp>,
    /// Content hashes of the lines seen at exactly `high_water`.
    pub seen: Vec<u64>,
    /// When a watchdog first looked at this run after its start (the first
    /// input after it): `--established-after` counts from here, so a run
    /// that started long before anyone watched it is not taken for one
    /// that held its session all along.
    #[serde(default)]
    pub watched_since: Option<Timestamp>,
}

/// An eviction decided for later (when the backoff ends or the budget frees).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingEviction {
    /// Not before this time.
    pub at: Timestamp,
    /// Why.
    pub cause: EvictCause,
}

/// The detector's memory. Serialisable, bounded, forward compatible (unknown
/// fields are ignored, missing ones default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct History {
    /// Format version ([`HISTORY_VERSION`]).
    pub version: u32,
    /// Session conflicts of the current streak (since the last established
    /// session) within the conflict window, oldest first.
    pub conflicts: Vec<Timestamp>,
    /// Failed starts of the current streak within the conflict window.
    pub failed_starts: Vec<FailedStart>,
    /// Evictions within the eviction window: under `run`, only those the API
    /// server accepted (would-be ones in dry-run).
    pub evictions: Vec<Timestamp>,
    /// The active loop and its backoff.
    #[serde(rename = "loop")]
    pub loop_state: Option<LoopState>,
    /// Latest time a run got its session.
    pub last_established: Option<Timestamp>,
    /// The current or last run.
    pub run: Option<RunState>,
    /// An eviction waiting for its time.
    pub pending_eviction: Option<PendingEviction>,
}

impl Default for History {
    fn default() -> Self {
        Self {
            version: HISTORY_VERSION,
            conflicts: Vec::new(),
            failed_starts: Vec::new(),
            evictions: Vec::new(),
            loop_state: None,
            last_established: None,
            run: None,
            pending_eviction: None,
        }
    }
}

impl History {
    /// Reads a history from the Lease annotation's JSON.
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        let mut h: History = serde_json::from_str(json)?;
        h.bound();
        Ok(h)
    }

    /// The JSON for the Lease annotation.
    pub fn to_json(&self) -> String {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }

    /// The merge of the `stored` history (another writer's) and `ours`.
    ///
    /// Two writers meet on one Lease when an old pod generation's watchdog
    /// still writes while the new one starts. Nothing either saw may be
    /// lost: counted conflicts, failed starts and evictions are united (an
    /// eviction forgotten would overspend the budget), the newer loop state
    /// wins, and whatever an established session cleared stays cleared.
    pub fn merge(stored: &History, ours: &History) -> History {
        let last_established = stored.last_established.max(ours.last_established);
        let after_session = |t: &Timestamp| last_established.is_none_or(|e| *t > e);

        let mut conflicts = union_sorted(&stored.conflicts, &ours.conflicts);
        conflicts.retain(after_session);
        let mut failed: Vec<_> = stored
            .failed_starts
            .iter()
            .chain(ours.failed_starts.iter())
            .copied()
            .collect();
        failed.sort_by_key(|f| (f.at, f.cause.as_str()));
        failed.dedup();
        failed.retain(|f| after_session(&f.at));
        let evictions = union_sorted(&stored.evictions, &ours.evictions);

        let loop_state = match (stored.loop_state, ours.loop_state) {
            (Some(a), Some(b)) => Some(
                if (a.last_failure, a.not_before) > (b.last_failure, b.not_before) {
                    a
                } else {
                    b
                },
            ),
            // A loop ended by an established session stays ended.
            (Some(a), None) | (None, Some(a)) => Some(a).filter(|l| after_session(&l.last_failure)),
            (None, None) => None,
        };
        let run = match (&stored.run, &ours.run) {
            (Some(a), Some(b)) if a.started > b.started => Some(a.clone()),
            (_, Some(b)) => Some(b.clone()),
            (a, None) => a.clone(),
        };
        History {
            version: ours.version.max(stored.version),
            conflicts,
            failed_starts: failed,
            evictions,
            loop_state,
            last_established,
            run,
            pending_eviction: ours.pending_eviction.or(stored.pending_eviction),
        }
    }

    /// Clamps every stored deadline to `now + max_delay` (and the delay to
    /// `max_delay`). A stored deadline is only as good as the clock of the
    /// node that wrote it and the `--backoff-max` in force then, and the
    /// Lease can be written by anything running as the listener's
    /// ServiceAccount: none of that may hold the start gate longer than
    /// this watchdog's own longest delay from now. Returns whether anything
    /// changed.
    pub fn clamp_deadlines(&mut self, now: Timestamp, max_delay: std::time::Duration) -> bool {
        let max_ms = u64::try_from(max_delay.as_millis()).unwrap_or(u64::MAX);
        let latest = jiff::SignedDuration::try_from(max_delay)
            .ok()
            .and_then(|d| now.checked_add(d).ok())
            .unwrap_or(Timestamp::MAX);
        let mut changed = false;
        if let Some(l) = &mut self.loop_state {
            if l.not_before > latest {
                l.not_before = latest;
                changed = true;
            }
            if l.delay_ms > max_ms {
                l.delay_ms = max_ms;
                changed = true;
            }
        }
        if let Some(p) = &mut self.pending_eviction
            && p.at > latest
        {
            p.at = latest;
            changed = true;
        }
        changed
    }

    /// Caps every list (a history from an older or foreign writer may be
    /// larger than this version keeps).
    pub(crate) fn bound(&mut self) {
        fn keep_last<T>(v: &mut Vec<T>, n: usize) {
            v.drain(..v.len().saturating_sub(n));
        }
        keep_last(&mut self.conflicts, MAX_EVENTS);
        keep_last(&mut self.failed_starts, MAX_EVENTS);
        keep_last(&mut self.evictions, MAX_EVICTIONS);
        if let Some(run) = &mut self.run {
            keep_last(&mut run.seen, MAX_SEEN);
        }
    }
}

fn union_sorted<T: Ord + Clone>(a: &[T], b: &[T]) -> Vec<T> {
    let mut v: Vec<T> = a.iter().chain(b.iter()).cloned().collect();
    v.sort();
    v.dedup();
    v
}

/// Removes the first `at` from `list`; whether there was one.
pub(super) fn remove_one(list: &mut Vec<Timestamp>, at: Timestamp) -> bool {
    match list.iter().position(|t| *t == at) {
        Some(i) => {
            list.remove(i);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn remove_one_takes_only_the_first_equal_time() {
        let mut list = vec![t(1), t(2), t(1)];
        assert!(remove_one(&mut list, t(1)));
        assert_eq!(list, vec![t(2), t(1)]);
        assert!(!remove_one(&mut list, t(3)));
        assert_eq!(list, vec![t(2), t(1)]);
        assert!(remove_one(&mut list, t(1)));
        assert!(remove_one(&mut list, t(2)));
        assert!(list.is_empty());
        assert!(!remove_one(&mut list, t(2)));
    }

    #[test]
    fn merge_unites_counts_and_keeps_what_a_session_cleared() {
        let stored = History {
            conflicts: vec![t(1), t(2)],
            evictions: vec![t(3)],
            failed_starts: vec![FailedStart {
                at: t(2),
                cause: Cause::SessionConflict,
            }],
            ..History::default()
        };
        let ours = History {
            conflicts: vec![t(2), t(5)],
            evictions: vec![t(6)],
            ..History::default()
        };
        let m = History::merge(&stored, &ours);
        assert_eq!(m.conflicts, vec![t(1), t(2), t(5)]);
        assert_eq!(m.evictions, vec![t(3), t(6)]);
        assert_eq!(m.failed_starts.len(), 1);

        let ours = History {
            last_established: Some(t(4)),
            conflicts: vec![t(5)],
            ..History::default()
        };
        let m = History::merge(&stored, &ours);
        assert_eq!(m.conflicts, vec![t(5)]);
        // What happened at the session's very instant is cleared with it.
        let at_session = History {
            last_established: Some(t(2)),
            ..History::default()
        };
        assert!(History::merge(&stored, &at_session).conflicts.is_empty());
        assert!(m.failed_starts.is_empty());
        assert_eq!(m.evictions, vec![t(3)]);
    }

    #[test]
    fn admission_reads_the_backoff_this_history_holds() {
        use arc_watchdog_core::backoff::Backoff;
        let looping = History {
            loop_state: Some(LoopState {
                since: t(0),
                cause: Cause::SessionConflict,
                conflict_loop: true,
                crash_loop: false,
                delay_ms: 30_000,
                not_before: t(30),
                last_failure: t(0),
                times_at_cap: 0,
                waited_ms: 0,
                duplicate_suspected: false,
            }),
            conflicts: vec![t(0)],
            ..History::default()
        };
        let read = Backoff::from_history(&looping.to_json()).unwrap();
        assert_eq!(read.not_before(), Some(t(30)));
        assert!(read.is_pending(t(29)));
        assert!(!read.is_pending(t(30)));
        let calm = Backoff::from_history(&History::default().to_json()).unwrap();
        assert_eq!(calm.not_before(), None);
    }

    #[test]
    fn a_larger_history_read_is_cut_to_the_caps_keeping_the_newest() {
        let many = |n: i64| (0..n).map(t).collect::<Vec<_>>();
        let big = History {
            conflicts: many(100),
            evictions: many(2000),
            ..History::default()
        };
        let read = History::from_json(&big.to_json()).unwrap();
        assert_eq!(read.conflicts, many(100)[100 - MAX_EVENTS..].to_vec());
        assert_eq!(read.evictions.len(), MAX_EVICTIONS);
        assert_eq!(read.evictions.last(), Some(&t(1999)));
    }
    #[test]
    fn merge_keeps_the_newer_loop_and_ours_at_a_tie() {
        let looping = |last_failure: i64, delay_ms: u64| LoopState {
            since: t(0),
            cause: Cause::SessionConflict,
            conflict_loop: true,
            crash_loop: false,
            delay_ms,
            not_before: t(last_failure + 30),
            last_failure: t(last_failure),
            times_at_cap: 0,
            waited_ms: 0,
            duplicate_suspected: false,
        };
        let with = |l: LoopState| History {
            loop_state: Some(l),
            ..History::default()
        };
        let merged = |stored: LoopState, ours: LoopState| {
            History::merge(&with(stored), &with(ours))
                .loop_state
                .unwrap()
                .delay_ms
        };
        assert_eq!(
            merged(looping(20, 1), looping(10, 2)),
            1,
            "the stored one is newer"
        );
        assert_eq!(merged(looping(10, 1), looping(20, 2)), 2, "ours is newer");
        assert_eq!(merged(looping(10, 1), looping(10, 2)), 2, "a tie");
    }

    #[test]
    fn merge_keeps_the_run_that_started_last_and_ours_at_a_tie() {
        let run = |id: &str, started: i64, ended: Option<i64>| RunState {
            id: id.to_string(),
            started: t(started),
            ended: ended.map(t),
            ..RunState::default()
        };
        let with = |r: RunState| History {
            run: Some(r),
            ..History::default()
        };
        let merged = |stored: RunState, ours: RunState| {
            History::merge(&with(stored), &with(ours)).run.unwrap().id
        };
        assert_eq!(
            merged(run("new", 20, None), run("old", 10, Some(15))),
            "new"
        );
        assert_eq!(
            merged(run("old", 10, Some(15)), run("new", 20, None)),
            "new"
        );
        // The same start: ours is the fresher account of that run.
        let ended = History::merge(
            &with(run("same", 10, None)),
            &with(run("same", 10, Some(12))),
        );
        assert_eq!(ended.run.unwrap().ended, Some(t(12)));
        let stored_only = History::merge(&with(run("s", 10, None)), &History::default());
        assert_eq!(stored_only.run.unwrap().id, "s");
    }
}
