//! The HTTP layer: `POST /mutate` over TLS, and the plain-HTTP admin port.
//! Thin around [`crate::review::handle`].
//!
//! What clients can make the TLS server hold is bounded, so that no client
//! can push it past its memory limit (128Mi in the manifests) while real
//! reviews wait: at most [`ServerLimits::max_connections`] connections,
//! each holding its TLS buffers, an HTTP/1 read buffer of 32 KiB or
//! HTTP/2 windows of 64 KiB (about 50 MiB at the default
//! 512, far less in practice); request bodies within the [`BodyBudget`]
//! (16 MiB); and the parse of a body, at most `--max-body-bytes` times
//! some 25 for a crafted pod, once per worker thread (two). Every phase of
//! a connection has a deadline: the TLS handshake, the HTTP/1 head, the
//! whole review, and idleness.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use k8s_openapi::jiff::Timestamp;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::leases::{ListenerLeases, NoLeases};
use crate::metrics::Metrics;
use crate::mutation::InjectConfig;
use crate::review::{self, ErrorReason};
use crate::version::ModeCell;

/// Path of the mutating endpoint.
pub const PATH_MUTATE: &str = "/mutate";
/// A TLS handshake that takes longer than this is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request waits for room in the body budget before it gets 503.
/// Bodies that are cut off or refused give their room back within moments;
/// waiting longer would only spend the API server's `timeoutSeconds`.
pub const BUDGET_WAIT: Duration = Duration::from_secs(1);

/// After an idle connection was asked to close (HTTP/2 GOAWAY), how long it
/// may take before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// HTTP/1 read buffer, the most of a request head (and of one body read)
/// held per connection. The API server's heads are well under 1 KiB.
const H1_MAX_BUF: usize = 32 * 1024;
/// HTTP/2 flow-control windows: what a client may send before the body is
/// read, per stream and per connection, so also what one connection can
/// make the server hold outside the body budget.
const H2_STREAM_WINDOW: u32 = 64 * 1024;
const H2_CONNECTION_WINDOW: u32 = 64 * 1024;
/// The protocol's smallest frame size.
const H2_MAX_FRAME: u32 = 16 * 1024;
/// Largest header block accepted on HTTP/2 (hyper's default is 16 MiB).
const H2_MAX_HEADER_LIST: u32 = 16 * 1024;
/// Response bytes buffered per stream; answers are a few KiB.
const H2_MAX_SEND_BUF: usize = 64 * 1024;
/// HTTP/2 pings find peers that vanished without closing.
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Limits of the HTTPS server (the `--max-connections` ... flags).
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// TLS connections open at once; the next ones are closed on accept.
    pub max_connections: u32,
    /// Time to receive an HTTP/1 request head, counted from the end of the
    /// previous answer (so it also closes idle HTTP/1 keep-alive
    /// connections).
    pub header_read_timeout: Duration,
    /// A connection without a request in flight for this long is closed
    /// (HTTP/2 and connections that never send anything).
    pub idle_timeout: Duration,
    /// Streams one HTTP/2 connection may have open at once.
    pub max_concurrent_streams: u32,
    /// After shutdown began, how long open connections may take to finish.
    pub shutdown_grace: Duration,
}

