//! Following the listener's log through the API: a dropped stream resumes
//! from the last line seen and never hands on a line twice.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod run_support;

use std::time::{Duration, Instant};

use arc_watchdog::run::logs::{FollowConfig, FollowerMsg, follow_run};
use arc_watchdog::run::pod::PodView;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use run_support::*;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn view(pod: serde_json::Value) -> PodView {
    let pod: Pod = serde_json::from_value(pod).unwrap();
    PodView::from_pod(&pod, "listener")
}

/// Spawns a follower of run c1 of the stand-in's pod whose retries back
/// off from `backoff.0` to `backoff.1` ms.
fn follow_c1(
    api: &StandIn,
    backoff: (u64, u64),
    pod_rx: watch::Receiver<PodView>,
    tx: mpsc::Sender<FollowerMsg>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(follow_run(
        Api::<Pod>::namespaced(api.client().unwrap(), NS),
        FollowConfig {
            pod: POD.to_owned(),
            container: "listener".to_owned(),
            container_id: "containerd://c1".to_owned(),
            initial_backoff: Duration::from_millis(backoff.0),
            max_backoff: Duration::from_millis(backoff.1),
        },
        pod_rx,
        tx,
        cancel,
    ))
}

#[tokio::test]
async fn dropped_stream_resumes_without_counting_twice() {
    let api = StandIn::start().await.unwrap();
    // Two lines share a nanosecond timestamp; one text repeats at another
    // time (a distinct line that must be counted again).
    let log = [
        (ts("2026-11-28T10:00:00.100000000Z"), "a starting"),
        (ts("2026-11-28T10:00:00.200000000Z"), "b same-ns one"),
        (ts("2026-11-28T10:00:00.200000000Z"), "c same-ns two"),
        (ts("2026-11-28T10:00:00.900000000Z"), "d repeated text"),
        (ts("2026-11-28T10:00:01.100000000Z"), "d repeated text"),
        (ts("2026-11-28T10:00:01.500000000Z"), "e conflict"),
    ];
    api.with(|s| {
        s.log = log.iter().map(|(t, l)| (*t, (*l).to_owned())).collect();
        // The first stream drops after 2 lines (between the two same-ns
        // lines); the second resends those 2 only (nothing new); the third
        // brings "c" and the first "d"; the fourth the rest; the fifth
        // resumes from 10:00:01 and stays open.
        s.log_drops = [2, 2, 4, 6].into();
    });
    api.set_pod(pod_json(
        Some("containerd://c1"),
        running("2026-11-28T10:00:00Z"),
        0,
    ));

    let (pod_tx, pod_rx) = watch::channel(view(api.with(|s| s.pod.clone().unwrap())));
    let (tx, mut rx) = mpsc::channel(64);
    let cancel = CancellationToken::new();
    let follower = follow_c1(&api, (20, 100), pod_rx, tx, cancel.clone());

    let mut lines = Vec::new();
    while lines.len() < log.len() {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(FollowerMsg::Line(l))) => {
                lines.push((l.ts.unwrap(), String::from_utf8(l.text).unwrap()))
            }
            Ok(Some(FollowerMsg::Error(e))) => panic!("follower error: {e}"),
            Ok(Some(_)) => {}
            Ok(None) => panic!("follower stopped"),
            Err(_) => panic!("timed out; got {lines:?}"),
        }
    }
    let want: Vec<_> = log.iter().map(|(t, l)| (*t, (*l).to_owned())).collect();
    assert_eq!(lines, want);

    // The resumed requests asked for lines since the last second seen.
    api.wait_for("the 5th log request", |s| {
        s.requests
            .iter()
            .filter(|r| r.path.ends_with("/log"))
            .count()
            >= 5
    })
    .await;
    let reqs = api.requests("GET", "/log");
    assert!(
        reqs.len() >= 4,
        "expected 3 drops and a 4th stream, got {reqs:?}"
    );
    assert!(!reqs[0].query.contains("sinceTime"));
    assert!(
        reqs[1].query.contains("sinceTime=2026-11-28T10%3A00%3A00Z"),
        "{}",
        reqs[1].query
    );
    assert!(
        reqs[3].query.contains("sinceTime=2026-11-28T10%3A00%3A00Z"),
        "{}",
        reqs[3].query
    );
    assert!(
        reqs[4].query.contains("sinceTime=2026-11-28T10%3A00%3A01Z"),
        "{}",
        reqs[4].query
    );
    for r in &reqs {
        assert!(r.query.contains("follow=true") && r.query.contains("timestamps=true"));
        assert!(r.query.contains("container=listener"));
    }

    // A new line while following arrives once; then the run ends.
    api.with(|s| {
        s.log
            .push((ts("2026-11-28T10:00:02Z"), "f late".to_owned()))
    });
    loop {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
        {
            Some(FollowerMsg::Line(l)) => {
                assert_eq!(l.text, b"f late");
                break;
            }
            Some(FollowerMsg::Error(e)) => panic!("follower error: {e}"),
            Some(_) => {}
            None => panic!("follower stopped"),
        }
    }
    api.with(|s| s.log_done = true);
    pod_tx
        .send(view(pod_json(
            Some("containerd://c1"),
            terminated(1, "2026-11-28T10:00:03Z"),
            0,
        )))
        .unwrap();
    let mut ended = false;
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
        match msg {
            FollowerMsg::Ended { container_id } => {
                assert_eq!(container_id, "containerd://c1");
                ended = true;
                break;
            }
            FollowerMsg::Line(l) => panic!("line counted twice: {l:?}"),
            _ => {}
        }
    }
    assert!(ended, "follower did not end with its run");
    tokio::time::timeout(Duration::from_secs(5), follower)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn follower_backs_off_on_errors_and_stops_on_cancel() {
    let api = StandIn::start().await.unwrap();
    api.with(|s| s.fail_all = Some(403));
    let (_pod_tx, pod_rx) = watch::channel(PodView::default());
    let (tx, mut rx) = mpsc::channel(64);
    let cancel = CancellationToken::new();
    // Every failed call reports an error, then the follower waits 100,
    // 200, 400, 800 ms before the next one.
    let follower = follow_c1(&api, (100, 1600), pod_rx, tx, cancel.clone());
    let mut failed_at = Vec::new();
    while failed_at.len() < 5 {
        let msg = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap();
        assert!(
            matches!(msg, Some(FollowerMsg::Error(ref e)) if e.to_string().contains("403")),
            "{msg:?}"
        );
        failed_at.push(Instant::now());
    }
    let gaps: Vec<Duration> = failed_at.windows(2).map(|w| w[1] - w[0]).collect();
    // A wait is never shorter than asked and the request in between only
    // adds; but this test may take in an error late (a busy machine), which
    // shortens the next gap as measured here by as much.
    const LATE: Duration = Duration::from_millis(50);
    for (i, gap) in gaps.iter().enumerate() {
        let asked = Duration::from_millis(100 << i);
        assert!(
            *gap + LATE >= asked,
            "gap {i} of {gaps:?} shorter than {asked:?}"
        );
    }
    // Growing, not constant at any interval: the fourth wait (800 ms) is
    // far longer than the first (100 ms plus one failed call).
    assert!(gaps[3] >= gaps[0] * 3, "no backoff: {gaps:?}");
    assert_eq!(api.requests("GET", "/log").len(), 5, "{gaps:?}");
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(1), follower)
        .await
        .expect("cancel did not cut the 1.6 s wait short")
        .unwrap();
}

/// After a restart in place the API serves the new run's log under the
/// same container name: a follower of the earlier run, once it sees that,
/// ends without reading it (those lines would be taken for its own).
#[tokio::test]
async fn a_follower_of_a_replaced_run_reads_no_more() {
    let api = StandIn::start().await.unwrap();
    api.with(|s| {
        s.log = vec![(
            ts("2026-11-28T10:00:05.000000000Z"),
            "a line of the new run".to_owned(),
        )];
    });
    api.set_pod(pod_json(
        Some("containerd://c2"),
        running("2026-11-28T10:00:05Z"),
        1,
    ));
    let (_pod_tx, pod_rx) = watch::channel(view(api.with(|s| s.pod.clone().unwrap())));
    let (tx, mut rx) = mpsc::channel(64);
    let follower = follow_c1(&api, (20, 100), pod_rx, tx, CancellationToken::new());
    let first = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap();
    assert_eq!(
        first,
        Some(FollowerMsg::Ended {
            container_id: "containerd://c1".to_owned()
        })
    );
    tokio::time::timeout(Duration::from_secs(1), follower)
        .await
        .unwrap()
        .unwrap();
    assert!(api.requests("GET", "/log").is_empty());
}
