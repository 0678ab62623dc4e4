//! RBAC on the real API server, with a real token for the
//! listener's ServiceAccount (TokenRequest, bound to the pod, as the kubelet
//! mounts it). The per-listener Role the webhook's controller keeps lets the watchdog
//! read and watch its own pod, read its log, evict it and update its Lease;
//! it gets 403 for another listener's pod, log, eviction and Lease, for the
//! ARC controller's pod, and for listing pods.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is the failure report

use arc_watchdog::names;
use arc_watchdog_tests::control_plane::{ControlPlane, LISTENER_NAMESPACE};
use arc_watchdog_tests::node::FakeNode;
use arc_watchdog_tests::per_listener;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, EvictParams, ListParams, LogParams, PostParams, WatchParams};

fn is_forbidden<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> bool {
    matches!(r, Err(kube::Error::Api(ref s)) if s.code == 403)
}

fn dry_run_eviction() -> EvictParams {
    EvictParams {
        delete_options: Some(DeleteParams {
            dry_run: true,
            ..DeleteParams::default()
        }),
        post_options: PostParams {
            dry_run: true,
            ..PostParams::default()
        },
    }
}

#[tokio::test]
async fn the_watchdog_identity_reaches_only_its_own_pod_log_eviction_and_lease() {
    let cp = ControlPlane::shared().await.unwrap();
    let _webhook = cp.install_arc_watchdog(&[]).await.unwrap();
    let admin = cp.admin_client().await.unwrap();
    let ns = LISTENER_NAMESPACE;
    let node = FakeNode::start(admin.clone(), "rbac-node").await.unwrap();

    let a = cp.create_listener(ns, "rbac-a").await.unwrap();
    let b = cp.create_listener(ns, "rbac-b").await.unwrap();
    let (a_name, b_name) = (
        a.metadata.name.clone().unwrap(),
        b.metadata.name.clone().unwrap(),
    );
    for pod in [&a, &b] {
        let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
        per_listener::wait_for_objects(&admin, ns, &owner.name, &owner.uid)
            .await
            .unwrap();
    }
    for p in [&a_name, &b_name] {
        node.run_pod(ns, p).await.unwrap();
        node.log(ns, p, "listener", &format!("hello from {p}"));
    }
    // The ARC controller's pod (not a listener: no sidecar, no Role).
    cp.create_controller_pod(ns, "arc-gha-rs-controller-7c9d-xyz")
        .await
        .unwrap();

    let as_a = cp.pod_client(&a).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(as_a.clone(), ns);
    let leases: Api<Lease> = Api::namespaced(as_a.clone(), ns);
    let log = LogParams {
        container: Some("listener".into()),
        ..LogParams::default()
    };

    // Allowed: its own pod, log, eviction (dry run: nothing is evicted), Lease.
    assert_eq!(
        pods.get(&a_name).await.unwrap().metadata.uid,
        a.metadata.uid
    );
    let wp = WatchParams::default().fields(&format!("metadata.name={a_name}"));
    let _events = pods.watch(&wp, "0").await.expect("watch of the own pod");
    assert_eq!(
        pods.logs(&a_name, &log).await.unwrap(),
        format!("hello from {a_name}\n")
    );
    pods.evict(&a_name, &dry_run_eviction())
        .await
        .expect("dry-run eviction of the own pod");
    let mut lease = leases.get(&names::lease_name(&a_name)).await.unwrap();
    lease
        .metadata
        .annotations
        .get_or_insert_default()
        .insert("arc-watchdog.dev/rbac-test".into(), "1".into());
    leases
        .replace(&names::lease_name(&a_name), &PostParams::default(), &lease)
        .await
        .expect("update of the own Lease");

    // Forbidden: the other listener, the controller, listing.
    assert!(
        is_forbidden(pods.get(&b_name).await),
        "another listener's pod"
    );
    assert!(
        is_forbidden(pods.logs(&b_name, &log).await),
        "another listener's log"
    );
    assert!(
        is_forbidden(pods.evict(&b_name, &dry_run_eviction()).await),
        "another listener's eviction"
    );
    assert!(
        is_forbidden(leases.get(&names::lease_name(&b_name)).await),
        "another listener's Lease"
    );
    assert!(
        is_forbidden(pods.get("arc-gha-rs-controller-7c9d-xyz").await),
        "the controller's pod"
    );
    assert!(is_forbidden(
        pods.evict("arc-gha-rs-controller-7c9d-xyz", &dry_run_eviction())
            .await
    ));
    assert!(
        is_forbidden(pods.list(&ListParams::default()).await),
        "listing pods"
    );
    assert!(
        is_forbidden(
            pods.delete(
                &a_name,
                &DeleteParams {
                    dry_run: true,
                    ..DeleteParams::default()
                }
            )
            .await
        ),
        "delete (only eviction)"
    );
    // And nothing was evicted by the dry runs.
    let still = Api::<Pod>::namespaced(admin, ns)
        .get(&a_name)
        .await
        .unwrap();
    assert!(still.metadata.deletion_timestamp.is_none());
}
