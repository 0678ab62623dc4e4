//! On a real kube-apiserver, the webhook (a local
//! process, registered from manifests/ with a local URL, running as its own
//! ServiceAccount) injects the watchdog into ARC listener pods created
//! through the API, in native and classic mode; the API server accepts the
//! result; the watchdog's identity works; everything else is left alone;
//! `--dry-run=server` works; a stopped webhook does not stop listeners.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is the failure report

use std::time::{Duration, Instant};

use arc_watchdog::detector::{ANNOTATION_HISTORY, Cause, History, LoopState};
use arc_watchdog::names;
use arc_watchdog_tests::control_plane::{
    ControlPlane, LISTENER_NAMESPACE, Webhook, eventually, listener_name, listener_pod,
    metric_value, watchdog_container,
};
use arc_watchdog_tests::per_listener;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Container, Node, Pod};
use k8s_openapi::api::rbac::v1::Role;
use kube::Resource as _;
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::sync::{Mutex, MutexGuard};

/// Who the webhook talks to the API server as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Identity {
    /// Its own ServiceAccount (manifests/), as installed.
    ServiceAccount,
    /// A token the API server rejects: every request (`/version`, RBAC)
    /// fails with 401.
    Rejected,
}

/// The webhook process of this test binary, the flags and identity it runs
/// with. Tests hold the lock for their whole run: some restart or stop it.
static WEBHOOK: Mutex<Option<(Vec<String>, Identity, Webhook)>> = Mutex::const_new(None);
static INSTALLED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

type WebhookGuard = MutexGuard<'static, Option<(Vec<String>, Identity, Webhook)>>;

/// The shared control plane with arc-watchdog installed and a webhook
/// running with exactly `args` (None: stopped) as its own ServiceAccount.
async fn setup(args: Option<&[&str]>) -> (&'static ControlPlane, WebhookGuard) {
    setup_as(args, Identity::ServiceAccount).await
}

/// [`setup`] with the webhook running as `identity`.
async fn setup_as(
    args: Option<&[&str]>,
    identity: Identity,
) -> (&'static ControlPlane, WebhookGuard) {
    let cp = ControlPlane::shared().await.unwrap();
    let mut guard = WEBHOOK.lock().await;
    INSTALLED
        .get_or_init(|| async { cp.prepare_arc_watchdog().await.unwrap() })
        .await;
    let wanted: Vec<String> = args
        .unwrap_or_default()
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let current = guard.as_ref().map(|(a, i, _)| (a.clone(), *i));
    if current.as_ref() != Some(&(wanted.clone(), identity)) {
        if let Some((_, _, old)) = guard.take() {
            old.stop();
        }
        let refs: Vec<&str> = wanted.iter().map(String::as_str).collect();
        let kubeconfig = match identity {
            Identity::ServiceAccount => cp.webhook_kubeconfig().await.unwrap(),
            Identity::Rejected => cp
                .write_token_kubeconfig("webhook-rejected", "not-a-token-the-api-server-issued")
                .unwrap(),
        };
        let wh = Webhook::start(cp, "webhook", &kubeconfig, &refs)
            .await
            .unwrap();
        wh.register(cp).await.unwrap();
        *guard = Some((wanted, identity, wh));
    }
    if args.is_none() {
        // Registered, then stopped: the API server calls a closed port.
        if let Some((_, _, wh)) = guard.take() {
            wh.stop();
        }
    }
    (cp, guard)
}

fn watchdog_of(containers: &[Container]) -> Option<&Container> {
    containers.iter().find(|c| c.name == names::CONTAINER_NAME)
}

