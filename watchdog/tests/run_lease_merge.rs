//! A save that meets another writer (the previous pod generation's
//! watchdog saving late) stores the merge of both histories; when that
//! merge holds a loop that neither side had, the loop starts at once (not
//! at the next conflict), and nothing is reported twice.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod run_support;

use jiff::Timestamp;
use run_support::*;

#[tokio::test]
async fn a_merge_with_another_writer_starts_the_loop_it_holds() {
    let api = StandIn::start().await.unwrap();
    api.set_lease(None);
    let now = Timestamp::now();
    api.with(|s| s.log = vec![(now, CONFLICT.to_owned())]);
    api.set_pod(c1_running(now));
    let (started, cancel) = start_watchdog(&api, "20s", &[]).await;
    api.wait_for("c1's conflict in the Lease", |s| {
        stored(s).is_some_and(|h| h.conflicts.len() == 1)
    })
    .await;
    let ours = api.with(|s| stored(s)).unwrap();

    // The previous generation's watchdog stores its history (two earlier
    // conflicts, on top of what it had read) just before our next save.
    let theirs = two_earlier_conflicts(now);
    api.with(|s| {
        s.lease_races = 1;
        s.concurrent_history = Some(theirs.to_json());
        s.log_done = true;
    });
    // c1 exits (the pod is done): a change saved at once, which meets them.
    let mut pod = c1_exited(Timestamp::now());
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
    stop(started, cancel).await;
    // Events on the pod (each has a twin on the AutoscalingListener).
    api.with(|s| {
        assert_eq!(pod_events(s, "SessionConflict"), 1);
        assert_eq!(pod_events(s, "ConflictLoopDetected"), 1);
        assert_eq!(pod_events(s, "ListenerStartDelayed"), 1);
        assert_eq!(s.evictions.len(), 0);
    });
}
