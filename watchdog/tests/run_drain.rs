//! Shutdown drain: with restartPolicy Never the kubelet stops the sidecar
//! milliseconds after the listener exits, before a lagging follow stream
//! has delivered the listener's last lines. On shutdown the watchdog reads
//! the log once more (without follow) and the listener's end, so the
//! conflict and the failed start reach the Lease, and the next pod
//! generation sees the loop.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod run_support;

use std::time::{Duration, Instant};

use arc_watchdog::detector::{Cause, FailedStart, History};
use arc_watchdog::run::lease::HISTORY_ANNOTATION;
use arc_watchdog::run::start;
use jiff::{SignedDuration, Timestamp};
use run_support::*;
use tokio_util::sync::CancellationToken;

const CONFLICT: &str = "2026/03/02 04:10:02 Application returned an error: createSession failed: failed to create session: actions error: StatusCode 409, AcivityId \"3f5c9a2e\": GitHub.Actions.Runtime.WebApi.RunnerScaleSetSessionConflictException, GitHub.Actions.Runtime.WebApi: The actions runner scaleset arc-runner-set already has an active session.";

fn stored(s: &FakeState) -> Option<History> {
    s.lease
        .as_ref()
        .and_then(|l| l["metadata"]["annotations"][HISTORY_ANNOTATION].as_str())
        .and_then(|h| History::from_json(h).ok())
}

#[tokio::test]
async fn sigterm_right_after_the_listener_exits_still_saves_its_conflict() {
    let api = FakeApi::start().await;
    // Two earlier pod generations met a conflict each.
    let now = Timestamp::now();
    let earlier: Vec<Timestamp> = [120, 60]
        .iter()
        .map(|s| now - SignedDuration::from_secs(*s))
        .collect();
    let seed = History {
        conflicts: earlier.clone(),
        failed_starts: earlier
            .iter()
            .map(|at| FailedStart {
                at: *at,
                cause: Cause::SessionConflict,
            })
            .collect(),
        ..History::default()
    };
    api.set_lease(Some(&seed.to_json()));
    // The follow stream lags: it delivers nothing.
    api.with(|s| s.stall_follow = true);
    let started_at = Timestamp::now();
    api.set_pod(pod_json(
        Some("containerd://c1"),
        running(&started_at.to_string()),
        0,
    ));
    let cancel = CancellationToken::new();
    let started = start(run_args("20s", &[]), Ok(api.client()), cancel.clone())
        .await
        .unwrap();
    api.wait_for("the new run in the Lease", |s| {
        stored(s).is_some_and(|h| h.run.is_some_and(|r| r.id == "containerd://c1"))
    })
    .await;
    api.wait_for("the follow stream to be opened", |s| {
        s.requests
            .iter()
            .any(|r| r.path.ends_with("/log") && r.query.contains("follow=true"))
    })
    .await;

    // The listener meets the conflict and exits; SIGTERM follows at once.
    api.with(|s| {
        s.log.push((Timestamp::now(), CONFLICT.to_owned()));
        s.log_done = true;
    });
    api.set_pod(pod_json(
        Some("containerd://c1"),
        terminated(1, &Timestamp::now().to_string()),
        0,
    ));
    let t0 = Instant::now();
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(2), started.task)
        .await
        .expect("shutdown hung")
        .unwrap();
    let took = t0.elapsed();
    eprintln!("shutdown took {took:?}");
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
