//! The HTTP layer over real TLS on loopback, with certificates from
//! `arc-watchdog-certs`: good reviews, bad bodies, certificate rotation
//! during a stream of requests, and the admin port.

// Test helpers outside #[test] functions may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_watchdog_certs::{Ca, Options, ServingCert};
use arc_watchdog_webhook::metrics::Metrics;
use arc_watchdog_webhook::mutation::{InjectConfig, SidecarMode};
use arc_watchdog_webhook::server::{self, AppState, ServerLimits};
use arc_watchdog_webhook::tls::{self, CertReloader};
use arc_watchdog_webhook::version::ModeCell;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

fn sample(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden/inputs")
            .join(name),
    )
    .unwrap()
}

fn opts() -> Options {
    Options {
        dns: vec!["localhost".into()],
        ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        days: 1,
    }
}

/// A certificate directory laid out the way the kubelet mounts a Secret:
/// `tls.crt -> ..data/tls.crt`, `..data -> ..<timestamp>/`.
struct SecretDir {
    dir: tempfile::TempDir,
    generation: usize,
}

impl SecretDir {
    fn new(pair: &ServingCert) -> Self {
        let mut s = Self {
            dir: tempfile::tempdir().unwrap(),
            generation: 0,
        };
        s.swap(&pair.cert_pem, &pair.key_pem);
        std::os::unix::fs::symlink("..data/tls.crt", s.dir.path().join("tls.crt")).unwrap();
        std::os::unix::fs::symlink("..data/tls.key", s.dir.path().join("tls.key")).unwrap();
        s
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("tls.crt")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("tls.key")
    }

    /// Writes a new generation and swaps `..data` atomically, like the kubelet.
    fn swap(&mut self, cert: &str, key: &str) {
        self.generation += 1;
        let gen_name = format!("..gen_{}", self.generation);
        let gen_dir = self.dir.path().join(&gen_name);
        std::fs::create_dir(&gen_dir).unwrap();
        std::fs::write(gen_dir.join("tls.crt"), cert).unwrap();
        std::fs::write(gen_dir.join("tls.key"), key).unwrap();
        let tmp = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&gen_name, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.path().join("..data")).unwrap();
    }
}

struct Server {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    ca_pem: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(secret: &SecretDir, ca: &Ca, max_body: usize) -> Server {
    let limits = ServerLimits {
        shutdown_grace: Duration::from_secs(3),
        ..ServerLimits::default()
    };
    start_with(secret, ca, limits, |state| state.max_body_bytes = max_body).await
}

async fn start_with(
    secret: &SecretDir,
    ca: &Ca,
    limits: ServerLimits,
    configure: impl FnOnce(&mut AppState),
) -> Server {
    let metrics = Arc::new(Metrics::new());
    let (reloader, store) = CertReloader::load(&secret.cert(), &secret.key(), &metrics).unwrap();
    tokio::spawn(reloader.run(Duration::from_millis(50), Arc::clone(&metrics)));
    let config = Arc::new(tls::server_config(store).unwrap());
    let mut state = AppState::new(
        InjectConfig::new("ghcr.io/example/arc-watchdog:0.1.0"),
        Arc::new(ModeCell::new(SidecarMode::Native)),
        Arc::clone(&metrics),
    );
    configure(&mut state);
    let app = server::mutate_router(Arc::new(state));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(server::serve_tls(
        listener,
        config,
        app,
        limits,
        Arc::clone(&metrics),
        async move {
            let _ = rx.await;
        },
    ));
    Server {
        addr,
        metrics,
        ca_pem: ca.cert_pem().to_owned(),
        stop: Some(tx),
        task,
    }
}

struct Answer {
    status: u16,
    body: Bytes,
    served_cert: CertificateDer<'static>,
}

fn connector(ca_pem: &str) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// One request on a fresh connection (so each sees the certificate in
/// service at that moment).
async fn request<B>(server: &Server, method: &str, body: B) -> Result<Answer, String>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync,
{
    let tcp = TcpStream::connect(server.addr)
        .await
        .map_err(|e| e.to_string())?;
    let tls = connector(&server.ca_pem)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let served_cert = tls.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri("/mutate")
        .header(http::header::HOST, "localhost")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .unwrap();
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Answer {
        status,
        body,
        served_cert,
    })
}

async fn post(server: &Server, body: Vec<u8>) -> Result<Answer, String> {
    request(server, "POST", Full::new(Bytes::from(body))).await
}

fn metric(server: &Server, line_start: &str) -> Option<f64> {
    let text = server.metrics.encode().unwrap();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

impl Server {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("server did not stop within 5s")
            .unwrap();
    }
}

