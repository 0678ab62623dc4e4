//! `apiserver-cost`: what injected watchdogs cost the real kube-apiserver.
//!
//! One local control plane (etcd and kube-apiserver, no
//! controller-manager: a quiet API server), arc-watchdog installed (its
//! webhook injects the watchdog and creates each listener's Role,
//! RoleBinding and Lease), a fake node serving the listeners' logs through
//! the API server's kubelet proxy, and listener pods that hold their
//! session and log a poll line every `--poll-every`, as a real listener
//! does. Every number comes from the API server itself: requests served
//! (`apiserver_request_total`) and held open
//! (`apiserver_longrunning_requests`) from its `/metrics`, its CPU time and
//! resident memory from `/proc/<pid>`.
//!
//! Windows of `--window` each, in this order: a baseline (pods, no
//! watchdog), N watchdogs for each N of `--watchdog-counts` (added to the
//! running ones), a second baseline after they stopped, and N kubectl
//! pairs (`kubectl logs -f` and `kubectl get pod -w` on the same pods:
//! what the kubelet and one log follower hold, the floor) for each N; then
//! one conflict generation. A window's requests less the baseline's are
//! the watchdogs'; the API server's CPU and memory are fitted against N.
//!
//! Figures (see the README, section Performance):
//! - `watchdog-api-requests`: requests per minute per idle watchdog (not
//!   counting the streams it holds), broken down by verb and resource;
//! - `watchdog-held-streams`: streams held open per watchdog;
//! - `watchdog-lease-writes`: Lease writes per hour per idle watchdog;
//! - `watchdog-api-requests-per-conflict-generation`: what one watchdog
//!   asks of the API server in a listener generation that ends in a 409;
//! - `apiserver-cost-watchdogs[N=..]`, `apiserver-cost-kubectl[N=..]`:
//!   the API server's CPU (ms per minute) and memory growth (KiB over its
//!   phase's baseline) with N watchdogs or N kubectl pairs;
//!   `apiserver-goroutines-*[N=..]`: its goroutines;
//!   `watchdogs-rss-sum[N=..]`, `kubectl-rss-sum[N=..]`: their own memory;
//! - `apiserver-cost-per-watchdog`, `apiserver-goroutines-per-watchdog`,
//!   `watchdog-rss-per-watchdog`: the slopes (± standard error), each with
//!   its ratio against the kubectl floor's when that slope stands out of
//!   its noise.

pub mod apiserver_metrics;
mod conflict;
mod fleet;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use arc_watchdog_tests::control_plane::{
    ControlPlane, LISTENER_NAMESPACE, Options, WatchdogProcess,
};
use arc_watchdog_tests::node::FakeNode;
use k8s_openapi::api::core::v1::Pod;

use self::apiserver_metrics::{ByKind, Scrape};
use crate::proc::{self, mib};
use crate::{CostArgs, Figure};

/// How long the kubectl pairs of a step get to open their streams.
const OPEN_WITHIN: Duration = Duration::from_secs(120);

/// What one measured window saw.
#[derive(Debug, Clone)]
struct Window {
    /// How many watchdogs or kubectl pairs ran.
    n: usize,
    /// Requests served during the window.
    served: ByKind,
    /// Requests held open at its end.
    held: ByKind,
    /// The API server's goroutines at its end.
    goroutines: f64,
    /// The API server's CPU time during the window, per minute.
    cpu_ms_per_min: f64,
    /// The API server's `VmRSS` at its end.
    rss_kib: u64,
    /// Summed `VmRSS` of the watchdogs or kubectl processes at its end.
    clients_rss_kib: u64,
    /// Its length.
    length: Duration,
}

impl Window {
    /// `served` per minute.
    fn served_per_min(&self) -> ByKind {
        apiserver_metrics::scaled(&self.served, 60.0 / self.length.as_secs_f64())
    }
}

/// The API server and what the bench reads from it.
struct ApiServer {
    client: kube::Client,
    pid: u32,
}

