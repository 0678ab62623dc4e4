//! A listener held by a watchdog that cannot start, on a real
//! kube-apiserver.
//!
//! A native watchdog whose image cannot be pulled keeps its listener from
//! starting. After `--blocked-after` the webhook suspends injection for
//! that listener (annotations on its Lease), evicts the pod, and publishes
//! a Warning Event `InjectionSuspended`; the pod ARC creates next is
//! admitted without the watchdog, marked, and counted. A listener whose
//! watchdog runs and holds its start gate on purpose (a backoff) is left
//! alone, however long it has been held. The webhook runs as its own
//! ServiceAccount with exactly the manifests' RBAC; a fake node writes the
//! statuses a kubelet would.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is the failure report

use std::time::Duration;

use arc_watchdog::names;
use arc_watchdog_tests::control_plane::{
    ControlPlane, LISTENER_NAMESPACE, Webhook, metric_value, watchdog_container,
};
use arc_watchdog_tests::node::FakeNode;
use arc_watchdog_tests::per_listener;
use arc_watchdog_webhook::blocked;
use arc_watchdog_webhook::suspension::Suspension;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::api::Api;
use kube::runtime::wait::{await_condition, conditions};

const DEADLINE: Duration = Duration::from_secs(60);
const SUSPEND_FOR: Duration = Duration::from_secs(3600);

/// Waits until the webhook's `/metrics` has `metric` == `want`.
async fn await_metric(wh: &Webhook, metric: &str, want: f64) {
    wh.await_metric(metric, &[], want, DEADLINE).await.unwrap();
}

/// The status a kubelet reports for a native-injected listener pod whose
/// watchdog is in `watchdog` (a container state) and whose listener waits
/// for it, taken by the kubelet at `start_time`.
fn held_status(
    start_time: Timestamp,
    watchdog: serde_json::Value,
    started: bool,
) -> serde_json::Value {
    serde_json::json!({
        "phase": "Pending",
        "startTime": start_time.to_string(),
        "initContainerStatuses": [{
            "name": names::CONTAINER_NAME, "image": "ghcr.io/arc-watchdog/arc-watchdog:dev", "imageID": "",
            "ready": false, "started": started, "restartCount": 0, "state": watchdog,
        }],
        "containerStatuses": [{
            "name": names::LISTENER_CONTAINER, "image": "ghcr.io/actions/gha-runner-scale-set-controller:0.14.2",
            "imageID": "", "ready": false, "started": false, "restartCount": 0,
            "state": {"waiting": {"reason": "PodInitializing"}},
        }],
    })
}

