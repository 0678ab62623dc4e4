//! Merging two detector histories after a Lease update conflict (pure).
//!
//! Two writers meet on one Lease when an old pod generation's watchdog
//! still writes while the new one starts. Nothing either saw may be lost:
//! counted conflicts, failed starts and evictions are united (an eviction
//! forgotten would overspend the budget), the newer loop state wins, and
//! whatever an established session cleared stays cleared.

use crate::detector::History;

fn union_sorted<T: Ord + Clone>(a: &[T], b: &[T]) -> Vec<T> {
    let mut v: Vec<T> = a.iter().chain(b.iter()).cloned().collect();
    v.sort();
    v.dedup();
    v
}

/// The merge of the `stored` history and `ours`.
pub fn merge_histories(stored: &History, ours: &History) -> History {
    let last_established = stored.last_established.max(ours.last_established);
    let after_session = |t: &jiff::Timestamp| last_established.is_none_or(|e| *t > e);

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

/// [`merge_histories`] over the JSON stored in the Lease. A stored history
/// that cannot be read is replaced by ours (it is reported by the caller
/// when loading).
pub fn merge_json(stored: &str, ours: &str) -> String {
    match (History::from_json(stored), History::from_json(ours)) {
        (Ok(s), Ok(o)) => merge_histories(&s, &o).to_json(),
        (Err(_), _) => ours.to_owned(),
        (Ok(s), Err(_)) => s.to_json(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::{Cause, FailedStart};
    use jiff::Timestamp;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn unites_counts_and_keeps_what_a_session_cleared() {
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
        let m = merge_histories(&stored, &ours);
        assert_eq!(m.conflicts, vec![t(1), t(2), t(5)]);
        assert_eq!(m.evictions, vec![t(3), t(6)]);
        assert_eq!(m.failed_starts.len(), 1);

        let ours = History {
            last_established: Some(t(4)),
            conflicts: vec![t(5)],
            ..History::default()
        };
        let m = merge_histories(&stored, &ours);
        assert_eq!(m.conflicts, vec![t(5)]);
        assert!(m.failed_starts.is_empty());
        assert_eq!(m.evictions, vec![t(3)]);
    }

    #[test]
    fn unreadable_stored_history_is_replaced() {
        let ours = History::default().to_json();
        assert_eq!(merge_json("{not json", &ours), ours);
    }
}