/// What the injected container needs to authenticate: the projected token
/// volume mounted read-only at the service-account path, exactly once.
fn assert_can_authenticate(pod: &Pod, c: &Container) {
    let spec = pod.spec.as_ref().unwrap();
    let mounts: Vec<_> = c
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| m.mount_path == "/var/run/secrets/kubernetes.io/serviceaccount")
        .collect();
    assert_eq!(mounts.len(), 1, "one token mount in {}: {mounts:?}", c.name);
    assert_eq!(mounts[0].read_only, Some(true));
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mounts[0].name)
        .expect("the mounted volume exists");
    let sources = &volume
        .projected
        .as_ref()
        .expect("a projected volume")
        .sources;
    let sources = sources.as_ref().unwrap();
    let token = sources
        .iter()
        .find_map(|s| s.service_account_token.as_ref())
        .expect("a serviceAccountToken source");
    assert_eq!(token.path, "token");
    assert!(
        sources.iter().any(|s| s
            .config_map
            .as_ref()
            .is_some_and(|cm| cm.name == "kube-root-ca.crt")),
        "the API server's CA comes with the token"
    );
    let env: Vec<_> = c.env.iter().flatten().collect();
    for (name, path) in [
        (names::ENV_POD_NAME, "metadata.name"),
        (names::ENV_POD_NAMESPACE, "metadata.namespace"),
        (names::ENV_POD_UID, "metadata.uid"),
    ] {
        let var = env
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("env {name}"));
        let field = var
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .unwrap();
        assert_eq!(field.field_path, path);
    }
}

fn assert_hardened(c: &Container) {
    let sc = c.security_context.as_ref().expect("securityContext");
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let drop = sc
        .capabilities
        .as_ref()
        .and_then(|c| c.drop.clone())
        .unwrap_or_default();
    assert_eq!(drop, vec!["ALL".to_owned()]);
    assert!(
        c.resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .is_some(),
        "requests set"
    );
    assert_eq!(
        c.args.as_ref().and_then(|a| a.first()).map(String::as_str),
        Some("run")
    );
    let probe = c
        .liveness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .expect("liveness probe");
    assert_eq!(probe.path.as_deref(), Some(names::PATH_HEALTHZ));
    // Stored by the real API server: the readiness probe that makes a
    // failing-open watchdog a not-ready container.
    let probe = c
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .expect("readiness probe");
    assert_eq!(probe.path.as_deref(), Some(names::PATH_READYZ_WATCHING));
}

/// The listener container is exactly what ARC asked for (the webhook never
/// touches it; the ServiceAccount admission plugin adds its token mount).
fn assert_listener_untouched(pod: &Pod, sent: &Pod) {
    let got = pod
        .spec
        .as_ref()
        .unwrap()
        .containers
        .iter()
        .find(|c| c.name == "listener")
        .unwrap();
    let want = &sent.spec.as_ref().unwrap().containers[0];
    assert_eq!(got.image, want.image);
    assert_eq!(got.command, want.command);
    assert_eq!(got.env, want.env);
    assert_eq!(got.args, want.args);
    assert!(
        got.startup_probe.is_none()
            && got.liveness_probe.is_none()
            && got.readiness_probe.is_none()
    );
}

async fn assert_per_listener_rbac(cp: &ControlPlane, pod: &Pod) {
    let client = cp.admin_client().await.unwrap();
    let ns = pod.metadata.namespace.as_deref().unwrap();
    let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(owner.kind, "AutoscalingListener");
    let objects = per_listener::wait_for_objects(&client, ns, &owner.name, &owner.uid)
        .await
        .unwrap();
    let (role, binding, lease) = (objects.role, objects.binding, objects.lease);
    for meta in [role.meta(), binding.meta(), lease.meta()] {
        let labels = meta.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get(names::MANAGED_BY_LABEL).map(String::as_str),
            Some(names::MANAGED_BY_VALUE)
        );
        assert_eq!(
            meta.name.as_deref(),
            Some(names::rbac_name(pod.metadata.name.as_deref().unwrap()).as_str()),
            "named after the listener, which the pod is named after"
        );
    }
    assert_eq!(
        role.rules,
        Some(arc_watchdog_webhook::rbac::role_rules(
            pod.metadata.name.as_deref().unwrap()
        ))
    );
    let sa = pod
        .spec
        .as_ref()
        .unwrap()
        .service_account_name
        .clone()
        .unwrap();
    assert!(
        binding
            .subjects
            .unwrap_or_default()
            .iter()
            .any(|s| s.kind == "ServiceAccount" && s.name == sa)
    );
}

