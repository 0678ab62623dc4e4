//! ARC-shaped objects for tests: listener pods (and their
//! AutoscalingListener owners) as ARC 0.14.2 builds them, a controller-like
//! pod that is not a listener, and what tests read back from a stored pod
//! (its identity, its injected watchdog container).

use anyhow::{Context as _, Result, anyhow};
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::{Client, ResourceExt as _};

use super::ControlPlane;
use super::resources::{FIELD_MANAGER, create_service_account};

/// Namespace of ARC's controller, where listener pods run
/// (manifests/listener-namespace/).
pub const LISTENER_NAMESPACE: &str = "arc-systems";

/// Image an ARC 0.14.2 listener pod carries (the listener pods the
/// integration tests create are shaped like ARC 0.14.2's).
pub const ARC_LISTENER_IMAGE: &str = "ghcr.io/actions/gha-runner-scale-set-controller:0.14.2";

/// The listener pod's (and AutoscalingListener's) name for a scale set:
/// `<scale-set>-<8 hex>-listener`, as ARC names it.
pub fn listener_name(scale_set: &str) -> String {
    // ARC hashes the runner set's namespace and name; any stable 8 hex do.
    let hash = scale_set.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!("{scale_set}-{hash:08x}-listener")
}

/// A listener pod shaped like ARC's `newScaleSetListenerPod` (0.14.2):
/// labels, one `listener` container running `/ghalistener`, its config
/// Secret volume, `restartPolicy: Never`, grace 60s, Linux node selector,
/// owned by its AutoscalingListener (`owner_uid`).
pub fn listener_pod(scale_set: &str, owner_uid: &str) -> Pod {
    let name = listener_name(scale_set);
    let value = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {
                "app.kubernetes.io/component": "runner-scale-set-listener",
                "app.kubernetes.io/part-of": "gha-runner-scale-set",
                "app.kubernetes.io/version": "0.14.2",
                "actions.github.com/scale-set-name": scale_set,
                "actions.github.com/scale-set-namespace": "arc-runners",
                "actions.github.com/organization": "example-org",
            },
            "ownerReferences": [{
                "apiVersion": "actions.github.com/v1alpha1", "kind": "AutoscalingListener",
                "name": name, "uid": owner_uid, "controller": true, "blockOwnerDeletion": true,
            }],
        },
        "spec": {
            "serviceAccountName": name,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 60,
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "containers": [{
                "name": "listener",
                "image": ARC_LISTENER_IMAGE,
                "command": ["/ghalistener"],
                "env": [{"name": "LISTENER_CONFIG_PATH", "value": "/etc/gha-listener/config.json"}],
                "volumeMounts": [{"name": "listener-config", "mountPath": "/etc/gha-listener", "readOnly": true}],
            }],
            "volumes": [{"name": "listener-config", "secret": {"secretName": format!("{name}-config")}}],
        }
    });
    // A fixed, valid literal: deserialising it cannot fail.
    serde_json::from_value(value).unwrap_or_default()
}

impl ControlPlane {
    /// Creates an ARC-shaped listener: its ServiceAccount, an
    /// AutoscalingListener (ARC's CRD; the pod's owner, so that the garbage
    /// collector keeps the pod) and the listener pod as ARC's
    /// `newScaleSetListenerPod` builds it ([`listener_pod`]), through the
    /// API (and so through the webhook). Returns the stored pod.
    pub async fn create_listener(&self, namespace: &str, scale_set: &str) -> Result<Pod> {
        self.create_listener_with(namespace, scale_set, |_| {})
            .await
    }

    /// [`Self::create_listener`], with `edit` applied to the pod before it
    /// is created (e.g. `restartPolicy: Always` from a user's
    /// `listenerTemplate`).
    pub async fn create_listener_with(
        &self,
        namespace: &str,
        scale_set: &str,
        edit: impl FnOnce(&mut Pod),
    ) -> Result<Pod> {
        create_listener(&self.admin_client().await?, namespace, scale_set, edit).await
    }

    /// Creates (or, if it exists, keeps) the ServiceAccount and the
    /// AutoscalingListener of `scale_set`, as ARC's controller does before
    /// the listener pod. Returns the stored AutoscalingListener.
    pub async fn create_autoscaling_listener(
        &self,
        namespace: &str,
        scale_set: &str,
    ) -> Result<DynamicObject> {
        create_autoscaling_listener(&self.admin_client().await?, namespace, scale_set).await
    }

    /// Creates a pod shaped like ARC's controller (the listener pod's shape
    /// without the listener labels and owner: not a listener, so neither
    /// injected nor given RBAC) named `name`, with its ServiceAccount
    /// `arc-gha-rs-controller`. Returns the stored pod.
    pub async fn create_controller_pod(&self, namespace: &str, name: &str) -> Result<Pod> {
        let sa = "arc-gha-rs-controller";
        self.create_service_account(namespace, sa).await?;
        let mut pod = listener_pod("controller", "");
        pod.metadata.name = Some(name.to_owned());
        pod.metadata.labels = Some(
            [(
                "app.kubernetes.io/name".to_owned(),
                "gha-rs-controller".to_owned(),
            )]
            .into(),
        );
        pod.metadata.owner_references = None;
        if let Some(spec) = pod.spec.as_mut() {
            spec.service_account_name = Some(sa.to_owned());
        }
        Api::<Pod>::namespaced(self.admin_client().await?, namespace)
            .create(&PostParams::default(), &pod)
            .await
            .with_context(|| format!("creating pod {namespace}/{name}"))
    }
}

