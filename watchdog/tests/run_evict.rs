//! Evicting the own pod: policy/v1 Eviction with a UID precondition; a
//! PodDisruptionBudget's 429 is retried with backoff, a bounded number of
//! times; dry-run asks the API server and never evicts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod run_support;

use std::time::{Duration, Instant};

use arc_watchdog::run::evict::{EvictOutcome, EvictRetry, evict_pod};
use run_support::*;
use tokio_util::sync::CancellationToken;

fn retry(attempts: u32) -> EvictRetry {
    EvictRetry {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(200),
        attempts,
    }
}

/// Evicts the stand-in's pod (UID precondition), with `attempts` tries.
async fn evict(api: &StandIn, dry_run: bool, attempts: u32) -> EvictOutcome {
    evict_pod(
        &api.client().unwrap(),
        NS,
        POD,
        Some(POD_UID),
        dry_run,
        &retry(attempts),
        &CancellationToken::new(),
    )
    .await
}

#[tokio::test]
async fn a_429_is_retried_then_succeeds() {
    let api = StandIn::start().await.unwrap();
    api.with(|s| s.evict_429 = 2);
    let started = Instant::now();
    let out = evict(&api, false, 5).await;
    assert_eq!(out, EvictOutcome::Evicted { attempts: 3 });
    // Two backoffs: 50 ms + 100 ms.
    assert!(started.elapsed() >= Duration::from_millis(150));
    let posts = api.requests("POST", "/eviction");
    assert_eq!(posts.len(), 3);
    let body = posts[2].body.clone().unwrap();
    assert_eq!(body["apiVersion"], "policy/v1");
    assert_eq!(body["kind"], "Eviction");
    assert_eq!(body["metadata"]["name"], POD);
    assert_eq!(body["deleteOptions"]["preconditions"]["uid"], POD_UID);
    assert!(!posts[2].query.contains("dryRun"));
    assert_eq!(api.with(|s| s.evictions.len()), 1);
}

#[tokio::test]
async fn a_lasting_429_gives_up_after_the_bound() {
    let api = StandIn::start().await.unwrap();
    api.with(|s| s.evict_429 = 100);
    let out = evict(&api, false, 4).await;
    match out {
        EvictOutcome::Blocked { attempts, last } => {
            assert_eq!(attempts, 4);
            assert!(last.starts_with("429"), "{last}");
        }
        other => panic!("expected Blocked, got {other:?}"),
    }
    assert_eq!(api.requests("POST", "/eviction").len(), 4);
    assert_eq!(api.with(|s| s.evictions.len()), 0);
}

#[tokio::test]
async fn dry_run_never_evicts_and_forbidden_is_reported() {
    let api = StandIn::start().await.unwrap();
    let out = evict(&api, true, 3).await;
    assert_eq!(out, EvictOutcome::DryRunAccepted);
    assert!(
        api.requests("POST", "/eviction")[0]
            .query
            .contains("dryRun=All")
    );
    assert_eq!(api.with(|s| s.evictions.len()), 0);

    api.with(|s| s.fail_all = Some(403));
    let out = evict(&api, false, 3).await;
    assert!(
        matches!(out, EvictOutcome::Forbidden(ref m) if m.starts_with("403")),
        "{out:?}"
    );
    // Not retried: RBAC does not change by waiting.
    assert_eq!(api.requests("POST", "/eviction").len(), 2);
}

#[tokio::test]
async fn cancel_stops_the_retries() {
    let api = StandIn::start().await.unwrap();
    api.with(|s| s.evict_429 = 100);
    let cancel = CancellationToken::new();
    let slow = EvictRetry {
        initial: Duration::from_secs(30),
        max: Duration::from_secs(30),
        attempts: 5,
    };
    let c = cancel.clone();
    let client = api.client().unwrap();
    let uid = Some(POD_UID);
    let task =
        tokio::spawn(async move { evict_pod(&client, NS, POD, uid, false, &slow, &c).await });
    // The first attempt meets the budget's 429; the retry would come 30 s
    // later.
    api.wait_for("the first eviction attempt", |s| {
        s.requests.iter().any(|r| r.path.ends_with("/eviction"))
    })
    .await;
    cancel.cancel();
    let out = tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("the 30 s wait for the retry was not cut short by cancel")
        .unwrap();
    assert_eq!(out, EvictOutcome::Cancelled);
    assert_eq!(
        api.requests("POST", "/eviction").len(),
        1,
        "retried after cancel"
    );
}
