//! The whole sidecar loop against the API stand-in: fail open when blind,
//! and a session-conflict loop seen end to end (gate, Lease, Events,
//! eviction after a PodDisruptionBudget's 429).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod run_support;

use std::time::{Duration, Instant};

use arc_watchdog::run::start;
use jiff::Timestamp;
use run_support::*;
use tokio_util::sync::CancellationToken;

/// The stand-in with a Lease and a pod whose listener runs, and a
/// watchdog started on it with `--fail-open-grace` `grace`.
async fn start_on_a_running_listener(
    grace: &str,
) -> (StandIn, arc_watchdog::run::Started, CancellationToken) {
    let api = StandIn::start().await.unwrap();
    api.set_lease(None);
    api.set_pod(pod_json(
        Some("containerd://c1"),
        running("2026-11-28T10:00:00Z"),
        0,
    ));
    let cancel = CancellationToken::new();
    let started = start(
        run_args(grace, &[]),
        Ok(api.client().unwrap()),
        cancel.clone(),
    )
    .await
    .unwrap();
    (api, started, cancel)
}

/// Polls `/startz` until it answers 200; returns how long that took.
async fn startz_opens(addr: std::net::SocketAddr, within: Duration) -> Duration {
    let begin = Instant::now();
    loop {
        let (code, body) = http_get(addr, "/startz").await;
        if code == 200 {
            return begin.elapsed();
        }
        assert_eq!(code, 503, "{body}");
        assert!(begin.elapsed() < within, "gate still closed: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn api_unreachable_gate_opens_after_the_grace() {
    // A port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut config = kube::Config::new(format!("http://{closed}").parse().unwrap());
    config.connect_timeout = Some(Duration::from_millis(500));
    let client = arc_watchdog::run::client_from_config(config).unwrap();
    let cancel = CancellationToken::new();
    let t0 = Instant::now();
    let started = start(run_args("1500ms", &[]), Ok(client), cancel.clone())
        .await
        .unwrap();

    let (code, body) = http_get(started.addr, "/startz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("remaining_seconds="), "{body}");
    // Inside the grace it is not failing open yet: the readiness probe's
    // check still passes.
    let (code, body) = http_get(started.addr, "/readyz/watching").await;
    assert_eq!(code, 200, "{body}");
    let (_, metrics) = http_get(started.addr, "/metrics").await;
    assert_eq!(
        metric(&metrics, "arc_watchdog_fail_open"),
        Some(0.0),
        "{metrics}"
    );
    startz_opens(started.addr, Duration::from_secs(10)).await;
    assert!(
        t0.elapsed() >= Duration::from_millis(1500),
        "opened before the grace"
    );

    let (code, body) = http_get(started.addr, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    let (code, body) = http_get(started.addr, "/readyz/watching").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.starts_with("failing open"), "{body}");
    let (code, _) = http_get(started.addr, "/healthz").await;
    assert_eq!(code, 200);
    let (_, metrics) = http_get(started.addr, "/metrics").await;
    assert_eq!(
        metric(&metrics, "arc_watchdog_fail_open"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "arc_watchdog_start_delay_seconds"),
        Some(0.0),
        "{metrics}"
    );
    assert!(
        metrics.contains("arc_watchdog_api_errors_total{op="),
        "{metrics}"
    );

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(1), started.task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn rbac_missing_fails_open_and_never_evicts() {
    let api = StandIn::start().await.unwrap();
    api.with(|s| s.fail_all = Some(403));
    // A pod whose listener is dead while the pod lives on: with the data
    // it would be evicted at once; without it, never.
    api.set_pod(pod_json(
        Some("containerd://c1"),
        terminated(1, "2026-11-28T10:00:03Z"),
        0,
    ));
    let cancel = CancellationToken::new();
    let t0 = Instant::now();
    let started = start(
        run_args("1s", &[]),
        Ok(api.client().unwrap()),
        cancel.clone(),
    )
    .await
    .unwrap();
    // A forbidden Lease means no stored backoff: the gate opens at once.
    startz_opens(started.addr, Duration::from_secs(10)).await;
    // Blind (pod watch and log forbidden) for longer than the grace: the
    // watchdog reports that it fails open.
    loop {
        let (_, m) = http_get(started.addr, "/metrics").await;
        if metric(&m, "arc_watchdog_fail_open") == Some(1.0) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "never failed open: {m}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(t0.elapsed() >= Duration::from_secs(1));
    assert!(
        !api.requests("GET", "/pods").is_empty(),
        "the pod watch was tried"
    );
    assert!(api.requests("POST", "/eviction").is_empty());
    let (code, body) = http_get(started.addr, "/readyz").await;
    assert_eq!(code, 503);
    assert!(body.contains("403"), "{body}");
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(1), started.task)
        .await
        .unwrap()
        .unwrap();
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn conflict_loop_delays_saves_reports_and_evicts_a_dead_listener() {
    let api = StandIn::start().await.unwrap();
    api.set_lease(None);
    api.set_pod(pod_json(
        Some("containerd://c1"),
        running("2026-11-28T10:00:00Z"),
        0,
    ));
    let now = Timestamp::now();
    api.with(|s| {
        s.log = vec![
            (now, "INFO listener-app app initialized".to_owned()),
            (
                now.checked_add(jiff::SignedDuration::from_millis(5))
                    .unwrap(),
                CONFLICT.to_owned(),
            ),
        ];
        // The eviction first meets a PodDisruptionBudget.
        s.evict_429 = 1;
    });
    let cancel = CancellationToken::new();
    let started = start(
        run_args(
            "20s",
            &[
                "--conflict-threshold=1",
                "--backoff-initial=3s",
                "--backoff-max=6s",
            ],
        ),
        Ok(api.client().unwrap()),
        cancel.clone(),
    )
    .await
    .unwrap();

    // One conflict makes a loop here: the gate closes for the backoff.
    api.wait_for("ListenerStartDelayed event", |s| {
        s.events
            .iter()
            .any(|e| e["reason"] == "ListenerStartDelayed")
    })
    .await;
    let (code, body) = http_get(started.addr, "/startz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("backoff pending"), "{body}");
    for reason in ["SessionConflict", "ConflictLoopDetected"] {
        assert!(
            api.with(|s| s.events.iter().any(|e| e["reason"] == reason)),
            "no {reason} Event"
        );
    }
    // Events go to the pod and to its AutoscalingListener.
    api.with(|s| {
        let kinds: Vec<_> = s
            .events
            .iter()
            .filter(|e| e["reason"] == "ConflictLoopDetected")
            .map(|e| e["regarding"]["kind"].as_str().unwrap_or("").to_owned())
            .collect();
        assert!(
            kinds.contains(&"Pod".to_owned()) && kinds.contains(&"AutoscalingListener".to_owned()),
            "{kinds:?}"
        );
    });
    // The history reached the Lease.
    api.wait_for("history with the conflict in the Lease", |s| {
        stored(s).is_some_and(|h| h.conflicts.len() == 1 && h.loop_state.is_some())
    })
    .await;

    // The listener exits; the pod lives on (classic sidecar): the detector
    // evicts when the backoff ends; the PDB's 429 is retried.
    api.with(|s| s.log_done = true);
    api.set_pod(c1_exited(Timestamp::now()));
    api.wait_for("an accepted eviction", |s| !s.evictions.is_empty())
        .await;
    let posts = api.requests("POST", "/eviction");
    assert_eq!(posts.len(), 2, "429 then success");
    assert_eq!(
        posts[1].body.as_ref().unwrap()["deleteOptions"]["preconditions"]["uid"],
        POD_UID
    );
    api.wait_for("ListenerEvicted event", |s| {
        s.events.iter().any(|e| e["reason"] == "ListenerEvicted")
    })
    .await;

    let (_, m) = http_get(started.addr, "/metrics").await;
    assert_eq!(
        metric(&m, "arc_watchdog_session_conflicts_total"),
        Some(1.0),
        "{m}"
    );
    assert!(
        m.contains("arc_watchdog_evictions_total{reason=\"listener_dead\"} 1"),
        "{m}"
    );
    assert_eq!(
        metric(&m, "arc_watchdog_listener_restarts_total"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(metric(&m, "arc_watchdog_loop_active"), Some(1.0), "{m}");
    assert_eq!(metric(&m, "arc_watchdog_fail_open"), Some(0.0), "{m}");
    let (code, body) = http_get(started.addr, "/readyz/watching").await;
    assert_eq!(code, 200, "{body}");
    // Exactly one eviction: the conflict was counted once.
    assert_eq!(api.with(|s| s.evictions.len()), 1);

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(1), started.task)
        .await
        .unwrap()
        .unwrap();
}

/// A listener that writes its conflict and exits at once (ARC >= 0.8):
/// the pod update and the last line race. The run's end waits for its log,
/// so the failed start counts once, as a session conflict, not also as an
/// unexplained exit.
#[tokio::test]
async fn a_run_ends_after_its_last_line_is_counted() {
    let (api, started, cancel) = start_on_a_running_listener("20s").await;
    api.wait_for("the log follow", |s| {
        s.requests.iter().any(|r| r.path.ends_with("/log"))
    })
    .await;
    // The pod status first, the line later (the log path through the
    // kubelet is slower than the watch): the worst order. The line is
    // written only once the watchdog has taken in the run's end.
    api.set_pod(c1_exited(Timestamp::now()));
    poll_until("the watchdog to see the run's end", || {
        started.shared.metrics.listener_restarts.get() == 1
    })
    .await;
    api.with(|s| {
        s.log.push((Timestamp::now(), CONFLICT.to_owned()));
        s.log_done = true;
    });
    api.wait_for("the run's end in the Lease", |s| {
        stored(s).is_some_and(|h| h.run.as_ref().is_some_and(|r| r.ended.is_some()))
    })
    .await;
    let h = api.with(|s| stored(s)).expect("a history in the Lease");
    assert_eq!(h.conflicts.len(), 1, "{h:?}");
    assert_eq!(h.failed_starts.len(), 1, "{h:?}");
    assert_eq!(
        h.failed_starts[0].cause,
        arc_watchdog::detector::Cause::SessionConflict,
        "{h:?}"
    );
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(1), started.task)
        .await
        .unwrap()
        .unwrap();
}

/// A pod watch cut and refused once (an API server restart) while the pod
/// does not change: the watchdog must see its pod again and be ready, not
/// wait for a change a resumed watch would never deliver, and fail open
/// after the grace.
#[tokio::test]
async fn a_cut_pod_watch_is_watched_again_and_ready_without_a_pod_change() {
    let (api, started, cancel) = start_on_a_running_listener("3s").await;
    let ready = || async { http_get(started.addr, "/readyz").await.0 == 200 };
    let begin = Instant::now();
    while !ready().await {
        assert!(begin.elapsed() < Duration::from_secs(10), "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let lists_before = api.with(|s| pod_lists(s));
    api.with(|s| s.pod_watch_fail = 1);
    api.cut_pod_watches();
    api.wait_for("the refused watch", |s| s.pod_watch_fail == 0)
        .await;
    // Not ready while the watch fails; ready again once the pod is seen,
    // which takes a fresh list: the pod never changed.
    let begin = Instant::now();
    while !ready().await {
        assert!(
            begin.elapsed() < Duration::from_secs(10),
            "not ready again after the watch came back: {}",
            http_get(started.addr, "/readyz").await.1
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(api.with(|s| pod_lists(s)) > lists_before, "listed again");
    // Well past the grace: still watching, not failing open.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (code, body) = http_get(started.addr, "/readyz/watching").await;
    assert_eq!(code, 200, "{body}");
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(1), started.task)
        .await
        .unwrap()
        .unwrap();
}

/// Pod list requests (not watches) the stand-in has seen.
fn pod_lists(s: &StandInState) -> usize {
    s.requests
        .iter()
        .filter(|r| {
            r.method == "GET" && r.path.ends_with("/pods") && !r.query.contains("watch=true")
        })
        .count()
}
