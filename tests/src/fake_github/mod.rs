//! A fake GitHub Actions service for end-to-end tests against the real ARC
//! controller and listener.
//!
//! It speaks the subset of the protocol that ARC's clients use (GHES-style
//! config URL `http://127.0.0.1:PORT/<org>`; facts in `shared/arc-protocol.md`,
//! each endpoint checked against ARC 0.14.2's `github.com/actions/scaleset`
//! client and the `github/actions` client of ARC 0.9.2 and 0.10.1, which
//! both ARC listeners of those versions use: `ghalistener` and the legacy
//! `github-runnerscaleset-listener`):
//!
//! - `POST /api/v3/{orgs/O|enterprises/E|repos/O/R}/actions/runners/registration-token` → 201
//! - `POST /api/v3/actions/runner-registration` → tenant URL (no trailing slash) + admin JWT
//! - tenant `/_apis/runtime/runnergroups/`, `/_apis/runtime/runnerscalesets[/{id}]`,
//!   `.../{id}/sessions[/{sid}]`, `.../{id}/acquirejobs`, `.../{id}/acquirablejobs`,
//!   `.../{id}/generatejitconfig`, `/_apis/distributedtask/pools/0/agents[/{id}]`
//! - the message queue `GET /queue/{scale set}/{session}` (held, then 202) and
//!   `DELETE /queue/{scale set}/{session}/{message id}` → 204.
//!
//! The session model is the point ([`SessionBook`], a plain data structure
//! with time passed in): one message session per scale set; a session whose
//! owner stopped polling without deleting it stays active for the
//! stale-session TTL, and any create meanwhile gets the real
//! `RunnerScaleSetSessionConflictException` 409. Deleting a session that is
//! gone answers 400 `RunnerScaleSetSessionExpiredException`. Message-queue
//! tokens expire ([`FakeGithubConfig::queue_token_ttl`]): a poll with an
//! expired token gets 401, and the clients refresh the session (`PATCH`),
//! which hands out a new token.
//!
//! Every call is counted per endpoint and status (`GET /_fake/stats`,
//! [`Stats`]); [`Control`] (`POST /_fake/control`) injects stale or
//! permanent sessions and the failures GitHub is known to produce: 5xx on an
//! endpoint, empty poll bodies, failing refreshes, revoked tokens, scale sets
//! and runner groups deleted on GitHub's side.

mod control;
mod queue;
mod registration;
mod scale_sets;
mod sessions;
mod state;
mod stats;
mod wire;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_faults;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;

pub use control::{Control, ENDPOINTS, TokenEndpoint};
pub use sessions::{Session, SessionBook, SessionConflict, TokenCheck};
pub use stats::{SessionEvent, Stats};
pub use wire::{
    SCALE_SET_NOT_FOUND_TYPE, SESSION_CONFLICT_TYPE, SESSION_EXPIRED_TYPE, SESSION_UNKNOWN_TYPE,
    admin_jwt,
};

use control::apply_control;
use state::{Shared, new_shared};
use wire::reply;

/// Timings of the fake service. The listener's own intervals are ARC's and
/// stay as they are; these only make scenarios run in minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FakeGithubConfig {
    /// How long a message poll is held before answering 202 (GitHub holds
    /// about 50 s; the listener re-polls at once).
    pub poll_hold: Duration,
    /// How long a session stays active after its owner's last poll ended
    /// without the session being deleted.
    pub stale_session_ttl: Duration,
    /// Lifetime of the admin JWT handed out by runner-registration (ARC
    /// refreshes it when it is within 60 s of expiry).
    pub admin_token_ttl: Duration,
    /// Lifetime of a message-queue token. No ARC client refreshes it ahead
    /// of time: each refreshes the session only when a poll, message delete
    /// or job acquisition answers 401 (`MessageSessionClient.GetMessage` in
    /// `github.com/actions/scaleset` 0.4.0; `SessionRefreshingClient` and
    /// `Listener.getMessage` in ARC 0.10.1), so the clients do not tell the
    /// lifetime. The default, 50 minutes, is the cadence at which listeners
    /// whose refreshes failed were reported to die (actions/scaleset pull
    /// request 123: "on the token cycle ... every ~50 minutes").
    pub queue_token_ttl: Duration,
}

impl Default for FakeGithubConfig {
    fn default() -> Self {
        Self {
            poll_hold: Duration::from_secs(10),
            stale_session_ttl: Duration::from_secs(60),
            admin_token_ttl: Duration::from_secs(3600),
            queue_token_ttl: Duration::from_secs(50 * 60),
        }
    }
}

/// One registered scale set.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleSet {
    /// Id (> 0).
    pub id: i64,
    /// Name.
    pub name: String,
    /// Runner group id.
    pub runner_group_id: i64,
    /// Runner group name.
    pub runner_group_name: String,
    /// Labels as ARC sent them.
    pub labels: Value,
}

fn stats_of(sh: &Shared) -> Stats {
    let st = sh.lock();
    let mut stats = st.stats.clone();
    stats.now_ms = st.now_ms();
    stats
}

async fn fake_stats(State(sh): State<Shared>) -> Json<Stats> {
    Json(stats_of(&sh))
}

async fn fake_scale_sets(State(sh): State<Shared>) -> Json<Vec<ScaleSet>> {
    Json(sh.lock().scale_sets.values().cloned().collect())
}

async fn fake_control(State(sh): State<Shared>, body: Bytes) -> Response {
    let control: Control = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("invalid control request: {e}"),
            )
                .into_response();
        }
    };
    match apply_control(&sh, control) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            format!("invalid control request: {e:#}"),
        )
            .into_response(),
    }
}

