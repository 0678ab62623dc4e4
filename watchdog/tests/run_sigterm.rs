//! The binary exits promptly on SIGTERM (the kubelet's stop), while it
//! follows a listener and holds a watch open; idle, it uses (almost) no CPU.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod run_support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use run_support::*;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::ChildStdout;

/// Reads the watchdog's JSON log (`lines`, its stdout) until it says
/// "listening", passing every line to `seen`; returns the address. Panics
/// with `exited` when the output ends first, or after 20 s.
async fn listening_addr(
    lines: &mut Lines<BufReader<ChildStdout>>,
    mut seen: impl FnMut(&serde_json::Value),
    exited: &str,
) -> SocketAddr {
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let v: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
            seen(&v);
            if v["message"] == "listening" {
                return v["addr"].as_str().unwrap().parse::<SocketAddr>().unwrap();
            }
        }
        panic!("{exited}");
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn sigterm_exits_within_a_second() {
    let api = StandIn::start().await.unwrap();
    api.set_lease(None);
    api.set_pod(pod_json(
        Some("containerd://c1"),
        running("2026-11-28T10:00:00Z"),
        0,
    ));
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.kubeconfig(dir.path()).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_arc-watchdog"))
        .args(["run", "--listen=127.0.0.1:0"])
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAME", POD)
        .env("POD_NAMESPACE", NS)
        .env("POD_UID", POD_UID)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = listening_addr(&mut lines, |_| {}, "the watchdog exited before listening").await;
    // Busy following the log and watching the pod.
    api.wait_for("the log follow", |s| {
        s.requests.iter().any(|r| r.path.ends_with("/log"))
    })
    .await;
    assert_eq!(http_get(addr, "/healthz").await.0, 200);
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let pid = child.id().unwrap();
    // Idle (following a silent listener, watching a quiet pod): no busy
    // polling. CPU time over a 2 s window, from /proc (clock ticks).
    let cpu = |pid: u32| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after_comm.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat (11 and 12 here).
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    let before = cpu(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_ticks = cpu(pid) - before;
    eprintln!("idle: {idle_ticks} clock ticks of CPU in 2 s");
    assert!(
        idle_ticks <= 10,
        "busy while idle: {idle_ticks} ticks in 2 s"
    );

    let sent = Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("still running 10 s after SIGTERM")
        .unwrap();
    let took = sent.elapsed();
    eprintln!("exited {took:?} after SIGTERM with {status}");
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_millis(1000), "took {took:?}");
}

/// Without its identity (a broken injection) the sidecar must not crash: a
/// crashing native sidecar would hold the listener's start forever. It
/// serves its endpoints, says why on /readyz and opens the gate after the
/// grace.
#[tokio::test]
async fn a_misconfigured_sidecar_fails_open_instead_of_crashing() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_arc-watchdog"))
        .args(["run", "--listen=127.0.0.1:0", "--fail-open-grace=1s"])
        .env("KUBECONFIG", dir.path().join("missing"))
        .env_remove("POD_NAME")
        .env_remove("POD_NAMESPACE")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut reason = String::new();
    let addr = listening_addr(
        &mut lines,
        |v| {
            if v["level"] == "ERROR" {
                reason = v["reason"].as_str().unwrap_or("").to_owned();
            }
        },
        "the watchdog exited instead of failing open",
    )
    .await;
    assert!(reason.contains("POD_NAME"), "{reason}");
    let (code, body) = http_get(addr, "/readyz").await;
    assert_eq!(code, 503);
    assert!(body.contains("identity incomplete"), "{body}");
    let begin = std::time::Instant::now();
    loop {
        if http_get(addr, "/startz").await.0 == 200 {
            break;
        }
        assert!(
            begin.elapsed() < Duration::from_secs(10),
            "gate never opened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(child.try_wait().unwrap().is_none(), "the sidecar exited");
    child.kill().await.unwrap();
}
