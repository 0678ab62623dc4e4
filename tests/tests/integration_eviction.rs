//! The watchdog's eviction (`arc_watchdog::run::evict`)
//! through the real Eviction API, as the listener's own ServiceAccount: a
//! PodDisruptionBudget (status kept by the real disruption controller) that
//! blocks answers 429 and the watchdog retries a bounded number of times;
//! once the budget allows, the eviction goes through; a UID precondition
//! never hits a newer pod generation.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is the failure report

use std::time::Duration;

use arc_watchdog::run::evict::{EvictOutcome, EvictRetry, evict_pod};
use arc_watchdog_tests::control_plane::{ControlPlane, LISTENER_NAMESPACE, eventually};
use arc_watchdog_tests::node::FakeNode;
use arc_watchdog_tests::per_listener;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, Patch, PatchParams};
use tokio_util::sync::CancellationToken;

async fn pdb_settled(pdbs: &Api<PodDisruptionBudget>, allowed: i32) {
    eventually(
        Duration::from_secs(30),
        &format!("the PDB to allow {allowed} disruptions"),
        || async {
            let p = pdbs.get("listener-pdb").await.ok()?;
            let st = p.status?;
            (st.observed_generation == p.metadata.generation
                && st.disruptions_allowed == allowed
                && st.current_healthy == 1)
                .then_some(())
        },
    )
    .await
    .unwrap();
}

fn pdb(min_available: i32, scale_set: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "listener-pdb", "namespace": LISTENER_NAMESPACE},
        "spec": {"minAvailable": min_available, "selector": {"matchLabels": {"actions.github.com/scale-set-name": scale_set}}},
    })
}

#[tokio::test]
async fn eviction_is_retried_while_a_pdb_blocks_and_succeeds_when_it_allows() {
    let cp = ControlPlane::shared().await.unwrap();
    assert!(
        cp.has_controller_manager(),
        "the disruption controller keeps PDB status"
    );
    let _webhook = cp.install_arc_watchdog(&[]).await.unwrap();
    let admin = cp.admin_client().await.unwrap();
    let ns = LISTENER_NAMESPACE;
    let node = FakeNode::start(admin.clone(), "eviction-node")
        .await
        .unwrap();
    let pod = cp.create_listener(ns, "evict-me").await.unwrap();
    // The watchdog's rights come from its AutoscalingListener.
    per_listener::wait_for_pod(&admin, &pod).await.unwrap();
    let name = pod.metadata.name.clone().unwrap();
    let uid = pod.metadata.uid.clone().unwrap();
    node.run_pod(ns, &name).await.unwrap();
    let as_watchdog = cp.pod_watchdog_client(&pod).await.unwrap();
    let cancel = CancellationToken::new();
    let quick = EvictRetry {
        initial: Duration::from_millis(100),
        max: Duration::from_millis(200),
        attempts: 3,
    };
    let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
    let not_deleting = || async {
        pods.get(&name)
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_none()
    };

    // A UID precondition for another generation: never evicted. (Before any
    // PDB: the API server takes the disruption from a budget before the
    // delete's precondition fails, and gives it back only minutes later.)
    let other_generation = "00000000-0000-0000-0000-000000000000";
    let out = evict_pod(
        &as_watchdog,
        ns,
        &name,
        Some(other_generation),
        false,
        &quick,
        &cancel,
    )
    .await;
    assert!(matches!(out, EvictOutcome::Gone(_)), "{out:?}");
    assert!(not_deleting().await);

    // A PDB that blocks: 429 on every attempt, exactly `attempts`, pod intact.
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(admin.clone(), ns);
    let pp = PatchParams::apply("arc-watchdog-tests").force();
    pdbs.patch("listener-pdb", &pp, &Patch::Apply(pdb(1, "evict-me")))
        .await
        .unwrap();
    pdb_settled(&pdbs, 0).await;
    let out = evict_pod(&as_watchdog, ns, &name, Some(&uid), false, &quick, &cancel).await;
    match &out {
        EvictOutcome::Blocked { attempts, last } => {
            assert_eq!(*attempts, 3);
            assert!(last.starts_with("429"), "{last}");
        }
        other => panic!("expected Blocked, got {other:?}"),
    }
    assert!(not_deleting().await);

    // The budget allows one disruption now: evicted at the first attempt.
    pdbs.patch("listener-pdb", &pp, &Patch::Apply(pdb(0, "evict-me")))
        .await
        .unwrap();
    pdb_settled(&pdbs, 1).await;
    let out = evict_pod(&as_watchdog, ns, &name, Some(&uid), false, &quick, &cancel).await;
    assert_eq!(out, EvictOutcome::Evicted { attempts: 1 });
    let gone_or_going = pods.get_opt(&name).await.unwrap();
    assert!(
        gone_or_going.is_none_or(|p| p.metadata.deletion_timestamp.is_some()),
        "the pod is being evicted"
    );
}
