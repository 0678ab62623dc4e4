//! Child processes, their peak memory, and tiny plain-HTTP probes.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// A free port on 127.0.0.1 (bound and released: the child binds it next).
pub async fn free_addr() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding 127.0.0.1:0")?;
    listener.local_addr().context("reading a local address")
}

/// Peak resident set size (`VmHWM`) of process `pid`, in KiB.
pub fn vm_hwm_kib(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmHWM")
}

/// Resident set size now (`VmRSS`) of process `pid`, in KiB.
pub fn vm_rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmRSS")
}

/// The `field` (in kB) of `/proc/<pid>/status`.
fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in {path}"))
}

/// CPU time (user + system) process `pid` has used so far.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let ticks = cpu_ticks(&stat).with_context(|| format!("no utime/stime in {path}"))?;
    Ok(Duration::from_secs_f64(
        ticks as f64 / clock_ticks_per_second()?,
    ))
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line. The
/// command name (field 2) may hold spaces and parentheses: fields are
/// counted after its closing parenthesis.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// `getconf CLK_TCK`: the unit of `/proc/<pid>/stat`'s times.
fn clock_ticks_per_second() -> anyhow::Result<f64> {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    if let Some(t) = TICKS.get() {
        return Ok(*t);
    }
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .context("running getconf CLK_TCK")?;
    let ticks: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("reading getconf CLK_TCK")?;
    Ok(*TICKS.get_or_init(|| ticks))
}

/// The resident set of process `pid` by kind (`RssAnon`, `RssFile`,
/// `Threads`), for the notes printed beside a figure.
pub fn rss_breakdown(pid: u32) -> String {
    let path = format!("/proc/{pid}/status");
    let Ok(status) = std::fs::read_to_string(&path) else {
        return String::new();
    };
    status
        .lines()
        .filter(|l| {
            ["RssAnon:", "RssFile:", "Threads:"]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(", ")
}

/// KiB as MiB, for display.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// `GET path` over plain HTTP/1.1: the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no HTTP status from {addr}{path}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

/// Waits until `GET path` answers 200, at most `timeout`. `child` is
/// checked on every round: a child that died is reported at once.
pub async fn wait_ok(
    addr: SocketAddr,
    path: &str,
    child: &mut tokio::process::Child,
    timeout: Duration,
    log: &Path,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok((200, _)) = http_get(addr, path).await {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "the child exited ({status}) before {addr}{path} answered 200; its log: {}",
                log.display()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{addr}{path} did not answer 200 within {timeout:?}; the child's log: {}",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until a TCP connection to `addr` succeeds, at most `timeout`.
pub async fn wait_listening(
    addr: SocketAddr,
    child: &mut tokio::process::Child,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("the child exited ({status}) before listening on {addr}");
        }
        if Instant::now() > deadline {
            bail!("nothing listens on {addr} after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stops a child started by this process and reaps it.
pub async fn stop(child: &mut tokio::process::Child) {
    let _ = child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
}

/// The release binary `name` in `bin_dir`, which must exist.
pub fn binary(bin_dir: &Path, name: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = bin_dir.join(name);
    if !path.is_file() {
        bail!(
            "{} is missing: build it first with `cargo build --release --bins`",
            path.display()
        );
    }
    Ok(path)
}

/// Where a benchmarked webhook serves and keeps its certificate and log.
#[derive(Debug)]
pub struct WebhookFiles<'a> {
    /// `--listen` (TLS).
    pub listen: SocketAddr,
    /// `--admin-listen`.
    pub admin: SocketAddr,
    /// The serving certificate and key.
    pub cert: &'a Path,
    /// See [`WebhookFiles::cert`].
    pub key: &'a Path,
    /// Its stderr.
    pub log: &'a Path,
}

/// Starts the webhook binary `bin` without a cluster (no kubeconfig, no
/// `ARC_WATCHDOG_*` setting of the caller's environment: its defaults),
/// injecting native sidecars of a bench image, with `extra` flags. Returns
/// the child and its pid.
pub fn spawn_webhook(
    bin: &Path,
    files: &WebhookFiles<'_>,
    extra: &[&str],
) -> anyhow::Result<(tokio::process::Child, u32)> {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.env_remove("KUBECONFIG");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ARC_WATCHDOG_") {
            cmd.env_remove(k);
        }
    }
    let child = cmd
        .arg("--listen")
        .arg(files.listen.to_string())
        .arg("--admin-listen")
        .arg(files.admin.to_string())
        .arg("--tls-cert")
        .arg(files.cert)
        .arg("--tls-key")
        .arg(files.key)
        .args([
            "--watchdog-image=ghcr.io/example/arc-watchdog:bench",
            "--sidecar-mode=native",
            "--manage-rbac=false",
        ])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(
            std::fs::File::create(files.log)
                .with_context(|| format!("creating {}", files.log.display()))?,
        )
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id().context("the webhook has no pid")?;
    Ok((child, pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_counted_after_the_command_name() {
        let stat = "4242 (kube apiserver) S 1 4242 4242 0 -1 4194560 9000 0 0 0 731 269 0 0 20 0 12 0 1000 0 0";
        assert_eq!(cpu_ticks(stat), Some(1000));
        assert_eq!(cpu_ticks("4242 (x) S 1"), None);
    }
}
