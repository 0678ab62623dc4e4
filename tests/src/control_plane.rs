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
//!   `arc-watchdog-certs`.
//!
//! Teardown: every process is ended by its own pid, from [`Drop`], and also
//! by a small reaper process that notices when this process goes away (for
//! the shared control plane, which as a `static` is never dropped, and when
//! a test binary is killed). The temporary directory goes with them; a
//! failing test (a panic) keeps only its logs, prints the tail of each and
//! where they are, and a later run removes them after a day.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::BufRead;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Container, Namespace, Pod, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;
use kube::{Client, Config, ResourceExt as _};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use serde::Deserialize as _;

/// Kubernetes release the control plane runs (must match
/// `tests/scripts/build-go-tools.sh` and `tests/go/kube/go.mod`).
pub const KUBE_VERSION: &str = "v1.34.4";
/// ARC module version whose CRDs the integration tests install, pinned
/// with cert-manager's in `tests/go/crds/go.mod` and checked by its go.sum:
/// the newest the Go module proxy serves (it refuses the pseudo-versions
/// of the gha-runner-scale-set release commits; see that go.mod).
pub const ARC_RELEASE: &str = "v0.27.6";
/// Go module of ARC; its CRDs are in `config/crd/bases/`.
pub const ARC_MODULE: &str = "github.com/actions/actions-runner-controller";
/// Go module of cert-manager; its plain CRDs are in `deploy/crds/`.
pub const CERT_MANAGER_MODULE: &str = "github.com/cert-manager/cert-manager";

/// Image the webhook is told to inject (no image is pulled here: pods run,
/// if at all, as processes of the e2e kubelet).
pub const WATCHDOG_IMAGE: &str = "ghcr.io/arc-watchdog/arc-watchdog:dev";

/// Namespace of the webhook (manifests/namespace.yaml).
pub const WEBHOOK_NAMESPACE: &str = "arc-watchdog";
/// ServiceAccount of the webhook (manifests/webhook/serviceaccount.yaml).
pub const WEBHOOK_SERVICE_ACCOUNT: &str = "arc-watchdog-webhook";
/// Name of the MutatingWebhookConfiguration (manifests/webhook/).
pub const WEBHOOK_CONFIG_NAME: &str = "arc-watchdog";
/// Namespace of ARC's controller, where listener pods run
/// (manifests/listener-namespace/).
pub const LISTENER_NAMESPACE: &str = "arc-systems";

/// Process name (log `<dir>/kube-apiserver.log`) of the API server.
const APISERVER: &str = "kube-apiserver";

/// Field manager used for server-side apply from tests.
pub const FIELD_MANAGER: &str = "arc-watchdog-tests";

/// The repository root (the workspace).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Path of a control-plane binary (`etcd`, `kube-apiserver`,
/// `kube-controller-manager`, `kubectl`), building it first if needed with
/// `tests/scripts/build-go-tools.sh` (idempotent: a no-op when cached).
/// The cache is `ARC_WATCHDOG_CACHE` (default `~/.cache/arc-watchdog`).
pub fn go_tool(name: &str) -> Result<PathBuf> {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let script = workspace_root().join("tests/scripts/build-go-tools.sh");
    let out = Command::new(&script)
        .arg(name)
        .env("ARC_WATCHDOG_PRINT_DIRS", "1")
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    ensure!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .ok_or_else(|| anyhow!("{} printed no directory for {name}", script.display()))?;
    let path = Path::new(dir).join(name);
    // Always run the build script: it is a quick no-op when the binary is up
    // to date (and then silent) and rebuilds, showing progress, when the
    // pinned version or go.sum changed.
    let status = Command::new(&script)
        .arg(name)
        .env("ARC_WATCHDOG_QUIET_UP_TO_DATE", "1")
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    ensure!(
        status.success() && path.is_file(),
        "building {name} failed: run `make go-tools` and read its output (needs Go >= 1.24 and the Go module proxy)"
    );
    Ok(path)
}

/// Builds a workspace binary with cargo (a no-op when up to date) and returns
/// its path. Integration tests live in another package than the binaries, so
/// `CARGO_BIN_EXE_*` is not available; this asks cargo itself, which also
/// works when the tests run from a fresh checkout.
pub fn workspace_bin(package: &str, bin: &str) -> Result<PathBuf> {
    // Built once per process: a test binary restarts the webhook several
    // times, and each `cargo build` may wait minutes for the build lock
    // while other builds run.
    static BUILT: Mutex<BTreeMap<(String, String), PathBuf>> = Mutex::new(BTreeMap::new());
    let mut built = BUILT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let key = (package.to_owned(), bin.to_owned());
    if let Some(path) = built.get(&key) {
        return Ok(path.clone());
    }
    let path = cargo_build_bin(package, bin)?;
    built.insert(key, path.clone());
    Ok(path)
}

fn cargo_build_bin(package: &str, bin: &str) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(workspace_root())
        .args([
            "build",
            "--quiet",
            "--message-format=json-render-diagnostics",
            "-p",
            package,
            "--bin",
            bin,
        ])
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running cargo build -p {package} --bin {bin}"))?;
    ensure!(
        out.status.success(),
        "cargo build -p {package} --bin {bin} failed"
    );
    for line in out.stdout.split(|b| *b == b'\n') {
        let Ok(msg) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact"
            && msg["target"]["name"] == bin
            && let Some(exe) = msg["executable"].as_str()
        {
            return Ok(PathBuf::from(exe));
        }
    }
    bail!("cargo build -p {package} --bin {bin} reported no executable")
}

/// A free TCP port on 127.0.0.1 (bound and released; the tiny race with
/// other processes is acceptable for tests).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// A child process of the control plane: ended by its own pid. Its output
/// goes to `<dir>/<name>.log`, its pid to `<dir>/<name>.pid` (for the
/// reaper and [`kill_leftovers`]).
#[derive(Debug)]
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    pid_file: PathBuf,
}

impl Proc {
    fn spawn(dir: &Path, name: &str, program: &Path, args: &[String]) -> Result<Self> {
        let mut cmd = Command::new(program);
        cmd.args(args);
        Self::start(dir, name, cmd, false)
    }

