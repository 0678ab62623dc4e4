//! `watchdog-rss`: peak RSS (`VmHWM`) of the release `arc-watchdog run`
//! against the stand-in API server, first idle (pod watched, log stream
//! open and quiet), then while the listener's log streams at a set rate.
//!
//! The busy log is the parser's realistic sample without its fatal lines
//! (a real listener run ends at its first fatal line), stamped the way
//! `kubectl logs --timestamps` stamps it. It ends with one fatal session
//! conflict: when the watchdog's own log shows that line classified, every
//! line before it has gone through the watchdog, so the figure is taken
//! after the work, not while lines still wait in a socket buffer.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use arc_watchdog::parser::{classify, sample_log};
use arc_watchdog::stand_in::{NS, POD, POD_UID, StandIn};
use bytes::Bytes;
use jiff::Timestamp;
use serde_json::{Value, json};
use tokio::process::Command;

use crate::proc::{self, mib};
use crate::{Figure, RssArgs};

/// The last line: a 0.14 fatal session conflict.
pub(crate) const LAST_LINE: &str = "2026/09/14 22:01:01 Application returned an error: failed to create actions message session client: failed to create message session: failed to do the session request: request POST https://pipelines.actions.githubusercontent.com/Xyz/_apis/runtime/runnerscalesets/7/sessions?api-version=6.0-preview failed(status=\"409 Conflict\", activity_id=9b1e2c44-0d7f-4a55-8c3e-51aa0e2f6d11): unexpected status code 409 Conflict: GitHub.Actions.Runtime.WebApi.RunnerScaleSetSessionConflictException, GitHub.Actions.Runtime.WebApi: The actions runner scale set bench already has an active session for owner bench-listener.";

/// How the watchdog's own log shows that it classified the closing line.
const SEEN_MARKER: &str = "\"event\":\"SessionConflict";

/// Lines are sent in batches this many times per second.
const TICKS_PER_SECOND: u64 = 100;

/// The busy log's lines (without timestamps): everything of the sample
/// that does not end a listener run.
fn busy_lines() -> Vec<String> {
    String::from_utf8_lossy(&sample_log(512 * 1024))
        .lines()
        .filter(|l| !classify(l.as_bytes()).is_fatal())
        .map(str::to_owned)
        .collect()
}

/// Container ID of the listener's running container.
const CONTAINER_ID: &str = "containerd://bench-listener-1";

/// The listener pod: a 0.14.2 listener owned by its AutoscalingListener,
/// with the watchdog as a native sidecar, the listener running.
fn pod_json(started: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": POD,
            "namespace": NS,
            "uid": POD_UID,
            "resourceVersion": "1",
            "labels": {
                "app.kubernetes.io/component": "runner-scale-set-listener",
                "app.kubernetes.io/part-of": "gha-runner-scale-set",
                "app.kubernetes.io/version": "0.14.2",
                "actions.github.com/scale-set-name": "bench",
            },
            "ownerReferences": [{
                "apiVersion": "actions.github.com/v1alpha1",
                "kind": "AutoscalingListener",
                "name": POD,
                "uid": "6f1c2d3e-0000-4b00-9c00-00000000a11c",
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        },
        "spec": {
            "serviceAccountName": "bench-listener",
            "restartPolicy": "Never",
            "initContainers": [{
                "name": "arc-watchdog",
                "image": "ghcr.io/example/arc-watchdog:bench",
                "restartPolicy": "Always",
                "args": ["run"],
            }],
            "containers": [{
                "name": "listener",
                "image": "ghcr.io/actions/gha-runner-scale-set-controller:0.14.2",
                "command": ["/ghalistener"],
            }],
        },
        "status": {
            "phase": "Running",
            "initContainerStatuses": [{
                "name": "arc-watchdog",
                "image": "ghcr.io/example/arc-watchdog:bench",
                "imageID": "",
                "ready": true,
                "started": true,
                "restartCount": 0,
                "containerID": "containerd://bench-watchdog-1",
                "state": {"running": {"startedAt": started}},
            }],
            "containerStatuses": [{
                "name": "listener",
                "image": "ghcr.io/actions/gha-runner-scale-set-controller:0.14.2",
                "imageID": "",
                "ready": true,
                "started": true,
                "restartCount": 0,
                "containerID": CONTAINER_ID,
                "state": {"running": {"startedAt": started}},
            }],
        },
    })
}

fn stamp(at: Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%S%.9fZ").to_string()
}

