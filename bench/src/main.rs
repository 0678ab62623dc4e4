//! `arc-watchdog-bench`: the figures behind `make bench`.
//!
//! Every figure is printed as one line,
//! `bench <name>: <value> <unit> [ratio=<x> against <baseline>]`, with the
//! baseline measured in the same run: these machines are shared, so an
//! absolute time means little and a ratio a lot. Everything binds
//! 127.0.0.1 only, and every load loop is bounded in count and in time.
//!
//! Subcommands measure one figure each; `all` runs them in the order of
//! the README. The release binaries (`--bin-dir`) and the criterion
//! estimates (`--criterion-dir`) are built by `make bench` beforehand.

mod abuse;
mod admission;
mod at_scale;
mod cluster_cost;
mod load;
mod parse;
mod proc;
mod sizes;
mod startup;
mod watchdog_rss;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

/// Benchmarks of arc-watchdog (see the README, section Performance).
#[derive(Debug, Parser)]
#[command(name = "arc-watchdog-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every figure, in the order of the README.
    All(Box<AllArgs>),
    /// Ratio of the two criterion estimates of the `admission` bench.
    AdmissionVsFloor(CriterionArgs),
    /// Requests/s and p99 of the webhook over TLS, and its peak RSS.
    AdmissionTls(TlsArgs),
    /// Peak RSS of the webhook and p99 of real reviews while slow and
    /// oversized requests hammer it.
    WebhookUnderAbuse(AbuseArgs),
    /// MB/s of the log parser against `grep -c` on the same file.
    ParseThroughput(ParseArgs),
    /// Peak RSS of `arc-watchdog run`, idle and following a busy log.
    WatchdogRss(RssArgs),
    /// Stripped sizes of the release binaries.
    BinarySize(BinArgs),
    /// Time the injected native sidecar adds to a listener's start (real
    /// kube-apiserver, process kubelet).
    SidecarStartup(StartupArgs),
    /// The webhook against the real kube-apiserver with many listeners:
    /// time until every per-listener object exists, its RSS, and its
    /// admission latency against the serde floor.
    WebhookAtScale(ScaleArgs),
    /// What injected watchdogs cost the real kube-apiserver: requests,
    /// held streams and Lease writes per watchdog, per conflict generation,
    /// and the API server's CPU and memory against N watchdogs and N
    /// `kubectl logs -f` + `kubectl get pod -w` pairs.
    ApiserverCost(CostArgs),
    /// The baseline of `admission-tls`: a trivial HTTPS echo server with
    /// the same TLS and HTTP stack (started by `admission-tls` itself).
    #[command(hide = true)]
    TlsEcho(EchoArgs),
}

#[derive(Debug, Clone, Args)]
struct BinArgs {
    /// Directory holding the release binaries.
    #[arg(
        long,
        env = "ARC_WATCHDOG_BENCH_BIN_DIR",
        default_value = "target/release"
    )]
    bin_dir: PathBuf,
}

#[derive(Debug, Clone, Args)]
struct CriterionArgs {
    /// criterion's output directory.
    #[arg(
        long,
        env = "ARC_WATCHDOG_BENCH_CRITERION_DIR",
        default_value = "target/criterion"
    )]
    criterion_dir: PathBuf,
}

#[derive(Debug, Clone, Args)]
struct TlsArgs {
    #[command(flatten)]
    bins: BinArgs,
    /// Connections kept open (keep-alive), each with one request in flight.
    #[arg(long, env = "ARC_WATCHDOG_BENCH_CONCURRENCY", default_value_t = 8)]
    concurrency: usize,
    /// Most requests measured per target (after the warm-up).
    #[arg(long, env = "ARC_WATCHDOG_BENCH_REQUESTS", default_value_t = 20_000)]
    requests: u64,
    /// Longest measurement per target (after the warm-up).
    #[arg(long, env = "ARC_WATCHDOG_BENCH_DURATION", default_value = "10s", value_parser = arc_watchdog_core::settings::parse_duration)]
    duration: std::time::Duration,
    /// Warm-up before measuring (not counted).
    #[arg(long, env = "ARC_WATCHDOG_BENCH_WARMUP", default_value = "1s", value_parser = arc_watchdog_core::settings::parse_duration)]
    warmup: std::time::Duration,
    /// Turns each of the echo and the webhook is loaded, alternating which
    /// goes first; the requests and the time above are shared out among
    /// them, and each turn has its own warm-up.
    #[arg(long, env = "ARC_WATCHDOG_BENCH_ROUNDS", default_value_t = 5)]
    rounds: u32,
}