impl ApiServer {
    /// Its `/metrics`, read.
    async fn scrape(&self) -> anyhow::Result<Scrape> {
        let req = http::Request::get("/metrics")
            .body(Vec::new())
            .context("building the /metrics request")?;
        let text = self
            .client
            .request_text(req)
            .await
            .context("reading the API server's /metrics")?;
        Ok(apiserver_metrics::parse(&text))
    }

    /// Measures a window of `length` with `n` clients whose processes are
    /// `client_pids`: requests served and held, CPU and memory.
    async fn window(
        &self,
        n: usize,
        length: Duration,
        client_pids: &[u32],
    ) -> anyhow::Result<Window> {
        let before = self.scrape().await?;
        let cpu0 = proc::cpu_time(self.pid)?;
        let t0 = Instant::now();
        // The measurement itself: a fixed observation window.
        tokio::time::sleep(length).await;
        let cpu1 = proc::cpu_time(self.pid)?;
        let length = t0.elapsed();
        let after = self.scrape().await?;
        let mut clients_rss_kib = 0;
        for pid in client_pids {
            clients_rss_kib +=
                proc::vm_rss_kib(*pid).with_context(|| format!("a client (pid {pid}) is gone"))?;
        }
        Ok(Window {
            n,
            served: apiserver_metrics::diff(&after.served, &before.served),
            held: after.held,
            goroutines: after.goroutines,
            cpu_ms_per_min: (cpu1 - cpu0).as_secs_f64() * 1000.0 * 60.0 / length.as_secs_f64(),
            rss_kib: proc::vm_rss_kib(self.pid)?,
            clients_rss_kib,
            length,
        })
    }

