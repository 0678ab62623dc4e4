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
use arc_watchdog_webhook::server::{self, AppState};
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
    let metrics = Arc::new(Metrics::new());
    let (reloader, store) = CertReloader::load(&secret.cert(), &secret.key(), &metrics).unwrap();
    tokio::spawn(reloader.run(Duration::from_millis(50), Arc::clone(&metrics)));
    let config = Arc::new(tls::server_config(store).unwrap());
    let mut state = AppState::new(
        InjectConfig::new("ghcr.io/example/arc-watchdog:0.1.0"),
        Arc::new(ModeCell::new(SidecarMode::Native)),
        Arc::clone(&metrics),
    );
    state.max_body_bytes = max_body;
    let app = server::mutate_router(Arc::new(state));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(server::serve_tls(
        listener,
        config,
        app,
        async move {
            let _ = rx.await;
        },
        Duration::from_secs(3),
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