/// The injection mode the webhook recorded on `pod`.
fn injected_mode(pod: &Pod) -> Option<String> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(names::ANNOTATION_INJECTED)
        .cloned()
}

/// `pod` has a native sidecar: the watchdog is the first init container,
/// with `restartPolicy: Always`, and nowhere else; with the start gate when
/// `gated` says so (`None`: either, but a probe is the gate's).
fn assert_native_gated(pod: &Pod, gated: Option<bool>) -> &Container {
    assert_eq!(injected_mode(pod).as_deref(), Some("native"));
    let spec = pod.spec.as_ref().unwrap();
    let wd = spec
        .init_containers
        .as_deref()
        .unwrap_or_default()
        .first()
        .expect("an init container");
    assert_eq!(
        wd.name,
        names::CONTAINER_NAME,
        "the watchdog is the first init container"
    );
    assert_eq!(wd.restart_policy.as_deref(), Some("Always"));
    if let Some(gated) = gated {
        assert_eq!(wd.startup_probe.is_some(), gated, "start gate");
    }
    if let Some(probe) = &wd.startup_probe {
        let startup = probe.http_get.as_ref().expect("an HTTP start gate");
        assert_eq!(startup.path.as_deref(), Some(names::PATH_STARTZ));
    }
    assert!(
        watchdog_of(&spec.containers).is_none(),
        "not also a regular container"
    );
    wd
}

/// [`assert_native_gated`], gate or not: whether a pod gets the start gate
/// depends on its listener's Lease and on whether the webhook has listed
/// the Leases yet (the test of the gate awaits that).
fn assert_native(pod: &Pod) -> &Container {
    assert_native_gated(pod, None)
}

/// `pod` has a classic sidecar: the watchdog is a regular container after
/// the listener, without a start gate, and not an init container.
fn assert_classic(pod: &Pod) -> &Container {
    assert_eq!(injected_mode(pod).as_deref(), Some("classic"));
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(
        spec.containers[0].name, "listener",
        "the listener stays the first container"
    );
    let wd = watchdog_of(&spec.containers).expect("the watchdog as a regular container");
    assert!(wd.restart_policy.is_none());
    assert!(wd.startup_probe.is_none(), "classic mode has no start gate");
    assert!(
        spec.init_containers
            .iter()
            .flatten()
            .all(|c| c.name != names::CONTAINER_NAME)
    );
    wd
}

