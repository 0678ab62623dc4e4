//! `sidecar-startup-added`: what the injected native sidecar adds to a
//! listener's start, against the real kube-apiserver with the process
//! kubelet.
//!
//! Each run creates a fresh scale set (ServiceAccount, AutoscalingListener,
//! the listener's config Secret; the webhook's controller makes its Role,
//! RoleBinding and empty Lease, so no backoff is pending), then the listener
//! pod as ARC builds it, through the API and so through the real webhook:
//! once as is (the webhook injects the sidecar), once opted out with
//! `arc-watchdog.dev/inject: "false"` (the plain pod). The time measured is
//! from just before the pod's `create` to the listener's first log line as
//! the node records it. The listener is a stand-in that prints one line and
//! sleeps: ARC's listener would need the fake GitHub, and what happens
//! after its first line is not part of this figure. The sidecar is the
//! release `arc-watchdog run`, started by the kubelet as it starts any
//! container. With no backoff pending the webhook gives it no start-gate
//! probe (a pod that has one fails the run: it would measure another
//! path), so the listener starts once the kubelet's next relist has seen
//! the sidecar running; the process kubelet relists once a second on a
//! grid of its own, as a real one does, so that wait falls anywhere
//! between none and a second.
//!
//! Runs alternate (without, with; then with, without) so that a drift of
//! the shared machine's load does not fall on one side; the figure is the
//! difference of the medians.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use arc_watchdog_tests::control_plane::{
    self, ARC_LISTENER_IMAGE, ControlPlane, LISTENER_NAMESPACE, WATCHDOG_IMAGE, Webhook,
    listener_name, listener_pod, watchdog_container,
};
use arc_watchdog_tests::kubelet::{ImageBinary, KubeletConfig, KubeletEvent, ProcessKubelet};
use arc_watchdog_tests::node::FakeNode;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt as _};

use crate::proc;
use crate::{Figure, StartupArgs};

/// The goal: the sidecar adds less than this to a listener's start when no
/// backoff is pending.
const GOAL: Duration = Duration::from_secs(1);

/// The stand-in listener's first line.
const FIRST_LINE: &str = "stand-in listener: started";

/// What the watchdog logs once it knows its history.
const HISTORY_LOADED: &str = "history loaded from the Lease";

/// Longest wait for one pod's first line, and for one pod to be gone.
const POD_TIMEOUT: Duration = Duration::from_secs(60);

/// Name of the process kubelet's node.
const NODE: &str = "bench-node";

/// One pod's start: the time to the listener's first line, and the
/// kubelet's steps in between (for the breakdown on stderr).
#[derive(Debug)]
struct Sample {
    with_sidecar: bool,
    first_line: Duration,
    steps: String,
}