/// [`ControlPlane::create_listener_with`] with `client` (one client for
/// many listeners: each [`ControlPlane::admin_client`] is a new connection).
pub async fn create_listener(
    client: &Client,
    namespace: &str,
    scale_set: &str,
    edit: impl FnOnce(&mut Pod),
) -> Result<Pod> {
    let name = listener_name(scale_set);
    let al = create_autoscaling_listener(client, namespace, scale_set).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut pod = listener_pod(scale_set, &al.uid().unwrap_or_default());
    edit(&mut pod);
    pods.create(&PostParams::default(), &pod)
        .await
        .with_context(|| format!("creating listener pod {namespace}/{name}"))
}

/// [`ControlPlane::create_autoscaling_listener`] with `client`.
pub async fn create_autoscaling_listener(
    client: &Client,
    namespace: &str,
    scale_set: &str,
) -> Result<DynamicObject> {
    let name = listener_name(scale_set);
    create_service_account(client, namespace, &name).await?;
    let ar = kube::discovery::ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("actions.github.com", "v1alpha1", "AutoscalingListener"),
        "autoscalinglisteners",
    );
    let listeners: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &ar);
    let al = serde_json::json!({
        "apiVersion": "actions.github.com/v1alpha1", "kind": "AutoscalingListener",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "autoscalingRunnerSetName": scale_set, "autoscalingRunnerSetNamespace": "arc-runners",
            "ephemeralRunnerSetName": format!("{scale_set}-ers"), "githubConfigSecret": format!("{scale_set}-secret"),
            "githubConfigUrl": "https://github.com/example-org", "image": ARC_LISTENER_IMAGE,
            "maxRunners": 2, "minRunners": 0, "runnerScaleSetId": 1,
        }
    });
    listeners
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&al),
        )
        .await
        .with_context(|| format!("creating AutoscalingListener {namespace}/{name}"))
}

/// Who a pod's containers run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.uid`.
    pub uid: String,
    /// `spec.serviceAccountName` (`default` when unset, as the API server
    /// fills it in).
    pub service_account: String,
}

impl PodIdentity {
    /// The identity of a stored pod (one with namespace and uid).
    pub fn of(pod: &Pod) -> Result<Self> {
        let field =
            |v: &Option<String>, what: &str| v.clone().ok_or_else(|| anyhow!("pod without {what}"));
        Ok(Self {
            namespace: field(&pod.metadata.namespace, "namespace")?,
            name: field(&pod.metadata.name, "name")?,
            uid: field(&pod.metadata.uid, "uid")?,
            service_account: pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into()),
        })
    }
}

/// The injected `arc-watchdog` container of `pod` (native: an init
/// container; classic: a regular one), if the webhook injected it.
pub fn watchdog_container(pod: &Pod) -> Option<&Container> {
    let spec = pod.spec.as_ref()?;
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .find(|c| c.name == arc_watchdog::names::CONTAINER_NAME)
}

/// Listener pods created one after another, without pause, through the API
/// server (and so through the webhook) until stopped: a steady admission
/// load while the webhook's certificate rotates.
#[derive(Debug)]
pub struct ListenerLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Result<Vec<Pod>>>,
}

/// What a [`ListenerLoad`] made.
#[derive(Debug)]
pub struct LoadOutcome {
    /// Pods created.
    pub made: usize,
    /// Of those, the ones admitted without the watchdog (a failed or
    /// skipped admission, with `failurePolicy: Ignore`).
    pub without_watchdog: Vec<String>,
}

impl ListenerLoad {
    /// At least this many pods are made, however soon the load is stopped.
    pub const MIN_PODS: usize = 10;

    /// Starts creating listeners `<prefix>-0`, `<prefix>-1`, ... in
    /// `namespace`.
    pub fn start(cp: &'static ControlPlane, namespace: &str, prefix: &str) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = tokio::spawn({
            let (stop, namespace, prefix) = (stop.clone(), namespace.to_owned(), prefix.to_owned());
            async move {
                let mut made = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::SeqCst) || made.len() < Self::MIN_PODS
                {
                    let scale_set = format!("{prefix}-{}", made.len());
                    made.push(cp.create_listener(&namespace, &scale_set).await?);
                }
                Ok(made)
            }
        });
        ListenerLoad { stop, task }
    }

    /// Stops creating and says what was made.
    pub async fn stop(self) -> Result<LoadOutcome> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let made = self.task.await.context("the listener load panicked")??;
        Ok(LoadOutcome {
            made: made.len(),
            without_watchdog: made
                .iter()
                .filter(|p| watchdog_container(p).is_none())
                .filter_map(|p| p.metadata.name.clone())
                .collect(),
        })
    }
}
