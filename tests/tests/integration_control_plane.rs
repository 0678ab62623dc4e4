//! The local control plane itself: the pinned kube-apiserver answers, RBAC
//! is enforced for ServiceAccount tokens, and container logs flow from the
//! fake node's kubelet endpoint through the API server (including follow).
#![allow(clippy::unwrap_used)] // a test: a panic is the failure report

use std::time::Duration;

use arc_watchdog_tests::control_plane::{ControlPlane, KUBE_VERSION};
use arc_watchdog_tests::node::FakeNode;
use futures::{AsyncBufReadExt as _, StreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, LogParams, PostParams};

fn pod(name: &str, sa: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"serviceAccountName": sa, "containers": [{"name": "main", "image": "example.invalid/none:1"}]}
    }))
    .unwrap()
}

#[tokio::test]
async fn api_server_is_the_pinned_release_and_enforces_rbac_for_tokens() {
    let cp = ControlPlane::shared().await.unwrap();
    let admin = cp.admin_client().await.unwrap();
    let version = admin.apiserver_version().await.unwrap();
    assert_eq!(version.git_version, KUBE_VERSION);

    cp.create_namespace("cp-rbac").await.unwrap();
    cp.create_service_account("cp-rbac", "nobody")
        .await
        .unwrap();
    let as_sa = cp
        .service_account_client("cp-rbac", "nobody", None)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(as_sa, "cp-rbac");
    let err = pods.list(&ListParams::default()).await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 403),
        "a ServiceAccount without a Role must get 403, got {err:?}"
    );
    // The admin certificate is in system:masters.
    let pods: Api<Pod> = Api::namespaced(admin, "cp-rbac");
    pods.list(&ListParams::default()).await.unwrap();
}

#[tokio::test]
async fn container_logs_come_from_the_fake_node_through_the_api_server() {
    let cp = ControlPlane::shared().await.unwrap();
    let admin = cp.admin_client().await.unwrap();
    let ns = "cp-logs";
    cp.create_namespace(ns).await.unwrap();
    cp.create_service_account(ns, "default").await.unwrap();
    let node = FakeNode::start(admin.clone(), "cp-logs-node")
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
    pods.create(&PostParams::default(), &pod("talker", "default"))
        .await
        .unwrap();

    // Not bound yet: the API server has no kubelet to ask.
    node.run_pod(ns, "talker").await.unwrap();
    node.log(ns, "talker", "main", "hello from the fake kubelet");
    let lp = LogParams {
        container: Some("main".into()),
        ..LogParams::default()
    };
    let text = pods.logs("talker", &lp).await.unwrap();
    assert_eq!(text, "hello from the fake kubelet\n");

    let follow = LogParams {
        follow: true,
        timestamps: true,
        ..lp
    };
    let mut lines = pods.log_stream("talker", &follow).await.unwrap().lines();
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first.ends_with(" hello from the fake kubelet"), "{first}");
    node.log(ns, "talker", "main", "a line written while following");
    let second = tokio::time::timeout(Duration::from_secs(10), lines.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        second.ends_with(" a line written while following"),
        "{second}"
    );
    node.end_logs(ns, "talker", "main");
    let end = tokio::time::timeout(Duration::from_secs(10), lines.next())
        .await
        .unwrap();
    assert!(
        end.is_none(),
        "the stream must end with the container's run, got {end:?}"
    );
}
