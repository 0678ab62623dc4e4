//! The `arc-watchdog-webhook` binary as the manifests and the integration
//! tests run it: flags, no cluster (`--manage-rbac=false`, `auto` falls
//! back to classic), the admin port, and a prompt graceful exit on SIGTERM.

// Test helpers outside #[test] functions may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use arc_watchdog_certs::{Options, generate, write_bundle};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;

struct Webhook {
    child: Child,
    listen: SocketAddr,
    admin: SocketAddr,
    lines: mpsc::Receiver<String>,
    /// The CA that signed the serving certificate (PEM).
    ca_pem: String,
    /// The serving certificate the webhook was given (PEM).
    cert_pem: String,
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
        ca_pem: bundle.ca_cert_pem.clone(),
        cert_pem: bundle.serving.cert_pem.clone(),
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

/// Connects to the TLS port as a client that trusts only the test's CA
/// and checks the name 127.0.0.1, sends `GET path` and returns the
/// server's leaf certificate and the start of its answer. Panics when the
/// handshake or the verification fails.
fn tls_get(w: &Webhook, path: &str) -> (CertificateDer<'static>, String) {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(w.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::from(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut sock = TcpStream::connect(w.listen).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)
            .unwrap_or_else(|e| panic!("TLS handshake with {}: {e}", w.listen));
    }
    let peer = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("no peer certificate")
        .clone()
        .into_owned();
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = [0u8; 64];
    let n = tls.read(&mut buf).unwrap();
    (peer, String::from_utf8_lossy(&buf[..n]).into_owned())
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

    // The TLS port completes a handshake that a client trusting only the
    // test's CA accepts for 127.0.0.1, presents the certificate it was
    // given, and speaks HTTP inside TLS.
    let (peer, answer) = tls_get(&w, "/");
    let given = CertificateDer::from_pem_slice(w.cert_pem.as_bytes()).unwrap();
    assert_eq!(peer, given, "the peer certificate is not the serving one");
    assert!(answer.starts_with("HTTP/1.1 "), "{answer:?}");

    sigterm(&w.child);
    let status = wait_exit(&mut w.child, Duration::from_secs(5));
    assert!(status.success(), "{status:?}");
    // The reader thread ends at the pipe's end, after the last line: read
    // until then, not only what has arrived by now.
    let logs: Vec<String> =
        std::iter::from_fn(|| w.lines.recv_timeout(Duration::from_secs(5)).ok()).collect();
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