fn router(shared: Shared) -> Router {
    let rs = "/tenant/_apis/runtime/runnerscalesets";
    Router::new()
        .route(
            "/api/v3/orgs/{org}/actions/runners/registration-token",
            post(registration::registration_token),
        )
        .route(
            "/api/v3/enterprises/{ent}/actions/runners/registration-token",
            post(registration::registration_token),
        )
        .route(
            "/api/v3/repos/{owner}/{repo}/actions/runners/registration-token",
            post(registration::registration_token),
        )
        .route(
            "/api/v3/actions/runner-registration",
            post(registration::runner_registration),
        )
        .route(
            "/tenant/_apis/runtime/runnergroups/",
            get(scale_sets::runner_groups),
        )
        .route(
            "/tenant/_apis/runtime/runnergroups",
            get(scale_sets::runner_groups),
        )
        .route(
            rs,
            get(scale_sets::scale_set_list).post(scale_sets::scale_set_create),
        )
        .route(
            &format!("{rs}/{{id}}"),
            get(scale_sets::scale_set_get)
                .patch(scale_sets::scale_set_update)
                .delete(scale_sets::scale_set_delete),
        )
        .route(
            &format!("{rs}/{{id}}/sessions"),
            post(queue::session_create),
        )
        .route(
            &format!("{rs}/{{id}}/sessions/{{sid}}"),
            patch(queue::session_refresh).delete(queue::session_delete),
        )
        .route(
            &format!("{rs}/{{id}}/acquirejobs"),
            post(queue::acquire_jobs),
        )
        .route(
            &format!("{rs}/{{id}}/acquirablejobs"),
            get(scale_sets::acquirable_jobs),
        )
        .route(
            &format!("{rs}/{{id}}/generatejitconfig"),
            post(scale_sets::generate_jit_config),
        )
        .route(
            "/tenant/_apis/distributedtask/pools/0/agents",
            get(scale_sets::agents_get),
        )
        .route(
            "/tenant/_apis/distributedtask/pools/0/agents/{id}",
            get(scale_sets::agent_get).delete(scale_sets::agent_delete),
        )
        .route("/queue/{id}/{sid}", get(queue::message_get))
        .route("/queue/{id}/{sid}/{msg}", delete(queue::message_delete))
        .route("/_fake/stats", get(fake_stats))
        .route("/_fake/scale-sets", get(fake_scale_sets))
        .route("/_fake/control", post(fake_control))
        .fallback(unknown)
        .with_state(shared)
}

async fn unknown(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    tracing::warn!(%method, %uri, "fake-github: unknown endpoint");
    reply(
        StatusCode::NOT_FOUND,
        Some(json!({"message": format!("fake-github: no route for {method} {uri}")})),
    )
}

/// A running fake GitHub Actions service on 127.0.0.1.
#[derive(Debug)]
pub struct FakeGithub {
    shared: Shared,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeGithub {
    /// Binds `127.0.0.1:port` (0: any free port) and serves until dropped.
    pub async fn start(config: FakeGithubConfig, port: u16) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .with_context(|| format!("fake-github: binding 127.0.0.1:{port}"))?;
        let addr = listener
            .local_addr()
            .context("fake-github: local address")?;
        let shared = new_shared(config, format!("http://{addr}"));
        let app = router(shared.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = rx.await;
            });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "fake-github: server failed");
            }
        });
        Ok(Self {
            shared,
            addr,
            shutdown: Some(tx),
            task,
        })
    }

    /// Base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The GHES-style config URL of an organisation, for `githubConfigUrl`.
    pub fn config_url(&self, org: &str) -> String {
        format!("{}/{org}", self.url())
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        stats_of(&self.shared)
    }

    /// Scale sets registered so far.
    pub fn scale_sets(&self) -> Vec<ScaleSet> {
        self.shared.lock().scale_sets.values().cloned().collect()
    }

    /// The session a scale set currently has (active or not) and whether it is active.
    pub fn session(&self, scale_set_id: i64) -> Option<(Session, bool)> {
        let st = self.shared.lock();
        let now = st.now();
        st.sessions
            .current(scale_set_id)
            .map(|s| (s.clone(), s.is_active(now)))
    }

    /// Milliseconds since the fake started (the clock of [`SessionEvent::at_ms`]).
    pub fn now_ms(&self) -> u64 {
        self.shared.lock().now_ms()
    }

    /// Applies a control request (same as `POST /_fake/control`); an
    /// invalid one (unknown endpoint, bad status) is logged and ignored: use
    /// [`FakeGithub::try_control`] to see the error.
    pub fn control(&self, control: Control) {
        if let Err(e) = self.try_control(control) {
            tracing::error!(error = %format!("{e:#}"), "fake-github: control request ignored");
        }
    }

    /// Applies a control request, or says why it is invalid.
    pub fn try_control(&self, control: Control) -> anyhow::Result<()> {
        apply_control(&self.shared, control)
    }

    /// The timings it runs with.
    pub fn config(&self) -> FakeGithubConfig {
        self.shared.lock().config
    }

    /// Stops serving and waits for the server task.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.shared.changed.notify_waiters();
        let _ = (&mut self.task).await;
    }
}

impl Drop for FakeGithub {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.abort();
    }
}

/// The service as a router without a socket, for tests.
pub fn test_router(config: FakeGithubConfig, base_url: &str) -> Router {
    router(new_shared(config, base_url.to_owned()))
}
