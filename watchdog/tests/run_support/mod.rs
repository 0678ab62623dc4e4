//! What the `run_*` tests share: the stand-in API server
//! ([`arc_watchdog::stand_in`]; the real API server comes with the
//! control-plane tests, this one scripts faults), the listener pod in its
//! states, log lines, and starting and stopping the watchdog in process.

#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use arc_watchdog::detector::{Cause, FailedStart, History};
use arc_watchdog::run::metrics::{Metrics, OutcomeLabel};
use arc_watchdog::run::{Started, start};
pub use arc_watchdog::stand_in::{
    NS, POD, POD_UID, StandIn, StandInState, history, pod_events, stored,
};
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// A listener log line meeting a stale session: ARC's 409
/// RunnerScaleSetSessionConflictException, as the listener writes it.
pub const CONFLICT: &str = "2026/03/02 04:10:02 Application returned an error: createSession failed: failed to create session: actions error: StatusCode 409, AcivityId \"3f5c9a2e\": GitHub.Actions.Runtime.WebApi.RunnerScaleSetSessionConflictException, GitHub.Actions.Runtime.WebApi: The actions runner scaleset arc-runner-set already has an active session.";

/// A listener log line of a run that holds its session (the listener
/// polls for the next message).
pub const ESTABLISHED: &str = "2026-03-02T05:00:02Z\tINFO\tlistener-app.listener\tGetting next message\t{\"lastMessageID\": 0}";

/// A history in which two earlier pod generations met a session conflict
/// each, 120 s and 60 s before `now`, each a failed start: one conflict
/// more makes a loop at the default threshold (3).
pub fn two_earlier_conflicts(now: Timestamp) -> History {
    let earlier: Vec<Timestamp> = [120, 60]
        .iter()
        .map(|s| now - SignedDuration::from_secs(*s))
        .collect();
    History {
        conflicts: earlier.clone(),
        failed_starts: earlier
            .iter()
            .map(|at| FailedStart {
                at: *at,
                cause: Cause::SessionConflict,
            })
            .collect(),
        ..History::default()
    }
}

/// Starts `arc-watchdog run` in process against the stand-in, with
/// [`run_args`]`(grace, extra)`; the token stops it.
pub async fn start_watchdog(
    api: &StandIn,
    grace: &str,
    extra: &[&str],
) -> (Started, CancellationToken) {
    let cancel = CancellationToken::new();
    let started = start(
        run_args(grace, extra),
        Ok(api.client().unwrap()),
        cancel.clone(),
    )
    .await
    .unwrap();
    (started, cancel)
}

/// Stops a watchdog: cancels it and waits (2 s at most) for its main loop
/// to end without a panic.
pub async fn stop(started: Started, cancel: CancellationToken) {
    cancel.cancel();
    tokio::time::timeout(std::time::Duration::from_secs(2), started.task)
        .await
        .unwrap()
        .unwrap();
}

/// Evictions decided but not accepted with `outcome` ("moot", "failed",
/// ...) so far: `arc_watchdog_evictions_not_accepted_total{outcome}`.
pub fn not_accepted(metrics: &Metrics, outcome: &str) -> u64 {
    metrics
        .evictions_not_accepted
        .get_or_create(&OutcomeLabel {
            outcome: outcome.to_owned(),
        })
        .get()
}

/// Polls `cond` every 20 ms until it holds, for what the stand-in does
/// not see (the watchdog's metrics); panics with `what` after 20 s.
pub async fn poll_until(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A listener pod owned by an AutoscalingListener, with the listener
/// container in `state` (a ContainerState JSON) and `container_id`.
pub fn pod_json(container_id: Option<&str>, state: Value, restart_count: i32) -> Value {
    let mut status = json!({
        "name": "listener",
        "image": "ghcr.io/actions/gha-runner-scale-set-controller:0.12.1",
        "imageID": "",
        "ready": false,
        "restartCount": restart_count,
        "state": state,
    });
    if let Some(id) = container_id {
        status["containerID"] = json!(id);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": POD,
            "namespace": NS,
            "uid": POD_UID,
            "labels": {
                "app.kubernetes.io/component": "runner-scale-set-listener",
                "app.kubernetes.io/part-of": "gha-runner-scale-set",
                "app.kubernetes.io/version": "0.12.1",
            },
            "ownerReferences": [{
                "apiVersion": "actions.github.com/v1alpha1",
                "kind": "AutoscalingListener",
                "name": POD,
                "uid": "0b5e1d6c-2222-4c1c-9a34-5d6f1f0c0002",
                "controller": true,
            }],
        },
        "spec": {
            "containers": [{"name": "listener", "image": "ghcr.io/actions/gha-runner-scale-set-controller:0.12.1"}],
            "restartPolicy": "Never",
        },
        "status": {
            "phase": "Running",
            "containerStatuses": [status],
        },
    })
}

/// The pod with run `id` in `state` after `restarts` restarts in place
/// (`restartPolicy: Always`), the previous run `last` terminated now.
pub fn restarted(id: &str, state: Value, restarts: i32, last: &str) -> Value {
    let mut pod = pod_json(Some(id), state, restarts);
    pod["spec"]["restartPolicy"] = json!("Always");
    pod["status"]["containerStatuses"][0]["lastState"] = json!({"terminated": {
        "exitCode": 1, "reason": "Error", "finishedAt": Timestamp::now().to_string(),
        "containerID": last}});
    pod
}

/// The pod (`restartPolicy: Never`) with its first run c1 running since
/// `at`.
pub fn c1_running(at: Timestamp) -> Value {
    pod_json(Some("containerd://c1"), running(&at.to_string()), 0)
}

/// The pod (`restartPolicy: Never`) with its first run c1 exited with 1
/// at `at`.
pub fn c1_exited(at: Timestamp) -> Value {
    pod_json(Some("containerd://c1"), terminated(1, &at.to_string()), 0)
}

pub fn running(started: &str) -> Value {
    json!({"running": {"startedAt": started}})
}

pub fn terminated(exit_code: i32, finished: &str) -> Value {
    json!({"terminated": {"exitCode": exit_code, "reason": "Error", "finishedAt": finished, "containerID": "x"}})
}

/// A plain HTTP/1.1 GET (Connection: close): status code and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// `arc-watchdog run` arguments for tests: identity of the stand-in's pod,
/// endpoints on an ephemeral port, the given grace and extra flags.
pub fn run_args(grace: &str, extra: &[&str]) -> arc_watchdog::run::RunArgs {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: arc_watchdog::run::RunArgs,
    }
    let mut argv = vec![
        "arc-watchdog".to_owned(),
        format!("--pod-name={POD}"),
        format!("--pod-namespace={NS}"),
        format!("--pod-uid={POD_UID}"),
        "--listen=127.0.0.1:0".to_owned(),
        format!("--fail-open-grace={grace}"),
    ];
    argv.extend(extra.iter().map(|s| (*s).to_owned()));
    Cli::try_parse_from(argv).unwrap().args
}
