//! The reasons of the Kubernetes Events arc-watchdog publishes, and the
//! causes behind them: one spelling each, for the Events, the metric labels,
//! the Lease's history, `analyze` and the docs.

use serde::{Deserialize, Serialize};

/// Why a run died before its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// HTTP 409 `RunnerScaleSetSessionConflictException`.
    SessionConflict,
    /// 404 / `RunnerScaleSetNotFoundException`.
    NotFound,
    /// 401, bad or revoked credentials, 403 without rate limit.
    Auth,
    /// 403/429 rate limit.
    RateLimited,
    /// Network errors.
    Network,
    /// Another error the listener reported.
    Other,
    /// The container ended with a non-zero exit code and no error line
    /// (killed, OOM, crash).
    Unknown,
}

impl Cause {
    /// Stable snake_case name (JSON, metric labels).
    pub const fn as_str(self) -> &'static str {
        match self {
            Cause::SessionConflict => "session_conflict",
            Cause::NotFound => "not_found",
            Cause::Auth => "auth",
            Cause::RateLimited => "rate_limited",
            Cause::Network => "network",
            Cause::Other => "other",
            Cause::Unknown => "unknown",
        }
    }

    /// What the cause means, and what will and will not help.
    pub fn advice(self) -> &'static str {
        match self {
            Cause::SessionConflict => {
                "another message session for this scale set is alive on GitHub (left by a listener that died \
                 without deleting it, or held by a second installation using the same scale set name); \
                 restarting at once does not help, waiting lets a stale session expire"
            }
            Cause::NotFound => {
                "the runner scale set no longer exists on GitHub; restarting never heals this: \
                 re-register the scale set (reinstall it)"
            }
            Cause::Auth => {
                "GitHub rejected the credentials (revoked or wrong token or app key, or a missing permission); \
                 restarting never heals this: fix the credentials secret"
            }
            Cause::RateLimited => {
                "GitHub rate-limits this installation; restarting at once makes it worse, backing off helps"
            }
            Cause::Network => {
                "GitHub or the API server was unreachable (connection, DNS, timeout); usually transient, \
                 backing off avoids hammering"
            }
            Cause::Other => "the listener exited with an error; see its log",
            Cause::Unknown => {
                "the listener died without an error line (killed, out of memory, crashed); see the pod's events"
            }
        }
    }
}

/// Why the detector evicts the listener pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvictCause {
    /// The listener terminated while its pod lives on: nothing else will
    /// ever replace it.
    ListenerDead,
    /// The listener restarted in place while a backoff runs: the start gate
    /// only holds a new pod.
    RestartedDuringBackoff,
    /// No output for `hung_after`.
    Hung,
}

impl EvictCause {
    /// Stable snake_case name (metric label `reason`).
    pub const fn as_str(self) -> &'static str {
        match self {
            EvictCause::ListenerDead => "listener_dead",
            EvictCause::RestartedDuringBackoff => "restarted_during_backoff",
            EvictCause::Hung => "hung",
        }
    }
}

/// Reasons of the Kubernetes Events arc-watchdog publishes: the watchdog's
/// decisions and what became of them, and the webhook's reports of a listener
/// without the watchdog, a listener released from it, and a missing listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Reason {
    /// A session conflict was seen (counted).
    SessionConflict,
    /// A session-conflict loop was detected.
    ConflictLoopDetected,
    /// A start-up crash loop (other cause) was detected.
    CrashLoopDetected,
    /// The listener's next start is delayed by the start gate.
    ListenerStartDelayed,
    /// The listener pod was evicted (`run` publishes it after the API
    /// accepted the eviction of a eviction decision).
    ListenerEvicted,
    /// An eviction was wanted but the budget is spent.
    EvictionBudgetExhausted,
    /// The API server kept refusing the eviction with 429 (a
    /// PodDisruptionBudget) until the retries ran out; `run` only.
    EvictionBlocked,
    /// An eviction was decided but not sent: dry run, the watchdog failing
    /// open (it cannot see its listener), or another eviction under way;
    /// `run` only.
    EvictionNotSent,
    /// The API server answered the eviction with an error other than a
    /// PodDisruptionBudget's 429 (forbidden, unreachable); `run` only.
    EvictionFailed,
    /// The conflict persists at the capped backoff.
    DuplicateScaleSetSuspected,
    /// No output for `hung_after`.
    ListenerHung,
    /// The listener terminated while its pod lives on.
    ListenerDead,
    /// A run got its session after a loop: the backoff is reset.
    ListenerRecovered,
    /// The listener's ARC version has known gaps.
    ListenerVersionWarning,
    /// Dry run: an eviction that would have happened.
    DryRunEviction,
    /// Dry run: a start delay that would have happened.
    DryRunStartDelay,
    /// The kubelet runs the native sidecar as a plain init container: the
    /// watchdog exited so that the listener starts without it.
    WatchdogSteppedAside,
    /// The webhook's: a listener pod runs without the watchdog (admitted
    /// while the webhook was away, or its injection was refused).
    ListenerNotInjected,
    /// The webhook's: a listener was kept from starting by a watchdog that
    /// cannot start; its pod was evicted and injection suspended for a while.
    InjectionSuspended,
    /// The webhook's: a scale set has had no running listener for longer
    /// than its bound (no AutoscalingListener, no listener pod, a pod
    /// Pending or ended, or a pod stuck Terminating on a NotReady node).
    ListenerMissing,
}

