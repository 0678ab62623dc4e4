//! Lease saves are coalesced: a busy listener's session-established lines
//! (bookkeeping only) cause a bounded number of Lease updates, while a
//! change another pod generation acts on (a session conflict) is saved at
//! once, and a coalesced change is saved on shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod run_support;

use std::time::{Duration, Instant};

use arc_watchdog::run::lease::BOOKKEEPING_SAVE_INTERVAL;
use arc_watchdog::settings::format_duration;
use jiff::Timestamp;
use run_support::*;

/// How long the listener floods its log, and how fast.
const FLOOD: Duration = Duration::from_secs(3);
const LINE_EVERY: Duration = Duration::from_millis(5);
/// The bookkeeping interval of the flood test: short, so that the test
/// sees a coalesced save (the default is minutes).
const INTERVAL: Duration = Duration::from_secs(10);

fn lease_updates(api: &StandIn) -> usize {
    api.requests("PUT", &format!("/leases/arc-watchdog.{POD}"))
        .len()
}

/// A stand-in API server whose running listener has logged that its
/// session is established, and no Lease yet.
async fn established_listener() -> StandIn {
    let api = StandIn::start().await.unwrap();
    api.set_lease(None);
    api.set_pod(pod_json(
        Some("containerd://c1"),
        running("2026-11-28T10:00:00Z"),
        0,
    ));
    api.with(|s| s.log = vec![(Timestamp::now(), ESTABLISHED.to_owned())]);
    api
}

#[tokio::test]
async fn established_lines_coalesce_lease_saves_but_a_conflict_is_saved_at_once() {
    // The test window must be shorter than the interval, or one periodic
    // save more would be allowed.
    assert!(FLOOD < INTERVAL);
    let interval = format!("--bookkeeping-save-interval={}", format_duration(INTERVAL));
    let api = established_listener().await;
    let (started, cancel) = start_watchdog(&api, "20s", &[&interval]).await;
    // The run got its session: that much is saved at once.
    api.wait_for("the established run in the Lease", |s| {
        stored(s).is_some_and(|h| {
            h.run
                .is_some_and(|r| r.id == "containerd://c1" && r.established)
        })
    })
    .await;

    // A busy listener: ~200 session-established lines a second.
    let before = lease_updates(&api);
    let t0 = Instant::now();
    let mut lines = 0u32;
    let mut last = Timestamp::now();
    while t0.elapsed() < FLOOD {
        lines += 1;
        last = Timestamp::now();
        api.with(|s| {
            s.log.push((
                last,
                format!("2026-03-02T05:00:02Z\tINFO\tlistener-app.listener\tGetting next message\t{{\"lastMessageID\": {lines}}}"),
            ))
        });
        tokio::time::sleep(LINE_EVERY).await;
    }
    let during = lease_updates(&api) - before;
    eprintln!("{lines} established lines in {FLOOD:?}: {during} Lease updates");
    assert!(lines > 300, "only {lines} lines fed");
    assert!(
        during <= 3,
        "{during} Lease updates for {lines} bookkeeping-only lines"
    );
    // Coalesced, not lost: the interval's save holds the flood's last line
    // (the run's high water mark), so every line was read and counted.
    api.wait_for("the flood's last line in the Lease", |s| {
        stored(s)
            .and_then(|h| h.run)
            .is_some_and(|r| r.high_water == Some(last))
    })
    .await;
    let through = lease_updates(&api) - before;
    assert!(
        through <= during + 1,
        "{through} Lease updates until the flood was saved, {during} during it"
    );

    // The listener restarts in place; the new run meets a session
    // conflict: saved at once, not after the interval. First the old run's
    // stream ends, and its follower reconnects (after its backoff): every
    // line of the old run has been handed on by then, so none is taken for
    // the new run's.
    let log_requests = |s: &StandInState| {
        s.requests
            .iter()
            .filter(|r| r.path.ends_with("/log"))
            .count()
    };
    let opened = api.with(|s| log_requests(s));
    api.with(|s| s.log_done = true);
    api.wait_for("the old run's follower to reconnect", |s| {
        log_requests(s) > opened
    })
    .await;
    let restart = Timestamp::now();
    api.with(|s| {
        s.log_done = false;
        s.log_floor = Some(restart);
    });
    api.set_pod(pod_json(
        Some("containerd://c2"),
        running(&restart.to_string()),
        1,
    ));
    api.wait_for_run("containerd://c2").await;
    let t1 = Instant::now();
    api.with(|s| s.log.push((Timestamp::now(), CONFLICT.to_owned())));
    api.wait_for("the conflict in the Lease", |s| {
        stored(s).is_some_and(|h| h.conflicts.len() == 1)
    })
    .await;
    let took = t1.elapsed();
    eprintln!("conflict saved {took:?} after its line");
    assert!(
        took < Duration::from_secs(2),
        "the conflict waited {took:?} to be saved"
    );

    // More routine lines (bookkeeping only) right before the shutdown:
    // they wait for the interval, so only the shutdown saves them.
    let at_conflict = api.with(|s| stored(s).and_then(|h| h.run).and_then(|r| r.high_water));
    let t2 = Instant::now();
    let mut routine = 0u32;
    while t2.elapsed() < Duration::from_millis(500) {
        routine += 1;
        api.with(|s| {
            s.log.push((
                Timestamp::now(),
                format!("2026-03-02T05:00:03Z\tINFO\tlistener-app.listener\troutine {routine}"),
            ))
        });
        tokio::time::sleep(LINE_EVERY).await;
    }
    let updates_before_stop = lease_updates(&api);
    let t3 = Instant::now();
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(1), started.task)
        .await
        .unwrap()
        .unwrap();
    eprintln!("stopped in {:?}", t3.elapsed());
    let at_stop = api.with(|s| stored(s).and_then(|h| h.run).and_then(|r| r.high_water));
    assert!(
        at_stop > at_conflict,
        "the routine lines were not saved on shutdown: {at_stop:?} vs {at_conflict:?}"
    );
    assert_eq!(
        lease_updates(&api),
        updates_before_stop + 1,
        "one save on shutdown"
    );
}

