//! The history in the Lease is loaded before it is ever written, even when
//! only reading the Lease fails for longer than the fail-open grace: the
//! watchdog then decides from what it sees, and once the Lease is read it
//! saves the merge of the stored history and what it saw at once (never
//! what it saw alone, and never later than that). When the stored history
//! and what was seen make a loop together, the loop starts right after
//! that load, not at the next conflict.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod run_support;

use std::time::Duration;

use arc_watchdog::detector::{Cause, FailedStart, History};
use arc_watchdog::run::lease::HISTORY_ANNOTATION;
use arc_watchdog::run::{Started, start};
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

fn lease_path() -> String {
    format!("/leases/arc-watchdog-{POD}")
}

/// Starts the watchdog (grace 1 s) while reading the Lease fails with 503;
/// the listener meets a conflict. Returns once the watchdog has decided
/// from what it saw (the grace passed), with the Lease still unreadable.
async fn conflict_seen_while_the_lease_is_unreadable(
    api: &FakeApi,
) -> (Started, CancellationToken) {
    api.with(|s| {
        s.lease_get_fail = Some(503);
        s.log = vec![(Timestamp::now(), CONFLICT.to_owned())];
    });
    api.set_pod(pod_json(
        Some("containerd://c1"),
        running(&Timestamp::now().to_string()),
        0,
    ));
    let cancel = CancellationToken::new();
    let started = start(run_args("1s", &[]), Ok(api.client()), cancel.clone())
        .await
        .unwrap();
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

async fn stop(started: Started, cancel: CancellationToken) {
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(2), started.task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_lease_read_after_the_grace_gets_what_was_seen_at_once() {
    let api = FakeApi::start().await;
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
        evictions: vec![now - SignedDuration::from_secs(90)],
        ..History::default()
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
    let api = FakeApi::start().await;
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
    let (started, cancel) = conflict_seen_while_the_lease_is_unreadable(&api).await;
    let conflict_at = api.with(|s| s.log[0].0);
    // Events on the pod (each has a twin on the AutoscalingListener).
    let reasons = |s: &FakeState, r: &str| {
        s.events
            .iter()
            .filter(|e| e["reason"] == r && e["regarding"]["kind"] == "Pod")
            .count()
    };
    // Seen alone, the third conflict is one conflict: no loop yet.
    assert_eq!(api.with(|s| reasons(s, "ConflictLoopDetected")), 0);
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
        reasons(s, "ConflictLoopDetected") >= 1 && reasons(s, "ListenerStartDelayed") >= 1
    })
    .await;
    // The start gate holds the next start until the backoff ends.
    let (code, body) = http_get(started.addr, "/startz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("backoff"), "{body}");
    stop(started, cancel).await;
    api.with(|s| {
        assert_eq!(
            reasons(s, "SessionConflict"),
            1,
            "a conflict reported twice"
        );
        assert_eq!(reasons(s, "ConflictLoopDetected"), 1);
        assert_eq!(reasons(s, "ListenerStartDelayed"), 1);
    });
}