/// The `sidecar-startup-added` figures.
pub async fn measure(args: &StartupArgs) -> anyhow::Result<Vec<Figure>> {
    ensure!(args.load.runs > 0, "--startup-runs must be at least 1");
    let watchdog = proc::binary(&args.bins.bin_dir, "arc-watchdog")?;
    let webhook_bin = proc::binary(&args.bins.bin_dir, "arc-watchdog-webhook")?;
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let listener = write_stand_in_listener(dir.path())?;

    let cp = ControlPlane::start()
        .await
        .context("starting the control plane")?;
    let result = async {
        let client = cp.admin_client().await?;
        cp.prepare_arc_watchdog().await?;
        let kubeconfig = cp.webhook_kubeconfig().await?;
        let port = control_plane::free_port()?;
        let webhook = Webhook::start_binary(
            &cp,
            "webhook",
            &webhook_bin,
            &kubeconfig,
            &["--sidecar-mode=native", &format!("--watchdog-port={port}")],
        )
        .await?;
        webhook.register(&cp).await?;
        let node = Arc::new(FakeNode::start(client.clone(), NODE).await?);
        let kubelet = ProcessKubelet::start(
            client.clone(),
            node.clone(),
            kubelet_config(&cp, &watchdog, &listener, args.load.pod_start_latency)?,
        )?;
        // The listener's pods mount `kube-root-ca.crt` (published by the
        // controller manager): wait for it once, not in the first run.
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), LISTENER_NAMESPACE);
        control_plane::eventually(Duration::from_secs(60), "kube-root-ca.crt", || async {
            config_maps.get_opt("kube-root-ca.crt").await.ok().flatten()
        })
        .await?;

        let mut samples = Vec::new();
        for round in 0..args.load.runs {
            let order = if round % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for with_sidecar in order {
                let sample = run_once(&cp, &client, &node, &kubelet, round, with_sidecar).await?;
                eprintln!(
                    "sidecar-startup: run {round} {}: first line after {} ms ({})",
                    side(with_sidecar),
                    sample.first_line.as_millis(),
                    sample.steps
                );
                samples.push(sample);
            }
        }
        kubelet.stop();
        drop(webhook);
        anyhow::Ok(samples)
    }
    .await;
    if result.is_err() {
        eprintln!("sidecar-startup: control plane logs:\n{}", cp.logs(20));
    }
    cp.shutdown();
    let samples = result?;

    let with = median_ms(&samples, true);
    let without = median_ms(&samples, false);
    let added = with - without;
    let runs = args.load.runs;
    Ok(vec![
        Figure::new("sidecar-startup-added", format!("{added:.0}"), "ms").against(
            with / without,
            format!(
                "listener-start-without-sidecar ({without:.0} ms; with {with:.0} ms, median of {runs} each, pod start latency {} ms)",
                args.load.pod_start_latency.as_millis()
            ),
        ),
        Figure::new("sidecar-startup-added-goal", format!("{added:.0}"), "ms").against(
            added / (GOAL.as_secs_f64() * 1000.0),
            format!("goal ({} ms)", GOAL.as_millis()),
        ),
    ])
}

fn side(with_sidecar: bool) -> &'static str {
    if with_sidecar {
        "with sidecar"
    } else {
        "without sidecar"
    }
}

/// Median, in milliseconds, of the samples of one side.
fn median_ms(samples: &[Sample], with_sidecar: bool) -> f64 {
    let mut ms: Vec<f64> = samples
        .iter()
        .filter(|s| s.with_sidecar == with_sidecar)
        .map(|s| s.first_line.as_secs_f64() * 1000.0)
        .collect();
    crate::median(&mut ms)
}

/// The stand-in listener: prints one line, then waits to be stopped (a
/// bounded wait: nothing of it outlives the bench by long).
fn write_stand_in_listener(dir: &Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join("stand-in-listener");
    std::fs::write(
        &path,
        format!("#!/bin/sh\necho '{FIRST_LINE}'\nexec sleep 600\n"),
    )
    .with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", path.display()))?;
    Ok(path)
}

fn kubelet_config(
    cp: &ControlPlane,
    watchdog: &Path,
    listener: &Path,
    pod_start_latency: Duration,
) -> anyhow::Result<KubeletConfig> {
    let api_port = cp
        .server()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no port in {}", cp.server()))?;
    Ok(KubeletConfig {
        images: vec![
            ImageBinary {
                image: ARC_LISTENER_IMAGE.to_owned(),
                command: Some("/ghalistener".to_owned()),
                path: listener.to_path_buf(),
            },
            ImageBinary {
                image: WATCHDOG_IMAGE.to_owned(),
                command: None,
                path: watchdog.to_path_buf(),
            },
        ],
        api_host: "127.0.0.1".to_owned(),
        api_port,
        work_dir: cp.dir().join("kubelet"),
        pid_dir: Some(cp.dir().to_path_buf()),
        pod_start_latency,
        native_sidecars: true,
    })
}