#[tokio::test]
async fn good_reviews_over_tls() {
    let ca = Ca::new(1).unwrap();
    let secret = SecretDir::new(&ca.issue(&opts()).unwrap());
    let server = start(&secret, &ca, 3 * 1024 * 1024).await;

    let a = post(&server, sample("listener-0.14.2.json")).await.unwrap();
    assert_eq!(a.status, 200);
    let v: Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(v["kind"], "AdmissionReview");
    assert_eq!(v["response"]["allowed"], true);
    assert_eq!(v["response"]["patchType"], "JSONPatch");
    assert_eq!(v["response"]["uid"], "2b1c0f6e-7d3a-4c1e-9f10-000000000001");

    let a = post(&server, sample("runner-pod.json")).await.unwrap();
    assert_eq!(a.status, 200);
    let v: Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(v["response"]["allowed"], true);
    assert!(v["response"].get("patch").is_none());

    assert_eq!(
        metric(
            &server,
            "arc_watchdog_webhook_reviews_total{outcome=\"injected\",reason=\"native\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &server,
            "arc_watchdog_webhook_reviews_total{outcome=\"skipped\",reason=\"not_listener\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &server,
            "arc_watchdog_webhook_review_duration_seconds_count"
        ),
        Some(2.0)
    );
    let expiry = metric(
        &server,
        "arc_watchdog_webhook_certificate_expiry_timestamp_seconds",
    )
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (expiry - (now + 86_400.0)).abs() < 120.0,
        "expiry {expiry} now {now}"
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_bodies_get_clear_errors_and_the_server_keeps_serving() {
    let ca = Ca::new(1).unwrap();
    let secret = SecretDir::new(&ca.issue(&opts()).unwrap());
    let max = 64 * 1024;
    let server = start(&secret, &ca, max).await;

    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"this is not json".to_vec(), 400, "not an AdmissionReview"),
        (Vec::new(), 400, "not an AdmissionReview"),
        (
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
            400,
            "no request",
        ),
        (vec![b' '; max + 1], 413, "larger than"),
    ];
    for (body, status, message) in cases {
        let a = post(&server, body).await.unwrap();
        assert_eq!(a.status, status);
        let v: Value = serde_json::from_slice(&a.body).unwrap();
        assert!(v["error"].as_str().unwrap().contains(message), "{v}");
    }

    // Oversized without Content-Length (chunked): cut off while reading.
    let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = (0..20)
        .map(|_| Ok(Frame::data(Bytes::from(vec![b'{'; 8 * 1024]))))
        .collect();
    let a = request(
        &server,
        "POST",
        StreamBody::new(futures::stream::iter(chunks)),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 413);

    let a = request(&server, "GET", Full::new(Bytes::new()))
        .await
        .unwrap();
    assert_eq!(a.status, 405);

    // Still serving.
    let a = post(&server, sample("listener-0.14.2.json")).await.unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(
        metric(
            &server,
            "arc_watchdog_webhook_reviews_total{outcome=\"error\",reason=\"too_large\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &server,
            "arc_watchdog_webhook_reviews_total{outcome=\"error\",reason=\"invalid_json\"}"
        ),
        Some(2.0)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_under_load_drops_nothing() {
    let ca = Ca::new(1).unwrap();
    let first = ca.issue(&opts()).unwrap();
    let mut secret = SecretDir::new(&first);
    let server = Arc::new(start(&secret, &ca, 3 * 1024 * 1024).await);
    let first_der = CertificateDer::from_pem_slice(first.cert_pem.as_bytes()).unwrap();

    // A steady stream of reviews from two clients until told to stop.
    let done = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..2 {
        let (server, done, ok) = (Arc::clone(&server), Arc::clone(&done), Arc::clone(&ok));
        clients.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut seen = Vec::new();
            while !done.load(Ordering::Relaxed) {
                match post(&server, sample("listener-0.14.2.json")).await {
                    Ok(a) if a.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        if seen.last() != Some(&a.served_cert) {
                            seen.push(a.served_cert);
                        }
                    }
                    Ok(a) => failures.push(format!("status {}", a.status)),
                    Err(e) => failures.push(e),
                }
            }
            (failures, seen)
        }));
    }
    let wait_for = |n: usize| {
        let ok = Arc::clone(&ok);
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            while ok.load(Ordering::Relaxed) < n {
                assert!(Instant::now() < deadline, "requests stalled");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    wait_for(10).await;

    // A broken pair (key of another certificate) is refused; the old one stays.
    let other = ca.issue(&opts()).unwrap();
    secret.swap(&first.cert_pem, &other.key_pem);
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(
        &server,
        "arc_watchdog_webhook_certificate_reloads_total{result=\"error\"}",
    )
    .is_none()
    {
        assert!(Instant::now() < deadline, "refused pair never noticed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = ok.load(Ordering::Relaxed);
    wait_for(before + 10).await;

    // The real rotation.
    let second = ca.issue(&opts()).unwrap();
    secret.swap(&second.cert_pem, &second.key_pem);
    let second_der = CertificateDer::from_pem_slice(second.cert_pem.as_bytes()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let a = post(&server, sample("listener-0.14.2.json")).await.unwrap();
        if a.served_cert == second_der {
            break;
        }
        assert!(Instant::now() < deadline, "new certificate never served");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = ok.load(Ordering::Relaxed);
    wait_for(before + 10).await;
    done.store(true, Ordering::Relaxed);

    let mut all_seen = Vec::new();
    for c in clients {
        let (failures, seen) = c.await.unwrap();
        assert!(
            failures.is_empty(),
            "failed requests during rotation: {failures:?}"
        );
        all_seen.extend(seen);
    }
    assert!(all_seen.contains(&first_der));
    assert!(all_seen.contains(&second_der));
    assert!(ok.load(Ordering::Relaxed) >= 30);
    assert_eq!(
        metric(
            &server,
            "arc_watchdog_webhook_certificate_reloads_total{result=\"ok\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &server,
            "arc_watchdog_webhook_certificate_reloads_total{result=\"error\"}"
        ),
        Some(1.0)
    );
    let server = Arc::into_inner(server).expect("clients still hold the server");
    server.stop().await;
}

/// A TLS connection to the server, handshake done, nothing sent yet.
async fn open_tls(
    server: &Server,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(server.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(server.addr).await?;
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// Waits (bounded) until the metric starting with `line_start` reads `want`.
async fn await_metric(server: &Server, line_start: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(server, line_start).unwrap_or(0.0) != want {
        assert!(
            Instant::now() < deadline,
            "{line_start} stayed at {:?}, want {want}",
            metric(server, line_start)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn limits() -> ServerLimits {
    ServerLimits {
        shutdown_grace: Duration::from_secs(3),
        ..ServerLimits::default()
    }
}

#[tokio::test]
async fn a_request_head_sent_byte_by_byte_is_cut_after_the_header_read_timeout() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let ca = Ca::new(1).unwrap();
    let secret = SecretDir::new(&ca.issue(&opts()).unwrap());
    let limits = ServerLimits {
        header_read_timeout: Duration::from_millis(300),
        ..limits()
    };
    let server = start_with(&secret, &ca, limits, |_| {}).await;
    let tls = open_tls(&server, &[]).await.unwrap();
    let (mut read, mut write) = tokio::io::split(tls);
    let started = Instant::now();
    // A head that never ends, one byte every 20 ms (slowloris).
    let dribble = tokio::spawn(async move {
        let head = b"POST /mutate HTTP/1.1\r\nHost: localhost\r\n";
        for byte in head.iter().cycle() {
            if write.write_all(&[*byte]).await.is_err() || write.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    // The server closes the connection: end of stream or an error.
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), read.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "the slow head was never cut");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );
    dribble.abort();
    assert_eq!(
        metric(
            &server,
            "arc_watchdog_webhook_connection_timeouts_total{phase=\"header\"}"
        ),
        Some(1.0)
    );
    // Still serving.
    let a = post(&server, sample("listener-0.14.2.json")).await.unwrap();
    assert_eq!(a.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn connections_over_the_limit_are_refused_and_reviews_resume_after() {
    let ca = Ca::new(1).unwrap();
    let secret = SecretDir::new(&ca.issue(&opts()).unwrap());
    let limits = ServerLimits {
        max_connections: 4,
        ..limits()
    };
    let server = start_with(&secret, &ca, limits, |_| {}).await;
    // A finished handshake means the server accepted the connection and
    // gave it a slot.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(open_tls(&server, &[]).await.unwrap());
    }
    await_metric(&server, "arc_watchdog_webhook_open_connections ", 4.0).await;
    for refused in 1..=3 {
        let err = post(&server, sample("listener-0.14.2.json"))
            .await
            .err()
            .expect("a connection over the limit was served");
        assert!(err.contains("handshake"), "{err}");
        assert_eq!(
            metric(&server, "arc_watchdog_webhook_connections_refused_total"),
            Some(f64::from(refused))
        );
    }
    // One client leaves; its slot comes back once the server saw it go.
    drop(held.pop());
    await_metric(&server, "arc_watchdog_webhook_open_connections ", 3.0).await;
    let a = post(&server, sample("listener-0.14.2.json")).await.unwrap();
    assert_eq!(a.status, 200);
    let v: Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(v["response"]["patchType"], "JSONPatch");
    drop(held);
    server.stop().await;
}

/// A body that sends `chunk` every `every`, `count` times (forever with
/// `usize::MAX`).
fn trickle(
    chunk: &'static [u8],
    every: Duration,
    count: usize,
) -> StreamBody<impl futures::Stream<Item = Result<Frame<Bytes>, std::convert::Infallible>>> {
    let frames = futures::stream::unfold(0usize, move |sent| async move {
        if sent == count {
            return None;
        }
        if sent > 0 {
            tokio::time::sleep(every).await;
        }
        Some((Ok(Frame::data(Bytes::from_static(chunk))), sent + 1))
    });
    StreamBody::new(frames)
}

#[tokio::test]
async fn a_slow_body_is_cut_after_the_request_timeout() {
    let ca = Ca::new(1).unwrap();
    let secret = SecretDir::new(&ca.issue(&opts()).unwrap());
    let server = start_with(&secret, &ca, limits(), |state| {
        state.request_timeout = Duration::from_millis(300);
    })
    .await;
    let started = Instant::now();
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        request(
            &server,
            "POST",
            trickle(b"{", Duration::from_millis(20), usize::MAX),
        ),
    )
    .await
    .expect("the slow body was never cut")
    .unwrap();
    let took = started.elapsed();
    assert_eq!(answer.status, 408);
    assert!(took < Duration::from_secs(5), "cut after {took:?}");
    let v: Value = serde_json::from_slice(&answer.body).unwrap();
    assert!(v["error"].as_str().unwrap().contains("not complete"), "{v}");
    assert_eq!(
        metric(
            &server,
            "arc_watchdog_webhook_reviews_total{outcome=\"error\",reason=\"timeout\"}"
        ),
        Some(1.0)
    );
    server.stop().await;
}

#[tokio::test]
async fn large_bodies_beyond_the_buffer_budget_get_503_and_reviews_still_pass() {
    let ca = Ca::new(1).unwrap();
    let secret = SecretDir::new(&ca.issue(&opts()).unwrap());
    // 32 KiB for small bodies, 96 KiB for the others.
    let server = Arc::new(
        start_with(&secret, &ca, limits(), |state| {
            state.max_body_bytes = 64 * 1024;
            state.body_budget = server::BodyBudget::new(128 * 1024);
            state.request_timeout = Duration::from_secs(3);
        })
        .await,
    );
    // 40 KiB at once, then nothing: its buffer (64 KiB) stays taken until
    // the request timeout cuts it.
    static CHUNK: [u8; 40 * 1024] = [b' '; 40 * 1024];
    let hog = {
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            request(
                &server,
                "POST",
                trickle(&CHUNK, Duration::from_secs(3600), 2),
            )
            .await
        })
    };
    // Another such body finds no room once the first holds its share.
    let deadline = Instant::now() + Duration::from_secs(5);
    let refused = loop {
        let a = request(&server, "POST", trickle(&CHUNK, Duration::ZERO, 1))
            .await
            .unwrap();
        if a.status == 503 {
            break a;
        }
        assert_eq!(a.status, 400, "40 KiB of spaces is no review");
        assert!(Instant::now() < deadline, "the budget was never taken");
    };
    let v: Value = serde_json::from_slice(&refused.body).unwrap();
    assert!(v["error"].as_str().unwrap().contains("buffered"), "{v}");
    assert_eq!(
        metric(
            &server,
            "arc_watchdog_webhook_reviews_total{outcome=\"error\",reason=\"overloaded\"}"
        ),
        Some(1.0)
    );
    // A real review meanwhile: small bodies have their own share.
    let a = post(&server, sample("listener-0.14.2.json")).await.unwrap();
    assert_eq!(a.status, 200);
    assert!(!hog.is_finished(), "the hog ended before the review");
    // The hog is cut at the request timeout and gives its room back.
    let cut = hog.await.unwrap().unwrap();
    assert_eq!(cut.status, 408);
    let a = request(&server, "POST", trickle(&CHUNK, Duration::ZERO, 1))
        .await
        .unwrap();
    assert_eq!(a.status, 400);
    let server = Arc::into_inner(server).unwrap();
    server.stop().await;
}

#[tokio::test]
async fn http2_advertises_the_configured_stream_limit() {
    let ca = Ca::new(1).unwrap();
    let secret = SecretDir::new(&ca.issue(&opts()).unwrap());
    let limits = ServerLimits {
        max_concurrent_streams: 3,
        ..limits()
    };
    let server = start_with(&secret, &ca, limits, |_| {}).await;
    let tls = open_tls(&server, &[b"h2"]).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (client, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    // One answered request: the server's SETTINGS came before it.
    let req = http::Request::get("https://localhost/mutate")
        .body(())
        .unwrap();
    let (response, _) = client.send_request(req, true).unwrap();
    assert_eq!(response.await.unwrap().status(), 405);
    assert_eq!(client.current_max_send_streams(), 3);
    drop(client);
    server.stop().await;
}
