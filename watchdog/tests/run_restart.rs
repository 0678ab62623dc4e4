//! A listener that restarts in place (`restartPolicy: Always`): the earlier
//! run's log follower stops when the new run starts, and a line the earlier
//! run wrote, delivered late, is never counted for the new run (a late
//! "session established" would end the new run's conflict streak).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod run_support;

use std::time::Duration;

use arc_watchdog::detector::History;
use arc_watchdog::run::lease::HISTORY_ANNOTATION;
use arc_watchdog::run::start;
use jiff::{SignedDuration, Timestamp};
use run_support::*;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const CONFLICT: &str = "2026/03/02 04:10:02 Application returned an error: createSession failed: failed to create session: actions error: StatusCode 409, AcivityId \"3f5c9a2e\": GitHub.Actions.Runtime.WebApi.RunnerScaleSetSessionConflictException, GitHub.Actions.Runtime.WebApi: The actions runner scaleset arc-runner-set already has an active session.";
const ESTABLISHED: &str = "2026-03-02T05:00:02Z\tINFO\tlistener-app.listener\tGetting next message\t{\"lastMessageID\": 0}";

fn stored(s: &FakeState) -> Option<History> {
    s.lease
        .as_ref()
        .and_then(|l| l["metadata"]["annotations"][HISTORY_ANNOTATION].as_str())
        .and_then(|h| History::from_json(h).ok())
}

#[tokio::test]
async fn a_late_line_of_the_earlier_run_is_not_counted_for_the_new_run() {
    let api = FakeApi::start().await;
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
    api.set_pod(pod_json(
        Some("containerd://c1"),
        running(&now.to_string()),
        0,
    ));
    let cancel = CancellationToken::new();
    let started = start(run_args("20s", &[]), Ok(api.client()), cancel.clone())
        .await
        .unwrap();
    api.wait_for("run c1 in the Lease", |s| {
        stored(s).is_some_and(|h| h.run.is_some_and(|r| r.id == "containerd://c1"))
    })
    .await;
    api.wait_for("c1's log followed", |s| {
        s.requests
            .iter()
            .any(|r| r.path.ends_with("/log") && r.query.contains("follow=true"))
    })
    .await;

    // c1 exits and restarts in place as c2. Streams opened from now on get
    // c2's log only.
    let restart = Timestamp::now();
    api.with(|s| s.log_floor = Some(restart));
    let mut pod = pod_json(Some("containerd://c2"), running(&restart.to_string()), 1);
    pod["status"]["containerStatuses"][0]["lastState"] = json!({"terminated": {
        "exitCode": 1, "reason": "Error", "finishedAt": restart.to_string(),
        "containerID": "containerd://c1"}});
    api.set_pod(pod);
    api.wait_for("run c2 in the Lease", |s| {
        stored(s).is_some_and(|h| h.run.is_some_and(|r| r.id == "containerd://c2"))
    })
    .await;

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

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(2), started.task)
        .await
        .unwrap()
        .unwrap();
}