#[tokio::test]
async fn listener_pod_gets_a_native_sidecar_that_can_authenticate() {
    let (cp, _guard) = setup(Some(&["--sidecar-mode=native"])).await;
    let sent = listener_pod("inject-native", "uid-is-replaced");
    let pod = cp
        .create_listener(LISTENER_NAMESPACE, "inject-native")
        .await
        .unwrap();
    let wd = assert_native(&pod);
    assert_hardened(wd);
    assert_can_authenticate(&pod, wd);
    assert_listener_untouched(&pod, &sent);
    assert_per_listener_rbac(cp, &pod).await;

    // The token the kubelet would mount (bound to this pod) really works
    // for what the watchdog does first: read its own pod.
    let as_watchdog = cp.pod_client(&pod).await.unwrap();
    let own: Pod = Api::namespaced(as_watchdog, LISTENER_NAMESPACE)
        .get(pod.metadata.name.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!(own.metadata.uid, pod.metadata.uid);
}

/// Whether a listener pod of `scale_set` created now would get the start
/// gate: the answer of a server-side dry run, which goes through admission
/// and stores nothing.
async fn gated_now(client: &kube::Client, scale_set: &str, owner_uid: &str) -> bool {
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let shown = Api::<Pod>::namespaced(client.clone(), LISTENER_NAMESPACE)
        .create(&dry_run, &listener_pod(scale_set, owner_uid))
        .await
        .unwrap();
    watchdog_container(&shown)
        .expect("injected")
        .startup_probe
        .is_some()
}

/// Writes a watchdog history into `listener`'s Lease whose loop holds the
/// next start until `not_before`, as the watchdog writes it on a failed start.
async fn write_backoff(client: &kube::Client, listener: &str, not_before: Timestamp) {
    let history = History {
        conflicts: vec![Timestamp::now()],
        loop_state: Some(LoopState {
            since: Timestamp::now(),
            cause: Cause::SessionConflict,
            conflict_loop: true,
            crash_loop: false,
            delay_ms: 30_000,
            not_before,
            last_failure: Timestamp::now(),
            times_at_cap: 0,
            waited_ms: 0,
            duplicate_suspected: false,
        }),
        ..History::default()
    };
    Api::<Lease>::namespaced(client.clone(), LISTENER_NAMESPACE)
        .patch(
            &names::lease_name(listener),
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({
                "metadata": {"annotations": {ANNOTATION_HISTORY: history.to_json()}}
            })),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn the_start_gate_is_added_only_while_the_listeners_lease_holds_a_backoff() {
    let (cp, _guard) = setup(Some(&["--sidecar-mode=native"])).await;
    let client = cp.admin_client().await.unwrap();
    let scale_set = "gate-backoff";
    let listener = listener_name(scale_set);
    let al = cp
        .create_autoscaling_listener(LISTENER_NAMESPACE, scale_set)
        .await
        .unwrap();
    let uid = al.metadata.uid.clone().unwrap();
    per_listener::wait_for_objects(&client, LISTENER_NAMESPACE, &listener, &uid)
        .await
        .unwrap();
    let gate = |want: bool, what: &'static str| {
        let client = client.clone();
        let uid = uid.clone();
        async move {
            eventually(Duration::from_secs(30), what, || async {
                (gated_now(&client, scale_set, &uid).await == want).then_some(())
            })
            .await
            .unwrap();
        }
    };
    gate(false, "no start gate for a listener without a backoff").await;

    // A backoff pending: the next pod waits for the watchdog's /startz.
    write_backoff(
        &client,
        &listener,
        Timestamp::now() + SignedDuration::from_mins(10),
    )
    .await;
    gate(
        true,
        "the start gate while the Lease holds a pending backoff",
    )
    .await;
    let pod = cp
        .create_listener(LISTENER_NAMESPACE, scale_set)
        .await
        .unwrap();
    assert_native_gated(&pod, Some(true));
    // Gone, as ARC's controller deletes it before the next one.
    Api::<Pod>::namespaced(client.clone(), LISTENER_NAMESPACE)
        .delete(
            &listener,
            &kube::api::DeleteParams::default().grace_period(0),
        )
        .await
        .unwrap();

    // The backoff over: no gate again.
    write_backoff(
        &client,
        &listener,
        Timestamp::now() - SignedDuration::from_secs(1),
    )
    .await;
    gate(false, "no start gate once the backoff has ended").await;
}

#[tokio::test]
async fn listener_pod_gets_a_classic_sidecar_when_asked() {
    let (cp, _guard) = setup(Some(&["--sidecar-mode=classic"])).await;
    let sent = listener_pod("inject-classic", "x");
    let pod = cp
        .create_listener(LISTENER_NAMESPACE, "inject-classic")
        .await
        .unwrap();
    let wd = assert_classic(&pod);
    assert_hardened(wd);
    assert_can_authenticate(&pod, wd);
    assert_listener_untouched(&pod, &sent);
    assert_per_listener_rbac(cp, &pod).await;
}

/// Registers a Linux Node whose kubelet reports `kubelet_version` (no
/// kubelet runs behind it: only its status is read).
async fn register_node(cp: &ControlPlane, name: &str, kubelet_version: &str) {
    let node: Node = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/os": "linux"}},
        "status": {"nodeInfo": {
            "kubeletVersion": kubelet_version, "operatingSystem": "linux", "architecture": "amd64",
            "bootID": "", "containerRuntimeVersion": "", "kernelVersion": "", "kubeProxyVersion": "",
            "machineID": "", "osImage": "", "systemUUID": "",
        }},
    }))
    .unwrap();
    let nodes: Api<Node> = Api::all(cp.admin_client().await.unwrap());
    if nodes.get_opt(name).await.unwrap().is_none() {
        nodes.create(&PostParams::default(), &node).await.unwrap();
    }
}

