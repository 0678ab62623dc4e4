//! One scenario's stack: a real kube-apiserver and etcd, the fake GitHub,
//! the process kubelet, the real ARC controller, and arc-watchdog's webhook
//! when the scenario injects it.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, ensure};
use arc_watchdog_tests::control_plane::{self, ControlPlane, SidecarMode, WATCHDOG_IMAGE, Webhook};
use arc_watchdog_tests::fake_github::{FakeGithub, FakeGithubConfig, Stats};
use arc_watchdog_tests::kubelet::{ImageBinary, KubeletConfig, ProcessKubelet};
use arc_watchdog_tests::node::FakeNode;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Client;
use kube::ResourceExt as _;
use kube::api::{Api, EvictParams, ListParams};
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::outcome::Outcome;
use crate::{Args, CONTROLLER_NS, IDLE_IMAGE, ORG, RUNNER_NS, SCALE_SET};

/// Paths of the binaries a stack runs.
#[derive(Debug, Clone)]
pub(crate) struct Binaries {
    pub(crate) arc_dir: BTreeMap<String, PathBuf>,
    pub(crate) watchdog: PathBuf,
}

pub(crate) fn arc_dir(version: &str) -> Result<PathBuf> {
    let script = control_plane::workspace_root().join("tests/scripts/build-arc.sh");
    let status = std::process::Command::new(&script)
        .arg(version)
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    ensure!(
        status.success(),
        "{} {version} failed: see its output above",
        script.display()
    );
    let out = std::process::Command::new(&script)
        .arg(version)
        .env("ARC_WATCHDOG_PRINT_DIRS", "1")
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let dir = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("arc-{version}=")))
        .ok_or_else(|| anyhow!("build-arc.sh printed no directory for {version}"))?;
    Ok(PathBuf::from(dir))
}

pub(crate) fn arc_image(version: &str) -> String {
    format!("ghcr.io/actions/gha-runner-scale-set-controller:{version}")
}

/// The entrypoint of ARC's legacy listener (`cmd/githubrunnerscalesetlistener`),
/// which the controllers of 0.8 to 0.10 start instead of `/ghalistener` when
/// their `LISTENER_ENTRYPOINT` says so.
pub(crate) const LEGACY_LISTENER: &str = "/github-runnerscaleset-listener";

/// What a scenario's stack looks like.
#[derive(Debug, Clone)]
pub(crate) struct StackOpts {
    pub(crate) version: &'static str,
    /// Run ARC's legacy listener (`LISTENER_ENTRYPOINT`, ARC 0.8 to 0.10).
    pub(crate) legacy_listener: bool,
    /// Inject arc-watchdog (webhook registered) with this sidecar mode.
    pub(crate) watchdog: Option<SidecarMode>,
    /// Extra webhook flags (thresholds passed on to the watchdog).
    pub(crate) webhook_args: Vec<String>,
    /// `spec.listenerTemplate` of the AutoscalingRunnerSet.
    pub(crate) listener_template: Option<serde_json::Value>,
    pub(crate) fake: FakeGithubConfig,
    /// The process kubelet's pod start latency.
    pub(crate) pod_start_latency: Duration,
    /// The kubelet runs native sidecars (1.29+); `false`: an older one.
    pub(crate) native_sidecars: bool,
}

pub(crate) struct Stack {
    pub(crate) cp: ControlPlane,
    pub(crate) client: Client,
    pub(crate) fake: FakeGithub,
    pub(crate) kubelet: ProcessKubelet,
    pub(crate) webhook: Option<Webhook>,
    /// The injected watchdogs' port (`--watchdog-port`): pods share the
    /// host's network, so it answers on 127.0.0.1.
    pub(crate) watchdog_port: Option<u16>,
    pub(crate) controller: tokio::process::Child,
    pub(crate) _node: Arc<FakeNode>,
    /// Nodes added by [`Stack::add_node`], each with its kubelet.
    more_nodes: Vec<(ProcessKubelet, Arc<FakeNode>)>,
    /// This stack's place among those running at once.
    _permit: OwnedSemaphorePermit,
}

static STACKS: OnceLock<Arc<Semaphore>> = OnceLock::new();

/// At most `n` stacks run at once (the first call decides).
pub(crate) fn limit_stacks(n: usize) {
    let _ = STACKS.set(Arc::new(Semaphore::new(n.max(1))));
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack").finish_non_exhaustive()
    }
}