impl Default for ServerLimits {
    /// The flags' defaults.
    fn default() -> Self {
        Self {
            max_connections: 512,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_concurrent_streams: 32,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Capacity of a body's first buffer: a listener pod's review fits.
const SMALL_BODY: usize = 32 * 1024;

/// The request-body bytes buffered at once across all connections
/// (`--max-buffered-bytes`): every buffer's capacity is taken from it before
/// it grows, and given back when the review has been answered.
///
/// A quarter of it is kept for bodies that fit in 32 KiB, as every
/// real review does, so that large bodies sent to exhaust the budget make
/// other large bodies wait or fail, not the reviews.
#[derive(Debug)]
pub struct BodyBudget {
    small: Semaphore,
    small_total: usize,
    large: Semaphore,
    large_total: usize,
}

/// Bytes taken from a [`BodyBudget`], given back when dropped.
#[derive(Debug)]
struct Charge<'a> {
    permit: SemaphorePermit<'a>,
    small: bool,
}

impl BodyBudget {
    /// A budget of `total` bytes.
    pub fn new(total: usize) -> Self {
        let total = total.min(Semaphore::MAX_PERMITS);
        let small_total = total / 4;
        let large_total = total - small_total;
        Self {
            small: Semaphore::new(small_total),
            small_total,
            large: Semaphore::new(large_total),
            large_total,
        }
    }

    /// The largest body this budget can ever hold.
    pub fn largest_body(&self) -> usize {
        self.large_total.max(self.small_total.min(SMALL_BODY))
    }

    /// Takes `n` bytes from `pool`, waiting at most [`BUDGET_WAIT`]; `None`
    /// when there was no room in time (or never could be).
    async fn take(pool: &Semaphore, total: usize, n: usize) -> Option<SemaphorePermit<'_>> {
        if n > total {
            return None;
        }
        let n = u32::try_from(n).ok()?;
        match tokio::time::timeout(BUDGET_WAIT, pool.acquire_many(n)).await {
            Ok(Ok(permit)) => Some(permit),
            Ok(Err(_)) | Err(_) => None,
        }
    }

    /// Grows `held`, which covers `from` bytes, to cover `to` bytes.
    async fn grow<'a>(
        &'a self,
        held: Option<Charge<'a>>,
        from: usize,
        to: usize,
    ) -> Option<Charge<'a>> {
        if to <= SMALL_BODY {
            let more = Self::take(&self.small, self.small_total, to - from).await?;
            return Some(match held {
                Some(mut charge) if charge.small => {
                    charge.permit.merge(more);
                    charge
                }
                _ => Charge {
                    permit: more,
                    small: true,
                },
            });
        }
        match held {
            Some(mut charge) if !charge.small => {
                let more = Self::take(&self.large, self.large_total, to - from).await?;
                charge.permit.merge(more);
                Some(charge)
            }
            // Leaving the small pool: the whole capacity moves to the
            // large one, and the small share is given back.
            _ => {
                let permit = Self::take(&self.large, self.large_total, to).await?;
                Some(Charge {
                    permit,
                    small: false,
                })
            }
        }
    }
}

/// What the handlers share.
pub struct AppState {
    /// The mutation's configuration.
    pub inject: InjectConfig,
    /// The sidecar mode in force.
    pub mode: Arc<ModeCell>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// Request bodies buffered at once, across all connections.
    pub body_budget: BodyBudget,
    /// Longest time from the request head to the answer of a review.
    pub request_timeout: Duration,
    /// False once shutdown began (readiness turns red first).
    pub ready: AtomicBool,
    /// What the listeners' Leases say: suspensions, pending backoffs (in
    /// memory; admission never reads the API).
    pub leases: Arc<dyn ListenerLeases>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("inject", &self.inject)
            .field("mode", &self.mode)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("request_timeout", &self.request_timeout)
            .field("ready", &self.ready)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// State without RBAC management, ready.
    pub fn new(inject: InjectConfig, mode: Arc<ModeCell>, metrics: Arc<Metrics>) -> Self {
        Self {
            inject,
            mode,
            metrics,
            max_body_bytes: 1024 * 1024,
            body_budget: BodyBudget::new(16 * 1024 * 1024),
            request_timeout: Duration::from_secs(5),
            ready: AtomicBool::new(true),
            leases: Arc::new(NoLeases),
        }
    }
}

fn json_response(status: u16, body: Vec<u8>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Why a body was not read whole.
enum BodyError {
    TooLarge,
    Overloaded,
    Read(axum::Error),
}

/// Reads `body`, at most `max` bytes, into one buffer whose capacity is
/// taken from `budget` as it grows; the charge gives it back when dropped.
async fn read_body<'a>(
    mut body: Body,
    max: usize,
    budget: &'a BodyBudget,
) -> Result<(Vec<u8>, Option<Charge<'a>>), BodyError> {
    let mut buf: Vec<u8> = Vec::new();
    let mut charge: Option<Charge<'a>> = None;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(BodyError::Read)?.into_data() else {
            continue; // trailers
        };
        let needed = buf.len() + data.len();
        if needed > max {
            return Err(BodyError::TooLarge);
        }
        if needed > buf.capacity() {
            // Doubling, so a large body costs few copies; charged before
            // the allocation, so the budget is what is really held.
            let capacity = needed.max(buf.capacity() * 2).max(SMALL_BODY).min(max);
            charge = Some(
                budget
                    .grow(charge, buf.capacity(), capacity)
                    .await
                    .ok_or(BodyError::Overloaded)?,
            );
            buf.reserve_exact(capacity - buf.len());
        }
        buf.extend_from_slice(&data);
    }
    Ok((buf, charge))
}