/// Waits until the webhook's `native_sidecars` gauge reads `native`.
async fn mode_becomes(webhook: &Webhook, native: bool) {
    let want = f64::from(u8::from(native));
    eventually(
        Duration::from_secs(30),
        "the webhook's sidecar mode",
        || async {
            let text = webhook.metrics().await.ok()?;
            (metric_value(&text, "arc_watchdog_webhook_native_sidecars", &[])? == want)
                .then_some(())
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn auto_mode_picks_native_on_a_1_34_api_server_and_the_stored_pod_keeps_it() {
    // `auto` starts out classic and turns native only when the API server's
    // /version and every Linux node's kubelet say 1.29 or newer: a native
    // pod here proves it asked both.
    let (cp, guard) = setup(Some(&["--sidecar-mode=auto"])).await;
    register_node(cp, "auto-kubelet-1-34", "v1.34.4").await;
    mode_becomes(&guard.as_ref().unwrap().2, true).await;
    let created = cp
        .create_listener(LISTENER_NAMESPACE, "auto-native")
        .await
        .unwrap();
    assert_native(&created);
    // Read back what etcd holds: an API server without native sidecars
    // would have dropped `restartPolicy` from the init container.
    let client = cp.admin_client().await.unwrap();
    let stored = Api::<Pod>::namespaced(client, LISTENER_NAMESPACE)
        .get(created.metadata.name.as_deref().unwrap())
        .await
        .unwrap();
    assert_native(&stored);
}

#[tokio::test]
async fn auto_mode_is_classic_while_a_linux_kubelet_is_older_than_1_29() {
    // A 1.34 API server with a 1.28 node (upgrades do the control plane
    // first): a native sidecar on that node would never let its listener
    // start, so every listener gets a classic one until the node is gone.
    let (cp, guard) = setup(Some(&["--sidecar-mode=auto"])).await;
    let webhook = &guard.as_ref().unwrap().2;
    register_node(cp, "auto-kubelet-1-34", "v1.34.4").await;
    register_node(cp, "auto-kubelet-1-28", "v1.28.15").await;
    mode_becomes(webhook, false).await;
    let pod = cp
        .create_listener(LISTENER_NAMESPACE, "auto-old-node")
        .await
        .unwrap();
    assert_classic(&pod);

    Api::<Node>::all(cp.admin_client().await.unwrap())
        .delete("auto-kubelet-1-28", &kube::api::DeleteParams::default())
        .await
        .unwrap();
    mode_becomes(webhook, true).await;
    let pod = cp
        .create_listener(LISTENER_NAMESPACE, "auto-node-gone")
        .await
        .unwrap();
    assert_native(&pod);
}

#[tokio::test]
async fn auto_mode_falls_back_to_classic_when_version_cannot_be_read() {
    // The API server rejects the webhook's token: /version answers 401 (and
    // the per-listener RBAC cannot be written). The webhook still injects,
    // in the safe mode, and the listener is still created.
    let (cp, _guard) = setup_as(Some(&["--sidecar-mode=auto"]), Identity::Rejected).await;
    let pod = cp
        .create_listener(LISTENER_NAMESPACE, "auto-unknown")
        .await
        .unwrap();
    assert_classic(&pod);
    let client = cp.admin_client().await.unwrap();
    assert!(
        Api::<Role>::namespaced(client, LISTENER_NAMESPACE)
            .get_opt(&names::rbac_name(pod.metadata.name.as_deref().unwrap()))
            .await
            .unwrap()
            .is_none(),
        "the rejected identity wrote no Role: the 401s were real"
    );
}

#[tokio::test]
async fn other_pods_and_opted_out_listeners_are_untouched() {
    let (cp, _guard) = setup(Some(&[])).await;
    let client = cp.admin_client().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), LISTENER_NAMESPACE);

    // A positive control in the same state of the system: without it, a
    // webhook that is simply not called would pass this test.
    let control = cp
        .create_listener(LISTENER_NAMESPACE, "untouched-control")
        .await
        .unwrap();
    assert!(watchdog_container(&control).is_some());

    // Same pod, not a listener (no listener labels): the ARC controller's
    // own pod, say.
    let other = cp
        .create_controller_pod(LISTENER_NAMESPACE, "arc-gha-rs-controller-6d9f8c-abcde")
        .await
        .unwrap();
    assert!(watchdog_container(&other).is_none());
    assert!(
        !other
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key(names::ANNOTATION_INJECTED)
    );

    // A listener that opted out.
    let mut opted = listener_pod("untouched-optout", "x");
    opted.metadata.owner_references = None;
    opted.metadata.annotations =
        Some([(names::ANNOTATION_INJECT.to_owned(), "false".to_owned())].into());
    cp.create_service_account(LISTENER_NAMESPACE, &listener_name("untouched-optout"))
        .await
        .unwrap();
    let opted = pods.create(&PostParams::default(), &opted).await.unwrap();
    assert!(watchdog_container(&opted).is_none());
    let roles: Api<Role> = Api::namespaced(client.clone(), LISTENER_NAMESPACE);
    assert!(
        roles
            .get_opt(&names::rbac_name(&listener_name("untouched-optout")))
            .await
            .unwrap()
            .is_none(),
        "no RBAC for an opted-out listener"
    );

    // A listener-labelled pod in kube-system (excluded by namespaceSelector).
    let mut system = listener_pod("untouched-system", "x");
    system.metadata.owner_references = None;
    cp.create_service_account("kube-system", &listener_name("untouched-system"))
        .await
        .unwrap();
    let system = Api::<Pod>::namespaced(client, "kube-system")
        .create(&PostParams::default(), &system)
        .await
        .unwrap();
    assert!(watchdog_container(&system).is_none());
}

#[tokio::test]
async fn server_side_dry_run_shows_the_sidecar_and_stores_nothing() {
    let (cp, _guard) = setup(Some(&[])).await;
    let scale_set = "dry-run";
    let name = listener_name(scale_set);
    cp.create_service_account(LISTENER_NAMESPACE, &name)
        .await
        .unwrap();
    let mut pod = listener_pod(scale_set, "x");
    pod.metadata.owner_references = None;
    let file = cp.dir().join("dry-run-pod.json");
    std::fs::write(&file, serde_json::to_vec(&pod).unwrap()).unwrap();
    let out = cp
        .kubectl_run(&[
            "create",
            "--dry-run=server",
            "-o",
            "json",
            "-n",
            LISTENER_NAMESPACE,
            "-f",
            &file.display().to_string(),
        ])
        .unwrap();
    let shown: Pod = serde_json::from_str(&out).unwrap();
    assert!(
        watchdog_container(&shown).is_some(),
        "the dry-run answer shows the injected sidecar"
    );

    let client = cp.admin_client().await.unwrap();
    assert!(
        Api::<Pod>::namespaced(client.clone(), LISTENER_NAMESPACE)
            .get_opt(&name)
            .await
            .unwrap()
            .is_none()
    );
    // sideEffects NoneOnDryRun: no Role, RoleBinding or Lease either.
    assert!(
        Api::<Role>::namespaced(client.clone(), LISTENER_NAMESPACE)
            .get_opt(&names::rbac_name(&name))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        Api::<Lease>::namespaced(client, LISTENER_NAMESPACE)
            .get_opt(&names::lease_name(&name))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn listeners_are_created_promptly_while_the_webhook_is_down() {
    let (cp, guard) = setup(None).await;
    assert!(guard.is_none(), "the webhook is stopped");
    let started = Instant::now();
    let pod = cp
        .create_listener(LISTENER_NAMESPACE, "webhook-down")
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(
        watchdog_container(&pod).is_none(),
        "created without the watchdog"
    );
    // failurePolicy Ignore with a refused connection: no waiting for the
    // webhook's timeout (5s).
    assert!(
        took < Duration::from_secs(3),
        "creating the listener took {took:?}"
    );
}
