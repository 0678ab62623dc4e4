//! `admission-tls` and `webhook-rss`: a keep-alive HTTPS load generator
//! (hyper over tokio-rustls) against the release webhook, and, in the same
//! run, against a trivial echo server with the same TLS and HTTP stack (the
//! baseline: what TLS, HTTP and the machine cost without the webhook). The
//! echo server also serves as the serde floor of `webhook-at-scale`
//! (`--parse`: every body parsed into a `serde_json::Value` and serialised
//! back).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;

use crate::proc::{self, mib};
use crate::{Figure, TlsArgs};

/// The review every request carries: a real 0.14.2 listener pod CREATE
/// (the webhook's golden input), compacted as the API server sends it.
const REVIEW: &[u8] = include_bytes!("../../webhook/tests/golden/inputs/listener-0.14.2.json");

pub(crate) fn compact_review() -> anyhow::Result<Bytes> {
    let value: serde_json::Value =
        serde_json::from_slice(REVIEW).context("the golden review is not JSON")?;
    Ok(Bytes::from(serde_json::to_vec(&value)?))
}

/// Bounds of one load run.
#[derive(Debug, Clone, Copy)]
pub struct LoadConfig {
    /// Connections, each with one request in flight.
    pub concurrency: usize,
    /// Most requests measured.
    pub max_requests: u64,
    /// Longest measurement.
    pub max_duration: Duration,
    /// Not measured at the start.
    pub warmup: Duration,
}

impl LoadConfig {
    /// One turn of [`in_turns`]: at most `requests` and `duration` in all,
    /// shared out among `rounds` turns of each side, each turn with its own
    /// `warmup`.
    pub fn per_turn(
        concurrency: usize,
        requests: u64,
        duration: Duration,
        warmup: Duration,
        rounds: u32,
    ) -> Self {
        let rounds = rounds.max(1);
        Self {
            concurrency: concurrency.max(1),
            max_requests: (requests / u64::from(rounds)).max(1),
            max_duration: duration / rounds,
            warmup,
        }
    }
}

/// What one load run measured.
#[derive(Debug, Clone)]
pub struct LoadResult {
    /// Requests answered in the measured window.
    pub requests: u64,
    /// Length of the measured window.
    pub elapsed: Duration,
    /// Latency of every measured request, in microseconds, sorted.
    pub latencies_us: Vec<u32>,
}

impl LoadResult {
    /// Several runs taken as one: their requests and time summed, their
    /// latencies merged.
    pub fn pooled(runs: &[LoadResult]) -> Self {
        let mut latencies_us: Vec<u32> = runs
            .iter()
            .flat_map(|r| r.latencies_us.iter().copied())
            .collect();
        latencies_us.sort_unstable();
        Self {
            requests: runs.iter().map(|r| r.requests).sum(),
            elapsed: runs.iter().map(|r| r.elapsed).sum(),
            latencies_us,
        }
    }

    /// Requests per second.
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// The `q` quantile of latency, in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let idx = ((self.latencies_us.len() as f64 * q).ceil() as usize)
            .saturating_sub(1)
            .min(self.latencies_us.len() - 1);
        f64::from(self.latencies_us[idx]) / 1000.0
    }
}

