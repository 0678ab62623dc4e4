//! `webhook-under-abuse`: the release webhook with its default limits while
//! clients misbehave on its TLS port: some send a request head one byte at
//! a time and never finish it (slowloris), others stream bodies larger than
//! `--max-body-bytes` without a Content-Length; every attacker reconnects as
//! soon as it is cut off. Meanwhile real reviews, each on a fresh
//! connection as the API server may open one, measure what the API server
//! would see. Figures: the webhook's peak RSS (`VmHWM`) against the
//! manifests' memory limit, and the reviews' p99 against the same reviews
//! without the abuse (measured first, in the same run) and against the
//! MutatingWebhookConfiguration's `timeoutSeconds`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::load::{client_config, compact_review};
use crate::proc::{self, mib};
use crate::{AbuseLoadArgs, Figure};

/// The webhook container's memory limit in `manifests/webhook/deployment.yaml`.
const MEMORY_LIMIT_MIB: f64 = 128.0;
/// `timeoutSeconds` in `manifests/webhook/mutatingwebhookconfiguration.yaml`:
/// the API server gives up on a review after this.
const API_SERVER_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two bytes of a slow head.
const SLOW_BYTE_EVERY: Duration = Duration::from_millis(500);
/// One chunk of an oversized body, and the pause between chunks.
const CHUNK: usize = 64 * 1024;
const CHUNK_EVERY: Duration = Duration::from_millis(20);
/// Bytes of an oversized body: twice the webhook's default `--max-body-bytes`.
const OVERSIZED: usize = 2 * 1024 * 1024;
/// Pause between two real reviews of one reviewer.
const REVIEW_EVERY: Duration = Duration::from_millis(50);
/// Time given to the attackers to open their connections before measuring.
const RAMP_UP: Duration = Duration::from_secs(2);

async fn connect(
    addr: SocketAddr,
    tls: &TlsConnector,
) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("127.0.0.1")?;
    tls.connect(name, tcp).await.context("TLS handshake")
}

/// One real review on a fresh connection: its latency, connection included.
async fn review_once(
    addr: SocketAddr,
    tls: &TlsConnector,
    body: Bytes,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let stream = connect(addr, tls).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake")?;
    let conn = tokio::spawn(conn);
    let request = http::Request::post("/mutate")
        .header(http::header::HOST, "127.0.0.1")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))?;
    let response = sender.send_request(request).await.context("sending")?;
    let status = response.status();
    let answer = response.into_body().collect().await?.to_bytes();
    let took = started.elapsed();
    conn.abort();
    if status != http::StatusCode::OK {
        bail!("answered {status}: {}", String::from_utf8_lossy(&answer));
    }
    if !answer.windows(9).any(|w| w == b"JSONPatch") {
        bail!("not injected: {}", String::from_utf8_lossy(&answer));
    }
    Ok(took)
}