async fn review(state: &AppState, declared: Option<u64>, body: Body) -> review::ReviewResult {
    let too_large = || {
        review::error_result(
            413,
            ErrorReason::TooLarge,
            &format!("request body larger than {} bytes", state.max_body_bytes),
        )
    };
    if declared.is_some_and(|n| n > state.max_body_bytes as u64) {
        return too_large();
    }
    let (bytes, charge) = match read_body(body, state.max_body_bytes, &state.body_budget).await {
        Ok(read) => read,
        Err(BodyError::TooLarge) => return too_large(),
        Err(BodyError::Overloaded) => {
            return review::error_result(
                503,
                ErrorReason::Overloaded,
                "too many request bodies buffered at once; try again",
            );
        }
        Err(BodyError::Read(err)) => {
            return review::error_result(
                400,
                ErrorReason::InvalidJson,
                &format!("reading request body: {err}"),
            );
        }
    };
    let result = review::handle_with(
        &bytes,
        &state.inject,
        review::Context {
            mode: state.mode.get(),
            leases: state.leases.as_ref(),
            now: Timestamp::now(),
        },
    );
    drop(bytes);
    drop(charge);
    result
}

async fn mutate(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // The whole request, body included: a body sent slowly is cut here
    // (the head has its own timeout in hyper).
    let result =
        match tokio::time::timeout(state.request_timeout, review(&state, declared, body)).await {
            Ok(result) => result,
            Err(_) => review::error_result(
                408,
                ErrorReason::Timeout,
                &format!("request not complete within {:?}", state.request_timeout),
            ),
        };
    let elapsed = started.elapsed();
    state.metrics.observe_review(&result.outcome, elapsed);
    // A formatted JSON line for every review costs some 6% of the review's
    // own instructions plus a write(2) to stderr, which can stall the worker
    // behind the log's disk; answered reviews are counted by the reviews
    // metric and an injected pod carries its annotation, so only failures
    // are logged at info.
    macro_rules! review_event {
        ($level:expr) => {
            tracing::event!(
                $level,
                uid = result.uid.as_deref().unwrap_or(""),
                status = result.status,
                outcome = result.outcome.outcome(),
                reason = result.outcome.reason(),
                elapsed_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
                "admission review"
            )
        };
    }
    if matches!(result.outcome, review::Outcome::Error(_)) {
        review_event!(tracing::Level::INFO);
    } else {
        review_event!(tracing::Level::DEBUG);
    }
    json_response(result.status, result.body)
}

async fn method_not_allowed() -> Response {
    json_response(
        405,
        br#"{"error":"use POST with an AdmissionReview"}"#.to_vec(),
    )
}

/// The router served over TLS: `POST /mutate`.
pub fn mutate_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(PATH_MUTATE, post(mutate).fallback(method_not_allowed))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    // The mode can change at any time under `auto`; read it at scrape time.
    state
        .metrics
        .set_native(state.mode.get() == crate::mutation::SidecarMode::Native);
    match state.metrics.encode() {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response(),
    }
}

/// The plain-HTTP admin router: `/healthz`, `/readyz`, `/metrics`.
pub fn admin_router(state: Arc<AppState>) -> Router {
    use arc_watchdog_core::names;
    Router::new()
        .route(names::PATH_HEALTHZ, get(healthz))
        .route(names::PATH_READYZ, get(readyz))
        .route(names::PATH_METRICS, get(metrics))
        .with_state(state)
}

/// The HTTP/1 and HTTP/2 server of one connection, with `limits`.
fn http_builder(limits: &ServerLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // Without a timer hyper has no clock: the head timeout would never fire.
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(H1_MAX_BUF);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_frame_size(H2_MAX_FRAME)
        .max_header_list_size(H2_MAX_HEADER_LIST)
        .max_send_buf_size(H2_MAX_SEND_BUF)
        .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
    builder
}