/// Client TLS trusting only `ca_pem`.
pub(crate) fn client_config(ca_pem: &str) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.context("reading the CA certificate")?)?;
    }
    Ok(Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// Checks an answer: the webhook must have injected (a JSONPatch in an
/// allowed AdmissionReview), the echo must have echoed.
#[derive(Debug, Clone)]
pub(crate) enum Expect {
    Injected,
    Echo(Bytes),
}

impl Expect {
    fn check(&self, body: &[u8]) -> anyhow::Result<()> {
        match self {
            Expect::Echo(sent) if body == sent.as_ref() => Ok(()),
            Expect::Echo(_) => bail!("the echo server answered something else"),
            Expect::Injected => {
                let v: serde_json::Value =
                    serde_json::from_slice(body).context("the webhook's answer is not JSON")?;
                let response = &v["response"];
                if response["allowed"] == true && response["patchType"] == "JSONPatch" {
                    Ok(())
                } else {
                    bail!("the webhook did not inject: {v}")
                }
            }
        }
    }
}

/// One keep-alive connection sending requests until the shared budget or
/// the deadline runs out.
#[allow(clippy::too_many_arguments)]
async fn worker(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    path: &'static str,
    body: Bytes,
    expect: Expect,
    measure_from: Instant,
    deadline: Instant,
    budget: Arc<AtomicU64>,
) -> anyhow::Result<Vec<u32>> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("127.0.0.1")?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .context("TLS handshake")?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake")?;
    let conn = tokio::spawn(conn);
    let mut latencies = Vec::new();
    let mut checked = false;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let measured = now >= measure_from;
        // Only measured requests draw from the budget.
        if measured
            && budget
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
                .is_err()
        {
            break;
        }
        let request = http::Request::post(path)
            .header(http::header::HOST, "127.0.0.1")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body.clone()))?;
        let started = Instant::now();
        sender.ready().await.context("connection closed")?;
        let response = sender.send_request(request).await.context("sending")?;
        let status = response.status();
        let answer = response.into_body().collect().await?.to_bytes();
        let took = started.elapsed();
        if status != http::StatusCode::OK {
            bail!(
                "{addr}{path} answered {status}: {}",
                String::from_utf8_lossy(&answer)
            );
        }
        // Checked once per connection: a full check per request would
        // make the generator, not the server, the bottleneck.
        if !checked {
            expect.check(&answer)?;
            checked = true;
        }
        if measured {
            latencies.push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
        }
    }
    drop(sender);
    conn.abort();
    Ok(latencies)
}

/// Runs `cfg` against `addr` and gathers the latencies.
pub(crate) async fn run_load(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    path: &'static str,
    body: Bytes,
    expect: Expect,
    cfg: LoadConfig,
) -> anyhow::Result<LoadResult> {
    let start = Instant::now();
    let measure_from = start + cfg.warmup;
    let deadline = measure_from + cfg.max_duration;
    let budget = Arc::new(AtomicU64::new(cfg.max_requests));
    let workers: Vec<_> = (0..cfg.concurrency)
        .map(|_| {
            tokio::spawn(worker(
                addr,
                Arc::clone(&tls),
                path,
                body.clone(),
                expect.clone(),
                measure_from,
                deadline,
                Arc::clone(&budget),
            ))
        })
        .collect();
    let mut latencies = Vec::new();
    for w in workers {
        latencies.extend(w.await.context("a load worker panicked")??);
    }
    let end = Instant::now();
    latencies.sort_unstable();
    Ok(LoadResult {
        requests: latencies.len() as u64,
        elapsed: end.saturating_duration_since(measure_from),
        latencies_us: latencies,
    })
}

/// One side of [`in_turns`]: where it listens and what its answers must be.
#[derive(Debug, Clone)]
pub(crate) struct Side {
    pub addr: SocketAddr,
    pub expect: Expect,
    /// For errors: "the echo server", "the webhook", ...
    pub name: String,
}

/// What [`in_turns`] measured: each side's turns, in order.
#[derive(Debug)]
pub(crate) struct Turns {
    pub baseline: Vec<LoadResult>,
    pub measured: Vec<LoadResult>,
}

impl Turns {
    /// Each side's turns taken as one.
    pub fn pooled(&self) -> (LoadResult, LoadResult) {
        (
            LoadResult::pooled(&self.baseline),
            LoadResult::pooled(&self.measured),
        )
    }

    /// The measured side's `q` latency quantile over the baseline's, turn by
    /// turn (each against the baseline's turn next to it), and their median.
    pub fn quantile_ratios(&self, q: f64) -> (f64, Vec<f64>) {
        let ratios: Vec<f64> = self
            .baseline
            .iter()
            .zip(&self.measured)
            .map(|(b, m)| m.quantile_ms(q) / b.quantile_ms(q))
            .collect();
        (crate::median(&mut ratios.clone()), ratios)
    }
}

