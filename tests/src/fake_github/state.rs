//! The service's state behind one lock, and the preamble every handler
//! shares: injected failures first, then the admin-token check.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::control::{Fault, FaultKind};
use super::sessions::{Session, SessionBook};
use super::stats::{SessionEvent, Stats};
use super::wire::{admin_ok, failure_body, reply, zero_statistics};
use super::{FakeGithubConfig, ScaleSet};

#[derive(Debug)]
pub(super) struct State_ {
    pub(super) config: FakeGithubConfig,
    pub(super) base_url: String,
    pub(super) started: Instant,
    pub(super) sessions: SessionBook,
    pub(super) scale_sets: BTreeMap<i64, ScaleSet>,
    pub(super) groups: BTreeMap<String, i64>,
    /// Group names that lookups do not find ([`super::Control::RemoveRunnerGroup`]).
    pub(super) removed_groups: BTreeSet<String>,
    pub(super) next_scale_set: i64,
    pub(super) next_agent: i64,
    pub(super) agents: BTreeMap<i64, (String, i64)>,
    pub(super) stats: Stats,
    /// Injected failures per endpoint name.
    pub(super) faults: BTreeMap<String, Fault>,
    /// Injected refresh failures ([`super::Control::FailRefresh`]): they
    /// also forget the session, so they are not a plain endpoint fault.
    pub(super) refresh_failure: Option<Fault>,
}

#[derive(Debug, Clone)]
pub(super) struct Shared {
    pub(super) state: Arc<Mutex<State_>>,
    /// Wakes held polls when sessions change.
    pub(super) changed: Arc<Notify>,
}

pub(super) fn new_shared(config: FakeGithubConfig, base_url: String) -> Shared {
    Shared {
        state: Arc::new(Mutex::new(State_ {
            config,
            base_url,
            started: Instant::now(),
            sessions: SessionBook::with_token_ttl(Some(config.queue_token_ttl)),
            scale_sets: BTreeMap::new(),
            groups: BTreeMap::from([("Default".to_owned(), 1)]),
            removed_groups: BTreeSet::new(),
            next_scale_set: 0,
            next_agent: 0,
            agents: BTreeMap::new(),
            stats: Stats::default(),
            faults: BTreeMap::new(),
            refresh_failure: None,
        })),
        changed: Arc::new(Notify::new()),
    }
}

/// A handler's early answer (boxed: a `Response` is large).
pub(super) type Early = Box<Response>;

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State_> {
        // A panic while holding the lock would only come from a bug in a
        // handler; keep serving rather than poisoning every later call.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state for a call to `endpoint`, or the counted answer of an
    /// injected failure.
    pub(super) fn enter(&self, endpoint: &str) -> Result<MutexGuard<'_, State_>, Early> {
        let mut st = self.lock();
        match st.take_fault(endpoint) {
            None => Ok(st),
            Some(kind) => Err(Box::new(st.fault_reply(endpoint, kind))),
        }
    }

    /// The state for a tenant call to `endpoint` that carries an admin
    /// token, or the counted answer of an injected failure or a missing token.
    pub(super) fn admin(
        &self,
        headers: &HeaderMap,
        endpoint: &str,
    ) -> Result<MutexGuard<'_, State_>, Early> {
        let mut st = self.enter(endpoint)?;
        if admin_ok(headers) {
            Ok(st)
        } else {
            Err(Box::new(st.unauthorized(endpoint)))
        }
    }
}

impl State_ {
    pub(super) fn now(&self) -> Duration {
        self.started.elapsed()
    }

    pub(super) fn now_ms(&self) -> u64 {
        u64::try_from(self.now().as_millis()).unwrap_or(u64::MAX)
    }

    pub(super) fn count(&mut self, endpoint: &str, status: StatusCode) {
        *self.stats.calls.entry(endpoint.to_owned()).or_default() += 1;
        *self
            .stats
            .responses
            .entry(format!("{endpoint} {}", status.as_u16()))
            .or_default() += 1;
    }

    pub(super) fn count_injected(&mut self, endpoint: &str, status: StatusCode) {
        self.count(endpoint, status);
        *self
            .stats
            .injected
            .entry(format!("{endpoint} {}", status.as_u16()))
            .or_default() += 1;
    }

    /// Takes one call of an injected failure of `endpoint`, if any.
    fn take_fault(&mut self, endpoint: &str) -> Option<FaultKind> {
        let fault = self.faults.get_mut(endpoint)?;
        let kind = fault.take();
        if fault.spent() {
            self.faults.remove(endpoint);
        }
        kind
    }

    /// Takes one call of an injected refresh failure, if any.
    pub(super) fn take_refresh_failure(&mut self) -> bool {
        let Some(fault) = self.refresh_failure.as_mut() else {
            return false;
        };
        let failed = fault.take().is_some();
        if fault.spent() {
            self.refresh_failure = None;
        }
        failed
    }

    /// The counted answer of an injected failure.
    fn fault_reply(&mut self, endpoint: &str, kind: FaultKind) -> Response {
        match kind {
            FaultKind::EmptyBody => {
                self.count_injected(endpoint, StatusCode::OK);
                reply(StatusCode::OK, None)
            }
            FaultKind::Status(status) => {
                self.count_injected(endpoint, status);
                reply(status, failure_body(endpoint, status))
            }
        }
    }

    /// The counted 401 of a call without a valid token.
    pub(super) fn unauthorized(&mut self, endpoint: &str) -> Response {
        self.count(endpoint, StatusCode::UNAUTHORIZED);
        reply(StatusCode::UNAUTHORIZED, None)
    }

    pub(super) fn session_event(
        &mut self,
        op: &str,
        scale_set_id: i64,
        owner: &str,
        status: StatusCode,
    ) {
        let at_ms = self.now_ms();
        self.stats.session_events.push(SessionEvent {
            at_ms,
            op: op.to_owned(),
            scale_set_id,
            owner: owner.to_owned(),
            status: status.as_u16(),
        });
    }

    pub(super) fn session_json(&self, scale_set: i64, s: &Session) -> Value {
        let ss = self.scale_sets.get(&scale_set);
        json!({
            "sessionId": s.id,
            "ownerName": s.owner,
            "runnerScaleSet": {
                "id": scale_set,
                "name": ss.map(|x| x.name.clone()).unwrap_or_default(),
                "runnerGroupId": ss.map(|x| x.runner_group_id).unwrap_or(1),
                "runnerGroupName": ss.map(|x| x.runner_group_name.clone()).unwrap_or_default(),
            },
            "messageQueueUrl": format!("{}/queue/{scale_set}/{}", self.base_url, s.id),
            "messageQueueAccessToken": s.queue_token,
            "statistics": zero_statistics(),
        })
    }
}