#[derive(Debug, Clone, Args)]
struct AbuseArgs {
    #[command(flatten)]
    bins: BinArgs,
    #[command(flatten)]
    load: AbuseLoadArgs,
}

/// The abuse in `webhook-under-abuse` (and `all`).
#[derive(Debug, Clone, Args)]
struct AbuseLoadArgs {
    /// Connections sending a request head one byte every 500 ms, never
    /// ending it (each reconnects when cut).
    #[arg(
        long,
        env = "ARC_WATCHDOG_BENCH_SLOW_CONNECTIONS",
        default_value_t = 200
    )]
    slow: usize,
    /// Connections streaming 2 MiB chunked bodies, twice `--max-body-bytes`
    /// (each reconnects when answered).
    #[arg(
        long,
        env = "ARC_WATCHDOG_BENCH_OVERSIZED_CONNECTIONS",
        default_value_t = 200
    )]
    oversized: usize,
    /// Clients sending real reviews, one fresh connection each, every 50 ms.
    #[arg(long, env = "ARC_WATCHDOG_BENCH_REVIEWERS", default_value_t = 2)]
    reviewers: usize,
    /// How long reviews are measured, without and then with the abuse.
    #[arg(id = "abuse_duration", long = "abuse-duration", env = "ARC_WATCHDOG_BENCH_ABUSE_DURATION", default_value = "10s", value_parser = arc_watchdog::settings::parse_duration)]
    duration: std::time::Duration,
}

#[derive(Debug, Clone, Args)]
struct ParseArgs {
    /// Size of the generated log, in MB (10^6 bytes).
    #[arg(long, env = "ARC_WATCHDOG_BENCH_LOG_MB", default_value_t = 100)]
    log_mb: usize,
    /// Timed runs of each side; the median is reported.
    #[arg(long, env = "ARC_WATCHDOG_BENCH_RUNS", default_value_t = 3)]
    runs: usize,
}

#[derive(Debug, Clone, Args)]
struct RssArgs {
    #[command(flatten)]
    bins: BinArgs,
    #[command(flatten)]
    load: RssLoadArgs,
}

/// The watchdog's load in the RSS bench (`watchdog-rss`, and `all`).
#[derive(Debug, Clone, Args)]
struct RssLoadArgs {
    /// Idle time before the idle figure is read.
    #[arg(long, env = "ARC_WATCHDOG_BENCH_IDLE", default_value = "5s", value_parser = arc_watchdog_core::settings::parse_duration)]
    idle: std::time::Duration,
    /// Listener lines per second streamed to the watchdog.
    #[arg(
        long,
        env = "ARC_WATCHDOG_BENCH_LINES_PER_SECOND",
        default_value_t = 10_000
    )]
    lines_per_second: u64,
    /// How long the busy log is streamed.
    #[arg(long, env = "ARC_WATCHDOG_BENCH_FOLLOW", default_value = "10s", value_parser = arc_watchdog_core::settings::parse_duration)]
    follow: std::time::Duration,
}

#[derive(Debug, Clone, Args)]
struct StartupArgs {
    #[command(flatten)]
    bins: BinArgs,
    #[command(flatten)]
    load: StartupLoadArgs,
}

/// The pods of `sidecar-startup` (and `all`).
#[derive(Debug, Clone, Args)]
struct StartupLoadArgs {
    /// Listener pods started with the sidecar, and as many without
    /// (alternating); the medians are compared.
    #[arg(
        id = "startup_runs",
        long = "startup-runs",
        env = "ARC_WATCHDOG_BENCH_STARTUP_RUNS",
        default_value_t = 5
    )]
    runs: usize,
    /// The process kubelet's pod start latency (sandbox and container
    /// creation on a real node; see `arc_watchdog_tests::kubelet`).
    #[arg(long, env = "ARC_WATCHDOG_BENCH_POD_START_LATENCY", default_value = "3s", value_parser = arc_watchdog_core::settings::parse_duration)]
    pod_start_latency: std::time::Duration,
}