    /// Starts `cmd` with stdin closed and stdout and stderr to its log,
    /// truncated, or appended to when `append` (a restarted process keeps
    /// one log).
    fn start(dir: &Path, name: &str, mut cmd: Command, append: bool) -> Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let out = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&log)
            .with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", Path::new(cmd.get_program()).display()))?;
        let pid_file = dir.join(format!("{name}.pid"));
        fs::write(&pid_file, child.id().to_string())?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
            pid_file,
        })
    }

    /// SIGTERM, a short wait, then SIGKILL: by pid, never by name. Then its
    /// pid file goes (nothing left for the reaper to end).
    fn stop(&mut self) {
        self.end();
        let _ = fs::remove_file(&self.pid_file);
    }

    fn end(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

/// One process that a test may stop and start again ([`Webhook`],
/// [`WatchdogProcess`]).
#[derive(Debug, Default)]
struct ProcSlot(Mutex<Option<Proc>>);

impl ProcSlot {
    fn set(&self, p: Proc) -> Result<()> {
        *self
            .0
            .lock()
            .map_err(|_| anyhow!("process slot poisoned"))? = Some(p);
        Ok(())
    }

    /// Ends the process (by pid), if one runs.
    fn stop(&self) {
        if let Ok(mut p) = self.0.lock()
            && let Some(mut p) = p.take()
        {
            p.stop();
        }
    }

    fn exited(&self) -> Option<std::process::ExitStatus> {
        self.0.lock().ok()?.as_mut().and_then(Proc::exited)
    }

    /// Waits until `GET path` on `addr` answers 200; fails early, with
    /// `log_tail()`, when the process exits.
    async fn await_http_ok(
        &self,
        what: &str,
        addr: SocketAddr,
        path: &str,
        timeout: Duration,
        log_tail: impl Fn() -> String,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                bail!("{what} exited ({status}):\n{}", log_tail());
            }
            if matches!(http_get(addr, path).await, Ok((200, _))) {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{what} not answering {path} after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Reaper: a shell that waits for EOF on its stdin (this process exiting, for
/// any reason) and then ends every process whose pid file is in the
/// directory, and removes the directory; when a `keep` marker exists (a
/// test failed) it removes all but the logs (`*.log`, in any
/// subdirectory): etcd's data alone is some 70 MB, and keys and
/// kubeconfigs have no business outliving the run.
/// Ignores SIGINT/SIGTERM/SIGHUP so that a Ctrl-C on `cargo test` (sent to
/// the whole process group) still gets everything cleaned up.
fn spawn_reaper(dir: &Path) -> Result<(Child, ChildStdin)> {
    const SCRIPT: &str = r#"trap '' INT TERM HUP
cat >/dev/null
for f in "$1"/*.pid; do [ -f "$f" ] && kill -TERM "$(cat "$f")" 2>/dev/null; done
sleep 2
for f in "$1"/*.pid; do [ -f "$f" ] && kill -KILL "$(cat "$f")" 2>/dev/null; done
if [ -e "$1/keep" ]; then
  find "$1" -mindepth 1 ! -type d ! -name '*.log' ! -name keep -delete
  find "$1" -mindepth 1 -type d -empty -delete
else
  rm -rf "$1"
fi
"#;
    let mut child = Command::new("sh")
        .args(["-c", SCRIPT, "arc-watchdog-reaper"])
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the reaper shell")?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("reaper has no stdin"))?;
    Ok((child, stdin))
}

/// How long the logs of a failed run are kept: later runs remove them.
const KEPT_LOGS_FOR: Duration = Duration::from_secs(24 * 3600);

/// Cleans up after earlier runs whose test process died before its reaper
/// could act (e.g. SIGKILL of the whole process group), in every
/// `arc-watchdog-cp-*` directory whose owner (the `owner` file) is gone:
/// ends every process of a `*.pid` whose command line still names that
/// directory, then removes the directory, or, when a failed test kept it,
/// everything but the logs (see [`spawn_reaper`]), and the logs too once
/// they are older than [`KEPT_LOGS_FOR`].
fn kill_leftovers() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let is_ours = dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("arc-watchdog-cp-"));
        if !is_ours {
            continue;
        }
        let owner_alive = fs::read_to_string(dir.join("owner"))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
        // A directory another test binary has just created has no owner
        // file yet.
        let just_made = fs::metadata(&dir)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < Duration::from_secs(60));
        if owner_alive || (just_made && !dir.join("keep").exists()) {
            continue;
        }
        let Ok(files) = fs::read_dir(&dir) else {
            continue;
        };
        for f in files.flatten() {
            let p = f.path();
            if p.extension().is_some_and(|e| e == "pid")
                && let Some(pid) = fs::read_to_string(&p)
                    .ok()
                    .and_then(|s| s.trim().parse::<u32>().ok())
            {
                let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline);
                if cmdline.contains(dir.to_string_lossy().as_ref()) {
                    let _ = Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status();
                }
            }
        }
        let keep = dir.join("keep");
        let expired = fs::metadata(&keep)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_none_or(|age| age > KEPT_LOGS_FOR);
        if keep.exists() && !expired {
            keep_only_logs(&dir);
        } else {
            let _ = fs::remove_dir_all(&dir);
        }
    }
}

/// Removes everything in `dir` but `*.log` files and the `keep` marker
/// (what the reaper does for a failed run; see [`spawn_reaper`]).
fn keep_only_logs(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let p = entry.path();
        if p.is_dir() && !p.is_symlink() {
            keep_only_logs(&p);
            // Fails, as it should, while logs are left inside.
            let _ = fs::remove_dir(&p);
        } else if !(p.extension().is_some_and(|e| e == "log")
            || p.file_name() == Some("keep".as_ref()))
        {
            let _ = fs::remove_file(&p);
        }
    }
}

/// What the local servers' certificates name (`localhost`, 127.0.0.1) and
/// how long they last: a week outlives any test run.
fn loopback_serving() -> arc_watchdog_certs::Options {
    arc_watchdog_certs::Options {
        dns: vec!["localhost".into()],
        ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        days: 7,
    }
}

/// A client certificate authority and the API server's PKI.
struct Pki {
    serving_ca_pem: String,
    serving_cert_pem: String,
    serving_key_pem: String,
    client_ca_pem: String,
    client_ca: Issuer<'static, KeyPair>,
    sa_key_pem: String,
    sa_pub_pem: String,
}

impl Pki {
    fn new() -> Result<Self> {
        let serving = arc_watchdog_certs::generate(&loopback_serving())
            .context("API server serving certificate")?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "arc-watchdog tests client CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let sa_key = KeyPair::generate()?;
        Ok(Self {
            serving_ca_pem: serving.ca_cert_pem,
            serving_cert_pem: serving.serving.cert_pem,
            serving_key_pem: serving.serving.key_pem,
            client_ca_pem: cert.pem(),
            client_ca: Issuer::new(params, key),
            sa_key_pem: sa_key.serialize_pem(),
            sa_pub_pem: sa_key.public_key_pem(),
        })
    }

    /// A client certificate: the API server maps CN to the user name and
    /// each O to a group.
    fn client_cert(&self, user: &str, groups: &[&str]) -> Result<(String, String)> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, user);
        for g in groups {
            dn.push(DnType::OrganizationName, *g);
        }
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.client_ca)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

fn b64(data: &str) -> String {
    // Base64 without another dependency: kubeconfig *-data fields need it.
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = data.as_bytes();
    let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
    for chunk in b.chunks(3) {
        let n = match chunk.len() {
            3 => (u32::from(chunk[0]) << 16) | (u32::from(chunk[1]) << 8) | u32::from(chunk[2]),
            2 => (u32::from(chunk[0]) << 16) | (u32::from(chunk[1]) << 8),
            _ => u32::from(chunk[0]) << 16,
        };
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(T[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Who a kubeconfig authenticates as.
enum Credentials<'a> {
    Cert { cert_pem: &'a str, key_pem: &'a str },
    Token(&'a str),
}

fn kubeconfig_yaml(server: &str, ca_pem: &str, creds: &Credentials<'_>) -> String {
    let user = match creds {
        Credentials::Cert { cert_pem, key_pem } => format!(
            "    client-certificate-data: {}\n    client-key-data: {}\n",
            b64(cert_pem),
            b64(key_pem)
        ),
        Credentials::Token(t) => format!("    token: {t}\n"),
    };
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: user\n  user:\n{user}contexts:\n- name: local\n  context:\n    cluster: local\n    user: user\ncurrent-context: local\n",
        b64(ca_pem)
    )
}

async fn client_from_kubeconfig(yaml: &str) -> Result<Client> {
    client_from_kubeconfig_with(yaml, true).await
}

/// `default_retry: false` is how `arc-watchdog run` builds its client (its
/// own bounded retries instead of kube's: a PDB's 429 would otherwise be
/// retried inside kube).
async fn client_from_kubeconfig_with(yaml: &str, default_retry: bool) -> Result<Client> {
    let kc = Kubeconfig::from_yaml(yaml).context("parsing kubeconfig")?;
    let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .context("kubeconfig to client config")?;
    config.default_retry = default_retry;
    Client::try_from(config).context("building kube client")
}

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

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
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

static PANIC_HOOK: OnceLock<()> = OnceLock::new();
static LOG_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// On a panic (a failing test), keep the logs of every control plane (the
/// `keep` marker: see [`spawn_reaper`]) and print their tails, once.
fn install_panic_hook() {
    PANIC_HOOK.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            let dirs = LOG_DIRS.lock().map(|d| d.clone()).unwrap_or_default();
            for dir in dirs {
                // Print once per directory, however many tests fail.
                if dir.join("keep").exists() || fs::write(dir.join("keep"), b"").is_err() {
                    continue;
                }
                eprintln!(
                    "\n[control-plane] a test failed: logs kept in {}",
                    dir.display()
                );
                eprint!("{}", tail_logs(&dir, 25));
            }
        }));
    });
}

/// The last `n` lines of every `*.log` in `dir`.
pub fn tail_logs(dir: &Path, n: usize) -> String {
    let mut out = String::new();
    let mut logs: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "log"))
                .collect()
        })
        .unwrap_or_default();
    logs.sort();
    for log in logs {
        let lines: Vec<String> = fs::File::open(&log)
            .map(|f| {
                std::io::BufReader::new(f)
                    .lines()
                    .map_while(Result::ok)
                    .collect()
            })
            .unwrap_or_default();
        let _ = writeln!(out, "----- {} (last {n} lines) -----", log.display());
        for l in lines.iter().skip(lines.len().saturating_sub(n)) {
            let _ = writeln!(out, "{l}");
        }
    }
    out
}

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

    /// Whether kube-apiserver runs (it may be stopped by
    /// [`Self::stop_apiserver`]).
    pub fn apiserver_running(&self) -> bool {
        self.procs.lock().is_ok_and(|mut procs| {
            procs
                .iter_mut()
                .any(|p| p.name == APISERVER && p.exited().is_none())
        })
    }

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

    /// An admin client (client certificate in `system:masters`: bypasses
    /// RBAC; never use it to test permissions). Create one per tokio runtime
    /// (per test): a kube client's background task lives on the runtime that
    /// created it.
    pub async fn admin_client(&self) -> Result<Client> {
        client_from_kubeconfig(&self.admin_kubeconfig_yaml).await
    }

    /// A real token for a ServiceAccount (TokenRequest), valid for an hour,
    /// optionally bound to a pod (as the kubelet does for projected tokens:
    /// the token dies with the pod).
    pub async fn service_account_token(
        &self,
        namespace: &str,
        service_account: &str,
        bound_pod: Option<(&str, &str)>,
    ) -> Result<String> {
        let client = self.admin_client().await?;
        let sas: Api<ServiceAccount> = Api::namespaced(client, namespace);
        let tr = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![self.server.clone()],
                expiration_seconds: Some(3600),
                bound_object_ref: bound_pod.map(|(name, uid)| BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(name.into()),
                    uid: Some(uid.into()),
                }),
            },
            ..Default::default()
        };
        let out = sas
            .create_token_request(service_account, &PostParams::default(), &tr)
            .await
            .with_context(|| format!("TokenRequest for {namespace}/{service_account}"))?;
        out.status.map(|s| s.token).ok_or_else(|| {
            anyhow!("TokenRequest for {namespace}/{service_account} returned no token")
        })
    }

    /// A kubeconfig file authenticating with `token` (for processes such as
    /// `arc-watchdog run`, via `KUBECONFIG`). Written into the control
    /// plane's directory under `name`.
    pub fn write_token_kubeconfig(&self, name: &str, token: &str) -> Result<PathBuf> {
        let path = self.dir.join(format!("{name}.kubeconfig"));
        let yaml = self.token_kubeconfig_yaml(token);
        arc_watchdog_certs::write_file_atomic(&path, yaml.as_bytes(), 0o600)?;
        Ok(path)
    }

    fn token_kubeconfig_yaml(&self, token: &str) -> String {
        kubeconfig_yaml(&self.server, &self.ca_pem, &Credentials::Token(token))
    }

    /// A client authenticating with `token`.
    pub async fn token_client(&self, token: &str) -> Result<Client> {
        client_from_kubeconfig(&self.token_kubeconfig_yaml(token)).await
    }

    /// A client for a ServiceAccount with a fresh TokenRequest token: what
    /// RBAC tests must use.
    pub async fn service_account_client(
        &self,
        namespace: &str,
        service_account: &str,
        bound_pod: Option<(&str, &str)>,
    ) -> Result<Client> {
        let token = self
            .service_account_token(namespace, service_account, bound_pod)
            .await?;
        self.token_client(&token).await
    }

    /// The token the kubelet would mount into `pod`'s containers: for the
    /// pod's ServiceAccount, bound to the pod (it dies with the pod).
    pub async fn pod_token(&self, pod: &Pod) -> Result<String> {
        let id = PodIdentity::of(pod)?;
        self.service_account_token(
            &id.namespace,
            &id.service_account,
            Some((&id.name, &id.uid)),
        )
        .await
    }

    /// A client with `pod`'s identity ([`Self::pod_token`]): what its
    /// injected watchdog may do, for RBAC tests.
    pub async fn pod_client(&self, pod: &Pod) -> Result<Client> {
        self.token_client(&self.pod_token(pod).await?).await
    }

    /// [`Self::pod_client`] configured like `arc-watchdog run`'s: no
    /// kube-level retries, so that the watchdog's own eviction retries are
    /// what is tested.
    pub async fn pod_watchdog_client(&self, pod: &Pod) -> Result<Client> {
        client_from_kubeconfig_with(
            &self.token_kubeconfig_yaml(&self.pod_token(pod).await?),
            false,
        )
        .await
    }

    /// Creates a namespace (idempotent, server-side apply).
    pub async fn create_namespace(&self, name: &str) -> Result<()> {
        let api: Api<Namespace> = Api::all(self.admin_client().await?);
        let ns = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        api.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&ns),
        )
        .await
        .with_context(|| format!("creating namespace {name}"))?;
        Ok(())
    }

    /// Creates a ServiceAccount (idempotent). The ServiceAccount admission
    /// plugin is on: a pod naming a missing ServiceAccount is refused.
    pub async fn create_service_account(&self, namespace: &str, name: &str) -> Result<()> {
        let api: Api<ServiceAccount> = Api::namespaced(self.admin_client().await?, namespace);
        let sa = serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}});
        api.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&sa),
        )
        .await
        .with_context(|| format!("creating service account {namespace}/{name}"))?;
        Ok(())
    }

    /// Server-side applies every document of a (multi-document) YAML text.
    /// Namespaced objects without a namespace go to `default_namespace`.
    /// Returns the applied objects as the server stored them.
    pub async fn apply_yaml(
        &self,
        yaml: &str,
        default_namespace: Option<&str>,
    ) -> Result<Vec<DynamicObject>> {
        let client = self.admin_client().await?;
        let mut applied = Vec::new();
        for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
            let value = serde_json::Value::deserialize(doc).context("parsing YAML")?;
            if value.is_null() {
                continue;
            }
            let obj: DynamicObject = serde_json::from_value(value.clone())
                .context("YAML document is not a Kubernetes object")?;
            let types = obj
                .types
                .clone()
                .ok_or_else(|| anyhow!("object without apiVersion/kind: {value}"))?;
            let gvk = GroupVersionKind::try_from(&types).map_err(|e| anyhow!("{e}"))?;
            let (ar, caps) = kube::discovery::pinned_kind(&client, &gvk)
                .await
                .with_context(|| format!("discovering {gvk:?}"))?;
            let name = obj.name_any();
            let api: Api<DynamicObject> = if caps.scope == kube::discovery::Scope::Namespaced {
                let ns = obj
                    .namespace()
                    .or_else(|| default_namespace.map(str::to_owned))
                    .ok_or_else(|| anyhow!("{} {name} needs a namespace", types.kind))?;
                Api::namespaced_with(client.clone(), &ns, &ar)
            } else {
                Api::all_with(client.clone(), &ar)
            };
            let out = api
                .patch(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&value),
                )
                .await
                .with_context(|| format!("applying {} {name}", types.kind))?;
            applied.push(out);
        }
        Ok(applied)
    }

    /// Applies CRDs and waits until each is Established.
    pub async fn apply_crds(&self, yaml: &str) -> Result<Vec<String>> {
        let applied = self.apply_yaml(yaml, None).await?;
        let api: Api<CustomResourceDefinition> = Api::all(self.admin_client().await?);
        let mut names = Vec::new();
        for obj in applied {
            let name = obj.name_any();
            let cond = kube::runtime::wait::conditions::is_crd_established();
            tokio::time::timeout(
                Duration::from_secs(30),
                kube::runtime::wait::await_condition(api.clone(), &name, cond),
            )
            .await
            .with_context(|| format!("CRD {name} not established after 30s"))??;
            names.push(name);
        }
        Ok(names)
    }

    /// Installs the CRDs a Go module ships: the files of `subdir` whose name
    /// `keep` accepts, in name order, from `module` at the version the
    /// wrapper module `pins` requires (in the module cache; downloaded when
    /// missing, see [`go_module_dir_in`]). Waits until each is Established
    /// and returns their names.
    pub async fn install_module_crds(
        &self,
        module: &str,
        pins: &Path,
        subdir: &str,
        keep: impl Fn(&str) -> bool,
    ) -> Result<Vec<String>> {
        let dir = go_module_dir_in(module, pins)?.join(subdir);
        self.install_crds_in(&dir, keep).await
    }

    /// Installs the CRD files of `dir` whose name `keep` accepts, in name
    /// order; waits until each is Established and returns their names.
    pub async fn install_crds_in(
        &self,
        dir: &Path,
        keep: impl Fn(&str) -> bool,
    ) -> Result<Vec<String>> {
        let mut yaml = String::new();
        for f in sorted_files(dir)? {
            let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if keep(name) {
                yaml.push_str("\n---\n");
                yaml.push_str(
                    &fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?,
                );
            }
        }
        ensure!(!yaml.is_empty(), "no CRDs in {}", dir.display());
        self.apply_crds(&yaml).await
    }

    /// Installs ARC's CRDs (`config/crd/bases/actions.github.com_*.yaml`)
    /// from the ARC module the wrapper `pins` requires (`tests/go/crds`).
    /// Returns the CRD names.
    pub async fn install_arc_crds_from(&self, pins: &Path) -> Result<Vec<String>> {
        self.install_module_crds(ARC_MODULE, pins, ARC_CRD_DIR, is_arc_crd)
            .await
    }

    /// Installs the CRDs of an ARC release source tree (`src` of a
    /// `tests/scripts/build-arc.sh` build). Returns the CRD names.
    pub async fn install_arc_crds_from_source(&self, src: &Path) -> Result<Vec<String>> {
        self.install_crds_in(&src.join(ARC_CRD_DIR), is_arc_crd)
            .await
    }

    /// Installs ARC's CRDs pinned in `tests/go/crds` (see
    /// [`Self::install_arc_crds_from`]).
    pub async fn install_arc_crds(&self) -> Result<Vec<String>> {
        self.install_arc_crds_from(&crd_pins()).await
    }

    /// Installs cert-manager's CRDs (`deploy/crds/*.yaml` of the cert-manager
    /// Go module: plain CRDs, no Helm templating). Returns the CRD names.
    pub async fn install_cert_manager_crds(&self) -> Result<Vec<String>> {
        self.install_module_crds(CERT_MANAGER_MODULE, &crd_pins(), "deploy/crds", |name| {
            name.ends_with(".yaml")
        })
        .await
    }

    /// `kubectl apply --server-side -k manifests/` (needs cert-manager's
    /// CRDs: see [`Self::install_cert_manager_crds`]). Returns kubectl's
    /// output.
    pub fn apply_manifests(&self) -> Result<String> {
        let manifests = workspace_root().join("manifests");
        self.kubectl_run(&[
            "apply",
            "--server-side",
            "--field-manager=kubectl",
            "-k",
            &manifests.display().to_string(),
        ])
    }

    /// Installs arc-watchdog the way a user would, minus what cannot run
    /// here: cert-manager's and ARC's CRDs, `kubectl apply --server-side -k
    /// manifests/`, then the webhook as a local process authenticated as its
    /// own ServiceAccount (a TokenRequest token, so the manifests' RBAC is
    /// what it gets), registered at its local URL. `webhook_args` are extra
    /// webhook flags (e.g. `--sidecar-mode=classic`).
    pub async fn install_arc_watchdog(&self, webhook_args: &[&str]) -> Result<Webhook> {
        self.prepare_arc_watchdog().await?;
        let kubeconfig = self.webhook_kubeconfig().await?;
        let webhook = Webhook::start(self, "webhook", &kubeconfig, webhook_args).await?;
        webhook.register(self).await?;
        Ok(webhook)
    }

    /// Everything [`Self::install_arc_watchdog`] does before starting the
    /// webhook: cert-manager's and ARC's CRDs and `manifests/`.
    pub async fn prepare_arc_watchdog(&self) -> Result<()> {
        // ARC's namespace exists before arc-watchdog is installed (the
        // manifests put a Role there and do not create it).
        self.create_namespace(LISTENER_NAMESPACE).await?;
        self.install_cert_manager_crds().await?;
        self.install_arc_crds().await?;
        self.apply_manifests()?;
        Ok(())
    }

    /// UID of the MutatingWebhookConfiguration `arc-watchdog`: the owner of
    /// every object arc-watchdog creates at run time.
    pub async fn webhook_config_uid(&self) -> Result<String> {
        let configs: Api<MutatingWebhookConfiguration> = Api::all(self.admin_client().await?);
        configs
            .get(WEBHOOK_CONFIG_NAME)
            .await
            .with_context(|| format!("reading MutatingWebhookConfiguration {WEBHOOK_CONFIG_NAME}"))?
            .metadata
            .uid
            .ok_or_else(|| anyhow!("MutatingWebhookConfiguration {WEBHOOK_CONFIG_NAME} has no uid"))
    }

    /// A kubeconfig for the webhook's ServiceAccount (from the manifests).
    pub async fn webhook_kubeconfig(&self) -> Result<PathBuf> {
        let token = self
            .service_account_token(WEBHOOK_NAMESPACE, WEBHOOK_SERVICE_ACCOUNT, None)
            .await?;
        self.write_token_kubeconfig("webhook", &token)
    }

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
        let name = listener_name(scale_set);
        self.create_service_account(namespace, &name).await?;
        let client = self.admin_client().await?;
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
        let al = listeners
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&al),
            )
            .await
            .with_context(|| format!("creating AutoscalingListener {namespace}/{name}"))?;
        let pods: Api<Pod> = Api::namespaced(client, namespace);
        let mut pod = listener_pod(scale_set, &al.uid().unwrap_or_default());
        edit(&mut pod);
        pods.create(&PostParams::default(), &pod)
            .await
            .with_context(|| format!("creating listener pod {namespace}/{name}"))
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

    /// A `kubectl` command (the 1.34 one built with the control plane:
    /// /usr/bin/kubectl may be outside the supported version skew) pointed
    /// at this control plane as admin.
    pub fn kubectl(&self) -> Result<Command> {
        let mut cmd = Command::new(go_tool("kubectl")?);
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST");
        Ok(cmd)
    }

    /// Runs kubectl with `args`, failing with its stderr when it fails.
    pub fn kubectl_run(&self, args: &[&str]) -> Result<String> {
        let out = self
            .kubectl()?
            .args(args)
            .output()
            .with_context(|| format!("running kubectl {}", args.join(" ")))?;
        ensure!(
            out.status.success(),
            "kubectl {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
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

fn sorted_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    Ok(files)
}

/// The directory, in the module cache, of Go module `module` at `version`,
/// as pinned by one of the wrapper modules under `tests/go/` (the one whose
/// go.mod requires exactly that version; `tests/go/crds` pins ARC's CRDs and
/// cert-manager). Resolving inside a wrapper downloads through the Go module
/// proxy when missing and verifies against that wrapper's go.sum (outside a
/// module, `go mod download` re-fetches, and the proxy has refused ARC's
/// pseudo-versions at times).
pub fn go_module_dir(module: &str, version: &str) -> Result<PathBuf> {
    let go_dir = workspace_root().join("tests/go");
    let needle = format!("{module} {version}");
    let pins = sorted_files(&go_dir)?
        .into_iter()
        .find(|d| {
            fs::read_to_string(d.join("go.mod"))
                .is_ok_and(|m| m.lines().any(|l| l.trim().starts_with(&needle)))
        })
        .ok_or_else(|| {
            anyhow!(
                "no wrapper module under {} requires {needle}",
                go_dir.display()
            )
        })?;
    go_module_dir_in(module, &pins)
}

/// The directory of `module` at the version the wrapper module `pins`
/// requires (see [`go_module_dir`]).
pub fn go_module_dir_in(module: &str, pins: &Path) -> Result<PathBuf> {
    let out = Command::new("go")
        .args(["mod", "download", "-json", module])
        .current_dir(pins)
        .output()
        .context("running `go mod download` (is Go installed?)")?;
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "go mod download {module} in {}: {}",
            pins.display(),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if let Some(err) = info["Error"].as_str() {
        bail!(
            "go mod download {module} (pinned in {}): {err}",
            pins.display()
        );
    }
    let dir = info["Dir"]
        .as_str()
        .ok_or_else(|| anyhow!("go mod download {module} printed no Dir"))?;
    Ok(PathBuf::from(dir))
}

/// Where ARC keeps its CRDs, in its module and its source tree.
const ARC_CRD_DIR: &str = "config/crd/bases";

fn is_arc_crd(file_name: &str) -> bool {
    file_name.starts_with("actions.github.com_") && file_name.ends_with(".yaml")
}

/// Wrapper module pinning the modules whose CRDs the tests install.
pub fn crd_pins() -> PathBuf {
    workspace_root().join("tests/go/crds")
}

/// How the webhook injects its sidecar (`--sidecar-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SidecarMode {
    /// Native sidecar (init container with `restartPolicy: Always`).
    Native,
    /// A regular container.
    Classic,
}

impl SidecarMode {
    /// The flag value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Classic => "classic",
        }
    }
}

/// `arc-watchdog-webhook` running as a process on 127.0.0.1 with a serving
/// certificate from `arc-watchdog-certs`, and its registration.
#[derive(Debug)]
pub struct Webhook {
    proc: ProcSlot,
    dir: PathBuf,
    bin: PathBuf,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    ca: arc_watchdog_certs::Ca,
    /// The HTTPS port serving `/mutate`.
    pub port: u16,
    /// The plain-HTTP admin port (`/healthz`, `/readyz`, `/metrics`).
    pub admin_port: u16,
    /// The directory holding `tls.crt` and `tls.key` (replace them to rotate).
    pub cert_dir: PathBuf,
}

impl Webhook {
    /// Builds (if needed) and starts the webhook with `extra_args` (flags not
    /// set here: `--listen`, `--admin-listen`, `--tls-cert`, `--tls-key`,
    /// `--tls-reload-interval`, `--watchdog-image` are), its certificate in
    /// a fresh directory, talking to the API server as whoever `kubeconfig`
    /// names (see [`ControlPlane::install_arc_watchdog`]: the webhook's own
    /// ServiceAccount). Waits until `/readyz` answers.
    pub async fn start(
        cp: &ControlPlane,
        name: &str,
        kubeconfig: &Path,
        extra_args: &[&str],
    ) -> Result<Self> {
        let bin = workspace_bin("arc-watchdog-webhook", "arc-watchdog-webhook")?;
        let dir = cp.dir().join(name);
        let cert_dir = dir.join("certs");
        fs::create_dir_all(&cert_dir)?;
        let ca = arc_watchdog_certs::Ca::new(7)?;
        let serving = ca.issue(&loopback_serving())?;
        arc_watchdog_certs::write_bundle(
            &cert_dir,
            &arc_watchdog_certs::Bundle {
                ca_cert_pem: ca.cert_pem().to_owned(),
                serving,
            },
        )?;
        let port = free_port()?;
        let admin_port = free_port()?;
        let mut args = vec![
            format!("--listen=127.0.0.1:{port}"),
            format!("--admin-listen=127.0.0.1:{admin_port}"),
            format!(
                "--tls-cert={}",
                cert_dir.join(arc_watchdog_certs::TLS_CERT_FILE).display()
            ),
            format!(
                "--tls-key={}",
                cert_dir.join(arc_watchdog_certs::TLS_KEY_FILE).display()
            ),
            // Re-read quickly so that the rotation test does not wait long.
            "--tls-reload-interval=1s".to_owned(),
            format!("--watchdog-image={WATCHDOG_IMAGE}"),
        ];
        args.extend(extra_args.iter().map(|s| (*s).to_owned()));
        let mut env = BTreeMap::new();
        env.insert("KUBECONFIG".to_owned(), kubeconfig.display().to_string());
        env.insert("RUST_LOG".to_owned(), "info".to_owned());
        let wh = Self {
            proc: ProcSlot::default(),
            dir: cp.dir().to_path_buf(),
            bin,
            args,
            env,
            ca,
            port,
            admin_port,
            cert_dir,
        };
        wh.run(name)?;
        wh.wait_ready(Duration::from_secs(30)).await?;
        Ok(wh)
    }

    fn run(&self, name: &str) -> Result<()> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.args).envs(&self.env);
        self.proc.set(Proc::start(&self.dir, name, cmd, true)?)
    }

    async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.admin_port));
        self.proc
            .await_http_ok(
                "arc-watchdog-webhook",
                addr,
                arc_watchdog::names::PATH_READYZ,
                timeout,
                || tail_logs(&self.dir, 30),
            )
            .await
    }

    /// The CA certificate (PEM) clients must trust: the `caBundle`.
    pub fn ca_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    /// `https://127.0.0.1:PORT/mutate`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/mutate", self.port)
    }

    /// Replaces the serving certificate on disk (same CA, new key), the way
    /// a Secret update does: the webhook must pick it up without a restart.
    pub fn rotate_cert(&self) -> Result<String> {
        let serving = self.ca.issue(&loopback_serving())?;
        // Key first, then certificate, each atomically: the webhook must cope
        // with seeing a mismatched pair for a moment.
        arc_watchdog_certs::write_file_atomic(
            &self.cert_dir.join(arc_watchdog_certs::TLS_KEY_FILE),
            serving.key_pem.as_bytes(),
            0o600,
        )?;
        arc_watchdog_certs::write_file_atomic(
            &self.cert_dir.join(arc_watchdog_certs::TLS_CERT_FILE),
            serving.cert_pem.as_bytes(),
            0o644,
        )?;
        Ok(serving.cert_pem)
    }

    /// The webhook's `/metrics` text.
    pub async fn metrics(&self) -> Result<String> {
        let (status, body) = http_get(
            SocketAddr::from((Ipv4Addr::LOCALHOST, self.admin_port)),
            "/metrics",
        )
        .await?;
        ensure!(status == 200, "webhook /metrics answered {status}");
        Ok(body)
    }

    /// Stops the process (by pid).
    pub fn stop(&self) {
        self.proc.stop();
    }

    /// Registers this webhook: the MutatingWebhookConfiguration `arc-watchdog`
    /// as `kubectl apply -k manifests/` stored it (or, when the manifests are
    /// not applied, as `kubectl kustomize manifests/` renders it), with every
    /// `clientConfig` replaced by this process's URL and CA, since the
    /// Deployment cannot run here. Returns the stored object.
    pub async fn register(&self, cp: &ControlPlane) -> Result<MutatingWebhookConfiguration> {
        let api: Api<MutatingWebhookConfiguration> = Api::all(cp.admin_client().await?);
        let existing = api.get_opt(WEBHOOK_CONFIG_NAME).await?;
        let mut config = match &existing {
            Some(c) => serde_json::to_value(c)?,
            None => manifest_webhook_configuration(cp)?,
        };
        set_client_config(&mut config, &self.url(), self.ca_pem())?;
        let config: MutatingWebhookConfiguration = serde_json::from_value(config)?;
        let stored = if existing.is_some() {
            api.replace(WEBHOOK_CONFIG_NAME, &PostParams::default(), &config)
                .await
        } else {
            api.create(&PostParams::default(), &config).await
        };
        stored.context("registering the webhook")
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.stop();
    }
}

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
}

impl WatchdogProcess {
    /// Starts the watchdog for `pod` (as stored, i.e. injected). `extra_env`
    /// is added (e.g. `RUST_LOG`). Waits until `/healthz` answers.
    pub async fn start(cp: &ControlPlane, pod: &Pod, extra_env: &[(&str, &str)]) -> Result<Self> {
        let bin = workspace_bin("arc-watchdog", "arc-watchdog")?;
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
        let mut cmd = Command::new(&bin);
        cmd.args(&args)
            .env("KUBECONFIG", &kubeconfig)
            .env(arc_watchdog::names::ENV_POD_NAME, &id.name)
            .env(arc_watchdog::names::ENV_POD_NAMESPACE, &id.namespace)
            .env(arc_watchdog::names::ENV_POD_UID, &id.uid)
            .env("ARC_WATCHDOG_LISTEN", addr.to_string())
            .envs(extra_env.iter().copied());
        let proc = Proc::start(cp.dir(), &tag, cmd, false)?;
        let log = proc.log.clone();
        let wd = Self {
            proc: ProcSlot(Mutex::new(Some(proc))),
            addr,
            log,
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

/// The value of the first sample of `metric` whose labels contain every
/// `labels` pair (`name="value"`), in Prometheus text format.
pub fn metric_value(text: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (name, rest) = series.split_once('{').unwrap_or((series, ""));
        if name != metric {
            return None;
        }
        let all = labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        if all { value.parse().ok() } else { None }
    })
}

/// The MutatingWebhookConfiguration in `manifests/`, as JSON (via
/// `kubectl kustomize manifests/`).
pub fn manifest_webhook_configuration(cp: &ControlPlane) -> Result<serde_json::Value> {
    let manifests = workspace_root().join("manifests");
    let rendered = cp.kubectl_run(&["kustomize", &manifests.display().to_string()])?;
    for doc in serde_yaml_ng::Deserializer::from_str(&rendered) {
        let v = serde_json::Value::deserialize(doc)?;
        if v["kind"] == "MutatingWebhookConfiguration" {
            return Ok(v);
        }
    }
    bail!("no MutatingWebhookConfiguration in `kubectl kustomize manifests/`")
}

/// Points every webhook of a MutatingWebhookConfiguration at `url` with
/// `ca_pem` as `caBundle`, and drops cert-manager's CA-injection annotation
/// (no cainjector here).
pub fn set_client_config(config: &mut serde_json::Value, url: &str, ca_pem: &str) -> Result<()> {
    let hooks = config["webhooks"]
        .as_array_mut()
        .ok_or_else(|| anyhow!("MutatingWebhookConfiguration has no webhooks"))?;
    for hook in hooks {
        hook["clientConfig"] = serde_json::json!({"url": url, "caBundle": b64(ca_pem)});
    }
    if let Some(ann) = config["metadata"]["annotations"].as_object_mut() {
        ann.retain(|k, _| !k.starts_with("cert-manager.io/"));
    }
    Ok(())
}

/// A tiny HTTP/1.1 GET over plain TCP (for admin and metrics ports):
/// returns the status code and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .context("connect timeout")??;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .context("read timeout")??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP response"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("malformed status line"))?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Polls `f` until it returns `Some`, or fails after `timeout` with `what`.
/// For conditions that have no watch (process output, metrics).
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        ensure!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Shared state a test can hand to helper tasks.
pub type Shared<T> = Arc<Mutex<T>>;

#[cfg(test)]
mod tests {
    use super::*;

    /// A control plane's directory after a run: data, keys, pid files and logs.
    fn fake_run_dir() -> tempfile::TempDir {
        let tmp = tempfile::Builder::new()
            .prefix("arc-watchdog-reaper-test-")
            .tempdir()
            .unwrap();
        let d = tmp.path();
        fs::create_dir_all(d.join("etcd-data/member/wal")).unwrap();
        fs::write(d.join("etcd-data/member/wal/0.wal"), b"x").unwrap();
        fs::create_dir_all(d.join("etcd-data/member/snap")).unwrap();
        fs::create_dir_all(d.join("kubelet/logs")).unwrap();
        fs::write(d.join("kubelet/logs/pod-listener.log"), b"line\n").unwrap();
        for f in ["etcd.log", "sa.key", "admin.kubeconfig", "owner"] {
            fs::write(d.join(f), b"x").unwrap();
        }
        tmp
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                // An empty directory shows as `name/`.
                let inner = files_in(&p);
                let name = e.file_name().to_string_lossy().into_owned();
                if inner.is_empty() {
                    out.push(format!("{name}/"));
                }
                out.extend(inner.into_iter().map(|f| format!("{name}/{f}")));
            } else {
                out.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        out.sort();
        out
    }

    #[test]
    fn keeping_a_failed_run_keeps_only_its_logs() {
        let tmp = fake_run_dir();
        fs::write(tmp.path().join("keep"), b"").unwrap();
        keep_only_logs(tmp.path());
        assert_eq!(
            files_in(tmp.path()),
            ["etcd.log", "keep", "kubelet/logs/pod-listener.log"]
        );
    }

    /// Runs the reaper on `dir` with a process listed in a pid file, lets it
    /// see this "process" exit (EOF), and returns whether the listed process
    /// is still alive afterwards.
    fn reap(dir: &Path) -> bool {
        let mut victim = Command::new("sleep").arg("600").spawn().unwrap();
        fs::write(dir.join("victim.pid"), victim.id().to_string()).unwrap();
        let (mut reaper, stdin) = spawn_reaper(dir).unwrap();
        drop(stdin);
        reaper.wait().unwrap();
        let alive = victim.try_wait().unwrap().is_none();
        let _ = victim.kill();
        let _ = victim.wait();
        alive
    }

    #[test]
    fn reaper_ends_the_processes_and_removes_the_directory() {
        let tmp = fake_run_dir();
        let dir = tmp.path().to_path_buf();
        assert!(!reap(&dir), "the listed process was ended");
        assert!(!dir.exists(), "{} removed", dir.display());
    }

    #[test]
    fn reaper_keeps_only_the_logs_of_a_failed_run() {
        let tmp = fake_run_dir();
        fs::write(tmp.path().join("keep"), b"").unwrap();
        assert!(!reap(tmp.path()), "the listed process was ended");
        assert_eq!(
            files_in(tmp.path()),
            ["etcd.log", "keep", "kubelet/logs/pod-listener.log"]
        );
    }

    #[test]
    fn base64_matches_known_vectors() {
        assert_eq!(b64(""), "");
        assert_eq!(b64("f"), "Zg==");
        assert_eq!(b64("fo"), "Zm8=");
        assert_eq!(b64("foo"), "Zm9v");
        assert_eq!(b64("foobar"), "Zm9vYmFy");
    }

    #[test]
    fn metric_values_found_by_name_and_labels() {
        let text = "# HELP x y\nfoo_total{reason=\"a\"} 2\nfoo_total{reason=\"b\"} 5\nbar 1.5\n";
        assert_eq!(
            metric_value(text, "foo_total", &[("reason", "b")]),
            Some(5.0)
        );
        assert_eq!(metric_value(text, "bar", &[]), Some(1.5));
        assert_eq!(metric_value(text, "foo_total", &[("reason", "c")]), None);
        assert_eq!(metric_value(text, "foo", &[]), None);
    }

    #[test]
    fn dechunk_joins_chunks() {
        assert_eq!(dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde");
    }

    #[test]
    fn client_config_replaced_and_cert_manager_annotation_dropped() {
        let mut v = serde_json::json!({
            "metadata": {"name": "arc-watchdog", "annotations": {"cert-manager.io/inject-ca-from": "x/y", "keep": "1"}},
            "webhooks": [{"name": "a", "clientConfig": {"service": {"name": "s", "namespace": "n"}}}]
        });
        set_client_config(&mut v, "https://127.0.0.1:1/mutate", "PEM").unwrap();
        assert_eq!(
            v["webhooks"][0]["clientConfig"],
            serde_json::json!({"url": "https://127.0.0.1:1/mutate", "caBundle": "UEVN"})
        );
        assert_eq!(
            v["metadata"]["annotations"],
            serde_json::json!({"keep": "1"})
        );
    }
}
