//! The control plane's child processes and what cleans up after them.
//!
//! Every process is started with its output in `<dir>/<name>.log` and its
//! pid in `<dir>/<name>.pid`, and ended by that pid, never by name: other
//! test binaries run the same programs at the same time. A reaper shell
//! ends them and removes the directory when the test process goes away for
//! any reason; [`kill_leftovers`] cleans up after runs whose reaper could
//! not act; a panic hook keeps a failed run's logs and prints their tails.

use std::fmt::Write as _;
use std::fs;
use std::io::BufRead;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};

use super::http::http_get;

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
pub(super) struct Proc {
    pub(super) name: String,
    child: Child,
    pub(super) log: PathBuf,
    pid_file: PathBuf,
}

impl Proc {
    pub(super) fn spawn(dir: &Path, name: &str, program: &Path, args: &[String]) -> Result<Self> {
        let mut cmd = Command::new(program);
        cmd.args(args);
        Self::start(dir, name, cmd, false)
    }

    /// Starts `cmd` with stdin closed and stdout and stderr to its log,
    /// truncated, or appended to when `append` (a restarted process keeps
    /// one log).
    pub(super) fn start(dir: &Path, name: &str, mut cmd: Command, append: bool) -> Result<Self> {
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
    pub(super) fn stop(&mut self) {
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

    pub(super) fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Its process id.
    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// A process a caller starts beside the control plane (e.g. `kubectl logs
/// -f`), owned like the control plane's own: its output in
/// `<dir>/<name>.log`, ended by its pid on [`OwnedProcess::stop`] and on
/// drop, and by the reaper when this process goes away first.
#[derive(Debug)]
pub struct OwnedProcess {
    proc: ProcSlot,
    pid: u32,
}

impl OwnedProcess {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// SIGTERM, then SIGKILL after 5s (blocking); by pid.
    pub fn stop(&self) {
        self.proc.stop();
    }

    /// Whether it has exited.
    pub fn exited(&self) -> bool {
        self.proc.exited().is_some()
    }
}

impl Drop for OwnedProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

impl super::ControlPlane {
    /// Starts `cmd` as a process of this control plane named `name` (unique
    /// among its processes): see [`OwnedProcess`].
    pub fn start_process(&self, name: &str, cmd: Command) -> Result<OwnedProcess> {
        let proc = Proc::start(self.dir(), name, cmd, false)?;
        let pid = proc.pid();
        Ok(OwnedProcess {
            proc: ProcSlot(Mutex::new(Some(proc))),
            pid,
        })
    }
}

/// One process that a test may stop and start again ([`super::Webhook`],
/// [`super::WatchdogProcess`]).
#[derive(Debug, Default)]
pub(super) struct ProcSlot(pub(super) Mutex<Option<Proc>>);

impl ProcSlot {
    pub(super) fn set(&self, p: Proc) -> Result<()> {
        *self
            .0
            .lock()
            .map_err(|_| anyhow!("process slot poisoned"))? = Some(p);
        Ok(())
    }

    /// Ends the process (by pid), if one runs.
    pub(super) fn stop(&self) {
        if let Ok(mut p) = self.0.lock()
            && let Some(mut p) = p.take()
        {
            p.stop();
        }
    }

    fn exited(&self) -> Option<std::process::ExitStatus> {
        self.0.lock().ok()?.as_mut().and_then(Proc::exited)
    }

    /// The pid of the process, if one runs.
    pub(super) fn pid(&self) -> Option<u32> {
        self.0.lock().ok()?.as_ref().map(|p| p.child.id())
    }

    /// Waits until `GET path` on `addr` answers 200; fails early, with
    /// `log_tail()`, when the process exits.
    pub(super) async fn await_http_ok(
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
pub(super) fn spawn_reaper(dir: &Path) -> Result<(Child, ChildStdin)> {
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
pub(super) fn kill_leftovers() {
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

static PANIC_HOOK: OnceLock<()> = OnceLock::new();
pub(super) static LOG_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// On a panic (a failing test), keep the logs of every control plane (the
/// `keep` marker: see [`spawn_reaper`]) and print their tails, once.
pub(super) fn install_panic_hook() {
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
}
