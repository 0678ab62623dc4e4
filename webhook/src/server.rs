//! The HTTP layer: `POST /mutate` over TLS, and the plain-HTTP admin port.
//! Thin around [`crate::review::handle`].

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
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::metrics::Metrics;
use crate::mutation::InjectConfig;
use crate::rbac::RbacKeeper;
use crate::review::{self, ErrorReason};
use crate::version::ModeCell;

/// Path of the mutating endpoint.
pub const PATH_MUTATE: &str = "/mutate";
/// A TLS handshake that takes longer than this is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    /// The mutation's configuration.
    pub inject: InjectConfig,
    /// The sidecar mode in force.
    pub mode: Arc<ModeCell>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The RBAC keeper; `None` with `--manage-rbac=false` or without a kube client.
    pub rbac: Option<Arc<RbacKeeper>>,
    /// Time budget of one RBAC ensure.
    pub rbac_budget: Duration,
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// False once shutdown began (readiness turns red first).
    pub ready: AtomicBool,
}

impl AppState {
    /// State without RBAC management, ready.
    pub fn new(inject: InjectConfig, mode: Arc<ModeCell>, metrics: Arc<Metrics>) -> Self {
        Self {
            inject,
            mode,
            metrics,
            rbac: None,
            rbac_budget: Duration::from_secs(2),
            max_body_bytes: 3 * 1024 * 1024,
            ready: AtomicBool::new(true),
        }
    }
}

fn json_response(status: u16, body: Vec<u8>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn is_length_limit(err: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}

async fn mutate(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let too_large = || {
        review::error_result(
            413,
            ErrorReason::TooLarge,
            &format!("request body larger than {} bytes", state.max_body_bytes),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let result = if declared.is_some_and(|n| n > state.max_body_bytes as u64) {
        too_large()
    } else {
        match axum::body::to_bytes(body, state.max_body_bytes).await {
            Ok(bytes) => {
                let result = review::handle(&bytes, &state.inject, state.mode.get());
                if let (Some(target), Some(keeper)) = (&result.rbac, &state.rbac) {
                    let ensured = keeper
                        .ensure_within(target.clone(), state.rbac_budget)
                        .await;
                    state.metrics.rbac_ensure(ensured.as_str());
                }
                result
            }
            Err(err) if is_length_limit(&err) => too_large(),
            Err(err) => review::error_result(
                400,
                ErrorReason::InvalidJson,
                &format!("reading request body: {err}"),
            ),
        }
    };
    let elapsed = started.elapsed();
    state.metrics.observe_review(&result.outcome, elapsed);
    tracing::info!(
        uid = result.uid.as_deref().unwrap_or(""),
        status = result.status,
        outcome = result.outcome.outcome(),
        reason = result.outcome.reason(),
        elapsed_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        "admission review"
    );
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
    use arc_watchdog::names;
    Router::new()
        .route(names::PATH_HEALTHZ, get(healthz))
        .route(names::PATH_READYZ, get(readyz))
        .route(names::PATH_METRICS, get(metrics))
        .with_state(state)
}

/// Serves `app` over TLS on `listener` until `shutdown` completes, then
/// stops accepting and gives open connections up to `grace` to finish.
pub async fn serve_tls(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    app: Router,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let acceptor = TlsAcceptor::from(config);
    let graceful = GracefulShutdown::new();
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
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
                let acceptor = acceptor.clone();
                let service = TowerToHyperService::new(app.clone());
                let builder = builder.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(err)) => {
                            tracing::debug!(%peer, error = %err, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let conn = builder.serve_connection(TokioIo::new(tls), service).into_owned();
                    if let Err(err) = watcher.watch(conn).await {
                        tracing::debug!(%peer, error = %err, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(grace) => tracing::warn!("shutdown grace ran out; closing remaining connections"),
    }
}
