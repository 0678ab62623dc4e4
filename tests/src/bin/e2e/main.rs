//! End to end against the real ARC: the ARC controller and listener built
//! from ARC's release sources (`tests/scripts/build-arc.sh`), a real
//! kube-apiserver + etcd, the fake GitHub Actions service and the process
//! kubelet of this crate, and arc-watchdog's webhook and watchdog.
//!
//! Each scenario leg starts its own stack; stacks run side by side (at most
//! `--max-stacks` at once). Every scenario prints one line
//! `scenario <id>: PASS|FAIL <numbers>` and the run writes a Markdown report
//! (default `target/e2e-report.md`) with a table of what each ARC version
//! does by itself and with arc-watchdog. Exit code 1 when any scenario
//! failed.
//!
//! ARC is installed as its Helm charts would install it, with one
//! simplification: the controller runs as a process with the admin
//! kubeconfig instead of its chart ServiceAccount (the chart's RBAC is not
//! what these scenarios test).

mod outcome;
mod s1;
mod s10;
mod s2;
mod s3;
mod s4;
mod s5;
mod s6;
mod s7;
mod s8;
mod s9;
mod stack;
mod status;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use anyhow::{Result, bail};
use arc_watchdog_core::reasons::Reason;
use arc_watchdog_core::settings::parse_duration;
use arc_watchdog_tests::control_plane;
use arc_watchdog_tests::kubelet::DEFAULT_POD_START_LATENCY;
use clap::Parser;
use tokio::time::Instant;

use crate::outcome::{Outcome, write_report};
use crate::stack::{Binaries, arc_dir};

pub(crate) const CONTROLLER_NS: &str = "arc-systems";
pub(crate) const RUNNER_NS: &str = "arc-runners";
/// Reason of the webhook's Event about a listener pod without the watchdog.
pub(crate) const UNINJECTED_REASON: &str = Reason::ListenerNotInjected.as_str();
pub(crate) const SCALE_SET: &str = "arc-e2e";
pub(crate) const ORG: &str = "acme";
/// A user's own sidecar image in S3 (mapped to `sleep`).
pub(crate) const IDLE_IMAGE: &str = "registry.invalid/e2e/idle-sidecar:1";
/// Every ARC version the scenarios know (pinned in `tests/arc/SOURCES`).
pub(crate) const ARC_VERSIONS: [&str; 4] = ["0.8.1", "0.9.2", "0.10.1", "0.14.2"];
/// The scenarios, in the order `all` runs and reports them.
const SCENARIOS: [&str; 10] = ["S1", "S2", "S3", "S4", "S5", "S6", "S7", "S8", "S9", "S10"];

/// A known ARC version, as the `'static` name the stacks use.
fn known_arc_version(s: &str) -> Result<&'static str, String> {
    ARC_VERSIONS
        .iter()
        .find(|v| **v == s.trim())
        .copied()
        .ok_or_else(|| {
            format!(
                "unknown ARC version {s:?} (known: {})",
                ARC_VERSIONS.join(", ")
            )
        })
}

