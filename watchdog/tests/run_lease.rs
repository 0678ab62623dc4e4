//! The history in the Lease: loaded at start, saved with optimistic
//! concurrency; a 409 re-reads, merges and retries; a missing or forbidden
//! Lease is an outcome, not an error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod run_support;

use arc_watchdog::detector::History;
use arc_watchdog::run::lease::{ANNOTATION_HISTORY, LeaseLoad, LeaseSave, LeaseStore};
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use run_support::*;

fn store(api: &StandIn) -> LeaseStore {
    LeaseStore::new(
        Api::<Lease>::namespaced(api.client().unwrap(), NS),
        format!("arc-watchdog.{POD}"),
        POD.to_owned(),
    )
}

fn t(s: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + s).unwrap()
}

fn history(conflicts: &[i64]) -> History {
    History {
        conflicts: conflicts.iter().map(|s| t(*s)).collect(),
        ..History::default()
    }
}

#[tokio::test]
async fn a_409_is_re_read_merged_and_retried() {
    let api = StandIn::start().await.unwrap();
    api.set_lease(Some(&history(&[1]).to_json()));
    let mut store = store(&api);
    assert_eq!(
        store.load().await.unwrap(),
        LeaseLoad::Found(Some(Ok(history(&[1]))))
    );

    // Another writer (the previous pod generation) stores conflict 2 just
    // before our update, which adds conflict 3.
    api.with(|s| {
        s.lease_races = 1;
        s.concurrent_history = Some(history(&[1, 2]).to_json());
    });
    let out = store.save(&history(&[1, 3]), t(10)).await.unwrap();
    let LeaseSave::Saved { stored, conflicts } = out else {
        panic!("expected Saved, got {out:?}");
    };
    assert_eq!(conflicts, 1);
    let merged = stored.clone();
    assert_eq!(merged.conflicts, vec![t(1), t(2), t(3)]);

    let puts = api.requests("PUT", &format!("/leases/arc-watchdog.{POD}"));
    assert_eq!(puts.len(), 2);
    // The retry was conditional on the re-read resourceVersion.
    let lease = api.with(|s| s.lease.clone().unwrap());
    assert_eq!(
        lease["metadata"]["annotations"][ANNOTATION_HISTORY],
        stored.to_json()
    );
    assert_eq!(lease["spec"]["holderIdentity"], POD);
    assert!(lease["spec"]["renewTime"].is_string());
    assert_eq!(
        puts[1].body.as_ref().unwrap()["metadata"]["resourceVersion"],
        "2"
    );
}

#[tokio::test]
async fn endless_conflicts_are_bounded() {
    let api = StandIn::start().await.unwrap();
    api.set_lease(None);
    api.with(|s| s.lease_races = 1000);
    let mut store = store(&api);
    let err = store.save(&history(&[1]), t(10)).await.unwrap_err();
    assert!(err.to_string().contains("still conflicting"), "{err}");
    let puts = api.requests("PUT", &format!("/leases/arc-watchdog.{POD}"));
    assert_eq!(
        puts.len(),
        arc_watchdog::run::lease::MAX_CONFLICT_RETRIES + 1
    );
}

#[tokio::test]
async fn missing_and_forbidden_are_outcomes() {
    let api = StandIn::start().await.unwrap();
    let mut store = store(&api);
    assert_eq!(store.load().await.unwrap(), LeaseLoad::Missing);
    assert_eq!(
        store.save(&history(&[1]), t(1)).await.unwrap(),
        LeaseSave::Missing
    );
    api.with(|s| s.fail_all = Some(403));
    assert!(matches!(store.load().await.unwrap(), LeaseLoad::Forbidden(m) if m.starts_with("403")));
}