impl Stack {
    pub(crate) async fn start(bins: &Binaries, o: &StackOpts) -> Result<Self> {
        let permit = STACKS
            .get_or_init(|| Arc::new(Semaphore::new(1)))
            .clone()
            .acquire_owned()
            .await
            .context("the stack limit was closed")?;
        let t0 = Instant::now();
        let cp = ControlPlane::start().await?;
        let client = cp.admin_client().await?;
        let arc = bins
            .arc_dir
            .get(o.version)
            .ok_or_else(|| anyhow!("ARC {} not built", o.version))?;
        install_arc_crds(&cp, arc).await?;
        cp.create_namespace(CONTROLLER_NS).await?;
        cp.create_namespace(RUNNER_NS).await?;
        let fake = FakeGithub::start(o.fake, 0).await?;
        let node = Arc::new(FakeNode::start(client.clone(), NODE).await?);
        let kubelet = ProcessKubelet::start(
            client.clone(),
            node.clone(),
            kubelet_config(&cp, bins, arc, o)?,
        )?;
        let watchdog_port = o.watchdog.map(|_| control_plane::free_port()).transpose()?;
        let webhook = match (o.watchdog, watchdog_port) {
            (Some(mode), Some(port)) => {
                // Pods of the process kubelet share the host's network:
                // each stack's watchdogs get a port of their own, so that
                // stacks can run side by side.
                let mut args = vec![
                    format!("--sidecar-mode={}", mode.as_str()),
                    format!("--watchdog-port={port}"),
                ];
                args.extend(o.webhook_args.iter().cloned());
                let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                // As a user installs it: manifests/ (RBAC, namespace), the
                // webhook as its own ServiceAccount, registered.
                let wh = cp.install_arc_watchdog(&refs).await?;
                // install_arc_watchdog applies the integration tests' ARC
                // CRDs: put this version's back.
                install_arc_crds(&cp, arc).await?;
                Some(wh)
            }
            _ => None,
        };
        let controller = start_controller(&cp, arc, o)?;
        // What the gha-runner-scale-set chart installs: the GitHub secret and the
        // AutoscalingRunnerSet.
        cp.apply_yaml(
            &serde_json::to_string(&json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": format!("{SCALE_SET}-gha-rs-github-secret"), "namespace": RUNNER_NS},
                "stringData": {"github_token": "ghp_fake_e2e_token"},
            }))?,
            None,
        )
        .await?;
        let s = Self {
            cp,
            client,
            fake,
            kubelet,
            webhook,
            watchdog_port,
            controller,
            _node: node,
            more_nodes: Vec::new(),
            _permit: permit,
        };
        eprintln!(
            "[e2e] stack ARC {} (watchdog: {:?}) ready in {:.1}s",
            o.version,
            o.watchdog,
            t0.elapsed().as_secs_f64()
        );
        Ok(s)
    }

    /// Adds a node named `name` with a process kubelet of its own, set up
    /// as the stack's first one. From then on each kubelet that runs binds
    /// unscheduled pods to its own node, whichever is first: add a node once
    /// the pods that must land on the first one are bound.
    pub(crate) async fn add_node(
        &mut self,
        bins: &Binaries,
        o: &StackOpts,
        name: &str,
    ) -> Result<()> {
        let arc = bins
            .arc_dir
            .get(o.version)
            .ok_or_else(|| anyhow!("ARC {} not built", o.version))?;
        let node = Arc::new(FakeNode::start(self.client.clone(), name).await?);
        let kubelet = ProcessKubelet::start(
            self.client.clone(),
            node.clone(),
            kubelet_config(&self.cp, bins, arc, o)?,
        )?;
        self.more_nodes.push((kubelet, node));
        Ok(())
    }

    /// Creates the AutoscalingRunnerSet as the chart renders it.
    pub(crate) async fn create_runner_set(&self, o: &StackOpts) -> Result<()> {
        let mut spec = json!({
            "githubConfigUrl": self.fake.config_url(ORG),
            "githubConfigSecret": format!("{SCALE_SET}-gha-rs-github-secret"),
            "maxRunners": 2,
            "minRunners": 0,
            "template": {"spec": {
                "restartPolicy": "Never",
                "serviceAccountName": format!("{SCALE_SET}-gha-rs-no-permission"),
                "containers": [{"name": "runner", "image": "ghcr.io/actions/actions-runner:latest", "command": ["/home/runner/run.sh"]}],
            }},
        });
        if let Some(t) = &o.listener_template {
            spec["listenerTemplate"] = t.clone();
        }
        let ars = json!({
            "apiVersion": "actions.github.com/v1alpha1", "kind": "AutoscalingRunnerSet",
            "metadata": {
                "name": SCALE_SET, "namespace": RUNNER_NS,
                "labels": {
                    "app.kubernetes.io/component": "autoscaling-runner-set",
                    "app.kubernetes.io/name": SCALE_SET,
                    "app.kubernetes.io/instance": SCALE_SET,
                    "app.kubernetes.io/version": o.version,
                    "app.kubernetes.io/managed-by": "Helm",
                    "app.kubernetes.io/part-of": "gha-rs",
                    "actions.github.com/scale-set-name": SCALE_SET,
                    "actions.github.com/scale-set-namespace": RUNNER_NS,
                },
                "annotations": {"actions.github.com/values-hash": "e2e"},
            },
            "spec": spec,
        });
        self.cp
            .create_service_account(RUNNER_NS, &format!("{SCALE_SET}-gha-rs-no-permission"))
            .await?;
        self.cp
            .apply_yaml(&serde_json::to_string(&ars)?, None)
            .await?;
        self.settle_runner_set().await
    }

    /// Waits until ARC's AutoscalingListener names an EphemeralRunnerSet
    /// that exists. ARC's AutoscalingRunnerSet reconciler can create two
    /// EphemeralRunnerSets in one burst (its cache has not seen the first)
    /// and then delete, as "old", the one the listener was given: every
    /// listener then gets its session and dies patching a runner set that
    /// is gone, for ever. An operator deletes the AutoscalingListener, and
    /// ARC makes it again with the runner set that exists; so does this,
    /// and says so, since that failure is ARC's, not the scenario's.
    async fn settle_runner_set(&self) -> Result<()> {
        let dynamic = |kind: &str, plural: &str, ns: &str| {
            let ar = kube::discovery::ApiResource::from_gvk_with_plural(
                &kube::core::GroupVersionKind::gvk("actions.github.com", "v1alpha1", kind),
                plural,
            );
            Api::<kube::core::DynamicObject>::namespaced_with(self.client.clone(), ns, &ar)
        };
        let listeners = dynamic("AutoscalingListener", "autoscalinglisteners", CONTROLLER_NS);
        let runner_sets = dynamic("EphemeralRunnerSet", "ephemeralrunnersets", RUNNER_NS);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut gone_since: Option<Instant> = None;
        while Instant::now() < deadline {
            let al = listeners
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .next();
            if let Some(al) = al {
                let ers = al.data["spec"]["ephemeralRunnerSetName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let live = runner_sets
                    .get_opt(&ers)
                    .await?
                    .is_some_and(|r| r.metadata.deletion_timestamp.is_none());
                if live {
                    return Ok(());
                }
                let since = *gone_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= Duration::from_secs(3) {
                    eprintln!(
                        "[e2e] ARC's listener {} names EphemeralRunnerSet {ers}, which ARC deleted (its own race): deleting the listener so that ARC makes it again",
                        al.name_any()
                    );
                    listeners
                        .delete(&al.name_any(), &kube::api::DeleteParams::background())
                        .await?;
                    gone_since = None;
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(anyhow!(
            "ARC's AutoscalingListener did not come to name an existing EphemeralRunnerSet within 60 s"
        ))
    }

    pub(crate) async fn listener_pods(&self) -> Result<Vec<Pod>> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), CONTROLLER_NS);
        let lp =
            ListParams::default().labels("app.kubernetes.io/component=runner-scale-set-listener");
        Ok(api.list(&lp).await?.items)
    }

    pub(crate) async fn listener_pod(&self) -> Option<Pod> {
        self.listener_pods()
            .await
            .ok()?
            .into_iter()
            .find(|p| p.metadata.deletion_timestamp.is_none())
    }

    /// Waits until the fake GitHub handed out a session (a healthy listener).
    pub(crate) async fn await_session(&self, timeout: Duration) -> Result<f64> {
        let t0 = Instant::now();
        control_plane::eventually(timeout, "a listener session", || async {
            let st = self.fake.stats();
            (st.responses("session_create", 200) > 0
                && self
                    .fake
                    .scale_sets()
                    .first()
                    .and_then(|s| self.fake.session(s.id))
                    .is_some_and(|(_, active)| active))
            .then_some(())
        })
        .await?;
        Ok(t0.elapsed().as_secs_f64())
    }

    /// The report note listing the watchdog's Events, `tag` first (a leg's
    /// name, or empty).
    pub(crate) async fn watchdog_events_note(&self, tag: &str) -> String {
        let sep = if tag.is_empty() { "" } else { " " };
        match self.watchdog_events().await {
            Ok(events) => format!("{tag}{sep}watchdog events: {events:?}"),
            Err(e) => format!("{tag}{sep}watchdog events: not read: {e:#}"),
        }
    }

    /// The Events arc-watchdog published in the listener namespace, as
    /// `<reason> <message>`, one entry per occurrence.
    pub(crate) async fn watchdog_events(&self) -> Result<Vec<String>> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), CONTROLLER_NS);
        let list = api
            .list(&ListParams::default())
            .await
            .context("listing Events")?;
        Ok(list
            .items
            .into_iter()
            .filter(|e| {
                e.reporting_component
                    .as_deref()
                    .is_some_and(|c| c.contains("arc-watchdog"))
                    || e.source
                        .as_ref()
                        .and_then(|s| s.component.as_deref())
                        .is_some_and(|c| c.contains("arc-watchdog"))
            })
            .flat_map(|e| {
                // An Event seen again is counted in the same object
                // (core `count`, events.k8s.io `series.count`).
                let n = e
                    .series
                    .as_ref()
                    .and_then(|s| s.count)
                    .or(e.count)
                    .unwrap_or(1)
                    .max(1);
                let line = format!(
                    "{} {}",
                    e.reason.unwrap_or_default(),
                    e.message.unwrap_or_default()
                );
                std::iter::repeat_n(line, usize::try_from(n).unwrap_or(1))
            })
            .collect())
    }

    /// Evictions arc-watchdog reported (its `ListenerEvicted` Events).
    pub(crate) async fn evictions(&self) -> Result<usize> {
        Ok(self
            .watchdog_events()
            .await?
            .iter()
            .filter(|e| e.starts_with("ListenerEvicted"))
            .count())
    }

    /// Lines of arc-watchdog's container output (as the kubelet recorded
    /// it, what `kubectl logs` serves) containing `needle`; only the pod
    /// generation with uid `uid` when given.
    pub(crate) fn watchdog_log_count(&self, needle: &str, uid: Option<&str>) -> Result<usize> {
        self.container_log_count("arc-watchdog", needle, uid)
    }

    /// Lines of a container's output containing `needle`, over every pod
    /// generation, or only the one with uid `uid`.
    pub(crate) fn container_log_count(
        &self,
        container: &str,
        needle: &str,
        uid: Option<&str>,
    ) -> Result<usize> {
        let dir = self.cp.dir().join("kubelet/logs");
        let uid8: Option<String> = uid.map(|u| u.chars().take(8).collect());
        let suffix = format!("-{container}.log");
        let entries = std::fs::read_dir(&dir)
            .with_context(|| format!("reading the container logs in {}", dir.display()))?;
        let mut n = 0;
        for e in entries {
            let p = e
                .with_context(|| format!("listing {}", dir.display()))?
                .path();
            let ours = p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.ends_with(&suffix)
                    && uid8
                        .as_deref()
                        .is_none_or(|u| n.contains(&format!("-{u}-")))
            });
            if ours {
                let text = std::fs::read_to_string(&p)
                    .with_context(|| format!("reading {}", p.display()))?;
                n += text.lines().filter(|l| l.contains(needle)).count();
            }
        }
        Ok(n)
    }

    /// `GET path` of the running watchdog: (status, body).
    pub(crate) async fn watchdog_get(&self, path: &str) -> Result<(u16, String)> {
        let port = self
            .watchdog_port
            .ok_or_else(|| anyhow!("this stack injects no watchdog"))?;
        control_plane::http_get(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), path).await
    }

    /// A metric of the running watchdog (no labels).
    pub(crate) async fn watchdog_metric(&self, name: &str) -> Result<f64> {
        let (status, body) = self.watchdog_get(arc_watchdog::names::PATH_METRICS).await?;
        ensure!(status == 200, "the watchdog's /metrics answered {status}");
        control_plane::metric_value(&body, name, &[])
            .ok_or_else(|| anyhow!("the watchdog exports no {name}"))
    }

    /// Creates the AutoscalingRunnerSet, waits for its listener's session
    /// and returns the listener pod's name and uid.
    pub(crate) async fn healthy_listener(&self, o: &StackOpts) -> Result<(String, String)> {
        self.create_runner_set(o).await?;
        self.await_session(Duration::from_secs(120)).await?;
        let pod = self
            .listener_pod()
            .await
            .ok_or_else(|| anyhow!("no listener pod"))?;
        Ok((pod.name_any(), pod.uid().unwrap_or_default()))
    }

    /// Waits until a listener pod other than `old_uid` exists and is not
    /// being deleted; returns the seconds since `since`.
    pub(crate) async fn await_new_listener(
        &self,
        old_uid: &str,
        since: Instant,
        within: Duration,
        what: &str,
    ) -> Result<f64> {
        control_plane::eventually(within, what, || async {
            self.listener_pods()
                .await
                .ok()?
                .into_iter()
                .any(|p| {
                    p.metadata.uid.as_deref() != Some(old_uid)
                        && p.metadata.deletion_timestamp.is_none()
                })
                .then(|| since.elapsed().as_secs_f64())
        })
        .await
    }

    /// Evicts the current listener pod through the Eviction API, as the
    /// watchdog does, and waits for the controller's new pod; returns the
    /// seconds from the eviction to the new pod.
    pub(crate) async fn evict_listener_and_await_new(&self) -> Result<f64> {
        let pod = self
            .listener_pod()
            .await
            .ok_or_else(|| anyhow!("no listener pod to evict"))?;
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), CONTROLLER_NS);
        let t0 = Instant::now();
        api.evict(&pod.name_any(), &EvictParams::default())
            .await
            .context("evicting the listener pod")?;
        self.await_new_listener(
            &uid,
            t0,
            Duration::from_secs(60),
            "a new listener pod after the eviction",
        )
        .await
    }

    /// How many times a listener process was started.
    pub(crate) fn listener_starts(&self) -> usize {
        self.listener_start_times().len()
    }

    /// When each listener process was started.
    pub(crate) fn listener_start_times(&self) -> Vec<jiff::Timestamp> {
        self.kubelet
            .events()
            .iter()
            .filter(|e| e.container.as_deref() == Some("listener") && e.what.starts_with("started"))
            .map(|e| e.at)
            .collect()
    }

    /// What every kubelet of the stack did, in time order, each line
    /// naming its node.
    pub(crate) fn kubelet_log(&self) -> String {
        let mut lines: Vec<_> = std::iter::once((NODE, &self.kubelet))
            .chain(self.more_nodes.iter().map(|(k, n)| (n.name(), k)))
            .flat_map(|(node, kubelet)| kubelet.events().into_iter().map(move |e| (e, node)))
            .collect();
        lines.sort_by_key(|(e, _)| e.at);
        lines
            .into_iter()
            .map(|(e, node)| {
                format!(
                    "{} {node} {} {} {}",
                    e.at,
                    e.pod,
                    e.container.unwrap_or_default(),
                    e.what
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Stops everything; `keep` keeps the control plane's directory (logs of
    /// every process, the kubelet's container logs under `kubelet/logs`) and
    /// returns its path.
    pub(crate) async fn stop(mut self, keep: bool) -> Option<PathBuf> {
        let kept = (keep || std::env::var("ARC_WATCHDOG_E2E_KEEP").as_deref() == Ok("1"))
            .then(|| self.cp.dir().to_path_buf());
        if let Some(d) = &kept {
            let _ = std::fs::write(d.join("keep"), b"");
        }
        let _ = self.controller.start_kill();
        let _ = self.controller.wait().await;
        self.kubelet.stop();
        for (kubelet, _) in &self.more_nodes {
            kubelet.stop();
        }
        if let Some(wh) = &self.webhook {
            wh.stop();
        }
        self.fake.stop().await;
        self.cp.shutdown();
        kept
    }
}

/// The name of a stack's first node, where its first kubelet binds pods.
pub(crate) const NODE: &str = "e2e-node";

/// A process kubelet's settings on a stack: ARC's listener binaries for its
/// image, the watchdog, a user's idle sidecar. Every kubelet of a stack
/// shares the work directory (pod directories and log files are named by
/// pod uid), so that the container logs of every node are in
/// `kubelet/logs`.
fn kubelet_config(
    cp: &ControlPlane,
    bins: &Binaries,
    arc: &Path,
    o: &StackOpts,
) -> Result<KubeletConfig> {
    let port: u16 = cp
        .server()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow!("no port in {}", cp.server()))?;
    Ok(KubeletConfig {
        images: vec![
            ImageBinary {
                image: arc_image(o.version),
                command: Some("/ghalistener".into()),
                path: arc.join("ghalistener"),
            },
            ImageBinary {
                image: arc_image(o.version),
                command: Some(LEGACY_LISTENER.into()),
                path: arc.join(LEGACY_LISTENER.trim_start_matches('/')),
            },
            ImageBinary {
                image: WATCHDOG_IMAGE.into(),
                command: None,
                path: bins.watchdog.clone(),
            },
            ImageBinary {
                image: IDLE_IMAGE.into(),
                command: None,
                path: PathBuf::from("/bin/sleep"),
            },
        ],
        api_host: "127.0.0.1".into(),
        api_port: port,
        work_dir: cp.dir().join("kubelet"),
        pid_dir: Some(cp.dir().to_path_buf()),
        pod_start_latency: o.pod_start_latency,
        native_sidecars: o.native_sidecars,
    })
}

/// Installs the CRDs of the ARC release built in `arc` (its verified source).
pub(crate) async fn install_arc_crds(cp: &ControlPlane, arc: &Path) -> Result<()> {
    cp.install_arc_crds_from_source(&arc.join("src")).await?;
    Ok(())
}

pub(crate) fn start_controller(
    cp: &ControlPlane,
    arc: &Path,
    o: &StackOpts,
) -> Result<tokio::process::Child> {
    let version = o.version;
    let log = cp.dir().join("arc-controller.log");
    let out = std::fs::File::create(&log)?;
    let err = out.try_clone()?;
    let child = tokio::process::Command::new(arc.join("manager"))
        .args([
            "--auto-scaling-runner-set-only".to_owned(),
            format!("--kubeconfig={}", cp.kubeconfig().display()),
            "--metrics-addr=0".to_owned(),
            "--listener-metrics-addr=0".to_owned(),
            "--log-level=debug".to_owned(),
            "--log-format=text".to_owned(),
        ])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("CONTROLLER_MANAGER_POD_NAMESPACE", CONTROLLER_NS)
        .env("CONTROLLER_MANAGER_CONTAINER_IMAGE", arc_image(version))
        .env(
            "LISTENER_ENTRYPOINT",
            if o.legacy_listener {
                LEGACY_LISTENER
            } else {
                ""
            },
        )
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .context("starting the ARC controller")?;
    if let Some(pid) = child.id() {
        std::fs::write(cp.dir().join("arc-controller.pid"), pid.to_string())?;
    }
    Ok(child)
}

pub(crate) fn session_creates(st: &Stats) -> (u64, u64) {
    (
        st.responses("session_create", 200),
        st.responses("session_create", 409),
    )
}

impl StackOpts {
    /// ARC 0.14.2 with the native sidecar injected, no extra flags, no
    /// listener template: what most scenarios run.
    pub(crate) fn native(args: &Args) -> Self {
        Self {
            version: "0.14.2",
            legacy_listener: false,
            watchdog: Some(SidecarMode::Native),
            webhook_args: vec![],
            listener_template: None,
            fake: fake_config(args),
            pod_start_latency: *args.pod_start_latency,
            native_sidecars: true,
        }
    }
}

pub(crate) fn fake_config(args: &Args) -> FakeGithubConfig {
    FakeGithubConfig {
        poll_hold: args.poll_hold,
        ..FakeGithubConfig::default()
    }
}

/// Ends a scenario leg: on failure records the kubelet's actions and keeps
/// the control plane's directory (all logs) for inspection.
/// Ends a scenario leg: an error of its body fails it (prefixed with
/// `what` when not empty), then the stack stops, keeping its logs on failure.
pub(crate) async fn conclude(stack: Stack, o: &mut Outcome, result: Result<()>, what: &str) {
    if let Err(e) = &result {
        let sep = if what.is_empty() { "" } else { ": " };
        o.check(false, format!("{what}{sep}{e:#}"));
    }
    let failed = !o.pass;
    finish(stack, o, failed).await;
}

pub(crate) async fn finish(stack: Stack, o: &mut Outcome, failed: bool) {
    if failed {
        o.notes
            .push(format!("kubelet actions:\n{}", stack.kubelet_log()));
    }
    if let Some(dir) = stack.stop(failed).await {
        o.notes.push(format!("logs kept in {}", dir.display()));
    }
}
