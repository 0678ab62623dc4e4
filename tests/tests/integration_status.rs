//! `arc-watchdog status` against a real kube-apiserver: the binary itself,
//! with a kubeconfig, `-o json`. Scale sets that are healthy, in a
//! conflict loop (from the history in their Lease), without any listener,
//! and with a listener the webhook never saw; the same through kubectl as
//! the plugin `kubectl arc-watchdog`; and as a read-only identity that may
//! not list Leases, which is told and still gets an answer and a clear exit
//! status.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is the failure report

use std::path::Path;

use arc_watchdog::detector::{ANNOTATION_HISTORY, Cause, History, LoopState};
use arc_watchdog::names;
use arc_watchdog_tests::control_plane::{
    ControlPlane, LISTENER_NAMESPACE, Webhook, listener_name, workspace_bin,
};
use arc_watchdog_tests::node::FakeNode;
use arc_watchdog_tests::per_listener;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::ApiResource;
use serde_json::{Value, json};

/// Runner namespace of the scale sets that have listeners (ARC-shaped
/// listeners in the fixtures name it).
const RUNNERS: &str = "arc-runners";
/// Runner namespace of the scale set that has no listener.
const RUNNERS_MISSING: &str = "arc-runners-unserved";
/// A namespace the webhook never mutates in (its namespaceSelector): a
/// listener there runs without the watchdog.
const UNWATCHED: &str = "kube-system";

struct Fixture {
    _webhook: Webhook,
    _node: FakeNode,
}

static FIXTURE: tokio::sync::OnceCell<Fixture> = tokio::sync::OnceCell::const_new();

async fn create_runner_set(cp: &ControlPlane, namespace: &str, name: &str) {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("actions.github.com", "v1alpha1", "AutoscalingRunnerSet"),
        "autoscalingrunnersets",
    );
    let api: Api<DynamicObject> =
        Api::namespaced_with(cp.admin_client().await.unwrap(), namespace, &ar);
    let ars = json!({
        "apiVersion": "actions.github.com/v1alpha1", "kind": "AutoscalingRunnerSet",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/version": "0.14.2"}},
        "spec": {
            "githubConfigUrl": "https://github.com/example-org", "githubConfigSecret": format!("{name}-secret"),
            "template": {"spec": {"containers": [{"name": "runner", "image": "ghcr.io/actions/actions-runner:latest"}]}},
        },
    });
    api.patch(
        name,
        &PatchParams::apply("status-test").force(),
        &Patch::Apply(&ars),
    )
    .await
    .unwrap();
}

/// A history with an active session-conflict loop whose delay is served.
fn conflict_loop(now: Timestamp) -> History {
    let ago = |s: i64| now - SignedDuration::from_secs(s);
    History {
        conflicts: vec![ago(120), ago(90), ago(60)],
        evictions: vec![ago(100)],
        loop_state: Some(LoopState {
            since: ago(60),
            cause: Cause::SessionConflict,
            conflict_loop: true,
            crash_loop: false,
            delay_ms: 30_000,
            not_before: ago(30),
            last_failure: ago(60),
            times_at_cap: 0,
            waited_ms: 30_000,
            duplicate_suspected: false,
        }),
        ..History::default()
    }
}

async fn setup() -> &'static ControlPlane {
    let cp = ControlPlane::shared().await.unwrap();
    FIXTURE
        .get_or_init(|| async {
            let webhook = cp.install_arc_watchdog(&[]).await.unwrap();
            let admin = cp.admin_client().await.unwrap();
            for ns in [RUNNERS, RUNNERS_MISSING] {
                cp.create_namespace(ns).await.unwrap();
            }
            let node = FakeNode::start(admin.clone(), "status-node").await.unwrap();
            for set in ["st-healthy", "st-loop", "st-bare"] {
                create_runner_set(cp, RUNNERS, set).await;
            }
            create_runner_set(cp, RUNNERS_MISSING, "st-unserved").await;

            for set in ["st-healthy", "st-loop"] {
                let pod = cp.create_listener(LISTENER_NAMESPACE, set).await.unwrap();
                node.run_pod(LISTENER_NAMESPACE, &listener_name(set))
                    .await
                    .unwrap();
                // The Lease the watchdog would write to.
                per_listener::wait_for_pod(&admin, &pod).await.unwrap();
            }
            let bare = cp.create_listener(UNWATCHED, "st-bare").await.unwrap();
            assert!(arc_watchdog_tests::control_plane::watchdog_container(&bare).is_none());
            node.run_pod(UNWATCHED, &listener_name("st-bare"))
                .await
                .unwrap();

            let leases: Api<Lease> = Api::namespaced(admin, LISTENER_NAMESPACE);
            let history = conflict_loop(Timestamp::now()).to_json();
            leases
                .patch(
                    &names::lease_name(&listener_name("st-loop")),
                    &PatchParams::default(),
                    &Patch::Merge(
                        json!({"metadata": {"annotations": {ANNOTATION_HISTORY: history}}}),
                    ),
                )
                .await
                .unwrap();
            Fixture {
                _webhook: webhook,
                _node: node,
            }
        })
        .await;
    cp
}

/// Runs `program args` with `KUBECONFIG=kubeconfig`; its exit code and
/// stdout parsed as JSON.
async fn run_json(
    program: &Path,
    args: &[&str],
    kubeconfig: &Path,
    path_env: Option<&str>,
) -> (i32, Value) {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST");
    if let Some(path) = path_env {
        cmd.env("PATH", path);
    }
    let out = cmd.output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "{} {args:?}: not JSON ({e}): {stdout}\nstderr: {}",
            program.display(),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), json)
}

