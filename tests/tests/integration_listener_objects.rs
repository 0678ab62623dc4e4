//! The per-listener Role, RoleBinding and Lease on the real API server, with
//! the real garbage collector (kube-controller-manager): they follow ARC's
//! AutoscalingListeners and nothing else. Admission writes nothing, so a
//! forged AdmissionReview or a listener-shaped pod without a listener
//! creates nothing; objects that are not arc-watchdog's are never changed;
//! drift is repaired; a deleted scale set takes its objects along; and a
//! scale set created again under the same name starts with an empty
//! history.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is the failure report

use std::time::Duration;

use arc_watchdog::detector::ANNOTATION_HISTORY;
use arc_watchdog::names;
use arc_watchdog_tests::control_plane::{
    ControlPlane, LISTENER_NAMESPACE, Webhook, listener_name, listener_pod,
};
use arc_watchdog_tests::per_listener;
use arc_watchdog_webhook::rbac::role_rules;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding};
use kube::api::{Api, DeleteParams, PostParams};
use kube::core::DynamicObject;
use kube::runtime::wait::{await_condition, conditions};
use kube::{Resource, ResourceExt as _};
use serde_json::json;

/// One webhook for the tests of this binary, which run side by side.
static WEBHOOK: tokio::sync::OnceCell<Webhook> = tokio::sync::OnceCell::const_new();

async fn setup() -> (&'static ControlPlane, &'static Webhook) {
    let cp = ControlPlane::shared().await.unwrap();
    let webhook = WEBHOOK
        .get_or_init(|| async { cp.install_arc_watchdog(&[]).await.unwrap() })
        .await;
    (cp, webhook)
}

/// How long the controller or the garbage collector may take.
const DEADLINE: Duration = Duration::from_secs(60);

async fn absent<K>(api: &Api<K>, name: &str) -> bool
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    api.get_opt(name).await.unwrap().is_none()
}

async fn wait<K, C>(api: &Api<K>, name: &str, what: &str, cond: C) -> Option<K>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    C: kube::runtime::wait::Condition<K>,
{
    tokio::time::timeout(DEADLINE, await_condition(api.clone(), name, cond))
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {DEADLINE:?}"))
        .unwrap()
}

/// An AdmissionReview as the API server would send it for `pod`.
fn review(pod: &Pod) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "forged-0001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "name": pod.metadata.name,
            "namespace": LISTENER_NAMESPACE,
            "operation": "CREATE",
            "userInfo": {"username": "mallory"},
            "object": pod,
            "dryRun": false,
        }
    }))
    .unwrap()
}

#[tokio::test]
async fn forged_reviews_and_pods_without_a_listener_create_nothing() {
    let (cp, webhook) = setup().await;
    let client = cp.admin_client().await.unwrap();
    let ns = LISTENER_NAMESPACE;
    let roles: Api<Role> = Api::namespaced(client.clone(), ns);
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    let own_role = roles.get("arc-watchdog-webhook").await.unwrap();

    // Forged reviews straight at /mutate (it authenticates nobody): one
    // for a pod named like the webhook's own Role, one rebinding a
    // listener's name to another ServiceAccount.
    let mut named_webhook = listener_pod("forged", "");
    named_webhook.metadata.name = Some("webhook".into());
    let mut rebinding = listener_pod("forged-rebind", "");
    rebinding.spec.as_mut().unwrap().service_account_name = Some("mallory".into());
    for pod in [&named_webhook, &rebinding] {
        let (status, body) = webhook.post_review(review(pod)).await.unwrap();
        let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status, 200, "{answer}");
        assert!(
            answer["response"]["patch"].is_string(),
            "answered like any listener pod: {answer}"
        );
    }
    // A listener-shaped pod through the API, without an AutoscalingListener.
    let mut orphan = listener_pod("no-listener", "");
    orphan.metadata.owner_references = None;
    cp.create_service_account(ns, &listener_name("no-listener"))
        .await
        .unwrap();
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &orphan)
        .await
        .unwrap();

    // A positive control, created after them: the controller runs, and has
    // seen everything there is to see.
    let control = cp.create_listener(ns, "forged-control").await.unwrap();
    per_listener::wait_for_pod(&client, &control).await.unwrap();

    for listener in [
        "webhook".to_owned(),
        listener_name("forged-rebind"),
        listener_name("no-listener"),
    ] {
        let name = names::rbac_name(&listener);
        assert!(absent(&roles, &name).await, "Role {name}");
        assert!(absent(&bindings, &name).await, "RoleBinding {name}");
        assert!(
            absent(&leases, &names::lease_name(&listener)).await,
            "Lease of {listener}"
        );
    }
    let after = roles.get("arc-watchdog-webhook").await.unwrap();
    assert_eq!(
        after.resource_version(),
        own_role.resource_version(),
        "the webhook's own Role is untouched"
    );
}

