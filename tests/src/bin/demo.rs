//! `make demo`: arc-watchdog on a real, local kube-apiserver, no cluster
//! needed. Starts etcd + kube-apiserver + kube-controller-manager on
//! 127.0.0.1, installs arc-watchdog from `manifests/` (the webhook runs as a
//! local process), creates an ARC-shaped listener pod and shows the injected
//! sidecar, then plays a stale-session conflict loop through a fake node's
//! container logs: the watchdog follows the listener through the API server,
//! evicts, detects the loop across pod generations and delays the next
//! start. Shows the Events, metrics, the Lease and `arc-watchdog status`,
//! and cleans up.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use arc_watchdog::detector::{ANNOTATION_HISTORY, History};
use arc_watchdog::names;
use arc_watchdog_tests::control_plane::{
    ControlPlane, LISTENER_NAMESPACE, WatchdogProcess, eventually, metric_value, workspace_bin,
    workspace_root,
};
use arc_watchdog_tests::node::FakeNode;
use arc_watchdog_tests::per_listener;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams};
use kube::runtime::wait::{await_condition, conditions};

const SCALE_SET: &str = "demo-runners";

fn step(n: u32, text: &str) {
    println!("\n\x1b[1m[{n}] {text}\x1b[0m");
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("\n\x1b[31mdemo failed:\x1b[0m {e:#}");
        std::process::exit(1);
    }
}

async fn run() -> Result<()> {
    if std::process::Command::new("go")
        .arg("version")
        .output()
        .is_err()
    {
        bail!(
            "Go is needed to build etcd and kube-apiserver from their modules: install Go >= 1.24 (https://go.dev/dl/)"
        );
    }
    step(
        1,
        "Local control plane: etcd, kube-apiserver, kube-controller-manager (built once into ~/.cache/arc-watchdog)",
    );
    let cp = ControlPlane::start()
        .await
        .context("starting the control plane")?;
    let client = cp.admin_client().await?;
    println!(
        "    API server {} ({})",
        cp.server(),
        client.apiserver_version().await?.git_version
    );

    step(
        2,
        "Install arc-watchdog: CRDs, `kubectl apply --server-side -k manifests/`, the webhook as a local process",
    );
    let webhook = cp
        .install_arc_watchdog(&[
            "--conflict-threshold=3",
            "--backoff-initial=8s",
            "--backoff-max=16s",
        ])
        .await?;
    println!(
        "    webhook registered at {} (caBundle from arc-watchdog-certs)",
        webhook.url()
    );

    // A node for the listener. `--sidecar-mode auto` injects native
    // sidecars only once every Linux node's kubelet is known to run them.
    let node = FakeNode::start(client.clone(), "demo-node").await?;
    node.finish_deletions();
    arc_watchdog_tests::control_plane::eventually(
        std::time::Duration::from_secs(30),
        "the webhook to see the node's kubelet",
        || async {
            let text = webhook.metrics().await.ok()?;
            (arc_watchdog_tests::control_plane::metric_value(
                &text,
                "arc_watchdog_webhook_native_sidecars",
                &[],
            )? == 1.0)
                .then_some(())
        },
    )
    .await?;

    step(
        3,
        "ARC creates a listener pod; the webhook injects the watchdog",
    );
    let pod = cp.create_listener(LISTENER_NAMESPACE, SCALE_SET).await?;
    let name = pod.metadata.name.clone().unwrap_or_default();
    show_injection(&pod);
    // The webhook's controller gives the watchdog its Role and Lease from
    // the AutoscalingListener.
    per_listener::wait_for_pod(&client, &pod).await?;

    step(
        4,
        "A stale session on GitHub: every listener generation gets 409 and exits",
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), LISTENER_NAMESPACE);
    let lines: Vec<String> = std::fs::read_to_string(
        workspace_root().join("watchdog/tests/samples/conflict-0.14.2-json/gen1.log"),
    )?
    .lines()
    .map(str::to_owned)
    .collect();
    let mut pod = pod;
    let mut last_metrics = String::new();
    for generation in 1..=3 {
        if generation > 1 {
            pod = cp.create_listener(LISTENER_NAMESPACE, SCALE_SET).await?;
        }
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        node.run_pod(LISTENER_NAMESPACE, &name).await?;
        let wd = WatchdogProcess::start(&cp, &pod, &[]).await?;
        println!(
            "    generation {generation}: pod uid {}…, listener writes:",
            &uid[..8]
        );
        for l in &lines {
            println!("      | {}", l.chars().take(110).collect::<String>());
            node.log(LISTENER_NAMESPACE, &name, "listener", l);
        }
        eventually(
            Duration::from_secs(30),
            "the watchdog to see the conflict",
            || async {
                let m = wd.metrics().await.ok()?;
                (metric_value(&m, "arc_watchdog_session_conflicts_total", &[])? >= 1.0)
                    .then_some(())
            },
        )
        .await?;
        node.terminate_container(LISTENER_NAMESPACE, &name, "listener", 1, None)
            .await?;
        println!("      listener exited 1; the watchdog reacts:");
        if generation == 3 {
            let (status, body) = eventually(
                Duration::from_secs(30),
                "the start gate to close",
                || async {
                    let (s, b) = wd.get(names::PATH_STARTZ).await.ok()?;
                    (s == 503).then_some((s, b))
                },
            )
            .await?;
            println!("      GET /startz -> {status} {}", body.trim());
        }
        tokio::time::timeout(
            Duration::from_secs(60),
            await_condition(pods.clone(), &name, conditions::is_deleted(&uid)),
        )
        .await
        .context("waiting for the eviction")??;
        for e in events_of(&client, &uid).await {
            println!("      Event {e}");
        }
        last_metrics = wd.metrics().await.unwrap_or_default();
        wd.stop();
    }

    step(5, "Metrics of the last generation's watchdog");
    for l in last_metrics
        .lines()
        .filter(|l| l.starts_with("arc_watchdog_") && !l.ends_with(" 0"))
    {
        println!("    {l}");
    }

    step(6, "History kept across generations in the Lease");
    let lease = Api::<Lease>::namespaced(client.clone(), LISTENER_NAMESPACE)
        .get(&names::lease_name(&name))
        .await?;
    let history: Option<History> = lease
        .metadata
        .annotations
        .and_then(|a| a.get(ANNOTATION_HISTORY).cloned())
        .and_then(|t| serde_json::from_str(&t).ok());
    if let Some(h) = history {
        println!(
            "    conflicts: {}, evictions: {}, loop active: {}",
            h.conflicts.len(),
            h.evictions.len(),
            h.loop_state.is_some()
        );
    }

    step(
        7,
        "ARC makes the next generation; the operator's view: `kubectl arc-watchdog status -A`",
    );
    show_status(&cp).await?;

    step(
        8,
        "Clean up: every process ended by its pid, temporary files removed",
    );
    drop(webhook);
    drop(node);
    drop(cp);
    println!("    done. `make test` runs the same scenario as an integration test.");
    Ok(())
}

