//! The one part of the watchdog's history that admission reads: until when
//! a backoff holds the next listener start.
//!
//! The history is the watchdog's JSON in the Lease annotation
//! [`names::ANNOTATION_HISTORY`](crate::names::ANNOTATION_HISTORY); the
//! watchdog owns its format. Its active loop sits under `loop`, and the start
//! gate stays closed until that loop's `not_before`. The webhook adds the
//! start gate's probe to a listener pod only while such a backoff is
//! pending, so that a healthy listener's start does not wait for a probe.
//! Everything else in the history is ignored here, as the watchdog's own
//! reading ignores unknown fields.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// What admission keeps of a history: the end of the pending backoff, if
/// its loop has one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    /// The active loop, when the history holds one.
    #[serde(rename = "loop", default, skip_serializing_if = "Option::is_none")]
    loop_state: Option<LoopEnd>,
}

/// The field of the watchdog's loop state that admission reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct LoopEnd {
    /// The start gate stays closed until then.
    not_before: Timestamp,
}

impl Backoff {
    /// Reads the backoff of a history annotation's JSON. A history without
    /// an active loop has none; text that is not a history is an error.
    pub fn from_history(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// A backoff that holds starts until `not_before` (none: no loop).
    pub fn until(not_before: Option<Timestamp>) -> Self {
        Self {
            loop_state: not_before.map(|not_before| LoopEnd { not_before }),
        }
    }

    /// Until when the next start is held, if a loop is active.
    pub fn not_before(&self) -> Option<Timestamp> {
        self.loop_state.map(|l| l.not_before)
    }

    /// Whether the next start is held at `now`.
    pub fn is_pending(&self, now: Timestamp) -> bool {
        self.not_before().is_some_and(|t| now < t)
    }

    /// The smallest history JSON that reads back as this backoff.
    pub fn to_history(&self) -> String {
        // Plain data with string keys: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn reads_the_loops_end_and_ignores_the_rest() {
        let json = r#"{"version":1,"conflicts":["2025-01-01T00:00:00Z"],
            "loop":{"since":"2025-01-01T00:00:00Z","delay_ms":30000,
                    "not_before":"2025-01-01T00:00:30Z","cause":"session_conflict"},
            "run":null}"#;
        let b = Backoff::from_history(json).unwrap();
        assert_eq!(b.not_before(), Some(at("2025-01-01T00:00:30Z")));
        assert!(b.is_pending(at("2025-01-01T00:00:29.999Z")));
        assert!(
            !b.is_pending(at("2025-01-01T00:00:30Z")),
            "ends at not_before"
        );
        assert!(!b.is_pending(at("2025-01-01T00:01:00Z")));
    }

    #[test]
    fn no_loop_no_backoff_and_garbage_is_an_error() {
        for json in ["{}", r#"{"loop":null,"version":1}"#] {
            let b = Backoff::from_history(json).unwrap();
            assert_eq!(b, Backoff::default(), "{json}");
            assert!(!b.is_pending(Timestamp::UNIX_EPOCH), "{json}");
        }
        for json in [
            "",
            "null",
            "42",
            r#"{"loop":{"since":"x"}}"#,
            r#"{"loop":{"not_before":"soon"}}"#,
        ] {
            assert!(Backoff::from_history(json).is_err(), "{json}");
        }
    }

    #[test]
    fn the_smallest_history_reads_back_the_same() {
        for b in [
            Backoff::until(Some(at("2025-01-01T00:00:30Z"))),
            Backoff::default(),
        ] {
            assert_eq!(Backoff::from_history(&b.to_history()).unwrap(), b);
        }
        assert_eq!(Backoff::default().to_history(), "{}");
    }
}
