//! Scale sets without a running listener, on a real kube-apiserver.
//!
//! The webhook, as its own ServiceAccount with exactly the manifests' RBAC,
//! watches the AutoscalingRunnerSets, AutoscalingListeners, listener pods
//! and nodes, and reports each scale set that has had no running listener
//! for `--report-missing-after`: one Warning Event `ListenerMissing` on the
//! AutoscalingRunnerSet saying why and what to do, and the gauge
//! `arc_watchdog_webhook_missing_listeners{reason}`. Each reason is shown
//! here (no AutoscalingListener, no pod, a pod Pending, a pod stuck
//! Terminating on a NotReady node), a healthy scale set gets nothing, a
//! second replica adds no second Event, and the opt-in action
//! force-deletes the stuck pod only once its dry run is turned off.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is the failure report

use std::time::Duration;

use arc_watchdog_tests::control_plane::{
    ControlPlane, LISTENER_NAMESPACE, Webhook, eventually, listener_name,
};
use arc_watchdog_tests::node::{self, FakeNode};
use arc_watchdog_webhook::missing::{self, Missing};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt as _;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::runtime::wait::{await_condition, conditions};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(60);
/// Where the scale sets live (the name the fixtures' listeners point at).
const RUNNERS: &str = "arc-runners";
const GAUGE: &str = "arc_watchdog_webhook_missing_listeners";
const REPORTS: &str = "arc_watchdog_webhook_missing_reports_total";
const DELETIONS: &str = "arc_watchdog_webhook_stuck_pod_deletions_total";
const BOUNDS: [&str; 2] = [
    "--report-missing-after=2s",
    "--delete-stuck-terminating-after=1s",
];

async fn create_runner_set(cp: &ControlPlane, name: &str) -> DynamicObject {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("actions.github.com", "v1alpha1", "AutoscalingRunnerSet"),
        "autoscalingrunnersets",
    );
    let api: Api<DynamicObject> =
        Api::namespaced_with(cp.admin_client().await.unwrap(), RUNNERS, &ar);
    let ars = json!({
        "apiVersion": "actions.github.com/v1alpha1", "kind": "AutoscalingRunnerSet",
        "metadata": {"name": name, "namespace": RUNNERS},
        "spec": {
            "githubConfigUrl": "https://github.com/example-org", "githubConfigSecret": format!("{name}-secret"),
            "template": {"spec": {"containers": [{"name": "runner", "image": "ghcr.io/actions/actions-runner:latest"}]}},
        },
    });
    api.patch(
        name,
        &PatchParams::apply("missing-test").force(),
        &Patch::Apply(&ars),
    )
    .await
    .unwrap()
}

/// Waits until the webhook's `/metrics` has `metric{labels}` == `want`.
async fn await_metric(wh: &Webhook, metric: &str, labels: &[(&str, &str)], want: f64) {
    wh.await_metric(metric, labels, want, DEADLINE)
        .await
        .unwrap();
}

async fn await_gauges(wh: &Webhook, want: &[(Missing, f64)]) {
    for reason in Missing::ALL {
        let value = want
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0.0, |(_, v)| *v);
        await_metric(wh, GAUGE, &[("reason", reason.as_str())], value).await;
    }
}

