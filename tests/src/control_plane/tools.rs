//! The programs the harness runs and the sources it reads, found or built
//! on demand: the Kubernetes control-plane binaries (built from their Go
//! modules by `tests/scripts/build-go-tools.sh` and cached), the
//! workspace's own binaries (built by cargo, since integration tests get no
//! `CARGO_BIN_EXE_*` for another package), and Go module directories in
//! the module cache, at the versions the wrapper modules under `tests/go/`
//! pin (where ARC's and cert-manager's CRDs come from).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use anyhow::{Context as _, Result, anyhow, bail, ensure};

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

/// The repository root (the workspace).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Path of a Go tool (`etcd`, `kube-apiserver`, `kube-controller-manager`,
/// `kubectl`, `promrules`, `helm`), building it first if needed with
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
        "building {name} failed: run `make go-tools` and read its output (needs Go >= 1.24, 1.26 for helm, and the Go module proxy)"
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

pub(super) fn sorted_files(dir: &Path) -> Result<Vec<PathBuf>> {
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

/// Wrapper module pinning the modules whose CRDs the tests install.
pub fn crd_pins() -> PathBuf {
    workspace_root().join("tests/go/crds")
}