/// Real reviews from `reviewers` clients for `duration`: the sorted
/// latencies (µs) of the answered ones and the errors of the others. A
/// review the API server would have given up on counts as an error.
async fn reviews(
    addr: SocketAddr,
    tls: &TlsConnector,
    body: &Bytes,
    reviewers: usize,
    duration: Duration,
) -> (Vec<u32>, Vec<String>) {
    let deadline = Instant::now() + duration;
    let tasks: Vec<_> = (0..reviewers.max(1))
        .map(|_| {
            let (tls, body) = (tls.clone(), body.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = Vec::new();
                while Instant::now() < deadline {
                    match tokio::time::timeout(
                        API_SERVER_TIMEOUT,
                        review_once(addr, &tls, body.clone()),
                    )
                    .await
                    {
                        Ok(Ok(took)) => {
                            latencies.push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
                        }
                        Ok(Err(err)) => errors.push(format!("{err:#}")),
                        Err(_) => errors.push(format!("no answer within {API_SERVER_TIMEOUT:?}")),
                    }
                    tokio::time::sleep(REVIEW_EVERY).await;
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = Vec::new();
    for task in tasks {
        match task.await {
            Ok((l, e)) => {
                latencies.extend(l);
                errors.extend(e);
            }
            Err(err) => errors.push(format!("a reviewer panicked: {err}")),
        }
    }
    latencies.sort_unstable();
    (latencies, errors)
}

fn p99_ms(sorted_us: &[u32]) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted_us.len() as f64 * 0.99).ceil() as usize)
        .saturating_sub(1)
        .min(sorted_us.len() - 1);
    f64::from(sorted_us[idx]) / 1000.0
}

/// What the attackers did, for the notes.
#[derive(Debug, Default)]
struct Attacks {
    /// Connections that completed a TLS handshake.
    connected: AtomicU64,
    /// Connections the webhook closed on the attacker.
    cut: AtomicU64,
}

/// Sends a request head one byte at a time, never ending it, until the
/// webhook closes the connection; then again, until `stop`.
async fn slowloris(addr: SocketAddr, tls: TlsConnector, stop: Arc<AtomicBool>, seen: Arc<Attacks>) {
    const HEAD: &[u8] = b"POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: 1\r\n";
    while !stop.load(Ordering::Relaxed) {
        let Ok(stream) = connect(addr, &tls).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        seen.connected.fetch_add(1, Ordering::Relaxed);
        let (mut read, mut write) = tokio::io::split(stream);
        let dribble = async {
            for byte in HEAD.iter().chain(std::iter::repeat(&b'x')) {
                if stop.load(Ordering::Relaxed)
                    || write.write_all(&[*byte]).await.is_err()
                    || write.flush().await.is_err()
                {
                    return;
                }
                tokio::time::sleep(SLOW_BYTE_EVERY).await;
            }
        };
        let mut sink = [0u8; 1024];
        tokio::select! {
            () = dribble => {}
            _ = read.read(&mut sink) => { seen.cut.fetch_add(1, Ordering::Relaxed); }
        }
    }
}

/// Streams a chunked body of [`OVERSIZED`] bytes until the webhook answers
/// or closes; then again, until `stop`.
async fn oversized(addr: SocketAddr, tls: TlsConnector, stop: Arc<AtomicBool>, seen: Arc<Attacks>) {
    const HEAD: &[u8] = b"POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut chunk = format!("{CHUNK:x}\r\n").into_bytes();
    chunk.extend(std::iter::repeat_n(b' ', CHUNK));
    chunk.extend_from_slice(b"\r\n");
    while !stop.load(Ordering::Relaxed) {
        let Ok(stream) = connect(addr, &tls).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        seen.connected.fetch_add(1, Ordering::Relaxed);
        let (mut read, mut write) = tokio::io::split(stream);
        let stream_body = async {
            if write.write_all(HEAD).await.is_err() {
                return;
            }
            for _ in 0..OVERSIZED / CHUNK {
                if stop.load(Ordering::Relaxed) || write.write_all(&chunk).await.is_err() {
                    return;
                }
                tokio::time::sleep(CHUNK_EVERY).await;
            }
            // All sent and no answer yet: wait for it below.
            std::future::pending::<()>().await;
        };
        let mut sink = [0u8; 1024];
        tokio::select! {
            () = stream_body => {}
            _ = read.read(&mut sink) => { seen.cut.fetch_add(1, Ordering::Relaxed); }
        }
    }
}

/// A counter or gauge from the webhook's `/metrics`, 0 when absent.
fn metric(text: &str, line_start: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(line_start))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |sum, v| sum + v)
}

