//! What the detector remembers across pod generations, stored by `run` as
//! JSON in the per-listener Lease (annotation [`HISTORY_ANNOTATION`]).
//! Bounded: every list is pruned to its window and capped.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::{Cause, EvictCause};

/// Annotation on the per-listener Lease holding the [`History`] as JSON.
pub const HISTORY_ANNOTATION: &str = "arc-watchdog.dev/history";

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

    /// Removes one eviction recorded at `at`; whether there was one.
    pub fn remove_eviction(&mut self, at: Timestamp) -> bool {
        remove_one(&mut self.evictions, at)
    }

    /// Caps every list (a history from an older or foreign writer may be
    /// larger than this version keeps).
    pub(crate) fn bound(&mut self) {
        fn keep_last<T>(v: &mut Vec<T>, n: usize) {
            if v.len() > n {
                v.drain(..v.len() - n);
            }
        }
        keep_last(&mut self.conflicts, MAX_EVENTS);
        keep_last(&mut self.failed_starts, MAX_EVENTS);
        keep_last(&mut self.evictions, MAX_EVICTIONS);
        if let Some(run) = &mut self.run {
            keep_last(&mut run.seen, MAX_SEEN);
        }
    }
}

/// Removes the first `at` from `list`; whether there was one.
pub(crate) fn remove_one(list: &mut Vec<Timestamp>, at: Timestamp) -> bool {
    match list.iter().position(|t| *t == at) {
        Some(i) => {
            list.remove(i);
            true
        }
        None => false,
    }
}
