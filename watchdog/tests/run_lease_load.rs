//! The history in the Lease is loaded before it is ever written, even when
//! only reading the Lease fails for longer than the fail-open grace: the
//! watchdog then decides from what it sees, and once the Lease is read it
//! saves the merge of the stored history and what it saw at once (never
//! what it saw alone, and never later than that). When the stored history
//! and what was seen make a loop together, the loop starts right after
//! that load, not at the next conflict.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod run_support;

use arc_watchdog::detector::History;
use arc_watchdog::run::Started;
use jiff::{SignedDuration, Timestamp};
use run_support::*;
use tokio_util::sync::CancellationToken;

fn lease_path() -> String {
    format!("/leases/arc-watchdog.{POD}")
}

/// Starts the watchdog (grace 1 s) while reading the Lease fails with 503;
/// the listener meets a conflict. Returns once the watchdog has decided
/// from what it saw (the grace passed), with the Lease still unreadable.
async fn conflict_seen_while_the_lease_is_unreadable(
    api: &StandIn,
) -> (Started, CancellationToken) {
    api.with(|s| {
        s.lease_get_fail = Some(503);
        s.log = vec![(Timestamp::now(), CONFLICT.to_owned())];
    });
    api.set_pod(c1_running(Timestamp::now()));
    let (started, cancel) = start_watchdog(api, "1s", &[]).await;
    // Decided after the grace, from what was seen: the Event says so.
    api.wait_for("the SessionConflict Event", |s| {
        s.events.iter().any(|e| e["reason"] == "SessionConflict")
    })
    .await;
    assert!(!api.requests("GET", &lease_path()).is_empty());
    assert!(
        api.requests("PUT", &lease_path()).is_empty(),
        "the Lease was written before it was read"
    );
    (started, cancel)
}

#[tokio::test]
async fn a_lease_read_after_the_grace_gets_what_was_seen_at_once() {
    let api = StandIn::start().await.unwrap();
    // The Lease exists and holds no history yet.
    api.set_lease(None);
    let (started, cancel) = conflict_seen_while_the_lease_is_unreadable(&api).await;
    api.with(|s| s.lease_get_fail = None);
    // Nothing more happens: the merge (here: what was seen) must be saved
    // because it differs from what is stored, not because of a later change.
    api.wait_for("the conflict in the Lease", |s| {
        stored(s).is_some_and(|h| {
            h.conflicts.len() == 1 && h.run.is_some_and(|r| r.id == "containerd://c1")
        })
    })
    .await;
    stop(started, cancel).await;
}

#[tokio::test]
async fn a_lease_read_after_the_grace_keeps_the_stored_history() {
    let api = StandIn::start().await.unwrap();
    // Two earlier pod generations met a conflict each.
    let now = Timestamp::now();
    let seed = History {
        evictions: vec![now - SignedDuration::from_secs(90)],
        ..two_earlier_conflicts(now)
    };
    api.set_lease(Some(&seed.to_json()));
    let (started, cancel) = conflict_seen_while_the_lease_is_unreadable(&api).await;
    api.with(|s| s.lease_get_fail = None);
    api.wait_for("the merged history in the Lease", |s| {
        stored(s).is_some_and(|h| h.conflicts.len() == 3)
    })
    .await;
    let h = api.with(|s| stored(s)).unwrap();
    assert_eq!(h.failed_starts.len(), 3, "{h:?}");
    assert_eq!(h.evictions, seed.evictions, "{h:?}");
    assert_eq!(h.run.map(|r| r.id).as_deref(), Some("containerd://c1"));
    stop(started, cancel).await;
}

/// Two earlier pod generations met a conflict each and stored them; this
/// one meets the third while its Lease cannot be read. Once it is read, the
/// merged history holds the loop: it starts at once (Events, the Lease,
/// the start gate), from the third conflict's time, as if the three had
/// been seen in order, and no conflict is reported twice.
#[tokio::test]
async fn a_lease_read_after_the_grace_starts_the_loop_the_merge_holds() {
    let api = StandIn::start().await.unwrap();
    let seed = two_earlier_conflicts(Timestamp::now());
    api.set_lease(Some(&seed.to_json()));
    let (started, cancel) = conflict_seen_while_the_lease_is_unreadable(&api).await;
    let conflict_at = api.with(|s| s.log[0].0);
    // Seen alone, the third conflict is one conflict: no loop yet.
    assert_eq!(api.with(|s| pod_events(s, "ConflictLoopDetected")), 0);
    let (code, body) = http_get(started.addr, "/startz").await;
    assert_eq!(code, 200, "failing open before the load: {body}");

    api.with(|s| s.lease_get_fail = None);
    api.wait_for("the loop in the Lease", |s| {
        stored(s).is_some_and(|h| h.loop_state.is_some())
    })
    .await;
    let h = api.with(|s| stored(s)).unwrap();
    let l = h.loop_state.unwrap();
    assert_eq!(h.conflicts.len(), 3, "{h:?}");
    assert!(l.conflict_loop, "{l:?}");
    // Counted when seen (never before the run's start): the loop began
    // then, and its first delay runs from then.
    assert!(h.conflicts[2] >= conflict_at, "{h:?}");
    assert_eq!(
        l.since, h.conflicts[2],
        "the loop began at the third conflict"
    );
    assert_eq!(
        l.not_before,
        l.since + SignedDuration::from_secs(30),
        "{l:?}"
    );
    api.wait_for("the loop's Events", |s| {
        pod_events(s, "ConflictLoopDetected") >= 1 && pod_events(s, "ListenerStartDelayed") >= 1
    })
    .await;
    // The start gate holds the next start until the backoff ends.
    let (code, body) = http_get(started.addr, "/startz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("backoff"), "{body}");
    stop(started, cancel).await;
    api.with(|s| {
        assert_eq!(
            pod_events(s, "SessionConflict"),
            1,
            "a conflict reported twice"
        );
        assert_eq!(pod_events(s, "ConflictLoopDetected"), 1);
        assert_eq!(pod_events(s, "ListenerStartDelayed"), 1);
    });
}
