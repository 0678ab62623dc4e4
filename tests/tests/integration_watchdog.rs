//! `arc-watchdog run` as a process, with the identity the
//! webhook gave its pod (a token for the listener's ServiceAccount, bound to
//! the pod; the per-listener Role), follows the listener's output through the
//! API server (pods/log, follow) from the fake node's kubelet endpoint,
//! recognises a session-conflict loop across container runs and pod
//! generations (its history lives in the Lease), delays the next start
//! through the start gate, evicts through the Eviction API, and records
//! Events and metrics.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is the failure report

use std::time::Duration;

use arc_watchdog::detector::{ANNOTATION_HISTORY, History};
use arc_watchdog::names;
use arc_watchdog_tests::control_plane::{
    ControlPlane, LISTENER_NAMESPACE, WatchdogProcess, Webhook, eventually, metric_value,
    workspace_root,
};
use arc_watchdog_tests::node::FakeNode;
use arc_watchdog_tests::per_listener;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::wait::{await_condition, conditions};
use tokio::sync::OnceCell;

/// Thresholds the webhook passes to every injected watchdog: small numbers
/// so that a loop is found in seconds.
const WEBHOOK_ARGS: &[&str] = &[
    "--conflict-threshold=3",
    "--conflict-window=10m",
    "--backoff-initial=8s",
    "--backoff-max=16s",
];
const WAIT: Duration = Duration::from_secs(30);

static WEBHOOK: OnceCell<Webhook> = OnceCell::const_new();

async fn setup() -> &'static ControlPlane {
    let cp = ControlPlane::shared().await.unwrap();
    WEBHOOK
        .get_or_init(|| async { cp.install_arc_watchdog(WEBHOOK_ARGS).await.unwrap() })
        .await;
    cp
}

/// The lines an ARC 0.14.2 listener writes when GitHub answers 409 to its
/// session request (the project's recorded sample).
fn conflict_run_lines() -> Vec<String> {
    let path = workspace_root().join("watchdog/tests/samples/conflict-0.14.2-json/gen1.log");
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    assert!(
        lines.iter().any(|l| l.contains("409 Conflict")),
        "sample {} has a conflict",
        path.display()
    );
    lines
}

/// Reasons of the Events about the object with `uid`.
async fn event_reasons(client: &kube::Client, uid: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), LISTENER_NAMESPACE);
    let lp = ListParams::default().fields(&format!("involvedObject.uid={uid}"));
    events
        .list(&lp)
        .await
        .map(|l| l.items.into_iter().filter_map(|e| e.reason).collect())
        .unwrap_or_default()
}

async fn wait_for_event(client: &kube::Client, uid: &str, reason: &str, wd: &WatchdogProcess) {
    let found = eventually(WAIT, &format!("Event {reason}"), || async {
        event_reasons(client, uid)
            .await
            .iter()
            .any(|r| r == reason)
            .then_some(())
    })
    .await;
    if let Err(e) = found {
        panic!(
            "{e}; events so far: {:?}\nwatchdog log:\n{}",
            event_reasons(client, uid).await,
            wd.log_text()
        );
    }
}

/// The history the watchdog keeps in its Lease.
async fn stored_history(client: &kube::Client, pod: &str) -> Option<History> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), LISTENER_NAMESPACE);
    let lease = leases.get(&names::lease_name(pod)).await.ok()?;
    let text = lease.metadata.annotations?.get(ANNOTATION_HISTORY)?.clone();
    serde_json::from_str(&text).ok()
}

async fn startz(wd: &WatchdogProcess) -> u16 {
    wd.get(names::PATH_STARTZ)
        .await
        .map(|(s, _)| s)
        .unwrap_or(0)
}