/// Requests in flight on one connection; the guard counts one.
struct InFlight(Arc<watch::Sender<usize>>);

impl InFlight {
    fn enter(count: &Arc<watch::Sender<usize>>) -> Self {
        count.send_modify(|n| *n += 1);
        Self(Arc::clone(count))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Completes once no request has been in flight for `after`.
async fn idle(mut in_flight: watch::Receiver<usize>, after: Duration) {
    loop {
        if in_flight.wait_for(|n| *n == 0).await.is_err() {
            return std::future::pending().await;
        }
        if tokio::time::timeout(after, in_flight.changed())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// One open connection: its slot under `--max-connections` and the gauge.
struct Slot {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.connection_closed();
    }
}

struct Connection {
    acceptor: TlsAcceptor,
    builder: Arc<auto::Builder<TokioExecutor>>,
    app: Router,
    limits: ServerLimits,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

impl Connection {
    async fn serve(self, tcp: TcpStream, peer: std::net::SocketAddr, slot: Slot) {
        let _slot = slot;
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(err)) => {
                tracing::debug!(%peer, error = %err, "TLS handshake failed");
                return;
            }
            Err(_) => {
                self.metrics.connection_timeout("handshake");
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        };
        let (count, in_flight) = watch::channel(0usize);
        let count = Arc::new(count);
        let app = TowerToHyperService::new(self.app.clone());
        let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
            let guard = InFlight::enter(&count);
            let answer = hyper::service::Service::call(&app, req);
            async move {
                let response = answer.await;
                drop(guard);
                response
            }
        });
        let conn = self.builder.serve_connection(TokioIo::new(tls), service);
        tokio::pin!(conn);
        let bound = tokio::select! {
            ended = conn.as_mut() => {
                self.report(peer, ended);
                return;
            }
            () = idle(in_flight, self.limits.idle_timeout) => {
                self.metrics.connection_timeout("idle");
                tracing::debug!(%peer, "closing an idle connection");
                CLOSE_GRACE
            }
            () = self.shutdown.cancelled() => self.limits.shutdown_grace,
        };
        conn.as_mut().graceful_shutdown();
        match tokio::time::timeout(bound, conn).await {
            Ok(ended) => self.report(peer, ended),
            Err(_) => tracing::debug!(%peer, "connection did not close in time; dropped"),
        }
    }

    fn report(
        &self,
        peer: std::net::SocketAddr,
        ended: Result<(), Box<dyn std::error::Error + Send + Sync>>,
    ) {
        let Err(err) = ended else { return };
        if err
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_timeout)
        {
            self.metrics.connection_timeout("header");
        }
        tracing::debug!(%peer, error = %err, "connection ended with an error");
    }
}

/// Serves `app` over TLS on `listener` within `limits` until `shutdown`
/// completes, then stops accepting and gives open connections up to
/// `limits.shutdown_grace` to finish.
pub async fn serve_tls(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    app: Router,
    limits: ServerLimits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(config);
    let builder = Arc::new(http_builder(&limits));
    let slots = Arc::new(Semaphore::new(limits.max_connections as usize));
    let closing = CancellationToken::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(err) => {
                        // Out of file descriptors and the like: back off
                        // briefly instead of spinning.
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Over the limit the connection is closed at once: waiting
                // would hold its socket and memory all the same.
                let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                    metrics.connection_refused();
                    tracing::debug!(%peer, "connection refused: --max-connections are open");
                    drop(tcp);
                    continue;
                };
                metrics.connection_opened();
                let slot = Slot { _permit: permit, metrics: Arc::clone(&metrics) };
                let connection = Connection {
                    acceptor: acceptor.clone(),
                    builder: Arc::clone(&builder),
                    app: app.clone(),
                    limits: limits.clone(),
                    metrics: Arc::clone(&metrics),
                    shutdown: closing.clone(),
                };
                tokio::spawn(connection.serve(tcp, peer, slot));
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    closing.cancel();
    // Every connection holds one slot until it has ended.
    tokio::select! {
        _ = slots.acquire_many(limits.max_connections) => tracing::info!("all connections closed"),
        () = tokio::time::sleep(limits.shutdown_grace) => tracing::warn!("shutdown grace ran out; closing remaining connections"),
    }
}
