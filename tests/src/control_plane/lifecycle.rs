//! Starting and stopping a [`ControlPlane`]: etcd, kube-apiserver and
//! kube-controller-manager as child processes with their flags, the wait
//! for `/readyz`, stopping and restarting the API server alone (for tests
//! of an API server outage), and the final shutdown.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};

use super::kubeconfig::{Credentials, kubeconfig_yaml};
use super::pki::Pki;
use super::process::{
    LOG_DIRS, Proc, free_port, install_panic_hook, kill_leftovers, spawn_reaper, tail_logs,
};
use super::tools::{KUBE_VERSION, go_tool};
use super::{ControlPlane, Options};

/// Process name (log `<dir>/kube-apiserver.log`) of the API server.
const APISERVER: &str = "kube-apiserver";

static SHARED: tokio::sync::OnceCell<ControlPlane> = tokio::sync::OnceCell::const_new();

impl ControlPlane {
    /// The control plane of this test binary: started on first use, shared by
    /// every test in the binary (each test should use its own namespace),
    /// ended by the reaper when the binary exits.
    pub async fn shared() -> Result<&'static ControlPlane> {
        SHARED
            .get_or_try_init(|| Self::start_with(Options::default()))
            .await
    }

    /// Starts a control plane with default options.
    pub async fn start() -> Result<Self> {
        Self::start_with(Options::default()).await
    }

    /// Starts etcd, kube-apiserver and (optionally) kube-controller-manager,
    /// and waits until the API server is ready.
    pub async fn start_with(opts: Options) -> Result<Self> {
        install_panic_hook();
        kill_leftovers();
        let etcd_bin = go_tool("etcd")?;
        let apiserver_bin = go_tool("kube-apiserver")?;
        let kcm_bin = if opts.controller_manager {
            Some(go_tool("kube-controller-manager")?)
        } else {
            None
        };

        let tmp = tempfile::Builder::new()
            .prefix("arc-watchdog-cp-")
            .tempdir()
            .context("creating the control plane's temporary directory")?;
        // From here on the reaper removes the directory, whatever happens
        // (until then, `tmp` does).
        let reaper = spawn_reaper(tmp.path())?;
        let dir = tmp.keep();
        fs::write(dir.join("owner"), std::process::id().to_string())?;
        LOG_DIRS
            .lock()
            .map_err(|_| anyhow!("log dir list poisoned"))?
            .push(dir.clone());

        let pki = Pki::new()?;
        let write = |name: &str, content: &str| -> Result<PathBuf> {
            let p = dir.join(name);
            arc_watchdog_certs::write_file_atomic(&p, content.as_bytes(), 0o600)?;
            Ok(p)
        };
        let serving_cert = write("apiserver.crt", &pki.serving_cert_pem)?;
        let serving_key = write("apiserver.key", &pki.serving_key_pem)?;
        let client_ca = write("client-ca.crt", &pki.client_ca_pem)?;
        let serving_ca = write("ca.crt", &pki.serving_ca_pem)?;
        let sa_key = write("sa.key", &pki.sa_key_pem)?;
        // The verifying side wants the public key (it does not read PKCS#8).
        let sa_pub = write("sa.pub", &pki.sa_pub_pem)?;
        let (admin_cert, admin_key) =
            pki.client_cert("arc-watchdog-tests-admin", &["system:masters"])?;
        let server_port = free_port()?;
        let server = format!("https://127.0.0.1:{server_port}");
        let admin_kubeconfig_yaml = kubeconfig_yaml(
            &server,
            &pki.serving_ca_pem,
            &Credentials::Cert {
                cert_pem: &admin_cert,
                key_pem: &admin_key,
            },
        );
        let kubeconfig = write("admin.kubeconfig", &admin_kubeconfig_yaml)?;

        let mut cp = Self {
            dir: dir.clone(),
            server: server.clone(),
            etcd_url: String::new(),
            kubeconfig: kubeconfig.clone(),
            admin_kubeconfig_yaml,
            ca_pem: pki.serving_ca_pem.clone(),
            procs: Mutex::new(Vec::new()),
            reaper: Mutex::new(Some(reaper)),
            has_controller_manager: kcm_bin.is_some(),
            apiserver_cmd: (apiserver_bin.clone(), Vec::new()),
        };

        let t0 = Instant::now();
        let etcd_port = free_port()?;
        let peer_port = free_port()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let d = |p: &Path| p.display().to_string();
        let etcd_args = vec![
            format!("--data-dir={}", d(&dir.join("etcd-data"))),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-cluster=default=http://127.0.0.1:{peer_port}"),
            "--unsafe-no-fsync=true".into(),
            "--log-level=warn".into(),
        ];
        cp.push(Proc::spawn(&dir, "etcd", &etcd_bin, &etcd_args)?)?;
        cp.etcd_url = etcd_url.clone();

        let apiserver_args = vec![
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={server_port}"),
            format!("--cert-dir={}", d(&dir.join("apiserver-certs"))),
            format!("--tls-cert-file={}", d(&serving_cert)),
            format!("--tls-private-key-file={}", d(&serving_key)),
            format!("--client-ca-file={}", d(&client_ca)),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--allow-privileged=true".into(),
            "--authorization-mode=RBAC".into(),
            format!("--service-account-issuer={server}"),
            format!("--service-account-key-file={}", d(&sa_pub)),
            format!("--service-account-signing-key-file={}", d(&sa_key)),
            // The fake node's kubelet endpoint is reached by its InternalIP.
            "--kubelet-preferred-address-types=InternalIP".into(),
            // A loopback address is not a valid endpoint for the `kubernetes`
            // Service: do not reconcile it.
            "--endpoint-reconciler-type=none".into(),
            "--profiling=false".into(),
            "--v=1".into(),
        ];
        cp.push(Proc::spawn(
            &dir,
            APISERVER,
            &apiserver_bin,
            &apiserver_args,
        )?)?;
        cp.apiserver_cmd.1 = apiserver_args;
        cp.wait_ready(Duration::from_secs(90)).await?;
        eprintln!(
            "[control-plane] kube-apiserver {KUBE_VERSION} ready at {server} after {:.1}s (logs: {})",
            t0.elapsed().as_secs_f64(),
            dir.display()
        );

        if let Some(kcm) = kcm_bin {
            let kcm_args = vec![
                format!("--kubeconfig={}", d(&kubeconfig)),
                "--controllers=garbage-collector-controller,namespace-controller,serviceaccount-controller,root-ca-certificate-publisher-controller,disruption-controller".into(),
                "--leader-elect=false".into(),
                "--secure-port=0".into(),
                format!("--root-ca-file={}", d(&serving_ca)),
                "--use-service-account-credentials=false".into(),
                "--v=1".into(),
            ];
            cp.push(Proc::spawn(
                &dir,
                "kube-controller-manager",
                &kcm,
                &kcm_args,
            )?)?;
        }
        Ok(cp)
    }

    fn push(&self, p: Proc) -> Result<()> {
        self.procs
            .lock()
            .map_err(|_| anyhow!("process list poisoned"))?
            .push(p);
        Ok(())
    }

    /// Fails with the process's log tail if one of the processes has exited.
    fn check_alive(&self) -> Result<()> {
        let mut procs = self
            .procs
            .lock()
            .map_err(|_| anyhow!("process list poisoned"))?;
        for p in procs.iter_mut() {
            if let Some(status) = p.exited() {
                bail!(
                    "{} exited ({status}); log {}:\n{}",
                    p.name,
                    p.log.display(),
                    tail_logs(&self.dir, 30)
                );
            }
        }
        Ok(())
    }

    async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let client = self.admin_client().await?;
        loop {
            self.check_alive()?;
            let req = http::Request::get("/readyz").body(Vec::new())?;
            match client.request_text(req).await {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                Ok(_) | Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Ok(body) => bail!("kube-apiserver not ready after {timeout:?}: {body}"),
                Err(e) => bail!(
                    "kube-apiserver not ready after {timeout:?}: {e}\n{}",
                    tail_logs(&self.dir, 30)
                ),
            }
        }
    }

    /// Stops kube-apiserver (SIGTERM, SIGKILL after 5 s; by pid), leaving
    /// etcd, kube-controller-manager and every other process running: the
    /// API server goes away mid-stream, as in a control-plane upgrade.
    /// Returns how long the stop took. Fails when it is not running.
    ///
    /// Disturbs every client of this control plane: use it on a control
    /// plane of your own ([`Self::start`]), never on [`Self::shared`].
    pub async fn stop_apiserver(&self) -> Result<Duration> {
        let t0 = Instant::now();
        let mut p = {
            let mut procs = self
                .procs
                .lock()
                .map_err(|_| anyhow!("process list poisoned"))?;
            let i = procs
                .iter()
                .position(|p| p.name == APISERVER)
                .ok_or_else(|| anyhow!("kube-apiserver is not running"))?;
            procs.remove(i)
        };
        // Stopping waits (up to 5 s) in blocking calls: not on the runtime
        // that may serve the fake kubelet the API server is talking to.
        let status = tokio::task::spawn_blocking(move || {
            p.stop();
            p.exited()
        })
        .await
        .context("stopping kube-apiserver")?;
        eprintln!(
            "[control-plane] kube-apiserver stopped after {:.1?} ({})",
            t0.elapsed(),
            status.map_or_else(|| "status unknown".to_owned(), |s| s.to_string())
        );
        Ok(t0.elapsed())
    }

    /// Starts kube-apiserver again after [`Self::stop_apiserver`]: the same
    /// binary and flags, so the same address, etcd, certificates and
    /// service-account keys (tokens issued before stay valid); its log is
    /// appended to. Waits until `/readyz` answers `ok` (at most `timeout`)
    /// and returns how long that took.
    pub async fn start_apiserver(&self, timeout: Duration) -> Result<Duration> {
        let t0 = Instant::now();
        {
            let procs = self
                .procs
                .lock()
                .map_err(|_| anyhow!("process list poisoned"))?;
            ensure!(
                !procs.iter().any(|p| p.name == APISERVER),
                "kube-apiserver is already running"
            );
        }
        let (bin, args) = &self.apiserver_cmd;
        let mut cmd = Command::new(bin);
        cmd.args(args);
        self.push(Proc::start(&self.dir, APISERVER, cmd, true)?)?;
        self.wait_ready(timeout).await?;
        Ok(t0.elapsed())
    }

    /// [`Self::stop_apiserver`] then [`Self::start_apiserver`] (90 s to
    /// become ready): a restart with the shortest outage this machine
    /// allows. Returns the outage (stop to ready).
    pub async fn restart_apiserver(&self) -> Result<Duration> {
        let t0 = Instant::now();
        self.stop_apiserver().await?;
        self.start_apiserver(Duration::from_secs(90)).await?;
        Ok(t0.elapsed())
    }

    /// The process id of kube-apiserver, while it runs (for reading its CPU
    /// time and memory from `/proc`).
    pub fn apiserver_pid(&self) -> Option<u32> {
        let mut procs = self.procs.lock().ok()?;
        procs
            .iter_mut()
            .filter(|p| p.name == APISERVER)
            .find_map(|p| p.exited().is_none().then(|| p.pid()))
    }

    /// Whether kube-apiserver runs (it may be stopped by
    /// [`Self::stop_apiserver`]).
    pub fn apiserver_running(&self) -> bool {
        self.procs.lock().is_ok_and(|mut procs| {
            procs
                .iter_mut()
                .any(|p| p.name == APISERVER && p.exited().is_none())
        })
    }

    /// Ends every process (by pid) and removes the directory (all but the
    /// logs when a test failed), waiting for the reaper to finish. Called by
    /// [`Drop`]; the shared control plane relies on the reaper alone.
    pub fn shutdown(&self) {
        if let Ok(mut procs) = self.procs.lock() {
            // Reverse order: controller-manager, API server, then etcd.
            while let Some(mut p) = procs.pop() {
                p.stop();
            }
        }
        if let Ok(mut reaper) = self.reaper.lock()
            && let Some((mut child, stdin)) = reaper.take()
        {
            // EOF on its stdin: the reaper cleans the directory and exits.
            drop(stdin);
            let _ = child.wait();
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = fs::write(self.dir.join("keep"), b"");
        }
        self.shutdown();
    }
}
