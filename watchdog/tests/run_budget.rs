//! Only evictions the API server accepted count against
//! `--eviction-budget`, in memory and in the Lease. With `restartPolicy:
//! Always` a listener's end decides an eviction that is moot once the
//! kubelet has restarted it in place; an eviction the API server fails is
//! not one either. Neither may use up the budget. (The crash-loop
//! threshold is raised so that the three short runs do not start a backoff.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod run_support;

use std::time::Duration;

use jiff::Timestamp;
use run_support::*;

#[tokio::test]
async fn evictions_the_api_did_not_accept_do_not_use_up_the_budget() {
    let api = StandIn::start().await.unwrap();
    api.set_lease(None);
    // Streams close at once (the listener writes nothing here).
    api.with(|s| s.log_done = true);
    api.set_pod(c1_running(Timestamp::now()));
    let (started, cancel) = start_watchdog(
        &api,
        "20s",
        &["--eviction-budget=2", "--conflict-threshold=5"],
    )
    .await;
    let metrics = started.shared.metrics.clone();
    api.wait_for_run("containerd://c1").await;

    // 1. c1 exits and the kubelet restarts it in place at once: the
    // eviction its end decided is moot (the fresh look sees c2 running).
    api.set_pod(restarted(
        "containerd://c2",
        running(&Timestamp::now().to_string()),
        1,
        "containerd://c1",
    ));
    poll_until("a moot eviction", || not_accepted(&metrics, "moot") >= 1).await;

    // 2. c2 exits and stays down; the eviction meets an API server error.
    api.with(|s| s.evict_fail = Some(500));
    api.set_pod(restarted(
        "containerd://c2",
        terminated(1, &Timestamp::now().to_string()),
        1,
        "containerd://c1",
    ));
    poll_until("a failed eviction", || {
        not_accepted(&metrics, "failed") >= 1
    })
    .await;
    assert_eq!(api.requests("POST", "/eviction").len(), 1);

    // 3. Restarted in place, c3 exits and stays down: two evictions were
    // decided before, none accepted, so the budget of 2 allows this one.
    api.with(|s| s.evict_fail = None);
    api.set_pod(restarted(
        "containerd://c3",
        running(&Timestamp::now().to_string()),
        2,
        "containerd://c2",
    ));
    api.set_pod(restarted(
        "containerd://c3",
        terminated(1, &Timestamp::now().to_string()),
        2,
        "containerd://c2",
    ));
    api.wait_for("an accepted eviction", |s| !s.evictions.is_empty())
        .await;
    api.wait_for("the accepted eviction in the Lease", |s| {
        stored(s).is_some_and(|h| h.evictions.len() == 1)
    })
    .await;
    assert!(
        !api.with(|s| s
            .events
            .iter()
            .any(|e| e["reason"] == "EvictionBudgetExhausted")),
        "the budget was spent by evictions that never happened"
    );

    // The Lease never held an eviction before one was accepted.
    let puts = api.requests("PUT", &format!("/leases/arc-watchdog.{POD}"));
    let first_with_eviction = puts
        .iter()
        .position(|p| {
            p.body
                .as_ref()
                .and_then(history)
                .is_some_and(|h| !h.evictions.is_empty())
        })
        .expect("a save with the eviction");
    let all = api.with(|s| s.requests.clone());
    let accepted_at = all
        .iter()
        .rposition(|r| r.method == "POST" && r.path.ends_with("/eviction"))
        .unwrap();
    let put_at = all
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            r.method == "PUT" && r.path.ends_with(&format!("/leases/arc-watchdog.{POD}"))
        })
        .nth(first_with_eviction)
        .map(|(i, _)| i)
        .unwrap();
    assert!(
        put_at > accepted_at,
        "the Lease held an eviction before the API server accepted one"
    );

    stop(started, cancel).await;
}

/// The API server accepts an eviction, and its effect (the kubelet's
/// SIGTERM) comes before its answer: the eviction is still answered and
/// counted in the last save, so the next pod generation sees it.
#[tokio::test]
async fn an_eviction_answered_after_sigterm_is_counted_in_the_last_save() {
    let api = StandIn::start().await.unwrap();
    api.set_lease(None);
    api.with(|s| {
        s.log_done = true;
        s.evict_hold = true;
    });
    api.set_pod(c1_running(Timestamp::now()));
    let (started, cancel) = start_watchdog(&api, "20s", &[]).await;
    api.wait_for_run("containerd://c1").await;
    // The listener dies while its pod lives on: evict at once.
    api.set_pod(c1_exited(Timestamp::now()));
    api.wait_for("the eviction on its way", |s| {
        s.requests
            .iter()
            .any(|r| r.method == "POST" && r.path.ends_with("/eviction"))
    })
    .await;
    let t0 = std::time::Instant::now();
    cancel.cancel();
    api.with(|s| s.evict_hold = false);
    tokio::time::timeout(Duration::from_secs(2), started.task)
        .await
        .unwrap()
        .unwrap();
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(1), "shutdown took {took:?}");
    assert_eq!(api.with(|s| s.evictions.len()), 1);
    let h = api.with(|s| stored(s)).unwrap();
    assert_eq!(h.evictions.len(), 1, "{h:?}");
}