impl Reason {
    /// Every reason, in declaration order.
    pub const ALL: [Reason; 20] = [
        Reason::SessionConflict,
        Reason::ConflictLoopDetected,
        Reason::CrashLoopDetected,
        Reason::ListenerStartDelayed,
        Reason::ListenerEvicted,
        Reason::EvictionBudgetExhausted,
        Reason::EvictionBlocked,
        Reason::EvictionNotSent,
        Reason::EvictionFailed,
        Reason::DuplicateScaleSetSuspected,
        Reason::ListenerHung,
        Reason::ListenerDead,
        Reason::ListenerRecovered,
        Reason::ListenerVersionWarning,
        Reason::DryRunEviction,
        Reason::DryRunStartDelay,
        Reason::WatchdogSteppedAside,
        Reason::ListenerNotInjected,
        Reason::InjectionSuspended,
        Reason::ListenerMissing,
    ];

    /// The Event reason string (CamelCase, as Kubernetes Events use).
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::SessionConflict => "SessionConflict",
            Reason::ConflictLoopDetected => "ConflictLoopDetected",
            Reason::CrashLoopDetected => "CrashLoopDetected",
            Reason::ListenerStartDelayed => "ListenerStartDelayed",
            Reason::ListenerEvicted => "ListenerEvicted",
            Reason::EvictionBudgetExhausted => "EvictionBudgetExhausted",
            Reason::EvictionBlocked => "EvictionBlocked",
            Reason::EvictionNotSent => "EvictionNotSent",
            Reason::EvictionFailed => "EvictionFailed",
            Reason::DuplicateScaleSetSuspected => "DuplicateScaleSetSuspected",
            Reason::ListenerHung => "ListenerHung",
            Reason::ListenerDead => "ListenerDead",
            Reason::ListenerRecovered => "ListenerRecovered",
            Reason::ListenerVersionWarning => "ListenerVersionWarning",
            Reason::DryRunEviction => "DryRunEviction",
            Reason::DryRunStartDelay => "DryRunStartDelay",
            Reason::WatchdogSteppedAside => "WatchdogSteppedAside",
            Reason::ListenerNotInjected => "ListenerNotInjected",
            Reason::InjectionSuspended => "InjectionSuspended",
            Reason::ListenerMissing => "ListenerMissing",
        }
    }

    /// Whether the Event is of type `Warning` (else `Normal`).
    pub fn is_warning(self) -> bool {
        !matches!(
            self,
            Reason::ListenerRecovered | Reason::ListenerStartDelayed | Reason::DryRunStartDelay
        )
    }
}

/// Why a scale set has no running listener: one spelling for
/// `arc-watchdog status` (its `missing` field), the webhook's report (the
/// gauge's `reason` label, the Event's note) and the docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Missing {
    /// No AutoscalingListener names the scale set (ARC's controller did not
    /// create one: down, or failing on the scale set).
    NoAutoscalingListener,
    /// The AutoscalingListener has no pod.
    NoPod,
    /// The listener pod has not started (phase Pending) for too long.
    PodPending,
    /// The pod is being deleted on a node that is NotReady: it stays
    /// Terminating until the node returns, and ARC makes no new one.
    TerminatingOnNotReadyNode,
    /// The pod ended (Succeeded or Failed) and was not replaced yet.
    PodEnded,
}

impl Missing {
    /// Every reason.
    pub const ALL: [Missing; 5] = [
        Missing::NoAutoscalingListener,
        Missing::NoPod,
        Missing::PodPending,
        Missing::TerminatingOnNotReadyNode,
        Missing::PodEnded,
    ];

    /// The snake_case spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Missing::NoAutoscalingListener => "no_autoscaling_listener",
            Missing::NoPod => "no_pod",
            Missing::PodPending => "pod_pending",
            Missing::TerminatingOnNotReadyNode => "terminating_on_not_ready_node",
            Missing::PodEnded => "pod_ended",
        }
    }
}