/// One pod of a fresh scale set, from `create` to the listener's first
/// line; the pod is deleted and gone (its processes ended) on return.
async fn run_once(
    cp: &ControlPlane,
    client: &Client,
    node: &FakeNode,
    kubelet: &ProcessKubelet,
    round: usize,
    with_sidecar: bool,
) -> anyhow::Result<Sample> {
    let ns = LISTENER_NAMESPACE;
    let scale_set = format!(
        "startup-{round}-{}",
        if with_sidecar { "with" } else { "without" }
    );
    let name = listener_name(&scale_set);
    let listener = cp.create_autoscaling_listener(ns, &scale_set).await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": format!("{name}-config")},
        "stringData": {"config.json": "{}"},
    }))?;
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .with_context(|| format!("creating the config Secret of {name}"))?;
    // The webhook's controller makes the Role, RoleBinding and Lease of a
    // new AutoscalingListener; ARC's listener pod follows its
    // AutoscalingListener closely, but a pod racing that controller would
    // measure the race, not the start.
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    let lease = format!("arc-watchdog.{name}");
    control_plane::eventually(POD_TIMEOUT, &format!("Lease {lease}"), || async {
        leases.get_opt(&lease).await.ok().flatten()
    })
    .await?;

    let mut pod = listener_pod(&scale_set, &listener.uid().unwrap_or_default());
    if !with_sidecar {
        pod.annotations_mut().insert(
            arc_watchdog::names::ANNOTATION_INJECT.to_owned(),
            "false".to_owned(),
        );
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let created_at = Timestamp::now();
    let stored = pods
        .create(&PostParams::default(), &pod)
        .await
        .with_context(|| format!("creating pod {ns}/{name}"))?;
    let injected = watchdog_container(&stored);
    if injected.is_some() != with_sidecar {
        bail!(
            "pod {name}: expected it {}, the webhook did otherwise",
            side(with_sidecar)
        );
    }
    if injected.is_some_and(|c| c.startup_probe.is_some()) {
        bail!("pod {name}: the webhook added the start gate's probe though no backoff is pending");
    }
    let first = control_plane::eventually(
        POD_TIMEOUT,
        &format!("the first line of {name}/listener"),
        || async {
            node.logs()
                .stamped_lines(ns, &name, "listener")
                .first()
                .map(|(at, _)| *at)
        },
    )
    .await
    .with_context(|| format!("kubelet: {:?}", pod_events(kubelet, &name)))?;
    let first_line = elapsed(created_at, first);
    let mut steps: Vec<(Timestamp, String)> = pod_events(kubelet, &name)
        .into_iter()
        .filter(|e| e.at <= first)
        .map(|e| {
            let what = e.what.split_whitespace().next().unwrap_or("").to_owned();
            (
                e.at,
                format!("{} {what}", e.container.as_deref().unwrap_or("pod")),
            )
        })
        .collect();
    // When the watchdog knew its history (a fresh Lease: no backoff); the
    // listener does not wait for it.
    let watchdog = arc_watchdog::names::CONTAINER_NAME;
    if let Some((at, _)) = node
        .logs()
        .stamped_lines(ns, &name, watchdog)
        .into_iter()
        .find(|(_, line)| line.contains(HISTORY_LOADED))
    {
        steps.push((at, format!("{watchdog} history-loaded")));
    }
    steps.sort_by_key(|(at, _)| *at);
    let steps = steps
        .iter()
        .map(|(at, what)| format!("{what} at {} ms", elapsed(created_at, *at).as_millis()))
        .collect::<Vec<_>>()
        .join(", ");

    pods.delete(&name, &DeleteParams::default())
        .await
        .with_context(|| format!("deleting pod {ns}/{name}"))?;
    control_plane::eventually(POD_TIMEOUT, &format!("pod {name} gone"), || async {
        let gone = matches!(pods.get_opt(&name).await, Ok(None));
        let stopped = ["listener", arc_watchdog::names::CONTAINER_NAME]
            .iter()
            .all(|c| kubelet.pid(&name, c).is_none());
        (gone && stopped).then_some(())
    })
    .await?;
    Ok(Sample {
        with_sidecar,
        first_line,
        steps,
    })
}

fn pod_events(kubelet: &ProcessKubelet, pod: &str) -> Vec<KubeletEvent> {
    kubelet
        .events()
        .into_iter()
        .filter(|e| e.pod == pod)
        .collect()
}

fn elapsed(from: Timestamp, to: Timestamp) -> Duration {
    Duration::try_from(to.duration_since(from)).unwrap_or(Duration::ZERO)
}
