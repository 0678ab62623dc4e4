//! The `arc-watchdog-webhook` binary as the manifests and the integration
//! tests run it: flags, no cluster (`--manage-rbac=false`, `auto` falls
//! back to classic), the admin port, and a prompt graceful exit on SIGTERM.

// Test helpers outside #[test] functions may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use arc_watchdog_certs::{Options, generate, write_bundle};
use serde_json::Value;

struct Webhook {
    child: Child,
    listen: SocketAddr,
    admin: SocketAddr,
    lines: mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(extra: &[&str]) -> Webhook {
    let dir = tempfile::tempdir().unwrap();
    let bundle = generate(&Options {
        dns: vec!["localhost".into()],
        ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        days: 1,
    })
    .unwrap();
    write_bundle(dir.path(), &bundle).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_arc-watchdog-webhook"));
    cmd.arg("--listen=127.0.0.1:0")
        .arg("--admin-listen=127.0.0.1:0")
        .arg("--tls-cert")
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.path().join("tls.key"))
        .arg("--watchdog-image=ghcr.io/example/arc-watchdog:0.1.0")
        .args(extra)
        // No cluster: neither in-cluster config nor a kubeconfig.
        .env("KUBECONFIG", dir.path().join("no-such-kubeconfig"))
        .env("HOME", dir.path())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take();
    let (tx, rx) = mpsc::channel();
    // Owned by the guard at once, so the child is killed and reaped on
    // every path (Drop).
    let unbound = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    let mut w = Webhook {
        child,
        listen: unbound,
        admin: unbound,
        lines: rx,
        _dir: dir,
    };
    let stderr = stderr.unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The bound addresses come from the "serving" log line (port 0 above).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = w.lines.recv_timeout(left).expect("no 'serving' log line");
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if v["message"] == "serving" {
            w.listen = v["listen"].as_str().unwrap().parse().unwrap();
            w.admin = v["admin_listen"].as_str().unwrap().parse().unwrap();
            return w;
        }
    }
}

/// A plain HTTP/1.0 GET on the admin port.
fn admin_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

fn wait_ready(w: &Webhook) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if TcpStream::connect(w.admin).is_ok() && admin_get(w.admin, "/readyz").0 == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "did not exit within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn serves_without_a_cluster_and_exits_on_sigterm() {
    let mut w = spawn(&["--manage-rbac=false", "--sidecar-mode=auto"]);
    wait_ready(&w);
    assert_ne!(w.listen.port(), 0);

    let (status, body) = admin_get(w.admin, "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, metrics) = admin_get(w.admin, "/metrics");
    assert_eq!(status, 200);
    // auto without an API server to ask: classic.
    assert!(
        metrics.contains("arc_watchdog_webhook_native_sidecars 0"),
        "{metrics}"
    );
    assert!(metrics.contains("arc_watchdog_webhook_certificate_expiry_timestamp_seconds "));
    assert_eq!(admin_get(w.admin, "/nope").0, 404);

    // The TLS port answers a TLS handshake (a plain-text request gets no HTTP answer).
    let mut s = TcpStream::connect(w.listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(!buf.starts_with(b"HTTP/"), "plain HTTP on the TLS port");

    sigterm(&w.child);
    let status = wait_exit(&mut w.child, Duration::from_secs(5));
    assert!(status.success(), "{status:?}");
    let logs: Vec<String> = w.lines.try_iter().collect();
    assert!(logs.iter().any(|l| l.contains("\"stopped\"")), "{logs:#?}");
}

#[test]
fn native_mode_is_reported() {
    let mut w = spawn(&["--manage-rbac=false", "--sidecar-mode=native"]);
    wait_ready(&w);
    let (_, metrics) = admin_get(w.admin, "/metrics");
    assert!(
        metrics.contains("arc_watchdog_webhook_native_sidecars 1"),
        "{metrics}"
    );
    sigterm(&w.child);
    assert!(wait_exit(&mut w.child, Duration::from_secs(5)).success());
}

#[test]
fn refuses_to_start_with_a_broken_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tls.crt"), "not a certificate").unwrap();
    std::fs::write(dir.path().join("tls.key"), "not a key").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_arc-watchdog-webhook"))
        .args(["--listen=127.0.0.1:0", "--admin-listen=127.0.0.1:0"])
        .arg("--tls-cert")
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.path().join("tls.key"))
        .args([
            "--watchdog-image=img",
            "--manage-rbac=false",
            "--sidecar-mode=native",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("loading the serving certificate"),
        "{stderr}"
    );
}

#[test]
fn watchdog_image_is_required() {
    let out = Command::new(env!("CARGO_BIN_EXE_arc-watchdog-webhook"))
        .env_remove("ARC_WATCHDOG_WATCHDOG_IMAGE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--watchdog-image"));
}
