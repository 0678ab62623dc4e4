//! [`WatchdogProcess`]: `arc-watchdog run` as a local process for one
//! injected pod, started with exactly what the kubelet would give the
//! injected container, so that integration tests exercise the real binary
//! against the real API server without a kubelet.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Result, anyhow, ensure};
use k8s_openapi::api::core::v1::Pod;

use super::ControlPlane;
use super::fixtures::{PodIdentity, watchdog_container};
use super::http::http_get;
use super::process::{Proc, ProcSlot, free_port};
use super::tools::workspace_bin;

/// `arc-watchdog run` as a process standing in for the injected sidecar of
/// one pod: the arguments the webhook injected, the downward-API env, and
/// the credentials the kubelet would mount (a TokenRequest token for the
/// pod's ServiceAccount, bound to the pod), passed through `KUBECONFIG`.
#[derive(Debug)]
pub struct WatchdogProcess {
    proc: ProcSlot,
    /// Where its HTTP endpoints listen (`/healthz`, `/readyz`, `/startz`, `/metrics`).
    pub addr: SocketAddr,
    /// Its log file (JSON lines).
    pub log: PathBuf,
    pid: u32,
}

impl WatchdogProcess {
    /// Starts the watchdog for `pod` (as stored, i.e. injected). `extra_env`
    /// is added (e.g. `RUST_LOG`). Waits until `/healthz` answers.
    pub async fn start(cp: &ControlPlane, pod: &Pod, extra_env: &[(&str, &str)]) -> Result<Self> {
        let bin = workspace_bin("arc-watchdog", "arc-watchdog")?;
        Self::start_bin(cp, pod, &bin, extra_env).await
    }

    /// [`Self::start`] with the `arc-watchdog` binary at `bin` (e.g. a
    /// release build, for the bench).
    pub async fn start_bin(
        cp: &ControlPlane,
        pod: &Pod,
        bin: &Path,
        extra_env: &[(&str, &str)],
    ) -> Result<Self> {
        let id = PodIdentity::of(pod)?;
        let container = watchdog_container(pod).ok_or_else(|| {
            anyhow!(
                "{}/{} has no {} container: not injected",
                id.namespace,
                id.name,
                arc_watchdog::names::CONTAINER_NAME
            )
        })?;
        let args = container.args.clone().unwrap_or_default();
        let token = cp.pod_token(pod).await?;
        let tag = format!("watchdog-{}-{}", id.name, &id.uid[..8.min(id.uid.len())]);
        let kubeconfig = cp.write_token_kubeconfig(&tag, &token)?;
        let port = free_port()?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut cmd = Command::new(bin);
        cmd.args(&args)
            .env("KUBECONFIG", &kubeconfig)
            .env(arc_watchdog::names::ENV_POD_NAME, &id.name)
            .env(arc_watchdog::names::ENV_POD_NAMESPACE, &id.namespace)
            .env(arc_watchdog::names::ENV_POD_UID, &id.uid)
            .env("ARC_WATCHDOG_LISTEN", addr.to_string())
            .envs(extra_env.iter().copied());
        let proc = Proc::start(cp.dir(), &tag, cmd, false)?;
        let log = proc.log.clone();
        let pid = proc.pid();
        let wd = Self {
            proc: ProcSlot(Mutex::new(Some(proc))),
            addr,
            log,
            pid,
        };
        wd.proc
            .await_http_ok(
                "arc-watchdog run",
                addr,
                arc_watchdog::names::PATH_HEALTHZ,
                Duration::from_secs(30),
                || wd.log_text(),
            )
            .await?;
        Ok(wd)
    }

    /// Its process id (for reading its memory from `/proc`).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `GET path` on its HTTP port: status and body.
    pub async fn get(&self, path: &str) -> Result<(u16, String)> {
        http_get(self.addr, path).await
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> Result<String> {
        let (status, body) = self.get(arc_watchdog::names::PATH_METRICS).await?;
        ensure!(status == 200, "/metrics answered {status}");
        Ok(body)
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM (what the kubelet sends), then SIGKILL after 5s; by pid.
    pub fn stop(&self) {
        self.proc.stop();
    }
}

impl Drop for WatchdogProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
