//! Listener pods that run without the watchdog, on a real kube-apiserver.
//!
//! A listener pod created while the webhook is not installed (failurePolicy
//! Ignore admits it unchanged) is reported by the webhook once it runs: one
//! Warning Event `ListenerNotInjected` on the pod and the gauge
//! `arc_watchdog_webhook_uninjected_listeners`. Injected and opted-out
//! listeners are not reported; a restarted webhook does not report the same
//! pod twice; a namespace the webhook may not watch costs a logged, counted
//! retry and never its readiness. The webhook runs as its own
//! ServiceAccount with exactly the manifests' RBAC.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is the failure report

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_watchdog::names;
use arc_watchdog_tests::control_plane::{
    self, ControlPlane, LISTENER_NAMESPACE, WEBHOOK_CONFIG_NAME, Webhook, eventually, http_get,
    metric_value,
};
use arc_watchdog_webhook::coverage;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams};

const DEADLINE: Duration = Duration::from_secs(60);
const GAUGE: &str = "arc_watchdog_webhook_uninjected_listeners";
const REPORTS: &str = "arc_watchdog_webhook_uninjected_reports_total";
const WATCH_ERRORS: &str = "arc_watchdog_webhook_coverage_watch_errors_total";

static INSTALLED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

async fn setup() -> &'static ControlPlane {
    let cp = ControlPlane::shared().await.unwrap();
    INSTALLED
        .get_or_init(|| async { cp.prepare_arc_watchdog().await.unwrap() })
        .await;
    cp
}

fn has_watchdog(pod: &Pod) -> bool {
    control_plane::watchdog_container(pod).is_some()
}

/// The `ListenerNotInjected` Events in the listener namespace.
async fn reports(cp: &ControlPlane) -> Vec<Event> {
    let events: Api<Event> = Api::namespaced(cp.admin_client().await.unwrap(), LISTENER_NAMESPACE);
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(coverage::REASON))
        .collect()
}

/// Waits until the webhook's `/metrics` has `metric{labels}` == `want`.
async fn await_metric(wh: &Webhook, metric: &str, labels: &[(&str, &str)], want: f64) {
    wh.await_metric(metric, labels, want, DEADLINE)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_listener_created_before_the_webhook_is_reported_once_it_runs() {
    let cp = setup().await;
    let admin = cp.admin_client().await.unwrap();
    // arc-watchdog's manifests are applied but its webhook is not registered
    // yet: the state right before (or while) it is installed.
    let configs: Api<MutatingWebhookConfiguration> = Api::all(admin.clone());
    if configs
        .get_opt(WEBHOOK_CONFIG_NAME)
        .await
        .unwrap()
        .is_some()
    {
        configs
            .delete(WEBHOOK_CONFIG_NAME, &DeleteParams::default())
            .await
            .unwrap();
    }
    let uninjected = cp
        .create_listener(LISTENER_NAMESPACE, "cov-missed")
        .await
        .unwrap();
    assert!(!has_watchdog(&uninjected), "created without the watchdog");
    let opted_out = cp
        .create_listener_with(LISTENER_NAMESPACE, "cov-opted-out", |pod| {
            pod.metadata.annotations =
                Some([(names::ANNOTATION_INJECT.to_owned(), "false".to_owned())].into());
        })
        .await
        .unwrap();
    assert!(!has_watchdog(&opted_out));
    let missed_uid = uninjected.metadata.uid.clone().unwrap();

    // The webhook comes (back): its configuration is applied (pointing at a
    // Service that has no endpoints here, the state while the Deployment
    // rolls out), then the webhook runs and is registered, and new listeners
    // get the sidecar.
    cp.apply_manifests().unwrap();
    let kubeconfig = cp.webhook_kubeconfig().await.unwrap();
    let first = Webhook::start(cp, "coverage-first", &kubeconfig, &[])
        .await
        .unwrap();
    first.register(cp).await.unwrap();
    let injected = cp
        .create_listener(LISTENER_NAMESPACE, "cov-injected")
        .await
        .unwrap();
    assert!(has_watchdog(&injected), "the webhook is back and injects");

    // One Warning Event on the pod that was missed, named after its UID.
    let events: Api<Event> = Api::namespaced(admin.clone(), LISTENER_NAMESPACE);
    let name = coverage::event_name(&missed_uid);
    let event = eventually(DEADLINE, "the ListenerNotInjected Event", || {
        let events = events.clone();
        let name = name.clone();
        async move { events.get_opt(&name).await.ok().flatten() }
    })
    .await
    .unwrap();
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(event.reason.as_deref(), Some(coverage::REASON));
    let regarding = event.regarding.clone().unwrap();
    assert_eq!(regarding.kind.as_deref(), Some("Pod"));
    assert_eq!(regarding.name, uninjected.metadata.name);
    assert_eq!(regarding.uid.as_deref(), Some(missed_uid.as_str()));
    // Owned by the webhook configuration like every run-time object, so
    // uninstalling removes it.
    let config_uid = cp.webhook_config_uid().await.unwrap();
    assert!(
        event
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.uid == config_uid && o.kind == "MutatingWebhookConfiguration"),
        "{:?}",
        event.metadata.owner_references
    );
    assert_eq!(
        event
            .metadata
            .labels
            .clone()
            .unwrap_or_default()
            .get(names::MANAGED_BY_LABEL)
            .map(String::as_str),
        Some(names::MANAGED_BY_VALUE)
    );
    let note = event.note.clone().unwrap();
    assert!(
        note.contains(&format!(
            "kubectl -n {LISTENER_NAMESPACE} delete pod {}",
            uninjected.metadata.name.as_deref().unwrap()
        )),
        "the Event says how to fix it: {note}"
    );
    await_metric(&first, GAUGE, &[], 1.0).await;
    await_metric(&first, REPORTS, &[("result", "created")], 1.0).await;

    // A restarted webhook (or a second replica) finds the Event there and
    // adds no second one.
    first.stop();
    let second = Webhook::start(cp, "coverage-second", &kubeconfig, &[])
        .await
        .unwrap();
    await_metric(&second, REPORTS, &[("result", "already_reported")], 1.0).await;
    await_metric(&second, GAUGE, &[], 1.0).await;

    // The fix the Event names: the pod goes (ARC would recreate it, and the
    // webhook would inject it). Watch events arrive in order, so once the
    // gauge shows the deletion, the injected pod created earlier has been
    // seen too.
    Api::<Pod>::namespaced(admin.clone(), LISTENER_NAMESPACE)
        .delete(
            uninjected.metadata.name.as_deref().unwrap(),
            &DeleteParams::default(),
        )
        .await
        .unwrap();
    await_metric(&second, GAUGE, &[], 0.0).await;

    // Exactly one report in all: not for the injected, not for the
    // opted-out listener, not twice for the missed one.
    let all = reports(cp).await;
    let about: Vec<_> = all
        .iter()
        .map(|e| e.regarding.as_ref().and_then(|r| r.name.clone()))
        .collect();
    assert_eq!(all.len(), 1, "reports about {about:?}");
    assert_eq!(about[0], uninjected.metadata.name);
    let text = second.metrics().await.unwrap();
    assert_eq!(
        metric_value(&text, REPORTS, &[("result", "created")]),
        None,
        "{text}"
    );
    assert_eq!(metric_value(&text, WATCH_ERRORS, &[]), Some(0.0));
    second.stop();
}