/// The `watchdog-rss` figures.
pub async fn measure(args: &RssArgs) -> anyhow::Result<Vec<Figure>> {
    let bin = proc::binary(&args.bins.bin_dir, "arc-watchdog")?;
    if LAST_LINE.len() > 4096 || !classify(LAST_LINE.as_bytes()).is_conflict() {
        bail!("the parser does not see the closing line as a session conflict");
    }
    let lines = busy_lines();
    if lines.is_empty() {
        bail!("the sample log has no lines");
    }
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let started = Timestamp::now();
    let api = StandIn::start()
        .await
        .context("starting the stand-in API server")?;
    api.with(|s| s.log_feed = true);
    api.set_pod(pod_json(&stamp(started)));
    api.set_lease(None);
    let kubeconfig = api.kubeconfig(dir.path())?;
    let listen = proc::free_addr().await?;
    let log = dir.path().join("watchdog.log");

    let mut cmd = Command::new(&bin);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ARC_WATCHDOG_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .arg("run")
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--dry-run")
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAME", POD)
        .env("POD_NAMESPACE", NS)
        .env("POD_UID", POD_UID)
        .env_remove("RUST_LOG")
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(dir.path().join("watchdog.stderr"))?)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {} run", bin.display()))?;
    let pid = child.id().context("the watchdog has no pid")?;

    let result = async {
        proc::wait_ok(listen, "/healthz", &mut child, Duration::from_secs(30), &log).await?;
        let open_within = Duration::from_secs(30);
        if !api.wait_log_open(open_within).await {
            bail!(
                "the watchdog did not open the listener's log within {open_within:?}; requests seen: {:?}",
                api.request_counts()
            );
        }
        // Idle: what the watchdog holds while nothing happens (a fixed
        // observation window, not a synchronisation).
        tokio::time::sleep(args.load.idle).await;
        let idle_kib = proc::vm_hwm_kib(pid)?;
        eprintln!("watchdog-rss: idle: {}", proc::rss_breakdown(pid));

        let per_tick = (args.load.lines_per_second / TICKS_PER_SECOND).max(1);
        let ticks = (args.load.follow.as_secs_f64() * TICKS_PER_SECOND as f64).ceil() as u64;
        let mut interval = tokio::time::interval(Duration::from_micros(1_000_000 / TICKS_PER_SECOND));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut at = Timestamp::now();
        let step = jiff::SignedDuration::from_micros(1_000_000 / args.load.lines_per_second.max(1) as i64);
        let mut sent = 0u64;
        let mut bytes = 0u64;
        let t0 = Instant::now();
        let hard_stop = t0 + args.load.follow * 3 + Duration::from_secs(10);
        for _ in 0..ticks {
            interval.tick().await;
            if Instant::now() > hard_stop {
                bail!("the watchdog does not keep up: sent {sent} lines in {:?}", t0.elapsed());
            }
            let mut chunk = String::with_capacity(per_tick as usize * 220);
            for _ in 0..per_tick {
                let line = &lines[(sent as usize) % lines.len()];
                chunk.push_str(&stamp(at));
                chunk.push(' ');
                chunk.push_str(line);
                chunk.push('\n');
                at = at.checked_add(step).unwrap_or(at);
                sent += 1;
            }
            bytes += chunk.len() as u64;
            if !api.send_log(Bytes::from(chunk)).await {
                bail!("the watchdog closed the listener's log stream after {sent} lines (its log: {})", log.display());
            }
        }
        let last = format!("{} {LAST_LINE}\n", stamp(at));
        if !api.send_log(Bytes::from(last)).await {
            bail!("the watchdog closed the listener's log stream");
        }
        let send_time = t0.elapsed();
        // Wait (bounded) until the closing conflict has gone through the
        // parser: the watchdog logs every line that is not `Other`.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(&log)?.contains(SEEN_MARKER) {
            if Instant::now() > deadline {
                bail!(
                    "the watchdog did not log the closing session conflict within 30 s (its log: {})",
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let drained = t0.elapsed();
        let busy_kib = proc::vm_hwm_kib(pid)?;
        eprintln!("watchdog-rss: busy: {}", proc::rss_breakdown(pid));
        if api.log_opens() != 1 {
            eprintln!(
                "note: the watchdog opened the log stream {} times",
                api.log_opens()
            );
        }
        let rate = sent as f64 / send_time.as_secs_f64();
        anyhow::Ok((idle_kib, busy_kib, sent, bytes, rate, send_time, drained))
    }
    .await;
    proc::stop(&mut child).await;
    if result.is_err() {
        // Keep the watchdog's log for the error message.
        let _ = dir.keep();
    }
    let (idle_kib, busy_kib, sent, bytes, rate, send_time, drained) = result?;
    eprintln!(
        "watchdog-rss: {sent} lines ({:.1} MB) sent at {rate:.0} lines/s, all processed after {:.1} s; stand-in requests: {:?}",
        bytes as f64 / 1e6,
        drained.as_secs_f64(),
        api.request_counts()
    );
    Ok(vec![
        Figure::new("watchdog-rss-idle", format!("{:.1}", mib(idle_kib)), "MiB"),
        Figure::new("watchdog-rss", format!("{:.1}", mib(busy_kib)), "MiB").against(
            busy_kib as f64 / idle_kib.max(1) as f64,
            format!(
                "watchdog-rss-idle ({:.1} MiB; following {rate:.0} lines/s for {:.0} s)",
                mib(idle_kib),
                send_time.as_secs_f64()
            ),
        ),
    ])
}
