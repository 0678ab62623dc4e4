//! The history belongs to one AutoscalingListener. A Lease that does not
//! exist yet when the watchdog starts (the webhook's controller creates it
//! a moment after the listener) is read again until it does, and then
//! carries what was seen; a Lease still owned by an earlier listener of the
//! same name (a scale set deleted and created again) is neither used nor
//! written until it is this listener's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod run_support;

use jiff::Timestamp;
use run_support::*;
use serde_json::json;

fn lease_path() -> String {
    format!("/leases/arc-watchdog.{POD}")
}

/// Makes the Lease owned by the AutoscalingListener with `uid`.
fn own_lease(api: &StandIn, uid: &str) {
    api.with(|s| {
        let lease = s.lease.as_mut().unwrap();
        lease["metadata"]["ownerReferences"] = json!([{
            "apiVersion": "actions.github.com/v1alpha1", "kind": "AutoscalingListener",
            "name": POD, "uid": uid,
        }]);
    });
}

#[tokio::test]
async fn a_lease_created_after_the_watchdog_started_gets_its_history() {
    let api = StandIn::start().await.unwrap();
    // No Lease yet: GET answers 404.
    api.with(|s| {
        s.lease = None;
        s.log = vec![(Timestamp::now(), CONFLICT.to_owned())];
    });
    api.set_pod(c1_running(Timestamp::now()));
    let (started, cancel) = start_watchdog(&api, "1s", &[]).await;
    api.wait_for("the SessionConflict Event", |s| {
        s.events.iter().any(|e| e["reason"] == "SessionConflict")
    })
    .await;
    // The controller creates it now: the conflict seen meanwhile lands in it.
    api.set_lease(None);
    api.wait_for("the conflict in the Lease", |s| {
        stored(s).is_some_and(|h| h.conflicts.len() == 1)
    })
    .await;
    stop(started, cancel).await;
}

#[tokio::test]
async fn a_lease_of_an_earlier_listener_is_neither_used_nor_written() {
    let api = StandIn::start().await.unwrap();
    let now = Timestamp::now();
    // Two conflicts of the old scale set: with one more they would make a
    // loop, and close the new listener's start gate.
    api.set_lease(Some(&two_earlier_conflicts(now).to_json()));
    own_lease(&api, "uid-old");
    api.with(|s| s.log = vec![(Timestamp::now(), CONFLICT.to_owned())]);
    api.set_pod(c1_running(Timestamp::now()));
    let (started, cancel) = start_watchdog(&api, "1s", &["--listener-uid=uid-new"]).await;
    api.wait_for("the SessionConflict Event", |s| {
        s.events.iter().any(|e| e["reason"] == "SessionConflict")
    })
    .await;
    api.wait_for("the Lease read again", |s| {
        s.requests
            .iter()
            .filter(|r| r.method == "GET" && r.path.ends_with(&lease_path()))
            .count()
            >= 2
    })
    .await;
    assert!(
        api.requests("PUT", &lease_path()).is_empty(),
        "the old listener's Lease was written"
    );
    assert_eq!(
        api.with(|s| pod_events(s, "ConflictLoopDetected")),
        0,
        "the old listener's conflicts were counted"
    );
    // The controller starts the Lease over for the new listener.
    api.set_lease(None);
    own_lease(&api, "uid-new");
    api.wait_for("this listener's one conflict in its Lease", |s| {
        stored(s).is_some_and(|h| h.conflicts.len() == 1)
    })
    .await;
    stop(started, cancel).await;
}
