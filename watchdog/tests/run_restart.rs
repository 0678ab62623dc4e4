//! A listener that restarts in place (`restartPolicy: Always`): the earlier
//! run's log follower stops when the new run starts, and a line the earlier
//! run wrote, delivered late, is never counted for the new run (a late
//! "session established" would end the new run's conflict streak).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod run_support;

use arc_watchdog::detector::History;
use jiff::{SignedDuration, Timestamp};
use run_support::*;
use serde_json::json;

#[tokio::test]
async fn a_late_line_of_the_earlier_run_is_not_counted_for_the_new_run() {
    let api = StandIn::start().await.unwrap();
    // Two earlier runs met a session conflict each.
    let now = Timestamp::now();
    let seed = History {
        conflicts: vec![
            now - SignedDuration::from_secs(120),
            now - SignedDuration::from_secs(60),
        ],
        ..History::default()
    };
    api.set_lease(Some(&seed.to_json()));
    let mut c1 = c1_running(now);
    c1["spec"]["restartPolicy"] = json!("Always");
    api.set_pod(c1);
    let (started, cancel) = start_watchdog(&api, "20s", &[]).await;
    api.wait_for_run("containerd://c1").await;
    api.wait_for_follow().await;

    // c1 exits and restarts in place as c2. Streams opened from now on get
    // c2's log only.
    let restart = Timestamp::now();
    api.with(|s| s.log_floor = Some(restart));
    let mut pod = pod_json(Some("containerd://c2"), running(&restart.to_string()), 1);
    pod["spec"]["restartPolicy"] = json!("Always");
    pod["status"]["containerStatuses"][0]["lastState"] = json!({"terminated": {
        "exitCode": 1, "reason": "Error", "finishedAt": restart.to_string(),
        "containerID": "containerd://c1"}});
    api.set_pod(pod);
    api.wait_for_run("containerd://c2").await;

    // A line c1 wrote before its exit comes late (on c1's still open
    // stream, had it not been stopped); then c2 meets a conflict.
    let late = restart - SignedDuration::from_millis(500);
    let conflict_at = Timestamp::now();
    api.with(|s| {
        s.log.push((late, ESTABLISHED.to_owned()));
        s.log.push((conflict_at, CONFLICT.to_owned()));
    });
    api.wait_for("c2's conflict in the Lease", |s| {
        stored(s).is_some_and(|h| {
            h.run
                .is_some_and(|r| r.id == "containerd://c2" && r.high_water == Some(conflict_at))
        })
    })
    .await;
    let h = api.with(|s| stored(s)).unwrap();
    assert_eq!(
        h.last_established, None,
        "c1's late line was taken for c2's session: {h:?}"
    );
    assert_eq!(h.conflicts.len(), 3, "{h:?}");
    assert!(
        h.loop_state.is_some(),
        "the third conflict starts the loop: {h:?}"
    );

    stop(started, cancel).await;
}