    /// Waits until `count` more watches of pods and log streams than in
    /// `base` are held (the kubectl pairs have opened theirs).
    async fn await_held(&self, base: &ByKind, count: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + OPEN_WITHIN;
        loop {
            let held = self.scrape().await?.held;
            let more = |verb, sub| {
                apiserver_metrics::get(&held, verb, "pods", sub)
                    - apiserver_metrics::get(base, verb, "pods", sub)
            };
            // A log stream is proxied to the kubelet: verb CONNECT.
            let (watches, logs) = (more("WATCH", ""), more("CONNECT", "log"));
            if watches >= count as f64 && logs >= count as f64 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "after {OPEN_WITHIN:?}, {watches} of {count} pod watches and {logs} of {count} log streams are held"
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// A least-squares slope and its standard error.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Slope {
    value: f64,
    /// Standard error (0 with fewer than three points).
    error: f64,
}

impl Slope {
    /// Whether the slope stands out of its noise (twice its standard
    /// error) and is positive: only then is a ratio of two slopes a number.
    fn measurable(self) -> bool {
        self.value > 0.0 && self.value > 2.0 * self.error
    }
}

/// Least-squares slope of `y` over `x`, with its standard error.
fn slope(points: &[(f64, f64)]) -> Slope {
    let none = Slope {
        value: 0.0,
        error: 0.0,
    };
    if points.len() < 2 {
        return none;
    }
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 {
        return none;
    }
    let value = sxy / sxx;
    let error = if points.len() > 2 {
        let residuals: f64 = points
            .iter()
            .map(|p| (p.1 - my - value * (p.0 - mx)).powi(2))
            .sum();
        (residuals / (n - 2.0) / sxx).sqrt()
    } else {
        0.0
    };
    Slope { value, error }
}

/// Slopes of a phase (baseline first) per client: API server CPU
/// (ms/min), its memory (KiB over the phase's baseline), its goroutines,
/// and the clients' own memory (KiB).
fn slopes(phase: &[Window]) -> [Slope; 4] {
    let base_rss = phase.first().map_or(0, |w| w.rss_kib) as f64;
    let fit = |y: &dyn Fn(&Window) -> f64| {
        slope(&phase.iter().map(|w| (w.n as f64, y(w))).collect::<Vec<_>>())
    };
    [
        fit(&|w| w.cpu_ms_per_min),
        fit(&|w| w.rss_kib as f64 - base_rss),
        fit(&|w| w.goroutines),
        fit(&|w| w.clients_rss_kib as f64),
    ]
}

/// The per-N lines of a phase.
fn phase_figures(phase: &[Window], what: &str, clients: &str) -> Vec<Figure> {
    let base_rss = phase.first().map_or(0, |w| w.rss_kib);
    let mut out = Vec::new();
    for w in phase {
        let growth = w.rss_kib as i64 - base_rss as i64;
        out.push(Figure::new(
            format!("apiserver-cost-{what}[N={}]", w.n),
            format!("{:.0} cpu-ms/min {growth}", w.cpu_ms_per_min),
            "KiB",
        ));
        out.push(Figure::new(
            format!("apiserver-goroutines-{what}[N={}]", w.n),
            format!("{:.0}", w.goroutines),
            "goroutines",
        ));
        if w.n > 0 {
            out.push(Figure::new(
                format!("{clients}-rss-sum[N={}]", w.n),
                format!("{:.1}", mib(w.clients_rss_kib)),
                "MiB",
            ));
        }
    }
    out
}

/// The slope lines: per watchdog, against per kubectl pair.
fn slope_figures(watchdogs: &[Window], floor: &[Window], counts: &str) -> Vec<Figure> {
    let [cpu, kib, goroutines, own] = slopes(watchdogs);
    let [floor_cpu, floor_kib, floor_goroutines, floor_own] = slopes(floor);
    let pm = |s: Slope, decimals: usize| format!("{:.decimals$}±{:.decimals$}", s.value, s.error);
    let mut cost = Figure::new(
        "apiserver-cost-per-watchdog",
        format!("{} cpu-ms/min {}", pm(cpu, 2), pm(kib, 0)),
        "KiB",
    );
    let floor_text = format!(
        "apiserver-cost-per-kubectl-pair ({} cpu-ms/min {} KiB; N={counts})",
        pm(floor_cpu, 2),
        pm(floor_kib, 0)
    );
    if floor_cpu.measurable() {
        cost = cost.against(cpu.value / floor_cpu.value, floor_text);
    } else {
        // A ratio of two slopes lost in noise would be a made-up number.
        cost.unit =
            format!("KiB (no ratio: the floor's CPU slope is within its noise; {floor_text})");
    }
    let mut out = vec![cost];
    out.push(against_slope(
        Figure::new(
            "apiserver-goroutines-per-watchdog",
            pm(goroutines, 2),
            "goroutines",
        ),
        goroutines,
        floor_goroutines,
        format!(
            "apiserver-goroutines-per-kubectl-pair ({} goroutines)",
            pm(floor_goroutines, 2)
        ),
    ));
    out.push(against_slope(
        Figure::new(
            "watchdog-rss-per-watchdog",
            format!("{:.1}", mib(own.value.max(0.0) as u64)),
            "MiB",
        ),
        own,
        floor_own,
        format!(
            "kubectl-rss-per-pair ({:.1} MiB)",
            mib(floor_own.value as u64)
        ),
    ));
    out
}

/// `figure` with the ratio of `ours` to the floor's slope, when that slope
/// stands above its noise: a ratio of a slope lost in noise would be a
/// made-up number.
fn against_slope(figure: Figure, ours: Slope, floor: Slope, baseline: String) -> Figure {
    if floor.measurable() {
        figure.against(ours.value / floor.value, baseline)
    } else {
        figure
    }
}

/// The `apiserver-cost` figures.
pub async fn measure(args: &CostArgs) -> anyhow::Result<Vec<Figure>> {
    let load = &args.load;
    let bin = proc::binary(&args.bins.bin_dir, "arc-watchdog")?;
    fleet::check_poll_line()?;
    let mut counts = load.watchdog_counts.clone();
    counts.sort_unstable();
    counts.dedup();
    counts.retain(|n| *n > 0);
    let Some(&max) = counts.last() else {
        bail!("--watchdog-counts names no count above 0");
    };
    let t_start = Instant::now();
    let cp = ControlPlane::start_with(Options {
        controller_manager: false,
    })
    .await?;
    let webhook = cp.install_arc_watchdog(&[]).await?;
    let admin = cp.admin_client().await?;
    let node = FakeNode::start(admin.clone(), "cost-node").await?;
    node.finish_deletions();
    let api = ApiServer {
        client: admin,
        pid: cp
            .apiserver_pid()
            .context("kube-apiserver is not running")?,
    };
    let pods = fleet::create_listeners(&cp, &node, 0..max).await?;
    let _poller = fleet::Poller::start(&node, &pods, load.poll_every);
    eprintln!(
        "apiserver-cost: {max} listener pods ready after {:.0} s; windows of {:.0} s",
        t_start.elapsed().as_secs_f64(),
        load.window.as_secs_f64()
    );

    // Watchdogs, added up to each N.
    let mut phase = vec![api.window(0, load.window, &[]).await?];
    let baseline = phase[0].clone();
    eprintln!(
        "apiserver-cost: baseline: served {}; held {}",
        apiserver_metrics::show(&baseline.served, 0),
        apiserver_metrics::show(&baseline.held, 0)
    );
    let mut watchdogs: Vec<WatchdogProcess> = Vec::new();
    let mut written = 0;
    for &n in &counts {
        let more = fleet::start_watchdogs(&cp, &pods[watchdogs.len()..n], &bin).await?;
        watchdogs.extend(more);
        fleet::await_settled(&cp, &pods[..n]).await?;
        let pids: Vec<u32> = watchdogs.iter().map(WatchdogProcess::pid).collect();
        let versions = fleet::lease_versions(&cp).await?;
        let w = api.window(n, load.window, &pids).await?;
        eprintln!(
            "apiserver-cost: {n} watchdogs: served {}; held {}",
            apiserver_metrics::show(&w.served, 0),
            apiserver_metrics::show(&w.held, 0)
        );
        if n == max {
            written = leases_written(&versions, &fleet::lease_versions(&cp).await?);
        }
        phase.push(w);
    }
    fleet::stop_watchdogs(watchdogs).await;
    let watchdog_phase = phase;

    // The floor: kubectl pairs on the same pods.
    let mut phase = vec![api.window(0, load.window, &[]).await?];
    let mut pairs: Vec<fleet::KubectlPair> = Vec::new();
    let result = async {
        for &n in &counts {
            for pod in &pods[pairs.len()..n] {
                let name = pod
                    .metadata
                    .name
                    .as_deref()
                    .context("a pod without a name")?;
                pairs.push(fleet::KubectlPair::start(&cp, name)?);
            }
            api.await_held(&phase[0].held, n).await?;
            let pids: Vec<u32> = pairs.iter().flat_map(fleet::KubectlPair::pids).collect();
            let w = api.window(n, load.window, &pids).await?;
            if pairs.iter().any(fleet::KubectlPair::exited) {
                bail!(
                    "a kubectl exited during the window (logs in {})",
                    cp.dir().display()
                );
            }
            eprintln!(
                "apiserver-cost: {n} kubectl pairs: served {}; held {}",
                apiserver_metrics::show(&w.served, 0),
                apiserver_metrics::show(&w.held, 0)
            );
            phase.push(w);
        }
        anyhow::Ok(())
    }
    .await;
    fleet::stop_pairs(pairs).await;
    result?;
    let floor_phase = phase;

    let generation = conflict::measure(&cp, &api, &node, &bin, &baseline).await?;
    drop(webhook);
    eprintln!(
        "apiserver-cost: took {:.0} s in all",
        t_start.elapsed().as_secs_f64()
    );

    let mut figures = idle_figures(&watchdog_phase, &baseline, written, max);
    figures.push(generation);
    figures.extend(phase_figures(&watchdog_phase, "watchdogs", "watchdogs"));
    figures.extend(phase_figures(&floor_phase, "kubectl", "kubectl"));
    let counts = counts
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    figures.extend(slope_figures(&watchdog_phase, &floor_phase, &counts));
    Ok(figures)
}

/// How many watchdog Leases changed between two reads of their
/// resourceVersions.
fn leases_written(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> usize {
    after
        .iter()
        .filter(|(name, rv)| {
            name.starts_with(arc_watchdog::names::PER_LISTENER_PREFIX)
                && before.get(*name).is_some_and(|b| b != *rv)
        })
        .count()
}

/// Figure 1, from the window with the most watchdogs less the baseline.
fn idle_figures(phase: &[Window], baseline: &Window, written: usize, max: usize) -> Vec<Figure> {
    let Some(w) = phase.last() else {
        return Vec::new();
    };
    let per = 1.0 / max as f64;
    let (served, others): (ByKind, ByKind) = apiserver_metrics::scaled(
        &apiserver_metrics::diff(&w.served_per_min(), &baseline.served_per_min()),
        per,
    )
    .into_iter()
    .partition(|(kind, _)| watchdog_caused(kind));
    eprintln!(
        "apiserver-cost: left out, per watchdog and minute (others' watches renewed by chance in one window and not the other): {}",
        apiserver_metrics::show(&others, 2)
    );
    let held = apiserver_metrics::scaled(&apiserver_metrics::diff(&w.held, &baseline.held), per);
    // The API server renews a Lease of its own every 10 s: a window holds
    // one more or one less than the baseline's. So the watchdogs' Leases
    // are checked one by one (resourceVersions before and after): none
    // written is exactly none; otherwise the count less the baseline is
    // used, at least one write per Lease written.
    let window_min = w.length.as_secs_f64() / 60.0;
    let lease_writes_per_min = if written == 0 {
        0.0
    } else {
        let counted = apiserver_metrics::get(&served, "PUT", "leases", "")
            + apiserver_metrics::get(&served, "PATCH", "leases", "");
        counted.max(written as f64 * per / window_min)
    };
    let window = w.length.as_secs_f64();
    vec![
        Figure::new(
            "watchdog-api-requests",
            format!("{:.2}", apiserver_metrics::total(&served)),
            format!(
                "requests/min ({}; per idle watchdog, {max} watchdogs less the baseline, {window:.0} s)",
                apiserver_metrics::show(&served, 2)
            ),
        ),
        Figure::new(
            "watchdog-held-streams",
            format!("{:.2}", apiserver_metrics::total(&held)),
            format!("streams ({})", apiserver_metrics::show(&held, 2)),
        ),
        Figure::new(
            "watchdog-lease-writes",
            format!("{:.1}", lease_writes_per_min * 60.0),
            format!(
                "writes/hour (per idle watchdog; {written} of {max} Leases written in {window:.0} s)"
            ),
        ),
    ]
}

/// Whether a watchdog can have caused requests of `kind`: its Role grants
/// it its pod (get, list, watch, `log`, `eviction`), its Lease (get,
/// update) and Events (create); and every Lease write wakes the webhook's
/// controller, which owns the Lease, to read the listener's Role,
/// RoleBinding and Lease. Anything else (the API server's and the
/// webhook's own watches, renewed every few minutes) is not the
/// watchdogs', whichever window it fell into.
fn watchdog_caused(kind: &apiserver_metrics::RequestKind) -> bool {
    matches!(
        (kind.verb.as_str(), kind.resource.as_str()),
        (_, "pods" | "leases" | "events") | ("GET", "roles" | "rolebindings")
    )
}

/// The listener pods' namespace (for the other files of this module).
const NS: &str = LISTENER_NAMESPACE;

/// Name of a stored pod.
fn pod_name(pod: &Pod) -> anyhow::Result<&str> {
    pod.metadata.name.as_deref().context("a pod without a name")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line_and_of_too_few_points() {
        let line = slope(&[(0.0, 1.0), (10.0, 21.0), (50.0, 101.0)]);
        assert!((line.value - 2.0).abs() < 1e-9, "{line:?}");
        assert!(line.error < 1e-9 && line.measurable(), "{line:?}");
        assert_eq!(slope(&[(1.0, 5.0)]).value, 0.0);
        assert_eq!(slope(&[(1.0, 5.0), (1.0, 7.0)]).value, 0.0);
    }

    #[test]
    fn a_slope_in_its_noise_is_not_measurable() {
        let noisy = slope(&[
            (0.0, 733.0),
            (1.0, 746.0),
            (10.0, 1027.0),
            (50.0, 787.0),
            (100.0, 800.0),
        ]);
        assert!(!noisy.measurable(), "{noisy:?}");
        assert!(noisy.error > 1.0, "{noisy:?}");
    }
}
