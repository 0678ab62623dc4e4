//! The Helm chart on a real API server (with cert-manager's and ARC's real
//! CRDs), with the real helm: `helm install` as the README shows it stores
//! every rendered object; `helm upgrade` with other values changes them (and
//! adds a listener namespace's Role); `helm uninstall` leaves none of the
//! release's objects behind. No webhook runs (failurePolicy Ignore: nothing
//! waits for it).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is the failure report

use std::time::Duration;

use arc_watchdog_tests::chart::{self, NAMESPACE, RELEASE, chart_dir, helm_run, parse_objects};
use arc_watchdog_tests::control_plane::{ControlPlane, LISTENER_NAMESPACE};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::rbac::v1::Role;
use kube::api::Api;
use serde_json::Value;

const SECOND_LISTENER_NAMESPACE: &str = "arc-gpu";

/// Kinds the chart renders, as kubectl names them, for listing by label.
const KINDS: &str = "deployments.apps,services,serviceaccounts,poddisruptionbudgets.policy,\
roles.rbac.authorization.k8s.io,rolebindings.rbac.authorization.k8s.io,\
clusterroles.rbac.authorization.k8s.io,clusterrolebindings.rbac.authorization.k8s.io,\
mutatingwebhookconfigurations.admissionregistration.k8s.io,\
issuers.cert-manager.io,certificates.cert-manager.io";

fn helm(cp: &ControlPlane, args: &[&str]) -> String {
    let kubeconfig = cp.kubeconfig().to_string_lossy().into_owned();
    let mut all = args.to_vec();
    all.extend_from_slice(&["--kubeconfig", &kubeconfig]);
    helm_run(&all).unwrap()
}

/// `kubectl get KINDS -A -l app.kubernetes.io/instance=arc-watchdog -o name`.
fn release_objects(cp: &ControlPlane) -> Vec<String> {
    let out = cp
        .kubectl_run(&[
            "get",
            KINDS,
            "--all-namespaces",
            "-l",
            &format!("app.kubernetes.io/instance={RELEASE}"),
            "-o",
            "name",
        ])
        .unwrap();
    let mut names: Vec<String> = out.lines().map(str::to_owned).collect();
    names.sort();
    names
}

