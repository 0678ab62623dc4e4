//! Uninstall on a real API server, as the README says it: `kubectl delete
//! -k manifests/`, then `kubectl delete` of the per-listener objects by
//! their managed-by label. Every per-listener Role, RoleBinding and Lease is
//! gone; the listener pods, the AutoscalingListeners and objects that are
//! not arc-watchdog's (even under a per-listener name) survive.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is the failure report

use arc_watchdog::names;
use arc_watchdog_tests::control_plane::{
    ControlPlane, LISTENER_NAMESPACE, WEBHOOK_CONFIG_NAME, workspace_root,
};
use arc_watchdog_tests::per_listener;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, PostParams};
use kube::{Resource, ResourceExt as _};

async fn absent<K>(api: &Api<K>, name: &str) -> bool
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    api.get_opt(name).await.unwrap().is_none()
}

/// The README's uninstall commands, in order.
const UNINSTALL: [&[&str]; 2] = [
    &["delete", "-k", "manifests/", "--wait=false"],
    &[
        "delete",
        "roles,rolebindings,leases",
        "--all-namespaces",
        "-l",
        "app.kubernetes.io/managed-by=arc-watchdog",
    ],
];

#[tokio::test]
async fn the_documented_uninstall_removes_every_per_listener_object_and_nothing_else() {
    let cp = ControlPlane::shared().await.unwrap();
    let webhook = cp.install_arc_watchdog(&[]).await.unwrap();
    let client = cp.admin_client().await.unwrap();
    let ns = LISTENER_NAMESPACE;
    let roles: Api<Role> = Api::namespaced(client.clone(), ns);
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);

    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    for command in UNINSTALL {
        let shown = format!("kubectl {}", command.join(" ")).replace(" --wait=false", "");
        assert!(readme.contains(&shown), "the README shows `{shown}`");
    }

    // Two listeners with their objects.
    let mut owned = Vec::new();
    for scale_set in ["gc-a", "gc-b"] {
        let pod = cp.create_listener(ns, scale_set).await.unwrap();
        let objects = per_listener::wait_for_pod(&client, &pod).await.unwrap();
        owned.push((pod, objects));
    }
    // A bystander under a per-listener name, without the managed-by label.
    let bystander = roles
        .create(
            &PostParams::default(),
            &Role {
                metadata: kube::api::ObjectMeta {
                    name: Some(names::rbac_name("someone-elses-listener")),
                    namespace: Some(ns.to_owned()),
                    ..Default::default()
                },
                rules: None,
            },
        )
        .await
        .unwrap();

    // The Deployment goes first with the manifests; the process stands in.
    webhook.stop();
    let root = workspace_root();
    for command in UNINSTALL {
        let mut kubectl = cp.kubectl().unwrap();
        let out = kubectl.current_dir(&root).args(command).output().unwrap();
        assert!(
            out.status.success(),
            "kubectl {command:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    for (pod, objects) in &owned {
        for (what, name, gone) in [
            (
                "Role",
                objects.role.name_any(),
                absent(&roles, &objects.role.name_any()).await,
            ),
            (
                "RoleBinding",
                objects.binding.name_any(),
                absent(&bindings, &objects.binding.name_any()).await,
            ),
            (
                "Lease",
                objects.lease.name_any(),
                absent(&leases, &objects.lease.name_any()).await,
            ),
        ] {
            assert!(gone, "{what} {name} is left after the uninstall");
        }
        let still = pods.get(&pod.name_any()).await.unwrap();
        assert_eq!(still.uid(), pod.uid(), "the listener pod is ARC's");
        assert!(still.metadata.deletion_timestamp.is_none());
    }
    let still = roles.get(&bystander.name_any()).await.unwrap();
    assert_eq!(still.uid(), bystander.uid());
    assert!(still.metadata.deletion_timestamp.is_none());
    assert!(
        absent(
            &Api::<MutatingWebhookConfiguration>::all(client),
            WEBHOOK_CONFIG_NAME
        )
        .await,
        "the MutatingWebhookConfiguration is gone"
    );
}