/// Runs one generation of an ARC 0.14.2 listener pod that meets a stale
/// session: created through the webhook, bound to the fake node, running,
/// its listener writes the 409 lines and exits 1 while the pod lives on
/// (the kubelet restarts a `restartPolicy: Always` container in place only
/// after its CrashLoopBackOff delay, and never a `Never` one). Returns the
/// pod and its watchdog process.
async fn conflicting_generation(
    cp: &ControlPlane,
    node: &FakeNode,
    scale_set: &str,
    generation: u32,
) -> (Pod, WatchdogProcess) {
    let ns = LISTENER_NAMESPACE;
    let pod = cp.create_listener(ns, scale_set).await.unwrap();
    let admin = cp.admin_client().await.unwrap();
    per_listener::wait_for_pod(&admin, &pod).await.unwrap();
    let name = pod.metadata.name.clone().unwrap();
    node.run_pod(ns, &name).await.unwrap();
    let wd = WatchdogProcess::start(cp, &pod, &[]).await.unwrap();
    for l in conflict_run_lines() {
        node.log(ns, &name, "listener", &l);
    }
    // Followed through the API server: the conflict reaches the metrics.
    eventually(
        WAIT,
        &format!("generation {generation}'s conflict in the metrics"),
        || async {
            let m = wd.metrics().await.ok()?;
            (metric_value(&m, "arc_watchdog_session_conflicts_total", &[])? >= 1.0).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", wd.log_text()));
    node.terminate_container(ns, &name, "listener", 1, None)
        .await
        .unwrap();
    (pod, wd)
}

/// A stale session makes every listener generation die with a 409. The
/// watchdog of each generation follows its listener through the API server,
/// evicts the pod whose listener died (ARC would never replace it while the
/// pod lives on), counts the conflicts across generations in the Lease,
/// detects the loop at the third, delays the next start through the start
/// gate, evicts when the backoff has run out, and reports it all as Events
/// (on the pod and the AutoscalingListener) and metrics.
#[tokio::test]
async fn conflict_loop_across_generations_is_delayed_and_evicted() {
    let cp = setup().await;
    let client = cp.admin_client().await.unwrap();
    let ns = LISTENER_NAMESPACE;
    let node = FakeNode::start(client.clone(), "watchdog-node-1")
        .await
        .unwrap();
    node.finish_deletions();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let scale_set = "stale-session";

    let mut name = String::new();
    for generation in 1..=3 {
        let (pod, wd) = conflicting_generation(cp, &node, scale_set, generation).await;
        name = pod.metadata.name.clone().unwrap();
        let uid = pod.metadata.uid.clone().unwrap();
        let owner_uid = pod.metadata.owner_references.clone().unwrap()[0]
            .uid
            .clone();
        wait_for_event(&client, &uid, "SessionConflict", &wd).await;
        // Shown only when the test fails: what the watchdog asked for.
        eprintln!(
            "generation {generation}: kubelet log requests so far: {:#?}",
            node.logs().requests()
        );
        if generation == 3 {
            // The third conflict within the window: a loop. The start gate
            // closes for the backoff (8s), and the dead listener's pod is
            // evicted when it ends, not at once.
            wait_for_event(&client, &uid, "ConflictLoopDetected", &wd).await;
            wait_for_event(&client, &owner_uid, "ConflictLoopDetected", &wd).await;
            wait_for_event(&client, &uid, "ListenerStartDelayed", &wd).await;
            let (status, body) = wd.get(names::PATH_STARTZ).await.unwrap();
            assert_eq!(
                status, 503,
                "the start gate is closed during the backoff: {body}"
            );
            let metrics = wd.metrics().await.unwrap();
            assert_eq!(
                metric_value(&metrics, "arc_watchdog_loop_active", &[]),
                Some(1.0),
                "{metrics}"
            );
            let delay =
                metric_value(&metrics, "arc_watchdog_start_delay_seconds", &[]).unwrap_or(0.0);
            assert!(
                delay > 0.0 && delay <= 8.0,
                "start delay {delay}: {metrics}"
            );
            assert!(
                pods.get(&name)
                    .await
                    .unwrap()
                    .metadata
                    .deletion_timestamp
                    .is_none(),
                "no eviction before the backoff ends"
            );
        }
        // A real eviction (policy/v1, as the pod's own ServiceAccount): the
        // pod goes away (the fake kubelet finishes the graceful delete).
        let timeout = if generation == 3 {
            Duration::from_secs(40)
        } else {
            WAIT
        };
        tokio::time::timeout(
            timeout,
            await_condition(pods.clone(), &name, conditions::is_deleted(&uid)),
        )
        .await
        .unwrap_or_else(|_| panic!("generation {generation} was not evicted\n{}", wd.log_text()))
        .unwrap();
        wait_for_event(&client, &uid, "ListenerEvicted", &wd).await;
        let metrics = wd.metrics().await.unwrap();
        assert_eq!(
            metric_value(
                &metrics,
                "arc_watchdog_evictions_total",
                &[("reason", "listener_dead")]
            ),
            Some(1.0),
            "generation {generation}: {metrics}"
        );
        // What the kubelet does to the sidecar of a deleted pod.
        wd.stop();
    }

    // The Lease remembers all three generations.
    let history = stored_history(&client, &name)
        .await
        .expect("history in the Lease");
    assert_eq!(history.conflicts.len(), 3, "{history:?}");
    assert_eq!(history.evictions.len(), 3, "{history:?}");
    assert!(history.loop_state.is_some(), "{history:?}");
    // The watchdog's saves keep the AutoscalingListener as the owner: the
    // Lease still goes with its scale set.
    let lease = Api::<Lease>::namespaced(client.clone(), LISTENER_NAMESPACE)
        .get(&names::lease_name(&name))
        .await
        .unwrap();
    let owners = lease.metadata.owner_references.unwrap_or_default();
    assert!(
        owners
            .iter()
            .any(|o| o.kind == "AutoscalingListener" && o.name == name),
        "{owners:?}"
    );

    // Generation 4 (ARC recreates the pod, same name): its watchdog starts
    // from the Lease, still in the loop, and never blocks the start for
    // longer than the backoff.
    let pod4 = cp.create_listener(ns, scale_set).await.unwrap();
    node.bind(ns, &name).await.unwrap();
    let wd4 = WatchdogProcess::start(cp, &pod4, &[]).await.unwrap();
    eventually(
        Duration::from_secs(40),
        "generation 4's start gate to open",
        || async { (startz(&wd4).await == 200).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", wd4.log_text()));
    let metrics = wd4.metrics().await.unwrap();
    assert_eq!(
        metric_value(&metrics, "arc_watchdog_loop_active", &[]),
        Some(1.0),
        "history loaded: {metrics}"
    );
    wd4.stop();
    pods.delete(&name, &DeleteParams::default()).await.unwrap();
}