#[tokio::test]
async fn a_listener_whose_watchdog_cannot_be_pulled_is_released_and_runs_without_it() {
    let cp = ControlPlane::shared().await.unwrap();
    let webhook = cp
        .install_arc_watchdog(&[
            "--sidecar-mode=native",
            "--blocked-after=3s",
            &format!("--suspend-injection-for={}s", SUSPEND_FOR.as_secs()),
        ])
        .await
        .unwrap();
    let admin = cp.admin_client().await.unwrap();
    let ns = LISTENER_NAMESPACE;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
    let leases: Api<Lease> = Api::namespaced(admin.clone(), ns);
    let node = FakeNode::start(admin.clone(), "blocked-node")
        .await
        .unwrap();
    node.finish_deletions();

    // The control: its watchdog runs and holds the start gate (a backoff),
    // and has for an hour. Written first, so the webhook has judged it
    // before the stuck pod below, and on every look since.
    let gated = cp.create_listener(ns, "blocked-gated").await.unwrap();
    let gated_name = gated.metadata.name.clone().unwrap();
    let gated_uid = gated.metadata.uid.clone().unwrap();
    assert!(watchdog_container(&gated).is_some());
    node.bind(ns, &gated_name).await.unwrap();
    let an_hour_ago = Timestamp::now() - Duration::from_secs(3600);
    node.set_pod_status(
        ns,
        &gated_name,
        held_status(
            an_hour_ago,
            serde_json::json!({"running": {"startedAt": an_hour_ago.to_string()}}),
            false,
        ),
    )
    .await
    .unwrap();

    // The stuck one: its watchdog image cannot be pulled.
    let stuck = cp.create_listener(ns, "blocked-stuck").await.unwrap();
    let name = stuck.metadata.name.clone().unwrap();
    let uid = stuck.metadata.uid.clone().unwrap();
    assert!(watchdog_container(&stuck).is_some(), "injected at first");
    per_listener::wait_for_pod(&admin, &stuck).await.unwrap();
    node.bind(ns, &name).await.unwrap();
    // Whole seconds: the API server stores startTime (a metav1.Time) without
    // its fraction, and the webhook counts from what it stores.
    let held_at = Timestamp::from_second(Timestamp::now().as_second()).unwrap();
    node.set_pod_status(
        ns,
        &name,
        held_status(
            held_at,
            serde_json::json!({"waiting": {"reason": "ImagePullBackOff",
                "message": "Back-off pulling image \"ghcr.io/arc-watchdog/arc-watchdog:dev\""}}),
            false,
        ),
    )
    .await
    .unwrap();

    // Released: the pod is evicted (the fake kubelet finishes the deletion).
    tokio::time::timeout(
        DEADLINE,
        await_condition(pods.clone(), &name, conditions::is_deleted(&uid)),
    )
    .await
    .expect("the stuck listener pod is evicted")
    .unwrap();
    let released_at = Timestamp::now();
    assert!(
        released_at.duration_since(held_at) >= jiff::SignedDuration::from_secs(3),
        "released before --blocked-after"
    );

    // The suspension is on the listener's Lease, for --suspend-injection-for.
    let lease = leases.get(&names::lease_name(&name)).await.unwrap();
    let suspension = Suspension::of(&lease).expect("the Lease carries the suspension");
    assert!(
        suspension.reason.contains("ImagePullBackOff"),
        "{suspension:?}"
    );
    assert!(
        suspension.is_active(released_at, SUSPEND_FOR),
        "{suspension:?}"
    );
    assert!(
        suspension.until > held_at + Duration::from_secs(3600 - 60),
        "{suspension:?}"
    );

    // One Warning Event on the evicted pod, saying why and what to do.
    let events: Api<Event> = Api::namespaced(admin.clone(), ns);
    let event = events.get(&blocked::event_name(&uid)).await.unwrap();
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(event.reason.as_deref(), Some("InjectionSuspended"));
    assert_eq!(
        event.regarding.as_ref().and_then(|r| r.uid.as_deref()),
        Some(uid.as_str())
    );
    let note = event.note.clone().unwrap();
    assert!(note.contains("ImagePullBackOff"), "{note}");
    assert!(note.contains(&suspension.until.to_string()), "{note}");
    await_metric(
        &webhook,
        "arc_watchdog_webhook_injection_suspensions_total",
        1.0,
    )
    .await;

    // ARC recreates the pod: admitted without the watchdog, marked.
    let again = cp.create_listener(ns, "blocked-stuck").await.unwrap();
    assert_eq!(again.metadata.name.as_deref(), Some(name.as_str()));
    assert!(
        watchdog_container(&again).is_none(),
        "injection is suspended: {:?}",
        again.spec
    );
    let annotations = again.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations
            .get(names::ANNOTATION_POD_SUSPENDED)
            .map(String::as_str),
        Some(suspension.until.to_string().as_str())
    );
    assert!(!annotations.contains_key(names::ANNOTATION_INJECTED));
    node.run_pod(ns, &name).await.unwrap();
    await_metric(&webhook, "arc_watchdog_webhook_suspended_listeners", 1.0).await;
    await_metric(&webhook, "arc_watchdog_webhook_blocked_listeners", 0.0).await;

    // The gated listener was judged all along and never touched.
    let gated_now = pods.get(&gated_name).await.unwrap();
    assert_eq!(gated_now.metadata.uid.as_deref(), Some(gated_uid.as_str()));
    assert!(gated_now.metadata.deletion_timestamp.is_none());
    assert!(
        events
            .get_opt(&blocked::event_name(&gated_uid))
            .await
            .unwrap()
            .is_none()
    );
    let gated_lease = leases.get(&names::lease_name(&gated_name)).await.unwrap();
    assert_eq!(Suspension::of(&gated_lease), None);
    let text = webhook.metrics().await.unwrap();
    assert_eq!(
        metric_value(
            &text,
            "arc_watchdog_webhook_injection_suspensions_total",
            &[]
        ),
        Some(1.0),
        "{text}"
    );
    webhook.stop();
}
