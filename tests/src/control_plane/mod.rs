//! A real, local Kubernetes control plane for tests and the demo: etcd,
//! kube-apiserver and (when built) kube-controller-manager, built from their
//! Go modules by `tests/scripts/build-go-tools.sh` and started on 127.0.0.1
//! with random ports, the way controller-runtime's envtest does.
//!
//! What it gives you:
//! - [`ControlPlane::shared`]: one control plane per test binary, started on
//!   first use; [`ControlPlane::start`]: one you own (the demo).
//! - [`ControlPlane::admin_client`] (a `system:masters` client certificate;
//!   bypasses RBAC), [`ControlPlane::service_account_client`] and
//!   [`ControlPlane::pod_client`] (real TokenRequest tokens: use them to
//!   test RBAC).
//! - helpers to create namespaces and service accounts, apply YAML by
//!   server-side apply, run the matching `kubectl`, and install ARC's and
//!   cert-manager's CRDs from their Go modules.
//! - [`ControlPlane::stop_apiserver`] / [`ControlPlane::start_apiserver`]
//!   (or [`ControlPlane::restart_apiserver`]): the API server goes away and
//!   comes back on the same address with the same etcd, certificates and
//!   flags (for a control plane of your own, not the shared one).
//! - [`Webhook`]: runs `arc-watchdog-webhook` as a process and registers it
//!   at `https://127.0.0.1:PORT/mutate` with a `caBundle` from
//!   `arc-watchdog-certs`; [`WatchdogProcess`]: runs `arc-watchdog run` for
//!   one injected pod.
//!
//! Teardown: every process is ended by its own pid, from [`Drop`], and also
//! by a small reaper process that notices when this process goes away (for
//! the shared control plane, which as a `static` is never dropped, and when
//! a test binary is killed). The temporary directory goes with them; a
//! failing test (a panic) keeps only its logs, prints the tail of each and
//! where they are, and a later run removes them after a day.
//!
//! Where things are, one concern a file; everything public is re-exported
//! here, so callers name `control_plane::X` whatever file `X` lives in:
//! - this file: the [`ControlPlane`] itself, its [`Options`] and accessors;
//! - `lifecycle.rs`: starting, stopping and restarting its processes;
//! - `clients.rs`: kube clients, tokens and `kubectl` pointed at it;
//! - `resources.rs`: namespaces, service accounts, server-side apply, CRDs;
//! - `fixtures.rs`: ARC-shaped listener and controller pods, pod identities;
//! - `webhook.rs`: installing arc-watchdog and running its webhook;
//! - `watchdog.rs`: `arc-watchdog run` as a process for one pod;
//! - `process.rs`: child processes (also a caller's, [`OwnedProcess`]), the
//!   reaper, leftovers, kept logs;
//! - `pki.rs`: the API server's certificates and client certificates;
//! - `kubeconfig.rs`: kubeconfig text and clients built from it;
//! - `tools.rs`: the Go tools, workspace binaries and Go module directories;
//! - `http.rs`: a small HTTP client, metric lookup and polling.

mod clients;
mod fixtures;
mod http;
mod kubeconfig;
mod lifecycle;
mod pki;
mod process;
mod resources;
mod tools;
mod watchdog;
mod webhook;

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin};
use std::sync::{Arc, Mutex};

pub use fixtures::{
    ARC_LISTENER_IMAGE, LISTENER_NAMESPACE, ListenerLoad, LoadOutcome, PodIdentity,
    create_autoscaling_listener, create_listener, listener_name, listener_pod, watchdog_container,
};
pub use http::{eventually, http_get, metric_value};
pub use process::{OwnedProcess, free_port, tail_logs};
pub use resources::{FIELD_MANAGER, create_service_account};
pub use tools::{
    ARC_MODULE, ARC_RELEASE, CERT_MANAGER_MODULE, KUBE_VERSION, crd_pins, go_module_dir,
    go_module_dir_in, go_tool, workspace_bin, workspace_root,
};
pub use watchdog::WatchdogProcess;
pub use webhook::{
    SidecarMode, TLS_SECRET_NAME, WATCHDOG_IMAGE, WEBHOOK_CONFIG_NAME, WEBHOOK_NAMESPACE,
    WEBHOOK_SERVICE_ACCOUNT, Webhook, manifest_webhook_configuration, served_cert,
    set_client_config,
};

use process::Proc;

/// A running local control plane. See the module documentation.
#[derive(Debug)]
pub struct ControlPlane {
    dir: PathBuf,
    server: String,
    etcd_url: String,
    kubeconfig: PathBuf,
    admin_kubeconfig_yaml: String,
    ca_pem: String,
    procs: Mutex<Vec<Proc>>,
    reaper: Mutex<Option<(Child, ChildStdin)>>,
    has_controller_manager: bool,
    /// kube-apiserver's program and flags, for [`Self::start_apiserver`].
    apiserver_cmd: (PathBuf, Vec<String>),
}

/// Options for [`ControlPlane::start_with`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Also run kube-controller-manager with the garbage collector,
    /// namespace, service-account, root-CA publisher and disruption
    /// controllers (default true; `ARC_WATCHDOG_NO_CONTROLLER_MANAGER=1`
    /// turns it off).
    pub controller_manager: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            controller_manager: std::env::var("ARC_WATCHDOG_NO_CONTROLLER_MANAGER").as_deref()
                != Ok("1"),
        }
    }
}

impl ControlPlane {
    /// `https://127.0.0.1:PORT` of the API server.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The etcd client URL.
    pub fn etcd_url(&self) -> &str {
        &self.etcd_url
    }

    /// The temporary directory holding logs, certificates and etcd's data.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the admin kubeconfig (`system:masters`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The CA that signed the API server's serving certificate (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Whether kube-controller-manager runs (garbage collection, namespace
    /// deletion, `default` service accounts, `kube-root-ca.crt`, PDB status).
    pub fn has_controller_manager(&self) -> bool {
        self.has_controller_manager
    }

    /// The tail of every process's log.
    pub fn logs(&self, lines: usize) -> String {
        tail_logs(&self.dir, lines)
    }
}

/// Shared state a test can hand to helper tasks.
pub type Shared<T> = Arc<Mutex<T>>;
