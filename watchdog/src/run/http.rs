//! The sidecar's plain-HTTP endpoints: `/healthz`, `/readyz`, `/startz`,
//! `/metrics`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use jiff::Timestamp;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::gate::{Gate, GateAnswer};
use super::metrics::Metrics;
use crate::names;

/// State shared by the main loop, the followers and the HTTP endpoints.
#[derive(Debug)]
pub struct Shared {
    /// Start gate and API health.
    pub gate: Mutex<Gate>,
    /// Metric handles.
    pub metrics: Metrics,
    registry: Registry,
    heartbeat: Mutex<Instant>,
    heartbeat_max: Duration,
}

impl Shared {
    /// Shared state; `/healthz` fails when the main loop has not beaten for
    /// `heartbeat_max`.
    pub fn new(gate: Gate, metrics: Metrics, heartbeat_max: Duration) -> Self {
        let registry = metrics.registry();
        Self {
            gate: Mutex::new(gate),
            metrics,
            registry,
            heartbeat: Mutex::new(Instant::now()),
            heartbeat_max,
        }
    }

    /// Runs `f` on the gate (a poisoned lock is still used: the gate is
    /// plain data and stays consistent).
    pub fn with_gate<R>(&self, f: impl FnOnce(&mut Gate) -> R) -> R {
        let mut g = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// The main loop is alive.
    pub fn beat(&self) {
        *self.heartbeat.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn alive(&self) -> bool {
        self.heartbeat
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
            <= self.heartbeat_max
    }

    /// Brings the gauges derived from the gate up to date at `now`.
    pub fn refresh_gauges(&self, now: Timestamp) {
        let (delay, fail_open) = self.with_gate(|g| (g.start_delay(now), g.fail_open(now)));
        self.metrics.start_delay_seconds.set(delay.as_secs_f64());
        self.metrics.fail_open.set(i64::from(fail_open));
    }
}

/// The endpoints' router.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(names::PATH_HEALTHZ, get(healthz))
        .route(names::PATH_READYZ, get(readyz))
        .route(names::PATH_READYZ_WATCHING, get(readyz_watching))
        .route(names::PATH_STARTZ, get(startz))
        .route(names::PATH_METRICS, get(metrics))
        .with_state(shared)
}

async fn healthz(State(s): State<Arc<Shared>>) -> Response {
    if s.alive() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "main loop stalled\n").into_response()
    }
}

async fn readyz(State(s): State<Arc<Shared>>) -> Response {
    match s.with_gate(|g| g.ready()) {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

/// Only the "watching" check: unlike `/readyz`, a Lease or Event error or
/// a short outage keeps it 200; it turns 503 when the watchdog fails open,
/// the state worth showing outside the pod.
async fn readyz_watching(State(s): State<Arc<Shared>>) -> Response {
    let now = Timestamp::now();
    let fail_open = s.with_gate(|g| g.fail_open(now));
    s.refresh_gauges(now);
    if fail_open {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "failing open: the watchdog cannot see its listener\n",
        )
            .into_response()
    } else {
        (StatusCode::OK, "ok: watching\n").into_response()
    }
}

/// Text of a start-gate answer, as `/startz` sends it.
pub fn startz_body(answer: &GateAnswer) -> String {
    match answer {
        GateAnswer::Open(why) => format!("open: {why}\n"),
        GateAnswer::Closed { remaining, why } => format!(
            "closed: {why}; remaining_seconds={}\n",
            remaining.as_secs_f64().ceil()
        ),
    }
}

async fn startz(State(s): State<Arc<Shared>>) -> Response {
    let now = Timestamp::now();
    let answer = s.with_gate(|g| g.answer(now));
    s.refresh_gauges(now);
    let code = if answer.is_open() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, startz_body(&answer)).into_response()
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    s.refresh_gauges(Timestamp::now());
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &s.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}\n"),
        )
            .into_response(),
    }
}

/// Binds `addr` and serves the endpoints until `cancel` fires. Returns the
/// bound address and the server task.
pub async fn serve(
    addr: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding --listen {addr}: {e}"))?;
    let local = listener.local_addr()?;
    let app = router(shared);
    let task = tokio::spawn(async move {
        let res = axum::serve(listener, app)
            .with_graceful_shutdown(cancel.cancelled_owned())
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    Ok((local, task))
}
