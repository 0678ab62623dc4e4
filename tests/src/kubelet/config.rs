//! What a [`super::ProcessKubelet`] is told: which local binary stands in
//! for which image, where the API server and its work directories are, and
//! how long a real node takes to start a pod.

use std::path::PathBuf;
use std::time::Duration;

/// Maps a container image (and optionally its `command[0]`) to a local binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageBinary {
    /// The image reference exactly as in the pod spec.
    pub image: String,
    /// `command[0]` this entry applies to (e.g. `/ghalistener`); `None`: any,
    /// including no command (the image's entrypoint).
    pub command: Option<String>,
    /// The binary to run.
    pub path: PathBuf,
}

/// Settings of a [`super::ProcessKubelet`].
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    /// Image to binary mapping.
    pub images: Vec<ImageBinary>,
    /// `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT` given to containers.
    pub api_host: String,
    /// See `api_host`.
    pub api_port: u16,
    /// Where pod directories (volumes, logs) go.
    pub work_dir: PathBuf,
    /// Where `<pod>.<container>.pid` files go while a container runs, so
    /// that a reaper (the control plane's) can end them if the test dies.
    pub pid_dir: Option<PathBuf>,
    /// Time from a pod's volumes being ready to its first container's
    /// process starting: what a real node spends creating the pod sandbox
    /// (network namespace, CNI) and the container with its image present.
    /// See [`DEFAULT_POD_START_LATENCY`].
    pub pod_start_latency: Duration,
    /// Runs init containers with `restartPolicy: Always` as native sidecars
    /// (Kubernetes 1.29 and later). `false` is a kubelet of 1.28 or older,
    /// which runs them as plain init containers that must exit before the
    /// next container starts.
    pub native_sidecars: bool,
}

/// A real node's pod start latency, image already pulled. ARC users see a
/// listener conflict loop turn over about every 3 s
/// (actions/actions-runner-controller#3351: "crash loops every 3
/// seconds"); on this stack the controller's delete, create and schedule
/// and the fake GitHub's answers add well under a second, so the node's
/// share is about 3 s. Kubernetes' own service level
/// objective for pod startup (image pull excluded) is 5 s at the 99th
/// percentile.
pub const DEFAULT_POD_START_LATENCY: Duration = Duration::from_secs(3);
