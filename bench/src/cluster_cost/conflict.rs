//! Figure 2 of `apiserver-cost`: what one watchdog asks of the API server
//! in a listener generation that meets a stale session. The listener
//! starts, logs the real 409 session-conflict line and exits; the watchdog
//! reads its pod and Lease, follows the log, counts the conflict (Lease,
//! Events) and evicts the pod whose listener died; the pod goes (the fake
//! node finishes the graceful deletion) and the watchdog is stopped as the
//! kubelet stops it.
//!
//! Counted from the watchdog's start to its exit, less the baseline's
//! rate over as long, less what the bench and the fake node did in that
//! time, each request of theirs counted here: the pod's token (a
//! TokenRequest, as the kubelet's), reporting the listener's exit (a GET
//! and a PATCH of the pod's status), polling for the pod to be gone
//! (GETs), and the fake node's final DELETEs (counted by the node). The Role, RoleBinding and
//! Lease GETs that follow each Lease write are the webhook's controller's
//! (it owns the Lease, so every write wakes it): counted, as the
//! watchdog's writes cause them.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use arc_watchdog_tests::control_plane::{ControlPlane, WatchdogProcess, metric_value};
use arc_watchdog_tests::node::FakeNode;
use arc_watchdog_tests::per_listener;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;

use super::apiserver_metrics::{self, ByKind, RequestKind};
use super::fleet::LISTENER;
use super::{ApiServer, NS, Window, pod_name};
use crate::Figure;
use crate::watchdog_rss::LAST_LINE;

/// The listener's first line (ARC 0.14.2) before the conflict.
const FIRST_LINE: &str = r#"{"time":"2026-09-14T22:01:00.118Z","level":"INFO","source":{"function":"main.run","file":"/workspace/cmd/ghalistener/main.go","line":61},"msg":"Starting listener","component":"listener-app"}"#;

/// Longest wait for each step of the generation.
const STEP_WITHIN: Duration = Duration::from_secs(60);

/// Waits until the watchdog's `/metrics` shows `metric` at 1 or more.
async fn await_metric(wd: &WatchdogProcess, metric: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + STEP_WITHIN;
    loop {
        if let Ok(m) = wd.metrics().await
            && metric_value(&m, metric, &[]).is_some_and(|v| v >= 1.0)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the watchdog's {metric} did not reach 1 within {STEP_WITHIN:?}; its log: {}",
                wd.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn kind(verb: &str, resource: &str, subresource: &str) -> RequestKind {
    RequestKind {
        verb: verb.to_owned(),
        resource: resource.to_owned(),
        subresource: subresource.to_owned(),
    }
}

/// The `watchdog-api-requests-per-conflict-generation` figure.
pub(super) async fn measure(
    cp: &ControlPlane,
    api: &ApiServer,
    node: &FakeNode,
    bin: &std::path::Path,
    baseline: &Window,
) -> anyhow::Result<Figure> {
    let pod = cp.create_listener(NS, "cost-conflict").await?;
    per_listener::wait_for_pod(&api.client, &pod).await?;
    let name = pod_name(&pod)?.to_owned();
    node.run_pod(NS, &name).await?;
    node.log(NS, &name, LISTENER, FIRST_LINE);
    node.log(NS, &name, LISTENER, LAST_LINE);
    let pods: Api<Pod> = Api::namespaced(api.client.clone(), NS);
    // The bench's and the fake node's own requests in the window.
    let mut ours = ByKind::new();

    let deletes_before = node.deletes_sent();
    let before = api.scrape().await?;
    let t0 = Instant::now();
    let wd = WatchdogProcess::start_bin(cp, &pod, bin, &[]).await?;
    // The token the kubelet would mount, asked for by the fixture.
    *ours
        .entry(kind("POST", "serviceaccounts", "token"))
        .or_default() += 1.0;
    let result = async {
        await_metric(&wd, "arc_watchdog_session_conflicts_total").await?;
        // The listener process exits 1 after its fatal line.
        node.terminate_container(NS, &name, LISTENER, 1, None)
            .await?;
        *ours.entry(kind("GET", "pods", "")).or_default() += 1.0;
        *ours.entry(kind("PATCH", "pods", "status")).or_default() += 1.0;
        await_metric(&wd, "arc_watchdog_evictions_total").await?;
        let deadline = Instant::now() + STEP_WITHIN;
        loop {
            *ours.entry(kind("GET", "pods", "")).or_default() += 1.0;
            match pods.get_opt(&name).await? {
                Some(p) if p.metadata.uid == pod.metadata.uid => {}
                _ => break,
            }
            if Instant::now() > deadline {
                bail!("{name} was evicted but not deleted within {STEP_WITHIN:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        anyhow::Ok(())
    }
    .await;
    let log = wd.log.clone();
    // SIGTERM, as the kubelet stops the sidecar of a deleted pod: its last
    // save happens now.
    tokio::task::spawn_blocking(move || wd.stop())
        .await
        .context("stopping the watchdog")?;
    result.with_context(|| format!("the conflict generation (watchdog log: {})", log.display()))?;
    let elapsed = t0.elapsed();
    let after = api.scrape().await?;
    // The fake node finishes the graceful deletion.
    let deletes = node.deletes_sent() - deletes_before;
    *ours.entry(kind("DELETE", "pods", "")).or_default() += deletes as f64;

    let served = apiserver_metrics::diff(&after.served, &before.served);
    let background = apiserver_metrics::scaled(
        &baseline.served,
        elapsed.as_secs_f64() / baseline.length.as_secs_f64(),
    );
    let not_ours = apiserver_metrics::diff(&served, &ours);
    let watchdog = apiserver_metrics::diff(&not_ours, &background);
    // Whole requests: the background is a rate, its fraction is noise.
    let watchdog: ByKind = watchdog
        .into_iter()
        .map(|(k, v)| (k, v.round()))
        .filter(|(_, v)| *v != 0.0)
        .collect();
    eprintln!(
        "apiserver-cost: conflict generation of {:.1} s: served {}; the bench's and the node's {}; background {}",
        elapsed.as_secs_f64(),
        apiserver_metrics::show(&served, 0),
        apiserver_metrics::show(&ours, 0),
        apiserver_metrics::show(&background, 1)
    );
    Ok(Figure::new(
        "watchdog-api-requests-per-conflict-generation",
        format!("{:.0}", apiserver_metrics::total(&watchdog)),
        format!(
            "requests ({}; one generation of {:.1} s, start to exit)",
            apiserver_metrics::show(&watchdog, 0),
            elapsed.as_secs_f64()
        ),
    ))
}