/// Creates what the status reads beyond the listener (its
/// AutoscalingRunnerSet, and the next listener pod),
/// then runs `arc-watchdog status -A` as a user would and prints it.
async fn show_status(cp: &ControlPlane) -> Result<()> {
    cp.create_namespace("arc-runners").await?;
    cp.apply_yaml(
        &format!(
            r#"
apiVersion: actions.github.com/v1alpha1
kind: AutoscalingRunnerSet
metadata:
  name: {SCALE_SET}
  namespace: arc-runners
  labels: {{app.kubernetes.io/version: "0.14.2"}}
spec:
  githubConfigUrl: https://github.com/example-org
  githubConfigSecret: {SCALE_SET}-secret
  template: {{spec: {{containers: [{{name: runner, image: ghcr.io/actions/actions-runner:latest}}]}}}}
"#
        ),
        None,
    )
    .await?;
    let next = cp.create_listener(LISTENER_NAMESPACE, SCALE_SET).await?;
    println!("    the next listener pod (gated only if a backoff is still pending):");
    show_injection(&next);
    let bin = workspace_bin("arc-watchdog", "arc-watchdog")?;
    let out = std::process::Command::new(&bin)
        .args(["status", "-A"])
        .env("KUBECONFIG", cp.kubeconfig())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    println!("    $ kubectl arc-watchdog status -A");
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        println!("    {l}");
    }
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    println!(
        "    (exit status {}: a scale set is not healthy)",
        out.status.code().unwrap_or(-1)
    );
    Ok(())
}

fn show_injection(pod: &Pod) {
    let spec = pod.spec.clone().unwrap_or_default();
    let ann = pod.metadata.annotations.clone().unwrap_or_default();
    println!(
        "    annotation {} = {:?}",
        names::ANNOTATION_INJECTED,
        ann.get(names::ANNOTATION_INJECTED)
    );
    for c in spec.init_containers.iter().flatten() {
        println!(
            "    initContainer {:<13} restartPolicy={:?} startupProbe={:?}",
            c.name,
            c.restart_policy.as_deref().unwrap_or("-"),
            c.startup_probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|h| h.path.clone())
        );
        if c.name == names::CONTAINER_NAME {
            println!(
                "      {}",
                if c.startup_probe.is_some() {
                    "start gate: the listener starts once /startz opens (a backoff is pending)"
                } else {
                    "no start gate: no backoff pending, the listener starts with the watchdog"
                }
            );
        }
        println!(
            "      args: {}",
            c.args.clone().unwrap_or_default().join(" ")
        );
    }
    for c in &spec.containers {
        println!(
            "    container     {:<13} image={}",
            c.name,
            c.image.as_deref().unwrap_or("")
        );
    }
}

async fn events_of(client: &kube::Client, uid: &str) -> Vec<String> {
    let api: Api<Event> = Api::namespaced(client.clone(), LISTENER_NAMESPACE);
    let lp = ListParams::default().fields(&format!("involvedObject.uid={uid}"));
    let mut events = api.list(&lp).await.map(|l| l.items).unwrap_or_default();
    events.sort_by_key(|e| {
        e.event_time
            .clone()
            .map(|t| t.0)
            .or(e.first_timestamp.clone().map(|t| t.0))
    });
    events
        .into_iter()
        .map(|e| {
            format!(
                "{:<8} {:<22} {}",
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.message
                    .unwrap_or_default()
                    .chars()
                    .take(100)
                    .collect::<String>()
            )
        })
        .collect()
}
