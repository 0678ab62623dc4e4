//! `arc-watchdog doctor`: every check passes against an API that allows
//! what the sidecar needs, nothing is changed (writes are dry runs), and
//! missing RBAC fails every check with the API's answer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod run_support;

use arc_watchdog::run::Identity;
use arc_watchdog::run::doctor::{DoctorArgs, checks, format_report};
use jiff::Timestamp;
use run_support::*;

fn args() -> DoctorArgs {
    DoctorArgs {
        identity: Identity {
            pod_name: POD.to_owned(),
            pod_namespace: NS.to_owned(),
            pod_uid: Some(POD_UID.to_owned()),
            listener_uid: None,
        },
        listener_container: "listener".to_owned(),
        lease_name: None,
    }
}

#[tokio::test]
async fn all_checks_pass_and_nothing_changes() {
    let api = StandIn::start().await.unwrap();
    api.set_lease(None);
    api.set_pod(pod_json(
        Some("containerd://c1"),
        running("2026-11-28T10:00:00Z"),
        0,
    ));
    api.with(|s| {
        s.log = vec![(Timestamp::now(), "Getting next message".to_owned())];
        s.log_done = true;
    });
    let lease_before = api.with(|s| s.lease.clone());
    let results = checks(&api.client().unwrap(), &args()).await;
    let report = format_report(&results);
    assert!(results.iter().all(|c| c.ok), "{report}");
    assert_eq!(results.len(), 8, "{report}");
    assert!(report.contains("owned by AutoscalingListener"), "{report}");
    // Dry runs only.
    assert_eq!(api.with(|s| s.lease.clone()), lease_before);
    assert!(api.with(|s| s.evictions.is_empty() && s.events.is_empty()));
    for r in api.requests("POST", "/eviction") {
        assert!(r.query.contains("dryRun=All"));
    }
}

#[tokio::test]
async fn missing_rbac_fails_the_checks() {
    let api = StandIn::start().await.unwrap();
    api.with(|s| s.fail_all = Some(403));
    let results = checks(&api.client().unwrap(), &args()).await;
    let report = format_report(&results);
    let failed: Vec<_> = results.iter().filter(|c| !c.ok).collect();
    // The Lease update is not attempted without a readable Lease.
    assert_eq!(failed.len(), 7, "{report}");
    assert!(failed.iter().all(|c| c.detail.contains("403")), "{report}");
    assert!(report.lines().all(|l| l.starts_with("FAIL")), "{report}");
}