/// Loads `baseline` and `measured` in turns, `rounds` times each,
/// alternating which goes first, each turn with `cfg` (its own warm-up).
/// On a shared machine a burst of other tenants' load then lands on both
/// sides alike instead of on one whole measurement of one side.
pub(crate) async fn in_turns(
    baseline: &Side,
    measured: &Side,
    tls: &Arc<rustls::ClientConfig>,
    body: &Bytes,
    cfg: LoadConfig,
    rounds: u32,
) -> anyhow::Result<Turns> {
    let load = |side: &Side| {
        let name = side.name.clone();
        let run = run_load(
            side.addr,
            Arc::clone(tls),
            "/mutate",
            body.clone(),
            side.expect.clone(),
            cfg,
        );
        async move { run.await.with_context(|| format!("loading {name}")) }
    };
    let mut turns = Turns {
        baseline: Vec::new(),
        measured: Vec::new(),
    };
    for round in 0..rounds.max(1) {
        if round % 2 == 0 {
            turns.baseline.push(load(baseline).await?);
            turns.measured.push(load(measured).await?);
        } else {
            turns.measured.push(load(measured).await?);
            turns.baseline.push(load(baseline).await?);
        }
    }
    Ok(turns)
}

/// The `admission-tls` figures and `webhook-rss`.
pub async fn admission_tls(args: &TlsArgs) -> anyhow::Result<Vec<Figure>> {
    let webhook_bin = proc::binary(&args.bins.bin_dir, "arc-watchdog-webhook")?;
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let bundle = arc_watchdog_certs::generate(&arc_watchdog_certs::Options {
        ips: vec![std::net::Ipv4Addr::LOCALHOST.into()],
        ..arc_watchdog_certs::Options::default()
    })?;
    arc_watchdog_certs::write_bundle(dir.path(), &bundle)?;
    let cert = dir.path().join(arc_watchdog_certs::TLS_CERT_FILE);
    let key = dir.path().join(arc_watchdog_certs::TLS_KEY_FILE);
    let tls = client_config(&bundle.ca_cert_pem)?;
    let body = compact_review()?;
    let rounds = args.rounds.max(1);
    let cfg = LoadConfig::per_turn(
        args.concurrency,
        args.requests,
        args.duration,
        args.warmup,
        rounds,
    );

    // The echo server is the baseline, a child process like the webhook.
    // Both run throughout and are loaded in turns, alternating which goes
    // first: a burst of other tenants' load on this shared machine then
    // lands on both sides alike instead of on one whole measurement.
    let (mut echo, echo_addr) =
        spawn_echo(&cert, &key, false, &dir.path().join("echo.log")).await?;
    let listen = proc::free_addr().await?;
    let admin = proc::free_addr().await?;
    let webhook_log = dir.path().join("webhook.log");
    // No cluster: neither a kubeconfig nor any ARC_WATCHDOG_ setting of the
    // caller's environment.
    let files = proc::WebhookFiles {
        listen,
        admin,
        cert: &cert,
        key: &key,
        log: &webhook_log,
    };
    let (mut webhook, pid) = proc::spawn_webhook(&webhook_bin, &files, &[])?;
    let measured = async {
        proc::wait_ok(
            admin,
            "/readyz",
            &mut webhook,
            Duration::from_secs(30),
            &webhook_log,
        )
        .await?;
        let idle_kib = proc::vm_hwm_kib(pid)?;
        let turns = in_turns(
            &Side {
                addr: echo_addr,
                expect: Expect::Echo(body.clone()),
                name: "the echo server".to_owned(),
            },
            &Side {
                addr: listen,
                expect: Expect::Injected,
                name: format!("the webhook (its log: {})", webhook_log.display()),
            },
            &tls,
            &body,
            cfg,
            rounds,
        )
        .await?;
        let peak_kib = proc::vm_hwm_kib(pid)?;
        eprintln!("webhook-rss: after load: {}", proc::rss_breakdown(pid));
        anyhow::Ok((idle_kib, turns, peak_kib))
    }
    .await;
    proc::stop(&mut webhook).await;
    proc::stop(&mut echo).await;
    if measured.is_err() {
        // Keep the webhook's log for the error message.
        let _ = dir.keep();
    }
    let (idle_kib, turns, peak_kib) = measured?;
    let (baseline, result) = turns.pooled();
    let (p99_ratio, p99_ratios) = turns.quantile_ratios(0.99);

    let baseline_name = |what: &str| {
        format!(
            "tls-echo ({what}, same TLS+HTTP stack, c={}, {rounds} alternating turns each)",
            cfg.concurrency
        )
    };
    Ok(vec![
        Figure::new("admission-tls", format!("{:.0}", result.rps()), "req/s").against(
            result.rps() / baseline.rps(),
            baseline_name(&format!("{:.0} req/s", baseline.rps())),
        ),
        Figure::new(
            "admission-tls-p99",
            format!("{:.2}", result.quantile_ms(0.99)),
            "ms",
        )
        .against(
            p99_ratio,
            baseline_name(&format!(
                "p99 {:.2} ms; the median of the turns' ratios, {}",
                baseline.quantile_ms(0.99),
                p99_ratios
                    .iter()
                    .map(|r| format!("{r:.2}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            )),
        ),
        Figure::new("webhook-rss", format!("{:.1}", mib(peak_kib)), "MiB").against(
            peak_kib as f64 / idle_kib.max(1) as f64,
            format!("webhook-rss-idle ({:.1} MiB)", mib(idle_kib)),
        ),
    ])
}

/// Starts the echo server (`tls-echo`, this binary) as a child process
/// serving `cert` and `key` on a free loopback port, `--parse` when
/// `parse`, its stderr to `log`; returns once it listens.
pub(crate) async fn spawn_echo(
    cert: &Path,
    key: &Path,
    parse: bool,
    log: &Path,
) -> anyhow::Result<(tokio::process::Child, SocketAddr)> {
    let addr = proc::free_addr().await?;
    let mut echo = Command::new(std::env::current_exe()?)
        .args(["tls-echo", "--listen", &addr.to_string()])
        .arg("--tls-cert")
        .arg(cert)
        .arg("--tls-key")
        .arg(key)
        .args(parse.then_some("--parse"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?)
        .kill_on_drop(true)
        .spawn()
        .context("starting the echo server")?;
    proc::wait_listening(addr, &mut echo, Duration::from_secs(10)).await?;
    Ok((echo, addr))
}

/// The baseline server: answers every request with its own body, over the
/// same rustls + hyper-util stack as the webhook, on two worker threads.
/// With `parse`, the body is parsed into a `serde_json::Value` and that is
/// serialised as the answer (the serde floor: for compact JSON the same
/// bytes); a body that is not JSON is answered 400.
pub fn serve_echo(listen: &SocketAddr, cert: &Path, key: &Path, parse: bool) -> anyhow::Result<()> {
    if !listen.ip().is_loopback() {
        bail!("the echo server binds loopback addresses only, not {listen}");
    }
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()?;
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading {}", key.display()))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen).await?;
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        loop {
            let (tcp, _) = listener.accept().await?;
            let acceptor = acceptor.clone();
            let builder = builder.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let body = req.into_body().collect().await?.to_bytes();
                        let (status, body) = if parse {
                            reserialise(&body)
                        } else {
                            (http::StatusCode::OK, body)
                        };
                        let mut response = http::Response::new(Full::new(body));
                        *response.status_mut() = status;
                        response.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, hyper::Error>(response)
                    },
                );
                let _ = builder.serve_connection(TokioIo::new(tls), service).await;
            });
        }
    })
}

/// The serde floor's work on one body: parse it into a `Value`, serialise
/// that.
fn reserialise(body: &[u8]) -> (http::StatusCode, Bytes) {
    let serialised = serde_json::from_slice::<serde_json::Value>(body)
        .and_then(|value| serde_json::to_vec(&value));
    match serialised {
        Ok(answer) => (http::StatusCode::OK, Bytes::from(answer)),
        Err(err) => (
            http::StatusCode::BAD_REQUEST,
            Bytes::from(format!("not JSON: {err}")),
        ),
    }
}