/// `0.10.1` -> (0, 10, 1), for ordering versions; a label's suffix
/// (`0.10.1-legacy`) is left out.
pub(crate) fn version_key(v: &str) -> (u32, u32, u32) {
    let mut parts = v.split('.').map(|p| {
        let digits = p
            .find(|c: char| !c.is_ascii_digit())
            .map_or(p, |end| &p[..end]);
        digits.parse::<u32>().unwrap_or(0)
    });
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

/// End-to-end scenarios against the real ARC controller and listener.
#[derive(Debug, Parser)]
#[command(about)]
pub(crate) struct Args {
    /// Scenarios to run (comma separated): S1 to S10, or `all`.
    #[arg(long, env = "ARC_WATCHDOG_E2E_SCENARIOS", default_value = "all")]
    scenarios: String,
    /// Where the Markdown report goes.
    #[arg(
        long,
        env = "ARC_WATCHDOG_E2E_REPORT",
        default_value = "target/e2e-report.md"
    )]
    report: PathBuf,
    /// S2: lifetimes of the stale session planted before the listener
    /// starts (comma separated; one S2 outcome each).
    #[arg(long, env = "ARC_WATCHDOG_E2E_STALE_TTLS", default_value = "120s,600s", value_delimiter = ',', value_parser = parse_duration)]
    stale_ttls: Vec<Duration>,
    /// ARC versions S2 runs on.
    #[arg(long, env = "ARC_WATCHDOG_E2E_S2_VERSIONS", default_value = "0.14.2", value_delimiter = ',', value_parser = known_arc_version)]
    s2_versions: Vec<&'static str>,
    /// ARC versions S2 also runs on with the legacy listener
    /// (`github-runnerscaleset-listener`, ARC 0.8 to 0.10).
    #[arg(long, env = "ARC_WATCHDOG_E2E_S2_LEGACY_VERSIONS", value_delimiter = ',', value_parser = known_arc_version)]
    s2_legacy_versions: Vec<&'static str>,
    /// ARC versions S3 runs on.
    #[arg(long, env = "ARC_WATCHDOG_E2E_S3_VERSIONS", default_value = "0.9.2", value_delimiter = ',', value_parser = known_arc_version)]
    s3_versions: Vec<&'static str>,
    /// How long the fake GitHub holds a message poll before answering 202.
    #[arg(long, env = "ARC_WATCHDOG_E2E_POLL_HOLD", default_value = "10s", value_parser = parse_duration)]
    pub(crate) poll_hold: Duration,
    /// The process kubelet's time from a pod's volumes to its first
    /// container (sandbox and container creation on a real node).
    #[arg(long, env = "ARC_WATCHDOG_E2E_POD_START_LATENCY", default_value_t = DEFAULT_POD_START_LATENCY.into())]
    pub(crate) pod_start_latency: humantime::Duration,
    /// S1: how long a healthy listener is watched.
    #[arg(long, env = "ARC_WATCHDOG_E2E_HEALTHY_FOR", default_value = "40s", value_parser = parse_duration)]
    pub(crate) healthy_for: Duration,
    /// S4: how long the permanent conflict is watched at most.
    #[arg(long, env = "ARC_WATCHDOG_E2E_PERMANENT_FOR", default_value = "180s", value_parser = parse_duration)]
    pub(crate) permanent_for: Duration,
    /// How many stacks (control plane, ARC, kubelet) run at once.
    #[arg(long, env = "ARC_WATCHDOG_E2E_MAX_STACKS", default_value_t = 4)]
    max_stacks: usize,
}

impl Args {
    /// Every ARC version some scenario of this run needs.
    fn versions_needed(&self, wanted: &[String]) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = Vec::new();
        for s in wanted {
            match s.as_str() {
                "S2" => {
                    v.extend(&self.s2_versions);
                    v.extend(&self.s2_legacy_versions);
                }
                "S3" => v.extend(&self.s3_versions),
                _ => v.push("0.14.2"),
            }
        }
        v.sort_by_key(|v| version_key(v));
        v.dedup();
        v
    }

    /// The S2 lifetimes, longest first.
    fn stale_ttls_longest_first(&self) -> Vec<Duration> {
        let mut t = self.stale_ttls.clone();
        t.sort_by(|a, b| b.cmp(a));
        t
    }
}

type ScenarioRun<'a> = Pin<Box<dyn Future<Output = Outcome> + 'a>>;

/// A scenario's run that always yields an outcome: an error before its
/// checks (a stack that did not start) fails the scenario under its own id.
fn run<'a>(
    name: impl Into<String>,
    version: &str,
    f: impl Future<Output = Result<Outcome>> + 'a,
) -> ScenarioRun<'a> {
    let (name, version) = (name.into(), version.to_owned());
    Box::pin(async move {
        f.await.unwrap_or_else(|e| {
            let mut o = Outcome::new(&name, &version);
            o.check(false, format!("setup: {e:#}"));
            o
        })
    })
}

/// The scenarios from the longest to the shortest: stacks are handed out in
/// the plan's order, and the longest runs decide how long the whole run
/// takes.
const LONGEST_FIRST: [&str; 10] = ["S2", "S7", "S5", "S10", "S4", "S9", "S8", "S3", "S1", "S6"];