/// The `webhook-under-abuse` figures.
pub async fn measure(bin_dir: &Path, args: &AbuseLoadArgs) -> anyhow::Result<Vec<Figure>> {
    let webhook_bin = proc::binary(bin_dir, "arc-watchdog-webhook")?;
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let bundle = arc_watchdog_certs::generate(&arc_watchdog_certs::Options {
        ips: vec![std::net::Ipv4Addr::LOCALHOST.into()],
        ..arc_watchdog_certs::Options::default()
    })?;
    arc_watchdog_certs::write_bundle(dir.path(), &bundle)?;
    let tls = TlsConnector::from(client_config(&bundle.ca_cert_pem)?);
    let body = compact_review()?;

    let listen = proc::free_addr().await?;
    let admin = proc::free_addr().await?;
    let log = dir.path().join("webhook.log");
    // No cluster, and the default limits.
    let (cert, key) = (
        dir.path().join(arc_watchdog_certs::TLS_CERT_FILE),
        dir.path().join(arc_watchdog_certs::TLS_KEY_FILE),
    );
    let files = proc::WebhookFiles {
        listen,
        admin,
        cert: &cert,
        key: &key,
        log: &log,
    };
    let (mut webhook, pid) = proc::spawn_webhook(
        &webhook_bin,
        &files,
        &["--report-uninjected=false", "--log-level=warn"],
    )?;
    let measured = async {
        proc::wait_ok(
            admin,
            "/readyz",
            &mut webhook,
            Duration::from_secs(30),
            &log,
        )
        .await?;
        let idle_kib = proc::vm_hwm_kib(pid)?;
        let (calm, calm_errors) = reviews(listen, &tls, &body, args.reviewers, args.duration).await;
        if !calm_errors.is_empty() {
            bail!("reviews failed without any abuse: {calm_errors:?}");
        }

        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Attacks::default());
        let mut attackers = Vec::new();
        for _ in 0..args.slow {
            attackers.push(tokio::spawn(slowloris(
                listen,
                tls.clone(),
                Arc::clone(&stop),
                Arc::clone(&seen),
            )));
        }
        for _ in 0..args.oversized {
            attackers.push(tokio::spawn(oversized(
                listen,
                tls.clone(),
                Arc::clone(&stop),
                Arc::clone(&seen),
            )));
        }
        tokio::time::sleep(RAMP_UP).await;
        let open_during = proc::http_get(admin, "/metrics")
            .await
            .map(|(_, text)| metric(&text, "arc_watchdog_webhook_open_connections "))
            .unwrap_or(f64::NAN);
        let (abused, abused_errors) =
            reviews(listen, &tls, &body, args.reviewers, args.duration).await;
        stop.store(true, Ordering::Relaxed);
        for attacker in attackers {
            attacker.abort();
        }
        let peak_kib = proc::vm_hwm_kib(pid)?;
        let (_, metrics) = proc::http_get(admin, "/metrics").await?;
        eprintln!(
            "webhook-under-abuse: attackers connected {} times and were cut {} times; \
             {open_during} connections open during the abuse; refused {}, head timeouts {}, \
             idle closes {}, 413 {}, 503 {}, 408 {}; after: {}",
            seen.connected.load(Ordering::Relaxed),
            seen.cut.load(Ordering::Relaxed),
            metric(&metrics, "arc_watchdog_webhook_connections_refused_total"),
            metric(
                &metrics,
                "arc_watchdog_webhook_connection_timeouts_total{phase=\"header\"}"
            ),
            metric(
                &metrics,
                "arc_watchdog_webhook_connection_timeouts_total{phase=\"idle\"}"
            ),
            metric(
                &metrics,
                "arc_watchdog_webhook_reviews_total{outcome=\"error\",reason=\"too_large\"}"
            ),
            metric(
                &metrics,
                "arc_watchdog_webhook_reviews_total{outcome=\"error\",reason=\"overloaded\"}"
            ),
            metric(
                &metrics,
                "arc_watchdog_webhook_reviews_total{outcome=\"error\",reason=\"timeout\"}"
            ),
            proc::rss_breakdown(pid),
        );
        if !abused_errors.is_empty() {
            eprintln!(
                "webhook-under-abuse: {} real reviews failed, e.g. {:?}",
                abused_errors.len(),
                abused_errors.first()
            );
        }
        anyhow::Ok((idle_kib, peak_kib, calm, abused, abused_errors.len()))
    }
    .await;
    proc::stop(&mut webhook).await;
    if measured.is_err() {
        // Keep the webhook's log for the error message.
        let _ = dir.keep();
    }
    let (idle_kib, peak_kib, calm, abused, failed) = measured?;

    let peak_mib = mib(peak_kib);
    let abused_p99 = p99_ms(&abused);
    let calm_p99 = p99_ms(&calm);
    let timeout_ms = API_SERVER_TIMEOUT.as_secs_f64() * 1000.0;
    Ok(vec![
        Figure::new("webhook-under-abuse", format!("{peak_mib:.1}"), "MiB").against(
            peak_mib / MEMORY_LIMIT_MIB,
            format!(
                "limit {MEMORY_LIMIT_MIB:.0} MiB (idle {:.1} MiB; {} slow heads + {} oversized bodies)",
                mib(idle_kib),
                args.slow,
                args.oversized
            ),
        ),
        Figure::new("webhook-under-abuse-p99", format!("{abused_p99:.2}"), "ms").against(
            abused_p99 / calm_p99,
            format!(
                "the same reviews without abuse (p99 {calm_p99:.2} ms; {:.3} of timeoutSeconds {}s; \
                 {} of {} reviews failed under abuse)",
                abused_p99 / timeout_ms,
                API_SERVER_TIMEOUT.as_secs(),
                failed,
                abused.len() + failed,
            ),
        ),
    ])
}