/// The Event `name` in the runner namespace, once it exists.
async fn await_event(events: &Api<Event>, name: &str) -> Event {
    eventually(DEADLINE, &format!("Event {name}"), || {
        let (events, name) = (events.clone(), name.to_owned());
        async move { events.get_opt(&name).await.ok().flatten() }
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn each_missing_listener_is_reported_on_its_scale_set_and_a_stuck_pod_is_freed() {
    let cp = ControlPlane::shared().await.unwrap();
    cp.prepare_arc_watchdog().await.unwrap();
    cp.create_namespace(RUNNERS).await.unwrap();
    let admin = cp.admin_client().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(admin.clone(), LISTENER_NAMESPACE);
    let ready = FakeNode::start(admin.clone(), "missing-ready")
        .await
        .unwrap();
    let lost = FakeNode::start(admin.clone(), "missing-lost")
        .await
        .unwrap();

    // (a) a scale set without an AutoscalingListener (ARC's controller down
    // or failing on it).
    let no_al = create_runner_set(cp, "ms-no-al").await;
    // (b) a listener without a pod.
    create_runner_set(cp, "ms-no-pod").await;
    let no_pod_al = cp
        .create_autoscaling_listener(LISTENER_NAMESPACE, "ms-no-pod")
        .await
        .unwrap();
    // (c) a pod that never gets scheduled.
    create_runner_set(cp, "ms-pending").await;
    let pending = cp
        .create_listener(LISTENER_NAMESPACE, "ms-pending")
        .await
        .unwrap();
    // (d) a running pod whose node goes NotReady, then is deleted (as the
    // taint manager or a drain would): without a kubelet to confirm, it
    // stays Terminating.
    create_runner_set(cp, "ms-stuck").await;
    let stuck = cp
        .create_listener(LISTENER_NAMESPACE, "ms-stuck")
        .await
        .unwrap();
    lost.run_pod(LISTENER_NAMESPACE, &listener_name("ms-stuck"))
        .await
        .unwrap();
    node::mark_not_ready(&admin, lost.name()).await.unwrap();
    pods.delete(
        &stuck.name_any(),
        &DeleteParams {
            grace_period_seconds: Some(1),
            ..DeleteParams::default()
        },
    )
    .await
    .unwrap();
    // (e) a healthy scale set.
    create_runner_set(cp, "ms-healthy").await;
    cp.create_listener(LISTENER_NAMESPACE, "ms-healthy")
        .await
        .unwrap();
    ready
        .run_pod(LISTENER_NAMESPACE, &listener_name("ms-healthy"))
        .await
        .unwrap();

    // The action is on, in its default dry run.
    let kubeconfig = cp.webhook_kubeconfig().await.unwrap();
    let first = Webhook::start(cp, "missing-first", &kubeconfig, &BOUNDS)
        .await
        .unwrap();

    let events: Api<Event> = Api::namespaced(admin.clone(), RUNNERS);
    let config_uid = cp.webhook_config_uid().await.unwrap();
    for (set, reason, uid, says) in [
        (
            "ms-no-al",
            Missing::NoAutoscalingListener,
            no_al.uid().unwrap(),
            "restarting the controller".to_owned(),
        ),
        (
            "ms-no-pod",
            Missing::NoPod,
            no_pod_al.uid().unwrap(),
            format!(
                "kubectl -n {LISTENER_NAMESPACE} delete autoscalinglistener {}",
                listener_name("ms-no-pod")
            ),
        ),
        (
            "ms-pending",
            Missing::PodPending,
            pending.uid().unwrap(),
            format!(
                "kubectl -n {LISTENER_NAMESPACE} describe pod {}",
                listener_name("ms-pending")
            ),
        ),
        (
            "ms-stuck",
            Missing::TerminatingOnNotReadyNode,
            stuck.uid().unwrap(),
            format!(
                "kubectl -n {LISTENER_NAMESPACE} delete pod {} --grace-period=0 --force",
                listener_name("ms-stuck")
            ),
        ),
    ] {
        let event = await_event(&events, &missing::event_name(reason, &uid)).await;
        assert_eq!(event.type_.as_deref(), Some("Warning"), "{set}");
        assert_eq!(event.reason.as_deref(), Some(missing::REASON));
        let regarding = event.regarding.clone().unwrap();
        assert_eq!(regarding.kind.as_deref(), Some("AutoscalingRunnerSet"));
        assert_eq!(regarding.name.as_deref(), Some(set));
        let note = event.note.clone().unwrap();
        assert!(note.contains(reason.as_str()), "{set}: {note}");
        assert!(note.contains(&says), "{set} says what to do: {note}");
        assert!(
            event
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.uid == config_uid),
            "{set}: owned by the webhook configuration, so uninstalling removes it"
        );
    }
    await_gauges(
        &first,
        &[
            (Missing::NoAutoscalingListener, 1.0),
            (Missing::NoPod, 1.0),
            (Missing::PodPending, 1.0),
            (Missing::TerminatingOnNotReadyNode, 1.0),
        ],
    )
    .await;
    await_metric(&first, REPORTS, &[("result", "created")], 4.0).await;
    // Nothing about the healthy scale set, and one Event per missing one.
    let reported: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(missing::REASON))
        .filter_map(|e| e.regarding?.name)
        .collect();
    assert_eq!(
        reported.len(),
        4,
        "{reported:?}: one each, none for ms-healthy"
    );
    assert!(!reported.iter().any(|n| n == "ms-healthy"));

    // Dry run: the API server accepted a dry-run force-deletion, and the pod
    // is still there.
    await_metric(&first, DELETIONS, &[("result", "dry_run")], 1.0).await;
    let still = pods.get(&stuck.name_any()).await.unwrap();
    assert_eq!(still.uid(), stuck.uid());
    assert!(still.metadata.deletion_timestamp.is_some());

    // Another replica (or a restart) with the dry run off: it adds no second
    // Event, and force-deletes the stuck pod.
    first.stop();
    let second = Webhook::start(
        cp,
        "missing-second",
        &kubeconfig,
        &[BOUNDS[0], BOUNDS[1], "--missing-actions-dry-run=false"],
    )
    .await
    .unwrap();
    tokio::time::timeout(
        DEADLINE,
        await_condition(
            pods.clone(),
            &stuck.name_any(),
            conditions::is_deleted(&stuck.uid().unwrap()),
        ),
    )
    .await
    .expect("the stuck pod is force-deleted")
    .unwrap();
    await_metric(&second, DELETIONS, &[("result", "deleted")], 1.0).await;
    // The other three were reported by the first replica; the stuck pod
    // went before this one's bound had passed (it counts from its start).
    await_metric(&second, REPORTS, &[("result", "already_reported")], 3.0).await;
    // Without ARC here to make the next pod, that scale set now lacks a pod.
    let stuck_al = cp
        .create_autoscaling_listener(LISTENER_NAMESPACE, "ms-stuck")
        .await
        .unwrap();
    await_event(
        &events,
        &missing::event_name(Missing::NoPod, &stuck_al.uid().unwrap()),
    )
    .await;
    await_gauges(
        &second,
        &[
            (Missing::NoAutoscalingListener, 1.0),
            (Missing::NoPod, 2.0),
            (Missing::PodPending, 1.0),
        ],
    )
    .await;

    // Healing: a pod that runs clears its scale set's count.
    let healed = cp
        .create_listener(LISTENER_NAMESPACE, "ms-no-pod")
        .await
        .unwrap();
    ready
        .run_pod(LISTENER_NAMESPACE, &healed.name_any())
        .await
        .unwrap();
    await_metric(&second, GAUGE, &[("reason", "no_pod")], 1.0).await;
    second.stop();
}