#[derive(Debug, Clone, Args)]
struct ScaleArgs {
    #[command(flatten)]
    bins: BinArgs,
    #[command(flatten)]
    load: ScaleLoadArgs,
}

/// The scale and the review load of `webhook-at-scale` (and `all`).
#[derive(Debug, Clone, Args)]
struct ScaleLoadArgs {
    /// AutoscalingListeners (each with its ServiceAccount and listener pod)
    /// created through the API server.
    #[arg(long, env = "ARC_WATCHDOG_BENCH_LISTENERS", default_value_t = 1000)]
    listeners: usize,
    /// Listeners being created at a time (one admin client).
    #[arg(
        long,
        env = "ARC_WATCHDOG_BENCH_CREATE_CONCURRENCY",
        default_value_t = 16
    )]
    create_concurrency: usize,
    /// Longest wait for the listeners and every per-listener object.
    #[arg(long, env = "ARC_WATCHDOG_BENCH_OBJECTS_TIMEOUT", default_value = "10m", value_parser = arc_watchdog_core::settings::parse_duration)]
    objects_timeout: std::time::Duration,
    /// Connections sending reviews (keep-alive), each with one in flight.
    #[arg(
        long,
        env = "ARC_WATCHDOG_BENCH_REVIEW_CONCURRENCY",
        default_value_t = 50
    )]
    review_concurrency: usize,
    /// Most reviews measured per target (after the warm-up).
    #[arg(
        long,
        env = "ARC_WATCHDOG_BENCH_REVIEW_REQUESTS",
        default_value_t = 20_000
    )]
    review_requests: u64,
    /// Longest review measurement per target (after the warm-up).
    #[arg(long, env = "ARC_WATCHDOG_BENCH_REVIEW_DURATION", default_value = "10s", value_parser = arc_watchdog_core::settings::parse_duration)]
    review_duration: std::time::Duration,
    /// Warm-up of each review load (not counted).
    #[arg(long, env = "ARC_WATCHDOG_BENCH_REVIEW_WARMUP", default_value = "1s", value_parser = arc_watchdog_core::settings::parse_duration)]
    review_warmup: std::time::Duration,
    /// Turns each of the serde floor and the webhook is loaded,
    /// alternating which goes first; the reviews and the time above are
    /// shared out among them.
    #[arg(long, env = "ARC_WATCHDOG_BENCH_REVIEW_ROUNDS", default_value_t = 5)]
    review_rounds: u32,
}

#[derive(Debug, Clone, Args)]
struct CostArgs {
    #[command(flatten)]
    bins: BinArgs,
    #[command(flatten)]
    load: CostLoadArgs,
}

/// The load of `apiserver-cost` (and `all`).
#[derive(Debug, Clone, Args)]
struct CostLoadArgs {
    /// Numbers of watchdogs (and of kubectl pairs) measured, each a window;
    /// comma-separated.
    #[arg(
        long,
        env = "ARC_WATCHDOG_BENCH_WATCHDOG_COUNTS",
        value_delimiter = ',',
        default_value = "1,10,50,100"
    )]
    watchdog_counts: Vec<usize>,
    /// Length of each measured window (there are 2 + 2 x the counts).
    #[arg(long = "cost-window", env = "ARC_WATCHDOG_BENCH_COST_WINDOW", default_value = "60s", value_parser = arc_watchdog_core::settings::parse_duration)]
    window: std::time::Duration,
    /// How often each listener logs a poll line ("Getting next message").
    #[arg(long, env = "ARC_WATCHDOG_BENCH_POLL_EVERY", default_value = "30s", value_parser = arc_watchdog_core::settings::parse_duration)]
    poll_every: std::time::Duration,
}

#[derive(Debug, Clone, Args)]
struct AllArgs {
    #[command(flatten)]
    criterion: CriterionArgs,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    parse: ParseArgs,
    #[command(flatten)]
    rss: RssLoadArgs,
    #[command(flatten)]
    abuse: AbuseLoadArgs,
    #[command(flatten)]
    startup: StartupLoadArgs,
    #[command(flatten)]
    scale: ScaleLoadArgs,
    #[command(flatten)]
    cost: CostLoadArgs,
}

