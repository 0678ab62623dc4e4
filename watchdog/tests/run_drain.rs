//! Shutdown drain: with restartPolicy Never the kubelet stops the sidecar
//! milliseconds after the listener exits, before a lagging follow stream
//! has delivered the listener's last lines. On shutdown the watchdog reads
//! the log once more (without follow) and the listener's end, so the
//! conflict and the failed start reach the Lease, and the next pod
//! generation sees the loop. The Events decided during the drain are
//! published within the same bound, and a slow Event publisher never holds
//! the exit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod run_support;

use std::time::{Duration, Instant};

use arc_watchdog::run::Started;
use arc_watchdog::run::http::Shared;
use arc_watchdog::run::metrics::DropLabel;
use jiff::Timestamp;
use run_support::*;
use tokio_util::sync::CancellationToken;

/// A sidecar following run c1 whose follow stream lags (delivers
/// nothing), with two earlier conflicts in the Lease.
async fn following_a_lagging_stream(api: &StandIn) -> (Started, CancellationToken) {
    // Two earlier pod generations met a conflict each.
    let seed = two_earlier_conflicts(Timestamp::now());
    api.set_lease(Some(&seed.to_json()));
    // The follow stream lags: it delivers nothing.
    api.with(|s| s.stall_follow = true);
    let started_at = Timestamp::now();
    api.set_pod(c1_running(started_at));
    let (started, cancel) = start_watchdog(api, "20s", &[]).await;
    api.wait_for_run("containerd://c1").await;
    api.wait_for_follow().await;
    (started, cancel)
}

/// The listener meets the conflict and exits; SIGTERM follows at once.
/// Returns how long the shutdown took.
async fn conflict_then_sigterm(
    api: &StandIn,
    started: Started,
    cancel: &CancellationToken,
) -> Duration {
    api.with(|s| {
        s.log.push((Timestamp::now(), CONFLICT.to_owned()));
        s.log_done = true;
    });
    api.set_pod(c1_exited(Timestamp::now()));
    let t0 = Instant::now();
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(2), started.task)
        .await
        .expect("shutdown hung")
        .unwrap();
    let took = t0.elapsed();
    eprintln!("shutdown took {took:?}");
    took
}

/// Events the drain decided but dropped at the shutdown bound.
fn dropped_at_shutdown(shared: &Shared) -> u64 {
    shared
        .metrics
        .events_dropped
        .get_or_create(&DropLabel {
            why: "shutdown_bound".to_owned(),
        })
        .get()
}

/// Event reasons posted about the pod.
fn pod_event_reasons(s: &StandInState) -> Vec<String> {
    s.events
        .iter()
        .filter(|e| e["regarding"]["kind"] == "Pod")
        .filter_map(|e| e["reason"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn sigterm_right_after_the_listener_exits_still_saves_its_conflict() {
    let api = StandIn::start().await.unwrap();
    let (started, cancel) = following_a_lagging_stream(&api).await;
    let took = conflict_then_sigterm(&api, started, &cancel).await;
    assert!(took < Duration::from_secs(1), "shutdown took {took:?}");

    let h = api.with(|s| stored(s)).expect("a history in the Lease");
    assert_eq!(h.conflicts.len(), 3, "conflicts: {:?}", h.conflicts);
    assert_eq!(h.failed_starts.len(), 3, "failed: {:?}", h.failed_starts);
    let run = h.run.expect("the run");
    assert_eq!(run.id, "containerd://c1");
    assert!(run.ended.is_some(), "the run's end was not recorded");
    assert!(
        h.loop_state.is_some(),
        "the third conflict must start the loop's backoff"
    );
    // The drain read the log without follow.
    assert!(
        api.requests("GET", "/log")
            .iter()
            .any(|r| !r.query.contains("follow=true")),
        "no plain log read"
    );
}

#[tokio::test]
async fn events_decided_during_the_drain_are_published_before_the_exit() {
    let api = StandIn::start().await.unwrap();
    let (started, cancel) = following_a_lagging_stream(&api).await;
    let shared = started.shared.clone();
    let before = api.with(|s| pod_event_reasons(s));
    assert!(!before.iter().any(|r| r == "SessionConflict"), "{before:?}");
    let took = conflict_then_sigterm(&api, started, &cancel).await;
    assert!(took < Duration::from_secs(1), "shutdown took {took:?}");

    // Only the drain saw the conflict: its decisions reached the API.
    let reasons = api.with(|s| pod_event_reasons(s));
    for reason in [
        "SessionConflict",
        "ConflictLoopDetected",
        "ListenerStartDelayed",
    ] {
        assert!(
            reasons.iter().any(|r| r == reason),
            "no {reason} Event: {reasons:?}"
        );
    }
    // And on the AutoscalingListener.
    assert!(api.with(|s| s.events.iter().any(|e| {
        e["reason"] == "ConflictLoopDetected" && e["regarding"]["kind"] == "AutoscalingListener"
    })));
    assert_eq!(dropped_at_shutdown(&shared), 0);
}

#[tokio::test]
async fn a_stalled_event_publisher_never_holds_the_exit() {
    let api = StandIn::start().await.unwrap();
    let (started, cancel) = following_a_lagging_stream(&api).await;
    let shared = started.shared.clone();
    // The API server takes Event writes but never answers them.
    api.with(|s| s.stall_events = true);
    let took = conflict_then_sigterm(&api, started, &cancel).await;
    assert!(took < Duration::from_secs(1), "shutdown took {took:?}");

    // The three decisions of the drain were dropped, and counted so.
    let dropped = dropped_at_shutdown(&shared);
    assert!(dropped >= 3, "dropped {dropped}");
    let reasons = api.with(|s| pod_event_reasons(s));
    assert!(
        !reasons.iter().any(|r| r == "SessionConflict"),
        "{reasons:?}"
    );
    // The last Lease save was not held up by the Events.
    let h = api.with(|s| stored(s)).expect("a history in the Lease");
    assert_eq!(h.conflicts.len(), 3, "conflicts: {:?}", h.conflicts);
    assert!(h.loop_state.is_some());
}
