//! A watchdog admitted as a native sidecar on a kubelet that runs it as a
//! plain init container (older than 1.29) would hold its listener forever:
//! once its start gate has been open for `--step-aside-after` and the
//! listener still waits for the init containers, it says so (log, Event,
//! metric) and ends, so that the listener starts. It never does so as a
//! classic sidecar, nor while the listener runs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod run_support;

use std::time::Duration;

use run_support::*;
use serde_json::{Value, json};

/// The listener pod with the watchdog as an init container (`restart`:
/// its `restartPolicy`), the listener in `state`.
fn pod_with_watchdog(restart: Option<&str>, state: Value) -> Value {
    let mut pod = pod_json(None, state, 0);
    let mut watchdog =
        json!({"name": "arc-watchdog", "image": "ghcr.io/arc-watchdog/arc-watchdog:dev"});
    if let Some(policy) = restart {
        watchdog["restartPolicy"] = json!(policy);
    }
    pod["spec"]["initContainers"] = json!([watchdog]);
    pod["status"]["phase"] = json!("Pending");
    pod
}

fn initializing() -> Value {
    json!({"waiting": {"reason": "PodInitializing"}})
}

#[tokio::test]
async fn a_native_sidecar_run_as_a_plain_init_container_steps_aside() {
    let api = StandIn::start().await.unwrap();
    api.set_lease(None);
    api.set_pod(pod_with_watchdog(Some("Always"), initializing()));
    let (started, _cancel) = start_watchdog(&api, "1s", &["--step-aside-after=1s"]).await;
    // It ends by itself: nobody cancels it.
    let shared = started.shared.clone();
    tokio::time::timeout(Duration::from_secs(20), started.task)
        .await
        .expect("the watchdog stepped aside")
        .unwrap();
    api.wait_for("the WatchdogSteppedAside Event", |s| {
        pod_events(s, "WatchdogSteppedAside") == 1
    })
    .await;
    let stepped = shared
        .metrics
        .decisions
        .get_or_create(&arc_watchdog::run::metrics::ReasonLabel {
            reason: "WatchdogSteppedAside".to_owned(),
        })
        .get();
    assert_eq!(
        stepped, 1,
        "arc_watchdog_decisions_total{{reason=\"WatchdogSteppedAside\"}}"
    );
}

#[tokio::test]
async fn it_stays_while_the_listener_runs_or_as_a_classic_sidecar() {
    for (restart, state, what) in [
        (
            Some("Always"),
            running("2026-03-02T04:00:00Z"),
            "native, listener running",
        ),
        (None, initializing(), "a plain init container by admission"),
    ] {
        let api = StandIn::start().await.unwrap();
        api.set_lease(None);
        api.set_pod(pod_with_watchdog(restart, state));
        let (mut started, cancel) = start_watchdog(&api, "1s", &["--step-aside-after=1s"]).await;
        // Well past the bound: still there.
        let ended = tokio::time::timeout(Duration::from_secs(4), &mut started.task).await;
        assert!(ended.is_err(), "{what}: the watchdog ended");
        assert_eq!(
            api.with(|s| pod_events(s, "WatchdogSteppedAside")),
            0,
            "{what}"
        );
        stop(started, cancel).await;
    }
}
