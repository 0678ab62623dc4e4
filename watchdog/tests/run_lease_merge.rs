//! A save that meets another writer (the previous pod generation's
//! watchdog saving late) stores the merge of both histories; when that
//! merge holds a loop that neither side had, the loop starts at once (not
//! at the next conflict), and nothing is reported twice.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod run_support;

use std::time::Duration;

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
async fn a_merge_with_another_writer_starts_the_loop_it_holds() {
    let api = FakeApi::start().await;
    api.set_lease(None);
    let now = Timestamp::now();
    api.with(|s| s.log = vec![(now, CONFLICT.to_owned())]);
    api.set_pod(pod_json(
        Some("containerd://c1"),
        running(&now.to_string()),
        0,
    ));
    let cancel = CancellationToken::new();
    let started = start(run_args("20s", &[]), Ok(api.client()), cancel.clone())
        .await
        .unwrap();
    api.wait_for("c1's conflict in the Lease", |s| {
        stored(s).is_some_and(|h| h.conflicts.len() == 1)
    })
    .await;
    let ours = api.with(|s| stored(s)).unwrap();

    // The previous generation's watchdog stores its history (two earlier
    // conflicts, on top of what it had read) just before our next save.
    let earlier: Vec<Timestamp> = [120, 60]
        .iter()
        .map(|s| now - SignedDuration::from_secs(*s))
        .collect();
    let theirs = History {
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
    api.with(|s| {
        s.lease_races = 1;
        s.concurrent_history = Some(theirs.to_json());
        s.log_done = true;
    });
    // c1 exits (the pod is done): a change saved at once, which meets them.
    let mut pod = pod_json(
        Some("containerd://c1"),
        terminated(1, &Timestamp::now().to_string()),
        0,
    );
    pod["status"]["phase"] = "Failed".into();
    api.set_pod(pod);
    api.wait_for("the loop in the Lease", |s| {
        stored(s).is_some_and(|h| h.loop_state.is_some())
    })
    .await;
    let h = api.with(|s| stored(s)).unwrap();
    assert_eq!(h.conflicts.len(), 3, "{h:?}");
    let l = h.loop_state.unwrap();
    assert_eq!(l.since, ours.conflicts[0], "{l:?}");
    assert!(l.conflict_loop, "{l:?}");
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(2), started.task)
        .await
        .unwrap()
        .unwrap();
    // Events on the pod (each has a twin on the AutoscalingListener).
    let reasons = |s: &FakeState, r: &str| {
        s.events
            .iter()
            .filter(|e| e["reason"] == r && e["regarding"]["kind"] == "Pod")
            .count()
    };
    api.with(|s| {
        assert_eq!(reasons(s, "SessionConflict"), 1);
        assert_eq!(reasons(s, "ConflictLoopDetected"), 1);
        assert_eq!(reasons(s, "ListenerStartDelayed"), 1);
        assert_eq!(s.evictions.len(), 0);
    });
}