#[derive(Debug, Clone, Args)]
struct EchoArgs {
    /// Address to serve on (127.0.0.1 only).
    #[arg(long)]
    listen: SocketAddr,
    /// PEM certificate.
    #[arg(long)]
    tls_cert: PathBuf,
    /// PEM key.
    #[arg(long)]
    tls_key: PathBuf,
    /// Parse every body into a `serde_json::Value` and answer with it
    /// serialised (the serde floor) instead of echoing the bytes.
    #[arg(long)]
    parse: bool,
}

/// One figure, printed in the format `make bench` promises.
#[derive(Debug, Clone)]
pub struct Figure {
    /// Name after `bench `.
    pub name: String,
    /// The value, already rounded for display.
    pub value: String,
    /// Unit of the value.
    pub unit: String,
    /// Ratio against a baseline measured in the same run, and its name.
    pub ratio: Option<(f64, String)>,
}

impl Figure {
    /// A figure without a ratio.
    pub fn new(name: impl Into<String>, value: String, unit: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value,
            unit: unit.into(),
            ratio: None,
        }
    }

    /// Adds the ratio against `baseline`.
    pub fn against(mut self, ratio: f64, baseline: impl Into<String>) -> Self {
        self.ratio = Some((ratio, baseline.into()));
        self
    }
}

impl std::fmt::Display for Figure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bench {}: {} {}", self.name, self.value, self.unit)?;
        if let Some((ratio, baseline)) = &self.ratio {
            write!(f, " ratio={ratio:.2} against {baseline}")?;
        }
        Ok(())
    }
}

/// Median of `values` (mean of the middle two for an even count; 0 for none).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn print_all(figures: &[Figure]) {
    for figure in figures {
        println!("{figure}");
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Only ring is compiled in; installing it explicitly spares rustls the
    // guess. Already installed is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let Command::TlsEcho(args) = &cli.command {
        return load::serve_echo(&args.listen, &args.tls_cert, &args.tls_key, args.parse);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async {
        match cli.command {
            Command::All(args) => {
                print_all(&admission::vs_floor(&args.criterion.criterion_dir)?);
                print_all(&load::admission_tls(&args.tls).await?);
                print_all(&abuse::measure(&args.tls.bins.bin_dir, &args.abuse).await?);
                print_all(&parse::throughput(&args.parse)?);
                let rss = RssArgs {
                    bins: args.tls.bins.clone(),
                    load: args.rss.clone(),
                };
                print_all(&watchdog_rss::measure(&rss).await?);
                let scale = ScaleArgs {
                    bins: args.tls.bins.clone(),
                    load: args.scale.clone(),
                };
                print_all(&at_scale::measure(&scale).await?);
                print_all(&sizes::binary_sizes(&args.tls.bins.bin_dir)?);
                let startup = StartupArgs {
                    bins: args.tls.bins.clone(),
                    load: args.startup.clone(),
                };
                print_all(&startup::measure(&startup).await?);
                let cost = CostArgs {
                    bins: args.tls.bins.clone(),
                    load: args.cost.clone(),
                };
                print_all(&cluster_cost::measure(&cost).await?);
            }
            Command::AdmissionVsFloor(args) => {
                print_all(&admission::vs_floor(&args.criterion_dir)?);
            }
            Command::AdmissionTls(args) => print_all(&load::admission_tls(&args).await?),
            Command::WebhookUnderAbuse(args) => {
                print_all(&abuse::measure(&args.bins.bin_dir, &args.load).await?);
            }
            Command::ParseThroughput(args) => print_all(&parse::throughput(&args)?),
            Command::WatchdogRss(args) => print_all(&watchdog_rss::measure(&args).await?),
            Command::BinarySize(args) => print_all(&sizes::binary_sizes(&args.bin_dir)?),
            Command::SidecarStartup(args) => print_all(&startup::measure(&args).await?),
            Command::WebhookAtScale(args) => print_all(&at_scale::measure(&args).await?),
            Command::ApiserverCost(args) => print_all(&cluster_cost::measure(&args).await?),
            Command::TlsEcho(_) => {}
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    /// Every subcommand's flags are consistent: `all` flattens the
    /// figures' flags, and two with one id would share one value.
    #[test]
    fn flags_are_consistent() {
        super::Cli::command().debug_assert();
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(super::median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(super::median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(super::median(&mut []), 0.0);
    }
}