/// The scenario runs, longest first (see [`LONGEST_FIRST`]).
fn plan<'a>(wanted: &[String], bins: &'a Binaries, args: &'a Args) -> Result<Vec<ScenarioRun<'a>>> {
    let mut runs: Vec<ScenarioRun<'a>> = Vec::new();
    let rank = |s: &String| {
        LONGEST_FIRST
            .iter()
            .position(|l| l == s)
            .unwrap_or(LONGEST_FIRST.len())
    };
    let mut ordered: Vec<&String> = wanted.iter().collect();
    ordered.sort_by_key(|s| rank(s));
    for s in ordered {
        match s.as_str() {
            "S1" => runs.push(run("S1-healthy", "0.14.2", s1::s1(bins, args))),
            "S2" => {
                let legs = args
                    .s2_versions
                    .iter()
                    .map(|v| (*v, false))
                    .chain(args.s2_legacy_versions.iter().map(|v| (*v, true)));
                for (version, legacy) in legs {
                    for ttl in &args.stale_ttls_longest_first() {
                        let name = s2::name(*ttl);
                        let label = s2::label(version, legacy);
                        runs.push(run(name, &label, s2::s2(bins, args, version, legacy, *ttl)));
                    }
                }
            }
            "S3" => {
                for version in &args.s3_versions {
                    runs.push(run(
                        "S3-dead-listener",
                        version,
                        s3::s3(bins, args, version),
                    ));
                }
            }
            "S4" => runs.push(run("S4-permanent-conflict", "0.14.2", s4::s4(bins, args))),
            "S5" => runs.push(run("S5-apiserver-restart", "0.14.2", s5::s5(bins, args))),
            "S6" => runs.push(run("S6-webhook-down", "0.14.2", s6::s6(bins, args))),
            "S7" => runs.push(run("S7-startup-failure", "0.14.2", s7::s7(bins, args))),
            "S8" => runs.push(run("S8-watchdog-unpullable", "0.14.2", s8::s8(bins, args))),
            "S9" => runs.push(run("S9-old-kubelet", "0.14.2", s9::s9(bins, args))),
            "S10" => runs.push(run("S10-node-lost", "0.14.2", s10::s10(bins, args))),
            other => bail!(
                "unknown scenario {other:?} (known: {}, all)",
                SCENARIOS.join(", ")
            ),
        }
    }
    Ok(runs)
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                // The control plane's readiness polling logs every refused try.
                "warn,kube_client::client::builder=off".into()
            }),
        )
        .init();
    let args = Args::parse();
    let t0 = Instant::now();
    let wanted: Vec<String> = if args.scenarios == "all" {
        SCENARIOS.iter().map(|s| (*s).to_owned()).collect()
    } else {
        args.scenarios
            .split(',')
            .map(|s| s.trim().to_uppercase())
            .filter(|s| !s.is_empty())
            .collect()
    };
    let mut arc_dirs = BTreeMap::new();
    for v in args.versions_needed(&wanted) {
        arc_dirs.insert(v.to_owned(), arc_dir(v)?);
    }
    stack::limit_stacks(args.max_stacks);
    let bins = Binaries {
        arc_dir: arc_dirs,
        watchdog: control_plane::workspace_bin("arc-watchdog", "arc-watchdog")?,
    };
    let runs = plan(&wanted, &bins, &args)?;
    eprintln!(
        "[e2e] {} scenario runs, at most {} stacks at once, pod start latency {:?}",
        runs.len(),
        args.max_stacks,
        *args.pod_start_latency
    );
    // Each outcome is printed as it ends; the report keeps the plan's order.
    let outcomes = futures::future::join_all(runs.into_iter().map(|r| async {
        let o = r.await;
        println!("{}", o.line());
        o
    }))
    .await;
    write_report(&args.report, &outcomes, t0.elapsed())?;
    eprintln!(
        "[e2e] report: {} ({:.0}s)",
        args.report.display(),
        t0.elapsed().as_secs_f64()
    );
    if outcomes.iter().any(|o| !o.pass) {
        std::process::exit(1);
    }
    Ok(())
}