#[tokio::test]
async fn objects_of_others_are_left_alone_and_drift_of_ours_is_repaired() {
    let (cp, _) = setup().await;
    let client = cp.admin_client().await.unwrap();
    let ns = LISTENER_NAMESPACE;
    let roles: Api<Role> = Api::namespaced(client.clone(), ns);
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
    let pp = PostParams::default();

    // Someone else's Role under the per-listener name, before the listener.
    let foreign_listener = listener_name("foreign");
    let foreign_name = names::rbac_name(&foreign_listener);
    let foreign = roles
        .create(
            &pp,
            &Role {
                metadata: kube::api::ObjectMeta {
                    name: Some(foreign_name.clone()),
                    labels: Some([("team".to_owned(), "platform".to_owned())].into()),
                    ..Default::default()
                },
                rules: Some(vec![]),
            },
        )
        .await
        .unwrap();
    let al = cp.create_autoscaling_listener(ns, "foreign").await.unwrap();
    // The Lease shows the controller reconciled this listener...
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    let uid = al.uid().unwrap();
    wait(
        &leases,
        &names::lease_name(&foreign_listener),
        "the Lease",
        move |l: Option<&Lease>| {
            l.is_some_and(|l| l.owner_references().iter().any(|r| r.uid == uid))
        },
    )
    .await;
    // ...and the Role it does not own is as it was.
    let still = roles.get(&foreign_name).await.unwrap();
    assert_eq!(still.resource_version(), foreign.resource_version());
    assert_eq!(still.rules, foreign.rules);
    assert!(!still.labels().contains_key(names::MANAGED_BY_LABEL));

    // Drift of our own objects is repaired.
    let pod = cp.create_listener(ns, "drift").await.unwrap();
    let objects = per_listener::wait_for_pod(&client, &pod).await.unwrap();
    let name = objects.role.name_any();
    let mut widened = objects.role.clone();
    widened.rules.get_or_insert_default().push(PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec!["secrets".into()]),
        verbs: vec!["get".into()],
        ..Default::default()
    });
    roles.replace(&name, &pp, &widened).await.unwrap();
    let want = Some(role_rules(&pod.name_any()));
    wait(
        &roles,
        &name,
        "the widened Role repaired",
        move |r: Option<&Role>| r.is_some_and(|r| r.rules == want),
    )
    .await;
    bindings
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    let old_uid = objects.binding.uid().unwrap();
    wait(
        &bindings,
        &name,
        "the deleted RoleBinding recreated",
        move |b: Option<&RoleBinding>| {
            b.is_some_and(|b| b.uid().as_deref() != Some(old_uid.as_str()))
        },
    )
    .await;
}

#[tokio::test]
async fn a_deleted_scale_set_takes_its_objects_and_a_new_one_starts_over() {
    let (cp, _) = setup().await;
    assert!(
        cp.has_controller_manager(),
        "needs kube-controller-manager's garbage collector (ARC_WATCHDOG_NO_CONTROLLER_MANAGER is set?)"
    );
    let client = cp.admin_client().await.unwrap();
    let ns = LISTENER_NAMESPACE;
    let roles: Api<Role> = Api::namespaced(client.clone(), ns);
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    let ar = arc_watchdog_webhook::rbac::controller::autoscaling_listener_resource();
    let listeners: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);

    // Deleted: the garbage collector removes the three objects with it.
    let al = cp.create_autoscaling_listener(ns, "gc-gone").await.unwrap();
    let listener = al.name_any();
    let objects = per_listener::wait_for_objects(&client, ns, &listener, &al.uid().unwrap())
        .await
        .unwrap();
    listeners
        .delete(&listener, &DeleteParams::background())
        .await
        .unwrap();
    let name = names::rbac_name(&listener);
    let (role_uid, binding_uid, lease_uid) = (
        objects.role.uid().unwrap(),
        objects.binding.uid().unwrap(),
        objects.lease.uid().unwrap(),
    );
    wait(
        &roles,
        &name,
        "the Role collected",
        conditions::is_deleted(&role_uid),
    )
    .await;
    wait(
        &bindings,
        &name,
        "the RoleBinding collected",
        conditions::is_deleted(&binding_uid),
    )
    .await;
    wait(
        &leases,
        &names::lease_name(&listener),
        "the Lease collected",
        conditions::is_deleted(&lease_uid),
    )
    .await;

    // Deleted and created again under the same name at once: the new
    // listener's Lease holds no history of the old one's.
    let old = cp
        .create_autoscaling_listener(ns, "gc-again")
        .await
        .unwrap();
    let listener = old.name_any();
    let lease_name = names::lease_name(&listener);
    per_listener::wait_for_objects(&client, ns, &listener, &old.uid().unwrap())
        .await
        .unwrap();
    let mut lease = leases.get(&lease_name).await.unwrap();
    lease.annotations_mut().insert(
        ANNOTATION_HISTORY.to_owned(),
        r#"{"version":1,"conflicts":["2026-01-01T00:00:00Z"]}"#.to_owned(),
    );
    leases
        .replace(&lease_name, &PostParams::default(), &lease)
        .await
        .unwrap();
    listeners
        .delete(&listener, &DeleteParams::background())
        .await
        .unwrap();
    let old_uid = old.uid().unwrap();
    wait(
        &listeners,
        &listener,
        "the old listener deleted",
        conditions::is_deleted(&old_uid),
    )
    .await;
    let new = cp
        .create_autoscaling_listener(ns, "gc-again")
        .await
        .unwrap();
    assert_ne!(new.uid(), old.uid());
    let objects = per_listener::wait_for_objects(&client, ns, &listener, &new.uid().unwrap())
        .await
        .unwrap();
    assert!(
        !objects.lease.annotations().contains_key(ANNOTATION_HISTORY),
        "the old listener's history is gone: {:?}",
        objects.lease.annotations()
    );
}