/// `kind/name` as `kubectl get -o name` prints it, for each rendered object.
fn kubectl_names(objects: &[Value]) -> Vec<String> {
    let group = |o: &Value| {
        let api = o["apiVersion"].as_str().unwrap();
        api.rsplit_once('/').map(|(g, _)| g.to_owned())
    };
    let mut names: Vec<String> = objects
        .iter()
        .map(|o| {
            let kind = o["kind"].as_str().unwrap().to_lowercase();
            let name = o["metadata"]["name"].as_str().unwrap();
            match group(o) {
                Some(g) => format!("{kind}.{g}/{name}"),
                None => format!("{kind}/{name}"),
            }
        })
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn helm_install_upgrade_and_uninstall_leave_nothing_behind() {
    let cp = ControlPlane::shared().await.unwrap();
    for ns in [LISTENER_NAMESPACE, SECOND_LISTENER_NAMESPACE] {
        cp.create_namespace(ns).await.unwrap();
    }
    cp.install_cert_manager_crds().await.unwrap();
    cp.install_arc_crds().await.unwrap();
    let chart = chart_dir().to_string_lossy().into_owned();

    // Install, as the README shows it (from the directory instead of OCI).
    let out = helm(
        cp,
        &[
            "install",
            RELEASE,
            &chart,
            "--namespace",
            NAMESPACE,
            "--create-namespace",
        ],
    );
    assert!(out.contains("STATUS: deployed"), "{out}");
    let manifest =
        parse_objects(&helm(cp, &["get", "manifest", RELEASE, "-n", NAMESPACE])).unwrap();
    assert!(manifest.len() >= 12, "{} objects", manifest.len());
    let stored = release_objects(cp);
    assert_eq!(
        stored,
        kubectl_names(&manifest),
        "every rendered object is stored"
    );

    let client = cp.admin_client().await.unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let before = deployments.get("arc-watchdog-webhook").await.unwrap();
    assert_eq!(before.spec.as_ref().unwrap().replicas, Some(2));
    let gpu_roles: Api<Role> = Api::namespaced(client.clone(), SECOND_LISTENER_NAMESPACE);
    assert!(
        gpu_roles
            .get_opt("arc-watchdog-webhook")
            .await
            .unwrap()
            .is_none()
    );

    // Upgrade with other values: the objects follow.
    let out = helm(
        cp,
        &[
            "upgrade",
            RELEASE,
            &chart,
            "--namespace",
            NAMESPACE,
            "--set",
            "replicas=3",
            "--set",
            &format!("listenerNamespaces={{{LISTENER_NAMESPACE},{SECOND_LISTENER_NAMESPACE}}}"),
            "--set",
            "watchdog.conflictThreshold=5",
            "--set",
            "sidecarMode=classic",
        ],
    );
    assert!(out.contains("REVISION: 2"), "{out}");
    let after = deployments.get("arc-watchdog-webhook").await.unwrap();
    let spec = after.spec.unwrap();
    assert_eq!(spec.replicas, Some(3));
    let container = &spec.template.spec.unwrap().containers[0];
    let env: Vec<(String, Option<String>)> = container
        .env
        .clone()
        .unwrap()
        .into_iter()
        .map(|e| (e.name, e.value))
        .collect();
    assert!(
        env.contains(&(
            "ARC_WATCHDOG_LISTENER_NAMESPACES".to_owned(),
            Some(format!("{LISTENER_NAMESPACE},{SECOND_LISTENER_NAMESPACE}"))
        )),
        "{env:?}"
    );
    assert!(
        env.contains(&(
            "ARC_WATCHDOG_CONFLICT_THRESHOLD".to_owned(),
            Some("5".to_owned())
        )),
        "{env:?}"
    );
    assert!(
        container
            .args
            .as_ref()
            .unwrap()
            .contains(&"--sidecar-mode=classic".to_owned())
    );
    gpu_roles.get("arc-watchdog-webhook").await.unwrap();
    let manifest =
        parse_objects(&helm(cp, &["get", "manifest", RELEASE, "-n", NAMESPACE])).unwrap();
    let stored = release_objects(cp);
    assert_eq!(stored, kubectl_names(&manifest));

    // Uninstall: nothing of the release is left, the release record neither.
    let out = helm(
        cp,
        &["uninstall", RELEASE, "--namespace", NAMESPACE, "--wait"],
    );
    assert!(out.contains("uninstalled"), "{out}");
    let mut left = release_objects(cp);
    for _ in 0..60 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        left = release_objects(cp);
    }
    assert!(left.is_empty(), "left after helm uninstall: {left:?}");
    for o in &manifest {
        let id = chart::object_id(o);
        let name = kubectl_names(std::slice::from_ref(o)).remove(0);
        let mut args = vec!["get", name.as_str(), "--ignore-not-found", "-o", "name"];
        let ns = o["metadata"]["namespace"].as_str();
        if let Some(ns) = ns {
            args.extend_from_slice(&["-n", ns]);
        }
        let out = cp.kubectl_run(&args).unwrap();
        assert!(out.trim().is_empty(), "{id} is left after helm uninstall");
    }
    let records = cp
        .kubectl_run(&[
            "get",
            "secrets",
            "-n",
            NAMESPACE,
            "-l",
            "owner=helm",
            "-o",
            "name",
        ])
        .unwrap();
    assert!(records.trim().is_empty(), "release records left: {records}");
    // The listener namespaces are ARC's: they stay.
    for ns in [LISTENER_NAMESPACE, SECOND_LISTENER_NAMESPACE] {
        cp.kubectl_run(&["get", "namespace", ns]).unwrap();
    }
}
