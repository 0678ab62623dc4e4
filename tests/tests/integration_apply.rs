//! `kubectl apply --server-side -k manifests/` succeeds
//! against the real API server (with cert-manager's and ARC's real CRDs),
//! and the objects are stored, not just rendered; applying again is a no-op.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is the failure report

use arc_watchdog_tests::control_plane::{
    ControlPlane, LISTENER_NAMESPACE, WEBHOOK_CONFIG_NAME, WEBHOOK_NAMESPACE,
    WEBHOOK_SERVICE_ACCOUNT,
};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::Role;
use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, GroupVersionKind};

#[tokio::test]
async fn manifests_apply_server_side_and_are_stored() {
    let cp = ControlPlane::shared().await.unwrap();
    cp.create_namespace(LISTENER_NAMESPACE).await.unwrap();
    cp.install_cert_manager_crds().await.unwrap();
    let out = cp.apply_manifests().unwrap();
    assert!(out.contains("serverside-applied"), "{out}");

    let client = cp.admin_client().await.unwrap();
    let mwc = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get(WEBHOOK_CONFIG_NAME)
        .await
        .unwrap();
    let hooks = mwc.webhooks.unwrap();
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0].failure_policy.as_deref(), Some("Ignore"));
    assert_eq!(hooks[0].side_effects, "None");
    let deploy = Api::<Deployment>::namespaced(client.clone(), WEBHOOK_NAMESPACE)
        .get("arc-watchdog-webhook")
        .await
        .unwrap();
    let pod_spec = deploy.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        pod_spec.service_account_name.as_deref(),
        Some(WEBHOOK_SERVICE_ACCOUNT)
    );
    Api::<ServiceAccount>::namespaced(client.clone(), WEBHOOK_NAMESPACE)
        .get(WEBHOOK_SERVICE_ACCOUNT)
        .await
        .unwrap();
    Api::<Role>::namespaced(client.clone(), LISTENER_NAMESPACE)
        .get("arc-watchdog-webhook")
        .await
        .unwrap();
    // cert-manager objects, validated against cert-manager's real CRD schemas.
    let cert = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate"),
        "certificates",
    );
    let certs: Api<DynamicObject> = Api::namespaced_with(client.clone(), WEBHOOK_NAMESPACE, &cert);
    certs.get("arc-watchdog-serving").await.unwrap();

    // Applying again changes nothing.
    let before = Api::<Deployment>::namespaced(client.clone(), WEBHOOK_NAMESPACE)
        .get("arc-watchdog-webhook")
        .await
        .unwrap();
    cp.apply_manifests().unwrap();
    let after = Api::<Deployment>::namespaced(client, WEBHOOK_NAMESPACE)
        .get("arc-watchdog-webhook")
        .await
        .unwrap();
    assert_eq!(
        before.metadata.resource_version,
        after.metadata.resource_version
    );
}