#[tokio::test]
async fn a_namespace_it_may_not_watch_is_retried_and_never_costs_readiness() {
    let cp = setup().await;
    let kubeconfig = cp.webhook_kubeconfig().await.unwrap();
    // No Role for the webhook there: list/watch pods is forbidden.
    // Webhook::start returns only once /readyz answers 200.
    let wh = Webhook::start(
        cp,
        "coverage-denied",
        &kubeconfig,
        &["--listener-namespaces=arc-watchdog-test-no-rights"],
    )
    .await
    .unwrap();
    // /readyz, asked every 50 ms from now on, while the watch fails and is
    // retried: "never" over time, not at one instant.
    let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, wh.admin_port));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut samples = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                samples.push(http_get(admin, names::PATH_READYZ).await.ok());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            samples
        }
    });
    // Two failures: the first try and a retry after the backoff, and the
    // process still serves.
    let errors = eventually(DEADLINE, "two failed list/watch attempts", || {
        let text = wh.metrics();
        async { metric_value(&text.await.ok()?, WATCH_ERRORS, &[]).filter(|v| *v >= 2.0) }
    })
    .await
    .unwrap();
    assert!(errors >= 2.0);
    // Ready after the failures too, not only before the first.
    let (status, body) = http_get(admin, names::PATH_READYZ).await.unwrap();
    assert_eq!(status, 200, "/readyz after the watch failed: {body}");
    stop.store(true, Ordering::SeqCst);
    let samples = sampler.await.unwrap();
    let unready: Vec<_> = samples
        .iter()
        .filter(|s| s.as_ref().is_none_or(|(status, _)| *status != 200))
        .collect();
    assert!(
        unready.is_empty(),
        "/readyz not 200 while the coverage watch failed: {unready:?} of {} samples",
        samples.len()
    );
    assert!(samples.len() >= 5, "{} samples", samples.len());
    let text = wh.metrics().await.unwrap();
    assert_eq!(metric_value(&text, GAUGE, &[]), Some(0.0));
    wh.stop();
}
