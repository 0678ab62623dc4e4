//! What the sidecar reads from its own pod, and the listener transitions
//! it derives: every run start and end reported exactly once, however often
//! the pod is observed (watch restarts re-list it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod run_support;

use arc_watchdog::run::pod::{ListenerState, PodTracker, PodView, Transition};
use k8s_openapi::api::core::v1::Pod;
use run_support::*;
use serde_json::json;

fn view(v: serde_json::Value) -> PodView {
    let pod: Pod = serde_json::from_value(v).unwrap();
    PodView::from_pod(&pod, "listener")
}

#[test]
fn reads_identity_owner_version_and_listener() {
    let v = view(pod_json(
        Some("containerd://c1"),
        running("2026-11-28T10:00:00Z"),
        0,
    ));
    assert_eq!(v.uid.as_deref(), Some(POD_UID));
    assert_eq!(v.phase.as_deref(), Some("Running"));
    assert_eq!(v.version_label.as_deref(), Some("0.12.1"));
    let owner = v.owner.unwrap();
    assert_eq!(owner.kind.as_deref(), Some("AutoscalingListener"));
    assert_eq!(
        owner.api_version.as_deref(),
        Some("actions.github.com/v1alpha1")
    );
    assert_eq!(owner.namespace.as_deref(), Some(NS));
    let l = v.listener.unwrap();
    assert_eq!(l.container_id.as_deref(), Some("containerd://c1"));
    assert!(matches!(
        l.state,
        ListenerState::Running {
            started_at: Some(_)
        }
    ));
    assert!(l.image.unwrap().ends_with(":0.12.1"));
}

#[test]
fn every_start_and_end_is_reported_once() {
    let mut t = PodTracker::default();
    let running_pod = view(pod_json(
        Some("containerd://c1"),
        running("2026-11-28T10:00:00Z"),
        0,
    ));
    let got = t.observe(&running_pod);
    assert!(
        matches!(&got[..], [Transition::RunStarted { container_id, at: Some(_) }] if container_id == "containerd://c1")
    );
    // Seen again (a re-list after a watch restart): nothing new.
    assert!(t.observe(&running_pod).is_empty());

    let ended = view(pod_json(
        Some("containerd://c1"),
        terminated(1, "2026-11-28T10:00:05Z"),
        0,
    ));
    let got = t.observe(&ended);
    assert!(
        matches!(&got[..], [Transition::RunEnded { container_id, exit_code: 1, pod_alive: true, at: Some(_), .. }] if container_id == "containerd://c1"),
        "{got:?}"
    );
    assert!(t.observe(&ended).is_empty());
}

#[test]
fn an_in_place_restart_reports_the_missed_end_then_the_new_run() {
    let mut t = PodTracker::default();
    t.observe(&view(pod_json(
        Some("containerd://c1"),
        running("2026-11-28T10:00:00Z"),
        0,
    )));
    // The end of c1 was never observed: only c2 running with c1 as lastState.
    let mut p = pod_json(Some("containerd://c2"), running("2026-11-28T10:00:10Z"), 1);
    p["status"]["containerStatuses"][0]["lastState"] = json!({
        "terminated": {"exitCode": 1, "reason": "Error", "finishedAt": "2026-11-28T10:00:05Z", "containerID": "containerd://c1"}
    });
    let got = t.observe(&view(p));
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        matches!(&got[0], Transition::RunEnded { container_id, .. } if container_id == "containerd://c1")
    );
    assert!(
        matches!(&got[1], Transition::RunStarted { container_id, .. } if container_id == "containerd://c2")
    );
}

#[test]
fn a_finished_or_deleted_pod_does_not_live_on() {
    let mut p = pod_json(
        Some("containerd://c1"),
        terminated(1, "2026-11-28T10:00:05Z"),
        0,
    );
    p["status"]["phase"] = json!("Failed");
    let mut t = PodTracker::default();
    let got = t.observe(&view(p.clone()));
    assert!(
        matches!(
            &got[..],
            [
                Transition::RunStarted { .. },
                Transition::RunEnded {
                    pod_alive: false,
                    ..
                }
            ]
        ),
        "{got:?}"
    );

    let mut p = pod_json(Some("containerd://c1"), running("2026-11-28T10:00:00Z"), 0);
    p["metadata"]["deletionTimestamp"] = json!("2026-11-28T10:00:07Z");
    let v = view(p);
    assert!(!v.alive());
    let mut t = PodTracker::default();
    let got = t.observe(&v);
    assert!(got.contains(&Transition::PodTerminating));
    assert!(!t.observe(&v).contains(&Transition::PodTerminating));
}

#[test]
fn a_waiting_listener_is_no_run_and_another_container_is_ignored() {
    let mut p = pod_json(None, json!({"waiting": {"reason": "PodInitializing"}}), 0);
    let v = view(p.clone());
    assert_eq!(
        v.listener.as_ref().unwrap().state,
        ListenerState::Waiting(Some("PodInitializing".into()))
    );
    assert!(PodTracker::default().observe(&v).is_empty());
    p["status"]["containerStatuses"][0]["name"] = json!("something-else");
    p["spec"]["containers"][0]["name"] = json!("something-else");
    assert!(view(p).listener.is_none());
}
