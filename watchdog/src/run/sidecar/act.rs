//! Carrying out the detector's decisions: Events, the start gate (through
//! `after_change`), and evictions, whose outcome is handed back to the
//! detector ([`Input::EvictionSettled`]).

use jiff::Timestamp;
use tracing::{info, warn};

use super::Sidecar;
use crate::detector::{Decision, EvictCause, Input, Reason};
use crate::run::evict::{EVICTING_LOG, EvictOutcome, EvictRetry, Fresh, evict_pod, fresh_check};
use crate::run::gate;
use crate::run::metrics::{ReasonLabel, VersionWarningLabel};
use crate::run::pod::PodView;

/// Result of an eviction task.
#[derive(Debug)]
pub(super) struct EvictDone {
    /// When the detector decided it (the time it recorded).
    pub(super) at: Timestamp,
    pub(super) cause: EvictCause,
    pub(super) message: String,
    pub(super) outcome: EvictOutcome,
}

impl Sidecar {
    /// Tells the detector what became of the eviction it decided at `at`.
    pub(super) fn settle_eviction(&mut self, at: Timestamp, accepted: bool) {
        let decisions = self
            .detector
            .handle(Input::EvictionSettled { at, accepted });
        if !decisions.is_empty() {
            self.execute(decisions);
        }
    }

    pub(super) fn execute(&mut self, decisions: Vec<Decision>) {
        for d in decisions {
            let reason = d.reason();
            let message = d.message().to_owned();
            match &d {
                Decision::Evict { cause, at, .. } => self.evict(*cause, *at, message),
                Decision::DelayStart { .. } => {
                    info!(reason = reason.as_str(), detail = %message, "decision");
                    self.report(reason, message, "DelayStart");
                }
                Decision::Report { .. } => {
                    if reason == Reason::SessionConflict {
                        self.shared.metrics.session_conflicts.inc();
                    }
                    if reason.is_warning() {
                        warn!(reason = reason.as_str(), detail = %message, "decision");
                    } else {
                        info!(reason = reason.as_str(), detail = %message, "decision");
                    }
                    self.report(reason, message, "Observe");
                }
            }
        }
        self.after_change();
    }

    pub(super) fn report(&self, reason: Reason, message: String, action: &str) {
        self.report_str(reason.as_str(), reason.is_warning(), message, action);
    }

    pub(super) fn report_str(&self, reason: &str, warning: bool, message: String, action: &str) {
        self.events
            .push(reason, warning, message, action, self.view.owner.clone());
    }

    pub(super) fn evict(&mut self, cause: EvictCause, at: Timestamp, message: String) {
        let now = Timestamp::now();
        let blocked = |why: String| {
            warn!(cause = cause.as_str(), reason = %why, "not evicting");
            why
        };
        let why_not = if self.shared.with_gate(|g| g.fail_open(now)) {
            Some("the watchdog cannot see its listener (failing open); an eviction needs fresh observations".to_owned())
        } else if self.evicting {
            Some("an eviction is already under way".to_owned())
        } else {
            None
        };
        if let Some(why) = why_not {
            let why = blocked(why);
            self.settle_eviction(at, false);
            self.shared.metrics.eviction_not_accepted("not_sent");
            self.report_str(
                Reason::EvictionNotSent.as_str(),
                true,
                format!(
                    "not evicting ({}): {why}; the decision was: \"{message}\"",
                    cause.as_str()
                ),
                "Evict",
            );
            return;
        }
        self.evicting = true;
        // Not yet an eviction: the fresh look below may find it moot (with
        // restartPolicy Always, the kubelet has usually restarted the
        // listener by then). The eviction is logged when it is sent.
        info!(cause = cause.as_str(), decision = %message, "eviction decided; re-reading the pod before sending it");
        let client = self.client.clone();
        let pods = self.pods.clone();
        let args = self.args.clone();
        let listener_container = self.args.listener_container.clone();
        let tx = self.evict_tx.clone();
        let cancel = self.cancel.child_token();
        let shared = self.shared.clone();
        // The run the detector judged: a hung run, or one restarted during
        // the backoff, must be the pod's current listener run, not one left
        // open in the Lease by an earlier pod.
        let judged_run = self.detector.history().run.as_ref().map(|r| r.id.clone());
        tokio::spawn(async move {
            let outcome = fresh_check(
                &pods,
                &args,
                &listener_container,
                cause,
                judged_run.as_deref(),
                &shared,
            )
            .await;
            let outcome = match outcome {
                Err(Fresh::Moot(why)) => EvictOutcome::Gone(why),
                Err(Fresh::Unknown(why)) => EvictOutcome::Failed(why),
                Ok(()) => {
                    // Tools count this line as an eviction: only here.
                    warn!(cause = cause.as_str(), decision = %message, "{EVICTING_LOG}");
                    evict_pod(
                        &client,
                        &args.identity.pod_namespace,
                        &args.identity.pod_name,
                        args.identity.pod_uid.as_deref(),
                        false,
                        &EvictRetry::default(),
                        &cancel,
                    )
                    .await
                }
            };
            let _ = tx
                .send(EvictDone {
                    at,
                    cause,
                    message,
                    outcome,
                })
                .await;
        });
    }

