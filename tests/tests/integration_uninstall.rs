//! Uninstall on a real API server with a real garbage collector
//! (kube-controller-manager): the per-listener Role, RoleBinding and Lease
//! the webhook creates are owned by the cluster-scoped
//! MutatingWebhookConfiguration `arc-watchdog`, so deleting it (what
//! `kubectl delete -k manifests/` does, propagation Background) removes all
//! three; objects it does not own, even labelled managed-by arc-watchdog,
//! survive.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is the failure report

use std::time::{Duration, Instant};

use arc_watchdog::names;
use arc_watchdog_tests::control_plane::{ControlPlane, LISTENER_NAMESPACE, WEBHOOK_CONFIG_NAME};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Resource, ResourceExt as _};

/// How long the garbage collector may take (it usually needs well under a
/// second; its informers may still be syncing right after start).
const GC_DEADLINE: Duration = Duration::from_secs(60);

/// Waits until the object `name` with `uid` is gone from `api`.
async fn gone<K>(api: &Api<K>, name: &str, uid: &str)
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + 'static,
{
    tokio::time::timeout(
        GC_DEADLINE,
        await_condition(api.clone(), name, conditions::is_deleted(uid)),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{} {name} not garbage-collected within {GC_DEADLINE:?}",
            K::kind(&())
        )
    })
    .unwrap();
}

/// A bystander's metadata: labelled like arc-watchdog's objects, owned by
/// `owner` (if any).
fn bystander_meta(
    name: &str,
    owner: Option<OwnerReference>,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(LISTENER_NAMESPACE.to_owned()),
        labels: Some(
            [(
                names::MANAGED_BY_LABEL.to_owned(),
                names::MANAGED_BY_VALUE.to_owned(),
            )]
            .into(),
        ),
        owner_references: owner.map(|o| vec![o]),
        ..Default::default()
    }
}

#[tokio::test]
async fn deleting_the_webhook_configuration_garbage_collects_per_listener_rbac_and_leases() {
    let cp = ControlPlane::shared().await.unwrap();
    assert!(
        cp.has_controller_manager(),
        "needs kube-controller-manager's garbage collector (ARC_WATCHDOG_NO_CONTROLLER_MANAGER is set?)"
    );
    let _webhook = cp.install_arc_watchdog(&[]).await.unwrap();
    let client = cp.admin_client().await.unwrap();
    let ns = LISTENER_NAMESPACE;
    let roles: Api<Role> = Api::namespaced(client.clone(), ns);
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());

    // Two listeners: the webhook creates three objects for each while
    // admitting the pod.
    let mut owned = Vec::new();
    for scale_set in ["gc-a", "gc-b"] {
        let pod = cp.create_listener(ns, scale_set).await.unwrap();
        let pod_name = pod.name_any();
        let rbac = names::rbac_name(&pod_name);
        let lease = names::lease_name(&pod_name);
        owned.push((
            rbac.clone(),
            roles.get(&rbac).await.unwrap().uid().unwrap(),
            bindings.get(&rbac).await.unwrap().uid().unwrap(),
            lease.clone(),
            leases.get(&lease).await.unwrap().uid().unwrap(),
            pod_name,
            pod.uid().unwrap(),
        ));
    }

    // Bystanders: labelled like arc-watchdog's objects but not owned by the
    // configuration (no owner; owned by another, living, cluster-scoped
    // object of the same kind).
    let other_config: MutatingWebhookConfiguration = serde_json::from_value(serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "arc-watchdog-gc-bystander"},
        "webhooks": [],
    }))
    .unwrap();
    let other_config = configs
        .create(&PostParams::default(), &other_config)
        .await
        .unwrap();
    let other_owner = OwnerReference {
        api_version: "admissionregistration.k8s.io/v1".into(),
        kind: "MutatingWebhookConfiguration".into(),
        name: other_config.name_any(),
        uid: other_config.uid().unwrap(),
        ..Default::default()
    };
    let pp = PostParams::default();
    let lone_role = roles
        .create(
            &pp,
            &Role {
                metadata: bystander_meta("arc-watchdog-gc-unowned", None),
                rules: None,
            },
        )
        .await
        .unwrap();
    let other_binding = bindings
        .create(
            &pp,
            &RoleBinding {
                metadata: bystander_meta("arc-watchdog-gc-other-owner", Some(other_owner.clone())),
                role_ref: k8s_openapi::api::rbac::v1::RoleRef {
                    api_group: "rbac.authorization.k8s.io".into(),
                    kind: "Role".into(),
                    name: "arc-watchdog-gc-unowned".into(),
                },
                subjects: None,
            },
        )
        .await
        .unwrap();
    let other_lease = leases
        .create(
            &pp,
            &Lease {
                metadata: bystander_meta("arc-watchdog-gc-other-owner", Some(other_owner)),
                spec: None,
            },
        )
        .await
        .unwrap();

    // Uninstall: the configuration goes, as `kubectl delete` deletes it.
    let config_uid = configs
        .get(WEBHOOK_CONFIG_NAME)
        .await
        .unwrap()
        .uid()
        .unwrap();
    let started = Instant::now();
    configs
        .delete(WEBHOOK_CONFIG_NAME, &DeleteParams::background())
        .await
        .unwrap();
    gone(&configs, WEBHOOK_CONFIG_NAME, &config_uid).await;
    for (rbac, role_uid, binding_uid, lease, lease_uid, _, _) in &owned {
        gone(&roles, rbac, role_uid).await;
        gone(&bindings, rbac, binding_uid).await;
        gone(&leases, lease, lease_uid).await;
    }
    eprintln!(
        "garbage collector removed {} per-listener objects in {:.1}s",
        owned.len() * 3,
        started.elapsed().as_secs_f64()
    );

    // What the configuration did not own is still there, unchanged: the
    // listener pods (owned by their AutoscalingListeners), the bystanders,
    // the webhook's own Role from manifests/. Checked after the owned
    // objects are gone, so the collector has had its chance at them.
    for (_, _, _, _, _, pod_name, pod_uid) in &owned {
        let pod = pods.get(pod_name).await.unwrap();
        assert_eq!(pod.uid().as_deref(), Some(pod_uid.as_str()));
        assert!(pod.metadata.deletion_timestamp.is_none(), "{pod_name}");
    }
    let still = roles.get(&lone_role.name_any()).await.unwrap();
    assert_eq!(still.uid(), lone_role.uid());
    assert!(still.metadata.deletion_timestamp.is_none());
    let still = bindings.get(&other_binding.name_any()).await.unwrap();
    assert_eq!(still.uid(), other_binding.uid());
    assert!(still.metadata.deletion_timestamp.is_none());
    let still = leases.get(&other_lease.name_any()).await.unwrap();
    assert_eq!(still.uid(), other_lease.uid());
    assert!(still.metadata.deletion_timestamp.is_none());
    roles.get("arc-watchdog-webhook").await.unwrap();
}