fn row<'a>(report: &'a Value, scale_set: &str) -> &'a Value {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["scale_set"] == scale_set)
        .unwrap_or_else(|| panic!("no row for {scale_set} in {report:#}"))
}

fn check_admin_view(code: i32, report: &Value) {
    let healthy = row(report, "st-healthy");
    assert_eq!(healthy["state"], "healthy", "{healthy:#}");
    assert_eq!(healthy["watchdog"], "native");
    assert_eq!(healthy["namespace"], RUNNERS);
    assert_eq!(healthy["listener"], listener_name("st-healthy"));
    assert_eq!(healthy["listener_namespace"], LISTENER_NAMESPACE);
    assert_eq!(healthy["pod_phase"], "Running");
    assert_eq!(healthy["arc_version"], "0.14.2");
    assert_eq!(healthy["conflicts_in_window"], 0);

    let looping = row(report, "st-loop");
    assert_eq!(looping["state"], "conflict_loop", "{looping:#}");
    assert_eq!(looping["cause"], "session_conflict");
    assert_eq!(looping["conflicts_in_window"], 3);
    assert_eq!(looping["evictions_last_hour"], 1);
    assert_eq!(looping["last_decision"]["reason"], "ConflictLoopDetected");

    let unserved = row(report, "st-unserved");
    assert_eq!(unserved["state"], "listener_missing", "{unserved:#}");
    assert_eq!(unserved["missing"], "no_autoscaling_listener");
    assert_eq!(unserved["namespace"], RUNNERS_MISSING);

    let bare = row(report, "st-bare");
    assert_eq!(bare["watchdog"], "none", "{bare:#}");
    assert_eq!(bare["state"], "healthy");
    assert_eq!(bare["listener_namespace"], UNWATCHED);

    assert_eq!(report["healthy"], false);
    assert_eq!(report["lacked_rights"], json!([]));
    assert_eq!(code, 1, "a scale set is not healthy: {report:#}");
}

#[tokio::test]
async fn status_shows_healthy_looping_missing_and_uninjected_scale_sets() {
    let cp = setup().await;
    let bin = workspace_bin("arc-watchdog", "arc-watchdog").unwrap();
    let (code, report) =
        run_json(&bin, &["status", "-A", "-o", "json"], cp.kubeconfig(), None).await;
    check_admin_view(code, &report);

    // One namespace: only its scale sets.
    let (_, report) = run_json(
        &bin,
        &["status", "-n", RUNNERS_MISSING, "-o", "json"],
        cp.kubeconfig(),
        None,
    )
    .await;
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{report:#}");
    assert_eq!(rows[0]["scale_set"], "st-unserved");
}

#[tokio::test]
async fn kubectl_runs_it_as_the_arc_watchdog_plugin() {
    let cp = setup().await;
    let bin = workspace_bin("arc-watchdog", "arc-watchdog").unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&bin, dir.path().join("kubectl-arc_watchdog")).unwrap();
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let kubectl = arc_watchdog_tests::control_plane::go_tool("kubectl").unwrap();
    let (code, report) = run_json(
        &kubectl,
        &["arc-watchdog", "status", "-A", "-o", "json"],
        cp.kubeconfig(),
        Some(&path),
    )
    .await;
    check_admin_view(code, &report);

    // Usage names the plugin as it was called.
    let help = std::process::Command::new(dir.path().join("kubectl-arc_watchdog"))
        .args(["status", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("kubectl arc-watchdog status"), "{help}");
}

#[tokio::test]
async fn a_reader_without_lease_rights_is_told_and_gets_a_clear_exit_status() {
    let cp = setup().await;
    // Read-only, and not Leases: what an operator's view role may hold.
    cp.apply_yaml(
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: status-reader, namespace: arc-runners}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: status-reader}
rules:
  - apiGroups: ["actions.github.com"]
    resources: ["autoscalingrunnersets", "autoscalinglisteners"]
    verbs: ["list"]
  - apiGroups: [""]
    resources: ["pods"]
    verbs: ["list"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: status-reader}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: status-reader}
subjects: [{kind: ServiceAccount, name: status-reader, namespace: arc-runners}]
"#,
        None,
    )
    .await
    .unwrap();
    let token = cp
        .service_account_token(RUNNERS, "status-reader", None)
        .await
        .unwrap();
    let kubeconfig = cp.write_token_kubeconfig("status-reader", &token).unwrap();
    let bin = workspace_bin("arc-watchdog", "arc-watchdog").unwrap();
    let (code, report) = run_json(
        &bin,
        &["status", "-n", RUNNERS, "-o", "json"],
        &kubeconfig,
        None,
    )
    .await;

    let lacked = report["lacked_rights"].as_array().unwrap();
    assert!(
        lacked
            .iter()
            .any(|l| l == "list leases.coordination.k8s.io in arc-systems"),
        "{report:#}"
    );
    // A watched listener's history is unknown; one without the watchdog has
    // none to miss.
    assert_eq!(row(&report, "st-healthy")["state"], "unknown", "{report:#}");
    assert_eq!(row(&report, "st-loop")["state"], "unknown");
    assert_eq!(row(&report, "st-loop")["conflicts_in_window"], Value::Null);
    assert_eq!(row(&report, "st-bare")["state"], "healthy");
    assert_eq!(
        code, 3,
        "nothing known unhealthy, something unknown: {report:#}"
    );
}
