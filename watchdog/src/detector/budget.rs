//! The eviction budget, owned here alone: an eviction counts from the
//! moment it is decided, is stored with the history once the API server
//! accepted it ([`Input::EvictionSettled`]), and no longer counts if not.

use jiff::Timestamp;

#[cfg(doc)]
use super::Input;
use super::loops::add;
use super::{Decision, Detector, EvictCause, PendingEviction, Reason, messages, remove_one};

impl Detector {
    pub(super) fn evict(
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
            out.push(Decision::Report {
                at,
                reason: Reason::EvictionBudgetExhausted,
                message: messages::budget_exhausted(
                    cause,
                    h.evictions.len(),
                    budget,
                    t.eviction_window,
                    free_at,
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
                message: messages::dry_run(&message),
            });
        } else {
            self.unsettled.push(at);
            out.push(Decision::Evict { at, cause, message });
        }
    }

    /// The eviction decided at `at` was accepted (it stays counted, and is
    /// stored from now on) or not (it no longer counts).
    pub(super) fn settle(&mut self, at: Timestamp, accepted: bool) {
        if remove_one(&mut self.unsettled, at) && !accepted {
            remove_one(&mut self.history.evictions, at);
        }
    }
}