    pub(super) fn on_evicted(&mut self, done: EvictDone) {
        self.evicting = false;
        let not_accepted = match &done.outcome {
            EvictOutcome::Evicted { .. } => None,
            EvictOutcome::Gone(_) => Some("moot"),
            EvictOutcome::Blocked { .. } => Some("blocked"),
            EvictOutcome::Forbidden(_) | EvictOutcome::Failed(_) => Some("failed"),
            EvictOutcome::Cancelled => Some("cancelled"),
            // The sidecar never sends a dry-run eviction (dry run decides
            // no evictions); nothing was evicted.
            EvictOutcome::DryRunAccepted => Some("not_sent"),
        };
        // Accepted: it counts, and the next save carries it.
        self.settle_eviction(done.at, not_accepted.is_none());
        if let Some(outcome) = not_accepted {
            self.shared.metrics.eviction_not_accepted(outcome);
        }
        self.report_eviction(done);
        self.after_change();
    }

    pub(super) fn report_eviction(&mut self, done: EvictDone) {
        let cause = done.cause.as_str();
        match done.outcome {
            EvictOutcome::Evicted { attempts } => {
                info!(cause, attempts, "the API server accepted the eviction");
                self.shared
                    .metrics
                    .evictions
                    .get_or_create(&ReasonLabel {
                        reason: cause.to_owned(),
                    })
                    .inc();
                self.report(Reason::ListenerEvicted, done.message, "Evict");
            }
            EvictOutcome::DryRunAccepted | EvictOutcome::Cancelled => {}
            EvictOutcome::Gone(why) => {
                info!(cause, reason = %why, "eviction moot, nothing evicted: the pod is gone or replaced, or the listener runs again")
            }
            EvictOutcome::Blocked { attempts, last } => {
                warn!(cause, attempts, last = %last, "eviction blocked by a PodDisruptionBudget");
                self.report_str(
                    Reason::EvictionBlocked.as_str(),
                    true,
                    format!("eviction ({cause}) refused {attempts} times (PodDisruptionBudget?): {last}; the decision was: \"{}\"", done.message),
                    "Evict",
                );
            }
            EvictOutcome::Forbidden(why) | EvictOutcome::Failed(why) => {
                warn!(cause, error = %why, "eviction failed");
                self.shared.metrics.api_error(gate::OP_EVICT);
                self.report_str(
                    Reason::EvictionFailed.as_str(),
                    true,
                    format!(
                        "eviction ({cause}) failed: {why}; the decision was: \"{}\"",
                        done.message
                    ),
                    "Evict",
                );
            }
        }
    }

    pub(super) fn version_warning(&mut self, view: &PodView) {
        if self.version_warned {
            return;
        }
        let image = view.listener.as_ref().and_then(|l| l.image.clone());
        let source = view
            .version_label
            .clone()
            .filter(|v| crate::detector::parse_arc_version(v).is_some())
            .or(image);
        let Some(source) = source else { return };
        self.version_warned = true;
        let Some(w) = crate::detector::version_warning(&source) else {
            return;
        };
        for gap in &w.gaps {
            self.shared
                .metrics
                .version_warning
                .get_or_create(&VersionWarningLabel {
                    version: w.version.clone(),
                    warning: gap.as_str().to_owned(),
                })
                .set(1);
        }
        warn!(version = %w.version, detail = %w.message, "the listener's ARC version has known gaps");
        self.report(
            Reason::ListenerVersionWarning,
            format!("ARC {}: {}", w.version, w.message),
            "Observe",
        );
    }
}