/// With the default interval, an idle listener that logs its poll lines
/// (bookkeeping only) has its Lease written not at all after its session
/// is saved: at most once per [`BOOKKEEPING_SAVE_INTERVAL`] (minutes).
#[tokio::test]
async fn an_idle_listeners_poll_lines_leave_the_lease_alone() {
    assert!(BOOKKEEPING_SAVE_INTERVAL >= Duration::from_secs(600));
    assert_eq!(
        run_args("20s", &[]).bookkeeping_save_interval,
        BOOKKEEPING_SAVE_INTERVAL,
        "the flag's default"
    );
    let api = established_listener().await;
    let (started, cancel) = start_watchdog(&api, "20s", &[]).await;
    api.wait_for("the established run in the Lease", |s| {
        stored(s).is_some_and(|h| h.run.is_some_and(|r| r.established))
    })
    .await;
    let before = lease_updates(&api);
    let first = Timestamp::now();
    for n in 1..=30u32 {
        let last = Timestamp::now();
        api.with(|s| {
            s.log.push((
                last,
                format!("2026-03-02T05:00:02Z\tINFO\tlistener-app.listener\tGetting next message\t{{\"lastMessageID\": {n}}}"),
            ))
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        lease_updates(&api),
        before,
        "Lease writes for 3 s of poll lines"
    );
    // Not lost: a graceful stop saves what waited.
    stop(started, cancel).await;
    assert_eq!(lease_updates(&api), before + 1, "one save on shutdown");
    let at_stop = api.with(|s| stored(s).and_then(|h| h.run).and_then(|r| r.high_water));
    assert!(
        at_stop.is_some_and(|t| t >= first),
        "the poll lines were not saved on shutdown: {at_stop:?}"
    );
}
